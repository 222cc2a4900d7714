"""The serving role does what serving needs and nothing else: the ledger cannot be rewritten."""

from __future__ import annotations

import asyncpg
import pytest
from pluct.credit.v1 import credit_service_pb2 as credit_pb

from pluct_server.app.server import wait_and_migrate
from pluct_server.store.database import Database
from pluct_server.store.grants import SERVING_PRIVILEGES, ensure_login_role
from pluct_server.store.migrate import MigrationNotAllowed
from pluct_server.values.settings import ConfigError, load_settings
from tests.support import (
    ADMIN_METADATA,
    SERVING_ROLE,
    external_database_url,
    ledger_of,
    running_server,
    scratch_database,
    settings_for_test,
)

# What a bug or an injection in the server could try, were it allowed.
FORBIDDEN = [
    "UPDATE ledger SET amount = amount + 1",
    "DELETE FROM ledger",
    "TRUNCATE ledger",
    "ALTER TABLE ledger DISABLE TRIGGER ledger_append_only",
    "DROP TRIGGER ledger_append_only ON ledger",
    "DROP TABLE ledger",
    "SET session_replication_role = replica",
    "DELETE FROM users",
    "DELETE FROM payment_events",
    "UPDATE payment_events SET user_id = 'x'",
    "UPDATE schema_migrations SET name = 'x'",
    "CREATE TABLE shadow_ledger (id int)",
    "CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    "ALTER TABLE ledger OWNER TO CURRENT_USER",
    "INSERT INTO schema_migrations (version, name) VALUES (999, 'x')",
    # Events are written and purged by the owner's functions alone: none forged, none lost.
    "INSERT INTO events (user_id, type, transaction_id, create_time)"
    " VALUES ('x', 'credits.granted', 1, now())",
    "DELETE FROM events",
    "UPDATE events SET type = 'credits.granted'",
    "CREATE OR REPLACE FUNCTION ledger_writes_event() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
]


@pytest.fixture
async def funded_user(credit, user_id):
    """A user with a ledger entry of its own."""
    await credit.CreateUser(
        credit_pb.CreateUserRequest(user_id=user_id, initial_credits=3), metadata=ADMIN_METADATA
    )
    return user_id


@pytest.fixture
async def as_server(server, serving_dsn):
    """A connection as the role the server serves as."""
    conn = await asyncpg.connect(serving_dsn)
    yield conn
    await conn.close()


async def test_the_server_serves_as_a_role_that_is_not_the_owner(server):
    row = await server.database.fetchrow(
        "SELECT current_user AS role, r.rolsuper, "
        "       pg_has_role(current_user, t.tableowner, 'MEMBER') AS owns_ledger "
        "  FROM pg_roles r, pg_tables t "
        " WHERE r.rolname = current_user AND t.tablename = 'ledger'"
    )
    assert row is not None
    assert (row["role"], row["rolsuper"], row["owns_ledger"]) == (SERVING_ROLE, False, False)


@pytest.mark.parametrize("statement", FORBIDDEN)
async def test_the_serving_role_cannot_rewrite_history(
    as_server, funded_user, database_dsn, statement
):
    before = await ledger_of(database_dsn, funded_user)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await as_server.execute(statement)
    assert await ledger_of(database_dsn, funded_user) == before


async def test_each_table_grants_exactly_its_listed_privileges(server, db):
    tables = await db.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
    )
    assert {row["tablename"] for row in tables} == set(SERVING_PRIVILEGES)
    for table, wanted in SERVING_PRIVILEGES.items():
        held = await db.fetch(
            "SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', "
            "'REFERENCES', 'TRIGGER']) AS p WHERE has_table_privilege($1, $2, p)",
            SERVING_ROLE,
            table,
        )
        assert {row["p"] for row in held} == set(wanted), table


async def test_a_schema_change_needs_the_owner_and_the_owner_grants_what_serving_needs(
    request, tmp_path
):
    server_url = external_database_url() or request.getfixturevalue("embedded_postgres").dsn
    async with scratch_database(server_url) as owner_dsn:
        serving = await ensure_login_role(owner_dsn, SERVING_ROLE)
        database = Database(serving, max_size=1)
        await database.open()
        try:
            with pytest.raises(MigrationNotAllowed, match="PLUCT_MIGRATE_DATABASE_URL"):
                await wait_and_migrate(database, wait_seconds=0)
            await wait_and_migrate(database, owner_dsn)
        finally:
            await database.close()
        # Migrated and granted, the serving role alone starts a server and keeps a ledger.
        async with running_server(settings_for_test(tmp_path), serving) as started:
            assert started.grpc_port > 0
            account = await started.database.fetchrow(
                "INSERT INTO users (user_id, balance) VALUES ('lp', 0) RETURNING user_id"
            )
            assert account is not None


def test_the_owner_url_needs_a_serving_url_and_is_never_shown():
    owner = "postgresql://owner:s3cret-owner-password@db/pluct"
    with pytest.raises(ConfigError, match="needs DATABASE_URL"):
        load_settings({"PLUCT_MIGRATE_DATABASE_URL": owner}, serving=False)
    settings = load_settings(
        {"DATABASE_URL": "postgresql://app@db/pluct", "PLUCT_MIGRATE_DATABASE_URL": owner},
        serving=False,
    )
    assert settings.migrate_database_url == owner
    assert "s3cret-owner-password" not in repr(settings)
