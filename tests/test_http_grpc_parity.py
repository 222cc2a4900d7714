"""One operation through gRPC and through the JSON shim: the same ledger effect, the same errors."""

from __future__ import annotations

import grpc
import pytest
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import ledger_pb2
from pluct.token.v1 import token_service_pb2 as token_pb

from pluct_server.api.http.status import http_status
from tests.http_support import ADMIN_HEADERS, WEBHOOK_HEADERS, call
from tests.support import (
    ADMIN_METADATA,
    WEBHOOK_METADATA,
    error_reason,
    new_request_id,
    new_user_id,
)


async def ledger_of(credit, user_id: str) -> list[tuple[str, int, str | None, int]]:
    page = await credit.ListTransactions(credit_pb.ListTransactionsRequest(user_id=user_id))
    return [
        (
            ledger_pb2.TransactionType.Name(row.type),
            row.amount,
            row.reason if row.HasField("reason") else None,
            row.balance_after,
        )
        for row in reversed(page.transactions)
    ]


async def summary_of(admin, user_id: str) -> tuple[int, int, int]:
    users = await admin.ListUsers(
        admin_pb.ListUsersRequest(page_size=1000), metadata=ADMIN_METADATA
    )
    [user] = [user for user in users.users if user.user_id == user_id]
    return user.balance, user.transaction_count, user.total_spent


async def by_grpc(credit, token, admin, user_id: str) -> None:
    await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id, initial_credits=5))
    payment = credit_pb.AddCreditsRequest(user_id=user_id, amount=7, request_id=new_request_id())
    await credit.AddCredits(payment, metadata=WEBHOOK_METADATA)
    await credit.AddCredits(payment, metadata=WEBHOOK_METADATA)  # the provider's retry
    await token.VendToken(token_pb.VendTokenRequest(user_id=user_id))
    await admin.AddCredits(
        admin_pb.AddCreditsRequest(user_id=user_id, amount=3, reason="goodwill"),
        metadata=ADMIN_METADATA,
    )
    await admin.AddCredits(
        admin_pb.AddCreditsRequest(user_id=user_id, amount=2), metadata=ADMIN_METADATA
    )


async def by_http(http, user_id: str) -> None:
    await call(http, "POST", "/user/create", json_body={"userId": user_id, "initialCredits": 5})
    retry_key = {**WEBHOOK_HEADERS, "Idempotency-Key": new_request_id()}
    for _ in range(2):  # the provider's retry
        await call(
            http,
            "POST",
            "/add-credits",
            json_body={"userId": user_id, "amount": 7},
            headers=retry_key,
        )
    await call(http, "POST", "/vend-token", json_body={"userId": user_id})
    await call(
        http,
        "POST",
        "/admin/credits/add",
        json_body={"userId": user_id, "amount": 3, "reason": "goodwill"},
        headers=ADMIN_HEADERS,
    )
    await call(
        http,
        "POST",
        "/admin/credits/add",
        json_body={"userId": user_id, "amount": 2},
        headers=ADMIN_HEADERS,
    )


async def test_the_same_operations_leave_the_same_ledger(credit, token, admin, http):
    via_grpc, via_http = new_user_id("grpc"), new_user_id("http")

    await by_grpc(credit, token, admin, via_grpc)
    await by_http(http, via_http)

    expected = [
        ("TRANSACTION_TYPE_USER_CREATION", 5, "User account creation", 5),
        ("TRANSACTION_TYPE_ADD_WEBHOOK", 7, "Payment gateway", 12),
        ("TRANSACTION_TYPE_SPEND", 1, None, 11),
        ("TRANSACTION_TYPE_ADMIN_ADD", 3, "goodwill", 14),
        ("TRANSACTION_TYPE_ADMIN_ADD", 2, "Manual credit addition by admin", 16),
    ]
    assert await ledger_of(credit, via_grpc) == expected
    assert await ledger_of(credit, via_http) == expected
    assert await summary_of(admin, via_grpc) == await summary_of(admin, via_http) == (16, 5, 1)
    # And each side reads the other's writes the same way.
    grpc_seen = await credit.GetBalance(credit_pb.GetBalanceRequest(user_id=via_http))
    http_seen = await call(http, "GET", f"/user/{via_grpc}/balance")
    assert grpc_seen.balance == http_seen.body["balance"] == 16


@pytest.mark.parametrize(
    ("operation", "grpc_call", "http_call"),
    [
        (
            "vend for an unknown user",
            lambda s, u: s["token"].VendToken(token_pb.VendTokenRequest(user_id=u)),
            ("POST", "/vend-token", lambda u: {"userId": u}, {}),
        ),
        (
            "blank user id",
            lambda s, u: s["credit"].CreateUser(credit_pb.CreateUserRequest(user_id=" ")),
            ("POST", "/user/create", lambda u: {"userId": " "}, {}),
        ),
        (
            "webhook without the secret",
            lambda s, u: s["bare_credit"].AddCredits(
                credit_pb.AddCreditsRequest(user_id=u, amount=1)
            ),
            ("POST", "/add-credits", lambda u: {"userId": u, "amount": 1}, {}),
        ),
        (
            "grant above the signup allowance",
            lambda s, u: s["credit"].CreateUser(
                credit_pb.CreateUserRequest(user_id=u, initial_credits=11)
            ),
            ("POST", "/user/create", lambda u: {"userId": u, "initialCredits": 11}, {}),
        ),
        (
            "amount out of range",
            lambda s, u: s["admin"].AddCredits(
                admin_pb.AddCreditsRequest(user_id=u, amount=0), metadata=ADMIN_METADATA
            ),
            ("POST", "/admin/credits/add", lambda u: {"userId": u, "amount": 0}, ADMIN_HEADERS),
        ),
    ],
)
async def test_the_same_failure_has_the_same_reason_both_ways(
    credit, bare_credit, token, admin, http, operation, grpc_call, http_call
):
    user_id = new_user_id()
    stubs = {"credit": credit, "bare_credit": bare_credit, "token": token, "admin": admin}
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await grpc_call(stubs, user_id)
    reason, _ = error_reason(raised.value)

    method, path, body, headers = http_call
    reply = await call(http, method, path, json_body=body(user_id), headers=headers)

    assert reply.body["reason"] == reason, operation
    assert reply.status == http_status(raised.value.code(), reason), operation


async def test_an_http_request_has_its_caller_checked_once(server, http, monkeypatch):
    from tests.http_support import ADMIN_HEADERS, call

    assert server.guards is not None
    authenticator = server.guards.authenticator
    seen: list[str] = []
    identify, authorize = authenticator.identify, authenticator.authorize

    async def counted_identify(method, *args, **kwargs):
        seen.append(f"identify {method}")
        return await identify(method, *args, **kwargs)

    def counted_authorize(method, *args, **kwargs):
        seen.append(f"authorize {method}")
        return authorize(method, *args, **kwargs)

    monkeypatch.setattr(authenticator, "identify", counted_identify)
    monkeypatch.setattr(authenticator, "authorize", counted_authorize)
    user = new_user_id("once")
    granted = await call(
        http,
        "POST",
        "/admin/credits/add",
        json_body={"userId": user, "amount": 2},
        headers=ADMIN_HEADERS,
    )

    assert granted.status == 200
    grant = "/pluct.admin.v1.AdminService/AddCredits"
    # Once by the shim: the RPC it calls in-process trusts the caller it hands over.
    assert seen == ["identify /admin", f"authorize {grant}"]
