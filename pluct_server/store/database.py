"""The asyncpg pool, and the one place where driver exceptions become the store's own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

import asyncpg

from pluct_server.observability.metrics import (
    DB_POOL_CONNECTIONS,
    DB_POOL_IN_USE,
    DB_POOL_WAITS,
    count_of,
)
from pluct_server.store.errors import (
    DatabaseUnavailable,
    RateLimitExceeded,
    StoreFailure,
    UniqueViolation,
    WriteOutcomeUnknown,
)
from pluct_server.values.settings import Settings

_LOGGER = logging.getLogger(__name__)

# Errors that mean "the server is not there right now", as opposed to a bug in our SQL.
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    # A connection still busy with the error of a server that went away, or (several hosts)
    # no host that takes writes, as during a switchover.
    asyncpg.exceptions.InternalClientError,
)


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Return a connection to the pool as it is.

    The default reset (RESET ALL, UNLISTEN, advisory unlock) costs a second round trip on every
    call. Nothing here changes session state that outlives a call: no SET, LISTEN or cursors,
    and the migration lock is released before its connection goes back. An open transaction is
    still rolled back by asyncpg before this runs.
    """


# Raised by pluct_rate_limited() (sql/rate_limits.sql) to undo a statement whose limit is spent.
RATE_LIMIT_SQLSTATE = "PL429"


class Database:
    """Owns the connection pool for the life of the server."""

    def __init__(
        self,
        dsn: str,
        *,
        max_size: int = Settings.db_pool_size,
        connect_timeout: float = 5.0,
        command_timeout: float = Settings.db_command_timeout_seconds,
        statement_cache_size: int = Settings.db_statement_cache_size,
    ) -> None:
        self._dsn = dsn
        self._max_size = max_size
        self._statement_cache_size = statement_cache_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        self._where = server_of(dsn)
        # Told at once when a call finds the database gone (health then checks, not waits).
        self.on_outage: Callable[[], None] | None = None

    @property
    def statement_cache_size(self) -> int:
        """Return how many prepared statements each connection keeps (0 behind PgBouncer)."""
        return self._statement_cache_size

    async def open(self) -> None:
        """Create the pool; connections open lazily, so a down database does not block start-up."""
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=self._max_size,
            timeout=self._connect_timeout,
            command_timeout=self._command_timeout,
            # A connection idle this long is closed, so a restarted server is rediscovered quickly.
            max_inactive_connection_lifetime=60.0,
            reset=_keep_session,
            # 0 turns named prepared statements off, which PgBouncer's transaction mode needs.
            statement_cache_size=self._statement_cache_size,
        )

    async def close(self) -> None:
        """Close every connection, waiting for queries in flight."""
        if self._pool is not None:
            await asyncio.wait_for(self._pool.close(), timeout=self._command_timeout)
            self._pool = None

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """Lend a pooled connection, translating driver failures into the store's own."""
        try:
            async with self._acquire() as conn:
                yield conn
        except Exception as exc:
            self._reraise(exc)

    @property
    def connect_timeout(self) -> float:
        """How long a statement may wait for a pooled connection before UNAVAILABLE."""
        return self._connect_timeout

    def _acquire(self) -> Any:
        pool = self._pool
        if pool is None:
            raise RuntimeError("Database.open() was not called")
        if pool.get_idle_size() == 0:
            count_of(DB_POOL_WAITS).inc()  # a new connection to open, or a busy pool to queue on
        return pool.acquire(timeout=self._connect_timeout)

    async def report_pool(self) -> None:
        """Publish the pool's size and the connections in use as metrics."""
        if self._pool is not None:
            size = self._pool.get_size()
            DB_POOL_CONNECTIONS.set(size)
            DB_POOL_IN_USE.set(size - self._pool.get_idle_size())

    # The one-statement calls below are every call's hot path: they acquire and translate
    # inline, as the generator behind connection() costs a visible share of each call. A write
    # that fails once it went out may have committed: `writes` says to report so.

    async def fetchrow(self, query: str, *args: Any, writes: bool = False) -> asyncpg.Record | None:
        """Run one statement and return its first row."""
        row: asyncpg.Record | None = await self._one_statement("fetchrow", query, args, writes)
        return row

    async def fetch(self, query: str, *args: Any, writes: bool = False) -> list[asyncpg.Record]:
        """Run one statement and return all its rows."""
        rows: list[asyncpg.Record] = await self._one_statement("fetch", query, args, writes)
        return rows

    async def execute(self, query: str, *args: Any, writes: bool = False) -> str:
        """Run one statement and return its status, e.g. "DELETE 3"."""
        status: str = await self._one_statement("execute", query, args, writes)
        return status

    async def _one_statement(
        self, run: str, query: str, args: tuple[Any, ...], writes: bool
    ) -> Any:
        """Run `query` with the connection method `run` on a pooled connection."""
        sent = False
        try:
            async with self._acquire() as conn:
                sent = writes
                return await getattr(conn, run)(query, *args)
        except Exception as exc:
            self._reraise(exc, sent)

    def _reraise(self, exc: Exception, write_sent: bool = False) -> NoReturn:
        """Raise what a driver failure was, in the store's terms, telling on_outage of an outage."""
        translated = _translated(exc, write_sent)
        if isinstance(translated, StoreFailure):
            _LOGGER.warning("database unavailable at %s: %s", self._where, type(exc).__name__)
            if self.on_outage is not None:
                self.on_outage()
        if translated is exc:
            raise exc
        raise translated from exc

    async def ping(self, timeout: float = 2.0) -> bool:  # noqa: ASYNC109 - a query timeout
        """Tell whether the database answers a trivial query within `timeout` seconds."""
        try:
            # Waiting for a pooled connection counts too: a busy pool must not hold the answer.
            async with asyncio.timeout(timeout), self.connection() as conn:
                await conn.fetchval("SELECT 1")
        except (DatabaseUnavailable, TimeoutError):
            return False
        return True


def _translated(exc: Exception, write_sent: bool = False) -> Exception:
    """Return what a driver failure was, in the store's terms (the exception itself if nothing)."""
    if isinstance(exc, asyncpg.UniqueViolationError):
        return UniqueViolation(exc.constraint_name or "")
    if isinstance(exc, _UNAVAILABLE_ERRORS):
        if not write_sent or _refused_before_sending(exc):
            return DatabaseUnavailable()  # nothing went out
        return WriteOutcomeUnknown(timed_out=isinstance(exc, TimeoutError))
    if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate == RATE_LIMIT_SQLSTATE:
        return RateLimitExceeded()
    return exc


def _refused_before_sending(exc: Exception) -> bool:
    """Tell whether the driver refused to start the statement at all."""
    if isinstance(exc, asyncpg.exceptions.TargetServerAttributeNotMatched):
        return True
    return isinstance(exc, asyncpg.exceptions.InternalClientError) and str(exc).startswith(
        "cannot switch to state"
    )


def server_of(dsn: str) -> str:
    """Return the hosts, ports and database a DSN names, for logs: never the user or password."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    hosts = parts.netloc.rpartition("@")[2] or ",".join(query.get("host", [])) or "localhost"
    ports = query.get("port", [])
    where = f"{hosts}:{ports[0]}" if ports and ":" not in hosts else hosts
    return f"{where}/{parts.path.lstrip('/') or '-'}"
