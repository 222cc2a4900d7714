"""Field rules live once, as buf.validate annotations: checked for every RPC, read by the shim."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.rpc import error_details_pb2, status_pb2
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.credit.v1 import credit_service_pb2 as credit_pb

from pluct_server.api.grpc.field_rules import PATTERN_WORDS, rules_of
from pluct_server.app.server import SERVICES
from tests.support import (
    ADMIN_METADATA,
    ADMIN_SECRET,
    WEBHOOK_METADATA,
    ledger_of,
    new_request_id,
    new_user_id,
)

pytestmark = pytest.mark.usefixtures("database_dsn")


def field_violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """Return the (field, rule) pairs of an error's google.rpc.BadRequest detail."""
    trailers = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    found = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            found += [(v.field, v.reason) for v in bad_request.field_violations]
    return found


# The one RPC only the payment provider calls.
PAYMENTS = {credit_pb.DESCRIPTOR.services_by_name["CreditService"].methods_by_name["AddCredits"]}


def request_fields() -> list[tuple[Any, FieldDescriptor]]:
    """Every (method, field) of every RPC's request whose field carries a rule."""
    return [
        (method, field)
        for service in SERVICES
        for method in service.methods
        for field in method.input_type.fields
        if rules_of(field).ListFields()
    ]


def breaking_value(field: FieldDescriptor) -> Any:
    """A value that breaks the field's first rule: too long, too small, or empty."""
    rules = rules_of(field)
    kind = rules.WhichOneof("type")
    if kind == "string" and rules.string.HasField("max_len"):
        return "a" * (rules.string.max_len + 1)
    if kind == "string" and rules.string.HasField("pattern"):
        return "\x00"  # no pattern here admits a NUL
    if kind in ("int32", "int64"):
        return getattr(rules, kind).gte - 1
    if kind == "enum":
        return 999
    if kind == "repeated" and rules.repeated.HasField("items"):
        # One item that breaks the items' rule.
        items = rules.repeated.items
        item_kind = items.WhichOneof("type")
        if item_kind == "string":
            return ["\x00"]
        if item_kind in ("int32", "int64"):
            return [getattr(items, item_kind).gte - 1]
    return None  # required or a minimum count: the zero value breaks it


async def test_every_bad_field_is_named_with_the_rule_it_broke_and_nothing_is_written(
    admin, database_dsn
):
    user_id = new_user_id()
    request = admin_pb.AddCreditsRequest(
        user_id=user_id, amount=0, reason="line\x00break", request_id="r" * 129
    )

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await admin.AddCredits(request, metadata=ADMIN_METADATA)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(field_violations(raised.value)) == [
        ("amount", "int64.gte_lte"),
        ("reason", "string.pattern"),
        ("request_id", "string.max_len"),
    ]
    details = raised.value.details() or ""
    assert "amount must be greater than or equal to 1" in details
    assert "request_id must be at most 128 characters" in details
    assert await ledger_of(database_dsn, user_id) == (None, {})


@pytest.mark.parametrize(
    ("method", "field"),
    request_fields(),
    ids=lambda value: getattr(value, "full_name", str(value)),
)
async def test_every_rpc_checks_its_rules_before_its_servicer_runs(channel, method, field):
    request = message_factory.GetMessageClass(method.input_type)()
    value = breaking_value(field)
    if isinstance(value, list):
        getattr(request, field.name).extend(value)
    elif value is not None:
        setattr(request, field.name, value)
    call = channel.unary_unary(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=None,
    )

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(request, metadata=WEBHOOK_METADATA if method in PAYMENTS else ADMIN_METADATA)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # An item of a list is named with its index: event_types[0].
    assert field.name in {name.split("[")[0] for name, _ in field_violations(raised.value)}


def test_fields_of_one_meaning_carry_the_same_rules_everywhere():
    by_name: dict[str, set[bytes]] = {}
    for _, field in request_fields():
        if field.name in ("user_id", "request_id", "event_id", "page_size"):
            rules = type(rules_of(field))()
            rules.CopyFrom(rules_of(field))
            # An optional user_id says "at least 1 character" as min_len, a plain one as required.
            rules.string.ClearField("min_len")
            rules.ClearField("required")
            by_name.setdefault(field.name, set()).add(rules.SerializeToString(deterministic=True))

    assert {name: len(rules) for name, rules in by_name.items()} == {
        "user_id": 1,
        "request_id": 1,
        "event_id": 1,
        "page_size": 1,
    }


