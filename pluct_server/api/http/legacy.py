"""Everything the legacy engine's JSON needs that the proto annotations cannot say, in one place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pluct.credit.v1 import credit_service_pb2

from pluct_server.api.grpc.field_rules import rules_of


@dataclass(frozen=True)
class MessageShape:
    """How one message type is printed wherever it appears (list rows, bare arrays)."""

    # Legacy rows used snake_case keys (`user_id`), not protobuf JSON's lowerCamelCase.
    proto_names: bool = False
    # The proto fields printed, in this order; None prints every field.
    fields: tuple[str, ...] | None = None
    # Proto field name -> the key the legacy engine used for it.
    rename: Mapping[str, str] = field(default_factory=dict)
    # Optional fields printed as null when unset, where legacy callers read a null.
    null_when_unset: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RouteShape:
    """How one RPC's response is wrapped into its legacy route's JSON object."""

    # The response keys (JSON names) kept, in this order, where present; None keeps every key.
    keep: tuple[str, ...] | None = None
    # Constant keys printed before the response's own.
    before: Mapping[str, Any] = field(default_factory=dict)
    # Keys printed after the response's; string values are str.format templates over the
    # request's fields by proto name, e.g. "Manually added {amount} credits to {user_id}".
    after: Mapping[str, Any] = field(default_factory=dict)
    # Adds "count": the length of this list key.
    count_of: str | None = None
    # Adds "timestamp": when the answer was made.
    timestamp: bool = False
    # Request fields (proto name -> JSON value) the route sets when its caller gives none: what
    # the legacy engine did by default, where the RPC's own default differs.
    request_defaults: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueryAlias:
    """A legacy query parameter that sets a request field under another name and range."""

    name: str
    field: str
    # Below `minimum` is refused; above `cap` is sent as `cap` (the service clamps further).
    minimum: int
    cap: int


@dataclass(frozen=True)
class LegacyProfile:
    """The legacy JSON conventions the shim applies on top of protobuf's JSON mapping."""

    # Protobuf JSON prints 64-bit integers as strings; legacy callers need numbers.
    int64_as_number: bool
    # Protobuf JSON leaves out zero values; legacy callers read "balance": 0.
    print_zero_values: bool
    # TRANSACTION_TYPE_SPEND is printed "spend": the enum's own prefix dropped, lowercased.
    short_lowercase_enums: bool
    # Timestamps as JavaScript's toISOString(): 2024-01-01T00:00:00.000Z.
    timestamp_fraction_digits: int
    # Message full name -> how it is printed.
    messages: Mapping[str, MessageShape] = field(default_factory=dict)
    # RPC full name -> how its response is wrapped.
    routes: Mapping[str, RouteShape] = field(default_factory=dict)
    query_aliases: tuple[QueryAlias, ...] = ()
    # (ErrorInfo reason, ErrorInfo "field" metadata or None) -> the exact legacy error string.
    # Errors without an entry keep the service's own message.
    error_messages: Mapping[tuple[str, str | None], str] = field(default_factory=dict)

    def message_shape(self, full_name: str) -> MessageShape:
        """Return how `full_name` is printed."""
        return self.messages.get(full_name, _PLAIN_MESSAGE)

    def route_shape(self, method_full_name: str) -> RouteShape:
        """Return how the response of `method_full_name` is wrapped."""
        return self.routes.get(method_full_name, _PLAIN_ROUTE)

    def error_message(self, reason: str, field_name: str | None, fallback: str) -> str:
        """Return the legacy string for an error, or `fallback` when legacy had none."""
        return (
            self.error_messages.get((reason, field_name))
            or self.error_messages.get((reason, None))
            or fallback
        )


_PLAIN_MESSAGE = MessageShape()
_PLAIN_ROUTE = RouteShape()

# A ledger row exactly as legacy printed it: {"id", "user_id", "type", "amount", "timestamp",
# "reason"}; balance_after stays a gRPC extra.
_TRANSACTION_ROW = MessageShape(
    proto_names=True,
    fields=("id", "user_id", "type", "amount", "create_time", "reason"),
    rename={"create_time": "timestamp"},
    null_when_unset=frozenset({"reason"}),
)
# The protos name times as AIP-142 does (*_time); legacy callers read the names they always had.
_TOKEN_TIMES = MessageShape(rename={"expire_time": "expiresAt"})

# The legacy message states the amount's limits: those of the payment's annotation.
_AMOUNT = rules_of(credit_service_pb2.AddCreditsRequest.DESCRIPTOR.fields_by_name["amount"]).int64

LEGACY = LegacyProfile(
    int64_as_number=True,
    print_zero_values=True,
    short_lowercase_enums=True,
    timestamp_fraction_digits=3,
    messages={
        "pluct.credit.v1.Transaction": _TRANSACTION_ROW,
        "pluct.credit.v1.GetBalanceResponse": MessageShape(rename={"read_time": "timestamp"}),
        "pluct.token.v1.VendTokenResponse": _TOKEN_TIMES,
        "pluct.token.v1.ValidateTokenResponse": _TOKEN_TIMES,
        "pluct.admin.v1.User": MessageShape(
            proto_names=True,
            fields=("user_id", "transaction_count", "total_spent", "balance"),
            rename={"balance": "current_credits"},
        ),
    },
    routes={
        "pluct.credit.v1.CreditService.CreateUser": RouteShape(
            keep=("userId", "initialBalance"),
            before={"success": True},
            after={"message": "User created successfully"},
        ),
        "pluct.credit.v1.CreditService.ListTransactions": RouteShape(
            keep=("userId", "transactions"), count_of="transactions", timestamp=True
        ),
        "pluct.credit.v1.CreditService.AddCredits": RouteShape(
            keep=("newBalance",), before={"success": True}
        ),
        "pluct.admin.v1.AdminService.AddCredits": RouteShape(
            keep=("newBalance",),
            before={"success": True},
            after={"message": "Manually added {amount} credits to {user_id}"},
        ),
        # The legacy answers exactly, whatever the responses gain (expiry, a feature).
        "pluct.credit.v1.CreditService.GetBalance": RouteShape(
            keep=("userId", "balance", "timestamp")
        ),
        "pluct.token.v1.TokenService.ValidateToken": RouteShape(
            keep=("valid", "userId", "expiresAt", "reason")
        ),
        # Legacy listed every user, most recently active first: that order moves under a
        # scan, so it is never stitched from pages but read whole, in one statement.
        "pluct.admin.v1.AdminService.ListUsers": RouteShape(
            request_defaults={"order": "USER_ORDER_RECENT_ACTIVITY"}
        ),
    },
    # `limit=N` is legacy for page_size, but 0 meant nothing sensible there: it is refused,
    # where page_size=0 means "the default".
    query_aliases=(QueryAlias("limit", "page_size", minimum=1, cap=2**31 - 1),),
    error_messages={
        ("INVALID_ARGUMENT", "user_id"): "Valid user ID is required",
        ("INVALID_ARGUMENT", "amount"): (
            f"Valid amount between {_AMOUNT.gte} and {_AMOUNT.lte} is required"
        ),
        ("INVALID_ARGUMENT", "token"): "Valid token is required",
        ("ALREADY_EXISTS", None): "User already exists",
        ("PAYMENT_EVENT_REUSED", None): "Payment event already used",
        ("INSUFFICIENT_CREDITS", None): "Insufficient credits",
        ("MISSING_CREDENTIALS", None): "Unauthorized",
        ("BAD_CREDENTIALS", None): "Unauthorized",
    },
)
