"""Control characters in any string field are refused by its field rule, before PostgreSQL."""

from __future__ import annotations

import logging
import secrets
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.token.v1 import token_service_pb2 as token_pb

from pluct_server.app.server import SERVICES
from pluct_server.security.key_secrets import key_id_of
from tests.http_support import ADMIN_HEADERS, WEBHOOK_HEADERS, call
from tests.support import (
    ADMIN_METADATA,
    WEBHOOK_METADATA,
    caller_key,
    new_request_id,
    new_user_id,
)

pytestmark = pytest.mark.usefixtures("database_dsn")

# NUL (PostgreSQL's text cannot hold it), C0 controls, DEL and a C1 control.
CONTROLS = {
    "nul": "\x00",
    "soh": "\x01",
    "escape": "\x1b",
    "delete": "\x7f",
    "c1-next-line": "\x85",
}
# Fields that never reach PostgreSQL, answered as their own malformed values are.
NOT_STORED = {
    "pluct.token.v1.ValidateTokenRequest.token",
    "pluct.token.v1.ValidateTokenRequest.feature",
}


def bad(control: str) -> str:
    return f"ab{control}cd"


async def stored(db: Any) -> tuple[Any, ...]:
    """Everything a request could write (tests run one at a time)."""
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM users), (SELECT max(id) FROM ledger),"
        " (SELECT count(*) FROM request_keys), (SELECT count(*) FROM api_keys),"
        " (SELECT count(revoke_time) FROM api_keys), (SELECT count(*) FROM token_revocations),"
        " (SELECT count(*) FROM prices), (SELECT sum(version) FROM prices),"
        " (SELECT count(*) FROM webhook_endpoints),"
        " (SELECT sum(cardinality(previous_secrets)) FROM webhook_endpoints)"
    )
    return tuple(row)


def violated_fields(error: grpc.aio.AioRpcError) -> set[str]:
    """Return the fields named by an error's google.rpc.BadRequest detail."""
    trailers = dict(error.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    found = set()
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            found |= {violation.field for violation in bad_request.field_violations}
    return found


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    noisy = [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not noisy, noisy


def string_fields() -> list[tuple[MethodDescriptor, FieldDescriptor]]:
    """Every string field of every RPC's request."""
    return [
        (method, field)
        for service in SERVICES
        for method in service.methods
        for field in method.input_type.fields
        if field.type == FieldDescriptor.TYPE_STRING and field.full_name not in NOT_STORED
    ]


def valid_requests(user_id: str, key_id: str, spend_id: int = 1) -> dict[str, Message]:
    """A request each RPC would carry out, so that the one bad field alone can stop it."""
    return {
        "CreditService.CreateUser": credit_pb.CreateUserRequest(
            user_id=new_user_id("made"), initial_credits=1, request_id=new_request_id()
        ),
        "CreditService.GetBalance": credit_pb.GetBalanceRequest(user_id=user_id),
        "CreditService.ListTransactions": credit_pb.ListTransactionsRequest(user_id=user_id),
        "CreditService.ListGrants": credit_pb.ListGrantsRequest(user_id=user_id),
        "CreditService.AddCredits": credit_pb.AddCreditsRequest(
            user_id=user_id, amount=7, event_id=new_request_id(), request_id=new_request_id()
        ),
        "TokenService.VendToken": token_pb.VendTokenRequest(
            user_id=user_id, request_id=new_request_id()
        ),
        "AdminService.ListUsers": admin_pb.ListUsersRequest(),
        "AdminService.ListTransactions": admin_pb.ListTransactionsRequest(user_id=user_id),
        "AdminService.AddCredits": admin_pb.AddCreditsRequest(
            user_id=user_id, amount=3, reason="goodwill", request_id=new_request_id()
        ),
        "AdminService.CreateApiKey": admin_pb.CreateApiKeyRequest(
            name="reporting", scopes=["credits:read"]
        ),
        "AdminService.ListApiKeys": admin_pb.ListApiKeysRequest(),
        "AdminService.RevokeApiKey": admin_pb.RevokeApiKeyRequest(key_id=key_id),
        "AdminService.RevokeTokens": admin_pb.RevokeTokensRequest(user_id=user_id),
        "AdminService.SetPrice": admin_pb.SetPriceRequest(feature="controls", credits=2),
        "AdminService.ListEvents": admin_pb.ListEventsRequest(user_id=user_id),
        "AdminService.CreateWebhookEndpoint": admin_pb.CreateWebhookEndpointRequest(
            url="https://hooks.example.com/pluct", event_types=["credits.spent"]
        ),
        "AdminService.DeleteWebhookEndpoint": admin_pb.DeleteWebhookEndpointRequest(
            endpoint_id="1"
        ),
        "AdminService.RotateWebhookSecret": admin_pb.RotateWebhookSecretRequest(endpoint_id="1"),
        "AdminService.RefundSpend": admin_pb.RefundSpendRequest(
            transaction_id=spend_id, amount=1, reason="job failed", request_id=new_request_id()
        ),
    }


def credentials(method: MethodDescriptor) -> tuple[tuple[str, str], ...]:
    if method.containing_service.name == "AdminService":
        return ADMIN_METADATA
    if method.full_name == "pluct.credit.v1.CreditService.AddCredits":
        return WEBHOOK_METADATA
    return ()  # the channel's own key


@pytest.mark.parametrize("control", CONTROLS.values(), ids=CONTROLS)
@pytest.mark.parametrize(
    ("method", "field"), string_fields(), ids=lambda value: getattr(value, "full_name", "")
)
async def test_a_control_character_in_any_string_field_is_invalid_argument_over_grpc(
    server, channel, credit, token, db, caplog, method, field, control
):
    user_id = new_user_id("controls")
    await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id, initial_credits=5))
    key_id = key_id_of(await caller_key(server, ("credits:read",), name="bystander"))
    assert key_id is not None
    name = f"{method.containing_service.name}.{method.name}"
    spend_id = 1
    if name == "AdminService.RefundSpend":
        await token.VendToken(token_pb.VendTokenRequest(user_id=user_id))
        spend_id = await db.fetchval(
            "SELECT id FROM ledger WHERE user_id = $1 AND type = 'spend'", user_id
        )
    request = valid_requests(user_id, key_id, spend_id)[name]
    if field.is_repeated:
        getattr(request, field.name).append(bad(control))
    else:
        setattr(request, field.name, bad(control))
    rpc = channel.unary_unary(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=None,
    )
    before = await stored(db)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await rpc(request, metadata=credentials(method))

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert field.name in (raised.value.details() or "")
    if not field.is_repeated:  # scopes are checked against the known ones, after the rules
        assert field.name in violated_fields(raised.value)
    assert await stored(db) == before
    no_traceback(caplog)


