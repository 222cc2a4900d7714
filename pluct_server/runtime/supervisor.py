"""Runs the service as worker processes sharing both ports, and replaces any worker that dies."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from pluct_server.app.server import PluctServer, wait_and_migrate
from pluct_server.observability.logs import setup_logging
from pluct_server.observability.metrics import (
    MULTIPROCESS_DIR_ENV,
    flush_counts,
    forget_worker,
    serve_metrics,
)
from pluct_server.runtime.event_loop import loop_kind, run_on
from pluct_server.runtime.listen_addresses import refusal
from pluct_server.store.database import Database
from pluct_server.values.settings import Settings

_LOGGER = logging.getLogger("pluct_server.runtime.supervisor")

# Connections left for migrations, operators and other clients of the same server.
_SPARE_CONNECTIONS = 10
# A worker that dies is replaced after this long, doubling while it keeps dying young.
_RESTART_DELAY_SECONDS = 0.5
_RESTART_DELAY_MAX_SECONDS = 10.0
# A worker that lived this long was healthy: its next restart starts the backoff afresh.
_HEALTHY_SECONDS = 30.0
# Beyond the drain grace, how long stopping workers get before they are killed.
_STOP_SLACK_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1
# How often the supervisor looks up from waiting on its workers (to notice a stop request).
_WATCH_SECONDS = 0.5
# glibc gives threads that allocate at once arenas of their own, up to eight per core, and
# keeps what they grew: after a burst of load gRPC's threads held a worker's memory ~2 MiB
# higher than with two arenas, which served as fast (`make bench` loads, three runs each).
# Read by glibc as a worker starts; a value in the environment wins.
_ARENA_LIMIT_ENV = "MALLOC_ARENA_MAX"
_ARENA_LIMIT = "2"
_OPEN_FILES_WANTED = 65_536


@dataclass(frozen=True)
class PoolPlan:
    """How many connections each worker may open, so that all of them fit the server."""

    per_worker: int
    max_connections: int
    reserved: int


def plan_pool(wanted: int, workers: int, max_connections: int, reserved: int) -> PoolPlan:
    """Split the server's connections between workers, never above `wanted` each."""
    budget = max(workers, max_connections - reserved - _SPARE_CONNECTIONS)
    return PoolPlan(min(wanted, budget // workers), max_connections, reserved)


async def prepare_database(dsn: str, settings: Settings) -> PoolPlan:
    """Apply migrations once for every worker, and read the server's connection limit."""
    database = Database(dsn, max_size=1, statement_cache_size=settings.db_statement_cache_size)
    await database.open()
    try:
        await wait_and_migrate(database, settings.migrate_database_url)
        async with database.connection() as conn:
            limits = await conn.fetchrow(
                "SELECT current_setting('max_connections')::int AS max_connections, "
                "current_setting('superuser_reserved_connections')::int AS reserved"
            )
    finally:
        await database.close()
    assert limits is not None
    return plan_pool(
        settings.db_pool_size, settings.workers, limits["max_connections"], limits["reserved"]
    )


class Supervisor:
    """Starts `settings.workers` workers, replaces the ones that die, and stops them all."""

    def __init__(self, settings: Settings, dsn: str) -> None:
        # Its addresses were claimed as `serve` started (listen_addresses), port 0 made a port.
        self._settings = settings
        self._dsn = dsn
        self._context = multiprocessing.get_context("spawn")
        _start_resource_tracker()
        self._ready: Any = self._context.SimpleQueue()
        self._workers: dict[int, BaseProcess] = {}
        self._started_at: dict[int, float] = {}
        self._delays: dict[int, float] = {}
        self._stopping = False

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; return the exit status (1 if workers could not start)."""
        plan = asyncio.run(prepare_database(self._dsn, self._settings))
        # Workers find the schema current: they never need the owner's credentials.
        self._settings = replace(
            self._settings,
            db_pool_size=plan.per_worker,
            migrate_database_url=None,
        )
        _LOGGER.info(
            "%d worker(s) x %d database connections (server max_connections %d)",
            self._settings.workers,
            plan.per_worker,
            plan.max_connections,
        )
        open_files = raise_open_files_limit()
        _LOGGER.info("each worker may hold %d open files (connections included)", open_files)
        previous = {sig: signal.signal(sig, self._stop) for sig in stop_signals()}
        # Every worker writes its metrics here; /metrics on any of them adds them all up.
        samples = tempfile.TemporaryDirectory(prefix="pluct-metrics-")
        os.environ[MULTIPROCESS_DIR_ENV] = samples.name
        own_arena_limit = _ARENA_LIMIT_ENV not in os.environ
        # For the workers: this process's glibc read its environment when it started.
        os.environ.setdefault(_ARENA_LIMIT_ENV, _ARENA_LIMIT)
        try:
            if self._settings.metrics_listen:
                try:
                    serve_metrics(self._settings.metrics_listen)
                except OSError as error:  # taken since the check at start
                    raise refusal(
                        "PLUCT_METRICS_LISTEN", self._settings.metrics_listen, error
                    ) from None
            for index in range(self._settings.workers):
                self._start(index)
            if not self._wait_until_ready():
                self._stop_all()
                _LOGGER.error("a worker did not start; nothing is served")
                return 1
            _LOGGER.info("ready; stop with Ctrl-C or SIGTERM")
            self._watch()
            self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.environ.pop(MULTIPROCESS_DIR_ENV, None)
            if own_arena_limit:
                os.environ.pop(_ARENA_LIMIT_ENV, None)
            samples.cleanup()
        _LOGGER.info("all workers stopped")
        return 0

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self, index: int) -> None:
        process = self._context.Process(
            target=run_worker,
            args=(self._settings, self._dsn, index, os.getpid(), self._ready),
            name=f"pluct-worker-{index}",
        )
        process.start()
        self._workers[index] = process
        self._started_at[index] = time.monotonic()
        _LOGGER.info("worker %d started (pid %s)", index, process.pid)

    def _wait_until_ready(self) -> bool:
        waiting = set(self._workers)
        while waiting and not self._stopping:
            while not self._ready.empty():
                waiting.discard(self._ready.get())
            if any(not self._workers[index].is_alive() for index in waiting):
                return False
            time.sleep(0.05)
        return True

    def _watch(self) -> None:
        # Dead workers waiting for their replacement, and when it is due (monotonic). Several
        # can be waiting at once: one worker's back-off never delays another's replacement.
        due: dict[int, float] = {}
        while not self._stopping:
            live = {p.sentinel: i for i, p in self._workers.items() if i not in due}
            timeout = _WATCH_SECONDS
            if due:
                timeout = max(0.0, min(timeout, min(due.values()) - time.monotonic()))
            ended = wait(list(live), timeout=timeout) if live else _sleep(timeout)
            for sentinel in ended:
                assert isinstance(sentinel, int)  # a process sentinel is a file descriptor
                index = live[sentinel]
                due[index] = time.monotonic() + self._bury(index)
            for index, when in sorted(due.items(), key=lambda item: item[1]):
                if when <= time.monotonic() and not self._stopping:
                    del due[index]
                    self._start(index)
            while not self._ready.empty():
                self._ready.get()

    def _bury(self, index: int) -> float:
        """Account for a worker that died; return how long to wait before replacing it."""
        died = self._workers[index]
        died.join()
        if died.pid is not None:
            forget_worker(died.pid)
        lived = time.monotonic() - self._started_at[index]
        delay = self._delays.get(index, _RESTART_DELAY_SECONDS)
        delay = _RESTART_DELAY_SECONDS if lived > _HEALTHY_SECONDS else delay
        self._delays[index] = min(delay * 2, _RESTART_DELAY_MAX_SECONDS)
        _LOGGER.warning(
            "worker %d (pid %s) exited with %s after %.1f s; replacing it in %.1f s",
            index,
            died.pid,
            died.exitcode,
            lived,
            delay,
        )
        return delay

    def _stop_all(self) -> None:
        for process in self._workers.values():
            if process.is_alive():
                process.terminate()  # SIGTERM: each worker drains its calls in flight
        deadline = time.monotonic() + self._settings.shutdown_grace_seconds + _STOP_SLACK_SECONDS
        for index, process in self._workers.items():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                _LOGGER.error("worker %d did not stop in time; killing it", index)
                process.kill()
                process.join()


def raise_open_files_limit() -> int:
    """Raise this process's (and its workers') open-file limit towards the hard one; return it.

    Every connection is a file descriptor: at a shell's usual 1,024, a flood of connections
    would leave a worker none for its database pool long before its connection bounds are met.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Far above every connection bound a worker keeps; a container's million is no use to it.
    wanted = _OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, _OPEN_FILES_WANTED)
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    return soft


