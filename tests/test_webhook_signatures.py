"""Attacks on the signed payment webhook: forged, stale and replayed signatures credit nothing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc

from pluct_server.app.server import PluctServer
from pluct_server.security import webhooks
from pluct_server.values.settings import Settings
from tests.http_support import ADMIN_HEADERS, Reply, call, http_client
from tests.support import (
    caller_key,
    clock_of,
    ledger_of,
    new_request_id,
    new_user_id,
    running_server,
    settings_for_test,
    time_passes_for_requests,
)

# A provider mid-rotation: both secrets are valid at once.
OLD_SECRET = "old-webhook-secret-" + "Q7w2E9r4T6y1U3i8O5p0"
NEW_SECRET = "new-webhook-secret-" + "a8S3d6F1g9H4j7K2l5Z0"
WRONG_SECRET = "not-the-webhook-secret-" + "x1C4v7B0n3M6q9W2e5R8"
BOTH_SECRETS = f"{OLD_SECRET},{NEW_SECRET}"
SIGNATURE = webhooks.SIGNATURE_HEADER
WINDOW = webhooks.TOLERANCE_SECONDS


def body_of(user_id: str, amount: int, **extra: Any) -> bytes:
    """The raw webhook body, as the provider sends (and signs) it: with an event id of its own."""
    return json.dumps(
        {"userId": user_id, "amount": amount, "eventId": new_event_id(), **extra}
    ).encode()


def new_event_id() -> str:
    """A payment provider's event id no other test uses."""
    return f"evt_{new_request_id()}"


def hand_signature(secret: str, timestamp: int, body: bytes) -> str:
    """Sign the way the provider documents it, without the server's helper."""
    message = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def signed(header: str, **extra: str) -> dict[str, str]:
    """Headers of a signed webhook call."""
    return {SIGNATURE: header, "Content-Type": "application/json", **extra}


async def post_webhook(http: aiohttp.ClientSession, raw: bytes, headers: dict[str, str]) -> Reply:
    """POST /add-credits with exactly these bytes."""
    return await call(http, "POST", "/add-credits", data=raw, headers=headers)


def assert_unauthorized(reply: Reply) -> None:
    """The legacy refusal: 401 {"error": "Unauthorized"}."""
    assert reply.status == 401, (reply.status, reply.body)
    assert reply.body["error"] == "Unauthorized"
    assert reply.body["code"] == 401


def signing_settings(tmp_path: Path) -> Settings:
    """Settings whose WEBHOOK_SECRET lists two secrets, the legacy header still on."""
    return settings_for_test(
        tmp_path,
        webhook_secret=BOTH_SECRETS,
        # Vends forget their request ids after a second here; payments must remember for ever.
        request_id_retention=timedelta(seconds=1),
    )


