"""Numbered SQL migrations, applied once each under a transaction-scoped advisory lock."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from pluct_server.store.database import Database

_LOGGER = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any fixed number works; it only has to be the same for every replica of this service.
_ADVISORY_LOCK_KEY = 0x706C756374  # "pluct"
# Waiting for another replica's migration, or running a long one, is not an outage: these
# statements get this long instead of the pool's short per-query timeout.
_MIGRATION_TIMEOUT_SECONDS = 600.0
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One numbered .sql file."""

    version: int
    name: str
    sql: str


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read the migration files in version order, refusing gaps and stray names."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file name must look like 0001_name.sql: {path.name}")
        migrations.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise ValueError(f"migration {expected:04d} is missing")
    return migrations


async def migrate(database: Database) -> list[int]:
    """Apply every pending migration, each in its own transaction; return the versions applied."""
    migrations = load_migrations()
    done: list[int] = []
    async with database.connection() as conn:
        while True:
            async with conn.transaction():
                # Replicas starting together queue here; the first applies, the rest find
                # nothing to do. A transaction-scoped lock, as PgBouncer in transaction mode
                # may run a session lock and its unlock on different server connections.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1)",
                    _ADVISORY_LOCK_KEY,
                    timeout=_MIGRATION_TIMEOUT_SECONDS,
                )
                applied = await _applied(conn)
                pending = [m for m in migrations if m.version not in applied]
                if not pending:
                    return done
                await _apply(conn, pending[0])
            done.append(pending[0].version)


async def _applied(conn: asyncpg.Connection) -> set[int]:
    """Return the versions applied so far (none on a database we have never seen)."""
    # Looked up first: a serving role with nothing to apply must not need the right to create.
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return set()
    return {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    """Run one migration and record it, inside the caller's transaction."""
    try:
        await conn.execute(_SCHEMA_MIGRATIONS)
        await conn.execute(migration.sql, timeout=_MIGRATION_TIMEOUT_SECONDS)
    except asyncpg.InsufficientPrivilegeError as error:
        raise MigrationNotAllowed(migration, str(error)) from None
    await conn.execute(
        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
        migration.version,
        migration.name,
    )
    _LOGGER.info("applied migration %04d_%s", migration.version, migration.name)


class MigrationNotAllowed(RuntimeError):
    """The role connected may serve but not change the schema."""

    def __init__(self, migration: Migration, why: str) -> None:
        super().__init__(
            f"migration {migration.version:04d}_{migration.name} needs the schema's owner ({why}): "
            "set PLUCT_MIGRATE_DATABASE_URL to the owner role, or run "
            "`python -m pluct_server migrate` with it"
        )


_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
