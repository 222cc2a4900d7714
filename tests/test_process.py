"""The service as a process: `serve` from the command line, dev mode, SIGTERM drain, bad config."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import psutil
import pytest
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc
from pluct.token.v1 import token_service_pb2 as token_pb
from pluct.token.v1 import token_service_pb2_grpc

from tests.support import (
    ADMIN_METADATA,
    ADMIN_SECRET,
    JWT_SECRET,
    WEBHOOK_SECRET,
    external_database_url,
    free_port,
    new_user_id,
    scratch_database,
    wait_until_serving,
)

REPO = Path(__file__).resolve().parent.parent


def service_env(**extra: str) -> dict[str, str]:
    """A clean environment for the service: nothing inherited that could configure it."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(
        PLUCT_GRPC_LISTEN=f"127.0.0.1:{free_port()}",
        PLUCT_HTTP_LISTEN=f"127.0.0.1:{free_port()}",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class ServiceProcess:
    """`python -m pluct_server serve` in a child process, its output collected in a file."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.log_path = workdir / f"service-{free_port()}.log"
        log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pluct_server", "serve"],
            cwd=workdir,
            env={**env, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'clients'}"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.grpc_target = env["PLUCT_GRPC_LISTEN"]

    @property
    def output(self) -> str:
        return self.log_path.read_text()

    async def wait_serving(self) -> None:
        """Wait until the service reports SERVING, showing its output if it does not."""
        try:
            await wait_until_serving(self.grpc_target, self.process)
        except RuntimeError as error:
            raise AssertionError(f"{error}\n{self.output}") from None

    async def exit_code(self) -> int:
        return await asyncio.to_thread(self.process.wait, 60)

    async def wait_for_lines(self, text: str, count: int, seconds: float = 30.0) -> None:
        """Wait until `text` appears `count` times in the output, showing it if it does not."""
        deadline = time.monotonic() + seconds
        while self.output.count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not seen {count} time(s):\n{self.output}")
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run_command(
    command: str, env: dict[str, str], workdir: Path
) -> subprocess.CompletedProcess[str]:
    """Run `python -m pluct_server <command>` to completion and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "pluct_server", command],
        cwd=workdir,
        env={**env, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'clients'}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def healthcheck(env: dict[str, str], workdir: Path) -> tuple[int, str]:
    """Run the container's health probe, `python -m pluct_server healthcheck`."""
    result = run_command("healthcheck", env, workdir)
    return result.returncode, result.stdout.strip()


@pytest.fixture
async def production_dsn(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """An empty database for a production-mode process."""
    server_url = external_database_url() or request.getfixturevalue("embedded_postgres").dsn
    async with scratch_database(server_url) as dsn:
        yield dsn


async def test_sigterm_drains_a_call_in_flight_then_exits_zero(production_dsn, tmp_path):
    env = service_env(
        DATABASE_URL=production_dsn,
        ADMIN_SECRET=ADMIN_SECRET,
        JWT_SECRET=JWT_SECRET,
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        PLUCT_EVENT_LOOP="asyncio",  # the other loop; the rest of the suite runs the default
        MALLOC_ARENA_MAX="4",  # an operator's own allocator setting
    )
    service = ServiceProcess(env, tmp_path)
    try:
        await service.wait_serving()
        assert healthcheck(env, tmp_path) == (0, "SERVING")
        await service.wait_for_lines("serving on the asyncio event loop", 1)
        assert {arena_limit(pid) for pid in worker_pids(service)} == {"4"}
        user_id = new_user_id()
        async with grpc.aio.insecure_channel(service.grpc_target) as channel:
            credit = credit_service_pb2_grpc.CreditServiceStub(channel)
            token = token_service_pb2_grpc.TokenServiceStub(channel)
            await credit.CreateUser(
                credit_pb.CreateUserRequest(user_id=user_id, initial_credits=2),
                metadata=ADMIN_METADATA,
            )

            blocker = await asyncpg.connect(production_dsn)
            try:
                # Hold the user's row so the vend below is provably in flight when SIGTERM lands.
                transaction = blocker.transaction()
                await transaction.start()
                await blocker.execute("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", user_id)
                vend = asyncio.ensure_future(
                    token.VendToken(
                        token_pb.VendTokenRequest(user_id=user_id), metadata=ADMIN_METADATA
                    )
                )
                while not await blocker.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                ):
                    await asyncio.sleep(0.05)

                service.process.send_signal(signal.SIGTERM)
                while "draining" not in service.output:
                    await asyncio.sleep(0.05)
                await transaction.rollback()
            finally:
                await blocker.close()

            vended = await vend
        assert vended.balance_after == 1
        assert await service.exit_code() == 0
        assert "uvloop" not in service.output
        assert "stopped" in service.output
        assert healthcheck(env, tmp_path)[0] == 1
    finally:
        service.kill()


