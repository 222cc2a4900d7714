"""What the serving role may do to each table, granted by the schema's owner after migrating."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

_LOGGER = logging.getLogger(__name__)

# Exactly what serving needs, and no more. The ledger is append-only for the serving role by
# privilege, not only by its trigger: no UPDATE, DELETE or TRUNCATE, so no bug or injection in
# the server can rewrite history. Every table of the schema must be listed (a test checks).
SERVING_PRIVILEGES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "users": ("SELECT", "INSERT", "UPDATE"),
        "ledger": ("SELECT", "INSERT"),
        "request_keys": ("SELECT", "INSERT", "UPDATE", "DELETE"),
        # Payment event ids are kept for ever: one forgotten or edited could be paid again.
        "payment_events": ("SELECT", "INSERT"),
        "rate_limits": ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "api_keys": ("SELECT", "INSERT", "UPDATE"),
        "token_revocations": ("SELECT", "INSERT", "DELETE"),
        "prices": ("SELECT", "INSERT", "UPDATE"),
        # Grants are never deleted: what a user was given, and what became of it, stays.
        "grants": ("SELECT", "INSERT", "UPDATE"),
        # Written by the ledger's trigger and purged by pluct_purge_events, both as the owner:
        # a server only reads them.
        "events": ("SELECT",),
        "webhook_endpoints": ("SELECT", "INSERT", "UPDATE", "DELETE"),
        "schema_migrations": ("SELECT",),
        "schema_functions": ("SELECT",),
    }
)

# The role `make run` serves as on its embedded database (the owner is the cluster's superuser).
DEV_SERVING_ROLE = "pluct_app"


class GrantError(RuntimeError):
    """The serving role cannot be held to what it needs."""


async def grant_serving_role(conn: asyncpg.Connection, role: str) -> None:
    """Give `role` exactly SERVING_PRIVILEGES in the current schema, revoking anything else."""
    who = await conn.fetchrow(
        "SELECT r.rolsuper, pg_has_role($1, current_user, 'MEMBER') AS owns, "
        "       quote_ident($1) AS quoted, quote_ident(current_schema()) AS schema "
        "  FROM pg_roles r WHERE r.rolname = $1",
        role,
    )
    if who is None:
        raise GrantError(f"the serving role {role!r} does not exist")
    if who["rolsuper"] or who["owns"]:
        _LOGGER.warning(
            "the serving role %s owns the schema or is a superuser: it could alter the ledger; "
            "serve as a role of its own (see README, Database roles)",
            role,
        )
        return
    grantee, schema = who["quoted"], who["schema"]
    async with conn.transaction():
        await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {grantee}")
        await conn.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {grantee}")
        # Nobody but the owner creates objects here (PostgreSQL 15 and later do so already).
        await conn.execute(f"REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC, {grantee}")
        await conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {grantee}")
        for table, privileges in SERVING_PRIVILEGES.items():
            await conn.execute(f"GRANT {', '.join(privileges)} ON {schema}.{table} TO {grantee}")
        can_create = await conn.fetchval(
            "SELECT has_schema_privilege($1, current_schema(), 'CREATE')", role
        )
    if can_create:
        raise GrantError(
            f"the serving role {role!r} may still create objects in the schema (PUBLIC's "
            "CREATE could not be revoked by this owner): run `REVOKE CREATE ON SCHEMA public "
            "FROM PUBLIC` as the schema's owner"
        )
    _LOGGER.info("serving role %s holds exactly the serving privileges", role)


async def ensure_login_role(owner_dsn: str, role: str) -> str:
    """Create the login role `role` if missing (dev database), and return the DSN that uses it."""
    conn = await asyncpg.connect(owner_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        if not exists:
            quoted = await conn.fetchval("SELECT quote_ident($1)", role)
            await conn.execute(f"CREATE ROLE {quoted} LOGIN")
    finally:
        await conn.close()
    return with_user(owner_dsn, role)


def with_user(dsn: str, user: str) -> str:
    """Return `dsn` connecting as `user`, with no password (the dev server trusts local users)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}@{host}"))
