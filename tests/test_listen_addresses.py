"""`serve` and its addresses: one another process holds, or none can have, stops it in one line."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import ADMIN_SECRET, JWT_SECRET, WEBHOOK_SECRET, free_port
from tests.test_process import (  # noqa: F401
    REPO,
    ServiceProcess,
    production_dsn,
    run_command,
    service_env,
)

# Nothing is ever asked of it: every run here stops before it would connect.
UNREACHABLE_DATABASE = "postgresql://nobody@127.0.0.1:1/none"
# A hang guard, not a timing claim.
GIVE_UP_SECONDS = 30
# How /proc/net/tcp shows a connection that has closed and waits out its last packets.
TIME_WAIT = "06"
NOBODY = 65534


def production_env(dsn: str, **extra: str) -> dict[str, str]:
    """A production-mode environment on fresh ports, with strong secrets."""
    return service_env(
        DATABASE_URL=dsn,
        ADMIN_SECRET=ADMIN_SECRET,
        JWT_SECRET=JWT_SECRET,
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        PLUCT_WORKERS="1",
        **extra,
    )


def refused_in_one_line(result: subprocess.CompletedProcess[str]) -> str:
    """Check that `serve` exited 1 saying one line and nothing else; return that line."""
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert (result.returncode, len(lines)) == (1, 1), result.stdout + result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.fixture
def foreign_listener() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Another program listening on a port, sharing it as SO_REUSEPORT allows."""
    code = (
        "import socket, sys, time\n"
        "s = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n"
        "s.bind(('127.0.0.1', 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True)\n"
        "time.sleep(600)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        yield process, int(process.stdout.readline())
    finally:
        process.kill()
        process.wait()


async def test_a_second_server_on_the_same_addresses_refuses_in_one_line(
    production_dsn,  # noqa: F811
    tmp_path,
):
    env = production_env(production_dsn, PLUCT_METRICS_LISTEN=f"127.0.0.1:{free_port()}")
    first = ServiceProcess(env, tmp_path)
    try:
        await first.wait_serving()
        refusals = {}
        for setting in ("PLUCT_GRPC_LISTEN", "PLUCT_HTTP_LISTEN", "PLUCT_METRICS_LISTEN"):
            # Only `setting` names one of the first server's addresses.
            second = production_env(production_dsn, **{setting: env[setting]})
            refusals[setting] = refused_in_one_line(run_command("serve", second, tmp_path))
        assert first.process.poll() is None
    finally:
        first.kill()
    for setting, line in refusals.items():
        assert f"{env[setting]} ({setting})" in line
        # The supervisor is named, not the worker that holds the socket: it is what to stop.
        assert f"in use by pid {first.process.pid} (" in line
        assert "-m pluct_server serve)" in line


def test_an_address_another_program_listens_on_is_refused_naming_it(foreign_listener, tmp_path):
    listener, port = foreign_listener
    env = production_env(UNREACHABLE_DATABASE, PLUCT_HTTP_LISTEN=f"127.0.0.1:{port}")

    line = refused_in_one_line(run_command("serve", env, tmp_path))

    assert line.startswith(f"pluct: cannot listen on 127.0.0.1:{port} (PLUCT_HTTP_LISTEN): ")
    assert f"in use by pid {listener.pid} ({sys.executable} -c import socket" in line


def as_unprivileged(env: dict[str, str], workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run `serve` as a user who may not listen on low ports (nobody, if the suite runs as root)."""
    drop = []
    if os.geteuid() == 0:
        drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run(
        [*drop, sys.executable, "-m", "pluct_server", "serve"],
        cwd=workdir,
        env={**env, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'clients'}"},
        capture_output=True,
        text=True,
        timeout=GIVE_UP_SECONDS,
        check=False,
    )


@pytest.mark.parametrize(
    ("setting", "listen", "because"),
    [
        ("PLUCT_GRPC_LISTEN", "192.0.2.1:{port}", "Cannot assign requested address"),
        ("PLUCT_HTTP_LISTEN", "no-such-host.invalid:{port}", ""),
        ("PLUCT_METRICS_LISTEN", "127.0.0.1:1", "Permission denied"),
    ],
)
def test_an_address_that_cannot_be_listened_on_is_one_line(setting, listen, because):
    listen = listen.format(port=free_port())
    env = production_env(UNREACHABLE_DATABASE, **{setting: listen})

    line = refused_in_one_line(as_unprivileged(env, Path("/")))

    assert line.startswith(f"pluct: cannot listen on {listen} ({setting}): {because}")


def listening(port: int) -> bool:
    """Whether anything accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as client:
        return client.connect_ex(("127.0.0.1", port)) == 0


async def test_the_addresses_stay_claimed_while_no_worker_listens(
    production_dsn,  # noqa: F811
    tmp_path,
):
    env = production_env(production_dsn)
    grpc_port = int(env["PLUCT_GRPC_LISTEN"].rpartition(":")[2])
    first = ServiceProcess(env, tmp_path)
    try:
        await first.wait_serving()
        # The supervisor, stopped, cannot replace the worker: for now nothing listens.
        supervisor = psutil.Process(first.process.pid)
        (worker,) = (c for c in supervisor.children() if "spawn_main" in " ".join(c.cmdline()))
        supervisor.suspend()
        try:
            worker.kill()
            deadline = time.monotonic() + GIVE_UP_SECONDS
            while listening(grpc_port):
                assert time.monotonic() < deadline, "the killed worker still listens"
                await asyncio.sleep(0.05)
            line = refused_in_one_line(run_command("serve", env, tmp_path))
        finally:
            supervisor.resume()
        await first.wait_serving()  # the replaced worker binds beside the claim
        first.process.send_signal(signal.SIGTERM)
        assert await first.exit_code() == 0
    finally:
        first.kill()
    assert f"cannot listen on {env['PLUCT_GRPC_LISTEN']} (PLUCT_GRPC_LISTEN): already in use" in (
        line
    )


def time_wait_ports() -> set[int]:
    """The local ports of this namespace's connections in TIME_WAIT."""
    ports = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for row in table.read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == TIME_WAIT:
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def ask_to_be_hung_up_on(port: int) -> None:
    """Send an HTTP/1.0 request, which the server answers and then closes, the first to close."""
    with socket.create_connection(("127.0.0.1", port), timeout=GIVE_UP_SECONDS) as client:
        client.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        while client.recv(65536):
            pass


async def test_a_restart_on_the_same_addresses_is_not_refused_for_closed_connections(
    production_dsn,  # noqa: F811
    tmp_path,
):
    env = production_env(production_dsn)
    http_port = int(env["PLUCT_HTTP_LISTEN"].rpartition(":")[2])
    first = ServiceProcess(env, tmp_path)
    try:
        await first.wait_serving()
        await asyncio.to_thread(ask_to_be_hung_up_on, http_port)
        first.process.send_signal(signal.SIGTERM)
        assert await first.exit_code() == 0
    finally:
        first.kill()
    # The server's side of that connection waits out its last packets on the port.
    assert http_port in time_wait_ports()

    again = ServiceProcess(env, tmp_path)
    try:
        await again.wait_serving()
    finally:
        again.kill()
