"""Size and time limits: big bodies get 413, slow or silent clients cannot hold the shim."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from tests.http_support import (
    ADMIN_HEADERS,
    HANG_GUARD_SECONDS,
    call,
    http_client,
    raw_connection,
    read_reply,
    strict_gateway,
)

LIMIT = 64 * 1024  # the default PLUCT_HTTP_MAX_BODY_BYTES the session server runs with


def padded_body(user_id: str, size: int) -> bytes:
    """A valid create-user body of exactly `size` bytes (the padding key is ignored)."""
    start = json.dumps({"userId": user_id, "pad": ""}).encode()
    body = json.dumps({"userId": user_id, "pad": "x" * (size - len(start))}).encode()
    assert len(body) == size
    return body


async def test_a_body_at_the_limit_is_read(http, user_id):
    reply = await call(http, "POST", "/user/create", data=padded_body(user_id, LIMIT))

    assert reply.status == 200


async def test_a_body_above_the_limit_is_413(http, user_id):
    reply = await call(http, "POST", "/user/create", data=padded_body(user_id, LIMIT + 1))

    assert reply.status == 413
    assert reply.body["code"] == 413
    assert reply.headers.get("Connection", "").lower() == "close"
    assert (await call(http, "GET", f"/user/{user_id}/balance")).body["balance"] == 0


async def test_a_chunked_body_above_the_limit_is_413(http, user_id):
    async def chunks() -> AsyncIterator[bytes]:
        body = padded_body(user_id, LIMIT * 2)
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    reply = await call(http, "POST", "/user/create", data=chunks())

    assert reply.status == 413


async def test_a_declared_length_above_the_limit_is_413_before_any_body(server):
    async with raw_connection(server.http_port) as (reader, writer):
        writer.write(
            b"POST /user/create HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {LIMIT + 1}\r\n\r\n".encode()
        )
        reply = await asyncio.wait_for(read_reply(reader), HANG_GUARD_SECONDS)

    assert reply.status == 413
    assert json.loads(reply.body)["code"] == 413


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/add-credits", b""),
        ("/add-credits", b"x-webhook-secret: wrong\r\n"),
        ("/admin/credits/add", b""),
        ("/admin/credits/add", b"Authorization: Bearer wrong\r\n"),
    ],
)
async def test_the_secret_is_checked_before_the_body_is_read(server, path, headers):
    # The body is announced and never sent: an answer proves nobody waited for it.
    async with raw_connection(server.http_port) as (reader, writer):
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n".encode()
            + headers
            + b"Content-Type: application/json\r\n\r\n"
        )
        reply = await asyncio.wait_for(read_reply(reader), HANG_GUARD_SECONDS)

    assert reply.status == 401
    assert json.loads(reply.body)["error"] == "Unauthorized"


async def test_expect_100_continue_is_answered_after_the_secret_check(server, user_id):
    body = json.dumps({"userId": user_id, "amount": 2}).encode()
    async with raw_connection(server.http_port) as (reader, writer):
        writer.write(
            b"POST /admin/credits/add HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            + f"Authorization: {ADMIN_HEADERS['Authorization']}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG_GUARD_SECONDS)
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(body)
        reply = await asyncio.wait_for(read_reply(reader), HANG_GUARD_SECONDS)

    assert reply.status == 200
    assert json.loads(reply.body)["newBalance"] == 2


async def test_a_client_that_stops_sending_its_body_gets_408_and_others_are_served(server):
    async with (
        strict_gateway(server, body_seconds=0.5) as gateway,
        raw_connection(gateway.port) as (reader, writer),
        http_client(gateway.port) as http,
    ):
        writer.write(
            b"POST /user/create HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b'{"userId'
        )
        await writer.drain()

        assert (await call(http, "GET", "/health")).status == 200  # not held up by the slow one

        reply = await asyncio.wait_for(read_reply(reader), HANG_GUARD_SECONDS)
        assert reply.status == 408
        assert json.loads(reply.body)["code"] == 408
        assert await asyncio.wait_for(reader.read(), HANG_GUARD_SECONDS) == b""  # closed


async def test_a_client_that_never_finishes_its_headers_is_disconnected(server):
    async with (
        strict_gateway(server, idle_seconds=0.5) as gateway,
        raw_connection(gateway.port) as (reader, writer),
        http_client(gateway.port) as http,
    ):
        writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        await writer.drain()

        assert (await call(http, "GET", "/health")).status == 200

        assert await asyncio.wait_for(reader.read(), HANG_GUARD_SECONDS) == b""


async def test_an_idle_connection_is_closed(server):
    async with (
        strict_gateway(server, idle_seconds=0.5) as gateway,
        raw_connection(gateway.port) as (reader, _),
    ):
        assert await asyncio.wait_for(reader.read(), HANG_GUARD_SECONDS) == b""


async def test_the_body_limit_is_the_servers_setting(server):
    async with (
        strict_gateway(server, max_body_bytes=300) as gateway,
        http_client(gateway.port) as http,
    ):
        reply = await call(http, "POST", "/vend-token", data=b" " * 301)

    assert reply.status == 413
    assert server.settings.http_max_body_bytes == LIMIT


@pytest.mark.parametrize(
    "raw_request",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"x" * 9000 + b"\r\n\r\n",
        b"POST /vend-token HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n",
        b"GET /user/\xff/balance HTTP/1.1\r\nHost: t\r\n\r\n",
    ],
    ids=["not-http", "header-too-long", "bad-content-length", "raw-byte-in-path"],
)
async def test_requests_the_http_parser_refuses_get_json_and_no_stack_trace(
    server, raw_request, caplog
):
    async with raw_connection(server.http_port) as (reader, writer):
        writer.write(raw_request)
        await writer.drain()
        reply = await asyncio.wait_for(read_reply(reader), HANG_GUARD_SECONDS)

    assert 400 <= reply.status < 500
    assert reply.headers["content-type"].startswith("application/json")
    body = json.loads(reply.body)
    assert body["code"] == reply.status
    assert body["error"].startswith("Malformed HTTP request")
    assert not [record for record in caplog.records if record.exc_info]
