"""The legacy HTTP contract, line by line, through real HTTP against the running server."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import jwt
import pytest

from pluct_server.values.settings import Settings, load_settings
from tests.http_support import (
    ADMIN_HEADERS,
    ISO_UTC,
    WEBHOOK_HEADERS,
    Reply,
    call,
    http_client,
)
from tests.support import JWT_SECRET, new_user_id, running_server, settings_for_test

# The contract's endpoint list (GET / must describe exactly these).
CONTRACT_ROUTES = {
    "GET /",
    "GET /health",
    "GET /openapi.json",
    "POST /user/create",
    "GET /user/{userId}/balance",
    "GET /user/{userId}/transactions",
    "POST /validate-token",
    "POST /vend-token",
    "POST /add-credits",
    "GET /admin/users",
    "GET /admin/transactions",
    "POST /admin/credits/add",
}
# Routes added since, which old callers never notice (the contract's last section).
# /metrics is for operators' scrapers (a key with metrics:read); no legacy caller asks for it.
# Prices are AdminService's, under /admin/ with its credentials.
ADDED_ROUTES = {
    "GET /.well-known/jwks.json",
    "GET /metrics",
    "GET /admin/prices",
    "PUT /admin/prices/{feature}",
    "GET /user/{userId}/grants",
    "POST /admin/refunds",
    "GET /admin/users/{userId}/events",
    "POST /admin/webhook-endpoints",
    "GET /admin/webhook-endpoints",
    "DELETE /admin/webhook-endpoints/{endpointId}",
    "POST /admin/webhook-endpoints/{endpointId}/rotate-secret",
}
SERVED_ROUTES = CONTRACT_ROUTES | ADDED_ROUTES


def expect_error(reply: Reply, status: int, message: str | None = None) -> None:
    """The contract's error body: {"error": <message>, "code": <status>}, as JSON."""
    assert reply.status == status, reply.body
    assert isinstance(reply.body, dict)
    assert isinstance(reply.body["error"], str) and reply.body["error"]
    assert reply.body["code"] == status
    if message is not None:
        assert reply.error == message


async def create(http, user_id: str, credits: int = 0, headers=None) -> Reply:
    return await call(
        http,
        "POST",
        "/user/create",
        json_body={"userId": user_id, "initialCredits": credits},
        headers=headers,
    )


async def balance(http, user_id: str) -> int:
    reply = await call(http, "GET", f"/user/{user_id}/balance")
    assert reply.status == 200
    return int(reply.body["balance"])


async def webhook_credit(http, user_id: str, amount: int) -> Reply:
    return await call(
        http,
        "POST",
        "/add-credits",
        json_body={"userId": user_id, "amount": amount},
        headers=WEBHOOK_HEADERS,
    )


async def history(http, user_id: str, query: str = "") -> Reply:
    return await call(http, "GET", f"/user/{user_id}/transactions{query}")


# ---- Everywhere ------------------------------------------------------------------------------


def test_default_listen_port_is_8787():
    assert Settings.http_listen == "127.0.0.1:8787"
    assert load_settings({}).http_listen.endswith(":8787")


async def test_a_busy_http_port_fails_start_with_one_clear_line(server, database_dsn, tmp_path):
    taken = f"127.0.0.1:{server.http_port}"
    with pytest.raises(RuntimeError, match=f"cannot listen for HTTP on {taken}"):
        async with running_server(settings_for_test(tmp_path, http_listen=taken), database_dsn):
            pass


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/", None, 200),
        ("GET", "/health", None, 200),
        ("GET", "/user/someone/balance", None, 200),
        ("POST", "/user/create", b"{", 400),
        ("POST", "/vend-token", b'{"userId": "nobody-at-all"}', 403),
        ("POST", "/add-credits", b"{}", 401),
        ("GET", "/admin/users", None, 401),
        ("GET", "/no/such/path", None, 404),
        ("DELETE", "/health", None, 405),
    ],
)
async def test_every_response_is_json_errors_included(http, method, path, body, status):
    reply = await call(http, method, path, data=body)  # `call` asserts the JSON content type

    assert reply.status == status
    if status >= 400:
        expect_error(reply, status)


async def test_error_body_has_error_and_code_plus_a_reason(http):
    reply = await call(http, "POST", "/vend-token", json_body={"userId": ""})

    expect_error(reply, 400, "Valid user ID is required")
    assert reply.body["reason"] == "INVALID_ARGUMENT"


async def test_numbers_are_json_numbers_and_zero_is_printed(http, user_id):
    reply = await call(http, "GET", f"/user/{user_id}/balance")

    assert reply.body["balance"] == 0
    assert type(reply.body["balance"]) is int
    assert b'"balance":0' in reply.raw


