"""Plain data the domain and the store hand each other."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID


class EntryType(enum.Enum):
    """Kinds of ledger entries; the values are what the ledger stores."""

    USER_CREATION = "user_creation"
    ADD_WEBHOOK = "add_webhook"
    ADMIN_ADD = "admin_add"
    SPEND = "spend"
    EXPIRATION = "expiration"
    REFUND = "refund"


# Entry types that take credits out of a balance; every other one puts them in.
DEBITS = frozenset({EntryType.SPEND, EntryType.EXPIRATION})


class GrantCategory(enum.Enum):
    """Whether a grant's credits were bought or given; the values are what grants store."""

    PAID = "paid"
    PROMOTIONAL = "promotional"


class GrantSource(enum.Enum):
    """Where a grant came from; the values are what grants store."""

    SIGNUP = "signup"
    PAYMENT = "payment"
    ADMIN = "admin"
    OPENING_BALANCE = "opening_balance"


# Where a grant stands in the draw order when nobody says otherwise (0 to 100, lower first).
DEFAULT_PRIORITY = 50


@dataclass(frozen=True)
class GrantTerms:
    """How a credit's grant is spent: its category, priority and expiry (None: never)."""

    category: GrantCategory
    priority: int = DEFAULT_PRIORITY
    expire_time: datetime | None = None


# What a payment makes: paid credits, spent at the default priority, never expiring.
PAYMENT_TERMS = GrantTerms(GrantCategory.PAID)


@dataclass(frozen=True)
class Grant:
    """One lot of credits a user holds, and what remains of it."""

    grant_id: str
    user_id: str
    category: GrantCategory
    priority: int
    amount: int
    remaining: int
    expire_time: datetime | None
    source: GrantSource
    create_time: datetime


@dataclass(frozen=True)
class Credited:
    """What a credit did: the balance it left, and the grant it made (None before grants)."""

    balance_after: int
    grant_id: str | None
    # Credits of expired grants this call wrote off first.
    expired: int = 0


@dataclass(frozen=True)
class Balance:
    """A user's balance at one moment, and what of it expires soonest (None: nothing will)."""

    balance: int
    next_expire_time: datetime | None = None
    next_expire_amount: int = 0


@dataclass(frozen=True)
class GrantDraw:
    """What one spend took from one grant."""

    grant_id: str
    amount: int


@dataclass(frozen=True)
class Transaction:
    """One ledger entry."""

    id: int
    user_id: str
    type: EntryType
    amount: int
    balance_after: int
    reason: str | None
    timestamp: datetime
    actor: str | None = None
    # A spend's draws, in order (a refund's: where it gave back); the grant a credit made or an
    # expiration wrote off. Empty and None before grants.
    draws: tuple[GrantDraw, ...] = ()
    grant_id: str | None = None
    # The spend a refund gives back of.
    refunds: int | None = None


@dataclass(frozen=True)
class Event:
    """What happened to a user's credits: one ledger entry, as the services that listen hear it."""

    event_id: str
    type: str
    create_time: datetime
    user_id: str
    transaction_id: int
    entry_type: EntryType
    amount: int
    balance_after: int
    # What the entry's type says beside: a spend's feature and token, the grant a credit made
    # or an expiration wrote off, the spend a refund gives back of.
    feature: str | None = None
    token_id: str | None = None
    grant_id: str | None = None
    refunds: int | None = None


@dataclass(frozen=True)
class UserSummary:
    """One user's account as admins see it."""

    user_id: str
    balance: int
    transaction_count: int
    total_spent: int
    last_activity_time: datetime
    create_time: datetime


# What a vend without a feature buys, the legacy POST /vend-token among them: one credit, for ever.
DEFAULT_FEATURE = "default"


@dataclass(frozen=True)
class TokenClaims:
    """The claims of a vended token that the ledger keeps, so a retry re-issues the same token."""

    user_id: str
    token_id: UUID
    issued_at: datetime
    expires_at: datetime
    # What the token unlocks, and what it cost when it was sold.
    feature: str = DEFAULT_FEATURE
    cost: int = 1


@dataclass(frozen=True)
class WebhookEndpoint:
    """A URL that events are sent to; its secret is never part of it."""

    endpoint_id: str
    url: str
    event_types: tuple[str, ...]
    balance_thresholds: tuple[int, ...]
    create_time: datetime
    disabled: bool


@dataclass(frozen=True)
class Price:
    """What a token for one feature costs; version counts its changes."""

    feature: str
    credits: int
    version: int
    update_time: datetime


@dataclass(frozen=True)
class Spend:
    """The outcome of spending a feature's price on a token (claims.cost is what it took)."""

    claims: TokenClaims
    balance_after: int


@dataclass(frozen=True)
class RequestKey:
    """A request id in its scope: from another caller, operation or user it is another request."""

    caller: str
    operation: str
    request_id: str
    # Digest of what the request asked for, to tell a true retry from a reused id.
    fingerprint: str
    # How long the id is remembered (payment event ids, kept for ever, are not request keys).
    retention: timedelta


@dataclass(frozen=True)
class PriorRequest:
    """What the database remembers of an earlier request with the same key."""

    fingerprint: str
    expired: bool
    initial_credits: int
    balance_after: int | None
    claims: TokenClaims | None
    # The grant the earlier credit made (None for other requests, and before grants).
    grant_id: str | None = None
    # The ledger entry the earlier request wrote (None when it wrote none).
    entry_id: int | None = None


@dataclass(frozen=True)
class Refund:
    """A refund: its ledger entry, and the token it revoked (when it completed the spend's)."""

    entry: Transaction
    revoked_token: str | None = None


@dataclass(frozen=True)
class PriorPayment:
    """What a payment event id was first credited with, the balance it left, the grant it made."""

    user_id: str
    amount: int
    balance_after: int
    grant_id: str | None = None


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key as stored: its scopes and the hash of its secret, never the secret."""

    key_id: str
    name: str
    scopes: frozenset[str]
    secret_hash: bytes
    created_by: str
    create_time: datetime
    revoke_time: datetime | None
