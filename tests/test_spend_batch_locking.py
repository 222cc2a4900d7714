"""Spend batches and single calls take their locks in one order: they never deadlock."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from pluct.credit.v1 import credit_service_pb2 as credit_pb

from pluct_server.store.limit_store import _CHARGE, _charge_arguments
from pluct_server.store.spend_batch import _SPEND_BATCH as _BATCH
from pluct_server.store.spend_batch import SpendRequest, batch_arguments
from pluct_server.values.charges import Charge
from pluct_server.values.records import RequestKey, TokenClaims
from pluct_server.values.settings import Rate
from tests.support import ADMIN_METADATA, new_user_id


def _spend(user_id: str, request_id: str | None = None, caller: str = "review") -> SpendRequest:
    now = datetime.now(UTC).replace(microsecond=0)
    claims = TokenClaims(user_id, uuid.uuid4(), now, now + timedelta(seconds=60))
    key = None
    if request_id is not None:
        key = RequestKey(caller, "vend", request_id, "fp-" + user_id, timedelta(hours=1))
    return SpendRequest(claims, key, ())


async def _wait_until_blocked(db: asyncpg.Connection, pids: set[int]) -> None:
    """Wait until every backend in `pids` waits on a lock."""
    for _ in range(400):
        waiting = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[]) "
            "AND wait_event_type = 'Lock'",
            list(pids),
        )
        if waiting == len(pids):
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the backends never blocked")


async def test_spend_batches_do_not_deadlock_when_a_user_is_created_during_a_batch(
    server, credit, db, database_dsn
):
    prefix = new_user_id("dl")
    early, hot = f"{prefix}-a", f"{prefix}-b"  # early < hot in every collation
    await credit.CreateUser(
        credit_pb.CreateUserRequest(user_id=hot, initial_credits=5), metadata=ADMIN_METADATA
    )
    holder = await asyncpg.connect(database_dsn)
    first = await asyncpg.connect(database_dsn)
    second = await asyncpg.connect(database_dsn)
    try:
        # A batch before holds the hot user (as under load, batches queue on a hot user's row).
        hold = holder.transaction()
        await hold.start()
        await holder.execute("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", hot)
        # Batch 1: a vend for `early` (not created yet) and one for the hot user; it waits.
        batch1 = asyncio.ensure_future(
            first.fetch(_BATCH, *batch_arguments([_spend(early), _spend(hot)]))
        )
        await _wait_until_blocked(db, {first.get_server_pid()})
        # Meanwhile `early` signs up, and batch 2 (early, hot) locks early, then waits for hot.
        await credit.CreateUser(
            credit_pb.CreateUserRequest(user_id=early, initial_credits=5), metadata=ADMIN_METADATA
        )
        batch2 = asyncio.ensure_future(
            second.fetch(_BATCH, *batch_arguments([_spend(early), _spend(hot)]))
        )
        await _wait_until_blocked(db, {first.get_server_pid(), second.get_server_pid()})
        await hold.rollback()

        results = await asyncio.gather(batch1, batch2, return_exceptions=True)
    finally:
        for conn in (holder, first, second):
            await conn.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == [], errors


async def test_spend_batches_for_users_without_a_row_claim_no_request_keys(
    server, db, database_dsn
):
    # Only an existing user's row lock serialises the claims of its request keys. A vend for a
    # user with no row claims nothing, so two batches can never wait on each other's keys, in
    # whatever order they list them (this once deadlocked).
    prefix = new_user_id("dk")
    a, w, z = f"{prefix}-a", f"{prefix}-w", f"{prefix}-z"
    blocker = await asyncpg.connect(database_dsn)
    first = await asyncpg.connect(database_dsn)
    second = await asyncpg.connect(database_dsn)
    try:
        # Something else is claiming w's key right now.
        hold = blocker.transaction()
        await hold.start()
        await blocker.execute(
            "INSERT INTO request_keys (user_id, caller, operation, request_id, fingerprint, "
            "expire_time) VALUES ($1, 'review', 'vend', 'r3', 'fp-' || $1, now() + interval '1h')",
            w,
        )
        batch1 = first.fetch(
            _BATCH, *batch_arguments([_spend(a, "r1"), _spend(w, "r3"), _spend(z, "r2")])
        )
        batch2 = second.fetch(_BATCH, *batch_arguments([_spend(z, "r2"), _spend(a, "r1")]))
        results = await asyncio.wait_for(asyncio.gather(batch1, batch2), timeout=10)
        await hold.rollback()
    finally:
        for conn in (blocker, first, second):
            await conn.close()
    outcomes = [row["outcome"] for rows in results for row in rows]
    assert outcomes == ["insufficient"] * 5
    claimed = await db.fetchval(
        "SELECT count(*) FROM request_keys WHERE user_id = ANY($1::text[])", [a, w, z]
    )
    assert claimed == 0


async def test_a_call_charging_counters_and_a_batch_charging_the_same_do_not_deadlock(
    server, db, database_dsn
):
    # A single call charges its counters in whatever order it lists them; a batch locks them
    # sorted. Both must lock in the same order, or each holds one the other waits for.
    prefix = new_user_id("dc")
    low, high = f"{prefix}-a", f"{prefix}-b"
    rate = Rate(1000, 1)
    call_charges = [Charge(high, "vend", rate), Charge(low, "vend", rate)]
    holder = await asyncpg.connect(database_dsn)
    batcher = await asyncpg.connect(database_dsn)
    caller = await asyncpg.connect(database_dsn)
    try:
        await holder.execute(
            "INSERT INTO rate_limits VALUES ($1, 'vend', now(), interval '1 s')", low
        )
        hold = holder.transaction()
        await hold.start()
        await holder.execute("SELECT 1 FROM rate_limits WHERE subject = $1 FOR UPDATE", low)
        spend = _spend(new_user_id("dc"))
        spend = SpendRequest(spend.claims, None, tuple(call_charges))
        batch = asyncio.ensure_future(batcher.fetch(_BATCH, *batch_arguments([spend])))
        await _wait_until_blocked(db, {batcher.get_server_pid()})
        call = asyncio.ensure_future(caller.fetchrow(_CHARGE, *_charge_arguments(call_charges)))
        await _wait_until_blocked(db, {batcher.get_server_pid(), caller.get_server_pid()})
        await hold.rollback()

        results = await asyncio.gather(batch, call, return_exceptions=True)
    finally:
        for conn in (holder, batcher, caller):
            await conn.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == [], errors
