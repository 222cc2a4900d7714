"""The one table from domain errors to gRPC status codes: the domain itself knows no gRPC.

The shim answers HTTP from these codes (api/http/status.py), as grpc-gateway does.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import grpc

from pluct_server.domain import errors
from pluct_server.store.errors import StoreFailure

GRPC_CODES: Mapping[type[errors.DomainError], grpc.StatusCode] = MappingProxyType(
    {
        errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
        errors.RequestIdReused: grpc.StatusCode.INVALID_ARGUMENT,
        errors.MalformedCredentials: grpc.StatusCode.INVALID_ARGUMENT,
        errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
        errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
        errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
        errors.PaymentEventReused: grpc.StatusCode.ALREADY_EXISTS,
        errors.NotFound: grpc.StatusCode.NOT_FOUND,
        errors.InsufficientCredits: grpc.StatusCode.FAILED_PRECONDITION,
        errors.ReplayedTokenExpired: grpc.StatusCode.FAILED_PRECONDITION,
        errors.NotASpend: grpc.StatusCode.FAILED_PRECONDITION,
        errors.RefundExceedsSpend: grpc.StatusCode.FAILED_PRECONDITION,
        # Every limit, a share of calls in flight and a full server alike: nothing was done.
        errors.RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
        errors.UserBusy: grpc.StatusCode.UNAVAILABLE,
        errors.OutcomeUnknown: grpc.StatusCode.ABORTED,
        errors.OutcomeUnknownAfterTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
        errors.RequestTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


def grpc_code(error: errors.DomainError) -> grpc.StatusCode:
    """Return the status `error` is reported with: its own class's, or its nearest parent's."""
    for kind in type(error).__mro__:
        code = GRPC_CODES.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.UNKNOWN


def refusal(failure: errors.DomainError | StoreFailure) -> errors.DomainError:
    """Return the domain error a refusal is reported as (a store failure, as the domain says)."""
    if isinstance(failure, StoreFailure):
        return errors.from_store(failure)
    return failure
