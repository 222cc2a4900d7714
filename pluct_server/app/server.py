"""Builds the running service: database, servicers, interceptor, health, reflection and shim."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pluct.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from pluct.credit.v1 import credit_service_pb2, credit_service_pb2_grpc
from pluct.token.v1 import token_service_pb2, token_service_pb2_grpc

from pluct_server.api.grpc.field_rules import is_user_id
from pluct_server.api.grpc.inprocess import InProcessCalls
from pluct_server.api.grpc.interceptor import EdgeLimits, ServiceInterceptor
from pluct_server.api.grpc.reflection import enable_reflection
from pluct_server.api.grpc.services.admin import AdminServicer
from pluct_server.api.grpc.services.credit import CreditServicer
from pluct_server.api.grpc.services.token import TokenServicer
from pluct_server.api.http import Gateway, Guards, HttpLimits
from pluct_server.app.health import HealthMonitor
from pluct_server.app.maintenance import Maintenance
from pluct_server.app.tls import grpc_server_credentials, http_ssl_context
from pluct_server.domain.events import Events
from pluct_server.domain.ledger import Ledger
from pluct_server.domain.prices import Prices
from pluct_server.domain.vending import TokenVendor
from pluct_server.domain.webhooks import WebhookEndpoints
from pluct_server.observability.metrics import flush_counts
from pluct_server.observability.tracing import flush_traces, server_interceptors, tracing_wanted
from pluct_server.security.api_keys import ApiKeys
from pluct_server.security.auth import Authenticator
from pluct_server.security.callers import GRANTABLE_SCOPES, access_rules
from pluct_server.security.limits import Limiter
from pluct_server.security.revocations import Revocations
from pluct_server.security.tokens import TokenKeys
from pluct_server.store.api_key_store import ApiKeyStore
from pluct_server.store.audit_store import AuditStore
from pluct_server.store.database import Database
from pluct_server.store.errors import DatabaseUnavailable
from pluct_server.store.event_store import EventStore
from pluct_server.store.grants import grant_serving_role
from pluct_server.store.ledger_store import LedgerStore
from pluct_server.store.limit_store import LimitStore
from pluct_server.store.migrate import migrate
from pluct_server.store.price_store import PriceStore
from pluct_server.store.revocation_store import RevocationStore
from pluct_server.store.spend_batch import SpendBatcher
from pluct_server.store.webhook_endpoint_store import WebhookEndpointStore
from pluct_server.values.clock import SYSTEM_CLOCK, Clock
from pluct_server.values.settings import Settings

_LOGGER = logging.getLogger(__name__)

SERVICES = (
    credit_service_pb2.DESCRIPTOR.services_by_name["CreditService"],
    token_service_pb2.DESCRIPTOR.services_by_name["TokenService"],
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
)
SERVICE_NAMES = tuple(service.full_name for service in SERVICES)
# How long start-up waits for a database that is still coming up (a fresh container, say).
_DATABASE_WAIT_SECONDS = 30.0
# Requests are a few hundred bytes; anything near this is an attack, refused before decoding.
_MAX_MESSAGE_BYTES = 1024 * 1024
DEV_KEY_NAME = "dev key (make run)"
_KEEPALIVE_SECONDS = 60
_KEEPALIVE_TIMEOUT_SECONDS = 20


async def wait_and_migrate(
    database: Database,
    owner_dsn: str | None = None,
    wait_seconds: float = _DATABASE_WAIT_SECONDS,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Apply pending migrations (as the owner, when given), retrying while the database is away."""
    if owner_dsn is None:
        await _retrying(lambda: _migrate(database), wait_seconds, clock)
        return
    # The owner's path may cross the same PgBouncer: it prepares statements no more than ours.
    owner = Database(owner_dsn, max_size=1, statement_cache_size=database.statement_cache_size)
    try:
        await owner.open()
        await _retrying(lambda: _migrate(owner), wait_seconds, clock)
        role = await database.fetchrow("SELECT current_user AS role")
        assert role is not None
        async with owner.connection() as conn:
            await grant_serving_role(conn, role["role"])
    finally:
        await owner.close()


async def _migrate(database: Database) -> None:
    applied = await migrate(database)
    if applied:
        _LOGGER.info("database schema now at version %d", applied[-1])


async def _retrying(step: Callable[[], Awaitable[None]], wait_seconds: float, clock: Clock) -> None:
    """Run `step`, again while the database is not reachable yet, for up to `wait_seconds`."""
    deadline = clock.monotonic() + wait_seconds
    delay = 0.2
    while True:
        try:
            await step()
            return
        except DatabaseUnavailable:
            if clock.monotonic() + delay > deadline:
                raise
            _LOGGER.info("database not reachable yet; retrying in %.1fs", delay)
            await clock.sleep(delay)
            delay = min(delay * 2, 5.0)


