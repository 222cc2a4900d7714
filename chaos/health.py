"""Watches gRPC health through a fault: every change of state, with when it happened."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

POLL_SECONDS = 0.1
SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"


class HealthWatch:
    """Polls Health/Check ten times a second; keeps (time.monotonic, state) at each change."""

    def __init__(self, target: str) -> None:
        self._target = target
        self.changes: list[tuple[float, str]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> HealthWatch:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def seen(self, state: str, since: float, until: float | None = None) -> bool:
        """Tell whether health reported `state` at some moment between `since` and `until`."""
        until = time.monotonic() if until is None else until
        current = None
        for at, changed in self.changes:
            if at > until:
                break
            if at <= since:
                current = changed
            elif changed == state:
                return True
        return current == state

    def first(self, state: str, since: float) -> float | None:
        """Return when health first reported `state` after `since` (None if it never did)."""
        return next((at for at, changed in self.changes if at >= since and changed == state), None)

    def state(self) -> str:
        """Return the state reported last."""
        return self.changes[-1][1] if self.changes else "never asked"

    async def _watch(self) -> None:
        async with grpc.aio.insecure_channel(self._target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    state = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.aio.AioRpcError as error:
                    state = error.code().name  # no worker answered at all
                if not self.changes or self.changes[-1][1] != state:
                    self.changes.append((time.monotonic(), state))
                await asyncio.sleep(POLL_SECONDS)
