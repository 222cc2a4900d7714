"""The edge under slow and stalled strangers: each address holds only its share, nobody waits.

Every attack here runs against a real server, at a scale its limits are set for, from a
loopback address of its own, while a well-behaved client is served throughout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.admin.v1 import admin_service_pb2_grpc
from pluct.token.v1 import token_service_pb2 as token_pb
from pluct.token.v1 import token_service_pb2_grpc

from chaos.attackers import StallingConnection
from pluct_server.app.server import PluctServer
from tests.http_support import (
    ADMIN_HEADERS,
    HANG_GUARD_SECONDS,
    call,
    http_client,
    read_reply,
    strict_gateway,
)
from tests.support import (
    ADMIN_METADATA,
    ADMIN_SECRET,
    WEBHOOK_SECRET,
    caller_key,
    running_server,
    settings_for_test,
)
from tests.test_attacks_limits import http_from, new_loopback

REPO = Path(__file__).resolve().parent.parent
TRUST_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
JWKS = "/pluct.token.v1.TokenService/GetJwks"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
LIST_USERS = "/pluct.admin.v1.AdminService/ListUsers"
REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
RESOURCE_EXHAUSTED = f"grpc-status {grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}"
DEADLINE_EXCEEDED = f"grpc-status {grpc.StatusCode.DEADLINE_EXCEEDED.value[0]}"
UNAUTHENTICATED = f"grpc-status {grpc.StatusCode.UNAUTHENTICATED.value[0]}"
# Long enough that nothing a test waits for comes from it, unless the test sets it short.
PATIENT_SECONDS = 120.0


@asynccontextmanager
async def edge_server(data_dir: Path, dsn: str, **overrides: Any) -> AsyncIterator[PluctServer]:
    """A server of the test's own with the edge limits it sets (loopback is a trusted proxy)."""
    settings = settings_for_test(
        data_dir,
        **{
            "trusted_proxies": TRUST_LOOPBACK,
            "request_read_timeout_seconds": PATIENT_SECONDS,
            **overrides,
        },
    )
    async with running_server(settings, dsn) as server:
        yield server


@asynccontextmanager
async def stalling(
    server: PluctServer, address: str, *headers: tuple[str, str]
) -> AsyncIterator[StallingConnection]:
    """An HTTP/2 connection whose calls stall, sent on behalf of client `address`."""
    connection = await StallingConnection.connect(
        "127.0.0.1",
        server.grpc_port,
        "127.0.0.1",
        (("x-forwarded-for", address), *headers),
    )
    try:
        await connection.settled()
        yield connection
    finally:
        await connection.close()


async def outcome(call_: Any) -> str:
    """Await a gRPC call; return "OK" or its status code's name."""
    try:
        await call_
    except grpc.aio.AioRpcError as error:
        return str(error.code().name)
    return "OK"