def grpc_options(settings: Settings, *, reuse_port: bool) -> list[tuple[str, int]]:
    """Return the gRPC server's options: its ports, message sizes and connection bounds."""
    read_timeout_ms = int(settings.request_read_timeout_seconds * 1000)
    return [
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_concurrent_streams", settings.grpc_max_streams_per_connection),
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        # A connection that has not set up HTTP/2 within the read timeout is closed.
        ("grpc.server_handshake_timeout_ms", read_timeout_ms),
        # A connection with no call for this long gets a GOAWAY and is closed; clients reconnect
        # on their next call. Connections cost memory whether or not they carry calls.
        ("grpc.max_connection_idle_ms", settings.grpc_max_connection_idle_seconds * 1000),
        # Beyond this many connections a worker accepts no more (existing ones keep working),
        # so a flood of connections cannot use up the file descriptors its pool needs.
        ("grpc.max_allowed_incoming_connections", settings.grpc_max_connections),
        # A peer that vanished without closing (a dead host holding a Watch) is found and
        # dropped: pinged after a minute of silence, and given 20 s to answer.
        ("grpc.keepalive_time_ms", _KEEPALIVE_SECONDS * 1000),
        ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_SECONDS * 1000),
    ]


def token_keys(
    settings: Settings, revocations: Revocations | None = None, clock: Clock = SYSTEM_CLOCK
) -> TokenKeys:
    """Return the signing and verifying keys the settings name."""
    return TokenKeys.load(
        algorithm=settings.token_algorithm,
        hs256_secrets=settings.jwt_secrets,
        keys_dir=settings.token_keys_dir,
        active_kid=settings.token_active_kid,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        max_lifetime=settings.token_ttl,
        is_revoked=None if revocations is None else revocations.is_revoked,
        clock=clock,
    )