async def test_64_bit_fields_are_numbers_everywhere(http, user_id):
    await create(http, user_id, 5)
    await webhook_credit(http, user_id, 7)

    rows = (await history(http, user_id)).body["transactions"]
    vended = (await call(http, "POST", "/vend-token", json_body={"userId": user_id})).body
    users = (await call(http, "GET", "/admin/users", headers=ADMIN_HEADERS)).body

    assert all(type(row["id"]) is int and type(row["amount"]) is int for row in rows)
    assert type(vended["balanceAfter"]) is int
    mine = next(user for user in users if user["user_id"] == user_id)
    assert all(type(mine[key]) is int for key in mine if key != "user_id")


async def test_timestamps_are_iso_8601_utc_with_z(http, user_id):
    await create(http, user_id, 1)

    assert ISO_UTC.match((await call(http, "GET", f"/user/{user_id}/balance")).body["timestamp"])
    listed = (await history(http, user_id)).body
    assert ISO_UTC.match(listed["timestamp"])
    assert ISO_UTC.match(listed["transactions"][0]["timestamp"])
    vended = (await call(http, "POST", "/vend-token", json_body={"userId": user_id})).body
    assert ISO_UTC.match(vended["expiresAt"])
    assert ISO_UTC.match((await call(http, "GET", "/health")).body["timestamp"])


@pytest.mark.parametrize(
    "body",
    [b"{", b'{"userId": "x",}', b"not json", b'{"userId": NaN}', b"\xff\xfe", b"[" * 50_000],
)
async def test_malformed_json_is_400_not_500(http, body):
    reply = await call(http, "POST", "/user/create", data=body)

    expect_error(reply, 400, "Request body is not valid JSON")


@pytest.mark.parametrize("body", [b"[]", b'"user"', b"42", b"null", b"true"])
async def test_json_that_is_not_an_object_is_400(http, body):
    reply = await call(http, "POST", "/vend-token", data=body)

    expect_error(reply, 400, "Request body must be a JSON object")


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/user/create", {"userId": 42}, "Valid user ID is required"),
        ("/user/create", {"userId": ["a"]}, "Valid user ID is required"),
        (
            "/user/create",
            {"userId": "x", "initialCredits": "5"},
            "initialCredits must be a whole number",
        ),
        (
            "/user/create",
            {"userId": "x", "initialCredits": 1.5},
            "initialCredits must be a whole number",
        ),
        (
            "/user/create",
            {"userId": "x", "initialCredits": True},
            "initialCredits must be a whole number",
        ),
        (
            "/user/create",
            {"userId": "x", "initialCredits": None},
            "initialCredits must be a whole number",
        ),
        ("/vend-token", {"userId": None}, "Valid user ID is required"),
        ("/validate-token", {"token": 5}, "Valid token is required"),
        ("/validate-token", {"token": {"a": 1}}, "Valid token is required"),
    ],
)
async def test_a_field_of_the_wrong_type_is_400_with_a_clear_message(http, path, body, message):
    reply = await call(http, "POST", path, json_body=body)

    expect_error(reply, 400, message)


@pytest.mark.parametrize(
    ("amount", "headers", "path"),
    [("5", WEBHOOK_HEADERS, "/add-credits"), (2.5, ADMIN_HEADERS, "/admin/credits/add")],
)
async def test_amount_of_the_wrong_type_is_400_and_credits_nothing(
    http, user_id, amount, headers, path
):
    reply = await call(
        http, "POST", path, json_body={"userId": user_id, "amount": amount}, headers=headers
    )

    expect_error(reply, 400, "Valid amount between 1 and 10000 is required")
    assert await balance(http, user_id) == 0


@pytest.mark.parametrize(
    "path", ["/nothing", "/user", "/user/x", "/user/x/balance/more", "/v1/health"]
)
async def test_unknown_path_is_404_json(http, path):
    expect_error(await call(http, "GET", path), 404)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/user/create", "POST"),
        ("POST", "/user/x/balance", "GET, HEAD"),
        ("PUT", "/vend-token", "POST"),
        ("DELETE", "/", "GET, HEAD"),
        ("GET", "/add-credits", "POST"),
    ],
)
async def test_wrong_method_is_405_json_with_allow(http, method, path, allow):
    reply = await call(http, method, path)

    expect_error(reply, 405)
    assert reply.headers["Allow"] == allow


async def test_head_is_get_without_a_body(http, user_id):
    async with http.head(f"/user/{user_id}/balance") as response:
        assert response.status == 200
        assert await response.read() == b""


