"""The credit rules: who may hold what, how credits come in and go out, and how history is read."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from pluct_server.domain.errors import (
    AlreadyExists,
    FeatureNotFound,
    InsufficientCredits,
    InvalidArgument,
    NotASpend,
    NotFound,
    PaymentEventReused,
    RateLimited,
    RefundExceedsSpend,
    ReplayedTokenExpired,
    RequestIdReused,
    Unauthenticated,
)
from pluct_server.domain.pagination import (
    clamp_page_size,
    decode_page_token,
    encode_page_token,
    id_position,
    one_page,
    time_and_name_position,
    xid_and_id_position,
)
from pluct_server.domain.user_turns import UserTurns
from pluct_server.observability.metrics import CREDITS_GRANTED, CREDITS_REFUNDED
from pluct_server.store.errors import RateLimitExceeded
from pluct_server.store.ledger_store import (
    LedgerStore,
    NoSuchFeature,
    PaymentEventTaken,
    RefundKeyTaken,
    RefundRefused,
    RequestKeyTaken,
    UserExists,
)
from pluct_server.values.callers import ANONYMOUS_ID, Caller
from pluct_server.values.charges import SIGNUP as LIMIT_SIGNUP
from pluct_server.values.charges import VEND as LIMIT_VEND
from pluct_server.values.charges import Charge, retry_after_seconds
from pluct_server.values.clock import SYSTEM_CLOCK, Clock
from pluct_server.values.records import (
    DEFAULT_FEATURE,
    Balance,
    Credited,
    EntryType,
    Grant,
    GrantCategory,
    GrantSource,
    GrantTerms,
    PriorRequest,
    Refund,
    RequestKey,
    Spend,
    TokenClaims,
    Transaction,
    UserSummary,
)

_LOGGER = logging.getLogger(__name__)

USER_CREATION_REASON = "User account creation"
WEBHOOK_REASON = "Payment gateway"
ADMIN_DEFAULT_REASON = "Manual credit addition by admin"

USER_TRANSACTIONS_PAGE = (50, 100)  # (default, maximum)
ALL_TRANSACTIONS_PAGE = (100, 100)
GRANTS_PAGE = (50, 100)
USERS_PAGE = (100, 1000)

# Listing names inside page tokens (stored by callers between calls; never rename one without
# retiring the old name in pagination.py).
USERS_LISTING = "users_by_create_time"
FOLLOW_LISTING = "admin_transactions_oldest_first"
GRANTS_LISTING = "grants"


@dataclass(frozen=True)
class TransactionPage:
    """A page of ledger entries and the token for the next one ("" on the last page)."""

    transactions: list[Transaction]
    next_page_token: str


@dataclass(frozen=True)
class GrantPage:
    """A page of a user's grants and the token for the next one ("" on the last page)."""

    grants: list[Grant]
    next_page_token: str


@dataclass(frozen=True)
class UserPage:
    """A page of users and the token for the next one ("" on the last page)."""

    users: list[UserSummary]
    next_page_token: str


def _note(reason: str | None, default: str) -> str:
    """Return the ledger note to store: `reason`, or `default` when it is unset or blank."""
    return default if reason is None or not reason.strip() else reason


