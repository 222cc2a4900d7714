"""Builds the running service: database, servicers, interceptor, health, reflection and shim."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pluct.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from pluct.credit.v1 import credit_service_pb2, credit_service_pb2_grpc
from pluct.token.v1 import token_service_pb2, token_service_pb2_grpc

from pluct_server.auth import Authenticator, caller_auth_by_method
from pluct_server.config import Settings
from pluct_server.errors import Unavailable
from pluct_server.gateway import Gateway, HttpLimits
from pluct_server.health import HealthMonitor
from pluct_server.ledger import Ledger
from pluct_server.rpc import ServiceInterceptor
from pluct_server.services.admin import AdminServicer
from pluct_server.services.credit import CreditServicer
from pluct_server.services.token import TokenServicer
from pluct_server.store.database import Database
from pluct_server.store.ledger_store import LedgerStore
from pluct_server.store.migrate import migrate
from pluct_server.tokens import TokenSigner
from pluct_server.vending import TokenVendor

_LOGGER = logging.getLogger(__name__)

SERVICES = (
    credit_service_pb2.DESCRIPTOR.services_by_name["CreditService"],
    token_service_pb2.DESCRIPTOR.services_by_name["TokenService"],
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
)
SERVICE_NAMES = tuple(service.full_name for service in SERVICES)
# How long start-up waits for a database that is still coming up (a fresh container, say).
_DATABASE_WAIT_SECONDS = 30.0


async def wait_and_migrate(
    database: Database, wait_seconds: float = _DATABASE_WAIT_SECONDS
) -> None:
    """Apply pending migrations, retrying while the database is not reachable yet."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.2
    while True:
        try:
            applied = await migrate(database)
        except Unavailable:
            if time.monotonic() + delay > deadline:
                raise
            _LOGGER.info("database not reachable yet; retrying in %.1fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        if applied:
            _LOGGER.info("database schema now at version %d", applied[-1])
        return


class PluctServer:
    """The gRPC server and the HTTP shim in front of it, sharing one database pool."""

    def __init__(self, settings: Settings, dsn: str) -> None:
        self.settings = settings
        self.database = Database(dsn, max_size=settings.db_pool_size)
        self.health = HealthMonitor(self.database, SERVICE_NAMES, settings.health_interval_seconds)
        self.grpc_port = 0
        self.http_port = 0
        self._server: grpc.aio.Server | None = None
        self._gateway: Gateway | None = None

    async def start(self) -> None:
        """Open the pool, migrate, and start serving gRPC (and HTTP)."""
        settings = self.settings
        await self.database.open()
        try:
            await wait_and_migrate(self.database)
        except BaseException:
            await self.database.close()
            raise

        authenticator = Authenticator(settings.admin_secret, settings.webhook_secret)
        signer = TokenSigner(settings.jwt_secret)
        ledger = Ledger(LedgerStore(self.database), settings.signup_allowance)
        vendor = TokenVendor(ledger, signer, settings.token_ttl)

        server = grpc.aio.server(
            interceptors=[ServiceInterceptor(authenticator, caller_auth_by_method(SERVICES))],
            options=[("grpc.so_reuseport", 0)],
        )
        credit_service_pb2_grpc.add_CreditServiceServicer_to_server(
            CreditServicer(ledger, authenticator), server
        )
        token_service_pb2_grpc.add_TokenServiceServicer_to_server(
            TokenServicer(vendor, signer), server
        )
        admin_service_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(ledger), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        self.grpc_port = server.add_insecure_port(settings.grpc_listen)
        gateway = Gateway(
            SERVICES,
            authenticator,
            probe=self.health.check_now,
            limits=HttpLimits(max_body_bytes=settings.http_max_body_bytes),
        )
        server.add_insecure_port(gateway.grpc_target)  # the shim's private way in
        await server.start()
        self._server = server
        self._gateway = gateway
        await self.health.start()
        _LOGGER.info("gRPC listening on %s", _with_port(settings.grpc_listen, self.grpc_port))
        try:
            self.http_port = await gateway.start(settings.http_listen)
        except BaseException:
            await self.stop(0)  # half a service is worse than none
            raise

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
        await self.database.close()


def _with_port(listen: str, port: int) -> str:
    host = listen.rpartition(":")[0]
    return f"{host}:{port}"
