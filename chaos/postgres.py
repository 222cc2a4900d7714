"""A PostgreSQL server of our own on a TCP port: created, started, restarted, copied, promoted."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

import psutil

from chaos.accounts import run
from pluct_server.runtime.embedded_postgres import postgres_tool

SUPERUSER = "postgres"
TIMEOUT_SECONDS = 60
# Small, so that three servers, three workers and the load fit a shared 2-core machine.
BASE_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "100",
    "shared_buffers": "'32MB'",
    "log_line_prefix": "'%m [%p] '",
}


class ToolFailed(RuntimeError):
    """A PostgreSQL tool exited with an error."""


class Postgres:
    """One cluster in its own data folder, listening on 127.0.0.1:port, run by pg_ctl."""

    def __init__(self, data_dir: Path, port: int, account: pwd.struct_passwd | None) -> None:
        self.data_dir = data_dir
        self.port = port
        self._account = account
        # Next to the data folder, not in it: pg_basebackup must not copy one server's log.
        self.log = data_dir.with_name(f"{data_dir.name}.log")
        self._tool_log = data_dir.with_name(f"{data_dir.name}-tools.log")

    def url(self, user: str = SUPERUSER, database: str = "postgres") -> str:
        """Return a connection URL for `user` on `database`."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def create(self, settings: Mapping[str, str] | None = None) -> None:
        """Create the cluster, with trust authentication on the loopback only."""
        self._tool(
            "initdb",
            [
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "--no-locale",
                "-E",
                "utf8",
                "-U",
                SUPERUSER,
            ],
        )
        lines = [
            f"{name} = {value}" for name, value in {**BASE_SETTINGS, **(settings or {})}.items()
        ]
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(["", *lines, ""]))

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._pg_ctl("-l", str(self.log), "-o", f"-p {self.port}", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: roll back and disconnect; `immediate`: as if it crashed)."""
        if self.running():
            self._pg_ctl("-m", mode, "stop")

    def restart(self, mode: str) -> None:
        """Stop the server in `mode` and start it again, waiting until it accepts connections."""
        self._pg_ctl("-m", mode, "-l", str(self.log), "restart")

    def promote(self) -> None:
        """Turn this standby into a primary, waiting until it accepts writes."""
        self._pg_ctl("promote")

    def standby(self, data_dir: Path, port: int) -> Postgres:
        """Copy this server into a streaming standby of it (not started yet)."""
        self._tool(
            "pg_basebackup",
            [
                *("-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER),
                *("-D", str(data_dir), "-R", "-X", "stream", "-c", "fast"),
            ],
        )
        return Postgres(data_dir, port, self._account)

    def running(self) -> bool:
        """Tell whether a postmaster is alive on the data folder."""
        return self._postmaster() is not None

    def kill(self) -> None:
        """Stop the server however it can be stopped: the last resort of a clean-up."""
        with contextlib.suppress(ToolFailed, OSError, subprocess.TimeoutExpired):
            self.stop("immediate")
        postmaster = self._postmaster()
        if postmaster is not None:
            os.kill(postmaster.pid, signal.SIGKILL)

    def _postmaster(self) -> psutil.Process | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            process = psutil.Process(pid)
            return process if process.name() == "postgres" else None
        except (OSError, ValueError, psutil.Error):
            return None

    def _pg_ctl(self, *args: str) -> None:
        self._tool("pg_ctl", ["-D", str(self.data_dir), "-w", "-t", str(TIMEOUT_SECONDS), *args])

    def _tool(self, name: str, args: list[str]) -> None:
        argv = [postgres_tool(name), *args]
        code, output = run(argv, self._account, timeout=TIMEOUT_SECONDS + 30, log=self._tool_log)
        if code != 0:
            raise ToolFailed(f"{name} {' '.join(args)} exited with {code}:\n{output[-2000:]}")
