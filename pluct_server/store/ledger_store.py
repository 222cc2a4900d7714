"""SQL for balances and the ledger: every statement the domain runs, each a single round trip."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from pluct_server.errors import AlreadyExists, InsufficientCredits, RequestIdReused
from pluct_server.models import EntryType, Spend, TokenClaims, Transaction, UserSummary
from pluct_server.store.database import Database, UniqueViolation

_CREATE_USER = """
WITH created AS (
    INSERT INTO users (user_id, balance, initial_credits, transaction_count,
                       request_id, request_fingerprint)
    VALUES ($1, $2::bigint, $2::bigint, CASE WHEN $2::bigint > 0 THEN 1 ELSE 0 END, $3, $4)
    RETURNING user_id, balance
), granted AS (
    INSERT INTO ledger (user_id, type, amount, balance_after, reason)
    SELECT user_id, 'user_creation', balance, balance, $5 FROM created WHERE balance > 0
), claimed AS (
    INSERT INTO request_ids (request_id, fingerprint)
    SELECT $3, $4 FROM created WHERE $3::text IS NOT NULL
)
SELECT balance FROM created
"""

_USER_CREATED_BY_REQUEST = """
SELECT user_id, initial_credits, request_fingerprint FROM users WHERE request_id = $1
"""

# The conditional UPDATE is the whole overdraft rule: a row with balance 0 simply does not match,
# and concurrent spends queue on the row lock and re-check the condition one after another.
_SPEND_ONE = """
WITH spent AS (
    UPDATE users
       SET balance = balance - 1,
           total_spent = total_spent + 1,
           transaction_count = transaction_count + 1,
           last_activity_at = now()
     WHERE user_id = $1 AND balance >= 1
 RETURNING user_id, balance
), claimed AS (
    INSERT INTO request_ids (request_id, fingerprint)
    SELECT $2, $3 FROM spent WHERE $2::text IS NOT NULL
)
INSERT INTO ledger (user_id, type, amount, balance_after, request_id, request_fingerprint,
                    token_id, token_issued_at, token_expires_at)
SELECT user_id, 'spend', 1, balance, $2, $3, $4, $5, $6 FROM spent
RETURNING balance_after
"""

_CREDIT = """
WITH credited AS (
    INSERT INTO users AS u (user_id, balance, transaction_count)
    VALUES ($1, $2::bigint, 1)
    ON CONFLICT (user_id) DO UPDATE
       SET balance = u.balance + EXCLUDED.balance,
           transaction_count = u.transaction_count + 1,
           last_activity_at = now()
    RETURNING user_id, balance
), claimed AS (
    INSERT INTO request_ids (request_id, fingerprint)
    SELECT $5, $6 FROM credited WHERE $5::text IS NOT NULL
)
INSERT INTO ledger (user_id, type, amount, balance_after, reason, request_id, request_fingerprint)
SELECT user_id, $3, $2::bigint, balance, $4, $5, $6 FROM credited
RETURNING balance_after
"""

_ENTRY_BY_REQUEST = """
SELECT user_id, balance_after, request_fingerprint, token_id, token_issued_at, token_expires_at
  FROM ledger WHERE request_id = $1
"""

_BALANCE = "SELECT balance FROM users WHERE user_id = $1"

# The constraint a CreateUser of an existing user_id violates.
_USER_EXISTS = "users_pkey"

# The f-strings below only splice in fixed column lists; values always travel as $n parameters.
# ruff: noqa: S608
_TRANSACTION_COLUMNS = "id, user_id, type, amount, balance_after, reason, created_at"

_USER_TRANSACTIONS_FIRST = f"""
SELECT {_TRANSACTION_COLUMNS} FROM ledger WHERE user_id = $1 ORDER BY id DESC LIMIT $2
"""
_USER_TRANSACTIONS_AFTER = f"""
SELECT {_TRANSACTION_COLUMNS} FROM ledger WHERE user_id = $1 AND id < $3 ORDER BY id DESC LIMIT $2
"""
_ALL_TRANSACTIONS_FIRST = f"""
SELECT {_TRANSACTION_COLUMNS} FROM ledger ORDER BY id DESC LIMIT $1
"""
_ALL_TRANSACTIONS_AFTER = f"""
SELECT {_TRANSACTION_COLUMNS} FROM ledger WHERE id < $2 ORDER BY id DESC LIMIT $1
"""

_USER_COLUMNS = "user_id, balance, transaction_count, total_spent, last_activity_at, created_at"
_USERS_FIRST = f"""
SELECT {_USER_COLUMNS} FROM users ORDER BY last_activity_at DESC, user_id DESC LIMIT $1
"""
_USERS_AFTER = f"""
SELECT {_USER_COLUMNS} FROM users
 WHERE (last_activity_at, user_id) < ($2, $3)
 ORDER BY last_activity_at DESC, user_id DESC LIMIT $1
