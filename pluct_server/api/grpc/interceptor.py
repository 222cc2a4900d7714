"""The one interceptor every RPC passes: the edge's bounds, caller check, decoding, errors."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from pluct_server.api.grpc.field_rules import check_fields, user_id_of
from pluct_server.api.grpc.origin import call_origin
from pluct_server.api.grpc.status import grpc_code, refusal
from pluct_server.domain.errors import (
    ERROR_DOMAIN,
    DomainError,
    FieldViolation,
    InvalidArgument,
    Overloaded,
    RateLimited,
    RequestTimeout,
    TooManyAtOnce,
)
from pluct_server.observability.access import (
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
from pluct_server.observability.metrics import (
    GRPC_HANDLED,
    GRPC_HANDLING_SECONDS,
    GRPC_STARTED,
    REFUSALS,
    BatchedCount,
    count_of,
    histogram_of,
)
from pluct_server.security.addresses import Network
from pluct_server.security.admission import ArrivalDeadlines, RequestTimedOut, Shares
from pluct_server.security.auth import Authenticator
from pluct_server.security.callers import AccessRule, set_current_caller
from pluct_server.security.limits import Limiter
from pluct_server.store.errors import StoreFailure
from pluct_server.values.callers import ADMIN, ANONYMOUS_ID, Caller

_LOGGER = logging.getLogger(__name__)

STATUS_DETAILS_KEY = "grpc-status-details-bin"
# Health's calls that probes make: bounded per address, but never refused for the total.
_PROBES = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/List"})

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Metadata = Sequence[tuple[str, str | bytes]]
# A guarded call, handed the call's metadata and peer (which gRPC builds anew on each read), and
# either the edge's gate (a call over the network, whose caller it checks and whose request it
# reads) or the request's bytes and its caller (a call the shim makes in-process, having
# admitted, bounded and read it already).
Admitted = Callable[
    [grpc.aio.ServicerContext, Metadata, str, "CallGate | None", bytes, "Caller | None"],
    Awaitable[Any],
]


@dataclass(frozen=True)
class EdgeLimits:
    """What gRPC callers may hold at once, and how long a request may take to arrive."""

    # Calls in flight in all (health's Check and List aside); beyond, RESOURCE_EXHAUSTED at once.
    max_in_flight: int
    # Calls without a credential one client address may have in flight.
    max_in_flight_per_address: int
    # A call's request message must arrive this soon after its headers.
    read_timeout_seconds: float


class CallGate:
    """Counts gRPC calls in flight: in all, per address without a credential, per key with one.

    Callers without a credential hold at most half of all calls between them, and one key at
    most half too: strangers from many addresses, or one leaked key, still leave room for the
    others. Health's Check and List are bounded per address alone, so that probes pass while
    every other place is taken.
    """

    def __init__(self, limits: EdgeLimits) -> None:
        self.limits = limits
        self.in_flight = 0
        half = max(1, limits.max_in_flight // 2)
        self.anonymous = Shares(limits.max_in_flight_per_address, total=half)
        self.keyed = Shares(half, subject_of=str)
        self.arrivals = ArrivalDeadlines(limits.read_timeout_seconds)

    def admit(self, caller: Caller) -> tuple[Shares, tuple[str, bool]]:
        """Take the caller's place among calls in flight, or raise TooManyAtOnce."""
        if caller.id == ANONYMOUS_ID:
            # No credential, so nothing to hold to account: the address gets a share.
            shares, taken = self.anonymous, self.anonymous.take(caller.address)
        else:
            shares, taken = self.keyed, self.keyed.take(caller.id)
        if taken is None:
            raise TooManyAtOnce()
        return shares, taken

    async def receive(self, context: grpc.aio.ServicerContext) -> bytes:
        """Read a call's one request message, as long as it arrives in time."""
        try:
            message = await self.arrivals.wait_for(context.read())
        except RequestTimedOut:
            raise RequestTimeout(self.limits.read_timeout_seconds) from None
        if message is grpc.aio.EOF:
            raise InvalidArgument("request", "the call ended without its request message")
        return bytes(message)


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
    status = status_pb2.Status(
        code=grpc_code(error).value[0], message=error.message, details=details
    )
    return bytes(status.SerializeToString())


