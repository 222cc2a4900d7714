"""Per-call counts are batched on their way to Prometheus: nothing lost, nothing changed."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from pluct_server.observability.metrics import (
    FLUSH_SECONDS,
    count_of,
    exposition,
    flush_counts,
    histogram_of,
)

BUCKETS = (0.001, 0.01, 0.1, 1.0)
# Below, on and between every bound, and beyond the last (the +Inf bucket).
VALUES = (0.0, 0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 0.5, 1.0, 7.5, 0.001, 0.3)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_a_batched_histogram_gives_exactly_what_observe_gives():
    by_observe, by_batch = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("took_seconds", "t", ("route",), buckets=BUCKETS, registry=by_observe)
    batched = Histogram("took_seconds", "t", ("route",), buckets=BUCKETS, registry=by_batch)

    async def observe_all() -> None:
        # Inside an event loop, so that every value waits in the batch for the one flush.
        for value in VALUES:
            direct.labels("r").observe(value)
            histogram_of(batched, "r").observe(value)
        assert samples(by_batch)[("took_seconds_count", (("route", "r"),))] == 0
        flush_counts()

    asyncio.run(observe_all())
    expected, got = samples(by_observe), samples(by_batch)
    sum_key = ("took_seconds_sum", (("route", "r"),))
    # Added up in another order, the sum may differ in its last bit; the counts may not.
    assert got.pop(sum_key) == pytest.approx(expected.pop(sum_key))
    assert got == expected


def test_batched_counts_reach_prometheus_within_a_flush_and_at_once_when_exposed():
    registry = CollectorRegistry()
    counter = Counter("calls_total", "c", ("code",), registry=registry)
    key = ("calls_total", (("code", "OK"),))

    async def count_then_wait() -> list[float]:
        seen = []
        for _ in range(3):
            count_of(counter, "OK").inc()
        seen.append(samples(registry).get(key, 0.0))  # still batched
        for _ in range(200):  # a hang guard, not a timing claim
            await asyncio.sleep(FLUSH_SECONDS)
            if samples(registry).get(key) == 3:
                break
        seen.append(samples(registry)[key])
        count_of(counter, "OK").inc()
        exposition()  # a scrape of this process hands over what is pending first
        seen.append(samples(registry)[key])
        return seen

    assert asyncio.run(count_then_wait()) == [0.0, 3.0, 4.0]


def test_counts_made_outside_an_event_loop_are_counted_at_once():
    registry = CollectorRegistry()
    counter = Counter("plain_total", "c", registry=registry)
    count_of(counter).inc()
    assert samples(registry)[("plain_total", ())] == 1.0
