"""Keeps gRPC health in step with the database: SERVING only while it answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from pluct_server.store.database import Database
from pluct_server.values.clock import SYSTEM_CLOCK, Clock

_LOGGER = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# For liveness probes: SERVING while the process runs, whatever the database does. Restarting
# a server because its database is down would only add a restart to the outage.
LIVENESS_SERVICE = "pluct.liveness"


class HealthServicer(health_aio.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1.Health with List too, which grpcio's servicer advertises but lacks."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        """Return the status of every service this server reports on, "" included."""
        # A snapshot, as health.proto allows: a status may change while the answer is on its way.
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._server_status.items()
            }
        )


class HealthMonitor:
    """Pings the database on an interval and publishes the result for "" and every service."""

    def __init__(
        self,
        database: Database,
        service_names: Sequence[str],
        interval_seconds: float,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.servicer = HealthServicer()
        self._clock = clock
        self._database = database
        self._names = ("", *service_names)
        self._interval = interval_seconds
        self._serving: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self._ping: asyncio.Future[bool] | None = None
        self._stopping = False
        self._suspicion: asyncio.Task[bool] | None = None
        database.on_outage = self._suspect

    async def start(self) -> None:
        """Publish NOT_SERVING, check once, then keep checking in the background."""
        for name in self._names:
            await self.servicer.set(name, NOT_SERVING)
        await self.servicer.set(LIVENESS_SERVICE, SERVING)
        await self.check_now()
        self._task = asyncio.create_task(self._run(), name="health-monitor")

    async def check_now(self) -> bool:
        """Ping the database now and publish the result; return it.

        Callers arriving while a ping is in flight share it, so a flood of HTTP /health probes
        takes one pooled connection at most, not the pool.
        """
        if self._ping is None or self._ping.done():
            self._ping = asyncio.ensure_future(self._ping_and_publish())
        return await asyncio.shield(self._ping)

    async def _ping_and_publish(self) -> bool:
        ok = await self._database.ping(timeout=min(self._interval, 2.0))
        if not self._stopping:
            await self._publish(ok)
        return ok

    def _suspect(self) -> None:
        """Check now, not at the next interval: a call just found the database gone."""
        # Once NOT_SERVING, the interval's pings watch for the way back; one check at a time.
        idle = self._suspicion is None or self._suspicion.done()
        if self._serving and not self._stopping and idle:
            self._suspicion = asyncio.ensure_future(self.check_now())

    async def stop(self) -> None:
        """Report NOT_SERVING for good (so balancers drain us) and stop pinging."""
        self._stopping = True
        await self.servicer.enter_graceful_shutdown()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            try:
                await self.check_now()
            except Exception:
                _LOGGER.exception("health check failed unexpectedly")

    async def _publish(self, ok: bool) -> None:
        if ok == self._serving:
            return
        if self._serving is not None:
            _LOGGER.warning("database %s", "reachable again" if ok else "unreachable")
        self._serving = ok
        for name in self._names:
            await self.servicer.set(name, SERVING if ok else NOT_SERVING)