def run_worker(settings: Settings, dsn: str, index: int, parent: int, ready: Any) -> None:
    """Serve in a worker process until SIGTERM; the entry point of every worker."""
    _die_with(parent)
    setup_logging(settings.log_level, settings.log_format, index, access_log=settings.access_log)
    try:
        run_on(
            settings.event_loop,
            lambda: serve(settings, dsn, on_ready=lambda: ready.put(index), reuse_port=True),
        )
    except Exception:
        logging.getLogger("pluct_server").exception("worker %d failed", index)
        sys.exit(1)
    finally:
        flush_counts()  # calls that finished while the loop shut down


async def serve(
    settings: Settings, dsn: str, *, on_ready: Any = None, reuse_port: bool = False
) -> None:
    """Run one server until SIGTERM or SIGINT, then drain it."""
    log = logging.getLogger("pluct_server")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in stop_signals():
        loop.add_signal_handler(signum, stop.set)
    server = PluctServer(settings, dsn, reuse_port=reuse_port)
    await server.start()
    log.info("serving on the %s event loop", loop_kind(loop))
    if on_ready is not None:
        on_ready()
    await stop.wait()
    log.info("shutting down: draining calls in flight")
    await server.stop()
    log.info("stopped")


def stop_signals() -> tuple[signal.Signals, ...]:
    """Return the signals that stop the service cleanly: SIGTERM, SIGINT and SIGHUP."""
    # A hangup (a closed terminal or SSH session) would otherwise kill the process outright,
    # skipping the drain and leaving the embedded PostgreSQL to its watchdog; under nohup it
    # is ignored, and stays so.
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        return (signal.SIGTERM, signal.SIGINT)
    return (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _start_resource_tracker() -> None:
    """Start multiprocessing's helper process deaf to SIGHUP, as it is to SIGINT and SIGTERM."""
    # A hangup reaches the whole process group: the helper would die of it and be relaunched,
    # with warnings and tracebacks, while the workers drain.
    from multiprocessing import resource_tracker

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(signal.SIGHUP, previous)


def _sleep(seconds: float) -> list[object]:
    """Sleep when there is no live worker to wait on; nothing ends meanwhile."""
    time.sleep(seconds)
    return []


def _die_with(parent: int) -> None:
    """Have the kernel stop this worker when the supervisor dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request was in place
        sys.exit(0)
