"""Attacks on the limits and the signed webhook that once succeeded; each asserts the fix."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import time
from collections import Counter

import grpc
import pytest
from multidict import CIMultiDict
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc

from pluct_server.security import webhooks
from pluct_server.values.settings import Rate
from tests.http_support import HANG_GUARD_SECONDS, call, http_client, raw_connection, read_reply
from tests.support import DefaultKey, caller_key, ledger_of, new_request_id, new_user_id
from tests.test_attacks_limits import (
    HOUR,
    assert_rate_limited,
    assert_too_many,
    create_user,
    grpc_via,
    limited_server,
    new_address,
    outcome,
    statuses,
    users_that_exist,
    via,
)

WEBHOOK_SECRET_A = "finding-webhook-secret-" + "P0o9I8u7Y6t5R4e3W2q1"


# --- Per-address limit: /vend-token requests that never reach the spend are never counted -------


async def test_invalid_vend_requests_count_against_the_per_address_limit(tmp_path, database_dsn):
    async with (
        limited_server(tmp_path, database_dsn, http_ip_rate=Rate(10, HOUR)) as server,
        http_client(server.http_port) as http,
    ):
        flooder = new_address()
        bodies = [{"userId": ""}, {"userId": " "}, {"userId": 5}, {}, {"userId": "a" * 101}]
        replies = await asyncio.gather(
            *(
                call(http, "POST", "/vend-token", json_body=bodies[i % 5], headers=via(flooder))
                for i in range(30)
            )
        )

        # Every other route answers 10 requests an hour from this address, then 429.
        assert statuses(replies) == {400: 10, 429: 20}


async def test_replayed_vends_count_against_the_per_address_limit(tmp_path, database_dsn):
    async with (
        limited_server(tmp_path, database_dsn, http_ip_rate=Rate(10, HOUR)) as server,
        http_client(server.http_port) as http,
    ):
        flooder = new_address()
        user_id = new_user_id("replayed")
        await create_user(http, user_id, 10)
        key = {"Idempotency-Key": new_request_id()}
        bought = await call(
            http, "POST", "/vend-token", json_body={"userId": user_id}, headers=via(flooder, **key)
        )
        assert bought.status == 200
        # The address spends the rest of its allowance; other routes now refuse it.
        for _ in range(9):
            assert (await call(http, "GET", "/", headers=via(flooder))).status == 200
        assert_too_many(await call(http, "GET", f"/user/{user_id}/balance", headers=via(flooder)))

        # Replays are free: each one is two database statements, and none is ever counted.
        replays = await asyncio.gather(
            *(
                call(
                    http,
                    "POST",
                    "/vend-token",
                    json_body={"userId": user_id},
                    headers=via(flooder, **key),
                )
                for _ in range(50)
            )
        )

        assert statuses(replays)[429] == 50, statuses(replays)
        assert await ledger_of(database_dsn, user_id) == (
            9,
            Counter({"user_creation": 1, "spend": 1}),
        )


# --- Per-address limit: only the first X-Forwarded-For header is read ----------------------------


async def test_a_forged_first_forwarded_for_header_does_not_escape_the_limit(
    tmp_path, database_dsn
):
    # A proxy that adds its own X-Forwarded-For line (HAProxy's `option forwardfor` does) after
    # the client's: the client wrote the first line, the trusted proxy the last.
    async with (
        limited_server(tmp_path, database_dsn, http_ip_rate=Rate(10, HOUR)) as server,
        http_client(server.http_port) as http,
    ):
        client = new_address()

        def forwarded() -> CIMultiDict[str]:
            return CIMultiDict([("X-Forwarded-For", new_address()), ("X-Forwarded-For", client)])

        replies = await asyncio.gather(
            *(call(http, "GET", "/user/anyone/balance", headers=forwarded()) for _ in range(30))
        )

        assert statuses(replies) == {200: 10, 429: 20}


async def test_a_forged_first_forwarded_for_header_does_not_escape_the_signup_limit(
    tmp_path, database_dsn
):
    async with (
        limited_server(tmp_path, database_dsn, signup_rate=Rate(3, HOUR)) as server,
        http_client(server.http_port) as http,
    ):
        farmer = new_address()
        user_ids = [new_user_id("farm") for _ in range(10)]
        replies = await asyncio.gather(
            *(
                call(
                    http,
                    "POST",
                    "/user/create",
                    json_body={"userId": user_id, "initialCredits": 10},
                    headers=CIMultiDict(
                        [("X-Forwarded-For", new_address()), ("X-Forwarded-For", farmer)]
                    ),
                )
                for user_id in user_ids
            )
        )

        assert statuses(replies) == {200: 3, 429: 7}
        assert len(await users_that_exist(database_dsn, user_ids)) == 3


# --- Signup limit: CreateUser over gRPC is never counted -----------------------------------------


@pytest.mark.parametrize("caller", ["anonymous-open-mode", "users:create-key"])
async def test_grpc_create_user_counts_keyless_signups_only(tmp_path, database_dsn, caller):
    # Keyless callers get free credits with every user, so they are counted by address; a key
    # holder is accountable (and revocable) and may create users for many people at once.
    open_mode = caller == "anonymous-open-mode"
    async with limited_server(
        tmp_path,
        database_dsn,
        signup_rate=Rate(3, HOUR),
        caller_auth="open" if open_mode else "keys",
    ) as server:
        interceptors = (
            [] if open_mode else [DefaultKey(await caller_key(server, ("users:create",)))]
        )
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{server.grpc_port}", interceptors=interceptors
        ) as channel:
            credit = credit_service_pb2_grpc.CreditServiceStub(channel)
            farmer = new_address()
            user_ids = [new_user_id("grpc-farm") for _ in range(10)]
            results = await asyncio.gather(
                *(
                    outcome(
                        credit.CreateUser(
                            credit_pb.CreateUserRequest(user_id=user_id, initial_credits=10),
                            metadata=grpc_via(farmer),
                        )
                    )
                    for user_id in user_ids
                )
            )

            created = [r for r in results if isinstance(r, credit_pb.CreateUserResponse)]
            allowed = 3 if open_mode else 10
            assert len(created) == allowed, f"{len(created)} users created, {allowed} allowed"
            for error in results:
                if not isinstance(error, credit_pb.CreateUserResponse):
                    assert_rate_limited(error)
            assert len(await users_that_exist(database_dsn, user_ids)) == allowed


# --- Per-address limits and IPv6: every address of one /64 is counted alone ----------------------


async def test_one_ipv6_64_cannot_farm_signups_by_rotating_addresses(tmp_path, database_dsn):
    async with (
        limited_server(tmp_path, database_dsn, signup_rate=Rate(3, HOUR)) as server,
        http_client(server.http_port) as http,
    ):
        # One customer line gets a whole /64; the proxy forwards whichever address it used.
        prefix = ipaddress.ip_network(
            f"2001:db8:{secrets.randbelow(65536):x}:{secrets.randbelow(65536):x}::/64"
        )
        user_ids = [new_user_id("v6-farm") for _ in range(10)]
        replies = await asyncio.gather(
            *(
                call(
                    http,
                    "POST",
                    "/user/create",
                    json_body={"userId": user_id, "initialCredits": 10},
                    headers=via(str(prefix[1 + secrets.randbelow(2**63)])),
                )
                for user_id in user_ids
            )
        )

        assert statuses(replies) == {200: 3, 429: 7}


# --- Signed webhook: a captured call can be replayed within the window ---------------------------


def signed_headers(raw: bytes, **extra: str) -> dict[str, str]:
    """Headers of a call the provider signs now with WEBHOOK_SECRET_A."""
    return signed_headers_at(int(time.time()), raw, **extra)


def signed_headers_at(timestamp: int, raw: bytes, **extra: str) -> dict[str, str]:
    """Headers of a call the provider signed at `timestamp` with WEBHOOK_SECRET_A."""
    header = webhooks.sign(raw, WEBHOOK_SECRET_A, timestamp)
    return {webhooks.SIGNATURE_HEADER: header, "Content-Type": "application/json", **extra}


@pytest.mark.parametrize("replay", ["other-idempotency-key", "no-idempotency-key", "no-event-id"])
async def test_a_captured_signed_webhook_cannot_be_replayed(tmp_path, database_dsn, replay):
    async with (
        limited_server(tmp_path, database_dsn, webhook_secret=WEBHOOK_SECRET_A) as server,
        http_client(server.http_port) as http,
    ):
        user_id = new_user_id("replayed")
        event = f"evt_{new_request_id()}"
        fields = {"userId": user_id, "amount": 1000}
        if replay != "no-event-id":
            fields["eventId"] = event
        raw = json.dumps(fields).encode()
        original = signed_headers(raw, **{"Idempotency-Key": event})
        paid = await call(http, "POST", "/add-credits", data=raw, headers=original)
        if replay == "no-event-id":
            # Nothing signed says which payment this is, so nothing could tell a replay apart.
            assert paid.status == 400 and paid.body["field"] == "eventId"
        else:
            assert paid.body == {"success": True, "newBalance": 1000}

        # An eavesdropper (a log, a proxy, a mirror) resends the very same signed bytes, with
        # the unsigned Idempotency-Key changed or dropped.
        replayed = {k: v for k, v in original.items() if k != "Idempotency-Key"}
        if replay == "other-idempotency-key":
            replayed["Idempotency-Key"] = f"evt_{new_request_id()}"
        answers = [
            await call(http, "POST", "/add-credits", data=raw, headers=replayed) for _ in range(3)
        ]

        if replay == "no-event-id":
            assert {a.status for a in answers} == {400}
            assert await ledger_of(database_dsn, user_id) == (None, Counter())
            return
        expected = 400 if replay == "other-idempotency-key" else 200
        assert {a.status for a in answers} == {expected}
        if expected == 200:
            assert {a.body["newBalance"] for a in answers} == {1000}
        assert await ledger_of(database_dsn, user_id) == (1000, Counter({"add_webhook": 1}))


async def test_a_captured_signed_webhook_sent_first_under_another_id_credits_once(
    tmp_path, database_dsn
):
    async with (
        limited_server(tmp_path, database_dsn, webhook_secret=WEBHOOK_SECRET_A) as server,
        http_client(server.http_port) as http,
    ):
        user_id = new_user_id("front-run")
        event = f"evt_{new_request_id()}"
        raw = json.dumps({"userId": user_id, "amount": 1000, "eventId": event}).encode()
        # Signed a second ago, so that the retry, signed now, carries a signature of its own.
        delivery = signed_headers_at(int(time.time()) - 1, raw, **{"Idempotency-Key": event})

        # Whoever captured the delivery races the provider with it, under an id of their own.
        front_run = await call(
            http,
            "POST",
            "/add-credits",
            data=raw,
            headers={**delivery, "Idempotency-Key": "evil"},
        )
        assert front_run.status == 400, front_run.body
        assert await ledger_of(database_dsn, user_id) == (None, Counter())
        # The provider's delivery, then its retry signed afresh: one payment, one answer.
        first = await call(http, "POST", "/add-credits", data=raw, headers=delivery)
        retry_headers = signed_headers(raw, **{"Idempotency-Key": event})
        assert retry_headers[webhooks.SIGNATURE_HEADER] != delivery[webhooks.SIGNATURE_HEADER]
        retry = await call(http, "POST", "/add-credits", data=raw, headers=retry_headers)

        assert first.body == retry.body == {"success": True, "newBalance": 1000}
        assert await ledger_of(database_dsn, user_id) == (1000, Counter({"add_webhook": 1}))


# --- Signed webhook: a non-ASCII digit in t= is a 500 -------------------------------------------


@pytest.mark.parametrize("digit", ["\u00b2", "\u00b9", "\u2460"], ids=["sup2", "sup1", "circled1"])
async def test_a_signature_timestamp_with_a_unicode_digit_is_401_not_500(
    tmp_path, database_dsn, digit
):
    async with limited_server(tmp_path, database_dsn, auth_failure_rate=Rate(5, HOUR)) as server:
        user_id = new_user_id("unicode")
        raw = json.dumps({"userId": user_id, "amount": 5}).encode()
        header = f"t={digit},v1={'0' * 64}".encode()
        async with raw_connection(server.http_port) as (reader, writer):
            writer.write(
                b"POST /add-credits HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                + b"Pluct-Signature: "
                + header
                + b"\r\n"
                + f"Content-Length: {len(raw)}\r\n\r\n".encode()
                + raw
            )
            reply = await asyncio.wait_for(read_reply(reader), HANG_GUARD_SECONDS)

        assert reply.status == 401, (reply.status, reply.body)
        assert json.loads(reply.body)["error"] == "Unauthorized"
        assert await ledger_of(database_dsn, user_id) == (None, Counter())
