"""SQL for events: a user's events, each with the ledger entry it tells of."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from pluct_server.store.database import Database
from pluct_server.store.ledger_store import opaque_grant_id
from pluct_server.values.records import EntryType, Event

# Newest first, by id (ids only grow), so a scan neither skips nor repeats an event. The entry
# is found by its key, on the user's shard like the event.
_EVENTS = """
SELECT e.event_id, e.type, e.create_time, e.user_id, e.transaction_id,
       l.type AS entry_type, l.amount, l.balance_after, l.feature, l.token_id::text AS token_id,
       l.grant_id, l.refunds_id
  FROM events e
  JOIN ledger l ON l.user_id = e.user_id AND l.id = e.transaction_id
 WHERE e.user_id = $1 AND ($3::bigint IS NULL OR e.event_id < $3)
 ORDER BY e.event_id DESC LIMIT $2
"""


# Whole seconds, as PLUCT_EVENTS_RETENTION is given: events older than that go (through the
# owner's function: the serving role may not delete events itself).
_PURGE = "SELECT pluct_purge_events(make_interval(secs => $1))"


class EventStore:
    """Reads events."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def of_user(self, user_id: str, limit: int, before_id: int | None) -> list[Event]:
        """Return up to `limit` of a user's events older than `before_id`, newest first."""
        return [_event(row) for row in await self._db.fetch(_EVENTS, user_id, limit, before_id)]

    async def purge(self, retention: timedelta) -> int:
        """Delete every event older than `retention`; return how many."""
        row = await self._db.fetchrow(_PURGE, retention.total_seconds(), writes=True)
        assert row is not None
        return int(row[0])


def _event(row: asyncpg.Record) -> Event:
    return Event(
        event_id=str(row["event_id"]),
        type=row["type"],
        create_time=row["create_time"],
        user_id=row["user_id"],
        transaction_id=int(row["transaction_id"]),
        entry_type=EntryType(row["entry_type"]),
        amount=int(row["amount"]),
        balance_after=int(row["balance_after"]),
        feature=row["feature"],
        token_id=row["token_id"],
        grant_id=opaque_grant_id(row["grant_id"]),
        refunds=row["refunds_id"],
    )
