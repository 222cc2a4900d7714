"""Run every benchmark against a service process and write bench/REPORT.md."""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import grpc
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.admin.v1 import admin_service_pb2_grpc
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc
from pluct.token.v1 import token_service_pb2 as token_pb
from pluct.token.v1 import token_service_pb2_grpc

from bench.harness import (
    SECRETS,
    LoadResult,
    Service,
    closed_loop,
    postgres_server,
    running_service,
)
from bench.shim_overhead import measure

REPORT = Path(__file__).parent / "REPORT.md"
ADMIN = (("authorization", f"Bearer {SECRETS['ADMIN_SECRET']}"),)
# Every limit on, as in production, but high enough that the load itself is never refused: the
# counters are charged on every call, so their cost is in every figure.
LIMITS_ON = {
    "PLUCT_VEND_RATE": "1000000/second",
    "PLUCT_HTTP_IP_RATE": "1000000/second",
    "PLUCT_SIGNUP_RATE": "1000000/second",
    "PLUCT_AUTH_FAILURE_RATE": "10/minute",
}
LIMITS_OFF = {name: "0" for name in LIMITS_ON}
CALLER_SCOPES = ["users:create", "credits:read", "tokens:vend", "tokens:validate"]
WEBHOOK = (("x-webhook-secret", SECRETS["WEBHOOK_SECRET"]),)
SPREAD_USERS = 100
# Backends report statistics when idle for a while; wait that long before reading them.
STATS_FLUSH_SECONDS = 11


async def fund(admin: admin_service_pb2_grpc.AdminServiceStub, user_id: str, credits: int) -> None:
    """Give a user `credits` credits in grants of at most 10000."""
    while credits > 0:
        amount = min(credits, 10_000)
        await admin.AddCredits(
            admin_pb.AddCreditsRequest(user_id=user_id, amount=amount), metadata=ADMIN
        )
        credits -= amount


