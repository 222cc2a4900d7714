"""One namespace of payment event ids: an event is credited once, whatever channel or user."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc

from pluct_server.app.server import PluctServer
from pluct_server.security import webhooks
from pluct_server.store.database import Database
from pluct_server.store.migrate import (
    load_migrations,
    migrate,
)
from tests.http_support import WEBHOOK_HEADERS, call
from tests.support import (
    WEBHOOK_METADATA,
    WEBHOOK_SECRET,
    caller_key,
    error_reason,
    external_database_url,
    ledger_of,
    new_request_id,
    new_user_id,
    running_server,
    schema_before,
    scratch_database,
    settings_for_test,
)

pytestmark = pytest.mark.usefixtures("database_dsn")

# What a payment answered: ("ok", new balance) or ("refused", ErrorInfo reason).
Outcome = tuple[str, int | str]
Channel = Callable[[str, int, str], Awaitable[Outcome]]
CHANNELS = ["legacy-secret-http", "legacy-secret-grpc", "signed-http", "api-key-grpc"]
REFUSED = ("refused", "PAYMENT_EVENT_REUSED")


def new_event_id() -> str:
    """A payment provider's event id no other test uses."""
    return f"evt_{new_request_id()}"


class Channels:
    """Every way the provider's word can reach the service, each answering an Outcome."""

    def __init__(self, http: aiohttp.ClientSession, grpc_channel: grpc.aio.Channel, key: str):
        self._http = http
        self._credit = credit_service_pb2_grpc.CreditServiceStub(grpc_channel)
        self._key = (("authorization", f"Bearer {key}"),)

    def __getitem__(self, name: str) -> Channel:
        return {
            "legacy-secret-http": self._secret_http,
            "legacy-secret-grpc": self._secret_grpc,
            "signed-http": self._signed_http,
            "api-key-grpc": self._key_grpc,
        }[name]

    async def _secret_http(self, user_id: str, amount: int, event: str) -> Outcome:
        reply = await call(
            self._http,
            "POST",
            "/add-credits",
            json_body={"userId": user_id, "amount": amount},
            headers={**WEBHOOK_HEADERS, "Idempotency-Key": event},
        )
        return _http_outcome(reply.status, reply.body)

    async def _signed_http(self, user_id: str, amount: int, event: str) -> Outcome:
        raw = json.dumps({"userId": user_id, "amount": amount, "eventId": event}).encode()
        header = webhooks.sign(raw, WEBHOOK_SECRET, int(time.time()))
        reply = await call(
            self._http,
            "POST",
            "/add-credits",
            data=raw,
            headers={webhooks.SIGNATURE_HEADER: header, "Content-Type": "application/json"},
        )
        return _http_outcome(reply.status, reply.body)

    async def _secret_grpc(self, user_id: str, amount: int, event: str) -> Outcome:
        request = credit_pb.AddCreditsRequest(user_id=user_id, amount=amount, request_id=event)
        return await _grpc_outcome(self._credit.AddCredits(request, metadata=WEBHOOK_METADATA))

    async def _key_grpc(self, user_id: str, amount: int, event: str) -> Outcome:
        request = credit_pb.AddCreditsRequest(user_id=user_id, amount=amount, event_id=event)
        return await _grpc_outcome(self._credit.AddCredits(request, metadata=self._key))


def _http_outcome(status: int, body: Any) -> Outcome:
    if status == 200:
        return "ok", int(body["newBalance"])
    assert (status, body["error"]) == (409, "Payment event already used"), (status, body)
    return "refused", str(body["reason"])


async def _grpc_outcome(answer: Awaitable[credit_pb.AddCreditsResponse]) -> Outcome:
    try:
        return "ok", int((await answer).new_balance)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error.details()
        return "refused", error_reason(error)[0]


@pytest.fixture(scope="module")
async def provider_key(server: PluctServer) -> str:
    """The payment provider's API key: credits:grant, made with the bootstrap's authority."""
    return await caller_key(server, ("credits:grant",), name="payment-provider")


@pytest.fixture
async def channels(
    http: aiohttp.ClientSession, bare_channel: grpc.aio.Channel, provider_key: str
) -> AsyncIterator[Channels]:
    """The four payment channels of the shared server."""
    yield Channels(http, bare_channel, provider_key)


