"""Attacks on the rate limits, as an outsider makes them: each refused, and nothing changed."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import grpc
import jwt
import pytest
from google.rpc import error_details_pb2, status_pb2
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.admin.v1 import admin_service_pb2_grpc
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc
from pluct.token.v1 import token_service_pb2 as token_pb
from pluct.token.v1 import token_service_pb2_grpc

from pluct_server.app.server import PluctServer
from pluct_server.security import webhooks
from pluct_server.values.settings import Rate
from tests.http_support import ADMIN_HEADERS, WEBHOOK_HEADERS, Reply, call, http_client
from tests.support import (
    ADMIN_METADATA,
    ADMIN_SECRET,
    JWT_SECRET,
    WEBHOOK_SECRET,
    DefaultKey,
    caller_key,
    error_reason,
    external_database_url,
    free_port,
    ledger_mismatches,
    ledger_of,
    new_request_id,
    new_user_id,
    running_server,
    scratch_database,
    settings_for_test,
    time_passes_for_limits,
    wait_until_serving,
)

REPO = Path(__file__).resolve().parent.parent
HOUR = 3600
# The test client is the proxy: X-Forwarded-For then names a made-up client per test.
TRUST_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
TOO_MANY = "Too many requests"

T = TypeVar("T")
_handed_out: set[str] = set()


def new_address() -> str:
    """Return a made-up client address no other test uses (198.18.0.0/15, for benchmarks)."""
    while True:
        address = (
            f"198.{18 + secrets.randbelow(2)}.{secrets.randbelow(256)}.{1 + secrets.randbelow(254)}"
        )
        if address not in _handed_out:
            _handed_out.add(address)
            return address


def new_loopback() -> str:
    """Return a loopback address other than 127.0.0.1 to connect from (Linux routes all 127/8)."""
    while True:
        address = (
            f"127.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{2 + secrets.randbelow(253)}"
        )
        if address not in _handed_out:
            _handed_out.add(address)
            return address


def via(address: str, **headers: str) -> dict[str, str]:
    """HTTP headers of a request the trusted proxy forwards for `address`."""
    return {"X-Forwarded-For": address, **headers}


def grpc_via(address: str, *metadata: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    """gRPC metadata of a call the trusted proxy forwards for `address`."""
    return (("x-forwarded-for", address), *metadata)


@asynccontextmanager
async def limited_server(data_dir: Path, dsn: str, **overrides: Any) -> AsyncIterator[PluctServer]:
    """A server of this test's own on the shared database, trusting loopback as its proxy."""
    settings = settings_for_test(data_dir, **{"trusted_proxies": TRUST_LOOPBACK, **overrides})
    async with running_server(settings, dsn) as running:
        yield running


@asynccontextmanager
async def http_from(port: int, source: str) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client whose connections come from the loopback address `source`."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(
        base_url=f"http://127.0.0.1:{port}", connector=connector
    ) as session:
        yield session


async def outcome(call_: Awaitable[T]) -> T | grpc.aio.AioRpcError:
    """Await a gRPC call; return its response, or the error it failed with."""
    try:
        return await call_
    except grpc.aio.AioRpcError as error:
        return error


def retry_delay_seconds(error: grpc.aio.AioRpcError) -> int | None:
    """Return the google.rpc.RetryInfo delay a failed call carried, None without one."""
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            info = error_details_pb2.RetryInfo()
            if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
                return int(info.retry_delay.seconds)
    return None


def assert_rate_limited(error: object) -> None:
    """A gRPC refusal by a limit: RESOURCE_EXHAUSTED, reason RATE_LIMITED, a RetryInfo delay."""
    assert isinstance(error, grpc.aio.AioRpcError), error
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    reason, _ = error_reason(error)
    assert reason == "RATE_LIMITED"
    delay = retry_delay_seconds(error)
    assert delay is not None and delay >= 1


def assert_too_many(reply: Reply) -> None:
    """The HTTP refusal by a limit: 429 {"error": "Too many requests"} with Retry-After seconds."""
    assert reply.status == 429, (reply.status, reply.body)
    assert reply.body["error"] == TOO_MANY
    assert reply.body["code"] == 429
    retry_after = reply.headers.get("Retry-After", "")
    assert retry_after.isdigit() and int(retry_after) >= 1, reply.headers