def test_every_string_field_that_reaches_the_database_is_tried():
    covered = valid_requests("u", "0" * 16)
    for method, _ in string_fields():
        assert f"{method.containing_service.name}.{method.name}" in covered, method.full_name


async def test_a_token_with_a_control_character_is_answered_invalid(token, caplog):
    answer = await token.ValidateToken(token_pb.ValidateTokenRequest(token=bad("\x00")))

    assert not answer.valid
    no_traceback(caplog)


# (verb, path, body, headers, JSON name of the field holding the control character)
def http_attempts(user_id: str, control: str) -> list[tuple[str, str, Any, Any, str]]:
    quoted = quote(bad(control), safe="")
    return [
        ("POST", "/user/create", {"userId": bad(control)}, None, "userId"),
        (
            "POST",
            "/user/create",
            {"userId": new_user_id("made"), "requestId": bad(control)},
            None,
            "requestId",
        ),
        ("POST", "/vend-token", {"userId": bad(control)}, None, "userId"),
        ("POST", "/vend-token", {"userId": user_id, "requestId": bad(control)}, None, "requestId"),
        (
            "POST",
            "/add-credits",
            {"userId": bad(control), "amount": 5, "eventId": new_request_id()},
            WEBHOOK_HEADERS,
            "userId",
        ),
        (
            "POST",
            "/add-credits",
            {"userId": user_id, "amount": 5, "eventId": bad(control)},
            WEBHOOK_HEADERS,
            "eventId",
        ),
        (
            "POST",
            "/add-credits",
            {
                "userId": user_id,
                "amount": 5,
                "eventId": new_request_id(),
                "requestId": bad(control),
            },
            WEBHOOK_HEADERS,
            "requestId",
        ),
        (
            "POST",
            "/admin/credits/add",
            {"userId": bad(control), "amount": 5},
            ADMIN_HEADERS,
            "userId",
        ),
        (
            "POST",
            "/admin/credits/add",
            {"userId": user_id, "amount": 5, "reason": bad(control)},
            ADMIN_HEADERS,
            "reason",
        ),
        (
            "POST",
            "/admin/credits/add",
            {"userId": user_id, "amount": 5, "requestId": bad(control)},
            ADMIN_HEADERS,
            "requestId",
        ),
        ("GET", f"/user/{quoted}/balance", None, None, "userId"),
        ("GET", f"/user/{quoted}/transactions", None, None, "userId"),
        ("GET", f"/admin/transactions?userId={quoted}", None, ADMIN_HEADERS, "userId"),
    ]


@pytest.mark.parametrize("control", CONTROLS.values(), ids=CONTROLS)
async def test_a_control_character_in_any_field_with_a_route_is_400_over_http(
    http, credit, db, caplog, control
):
    user_id = new_user_id("controls")
    await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id, initial_credits=5))
    before = await stored(db)

    for verb, path, body, headers, field in http_attempts(user_id, control):
        reply = await call(http, verb, path, json_body=body, headers=headers)
        assert reply.status == 400, (verb, path, field, reply.body)
        assert reply.body["field"] == field, (verb, path, reply.body)

    assert await stored(db) == before
    no_traceback(caplog)


async def test_a_key_name_of_a_single_visible_character_between_spaces_is_taken(admin):
    name = f" {secrets.token_hex(1)[0]} "

    created = await admin.CreateApiKey(
        admin_pb.CreateApiKeyRequest(name=name, scopes=["credits:read"]), metadata=ADMIN_METADATA
    )

    assert created.api_key.name == name
