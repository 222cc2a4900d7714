"""Grants that expire: out of the balance from their expire_time on, written off exactly once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.admin.v1 import admin_service_pb2_grpc
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc, ledger_pb2
from pluct.token.v1 import token_service_pb2 as token_pb
from pluct.token.v1 import token_service_pb2_grpc

from pluct_server.app.server import PluctServer
from tests.http_support import ADMIN_HEADERS, call, http_client
from tests.support import (
    ADMIN_METADATA,
    WEBHOOK_METADATA,
    clock_of,
    error_reason,
    ledger_of,
    new_request_id,
    new_user_id,
    running_server,
    settings_for_test,
    time_passes_for_grants,
)

pytestmark = pytest.mark.usefixtures("database_dsn")

HOUR = 3600


def at(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


class Stubs:
    """The three services of one server, as its admin."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.credit = credit_service_pb2_grpc.CreditServiceStub(channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        self.token = token_service_pb2_grpc.TokenServiceStub(channel)

    async def user(self, signup: int = 0) -> str:
        user_id = new_user_id("expiring")
        await self.credit.CreateUser(
            credit_pb.CreateUserRequest(user_id=user_id, initial_credits=signup),
            metadata=ADMIN_METADATA,
        )
        return user_id

    async def give(
        self, user_id: str, amount: int, expires_in: float | None = None, **terms: Any
    ) -> admin_pb.AddCreditsResponse:
        request = admin_pb.AddCreditsRequest(user_id=user_id, amount=amount, **terms)
        if expires_in is not None:
            request.expire_time.CopyFrom(at(datetime.now(UTC) + timedelta(seconds=expires_in)))
        reply: admin_pb.AddCreditsResponse = await self.admin.AddCredits(
            request, metadata=ADMIN_METADATA
        )
        return reply

    async def pay(self, user_id: str, amount: int) -> None:
        await self.credit.AddCredits(
            credit_pb.AddCreditsRequest(user_id=user_id, amount=amount, event_id=new_request_id()),
            metadata=WEBHOOK_METADATA,
        )

    async def balance(self, user_id: str) -> credit_pb.GetBalanceResponse:
        reply: credit_pb.GetBalanceResponse = await self.credit.GetBalance(
            credit_pb.GetBalanceRequest(user_id=user_id), metadata=ADMIN_METADATA
        )
        return reply

    async def vend(self, user_id: str) -> token_pb.VendTokenResponse:
        reply: token_pb.VendTokenResponse = await self.token.VendToken(
            token_pb.VendTokenRequest(user_id=user_id), metadata=ADMIN_METADATA
        )
        return reply

    async def history(self, user_id: str) -> list[ledger_pb2.Transaction]:
        reply = await self.credit.ListTransactions(
            credit_pb.ListTransactionsRequest(user_id=user_id, page_size=100),
            metadata=ADMIN_METADATA,
        )
        return list(reply.transactions)


async def expirations(dsn: str, user_id: str) -> list[tuple[int, int, int]]:
    """Every expiration entry of `user_id`: (grant id, amount, balance after), oldest first."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT grant_id, amount, balance_after FROM ledger"
            " WHERE user_id = $1 AND type = 'expiration' ORDER BY id",
            user_id,
        )
    finally:
        await conn.close()
    return [tuple(row) for row in rows]


async def until(check: Any, what: str, seconds: float = 10) -> None:
    """Poll `check()` until it is true, for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def quiet_settings(tmp_path: Path) -> Any:
    """A server whose upkeep runs only when its clock is moved (a round is a minute)."""
    return settings_for_test(tmp_path, cache_refresh_seconds=60.0)


# --- granting credits that expire ---------------------------------------------------------------


