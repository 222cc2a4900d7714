"""The credit rules: who may hold what, how credits come in and go out, and how history is read."""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from pluct_server.errors import InvalidArgument, Unauthenticated
from pluct_server.models import EntryType, Spend, TokenClaims, Transaction, UserSummary
from pluct_server.pagination import clamp_page_size, decode_page_token, encode_page_token
from pluct_server.store.ledger_store import LedgerStore

USER_ID_MAX_CHARS = 100
CREDIT_AMOUNT_MIN = 1
CREDIT_AMOUNT_MAX = 10_000
REASON_MAX_CHARS = 500
REQUEST_ID_MAX_CHARS = 128

USER_CREATION_REASON = "User account creation"
WEBHOOK_REASON = "Payment gateway"
ADMIN_DEFAULT_REASON = "Manual credit addition by admin"

USER_TRANSACTIONS_PAGE = (50, 100)  # (default, maximum)
ALL_TRANSACTIONS_PAGE = (100, 100)
USERS_PAGE = (100, 1000)


@dataclass(frozen=True)
class TransactionPage:
    """A page of ledger entries and the token for the next one ("" on the last page)."""

    transactions: list[Transaction]
    next_page_token: str


@dataclass(frozen=True)
class UserPage:
    """A page of users and the token for the next one ("" on the last page)."""

    users: list[UserSummary]
    next_page_token: str


def _has_control_characters(text: str, allowed: str = "") -> bool:
    return any(unicodedata.category(ch) == "Cc" and ch not in allowed for ch in text)


def check_user_id(user_id: str) -> str:
    """Return `user_id` if it is a valid user id, else raise InvalidArgument."""
    if not user_id.strip():
        raise InvalidArgument("user_id", "user_id is required and must not be blank")
    if len(user_id) > USER_ID_MAX_CHARS:
        raise InvalidArgument(
            "user_id", f"user_id must be at most {USER_ID_MAX_CHARS} characters, got {len(user_id)}"
        )
    if _has_control_characters(user_id):
        raise InvalidArgument("user_id", "user_id must not contain control characters")
    return user_id


def check_amount(amount: int) -> int:
    """Return `amount` if it is a valid credit amount, else raise InvalidArgument."""
    if not CREDIT_AMOUNT_MIN <= amount <= CREDIT_AMOUNT_MAX:
        raise InvalidArgument(
            "amount",
            f"amount must be between {CREDIT_AMOUNT_MIN} and {CREDIT_AMOUNT_MAX}, got {amount}",
        )
    return amount


def check_request_id(request_id: str) -> str | None:
    """Return the request id, None when absent, or raise InvalidArgument."""
    if not request_id:
        return None
    if len(request_id) > REQUEST_ID_MAX_CHARS or _has_control_characters(request_id):
        raise InvalidArgument(
            "request_id",
            f"request_id must be at most {REQUEST_ID_MAX_CHARS} characters, no control characters",
        )
    return request_id


def check_reason(reason: str | None, default: str) -> str:
    """Return the ledger note to store: `reason`, or `default` when it is unset or blank."""
    if reason is None or not reason.strip():
        return default
    if len(reason) > REASON_MAX_CHARS:
        raise InvalidArgument("reason", f"reason must be at most {REASON_MAX_CHARS} characters")
    if _has_control_characters(reason, allowed="\t\n\r"):
        raise InvalidArgument("reason", "reason must not contain control characters")
    return reason


