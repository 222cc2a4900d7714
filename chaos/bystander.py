"""A well-behaved client beside an attack: what an operator's probe and a real caller see."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.admin.v1 import admin_service_pb2_grpc
from pluct.token.v1 import token_service_pb2 as token_pb
from pluct.token.v1 import token_service_pb2_grpc

ROUND_SECONDS = 0.25
# A probe waits this long at most: a load balancer's or kubelet's usual timeout.
PROBE_TIMEOUT_SECONDS = 2.0


@dataclass
class Seen:
    """Every answer of one kind of call: OK or the failure, and how long each took."""

    answers: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def calls(self) -> int:
        """Return how many calls were made."""
        return sum(self.answers.values())

    @property
    def ok(self) -> int:
        """Return how many were answered OK."""
        return self.answers["OK"]

    def p99_ms(self) -> float:
        """Return the 99th percentile latency (the largest, with few samples)."""
        if len(self.latencies_ms) < 100:
            return max(self.latencies_ms, default=0.0)
        return statistics.quantiles(self.latencies_ms, n=100)[98]

    def summary(self) -> str:
        """Return "ok/calls, p50 / p99 ms" and any failures."""
        failures = ", ".join(f"{k} {v}" for k, v in self.answers.items() if k != "OK")
        p50 = statistics.median(self.latencies_ms) if self.latencies_ms else 0.0
        text = f"{self.ok}/{self.calls} OK, p50 {p50:.1f} ms, p99 {self.p99_ms():.1f} ms"
        return f"{text} ({failures})" if failures else text


class Bystander:
    """Four times a second: HTTP /health and a legacy read, and gRPC calls on a new connection.

    The gRPC calls are an admin's ListUsers with its key, Health/Check and GetJwks without one:
    what an operator, an orchestrator's probe and a token verifier do while someone attacks.
    """

    def __init__(self, grpc_target: str, http_base: str, admin_key: str, user_id: str) -> None:
        self._grpc_target = grpc_target
        self._http_base = http_base
        self._admin = (("authorization", f"Bearer {admin_key}"),)
        self._user_id = user_id
        self.seen: dict[str, Seen] = defaultdict(Seen)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Bystander:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_SECONDS),
            # A connection per request, as a balancer's probe opens one.
            connector=aiohttp.TCPConnector(force_close=True),
        )
        self._task = asyncio.create_task(self._rounds())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    def reset(self) -> dict[str, Seen]:
        """Return what was seen since the last reset, and start afresh."""
        seen, self.seen = self.seen, defaultdict(Seen)
        return dict(seen)

    async def _rounds(self) -> None:
        while True:
            began = time.monotonic()
            await asyncio.gather(
                self._timed("http /health", self._http("/health")),
                self._timed("http balance", self._http(f"/user/{self._user_id}/balance")),
                self._grpc_round(),
            )
            await asyncio.sleep(max(0.0, ROUND_SECONDS - (time.monotonic() - began)))

    async def _http(self, path: str) -> str:
        assert self._session is not None
        async with self._session.get(self._http_base + path) as response:
            await response.read()
            return "OK" if response.status == 200 else f"HTTP {response.status}"

    async def _grpc_round(self) -> None:
        async with grpc.aio.insecure_channel(self._grpc_target) as channel:
            admin = admin_service_pb2_grpc.AdminServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            tokens = token_service_pb2_grpc.TokenServiceStub(channel)
            timeout = PROBE_TIMEOUT_SECONDS
            await asyncio.gather(
                self._timed(
                    "grpc admin ListUsers",
                    _grpc(
                        lambda: admin.ListUsers(
                            admin_pb.ListUsersRequest(page_size=1),
                            metadata=self._admin,
                            timeout=timeout,
                        )
                    ),
                ),
                self._timed(
                    "grpc Health/Check",
                    _grpc(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)),
                ),
                self._timed(
                    "grpc GetJwks",
                    _grpc(lambda: tokens.GetJwks(token_pb.GetJwksRequest(), timeout=timeout)),
                ),
            )

    async def _timed(self, kind: str, call: Awaitable[str]) -> None:
        began = time.monotonic()
        try:
            answer = await call
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            answer = type(error).__name__
        seen = self.seen[kind]
        seen.answers[answer] += 1
        seen.latencies_ms.append((time.monotonic() - began) * 1000)


async def _grpc(call: Callable[[], Awaitable[object]]) -> str:
    try:
        await call()
    except grpc.aio.AioRpcError as error:
        return str(error.code().name)
    return "OK"