async def events(db: asyncpg.Connection, event: str) -> list[tuple[Any, ...]]:
    """The stored payment event rows with this id."""
    rows = await db.fetch(
        "SELECT event_id, user_id, amount, balance_after FROM payment_events WHERE event_id = $1",
        event,
    )
    return [tuple(row) for row in rows]


@pytest.mark.parametrize("first", CHANNELS)
async def test_one_event_through_every_channel_is_credited_once(channels, database_dsn, db, first):
    user_id = new_user_id("payer")
    event = new_event_id()

    assert await channels[first](user_id, 7, event) == ("ok", 7)
    replays = [await channels[name](user_id, 7, event) for name in CHANNELS]

    assert replays == [("ok", 7)] * len(CHANNELS)
    assert await ledger_of(database_dsn, user_id) == (7, Counter({"add_webhook": 1}))
    assert await events(db, event) == [(event, user_id, 7, 7)]


async def test_the_same_event_through_every_channel_at_once_credits_once(
    channels, database_dsn, db
):
    user_id = new_user_id("storm")
    event = new_event_id()

    answers = await asyncio.gather(
        *(channels[CHANNELS[n % len(CHANNELS)]](user_id, 9, event) for n in range(32))
    )

    assert set(answers) == {("ok", 9)}
    assert await ledger_of(database_dsn, user_id) == (9, Counter({"add_webhook": 1}))
    assert await events(db, event) == [(event, user_id, 9, 9)]


@pytest.mark.parametrize("replay", CHANNELS)
async def test_an_event_id_for_another_user_or_amount_is_refused_and_credits_nothing(
    channels, database_dsn, db, replay
):
    payer, other = new_user_id("payer"), new_user_id("other")
    event = new_event_id()
    assert await channels["legacy-secret-http"](payer, 7, event) == ("ok", 7)
    paid = await ledger_of(database_dsn, payer)
    existing = new_user_id("existing")
    assert await channels["api-key-grpc"](existing, 3, new_event_id()) == ("ok", 3)

    # Another user (new, and existing), and the right user with another amount.
    assert await channels[replay](other, 7, event) == REFUSED
    assert await channels[replay](existing, 7, event) == REFUSED
    assert await channels[replay](payer, 700, event) == REFUSED

    assert await ledger_of(database_dsn, payer) == paid
    assert await ledger_of(database_dsn, other) == (None, Counter())
    assert await ledger_of(database_dsn, existing) == (3, Counter({"add_webhook": 1}))
    assert await events(db, event) == [(event, payer, 7, 7)]
    # The true payment, repeated, is still answered as the first time.
    assert await channels[replay](payer, 7, event) == ("ok", 7)


async def test_one_event_for_many_users_at_once_credits_exactly_one(channels, database_dsn, db):
    users = [new_user_id(f"race{n}") for n in range(12)]
    event = new_event_id()

    answers = await asyncio.gather(
        *(
            channels[CHANNELS[n % len(CHANNELS)]](user_id, 5, event)
            for n, user_id in enumerate(users)
        )
    )

    assert sorted(answers) == sorted([("ok", 5)] + [REFUSED] * (len(users) - 1))
    paid = users[answers.index(("ok", 5))]
    assert await events(db, event) == [(event, paid, 5, 5)]
    for user_id in users:
        expected = (5, Counter({"add_webhook": 1})) if user_id == paid else (None, Counter())
        assert await ledger_of(database_dsn, user_id) == expected


async def test_payments_without_an_event_id_are_each_credited(channels, database_dsn, http):
    # The legacy webhook never had to send an id: each such call is a payment of its own.
    user_id = new_user_id("no-id")
    for _ in range(2):
        reply = await call(
            http,
            "POST",
            "/add-credits",
            json_body={"userId": user_id, "amount": 4},
            headers=WEBHOOK_HEADERS,
        )
        assert reply.status == 200
    assert await ledger_of(database_dsn, user_id) == (8, Counter({"add_webhook": 2}))


# --- The migration: payment ids paid before it become the one namespace ---------------------------