USER_ID_ENDPOINTS = [
    ("POST", "/user/create", {"initialCredits": 1}, {}),
    ("POST", "/vend-token", {}, {}),
    ("POST", "/add-credits", {"amount": 1}, WEBHOOK_HEADERS),
    ("POST", "/admin/credits/add", {"amount": 1}, ADMIN_HEADERS),
    ("GET", "/user/{}/balance", None, {}),
    ("GET", "/user/{}/transactions", None, {}),
]


@pytest.mark.parametrize(("method", "path", "extra", "headers"), USER_ID_ENDPOINTS)
@pytest.mark.parametrize("bad_id", ["", "   ", "\t", "x" * 101, "bad\x01id"])
async def test_user_id_must_be_non_blank_and_at_most_100_characters(
    http, method, path, extra, headers, bad_id
):
    if extra is None:
        reply = await call(http, method, path.format(_path_segment(bad_id)), headers=headers)
    else:
        reply = await call(
            http, method, path, json_body={"userId": bad_id, **extra}, headers=headers
        )

    expect_error(reply, 400, "Valid user ID is required")


@pytest.mark.parametrize(("method", "path", "extra", "headers"), USER_ID_ENDPOINTS)
async def test_user_id_of_100_characters_is_fine_everywhere(http, method, path, extra, headers):
    long_id = (new_user_id() + "x" * 100)[:100]
    if method == "POST" and path == "/vend-token":
        await create(http, long_id, 1)
    if extra is None:
        reply = await call(http, method, path.format(long_id), headers=headers)
    else:
        reply = await call(
            http, method, path, json_body={"userId": long_id, **extra}, headers=headers
        )

    assert reply.status == 200, reply.body


def _path_segment(user_id: str) -> str:
    from urllib.parse import quote

    return quote(user_id, safe="")


# ---- GET / -----------------------------------------------------------------------------------


async def test_root_describes_the_api_one_entry_per_route(http):
    reply = await call(http, "GET", "/")

    assert reply.status == 200
    assert reply.body["message"] == "Pluct Business Engine API"
    assert reply.body["version"] and reply.body["description"]
    assert set(reply.body["endpoints"]) == SERVED_ROUTES
    assert all(isinstance(text, str) and text for text in reply.body["endpoints"].values())
    auth = reply.body["authentication"]
    # A user's grants need the admin secret (or a key) too, though not under /admin/.
    assert set(auth["admin"]["endpoints"]) == {
        r for r in SERVED_ROUTES if " /admin/" in r or r.endswith("/grants")
    }
    assert auth["webhook"]["endpoints"] == ["POST /add-credits"]


# ---- GET /health -----------------------------------------------------------------------------


async def test_health_is_200_healthy_while_the_service_can_serve(http):
    reply = await call(http, "GET", "/health")

    assert reply.status == 200
    assert reply.body["status"] == "healthy"
    assert ISO_UTC.match(reply.body["timestamp"])
    assert reply.body["version"]
    assert set(reply.body["endpoints"]) == SERVED_ROUTES


async def test_health_is_503_unhealthy_while_the_database_is_down(own_postgres, tmp_path):
    async with (
        running_server(settings_for_test(tmp_path), own_postgres.dsn) as server,
        http_client(server.http_port) as http,
    ):
        assert (await call(http, "GET", "/health")).status == 200

        await asyncio.to_thread(own_postgres.stop)

        down = await call(http, "GET", "/health")
        assert down.status == 503
        assert down.body["status"] == "unhealthy"
        outage = await call(http, "GET", "/user/anyone/balance")
        expect_error(outage, 503)
        assert outage.body["reason"] == "DATABASE_UNAVAILABLE"

        await asyncio.to_thread(own_postgres.start)

        assert (await call(http, "GET", "/health")).body["status"] == "healthy"


# ---- POST /user/create -----------------------------------------------------------------------


async def test_create_user_answers_the_legacy_shape(http, user_id):
    reply = await create(http, user_id, 10)

    assert reply.status == 200
    assert reply.body == {
        "success": True,
        "userId": user_id,
        "initialBalance": 10,
        "message": "User created successfully",
    }
    assert list(reply.body) == ["success", "userId", "initialBalance", "message"]


async def test_create_user_initial_credits_default_to_zero(http, user_id):
    reply = await call(http, "POST", "/user/create", json_body={"userId": user_id})

    assert (reply.status, reply.body["initialBalance"]) == (200, 0)
    assert (await history(http, user_id)).body["transactions"] == []


async def test_create_user_without_user_id_is_400(http):
    expect_error(
        await call(http, "POST", "/user/create", json_body={}), 400, "Valid user ID is required"
    )


async def test_create_existing_user_is_409_and_changes_nothing(http, user_id):
    await create(http, user_id, 5)

    reply = await create(http, user_id, 10)

    expect_error(reply, 409, "User already exists")
    assert await balance(http, user_id) == 5