async def test_an_expiring_grant_must_expire_in_the_future(admin, credit, database_dsn):
    user_id = new_user_id("past")
    await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id, initial_credits=1))
    past = admin_pb.AddCreditsRequest(user_id=user_id, amount=5)
    past.expire_time.CopyFrom(at(datetime.now(UTC) - timedelta(seconds=1)))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await admin.AddCredits(past, metadata=ADMIN_METADATA)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(raised.value)[1] == {"field": "expire_time"}
    assert await ledger_of(database_dsn, user_id) == (1, Counter({"user_creation": 1}))


async def test_the_balance_says_what_expires_soonest(server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stubs = Stubs(channel)
        user_id = await stubs.user(signup=2)
        assert not (await stubs.balance(user_id)).HasField("next_expire_time")
        soon = await stubs.give(user_id, 4, expires_in=HOUR)
        await stubs.give(user_id, 3, expires_in=HOUR)  # the same second or later
        await stubs.give(user_id, 5, expires_in=2 * HOUR)

        balance = await stubs.balance(user_id)
        grants = await stubs.credit.ListGrants(
            credit_pb.ListGrantsRequest(user_id=user_id), metadata=ADMIN_METADATA
        )

    expiry = {g.grant_id: g.expire_time.ToDatetime() for g in grants.grants}
    assert balance.balance == 14
    assert balance.next_expire_time.ToDatetime() == expiry[soon.grant_id]
    assert balance.next_expire_amount == sum(
        g.remaining for g in grants.grants if g.expire_time == balance.next_expire_time
    )
    assert balance.next_expire_amount in (4, 7)


# --- expiring ---------------------------------------------------------------------------------


async def test_an_expired_grant_leaves_the_balance_at_once_and_the_next_write_writes_it_off(
    database_dsn, tmp_path
):
    async with (
        running_server(quiet_settings(tmp_path), database_dsn) as own,
        grpc.aio.insecure_channel(f"127.0.0.1:{own.grpc_port}") as channel,
        http_client(own.http_port) as http,
    ):
        stubs = Stubs(channel)
        user_id = await stubs.user()
        expiring = await stubs.give(user_id, 5, expires_in=HOUR)
        await stubs.pay(user_id, 3)
        assert (await stubs.balance(user_id)).balance == 8

        await time_passes_for_grants(database_dsn, user_id, 2 * HOUR)

        # Out of the balance everywhere a user looks, before anything is written.
        assert (await stubs.balance(user_id)).balance == 3
        legacy = await call(http, "GET", f"/user/{user_id}/balance")
        listed = await call(http, "GET", "/admin/users", headers=ADMIN_HEADERS)
        assert legacy.body["balance"] == 3
        assert {u["user_id"]: u["current_credits"] for u in listed.body}[user_id] == 3
        assert await expirations(database_dsn, user_id) == []

        # The next write writes it off first, so every entry's balance_after is exact.
        vended = await stubs.vend(user_id)
        history = await stubs.history(user_id)

    assert vended.balance_after == 2
    assert [(t.type, t.amount, t.balance_after) for t in history[:2]] == [
        (ledger_pb2.TRANSACTION_TYPE_SPEND, 1, 2),
        (ledger_pb2.TRANSACTION_TYPE_EXPIRATION, 5, 3),
    ]
    assert history[1].grant_id == expiring.grant_id
    assert await expirations(database_dsn, user_id) == [(int(expiring.grant_id), 5, 3)]
    assert await ledger_of(database_dsn, user_id) == (
        2,
        Counter({"admin_add": 1, "add_webhook": 1, "expiration": 1, "spend": 1}),
    )


async def test_a_credit_writes_off_expired_grants_before_it_counts(database_dsn, tmp_path):
    async with (
        running_server(quiet_settings(tmp_path), database_dsn) as own,
        grpc.aio.insecure_channel(f"127.0.0.1:{own.grpc_port}") as channel,
    ):
        stubs = Stubs(channel)
        user_id = await stubs.user(signup=2)
        expiring = await stubs.give(user_id, 6, expires_in=HOUR)
        await time_passes_for_grants(database_dsn, user_id, 2 * HOUR)

        await stubs.pay(user_id, 4)
        history = await stubs.history(user_id)

    assert [(t.type, t.amount, t.balance_after) for t in history[:2]] == [
        (ledger_pb2.TRANSACTION_TYPE_ADD_WEBHOOK, 4, 6),
        (ledger_pb2.TRANSACTION_TYPE_EXPIRATION, 6, 2),
    ]
    assert await expirations(database_dsn, user_id) == [(int(expiring.grant_id), 6, 2)]


async def test_the_sweeper_writes_off_what_nobody_touched_when_its_round_comes(
    database_dsn, tmp_path
):
    async with (
        running_server(quiet_settings(tmp_path), database_dsn) as own,
        grpc.aio.insecure_channel(f"127.0.0.1:{own.grpc_port}") as channel,
    ):
        stubs = Stubs(channel)
        user_id = await stubs.user(signup=1)
        expiring = await stubs.give(user_id, 7, expires_in=HOUR)
        await time_passes_for_grants(database_dsn, user_id, 2 * HOUR)
        assert await expirations(database_dsn, user_id) == []

        clock_of(own).advance(own.settings.cache_refresh_seconds)

        async def written() -> bool:
            return bool(await expirations(database_dsn, user_id))

        await until(written, "the sweeper did not write the expiration off")
        balance = await stubs.balance(user_id)

    assert await expirations(database_dsn, user_id) == [(int(expiring.grant_id), 7, 1)]
    assert (balance.balance, balance.HasField("next_expire_time")) == (1, False)


async def test_a_grant_expires_by_the_databases_clock_within_seconds(server, database_dsn):
    # Real time, once: the grant expires a second from now and the sweeper runs every second.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stubs = Stubs(channel)
        user_id = await stubs.user(signup=2)
        expiring = await stubs.give(user_id, 3, expires_in=1)

        async def written() -> bool:
            return bool(await expirations(database_dsn, user_id))

        await until(written, "no expiration within 10 s of the grant's expire_time")
        grants = await stubs.credit.ListGrants(
            credit_pb.ListGrantsRequest(user_id=user_id), metadata=ADMIN_METADATA
        )
        history = await stubs.history(user_id)

    (entry,) = [t for t in history if t.type == ledger_pb2.TRANSACTION_TYPE_EXPIRATION]
    expire_time = {g.grant_id: g.expire_time.ToDatetime() for g in grants.grants}
    late = entry.create_time.ToDatetime() - expire_time[expiring.grant_id]
    assert timedelta(0) <= late < timedelta(seconds=10)
    assert (entry.amount, entry.balance_after) == (3, 2)


async def test_signup_credits_last_as_long_as_configured(database_dsn, tmp_path):
    settings = settings_for_test(tmp_path, signup_credits_ttl=timedelta(days=30))
    async with (
        running_server(settings, database_dsn) as own,
        grpc.aio.insecure_channel(f"127.0.0.1:{own.grpc_port}") as channel,
    ):
        stubs = Stubs(channel)
        user_id = await stubs.user(signup=5)
        await stubs.pay(user_id, 2)
        balance = await stubs.balance(user_id)
        lasting = balance.next_expire_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)

        await time_passes_for_grants(database_dsn, user_id, 31 * 86_400)

        assert (await stubs.balance(user_id)).balance == 2
    assert (balance.balance, balance.next_expire_amount) == (7, 5)
    assert timedelta(days=29) < lasting <= timedelta(days=30)


