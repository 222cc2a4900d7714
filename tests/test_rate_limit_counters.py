"""Rate-limit counters in PostgreSQL: forgetting idle ones changes no limit."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("database_dsn")


async def test_the_purge_forgets_idle_counters_and_keeps_live_ones(server, db, user_id):
    idle, live = f"{user_id}-idle", f"{user_id}-live"
    await db.execute(
        """
        INSERT INTO rate_limits (subject, bucket, tat, tolerance) VALUES
            ($1, 'vend', now() - interval '2 minutes', interval '1 minute'),
            ($2, 'vend', now() + interval '1 hour', interval '1 minute')
        """,
        idle,
        live,
    )

    assert server.guards is not None
    await server.guards.limiter.forget_spent_counters()

    left = await db.fetch(
        "SELECT subject FROM rate_limits WHERE subject = ANY($1::text[])", [idle, live]
    )
    # A counter whose allowance has long been whole is the same as none; a live one is a limit.
    assert [row["subject"] for row in left] == [live]


async def test_the_purge_does_not_wait_for_a_counter_a_call_holds(
    server, db, database_dsn, user_id
):
    import asyncpg

    held = f"{user_id}-held"
    await db.execute(
        "INSERT INTO rate_limits VALUES ($1, 'vend', now() - interval '2 minutes', interval '1 s')",
        held,
    )
    holder = await asyncpg.connect(database_dsn)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT 1 FROM rate_limits WHERE subject = $1 FOR UPDATE", held)

        assert server.guards is not None
        await server.guards.limiter.forget_spent_counters()  # would hang here if it waited

        await transaction.rollback()
    finally:
        await holder.close()
    assert await db.fetchval("SELECT count(*) FROM rate_limits WHERE subject = $1", held) == 1