def on_behalf(address: str, *metadata: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    """Metadata of a call the trusted proxy forwards for `address`."""
    return (("x-forwarded-for", address), *metadata)


async def bystander_calls(channel: grpc.aio.Channel, address: str) -> Counter[str]:
    """A keyless Health/Check and GetJwks and an admin's ListUsers, all for `address`."""
    health = health_pb2_grpc.HealthStub(channel)
    tokens = token_service_pb2_grpc.TokenServiceStub(channel)
    admin = admin_service_pb2_grpc.AdminServiceStub(channel)
    seen = await asyncio.gather(
        outcome(health.Check(health_pb2.HealthCheckRequest(), metadata=on_behalf(address))),
        outcome(tokens.GetJwks(token_pb.GetJwksRequest(), metadata=on_behalf(address))),
        outcome(
            admin.ListUsers(
                admin_pb.ListUsersRequest(page_size=1),
                metadata=on_behalf(address, *ADMIN_METADATA),
            )
        ),
    )
    return Counter(seen)


# --- gRPC: calls that never send their message ---------------------------------------------------


async def test_stalled_calls_without_a_key_are_refused_on_their_headers(tmp_path, database_dsn):
    async with (
        edge_server(tmp_path, database_dsn) as server,
        stalling(server, "198.51.100.7") as attacker,
    ):
        calls = attacker.stall(LIST_USERS, 20)

        assert await attacker.wait_until(lambda: not attacker.open, HANG_GUARD_SECONDS)
        assert Counter(attacker.ended[call] for call in calls) == {UNAUTHENTICATED: 20}


async def test_stalled_public_calls_hold_only_their_addresss_share(tmp_path, database_dsn):
    async with (
        edge_server(tmp_path, database_dsn, grpc_max_concurrent_rpcs_per_address=4) as server,
        stalling(server, "198.51.100.8") as attacker,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        calls = attacker.stall(JWKS, 6) + attacker.stall(HEALTH_CHECK, 6)

        # Eight are refused at once; four are held, waiting for messages that never come.
        assert await attacker.wait_until(lambda: len(attacker.open) == 4, HANG_GUARD_SECONDS)
        assert Counter(attacker.ended[call] for call in calls if call in attacker.ended) == {
            RESOURCE_EXHAUSTED: 8
        }
        # Everyone else is served, and so is a caller that proves who it is from that address.
        assert await bystander_calls(channel, "198.51.100.9") == {"OK": 3}
        seen_there = await bystander_calls(channel, "198.51.100.8")
        assert seen_there == {"RESOURCE_EXHAUSTED": 2, "OK": 1}  # the keyless two, the admin
        tokens = token_service_pb2_grpc.TokenServiceStub(channel)
        keyed = on_behalf("198.51.100.8", *ADMIN_METADATA)
        assert await outcome(tokens.GetJwks(token_pb.GetJwksRequest(), metadata=keyed)) == "OK"

        await attacker.close()
        # The share comes back as the held calls end.
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while (seen_there := await bystander_calls(channel, "198.51.100.8")) != {"OK": 3}:
            assert time.monotonic() < deadline, seen_there
            await asyncio.sleep(0.05)


async def test_a_call_whose_message_never_comes_ends_after_the_read_timeout(tmp_path, database_dsn):
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            edge_server(tmp_path, database_dsn, request_read_timeout_seconds=1)
        )
        keyless = await stack.enter_async_context(stalling(server, "198.51.100.10"))
        keyed = await stack.enter_async_context(
            stalling(server, "198.51.100.11", ("authorization", f"Bearer {ADMIN_SECRET}"))
        )
        began = time.monotonic()
        calls = {
            "jwks": (keyless, keyless.stall(JWKS)[0]),
            "health": (keyless, keyless.stall(HEALTH_CHECK)[0]),
            "watch": (keyless, keyless.stall(HEALTH_WATCH)[0]),
            "reflection": (keyless, keyless.stall(REFLECTION)[0]),
            "admin": (keyed, keyed.stall(LIST_USERS)[0]),
        }

        assert await keyless.wait_until(lambda: not keyless.open, HANG_GUARD_SECONDS)
        assert await keyed.wait_until(lambda: not keyed.open, HANG_GUARD_SECONDS)
        waited = time.monotonic() - began
        assert {name: c.ended[call] for name, (c, call) in calls.items()} == dict.fromkeys(
            calls, DEADLINE_EXCEEDED
        )
        assert waited >= 1.0  # not before the timeout


async def test_a_watch_that_sent_its_request_streams_past_the_read_timeout(tmp_path, database_dsn):
    async with (
        edge_server(tmp_path, database_dsn, request_read_timeout_seconds=1) as server,
        stalling(server, "198.51.100.12") as staller,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        first = await asyncio.wait_for(watch.read(), HANG_GUARD_SECONDS)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        stalled = staller.stall(HEALTH_WATCH)[0]

        # A stalled Watch started after it has been ended by the timeout: this one lives on.
        assert await staller.wait_until(lambda: stalled in staller.ended, HANG_GUARD_SECONDS)
        assert staller.ended[stalled] == DEADLINE_EXCEEDED
        assert not watch.done()
        watch.cancel()


async def until(condition: Any, what: str = "") -> None:
    """Poll `condition()` until it holds, within the hang guard."""
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_strangers_and_one_key_each_hold_at_most_half_of_every_call(
    tmp_path, database_dsn, server
):
    other_key = await caller_key(server, scopes=("admin",), name="edge-other")
    async with AsyncExitStack() as stack:
        edge = await stack.enter_async_context(
            edge_server(tmp_path, database_dsn, grpc_max_concurrent_rpcs=4)
        )
        channel = await stack.enter_async_context(
            grpc.aio.insecure_channel(f"127.0.0.1:{edge.grpc_port}")
        )
        tokens = token_service_pb2_grpc.TokenServiceStub(channel)
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        strangers = await stack.enter_async_context(stalling(edge, "198.51.100.13"))
        strangers.stall(JWKS, 2)
        await until(lambda: edge.grpc_calls_in_flight == 2, "two stalled keyless calls")

        # Strangers hold their half: another stranger, from anywhere, is refused ...
        elsewhere = on_behalf("198.51.100.99")
        assert await outcome(tokens.GetJwks(token_pb.GetJwksRequest(), metadata=elsewhere)) == (
            "RESOURCE_EXHAUSTED"
        )
        # ... while a caller with a key is served.
        request = admin_pb.ListUsersRequest(page_size=1)
        assert await outcome(admin.ListUsers(request, metadata=ADMIN_METADATA)) == "OK"

        keyed = await stack.enter_async_context(
            stalling(edge, "198.51.100.14", ("authorization", f"Bearer {ADMIN_SECRET}"))
        )
        keyed.stall(LIST_USERS, 3)
        await until(lambda: edge.grpc_calls_in_flight == 4, "two stalled keyed calls")
        assert Counter(keyed.ended.values()) == {RESOURCE_EXHAUSTED: 1}  # one key: its half

        # Every call is taken: another key is refused, but a probe is still answered.
        by_other_key = (("authorization", f"Bearer {other_key}"),)
        assert await outcome(admin.ListUsers(request, metadata=by_other_key)) == (
            "RESOURCE_EXHAUSTED"
        )
        checked = await health.Check(health_pb2.HealthCheckRequest(), metadata=elsewhere)
        assert checked.status == health_pb2.HealthCheckResponse.SERVING

        await strangers.close()
        await keyed.close()
        await until(lambda: edge.grpc_calls_in_flight == 0, "the stalled calls gone")
        assert await outcome(admin.ListUsers(request, metadata=by_other_key)) == "OK"
        assert await outcome(tokens.GetJwks(token_pb.GetJwksRequest(), metadata=elsewhere)) == (
            "OK"
        )


async def test_a_forged_forwarded_for_does_not_escape_the_share(tmp_path, database_dsn):
    async with edge_server(
        tmp_path, database_dsn, trusted_proxies=(), grpc_max_concurrent_rpcs_per_address=4
    ) as server:
        forged = [
            await StallingConnection.connect(
                "127.0.0.1", server.grpc_port, "127.0.0.1", (("x-forwarded-for", f"203.0.113.{n}"),)
            )
            for n in range(3)
        ]
        try:
            for connection in forged:
                await connection.settled()
                connection.stall(JWKS, 2)
            # Six calls, but one socket address: four are held, two refused.
            await until(lambda: server.grpc_calls_in_flight == 4, "four held")
            await until(lambda: sum(len(c.ended) for c in forged) == 2, "two refused")
            assert Counter(v for c in forged for v in c.ended.values()) == {RESOURCE_EXHAUSTED: 2}
        finally:
            for connection in forged:
                await connection.close()


async def test_ipv6_peers_are_known_by_their_64(tmp_path, database_dsn):
    proxy = (ipaddress.ip_network("::1/128"),)
    async with edge_server(
        tmp_path,
        database_dsn,
        grpc_listen="[::1]:0",
        trusted_proxies=proxy,
        grpc_max_concurrent_rpcs_per_address=2,
    ) as server:
        # The peer is the proxy at ::1 (gRPC writes it "ipv6:%5B::1%5D:port"), so the client
        # is the one it forwards for: three addresses of one /64, which hold one share.
        rotating = [
            await StallingConnection.connect(
                "::1", server.grpc_port, "::1", (("x-forwarded-for", f"2001:db8:1:2::{n}"),)
            )
            for n in range(1, 4)
        ]
        try:
            for connection in rotating:
                await connection.settled()
                connection.stall(JWKS)
            await until(lambda: server.grpc_calls_in_flight == 2, "two held")
            await until(lambda: sum(len(c.ended) for c in rotating) == 1, "one refused")
        finally:
            for connection in rotating:
                await connection.close()
        async with grpc.aio.insecure_channel(f"[::1]:{server.grpc_port}") as channel:
            tokens = token_service_pb2_grpc.TokenServiceStub(channel)
            other = on_behalf("2001:db8:1:3::1")  # another /64
            assert await outcome(tokens.GetJwks(token_pb.GetJwksRequest(), metadata=other)) == (
                "OK"
            )


async def test_a_reflection_conversation_may_pause_past_the_read_timeout(tmp_path, database_dsn):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with (
        edge_server(tmp_path, database_dsn, request_read_timeout_seconds=1) as server,
        stalling(server, "198.51.100.15") as staller,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
    ):
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        conversation = stub.ServerReflectionInfo()
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        await conversation.write(ask)
        first = await asyncio.wait_for(conversation.read(), HANG_GUARD_SECONDS)
        assert first.list_services_response.service
        stalled = staller.stall(REFLECTION)[0]
        # Once a stalled conversation has been ended by the timeout, this one asks again.
        assert await staller.wait_until(lambda: stalled in staller.ended, HANG_GUARD_SECONDS)
        assert staller.ended[stalled] == DEADLINE_EXCEEDED
        await conversation.write(ask)
        again = await asyncio.wait_for(conversation.read(), HANG_GUARD_SECONDS)
        assert again.list_services_response.service == first.list_services_response.service
        await conversation.done_writing()


# --- gRPC: connections ---------------------------------------------------------------------------


async def test_a_grpc_connection_without_calls_is_closed(tmp_path, database_dsn):
    async with (
        edge_server(
            tmp_path,
            database_dsn,
            grpc_max_connection_idle_seconds=1,
            request_read_timeout_seconds=1,
        ) as server,
        stalling(server, "198.51.100.14") as idle,
    ):
        # One that sent the HTTP/2 preface and nothing since, and one that sent nothing at all.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.grpc_port)
        try:
            await asyncio.wait_for(reader.read(), HANG_GUARD_SECONDS)  # all it says, until closed
            assert reader.at_eof()
            assert await idle.wait_until(idle.is_closed, HANG_GUARD_SECONDS)
            assert idle.ended.get(0) == "goaway"
        finally:
            writer.close()


async def test_connections_beyond_a_workers_most_are_refused(tmp_path, database_dsn):
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            edge_server(tmp_path, database_dsn, grpc_max_connections=2)
        )
        first = await stack.enter_async_context(stalling(server, "198.51.100.15"))
        await stack.enter_async_context(stalling(server, "198.51.100.16"))

        third = await StallingConnection.connect("127.0.0.1", server.grpc_port, "127.0.0.1")
        try:
            assert await third.wait_until(third.is_closed, HANG_GUARD_SECONDS)
        finally:
            await third.close()
        await first.close()
        # Once the server has seen one close, a new connection is taken again.
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while True:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                seen = await outcome(health.Check(health_pb2.HealthCheckRequest(), timeout=5))
            if seen == "OK":
                break
            assert seen == "UNAVAILABLE" and time.monotonic() < deadline, seen
            await asyncio.sleep(0.05)


# --- HTTP: slow bodies and many connections ------------------------------------------------------


async def drip(
    port: int, source: str, path: str = "/vend-token", extra: str = ""
) -> tuple[Any, Any]:
    """Open a connection from `source` that sends a request's headers and part of its body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra}"
        "Content-Length: 100\r\n\r\n{".encode()
    )
    await writer.drain()
    return reader, writer


async def test_slow_bodies_hold_only_their_addresss_share(server):
    attacker = new_loopback()
    async with (
        strict_gateway(server, max_requests_per_address=3, body_seconds=PATIENT_SECONDS) as gw,
        http_client(gw.port) as http,
        http_from(gw.port, attacker) as from_attacker,
    ):
        drips = [await drip(gw.port, attacker) for _ in range(6)]
        answers = [asyncio.create_task(read_reply(reader)) for reader, _ in drips]
        try:
            # Three are answered at once; the other three are held, waiting for their bodies.
            await until(lambda: sum(a.done() for a in answers) >= 3, "three refusals")
            refused = [a.result() for a in answers if a.done()]
            assert [a.status for a in refused] == [429] * 3
            assert all(a.headers.get("retry-after") == "1" for a in refused)

            # Everyone else is served; from the attacker's address, health and an admin are.
            assert (await call(http, "GET", "/health")).status == 200
            assert (await call(http, "GET", "/user/someone/balance")).status == 200
            assert (await call(from_attacker, "GET", "/health")).status == 200
            admin = await call(from_attacker, "GET", "/admin/users", headers=ADMIN_HEADERS)
            assert admin.status == 200
            assert (await call(from_attacker, "GET", "/user/someone/balance")).status == 429
            assert sum(a.done() for a in answers) == 3  # the held three are held still
        finally:
            for answer in answers:
                answer.cancel()
            for _, writer in drips:
                writer.close()
        # The held requests end with their connections, and the share is the address's again.
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while (await call(from_attacker, "GET", "/user/someone/balance")).status != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)


async def test_the_read_timeout_is_the_servers_setting(tmp_path, database_dsn):
    async with (
        edge_server(tmp_path, database_dsn, request_read_timeout_seconds=1) as server,
    ):
        reader, writer = await drip(server.http_port, "127.0.0.1")
        try:
            began = time.monotonic()
            reply = await asyncio.wait_for(read_reply(reader), HANG_GUARD_SECONDS)
        finally:
            writer.close()

    assert reply.status == 408
    assert time.monotonic() - began >= 1.0


async def test_connections_beyond_an_addresss_share_are_closed_at_once(server):
    attacker = new_loopback()
    async with (
        strict_gateway(server, max_connections_per_address=3) as gateway,
        http_client(gateway.port) as http,
    ):
        held = [
            await asyncio.open_connection("127.0.0.1", gateway.port, local_addr=(attacker, 0))
            for _ in range(3)
        ]
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", gateway.port, local_addr=(attacker, 0)
            )
            try:
                writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                assert await asyncio.wait_for(reader.read(), HANG_GUARD_SECONDS) == b""
            finally:
                writer.close()
            assert (await call(http, "GET", "/health")).status == 200  # others connect
            # A held connection still works.
            held_reader, held_writer = held[0]
            held_writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            reply = await asyncio.wait_for(read_reply(held_reader), HANG_GUARD_SECONDS)
            assert reply.status == 200
        finally:
            for _, held_writer in held:
                held_writer.close()


async def test_health_is_served_while_every_request_slot_is_held(server):
    async with (
        strict_gateway(server, max_concurrent_requests=2, body_seconds=PATIENT_SECONDS) as gw,
        http_client(gw.port) as http,
    ):
        # A stranger holds the half strangers may have; an admin holds the rest.
        admin = f"Authorization: Bearer {ADMIN_SECRET}\r\n"
        drips = [
            await drip(gw.port, new_loopback()),
            await drip(gw.port, new_loopback(), "/admin/credits/add", admin),
        ]
        try:
            deadline = time.monotonic() + HANG_GUARD_SECONDS
            while (busy := await call(http, "GET", "/user/someone/balance")).status != 503:
                assert time.monotonic() < deadline, busy.status
                await asyncio.sleep(0.05)
            assert busy.error == "Server busy"
            assert (await call(http, "GET", "/health")).status == 200
        finally:
            for _, writer in drips:
                writer.close()


# --- HTTP: requests that are not what they claim --------------------------------------------------


@pytest.mark.parametrize(
    "request_line", [b"GET /health\r\n\r\n", b"GET /health HTTP/0.9\r\n\r\n"], ids=["bare", "0.9"]
)
async def test_an_http09_request_is_400_in_http10(server, request_line):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    try:
        writer.write(request_line)
        answer = await asyncio.wait_for(reader.read(), HANG_GUARD_SECONDS)
    finally:
        writer.close()

    assert answer.startswith(b"HTTP/1.0 400 ")
    assert b'"reason":"MALFORMED_HTTP"' in answer


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_a_body_declared_as_anything_but_json_is_415_and_changes_nothing(
    http, credit, user_id, content_type
):
    from pluct.credit.v1 import credit_service_pb2 as credit_pb

    await credit.CreateUser(
        credit_pb.CreateUserRequest(user_id=user_id, initial_credits=2), metadata=ADMIN_METADATA
    )
    reply = await call(
        http,
        "POST",
        "/vend-token",
        data=f'{{"userId": "{user_id}"}}',
        headers={"Content-Type": content_type},
    )

    assert reply.status == 415
    assert reply.body["reason"] == "UNSUPPORTED_MEDIA_TYPE"
    balance = await credit.GetBalance(credit_pb.GetBalanceRequest(user_id=user_id))
    assert balance.balance == 2


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "Application/JSON; charset=utf-8", "application/vnd.api+json"],
)
async def test_a_json_body_or_an_undeclared_one_is_read(http, credit, user_id, content_type):
    from pluct.credit.v1 import credit_service_pb2 as credit_pb

    await credit.CreateUser(
        credit_pb.CreateUserRequest(user_id=user_id, initial_credits=2), metadata=ADMIN_METADATA
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", http._base_url.port)
    body = f'{{"userId": "{user_id}"}}'.encode()
    declared = b"" if content_type is None else f"Content-Type: {content_type}\r\n".encode()
    try:
        writer.write(
            b"POST /vend-token HTTP/1.1\r\nHost: t\r\n"
            + declared
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        reply = await asyncio.wait_for(read_reply(reader), HANG_GUARD_SECONDS)
    finally:
        writer.close()

    assert reply.status == 200


def test_workers_may_hold_as_many_files_as_the_hard_limit_allows():
    script = (
        "import resource\n"
        "from pluct_server.runtime.supervisor import raise_open_files_limit\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    said, soft, hard = (int(part) for part in out.split())

    assert said == soft
    assert soft == (65_536 if hard < 0 else min(hard, 65_536))  # RLIM_INFINITY is -1


async def test_a_connection_share_comes_back_when_a_connection_closes(server):
    attacker = new_loopback()
    async with strict_gateway(server, max_connections_per_address=2) as gateway:
        opened = [
            await asyncio.open_connection("127.0.0.1", gateway.port, local_addr=(attacker, 0))
            for _ in range(2)
        ]
        opened[0][1].close()
        await opened[0][1].wait_closed()
        # Once the server has seen it go, the address may open one again.
        deadline = time.monotonic() + HANG_GUARD_SECONDS
        while True:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", gateway.port, local_addr=(attacker, 0)
            )
            writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            try:
                answer = await asyncio.wait_for(read_reply(reader), HANG_GUARD_SECONDS)
                break
            except asyncio.IncompleteReadError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            finally:
                writer.close()
        opened[1][1].close()

    assert answer.status == 200


async def test_a_trusted_proxys_connections_are_not_counted(tmp_path, database_dsn):
    async with (
        edge_server(tmp_path, database_dsn, http_max_connections_per_address=2) as server,
    ):
        # Loopback is the trusted proxy here: five connections from it are five clients'.
        held = [await asyncio.open_connection("127.0.0.1", server.http_port) for _ in range(5)]
        try:
            for reader, writer in held:
                writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                reply = await asyncio.wait_for(read_reply(reader), HANG_GUARD_SECONDS)
                assert reply.status == 200
        finally:
            for _, writer in held:
                writer.close()


@pytest.mark.parametrize(
    "also_sent",
    [
        {"x-webhook-secret": "an old secret the library still sends"},
        {"Authorization": "Bearer not-a-key-of-ours"},
    ],
    ids=["stale-webhook-secret", "unrelated-bearer"],
)
@pytest.mark.parametrize("legacy_secret", [True, False], ids=["legacy-on", "legacy-off"])
async def test_a_signed_payment_is_credited_whatever_other_headers_come_along(
    tmp_path, database_dsn, user_id, also_sent, legacy_secret
):
    import json as json_module

    from pluct_server.security import webhooks

    async with (
        edge_server(tmp_path, database_dsn, webhook_legacy_secret=legacy_secret) as server,
        http_client(server.http_port) as http,
    ):
        raw = json_module.dumps({"userId": user_id, "amount": 7, "eventId": f"evt-{user_id}"})
        headers = {
            "Pluct-Signature": webhooks.sign(raw.encode(), WEBHOOK_SECRET, int(time.time())),
            **also_sent,
        }
        paid = await call(http, "POST", "/add-credits", data=raw, headers=headers)

    assert paid.status == 200, paid.body
    assert paid.body == {"success": True, "newBalance": 7}


async def test_credentials_are_checked_before_the_content_type(http):
    reply = await call(
        http,
        "POST",
        "/admin/credits/add",
        data="userId=u&amount=1",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Bearer x"},
    )

    assert reply.status == 401


async def test_a_wrong_credential_pays_the_per_address_rate(tmp_path, database_dsn):
    from pluct_server.values.settings import Rate

    async with (
        edge_server(tmp_path, database_dsn, http_ip_rate=Rate(3, 3600)) as server,
        http_client(server.http_port) as http,
    ):
        wrong = {"Authorization": "Bearer wrong", "X-Forwarded-For": "198.51.100.40"}
        seen = [(await call(http, "GET", "/admin/users", headers=wrong)).status for _ in range(6)]

    assert seen == [401] * 3 + [429] * 3


async def test_a_flood_of_refusals_is_summed_up_in_the_log(tmp_path, database_dsn, caplog):
    async with (
        edge_server(tmp_path, database_dsn) as server,
        stalling(server, "198.51.100.41") as attacker,
    ):
        caplog.set_level("WARNING", logger="pluct_server.security.auth")
        attacker.stall(LIST_USERS, 300)
        await attacker.wait_until(lambda: len(attacker.ended) == 300, HANG_GUARD_SECONDS)

    lines = [r.getMessage() for r in caplog.records if "198.51.100.41" in r.getMessage()]
    assert Counter(attacker.ended.values()) == {UNAUTHENTICATED: 300}
    # A hundred, one by one (as every refusal is, below a flood); the other 200 are counted.
    assert len(lines) == 100, len(lines)
    assert all("reason=no credentials for this method" in line for line in lines)


def test_sampled_lines_are_written_up_to_the_burst_then_counted(caplog):
    import logging

    from pluct_server.observability.logs import Sampled

    now = [100.0]
    sampled = Sampled(
        logging.getLogger("tests.sampled"), burst=2, interval_seconds=10, clock=lambda: now[0]
    )
    caplog.set_level("INFO", logger="tests.sampled")
    for _ in range(5):
        sampled.log(logging.INFO, "kind", "refused %s", "x")
    sampled.log(logging.INFO, "other", "refused %s", "y")
    now[0] += 10
    sampled.log(logging.INFO, "kind", "refused %s", "x")

    assert [r.getMessage() for r in caplog.records] == [
        "refused x",
        "refused x",
        "refused y",
        "refused x (and 3 more like it left out since)",
    ]
