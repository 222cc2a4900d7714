"""The one interceptor every RPC passes: caller check, request decoding, and errors to statuses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from pluct_server.access import (
    CURRENT_CALL,
    REQUEST_ID_HEADER,
    CallRecord,
    current_request_id,
    log_access,
    note_caller,
    note_code,
    note_user,
    request_id_from,
)
from pluct_server.addresses import Network
from pluct_server.auth import Authenticator
from pluct_server.callers import ADMIN, AccessRule, set_current_caller
from pluct_server.errors import (
    ERROR_DOMAIN,
    DomainError,
    FieldViolation,
    InvalidArgument,
    RateLimited,
)
from pluct_server.field_rules import check_fields, user_id_of
from pluct_server.limits import HTTP, Limiter
from pluct_server.metrics import (
    GRPC_HANDLED,
    GRPC_HANDLING_SECONDS,
    GRPC_STARTED,
    REFUSALS,
    BatchedCount,
    count_of,
    histogram_of,
)
from pluct_server.origin import call_origin

_LOGGER = logging.getLogger(__name__)

STATUS_DETAILS_KEY = "grpc-status-details-bin"
REQUEST_ID_KEYS = ("x-request-id", "idempotency-key")

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Metadata = Sequence[tuple[str, str | bytes]]
# A guarded call, handed the call's metadata and peer, which gRPC builds anew on each read.
Admitted = Callable[[bytes, grpc.aio.ServicerContext, Metadata, str], Awaitable[Any]]


def status_details(error: DomainError) -> bytes:
    """Serialize a google.rpc.Status: ErrorInfo, and BadRequest or RetryInfo when they apply."""
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
        )
    )
    details = [detail]
    violations = _field_violations(error)
    if violations:
        # AIP-193: which fields were wrong, for clients that should not parse the message.
        bad_request = any_pb2.Any()
        bad_request.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description, reason=v.rule
                    )
                    for v in violations
                ]
            )
        )
        details.append(bad_request)
    if isinstance(error, RateLimited):
        retry = any_pb2.Any()
        retry.Pack(
            error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=error.retry_after_seconds)
            )
        )
        details.append(retry)
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=details)
    return bytes(status.SerializeToString())


def _field_violations(error: DomainError) -> tuple[FieldViolation, ...]:
    """Return the bad fields an INVALID_ARGUMENT names (none for other codes)."""
    if isinstance(error, InvalidArgument):
        return error.violations
    field = error.metadata.get("field")
    if error.code == grpc.StatusCode.INVALID_ARGUMENT and field:
        return (FieldViolation(field, error.message),)
    return ()


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps our own RPCs; health and reflection pass through untouched."""

    def __init__(
        self,
        authenticator: Authenticator,
        rules: dict[str, AccessRule],
        *,
        limiter: Limiter,
        gateway_token: str,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        self._authenticator = authenticator
        self._rules = rules
        self._limiter = limiter
        self._gateway_token = gateway_token
        self._trusted_proxies = tuple(trusted_proxies)
        # One guarded handler per method, built on its first call rather than on every call.
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Return a handler that authenticates, decodes and maps errors around the servicer."""
        method = handler_call_details.method
        guarded = self._handlers.get(method)
        if guarded is not None:
            return guarded
        handler = await continuation(handler_call_details)
        if handler is None or method not in self._rules:
            return handler  # health, reflection, or an unknown method (UNIMPLEMENTED)
        if handler.unary_unary is None:
            # Only unary calls can be guarded here; refuse to serve anything else unguarded.
            raise RuntimeError(f"{method} is not unary, and the interceptor cannot guard it")
        admitted = self._admitted(method, handler.unary_unary, handler.request_deserializer)
        guarded = grpc.unary_unary_rpc_method_handler(
            observed(method, admitted),
            request_deserializer=None,  # we decode after the caller check, see guard
            response_serializer=handler.response_serializer,
        )
        self._handlers[method] = guarded
        return guarded

    def guard(
        self, method: str, behavior: Behavior, deserialize: Callable[[bytes], Any]
    ) -> Behavior:
        """Wrap one RPC's servicer method: caller check, then decoding, then errors to statuses.

        The HTTP shim calls this; gRPC calls get the same checks through intercept_service.
        """
        admitted = self._admitted(method, behavior, deserialize)

        async def guarded(raw_request: bytes, context: grpc.aio.ServicerContext) -> Any:
            metadata = context.invocation_metadata() or ()
            return await admitted(raw_request, context, metadata, context.peer())

        return guarded

    def _admitted(
        self, method: str, behavior: Behavior, deserialize: Callable[[bytes], Any]
    ) -> Admitted:
        """Return the caller check, decoding and error mapping of one RPC, given its metadata."""
        rule = self._rules[method]
        authenticator = self._authenticator
        limiter = self._limiter
        token = self._gateway_token
        proxies = self._trusted_proxies
        is_admin_method = rule.scope == ADMIN

        async def admitted(
            raw_request: bytes, context: grpc.aio.ServicerContext, metadata: Metadata, peer: str
        ) -> Any:
            try:
                origin = call_origin(metadata, peer, token, proxies)
                caller = await authenticator.admit(
                    method, rule, origin.presented, origin.address, via_http=origin.via_http
                )
                if origin.deferred_http_charge:
                    charges = limiter.charges((HTTP, origin.address))
                    caller = replace(caller, deferred_charges=charges)
                set_current_caller(caller)
                note_caller(caller.id)
                if is_admin_method:
                    _LOGGER.info(
                        "admin action: method=%s key_id=%s address=%s",
                        method,
                        caller.id,
                        caller.address,
                    )
                try:
                    request = _decoded(deserialize, raw_request)
                    note_user(user_id_of(request))
                    check_fields(request)
                except InvalidArgument:
                    # The statement that pays what the route owes never runs: pay it here, so
                    # malformed calls are never free of the per-address limit.
                    if caller.deferred_charges:
                        await limiter.charge(caller.deferred_charges)
                    raise
                return await behavior(request, context)
            except DomainError as error:
                note_code(error.code.name)
                count_of(REFUSALS, method, error.reason).inc()
                await context.abort(
                    error.code,
                    error.message,
                    trailing_metadata=(
                        (STATUS_DETAILS_KEY, status_details(error)),
                        *_request_id_trailer(),
                    ),
                )
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                # The caller gets no internals; the log gets the stack and the request id.
                # The id this call answers with, never the raw header a caller sent.
                _LOGGER.exception(
                    "unexpected error in %s (request id %s)", method, current_request_id() or "-"
                )
                note_code(grpc.StatusCode.INTERNAL.name)
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    "internal error",
                    trailing_metadata=_request_id_trailer(),
                )

        return admitted


def _decoded(deserialize: Callable[[bytes], Any], raw_request: bytes) -> Any:
    """Decode a request, refusing bytes that are not a message of its type."""
    try:
        return deserialize(raw_request)
    except DecodeError as exc:
        raise InvalidArgument("request", "request is not a valid message") from exc


def observed(method: str, admitted: Admitted) -> Behavior:
    """Wrap a gRPC call with its metrics and its access line (HTTP calls have their own)."""
    service, _, name = method.lstrip("/").rpartition("/")
    labels = ("unary", service, name)
    started = count_of(GRPC_STARTED, *labels)
    handling_seconds = histogram_of(GRPC_HANDLING_SECONDS, *labels)
    # The counter of each status code this method has answered with, looked up once.
    handled_by_code: dict[str, BatchedCount] = {}

    async def observe(raw_request: bytes, context: grpc.aio.ServicerContext) -> Any:
        # Read once: each read of either builds it anew from gRPC's core.
        metadata = context.invocation_metadata() or ()
        peer = context.peer()
        request_id = request_id_from(_value(metadata, REQUEST_ID_HEADER))
        record = CallRecord("grpc", method, peer, request_id)
        # Each gRPC call runs in a task of its own, so the record is this call's alone.
        CURRENT_CALL.set(record)
        started.inc()
        begin = time.perf_counter()
        try:
            context.set_trailing_metadata(((REQUEST_ID_HEADER, record.request_id),))
            return await admitted(raw_request, context, metadata, peer)
        except asyncio.CancelledError:
            record.code = grpc.StatusCode.CANCELLED.name
            raise
        finally:
            elapsed = time.perf_counter() - begin
            handling_seconds.observe(elapsed)
            handled = handled_by_code.get(record.code)
            if handled is None:
                handled = handled_by_code[record.code] = count_of(
                    GRPC_HANDLED, *labels, record.code
                )
            handled.inc()
            log_access(record, elapsed)

    return observe


def _request_id_trailer() -> tuple[tuple[str, str], ...]:
    """Return the trailer that echoes the current call's request id (an abort replaces all)."""
    request_id = current_request_id()
    return () if request_id is None else ((REQUEST_ID_HEADER, request_id),)


def _value(metadata: Metadata, wanted: str) -> str | None:
    for key, value in metadata:
        if key == wanted:
            return str(value)
    return None
