"""The one interceptor every RPC passes: caller check, request decoding, and errors to statuses."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from pluct_server.auth import Authenticator
from pluct_server.errors import ERROR_DOMAIN, DomainError, InvalidArgument

_LOGGER = logging.getLogger(__name__)

STATUS_DETAILS_KEY = "grpc-status-details-bin"
REQUEST_ID_KEYS = ("x-request-id", "idempotency-key")

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def status_details(error: DomainError) -> bytes:
    """Serialize a google.rpc.Status with an ErrorInfo, as the grpc-status-details-bin trailer."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=[detail])
    return bytes(status.SerializeToString())


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps our own RPCs; health and reflection pass through untouched."""

    def __init__(self, authenticator: Authenticator, caller_auth: dict[str, int]) -> None:
        self._authenticator = authenticator
        self._caller_auth = caller_auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Return a handler that authenticates, decodes and maps errors around the servicer."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        requirement = self._caller_auth.get(method)
        if handler is None or requirement is None or handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self._guard(method, requirement, handler.unary_unary, handler.request_deserializer),
            request_deserializer=None,  # we decode after the caller check, see _guard
            response_serializer=handler.response_serializer,
        )

    def _guard(
        self,
        method: str,
        requirement: int,
        behavior: Behavior,
        deserialize: Callable[[bytes], Any],
    ) -> Behavior:
        authenticator = self._authenticator

        async def guarded(raw_request: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                authenticator.require(requirement, context.invocation_metadata() or ())
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