async def test_dev_mode_runs_embedded_postgres_keeps_data_and_prints_secrets_once(tmp_path):
    data_dir = tmp_path / "data"
    user_id = new_user_id()
    first = ServiceProcess(service_env(PLUCT_DATA_DIR=str(data_dir)), tmp_path)
    try:
        await first.wait_serving()
        dev_key = re.search(r"PLUCT_DEV_API_KEY=(\S+)", first.output)
        assert dev_key, first.output
        with_key = (("authorization", f"Bearer {dev_key[1]}"),)
        async with grpc.aio.insecure_channel(first.grpc_target) as channel:
            credit = credit_service_pb2_grpc.CreditServiceStub(channel)
            await credit.CreateUser(
                credit_pb.CreateUserRequest(user_id=user_id, initial_credits=4), metadata=with_key
            )
        first.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert await first.exit_code() == 0
    finally:
        first.kill()
    secrets_file = data_dir / "dev-secrets.env"
    stored = dict(
        line.split("=", 1) for line in secrets_file.read_text().splitlines() if "=" in line
    )
    assert set(stored) == {"ADMIN_SECRET", "JWT_SECRET", "WEBHOOK_SECRET", "PLUCT_DEV_API_KEY"}
    assert stored["PLUCT_DEV_API_KEY"] == dev_key[1]
    assert secrets_file.stat().st_mode & 0o077 == 0
    assert stored["JWT_SECRET"] in first.output
    assert "embedded PostgreSQL stopped" in first.output

    second = ServiceProcess(service_env(PLUCT_DATA_DIR=str(data_dir)), tmp_path)
    try:
        await second.wait_serving()
        async with grpc.aio.insecure_channel(second.grpc_target) as channel:
            credit = credit_service_pb2_grpc.CreditServiceStub(channel)
            balance = await credit.GetBalance(
                credit_pb.GetBalanceRequest(user_id=user_id), metadata=with_key
            )
        second.process.send_signal(signal.SIGTERM)
        assert await second.exit_code() == 0
    finally:
        second.kill()
    assert balance.balance == 4
    for secret in stored.values():
        assert secret not in second.output


