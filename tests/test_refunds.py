"""Refunds: credits of a spend go back to the grants it drew from, never more than it spent."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import ledger_pb2
from pluct.token.v1 import token_service_pb2 as token_pb

from pluct_server.store.database import Database
from pluct_server.store.migrate import migrate as migrate_all
from tests.http_support import ADMIN_HEADERS, call
from tests.support import (
    ADMIN_METADATA,
    error_reason,
    external_database_url,
    ledger_of,
    new_request_id,
    new_user_id,
    schema_before,
    scratch_database,
    time_passes_for_grants,
)

pytestmark = pytest.mark.usefixtures("database_dsn")

REFUND = ledger_pb2.TRANSACTION_TYPE_REFUND
EXPIRATION = ledger_pb2.TRANSACTION_TYPE_EXPIRATION


async def user_with(credit: Any, admin: Any, *grants: tuple[int, int]) -> tuple[str, list[str]]:
    """A user holding one admin grant per (amount, priority), drawn in that order."""
    user_id = new_user_id("refunded")
    await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id))
    made = []
    for amount, priority in grants:
        reply = await admin.AddCredits(
            admin_pb.AddCreditsRequest(user_id=user_id, amount=amount, priority=priority),
            metadata=ADMIN_METADATA,
        )
        made.append(reply.grant_id)
    return user_id, made


async def vend(admin: Any, token: Any, user_id: str, credits: int) -> token_pb.VendTokenResponse:
    feature = f"refundable-{secrets.token_hex(5)}"
    await admin.SetPrice(
        admin_pb.SetPriceRequest(feature=feature, credits=credits), metadata=ADMIN_METADATA
    )
    reply: token_pb.VendTokenResponse = await token.VendToken(
        token_pb.VendTokenRequest(user_id=user_id, feature=feature)
    )
    return reply


async def spend_id(credit: Any, user_id: str) -> int:
    history = await credit.ListTransactions(credit_pb.ListTransactionsRequest(user_id=user_id))
    (spend,) = [t for t in history.transactions if t.type == ledger_pb2.TRANSACTION_TYPE_SPEND]
    return int(spend.id)


async def refund(admin: Any, transaction_id: int, amount: int = 0, **extra: Any) -> Any:
    return await admin.RefundSpend(
        admin_pb.RefundSpendRequest(transaction_id=transaction_id, amount=amount, **extra),
        metadata=ADMIN_METADATA,
    )


async def remaining(credit: Any, user_id: str) -> dict[str, int]:
    reply = await credit.ListGrants(credit_pb.ListGrantsRequest(user_id=user_id))
    return {grant.grant_id: grant.remaining for grant in reply.grants}


async def refused(attempt: Any, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await attempt
    assert raised.value.code() == code, raised.value.details()
    assert error_reason(raised.value)[0] == reason


async def test_refunds_go_back_last_drawn_first_and_a_full_one_revokes_the_token(
    admin, credit, token, database_dsn
):
    user_id, (first, second) = await user_with(credit, admin, (2, 10), (5, 20))
    vended = await vend(admin, token, user_id, 3)  # 2 from the first grant, 1 from the second
    spent = await spend_id(credit, user_id)

    one = await refund(admin, spent, 1, reason="job failed")
    assert await remaining(credit, user_id) == {first: 0, second: 5}
    valid = await token.ValidateToken(token_pb.ValidateTokenRequest(token=vended.token))
    rest = await refund(admin, spent)

    assert (one.refund.type, one.refund.amount, one.refund.refunded_transaction_id) == (
        REFUND,
        1,
        spent,
    )
    assert [(d.grant_id, d.amount) for d in one.refund.grant_draws] == [(second, 1)]
    assert (one.refund.reason, one.balance_after) == ("job failed", 5)
    assert valid.valid  # a partial refund leaves the token good
    assert [(d.grant_id, d.amount) for d in rest.refund.grant_draws] == [(first, 2)]
    assert (rest.refund.amount, rest.refund.reason, rest.balance_after) == (2, "Refund", 7)
    assert await remaining(credit, user_id) == {first: 2, second: 5}
    revoked = await token.ValidateToken(token_pb.ValidateTokenRequest(token=vended.token))
    assert (revoked.valid, revoked.reason) == (False, "Token revoked")
    assert await ledger_of(database_dsn, user_id) == (
        7,
        Counter({"admin_add": 2, "spend": 1, "refund": 2}),
    )
    await refused(refund(admin, spent), grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_SPEND")
    await refused(
        refund(admin, spent, 1), grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_SPEND"
    )
    assert await ledger_of(database_dsn, user_id) == (
        7,
        Counter({"admin_add": 2, "spend": 1, "refund": 2}),
    )


async def test_only_a_spend_is_refunded_and_an_unknown_one_is_not_found(
    admin, credit, token, database_dsn
):
    user_id, _ = await user_with(credit, admin, (4, 50))
    history = await credit.ListTransactions(credit_pb.ListTransactionsRequest(user_id=user_id))
    grant_entry = history.transactions[0].id
    before = await ledger_of(database_dsn, user_id)

    await refused(refund(admin, grant_entry), grpc.StatusCode.FAILED_PRECONDITION, "NOT_A_SPEND")
    await refused(refund(admin, 2**62), grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    await refused(refund(admin, 0), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")

    assert await ledger_of(database_dsn, user_id) == before


async def test_a_retried_refund_is_answered_once_and_refunds_once(
    admin, credit, token, database_dsn
):
    user_id, _ = await user_with(credit, admin, (5, 50))
    await vend(admin, token, user_id, 4)
    spent = await spend_id(credit, user_id)
    request_id = new_request_id()

    first = await refund(admin, spent, 2, request_id=request_id)
    again = await refund(admin, spent, 2, request_id=request_id)

    assert again == first
    await refused(
        refund(admin, spent, 1, request_id=request_id),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )
    assert await ledger_of(database_dsn, user_id) == (
        3,
        Counter({"admin_add": 1, "spend": 1, "refund": 1}),
    )


async def test_racing_refunds_of_one_spend_never_give_back_more_than_it_spent(
    admin, credit, token, database_dsn
):
    user_id, grants = await user_with(credit, admin, (3, 10), (4, 20))
    await vend(admin, token, user_id, 5)
    spent = await spend_id(credit, user_id)

    async def attempt() -> bool:
        try:
            await refund(admin, spent, 1)
        except grpc.aio.AioRpcError as error:
            assert error_reason(error)[0] == "REFUND_EXCEEDS_SPEND", error.details()
            return False
        return True

    done = await asyncio.gather(*(attempt() for _ in range(20)))

    assert sum(done) == 5
    assert await remaining(credit, user_id) == dict(zip(grants, (3, 4), strict=True))
    assert await ledger_of(database_dsn, user_id) == (
        7,
        Counter({"admin_add": 2, "spend": 1, "refund": 5}),
    )


async def test_credits_back_in_an_expired_grant_expire_again_at_once(
    admin, credit, token, database_dsn
):
    user_id = new_user_id("refund-expired")
    await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id))
    soon = admin_pb.AddCreditsRequest(user_id=user_id, amount=4, priority=0)
    soon.expire_time.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    expiring = (await admin.AddCredits(soon, metadata=ADMIN_METADATA)).grant_id
    lasting = (
        await admin.AddCredits(
            admin_pb.AddCreditsRequest(user_id=user_id, amount=5), metadata=ADMIN_METADATA
        )
    ).grant_id
    await vend(admin, token, user_id, 3)  # all from the expiring grant, 1 left in it
    spent = await spend_id(credit, user_id)
    await time_passes_for_grants(database_dsn, user_id, 2 * 3600)

    answer = await refund(admin, spent)
    history = await credit.ListTransactions(credit_pb.ListTransactionsRequest(user_id=user_id))

    # Newest first: the refunded credits expiring again, the refund, the earlier expiry.
    assert [(t.type, t.amount, t.balance_after) for t in history.transactions[:3]] == [
        (EXPIRATION, 3, 5),
        (REFUND, 3, 8),
        (EXPIRATION, 1, 5),
    ]
    assert answer.balance_after == 8
    assert (await credit.GetBalance(credit_pb.GetBalanceRequest(user_id=user_id))).balance == 5
    assert await remaining(credit, user_id) == {lasting: 5, expiring: 0}


async def test_refunds_over_http_need_the_admin_secret(http, admin, credit, token, database_dsn):
    user_id, _ = await user_with(credit, admin, (3, 50))
    await vend(admin, token, user_id, 2)
    spent = await spend_id(credit, user_id)

    stranger = await call(http, "POST", "/admin/refunds", json_body={"transactionId": spent})
    answer = await call(
        http,
        "POST",
        "/admin/refunds",
        json_body={"transactionId": spent, "amount": 1},
        headers=ADMIN_HEADERS,
    )
    legacy = await call(http, "GET", f"/user/{user_id}/transactions")

    assert stranger.status == 401
    assert answer.status == 200, answer.body
    assert answer.body["refund"]["type"] == "refund"
    assert answer.body["balanceAfter"] == 2
    assert [row["type"] for row in legacy.body["transactions"]][:2] == ["refund", "spend"]
    assert await ledger_of(database_dsn, user_id) == (
        2,
        Counter({"admin_add": 1, "spend": 1, "refund": 1}),
    )


async def test_a_spend_from_before_grants_is_refunded_to_the_opening_grant(request):
    server_url = external_database_url() or request.getfixturevalue("embedded_postgres").dsn
    async with scratch_database(server_url) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await schema_before(conn, 10)
            # A user as the service before grants left it: 5 in, one spend of 1.
            await conn.execute(
                "INSERT INTO users (user_id, balance, transaction_count, total_spent)"
                " VALUES ('old', 4, 2, 1)"
            )
            await conn.execute(
                "INSERT INTO ledger (user_id, type, amount, balance_after) VALUES"
                " ('old', 'admin_add', 5, 5)"
            )
            spent = await conn.fetchval(
                "INSERT INTO ledger (user_id, type, amount, balance_after, token_id,"
                " token_expires_at) VALUES ('old', 'spend', 1, 4, gen_random_uuid(), now())"
                " RETURNING id"
            )
            database = Database(dsn, max_size=1)
            await database.open()
            try:
                await migrate_all(database)
            finally:
                await database.close()
            outcome = await conn.fetchrow(
                "SELECT * FROM pluct_refund($1, 0, 'Refund', 'tests', NULL, NULL, NULL, NULL)",
                spent,
            )
            grant = await conn.fetchrow(
                "SELECT amount, remaining, source FROM grants WHERE user_id = 'old'"
            )
            balance = await conn.fetchval("SELECT balance FROM users WHERE user_id = 'old'")
        finally:
            await conn.close()

    assert (outcome["outcome"], outcome["balance_after"]) == ("refunded", 5)
    assert tuple(grant) == (5, 5, "opening_balance")
    assert balance == 5