@pytest.mark.parametrize("credits", [5, 10])
async def test_real_callers_initial_credits_work(http, credits):
    user_id = str(uuid.uuid4())  # mobile clients use random UUIDs
    assert (await create(http, user_id, credits)).body["initialBalance"] == credits
    assert (await create(http, user_id, credits)).status == 409


@pytest.mark.parametrize("credits", [-1, -10, 10_001])
async def test_create_user_refuses_credits_outside_0_to_10000(http, user_id, credits):
    expect_error(await create(http, user_id, credits), 400)
    assert (await call(http, "GET", "/admin/users", headers=ADMIN_HEADERS)).status == 200
    assert await balance(http, user_id) == 0


async def test_credits_above_the_signup_allowance_need_the_admin_token(http, user_id):
    refused = await create(http, user_id, 11)

    expect_error(refused, 401)
    assert refused.body["reason"] == "ADMIN_TOKEN_REQUIRED"
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert await balance(http, user_id) == 0

    wrong = await create(http, user_id, 11, headers={"Authorization": "Bearer not-the-secret"})
    expect_error(wrong, 401)

    granted = await create(http, user_id, 500, headers=ADMIN_HEADERS)
    assert (granted.status, granted.body["initialBalance"]) == (200, 500)


async def test_a_non_zero_initial_grant_is_a_user_creation_entry(http, user_id):
    await create(http, user_id, 10)

    [row] = (await history(http, user_id)).body["transactions"]

    assert (row["type"], row["amount"], row["reason"]) == (
        "user_creation",
        10,
        "User account creation",
    )


# ---- GET /user/{userId}/balance --------------------------------------------------------------


async def test_balance_answers_user_id_balance_and_timestamp(http, user_id):
    await create(http, user_id, 7)

    reply = await call(http, "GET", f"/user/{user_id}/balance")

    assert reply.status == 200
    assert set(reply.body) == {"userId", "balance", "timestamp"}
    assert (reply.body["userId"], reply.body["balance"]) == (user_id, 7)


async def test_unknown_user_has_balance_0_not_404(http, user_id):
    reply = await call(http, "GET", f"/user/{user_id}/balance")

    assert (reply.status, reply.body["balance"]) == (200, 0)


async def test_user_ids_in_paths_are_percent_decoded(http):
    user_id = new_user_id() + "-with/slash+plus?and#ü"
    await create(http, user_id, 3)

    reply = await call(http, "GET", f"/user/{_path_segment(user_id)}/balance")

    assert (reply.body["userId"], reply.body["balance"]) == (user_id, 3)


# ---- GET /user/{userId}/transactions ---------------------------------------------------------


async def test_transactions_answer_the_legacy_shape_newest_first(http, user_id):
    await create(http, user_id, 2)
    await webhook_credit(http, user_id, 5)
    await call(http, "POST", "/vend-token", json_body={"userId": user_id})

    reply = await history(http, user_id)

    assert reply.status == 200
    assert list(reply.body) == ["userId", "transactions", "count", "timestamp"]
    assert reply.body["userId"] == user_id
    assert reply.body["count"] == 3
    rows = reply.body["transactions"]
    assert [row["type"] for row in rows] == ["spend", "add_webhook", "user_creation"]
    assert [row["id"] for row in rows] == sorted((row["id"] for row in rows), reverse=True)


async def test_transaction_rows_have_snake_case_keys_and_null_reason(http, user_id):
    await create(http, user_id, 1)
    await call(http, "POST", "/vend-token", json_body={"userId": user_id})

    spend, grant = (await history(http, user_id)).body["transactions"]

    assert list(spend) == ["id", "user_id", "type", "amount", "timestamp", "reason"]
    assert spend["user_id"] == user_id
    assert spend["reason"] is None
    assert b'"reason":null' in (await history(http, user_id)).raw
    assert grant["reason"] == "User account creation"


async def test_a_spend_of_one_credit_is_type_spend_amount_1(http, user_id):
    await create(http, user_id, 1)
    await call(http, "POST", "/vend-token", json_body={"userId": user_id})

    newest = (await history(http, user_id)).body["transactions"][0]

    assert (newest["type"], newest["amount"]) == ("spend", 1)


async def test_unknown_user_has_an_empty_history(http, user_id):
    reply = await history(http, user_id)

    assert (reply.status, reply.body["transactions"], reply.body["count"]) == (200, [], 0)


