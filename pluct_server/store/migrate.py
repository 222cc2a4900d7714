"""Numbered SQL migrations, applied once each under an advisory lock."""

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
    async with database.connection() as conn:
        # Replicas starting together queue here; the first applies, the rest find nothing to do.
        await conn.execute(
            "SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY, timeout=_MIGRATION_TIMEOUT_SECONDS
        )
        try:
            return await _apply_pending(conn, load_migrations())
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)


async def _apply_pending(conn: asyncpg.Connection, migrations: list[Migration]) -> list[int]:
    await conn.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version    integer     PRIMARY KEY,
            name       text        NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    applied = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
    done = []
    for migration in migrations:
        if migration.version in applied:
            continue
        async with conn.transaction():
            await conn.execute(migration.sql, timeout=_MIGRATION_TIMEOUT_SECONDS)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
        _LOGGER.info("applied migration %04d_%s", migration.version, migration.name)
        done.append(migration.version)
    return done
