"""The embedded PostgreSQL: one server per data folder, always stopped by a live owner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import psutil

from pluct_server.runtime.embedded_postgres import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent
# A process that starts the server, says so, and stops it when told to (a line on stdin).
OWNER_SCRIPT = """
import sys
from pluct_server.runtime.embedded_postgres import EmbeddedPostgres
server = EmbeddedPostgres(sys.argv[1])
server.start()
print("owns" if server.owns_server else "visits", flush=True)
sys.stdin.readline()
server.stop()
"""
# A hang guard, not a timing claim.
GIVE_UP_SECONDS = 60


class OwnerProcess:
    """Another process that starts the embedded server on a data folder, as `make run` does."""

    def __init__(self, data_dir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", OWNER_SCRIPT, str(data_dir)],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.role = self.process.stdout.readline().strip()
        assert self.role == "owns", f"the owner did not start (exit {self.process.poll()})"

    def watchdog(self) -> psutil.Process:
        """Return the watchdog that stops the server should this process die."""
        children = psutil.Process(self.process.pid).children()
        found = [child for child in children if "watch_owner" in " ".join(child.cmdline())]
        assert len(found) == 1, children
        return found[0]

    def kill(self) -> None:
        """SIGKILL the process: it stops nothing on its way out."""
        self.process.kill()
        self.process.wait()

    def stop_cleanly(self) -> None:
        """Have the process stop the server itself, then exit."""
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.close()
        assert self.process.wait(GIVE_UP_SECONDS) == 0


def assert_left_nothing(server: EmbeddedPostgres, data_dir: Path) -> None:
    """No server, no watchdog, no owner record and no socket folder remain."""
    assert not server.is_running()
    assert not server.socket_dir.exists()
    assert not (data_dir / "pluct-owner.json").exists()
    for process in psutil.process_iter(["cmdline"]):
        assert str(data_dir) not in " ".join(process.info["cmdline"] or []), process


async def test_second_starter_reuses_the_running_server_and_only_the_owner_stops_it(tmp_path):
    owner = EmbeddedPostgres(tmp_path / "pg")
    dsn = owner.start()
    try:
        visitor = EmbeddedPostgres(tmp_path / "pg")
        assert visitor.start() == dsn
        assert owner.owns_server and not visitor.owns_server
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        owner.stop()
    assert not owner.owns_server
    assert_left_nothing(owner, tmp_path / "pg")
    owner.stop()  # stopping a stopped server is a no-op


async def test_data_survives_a_restart(tmp_path):
    server = EmbeddedPostgres(tmp_path / "pg")
    dsn = server.start()
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE kept (value int); INSERT INTO kept VALUES (42)")
    await conn.close()
    server.stop()
    assert not server.socket_dir.exists()

    dsn = server.start()
    try:
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT value FROM kept") == 42
        await conn.close()
    finally:
        server.stop()
    assert_left_nothing(server, tmp_path / "pg")


def test_a_live_owner_in_another_process_keeps_the_server_until_it_stops_it(tmp_path):
    owner = OwnerProcess(tmp_path / "pg")
    try:
        visitor = EmbeddedPostgres(tmp_path / "pg")
        visitor.start()
        assert not visitor.owns_server
        owner.stop_cleanly()
    finally:
        owner.kill()
    assert_left_nothing(visitor, tmp_path / "pg")


def test_the_watchdog_stops_the_server_of_a_killed_owner_and_removes_its_socket_folder(tmp_path):
    owner = OwnerProcess(tmp_path / "pg")
    server = EmbeddedPostgres(tmp_path / "pg")
    try:
        assert server.is_running() and server.socket_dir.exists()
        watchdog = owner.watchdog()
    finally:
        owner.kill()
    watchdog.wait(GIVE_UP_SECONDS)  # it exits once it has stopped the server
    assert_left_nothing(server, tmp_path / "pg")


async def test_a_server_orphaned_with_its_watchdog_is_adopted_and_stopped_by_the_next_start(
    tmp_path,
):
    owner = OwnerProcess(tmp_path / "pg")
    try:
        # What `kill -9` of the whole process tree leaves: nobody to stop the server.
        owner.watchdog().kill()
    finally:
        owner.kill()
    adopter = EmbeddedPostgres(tmp_path / "pg")
    assert adopter.is_running()

    dsn = adopter.start()
    try:
        assert adopter.owns_server
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        adopter.stop()
    assert_left_nothing(adopter, tmp_path / "pg")


async def test_a_killed_server_leaves_a_socket_folder_the_next_start_reuses(tmp_path):
    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    try:
        # The postmaster itself killed: its socket and lock files stay behind.
        pid = int((tmp_path / "pg" / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        family = [postmaster, *postmaster.children()]
        postmaster.kill()
        # Its children notice and exit; a new server may not start while they hold its memory.
        psutil.wait_procs(family, timeout=GIVE_UP_SECONDS)
        assert any(server.socket_dir.iterdir())

        dsn = server.start()
        assert server.owns_server
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        server.stop()
    assert_left_nothing(server, tmp_path / "pg")
