"""Shared test plumbing: databases, servers and the ledger invariant."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
from prometheus_client.parser import text_string_to_metric_families

from pluct_server.app.server import PluctServer
from pluct_server.security.callers import GRANTABLE_SCOPES
from pluct_server.store.audit_store import EVENTS_BEGAN
from pluct_server.values.callers import Caller
from pluct_server.values.clock import Clock
from pluct_server.values.settings import RATE_OFF, Settings

ADMIN_SECRET = "test-admin-" + "a1b2c3d4e5f6g7h8i9j0" * 2
WEBHOOK_SECRET = "test-webhook-" + "k1l2m3n4o5p6q7r8s9t0" * 2
JWT_SECRET = "test-jwt-" + "u1v2w3x4y5z6A7B8C9D0" * 3  # long enough for HS512 probes

ADMIN_METADATA = (("authorization", f"Bearer {ADMIN_SECRET}"),)
WEBHOOK_METADATA = (("x-webhook-secret", WEBHOOK_SECRET),)
# What the public legacy routes allow, as the scopes of the key internal callers use in tests.
CALLER_SCOPES = ("users:create", "credits:read", "tokens:vend", "tokens:validate")
CREDENTIAL_KEYS = ("authorization", "x-webhook-secret")
# Who makes the suite's keys in process: it holds every scope, so it may give any of them.
TEST_KEY_MAKER = Caller("tests", GRANTABLE_SCOPES)
# The role the suite's server serves as; the test database's owner migrates for it.
SERVING_ROLE = "pluct_serving"


def settings_for_test(data_dir: Path, **overrides: object) -> Settings:
    """Settings for a server under test: free ports, fixed secrets, a fast health check."""
    base = Settings(
        database_url=None,
        admin_secret=ADMIN_SECRET,
        jwt_secret=JWT_SECRET,
        webhook_secret=WEBHOOK_SECRET,
        grpc_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        data_dir=data_dir,
        health_interval_seconds=0.2,
        shutdown_grace_seconds=5.0,
        # Limits are proven by the tests that switch them on; the rest must not trip over them.
        vend_rate=RATE_OFF,
        http_ip_rate=RATE_OFF,
        signup_rate=RATE_OFF,
        auth_failure_rate=RATE_OFF,
        # So are the shares one address may hold at once: every test client is on loopback.
        grpc_max_concurrent_rpcs_per_address=100_000,
        http_max_concurrent_requests_per_address=100_000,
        http_max_connections_per_address=100_000,
        cache_refresh_seconds=1.0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


class DefaultKey(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Sends `authorization: Bearer <key>` on every call that carries no credential of its own."""

    def __init__(self, secret: str) -> None:
        self._header = ("authorization", f"Bearer {secret}")

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        metadata = tuple(client_call_details.metadata or ())
        if not any(key in CREDENTIAL_KEYS for key, _ in metadata):
            metadata = (*metadata, self._header)
        details = grpc.aio.ClientCallDetails(
            client_call_details.method,
            client_call_details.timeout,
            metadata,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


async def caller_key(server: PluctServer, scopes=CALLER_SCOPES, name: str = "tests") -> str:
    """Make an API key on `server` and return its secret."""
    secret, _ = await server.api_keys.create(name, scopes, TEST_KEY_MAKER)
    return secret


def new_user_id(prefix: str = "user") -> str:
    """Return a user id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def new_request_id() -> str:
    """Return a fresh request id."""
    return secrets.token_hex(8)


@asynccontextmanager
async def scratch_database(server_url: str) -> AsyncIterator[str]:
    """Create an empty database on the server at `server_url`, yield its DSN, then drop it."""
    name = f"pluct_test_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    parts = urlsplit(server_url)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def external_database_url() -> str | None:
    """Return DATABASE_URL when the suite should run against that server instead of embedded."""
    return os.environ.get("DATABASE_URL", "").strip() or None


class MovableClock(Clock):
    """The system's clock, plus however far a test moved it; sleeps end once it passes them."""

    def __init__(self) -> None:
        self.moved_seconds = 0.0
        self._sleepers: set[asyncio.Future[None]] = set()

    def time(self) -> float:
        """Return wall time, moved."""
        return super().time() + self.moved_seconds

    def monotonic(self) -> float:
        """Return monotonic time, moved."""
        return super().monotonic() + self.moved_seconds

    async def sleep(self, seconds: float) -> None:
        """Wait until this clock, real time and moves together, has passed `seconds`."""
        deadline = self.monotonic() + seconds
        while (left := deadline - self.monotonic()) > 0:
            moved = asyncio.get_running_loop().create_future()
            self._sleepers.add(moved)
            try:
                await asyncio.wait({moved}, timeout=left)
            finally:
                self._sleepers.discard(moved)

    def advance(self, seconds: float) -> None:
        """Move the clock `seconds` on, as if they had passed, and wake every sleeper to look."""
        if seconds < 0:
            raise ValueError("a clock only moves on")
        self.moved_seconds += seconds
        for sleeper in self._sleepers:
            sleeper.get_loop().call_soon_threadsafe(_wake, sleeper)


def _wake(sleeper: asyncio.Future[None]) -> None:
    if not sleeper.done():
        sleeper.set_result(None)


async def schema_before(conn: asyncpg.Connection, version: int) -> None:
    """Bring an empty database to the schema as it stood before migration `version`."""
    from pluct_server.store.migrate import _apply, apply_functions, load_functions, load_migrations

    async with conn.transaction():
        await apply_functions(conn, load_functions())
    for migration in load_migrations():
        if migration.version < version:
            async with conn.transaction():
                await _apply(conn, migration)


def clock_of(server: PluctServer) -> MovableClock:
    """Return the clock running_server gave `server`, for the test to move."""
    assert isinstance(server.clock, MovableClock), "a server of running_server"
    return server.clock


@asynccontextmanager
async def running_server(settings: Settings, dsn: str) -> AsyncIterator[PluctServer]:
    """Start a PluctServer on a clock the test may move (server.clock), stop it on the way out."""
    server = PluctServer(settings, dsn, clock=MovableClock())
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=1.0)


