"""SQL for balances and the ledger: every statement the domain runs, each a single round trip."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg

from pluct_server.observability.metrics import CREDITS_EXPIRED, count_of
from pluct_server.store.database import Database
from pluct_server.store.errors import RateLimitExceeded, UniqueViolation
from pluct_server.store.spend_batch import (
    LIMITED,
    NO_FEATURE,
    TAKEN,
    SpendBatcher,
    SpendRequest,
)
from pluct_server.values.records import (
    PAYMENT_TERMS,
    Balance,
    Credited,
    EntryType,
    Grant,
    GrantCategory,
    GrantDraw,
    GrantSource,
    GrantTerms,
    PriorPayment,
    PriorRequest,
    Refund,
    RequestKey,
    Spend,
    TokenClaims,
    Transaction,
    UserSummary,
)

if TYPE_CHECKING:
    from pluct_server.values.charges import Charge


class UserExists(Exception):
    """CreateUser named a user id that is taken."""


class RequestKeyTaken(Exception):
    """The request key was claimed before, by this request or another one."""


class PaymentEventTaken(Exception):
    """The payment event id was credited before, by this payment or another one."""


class NoSuchFeature(Exception):
    """A vend named a feature that has no price."""


class RefundRefused(Exception):
    """A refund was not written: `why` is not_found, not_a_spend or exceeds."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class RefundKeyTaken(RequestKeyTaken):
    """The refund's request key was claimed before; `user_id` is whose spend it named."""

    def __init__(self, user_id: str) -> None:
        super().__init__(user_id)
        self.user_id = user_id


# The constraints whose violation the domain needs to tell apart.
_USER_EXISTS = "users_pkey"
_REQUEST_KEY_TAKEN = "request_keys_pkey"
_PAYMENT_EVENT_TAKEN = "payment_events_pkey"

# The request-key claim of a sign-up; the statement says where its values come from.
_CLAIM = """
    INSERT INTO request_keys (user_id, caller, operation, request_id, fingerprint, ledger_id,
                              expire_time)
    SELECT {user_id}, {caller}, {operation}, {request_id}, {fingerprint}, {ledger_id},
           now() + {retention}::interval
"""

# A user's initial credits are a promotional grant of priority 50, expiring after $8 (NULL: never).
_CREATE_USER = (
    """
WITH created AS (
    INSERT INTO users (user_id, balance, initial_credits, transaction_count, next_expire_time)
    VALUES ($1, $2::bigint, $2::bigint, CASE WHEN $2::bigint > 0 THEN 1 ELSE 0 END,
            CASE WHEN $2::bigint > 0 THEN now() + $8::interval END)
    RETURNING user_id, balance
), made AS (
    INSERT INTO grants (user_id, category, priority, amount, remaining, expire_time, source)
    SELECT user_id, 'promotional', 50, balance, balance, now() + $8::interval, 'signup'
      FROM created WHERE balance > 0
    RETURNING grant_id
), granted AS (
    INSERT INTO ledger (user_id, type, amount, balance_after, reason, request_id, grant_id)
    SELECT user_id, 'user_creation', balance, balance, $3, $5, (SELECT grant_id FROM made)
      FROM created WHERE balance > 0
    RETURNING id
), claimed AS ("""
    + _CLAIM.format(
        user_id="user_id",
        caller="$4",
        operation="'create_user'",
        request_id="$5",
        fingerprint="$6",
        ledger_id="(SELECT id FROM granted)",
        retention="$7",
    )
    + """ FROM created WHERE $5::text IS NOT NULL
)
SELECT balance FROM created
"""
)

# Credits in, payments and admin grants alike, in one call of sql/pluct_credit.sql.
_CREDIT = """
SELECT balance_after, grant_id, expired
  FROM pluct_credit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
"""

_PRIOR_PAYMENT = """
SELECT user_id, amount, balance_after, grant_id FROM payment_events WHERE event_id = $1
"""

