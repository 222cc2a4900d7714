"""The benchmark report: figures per workload and concurrency, the ratios and their goals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.loads import Measurement

EMPTY = "Empty RPC (health Check)"
VALIDATE = "ValidateToken"
BALANCE = "GetBalance"
VEND = "VendToken, spread users"
VEND_HOT = "VendToken, one hot user"
CREDIT = "AddCredits (webhook)"
SHIM_VEND = "POST /vend-token (shim)"
SHIM_BALANCE = "GET balance (shim)"
PGBENCH = "pgbench: the spend, 10,000 users"
PGBENCH_HOT = "pgbench: the spend, one hot user"
PGBENCH_THREE = "pgbench: a 3-credit spend over three grants"
PGBENCH_BEFORE = "pgbench: the spend before grants, 10,000 users"

P99_GOAL_MS = 10.0
RSS_GOAL_MIB = 100.0


@dataclass(frozen=True)
class Ratio:
    """One ratio the issue sets a goal for."""

    name: str
    value: float
    goal: float
    how: str
    higher_is_better: bool = True

    @property
    def met(self) -> bool:
        """Tell whether the goal is met."""
        return self.value >= self.goal if self.higher_is_better else self.value <= self.goal


def peak(results: Sequence[Measurement], workload: str) -> Measurement:
    """Return the run of `workload` with the highest throughput."""
    return max((r for r in results if r.workload == workload), key=lambda r: r.throughput)


def ratios(results: Sequence[Measurement], half: Measurement) -> list[Ratio]:
    """Compute every ratio from the peaks of one run."""
    empty, database = peak(results, EMPTY), peak(results, PGBENCH)
    limit = min(empty.throughput, database.throughput)
    vend, hot = peak(results, VEND), peak(results, VEND_HOT)
    largest = max(results, key=lambda r: r.rss_mib_per_worker or 0.0)
    rss, uss = largest.rss_mib_per_worker or 0.0, largest.uss_mib_per_worker or 0.0
    return [
        Ratio(
            "vend (spread) / limit",
            vend.throughput / limit,
            0.8,
            f"{vend.throughput:,.0f} / min(pgbench {database.throughput:,.0f}, "
            f"empty RPC {empty.throughput:,.0f})",
        ),
        _cost_against_before_grants(results),
        Ratio(
            "hot vend / spread vend",
            hot.throughput / vend.throughput,
            0.9,
            f"{hot.throughput:,.0f} / {vend.throughput:,.0f}",
        ),
        Ratio(
            "ValidateToken / empty RPC",
            peak(results, VALIDATE).throughput / empty.throughput,
            0.9,
            f"{peak(results, VALIDATE).throughput:,.0f} / {empty.throughput:,.0f}",
        ),
        Ratio(
            "shim vend / gRPC vend",
            peak(results, SHIM_VEND).throughput / vend.throughput,
            0.7,
            f"{peak(results, SHIM_VEND).throughput:,.0f} / {vend.throughput:,.0f}",
        ),
        Ratio(
            "vend p99 at half of peak (ms)",
            half.percentile_ms(99),
            P99_GOAL_MS,
            f"{half.throughput:,.0f}/s from 16 clients, evenly spaced",
            higher_is_better=False,
        ),
        Ratio(
            "RSS per worker (MiB)",
            rss,
            RSS_GOAL_MIB,
            # Shared libraries count in full in every worker's RSS; USS leaves them out.
            f"largest worker; {uss:.0f} MiB of it its own (USS), the rest shared",
            higher_is_better=False,
        ),
    ]


def render(
    results: Sequence[Measurement],
    half: Measurement,
    inside: str,
    machine: str,
    seconds: float,
    chart: str,
) -> str:
    """Return the report as Markdown; `inside` says where vends at half of peak spent time."""
    lines = [
        "# Benchmark report",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `make bench` on {machine}. Each run "
        f"lasts {seconds:g} s after a 1 s warm-up. gRPC load comes from h2load (framed protobuf "
        "bodies), HTTP load from wrk (a random user and client address per request), the "
        "database baseline from pgbench running the service's own spend statement. Every gRPC "
        "call carries an API key and every rate limit is charged, as in production; metrics "
        "are counted, and access lines are off (`PLUCT_LOG_LEVEL=WARNING`: each would cost "
        "3 to 4 µs, see `python -m bench.access_line`).",
        "",
        "## Ratios",
        "",
        "| Ratio | Value | Goal | Met | From |",
        "|---|---:|---:|:---:|---|",
    ]
    for ratio in ratios(results, half):
        sign = "≥" if ratio.higher_is_better else "≤"
        lines.append(
            f"| {ratio.name} | {ratio.value:.2f} | {sign} {ratio.goal:g} | "
            f"{'yes' if ratio.met else 'no'} | {ratio.how} |"
        )
    lines += [
        "",
        f"At half of peak, clients saw vends answered in p50 {_ms(half.percentile_ms(50))} ms "
        f"and p99 {_ms(half.percentile_ms(99))} ms. {inside}",
        "",
        _grants_line(results),
        "",
        "## Every run",
        "",
        "| Workload | In flight | Requests/s | p50 ms | p99 ms | Failed | CPU µs/req | RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cpu = "" if r.cpu_us_per_request is None else f"{r.cpu_us_per_request:,.0f}"
        rss = "" if r.rss_mib_per_worker is None else f"{r.rss_mib_per_worker:.0f}"
        lines.append(
            f"| {r.workload} | {r.concurrency} | {r.throughput:,.0f} | {_ms(r.percentile_ms(50))} "
            f"| {_ms(r.percentile_ms(99))} | {r.failed} | {cpu} | {rss} |"
        )
    lines += [
        "",
        f"![Throughput and p99 latency against concurrency]({chart})",
        "",
        "CPU µs/request is the service's (supervisor and workers) CPU time over the run divided "
        "by the requests served; the load generators' CPU is not in it. The spread vend runs "
        "one h2load per user (h2load sends one body per process), at most 16, so no two vends "
        "in flight wait for the same row unless more than 16 are in flight. pgbench runs at most "
        "64 clients (the workers' pools hold the rest of max_connections). At half of peak, "
        "16 clients (one per user) each send vends at a fixed rate, their starts spread over "
        "one period so that vends arrive evenly spaced; each may have up to 16 in flight, and a "
        "vend's latency counts from when it was sent. ValidateToken checks one token over and "
        "over: after its first check, the service checks only its expiry and revocation (see "
        "the README on remembered tokens); a token's first check costs its signature too.",
    ]
    return "\n".join(lines) + "\n"


def _cost_against_before_grants(results: Sequence[Measurement]) -> Ratio:
    """The one-grant spend's database cost over the spend before grants, at equal concurrency.

    The worst of the concurrencies both ran at: no level may cost more than the goal.
    """
    before = {r.concurrency: r.throughput for r in results if r.workload == PGBENCH_BEFORE}
    now = {r.concurrency: r.throughput for r in results if r.workload == PGBENCH}
    ratios = {c: before[c] / now[c] for c in sorted(before.keys() & now.keys()) if now[c]}
    return Ratio(
        "spend from one grant: database cost / before grants (worst level)",
        max(ratios.values()),
        1.2,
        "; ".join(
            f"{c} clients: {before[c]:,.0f} / {now[c]:,.0f} = {ratio:.2f}"
            for c, ratio in ratios.items()
        ),
        higher_is_better=False,
    )


def _at_peak_of(results: Sequence[Measurement], workload: str, peak_run: Measurement) -> float:
    """Return `workload`'s throughput at the concurrency of `peak_run`, for a like comparison."""
    return max(
        r.throughput
        for r in results
        if r.workload == workload and r.concurrency == peak_run.concurrency
    )


def _grants_line(results: Sequence[Measurement]) -> str:
    """Say what a spend that draws from three grants costs beside one that draws from one."""
    one = peak(results, PGBENCH)
    three_throughput = _at_peak_of(results, PGBENCH_THREE, one)
    return (
        f"A spend drawing from three grants (a 3-credit feature, one-credit grants) runs at "
        f"{three_throughput:,.0f}/s against {one.throughput:,.0f}/s for one drawing from one "
        f"grant, both at {one.concurrency} clients: {three_throughput / one.throughput:.2f} of it."
    )


def _ms(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.2f}"


def write_chart(results: Sequence[Measurement], path: Path) -> None:
    """Draw throughput and p99 against concurrency, one line per workload, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no screen here
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for workload in dict.fromkeys(r.workload for r in results):
        runs = [r for r in results if r.workload == workload]
        levels = [r.concurrency for r in runs]
        left.plot(levels, [r.throughput for r in runs], marker="o", label=workload)
        right.plot(levels, [r.percentile_ms(99) for r in runs], marker="o", label=workload)
    for axis, title in ((left, "Requests per second"), (right, "p99 latency, ms")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("requests in flight")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    right.set_yscale("log")
    left.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
