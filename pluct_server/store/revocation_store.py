"""SQL for token revocations, kept until every token they cover has expired."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from pluct_server.store.database import Database

_REVOKE = """
INSERT INTO token_revocations (token_id, user_id, revoked_by, expire_time)
VALUES ($1, $2, $3, now() + $4::interval)
RETURNING revoke_time, expire_time
"""
_LIVE = """
SELECT token_id, user_id, revoke_time FROM token_revocations WHERE expire_time > now()
"""
_PURGE = "DELETE FROM token_revocations WHERE expire_time <= now()"


@dataclass(frozen=True)
class Revocation:
    """One live revocation: a token id, or a user whose tokens up to revoke_time are revoked."""

    token_id: str | None
    user_id: str | None
    revoke_time: datetime


class RevocationStore:
    """Records, lists and forgets token revocations."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def revoke(
        self, token_id: str | None, user_id: str | None, revoked_by: str, keep: timedelta
    ) -> tuple[datetime, datetime]:
        """Record a revocation kept for `keep`; return its (revoke_time, expire_time)."""
        row = await self._db.fetchrow(_REVOKE, token_id, user_id, revoked_by, keep, writes=True)
        assert row is not None
        return row["revoke_time"], row["expire_time"]

    async def live(self) -> list[Revocation]:
        """Return every revocation that still covers a token that has not expired."""
        rows = await self._db.fetch(_LIVE)
        return [Revocation(row["token_id"], row["user_id"], row["revoke_time"]) for row in rows]

    async def purge(self) -> int:
        """Forget revocations whose tokens have all expired; return how many."""
        status = await self._db.execute(_PURGE)
        return int(status.rsplit(" ", 1)[-1])
