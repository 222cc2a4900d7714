"""Events, written with the money: every ledger entry writes its event in its own transaction."""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from pluct.admin.v1 import admin_service_pb2 as admin_pb
from pluct.credit.v1 import credit_service_pb2 as credit_pb
from pluct.credit.v1 import credit_service_pb2_grpc, ledger_pb2
from pluct.token.v1 import token_service_pb2 as token_pb
from pluct.token.v1 import token_service_pb2_grpc

from pluct_server.store.database import Database
from pluct_server.store.migrate import migrate as migrate_all
from tests.http_support import ADMIN_HEADERS, call
from tests.support import (
    ADMIN_METADATA,
    WEBHOOK_METADATA,
    clock_of,
    external_database_url,
    ledger_mismatches,
    new_request_id,
    new_user_id,
    running_server,
    schema_before,
    scratch_database,
    settings_for_test,
    time_passes_for_grants,
)

pytestmark = pytest.mark.usefixtures("database_dsn")

HOUR = 3600


async def events_and_entries(dsn: str, user_id: str) -> tuple[list[tuple[str, int]], list[int]]:
    """Return the user's events (type, ledger entry) in the order written, and its entry ids."""
    conn = await asyncpg.connect(dsn)
    try:
        events = await conn.fetch(
            "SELECT type, transaction_id FROM events WHERE user_id = $1 ORDER BY event_id", user_id
        )
        entries = await conn.fetch("SELECT id FROM ledger WHERE user_id = $1 ORDER BY id", user_id)
    finally:
        await conn.close()
    return [(e["type"], e["transaction_id"]) for e in events], [e["id"] for e in entries]


async def user_with(credit: Any, signup: int) -> str:
    user_id = new_user_id("evented")
    await credit.CreateUser(
        credit_pb.CreateUserRequest(user_id=user_id, initial_credits=signup),
        metadata=ADMIN_METADATA,
    )
    return user_id


async def priced(admin: Any, credits: int) -> str:
    feature = f"evented-{secrets.token_hex(5)}"
    await admin.SetPrice(
        admin_pb.SetPriceRequest(feature=feature, credits=credits), metadata=ADMIN_METADATA
    )
    return feature


async def test_every_movement_writes_one_event_of_its_kind_in_ledger_order(
    credit, admin, token, database_dsn
):
    user_id = await user_with(credit, 5)
    await credit.AddCredits(
        credit_pb.AddCreditsRequest(user_id=user_id, amount=7, event_id=new_request_id()),
        metadata=WEBHOOK_METADATA,
    )
    soon = Timestamp()
    soon.GetCurrentTime()
    soon.seconds += HOUR
    await admin.AddCredits(
        admin_pb.AddCreditsRequest(user_id=user_id, amount=4, priority=0, expire_time=soon),
        metadata=ADMIN_METADATA,
    )
    await token.VendToken(token_pb.VendTokenRequest(user_id=user_id))  # from the promotion
    history = await credit.ListTransactions(credit_pb.ListTransactionsRequest(user_id=user_id))
    spend = history.transactions[0]
    assert spend.type == ledger_pb2.TRANSACTION_TYPE_SPEND
    await admin.RefundSpend(
        admin_pb.RefundSpendRequest(transaction_id=spend.id), metadata=ADMIN_METADATA
    )
    await time_passes_for_grants(database_dsn, user_id, 2 * HOUR)
    # The next write writes the expired promotion off first, then spends.
    await token.VendToken(token_pb.VendTokenRequest(user_id=user_id))

    events, entries = await events_and_entries(database_dsn, user_id)

    assert [kind for kind, _ in events] == [
        "credits.granted",  # signup
        "credits.granted",  # payment
        "credits.granted",  # admin grant
        "credits.spent",
        "credits.refunded",
        "credits.expired",
        "credits.spent",
    ]
    assert [entry for _, entry in events] == entries


async def test_a_refused_call_writes_no_event(credit, admin, token, database_dsn):
    user_id = await user_with(credit, 2)
    before = await events_and_entries(database_dsn, user_id)
    expensive = await priced(admin, 3)
    attempts = [
        token.VendToken(token_pb.VendTokenRequest(user_id=user_id, feature=expensive)),
        token.VendToken(token_pb.VendTokenRequest(user_id=user_id, feature="no-such-feature")),
        token.VendToken(token_pb.VendTokenRequest(user_id=user_id, feature="Not A Name")),
        admin.AddCredits(
            admin_pb.AddCreditsRequest(user_id=user_id, amount=-1), metadata=ADMIN_METADATA
        ),
    ]
    codes = []
    for attempt in attempts:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await attempt
        codes.append(refused.value.code())

    assert codes == [
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
    ]
    assert await events_and_entries(database_dsn, user_id) == before