# --- exactly once, whatever races -----------------------------------------------------------


async def test_sweepers_and_spends_racing_write_each_expiration_exactly_once(
    server: PluctServer, database_dsn
):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stubs = Stubs(channel)
        users = [await stubs.user(signup=10) for _ in range(20)]
        for user_id in users:
            await stubs.give(user_id, 4, expires_in=HOUR, priority=0)
            await stubs.give(user_id, 2, expires_in=2 * HOUR, priority=0)
            await time_passes_for_grants(database_dsn, user_id, 3 * HOUR)

        async def sweep() -> None:
            # As another replica's sweeper does: its own connection, the same function.
            conn = await asyncpg.connect(database_dsn)
            try:
                for _ in range(5):
                    await conn.fetchrow("SELECT * FROM pluct_sweep_expired_grants(3)")
            finally:
                await conn.close()

        async def spend(user_id: str) -> None:
            for _ in range(3):
                await stubs.vend(user_id)

        await asyncio.gather(*(sweep() for _ in range(4)), *(spend(u) for u in users))
        await sweep()

    for user_id in users:
        written = await expirations(database_dsn, user_id)
        assert sorted(amount for _, amount, _ in written) == [2, 4], (user_id, written)
        assert await ledger_of(database_dsn, user_id) == (
            7,
            Counter({"user_creation": 1, "admin_add": 2, "expiration": 2, "spend": 3}),
        )


