"""SQL for the audit: every user's row against its ledger, in one pass."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from pluct_server.store.database import Database

# One scan of each table. A user is reported when anything its row says disagrees with what its
# ledger says; when its ledger holds a spend that did not buy one token for a whole price (a
# default spend, or one from before features, is exactly one credit, any spend at least one);
# when its balance is not what remains of its grants; or when a grant's remainder is not its
# amount less what spends drew from it; or when an entry written since events began and within
# their retention (an event's time is its entry's) has not exactly one event.
_PROBLEMS = """
WITH books AS (
    SELECT user_id,
           sum(CASE WHEN type IN ('spend', 'expiration') THEN -amount ELSE amount END)
               AS ledger_sum,
           count(*) AS entries,
           coalesce(sum(CASE type WHEN 'spend' THEN amount WHEN 'refund' THEN -amount END), 0)
               AS spent,
           count(*) FILTER (
               WHERE type = 'spend'
                 AND (token_id IS NULL OR amount < 1
                      OR (coalesce(feature, 'default') = 'default' AND amount <> 1))
           ) AS odd_spends,
           count(token_id) - count(DISTINCT token_id) AS reused_tokens
      FROM ledger
     GROUP BY user_id
), drawn AS (
    -- What spends took from each grant, less what refunds gave back to it; spends from before
    -- grants took from the opening one.
    SELECT l.user_id, d.grant_id,
           sum(CASE WHEN l.type = 'spend' THEN d.amount ELSE -d.amount END) AS amount
      FROM ledger l, unnest(l.draw_grant_ids, l.draw_amounts) AS d(grant_id, amount)
     WHERE l.type IN ('spend', 'refund')
     GROUP BY l.user_id, d.grant_id
), expired AS (
    SELECT user_id, grant_id, sum(amount) AS amount FROM ledger
     WHERE type = 'expiration'
     GROUP BY user_id, grant_id
), undrawn AS (
    SELECT user_id, sum(amount) AS amount FROM ledger
     WHERE type = 'spend' AND draw_grant_ids IS NULL
     GROUP BY user_id
), lots AS (
    -- Every grant: what remains = amount less what was drawn and what expired.
    SELECT g.user_id, sum(g.remaining) AS remaining,
           count(*) FILTER (
               WHERE g.amount - g.remaining
                     <> coalesce(dr.amount, 0) + coalesce(ex.amount, 0)
                        + CASE WHEN g.source = 'opening_balance'
                               THEN coalesce(un.amount, 0) ELSE 0 END
           ) AS odd_grants
      FROM grants g
      LEFT JOIN drawn dr ON dr.user_id = g.user_id AND dr.grant_id = g.grant_id
      LEFT JOIN expired ex ON ex.user_id = g.user_id AND ex.grant_id = g.grant_id
      LEFT JOIN undrawn un ON un.user_id = g.user_id
     GROUP BY g.user_id
), evented AS (
    SELECT l.user_id, count(*) FILTER (WHERE e.n IS DISTINCT FROM 1) AS unevented
      FROM ledger l
      LEFT JOIN (SELECT user_id, transaction_id, count(*) AS n FROM events GROUP BY 1, 2) e
             ON e.user_id = l.user_id AND e.transaction_id = l.id
     WHERE l.created_at >= greatest(
               (SELECT applied_at FROM schema_migrations WHERE version = $2),
               now() - make_interval(secs => $3))
     GROUP BY l.user_id
)
SELECT u.user_id, u.balance, u.transaction_count, u.total_spent,
       coalesce(b.ledger_sum, 0) AS ledger_sum, coalesce(b.entries, 0) AS entries,
       coalesce(b.spent, 0) AS spent, coalesce(b.odd_spends, 0) AS odd_spends,
       coalesce(b.reused_tokens, 0) AS reused_tokens,
       coalesce(g.remaining, 0) AS granted, coalesce(g.odd_grants, 0) AS odd_grants,
       coalesce(ev.unevented, 0) AS unevented
  FROM users u
  LEFT JOIN books b ON b.user_id = u.user_id
  LEFT JOIN lots g ON g.user_id = u.user_id
  LEFT JOIN evented ev ON ev.user_id = u.user_id
 WHERE u.balance < 0
    OR u.balance <> coalesce(b.ledger_sum, 0)
    OR u.transaction_count <> coalesce(b.entries, 0)
    OR u.total_spent <> coalesce(b.spent, 0)
    OR coalesce(b.odd_spends, 0) > 0
    OR coalesce(b.reused_tokens, 0) > 0
    OR u.balance <> coalesce(g.remaining, 0)
    OR coalesce(g.odd_grants, 0) > 0
    OR coalesce(ev.unevented, 0) > 0
 ORDER BY u.user_id
 LIMIT $1
"""
_USERS = "SELECT count(*) FROM users"


@dataclass(frozen=True)
class Books:
    """One user's row and what its ledger adds up to."""

    user_id: str
    balance: int
    transaction_count: int
    total_spent: int
    ledger_sum: int
    entries: int
    spent: int
    odd_spends: int
    reused_tokens: int
    # What remains of the user's grants, and how many grants disagree with their draws.
    granted: int = 0
    odd_grants: int = 0
    # Entries written since events began without exactly one event.
    unevented: int = 0


# The migration that began events: entries before it have none.
EVENTS_BEGAN = 14


class AuditStore:
    """Reads the users whose books disagree."""

    def __init__(self, database: Database, events_retention: timedelta) -> None:
        self._db = database
        self._events_retention = events_retention

    async def disagreeing(self, limit: int) -> tuple[int, list[Books]]:
        """Return how many users there are, and up to `limit` whose books disagree."""
        users = await self._db.fetchrow(_USERS)
        rows = await self._db.fetch(
            _PROBLEMS, limit, EVENTS_BEGAN, self._events_retention.total_seconds()
        )
        assert users is not None
        return int(users[0]), [_books(row) for row in rows]


def _books(row: asyncpg.Record) -> Books:
    return Books(
        user_id=row["user_id"],
        balance=int(row["balance"]),
        transaction_count=int(row["transaction_count"]),
        total_spent=int(row["total_spent"]),
        ledger_sum=int(row["ledger_sum"]),
        entries=int(row["entries"]),
        spent=int(row["spent"]),
        odd_spends=int(row["odd_spends"]),
        reused_tokens=int(row["reused_tokens"]),
        granted=int(row["granted"]),
        odd_grants=int(row["odd_grants"]),
        unevented=int(row["unevented"]),
    )