async def transactions_committed(dsn: str) -> int:
    """Return the database's committed-transaction counter."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            )
        )
    finally:
        await conn.close()


async def round_trips(service: Service, name: str, call, calls: int = 500) -> tuple[str, float]:
    """Committed transactions per call: each single-statement call is exactly one."""
    await asyncio.sleep(STATS_FLUSH_SECONDS)
    before = await transactions_committed(service.dsn)
    for index in range(calls):
        await call(index)
    await asyncio.sleep(STATS_FLUSH_SECONDS)
    after = await transactions_committed(service.dsn)
    # The two counter reads are transactions of their own; the first is counted in `after`.
    return name, (after - before - 1) / calls


async def caller_metadata(admin: admin_service_pb2_grpc.AdminServiceStub) -> tuple[tuple[str, str]]:
    """Make the API key an internal caller would use, and return the metadata that carries it."""
    made = await admin.CreateApiKey(
        admin_pb.CreateApiKeyRequest(name="bench", scopes=CALLER_SCOPES), metadata=ADMIN
    )
    return (("authorization", f"Bearer {made.secret}"),)


async def limiter_cost(server_url: str, scale: int) -> list[LoadResult]:
    """Vends with every limit on against the same with every limit off, on fresh services."""
    results = []
    for label, limits in (("limits on", LIMITS_ON), ("limits off", LIMITS_OFF)):
        async with running_service(server_url, limits) as service:
            results += await _vends(service, label, 8000 // scale)
    return results


async def _vends(service: Service, label: str, total: int) -> list[LoadResult]:
    async with (
        grpc.aio.insecure_channel(service.grpc_target) as channel,
        aiohttp.ClientSession(service.http_base, connector=aiohttp.TCPConnector(limit=64)) as http,
    ):
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        tokens = token_service_pb2_grpc.TokenServiceStub(channel)
        key = await caller_metadata(admin)
        for n in range(SPREAD_USERS):
            await fund(admin, f"bench-{n}", 2 * total // SPREAD_USERS + 10)

        def vend(i: int):
            return tokens.VendToken(
                token_pb.VendTokenRequest(user_id=f"bench-{i % SPREAD_USERS}"), metadata=key
            )

        async def vend_http(i: int) -> None:
            body = {"userId": f"bench-{i % SPREAD_USERS}"}
            async with http.post("/vend-token", json=body) as response:
                response.raise_for_status()
                await response.read()

        await closed_loop("warm-up", vend, concurrency=8, total=200)
        return [
            await closed_loop(f"VendToken, 100 users ({label})", vend, concurrency=32, total=total),
            await closed_loop(
                f"POST /vend-token, 100 users ({label})", vend_http, concurrency=32, total=total
            ),
        ]


async def run(quick: bool) -> str:
    """Benchmark a fresh service and return the report as Markdown."""
    scale = 5 if quick else 1
    results: list[LoadResult] = []
    trips: list[tuple[str, float]] = []
    async with (
        postgres_server() as server_url,
        running_service(server_url, LIMITS_ON) as service,
    ):
        conn = await asyncpg.connect(service.dsn)
        pg_version = await conn.fetchval("SHOW server_version")
        await conn.close()
        async with (
            grpc.aio.insecure_channel(service.grpc_target) as channel,
            aiohttp.ClientSession(
                service.http_base, connector=aiohttp.TCPConnector(limit=64)
            ) as http,
        ):
            credit = credit_service_pb2_grpc.CreditServiceStub(channel)
            tokens = token_service_pb2_grpc.TokenServiceStub(channel)
            admin = admin_service_pb2_grpc.AdminServiceStub(channel)
            rss_idle = service.rss_mib()
            key = await caller_metadata(admin)

            await fund(admin, "bench-hot", 60_000 // scale)
            for n in range(SPREAD_USERS):
                await fund(admin, f"bench-{n}", 700 // scale)
            vended = await tokens.VendToken(
                token_pb.VendTokenRequest(user_id="bench-hot"), metadata=key
            )

            def balance(_: int):
                return credit.GetBalance(
                    credit_pb.GetBalanceRequest(user_id="bench-hot"), metadata=key
                )

            def vend_hot(_: int):
                return tokens.VendToken(
                    token_pb.VendTokenRequest(user_id="bench-hot"), metadata=key
                )

            def vend_spread(i: int):
                return tokens.VendToken(
                    token_pb.VendTokenRequest(user_id=f"bench-{i % SPREAD_USERS}"), metadata=key
                )

            def vend_idempotent(i: int):
                request = token_pb.VendTokenRequest(
                    user_id=f"bench-{i % SPREAD_USERS}", request_id=f"bench-vend-{i}"
                )
                return tokens.VendToken(request, metadata=key)

            async def vend_http(i: int) -> None:
                body = {"userId": f"bench-{i % SPREAD_USERS}"}
                async with http.post("/vend-token", json=body) as response:
                    response.raise_for_status()
                    await response.read()

            def validate(_: int):
                return tokens.ValidateToken(
                    token_pb.ValidateTokenRequest(token=vended.token), metadata=key
                )

            def webhook(i: int):
                return credit.AddCredits(
                    credit_pb.AddCreditsRequest(user_id=f"bench-pay-{i % 50}", amount=1),
                    metadata=WEBHOOK,
                )

            await closed_loop("warm-up", balance, concurrency=8, total=500)
            plan = [
                ("GetBalance", balance, 1, 2000),
                ("GetBalance", balance, 32, 20000),
                ("ValidateToken (no database)", validate, 32, 20000),
                ("VendToken, one user", vend_hot, 1, 2000),
                ("VendToken, one user", vend_hot, 32, 20000),
                ("VendToken, 100 users", vend_spread, 32, 20000),
                ("VendToken with request_id, 100 users", vend_idempotent, 32, 20000),
                ("POST /vend-token (HTTP shim), 100 users", vend_http, 32, 20000),
                ("AddCredits (webhook), 50 users", webhook, 32, 20000),
            ]
            for name, call, concurrency, total in plan:
                results.append(
                    await closed_loop(name, call, concurrency=concurrency, total=total // scale)
                )
            rss_loaded = service.rss_mib()

            grpc_ms, http_ms = await measure(service, 2000 // scale)
            shim = (statistics.median(grpc_ms), statistics.median(http_ms))

            if not quick:
                trips.append(await round_trips(service, "GetBalance", balance))
                trips.append(await round_trips(service, "VendToken", vend_hot))
                trips.append(
                    await round_trips(
                        service,
                        "VendToken with request_id",
                        lambda i: vend_idempotent(100_000 + i),
                    )
                )
                trips.append(await round_trips(service, "AddCredits (webhook)", webhook))
        limiter = await limiter_cost(server_url, scale)
    return render(results, limiter, trips, shim, rss_idle, rss_loaded, str(pg_version), quick)


def render(
    results: list[LoadResult],
    limiter: list[LoadResult],
    trips: list[tuple[str, float]],
    shim: tuple[float, float],
    rss_idle: float,
    rss_loaded: float,
    pg_version: str,
    quick: bool,
) -> str:
    """Format the measurements as a Markdown report."""
    lines = [
        "# Benchmark report",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `make bench`"
        + (" (quick run: a fifth of the calls)" if quick else "")
        + f" on {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"PostgreSQL {pg_version}. The service runs in its own process; the load generator "
        "(Python grpc.aio, closed loop: each worker sends its next call when the last returns) "
        "shares the same two cores, so throughput figures are a floor, not a ceiling. As in "
        "production, every gRPC call carries an API key and every rate limit is charged (at "
        "rates the load never reaches); HTTP calls come from one address.",
        "",
        *_table(results),
        "",
        "Rate limiter cost per vend: the same vends against a fresh service with every limit on "
        "(the per-user counter, and over HTTP the per-address one, charged inside the spend "
        "statement) and one with every limit off:",
        "",
        *_table(limiter),
    ]
    grpc_median, http_median = shim
    lines += [
        "",
        f"JSON shim overhead (`bench/shim_overhead.py`, sequential GetBalance, the two ways "
        f"interleaved): median {grpc_median:.3f} ms by direct gRPC, {http_median:.3f} ms through "
        f"the HTTP shim, {http_median - grpc_median:+.3f} ms per call.",
        "",
        f"Service memory (RSS): {rss_idle:.0f} MiB idle after start, "
        f"{rss_loaded:.0f} MiB after all the runs above.",
    ]
    if trips:
        lines += [
            "",
            "Database transactions committed per call (from `pg_stat_database.xact_commit`, "
            "500 sequential calls each; every statement the service runs outside an explicit "
            "transaction is one round trip and one transaction):",
            "",
            "| Call | Transactions per call |",
            "|---|---:|",
            *(f"| {name} | {per_call:.2f} |" for name, per_call in trips),
        ]
    return "\n".join(lines) + "\n"


def _table(results: list[LoadResult]) -> list[str]:
    lines = [
        "| Scenario | Concurrency | Calls | Errors | Calls/s | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.concurrency} | {r.calls} | {r.errors} | {r.throughput:,.0f} | "
            f"{r.percentile(50):.2f} | {r.percentile(95):.2f} | {r.percentile(99):.2f} |"
        )
    return lines


def main() -> int:
    """Run the benchmarks and write the report."""
    quick = "--quick" in sys.argv
    started = time.monotonic()
    report = asyncio.run(run(quick))
    REPORT.write_text(report)
    print(report)
    print(f"(wrote {REPORT} in {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
