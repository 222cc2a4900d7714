"""SQL for the audit: every user's row against its ledger, in one pass."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from pluct_server.store.database import Database

# One scan of each table. A user is reported when anything its row says disagrees with what its
# ledger says, or when its ledger holds a spend that did not buy one token for a whole price: a
# default spend (or one from before features) is exactly one credit, any spend at least one.
_PROBLEMS = """
WITH books AS (
    SELECT user_id,
           sum(CASE WHEN type = 'spend' THEN -amount ELSE amount END) AS ledger_sum,
           count(*) AS entries,
           coalesce(sum(amount) FILTER (WHERE type = 'spend'), 0) AS spent,
           count(*) FILTER (
               WHERE type = 'spend'
                 AND (token_id IS NULL OR amount < 1
                      OR (coalesce(feature, 'default') = 'default' AND amount <> 1))
           ) AS odd_spends,
           count(token_id) - count(DISTINCT token_id) AS reused_tokens
      FROM ledger
     GROUP BY user_id
)
SELECT u.user_id, u.balance, u.transaction_count, u.total_spent,
       coalesce(b.ledger_sum, 0) AS ledger_sum, coalesce(b.entries, 0) AS entries,
       coalesce(b.spent, 0) AS spent, coalesce(b.odd_spends, 0) AS odd_spends,
       coalesce(b.reused_tokens, 0) AS reused_tokens
  FROM users u
  LEFT JOIN books b ON b.user_id = u.user_id
 WHERE u.balance < 0
    OR u.balance <> coalesce(b.ledger_sum, 0)
    OR u.transaction_count <> coalesce(b.entries, 0)
    OR u.total_spent <> coalesce(b.spent, 0)
    OR coalesce(b.odd_spends, 0) > 0
    OR coalesce(b.reused_tokens, 0) > 0
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


class AuditStore:
    """Reads the users whose books disagree."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def disagreeing(self, limit: int) -> tuple[int, list[Books]]:
        """Return how many users there are, and up to `limit` whose books disagree."""
        users = await self._db.fetchrow(_USERS)
        rows = await self._db.fetch(_PROBLEMS, limit)
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
    )