async def users_that_exist(dsn: str, user_ids: Iterable[str]) -> set[str]:
    """Return which of `user_ids` have a users row or a ledger row."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT user_id FROM users WHERE user_id = ANY($1::text[]) "
            "UNION SELECT user_id FROM ledger WHERE user_id = ANY($1::text[])",
            list(user_ids),
        )
    finally:
        await conn.close()
    return {row["user_id"] for row in rows}


def statuses(replies: Iterable[Reply]) -> Counter[int]:
    """Count HTTP answers by status."""
    return Counter(reply.status for reply in replies)


async def create_user(http: aiohttp.ClientSession, user_id: str, credits: int) -> None:
    """Create a user with `credits` through the admin token (above the signup allowance)."""
    reply = await call(
        http,
        "POST",
        "/user/create",
        json_body={"userId": user_id, "initialCredits": credits},
        headers=via(new_address(), **ADMIN_HEADERS),
    )
    assert reply.status == 200, reply.body


# --- 1. The vend limit per user ------------------------------------------------------------------


async def test_a_grpc_vend_burst_gets_exactly_the_vend_limit(tmp_path, database_dsn):
    async with limited_server(tmp_path, database_dsn, vend_rate=Rate(5, HOUR)) as server:
        key = await caller_key(server, ("tokens:vend", "credits:read"))
        async with (
            grpc.aio.insecure_channel(
                f"127.0.0.1:{server.grpc_port}", interceptors=[DefaultKey(key)]
            ) as channel,
            http_client(server.http_port) as http,
        ):
            tokens = token_service_pb2_grpc.TokenServiceStub(channel)
            victim, bystander = new_user_id("burst"), new_user_id("bystander")
            await create_user(http, victim, 100)
            await create_user(http, bystander, 10)

            results = await asyncio.gather(
                *(
                    outcome(tokens.VendToken(token_pb.VendTokenRequest(user_id=victim)))
                    for _ in range(50)
                )
            )

            vended = [r for r in results if isinstance(r, token_pb.VendTokenResponse)]
            refused = [r for r in results if not isinstance(r, token_pb.VendTokenResponse)]
            assert len(vended) == 5
            assert len({r.token for r in vended}) == 5
            assert sorted(r.balance_after for r in vended) == [95, 96, 97, 98, 99]
            assert all(
                jwt.decode(r.token, JWT_SECRET, algorithms=["HS256"])["sub"] == victim
                for r in vended
            )
            assert len(refused) == 45
            for error in refused:
                assert_rate_limited(error)
            assert await ledger_of(database_dsn, victim) == (
                95,
                Counter({"user_creation": 1, "spend": 5}),
            )

            # Another user's allowance is its own.
            other = await tokens.VendToken(token_pb.VendTokenRequest(user_id=bystander))
            assert other.balance_after == 9


async def test_an_http_vend_burst_gets_exactly_the_vend_limit(tmp_path, database_dsn):
    async with (
        limited_server(tmp_path, database_dsn, vend_rate=Rate(5, HOUR)) as server,
        http_client(server.http_port) as http,
    ):
        victim, bystander = new_user_id("burst"), new_user_id("bystander")
        await create_user(http, victim, 100)
        await create_user(http, bystander, 10)
        # Many addresses at once: the per-user limit does not care where the calls come from.
        replies = await asyncio.gather(
            *(
                call(
                    http,
                    "POST",
                    "/vend-token",
                    json_body={"userId": victim},
                    headers=via(new_address()),
                )
                for _ in range(50)
            )
        )

        assert statuses(replies) == {200: 5, 429: 45}
        for reply in replies:
            if reply.status == 429:
                assert_too_many(reply)
        assert len({r.body["token"] for r in replies if r.status == 200}) == 5
        assert await ledger_of(database_dsn, victim) == (
            95,
            Counter({"user_creation": 1, "spend": 5}),
        )
        balance = await call(http, "GET", f"/user/{victim}/balance", headers=via(new_address()))
        assert balance.body["balance"] == 95

        other = await call(
            http, "POST", "/vend-token", json_body={"userId": bystander}, headers=via(new_address())
        )
        assert other.status == 200
        assert other.body["balanceAfter"] == 9


# --- 2. The same limit across server processes ---------------------------------------------------

# A client in a process of its own: `count` gRPC and `count` HTTP vends, all at once when told.
_CLIENT = r"""
import asyncio, json, sys
import aiohttp, grpc
from pluct.token.v1 import token_service_pb2 as pb, token_service_pb2_grpc as pb_grpc

