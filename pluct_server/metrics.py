"""Prometheus metrics: calls under the names the gRPC ecosystem uses, and the ledger's own."""

from __future__ import annotations

import os

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
TOKENS_VENDED = Counter("pluct_tokens_vended_total", "Tokens vended.")
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


def _registry() -> CollectorRegistry:
    """Return the registry to expose: every worker's samples added up, or this process's own."""
    if not os.environ.get(MULTIPROCESS_DIR_ENV):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def exposition() -> tuple[bytes, str]:
    """Return every worker's metrics in the text format, and its content type."""
    return generate_latest(_registry()), CONTENT_TYPE_LATEST


def serve_metrics(listen: str) -> None:
    """Serve /metrics (every worker's) on a listener of its own, from a background thread."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]"), registry=_registry())


def forget_worker(pid: int) -> None:
    """Drop the live gauges of a worker that exited (its counters stay counted)."""
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
