"""Load generators outside Python: h2load for gRPC, wrk for HTTP, pgbench for the database alone."""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import statistics
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import Message

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
H2LOAD_WARM_UP_SECONDS = 1


class MissingTool(RuntimeError):
    """A load generator is not installed."""


def require(tool: str, package: str) -> str:
    """Return the path of `tool`, or say which Debian package installs it."""
    found = shutil.which(tool)
    if found is None:
        raise MissingTool(f"{tool} is not installed: apt-get install {package}")
    return found


def grpc_frame(message: Message) -> bytes:
    """Return `message` as one gRPC length-prefixed frame (uncompressed)."""
    payload = message.SerializeToString()
    return struct.pack(">BI", 0, len(payload)) + payload


@dataclass
class Measurement:
    """What one run of one workload at one concurrency measured."""

    workload: str
    concurrency: int
    seconds: float
    succeeded: int
    failed: int
    latencies_us: list[float] = field(default_factory=list, repr=False)
    cpu_us_per_request: float | None = None
    rss_mib_per_worker: float | None = None
    # The same worker's private memory (USS): what one more worker adds.
    uss_mib_per_worker: float | None = None
    note: str = ""

    @property
    def throughput(self) -> float:
        """Succeeded requests per second."""
        return self.succeeded / self.seconds if self.seconds else 0.0

    def percentile_ms(self, p: float) -> float:
        """Latency percentile in milliseconds (NaN when nothing was timed)."""
        if len(self.latencies_us) < 2:
            return math.nan
        cuts = statistics.quantiles(self.latencies_us, n=1000, method="inclusive")
        return cuts[min(998, int(p * 10) - 1)] / 1000


def split(concurrency: int, most_connections: int = 32) -> tuple[int, int]:
    """Return (connections, streams per connection) that make `concurrency` requests in flight."""
    connections = min(concurrency, most_connections)
    return connections, math.ceil(concurrency / connections)


async def h2load(
    url: str,
    body: Path,
    *,
    concurrency: int,
    seconds: float,
    headers: Sequence[str],
    log: Path,
    processes: Sequence[Path] = (),
    rps: float | None = None,
) -> tuple[float, int, int, list[float]]:
    """Run h2load (one process per body in `processes`, else one); return the figures.

    h2load sends one body for every request, so a load that must vary its bodies (one user per
    process) runs several h2loads side by side, the in-flight requests split between them.
    With `rps`, each process is one client sending at a fixed rate, and `concurrency` is how
    many requests each may have in flight (not all together); their starts are spread over one
    period, so requests arrive evenly spaced: clients started together would send theirs at the
    same instants, in bursts.
    """
    tool = require("h2load", "nghttp2-client")
    bodies = list(processes) or [body]
    if rps is None:
        connections, streams = split(max(1, concurrency // len(bodies)))
        client_rps = None
    else:
        connections, streams = 1, concurrency
        client_rps = max(1.0, rps / len(bodies))
    runs = []
    for index, data in enumerate(bodies):
        # h2load appends to its log: an earlier run's requests must not count as this run's.
        Path(f"{log}.{index}").unlink(missing_ok=True)
        argv = [
            tool,
            "-D",
            f"{max(1, round(seconds))}",
            "--warm-up-time",
            str(H2LOAD_WARM_UP_SECONDS),
            "-c",
            str(connections),
            "-m",
            str(streams),
            "-d",
            str(data),
            "--log-file",
            f"{log}.{index}",
            *(part for header in headers for part in ("-H", header)),
        ]
        start = 0.0
        if client_rps is not None:
            argv += ["--rps", f"{client_rps:.3f}"]
            start = index / client_rps / len(bodies)
        runs.append(_run_after(start, [*argv, url]))
    outputs = await asyncio.gather(*runs)
    succeeded = failed = 0
    latencies: list[float] = []
    for index, output in enumerate(outputs):
        done = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", output)
        if done is None:
            raise RuntimeError(f"h2load said:\n{output[-2000:]}")
        succeeded += int(done[1])
        failed += int(done[2]) + int(done[3])
        latencies += _h2load_latencies(Path(f"{log}.{index}"))
    return seconds, succeeded, failed, latencies


def _h2load_latencies(path: Path) -> list[float]:
    latencies = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1].startswith("2"):
            latencies.append(float(parts[2]))
    return latencies


async def wrk(
    url: str, script: Path, *, concurrency: int, seconds: float, log: Path
) -> tuple[float, int, int, list[float]]:
    """Run wrk with a Lua script; return (seconds, succeeded, failed, latency samples in µs)."""
    tool = require("wrk", "wrk")
    argv = [
        tool,
        "-t",
        "1",
        "-c",
        str(concurrency),
        "-d",
        f"{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    output = await _run(argv)
    log.write_text(output)
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s)", output)
    if total is None:
        raise RuntimeError(f"wrk said:\n{output[-2000:]}")
    failures = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    failed = int(failures[1]) if failures else 0
    failed += sum(int(n) for n in errors.groups()) if errors else 0
    elapsed = float(total[2]) / (1000 if total[3] == "ms" else 1)
    # wrk prints percentiles, not samples: keep them as the samples of those percentiles.
    samples = [
        _wrk_us(value, unit)
        for _, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)", output, re.M)
    ]
    return elapsed, int(total[1]) - failed, failed, _spread(samples)


def _wrk_us(value: str, unit: str) -> float:
    return float(value) * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]


def _spread(percentiles: list[float]) -> list[float]:
    """Turn wrk's p50/p75/p90/p99 into a sample whose percentiles are those values."""
    if len(percentiles) != 4:
        return []
    p50, p75, p90, p99 = percentiles
    return [p50] * 500 + [p75] * 250 + [p90] * 150 + [p99] * 90 + [p99] * 10


async def pgbench(
    dsn: str,
    script: Path,
    *,
    concurrency: int,
    seconds: float,
    log_dir: Path,
    tool: str,
) -> tuple[float, int, int, list[float]]:
    """Run pgbench with a custom script; return (seconds, transactions, failed, latencies µs)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("pgbench_log.*"):
        old.unlink()
    argv = [
        tool,
        "-n",
        "-c",
        str(concurrency),
        "-j",
        str(min(concurrency, 2)),
        "-T",
        str(max(1, round(seconds))),
        "-f",
        str(script),
        "--log",
        f"--log-prefix={log_dir / 'pgbench_log'}",
        dsn,
    ]
    output = await _run(argv, cwd=log_dir)
    done = re.search(r"number of transactions actually processed: (\d+)", output)
    failed = re.search(r"number of failed transactions: (\d+)", output)
    if done is None:
        raise RuntimeError(f"pgbench said:\n{output[-2000:]}")
    latencies: list[float] = []
    for path in log_dir.glob("pgbench_log.*"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                latencies.append(float(parts[2]))
    return max(1, round(seconds)), int(done[1]), int(failed[1]) if failed else 0, latencies


async def _run_after(seconds: float, argv: list[str]) -> str:
    await asyncio.sleep(seconds)
    return await _run(argv)


async def _run(argv: list[str], cwd: Path | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
    )
    output, _ = await process.communicate()
    return output.decode(errors="replace")