async def test_limit_defaults_to_50_and_is_capped_at_100(http, user_id):
    await asyncio.gather(*(webhook_credit(http, user_id, 1) for _ in range(105)))

    assert (await history(http, user_id)).body["count"] == 50
    assert (await history(http, user_id, "?limit=3")).body["count"] == 3
    assert (await history(http, user_id, "?limit=100")).body["count"] == 100
    assert (await history(http, user_id, "?limit=1000")).body["count"] == 100
    assert (await history(http, user_id, "?limit=99999999999999999999999")).body["count"] == 100


@pytest.mark.parametrize("limit", ["-1", "0", "abc", "", "1.5", "-0", "1e3", " 5"])
async def test_negative_zero_or_non_numeric_limit_is_400(http, user_id, limit):
    reply = await history(http, user_id, f"?limit={limit}")

    expect_error(reply, 400)
    assert reply.body["field"] == "limit"


# ---- POST /validate-token --------------------------------------------------------------------


@pytest.mark.parametrize("body", [{}, {"token": ""}, {"token": "   "}, {"token": None}])
async def test_validate_without_a_token_is_400(http, body):
    expect_error(
        await call(http, "POST", "/validate-token", json_body=body), 400, "Valid token is required"
    )


async def test_validate_a_good_token(http, user_id):
    await create(http, user_id, 1)
    token = (await call(http, "POST", "/vend-token", json_body={"userId": user_id})).body["token"]

    reply = await call(http, "POST", "/validate-token", json_body={"token": token})

    assert reply.status == 200
    assert set(reply.body) == {"valid", "userId", "expiresAt"}
    assert (reply.body["valid"], reply.body["userId"]) == (True, user_id)
    assert ISO_UTC.match(reply.body["expiresAt"])


async def test_validate_an_expired_token_says_token_expired(http, user_id):
    now = int(time.time())
    expired = jwt.encode({"sub": user_id, "exp": now - 10, "iat": now - 70}, JWT_SECRET, "HS256")

    reply = await call(http, "POST", "/validate-token", json_body={"token": expired})

    assert (reply.status, reply.body) == (200, {"valid": False, "reason": "Token expired"})


def _bad_tokens(user_id: str) -> list[str]:
    exp = int(time.time()) + 60
    good = jwt.encode({"sub": user_id, "exp": exp}, JWT_SECRET, "HS256")
    return [
        jwt.encode({"sub": user_id, "exp": exp}, "some-other-secret-" * 3, "HS256"),  # signature
        "not-a-jwt",  # malformed
        good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB"),  # tampered
        jwt.encode({"sub": user_id, "exp": exp}, JWT_SECRET, "HS512"),  # wrong algorithm
        jwt.encode({"sub": user_id}, JWT_SECRET, "HS256"),  # no exp
        jwt.encode({"sub": user_id, "exp": exp}, "", "none"),  # unsigned
    ]


@pytest.mark.parametrize("which", range(6))
async def test_validate_anything_else_says_invalid_token_signature(http, user_id, which):
    token = _bad_tokens(user_id)[which]

    reply = await call(http, "POST", "/validate-token", json_body={"token": token})

    assert (reply.status, reply.body) == (
        200,
        {"valid": False, "reason": "Invalid token signature"},
    )


# ---- POST /vend-token ------------------------------------------------------------------------


async def test_vend_returns_a_token_and_costs_one_credit(http, user_id):
    await create(http, user_id, 2)

    reply = await call(http, "POST", "/vend-token", json_body={"userId": user_id})

    assert reply.status == 200
    assert isinstance(reply.body["token"], str)
    assert reply.body["balanceAfter"] == 1
    assert ISO_UTC.match(reply.body["expiresAt"])
    assert await balance(http, user_id) == 1


async def test_vended_token_is_hs256_with_sub_jti_exp_60s(http, user_id):
    await create(http, user_id, 2)

    first = (await call(http, "POST", "/vend-token", json_body={"userId": user_id})).body["token"]
    second = (await call(http, "POST", "/vend-token", json_body={"userId": user_id})).body["token"]

    # What the premium service does with the shared secret.
    claims = jwt.decode(first, JWT_SECRET.encode("utf-8"), algorithms=["HS256"])
    assert jwt.get_unverified_header(first)["alg"] == "HS256"
    assert claims["sub"] == user_id
    uuid.UUID(claims["jti"])
    assert claims["exp"] - claims["iat"] == 60
    assert jwt.decode(second, JWT_SECRET, algorithms=["HS256"])["jti"] != claims["jti"]


async def test_vend_without_user_id_is_400(http):
    expect_error(
        await call(http, "POST", "/vend-token", json_body={}), 400, "Valid user ID is required"
    )


async def test_vend_with_no_credits_is_403_insufficient_credits(http, user_id):
    await create(http, user_id, 0)

    expect_error(
        await call(http, "POST", "/vend-token", json_body={"userId": user_id}),
        403,
        "Insufficient credits",
    )


