"""Callers without a key: each address's request ids are its own, over HTTP and open gRPC."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import grpc
import pytest
from pluct.token.v1 import token_service_pb2 as token_pb
from pluct.token.v1 import token_service_pb2_grpc

from tests.http_support import ADMIN_HEADERS, call, http_client
from tests.support import new_request_id, new_user_id
from tests.test_attacks_limits import (
    grpc_via,
    http_from,
    limited_server,
    new_address,
    new_loopback,
    via,
)

pytestmark = pytest.mark.usefixtures("database_dsn")


async def create_user(http, user_id: str, credits: int) -> None:
    """Make a user with `credits` through the admin route, outside any anonymous scope."""
    reply = await call(
        http,
        "POST",
        "/user/create",
        json_body={"userId": user_id, "initialCredits": credits},
        headers=ADMIN_HEADERS,
    )
    assert reply.status == 200, reply.body


async def account(dsn: str, user_id: str) -> tuple[int | None, list[tuple[Any, ...]]]:
    """The user's balance and every ledger row, to tell that nothing else changed."""
    conn = await asyncpg.connect(dsn)
    try:
        balance = await conn.fetchval("SELECT balance FROM users WHERE user_id = $1", user_id)
        rows = await conn.fetch(
            "SELECT id, type, amount, balance_after, token_id, actor FROM ledger "
            "WHERE user_id = $1 ORDER BY id",
            user_id,
        )
    finally:
        await conn.close()
    return balance, [tuple(row) for row in rows]


async def scopes_of(dsn: str, request_id: str) -> set[str]:
    """The scopes (callers) the request keys under `request_id` were stored in."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT caller FROM request_keys WHERE request_id = $1", request_id)
    finally:
        await conn.close()
    return {row["caller"] for row in rows}


async def vend(http, user_id: str, request_id: str, headers: dict[str, str] | None = None):
    """POST /vend-token for `user_id` under an Idempotency-Key."""
    return await call(
        http,
        "POST",
        "/vend-token",
        json_body={"userId": user_id},
        headers={"Idempotency-Key": request_id, **(headers or {})},
    )


async def test_another_client_address_replaying_an_idempotency_key_gets_none_of_its_token(
    tmp_path, database_dsn
):
    # Real sockets from two addresses, no proxy: what each client's connection says it is.
    first_source, second_source = new_loopback(), new_loopback()
    async with (
        limited_server(tmp_path, database_dsn, trusted_proxies=()) as server,
        http_client(server.http_port) as admin,
        http_from(server.http_port, first_source) as first,
        http_from(server.http_port, second_source) as second,
    ):
        user_id = new_user_id("shared-key")
        await create_user(admin, user_id, 5)
        request_id = new_request_id()
        bought = await vend(first, user_id, request_id)
        assert bought.status == 200, bought.body
        after_first = await account(database_dsn, user_id)

        # The other client sends the same key for the same user, many times over, at once.
        replays = await asyncio.gather(*(vend(second, user_id, request_id) for _ in range(3)))

        assert {reply.status for reply in replays} == {200}
        tokens = {reply.body["tokenId"] for reply in replays}
        assert bought.body["tokenId"] not in tokens
        assert bought.body["token"] not in {reply.body["token"] for reply in replays}
        # Its key is a request of its own: one new token, bought with one credit, once.
        assert len(tokens) == 1
        assert {reply.body["balanceAfter"] for reply in replays} == {3}
        balance, rows = await account(database_dsn, user_id)
        assert (balance, rows[: len(after_first[1])]) == (3, after_first[1])
        assert len(rows) == len(after_first[1]) + 1
        # The first client's retry still finds its own token, and pays nothing more.
        again = await vend(first, user_id, request_id)
        assert (again.body["token"], again.body["balanceAfter"]) == (bought.body["token"], 4)
        assert await account(database_dsn, user_id) == (balance, rows)
        # The ledger names the caller as before; only the request id's scope holds the address.
        assert {row[5] for row in rows if row[1] == "spend"} == {None}
        assert await scopes_of(database_dsn, request_id) == {
            f"public@{first_source}",
            f"public@{second_source}",
        }


async def test_an_ipv6_client_keeps_its_request_ids_across_its_64_and_no_further(
    tmp_path, database_dsn
):
    async with (
        limited_server(tmp_path, database_dsn) as server,
        http_client(server.http_port) as http,
    ):
        user_id = new_user_id("v6")
        await create_user(http, user_id, 5)
        request_id = new_request_id()
        bought = await vend(http, user_id, request_id, via("2001:db8:7:1::10"))
        assert bought.status == 200, bought.body
        before = await account(database_dsn, user_id)

        # A temporary address of the same client (same /64): a retry, answered with the token.
        moved = await vend(http, user_id, request_id, via("2001:db8:7:1:a:b:c:d"))
        assert (moved.status, moved.body["token"]) == (200, bought.body["token"])
        assert await account(database_dsn, user_id) == before
        # The neighbouring /64 is another customer: none of the first one's token.
        other = await vend(http, user_id, request_id, via("2001:db8:7:2::10"))
        assert other.status == 200
        assert other.body["tokenId"] != bought.body["tokenId"]
        assert other.body["balanceAfter"] == 3
        assert await scopes_of(database_dsn, request_id) == {
            "public@2001:db8:7:1::/64",
            "public@2001:db8:7:2::/64",
        }


async def test_another_address_cannot_take_over_an_anonymous_sign_up(tmp_path, database_dsn):
    async with (
        limited_server(tmp_path, database_dsn) as server,
        http_client(server.http_port) as http,
    ):
        user_id = new_user_id("signup")
        request_id = new_request_id()
        body = {"userId": user_id, "initialCredits": 5}
        headers = {"Idempotency-Key": request_id}
        owner, stranger = new_address(), new_address()
        created = await call(
            http, "POST", "/user/create", json_body=body, headers=via(owner, **headers)
        )
        assert created.status == 200, created.body
        before = await account(database_dsn, user_id)

        taken = await call(
            http, "POST", "/user/create", json_body=body, headers=via(stranger, **headers)
        )
        retried = await call(
            http, "POST", "/user/create", json_body=body, headers=via(owner, **headers)
        )

        # To anyone else the user simply exists, as for a sign-up without a key.
        assert (taken.status, taken.body["error"]) == (409, "User already exists")
        assert (retried.status, retried.body["initialBalance"]) == (200, 5)
        assert await account(database_dsn, user_id) == before


async def test_keyless_grpc_callers_in_open_mode_keep_their_request_ids_apart(
    tmp_path, database_dsn
):
    async with (
        limited_server(tmp_path, database_dsn, caller_auth="open") as server,
        http_client(server.http_port) as http,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        tokens = token_service_pb2_grpc.TokenServiceStub(channel)
        user_id = new_user_id("open")
        await create_user(http, user_id, 5)
        request_id = new_request_id()
        first, second = new_address(), new_address()
        request = token_pb.VendTokenRequest(user_id=user_id, request_id=request_id)
        bought = await tokens.VendToken(request, metadata=grpc_via(first))
        before = await account(database_dsn, user_id)

        replayed = await tokens.VendToken(request, metadata=grpc_via(second))
        again = await tokens.VendToken(request, metadata=grpc_via(first))

        assert replayed.token != bought.token and replayed.token_id != bought.token_id
        assert replayed.balance_after == 3
        assert (again.token, again.balance_after) == (bought.token, 4)
        balance, rows = await account(database_dsn, user_id)
        assert (balance, rows[: len(before[1])]) == (3, before[1])
        assert await scopes_of(database_dsn, request_id) == {f"public@{first}", f"public@{second}"}
