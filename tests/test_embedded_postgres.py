"""The embedded PostgreSQL: one server per data folder, found again by a second starter."""

from __future__ import annotations

import asyncpg

from pluct_server.store.embedded import EmbeddedPostgres


async def test_second_starter_reuses_the_running_server_and_only_the_owner_stops_it(tmp_path):
    owner = EmbeddedPostgres(tmp_path / "pg")
    dsn = owner.start()
    try:
        visitor = EmbeddedPostgres(tmp_path / "pg")
        assert visitor.start() == dsn
        assert owner.started_by_us and not visitor.started_by_us
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        owner.stop()
    assert not owner.is_running()
    owner.stop()  # stopping a stopped server is a no-op


async def test_data_survives_a_restart(tmp_path):
    server = EmbeddedPostgres(tmp_path / "pg")
    dsn = server.start()
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE kept (value int); INSERT INTO kept VALUES (42)")
    await conn.close()
    server.stop()

    dsn = server.start()
    try:
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT value FROM kept") == 42
        await conn.close()
    finally:
        server.stop()
