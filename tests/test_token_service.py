"""TokenService through the generated stubs: vending costs one credit, validation tells why."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid

import grpc
import jwt
import pytest
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import ledger_pb2
from pluct.token.v1 import token_service_pb2 as pb

from tests.support import JWT_SECRET, error_reason, new_request_id

pytestmark = pytest.mark.usefixtures("database_dsn")


async def make_user(credit, user_id: str, credits: int) -> None:
    await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id, initial_credits=credits))


async def balance_of(credit, user_id: str) -> int:
    return int((await credit.GetBalance(credit_pb.GetBalanceRequest(user_id=user_id))).balance)


def legacy_token(payload: dict[str, object], secret: str = JWT_SECRET, alg: str = "HS256") -> str:
    """A token as the legacy engine signed it: no kid header, no iat claim."""
    return jwt.encode(payload, secret, algorithm=alg)


async def test_vend_spends_one_credit_and_returns_a_token_downstream_can_verify(
    credit, token, user_id
):
    await make_user(credit, user_id, 3)

    vended = await token.VendToken(pb.VendTokenRequest(user_id=user_id))

    assert vended.balance_after == 2
    assert await balance_of(credit, user_id) == 2
    # What a premium service does with the shared secret.
    claims = jwt.decode(vended.token, JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == user_id
    assert claims["jti"] == vended.token_id
    uuid.UUID(claims["jti"])
    assert claims["exp"] - claims["iat"] == 60
    assert claims["exp"] == vended.expire_time.seconds
    assert abs(claims["iat"] - time.time()) < 60
    assert jwt.get_unverified_header(vended.token)["kid"]


async def test_vend_records_a_spend_of_one(credit, token, user_id):
    await make_user(credit, user_id, 1)

    await token.VendToken(pb.VendTokenRequest(user_id=user_id))

    history = await credit.ListTransactions(credit_pb.ListTransactionsRequest(user_id=user_id))
    spend = history.transactions[0]
    assert spend.type == ledger_pb2.TRANSACTION_TYPE_SPEND
    assert (spend.amount, spend.balance_after) == (1, 0)


async def test_every_vended_token_is_different(credit, token, user_id):
    await make_user(credit, user_id, 5)

    tokens = {(await token.VendToken(pb.VendTokenRequest(user_id=user_id))).token for _ in range(5)}

    assert len(tokens) == 5


async def test_vend_without_credits_is_failed_precondition(credit, token, user_id):
    await make_user(credit, user_id, 1)
    await token.VendToken(pb.VendTokenRequest(user_id=user_id))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await token.VendToken(pb.VendTokenRequest(user_id=user_id))

    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.details() == "Insufficient credits"
    assert error_reason(raised.value)[0] == "INSUFFICIENT_CREDITS"
    assert await balance_of(credit, user_id) == 0


async def test_vend_for_unknown_user_is_insufficient_credits(credit, token, user_id):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await token.VendToken(pb.VendTokenRequest(user_id=user_id))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("bad_user_id", ["", " ", "x" * 101])
async def test_vend_rejects_bad_user_id(token, bad_user_id):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await token.VendToken(pb.VendTokenRequest(user_id=bad_user_id))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(raised.value) == ("INVALID_ARGUMENT", {"field": "user_id"})


async def test_vend_retry_returns_the_same_token_and_charges_once(credit, token, user_id):
    await make_user(credit, user_id, 5)
    request = pb.VendTokenRequest(user_id=user_id, request_id=new_request_id())

    first = await token.VendToken(request)
    again = await token.VendToken(request)

    assert again == first
    assert await balance_of(credit, user_id) == 4


async def test_vend_retry_after_the_last_credit_still_returns_the_token(credit, token, user_id):
    await make_user(credit, user_id, 1)
    request = pb.VendTokenRequest(user_id=user_id, request_id=new_request_id())

    first = await token.VendToken(request)
    again = await token.VendToken(request)

    assert again.token == first.token
    assert await balance_of(credit, user_id) == 0


async def test_concurrent_retries_of_one_vend_charge_once(credit, token, user_id):
    await make_user(credit, user_id, 10)
    request = pb.VendTokenRequest(user_id=user_id, request_id=new_request_id())

    answers = await asyncio.gather(*(token.VendToken(request) for _ in range(20)))

    assert len({answer.token for answer in answers}) == 1
    assert await balance_of(credit, user_id) == 9


async def test_a_vend_request_id_for_another_user_is_another_request(credit, token, user_id):
    other = user_id + "-other"
    await make_user(credit, user_id, 2)
    await make_user(credit, other, 2)
    request_id = new_request_id()
    mine = await token.VendToken(pb.VendTokenRequest(user_id=user_id, request_id=request_id))

    theirs = await token.VendToken(pb.VendTokenRequest(user_id=other, request_id=request_id))

    # Never the first user's token: the id means another request for another user.
    assert theirs.token != mine.token
    assert jwt.decode(theirs.token, options={"verify_signature": False})["sub"] == other
    assert await balance_of(credit, user_id) == 1
    assert await balance_of(credit, other) == 1


async def test_validate_accepts_a_vended_token(credit, token, user_id):
    await make_user(credit, user_id, 1)
    vended = await token.VendToken(pb.VendTokenRequest(user_id=user_id))

    verdict = await token.ValidateToken(pb.ValidateTokenRequest(token=vended.token))

    assert verdict.valid
    assert verdict.user_id == user_id
    assert verdict.expire_time == vended.expire_time
    assert not verdict.HasField("reason")


async def test_validate_accepts_a_legacy_token_without_kid_or_iat(token):
    legacy = legacy_token({"sub": "legacy-user", "jti": "j1", "exp": int(time.time()) + 60})
    assert "kid" not in jwt.get_unverified_header(legacy)

    verdict = await token.ValidateToken(pb.ValidateTokenRequest(token=legacy))

    assert (verdict.valid, verdict.user_id) == (True, "legacy-user")


async def test_validate_reports_an_expired_token(token):
    expired = legacy_token({"sub": "someone", "jti": "j2", "exp": int(time.time()) - 5})

    verdict = await token.ValidateToken(pb.ValidateTokenRequest(token=expired))

    assert (verdict.valid, verdict.reason) == (False, "Token expired")
    assert not verdict.HasField("user_id")


def _alg_none(payload: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


@pytest.mark.parametrize(
    "bad_token",
    [
        legacy_token({"sub": "a", "exp": int(time.time()) + 3600}, secret="another-secret" * 3),
        legacy_token({"sub": "a", "exp": int(time.time()) + 3600}, alg="HS512"),
        legacy_token({"sub": "a"}),
        legacy_token({"exp": int(time.time()) + 3600}),
        legacy_token({"sub": "a", "exp": int(time.time()) - 10}, secret="another-secret" * 3),
        _alg_none({"sub": "a", "exp": int(time.time()) + 3600}),
        "not-a-jwt",
        "a.b.c",
    ],
    ids=[
        "wrong-secret",
        "wrong-algorithm",
        "no-exp",
        "no-sub",
        "expired-wrong-secret",
        "alg-none",
        "garbage",
        "three-garbage-parts",
    ],
)
async def test_validate_reports_anything_else_as_invalid_signature(token, bad_token):
    verdict = await token.ValidateToken(pb.ValidateTokenRequest(token=bad_token))

    assert (verdict.valid, verdict.reason) == (False, "Invalid token signature")


@pytest.mark.parametrize("bad_token", ["", "   ", "x" * 4097])
async def test_validate_rejects_missing_or_oversized_token(token, bad_token):
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await token.ValidateToken(pb.ValidateTokenRequest(token=bad_token))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(raised.value) == ("INVALID_ARGUMENT", {"field": "token"})


@pytest.mark.parametrize("claim", ["exp", "iat"])
async def test_validate_refuses_a_date_claim_that_is_not_a_number(token, claim):
    payload: dict[str, object] = {"sub": "a", "exp": int(time.time()) + 60}
    payload[claim] = str(int(time.time()) + 60)

    verdict = await token.ValidateToken(pb.ValidateTokenRequest(token=legacy_token(payload)))

    assert (verdict.valid, verdict.reason) == (False, "Invalid token signature")
