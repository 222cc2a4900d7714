"""SQL for webhook endpoints: where events go, and the secrets that sign them."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from pluct_server.store.database import Database
from pluct_server.values.records import WebhookEndpoint

# ruff: noqa: S608 - only the fixed column list is spliced in

_COLUMNS = "endpoint_id, url, event_types, balance_thresholds, create_time, disabled"
_CREATE = f"""
INSERT INTO webhook_endpoints (url, event_types, balance_thresholds, secret)
VALUES ($1, $2, $3, $4) RETURNING {_COLUMNS}
"""
_LIST = f"SELECT {_COLUMNS} FROM webhook_endpoints ORDER BY endpoint_id"
_DELETE = f"DELETE FROM webhook_endpoints WHERE endpoint_id = $1 RETURNING {_COLUMNS}"
# The secret being replaced keeps signing for `overlap`, so receivers can switch without a gap,
# beside any replaced before whose time is not up; those whose time is up are dropped.
_ROTATE = f"""
UPDATE webhook_endpoints e
   SET (previous_secrets, previous_secret_expire_times) = (
           SELECT array_agg(kept.secret ORDER BY kept.until),
                  array_agg(kept.until ORDER BY kept.until)
             FROM (SELECT p.secret, p.until
                     FROM unnest(e.previous_secrets, e.previous_secret_expire_times)
                          AS p(secret, until)
                    WHERE p.until > now()
                   UNION ALL
                   SELECT e.secret, now() + $3::interval) AS kept),
       secret = $2
 WHERE e.endpoint_id = $1
RETURNING {_COLUMNS}
"""


class WebhookEndpointStore:
    """Makes, lists, removes and re-keys webhook endpoints."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def create(
        self, url: str, event_types: list[str], thresholds: list[int], secret: str
    ) -> WebhookEndpoint:
        """Store a new endpoint with its secret; return it."""
        row = await self._db.fetchrow(_CREATE, url, event_types, thresholds, secret, writes=True)
        assert row is not None
        return _endpoint(row)

    async def all(self) -> list[WebhookEndpoint]:
        """Return every endpoint, oldest first."""
        return [_endpoint(row) for row in await self._db.fetch(_LIST)]

    async def delete(self, endpoint_id: int) -> WebhookEndpoint | None:
        """Remove an endpoint; return it as it was, or None when there is none."""
        row = await self._db.fetchrow(_DELETE, endpoint_id, writes=True)
        return None if row is None else _endpoint(row)

    async def rotate(
        self, endpoint_id: int, secret: str, overlap: timedelta
    ) -> WebhookEndpoint | None:
        """Give an endpoint `secret`; the one it replaces signs for `overlap` more."""
        row = await self._db.fetchrow(_ROTATE, endpoint_id, secret, overlap, writes=True)
        return None if row is None else _endpoint(row)


def _endpoint(row: asyncpg.Record) -> WebhookEndpoint:
    return WebhookEndpoint(
        endpoint_id=str(row["endpoint_id"]),
        url=row["url"],
        event_types=tuple(row["event_types"]),
        balance_thresholds=tuple(int(t) for t in row["balance_thresholds"]),
        create_time=row["create_time"],
        disabled=bool(row["disabled"]),
    )
