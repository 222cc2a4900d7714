"""The benchmark's reading of the service's histograms, which its report quotes."""

from __future__ import annotations

import math

import pytest

from bench.inside import Histogram, gained

WAIT = "pluct_spend_wait_seconds"


def bucket(le: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (f"{WAIT}_bucket", (("le", le),))


def test_a_quantile_is_placed_within_its_bucket_as_prometheus_does():
    waits = Histogram(((0.001, 10.0), (0.005, 90.0), (math.inf, 100.0)), 100.0, 0.3)
    assert waits.quantile(0.05) == pytest.approx(0.0005)
    assert waits.quantile(0.5) == pytest.approx(0.003)
    # Beyond the last finite bound a histogram knows no more than that bound.
    assert waits.quantile(0.99) == pytest.approx(0.005)


def test_a_histogram_that_recorded_nothing_has_no_quantile():
    assert math.isnan(Histogram((), 0.0, 0.0).quantile(0.5))
    assert math.isnan(Histogram(((0.001, 0.0), (math.inf, 0.0)), 0.0, 0.0).quantile(0.99))


def test_only_what_a_histogram_gained_between_scrapes_counts():
    before = {bucket("0.001"): 5.0, bucket("+Inf"): 7.0, (f"{WAIT}_count", ()): 7.0}
    after = {bucket("0.001"): 15.0, bucket("+Inf"): 27.0, (f"{WAIT}_count", ()): 27.0}
    run = gained(before, after, WAIT, {})
    assert run.buckets == ((0.001, 10.0), (math.inf, 20.0))
    assert run.count == 20.0
    assert run.quantile(0.25) == pytest.approx(0.0005)
