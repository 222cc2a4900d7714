"""Where a vend's time went inside the service, read from its own Prometheus histograms."""

from __future__ import annotations

import asyncio
import math
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from pluct_server.observability.metrics import FLUSH_SECONDS, GRPC_LABELS
from tests.support import MetricSamples as Samples
from tests.support import metric_samples

VEND_LABELS = dict(
    zip(GRPC_LABELS, ("unary", "pluct.token.v1.TokenService", "VendToken"), strict=True)
)


async def scrape(url: str) -> Samples:
    """Return every sample /metrics serves, by name and sorted labels."""
    # Workers hand their counts over every FLUSH_SECONDS: let the last calls' counts arrive.
    await asyncio.sleep(4 * FLUSH_SECONDS)
    return metric_samples(await asyncio.to_thread(_get, url))


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310 - our own local port
        return str(reply.read().decode())


@dataclass(frozen=True)
class Histogram:
    """What one histogram gained between two scrapes: cumulative counts by upper bound."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    total: float

    def quantile(self, q: float) -> float:
        """Estimate a quantile as Prometheus' histogram_quantile does (linear in its bucket)."""
        if not self.buckets or not self.buckets[-1][1]:
            return math.nan  # nothing observed
        wanted = q * self.buckets[-1][1]  # the +Inf bucket counts every observation
        lower, below = 0.0, 0.0
        for upper, cumulative in self.buckets:
            if cumulative >= wanted and cumulative > below:
                if math.isinf(upper):
                    return lower
                return lower + (upper - lower) * (wanted - below) / (cumulative - below)
            lower, below = upper, cumulative
        return math.nan


def gained(before: Samples, after: Samples, name: str, labels: Mapping[str, str]) -> Histogram:
    """Return what histogram `name` with `labels` gained from `before` to `after`."""
    own = tuple(sorted(labels.items()))
    buckets = []
    for (sample, sample_labels), value in after.items():
        if sample != f"{name}_bucket":
            continue
        bound = dict(sample_labels)
        le = bound.pop("le")
        if tuple(sorted(bound.items())) == own:
            buckets.append((float(le), value - before.get((sample, sample_labels), 0.0)))
    buckets.sort()

    def grew(suffix: str) -> float:
        key = (f"{name}{suffix}", own)
        return after.get(key, 0.0) - before.get(key, 0.0)

    return Histogram(tuple(buckets), grew("_count"), grew("_sum"))


def vend_time(before: Samples, after: Samples) -> str:
    """Say, in one paragraph, where the vends between two scrapes spent their time."""
    sizes = gained(before, after, "pluct_spend_batch_size", {})
    waits = gained(before, after, "pluct_spend_wait_seconds", {})
    statements = gained(before, after, "pluct_spend_batch_seconds", {})
    answers = gained(before, after, "grpc_server_handling_seconds", VEND_LABELS)
    if not sizes.count or not answers.count:
        return "The service's histograms recorded no vends in this run."

    return (
        f"Inside the service (its own histograms, estimated within their buckets, warm-up "
        f"included): {sizes.count:,.0f} batches carried {sizes.total / sizes.count:.1f} vends "
        f"each on average; a vend waited for a batch to carry it {_p50_p99(waits)}; a "
        f"batch's statement took {_p50_p99(statements)}; the service answered a vend in "
        f"{_p50_p99(answers)}."
    )


def _p50_p99(histogram: Histogram) -> str:
    p50, p99 = (histogram.quantile(q) * 1000 for q in (0.5, 0.99))
    if math.isnan(p50):
        return "nothing recorded"
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