_PRIOR_REQUEST = """
SELECT k.fingerprint, k.expire_time < now() AS expired,
       coalesce(u.initial_credits, 0) AS initial_credits,
       l.balance_after, l.token_id, l.token_issued_at, l.token_expires_at,
       coalesce(l.feature, 'default') AS feature, l.amount, l.grant_id, k.ledger_id
  FROM request_keys k
  LEFT JOIN users u ON u.user_id = k.user_id
  LEFT JOIN ledger l ON l.user_id = k.user_id AND l.id = k.ledger_id
 WHERE k.user_id = $1 AND k.caller = $2 AND k.operation = $3 AND k.request_id = $4
"""

_FORGET_EXPIRED_KEY = """
DELETE FROM request_keys
 WHERE user_id = $1 AND caller = $2 AND operation = $3 AND request_id = $4 AND expire_time < now()
"""

_PURGE_EXPIRED_KEYS = "DELETE FROM request_keys WHERE expire_time < now()"

# A balance at every moment: what users.balance holds, less what remains of grants that have
# expired but are not written off yet. A user with nothing due (next_expire_time ahead, or
# NULL) costs no look at its grants.
_LIVE_BALANCE = """
u.balance - coalesce((SELECT sum(g.remaining) FROM grants g
                       WHERE u.next_expire_time <= now() AND g.user_id = u.user_id
                         AND g.drawable AND g.expire_time <= now()), 0)"""

# The balance, and what remains of the grants that expire soonest (none when nothing will).
_BALANCE = f"""
SELECT {_LIVE_BALANCE} AS balance, soonest.expire_time, soonest.amount
  FROM users u
  LEFT JOIN LATERAL (
      SELECT g.expire_time, sum(g.remaining) AS amount FROM grants g
       WHERE u.next_expire_time IS NOT NULL AND g.user_id = u.user_id AND g.drawable
         AND g.expire_time > now()
       GROUP BY g.expire_time ORDER BY g.expire_time LIMIT 1
  ) soonest ON true
 WHERE u.user_id = $1
"""

_SWEEP = "SELECT users_swept, credits_expired FROM pluct_sweep_expired_grants($1)"

# A refund, in one call of sql/pluct_refund.sql.
_REFUND = """
SELECT outcome, user_id, entry_id, refunded, expired, revoked_token
  FROM pluct_refund($1, $2, $3, $4, $5, $6, $7, $8)
"""
_SWEEP_USERS = 50

# The f-strings below only splice in fixed column lists; values always travel as $n parameters.
# ruff: noqa: S608
_TRANSACTION_COLUMNS = (
    "id, user_id, type, amount, balance_after, reason, created_at, actor, grant_id,"
    " draw_grant_ids, draw_amounts, refunds_id"
)
_TRANSACTION = f"""
SELECT {_TRANSACTION_COLUMNS} FROM ledger WHERE user_id = $1 AND id = $2
"""

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

# Following the ledger oldest first: only entries whose writing transaction, and every older
# one, has finished (xid below the snapshot's xmin), so none can ever appear behind a position
# once read; in (xid, id) order, since an old transaction may yet add a high id below a younger
# one's lower id (migration 0007 says why). The horizon is STABLE, so ledger_by_xid serves it.
_FOLLOWED_TRANSACTIONS = f"""
SELECT {_TRANSACTION_COLUMNS}, xid FROM ledger
 WHERE (xid, id) > ($2, $3) AND xid < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY xid, id LIMIT $1
"""
_FOLLOWED_USER_TRANSACTIONS = f"""
SELECT {_TRANSACTION_COLUMNS}, xid FROM ledger
 WHERE user_id = $4 AND (xid, id) > ($2, $3) AND xid < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY xid, id LIMIT $1
"""

_GRANT_COLUMNS = (
    "user_id, grant_id, category, priority, amount, remaining, expire_time, source, create_time"
)
# Newest first, by id (ids only grow), so a scan neither skips nor repeats a grant.
_GRANTS = f"""
SELECT {_GRANT_COLUMNS} FROM grants
 WHERE user_id = $1 AND ($3::bigint IS NULL OR grant_id < $3)
 ORDER BY grant_id DESC LIMIT $2
"""

