"""Prices per feature: set by admins, charged by VendToken in one spend, carried by the token."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from typing import Any

import grpc
import jwt
import pytest
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import ledger_pb2
from pluct.token.v1 import token_service_pb2 as pb

from tests.http_support import ADMIN_HEADERS, call
from tests.support import (
    ADMIN_METADATA,
    JWT_SECRET,
    clock_of,
    error_reason,
    ledger_of,
    new_request_id,
    new_user_id,
    running_server,
    settings_for_test,
)

pytestmark = pytest.mark.usefixtures("database_dsn")

DEFAULT_CLAIMS = {"sub", "jti", "iat", "exp"}


def new_feature(prefix: str = "export") -> str:
    """A feature name no other test uses."""
    return f"{prefix}-{secrets.token_hex(6)}"


async def set_price(admin: Any, feature: str, credits: int) -> admin_pb.Price:
    reply = await admin.SetPrice(
        admin_pb.SetPriceRequest(feature=feature, credits=credits), metadata=ADMIN_METADATA
    )
    price: admin_pb.Price = reply.price
    return price


async def prices(admin: Any, metadata: Any = ADMIN_METADATA) -> dict[str, admin_pb.Price]:
    reply = await admin.ListPrices(admin_pb.ListPricesRequest(), metadata=metadata)
    return {price.feature: price for price in reply.prices}


async def funded(credit: Any, credits: int) -> str:
    user_id = new_user_id("priced")
    await credit.CreateUser(
        credit_pb.CreateUserRequest(user_id=user_id, initial_credits=credits),
        metadata=ADMIN_METADATA,
    )
    return user_id


async def refused(attempt: Any, code: grpc.StatusCode, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await attempt
    assert raised.value.code() == code, raised.value.details()
    assert error_reason(raised.value)[0] == reason, raised.value.details()
    return raised.value


def claims_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    return decoded


# --- prices ----------------------------------------------------------------------------------


async def test_default_costs_one_credit_from_the_start_and_cannot_be_changed(admin, db):
    default = (await prices(admin))["default"]
    assert (default.credits, default.version) == (1, 1)

    await refused(
        admin.SetPrice(
            admin_pb.SetPriceRequest(feature="default", credits=2), metadata=ADMIN_METADATA
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )

    assert (await prices(admin))["default"] == default
    # The database holds it there too, whatever a statement tries.
    with pytest.raises(Exception, match="check constraint"):
        await db.execute("UPDATE prices SET credits = 2 WHERE feature = 'default'")


async def test_a_price_is_made_then_changed_and_its_version_counts_changes_only(admin):
    feature = new_feature()

    made = await set_price(admin, feature, 5)
    same = await set_price(admin, feature, 5)
    changed = await set_price(admin, feature, 7)

    assert (made.credits, made.version) == (5, 1)
    assert same == made
    assert (changed.credits, changed.version) == (7, 2)
    assert changed.update_time.ToDatetime() >= made.update_time.ToDatetime()
    assert (await prices(admin))[feature] == changed


@pytest.mark.parametrize(
    ("feature", "credits"),
    [
        ("Export", 3),
        ("9lives", 3),
        ("-export", 3),
        ("ex port", 3),
        ("export/all", 3),
        ("a" * 64, 3),
        ("", 3),
        ("export", 0),
        ("export", -1),
        ("export", 10001),
    ],
)
async def test_a_bad_feature_name_or_price_is_refused_and_changes_nothing(admin, feature, credits):
    before = await prices(admin)

    error = await refused(
        admin.SetPrice(
            admin_pb.SetPriceRequest(feature=feature, credits=credits), metadata=ADMIN_METADATA
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )

    assert error_reason(error)[1]["field"] == ("feature" if credits == 3 else "credits")
    assert await prices(admin) == before


async def test_the_longest_feature_name_is_63_characters(admin):
    feature = "f" + secrets.token_hex(31)  # 63 characters
    assert (await set_price(admin, feature, 2)).feature == feature


async def test_prices_need_a_key_or_the_admin_secret(server, bare_admin, admin):
    feature = new_feature()
    await set_price(admin, feature, 4)
    request = admin_pb.SetPriceRequest(feature=feature, credits=9)

    await refused(bare_admin.ListPrices(admin_pb.ListPricesRequest()), *UNAUTHENTICATED)
    await refused(bare_admin.SetPrice(request), *UNAUTHENTICATED)
    # The suite's key reads credits: it may read prices, not set them.
    assert feature in await prices(admin, metadata=())
    await refused(admin.SetPrice(request, metadata=()), *PERMISSION_DENIED)

    assert (await prices(admin))[feature].credits == 4


UNAUTHENTICATED = (grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS")
PERMISSION_DENIED = (grpc.StatusCode.PERMISSION_DENIED, "MISSING_SCOPE")


async def test_every_new_rpc_is_closed_to_keyless_callers_even_in_open_mode(database_dsn, tmp_path):
    from pluct.admin.v1 import admin_service_pb2_grpc
    from pluct.credit.v1 import credit_service_pb2_grpc

    settings = settings_for_test(tmp_path, caller_auth="open")
    async with (
        running_server(settings, database_dsn) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        credit = credit_service_pb2_grpc.CreditServiceStub(channel)
        user_id = await funded(credit, 3)  # open mode: a keyless caller may still sign up
        before = await ledger_of(database_dsn, user_id)

        await refused(admin.ListPrices(admin_pb.ListPricesRequest()), *UNAUTHENTICATED)
        await refused(
            admin.SetPrice(admin_pb.SetPriceRequest(feature=new_feature(), credits=1)),
            *UNAUTHENTICATED,
        )
        await refused(
            credit.ListGrants(credit_pb.ListGrantsRequest(user_id=user_id)), *UNAUTHENTICATED
        )
        await refused(
            admin.RefundSpend(admin_pb.RefundSpendRequest(transaction_id=1)), *UNAUTHENTICATED
        )
        await refused(
            admin.ListEvents(admin_pb.ListEventsRequest(user_id=user_id)), *UNAUTHENTICATED
        )
        endpoint = "https://hooks.example.com/pluct"
        await refused(
            admin.CreateWebhookEndpoint(admin_pb.CreateWebhookEndpointRequest(url=endpoint)),
            *UNAUTHENTICATED,
        )
        await refused(
            admin.ListWebhookEndpoints(admin_pb.ListWebhookEndpointsRequest()), *UNAUTHENTICATED
        )
        await refused(
            admin.DeleteWebhookEndpoint(admin_pb.DeleteWebhookEndpointRequest(endpoint_id="1")),
            *UNAUTHENTICATED,
        )
        await refused(
            admin.RotateWebhookSecret(admin_pb.RotateWebhookSecretRequest(endpoint_id="1")),
            *UNAUTHENTICATED,
        )

        assert await ledger_of(database_dsn, user_id) == before


async def test_prices_over_http(http, admin):
    feature = new_feature("preview")

    made = await call(
        http, "PUT", f"/admin/prices/{feature}", json_body={"credits": 2}, headers=ADMIN_HEADERS
    )
    listed = await call(http, "GET", "/admin/prices", headers=ADMIN_HEADERS)
    stranger = await call(http, "GET", "/admin/prices")

    assert made.status == 200, made.body
    assert made.body["price"]["feature"] == feature
    assert (made.body["price"]["credits"], made.body["price"]["version"]) == (2, 1)
    assert {p["feature"]: p["credits"] for p in listed.body["prices"]}[feature] == 2
    assert stranger.status == 401


# --- vending a feature -------------------------------------------------------------------------


async def test_a_vend_charges_the_price_in_one_entry_and_the_token_says_what_it_bought(
    admin, credit, token, database_dsn
):
    feature = new_feature()
    await set_price(admin, feature, 3)
    user_id = await funded(credit, 10)

    vended = await token.VendToken(pb.VendTokenRequest(user_id=user_id, feature=feature))

    assert (vended.feature, vended.credits_charged, vended.balance_after) == (feature, 3, 7)
    claims = claims_of(vended.token)
    assert (claims["feat"], claims["cost"]) == (feature, 3)
    assert await ledger_of(database_dsn, user_id) == (
        7,
        Counter({"user_creation": 1, "spend": 1}),
    )
    history = await credit.ListTransactions(credit_pb.ListTransactionsRequest(user_id=user_id))
    spend = history.transactions[0]
    assert (spend.type, spend.amount, spend.balance_after) == (
        ledger_pb2.TRANSACTION_TYPE_SPEND,
        3,
        7,
    )


async def test_a_default_token_is_exactly_what_it_always_was(credit, token, http):
    user_id = await funded(credit, 3)

    by_grpc = await token.VendToken(pb.VendTokenRequest(user_id=user_id))
    named = await token.VendToken(pb.VendTokenRequest(user_id=user_id, feature="default"))
    legacy = await call(http, "POST", "/vend-token", json_body={"userId": user_id})

    for vended in (by_grpc, named):
        assert (vended.feature, vended.credits_charged) == ("default", 1)
        assert set(claims_of(vended.token)) == DEFAULT_CLAIMS
    assert legacy.status == 200
    assert set(claims_of(legacy.body["token"])) == DEFAULT_CLAIMS
    assert (legacy.body["balanceAfter"], legacy.body["creditsCharged"]) == (0, 1)


async def test_an_unknown_feature_is_not_found_and_charges_and_claims_nothing(
    admin, credit, token, database_dsn
):
    feature = new_feature("later")
    user_id = await funded(credit, 5)
    request = pb.VendTokenRequest(user_id=user_id, feature=feature, request_id=new_request_id())
    before = await ledger_of(database_dsn, user_id)

    error = await refused(token.VendToken(request), grpc.StatusCode.NOT_FOUND, "FEATURE_NOT_FOUND")

    assert error_reason(error)[1] == {"field": "feature"}
    assert await ledger_of(database_dsn, user_id) == before
    # The request id was not used up: once the feature is priced, the same request buys.
    await set_price(admin, feature, 2)
    assert (await token.VendToken(request)).balance_after == 3


async def test_too_few_credits_for_the_price_is_refused_and_charges_nothing(
    admin, credit, token, database_dsn
):
    feature = new_feature()
    await set_price(admin, feature, 3)
    user_id = await funded(credit, 2)

    await refused(
        token.VendToken(pb.VendTokenRequest(user_id=user_id, feature=feature)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_CREDITS",
    )

    assert await ledger_of(database_dsn, user_id) == (2, Counter({"user_creation": 1}))


async def test_a_retry_gets_the_first_token_and_charge_whatever_the_price_is_now(
    admin, credit, token, database_dsn
):
    feature = new_feature()
    await set_price(admin, feature, 3)
    user_id = await funded(credit, 10)
    request = pb.VendTokenRequest(user_id=user_id, feature=feature, request_id=new_request_id())
    first = await token.VendToken(request)

    await set_price(admin, feature, 5)
    retry = await token.VendToken(request)

    assert retry == first
    assert (retry.credits_charged, claims_of(retry.token)["cost"]) == (3, 3)
    assert await ledger_of(database_dsn, user_id) == (7, Counter({"user_creation": 1, "spend": 1}))
    # A new request pays the new price.
    assert (
        await token.VendToken(pb.VendTokenRequest(user_id=user_id, feature=feature))
    ).credits_charged == 5


async def test_the_same_request_id_for_another_feature_is_a_reused_id(
    admin, credit, token, database_dsn
):
    feature, other = new_feature(), new_feature()
    await set_price(admin, feature, 2)
    await set_price(admin, other, 2)
    user_id = await funded(credit, 10)
    request_id = new_request_id()
    await token.VendToken(
        pb.VendTokenRequest(user_id=user_id, feature=feature, request_id=request_id)
    )
    before = await ledger_of(database_dsn, user_id)

    for reused in (other, "default", ""):
        await refused(
            token.VendToken(
                pb.VendTokenRequest(user_id=user_id, feature=reused, request_id=request_id)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "REQUEST_ID_REUSED",
        )

    assert await ledger_of(database_dsn, user_id) == before


async def test_a_bad_feature_name_in_a_vend_is_invalid_argument(credit, token, database_dsn):
    user_id = await funded(credit, 5)

    for bad in ("Export", "ex port", "x" * 64):
        error = await refused(
            token.VendToken(pb.VendTokenRequest(user_id=user_id, feature=bad)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        assert error_reason(error)[1]["field"] == "feature"

    assert await ledger_of(database_dsn, user_id) == (5, Counter({"user_creation": 1}))


async def test_concurrent_vends_of_a_priced_feature_sell_exactly_what_the_credits_buy(
    admin, credit, token, database_dsn
):
    feature = new_feature("bulk")
    await set_price(admin, feature, 3)
    user_id = await funded(credit, 50)

    async def attempt() -> str:
        try:
            vended = await token.VendToken(pb.VendTokenRequest(user_id=user_id, feature=feature))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
            return "refused"
        return str(vended.token)

    outcomes = await asyncio.gather(*(attempt() for _ in range(200)))

    tokens = [outcome for outcome in outcomes if outcome != "refused"]
    assert len(tokens) == len(set(tokens)) == 16
    assert await ledger_of(database_dsn, user_id) == (
        2,
        Counter({"user_creation": 1, "spend": 16}),
    )


# --- validating a feature ----------------------------------------------------------------------


async def test_validate_checks_the_feature_only_when_asked(admin, credit, token):
    feature = new_feature()
    await set_price(admin, feature, 1)
    user_id = await funded(credit, 2)
    priced = (await token.VendToken(pb.VendTokenRequest(user_id=user_id, feature=feature))).token
    plain = (await token.VendToken(pb.VendTokenRequest(user_id=user_id))).token

    async def verdict(token_text: str, wanted: str = "") -> tuple[bool, str, str]:
        reply = await token.ValidateToken(pb.ValidateTokenRequest(token=token_text, feature=wanted))
        return reply.valid, reply.feature, reply.reason

    assert await verdict(priced) == (True, feature, "")
    assert await verdict(priced, feature) == (True, feature, "")
    assert await verdict(priced, "default") == (False, "", "Token is for another feature")
    assert await verdict(plain) == (True, "default", "")
    assert await verdict(plain, "default") == (True, "default", "")
    assert await verdict(plain, feature) == (False, "", "Token is for another feature")


async def test_validate_reasons_come_in_order_signature_expiry_revocation_feature(
    admin, database_dsn, tmp_path
):
    async with (
        running_server(settings_for_test(tmp_path), database_dsn) as own,
        grpc.aio.insecure_channel(f"127.0.0.1:{own.grpc_port}") as channel,
    ):
        from pluct.admin.v1 import admin_service_pb2_grpc
        from pluct.credit.v1 import credit_service_pb2_grpc
        from pluct.token.v1 import token_service_pb2_grpc

        own_admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        own_credit = credit_service_pb2_grpc.CreditServiceStub(channel)
        own_token = token_service_pb2_grpc.TokenServiceStub(channel)
        feature = new_feature()
        await set_price(own_admin, feature, 1)
        user_id = new_user_id("order")
        await own_credit.CreateUser(
            credit_pb.CreateUserRequest(user_id=user_id, initial_credits=3),
            metadata=ADMIN_METADATA,
        )

        async def vend() -> pb.VendTokenResponse:
            reply: pb.VendTokenResponse = await own_token.VendToken(
                pb.VendTokenRequest(user_id=user_id, feature=feature), metadata=ADMIN_METADATA
            )
            return reply

        async def reason(token_text: str) -> str:
            reply = await own_token.ValidateToken(
                pb.ValidateTokenRequest(token=token_text, feature="default"),
                metadata=ADMIN_METADATA,
            )
            assert not reply.valid
            return str(reply.reason)

        forged, revoked, expiring = await vend(), await vend(), await vend()
        await own_admin.RevokeTokens(
            admin_pb.RevokeTokensRequest(jti=revoked.token_id), metadata=ADMIN_METADATA
        )
        head, body, signature = forged.token.split(".")
        assert await reason(f"{head}.{body}.{signature[::-1]}") == "Invalid token signature"
        assert await reason(revoked.token) == "Token revoked"
        assert await reason(expiring.token) == "Token is for another feature"
        clock_of(own).advance(own.settings.token_ttl.total_seconds())
        assert await reason(expiring.token) == "Token expired"


async def test_the_legacy_validate_answer_keeps_its_shape(credit, token, http):
    user_id = await funded(credit, 1)
    vended = await token.VendToken(pb.VendTokenRequest(user_id=user_id))

    answer = await call(http, "POST", "/validate-token", json_body={"token": vended.token})

    assert set(answer.body) == {"valid", "userId", "expiresAt"}
