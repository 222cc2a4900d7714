"""The one interceptor every RPC passes: caller check, request decoding, and errors to statuses."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from pluct_server.addresses import Network
from pluct_server.auth import Authenticator
from pluct_server.callers import ADMIN, AccessRule, set_current_caller
from pluct_server.errors import ERROR_DOMAIN, DomainError, InvalidArgument, RateLimited
from pluct_server.limits import HTTP, Limiter
from pluct_server.origin import call_origin

_LOGGER = logging.getLogger(__name__)

STATUS_DETAILS_KEY = "grpc-status-details-bin"
REQUEST_ID_KEYS = ("x-request-id", "idempotency-key")

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def status_details(error: DomainError) -> bytes:
    """Serialize a google.rpc.Status with an ErrorInfo (and RetryInfo when a limit refused)."""
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
        )
    )
    details = [detail]
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
        guarded = grpc.unary_unary_rpc_method_handler(
            self.guard(method, handler.unary_unary, handler.request_deserializer),
            request_deserializer=None,  # we decode after the caller check, see guard
            response_serializer=handler.response_serializer,
        )
        self._handlers[method] = guarded
        return guarded

    def guard(
        self, method: str, behavior: Behavior, deserialize: Callable[[bytes], Any]
    ) -> Behavior:
        """Wrap one RPC's servicer method: caller check, then decoding, then errors to statuses.

        gRPC calls get this wrapper through intercept_service; the HTTP shim calls it directly.
        """
        rule = self._rules[method]
        authenticator = self._authenticator
        limiter = self._limiter
        token = self._gateway_token
        proxies = self._trusted_proxies
        is_admin_method = rule.scope == ADMIN

        async def guarded(raw_request: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                origin = call_origin(
                    context.invocation_metadata() or (), context.peer(), token, proxies
                )
                caller = await authenticator.admit(
                    method, rule, origin.presented, origin.address, via_http=origin.via_http
                )
                if origin.deferred_http_charge:
                    charges = limiter.charges((HTTP, origin.address))
                    caller = replace(caller, deferred_charges=charges)
                set_current_caller(caller)
                if is_admin_method:
                    _LOGGER.info(
                        "admin action: method=%s key_id=%s address=%s",
                        method,
                        caller.id,
                        caller.address,
                    )
                try:
                    request = deserialize(raw_request)
                except DecodeError as exc:
                    raise InvalidArgument("request", "request is not a valid message") from exc
                return await behavior(request, context)
            except DomainError as error:
                await context.abort(
                    error.code,
                    error.message,
                    trailing_metadata=((STATUS_DETAILS_KEY, status_details(error)),),
                )
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                # The caller gets no internals; the log gets the stack and the request id.
                _LOGGER.exception(
                    "unexpected error in %s (request id %s)", method, _request_id(context)
                )
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")

        return guarded


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key in REQUEST_ID_KEYS:
            return str(value)[:128]
    return "-"
