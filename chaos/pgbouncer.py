"""PgBouncer in transaction mode in front of one PostgreSQL server (Debian's `pgbouncer`)."""

from __future__ import annotations

import asyncio
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from chaos.accounts import spawn

START_TIMEOUT_SECONDS = 10
# Where Debian installs it; root's PATH has /usr/sbin, other users' may not.
_KNOWN_PLACES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def find_pgbouncer() -> str | None:
    """Return the pgbouncer program, or None when it is not installed."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((place for place in _KNOWN_PLACES if Path(place).is_file()), None)


class PgBouncer:
    """A pgbouncer process of our own, pooling by transaction, on 127.0.0.1:port."""

    def __init__(
        self,
        program: str,
        folder: Path,
        port: int,
        server_port: int,
        users: tuple[str, ...],
        account: pwd.struct_passwd | None,
    ) -> None:
        self.port = port
        self.log = folder / "pgbouncer.log"
        self._program = program
        self._folder = folder
        self._server_port = server_port
        self._users = users
        self._account = account
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, user: str, database: str) -> str:
        """Return a connection URL for `user` on `database`, through the pooler."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    async def start(self) -> None:
        """Write the configuration, start pgbouncer and wait until it accepts connections."""
        config = self._write_config()
        self._process = spawn([self._program, str(config)], self._account, self.log)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _accepts(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not start; see {self.log}")
            await asyncio.sleep(0.05)

    async def restart(self) -> None:
        """Stop and start again: every server connection, and its session state, is new."""
        self.stop()
        await self.start()

    def stop(self) -> None:
        """Stop pgbouncer (SIGINT: at once), killing it if it lingers."""
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _write_config(self) -> Path:
        auth = self._folder / "userlist.txt"
        auth.write_text("".join(f'"{user}" ""\n' for user in self._users))
        config = self._folder / "pgbouncer.ini"
        config.write_text(
            f"""[databases]
* = host=127.0.0.1 port={self._server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {auth}
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 40
reserve_pool_size = 10
server_reset_query =
ignore_startup_parameters = extra_float_digits
pidfile = {self._folder / "pgbouncer.pid"}
"""
        )
        return config


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0
