"""What the JSON shim costs: GetBalance by direct gRPC and by HTTP, in one service run."""

# Run with `python -m bench.shim_overhead [calls]` (default 2000 sequential calls each way).

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import grpc
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc

from bench.harness import SECRETS, Service, postgres_server, running_service

WARM_UP = 200
ROUNDS = 4  # the two ways alternate in rounds, so drift over the run hits both alike
USER = "bench-shim-overhead"


async def timed(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    """Make `count` sequential calls; return each one's latency in milliseconds."""
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def describe(name: str, latencies: list[float]) -> str:
    """One line: median, p90 and p99 of `latencies`."""
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return (
        f"{name:<14} n={len(latencies):<5} median {statistics.median(latencies):6.3f} ms"
        f"   p90 {cuts[89]:6.3f} ms   p99 {cuts[98]:6.3f} ms"
    )


async def measure(service: Service, calls: int) -> tuple[list[float], list[float]]:
    """Time `calls` sequential GetBalance calls each way; return (gRPC ms, HTTP ms)."""
    async with (
        grpc.aio.insecure_channel(service.grpc_target) as channel,
        aiohttp.ClientSession(service.http_base) as http,
    ):
        credit = credit_service_pb2_grpc.CreditServiceStub(channel)
        # The bootstrap admin secret: checked in memory, as a cached API key would be.
        admin = (("authorization", f"Bearer {SECRETS['ADMIN_SECRET']}"),)
        await credit.CreateUser(
            credit_pb.CreateUserRequest(user_id=USER, initial_credits=7), metadata=admin
        )
        request = credit_pb.GetBalanceRequest(user_id=USER)

        async def via_grpc() -> None:
            reply = await credit.GetBalance(request, metadata=admin)
            assert reply.balance == 7

        async def via_http() -> None:
            async with http.get(f"/user/{USER}/balance") as response:
                body = await response.json()
                assert response.status == 200 and body["balance"] == 7

        await timed(via_grpc, WARM_UP)
        await timed(via_http, WARM_UP)
        grpc_ms: list[float] = []
        http_ms: list[float] = []
        for _ in range(ROUNDS):
            grpc_ms += await timed(via_grpc, calls // ROUNDS)
            http_ms += await timed(via_http, calls // ROUNDS)
    return grpc_ms, http_ms


async def main(calls: int) -> None:
    """Start a service, measure both ways and print the figures."""
    async with postgres_server() as url, running_service(url) as service:
        grpc_ms, http_ms = await measure(service, calls)
    print("GetBalance, sequential calls, one service process, keep-alive connections")
    print(describe("direct gRPC", grpc_ms))
    print(describe("HTTP shim", http_ms))
    overhead = statistics.median(http_ms) - statistics.median(grpc_ms)
    print(f"shim overhead (median): {overhead:+.3f} ms per call")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
