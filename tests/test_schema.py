"""The database itself guards the money: no negative balance, no edited history, safe migrations."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import asyncpg
import pytest

from pluct_server.store.database import Database
from pluct_server.store.migrate import apply_functions, load_functions, load_migrations, migrate
from tests.support import external_database_url, new_user_id, scratch_database


@pytest.fixture
async def conn(database_dsn, server):
    connection = await asyncpg.connect(database_dsn)
    yield connection
    await connection.close()


async def test_postgres_refuses_a_negative_balance(conn):
    user_id = new_user_id()
    await conn.execute("INSERT INTO users (user_id) VALUES ($1)", user_id)

    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE users SET balance = -1 WHERE user_id = $1", user_id)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger SET amount = amount + 1 WHERE user_id = $1",
        "DELETE FROM ledger WHERE user_id = $1",
        "TRUNCATE ledger CASCADE",
    ],
)
async def test_the_ledger_is_append_only(conn, statement):
    # Even as the owner, on a row of the test's own; in a transaction rolled back whatever
    # happens, so a missing trigger fails this test and changes nothing.
    user_id = new_user_id()
    await conn.execute(
        "INSERT INTO users (user_id, balance, transaction_count) VALUES ($1, 1, 1)", user_id
    )
    grant_id = await conn.fetchval(
        "INSERT INTO grants (user_id, category, priority, amount, remaining, source)"
        " VALUES ($1, 'promotional', 50, 1, 1, 'admin') RETURNING grant_id",
        user_id,
    )
    await conn.execute(
        "INSERT INTO ledger (user_id, type, amount, balance_after, grant_id)"
        " VALUES ($1, 'admin_add', 1, 1, $2)",
        user_id,
        grant_id,
    )
    before = await conn.fetch("SELECT id, amount FROM ledger WHERE user_id = $1", user_id)
    transaction = conn.transaction()
    await transaction.start()
    try:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute(statement, *([user_id] if "$1" in statement else []))
    finally:
        await transaction.rollback()
    assert await conn.fetch("SELECT id, amount FROM ledger WHERE user_id = $1", user_id) == before


async def test_replicas_migrating_at_once_apply_each_migration_once(request):
    server_url = external_database_url() or request.getfixturevalue("embedded_postgres").dsn
    async with scratch_database(server_url) as dsn:
        databases = [Database(dsn, max_size=1) for _ in range(5)]
        for database in databases:
            await database.open()
        try:
            applied = await asyncio.gather(*(migrate(database) for database in databases))
        finally:
            for database in databases:
                await database.close()
        conn = await asyncpg.connect(dsn)
        try:
            versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        finally:
            await conn.close()

    every_version = [migration.version for migration in load_migrations()]
    assert sorted(v for batch in applied for v in batch) == every_version
    assert [row["version"] for row in versions] == every_version


def test_migration_files_must_be_numbered_without_gaps(tmp_path):
    (tmp_path / "0001_first.sql").write_text("SELECT 1;")
    (tmp_path / "0003_third.sql").write_text("SELECT 1;")

    with pytest.raises(ValueError, match="0002"):
        load_migrations(tmp_path)


# The tables the hot statements (vend, credit, create, read) write or read by key, each keyed by
# user; payment_events alone is keyed by the event id (see the last test).
USER_KEYED_TABLES = ("users", "ledger", "request_keys")


async def unique_keys(conn: asyncpg.Connection, table: str) -> dict[str, list[str]]:
    """Every primary and unique key of `table`: its name, and its columns in name order."""
    rows = await conn.fetch(
        """
        SELECT c.conname, array_agg(a.attname ORDER BY a.attname) AS columns
          FROM pg_constraint c
          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
         WHERE c.conrelid = $1::regclass AND c.contype IN ('p', 'u')
         GROUP BY c.conname
        """,
        table,
    )
    return {row["conname"]: list(row["columns"]) for row in rows}


@pytest.mark.parametrize("table", USER_KEYED_TABLES)
async def test_hot_tables_carry_user_id_in_every_primary_and_unique_key(conn, table):
    # What sharding by user (Citus) requires: no key that two users' rows could share.
    keys = await unique_keys(conn, table)

    assert keys, f"{table} has no primary key"
    assert all("user_id" in columns for columns in keys.values()), keys


async def test_payment_events_are_keyed_by_the_event_id_alone(conn):
    # On purpose, against the rule above: one payment provider, one namespace of event ids, so
    # an event id names one payment whoever sends it for whichever user. Sharded, this table is
    # distributed by event_id, and a payment is a transaction over two shards (README, Scaling).
    assert await unique_keys(conn, "payment_events") == {"payment_events_pkey": ["event_id"]}


REPO = Path(__file__).resolve().parent.parent
FUNCTION_FILES = {path.name for path in (REPO / "pluct_server/store/sql").glob("*.sql")}
SOURCE_FILES = [
    path
    for pattern in ("pluct_server/**/*.sql", "pluct_server/**/*.py")
    for path in REPO.glob(pattern)
]


def test_every_sql_function_is_defined_in_exactly_one_file():
    definition = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(\w+)", re.IGNORECASE)
    files_by_name: dict[str, set[str]] = {}
    for path in SOURCE_FILES:
        for name in definition.findall(path.read_text(encoding="utf-8")):
            files_by_name.setdefault(name, set()).add(path.name)

    assert files_by_name, "no function found: the pattern is wrong"
    assert {name: files for name, files in files_by_name.items() if len(files) > 1} == {}
    assert all(files <= FUNCTION_FILES for files in files_by_name.values()), files_by_name


def test_the_rate_limit_rule_is_written_once():
    # GCRA's arithmetic, `greatest(tat, now())`, lives in pluct_gcra_tat alone; every statement
    # that charges a counter asks it.
    arithmetic = re.compile(r"greatest\(\s*\w*\.?tat\s*,\s*now\(\)\s*\)", re.IGNORECASE)
    charges = re.compile(r"(?:INSERT\s+INTO|UPDATE)\s+rate_limits\b", re.IGNORECASE)
    texts = {path.name: path.read_text(encoding="utf-8") for path in SOURCE_FILES}

    assert {name for name, text in texts.items() if arithmetic.search(text)} == {"rate_limits.sql"}
    chargers = {name for name, text in texts.items() if charges.search(text)}
    assert chargers == {"limit_store.py", "pluct_spend_batch.sql"}
    assert all("pluct_gcra_tat(" in texts[name] for name in chargers)


async def test_a_function_file_is_applied_again_when_its_text_changes(request, tmp_path):
    server_url = external_database_url() or request.getfixturevalue("embedded_postgres").dsn
    async with scratch_database(server_url) as dsn:
        database = Database(dsn, max_size=1)
        await database.open()
        try:
            await migrate(database)
            changed = tmp_path / "sql"
            changed.mkdir()
            for function in load_functions():
                (changed / f"{function.name}.sql").write_text(function.sql)
            limits = (changed / "rate_limits.sql").read_text()
            (changed / "rate_limits.sql").write_text(limits + "\n-- a comment is a change too\n")
            async with database.connection() as conn, conn.transaction():
                assert await apply_functions(conn, load_functions(changed)) == ["rate_limits"]
                assert await apply_functions(conn, load_functions(changed)) == []
            async with database.connection() as conn, conn.transaction():
                # And back to the files as they are, once.
                assert await apply_functions(conn, load_functions()) == ["rate_limits"]
        finally:
            await database.close()