async def test_spends_racing_a_grants_expiry_draw_or_expire_each_credit_exactly_once(
    server, database_dsn
):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stubs = Stubs(channel)
        user_id = await stubs.user()
        await stubs.pay(user_id, 1000)
        # Drawn first (priority 0) until it expires, a second from now, mid-stream.
        expiring = await stubs.give(user_id, 10_000, expires_in=1, priority=0)

        async def written() -> bool:
            return bool(await expirations(database_dsn, user_id))

        async def spender() -> None:
            while not await written():
                await stubs.vend(user_id)

        await asyncio.wait_for(asyncio.gather(*(spender() for _ in range(8))), 15)
        history = await stubs.history(user_id)
        conn = await asyncpg.connect(database_dsn)
        try:
            drawn = await conn.fetchval(
                "SELECT coalesce(sum(d.amount), 0) FROM ledger l,"
                " unnest(l.draw_grant_ids, l.draw_amounts) AS d(grant_id, amount)"
                " WHERE l.user_id = $1 AND d.grant_id = $2",
                user_id,
                int(expiring.grant_id),
            )
            remaining = await conn.fetchval(
                "SELECT remaining FROM grants WHERE user_id = $1 AND grant_id = $2",
                user_id,
                int(expiring.grant_id),
            )
        finally:
            await conn.close()

    ((_, expired, _),) = await expirations(database_dsn, user_id)
    assert drawn > 0 and expired > 0
    assert drawn + expired == 10_000
    assert remaining == 0
    # Every spend after the expiration drew from the payment.
    assert any(t.type == ledger_pb2.TRANSACTION_TYPE_SPEND for t in history)


async def test_over_http_an_expire_time_is_an_rfc_3339_time(http, credit, database_dsn):
    user_id = new_user_id("http-expiry")
    await credit.CreateUser(credit_pb.CreateUserRequest(user_id=user_id, initial_credits=1))
    later = (datetime.now(UTC) + timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")

    granted = await call(
        http,
        "POST",
        "/admin/credits/add",
        json_body={"userId": user_id, "amount": 3, "expireTime": later},
        headers=ADMIN_HEADERS,
    )
    refused = [
        await call(
            http,
            "POST",
            "/admin/credits/add",
            json_body={"userId": user_id, "amount": 3, "expireTime": value},
            headers=ADMIN_HEADERS,
        )
        for value in ("next week", 1700000000, {"seconds": 1})
    ]
    grants = await call(http, "GET", f"/user/{user_id}/grants", headers=ADMIN_HEADERS)

    assert granted.status == 200, granted.body
    assert [reply.status for reply in refused] == [400, 400, 400]
    assert all("RFC 3339" in reply.body["error"] for reply in refused)
    assert [g.get("expireTime") for g in grants.body["grants"]] == [
        later.replace("Z", ".000Z"),
        None,
    ]
    assert await ledger_of(database_dsn, user_id) == (
        4,
        Counter({"user_creation": 1, "admin_add": 1}),
    )