@pytest.fixture(scope="module")
async def signing_server(
    database_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[PluctServer]:
    """A server of signing_settings, shared by the module (its clock is never moved)."""
    settings = signing_settings(tmp_path_factory.mktemp("signing"))
    async with running_server(settings, database_dsn) as running:
        yield running


@pytest.fixture(scope="module")
async def signed_only_server(
    database_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[PluctServer]:
    """A server with PLUCT_WEBHOOK_LEGACY_SECRET off: only signatures are believed."""
    settings = settings_for_test(
        tmp_path_factory.mktemp("signed-only"),
        webhook_secret=BOTH_SECRETS,
        webhook_legacy_secret=False,
    )
    async with running_server(settings, database_dsn) as running:
        yield running


@pytest.fixture
async def webhook_http(signing_server: PluctServer) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for the two-secret server."""
    async with http_client(signing_server.http_port) as session:
        yield session


# --- 1. A valid signature credits ----------------------------------------------------------------


@pytest.mark.parametrize("secret", [OLD_SECRET, NEW_SECRET], ids=["old-secret", "new-secret"])
async def test_a_valid_signature_with_either_secret_credits(webhook_http, database_dsn, secret):
    user_id = new_user_id("paid")
    raw = body_of(user_id, 7)

    reply = await post_webhook(
        webhook_http, raw, signed(hand_signature(secret, int(time.time()), raw))
    )

    assert reply.status == 200, reply.body
    assert reply.body == {"success": True, "newBalance": 7}
    assert await ledger_of(database_dsn, user_id) == (7, Counter({"add_webhook": 1}))
    another = body_of(user_id, 3)
    again = await post_webhook(
        webhook_http, another, signed(webhooks.sign(another, secret, int(time.time())))
    )
    assert again.body == {"success": True, "newBalance": 10}


async def test_the_edges_of_the_time_window_are_accepted(webhook_http, database_dsn):
    user_id = new_user_id("edge")
    for offset, expected in ((-(WINDOW - 5), 1), (WINDOW - 5, 2)):
        raw = body_of(user_id, 1)
        reply = await post_webhook(
            webhook_http, raw, signed(hand_signature(NEW_SECRET, int(time.time()) + offset, raw))
        )
        assert reply.status == 200, reply.body
        assert reply.body["newBalance"] == expected


# --- 2. Forged, stale and misplaced signatures credit nothing -----------------------------------


def _forgeries(user_id: str) -> dict[str, tuple[bytes, str]]:
    """Each attack: the body sent, and the Pluct-Signature header sent with it."""
    now = int(time.time())
    raw = body_of(user_id, 50)
    good = hand_signature(NEW_SECRET, now, raw)
    digest = good.partition("v1=")[2]
    tampered = raw.replace(b'"amount": 50', b'"amount": 59')
    assert tampered != raw
    cheap = body_of(user_id, 1)
    return {
        "stale": (raw, hand_signature(NEW_SECRET, now - WINDOW - 1, raw)),
        "future": (raw, hand_signature(NEW_SECRET, math.ceil(time.time()) + WINDOW + 1, raw)),
        "milliseconds": (raw, hand_signature(NEW_SECRET, now * 1000, raw)),
        "wrong-secret": (raw, hand_signature(WRONG_SECRET, now, raw)),
        "empty-secret": (raw, hand_signature("", now, raw)),
        "both-secrets-joined": (raw, hand_signature(BOTH_SECRETS, now, raw)),
        "changed-body-byte": (tampered, good),
        "another-body": (body_of(user_id, 10_000), hand_signature(NEW_SECRET, now, cheap)),
        "body-with-trailing-space": (raw + b" ", good),
        "truncated-digest": (raw, f"t={now},v1={digest[:-1]}"),
        "extended-digest": (raw, f"t={now},v1={digest}0"),
        "half-digest": (raw, f"t={now},v1={digest[:32]}"),
        "empty-digest": (raw, f"t={now},v1="),
        "no-v1": (raw, f"t={now}"),
        "no-t": (raw, f"v1={digest}"),
        "other-scheme": (raw, f"t={now},v0={digest}"),
        "moved-timestamp": (raw, f"t={now - 1},v1={digest}"),
        "negative-timestamp": (raw, f"t=-{now},v1={digest}"),
        "two-timestamps": (raw, f"t={now},t={now},v1={digest}"),
        "no-dot-in-message": (
            raw,
            f"t={now},v1="
            + hmac.new(NEW_SECRET.encode(), str(now).encode() + raw, hashlib.sha256).hexdigest(),
        ),
        "sha1": (
            raw,
            f"t={now},v1="
            + hmac.new(NEW_SECRET.encode(), f"{now}.".encode() + raw, hashlib.sha1).hexdigest(),
        ),
        "secret-as-digest": (raw, f"t={now},v1={NEW_SECRET}"),
        "garbage": (raw, "garbage"),
        "empty": (raw, ""),
        "only-commas": (raw, ",,,"),
        "oversized": (
            raw,
            f"t={now}," + ",".join(f"v1={'0' * 64}" for _ in range(20)) + f",v1={digest}",
        ),
    }


FORGERIES = sorted(_forgeries("probe"))


@pytest.mark.parametrize("attack", FORGERIES)
async def test_a_forged_signature_credits_nothing(webhook_http, database_dsn, attack):
    user_id = new_user_id("forged")
    raw, header = _forgeries(user_id)[attack]

    reply = await post_webhook(
        webhook_http, raw, signed(header, **{"Idempotency-Key": new_request_id()})
    )

    assert_unauthorized(reply)
    assert await ledger_of(database_dsn, user_id) == (None, Counter())
    balance = await call(webhook_http, "GET", f"/user/{user_id}/balance")
    assert balance.body["balance"] == 0


async def test_a_forged_signature_does_not_credit_an_existing_user(webhook_http, database_dsn):
    user_id = new_user_id("existing")
    raw = body_of(user_id, 4)
    first = await post_webhook(
        webhook_http, raw, signed(webhooks.sign(raw, OLD_SECRET, int(time.time())))
    )
    assert first.status == 200
    before = await ledger_of(database_dsn, user_id)
    assert before == (4, Counter({"add_webhook": 1}))

    for attack in FORGERIES:
        forged_raw, header = _forgeries(user_id)[attack]  # signed afresh: the clock moves on
        reply = await post_webhook(webhook_http, forged_raw, signed(header))
        assert reply.status == 401, attack

    assert await ledger_of(database_dsn, user_id) == before


# --- 3. Idempotency: one event credits once, for ever --------------------------------------------


async def test_a_signed_body_without_an_event_id_is_refused_and_credits_nothing(
    webhook_http, database_dsn
):
    user_id = new_user_id("no-event")
    raw = json.dumps({"userId": user_id, "amount": 25}).encode()

    # Whatever the unsigned header says: the id that deduplicates a payment must be signed.
    replies = [
        await post_webhook(
            webhook_http, raw, signed(webhooks.sign(raw, NEW_SECRET, int(time.time())), **extra)
        )
        for extra in ({}, {"Idempotency-Key": new_event_id()})
    ]

    for reply in replies:
        assert reply.status == 400, reply.body
        assert reply.body["reason"] == "INVALID_ARGUMENT"
        assert reply.body["field"] == "eventId"
        assert "eventId" in reply.body["error"] and "signed body" in reply.body["error"]
    assert await ledger_of(database_dsn, user_id) == (None, Counter())


async def test_an_idempotency_key_other_than_the_signed_event_id_is_refused(
    webhook_http, database_dsn
):
    user_id = new_user_id("event")
    event = new_event_id()
    raw = body_of(user_id, 25, eventId=event)
    header = webhooks.sign(raw, NEW_SECRET, int(time.time()))

    refused = await post_webhook(webhook_http, raw, signed(header, **{"Idempotency-Key": "evil"}))

    assert refused.status == 400, refused.body
    assert (refused.body["reason"], refused.body["field"]) == ("INVALID_ARGUMENT", "requestId")
    assert "Idempotency-Key" in refused.body["error"]
    assert await ledger_of(database_dsn, user_id) == (None, Counter())
    # The same id in the header as in the body is the same event, and credits.
    paid = await post_webhook(webhook_http, raw, signed(header, **{"Idempotency-Key": event}))
    assert paid.body == {"success": True, "newBalance": 25}
    assert await ledger_of(database_dsn, user_id) == (25, Counter({"add_webhook": 1}))


async def test_one_event_in_the_body_credits_once(webhook_http, database_dsn):
    user_id = new_user_id("event")
    event = new_event_id()
    raw = body_of(user_id, 12, eventId=event)

    replies = [
        await post_webhook(
            webhook_http, raw, signed(webhooks.sign(raw, NEW_SECRET, int(time.time())))
        )
        for _ in range(3)
    ]

    assert [r.body for r in replies] == [{"success": True, "newBalance": 12}] * 3
    assert await ledger_of(database_dsn, user_id) == (12, Counter({"add_webhook": 1}))
    # The same event id in the header as well is the same event, freshly signed or not.
    for secret, offset in ((OLD_SECRET, 0), (NEW_SECRET, 1)):
        same = await post_webhook(
            webhook_http,
            raw,
            signed(
                webhooks.sign(raw, secret, int(time.time()) + offset),
                **{"Idempotency-Key": event},
            ),
        )
        assert same.body == {"success": True, "newBalance": 12}
    other_raw = body_of(user_id, 12)
    other = await post_webhook(
        webhook_http, other_raw, signed(webhooks.sign(other_raw, NEW_SECRET, int(time.time())))
    )
    assert other.body == {"success": True, "newBalance": 24}
    assert await ledger_of(database_dsn, user_id) == (24, Counter({"add_webhook": 2}))


async def test_an_event_with_another_amount_is_refused_not_credited(webhook_http, database_dsn):
    user_id = new_user_id("event")
    event = new_event_id()
    first = body_of(user_id, 5, eventId=event)
    assert (
        await post_webhook(
            webhook_http, first, signed(webhooks.sign(first, NEW_SECRET, int(time.time())))
        )
    ).status == 200
    changed = body_of(user_id, 5000, eventId=event)

    reply = await post_webhook(
        webhook_http, changed, signed(webhooks.sign(changed, NEW_SECRET, int(time.time())))
    )

    assert reply.status == 409
    assert (reply.body["error"], reply.body["reason"]) == (
        "Payment event already used",
        "PAYMENT_EVENT_REUSED",
    )
    assert await ledger_of(database_dsn, user_id) == (5, Counter({"add_webhook": 1}))


@pytest.mark.parametrize("where", ["header-too", "body"])
async def test_twenty_concurrent_deliveries_of_one_event_credit_once(
    webhook_http, database_dsn, where
):
    user_id = new_user_id("storm")
    event = new_event_id()
    raw = body_of(user_id, 9, eventId=event)
    extra = {"Idempotency-Key": event} if where == "header-too" else {}

    replies = await asyncio.gather(
        *(
            post_webhook(
                webhook_http,
                raw,
                signed(
                    webhooks.sign(raw, (OLD_SECRET, NEW_SECRET)[i % 2], int(time.time())), **extra
                ),
            )
            for i in range(20)
        )
    )

    assert {r.status for r in replies} == {200}
    assert {json.dumps(r.body, sort_keys=True) for r in replies} == {
        json.dumps({"newBalance": 9, "success": True}, sort_keys=True)
    }
    assert await ledger_of(database_dsn, user_id) == (9, Counter({"add_webhook": 1}))


# How often the server forgets expired request ids (Maintenance's purge interval).
PURGE_SECONDS = 60


async def remembered_requests(dsn: str, user_id: str) -> int:
    """Return how many request ids the server remembers for `user_id`."""
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM request_keys WHERE user_id = $1", user_id
        )
    finally:
        await conn.close()
    return count


async def test_event_ids_do_not_expire_with_the_request_id_retention(database_dsn, tmp_path):
    # A server of its own, as the test moves its clock.
    async with (
        running_server(signing_settings(tmp_path), database_dsn) as server,
        http_client(server.http_port) as http,
    ):
        user_id = new_user_id("late")
        event = new_event_id()
        raw = body_of(user_id, 30, eventId=event)
        first = await post_webhook(
            http, raw, signed(webhooks.sign(raw, NEW_SECRET, int(time.time())))
        )
        assert first.body == {"success": True, "newBalance": 30}
        # A vend whose request id the retention covers: its going shows that a purge ran.
        vend = await call(
            http,
            "POST",
            "/vend-token",
            json_body={"userId": user_id},
            headers={"Idempotency-Key": new_event_id()},
        )
        assert vend.status == 200, vend.body
        assert await remembered_requests(database_dsn, user_id) == 1

        # Past the retention, and past a purge, which runs when the server's clock says so.
        await time_passes_for_requests(database_dsn, user_id, 2)
        clock_of(server).advance(PURGE_SECONDS)
        deadline = time.monotonic() + 10
        while await remembered_requests(database_dsn, user_id):
            assert time.monotonic() < deadline, "the purge did not run"
            await asyncio.sleep(0.05)
        late = await post_webhook(
            http, raw, signed(webhooks.sign(raw, OLD_SECRET, int(server.clock.time())))
        )

        assert late.body == {"success": True, "newBalance": 30}
        assert await ledger_of(database_dsn, user_id) == (
            29,
            Counter({"add_webhook": 1, "spend": 1}),
        )


# --- 4. The legacy x-webhook-secret switch -------------------------------------------------------


async def test_with_the_legacy_secret_off_only_a_signature_credits(
    signed_only_server, database_dsn
):
    user_id = new_user_id("strict")
    raw = body_of(user_id, 6)
    async with http_client(signed_only_server.http_port) as http:
        for secret in (OLD_SECRET, NEW_SECRET):
            refused = await post_webhook(
                http, raw, {"x-webhook-secret": secret, "Content-Type": "application/json"}
            )
            assert_unauthorized(refused)
        assert_unauthorized(await post_webhook(http, raw, {"Content-Type": "application/json"}))
        assert await ledger_of(database_dsn, user_id) == (None, Counter())

        paid = await post_webhook(
            http, raw, signed(webhooks.sign(raw, OLD_SECRET, int(time.time())))
        )
        assert paid.status == 200
        assert paid.body == {"success": True, "newBalance": 6}
    assert await ledger_of(database_dsn, user_id) == (6, Counter({"add_webhook": 1}))


async def test_with_the_legacy_secret_off_grpc_refuses_the_secret_too(
    signed_only_server, database_dsn
):
    user_id = new_user_id("strict")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{signed_only_server.grpc_port}") as channel:
        credit = credit_service_pb2_grpc.CreditServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await credit.AddCredits(
                credit_pb.AddCreditsRequest(user_id=user_id, amount=6),
                metadata=(("x-webhook-secret", NEW_SECRET),),
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await ledger_of(database_dsn, user_id) == (None, Counter())


@pytest.mark.parametrize("secret", [OLD_SECRET, NEW_SECRET], ids=["old-secret", "new-secret"])
async def test_with_the_legacy_secret_on_the_header_works_as_it_always_did(
    webhook_http, database_dsn, secret
):
    user_id = new_user_id("legacy")

    paid = await call(
        webhook_http,
        "POST",
        "/add-credits",
        json_body={"userId": user_id, "amount": 5},
        headers={"x-webhook-secret": secret},
    )

    assert paid.status == 200
    assert paid.body == {"success": True, "newBalance": 5}
    conn = await asyncpg.connect(database_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT type, amount, reason, actor FROM ledger WHERE user_id = $1", user_id
        )
    finally:
        await conn.close()
    assert dict(row) == {
        "type": "add_webhook",
        "amount": 5,
        "reason": "Payment gateway",
        "actor": "webhook",
    }
    for headers in ({}, {"x-webhook-secret": WRONG_SECRET}, {"x-webhook-secret": BOTH_SECRETS}):
        refused = await call(
            webhook_http,
            "POST",
            "/add-credits",
            json_body={"userId": user_id, "amount": 5},
            headers=headers,
        )
        assert_unauthorized(refused)
    assert await ledger_of(database_dsn, user_id) == (5, Counter({"add_webhook": 1}))


# --- 5. A signature opens no other door ----------------------------------------------------------


async def test_a_valid_signature_grants_nothing_on_other_routes(webhook_http, database_dsn):
    user_id = new_user_id("elsewhere")
    now = int(time.time())

    grant = body_of(user_id, 500)
    admin_grant = await call(
        webhook_http,
        "POST",
        "/admin/credits/add",
        data=grant,
        headers=signed(webhooks.sign(grant, NEW_SECRET, now)),
    )
    assert_unauthorized(admin_grant)

    rich = json.dumps({"userId": user_id, "initialCredits": 5000}).encode()
    signup = await call(
        webhook_http,
        "POST",
        "/user/create",
        data=rich,
        headers=signed(webhooks.sign(rich, NEW_SECRET, now)),
    )
    assert signup.status == 401
    assert signup.body["reason"] == "ADMIN_TOKEN_REQUIRED"

    for path in ("/admin/users", "/admin/transactions"):
        listed = await call(
            webhook_http, "GET", path, headers={SIGNATURE: webhooks.sign(b"", NEW_SECRET, now)}
        )
        assert_unauthorized(listed)

    vend = json.dumps({"userId": user_id}).encode()
    vended = await call(
        webhook_http,
        "POST",
        "/vend-token",
        data=vend,
        headers=signed(webhooks.sign(vend, NEW_SECRET, now)),
    )
    assert vended.status == 403
    assert vended.body["error"] == "Insufficient credits"
    assert await ledger_of(database_dsn, user_id) == (None, Counter())


async def test_forged_shim_metadata_over_grpc_grants_nothing(signing_server, database_dsn):
    user_id = new_user_id("forged-shim")
    key = await caller_key(signing_server, ("tokens:vend",))
    forged = (
        ("x-pluct-gateway", "guessed-gateway-token"),
        ("x-pluct-webhook-signature", "verified"),
        ("x-pluct-client-address", "10.0.0.1"),
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{signing_server.grpc_port}") as channel:
        credit = credit_service_pb2_grpc.CreditServiceStub(channel)
        request = credit_pb.AddCreditsRequest(user_id=user_id, amount=100)
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await credit.AddCredits(request, metadata=forged)
        with pytest.raises(grpc.aio.AioRpcError) as keyed:
            await credit.AddCredits(request, metadata=(*forged, ("authorization", f"Bearer {key}")))
        with pytest.raises(grpc.aio.AioRpcError) as admin:
            await credit.AddCredits(
                request, metadata=(*forged, ("authorization", ADMIN_HEADERS["Authorization"]))
            )

    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert keyed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The admin secret is no payment provider either (an admin grants with AdminService).
    assert admin.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await ledger_of(database_dsn, user_id) == (None, Counter())


async def test_a_signature_header_on_http_cannot_smuggle_shim_metadata(webhook_http, database_dsn):
    user_id = new_user_id("smuggle")
    raw = body_of(user_id, 100)

    reply = await post_webhook(
        webhook_http,
        raw,
        {
            "Content-Type": "application/json",
            "x-pluct-webhook-signature": "verified",
            "x-pluct-gateway": "guessed-gateway-token",
        },
    )

    assert_unauthorized(reply)
    assert await ledger_of(database_dsn, user_id) == (None, Counter())