async def test_vend_for_an_unknown_user_is_403_too(http, user_id):
    expect_error(
        await call(http, "POST", "/vend-token", json_body={"userId": user_id}),
        403,
        "Insufficient credits",
    )


async def test_300_concurrent_vends_on_50_credits_issue_exactly_50_tokens(http, user_id):
    await create(http, user_id, 10)
    await webhook_credit(http, user_id, 40)

    replies = await asyncio.gather(
        *(call(http, "POST", "/vend-token", json_body={"userId": user_id}) for _ in range(300))
    )

    statuses = [reply.status for reply in replies]
    assert statuses.count(200) == 50
    assert statuses.count(403) == 250
    tokens = {reply.body["token"] for reply in replies if reply.status == 200}
    assert len(tokens) == 50
    assert await balance(http, user_id) == 0


# ---- POST /add-credits -----------------------------------------------------------------------


async def test_webhook_credit_answers_success_and_new_balance(http, user_id):
    await create(http, user_id, 5)

    reply = await webhook_credit(http, user_id, 5)

    assert (reply.status, reply.body) == (200, {"success": True, "newBalance": 10})


@pytest.mark.parametrize(
    "headers", [{}, {"x-webhook-secret": "wrong"}, {"x-webhook-secret": ""}, ADMIN_HEADERS]
)
async def test_webhook_without_the_secret_is_401_unauthorized(http, user_id, headers):
    reply = await call(
        http, "POST", "/add-credits", json_body={"userId": user_id, "amount": 5}, headers=headers
    )

    expect_error(reply, 401, "Unauthorized")
    assert await balance(http, user_id) == 0


@pytest.mark.parametrize("amount", [0, -1, 10_001, None, "5", 1.5, True])
async def test_webhook_amount_must_be_1_to_10000(http, user_id, amount):
    body = {"userId": user_id} if amount is None else {"userId": user_id, "amount": amount}

    reply = await call(http, "POST", "/add-credits", json_body=body, headers=WEBHOOK_HEADERS)

    expect_error(reply, 400, "Valid amount between 1 and 10000 is required")
    assert await balance(http, user_id) == 0


async def test_webhook_accepts_1_and_10000(http, user_id):
    assert (await webhook_credit(http, user_id, 1)).status == 200
    assert (await webhook_credit(http, user_id, 10_000)).body["newBalance"] == 10_001


async def test_webhook_without_user_id_is_400(http):
    reply = await call(
        http, "POST", "/add-credits", json_body={"amount": 5}, headers=WEBHOOK_HEADERS
    )

    expect_error(reply, 400, "Valid user ID is required")


async def test_webhook_credit_creates_an_unknown_user(http, user_id):
    reply = await webhook_credit(http, user_id, 3)

    assert reply.body["newBalance"] == 3
    assert await balance(http, user_id) == 3


async def test_webhook_credit_is_an_add_webhook_entry_from_payment_gateway(http, user_id):
    await webhook_credit(http, user_id, 4)

    [row] = (await history(http, user_id)).body["transactions"]

    assert (row["type"], row["amount"], row["reason"]) == ("add_webhook", 4, "Payment gateway")


@pytest.fixture
async def server_without_webhook_secret(database_dsn, tmp_path):
    async with running_server(settings_for_test(tmp_path, webhook_secret=""), database_dsn) as srv:
        yield srv


@pytest.mark.parametrize("headers", [{}, {"x-webhook-secret": ""}])
async def test_webhook_refuses_everyone_when_no_secret_is_configured(
    server_without_webhook_secret, user_id, headers
):
    async with http_client(server_without_webhook_secret.http_port) as http:
        reply = await call(
            http,
            "POST",
            "/add-credits",
            json_body={"userId": user_id, "amount": 5},
            headers=headers,
        )

        expect_error(reply, 401, "Unauthorized")
        assert await balance(http, user_id) == 0


# ---- Admin -----------------------------------------------------------------------------------

