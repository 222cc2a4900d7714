"""`serve` in dev mode, killed, hung up on, run twice: its embedded PostgreSQL never outlives it."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
import psutil
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc

from pluct_server.runtime.embedded_postgres import EmbeddedPostgres
from pluct_server.runtime.supervisor import stop_signals
from tests.support import ADMIN_METADATA, ADMIN_SECRET, new_user_id
from tests.test_process import ServiceProcess, service_env

# A hang guard, not a timing claim.
GIVE_UP_SECONDS = 60


def dev_service(data_dir: Path, workdir: Path) -> ServiceProcess:
    """Start `serve` in dev mode (embedded PostgreSQL) on data_dir, with one worker."""
    env = service_env(PLUCT_DATA_DIR=str(data_dir), PLUCT_WORKERS="1", ADMIN_SECRET=ADMIN_SECRET)
    return ServiceProcess(env, workdir)


async def balance_of(service: ServiceProcess, user_id: str) -> int:
    """Ask the service for a user's balance."""
    async with grpc.aio.insecure_channel(service.grpc_target) as channel:
        credit = credit_service_pb2_grpc.CreditServiceStub(channel)
        reply = await credit.GetBalance(
            credit_pb.GetBalanceRequest(user_id=user_id), metadata=ADMIN_METADATA, timeout=10
        )
    return int(reply.balance)


def watchdog_of(service: ServiceProcess) -> psutil.Process:
    """Return the watchdog the service started for its embedded PostgreSQL."""
    children = psutil.Process(service.process.pid).children()
    found = [child for child in children if "watch_owner" in " ".join(child.cmdline())]
    assert len(found) == 1, children
    return found[0]


def processes_naming(folder: Path) -> list[psutil.Process]:
    """Return the processes whose command line names folder (servers, watchdogs)."""
    return [
        process
        for process in psutil.process_iter(["cmdline"])
        if str(folder) in " ".join(process.info["cmdline"] or [])
    ]


async def stopped_by_signal(service: ServiceProcess, signum: int) -> int:
    """Send signum and return the exit code."""
    service.process.send_signal(signum)
    return await service.exit_code()


async def hung_up(service: ServiceProcess) -> int:
    """Send SIGHUP as a closed terminal does, to its whole process group; return the exit code."""
    group = os.getpgid(service.process.pid)
    # The group is the test runner's too, so it is signalled one process at a time; the
    # database and its watchdog run in sessions of their own and get nothing.
    family = [psutil.Process(service.process.pid)]
    family += psutil.Process(service.process.pid).children(recursive=True)
    for process in family:
        if os.getpgid(process.pid) == group:
            process.send_signal(signal.SIGHUP)
    return await service.exit_code()


async def test_a_killed_server_leaves_nothing_running_and_restarts_with_its_data(tmp_path):
    data_dir = tmp_path / "data"
    postgres = EmbeddedPostgres(data_dir / "postgres")  # only looked at, never started here
    user_id = new_user_id()

    first = dev_service(data_dir, tmp_path)
    try:
        await first.wait_serving()
        async with grpc.aio.insecure_channel(first.grpc_target) as channel:
            await credit_service_pb2_grpc.CreditServiceStub(channel).CreateUser(
                credit_pb.CreateUserRequest(user_id=user_id, initial_credits=4),
                metadata=ADMIN_METADATA,
            )
        watchdog = watchdog_of(first)
    finally:
        first.kill()  # SIGKILL: no drain, no clean stop of the database
    await asyncio.to_thread(watchdog.wait, GIVE_UP_SECONDS)
    assert not postgres.is_running()
    assert not postgres.socket_dir.exists()
    assert processes_naming(data_dir) == []

    second = dev_service(data_dir, tmp_path)
    try:
        await second.wait_serving()
        assert await balance_of(second, user_id) == 4
        assert await stopped_by_signal(second, signal.SIGTERM) == 0
    finally:
        second.kill()
    assert "embedded PostgreSQL stopped" in second.output
    assert not postgres.is_running() and not postgres.socket_dir.exists()
    assert processes_naming(data_dir) == []


async def test_an_orphaned_database_is_adopted_and_a_hangup_stops_everything(tmp_path):
    data_dir = tmp_path / "data"
    postgres = EmbeddedPostgres(data_dir / "postgres")  # only looked at, never started here
    user_id = new_user_id()

    crashed = dev_service(data_dir, tmp_path)
    try:
        await crashed.wait_serving()
        async with grpc.aio.insecure_channel(crashed.grpc_target) as channel:
            await credit_service_pb2_grpc.CreditServiceStub(channel).CreateUser(
                credit_pb.CreateUserRequest(user_id=user_id, initial_credits=3),
                metadata=ADMIN_METADATA,
            )
        # The watchdog killed too, as by `kill -9` of every process: the database is orphaned.
        watchdog_of(crashed).kill()
    finally:
        crashed.kill()
    assert postgres.is_running()

    owner = dev_service(data_dir, tmp_path)
    try:
        await owner.wait_serving()
        assert "adopted the embedded PostgreSQL" in owner.output
        assert await balance_of(owner, user_id) == 3

        # A second `make run` on the same folder uses the database but leaves it to its owner.
        visitor = dev_service(data_dir, tmp_path)
        try:
            await visitor.wait_serving()
            assert await balance_of(visitor, user_id) == 3
            assert await stopped_by_signal(visitor, signal.SIGTERM) == 0
        finally:
            visitor.kill()
        assert "embedded PostgreSQL stopped" not in visitor.output
        assert postgres.is_running()
        assert await balance_of(owner, user_id) == 3

        # A hangup (the terminal closed) drains the worker and stops the database cleanly.
        assert await hung_up(owner) == 0
    finally:
        owner.kill()
    assert "pluct_server: stopped" in owner.output
    assert "died unexpectedly" not in owner.output  # multiprocessing's helper outlived it
    assert "embedded PostgreSQL stopped" in owner.output
    assert not postgres.is_running()
    assert not postgres.socket_dir.exists()
    assert processes_naming(data_dir) == []


def test_a_hangup_stops_the_service_unless_it_runs_under_nohup():
    assert signal.SIGHUP in stop_signals()
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert signal.SIGHUP not in stop_signals()
    finally:
        signal.signal(signal.SIGHUP, previous)
