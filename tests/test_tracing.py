"""Traces over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set: a call's span with its SQL inside."""

from __future__ import annotations

import asyncio

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc

from pluct_server.observability.tracing import tracing_wanted
from tests.support import ADMIN_METADATA, ADMIN_SECRET, JWT_SECRET, WEBHOOK_SECRET, new_user_id
from tests.test_process import ServiceProcess, production_dsn, service_env  # noqa: F401

# A hang guard for the exporter's batches (sent every 100 ms here), not a timing claim.
EXPORT_WAIT_SECONDS = 30


class Collector(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[object] = []
        self.arrived = asyncio.Event()

    async def Export(self, request, context):
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        self.arrived.set()
        return trace_service_pb2.ExportTraceServiceResponse()


def test_no_endpoint_means_no_tracing():
    assert not tracing_wanted({})
    assert not tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": " "})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})


async def test_a_call_is_traced_with_its_sql_as_a_child_span(production_dsn, tmp_path):  # noqa: F811
    collector = Collector()
    receiver = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    port = receiver.add_insecure_port("127.0.0.1:0")
    await receiver.start()
    env = service_env(
        DATABASE_URL=production_dsn,
        ADMIN_SECRET=ADMIN_SECRET,
        JWT_SECRET=JWT_SECRET,
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        PLUCT_WORKERS="1",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    service = ServiceProcess(env, tmp_path)
    user_id = new_user_id("traced")
    try:
        await service.wait_serving()
        async with grpc.aio.insecure_channel(service.grpc_target) as channel:
            credit = credit_service_pb2_grpc.CreditServiceStub(channel)
            await credit.CreateUser(
                credit_pb.CreateUserRequest(user_id=user_id, initial_credits=1),
                metadata=ADMIN_METADATA,
            )
            await credit.GetBalance(
                credit_pb.GetBalanceRequest(user_id=user_id), metadata=ADMIN_METADATA
            )
        rpc_span = await asyncio.wait_for(
            _span_named(collector, "/pluct.credit.v1.CreditService/GetBalance"),
            EXPORT_WAIT_SECONDS,
        )
        children = await asyncio.wait_for(_children_of(collector, rpc_span), EXPORT_WAIT_SECONDS)
    finally:
        service.kill()
        await receiver.stop(0)

    statements = [_attribute(span, "db.statement") for span in children]
    assert any("balance" in statement and "users" in statement for statement in statements)
    assert user_id not in str(collector.spans)  # statements carry parameters, never values


async def _span_named(collector: Collector, wanted: str):
    while True:
        for span in collector.spans:
            if wanted in span.name:  # type: ignore[attr-defined]
                return span
        collector.arrived.clear()
        await collector.arrived.wait()


async def _children_of(collector: Collector, parent) -> list[object]:
    while True:
        children = [s for s in collector.spans if s.parent_span_id == parent.span_id]  # type: ignore[attr-defined]
        if children:
            return children
        collector.arrived.clear()
        await collector.arrived.wait()


def _attribute(span, name: str) -> str:
    for attribute in span.attributes:
        if attribute.key == name:
            return str(attribute.value.string_value)
    return ""
