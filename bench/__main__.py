"""`make bench`: every workload at several concurrencies, against this machine's own limits."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import psutil
from grpc_health.v1 import health_pb2
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.admin.v1 import admin_service_pb2_grpc
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.token.v1 import token_service_pb2 as token_pb
from pluct.token.v1 import token_service_pb2_grpc

from bench.harness import SECRETS, Service, postgres_server, running_service
from bench.inside import scrape, vend_time
from bench.loads import (
    GRPC_HEADERS,
    H2LOAD_WARM_UP_SECONDS,
    Measurement,
    grpc_frame,
    h2load,
    pgbench,
    wrk,
)
from bench.report import (
    BALANCE,
    CREDIT,
    EMPTY,
    PGBENCH,
    PGBENCH_BEFORE,
    PGBENCH_HOT,
    PGBENCH_THREE,
    SHIM_BALANCE,
    SHIM_VEND,
    VALIDATE,
    VEND,
    VEND_HOT,
    render,
    write_chart,
)
from bench.workloads import (
    THREE_GRANT_FEATURE,
    pgbench_before_script,
    pgbench_script,
    wrk_script,
)
from pluct_server.runtime.embedded_postgres import postgres_tool
from pluct_server.values.settings import Settings
from tests.support import schema_before, scratch_database

OUT = Path(__file__).parent / "out"
ADMIN = (("authorization", f"Bearer {SECRETS['ADMIN_SECRET']}"),)
USERS = 10_000
# One-credit grants per user of the three-grant spend: 20 vends each, several times what a run
# of every concurrency needs.
ONE_CREDIT_GRANTS = 60
SPREAD_PROCESSES = 16
# A database serves its peak with a few clients per core, and the workers' pools need the rest
# of max_connections: pgbench runs 256 in flight as 64 clients.
PGBENCH_MAX_CLIENTS = 64
SETTLE_SECONDS = 1.0
# At half of peak, each of the 16 clients may have this many vends in flight: far more than
# evenly spaced arrivals need, so a slow answer never holds back the next request.
HALF_PEAK_IN_FLIGHT = 16
# Every limit on, as in production, at rates this load never reaches: the counters are charged
# on every call, so their cost is in every figure.
SERVICE_SETTINGS = {
    "PLUCT_VEND_RATE": "1000000/second",
    "PLUCT_HTTP_IP_RATE": "1000000/second",
    "PLUCT_SIGNUP_RATE": "1000000/second",
    "PLUCT_AUTH_FAILURE_RATE": "10/minute",
    # wrk plays many clients behind one proxy: a client address per request.
    "PLUCT_TRUSTED_PROXIES": "127.0.0.1/32",
    # One token validated throughout the run must stay valid.
    "PLUCT_TOKEN_TTL_SECONDS": "86400",
}
CALLER_SCOPES = ["users:create", "credits:read", "tokens:vend", "tokens:validate"]
Figures = tuple[float, int, int, list[float]]
H2LOAD_LOADS = frozenset({EMPTY, VALIDATE, BALANCE, VEND, VEND_HOT, CREDIT})
Load = Callable[[int], Awaitable[Figures]]


@dataclass(frozen=True)
class Plan:
    """How long and at which concurrencies each workload runs."""

    concurrencies: tuple[int, ...]
    seconds: float
    warm_up: float = 0.0


FULL = Plan((1, 8, 64, 256), 5.0, warm_up=10.0)
SMOKE = Plan((8,), 1.0)


class Progress:
    """Prints which run is going and roughly how long is left."""

    def __init__(self, runs: int, seconds_each: float) -> None:
        self._left = runs
        self._each = seconds_each + 2.5  # warm-up, settling and start-up
        self._started = time.monotonic()

    def step(self, label: str) -> None:
        eta = self._left * self._each
        print(
            f"[{time.monotonic() - self._started:5.0f} s] {label}  (~{eta:.0f} s left)", flush=True
        )
        self._left -= 1


async def fund(dsn: str) -> None:
    """Give every user of the run enough credits for every vend it makes.

    10,000 users and one hot user hold one large grant each; 10,000 more hold one-credit grants,
    so that each of their 3-credit vends draws from three.
    """
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            INSERT INTO users (user_id, balance, transaction_count)
            SELECT id, 100000000, 1
              FROM (SELECT 'u' || n AS id FROM generate_series(1, $1) n
                    UNION ALL SELECT 'hot') ids;
            INSERT INTO users (user_id, balance, transaction_count)
            SELECT 't' || n, $2, $2 FROM generate_series(1, $1) n;
            -- Paid grants, as an admin grant makes them, and their ledger entries.
            INSERT INTO grants (user_id, category, priority, amount, remaining, source)
            SELECT user_id, 'paid', 50, balance, balance, 'admin'
              FROM users WHERE user_id NOT LIKE 't%';
            INSERT INTO grants (user_id, category, priority, amount, remaining, source)
            SELECT user_id, 'paid', 50, 1, 1, 'admin'
              FROM users, generate_series(1, $2) WHERE user_id LIKE 't%';
            INSERT INTO ledger (user_id, type, amount, balance_after, reason, actor, grant_id)
            SELECT user_id, 'admin_add', amount,
                   sum(amount) OVER (PARTITION BY user_id ORDER BY grant_id), 'bench funds',
                   'bench', grant_id
              FROM grants;
            INSERT INTO prices (feature, credits) VALUES ('$3', 3);
            """.replace("$1", str(USERS))
            .replace("$2", str(ONE_CREDIT_GRANTS))
            .replace("$3", THREE_GRANT_FEATURE)
        )
        # Statistics, as a database in service has them, before anything is timed.
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