LEDGER_MISMATCHES = """
SELECT u.user_id, u.balance, u.transaction_count, u.total_spent,
       COALESCE(SUM(CASE WHEN l.type IN ('spend', 'expiration') THEN -l.amount ELSE l.amount END),
                0) AS ledger_sum,
       COUNT(l.id) AS ledger_rows,
       COALESCE(SUM(CASE l.type WHEN 'spend' THEN l.amount WHEN 'refund' THEN -l.amount END),
                0) AS ledger_spent
  FROM users u LEFT JOIN ledger l ON l.user_id = u.user_id
 GROUP BY u.user_id
HAVING u.balance <> COALESCE(SUM(CASE WHEN l.type IN ('spend', 'expiration') THEN -l.amount
                                      ELSE l.amount END), 0)
    OR u.transaction_count <> COUNT(l.id)
    OR u.total_spent <> COALESCE(SUM(CASE l.type WHEN 'spend' THEN l.amount
                                                 WHEN 'refund' THEN -l.amount END), 0)
"""


async def time_passes_for_grants(dsn: str, user_id: str, seconds: float) -> None:
    """Move `user_id`'s grant expiries `seconds` nearer, as if that long had passed for them.

    Only the times PostgreSQL keeps move; its now() decides, for every replica alike.
    """
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            # The user's row first, as every writer of its grants takes it.
            await conn.execute(
                "UPDATE users SET next_expire_time = next_expire_time"
                " - make_interval(secs => $2) WHERE user_id = $1",
                user_id,
                seconds,
            )
            moved = await conn.execute(
                "UPDATE grants SET expire_time = expire_time - make_interval(secs => $2)"
                " WHERE user_id = $1 AND expire_time IS NOT NULL",
                user_id,
                seconds,
            )
    finally:
        await conn.close()
    assert moved != "UPDATE 0", f"no expiring grant for {user_id!r}"


# A balance is what remains of the user's grants, at every moment nothing has expired unwritten.
GRANT_MISMATCHES = """
SELECT u.user_id, u.balance, coalesce(g.remaining, 0) AS granted
  FROM users u
  LEFT JOIN (SELECT user_id, sum(remaining) AS remaining FROM grants GROUP BY user_id) g
         ON g.user_id = u.user_id
 WHERE u.balance <> coalesce(g.remaining, 0)
"""