def _fingerprint(*parts: object) -> str:
    """Digest of what a request asked for, to tell a true retry from a reused request_id."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()


# Operations, as request-id scopes name them (stored; never rename).
CREATE_USER = "create_user"
ADMIN_GRANT = "admin_grant"
VEND = "vend"
REFUND = "refund"
REFUND_REASON = "Refund"
# What an admin grant is unless its caller says otherwise.
ADMIN_TERMS = GrantTerms(GrantCategory.PROMOTIONAL)
# The source label of pluct_credits_granted_total, by the kind of credit.
_GRANT_SOURCES = {EntryType.ADD_WEBHOOK: "payment", EntryType.ADMIN_ADD: "admin"}


# Credit statements for one user that one worker runs at once (spends have their batches).
# Measured with two workers and credits to one user (make bench's AddCredits): unbounded,
# 1,516-1,593/s at 8 in flight fell to 617-767/s at 64 and 256 (p99 0.3-0.9 s). One turn gave
# 1,363-1,459/s throughout (each hand-off of the row then costs a round trip), two
# 1,468-1,579/s, four 1,584-1,600/s at 8 and 1,641-1,683/s at 64 and 256.
CREDITS_AT_ONCE_PER_USER = 4


class Limits(Protocol):
    """What the ledger asks of the rate limits: the charges of events, and charging them."""

    def charges(self, *wanted: tuple[str, str]) -> tuple[Charge, ...]:
        """Return the charges of (bucket, subject) events whose limits are on."""

    async def charge(self, charges: Sequence[Charge]) -> None:
        """Count each event, all or none; raise RateLimited when a limit is spent."""


class Ledger:
    """Every rule about credits: grants, spends, retries and reading history (fields: protos)."""

    def __init__(
        self,
        store: LedgerStore,
        limiter: Limits,
        signup_allowance: int,
        is_user_id: Callable[[str], bool],
        request_id_retention: timedelta,
        *,
        turn_wait_seconds: float,
        clock: Clock = SYSTEM_CLOCK,
        signup_credits_ttl: timedelta | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        # How long a user's initial credits last (None: for ever).
        self._signup_credits_ttl = signup_credits_ttl
        self._limiter = limiter
        self._signup_allowance = signup_allowance
        # The user-id rule lives on the contract (the protos); a position in a page token
        # names a user, and is held to it.
        self._is_user_id = is_user_id
        self._retention = request_id_retention
        # Credits to one user take turns in this worker, waited for as long as a pooled
        # connection would be (see UserTurns).
        self._credit_turns = UserTurns(CREDITS_AT_ONCE_PER_USER, turn_wait_seconds)

    def _key(
        self, caller: Caller, operation: str, request_id: str, *parts: object
    ) -> RequestKey | None:
        if not request_id:
            return None
        return RequestKey(
            caller.request_scope, operation, request_id, _fingerprint(*parts), self._retention
        )

    async def create_user(
        self, user_id: str, initial_credits: int, request_id: str, caller: Caller
    ) -> int:
        """Create a user with an initial grant; return its balance."""
        if initial_credits > self._signup_allowance and not caller.is_admin:
            raise Unauthenticated(
                f"initial_credits above the signup allowance of {self._signup_allowance} "
                "requires the admin token",
                reason="ADMIN_TOKEN_REQUIRED",
            )
        if caller.id == ANONYMOUS_ID:
            # Strangers get free credits with every user, so their sign-ups are counted by
            # address; a key holder is accountable, and revocable, instead.
            await self._limiter.charge(self._limiter.charges((LIMIT_SIGNUP, caller.address)))
        # Fingerprints keep the shape they had before ids were scoped, so old ids still match.
        key = self._key(caller, CREATE_USER, request_id, "create_user", user_id, initial_credits)
        for _ in range(2):
            try:
                balance = await self._store.create_user(
                    user_id, initial_credits, USER_CREATION_REASON, key, self._signup_credits_ttl
                )
                CREDITS_GRANTED.labels("signup").inc(initial_credits)
                return balance
            except (UserExists, RequestKeyTaken) as taken:
                # A retry of a create that went through finds its own user: answer as before.
                prior = None if key is None else await self._prior(user_id, key)
                if prior is not None:
                    return prior.initial_credits
                if isinstance(taken, UserExists):
                    raise AlreadyExists("User already exists") from None
        raise RequestIdReused()

    async def balance(self, user_id: str) -> Balance:
        """Return a user's balance at this moment, and what of it expires soonest.

        Grants are out of the balance from their expire_time on, written off or not yet; an
        unknown user has 0.
        """
        return await self._store.balance(user_id)

    async def refund(
        self,
        transaction_id: int,
        amount: int,
        reason: str | None,
        request_id: str,
        caller: Caller,
    ) -> Refund:
        """Give back `amount` of a spend (0: all that is left) to the grants it drew from.

        A retry with the same request id is answered with the first refund, and gives back
        nothing more; a spend refunded in full has its token revoked.
        """
        note = _note(reason, REFUND_REASON)
        key = self._key(caller, REFUND, request_id, "refund", transaction_id, amount, note)
        try:
            refund = await self._store.refund(transaction_id, amount, note, caller.id, key)
        except RefundRefused as refused:
            if refused.why == "not_found":
                raise NotFound(
                    f"no transaction has id {transaction_id}", field="transaction_id"
                ) from None
            if refused.why == "not_a_spend":
                raise NotASpend(transaction_id) from None
            raise RefundExceedsSpend(transaction_id) from None
        except RefundKeyTaken as taken:
            assert key is not None
            prior = await self._prior(taken.user_id, key)
            if prior is None or prior.entry_id is None:
                raise RequestIdReused() from None
            entry = await self._store.transaction(taken.user_id, prior.entry_id)
            if entry is None:
                raise RequestIdReused() from None
            return Refund(entry)
        CREDITS_REFUNDED.inc(refund.entry.amount)
        return refund

    async def write_off_expired_grants(self) -> int:
        """Write off the grants that expired since anything touched their users; return credits."""
        return await self._store.sweep_expired_grants()

    async def add_payment(
        self, user_id: str, amount: int, event_id: str, caller: Caller
    ) -> Credited:
        """Credit a payment reported by the payment provider: a paid grant, never expiring.

        Event ids are one namespace for the deployment, which has one payment provider: the
        same event again, through any channel, credits nothing and answers what its first
        credit left; the id with another user or amount is refused, and credits nothing.
        """
        try:
            async with self._credit_turns.turn(user_id):
                credited = await self._store.pay(
                    user_id, amount, EntryType.ADD_WEBHOOK, WEBHOOK_REASON, caller.id, event_id
                )
        except PaymentEventTaken:
            # Events are never forgotten (the serving role may not delete them), so the one
            # that refused this credit is there to read.
            prior = await self._store.prior_payment(event_id)
            if prior is None or (prior.user_id, prior.amount) != (user_id, amount):
                _LOGGER.warning(
                    "payment refused: event_id=%s reused for another user or amount, key_id=%s "
                    "address=%s",
                    event_id,
                    caller.id,
                    caller.address,
                )
                raise PaymentEventReused() from None
            return Credited(prior.balance_after, prior.grant_id)
        CREDITS_GRANTED.labels(_GRANT_SOURCES[EntryType.ADD_WEBHOOK]).inc(amount)
        return credited

    async def add_admin_grant(
        self,
        user_id: str,
        amount: int,
        reason: str | None,
        request_id: str,
        caller: Caller,
        terms: GrantTerms = ADMIN_TERMS,
    ) -> Credited:
        """Credit a manual grant by an admin, on `terms` (promotional, priority 50 unless said).

        Whatever its category, it stays an admin grant: never a payment.
        """
        entry_type = EntryType.ADMIN_ADD
        note = _note(reason, ADMIN_DEFAULT_REASON)
        if terms.expire_time is not None and terms.expire_time <= self._clock.now():
            raise InvalidArgument("expire_time", "expire_time must lie in the future")
        # A grant on the usual terms keeps the fingerprint grants always had.
        said: tuple[object, ...] = ()
        if terms != ADMIN_TERMS:
            expiry = None if terms.expire_time is None else terms.expire_time.isoformat()
            said = (terms.category.value, terms.priority, expiry)
        key = self._key(
            caller, ADMIN_GRANT, request_id, entry_type.value, user_id, amount, note, *said
        )
        for _ in range(2):
            try:
                async with self._credit_turns.turn(user_id):
                    credited = await self._store.credit(
                        user_id, amount, entry_type, note, caller.id, key, terms, GrantSource.ADMIN
                    )
                CREDITS_GRANTED.labels(_GRANT_SOURCES[entry_type]).inc(amount)
                return credited
            except RequestKeyTaken:
                assert key is not None
                prior = await self._prior(user_id, key)
                if prior is not None and prior.balance_after is not None:
                    return Credited(prior.balance_after, prior.grant_id)
        raise RequestIdReused()

    async def spend_for_token(self, claims: TokenClaims, request_id: str, caller: Caller) -> Spend:
        """Spend the price of claims.feature for a token; a retry with the same id spends nothing.

        The spend's claims say what it cost; a retry's are the first spend's, whatever the price
        is now.

        The per-user vend limit, and what the caller's route owes (caller.deferred_charges), are
        charged in the spend's own statement; when no statement commits them (a bad user id, a
        replay, a refusal by the other limit), the owed charges are paid on their own, so a
        vend is never free of the per-address limit.
        """
        owed = caller.deferred_charges
        committed = False
        try:
            # A default vend keeps the request fingerprint it always had, so a retry across
            # versions is still known as one.
            bought = () if claims.feature == DEFAULT_FEATURE else (claims.feature,)
            key = self._key(caller, VEND, request_id, "spend", claims.user_id, *bought)
            charges = tuple(sorted((*owed, *self._limiter.charges((LIMIT_VEND, claims.user_id)))))
            for _ in range(2):
                try:
                    spent = await self._store.spend(claims, key, charges)
                except RateLimitExceeded:
                    # A retry of a vend that went through must still get its token back.
                    replayed = await self._replayed_spend(claims.user_id, key)
                    if replayed is not None:
                        return replayed
                    raise RateLimited(retry_after_seconds(charges)) from None
                except RequestKeyTaken:
                    replayed = await self._replayed_spend(claims.user_id, key)
                    if replayed is not None:
                        return replayed
                    continue  # the key had expired and is forgotten now: spend afresh
                except NoSuchFeature:
                    raise FeatureNotFound(claims.feature) from None
                committed = True
                if spent is not None:
                    return spent
                # A retry of a vend that took the last credit must still get its token back.
                replayed = await self._replayed_spend(claims.user_id, key)
                if replayed is None:
                    raise InsufficientCredits()
                return replayed
            raise RequestIdReused()
        finally:
            if owed and not committed:
                await self._limiter.charge(owed)

    async def _replayed_spend(self, user_id: str, key: RequestKey | None) -> Spend | None:
        """Return the spend an earlier request with this key made, None if there is none."""
        if key is None:
            return None
        prior = await self._prior(user_id, key)
        if prior is None:
            return None
        if prior.claims is None or prior.balance_after is None:
            raise RequestIdReused()
        if prior.claims.expires_at <= self._clock.now():
            # The token cannot be handed out again, and a retry must never buy another one.
            raise ReplayedTokenExpired()
        return Spend(claims=prior.claims, balance_after=prior.balance_after)

    async def _prior(self, user_id: str, key: RequestKey) -> PriorRequest | None:
        """Return the earlier request with this key, None (forgetting it) if it has expired.

        Raises RequestIdReused when the key was used for a different request.
        """
        prior = await self._store.prior_request(user_id, key)
        if prior is None:
            return None
        if prior.expired:
            await self._store.forget_expired_request(user_id, key)
            return None
        if prior.fingerprint != key.fingerprint:
            raise RequestIdReused()
        return prior

    async def forget_expired_requests(self) -> int:
        """Forget every request id past its retention; return how many."""
        return await self._store.purge_expired_requests()

    async def transactions(
        self, user_id: str | None, page_size: int, page_token: str, *, admin_view: bool = False
    ) -> TransactionPage:
        """Return one page of a user's ledger (or, for admins, everyone's), newest first."""
        default, maximum = ALL_TRANSACTIONS_PAGE if admin_view else USER_TRANSACTIONS_PAGE
        size = clamp_page_size(page_size, default, maximum)
        listing = "admin_transactions" if admin_view else "transactions"
        position = decode_page_token(page_token, listing, user_id)
        before_id = id_position(position)
        rows = await self._store.transactions(user_id, size + 1, before_id)
        page, token = one_page(rows, size, listing, user_id, lambda entry: entry.id)
        return TransactionPage(page, token)

    async def grants(self, user_id: str, page_size: int, page_token: str) -> GrantPage:
        """Return one page of a user's grants, newest first, used up and expired ones too."""
        size = clamp_page_size(page_size, *GRANTS_PAGE)
        before_id = id_position(decode_page_token(page_token, GRANTS_LISTING, user_id))
        rows = await self._store.grants(user_id, size + 1, before_id)
        page, token = one_page(rows, size, GRANTS_LISTING, user_id, lambda g: int(g.grant_id))
        return GrantPage(page, token)

    async def followed_transactions(
        self, user_id: str | None, page_size: int, page_token: str
    ) -> TransactionPage:
        """Return the next page of the ledger (or a user's) for a consumer following it.

        Oldest first, settled entries only (LedgerStore.followed_transactions), so an entry
        that commits late is still ahead of the position; the ledger grows, so the token is
        always set, and a short page means the consumer has caught up for now.
        """
        size = clamp_page_size(page_size, *ALL_TRANSACTIONS_PAGE)
        position = decode_page_token(page_token, FOLLOW_LISTING, user_id)
        after = xid_and_id_position(position) or (0, 0)
        rows, after = await self._store.followed_transactions(user_id, size, after)
        return TransactionPage(rows, encode_page_token(FOLLOW_LISTING, user_id, list(after)))

    async def users(self, page_size: int, page_token: str) -> UserPage:
        """Return one page of users, newest first: create time and user id never change."""
        size = clamp_page_size(page_size, *USERS_PAGE)
        position = decode_page_token(page_token, USERS_LISTING, None)
        after = time_and_name_position(position, self._is_user_id)
        rows = await self._store.users(size + 1, after)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            token = encode_page_token(
                USERS_LISTING, None, [last.create_time.isoformat(), last.user_id]
            )
        return UserPage(rows, token)

    async def users_by_activity(self, page_size: int, page_token: str) -> UserPage:
        """Return every user (at most `page_size` when set), most recently active first.

        Activity moves while a scan pages, so this order is never paged: it is read in one
        statement, at one moment, and there is no next page.
        """
        if page_token:
            raise InvalidArgument(
                "page_token", "page_token does not apply: activity order comes in one response"
            )
        rows = await self._store.users_by_activity(page_size or None)
        return UserPage(rows, "")