"""


class LedgerStore:
    """Reads and writes users and ledger entries; knows SQL, not business rules."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def create_user(
        self,
        user_id: str,
        initial_credits: int,
        reason: str,
        request_id: str | None,
        fingerprint: str | None,
    ) -> int:
        """Insert a user with its initial grant; return its balance."""
        try:
            row = await self._db.fetchrow(
                _CREATE_USER, user_id, initial_credits, request_id, fingerprint, reason
            )
        except UniqueViolation as exc:
            prior = await self._replay(_USER_CREATED_BY_REQUEST, request_id, fingerprint)
            if prior is not None:
                return int(prior["initial_credits"])
            if exc.constraint == _USER_EXISTS:
                raise AlreadyExists("User already exists") from exc
            raise RequestIdReused() from exc  # the id belongs to another kind of call
        assert row is not None
        return int(row["balance"])

    async def credit(
        self,
        user_id: str,
        amount: int,
        entry_type: EntryType,
        reason: str,
        request_id: str | None,
        fingerprint: str | None,
    ) -> int:
        """Add credits, creating the user if needed; return the new balance."""
        try:
            row = await self._db.fetchrow(
                _CREDIT, user_id, amount, entry_type.value, reason, request_id, fingerprint
            )
        except UniqueViolation:
            if request_id is None:
                raise
            prior = await self._replay_or_refuse(_ENTRY_BY_REQUEST, request_id, fingerprint)
            return int(prior["balance_after"])
        assert row is not None
        return int(row["balance_after"])

    async def spend_one(
        self, claims: TokenClaims, request_id: str | None, fingerprint: str | None
    ) -> Spend:
        """Spend one credit for the token `claims` describe, or raise InsufficientCredits."""
        try:
            row = await self._db.fetchrow(
                _SPEND_ONE,
                claims.user_id,
                request_id,
                fingerprint,
                claims.token_id,
                claims.issued_at,
                claims.expires_at,
            )
        except UniqueViolation:
            if request_id is None:
                raise
            prior = await self._replay_or_refuse(_ENTRY_BY_REQUEST, request_id, fingerprint)
            return _replayed_spend(prior)
        if row is None:
            # A retry of a vend that took the last credit must still get its token back.
            prior = await self._replay(_ENTRY_BY_REQUEST, request_id, fingerprint)
            if prior is None:
                raise InsufficientCredits()
            return _replayed_spend(prior)
        return Spend(claims=claims, balance_after=int(row["balance_after"]))

    async def _replay(
        self, lookup: str, request_id: str | None, fingerprint: str | None
    ) -> asyncpg.Record | None:
        """Return the first answer to this request id, None if it has none, or refuse reuse."""
        if request_id is None:
            return None
        prior = await self._db.fetchrow(lookup, request_id)
        if prior is not None and prior["request_fingerprint"] != fingerprint:
            raise RequestIdReused()
        return prior

    async def _replay_or_refuse(
        self, lookup: str, request_id: str, fingerprint: str | None
    ) -> asyncpg.Record:
        """Return the first answer to this request id; an id another kind of call owns is reuse."""
        prior = await self._replay(lookup, request_id, fingerprint)
        if prior is None:
            raise RequestIdReused()
        return prior

    async def balance(self, user_id: str) -> int:
        """Return a user's balance; 0 for a user that does not exist."""
        row = await self._db.fetchrow(_BALANCE, user_id)
        return 0 if row is None else int(row["balance"])

    async def transactions(
        self, user_id: str | None, limit: int, before_id: int | None
    ) -> list[Transaction]:
        """Return up to `limit` entries older than `before_id`, newest first (one user or all)."""
        if user_id is None:
            if before_id is None:
                rows = await self._db.fetch(_ALL_TRANSACTIONS_FIRST, limit)
            else:
                rows = await self._db.fetch(_ALL_TRANSACTIONS_AFTER, limit, before_id)
        elif before_id is None:
            rows = await self._db.fetch(_USER_TRANSACTIONS_FIRST, user_id, limit)
        else:
            rows = await self._db.fetch(_USER_TRANSACTIONS_AFTER, user_id, limit, before_id)
        return [_transaction(row) for row in rows]

    async def users(self, limit: int, after: tuple[datetime, str] | None) -> list[UserSummary]:
        """Return up to `limit` users after the cursor, most recently active first."""
        if after is None:
            rows = await self._db.fetch(_USERS_FIRST, limit)
        else:
            rows = await self._db.fetch(_USERS_AFTER, limit, after[0], after[1])
        return [
            UserSummary(
                user_id=row["user_id"],
                balance=int(row["balance"]),
                transaction_count=int(row["transaction_count"]),
                total_spent=int(row["total_spent"]),
                last_activity_time=row["last_activity_at"],
                create_time=row["created_at"],
            )
            for row in rows
        ]


def _replayed_spend(prior: asyncpg.Record) -> Spend:
    claims = TokenClaims(
        user_id=prior["user_id"],
        token_id=prior["token_id"],
        issued_at=prior["token_issued_at"],
        expires_at=prior["token_expires_at"],
    )
    return Spend(claims=claims, balance_after=int(prior["balance_after"]))


def _transaction(row: asyncpg.Record) -> Transaction:
    return Transaction(
        id=int(row["id"]),
        user_id=row["user_id"],
        type=EntryType(row["type"]),
        amount=int(row["amount"]),
        balance_after=int(row["balance_after"]),
        reason=row["reason"],
        timestamp=row["created_at"],
    )