async def test_racing_vends_write_an_event_for_each_spend_and_none_for_a_refusal(
    credit, token, database_dsn
):
    user_id = await user_with(credit, 30)

    async def attempt() -> bool:
        try:
            await token.VendToken(token_pb.VendTokenRequest(user_id=user_id))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
            return False
        return True

    sold = sum(await asyncio.gather(*(attempt() for _ in range(100))))

    events, entries = await events_and_entries(database_dsn, user_id)
    assert sold == 30
    assert [kind for kind, _ in events] == ["credits.granted"] + ["credits.spent"] * 30
    assert [entry for _, entry in events] == entries


async def test_a_movement_whose_event_cannot_be_written_does_not_happen(
    credit, token, database_dsn
):
    user_id = await user_with(credit, 3)
    before = await events_and_entries(database_dsn, user_id)
    conn = await asyncpg.connect(database_dsn)
    try:
        balance = await conn.fetchval("SELECT balance FROM users WHERE user_id = $1", user_id)
        # The outbox refuses this user's events, as a full disk or a lost connection would.
        await conn.execute(
            f"ALTER TABLE events ADD CONSTRAINT refuse_{user_id.replace('-', '_')}"
            f" CHECK (user_id <> '{user_id}') NOT VALID"
        )
        try:
            with pytest.raises(grpc.aio.AioRpcError):
                await token.VendToken(token_pb.VendTokenRequest(user_id=user_id))
            after = await events_and_entries(database_dsn, user_id)
            balance_after = await conn.fetchval(
                "SELECT balance FROM users WHERE user_id = $1", user_id
            )
            grants = await conn.fetchval(
                "SELECT sum(remaining) FROM grants WHERE user_id = $1", user_id
            )
        finally:
            await conn.execute(
                f"ALTER TABLE events DROP CONSTRAINT refuse_{user_id.replace('-', '_')}"
            )
    finally:
        await conn.close()

    assert after == before
    assert balance_after == grants == balance == 3
    # With the outbox writable again, the same vend goes through, with its event.
    await token.VendToken(token_pb.VendTokenRequest(user_id=user_id))
    events, entries = await events_and_entries(database_dsn, user_id)
    assert [kind for kind, _ in events] == ["credits.granted", "credits.spent"]
    assert [entry for _, entry in events] == entries


async def test_events_begin_with_the_migration_that_makes_them(request):
    server_url = external_database_url() or request.getfixturevalue("embedded_postgres").dsn
    async with scratch_database(server_url) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await schema_before(conn, 14)
            await conn.execute(
                "SELECT * FROM pluct_credit('old', 5, 'admin_add', 'before events', 'tests',"
                " 'promotional', 50, 'admin', NULL, NULL, false, NULL, NULL, NULL, NULL)"
            )
            database = Database(dsn, max_size=1)
            await database.open()
            try:
                await migrate_all(database)
            finally:
                await database.close()
            await conn.execute(
                "SELECT * FROM pluct_credit('old', 2, 'admin_add', 'after events', 'tests',"
                " 'promotional', 50, 'admin', NULL, NULL, false, NULL, NULL, NULL, NULL)"
            )
        finally:
            await conn.close()
        events, entries = await events_and_entries(dsn, "old")

    assert len(entries) == 2
    assert events == [("credits.granted", entries[1])]


# --- listing them ---------------------------------------------------------------------------


async def test_list_events_gives_each_event_with_the_body_a_receiver_gets(credit, admin, token):
    user_id = await user_with(credit, 5)
    feature = await priced(admin, 3)
    vended = await token.VendToken(token_pb.VendTokenRequest(user_id=user_id, feature=feature))
    history = await credit.ListTransactions(credit_pb.ListTransactionsRequest(user_id=user_id))
    spend, granted = history.transactions[0], history.transactions[1]
    refunded = await admin.RefundSpend(
        admin_pb.RefundSpendRequest(transaction_id=spend.id, amount=1), metadata=ADMIN_METADATA
    )
    refund_of = refunded.refund

    listed = await admin.ListEvents(
        admin_pb.ListEventsRequest(user_id=user_id), metadata=ADMIN_METADATA
    )

    assert [e.type for e in listed.events] == [
        "credits.refunded",
        "credits.spent",
        "credits.granted",
    ]
    assert [e.transaction_id for e in listed.events] == [refund_of.id, spend.id, granted.id]
    assert [e.sequence for e in listed.events] == [refund_of.id, spend.id, granted.id]
    assert listed.next_page_token == ""
    bodies = [json.loads(e.payload) for e in listed.events]
    for event, body in zip(listed.events, bodies, strict=True):
        assert body["type"] == event.type
        moment = datetime.fromisoformat(body["timestamp"])
        assert moment == event.create_time.ToDatetime(tzinfo=UTC)
        assert body["timestamp"].endswith("Z")
    common = {"user_id": user_id}
    assert bodies[1]["data"] == {
        **common,
        "transaction_id": spend.id,
        "sequence": spend.id,
        "amount": 3,
        "balance_after": 2,
        "feature": feature,
        "credits_charged": 3,
        "token_id": vended.token_id,
    }
    assert bodies[0]["data"] == {
        **common,
        "transaction_id": refund_of.id,
        "sequence": refund_of.id,
        "amount": 1,
        "balance_after": 3,
        "refunded_transaction_id": spend.id,
    }
    grants = await credit.ListGrants(credit_pb.ListGrantsRequest(user_id=user_id))
    assert bodies[2]["data"] == {
        **common,
        "transaction_id": granted.id,
        "sequence": granted.id,
        "amount": 5,
        "balance_after": 5,
        "grant_id": grants.grants[0].grant_id,
        "source": "signup",
    }