class PluctServer:
    """The gRPC server and the HTTP shim in front of it, sharing one database pool."""

    def __init__(
        self, settings: Settings, dsn: str, *, reuse_port: bool = False, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.settings = settings
        # Every time a worker reads for itself; tests pass one they move instead of sleeping.
        self.clock = clock
        # Workers share their ports (SO_REUSEPORT); a lone server refuses a port in use.
        self._reuse_port = reuse_port
        self.database = Database(
            dsn,
            max_size=settings.db_pool_size,
            statement_cache_size=settings.db_statement_cache_size,
            command_timeout=settings.db_command_timeout_seconds,
        )
        self.health = HealthMonitor(
            self.database, SERVICE_NAMES, settings.health_interval_seconds, clock
        )
        self.api_keys = ApiKeys(ApiKeyStore(self.database))
        self.revocations = Revocations(RevocationStore(self.database), settings.token_ttl)
        if settings.spend_batch_wait and settings.spend_batches_in_flight == 1:
            _LOGGER.warning(
                "PLUCT_SPEND_BATCH_WAIT_US has no effect: a vend waits for company only while"
                " another batch runs, and PLUCT_SPEND_BATCHES_IN_FLIGHT is 1"
            )
        self.spends = SpendBatcher(
            self.database,
            max_size=settings.spend_batch_max,
            max_wait=settings.spend_batch_wait,
            max_in_flight=settings.spend_batches_in_flight,
        )
        self.grpc_port = 0
        self.http_port = 0
        # What the shim checks before it calls, and how it calls: set by start(), read by a
        # second shim in tests.
        self.guards: Guards | None = None
        self.calls: InProcessCalls | None = None
        self._server: grpc.aio.Server | None = None
        self._gateway: Gateway | None = None
        self._interceptor: ServiceInterceptor | None = None
        self._maintenance: Maintenance | None = None
        self._tracing = tracing_wanted(os.environ)

    async def start(self) -> None:
        """Open the pool, migrate, and start serving gRPC (and HTTP)."""
        settings = self.settings
        await self.database.open()
        try:
            await wait_and_migrate(self.database, settings.migrate_database_url, clock=self.clock)
            if settings.dev_api_key:
                await self.api_keys.ensure(settings.dev_api_key, DEV_KEY_NAME, GRANTABLE_SCOPES)
        except BaseException:
            await self.database.close()
            raise
        if settings.open_callers:
            _LOGGER.warning(
                "PLUCT_CALLER_AUTH=open: gRPC callers without an API key are let in as on the "
                "legacy HTTP routes; use keys (the default) wherever the network is not trusted"
            )
        limiter = Limiter(
            LimitStore(self.database),
            vend=settings.vend_rate,
            http=settings.http_ip_rate,
            signup=settings.signup_rate,
            auth_failure=settings.auth_failure_rate,
        )
        authenticator = Authenticator(
            admin_secret=settings.admin_secret,
            webhook_secrets=settings.webhook_secrets,
            keys=self.api_keys,
            limiter=limiter,
            open_callers=settings.open_callers,
            legacy_webhook_secret=settings.webhook_legacy_secret,
            clock=self.clock,
        )
        ledger = Ledger(
            LedgerStore(self.database, self.spends),
            limiter,
            settings.signup_allowance,
            is_user_id,
            settings.request_id_retention,
            turn_wait_seconds=self.database.connect_timeout,
            clock=self.clock,
            signup_credits_ttl=settings.signup_credits_ttl,
        )
        events = Events(EventStore(self.database), settings.events_retention)
        maintenance = Maintenance(
            # Expired grants are written off within a round of expiring, whoever touches them.
            refreshers=[
                self.database.report_pool,
                self.api_keys.refresh,
                self.revocations.refresh,
                ledger.write_off_expired_grants,
            ],
            purgers=[
                limiter.forget_spent_counters,
                ledger.forget_expired_requests,
                self.revocations.purge,
                authenticator.forget_expired_holds,
                events.forget_old,
            ],
            refresh_seconds=settings.cache_refresh_seconds,
            clock=self.clock,
        )
        await maintenance.refresh_now()
        signer = token_keys(settings, self.revocations, self.clock)
        _LOGGER.info("tokens signed with %s, active kid %s", signer.algorithm, signer.active_kid)
        vendor = TokenVendor(ledger, signer, settings.token_ttl, self.clock)
        rules = access_rules(SERVICES)

        interceptor = ServiceInterceptor(
            authenticator,
            rules,
            limiter=limiter,
            trusted_proxies=settings.trusted_proxies,
            # Calls in flight are counted by the interceptor, not by gRPC's own limit: it knows
            # who is calling, so one address cannot fill what everyone shares.
            edge=EdgeLimits(
                max_in_flight=settings.grpc_max_concurrent_rpcs,
                max_in_flight_per_address=settings.grpc_max_concurrent_rpcs_per_address,
                read_timeout_seconds=settings.request_read_timeout_seconds,
            ),
        )
        self._interceptor = interceptor
        # Tracing goes outermost, so a call's span covers our interceptor's checks too.
        tracers = server_interceptors() if self._tracing else []
        server = grpc.aio.server(
            interceptors=[*tracers, interceptor],
            options=grpc_options(settings, reuse_port=self._reuse_port),
        )
        servicers = (
            CreditServicer(ledger),
            TokenServicer(vendor, signer),
            AdminServicer(
                ledger,
                self.api_keys,
                self.revocations,
                AuditStore(self.database, settings.events_retention),
                Prices(PriceStore(self.database)),
                events,
                WebhookEndpoints(
                    WebhookEndpointStore(self.database), settings.private_webhook_urls
                ),
            ),
        )
        credit_service_pb2_grpc.add_CreditServiceServicer_to_server(servicers[0], server)
        token_service_pb2_grpc.add_TokenServiceServicer_to_server(servicers[1], server)
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server(servicers[2], server)
        self.calls = InProcessCalls(interceptor, zip(SERVICES, servicers, strict=True))
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        if settings.reflection:
            enable_reflection(
                server, (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
            )
        credentials = grpc_server_credentials(settings)
        if credentials is None:
            self.grpc_port = server.add_insecure_port(settings.grpc_listen)
        else:
            self.grpc_port = server.add_secure_port(settings.grpc_listen, credentials)
        self.guards = Guards(
            authenticator=authenticator,
            limiter=limiter,
            rules=rules,
            webhook_secrets=settings.webhook_secrets,
            trusted_proxies=settings.trusted_proxies,
            clock=self.clock,
        )
        gateway = Gateway(
            SERVICES,
            self.guards,
            self.calls,
            probe=self.health.check_now,
            limits=HttpLimits(
                max_body_bytes=settings.http_max_body_bytes,
                body_seconds=settings.request_read_timeout_seconds,
                max_concurrent_requests=settings.http_max_concurrent_requests,
                max_requests_per_address=settings.http_max_concurrent_requests_per_address,
                max_connections_per_address=settings.http_max_connections_per_address,
            ),
        )
        await server.start()
        self._server = server
        self._gateway = gateway
        self._maintenance = maintenance
        maintenance.start()
        await self.health.start()
        _LOGGER.info("gRPC listening on %s", _with_port(settings.grpc_listen, self.grpc_port))
        try:
            self.http_port = await gateway.start(
                settings.http_listen, http_ssl_context(settings), reuse_port=self._reuse_port
            )
        except BaseException:
            await self.stop(0)  # half a service is worse than none
            raise

    @property
    def grpc_calls_in_flight(self) -> int:
        """Return how many gRPC calls count against the total now (health's probes aside)."""
        return 0 if self._interceptor is None else self._interceptor.gate.in_flight

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight calls finish within `grace`, then close the pool."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        if self._gateway is not None:
            # HTTP first: its requests in flight still need the gRPC server to answer them.
            await self._gateway.stop(grace)
            self._gateway = None
        await self.health.stop()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._maintenance is not None:
            await self._maintenance.stop()
            self._maintenance = None
        if self._interceptor is not None:
            await self._interceptor.gate.arrivals.close()
        await self.database.close()
        flush_counts()  # the last calls' counts, before the worker exits
        if self._tracing:
            await asyncio.to_thread(flush_traces)  # the exporter's send blocks


def _with_port(listen: str, port: int) -> str:
    host = listen.rpartition(":")[0]
    return f"{host}:{port}"