# The migration that brought prices and, after it, grants: the baseline stops before it.
FIRST_GRANTS_MIGRATION = 9
BEFORE_GRANTS_SQL = Path(__file__).with_name("sql") / "spend_before_grants.sql"


async def fund_before_grants(dsn: str) -> None:
    """Migrate a database as far as before grants, with the spend of then; fund its users."""
    conn = await asyncpg.connect(dsn)
    try:
        await schema_before(conn, FIRST_GRANTS_MIGRATION)
        await conn.execute(BEFORE_GRANTS_SQL.read_text(encoding="utf-8"))
        await conn.execute(
            "INSERT INTO users (user_id, balance, transaction_count)"
            " SELECT 'u' || n, 100000000, 0 FROM generate_series(1, $1) n",
            USERS,
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def caller_key(service: Service) -> tuple[str, str]:
    """Make the API key an internal caller would use; return its secret and a vended token."""
    async with grpc.aio.insecure_channel(service.grpc_target) as channel:
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        made = await admin.CreateApiKey(
            admin_pb.CreateApiKeyRequest(name="bench", scopes=CALLER_SCOPES), metadata=ADMIN
        )
        tokens = token_service_pb2_grpc.TokenServiceStub(channel)
        bearer = (("authorization", f"Bearer {made.secret}"),)
        # A vend tried once first: h2load counts a gRPC error (in the trailers) as a 200.
        vended = await tokens.VendToken(token_pb.VendTokenRequest(user_id="hot"), metadata=bearer)
        return str(made.secret), str(vended.token)


async def settle(dsn: str) -> None:
    """Start each run from the same state: the last run's stragglers done, dirty pages written.

    Without it, a run could pay for the one before (a hot row's queue still draining) or for a
    checkpoint that happens to fall into it.
    """
    await asyncio.sleep(SETTLE_SECONDS)
    conn = await asyncpg.connect(dsn)
    try:
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def server_cpu_seconds(service: Service) -> float:
    """CPU seconds used so far by the supervisor and every worker."""
    root = psutil.Process(service.process.pid)
    total = 0.0
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def workers_of(service: Service) -> list[psutil.Process]:
    """The service's worker processes (not multiprocessing's helper)."""
    children = psutil.Process(service.process.pid).children()
    return [c for c in children if "spawn_main" in " ".join(c.cmdline())]


def largest_worker_mib(service: Service) -> tuple[float, float]:
    """The resident memory of the largest worker and its private part (USS), in MiB."""
    largest = (0.0, 0.0)
    for worker in workers_of(service):
        try:
            size = worker.memory_full_info()
        except psutil.Error:
            continue  # a worker that died meanwhile (the supervisor replaces it)
        largest = max(largest, (size.rss / 2**20, size.uss / 2**20))
    return largest


async def measured(
    service: Service,
    name: str,
    concurrency: int,
    load: Awaitable[Figures],
    *,
    server_side: bool = True,
    warm_up: float = 0.0,
) -> Measurement:
    """Run one load and attach the server's CPU per request and its workers' memory.

    CPU is read from the end of the load's warm-up, when it starts counting requests.
    """
    running = asyncio.ensure_future(load)
    await asyncio.sleep(warm_up)
    before = server_cpu_seconds(service)
    seconds, succeeded, failed, latencies = await running
    measurement = Measurement(name, concurrency, seconds, succeeded, failed, latencies)
    if server_side and succeeded:
        used = server_cpu_seconds(service) - before
        measurement.cpu_us_per_request = used / succeeded * 1e6
        measurement.rss_mib_per_worker, measurement.uss_mib_per_worker = largest_worker_mib(service)
    return measurement


async def run(plan: Plan) -> Path:
    """Benchmark a fresh service; write bench/out/REPORT.md and its chart; return the report."""
    OUT.mkdir(exist_ok=True)
    raw = OUT / "raw"
    raw.mkdir(exist_ok=True)
    results: list[Measurement] = []
    async with (
        postgres_server() as server_url,
        running_service(server_url, SERVICE_SETTINGS) as service,
        scratch_database(server_url) as before_grants_dsn,
    ):
        await fund(service.dsn)
        await fund_before_grants(before_grants_dsn)
        secret, token = await caller_key(service)
        workers = len(workers_of(service))
        bodies = _bodies(raw, token)
        grpc_url = f"http://{service.grpc_target}"
        caller = (*GRPC_HEADERS, f"authorization: Bearer {secret}")
        webhook = (*GRPC_HEADERS, f"x-webhook-secret: {SECRETS['WEBHOOK_SECRET']}")
        spread = [bodies[f"vend-{n}"] for n in range(1, SPREAD_PROCESSES + 1)]
        pgbench_tool = postgres_tool("pgbench")

        def grpc_load(method: str, body: str, headers: tuple[str, ...], many: bool = False) -> Load:
            def start(c: int) -> Awaitable[Figures]:
                return h2load(
                    f"{grpc_url}/{method}",
                    bodies[body],
                    concurrency=c,
                    seconds=plan.seconds,
                    headers=headers,
                    log=raw / f"{body}-{c}",
                    processes=spread[: min(c, SPREAD_PROCESSES)] if many else (),
                )

            return start

        def http_load(name: str) -> Load:
            script = wrk_script(raw / f"{name}.lua", name, USERS)
            return lambda c: wrk(
                service.http_base, script, concurrency=c, seconds=plan.seconds,
                log=raw / f"http-{name}-{c}.txt",
            )  # fmt: skip

        def db_load(name: str, script: Path | None = None, dsn: str | None = None) -> Load:
            script = script or pgbench_script(raw / f"spend-{name}.sql", name, USERS)
            return lambda c: pgbench(
                dsn or service.dsn, script, concurrency=min(c, PGBENCH_MAX_CLIENTS),
                seconds=plan.seconds, log_dir=raw / f"pgbench-{name}-{c}", tool=pgbench_tool,
            )  # fmt: skip

        token_service = "pluct.token.v1.TokenService"
        credit_service = "pluct.credit.v1.CreditService"
        workloads: list[tuple[str, Load, bool]] = [
            (EMPTY, grpc_load("grpc.health.v1.Health/Check", "empty", GRPC_HEADERS), True),
            (VALIDATE, grpc_load(f"{token_service}/ValidateToken", "validate", caller), True),
            (BALANCE, grpc_load(f"{credit_service}/GetBalance", "balance", caller), True),
            (VEND, grpc_load(f"{token_service}/VendToken", "vend-1", caller, many=True), True),
            (VEND_HOT, grpc_load(f"{token_service}/VendToken", "vend-hot", caller), True),
            (CREDIT, grpc_load(f"{credit_service}/AddCredits", "credit", webhook), True),
            (SHIM_VEND, http_load("vend"), True),
            (SHIM_BALANCE, http_load("read"), True),
            (PGBENCH, db_load("uniform"), False),
            (PGBENCH_HOT, db_load("hot"), False),
            (PGBENCH_THREE, db_load("three"), False),
            (
                PGBENCH_BEFORE,
                db_load(
                    "before-grants",
                    pgbench_before_script(raw / "spend-before-grants.sql", USERS),
                    before_grants_dsn,
                ),
                False,
            ),
        ]
        progress = Progress(len(workloads) * len(plan.concurrencies) + 1, plan.seconds)
        if plan.warm_up:
            # A service that has just started is slower than one in service: caches, pools
            # and plans fill up first. Warm it with vends, untimed.
            print(f"warming up for {plan.warm_up:g} s", flush=True)
            await h2load(
                f"{grpc_url}/{token_service}/VendToken",
                bodies["vend-1"],
                concurrency=64,
                seconds=plan.warm_up,
                headers=caller,
                log=raw / "warm-up",
                processes=spread,
            )
        for name, load, server_side in workloads:
            for concurrency in plan.concurrencies:
                progress.step(f"{name} at {concurrency} in flight")
                await settle(service.dsn)
                results.append(
                    await measured(
                        service,
                        name,
                        concurrency,
                        load(concurrency),
                        server_side=server_side,
                        warm_up=H2LOAD_WARM_UP_SECONDS if name in H2LOAD_LOADS else 0.0,
                    )
                )
        peak = max((r for r in results if r.workload == VEND), key=lambda r: r.throughput)
        progress.step(f"VendToken at half its peak rate ({peak.throughput / 2:.0f}/s)")
        await settle(service.dsn)
        before = await scrape(service.metrics_url)
        half = await measured(
            service,
            f"{VEND}, at half of peak",
            HALF_PEAK_IN_FLIGHT,
            h2load(
                f"{grpc_url}/pluct.token.v1.TokenService/VendToken",
                bodies["vend-1"],
                concurrency=HALF_PEAK_IN_FLIGHT,
                seconds=plan.seconds,
                headers=caller,
                log=raw / "vend-half",
                processes=spread,
                rps=peak.throughput / 2,
            ),
            warm_up=H2LOAD_WARM_UP_SECONDS,
        )
        inside = vend_time(before, await scrape(service.metrics_url))
        machine = _machine(service, workers)
    report = OUT / "REPORT.md"
    chart = OUT / "chart.png"
    write_chart(results, chart)
    report.write_text(render(results, half, inside, machine, plan.seconds, chart.name))
    return report


def _bodies(folder: Path, token: str) -> dict[str, Path]:
    """Write every gRPC request body the run sends, framed; return their paths by name."""
    messages = {
        "empty": health_pb2.HealthCheckRequest(),
        "validate": token_pb.ValidateTokenRequest(token=token),
        "balance": credit_pb.GetBalanceRequest(user_id="u1"),
        "vend-hot": token_pb.VendTokenRequest(user_id="hot"),
        "credit": credit_pb.AddCreditsRequest(user_id="u2", amount=1),
        **{
            f"vend-{n}": token_pb.VendTokenRequest(user_id=f"u{n}")
            for n in range(1, SPREAD_PROCESSES + 1)
        },
    }
    paths = {}
    for name, message in messages.items():
        path = folder / f"{name}.grpc"
        path.write_bytes(grpc_frame(message))
        paths[name] = path
    return paths


def _machine(service: Service, workers: int) -> str:
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{os.cpu_count()} cores, {memory:.0f} GiB, Python {sys.version.split()[0]}, "
        f"{workers} worker process(es) on {Settings.event_loop} (the default loop; "
        "`python -m bench.event_loops` compares the other) plus a supervisor; the load "
        "generators (h2load, wrk, pgbench) share the same cores"
    )


def main() -> int:
    """Run the benchmark and print where its report is."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few seconds, to prove it runs")
    args = parser.parse_args()
    started = time.monotonic()
    report = asyncio.run(run(SMOKE if args.smoke else FULL))
    print(report.read_text())
    print(f"(wrote {report} and its chart in {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
