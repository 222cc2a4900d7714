"""The edges of the RPC layer: reflection, undecodable requests, bugs, auth before decoding."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pluct.credit.v1 import credit_service_pb2 as credit_pb

from pluct_server.app.server import SERVICE_NAMES
from pluct_server.store.ledger_store import LedgerStore
from tests.support import error_reason

pytestmark = pytest.mark.usefixtures("database_dsn")


def raw_call(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
    """A call that sends bytes exactly as given, bypassing the stubs' serialization."""
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


async def test_reflection_lists_every_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")

    responses = [response async for response in stub.ServerReflectionInfo(iter([request]))]

    listed = {service.name for service in responses[0].list_services_response.service}
    assert set(SERVICE_NAMES) | {"grpc.health.v1.Health"} <= listed


async def test_reflection_describes_our_protos(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="pluct.token.v1.TokenService"
    )

    [response] = [r async for r in stub.ServerReflectionInfo(iter([request]))]

    assert response.file_descriptor_response.file_descriptor_proto


async def test_undecodable_request_is_invalid_argument(channel):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await raw_call(channel, "/pluct.credit.v1.CreditService/GetBalance")(b"\xff\xff\xff")

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(raised.value) == ("INVALID_ARGUMENT", {"field": "request"})


async def test_caller_is_checked_before_the_request_is_decoded(bare_channel):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await raw_call(bare_channel, "/pluct.admin.v1.AdminService/ListUsers")(b"\xff\xff\xff")

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_bug_is_internal_with_no_details_on_the_wire_and_a_logged_stack(
    credit, monkeypatch, caplog
):
    async def broken_balance(self, user_id):
        raise ZeroDivisionError("SELECT secret_column FROM internals")

    monkeypatch.setattr(LedgerStore, "balance", broken_balance)
    caplog.set_level(logging.ERROR, logger="pluct_server.api.grpc.interceptor")

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await credit.GetBalance(
            credit_pb.GetBalanceRequest(user_id="anyone"), metadata=(("x-request-id", "req-77"),)
        )

    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details() == "internal error"
    assert "secret_column" not in str(raised.value.trailing_metadata())
    [record] = caplog.records
    assert "req-77" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError


async def test_a_bad_field_is_named_in_a_bad_request_detail(credit):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await credit.GetBalance(credit_pb.GetBalanceRequest(user_id="bad id!"))
    trailers = dict(raised.value.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    found = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            found += [(v.field, bool(v.description)) for v in bad_request.field_violations]

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert found == [("user_id", True)]