async def _old_payment(
    conn: asyncpg.Connection, user_id: str, amount: int, caller: str, event: str
) -> int:
    """Credit a payment as the schema before payment_events stored it; return its ledger id."""
    balance = await conn.fetchval(
        "INSERT INTO users AS u (user_id, balance, transaction_count) VALUES ($1, $2, 1) "
        "ON CONFLICT (user_id) DO UPDATE SET balance = u.balance + EXCLUDED.balance, "
        "transaction_count = u.transaction_count + 1 RETURNING balance",
        user_id,
        amount,
    )
    ledger_id = await conn.fetchval(
        "INSERT INTO ledger (user_id, type, amount, balance_after, reason, request_id, actor) "
        "VALUES ($1, 'add_webhook', $2, $3, 'Payment gateway', $4, $5) RETURNING id",
        user_id,
        amount,
        balance,
        event,
        caller,
    )
    await conn.execute(
        "INSERT INTO request_keys (user_id, caller, operation, request_id, fingerprint, "
        "ledger_id) VALUES ($1, $2, 'payment', $3, 'fp', $4)",
        user_id,
        caller,
        event,
        ledger_id,
    )
    return int(ledger_id)


async def test_the_migration_keeps_every_paid_event_and_the_first_of_each(request, tmp_path):
    server_url = external_database_url() or request.getfixturevalue("embedded_postgres").dsn
    async with scratch_database(server_url) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await schema_before(conn, 8)
            # One event paid through two channels; one event paid to two users; one alone.
            await _old_payment(conn, "alice", 5, "webhook", "evt_twice")
            await _old_payment(conn, "alice", 5, "a1b2c3d4e5f60718", "evt_twice")
            await _old_payment(conn, "alice", 2, "webhook", "evt_two_users")
            await _old_payment(conn, "bob", 3, "a1b2c3d4e5f60718", "evt_two_users")
            await _old_payment(conn, "bob", 4, "webhook", "evt_once")
            await conn.execute(
                "INSERT INTO request_keys (user_id, caller, operation, request_id, fingerprint, "
                "expire_time) VALUES ('bob', 'webhook', 'webhook_signature', 'digest', 'fp', "
                "now() + interval '10 minutes'), ('bob', 'public@10.0.0.1', 'vend', 'job-1', "
                "'fp', now() + interval '1 day')"
            )
            history = await conn.fetch("SELECT * FROM ledger ORDER BY id")

            database = Database(dsn, max_size=1)
            await database.open()
            try:
                assert await migrate(database) == [m.version for m in load_migrations()][7:]
            finally:
                await database.close()

            moved = await conn.fetch(
                "SELECT event_id, user_id, amount, balance_after FROM payment_events "
                "ORDER BY event_id"
            )
            keys = await conn.fetch("SELECT operation, request_id FROM request_keys")
            # Every entry as it was (later migrations may add columns, never change values).
            columns = ", ".join(history[0].keys())
            assert await conn.fetch(f"SELECT {columns} FROM ledger ORDER BY id") == history  # noqa: S608 - column names read back from the table itself
        finally:
            await conn.close()

        assert [tuple(row) for row in moved] == [
            ("evt_once", "bob", 4, 7),
            ("evt_twice", "alice", 5, 5),
            ("evt_two_users", "alice", 2, 12),
        ]
        assert [tuple(row) for row in keys] == [("vend", "job-1")]

        # Served on the migrated schema: the first payment of each answers, nothing more moves.
        async with (
            running_server(settings_for_test(tmp_path), dsn) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel,
        ):
            credit = credit_service_pb2_grpc.CreditServiceStub(channel)

            async def pay(user_id: str, amount: int, event: str) -> Outcome:
                request = credit_pb.AddCreditsRequest(
                    user_id=user_id, amount=amount, event_id=event
                )
                return await _grpc_outcome(credit.AddCredits(request, metadata=WEBHOOK_METADATA))

            assert await pay("alice", 5, "evt_twice") == ("ok", 5)
            assert await pay("alice", 2, "evt_two_users") == ("ok", 12)
            assert await pay("bob", 3, "evt_two_users") == REFUSED
            assert await pay("bob", 4, "evt_once") == ("ok", 7)
        assert await ledger_of(dsn, "alice") == (12, Counter({"add_webhook": 3}))
        assert await ledger_of(dsn, "bob") == (7, Counter({"add_webhook": 2}))