_USER_COLUMNS = (
    f"u.user_id, {_LIVE_BALANCE} AS balance, u.transaction_count, u.total_spent,"
    " u.last_activity_at, u.created_at"
)
# Paged by create time and user id, which never change, so a scan neither skips nor repeats.
_USERS_NEWEST_FIRST = f"""
SELECT {_USER_COLUMNS} FROM users u ORDER BY created_at DESC, user_id DESC LIMIT $1
"""
_USERS_NEWEST_AFTER = f"""
SELECT {_USER_COLUMNS} FROM users u
 WHERE (created_at, user_id) < ($2, $3)
 ORDER BY created_at DESC, user_id DESC LIMIT $1
"""
# Activity moves, so this order is never paged: one statement reads it at one moment
# (LIMIT NULL is every user).
_USERS_BY_ACTIVITY = f"""
SELECT {_USER_COLUMNS} FROM users u ORDER BY last_activity_at DESC, user_id DESC LIMIT $1
"""


def _key_arguments(
    key: RequestKey | None,
) -> tuple[str | None, str | None, str | None, str | None, object]:
    """Return (caller, operation, request_id, fingerprint, retention) for a claim, or Nones."""
    if key is None:
        return None, None, None, None, None
    return key.caller, key.operation, key.request_id, key.fingerprint, key.retention