ADMIN_CALLS = [
    ("GET", "/admin/users", None),
    ("GET", "/admin/transactions", None),
    ("POST", "/admin/credits/add", {"userId": "someone", "amount": 1}),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
async def test_admin_without_header_is_401_with_www_authenticate_bearer(http, method, path, body):
    reply = await call(http, method, path, json_body=body)

    expect_error(reply, 401, "Unauthorized")
    assert reply.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
async def test_admin_with_a_wrong_token_is_401(http, method, path, body):
    reply = await call(
        http, method, path, json_body=body, headers={"Authorization": "Bearer wrong-token"}
    )

    expect_error(reply, 401, "Unauthorized")


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer a b", "token"])
async def test_admin_with_a_malformed_header_is_400(http, method, path, body, header):
    reply = await call(http, method, path, json_body=body, headers={"Authorization": header})

    expect_error(reply, 400)
    assert reply.body["reason"] == "MALFORMED_CREDENTIALS"


@pytest.mark.parametrize("path", ["/admin", "/admin/", "/admin/secret-thing", "/admin/users/x"])
async def test_unknown_admin_paths_are_401_before_404(http, path):
    stranger = await call(http, "GET", path)
    admin = await call(http, "GET", path, headers=ADMIN_HEADERS)

    expect_error(stranger, 401, "Unauthorized")
    expect_error(admin, 404)


async def test_wrong_method_on_admin_path_is_401_for_strangers_405_for_admins(http):
    expect_error(await call(http, "DELETE", "/admin/users"), 401)
    reply = await call(http, "DELETE", "/admin/users", headers=ADMIN_HEADERS)
    expect_error(reply, 405)
    assert reply.headers["Allow"] == "GET, HEAD"


async def test_admin_users_is_a_bare_array_of_legacy_rows(http, user_id):
    await create(http, user_id, 3)
    await call(http, "POST", "/vend-token", json_body={"userId": user_id})

    reply = await call(http, "GET", "/admin/users", headers=ADMIN_HEADERS)

    assert reply.status == 200
    assert isinstance(reply.body, list)
    mine = next(row for row in reply.body if row["user_id"] == user_id)
    assert list(mine) == ["user_id", "transaction_count", "total_spent", "current_credits"]
    assert mine == {
        "user_id": user_id,
        "transaction_count": 2,
        "total_spent": 1,
        "current_credits": 2,
    }


async def test_admin_users_most_recently_active_first(http):
    first, second = new_user_id("first"), new_user_id("second")
    await create(http, first, 1)
    await create(http, second, 1)
    await webhook_credit(http, first, 1)

    rows = (await call(http, "GET", "/admin/users", headers=ADMIN_HEADERS)).body

    order = [row["user_id"] for row in rows]
    assert order.index(first) < order.index(second)


async def test_admin_users_lists_every_user_beyond_one_page(http):
    # More users than one ListUsers page (100 by default), some without a single ledger row.
    made = [new_user_id("many") for _ in range(120)]
    await asyncio.gather(*(create(http, user, 0) for user in made))

    rows = (await call(http, "GET", "/admin/users", headers=ADMIN_HEADERS)).body

    listed = [row["user_id"] for row in rows]
    assert set(made) <= set(listed)
    assert len(listed) == len(set(listed))


async def test_admin_transactions_is_a_bare_array_newest_first_at_most_100(http, user_id):
    await asyncio.gather(*(webhook_credit(http, user_id, 1) for _ in range(101)))

    reply = await call(http, "GET", "/admin/transactions", headers=ADMIN_HEADERS)

    assert reply.status == 200
    assert isinstance(reply.body, list)
    assert len(reply.body) == 100
    ids = [row["id"] for row in reply.body]
    assert ids == sorted(ids, reverse=True)
    assert list(reply.body[0]) == ["id", "user_id", "type", "amount", "timestamp", "reason"]


async def test_admin_credit_answers_success_new_balance_and_message(http, user_id):
    await create(http, user_id, 1)

    reply = await call(
        http,
        "POST",
        "/admin/credits/add",
        json_body={"userId": user_id, "amount": 3, "reason": "goodwill"},
        headers=ADMIN_HEADERS,
    )

    assert reply.status == 200
    assert reply.body == {
        "success": True,
        "newBalance": 4,
        "message": f"Manually added 3 credits to {user_id}",
    }
    [row, _] = (await history(http, user_id)).body["transactions"]
    assert (row["type"], row["amount"], row["reason"]) == ("admin_add", 3, "goodwill")


@pytest.mark.parametrize("reason", [None, "", "   "])
async def test_admin_credit_reason_defaults(http, user_id, reason):
    body = {"userId": user_id, "amount": 2}
    if reason is not None:
        body["reason"] = reason

    await call(http, "POST", "/admin/credits/add", json_body=body, headers=ADMIN_HEADERS)

    [row] = (await history(http, user_id)).body["transactions"]
    assert row["reason"] == "Manual credit addition by admin"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"amount": 1}, "Valid user ID is required"),
        ({"userId": " ", "amount": 1}, "Valid user ID is required"),
        ({"userId": "u", "amount": 0}, "Valid amount between 1 and 10000 is required"),
        ({"userId": "u", "amount": 10_001}, "Valid amount between 1 and 10000 is required"),
        ({"userId": "u", "amount": "3"}, "Valid amount between 1 and 10000 is required"),
        ({"userId": "u"}, "Valid amount between 1 and 10000 is required"),
    ],
)
async def test_admin_credit_validates_like_the_webhook(http, body, message):
    reply = await call(http, "POST", "/admin/credits/add", json_body=body, headers=ADMIN_HEADERS)

    expect_error(reply, 400, message)


