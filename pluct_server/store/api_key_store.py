"""SQL for API keys: only hashes of their secrets are ever stored."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from pluct_server.store.database import Database
from pluct_server.values.records import ApiKeyRecord

_COLUMNS = "key_id, name, scopes, secret_hash, created_by, create_time, revoke_time"

# ruff: noqa: S608 - only the fixed column list is spliced in
_INSERT = f"""
INSERT INTO api_keys (key_id, name, scopes, secret_hash, created_by)
VALUES ($1, $2, $3, $4, $5)
RETURNING {_COLUMNS}
"""
_BY_ID = f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = $1"
_ACTIVE = f"SELECT {_COLUMNS} FROM api_keys WHERE revoke_time IS NULL"
_PAGE_FIRST = f"""
SELECT {_COLUMNS} FROM api_keys ORDER BY create_time DESC, key_id DESC LIMIT $1
"""
_PAGE_AFTER = f"""
SELECT {_COLUMNS} FROM api_keys WHERE (create_time, key_id) < ($2, $3)
 ORDER BY create_time DESC, key_id DESC LIMIT $1
"""
_REVOKE = f"""
UPDATE api_keys SET revoke_time = coalesce(revoke_time, now()) WHERE key_id = $1
RETURNING {_COLUMNS}
"""
# A key made at a given id keeps its secret: inserting the same dev key twice changes nothing.
_ENSURE = f"""
INSERT INTO api_keys (key_id, name, scopes, secret_hash, created_by)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (key_id) DO NOTHING
RETURNING {_COLUMNS}
"""


class ApiKeyStore:
    """Creates, finds, lists and revokes API keys."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert(
        self, key_id: str, name: str, scopes: list[str], secret_hash: bytes, created_by: str
    ) -> ApiKeyRecord:
        """Store a new key and return it."""
        row = await self._db.fetchrow(
            _INSERT, key_id, name, scopes, secret_hash, created_by, writes=True
        )
        assert row is not None
        return _record(row)

    async def ensure(
        self, key_id: str, name: str, scopes: list[str], secret_hash: bytes, created_by: str
    ) -> bool:
        """Store a key unless its id exists; tell whether it was stored now."""
        row = await self._db.fetchrow(_ENSURE, key_id, name, scopes, secret_hash, created_by)
        return row is not None

    async def find(self, key_id: str) -> ApiKeyRecord | None:
        """Return the key with this id, revoked or not."""
        row = await self._db.fetchrow(_BY_ID, key_id)
        return None if row is None else _record(row)

    async def active(self) -> list[ApiKeyRecord]:
        """Return every key that is not revoked."""
        return [_record(row) for row in await self._db.fetch(_ACTIVE)]

    async def page(self, limit: int, after: tuple[datetime, str] | None) -> list[ApiKeyRecord]:
        """Return up to `limit` keys after the cursor, newest first."""
        if after is None:
            rows = await self._db.fetch(_PAGE_FIRST, limit)
        else:
            rows = await self._db.fetch(_PAGE_AFTER, limit, after[0], after[1])
        return [_record(row) for row in rows]

    async def revoke(self, key_id: str) -> ApiKeyRecord | None:
        """Mark a key revoked (keeping the first revoke time); None if there is no such key."""
        row = await self._db.fetchrow(_REVOKE, key_id, writes=True)
        return None if row is None else _record(row)


def _record(row: asyncpg.Record) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row["key_id"],
        name=row["name"],
        scopes=frozenset(row["scopes"]),
        secret_hash=bytes(row["secret_hash"]),
        created_by=row["created_by"],
        create_time=row["create_time"],
        revoke_time=row["revoke_time"],
    )