async def test_a_user_id_must_be_in_nfkc_form(credit):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await credit.GetBalance(credit_pb.GetBalanceRequest(user_id="\uff55\uff53\uff45\uff52"))

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(raised.value) == [("user_id", "string.nfkc")]


async def test_the_openapi_document_states_the_annotated_limits(server):
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{server.http_port}/openapi.json") as reply,
    ):
        document = await reply.json()
    payment = document["paths"]["/add-credits"]["post"]
    schema = payment["requestBody"]["content"]["application/json"]["schema"]
    amount = rules_of(credit_pb.AddCreditsRequest.DESCRIPTOR.fields_by_name["amount"]).int64
    user_id = rules_of(credit_pb.AddCreditsRequest.DESCRIPTOR.fields_by_name["user_id"]).string

    assert schema["properties"]["amount"]["minimum"] == amount.gte
    assert schema["properties"]["amount"]["maximum"] == amount.lte
    assert schema["properties"]["userId"]["maxLength"] == user_id.max_len
    assert set(schema["required"]) >= {"userId", "amount"}


async def test_a_legacy_caller_reads_the_annotated_limits_in_its_message(server):
    amount = rules_of(credit_pb.AddCreditsRequest.DESCRIPTOR.fields_by_name["amount"]).int64
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{server.http_port}/admin/credits/add",
            json={"userId": new_user_id(), "amount": amount.lte + 1, "requestId": new_request_id()},
            headers={"Authorization": ADMIN_METADATA[0][1]},
        ) as reply,
    ):
        body = await reply.json()

    assert reply.status == 400
    assert body["error"] == f"Valid amount between {amount.gte} and {amount.lte} is required"


def pattern_fields() -> list[tuple[Any, FieldDescriptor]]:
    """Every (method, field) of every RPC's request whose field has a pattern."""
    return [
        (method, field)
        for method, field in request_fields()
        if rules_of(field).string.HasField("pattern")
    ]


def pattern_breaking_value(pattern: str) -> str:
    """A value within the field's length that breaks its pattern alone."""
    return {r"\S": " ", r"^[0-9a-f]{16}$": "G" * 16}.get(pattern, "a\x00b")


def described_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """Return each field of an error's google.rpc.BadRequest with its description."""
    trailers = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    found: dict[str, str] = {}
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            found |= {v.field: v.description for v in bad_request.field_violations}
    return found


def test_every_pattern_of_the_protos_is_said_in_words():
    unworded = {
        field.full_name: rules_of(field).string.pattern
        for _, field in pattern_fields()
        if rules_of(field).string.pattern not in PATTERN_WORDS
    }

    assert not unworded


@pytest.mark.parametrize(
    ("method", "field"),
    pattern_fields(),
    ids=lambda value: getattr(value, "full_name", str(value)),
)
async def test_a_broken_pattern_is_told_in_words_over_grpc(channel, method, field):
    pattern = rules_of(field).string.pattern
    request = message_factory.GetMessageClass(method.input_type)()
    setattr(request, field.name, pattern_breaking_value(pattern))
    call = channel.unary_unary(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=None,
    )

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(request, metadata=WEBHOOK_METADATA if method in PAYMENTS else ADMIN_METADATA)

    said = f"{field.name} {PATTERN_WORDS[pattern]}"
    details = raised.value.details() or ""
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert said in details.split("; ")
    assert described_violations(raised.value)[field.name] == said
    assert "regex" not in details and pattern not in details


async def test_a_user_id_with_a_space_is_told_what_it_may_not_hold(credit):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await credit.GetBalance(credit_pb.GetBalanceRequest(user_id="two words"))

    said = "user_id must not contain control, format (invisible) or whitespace characters"
    assert raised.value.details() == said
    assert described_violations(raised.value) == {"user_id": said}


async def test_the_command_line_tells_a_bad_user_id_in_words(server):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pluct_client",
        "balance",
        "two words",
        env={
            # Only what this call means: no key or target of the machine's own leaks in.
            **{name: value for name, value in os.environ.items() if "PLUCT" not in name},
            "PLUCT_TARGET": f"127.0.0.1:{server.grpc_port}",
            "ADMIN_SECRET": ADMIN_SECRET,
        },
        cwd=tempfile.gettempdir(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()

    assert process.returncode == 1
    assert err.decode().strip() == (
        "INVALID_ARGUMENT: user_id must not contain control, format (invisible) or whitespace "
        "characters"
    )
