"""Reflection, v1 and v1alpha: tools list our services and decode our error details with it."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.rpc import status_pb2
from grpc_reflection.v1alpha import reflection_pb2
from pluct.credit.v1 import credit_service_pb2 as credit_pb

from pluct_server.api.grpc.interceptor import STATUS_DETAILS_KEY
from pluct_server.app.server import SERVICE_NAMES

REFLECTION_SERVICES = (
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)


async def reflect(channel, service: str, **request) -> reflection_pb2.ServerReflectionResponse:
    """Send one reflection request to `service` and return its one answer."""
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    answers = [a async for a in call(iter([reflection_pb2.ServerReflectionRequest(**request)]))]
    assert len(answers) == 1
    return answers[0]


def pool_of(answer: reflection_pb2.ServerReflectionResponse) -> descriptor_pool.DescriptorPool:
    """Build a descriptor pool from the files a reflection answer carried (dependencies first)."""
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in answer.file_descriptor_response.file_descriptor_proto
    ]
    pool = descriptor_pool.DescriptorPool()
    pending = {f.name: f for f in files}
    while pending:
        for name, file in list(pending.items()):
            if all(dep not in pending for dep in file.dependency):
                pool.Add(file)
                del pending[name]
    return pool


@pytest.mark.parametrize("service", REFLECTION_SERVICES)
async def test_reflection_lists_our_services_on_v1_and_v1alpha(bare_channel, service):
    answer = await reflect(bare_channel, service, list_services="")
    listed = {s.name for s in answer.list_services_response.service}
    assert set(SERVICE_NAMES) <= listed
    # Every listed service can be described (buf curl --list-methods describes them all).
    assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= listed
    for name in listed:
        described = await reflect(bare_channel, service, file_containing_symbol=name)
        assert described.HasField("file_descriptor_response"), name


@pytest.mark.parametrize("service", REFLECTION_SERVICES)
async def test_an_error_detail_decodes_with_descriptors_found_by_reflection(
    bare_channel, credit, service
):
    # A real error of ours, as a caller receives it.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await credit.GetBalance(credit_pb.GetBalanceRequest(user_id="bad id!"))
    trailers = dict(raised.value.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers[STATUS_DETAILS_KEY])
    detail = status.details[0]
    symbol = detail.type_url.rpartition("/")[2]

    # A tool that knows nothing of google.rpc asks the server for the type by name.
    answer = await reflect(bare_channel, service, file_containing_symbol=symbol)
    pool = pool_of(answer)
    decoded = message_factory.GetMessageClass(pool.FindMessageTypeByName(symbol))()
    assert detail.Unpack(decoded)

    assert symbol == "google.rpc.ErrorInfo"
    assert decoded.reason == "INVALID_ARGUMENT"  # type: ignore[attr-defined]
    assert decoded.metadata["field"] == "user_id"  # type: ignore[attr-defined]