async def test_events_page_newest_first_without_skipping_or_repeating(credit, admin, token):
    user_id = await user_with(credit, 7)
    for _ in range(6):
        await token.VendToken(token_pb.VendTokenRequest(user_id=user_id))
    seen: list[str] = []
    page_token = ""
    while True:
        page = await admin.ListEvents(
            admin_pb.ListEventsRequest(user_id=user_id, page_size=3, page_token=page_token),
            metadata=ADMIN_METADATA,
        )
        seen += [e.event_id for e in page.events]
        page_token = page.next_page_token
        if not page_token:
            break

    assert len(seen) == len(set(seen)) == 7
    assert [int(e) for e in seen] == sorted((int(e) for e in seen), reverse=True)


async def test_events_over_http_need_the_admin_secret(http, credit):
    user_id = await user_with(credit, 2)

    stranger = await call(http, "GET", f"/admin/users/{user_id}/events")
    answer = await call(http, "GET", f"/admin/users/{user_id}/events", headers=ADMIN_HEADERS)
    bad = await call(http, "GET", "/admin/users/a%00b/events", headers=ADMIN_HEADERS)

    assert stranger.status == 401
    assert answer.status == 200, answer.body
    (event,) = answer.body["events"]
    assert event["type"] == "credits.granted"
    assert json.loads(event["payload"])["data"]["amount"] == 2
    assert bad.status == 400
    assert "user" in json.dumps(bad.body).lower()


# --- retention --------------------------------------------------------------------------------


async def test_events_older_than_the_retention_go_and_their_entries_stay(request, tmp_path):
    server_url = external_database_url() or request.getfixturevalue("embedded_postgres").dsn
    settings = settings_for_test(tmp_path, events_retention=timedelta(hours=1))
    async with (
        scratch_database(server_url) as dsn,
        running_server(settings, dsn) as own,
        grpc.aio.insecure_channel(f"127.0.0.1:{own.grpc_port}") as channel,
    ):
        credit = credit_service_pb2_grpc.CreditServiceStub(channel)
        token = token_service_pb2_grpc.TokenServiceStub(channel)
        for user_id in ("early", "late"):
            await credit.CreateUser(
                credit_pb.CreateUserRequest(user_id=user_id, initial_credits=2),
                metadata=ADMIN_METADATA,
            )
            await token.VendToken(
                token_pb.VendTokenRequest(user_id=user_id), metadata=ADMIN_METADATA
            )
            if user_id == "early":
                await time_passes_for_history(dsn, 2 * HOUR)
        clock_of(own).advance(61)  # the next purge round is due

        async def early_events() -> int:
            events, _ = await events_and_entries(dsn, "early")
            return len(events)

        deadline = asyncio.get_running_loop().time() + 10
        while await early_events() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

        early = await events_and_entries(dsn, "early")
        late = await events_and_entries(dsn, "late")
        mismatches = await ledger_mismatches(dsn)

    assert early[0] == [] and len(early[1]) == 2
    assert [kind for kind, _ in late[0]] == ["credits.granted", "credits.spent"]
    assert mismatches == []


async def time_passes_for_history(dsn: str, seconds: float) -> None:
    """Move every ledger entry and event written so far `seconds` into the past."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            # The owner may lift the ledger's append-only trigger; nothing else ever does.
            await conn.execute("ALTER TABLE ledger DISABLE TRIGGER ledger_append_only")
            await conn.execute(
                "UPDATE ledger SET created_at = created_at - make_interval(secs => $1)", seconds
            )
            await conn.execute(
                "UPDATE events SET create_time = create_time - make_interval(secs => $1)", seconds
            )
            await conn.execute("ALTER TABLE ledger ENABLE TRIGGER ledger_append_only")
    finally:
        await conn.close()


async def test_a_temporary_table_named_events_never_takes_a_ledger_entrys_event(
    server, serving_dsn, database_dsn
):
    user_id = new_user_id("diverted")
    conn = await asyncpg.connect(serving_dsn)  # as the role the server serves as
    try:
        await conn.execute(
            "CREATE TEMP TABLE events (user_id text, event_id bigint, type text,"
            " transaction_id bigint, create_time timestamptz)"
        )
        await conn.execute(
            "SELECT * FROM pluct_credit($1, 4, 'admin_add', 'diverted?', 'tests',"
            " 'promotional', 50, 'admin', NULL, NULL, false, NULL, NULL, NULL, NULL)",
            user_id,
        )
        diverted = await conn.fetchval("SELECT count(*) FROM pg_temp.events")
    finally:
        await conn.close()

    events, entries = await events_and_entries(database_dsn, user_id)
    assert diverted == 0
    assert events == [("credits.granted", entries[0])]