@pytest.mark.parametrize(
    ("extra", "variable"),
    [
        ({"JWT_SECRET": "short-secret"}, "JWT_SECRET"),
        ({"JWT_SECRET": "a" * 64}, "JWT_SECRET"),
        ({"ADMIN_SECRET": ""}, "ADMIN_SECRET"),
        ({"PLUCT_GRPC_LISTEN": "nonsense"}, "PLUCT_GRPC_LISTEN"),
        ({"PLUCT_TOKEN_TTL_SECONDS": "-5"}, "PLUCT_TOKEN_TTL_SECONDS"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ],
)
def test_bad_configuration_refuses_to_start_with_one_line_naming_the_variable(
    tmp_path, extra, variable
):
    env = service_env(
        DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        ADMIN_SECRET=ADMIN_SECRET,
        JWT_SECRET=JWT_SECRET,
        WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    env.update(extra)
    result = run_command("serve", env, tmp_path)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert variable in lines[0]
    for name in ("JWT_SECRET", "ADMIN_SECRET"):
        if extra.get(name):
            assert extra[name] not in lines[0]


def worker_pids(service: ServiceProcess) -> set[int]:
    """Return the pids of the service's worker processes (not multiprocessing's helper)."""
    children = psutil.Process(service.process.pid).children()
    return {child.pid for child in children if "spawn_main" in " ".join(child.cmdline())}


def arena_limit(pid: int) -> str | None:
    """Return the glibc arena limit a process started with (MALLOC_ARENA_MAX), if any."""
    return psutil.Process(pid).environ().get("MALLOC_ARENA_MAX")


def serving_pids(pids: set[int], port: int) -> set[int]:
    """Return which of `pids` hold an established connection on `port`."""
    found = set()
    for pid in pids:
        connections = psutil.Process(pid).net_connections(kind="tcp")
        if any(c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED for c in connections):
            found.add(pid)
    return found


async def vend_until_done(stub, user_id: str, request_id: str) -> token_pb.VendTokenResponse:
    """Vend as a careful client does: retry with the same request id until there is an answer."""
    while True:
        try:
            reply: token_pb.VendTokenResponse = await stub.VendToken(
                token_pb.VendTokenRequest(user_id=user_id, request_id=request_id),
                metadata=ADMIN_METADATA,
                timeout=10,
            )
            return reply
        except grpc.aio.AioRpcError as error:
            if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            await asyncio.sleep(0.05)


async def test_workers_share_the_ports_and_a_killed_worker_is_replaced(production_dsn, tmp_path):
    env = service_env(
        DATABASE_URL=production_dsn,
        ADMIN_SECRET=ADMIN_SECRET,
        JWT_SECRET=JWT_SECRET,
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        PLUCT_WORKERS="2",
        PLUCT_VEND_RATE="0",  # one user vends 116 times here
    )
    service = ServiceProcess(env, tmp_path)
    try:
        await service.wait_serving()
        workers = worker_pids(service)
        assert len(workers) == 2
        assert {arena_limit(pid) for pid in workers} == {"2"}
        port = int(service.grpc_target.rpartition(":")[2])
        user_id = new_user_id()
        # Sixteen connections: the kernel spreads them over both workers' listening sockets.
        # (gRPC shares one connection between channels to one target unless told not to.)
        own_connection = [("grpc.use_local_subchannel_pool", 1)]
        channels = [
            grpc.aio.insecure_channel(service.grpc_target, options=own_connection)
            for _ in range(16)
        ]
        try:
            stubs = [token_service_pb2_grpc.TokenServiceStub(channel) for channel in channels]
            credit = credit_service_pb2_grpc.CreditServiceStub(channels[0])
            await credit.CreateUser(
                credit_pb.CreateUserRequest(user_id=user_id, initial_credits=200),
                metadata=ADMIN_METADATA,
            )
            first = await asyncio.gather(
                *(vend_until_done(stub, user_id, f"warm-{i}") for i, stub in enumerate(stubs))
            )
            assert serving_pids(workers, port) == workers

            victim = next(iter(workers))
            load = [
                asyncio.ensure_future(vend_until_done(stubs[i % 16], user_id, f"load-{i}"))
                for i in range(100)
            ]
            psutil.Process(victim).kill()
            settled = await asyncio.gather(*load)
            replaced = worker_pids(service)
            while len(replaced) < 2:  # the test's timeout bounds the wait
                await asyncio.sleep(0.1)
                replaced = worker_pids(service)
            # Both first workers and the replacement serve on the default loop.
            await service.wait_for_lines("serving on the uvloop event loop", 3)
            balance = await credit.GetBalance(
                credit_pb.GetBalanceRequest(user_id=user_id), metadata=ADMIN_METADATA
            )
        finally:
            for channel in channels:
                await channel.close()

        assert len(replaced) == 2 and victim not in replaced
        assert {arena_limit(pid) for pid in replaced} == {"2"}
        assert "worker 0" in service.output or "worker 1" in service.output
        assert "replacing it" in service.output
        # Every retried vend settled once: 16 + 100 distinct tokens, 116 credits spent.
        assert len({reply.token for reply in (*first, *settled)}) == 116
        assert balance.balance == 200 - 116
        assert healthcheck(env, tmp_path) == (0, "SERVING")
        service.process.send_signal(signal.SIGTERM)
        assert await service.exit_code() == 0
        assert service.output.count("] pluct_server: stopped") == 2
    finally:
        service.kill()


def test_the_pool_is_split_so_every_worker_fits_the_server():
    from pluct_server.runtime.supervisor import plan_pool

    # 200 connections, 3 reserved for superusers, 10 kept spare: 187 to share.
    assert plan_pool(wanted=20, workers=2, max_connections=200, reserved=3).per_worker == 20
    assert plan_pool(wanted=20, workers=16, max_connections=200, reserved=3).per_worker == 11
    assert plan_pool(wanted=20, workers=4, max_connections=30, reserved=3).per_worker == 4
    # Never less than one each, however small the server.
    assert plan_pool(wanted=20, workers=8, max_connections=10, reserved=3).per_worker == 1


async def test_audit_exits_one_and_names_the_users_whose_books_disagree(production_dsn, tmp_path):
    from pluct_server.store.database import Database
    from pluct_server.store.migrate import migrate

    database = Database(production_dsn, max_size=1)
    await database.open()
    try:
        await migrate(database)
    finally:
        await database.close()
    env = service_env(DATABASE_URL=production_dsn)  # an operator command needs no secrets
    conn = await asyncpg.connect(production_dsn)
    try:
        await credited(conn, "honest", balance=3, credit=3, remaining=3)
        clean = run_command("audit", env, tmp_path)
        # What a bug or a hand in the database would leave: a balance its ledger does not
        # explain, and a grant that lost credits no spend took.
        await credited(conn, "tampered", balance=7, credit=2, remaining=2)
        await credited(conn, "drained", balance=3, credit=3, remaining=1)
        # And an entry whose event is gone: nobody outside would ever hear of it.
        await credited(conn, "unheard", balance=4, credit=4, remaining=4)
        await conn.execute("DELETE FROM events WHERE user_id = 'unheard'")
        dirty = run_command("audit", env, tmp_path)
    finally:
        await conn.close()

    assert (clean.returncode, clean.stdout.strip()) == (0, "audited 1 users: clean")
    assert dirty.returncode == 1
    assert "tampered: balance 7, ledger 2: balance differs from the ledger" in dirty.stdout
    assert (
        "drained: balance 3, ledger 3: balance differs from what remains of the grants; "
        "a grant whose remainder differs from what was drawn from it"
    ) in dirty.stdout
    assert "unheard: balance 4, ledger 4: a ledger entry without its one event" in dirty.stdout
    assert "honest" not in dirty.stdout


async def credited(
    conn: asyncpg.Connection, user_id: str, *, balance: int, credit: int, remaining: int
) -> None:
    """Write a user with one admin grant of `credit` straight into the tables."""
    await conn.execute(
        "INSERT INTO users (user_id, balance, transaction_count) VALUES ($1, $2, 1)",
        user_id,
        balance,
    )
    grant_id = await conn.fetchval(
        "INSERT INTO grants (user_id, category, priority, amount, remaining, source)"
        " VALUES ($1, 'promotional', 50, $2, $3, 'admin') RETURNING grant_id",
        user_id,
        credit,
        remaining,
    )
    await conn.execute(
        "INSERT INTO ledger (user_id, type, amount, balance_after, grant_id)"
        " VALUES ($1, 'admin_add', $2, $2, $3)",
        user_id,
        credit,
        grant_id,
    )
