"""Prometheus metrics: calls under the names the gRPC ecosystem uses, and the ledger's own."""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

# Set by the supervisor before workers start: each worker then writes its samples to files
# there, and whoever serves /metrics adds up every worker's.
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Latency buckets from 1 ms: a vend takes a few milliseconds, a validate well under one.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
GRPC_STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", GRPC_LABELS)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, whatever their status.",
    (*GRPC_LABELS, "grpc_code"),
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time the server took to answer an RPC.",
    GRPC_LABELS,
    buckets=_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "http_server_requests_total",
    "HTTP requests answered by the JSON shim.",
    ("method", "route", "code"),
)
HTTP_REQUEST_SECONDS = Histogram(
    "http_server_request_duration_seconds",
    "Time the JSON shim took to answer a request.",
    ("method", "route"),
    buckets=_BUCKETS,
)
REFUSALS = Counter(
    "pluct_refusals_total",
    "Calls refused with a domain error, by method and ErrorInfo reason "
    "(INSUFFICIENT_CREDITS, RATE_LIMITED, BAD_CREDENTIALS, ...).",
    ("method", "reason"),
)
CREDITS_GRANTED = Counter(
    "pluct_credits_granted_total",
    "Credits added to balances, by source (payment, admin, signup).",
    ("source",),
)
CREDITS_SPENT = Counter("pluct_credits_spent_total", "Credits spent on tokens.")
CREDITS_REFUNDED = Counter("pluct_credits_refunded_total", "Credits of spends given back.")
CREDITS_EXPIRED = Counter(
    "pluct_credits_expired_total", "Credits of expired grants written off the balances."
)
TOKENS_VENDED = Counter("pluct_tokens_vended_total", "Tokens vended.")
# Spend batches: how many vends each carried, and where a vend's time went (its wait for a
# batch to leave, then the batch's statement). Finer at the bottom: both are often under 1 ms.
_SPEND_BUCKETS = (0.00025, 0.0005, *_BUCKETS)
SPEND_BATCH_SIZE = Histogram(
    "pluct_spend_batch_size",
    "Vends spent by each batch statement.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
SPEND_BATCH_SECONDS = Histogram(
    "pluct_spend_batch_seconds",
    "Time each batch statement took, from the batch leaving its queue to its answer.",
    buckets=_SPEND_BUCKETS,
)
SPEND_WAIT_SECONDS = Histogram(
    "pluct_spend_wait_seconds",
    "Time each vend waited for a batch to carry it (while earlier batches ran).",
    buckets=_SPEND_BUCKETS,
)
DB_POOL_CONNECTIONS = Gauge(
    "pluct_db_pool_connections",
    "Open database connections, in all workers.",
    multiprocess_mode="livesum",
)
DB_POOL_IN_USE = Gauge(
    "pluct_db_pool_connections_in_use",
    "Database connections lent to a call, in all workers.",
    multiprocess_mode="livesum",
)
DB_POOL_WAITS = Counter(
    "pluct_db_pool_waits_total",
    "Times a call found no idle database connection and had to wait for one.",
)


# How long a call's counts may wait in plain integers before they reach the shared metrics.
FLUSH_SECONDS = 0.05


class BatchedCount:
    """A counter child that adds up in a plain integer and reaches Prometheus in batches.

    With workers, every change of a Prometheus value takes a lock, a getpid() and a write to
    a shared file (about 3.5 µs for the three a call makes); batched, that is paid per flush.
    Count from the event loop's thread only: the flush runs there, and does not lock.
    """

    def __init__(self, child: Any) -> None:
        self._child = child
        self._pending = 0

    def inc(self, amount: int = 1) -> None:
        """Count `amount`, one by default."""
        self._pending += amount
        _mark(self)

    def flush(self) -> None:
        """Add what was counted since the last flush to the Prometheus counter."""
        if self._pending:
            pending, self._pending = self._pending, 0
            self._child.inc(pending)


class BatchedHistogram:
    """A histogram child that adds up in plain numbers and reaches Prometheus in batches."""

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds = tuple(child._upper_bounds)  # ends with +Inf, so every value has a bucket
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = False

    def observe(self, value: float) -> None:
        """Observe one value."""
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value
        self._pending = True
        _mark(self)

    def flush(self) -> None:
        """Add the observations since the last flush to the Prometheus histogram."""
        if not self._pending:
            return
        # prometheus_client has no call that adds many observations at once; its own observe()
        # does exactly this per value (bucket, then sum). tests/test_metrics_batching.py holds
        # the result to what observe() gives.
        for bucket, count in enumerate(self._counts):
            if count:
                self._child._buckets[bucket].inc(count)
                self._counts[bucket] = 0
        self._child._sum.inc(self._sum)
        self._sum = 0.0
        self._pending = False


_B = TypeVar("_B", BatchedCount, BatchedHistogram)
# Keyed by the metric itself (not its id, which a collected metric would hand on).
_batched: dict[tuple[object, tuple[str, ...]], Any] = {}


def count_of(counter: Counter, *labels: str) -> BatchedCount:
    """Return the batched child of `counter` for these label values, made on first use."""
    return _batched_child(counter, labels, BatchedCount)


def histogram_of(histogram: Histogram, *labels: str) -> BatchedHistogram:
    """Return the batched child of `histogram` for these label values, made on first use."""
    return _batched_child(histogram, labels, BatchedHistogram)


def _batched_child(metric: Any, labels: tuple[str, ...], batched: Callable[[Any], _B]) -> _B:
    key = (metric, labels)
    child = _batched.get(key)
    if child is None:
        child = _batched[key] = batched(metric.labels(*labels) if labels else metric)
    return child


_marked: set[BatchedCount | BatchedHistogram] = set()
# The event loop a flush is due on; a loop that stopped with one due no longer counts.
_flush_loop: asyncio.AbstractEventLoop | None = None


def _mark(metric: BatchedCount | BatchedHistogram) -> None:
    """Remember a metric with pending counts, and make sure a flush is coming."""
    global _flush_loop
    _marked.add(metric)
    if _flush_loop is not None and _flush_loop.is_running():
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        flush_counts()  # no event loop to batch on: count at once
        return
    _flush_loop = loop
    loop.call_later(FLUSH_SECONDS, flush_counts)


def flush_counts() -> None:
    """Hand every pending count to Prometheus (from the event loop's thread, which counts)."""
    global _flush_loop
    _flush_loop = None
    while _marked:
        _marked.pop().flush()


def _registry() -> CollectorRegistry:
    """Return the registry to expose: every worker's samples added up, or this process's own."""
    if not os.environ.get(MULTIPROCESS_DIR_ENV):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def exposition() -> tuple[bytes, str]:
    """Return every worker's metrics in the text format, and its content type.

    Called from the event loop's thread: this process's pending counts go in first.
    """
    flush_counts()
    return generate_latest(_registry()), CONTENT_TYPE_LATEST


def serve_metrics(listen: str) -> None:
    """Serve /metrics (every worker's) on a listener of its own, from a background thread."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]"), registry=_registry())


def forget_worker(pid: int) -> None:
    """Drop the live gauges of a worker that exited (its counters stay counted)."""
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
