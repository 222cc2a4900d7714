"""Grants: every credit in is a lot of its own, and spends draw from them in one fixed order."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from typing import Any

import asyncpg
import grpc
import pytest
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import grant_pb2, ledger_pb2
from pluct.token.v1 import token_service_pb2 as token_pb

from pluct_server.store.database import Database
from pluct_server.store.migrate import migrate as migrate_all
from tests.http_support import ADMIN_HEADERS, call
from tests.support import (
    ADMIN_METADATA,
    WEBHOOK_METADATA,
    error_reason,
    external_database_url,
    ledger_of,
    new_request_id,
    new_user_id,
    schema_before,
    scratch_database,
)

pytestmark = pytest.mark.usefixtures("database_dsn")

PAID, PROMOTIONAL = grant_pb2.GRANT_CATEGORY_PAID, grant_pb2.GRANT_CATEGORY_PROMOTIONAL


async def user_with(credit: Any, signup: int) -> str:
    user_id = new_user_id("granted")
    await credit.CreateUser(
        credit_pb.CreateUserRequest(user_id=user_id, initial_credits=signup),
        metadata=ADMIN_METADATA,
    )
    return user_id


async def pay(credit: Any, user_id: str, amount: int) -> credit_pb.AddCreditsResponse:
    reply: credit_pb.AddCreditsResponse = await credit.AddCredits(
        credit_pb.AddCreditsRequest(user_id=user_id, amount=amount, event_id=new_request_id()),
        metadata=WEBHOOK_METADATA,
    )
    return reply


async def give(admin: Any, user_id: str, amount: int, **terms: Any) -> admin_pb.AddCreditsResponse:
    reply: admin_pb.AddCreditsResponse = await admin.AddCredits(
        admin_pb.AddCreditsRequest(user_id=user_id, amount=amount, **terms),
        metadata=ADMIN_METADATA,
    )
    return reply


async def grants_of(credit: Any, user_id: str) -> dict[str, grant_pb2.Grant]:
    reply = await credit.ListGrants(credit_pb.ListGrantsRequest(user_id=user_id))
    return {grant.grant_id: grant for grant in reply.grants}


async def set_price(admin: Any, credits: int) -> str:
    feature = f"lot-{secrets.token_hex(6)}"
    await admin.SetPrice(
        admin_pb.SetPriceRequest(feature=feature, credits=credits), metadata=ADMIN_METADATA
    )
    return feature


async def last_spend(credit: Any, user_id: str) -> ledger_pb2.Transaction:
    history = await credit.ListTransactions(credit_pb.ListTransactionsRequest(user_id=user_id))
    spend = history.transactions[0]
    assert spend.type == ledger_pb2.TRANSACTION_TYPE_SPEND
    return spend


def draws(spend: ledger_pb2.Transaction) -> list[tuple[str, int]]:
    return [(draw.grant_id, draw.amount) for draw in spend.grant_draws]


# --- every credit is a grant ----------------------------------------------------------------


async def test_every_credit_in_is_a_grant_on_its_terms(credit, admin):
    user_id = await user_with(credit, 5)
    paid = await pay(credit, user_id, 7)
    given = await give(admin, user_id, 3)
    bought = await give(admin, user_id, 2, category=PAID, priority=10)

    grants = await grants_of(credit, user_id)

    signup = next(g for g in grants.values() if g.source == grant_pb2.GRANT_SOURCE_SIGNUP)
    terms = {
        grant_id: (
            g.category,
            g.priority,
            g.amount,
            g.remaining,
            g.source,
            g.HasField("expire_time"),
        )
        for grant_id, g in grants.items()
    }
    assert terms == {
        signup.grant_id: (PROMOTIONAL, 50, 5, 5, grant_pb2.GRANT_SOURCE_SIGNUP, False),
        paid.grant_id: (PAID, 50, 7, 7, grant_pb2.GRANT_SOURCE_PAYMENT, False),
        given.grant_id: (PROMOTIONAL, 50, 3, 3, grant_pb2.GRANT_SOURCE_ADMIN, False),
        bought.grant_id: (PAID, 10, 2, 2, grant_pb2.GRANT_SOURCE_ADMIN, False),
    }
    # Newest first; the ledger names the grant each credit made, and a paid admin grant is still
    # an admin grant, never a payment.
    assert list(grants) == [bought.grant_id, given.grant_id, paid.grant_id, signup.grant_id]
    history = await credit.ListTransactions(credit_pb.ListTransactionsRequest(user_id=user_id))
    assert [(t.type, t.grant_id) for t in history.transactions] == [
        (ledger_pb2.TRANSACTION_TYPE_ADMIN_ADD, bought.grant_id),
        (ledger_pb2.TRANSACTION_TYPE_ADMIN_ADD, given.grant_id),
        (ledger_pb2.TRANSACTION_TYPE_ADD_WEBHOOK, paid.grant_id),
        (ledger_pb2.TRANSACTION_TYPE_USER_CREATION, signup.grant_id),
    ]


async def test_a_repeated_payment_or_grant_answers_with_the_first_grant(
    credit, admin, database_dsn
):
    user_id = await user_with(credit, 0)
    event = new_request_id()
    payment = credit_pb.AddCreditsRequest(user_id=user_id, amount=4, event_id=event)
    grant = admin_pb.AddCreditsRequest(
        user_id=user_id, amount=2, category=PAID, priority=5, request_id=new_request_id()
    )

    first_payment = await credit.AddCredits(payment, metadata=WEBHOOK_METADATA)
    again_payment = await credit.AddCredits(payment, metadata=WEBHOOK_METADATA)
    first_grant = await admin.AddCredits(grant, metadata=ADMIN_METADATA)
    again_grant = await admin.AddCredits(grant, metadata=ADMIN_METADATA)

    assert again_payment == first_payment and first_payment.grant_id
    assert again_grant == first_grant and first_grant.grant_id
    assert len(await grants_of(credit, user_id)) == 2
    # The same request id on other terms is another request.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await admin.AddCredits(
            admin_pb.AddCreditsRequest(
                user_id=user_id, amount=2, category=PAID, priority=6, request_id=grant.request_id
            ),
            metadata=ADMIN_METADATA,
        )
    assert error_reason(raised.value)[0] == "REQUEST_ID_REUSED"
    assert await ledger_of(database_dsn, user_id) == (
        6,
        Counter({"add_webhook": 1, "admin_add": 1}),
    )


@pytest.mark.parametrize(
    ("terms", "field"),
    [
        ({"priority": -1}, "priority"),
        ({"priority": 101}, "priority"),
        ({"category": 7}, "category"),
    ],
)
async def test_grant_terms_out_of_range_are_refused_and_change_nothing(
    credit, admin, database_dsn, terms, field
):
    user_id = await user_with(credit, 1)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await give(admin, user_id, 5, **terms)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(raised.value)[1]["field"] == field
    assert await ledger_of(database_dsn, user_id) == (1, Counter({"user_creation": 1}))


# --- the draw order -------------------------------------------------------------------------


async def test_spends_draw_by_priority_then_promotional_before_paid_then_oldest(
    credit, admin, token
):
    user_id = await user_with(credit, 2)  # promotional, 50
    paid = (await pay(credit, user_id, 3)).grant_id  # paid, 50
    early = (await give(admin, user_id, 2, priority=10)).grant_id  # promotional, 10
    late = (await give(admin, user_id, 4, category=PAID, priority=90)).grant_id
    signup = next(iter(set(await grants_of(credit, user_id)) - {paid, early, late}))
    feature = await set_price(admin, 3)

    await token.VendToken(token_pb.VendTokenRequest(user_id=user_id, feature=feature))
    first = await last_spend(credit, user_id)
    await token.VendToken(token_pb.VendTokenRequest(user_id=user_id, feature=feature))
    second = await last_spend(credit, user_id)
    await token.VendToken(token_pb.VendTokenRequest(user_id=user_id, feature=feature))
    third = await last_spend(credit, user_id)

    assert draws(first) == [(early, 2), (signup, 1)]
    assert draws(second) == [(signup, 1), (paid, 2)]
    assert draws(third) == [(paid, 1), (late, 2)]
    remaining = {g.grant_id: g.remaining for g in (await grants_of(credit, user_id)).values()}
    assert remaining == {early: 0, signup: 0, paid: 0, late: 2}


async def test_a_spend_too_big_for_the_balance_draws_nothing(credit, admin, token):
    user_id = await user_with(credit, 2)
    await give(admin, user_id, 1, priority=0)
    before = await grants_of(credit, user_id)
    feature = await set_price(admin, 4)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await token.VendToken(token_pb.VendTokenRequest(user_id=user_id, feature=feature))

    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await grants_of(credit, user_id) == before


async def test_concurrent_vends_across_several_grants_sell_exactly_what_they_hold(
    credit, admin, token, database_dsn
):
    user_id = await user_with(credit, 10)
    for amount, priority in ((15, 20), (5, 70), (20, 50)):
        await give(admin, user_id, amount, priority=priority)
    feature = await set_price(admin, 3)

    async def attempt() -> bool:
        try:
            await token.VendToken(token_pb.VendTokenRequest(user_id=user_id, feature=feature))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
            return False
        return True

    sold = sum(await asyncio.gather(*(attempt() for _ in range(200))))

    assert sold == 16
    assert await ledger_of(database_dsn, user_id) == (
        2,
        Counter({"user_creation": 1, "admin_add": 3, "spend": 16}),
    )
    grants = (await grants_of(credit, user_id)).values()
    assert sum(g.remaining for g in grants) == 2
    assert all(0 <= g.remaining <= g.amount for g in grants)
    history = await credit.ListTransactions(
        credit_pb.ListTransactionsRequest(user_id=user_id, page_size=100)
    )
    drawn: Counter[str] = Counter()
    for entry in history.transactions:
        for draw in entry.grant_draws:
            drawn[draw.grant_id] += draw.amount
        if entry.type == ledger_pb2.TRANSACTION_TYPE_SPEND:
            assert sum(d.amount for d in entry.grant_draws) == entry.amount == 3
    assert {g.grant_id: g.amount - g.remaining for g in grants} == {
        g.grant_id: drawn[g.grant_id] for g in grants
    }


# --- listing ----------------------------------------------------------------------------------


async def test_grants_page_newest_first_without_skipping_or_repeating(credit, admin):
    user_id = await user_with(credit, 1)
    for amount in range(1, 6):
        await give(admin, user_id, amount)
    seen: list[str] = []
    token = ""
    while True:
        page = await credit.ListGrants(
            credit_pb.ListGrantsRequest(user_id=user_id, page_size=2, page_token=token)
        )
        seen += [grant.grant_id for grant in page.grants]
        token = page.next_page_token
        if not token:
            break

    assert len(seen) == len(set(seen)) == 6
    assert seen == list(await grants_of(credit, user_id))
    assert (
        await credit.ListGrants(credit_pb.ListGrantsRequest(user_id="nobody-here"))
    ).grants == []


async def test_grants_are_closed_to_keyless_callers(bare_credit, http, credit):
    user_id = await user_with(credit, 3)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await bare_credit.ListGrants(credit_pb.ListGrantsRequest(user_id=user_id))
    stranger = await call(http, "GET", f"/user/{user_id}/grants")
    admin = await call(http, "GET", f"/user/{user_id}/grants", headers=ADMIN_HEADERS)

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stranger.status == 401
    assert admin.status == 200
    assert [g["amount"] for g in admin.body["grants"]] == [3]


# --- the opening balance ----------------------------------------------------------------------


async def test_balances_from_before_grants_become_one_opening_grant_each(request):
    server_url = external_database_url() or request.getfixturevalue("embedded_postgres").dsn
    async with scratch_database(server_url) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await schema_before(conn, 10)
            # As the service before grants wrote them: credits in, and spends of one.
            await conn.execute(
                "INSERT INTO users (user_id, balance, transaction_count, total_spent) VALUES"
                " ('kept', 3, 3, 2), ('spent', 0, 2, 4), ('never', 0, 0, 0)"
            )
            database = Database(dsn, max_size=1)
            await database.open()
            try:
                assert (await migrate_all(database))[0] == 10
            finally:
                await database.close()
            grants = await conn.fetch(
                "SELECT user_id, category, priority, amount, remaining, expire_time, source"
                " FROM grants ORDER BY user_id"
            )
        finally:
            await conn.close()

    assert [tuple(row) for row in grants] == [
        ("kept", "paid", 50, 5, 3, None, "opening_balance"),
        ("spent", "paid", 50, 4, 0, None, "opening_balance"),
    ]


async def test_over_http_a_grant_category_is_given_by_name_only(http, credit, database_dsn):
    user_id = await user_with(credit, 0)
    body = {"userId": user_id, "amount": 2}

    named = await call(
        http,
        "POST",
        "/admin/credits/add",
        json_body={**body, "category": "GRANT_CATEGORY_PAID", "priority": 7},
        headers=ADMIN_HEADERS,
    )
    refused = [
        await call(
            http,
            "POST",
            "/admin/credits/add",
            json_body={**body, "category": value},
            headers=ADMIN_HEADERS,
        )
        for value in (1, False, "PAID")
    ]

    assert named.status == 200, named.body
    assert [reply.status for reply in refused] == [400, 400, 400]
    (grant,) = (await grants_of(credit, user_id)).values()
    assert (grant.category, grant.priority, grant.amount) == (PAID, 7, 2)
    assert await ledger_of(database_dsn, user_id) == (2, Counter({"admin_add": 1}))
