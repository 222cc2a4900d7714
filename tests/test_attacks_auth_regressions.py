"""Attacks on callers that once succeeded; each test asserts the fix, so they stay fixed."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.token.v1 import token_service_pb2 as token_pb

from pluct_server.security.key_secrets import key_id_of
from tests.http_support import ADMIN_HEADERS, WEBHOOK_HEADERS, call
from tests.support import ADMIN_METADATA, caller_key, error_reason, new_user_id
from tests.test_attacks_auth import (
    Stubs,
    bearer,
    expect_http,
    fake_secret,
    forge,
    funded_user,
    refusal_records,
    world,
)

pytestmark = pytest.mark.usefixtures("database_dsn")


@pytest.fixture
def bare(bare_channel: grpc.aio.Channel) -> Stubs:
    """Stubs that send only the credentials a test adds."""
    return Stubs(bare_channel)


# Times datetime.fromisoformat reads, with an offset that pushes them out of datetime's range
# once converted to UTC (as asyncpg does before sending a timestamptz).
OUT_OF_RANGE_TIMES = {
    "year-1-east-of-utc": "0001-01-01T00:00:00+14:00",
    "year-9999-west-of-utc": "9999-12-31T23:59:59-14:00",
}
TIME_LISTINGS = {"users_by_create_time": "someone", "api_keys": "0123456789abcdef"}


@pytest.mark.parametrize("moment", OUT_OF_RANGE_TIMES.values(), ids=OUT_OF_RANGE_TIMES)
@pytest.mark.parametrize("listing", TIME_LISTINGS)
async def test_a_page_token_with_an_out_of_range_time_is_invalid_argument_not_internal(
    channel, listing, moment
):
    stubs = Stubs(channel)
    page_token = forge({"l": listing, "s": None, "p": [moment, TIME_LISTINGS[listing]]})

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        if listing == "users_by_create_time":
            await stubs.admin.ListUsers(
                admin_pb.ListUsersRequest(page_token=page_token), metadata=ADMIN_METADATA
            )
        else:
            await stubs.admin.ListApiKeys(
                admin_pb.ListApiKeysRequest(page_token=page_token), metadata=ADMIN_METADATA
            )

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert error_reason(raised.value) == ("INVALID_ARGUMENT", {"field": "page_token"})


@pytest.mark.parametrize("moment", OUT_OF_RANGE_TIMES.values(), ids=OUT_OF_RANGE_TIMES)
async def test_an_out_of_range_page_token_over_http_is_400_not_500(http, moment):
    page_token = forge({"l": "users_by_create_time", "s": None, "p": [moment, "someone"]})

    reply = await call(
        http,
        "GET",
        f"/admin/users?order=USER_ORDER_NEWEST_FIRST&page_token={quote(page_token)}",
        headers=ADMIN_HEADERS,
    )

    expect_http(reply, 400, reason="INVALID_ARGUMENT", field="pageToken")


ALIASED_BODIES: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    "create": ("/user/create", {"initialCredits": 5}, {}),
    "vend": ("/vend-token", {}, {}),
    "credit": ("/add-credits", {"amount": 5}, WEBHOOK_HEADERS),
    "grant": ("/admin/credits/add", {"amount": 5}, ADMIN_HEADERS),
}


@pytest.mark.parametrize("route", ALIASED_BODIES)
async def test_a_body_naming_one_field_by_both_its_spellings_is_400_and_changes_nothing(
    http, credit, db, route
):
    # {"userId": A, "user_id": B}: a proxy or WAF that checks userId sees A, the service acts
    # on B. The same smuggling the duplicate-key check stops, by the field's other name.
    path, extra, headers = ALIASED_BODIES[route]
    checked = await funded_user(credit, prefix="checked")
    acted_on = await funded_user(credit, prefix="acted-on")
    before = await world(db, checked, acted_on)

    reply = await call(
        http,
        "POST",
        path,
        json_body={"userId": checked, "user_id": acted_on, **extra}
        if route != "create"
        else {"userId": new_user_id("checked"), "user_id": acted_on + "-new", **extra},
        headers=headers,
    )

    expect_http(reply, 400, reason="INVALID_ARGUMENT")
    assert await world(db, checked, acted_on) == before


async def test_a_refused_key_is_logged_under_the_key_id_it_names(server, bare, credit, caplog):
    caplog.set_level(logging.INFO)
    victim = await funded_user(credit)
    revoked = await caller_key(server, name="revoked-and-still-used")
    await server.api_keys.revoke(str(key_id_of(revoked)))
    live = await caller_key(server, name="tampered-with")
    tampered = live[:-1] + ("A" if live[-1] != "A" else "B")
    made_up = fake_secret()
    vend = "/pluct.token.v1.TokenService/VendToken"

    for secret in (revoked, tampered, made_up):
        caplog.clear()
        with pytest.raises(grpc.aio.AioRpcError):
            await bare.token.VendToken(
                token_pb.VendTokenRequest(user_id=victim), metadata=bearer(secret)
            )
        # An operator must be able to tell which key is being used after revocation (or
        # brute-forced): the key id is public, it is printed in every secret and in ListApiKeys.
        assert refusal_records(caplog) == [
            ("127.0.0.1", vend, key_id_of(secret), "unknown or revoked API key")
        ]