# Every ledger entry since events began and within the default retention (the suite's servers
# keep it) has exactly one event, and every event its entry.
EVENT_MISMATCHES = f"""
SELECT l.user_id, l.id AS transaction_id, count(e.event_id) AS events
  FROM ledger l LEFT JOIN events e ON e.user_id = l.user_id AND e.transaction_id = l.id
 WHERE l.created_at >= greatest(
           (SELECT applied_at FROM schema_migrations WHERE version = {EVENTS_BEGAN}),
           now() - interval '30 days')
 GROUP BY l.user_id, l.id
HAVING count(e.event_id) <> 1
UNION ALL
SELECT e.user_id, e.transaction_id, 0 AS events
  FROM events e LEFT JOIN ledger l ON l.user_id = e.user_id AND l.id = e.transaction_id
 WHERE l.id IS NULL
"""  # noqa: S608 - only a constant of ours is spliced in


async def ledger_mismatches(dsn: str) -> list[dict[str, object]]:
    """Return every user whose balance, count or spend total disagrees with its ledger or grants,
    and every ledger entry without its one event.
    """
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('users')") is None:
            return []  # no server has migrated this database yet: no balances to disagree
        found = [dict(row) for row in await conn.fetch(LEDGER_MISMATCHES)]
        if await conn.fetchval("SELECT to_regclass('grants')") is not None:
            found += [dict(row) for row in await conn.fetch(GRANT_MISMATCHES)]
        if await conn.fetchval("SELECT to_regclass('events')") is not None:
            found += [dict(row) for row in await conn.fetch(EVENT_MISMATCHES)]
        return found
    finally:
        await conn.close()


def error_reason(error: BaseException) -> tuple[str, dict[str, str]]:
    """Return the google.rpc.ErrorInfo reason and metadata a failed call carried."""
    import grpc
    from google.rpc import error_details_pb2, status_pb2

    assert isinstance(error, grpc.aio.AioRpcError)
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.reason, dict(info.metadata)
    raise AssertionError("the error carried no ErrorInfo")


async def wait_until_serving(
    grpc_target: str, process: subprocess.Popen[bytes], deadline_seconds: float = 120
) -> None:
    """Poll a service process's gRPC health until SERVING; fail if it exits or never gets there."""
    import asyncio
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the service exited during start-up ({process.returncode})")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the service did not report SERVING within {deadline_seconds} s")


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def ledger_of(dsn: str, user_id: str) -> tuple[int | None, Counter[str]]:
    """Return the user's balance (None: no such user) and its ledger rows by type."""
    conn = await asyncpg.connect(dsn)
    try:
        balance = await conn.fetchval("SELECT balance FROM users WHERE user_id = $1", user_id)
        rows = await conn.fetch("SELECT type FROM ledger WHERE user_id = $1", user_id)
    finally:
        await conn.close()
    return balance, Counter(row["type"] for row in rows)


async def time_passes_for_limits(dsn: str, subject: str, seconds: float) -> None:
    """Move `subject`'s rate-limit counters `seconds` on, as if that long had passed for them.

    PostgreSQL's now() keeps deciding limits, for every replica alike; a counter is nothing but
    the time its allowance is spent up to, so moving that time back is time passing for it.
    """
    conn = await asyncpg.connect(dsn)
    try:
        moved = await conn.execute(
            "UPDATE rate_limits SET tat = tat - make_interval(secs => $2) WHERE subject = $1",
            subject,
            seconds,
        )
    finally:
        await conn.close()
    assert moved != "UPDATE 0", f"no rate-limit counter for {subject!r}"


async def time_passes_for_requests(dsn: str, user_id: str, seconds: float) -> None:
    """Move the request ids remembered for `user_id` `seconds` nearer their end (see above)."""
    conn = await asyncpg.connect(dsn)
    try:
        moved = await conn.execute(
            "UPDATE request_keys SET expire_time = expire_time - make_interval(secs => $2)"
            " WHERE user_id = $1",
            user_id,
            seconds,
        )
    finally:
        await conn.close()
    assert moved != "UPDATE 0", f"no request id remembered for {user_id!r}"


MetricSamples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric_samples(text: str) -> MetricSamples:
    """Every sample of a Prometheus text exposition, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