def _field_violations(error: DomainError) -> tuple[FieldViolation, ...]:
    """Return the bad fields an INVALID_ARGUMENT names (none for other codes)."""
    if isinstance(error, InvalidArgument):
        return error.violations
    field = error.metadata.get("field")
    if grpc_code(error) == grpc.StatusCode.INVALID_ARGUMENT and field:
        return (FieldViolation(field, error.message),)
    return ()


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Guards our own RPCs; bounds health's and reflection's calls like every other one."""

    def __init__(
        self,
        authenticator: Authenticator,
        rules: dict[str, AccessRule],
        *,
        limiter: Limiter,
        edge: EdgeLimits,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        self._authenticator = authenticator
        self._rules = rules
        self._limiter = limiter
        self._trusted_proxies = tuple(trusted_proxies)
        self.gate = CallGate(edge)
        # One guarded handler per method, built on its first call rather than on every call.
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Return a handler that bounds, authenticates, decodes and maps errors around a servicer.

        Every handler takes its request as a stream, so that it runs when the call's headers
        arrive: the caller is checked and counted before its message is read, and a message
        that never comes is waited for only until the read timeout.
        """
        method = handler_call_details.method
        guarded = self._handlers.get(method)
        if guarded is not None:
            return guarded
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # an unknown method: UNIMPLEMENTED, at once
        if method not in self._rules:
            guarded = self._gated(method, handler)  # health and reflection: public, but bounded
        elif handler.unary_unary is None:
            # Only unary calls can be guarded here; refuse to serve anything else unguarded.
            raise RuntimeError(f"{method} is not unary, and the interceptor cannot guard it")
        else:
            admitted = self._admitted(method, handler.unary_unary, handler.request_deserializer)
            guarded = grpc.stream_unary_rpc_method_handler(
                observed(method, admitted, self.gate),
                request_deserializer=None,  # we decode after the caller check, see _admitted
                response_serializer=handler.response_serializer,
            )
        self._handlers[method] = guarded
        return guarded

    def _gated(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """Wrap a handler that is not ours (health, reflection) in the edge's bounds alone."""
        gate = self.gate
        proxies = self._trusted_proxies
        decode = handler.request_deserializer or (lambda raw: raw)
        respond = handler.response_serializer
        # A probe asks Check (or List) and must be answered while everything else is taken.
        is_probe = method in _PROBES

        async def enter(context: grpc.aio.ServicerContext) -> tuple[str, bool]:
            """Count the call, against its address's share, or refuse it at once."""
            if not is_probe and gate.in_flight >= gate.limits.max_in_flight:
                await _refuse(context, method, Overloaded())
            metadata = context.invocation_metadata() or ()
            address = call_origin(metadata, context.peer(), proxies).address
            taken = gate.anonymous.take(address, within_total=not is_probe)
            if taken is None:
                await _refuse(context, method, TooManyAtOnce())
            assert taken is not None
            if not is_probe:
                gate.in_flight += 1
            return taken

        def leave(taken: tuple[str, bool]) -> None:
            if not is_probe:
                gate.in_flight -= 1
            gate.anonymous.give_back(taken)

        async def send_all(result: Any, context: grpc.aio.ServicerContext) -> None:
            # A handler either writes its responses itself or yields them.
            if inspect.isawaitable(result):
                await result
                return
            async for response in result:
                await context.write(response)

        async def with_request(
            context: grpc.aio.ServicerContext, serve: Callable[[Any], Awaitable[Any]]
        ) -> Any:
            """Take the call's place, read its one request in time, and serve it."""
            taken = await enter(context)
            try:
                return await serve(decode(await _received(gate, context, method)))
            finally:
                leave(taken)

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_call(_: object, context: grpc.aio.ServicerContext) -> Any:
                return await with_request(context, lambda request: unary(request, context))

            return grpc.stream_unary_rpc_method_handler(unary_call, None, respond)
        if handler.unary_stream is not None:
            streaming = handler.unary_stream

            async def unary_stream_call(_: object, context: grpc.aio.ServicerContext) -> None:
                await with_request(
                    context, lambda request: send_all(streaming(request, context), context)
                )

            return grpc.stream_stream_rpc_method_handler(unary_stream_call, None, respond)
        if handler.stream_stream is not None:
            conversation = handler.stream_stream

            async def requests(context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                # The first request has the read timeout to arrive; a conversation under way
                # (grpcurl, an IDE) may pause as long as it likes, holding its share meanwhile.
                yield decode(await _received(gate, context, method))
                while (message := await context.read()) is not grpc.aio.EOF:
                    yield decode(message)

            async def stream_stream_call(_: object, context: grpc.aio.ServicerContext) -> None:
                taken = await enter(context)
                try:
                    await send_all(conversation(requests(context), context), context)
                finally:
                    leave(taken)

            return grpc.stream_stream_rpc_method_handler(stream_stream_call, None, respond)
        raise RuntimeError(f"{method} streams its requests alone, which nothing here serves")

    def guard(
        self, method: str, behavior: Behavior, deserialize: Callable[[bytes], Any]
    ) -> Behavior:
        """Wrap one RPC's servicer method for the shim: decoding, field rules, errors to statuses.

        The shim calls it with a context that carries the caller it admitted (InProcessContext):
        the caller is checked once per request, whichever door it came through.
        """
        admitted = self._admitted(method, behavior, deserialize)

        async def guarded(raw_request: bytes, context: Any) -> Any:
            return await admitted(context, (), "in-process", None, raw_request, context.caller)

        return guarded

    def _admitted(
        self, method: str, behavior: Behavior, deserialize: Callable[[bytes], Any]
    ) -> Admitted:
        """Return the caller check, decoding and error mapping of one RPC, given its metadata."""
        rule = self._rules[method]
        authenticator = self._authenticator
        limiter = self._limiter
        proxies = self._trusted_proxies
        is_admin_method = rule.scope == ADMIN

        async def admitted(
            context: grpc.aio.ServicerContext,
            metadata: Metadata,
            peer: str,
            gate: CallGate | None,
            raw_request: bytes,
            caller: Caller | None,
        ) -> Any:
            place = None
            try:
                # This call is counted already (see observed): more than the most is too many.
                if gate is not None and gate.in_flight > gate.limits.max_in_flight:
                    raise Overloaded()
                if caller is None:
                    origin = call_origin(metadata, peer, proxies)
                    caller = await authenticator.admit(
                        method, rule, origin.presented, origin.address
                    )
                if gate is not None:
                    place = gate.admit(caller)
                set_current_caller(caller)
                note_caller(caller.id)
                try:
                    if gate is not None:
                        raw_request = await gate.receive(context)
                    request = _decoded(deserialize, raw_request)
                    note_user(user_id_of(request))
                    check_fields(request)
                except InvalidArgument:
                    # The statement that pays what the route owes never runs: pay it here, so
                    # malformed calls are never free of the per-address limit.
                    if caller.deferred_charges:
                        await limiter.charge(caller.deferred_charges)
                    raise
                if is_admin_method:
                    # Once the request is whole: a call that never sends one did nothing.
                    _LOGGER.info(
                        "admin action: method=%s key_id=%s address=%s",
                        method,
                        caller.id,
                        caller.address,
                    )
                return await behavior(request, context)
            except (DomainError, StoreFailure) as failure:
                error = refusal(failure)
                code = grpc_code(error)
                note_code(code.name)
                count_of(REFUSALS, method, error.reason).inc()
                await context.abort(
                    code,
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
            finally:
                if place is not None:
                    shares, taken = place
                    shares.give_back(taken)

        return admitted


def _decoded(deserialize: Callable[[bytes], Any], raw_request: bytes) -> Any:
    """Decode a request, refusing bytes that are not a message of its type."""
    try:
        return deserialize(raw_request)
    except DecodeError as exc:
        raise InvalidArgument("request", "request is not a valid message") from exc


def observed(method: str, admitted: Admitted, gate: CallGate) -> Behavior:
    """Wrap a gRPC call with its metrics, its access line and its place among calls in flight."""
    service, _, name = method.lstrip("/").rpartition("/")
    labels = ("unary", service, name)
    started = count_of(GRPC_STARTED, *labels)
    handling_seconds = histogram_of(GRPC_HANDLING_SECONDS, *labels)
    # The counter of each status code this method has answered with, looked up once.
    handled_by_code: dict[str, BatchedCount] = {}

    async def observe(_: object, context: grpc.aio.ServicerContext) -> Any:
        # Read once: each read of either builds it anew from gRPC's core.
        metadata = context.invocation_metadata() or ()
        peer = context.peer()
        request_id = request_id_from(_value(metadata, REQUEST_ID_HEADER))
        record = CallRecord("grpc", method, peer, request_id)
        # Each gRPC call runs in a task of its own, so the record is this call's alone.
        CURRENT_CALL.set(record)
        started.inc()
        begin = time.perf_counter()
        gate.in_flight += 1
        try:
            context.set_trailing_metadata(((REQUEST_ID_HEADER, record.request_id),))
            return await admitted(context, metadata, peer, gate, b"", None)
        except asyncio.CancelledError:
            record.code = grpc.StatusCode.CANCELLED.name
            raise
        finally:
            gate.in_flight -= 1
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


async def _received(gate: CallGate, context: grpc.aio.ServicerContext, method: str) -> bytes:
    """Read a call's request in time, or end the call with the reason it was not."""
    try:
        return await gate.receive(context)
    except DomainError as error:
        await _refuse(context, method, error)
        raise  # abort raises; this is for the type checker


async def _refuse(context: grpc.aio.ServicerContext, method: str, error: DomainError) -> Any:
    """End a call that is not ours to guard (health, reflection) with a domain error's status."""
    count_of(REFUSALS, method, error.reason).inc()
    await context.abort(
        grpc_code(error),
        error.message,
        trailing_metadata=((STATUS_DETAILS_KEY, status_details(error)),),
    )


def _request_id_trailer() -> tuple[tuple[str, str], ...]:
    """Return the trailer that echoes the current call's request id (an abort replaces all)."""
    request_id = current_request_id()
    return () if request_id is None else ((REQUEST_ID_HEADER, request_id),)


def _value(metadata: Metadata, wanted: str) -> str | None:
    for key, value in metadata:
        if key == wanted:
            return str(value)
    return None