async def test_admin_credit_creates_an_unknown_user(http, user_id):
    reply = await call(
        http,
        "POST",
        "/admin/credits/add",
        json_body={"userId": user_id, "amount": 2},
        headers=ADMIN_HEADERS,
    )

    assert reply.body["newBalance"] == 2


# ---- Ledger entry types ----------------------------------------------------------------------


async def test_all_four_entry_types_and_balance_equals_the_ledger(http, user_id):
    await create(http, user_id, 5)
    await webhook_credit(http, user_id, 4)
    await call(
        http,
        "POST",
        "/admin/credits/add",
        json_body={"userId": user_id, "amount": 3},
        headers=ADMIN_HEADERS,
    )
    await call(http, "POST", "/vend-token", json_body={"userId": user_id})

    rows = (await history(http, user_id)).body["transactions"]

    assert {row["type"] for row in rows} == {"user_creation", "add_webhook", "admin_add", "spend"}
    total = sum(-row["amount"] if row["type"] == "spend" else row["amount"] for row in rows)
    assert await balance(http, user_id) == total == 11


# ---- Idempotency-Key -------------------------------------------------------------------------


async def test_idempotency_key_makes_a_webhook_retry_count_once(http, user_id):
    headers = {**WEBHOOK_HEADERS, "Idempotency-Key": uuid.uuid4().hex}
    body = {"userId": user_id, "amount": 25}

    first = await call(http, "POST", "/add-credits", json_body=body, headers=headers)
    again = await call(http, "POST", "/add-credits", json_body=body, headers=headers)

    assert first.body == again.body == {"success": True, "newBalance": 25}
    assert await balance(http, user_id) == 25


async def test_idempotency_key_and_body_request_id_must_agree(http, user_id):
    key = uuid.uuid4().hex
    body = {"userId": user_id, "amount": 5, "requestId": key}

    same = await call(
        http,
        "POST",
        "/add-credits",
        json_body=body,
        headers={**WEBHOOK_HEADERS, "Idempotency-Key": key},
    )
    other = await call(
        http,
        "POST",
        "/add-credits",
        json_body=body,
        headers={**WEBHOOK_HEADERS, "Idempotency-Key": "another"},
    )

    assert same.status == 200
    expect_error(other, 400)
    assert other.body["reason"] == "REQUEST_ID_MISMATCH"
    assert await balance(http, user_id) == 5


async def test_idempotency_key_reused_for_another_request_is_400(http, user_id):
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    await create(http, user_id, 1, headers=headers)

    reply = await create(http, user_id, 2, headers=headers)

    expect_error(reply, 400)
    assert reply.body["reason"] == "REQUEST_ID_REUSED"


async def test_idempotency_key_for_another_user_is_another_request(http, user_id):
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    await create(http, user_id, 1, headers=headers)

    reply = await create(http, user_id + "-other", 2, headers=headers)

    assert (reply.status, reply.body["initialBalance"]) == (200, 2)


async def test_whole_numbers_written_as_floats_are_accepted(http, user_id):
    # Clients whose numbers are doubles send 10 as 10.0; JSON does not tell them apart.
    created = await call(
        http, "POST", "/user/create", json_body={"userId": user_id, "initialCredits": 10.0}
    )
    credited = await call(
        http,
        "POST",
        "/add-credits",
        json_body={"userId": user_id, "amount": 5.0},
        headers=WEBHOOK_HEADERS,
    )

    assert (created.status, created.body["initialBalance"]) == (200, 10)
    assert (credited.status, credited.body["newBalance"]) == (200, 15)


async def test_a_body_with_a_byte_order_mark_is_read(http, user_id):
    body = b"\xef\xbb\xbf" + json.dumps({"userId": user_id, "initialCredits": 1}).encode()

    reply = await call(
        http, "POST", "/user/create", data=body, headers={"Content-Type": "application/json"}
    )

    assert (reply.status, reply.body["initialBalance"]) == (200, 1)


async def test_idempotency_key_makes_a_retried_vend_return_the_same_token(http, user_id):
    await create(http, user_id, 3)
    headers = {"Idempotency-Key": f"vend-{user_id}"}

    first = await call(http, "POST", "/vend-token", json_body={"userId": user_id}, headers=headers)
    again = await call(http, "POST", "/vend-token", json_body={"userId": user_id}, headers=headers)

    assert first.status == again.status == 200
    assert first.body["token"] == again.body["token"]
    assert await balance(http, user_id) == 2
