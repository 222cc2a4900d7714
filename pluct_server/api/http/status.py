"""The one table from gRPC status codes (and a few ErrorInfo reasons) to HTTP statuses."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import grpc

# As grpc-gateway's HTTPStatusFromCode, so HTTP callers meet the usual mapping.
HTTP_STATUS: Mapping[grpc.StatusCode, int] = MappingProxyType(
    {
        grpc.StatusCode.OK: 200,
        grpc.StatusCode.CANCELLED: 499,
        grpc.StatusCode.UNKNOWN: 500,
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.ALREADY_EXISTS: 409,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.FAILED_PRECONDITION: 400,
        grpc.StatusCode.ABORTED: 409,
        grpc.StatusCode.OUT_OF_RANGE: 400,
        grpc.StatusCode.UNIMPLEMENTED: 501,
        grpc.StatusCode.INTERNAL: 500,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DATA_LOSS: 500,
    }
)

# Legacy exceptions to the table, by (code, ErrorInfo reason).
# Mobile clients tell "out of credits" from every other refusal by a 403 alone, and read 409 as
# "the user exists"; an unknown outcome is a 503 to them, which they already retry.
HTTP_STATUS_BY_REASON: Mapping[tuple[grpc.StatusCode, str], int] = MappingProxyType(
    {
        (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_CREDITS"): 403,
        (grpc.StatusCode.ABORTED, "OUTCOME_UNKNOWN"): 503,
        (grpc.StatusCode.DEADLINE_EXCEEDED, "OUTCOME_UNKNOWN"): 503,
        # A request that did not arrive in time, as the shim answers a body that never came.
        (grpc.StatusCode.DEADLINE_EXCEEDED, "REQUEST_TIMEOUT"): 408,
        # A well-formed refund the spend's state refuses: a conflict with it, not a bad request.
        (grpc.StatusCode.FAILED_PRECONDITION, "NOT_A_SPEND"): 409,
        (grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_SPEND"): 409,
    }
)

# A 401 names the scheme that would succeed (RFC 9110), when there is one.
BEARER_CHALLENGE = "Bearer"


def http_status(code: grpc.StatusCode, reason: str) -> int:
    """Return the HTTP status for a gRPC status code and its ErrorInfo reason."""
    return HTTP_STATUS_BY_REASON.get((code, reason), HTTP_STATUS.get(code, 500))


def possible_statuses(code: grpc.StatusCode) -> set[int]:
    """Return every HTTP status `code` can become, exceptions included (for documentation)."""
    statuses = {HTTP_STATUS.get(code, 500)}
    statuses.update(status for (c, _), status in HTTP_STATUS_BY_REASON.items() if c == code)
    return statuses
