"""The service on uvloop against asyncio's own loop, each load run on both in turn.

`.venv/bin/python -m bench.event_loops` starts the service once per loop and run
(PLUCT_EVENT_LOOP), alternating, and runs the same h2load loads `make bench` runs on each: an
empty RPC and ValidateToken at 64 in flight, vends over 16 users at 256 and at 16 in flight.
It prints each load's range of throughput and service CPU per call over the runs, and the
largest worker's memory after them. The VM's speed drifts from minute to minute: alternating
runs, and ranges rather than one figure, keep that drift out of the comparison.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict

from bench.__main__ import (
    OUT,
    SERVICE_SETTINGS,
    SPREAD_PROCESSES,
    _bodies,
    caller_key,
    fund,
    largest_worker_mib,
    measured,
    settle,
)
from bench.harness import postgres_server, running_service
from bench.loads import GRPC_HEADERS, H2LOAD_WARM_UP_SECONDS, h2load
from pluct_server.runtime.event_loop import EVENT_LOOPS

TOKEN_SERVICE = "pluct.token.v1.TokenService"
# (name, method, body, in flight, spread over the vend bodies)
LOADS = (
    ("empty RPC, 64 in flight", "grpc.health.v1.Health/Check", "empty", 64, False),
    ("ValidateToken, 64 in flight", f"{TOKEN_SERVICE}/ValidateToken", "validate", 64, False),
    ("VendToken, 256 in flight", f"{TOKEN_SERVICE}/VendToken", "vend-1", 256, True),
    ("VendToken, 16 in flight", f"{TOKEN_SERVICE}/VendToken", "vend-1", 16, True),
)
Figures = dict[str, dict[str, list[float]]]


async def one_service(loop: str, seconds: float, warm_up: float, figures: Figures) -> None:
    """Run every load once on a fresh service whose workers run `loop`; add to `figures`."""
    raw = OUT / "raw" / "event-loops"
    raw.mkdir(parents=True, exist_ok=True)
    settings = {**SERVICE_SETTINGS, "PLUCT_EVENT_LOOP": loop}
    async with postgres_server() as server_url, running_service(server_url, settings) as service:
        await fund(service.dsn)
        secret, token = await caller_key(service)
        bodies = _bodies(raw, token)
        target = f"http://{service.grpc_target}"
        caller = (*GRPC_HEADERS, f"authorization: Bearer {secret}")
        spread = [bodies[f"vend-{n}"] for n in range(1, SPREAD_PROCESSES + 1)]
        if warm_up:
            await h2load(
                f"{target}/{TOKEN_SERVICE}/VendToken", bodies["vend-1"], concurrency=64,
                seconds=warm_up, headers=caller, log=raw / "warm-up", processes=spread,
            )  # fmt: skip
        for name, method, body, in_flight, many in LOADS:
            await settle(service.dsn)
            headers = GRPC_HEADERS if body == "empty" else caller
            load = h2load(
                f"{target}/{method}", bodies[body], concurrency=in_flight, seconds=seconds,
                headers=headers, log=raw / f"{loop}-{body}-{in_flight}",
                processes=spread if many else (),
            )  # fmt: skip
            run = await measured(service, name, in_flight, load, warm_up=H2LOAD_WARM_UP_SECONDS)
            figures[name][f"{loop} calls/s"].append(run.throughput)
            figures[name][f"{loop} CPU µs/call"].append(run.cpu_us_per_request or 0.0)
        rss, uss = largest_worker_mib(service)
        figures["largest worker after the loads"][f"{loop} RSS MiB"].append(rss)
        figures["largest worker after the loads"][f"{loop} USS MiB"].append(uss)


def span(values: list[float]) -> str:
    """A range of figures as the README quotes them."""
    low, high = min(values), max(values)
    return f"{low:,.0f}" if round(low) == round(high) else f"{low:,.0f}\N{EN DASH}{high:,.0f}"


def main() -> int:
    """Alternate the loops over `--runs` services each; print one table."""
    parser = argparse.ArgumentParser(prog="python -m bench.event_loops", description=__doc__)
    parser.add_argument("--runs", type=int, default=2, help="services per loop (default 2)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per load (default 5)")
    parser.add_argument("--warm-up", type=float, default=8.0, help="seconds of vends first")
    args = parser.parse_args()
    figures: Figures = defaultdict(lambda: defaultdict(list))
    for run in range(args.runs):
        for loop in EVENT_LOOPS[::-1] if run % 2 else EVENT_LOOPS:
            print(f"run {run + 1} of {args.runs}: workers on {loop}", flush=True)
            asyncio.run(one_service(loop, args.seconds, args.warm_up, figures))
    print(f"\n{args.runs} run(s) per loop, alternating; ranges over the runs\n")
    for name, columns in figures.items():
        print(f"{name}: " + "; ".join(f"{column} {span(v)}" for column, v in columns.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