def _fingerprint(request_id: str | None, *parts: object) -> str | None:
    """Digest of what a request asked for, to tell a true retry from a reused request_id."""
    if request_id is None:
        return None
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class Ledger:
    """Every rule about credits: validation, grants, spends and reading history."""

    def __init__(self, store: LedgerStore, signup_allowance: int) -> None:
        self._store = store
        self._signup_allowance = signup_allowance

    async def create_user(
        self, user_id: str, initial_credits: int, request_id: str, *, caller_is_admin: bool
    ) -> int:
        """Create a user with an initial grant; return its balance."""
        check_user_id(user_id)
        if initial_credits < 0:
            raise InvalidArgument(
                "initial_credits", f"initial_credits must be 0 or more, got {initial_credits}"
            )
        if initial_credits > CREDIT_AMOUNT_MAX:
            raise InvalidArgument(
                "initial_credits", f"initial_credits must be at most {CREDIT_AMOUNT_MAX}"
            )
        if initial_credits > self._signup_allowance and not caller_is_admin:
            raise Unauthenticated(
                f"initial_credits above the signup allowance of {self._signup_allowance} "
                "requires the admin token",
                reason="ADMIN_TOKEN_REQUIRED",
            )
        rid = check_request_id(request_id)
        return await self._store.create_user(
            user_id,
            initial_credits,
            USER_CREATION_REASON,
            rid,
            _fingerprint(rid, "create_user", user_id, initial_credits),
        )

    async def balance(self, user_id: str) -> int:
        """Return a user's balance; 0 for an unknown user."""
        return await self._store.balance(check_user_id(user_id))

    async def add_payment(self, user_id: str, amount: int, request_id: str) -> int:
        """Credit a payment reported by the payment provider; return the new balance."""
        return await self._credit(
            user_id, amount, EntryType.ADD_WEBHOOK, WEBHOOK_REASON, request_id
        )

    async def add_admin_grant(
        self, user_id: str, amount: int, reason: str | None, request_id: str
    ) -> int:
        """Credit a manual grant by an admin; return the new balance."""
        check_user_id(user_id)
        check_amount(amount)
        note = check_reason(reason, ADMIN_DEFAULT_REASON)
        return await self._credit(user_id, amount, EntryType.ADMIN_ADD, note, request_id)

    async def _credit(
        self, user_id: str, amount: int, entry_type: EntryType, reason: str, request_id: str
    ) -> int:
        check_user_id(user_id)
        check_amount(amount)
        rid = check_request_id(request_id)
        fingerprint = _fingerprint(rid, entry_type.value, user_id, amount, reason)
        return await self._store.credit(user_id, amount, entry_type, reason, rid, fingerprint)

    async def spend_for_token(self, claims: TokenClaims, request_id: str) -> Spend:
        """Spend one credit for a token; a retry returns the first spend's claims."""
        check_user_id(claims.user_id)
        rid = check_request_id(request_id)
        fingerprint = _fingerprint(rid, "spend", claims.user_id)
        return await self._store.spend_one(claims, rid, fingerprint)

    async def transactions(
        self, user_id: str | None, page_size: int, page_token: str, *, admin_view: bool = False
    ) -> TransactionPage:
        """Return one page of a user's ledger (or, for admins, everyone's), newest first."""
        if user_id is not None:
            check_user_id(user_id)
        default, maximum = ALL_TRANSACTIONS_PAGE if admin_view else USER_TRANSACTIONS_PAGE
        size = clamp_page_size(page_size, default, maximum)
        listing = "admin_transactions" if admin_view else "transactions"
        position = decode_page_token(page_token, listing, user_id)
        before_id = _int_position(position)
        rows = await self._store.transactions(user_id, size + 1, before_id)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = encode_page_token(listing, user_id, [rows[-1].id])
        return TransactionPage(rows, token)

    async def users(self, page_size: int, page_token: str) -> UserPage:
        """Return one page of users, most recently active first."""
        size = clamp_page_size(page_size, *USERS_PAGE)
        position = decode_page_token(page_token, "users", None)
        after = _user_position(position)
        rows = await self._store.users(size + 1, after)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            token = encode_page_token(
                "users", None, [last.last_activity_time.isoformat(), last.user_id]
            )
        return UserPage(rows, token)


def _int_position(position: list[object] | None) -> int | None:
    if position is None:
        return None
    if len(position) != 1 or not isinstance(position[0], int):
        raise InvalidArgument("page_token", "page_token is not a token this list returned")
    return position[0]


def _user_position(position: list[object] | None) -> tuple[datetime, str] | None:
    if position is None:
        return None
    invalid = InvalidArgument("page_token", "page_token is not a token this list returned")
    if len(position) != 2 or not all(isinstance(part, str) for part in position):
        raise invalid
    try:
        return datetime.fromisoformat(str(position[0])), str(position[1])
    except ValueError as exc:
        raise invalid from exc
