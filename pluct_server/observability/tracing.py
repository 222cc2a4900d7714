"""OpenTelemetry traces of gRPC calls and their SQL, exported over OTLP when an endpoint is set."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

_LOGGER = logging.getLogger(__name__)

ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
SERVICE_NAME = "pluct-engine"

_provider: Any = None


def tracing_wanted(environ: Mapping[str, str]) -> bool:
    """Tell whether traces are to be exported: only when the OTLP endpoint is set."""
    return bool(environ.get(ENDPOINT_ENV, "").strip())


def server_interceptors() -> list[Any]:
    """Start exporting traces (once per process) and return the gRPC interceptor that makes them."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=_tracer_provider())]


def _tracer_provider() -> Any:
    """Return this process's tracer provider, made on first use with asyncpg instrumented."""
    global _provider
    if _provider is None:
        # Imported here: a server without tracing never loads the SDK.
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        name = os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        # The exporter reads its endpoint, headers and TLS from the OTEL_EXPORTER_OTLP_* variables.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        AsyncPGInstrumentor().instrument(tracer_provider=provider)
        _provider = provider
        _LOGGER.info("exporting traces to %s", os.environ.get(ENDPOINT_ENV))
    return _provider


def flush_traces() -> None:
    """Send the spans still buffered (at shutdown)."""
    if _provider is not None:
        _provider.force_flush()
