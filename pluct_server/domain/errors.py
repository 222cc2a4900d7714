"""Domain errors: what went wrong, said for the caller, with a machine-readable reason.

They carry no transport status: each door says which status an error is reported with
(api/grpc/status.py for gRPC, and from it the shim's HTTP table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pluct_server.store.errors import StoreFailure, WriteOutcomeUnknown

ERROR_DOMAIN = "pluct.engine"


class DomainError(Exception):
    """A failure the caller should hear about, with a message safe to show them."""

    reason: str = "UNKNOWN"

    def __init__(self, message: str, *, reason: str | None = None, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = metadata


@dataclass(frozen=True)
class FieldViolation:
    """One bad field, as AIP-193's BadRequest.FieldViolation says it: path, text, rule broken."""

    field: str
    description: str
    rule: str = ""


class InvalidArgument(DomainError):
    """A request field is missing, malformed or out of range."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str, violations: Sequence[FieldViolation] = ()) -> None:
        super().__init__(message, field=field)
        self.field = field
        self.violations = tuple(violations) or (FieldViolation(field, message),)

    @classmethod
    def of(cls, violations: Sequence[FieldViolation]) -> InvalidArgument:
        """Return the error for every bad field at once; the first names it in ErrorInfo."""
        message = "; ".join(violation.description for violation in violations)
        return cls(violations[0].field, message, violations)


class RequestIdReused(DomainError):
    """A request_id came back with parameters other than those it was first used with."""

    reason = "REQUEST_ID_REUSED"

    def __init__(self) -> None:
        super().__init__(
            "request_id was already used for a different request; use a new request_id",
            field="request_id",
        )


class Unauthenticated(DomainError):
    """The caller did not present the secret this call needs."""

    reason = "UNAUTHENTICATED"


class MalformedCredentials(DomainError):
    """The caller presented credentials in a shape we cannot read."""

    reason = "MALFORMED_CREDENTIALS"


class AlreadyExists(DomainError):
    """The thing to create exists already."""

    reason = "ALREADY_EXISTS"


class PaymentEventReused(DomainError):
    """A payment event id came back naming another user or amount than it was credited with."""

    reason = "PAYMENT_EVENT_REUSED"

    def __init__(self) -> None:
        super().__init__(
            "this payment event id was already credited, to another user or amount; "
            "nothing was credited",
            field="event_id",
        )


class InsufficientCredits(DomainError):
    """The user's balance cannot pay for the request."""

    reason = "INSUFFICIENT_CREDITS"

    def __init__(self) -> None:
        super().__init__("Insufficient credits")


class Unavailable(DomainError):
    """The database cannot be reached; the call may succeed if retried later."""

    reason = "DATABASE_UNAVAILABLE"

    def __init__(self) -> None:
        super().__init__("the database is unavailable; retry later")


class UserBusy(DomainError):
    """So many credits for one user wait in this worker that this one waited its longest."""

    reason = "USER_BUSY"

    def __init__(self) -> None:
        super().__init__("too many credits for this user are in flight at once; retry later")


class PermissionDenied(DomainError):
    """The caller is known, but its key lacks the scope this call needs."""

    reason = "MISSING_SCOPE"


class RateLimited(DomainError):
    """A configured limit is spent; nothing was changed, and the caller may retry later."""

    reason = "RATE_LIMITED"

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__("Too many requests", retry_after=str(retry_after_seconds))
        self.retry_after_seconds = retry_after_seconds


class NotFound(DomainError):
    """The thing named does not exist."""

    reason = "NOT_FOUND"


class FeatureNotFound(NotFound):
    """A vend named a feature that has no price."""

    reason = "FEATURE_NOT_FOUND"

    def __init__(self, feature: str) -> None:
        super().__init__(
            f"no feature {feature!r} has a price; nothing was charged (AdminService.ListPrices "
            "lists the features)",
            field="feature",
        )


class WebhookEndpointNotFound(NotFound):
    """A call named a webhook endpoint that does not exist."""

    reason = "WEBHOOK_ENDPOINT_NOT_FOUND"

    def __init__(self, endpoint_id: str) -> None:
        super().__init__(
            f"no webhook endpoint {endpoint_id!r} (AdminService.ListWebhookEndpoints lists them)",
            field="endpoint_id",
        )


class NotASpend(DomainError):
    """A refund named a ledger entry that is not a spend."""

    reason = "NOT_A_SPEND"

    def __init__(self, transaction_id: int) -> None:
        super().__init__(
            f"transaction {transaction_id} is not a spend; only spends are refunded; nothing "
            "changed",
            field="transaction_id",
        )


class RefundExceedsSpend(DomainError):
    """A refund asked for more than is left to refund of its spend."""

    reason = "REFUND_EXCEEDS_SPEND"

    def __init__(self, transaction_id: int) -> None:
        super().__init__(
            f"that is more than is left to refund of spend {transaction_id}; nothing changed",
            field="amount",
        )


class ReplayedTokenExpired(DomainError):
    """A vend was retried with its request id after the token it bought had expired."""

    reason = "REPLAYED_TOKEN_EXPIRED"

    def __init__(self) -> None:
        super().__init__(
            "the token this request_id bought has expired; nothing was charged, "
            "use a new request_id to buy a new token",
            field="request_id",
        )


class OutcomeUnknown(DomainError):
    """A write reached the database, and then the connection failed: it may have committed."""

    reason = "OUTCOME_UNKNOWN"

    def __init__(self) -> None:
        super().__init__(
            "the database may or may not have applied this call; retry it with the same "
            "request_id, which applies it at most once"
        )


class OutcomeUnknownAfterTimeout(OutcomeUnknown):
    """A write reached the database and took too long: it may yet have committed."""


class TooManyAtOnce(RateLimited):
    """The caller (its address, or its key) has its share of calls in flight; nothing was done."""

    reason = "CONCURRENCY_LIMITED"

    def __init__(self) -> None:
        super().__init__(retry_after_seconds=1)


class Overloaded(RateLimited):
    """As many calls are in flight as the server takes at once; nothing was done."""

    reason = "OVERLOADED"

    def __init__(self) -> None:
        super().__init__(retry_after_seconds=1)


class RequestTimeout(DomainError):
    """A call's request did not arrive whole within the read timeout; nothing was done."""

    reason = "REQUEST_TIMEOUT"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the request did not arrive within {seconds:g} s")


def from_store(failure: StoreFailure) -> DomainError:
    """Say what a failure the store reports means to a caller."""
    if isinstance(failure, WriteOutcomeUnknown):
        return OutcomeUnknownAfterTimeout() if failure.timed_out else OutcomeUnknown()
    return Unavailable()  # nothing went out: retrying later is all there is to it
