"""Failed calls, in gRPC terms and as the JSON error bodies HTTP callers get."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from pluct_server.api.grpc.interceptor import STATUS_DETAILS_KEY
from pluct_server.api.grpc.status import grpc_code, refusal
from pluct_server.api.http.legacy import LegacyProfile
from pluct_server.api.http.status import BEARER_CHALLENGE, http_status
from pluct_server.domain.errors import ERROR_DOMAIN, DomainError
from pluct_server.store.errors import StoreFailure

# What to say when the failure did not come from our own services (a dead channel, a deadline):
# transport details such as socket paths are not for callers.
_GENERIC_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "the service is unavailable; retry later",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the service did not answer in time; retry later",
    grpc.StatusCode.CANCELLED: "the request was cancelled",
}


class CallError(Exception):
    """A failed call in gRPC terms: status code, message, ErrorInfo reason and metadata."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or code.name
        self.metadata = dict(metadata or {})

    @classmethod
    def invalid(cls, message: str, field: str | None = None) -> CallError:
        """Return an INVALID_ARGUMENT the shim itself found (bad JSON, a wrong type)."""
        return cls(
            grpc.StatusCode.INVALID_ARGUMENT,
            message,
            "INVALID_ARGUMENT",
            {"field": field} if field else None,
        )

    @classmethod
    def from_domain(cls, failure: DomainError | StoreFailure) -> CallError:
        """Return a refusal raised in the shim's process (the pre-body secret check, say)."""
        error = refusal(failure)
        return cls(grpc_code(error), error.message, error.reason, error.metadata)

    @classmethod
    def from_status(
        cls, code: grpc.StatusCode, trailing_metadata: Sequence[tuple[str, Any]]
    ) -> CallError:
        """Return the error a call ended with, reading the ErrorInfo our interceptor sends."""
        for key, value in trailing_metadata or ():
            if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
                continue
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                    return cls(code, status.message, info.reason, dict(info.metadata))
        return cls(code, _GENERIC_MESSAGES.get(code, "internal error"))


class HttpProblem(Exception):
    """A non-2xx answer ready to print: status, legacy message, reason and extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        reason: str,
        *,
        field: str | None = None,
        detail: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.field = field
        self.detail = detail
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """Return the JSON error body: {"error", "code"} as legacy had it, plus details."""
        body: dict[str, Any] = {"error": self.message, "code": self.status, "reason": self.reason}
        if self.field:
            body["field"] = self.field
        if self.detail and self.detail != self.message:
            body["detail"] = self.detail
        return body


def to_problem(
    error: CallError,
    profile: LegacyProfile,
    *,
    bearer_route: bool = False,
    json_names: Mapping[str, str] | None = None,
) -> HttpProblem:
    """Turn a failed call into its HTTP answer: status table, legacy string, challenge."""
    status = http_status(error.code, error.reason)
    proto_field = error.metadata.get("field")
    message = profile.error_message(error.reason, proto_field, error.message)
    headers = {}
    # Missing or wrong admin token, or a grant that needs it: say which scheme would do.
    if status == 401 and (bearer_route or error.reason == "ADMIN_TOKEN_REQUIRED"):
        headers["WWW-Authenticate"] = BEARER_CHALLENGE
    retry_after = error.metadata.get("retry_after", "")
    if retry_after.isdigit():
        headers["Retry-After"] = retry_after
    shown_field = (json_names or {}).get(proto_field, proto_field) if proto_field else None
    return HttpProblem(
        status,
        message,
        error.reason,
        field=shown_field,
        detail=error.message,
        headers=headers,
    )