async def main():
    target, http_port, user_id, key, count = sys.argv[1:6]
    metadata = (("authorization", "Bearer " + key),)
    async with grpc.aio.insecure_channel(target) as channel, aiohttp.ClientSession() as http:
        stub = pb_grpc.TokenServiceStub(channel)
        await channel.channel_ready()
        print("ready", flush=True)
        # Every client waits here until the test has seen all of them ready.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

        async def by_grpc():
            try:
                reply = await stub.VendToken(
                    pb.VendTokenRequest(user_id=user_id), metadata=metadata, timeout=60
                )
                return ["grpc", "OK", reply.token]
            except grpc.aio.AioRpcError as error:
                return ["grpc", error.code().name]

        async def by_http():
            url = "http://127.0.0.1:%s/vend-token" % http_port
            async with http.post(url, json={"userId": user_id}) as reply:
                body = await reply.json()
                if reply.status == 200:
                    return ["http", "200", body["token"]]
                retry_after = reply.headers.get("Retry-After")
                return ["http", str(reply.status), body.get("error"), retry_after]

        calls = [f() for _ in range(int(count)) for f in (by_grpc, by_http)]
        print(json.dumps(await asyncio.gather(*calls)))

asyncio.run(main())
"""


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'clients'}", **extra)
    return env


class ServerProcess:
    """`python -m pluct_server serve` in production mode, in a child process."""

    def __init__(self, dsn: str, workdir: Path) -> None:
        self.grpc_target = f"127.0.0.1:{free_port()}"
        self.http_port = free_port()
        env = _child_env(
            DATABASE_URL=dsn,
            ADMIN_SECRET=ADMIN_SECRET,
            JWT_SECRET=JWT_SECRET,
            WEBHOOK_SECRET=WEBHOOK_SECRET,
            PLUCT_GRPC_LISTEN=self.grpc_target,
            PLUCT_HTTP_LISTEN=f"127.0.0.1:{self.http_port}",
            PLUCT_VEND_RATE="5/hour",
            PLUCT_HTTP_IP_RATE="0",
            PLUCT_SIGNUP_RATE="3/hour",
            PLUCT_AUTH_FAILURE_RATE="0",
            PLUCT_TRUSTED_PROXIES="127.0.0.0/8",
        )
        self.log_path = workdir / f"server-{self.http_port}.log"
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pluct_server", "serve"],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_serving(self) -> None:
        try:
            await wait_until_serving(self.grpc_target, self.process)
            async with http_client(self.http_port) as http:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        if (await call(http, "GET", "/health")).status == 200:
                            return
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
            raise RuntimeError("the HTTP shim never answered /health")
        except RuntimeError as error:
            raise AssertionError(f"{error}\n{self.log_path.read_text()}") from None

    async def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)


@pytest.fixture(scope="module")
async def two_processes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[str, list[ServerProcess]]]:
    """Two server processes on one scratch database, with vend 5/hour and signup 3/hour."""
    server_url = external_database_url() or request.getfixturevalue("embedded_postgres").dsn
    workdir = tmp_path_factory.mktemp("processes")
    async with scratch_database(server_url) as dsn:
        processes = [ServerProcess(dsn, workdir), ServerProcess(dsn, workdir)]
        try:
            await asyncio.gather(*(p.wait_serving() for p in processes))
            yield dsn, processes
        finally:
            await asyncio.gather(*(p.stop() for p in processes))
        assert await ledger_mismatches(dsn) == []


async def _run_clients(clients: list[list[str]]) -> list[list[str]]:
    """Run a _CLIENT process for each argument list, start them together, return every result."""
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CLIENT,
            *args,
            env=_child_env(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for args in clients
    ]
    for child in children:
        assert child.stdout is not None
        ready = await asyncio.wait_for(child.stdout.readline(), 60)
        assert ready == b"ready\n", ready
    answers = await asyncio.gather(
        *(asyncio.wait_for(child.communicate(b"go\n"), 120) for child in children)
    )
    results: list[list[str]] = []
    for child, (out, err) in zip(children, answers, strict=True):
        assert child.returncode == 0, err.decode()
        results.extend(json.loads(out))
    return results


async def test_the_vend_limit_holds_across_server_processes(two_processes):
    dsn, (first, second) = two_processes
    victim = new_user_id("multi")
    async with grpc.aio.insecure_channel(first.grpc_target) as channel:
        credit = credit_service_pb2_grpc.CreditServiceStub(channel)
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        await credit.CreateUser(
            credit_pb.CreateUserRequest(user_id=victim, initial_credits=100),
            metadata=ADMIN_METADATA,
        )
        made = await admin.CreateApiKey(
            admin_pb.CreateApiKeyRequest(name="attacker", scopes=["tokens:vend"]),
            metadata=ADMIN_METADATA,
        )

    # Four client processes, two on each server, 20 vends each (10 gRPC, 10 HTTP), all at once.
    clients = [
        [server.grpc_target, str(server.http_port), victim, made.secret, "10"]
        for server in (first, second, first, second)
    ]
    results = await _run_clients(clients)

    assert len(results) == 80
    vended = [r[2] for r in results if r[1] in ("OK", "200")]
    assert len(vended) == 5
    assert len(set(vended)) == 5
    refusals = [r for r in results if r[1] not in ("OK", "200")]
    assert all(r[:2] == ["grpc", "RESOURCE_EXHAUSTED"] for r in refusals if r[0] == "grpc")
    http_refusals = [r for r in refusals if r[0] == "http"]
    assert all(r[1:3] == ["429", TOO_MANY] and str(r[3]).isdigit() for r in http_refusals)
    assert await ledger_of(dsn, victim) == (95, Counter({"user_creation": 1, "spend": 5}))


async def test_the_signup_limit_holds_across_server_processes(two_processes):
    dsn, processes = two_processes
    farmer = new_address()
    user_ids = [new_user_id("farm") for _ in range(10)]
    async with (
        http_client(processes[0].http_port) as one,
        http_client(processes[1].http_port) as two,
    ):
        replies = await asyncio.gather(
            *(
                call(
                    (one, two)[i % 2],
                    "POST",
                    "/user/create",
                    json_body={"userId": user_id, "initialCredits": 10},
                    headers=via(farmer),
                )
                for i, user_id in enumerate(user_ids)
            )
        )

    assert statuses(replies) == {200: 3, 429: 7}
    for reply in replies:
        if reply.status == 429:
            assert_too_many(reply)
    created = {r.body["userId"] for r in replies if r.status == 200}
    assert await users_that_exist(dsn, user_ids) == created


# --- 3. A refused vend changes nothing; a retry still gets its token -----------------------------


async def test_a_refused_vend_changes_nothing_and_leaves_its_request_id_unused(
    tmp_path, database_dsn
):
    # One vend per two seconds: the test moves the user's counter on rather than wait.
    async with (
        limited_server(tmp_path, database_dsn, vend_rate=Rate(1, 2)) as server,
        http_client(server.http_port) as http,
    ):
        user_id = new_user_id("refused")
        await create_user(http, user_id, 10)
        first = await call(http, "POST", "/vend-token", json_body={"userId": user_id})
        assert first.status == 200
        state = await ledger_of(database_dsn, user_id)
        assert state == (9, Counter({"user_creation": 1, "spend": 1}))

        refused_id = new_request_id()
        refused = await call(
            http,
            "POST",
            "/vend-token",
            json_body={"userId": user_id},
            headers={"Idempotency-Key": refused_id},
        )
        assert_too_many(refused)
        assert await ledger_of(database_dsn, user_id) == state
        balance = await call(http, "GET", f"/user/{user_id}/balance")
        assert balance.body["balance"] == 9

        await time_passes_for_limits(database_dsn, user_id, 2)
        # The refused call claimed nothing: its request id buys a token now, once.
        later = await call(
            http,
            "POST",
            "/vend-token",
            json_body={"userId": user_id},
            headers={"Idempotency-Key": refused_id},
        )
        assert later.status == 200, later.body
        assert later.body["balanceAfter"] == 8
        assert await ledger_of(database_dsn, user_id) == (
            8,
            Counter({"user_creation": 1, "spend": 2}),
        )


async def test_a_retried_vend_gets_its_token_back_while_the_user_is_over_the_limit(
    tmp_path, database_dsn
):
    async with limited_server(tmp_path, database_dsn, vend_rate=Rate(2, HOUR)) as server:
        key = await caller_key(server, ("tokens:vend",))
        async with (
            grpc.aio.insecure_channel(
                f"127.0.0.1:{server.grpc_port}", interceptors=[DefaultKey(key)]
            ) as channel,
            http_client(server.http_port) as http,
        ):
            tokens = token_service_pb2_grpc.TokenServiceStub(channel)
            user_id = new_user_id("retry")
            await create_user(http, user_id, 10)
            grpc_id, http_id = new_request_id(), new_request_id()
            bought = await tokens.VendToken(
                token_pb.VendTokenRequest(user_id=user_id, request_id=grpc_id)
            )
            bought_http = await call(
                http,
                "POST",
                "/vend-token",
                json_body={"userId": user_id},
                headers={"Idempotency-Key": http_id},
            )
            assert bought_http.status == 200
            # The allowance is spent: a new vend is refused...
            assert_rate_limited(
                await outcome(tokens.VendToken(token_pb.VendTokenRequest(user_id=user_id)))
            )
            assert_too_many(await call(http, "POST", "/vend-token", json_body={"userId": user_id}))
            state = await ledger_of(database_dsn, user_id)
            assert state == (8, Counter({"user_creation": 1, "spend": 2}))

            # ...but retries of the vends that went through get the very same tokens, many times.
            retries = await asyncio.gather(
                *(
                    tokens.VendToken(token_pb.VendTokenRequest(user_id=user_id, request_id=grpc_id))
                    for _ in range(5)
                )
            )
            assert {r.token for r in retries} == {bought.token}
            assert {r.balance_after for r in retries} == {bought.balance_after}
            http_retries = await asyncio.gather(
                *(
                    call(
                        http,
                        "POST",
                        "/vend-token",
                        json_body={"userId": user_id},
                        headers={"Idempotency-Key": http_id},
                    )
                    for _ in range(5)
                )
            )
            assert {r.status for r in http_retries} == {200}
            assert {r.body["token"] for r in http_retries} == {bought_http.body["token"]}
            assert await ledger_of(database_dsn, user_id) == state


# --- 4. The per-address HTTP limit ---------------------------------------------------------------


async def test_the_per_address_limit_counts_each_address_alone(tmp_path, database_dsn):
    async with (
        limited_server(tmp_path, database_dsn, http_ip_rate=Rate(10, HOUR)) as server,
        http_client(server.http_port) as http,
    ):
        flooder, neighbour = new_address(), new_address()
        user_id = new_user_id("watched")
        replies = await asyncio.gather(
            *(
                call(http, "GET", f"/user/{user_id}/balance", headers=via(flooder))
                for _ in range(30)
            )
        )

        assert statuses(replies) == {200: 10, 429: 20}
        for reply in replies:
            if reply.status == 429:
                assert_too_many(reply)
        # Every other route is metered by the same counter, the admin prefix included...
        for method, path in (("GET", "/"), ("GET", "/openapi.json"), ("GET", "/admin/users")):
            assert_too_many(await call(http, method, path, headers=via(flooder, **ADMIN_HEADERS)))
        refused_vend = await call(
            http, "POST", "/vend-token", json_body={"userId": user_id}, headers=via(flooder)
        )
        assert_too_many(refused_vend)
        # ...but not /health, which orchestrators probe.
        for _ in range(15):
            assert (await call(http, "GET", "/health", headers=via(flooder))).status == 200
        # Another address has its own allowance.
        other = await call(http, "GET", f"/user/{user_id}/balance", headers=via(neighbour))
        assert other.status == 200
        assert await ledger_of(database_dsn, user_id) == (None, Counter())


@pytest.mark.parametrize(
    "proxies",
    [(), (ipaddress.ip_network("10.0.0.0/8"),)],
    ids=["no-trusted-proxy", "a-proxy-elsewhere"],
)
async def test_a_forged_forwarded_for_is_ignored_from_an_untrusted_peer(
    tmp_path, database_dsn, proxies
):
    async with limited_server(
        tmp_path, database_dsn, http_ip_rate=Rate(10, HOUR), trusted_proxies=proxies
    ) as server:
        # Connect from an address of our own, so the peer this test is counted as is its alone.
        flooder, neighbour = new_loopback(), new_loopback()
        async with (
            http_from(server.http_port, flooder) as http,
            http_from(server.http_port, neighbour) as other,
        ):
            replies = await asyncio.gather(
                *(
                    call(http, "GET", "/user/anyone/balance", headers=via(new_address()))
                    for _ in range(30)
                )
            )

            assert statuses(replies) == {200: 10, 429: 20}
            assert_too_many(await call(http, "GET", "/user/anyone/balance", headers=via(neighbour)))
            assert (await call(other, "GET", "/user/anyone/balance")).status == 200


async def test_behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client(
    tmp_path, database_dsn
):
    async with (
        limited_server(tmp_path, database_dsn, http_ip_rate=Rate(10, HOUR)) as server,
        http_client(server.http_port) as http,
    ):
        client = new_address()
        # Whatever the client writes to the left, and trusted hops to the right, it stays itself.
        forwarded = [f"{new_address()}, {client}" for _ in range(15)]
        forwarded += [f"{new_address()}, {new_address()}, {client}, 127.0.0.9" for _ in range(15)]
        replies = await asyncio.gather(
            *(
                call(http, "GET", "/user/anyone/balance", headers={"X-Forwarded-For": value})
                for value in forwarded
            )
        )

        assert statuses(replies) == {200: 10, 429: 20}
        assert_too_many(await call(http, "GET", "/user/anyone/balance", headers=via(client)))
        assert (
            await call(http, "GET", "/user/anyone/balance", headers=via(new_address()))
        ).status == 200


# --- 5. The signup limit -------------------------------------------------------------------------


async def test_the_signup_limit_bounds_the_free_credit_farm(tmp_path, database_dsn):
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
                    headers=via(farmer),
                )
                for user_id in user_ids
            )
        )

        assert statuses(replies) == {200: 3, 429: 7}
        created = {r.body["userId"] for r in replies if r.status == 200}
        refused = set(user_ids) - created
        for reply in replies:
            if reply.status == 429:
                assert_too_many(reply)
        assert await users_that_exist(database_dsn, user_ids) == created
        for user_id in refused:
            balance = await call(
                http, "GET", f"/user/{user_id}/balance", headers=via(new_address())
            )
            assert balance.body["balance"] == 0
            listed = await call(
                http, "GET", f"/user/{user_id}/transactions", headers=via(new_address())
            )
            assert listed.body["transactions"] == []
        users = await call(http, "GET", "/admin/users", headers=via(new_address(), **ADMIN_HEADERS))
        assert users.status == 200
        assert not refused & {row["user_id"] for row in users.body}
        # Free credits handed out: 3 signups' worth, however many were tried.
        balances = [(await ledger_of(database_dsn, u))[0] or 0 for u in user_ids]
        assert sum(balances) == 30

        # A second farm from the same address, even with other user ids, stays refused; another
        # address may sign up.
        assert_too_many(
            await call(
                http,
                "POST",
                "/user/create",
                json_body={"userId": new_user_id("farm"), "initialCredits": 5},
                headers=via(farmer),
            )
        )
        newcomer = await call(
            http,
            "POST",
            "/user/create",
            json_body={"userId": new_user_id("newcomer"), "initialCredits": 5},
            headers=via(new_address()),
        )
        assert newcomer.status == 200


# --- 6. The auth-failure limit -------------------------------------------------------------------


async def test_guessing_the_admin_secret_over_http_holds_back_failures_never_the_secret(
    tmp_path, database_dsn
):
    async with (
        limited_server(tmp_path, database_dsn, auth_failure_rate=Rate(5, HOUR)) as server,
        http_client(server.http_port) as http,
    ):
        guesser, admin = new_address(), new_address()
        replies = await asyncio.gather(
            *(
                call(
                    http,
                    "GET",
                    "/admin/users",
                    headers=via(guesser, Authorization=f"Bearer guess-{secrets.token_hex(16)}"),
                )
                for _ in range(20)
            )
        )

        assert statuses(replies) == {401: 5, 429: 15}
        assert all(r.error == "Unauthorized" for r in replies if r.status == 401)
        for reply in replies:
            if reply.status == 429:
                assert_too_many(reply)
        # Only failures are held back: the right secret is served from that very address (a
        # NAT or a proxy may carry the guesser and the admin alike), on every admin route.
        served = await call(http, "GET", "/admin/users", headers=via(guesser, **ADMIN_HEADERS))
        assert served.status == 200
        user_id = new_user_id("guarded")
        grant = await call(
            http,
            "POST",
            "/admin/credits/add",
            json_body={"userId": user_id, "amount": 50},
            headers=via(guesser, **ADMIN_HEADERS),
        )
        assert grant.status == 200
        assert await ledger_of(database_dsn, user_id) == (50, Counter({"admin_add": 1}))
        # ... while the next wrong guess from there is still held back.
        assert_too_many(
            await call(
                http, "GET", "/admin/users", headers=via(guesser, Authorization="Bearer wrong")
            )
        )
        # Another address has its own count.
        other = await call(
            http, "GET", "/admin/users", headers=via(admin, Authorization="Bearer wrong")
        )
        assert other.status == 401


async def test_sequential_admin_guesses_get_401_five_times_then_429(tmp_path, database_dsn):
    async with (
        limited_server(tmp_path, database_dsn, auth_failure_rate=Rate(5, HOUR)) as server,
        http_client(server.http_port) as http,
    ):
        guesser = new_address()
        seen = [
            (
                await call(
                    http,
                    "GET",
                    "/admin/users",
                    headers=via(guesser, Authorization=f"Bearer {ADMIN_SECRET[:-1]}x"),
                )
            ).status
            for _ in range(20)
        ]

        assert seen == [401] * 5 + [429] * 15


async def test_guessing_the_admin_secret_over_grpc_holds_back_failures_never_the_secret(
    tmp_path, database_dsn
):
    async with (
        limited_server(tmp_path, database_dsn, auth_failure_rate=Rate(5, HOUR)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        http_client(server.http_port) as http,
    ):
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        guesser = new_address()
        seen = []
        for _ in range(20):
            wrong = ("authorization", f"Bearer guess-{secrets.token_hex(16)}")
            result = await outcome(
                admin.ListUsers(admin_pb.ListUsersRequest(), metadata=grpc_via(guesser, wrong))
            )
            assert isinstance(result, grpc.aio.AioRpcError)
            seen.append(result.code())
            if result.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert_rate_limited(result)

        assert (
            seen
            == [grpc.StatusCode.UNAUTHENTICATED] * 5 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 15
        )
        served = await admin.ListUsers(
            admin_pb.ListUsersRequest(page_size=1), metadata=grpc_via(guesser, *ADMIN_METADATA)
        )
        assert len(served.users) <= 1
        # The failures are the address's, whichever door it knocks on (another server shares
        # them too: see the test after this one).
        assert_too_many(
            await call(
                http, "GET", "/admin/users", headers=via(guesser, Authorization="Bearer wrong")
            )
        )
        assert (
            await call(http, "GET", "/admin/users", headers=via(guesser, **ADMIN_HEADERS))
        ).status == 200


async def test_failures_counted_by_one_server_hold_back_the_address_on_another(
    tmp_path, database_dsn
):
    async with (
        limited_server(tmp_path / "a", database_dsn, auth_failure_rate=Rate(3, HOUR)) as first,
        limited_server(tmp_path / "b", database_dsn, auth_failure_rate=Rate(3, HOUR)) as second,
        http_client(first.http_port) as http_first,
        http_client(second.http_port) as http_second,
    ):
        guesser = new_address()
        wrong = via(guesser, Authorization="Bearer wrong")
        seen = [(await call(http_first, "GET", "/admin/users", headers=wrong)).status]
        seen += [(await call(http_second, "GET", "/admin/users", headers=wrong)).status]
        seen += [(await call(http_first, "GET", "/admin/users", headers=wrong)).status]
        seen += [(await call(http_second, "GET", "/admin/users", headers=wrong)).status]

        assert seen == [401, 401, 401, 429]
        right = via(guesser, **ADMIN_HEADERS)
        assert (await call(http_second, "GET", "/admin/users", headers=right)).status == 200


async def test_guessing_the_webhook_secret_is_limited_and_credits_nothing(tmp_path, database_dsn):
    async with (
        limited_server(tmp_path, database_dsn, auth_failure_rate=Rate(5, HOUR)) as server,
        http_client(server.http_port) as http,
    ):
        guesser = new_address()
        user_id = new_user_id("payee")
        body = {"userId": user_id, "amount": 500}
        seen = [
            (
                await call(
                    http,
                    "POST",
                    "/add-credits",
                    json_body=body,
                    headers=via(guesser, **{"x-webhook-secret": f"guess-{secrets.token_hex(20)}"}),
                )
            ).status
            for _ in range(12)
        ]

        assert seen == [401] * 5 + [429] * 7
        assert await ledger_of(database_dsn, user_id) == (None, Counter())
        # The provider's own secret still credits, even from the guesser's address.
        paid = await call(
            http, "POST", "/add-credits", json_body=body, headers=via(guesser, **WEBHOOK_HEADERS)
        )
        assert paid.status == 200
        assert paid.body == {"success": True, "newBalance": 500}
        assert await ledger_of(database_dsn, user_id) == (500, Counter({"add_webhook": 1}))


async def test_forged_signatures_count_as_failed_authentications(tmp_path, database_dsn):
    async with (
        limited_server(tmp_path, database_dsn, auth_failure_rate=Rate(5, HOUR)) as server,
        http_client(server.http_port) as http,
    ):
        guesser = new_address()
        user_id = new_user_id("payee")
        raw = json.dumps(
            {"userId": user_id, "amount": 700, "eventId": f"evt_{secrets.token_hex(8)}"}
        ).encode()

        def signed(secret: str, address: str) -> dict[str, str]:
            header = webhooks.sign(raw, secret, int(time.time()))
            return via(address, **{"Pluct-Signature": header, "Content-Type": "application/json"})

        seen = [
            (
                await call(
                    http,
                    "POST",
                    "/add-credits",
                    data=raw,
                    headers=signed(f"guess-{n}" * 8, guesser),
                )
            ).status
            for n in range(8)
        ]

        assert seen == [401] * 5 + [429] * 3
        assert await ledger_of(database_dsn, user_id) == (None, Counter())
        # A well-signed call is the provider's, wherever it comes from: it credits.
        paid = await call(
            http, "POST", "/add-credits", data=raw, headers=signed(WEBHOOK_SECRET, guesser)
        )
        assert paid.status == 200
        assert await ledger_of(database_dsn, user_id) == (700, Counter({"add_webhook": 1}))


# --- 7. Every limit off --------------------------------------------------------------------------


async def test_with_every_limit_off_a_vend_flood_gets_exactly_the_credits(tmp_path, database_dsn):
    off = Rate(0)
    async with limited_server(
        tmp_path,
        database_dsn,
        vend_rate=off,
        http_ip_rate=off,
        signup_rate=off,
        auth_failure_rate=off,
    ) as server:
        key = await caller_key(server, ("tokens:vend",))
        async with (
            grpc.aio.insecure_channel(
                f"127.0.0.1:{server.grpc_port}", interceptors=[DefaultKey(key)]
            ) as channel,
            http_client(server.http_port) as http,
        ):
            tokens = token_service_pb2_grpc.TokenServiceStub(channel)
            user_id = new_user_id("flood")
            await create_user(http, user_id, 50)
            address = new_address()
            grpc_results, http_results = await asyncio.gather(
                asyncio.gather(
                    *(
                        outcome(tokens.VendToken(token_pb.VendTokenRequest(user_id=user_id)))
                        for _ in range(150)
                    )
                ),
                asyncio.gather(
                    *(
                        call(
                            http,
                            "POST",
                            "/vend-token",
                            json_body={"userId": user_id},
                            headers=via(address),
                        )
                        for _ in range(150)
                    )
                ),
            )

            grpc_tokens = [
                r.token for r in grpc_results if isinstance(r, token_pb.VendTokenResponse)
            ]
            http_tokens = [r.body["token"] for r in http_results if r.status == 200]
            assert len(grpc_tokens) + len(http_tokens) == 50
            assert len(set(grpc_tokens) | set(http_tokens)) == 50
            assert Counter(
                r.code() for r in grpc_results if isinstance(r, grpc.aio.AioRpcError)
            ) == Counter({grpc.StatusCode.FAILED_PRECONDITION: 150 - len(grpc_tokens)})
            assert statuses(http_results) == Counter(
                {200: len(http_tokens), 403: 150 - len(http_tokens)}
            )
            assert await ledger_of(database_dsn, user_id) == (
                0,
                Counter({"user_creation": 1, "spend": 50}),
            )

            # Nor is anything else metered: wrong guesses stay 401, signups and reads go on.
            guesses = await asyncio.gather(
                *(
                    call(
                        http, "GET", "/admin/users", headers=via(address, Authorization="Bearer no")
                    )
                    for _ in range(30)
                )
            )
            assert statuses(guesses) == {401: 30}
            signups = await asyncio.gather(
                *(
                    call(
                        http,
                        "POST",
                        "/user/create",
                        json_body={"userId": new_user_id("free"), "initialCredits": 0},
                        headers=via(address),
                    )
                    for _ in range(20)
                )
            )
            assert statuses(signups) == {200: 20}
