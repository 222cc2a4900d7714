"""A key makes keys no stronger than itself; only ADMIN_SECRET makes the payment provider's."""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from typing import Any

import grpc
import pytest
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.credit.v1 import credit_service_pb2 as credit_pb

from pluct_server.security.callers import GRANTABLE_SCOPES
from pluct_server.security.key_secrets import key_id_of
from pluct_server.values.callers import ADMIN, PAYMENTS
from tests.support import (
    ADMIN_METADATA,
    caller_key,
    error_reason,
    new_request_id,
    new_user_id,
)

pytestmark = pytest.mark.usefixtures("database_dsn")

SCOPES = sorted(GRANTABLE_SCOPES)
# Every set of scopes a new key could be asked for.
EVERY_REQUEST = [
    list(chosen)
    for size in range(1, len(SCOPES) + 1)
    for chosen in itertools.combinations(SCOPES, size)
]
# The keys below admin: each scope alone, and everything but admin (the payment scope included).
LESSER_KEYS = {scope: (scope,) for scope in SCOPES if scope != ADMIN} | {
    "all-but-admin": tuple(scope for scope in SCOPES if scope != ADMIN)
}


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


async def keys_and_money(db: Any) -> tuple[Any, ...]:
    """What a successful escalation would change: the keys, and any ledger entry or balance."""
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM api_keys), (SELECT max(id) FROM ledger),"
        " (SELECT coalesce(sum(balance), 0) FROM users)"
    )
    return tuple(row)


async def made_by_admin_secret(bare_admin: Any, scopes: list[str]) -> str:
    """Make a key over gRPC with the bootstrap ADMIN_SECRET, as an operator would."""
    created = await bare_admin.CreateApiKey(
        admin_pb.CreateApiKeyRequest(name=unique_name("operator"), scopes=scopes),
        metadata=ADMIN_METADATA,
    )
    return str(created.secret)


async def refused_creation(
    bare_admin: Any, secret: str, scopes: list[str], name: str
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await bare_admin.CreateApiKey(
            admin_pb.CreateApiKeyRequest(name=name, scopes=scopes), metadata=bearer(secret)
        )
    error: grpc.aio.AioRpcError = raised.value
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (scopes, error.details())
    return error


async def test_an_admin_key_cannot_make_a_key_with_the_payment_scope(
    bare_admin, bare_credit, credit, db, caplog
):
    admin_key = await made_by_admin_secret(bare_admin, [ADMIN])
    victim = new_user_id("escalation")
    await credit.CreateUser(credit_pb.CreateUserRequest(user_id=victim, initial_credits=5))
    before, ledger_before = await keys_and_money(db), await ledger_of_user(db, victim)
    name = unique_name("would-be-payments")
    asking_for_payments = [scopes for scopes in EVERY_REQUEST if PAYMENTS in scopes]
    caplog.set_level(logging.WARNING, logger="pluct_server.security.api_keys")

    for scopes in asking_for_payments:
        error = await refused_creation(bare_admin, admin_key, scopes, name)
        assert error.details() == (
            "a key may create keys only with scopes it holds itself; this one lacks 'credits:grant'"
        )
        assert error_reason(error) == ("MISSING_SCOPE", {"scope": PAYMENTS})
    # The payment the would-be key was for: the admin key itself may not post it either.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await bare_credit.AddCredits(
            credit_pb.AddCreditsRequest(user_id=victim, amount=1000, event_id=new_request_id()),
            metadata=bearer(admin_key),
        )
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED

    assert await keys_and_money(db) == before
    assert await ledger_of_user(db, victim) == ledger_before
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE name = $1", name) == 0
    refusals = [r.getMessage() for r in caplog.records if "creation refused" in r.getMessage()]
    assert len(refusals) == len(asking_for_payments)
    assert f"key_id={key_id_of(admin_key)}" in refusals[0]
    assert "scopes=credits:grant" in refusals[0]


async def test_an_admin_key_still_makes_every_key_within_its_own_scopes(bare_admin, db):
    admin_key = await made_by_admin_secret(bare_admin, [ADMIN])
    within = [scope for scope in SCOPES if scope != PAYMENTS]

    created = await bare_admin.CreateApiKey(
        admin_pb.CreateApiKeyRequest(name=unique_name("deputy"), scopes=within),
        metadata=bearer(admin_key),
    )

    assert sorted(created.api_key.scopes) == within
    assert created.api_key.created_by == key_id_of(admin_key)
    # The deputy is bound by the same rule: a chain of keys never reaches the payment scope.
    before = await keys_and_money(db)
    await refused_creation(bare_admin, created.secret, [PAYMENTS], unique_name("deputy-payments"))
    assert await keys_and_money(db) == before


@pytest.mark.parametrize("held", LESSER_KEYS.values(), ids=LESSER_KEYS)
async def test_a_key_below_admin_makes_no_key_at_all(server, bare_admin, db, held):
    lesser = await caller_key(server, held, name=unique_name("lesser"))
    before = await keys_and_money(db)
    name = unique_name("escalation")

    errors = await asyncio.gather(
        *(refused_creation(bare_admin, lesser, scopes, name) for scopes in EVERY_REQUEST)
    )

    assert all(error_reason(error) == ("MISSING_SCOPE", {"scope": ADMIN}) for error in errors)
    assert await keys_and_money(db) == before
    assert await db.fetchval("SELECT count(*) FROM api_keys WHERE name = $1", name) == 0


async def test_admin_secret_makes_the_payment_providers_key_and_it_posts_payments(
    bare_admin, bare_credit, db
):
    provider = await made_by_admin_secret(bare_admin, [PAYMENTS])
    user_id = new_user_id("paying")

    paid = await bare_credit.AddCredits(
        credit_pb.AddCreditsRequest(user_id=user_id, amount=1000, event_id=new_request_id()),
        metadata=bearer(provider),
    )

    assert paid.new_balance == 1000
    assert await ledger_of_user(db, user_id) == [("add_webhook", 1000)]


@pytest.mark.parametrize(
    "holder",
    [[ADMIN, PAYMENTS], SCOPES],
    ids=["admin-and-payments", "every-scope-as-the-dev-key"],
)
async def test_a_key_holding_the_payment_scope_may_pass_it_on(server, bare_admin, holder):
    holder_key = await caller_key(server, holder, name=unique_name("holder"))

    created = await bare_admin.CreateApiKey(
        admin_pb.CreateApiKeyRequest(name=unique_name("provider"), scopes=[PAYMENTS]),
        metadata=bearer(holder_key),
    )

    assert list(created.api_key.scopes) == [PAYMENTS]


async def ledger_of_user(db: Any, user_id: str) -> list[tuple[str, int]]:
    rows = await db.fetch("SELECT type, amount FROM ledger WHERE user_id = $1 ORDER BY id", user_id)
    return [(row["type"], row["amount"]) for row in rows]
