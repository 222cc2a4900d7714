"""API keys: secrets made and shown once, stored as hashes, recognised from a refreshed cache."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from pluct_server.domain.errors import InvalidArgument, NotFound, PermissionDenied
from pluct_server.domain.pagination import (
    clamp_page_size,
    decode_page_token,
    encode_page_token,
    time_and_name_position,
)
from pluct_server.security.callers import check_scopes
from pluct_server.security.key_secrets import hash_secret, is_key_id, key_id_of, new_secret
from pluct_server.store.api_key_store import ApiKeyStore
from pluct_server.values.callers import Caller
from pluct_server.values.records import ApiKeyRecord

_LOGGER = logging.getLogger(__name__)

KEYS_PAGE = (100, 1000)  # (default, maximum)


@dataclass(frozen=True)
class KeyPage:
    """A page of keys and the token for the next one ("" on the last page)."""

    keys: list[ApiKeyRecord]
    next_page_token: str


class ApiKeys:
    """Makes, lists and revokes keys, and tells which live key a presented secret is."""

    def __init__(self, store: ApiKeyStore) -> None:
        self._store = store
        self._active: dict[str, ApiKeyRecord] = {}
        # Ids looked up and not found since the last refresh, so a flood of made-up keys costs
        # one query per id, not one per call.
        self._unknown: set[str] = set()

    async def create(
        self, name: str, scopes: Iterable[str], creator: Caller
    ) -> tuple[str, ApiKeyRecord]:
        """Make a key for `creator`; return its secret (shown this once) and what is stored."""
        try:
            granted = check_scopes(scopes)
        except ValueError as error:
            raise InvalidArgument("scopes", str(error)) from None
        beyond = sorted(scope for scope in granted if not creator.may_grant(scope))
        if beyond:
            _LOGGER.warning(
                "API key creation refused: address=%s key_id=%s scopes=%s reason=%s",
                creator.address,
                creator.id,
                ",".join(beyond),
                "scopes beyond its own",
            )
            raise PermissionDenied(
                f"a key may create keys only with scopes it holds itself; this one lacks "
                f"{', '.join(repr(scope) for scope in beyond)}",
                scope=beyond[0],
            )
        key_id, secret = new_secret()
        record = await self._store.insert(
            key_id, name, sorted(granted), hash_secret(secret), creator.id
        )
        self._remember(record)
        return secret, record

    async def ensure(self, secret: str, name: str, scopes: Iterable[str]) -> bool:
        """Store a key with a secret made elsewhere (the dev key) unless its id exists."""
        key_id = key_id_of(secret)
        if key_id is None:
            raise ValueError("not an API key secret")
        return await self._store.ensure(
            key_id, name, sorted(check_scopes(scopes)), hash_secret(secret), "dev-mode"
        )

    async def page(self, page_size: int, page_token: str) -> KeyPage:
        """Return one page of keys, newest first, revoked ones included."""
        size = clamp_page_size(page_size, *KEYS_PAGE)
        position = decode_page_token(page_token, "api_keys", None)
        after = time_and_name_position(position, is_key_id)
        rows = await self._store.page(size + 1, after)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            token = encode_page_token("api_keys", None, [last.create_time.isoformat(), last.key_id])
        return KeyPage(rows, token)

    async def revoke(self, key_id: str) -> ApiKeyRecord:
        """Revoke a key: here at once, on every other replica by its next refresh."""
        record = await self._store.revoke(key_id)
        if record is None:
            raise NotFound(f"no API key has id {key_id}")
        self._active.pop(key_id, None)
        return record

    async def identify(self, secret: str, *, look_up: bool = True) -> ApiKeyRecord | None:
        """Return the live key whose secret this is, or None.

        A key not in memory is looked up in the database only with `look_up`.
        """
        key_id = key_id_of(secret)
        if key_id is None:
            return None
        record = self._active.get(key_id)
        if record is None:
            if key_id in self._unknown or not look_up:
                return None
            # Made on another replica since our last refresh, perhaps.
            record = await self._store.find(key_id)
            if record is None or record.revoke_time is not None:
                self._unknown.add(key_id)
                return None
            self._remember(record)
        if not hmac.compare_digest(record.secret_hash, hash_secret(secret)):
            return None
        return record

    async def refresh(self) -> None:
        """Reload the live keys, dropping revoked ones; run every few seconds by the server."""
        active = await self._store.active()
        self._active = {record.key_id: record for record in active}
        self._unknown = set()

    def _remember(self, record: ApiKeyRecord) -> None:
        self._active[record.key_id] = record
        self._unknown.discard(record.key_id)
