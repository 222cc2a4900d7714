"""The shim's lifecycle: its routes, its in-process way to the RPCs, and the HTTP listener."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable

from aiohttp import web
from google.protobuf.descriptor import ServiceDescriptor

from pluct_server.api.grpc.inprocess import InProcessCalls
from pluct_server.api.http.app import Guards, HttpLimits, Probe, ShimHandler
from pluct_server.api.http.comments import Comments
from pluct_server.api.http.describe import BUILTIN_ROUTES, ServiceInfo
from pluct_server.api.http.legacy import LEGACY, LegacyProfile
from pluct_server.api.http.openapi import openapi_document
from pluct_server.api.http.protocol import JsonErrorServer
from pluct_server.api.http.render import Renderer
from pluct_server.api.http.routes import Route, Router, rpc_routes

_LOGGER = logging.getLogger(__name__)
_LINGER_SECONDS = 1.0


class Gateway:
    """The JSON shim: an aiohttp server whose every route is a call to the gRPC server."""

    def __init__(
        self,
        services: Iterable[ServiceDescriptor],
        guards: Guards,
        calls: InProcessCalls,
        *,
        probe: Probe,
        limits: HttpLimits | None = None,
        profile: LegacyProfile = LEGACY,
    ) -> None:
        self.limits = limits or HttpLimits()
        self.routes: tuple[Route, ...] = (*BUILTIN_ROUTES, *rpc_routes(services, Comments.load()))
        self.router = Router(self.routes)  # refuses clashing routes at start
        renderer = Renderer(profile)
        renderer.check(list(self.routes))  # and a profile that names unknown fields
        self.info = ServiceInfo.installed()
        self.openapi = openapi_document(self.routes, profile, renderer, self.info)
        self._guards = guards
        # The RPCs are called in-process, through the guard gRPC applies: no second network hop.
        self._calls = calls
        self._probe = probe
        self._profile = profile
        self.port = 0
        self._runner: web.ServerRunner | None = None
        self._handler: ShimHandler | None = None

    async def start(
        self, listen: str, ssl_context: ssl.SSLContext | None = None, *, reuse_port: bool = False
    ) -> int:
        """Open the channel and listen on `listen` (host:port, 0 picks a port); return the port."""
        host, _, port = listen.rpartition(":")
        self._handler = ShimHandler(
            router=self.router,
            calls=self._calls,
            guards=self._guards,
            profile=self._profile,
            limits=self.limits,
            info=self.info,
            probe=self._probe,
            openapi=self.openapi,
        )
        # The low-level server: every request reaches our handler (no router that could answer
        # in plain text), and we read bodies ourselves, under our own limits.
        server = JsonErrorServer(
            self._handler,
            connections_per_address=self.limits.max_connections_per_address,
            trusted_proxies=self._guards.trusted_proxies,
            keepalive_timeout=self.limits.idle_seconds,
            # A client gone mid-request cancels its handler (and so its gRPC call).
            handler_cancellation=True,
            # After refusing a body, drain what is in flight only briefly (aiohttp waits 10 s),
            # so a client that keeps dripping cannot keep the connection.
            lingering_time=_LINGER_SECONDS,
            # Our own access line covers each request (access.py); aiohttp's would repeat it,
            # user ids in paths included, and ignore PLUCT_ACCESS_LOG.
            access_log=None,
        )
        self._runner = web.ServerRunner(server, handle_signals=False)
        try:
            await self._runner.setup()
            site = web.TCPSite(
                self._runner,
                host.strip("[]"),
                int(port),
                ssl_context=ssl_context,
                reuse_port=reuse_port or None,
            )
            await site.start()
        except BaseException as error:
            await self.stop(0)
            if isinstance(error, OSError):
                # As gRPC reports a port it cannot bind: one line, no stack trace, exit 1.
                raise RuntimeError(f"cannot listen for HTTP on {listen}: {error}") from error
            raise
        self.port = int(self._runner.addresses[0][1])
        _LOGGER.info("HTTP shim listening on %s:%d", host, self.port)
        return self.port

    async def stop(self, grace: float) -> None:
        """Refuse new connections, give requests in flight `grace` seconds, then close."""
        if self._handler is not None:
            self._handler.draining = True
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()
            if self._runner.server is not None:
                await self._runner.server.shutdown(grace)
            await self._runner.cleanup()
            self._runner = None
