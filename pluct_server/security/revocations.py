"""Token revocations: recorded in the database, checked from memory refreshed every few seconds."""

from __future__ import annotations

from datetime import datetime, timedelta

from pluct_server.store.revocation_store import RevocationStore


class Revocations:
    """Revokes tokens until they expire; ValidateToken asks is_revoked(), which never waits."""

    def __init__(self, store: RevocationStore, max_token_lifetime: timedelta) -> None:
        self._store = store
        # Kept a little past the longest lifetime, so no covered token can outlive it.
        self._keep = max_token_lifetime + timedelta(seconds=60)
        self._token_ids: frozenset[str] = frozenset()
        # user id -> unix time up to which that user's tokens are revoked.
        self._users: dict[str, float] = {}

    async def revoke_token(self, jti: str, revoked_by: str) -> tuple[datetime, datetime]:
        """Revoke one token by its jti; return (revoke_time, expire_time)."""
        times = await self._store.revoke(jti, None, revoked_by, self._keep)
        self._token_ids = self._token_ids | {jti}
        return times

    def remember_token(self, jti: str) -> None:
        """Refuse a token whose revocation another statement recorded (a full refund's) now."""
        self._token_ids = self._token_ids | {jti}

    async def revoke_user(self, user_id: str, revoked_by: str) -> tuple[datetime, datetime]:
        """Revoke every token `user_id` holds now; return (revoke_time, expire_time)."""
        revoke_time, expire_time = await self._store.revoke(None, user_id, revoked_by, self._keep)
        self._note_user(user_id, revoke_time)
        return revoke_time, expire_time

    def is_revoked(self, jti: str, user_id: str, issued_at: int) -> bool:
        """Tell whether a token is revoked; `issued_at` is its iat in unix seconds."""
        if jti in self._token_ids:
            return True
        until = self._users.get(user_id)
        # iat has whole seconds: a token from the very second of a revocation counts as before it.
        return until is not None and issued_at <= until

    async def refresh(self) -> None:
        """Reload the live revocations; run every few seconds by the server."""
        live = await self._store.live()
        self._token_ids = frozenset(r.token_id for r in live if r.token_id is not None)
        self._users = {}
        for revocation in live:
            if revocation.user_id is not None:
                self._note_user(revocation.user_id, revocation.revoke_time)

    async def purge(self) -> int:
        """Forget revocations whose tokens have all expired; return how many."""
        return await self._store.purge()

    def _note_user(self, user_id: str, revoke_time: datetime) -> None:
        moment = revoke_time.timestamp()
        self._users[user_id] = max(moment, self._users.get(user_id, moment))