class LedgerStore:
    """Reads and writes users and ledger entries; reports what the database said, no policy."""

    def __init__(self, database: Database, spends: SpendBatcher | None = None) -> None:
        self._db = database
        self._spends = spends or SpendBatcher(database)
        self._expired = count_of(CREDITS_EXPIRED)

    async def create_user(
        self,
        user_id: str,
        initial_credits: int,
        reason: str,
        key: RequestKey | None,
        credits_ttl: timedelta | None = None,
    ) -> int:
        """Insert a user with its initial credits, a promotional grant; return its balance.

        The grant expires `credits_ttl` after creation (None: never). Raises UserExists, or
        RequestKeyTaken when the key was claimed before.
        """
        scope, _, request_id, fingerprint, retention = _key_arguments(key)
        try:
            row = await self._db.fetchrow(
                _CREATE_USER,
                user_id,
                initial_credits,
                reason,
                scope,
                request_id,
                fingerprint,
                retention,
                credits_ttl,
                writes=True,
            )
        except UniqueViolation as exc:
            raise _taken(exc, UserExists) from exc
        assert row is not None
        return int(row["balance"])

    async def credit(
        self,
        user_id: str,
        amount: int,
        entry_type: EntryType,
        reason: str,
        actor: str,
        key: RequestKey | None,
        terms: GrantTerms,
        source: GrantSource,
    ) -> Credited:
        """Add credits as a grant on `terms`, creating the user if needed.

        Raises RequestKeyTaken when the key was claimed before.
        """
        scope, operation, request_id, fingerprint, retention = _key_arguments(key)
        return await self._credit(
            user_id,
            amount,
            entry_type.value,
            reason,
            actor,
            terms.category.value,
            terms.priority,
            source.value,
            terms.expire_time,
            request_id,
            False,
            scope,
            operation,
            fingerprint,
            retention,
        )

    async def pay(
        self,
        user_id: str,
        amount: int,
        entry_type: EntryType,
        reason: str,
        actor: str,
        event_id: str,
    ) -> Credited:
        """Credit a payment (a paid grant) and claim its event id ("" for none) at once.

        Raises PaymentEventTaken when the event id was credited before, and then credits nothing.
        """
        return await self._credit(
            user_id,
            amount,
            entry_type.value,
            reason,
            actor,
            PAYMENT_TERMS.category.value,
            PAYMENT_TERMS.priority,
            GrantSource.PAYMENT.value,
            PAYMENT_TERMS.expire_time,
            event_id or None,
            True,
            None,
            None,
            None,
            None,
        )

    async def _credit(self, user_id: str, *arguments: object) -> Credited:
        """Run pluct_credit; return the balance after it, the grant it made, what expired."""
        try:
            row = await self._db.fetchrow(_CREDIT, user_id, *arguments, writes=True)
        except UniqueViolation as exc:
            raise _taken(exc) from exc
        assert row is not None
        if row["expired"]:
            self._expired.inc(int(row["expired"]))
        return Credited(
            int(row["balance_after"]), opaque_grant_id(row["grant_id"]), expired=int(row["expired"])
        )

    async def refund(
        self, spend_id: int, amount: int, reason: str, actor: str, key: RequestKey | None
    ) -> Refund:
        """Give back `amount` of a spend (0: all that is left) to the grants it drew from.

        Raises RefundRefused (nothing changed) or RefundKeyTaken.
        """
        scope, _, request_id, fingerprint, retention = _key_arguments(key)
        row = await self._db.fetchrow(
            _REFUND,
            spend_id,
            amount,
            reason,
            actor,
            request_id,
            scope,
            fingerprint,
            retention,
            writes=True,
        )
        assert row is not None
        if row["outcome"] == "taken":
            raise RefundKeyTaken(row["user_id"])
        if row["outcome"] != "refunded":
            raise RefundRefused(row["outcome"])
        if row["expired"]:
            self._expired.inc(int(row["expired"]))
        entry = await self.transaction(row["user_id"], row["entry_id"])
        assert entry is not None
        return Refund(entry, row["revoked_token"])

    async def transaction(self, user_id: str, entry_id: int) -> Transaction | None:
        """Return one ledger entry of `user_id`, None if it has none by that id."""
        row = await self._db.fetchrow(_TRANSACTION, user_id, entry_id)
        return None if row is None else _transaction(row)

    async def sweep_expired_grants(self) -> int:
        """Write off the expired grants of every user nobody touched since; return the credits.

        A chunk of users at a time, each its own transaction, so no spend waits long for one.
        """
        total = 0
        while True:
            row = await self._db.fetchrow(_SWEEP, _SWEEP_USERS, writes=True)
            assert row is not None
            total += int(row["credits_expired"])
            if row["credits_expired"]:
                self._expired.inc(int(row["credits_expired"]))
            if row["users_swept"] < _SWEEP_USERS:
                return total

    async def prior_payment(self, event_id: str) -> PriorPayment | None:
        """Return what the payment with this event id credited, None if there was none."""
        row = await self._db.fetchrow(_PRIOR_PAYMENT, event_id)
        if row is None:
            return None
        return PriorPayment(
            user_id=row["user_id"],
            amount=int(row["amount"]),
            balance_after=int(row["balance_after"]),
            grant_id=opaque_grant_id(row["grant_id"]),
        )

    async def spend(
        self, claims: TokenClaims, key: RequestKey | None, charges: Sequence[Charge]
    ) -> Spend | None:
        """Charge the limits and spend the feature's price; None when the balance is too low.

        The spend's claims carry what it cost. Spends that arrive together share one statement
        (SpendBatcher), each with its own outcome. Raises NoSuchFeature or RateLimitExceeded
        (nothing changed), or RequestKeyTaken.
        """
        done = await self._spends.spend(SpendRequest(claims, key, charges))
        if done.outcome == TAKEN:
            raise RequestKeyTaken()
        if done.outcome == LIMITED:
            raise RateLimitExceeded()
        if done.outcome == NO_FEATURE:
            raise NoSuchFeature()
        if done.balance_after is None or done.charged is None:
            return None
        return Spend(claims=replace(claims, cost=done.charged), balance_after=done.balance_after)

    async def prior_request(self, user_id: str, key: RequestKey) -> PriorRequest | None:
        """Return what an earlier request with this key did, or None if none is remembered."""
        row = await self._db.fetchrow(
            _PRIOR_REQUEST, user_id, key.caller, key.operation, key.request_id
        )
        if row is None:
            return None
        claims = None
        if row["token_id"] is not None:
            claims = TokenClaims(
                user_id=user_id,
                token_id=row["token_id"],
                issued_at=row["token_issued_at"],
                expires_at=row["token_expires_at"],
                feature=row["feature"],
                cost=int(row["amount"]),
            )
        balance = row["balance_after"]
        return PriorRequest(
            fingerprint=row["fingerprint"],
            expired=bool(row["expired"]),
            initial_credits=int(row["initial_credits"]),
            balance_after=None if balance is None else int(balance),
            claims=claims,
            grant_id=opaque_grant_id(row["grant_id"]),
            entry_id=row["ledger_id"],
        )

    async def forget_expired_request(self, user_id: str, key: RequestKey) -> None:
        """Forget this key if its retention has passed, so the id may be used afresh."""
        await self._db.execute(
            _FORGET_EXPIRED_KEY, user_id, key.caller, key.operation, key.request_id
        )

    async def purge_expired_requests(self) -> int:
        """Forget every request key past its retention; return how many."""
        status = await self._db.execute(_PURGE_EXPIRED_KEYS)
        return int(status.rsplit(" ", 1)[-1])

    async def balance(self, user_id: str) -> Balance:
        """Return a user's balance now, and what expires soonest; 0 for an unknown user."""
        row = await self._db.fetchrow(_BALANCE, user_id)
        if row is None:
            return Balance(0)
        if row["expire_time"] is None:
            return Balance(int(row["balance"]))
        return Balance(int(row["balance"]), row["expire_time"], int(row["amount"]))

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

    async def grants(self, user_id: str, limit: int, before_id: int | None) -> list[Grant]:
        """Return up to `limit` of a user's grants older than `before_id`, newest first."""
        return [_grant(row) for row in await self._db.fetch(_GRANTS, user_id, limit, before_id)]

    async def followed_transactions(
        self, user_id: str | None, limit: int, after: tuple[int, int]
    ) -> tuple[list[Transaction], tuple[int, int]]:
        """Return up to `limit` settled entries past (xid, id), oldest first, and where they end."""
        if user_id is None:
            rows = await self._db.fetch(_FOLLOWED_TRANSACTIONS, limit, *after)
        else:
            rows = await self._db.fetch(_FOLLOWED_USER_TRANSACTIONS, limit, *after, user_id)
        if rows:
            after = (int(rows[-1]["xid"]), int(rows[-1]["id"]))
        return [_transaction(row) for row in rows], after

    async def users(self, limit: int, after: tuple[datetime, str] | None) -> list[UserSummary]:
        """Return up to `limit` users created before the cursor, newest first."""
        if after is None:
            rows = await self._db.fetch(_USERS_NEWEST_FIRST, limit)
        else:
            rows = await self._db.fetch(_USERS_NEWEST_AFTER, limit, after[0], after[1])
        return [_user(row) for row in rows]

    async def users_by_activity(self, limit: int | None) -> list[UserSummary]:
        """Return every user (or the first `limit`), most recently active first, at one moment."""
        return [_user(row) for row in await self._db.fetch(_USERS_BY_ACTIVITY, limit)]


