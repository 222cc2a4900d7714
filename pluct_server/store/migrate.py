"""The schema: numbered migrations applied once each, and functions re-applied when they change.

Both run under one transaction-scoped advisory lock, so replicas starting together take turns.
A numbered migration holds schema changes alone; every function is defined once, in a file of
its own under sql/, and is applied (CREATE OR REPLACE) whenever that file's text changes, as a
repeatable migration is: a function is never restated in a new migration.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from pluct_server.store.database import Database

_LOGGER = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
FUNCTIONS_DIR = Path(__file__).parent / "sql"
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


@dataclass(frozen=True)
class FunctionFile:
    """One file of sql/: its name, its text and the digest that tells a change."""

    name: str
    sql: str

    @property
    def digest(self) -> str:
        """Return the SHA-256 of the file's text."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def load_functions(directory: Path = FUNCTIONS_DIR) -> list[FunctionFile]:
    """Read the function files, in name order."""
    return [
        FunctionFile(path.stem, path.read_text(encoding="utf-8"))
        for path in sorted(directory.glob("*.sql"))
    ]


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
    """Apply changed functions, then every pending migration; return the versions applied.

    Functions come first: a migration may name one (a trigger's), and a PL/pgSQL body is
    checked against the tables only when it runs.
    """
    migrations = load_migrations()
    done: list[int] = []
    async with database.connection() as conn:
        async with conn.transaction():
            await _lock(conn)
            await apply_functions(conn, load_functions())
        while True:
            async with conn.transaction():
                # Replicas starting together queue here; the first applies, the rest find
                # nothing to do. A transaction-scoped lock, as PgBouncer in transaction mode
                # may run a session lock and its unlock on different server connections.
                await _lock(conn)
                applied = await _applied(conn)
                pending = [m for m in migrations if m.version not in applied]
                if not pending:
                    return done
                await _apply(conn, pending[0])
            done.append(pending[0].version)


async def _lock(conn: asyncpg.Connection) -> None:
    """Take the schema's lock until the transaction ends."""
    # A transaction-scoped lock, as PgBouncer in transaction mode may run a session lock and its
    # unlock on different server connections.
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1)", _ADVISORY_LOCK_KEY, timeout=_MIGRATION_TIMEOUT_SECONDS
    )


async def apply_functions(conn: asyncpg.Connection, functions: list[FunctionFile]) -> list[str]:
    """Apply each function file whose text changed since it was applied; return their names."""
    current = {}
    # Looked up first: a serving role with nothing to apply must not need the right to create.
    if await conn.fetchval("SELECT to_regclass('schema_functions')") is not None:
        current = dict(await conn.fetch("SELECT name, sha256 FROM schema_functions"))
    changed = [f for f in functions if current.get(f.name) != f.digest]
    for function in changed:
        try:
            await conn.execute(_SCHEMA_FUNCTIONS)
            # Bodies are checked as they run, against the schema migrations are about to make.
            await conn.execute("SET LOCAL check_function_bodies = off")
            # What a SECURITY DEFINER function's `SET search_path FROM CURRENT` keeps: this
            # schema, then pg_temp, so a caller's temporary table never stands in for ours.
            await conn.execute(
                "SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp',"
                " true)"
            )
            await conn.execute(function.sql, timeout=_MIGRATION_TIMEOUT_SECONDS)
        except asyncpg.InsufficientPrivilegeError as error:
            raise MigrationNotAllowed(
                f"function file sql/{function.name}.sql", str(error)
            ) from None
        await conn.execute(
            "INSERT INTO schema_functions (name, sha256) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET sha256 = EXCLUDED.sha256, applied_at = now()",
            function.name,
            function.digest,
        )
        _LOGGER.info("applied function file sql/%s.sql", function.name)
    return [function.name for function in changed]


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
        name = f"migration {migration.version:04d}_{migration.name}"
        raise MigrationNotAllowed(name, str(error)) from None
    await conn.execute(
        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
        migration.version,
        migration.name,
    )
    _LOGGER.info("applied migration %04d_%s", migration.version, migration.name)


class MigrationNotAllowed(RuntimeError):
    """The role connected may serve but not change the schema."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(
            f"{what} needs the schema's owner ({why}): "
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

_SCHEMA_FUNCTIONS = """
CREATE TABLE IF NOT EXISTS schema_functions (
    name       text        PRIMARY KEY,
    sha256     text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