def _taken(violation: UniqueViolation, otherwise: type[Exception] | None = None) -> Exception:
    """Translate a unique violation into what it means for the domain."""
    if violation.constraint == _REQUEST_KEY_TAKEN:
        return RequestKeyTaken()
    if violation.constraint == _PAYMENT_EVENT_TAKEN:
        return PaymentEventTaken()
    if otherwise is not None and violation.constraint == _USER_EXISTS:
        return otherwise()
    return violation


def _user(row: asyncpg.Record) -> UserSummary:
    return UserSummary(
        user_id=row["user_id"],
        balance=int(row["balance"]),
        transaction_count=int(row["transaction_count"]),
        total_spent=int(row["total_spent"]),
        last_activity_time=row["last_activity_at"],
        create_time=row["created_at"],
    )


def _transaction(row: asyncpg.Record) -> Transaction:
    return Transaction(
        id=int(row["id"]),
        user_id=row["user_id"],
        type=EntryType(row["type"]),
        amount=int(row["amount"]),
        balance_after=int(row["balance_after"]),
        reason=row["reason"],
        timestamp=row["created_at"],
        actor=row["actor"],
        draws=tuple(
            GrantDraw(str(grant_id), int(amount))
            for grant_id, amount in zip(
                row["draw_grant_ids"] or (), row["draw_amounts"] or (), strict=True
            )
        ),
        grant_id=opaque_grant_id(row["grant_id"]),
        refunds=row["refunds_id"],
    )


def opaque_grant_id(value: int | None) -> str | None:
    """Return a grant's id as callers see it: an opaque string (None before grants)."""
    return None if value is None else str(value)


def _grant(row: asyncpg.Record) -> Grant:
    return Grant(
        grant_id=str(row["grant_id"]),
        user_id=row["user_id"],
        category=GrantCategory(row["category"]),
        priority=int(row["priority"]),
        amount=int(row["amount"]),
        remaining=int(row["remaining"]),
        expire_time=row["expire_time"],
        source=GrantSource(row["source"]),
        create_time=row["create_time"],
    )
