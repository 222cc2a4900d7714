"""Serving one HTTP request: route, check the secret, read, transcode, call, print; always JSON."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from google.protobuf.message import Message
from pluct.api.v1 import auth_pb2

from pluct_server.api.grpc.inprocess import CallAborted, InProcessCalls
from pluct_server.api.http.describe import (
    DESCRIBE,
    HEALTH,
    METRICS,
    OPENAPI,
    ServiceInfo,
    health_body,
    route_key,
    self_description,
)
from pluct_server.api.http.legacy import LegacyProfile
from pluct_server.api.http.problems import CallError, HttpProblem, to_problem
from pluct_server.api.http.render import Renderer
from pluct_server.api.http.routes import NoRoute, Route, Router, WrongMethod
from pluct_server.api.http.transcode import (
    IDEMPOTENCY_HEADER,
    Transcoder,
    parse_json_body,
    split_path,
)
from pluct_server.domain.errors import DomainError, TooManyAtOnce
from pluct_server.observability.access import (
    CURRENT_CALL,
    REQUEST_ID_HEADER,
    CallRecord,
    log_access,
    request_id_from,
)
from pluct_server.observability.metrics import (
    HTTP_REQUEST_SECONDS,
    HTTP_REQUESTS,
    count_of,
    exposition,
    histogram_of,
)
from pluct_server.security import webhooks
from pluct_server.security.addresses import UNKNOWN, Network, client_address
from pluct_server.security.admission import Shares
from pluct_server.security.auth import (
    AUTHORIZATION_HEADER,
    WEBHOOK_HEADER,
    WEBHOOK_SCOPES,
    Authenticator,
    Presented,
)
from pluct_server.security.callers import AccessRule
from pluct_server.security.limits import Limiter
from pluct_server.security.webhooks import SIGNATURE_HEADER
from pluct_server.store.errors import StoreFailure
from pluct_server.values.callers import (
    ADMIN,
    ANONYMOUS_ID,
    METRICS_READ,
    PAYMENTS,
    WEBHOOK_ID,
    Caller,
)
from pluct_server.values.charges import HTTP
from pluct_server.values.clock import SYSTEM_CLOCK, Clock
from pluct_server.values.settings import Settings

_LOGGER = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[bool]]
SERVER_HEADER = "Server"
SERVER_NAME = "pluct"


@dataclass(frozen=True)
class HttpLimits:
    """How much an HTTP client may send, and how long anyone may take."""

    # Larger bodies are refused with 413 (none of our requests comes near it).
    max_body_bytes: int = Settings.http_max_body_bytes
    # A client has this long to send a whole body, or gets 408 (a slow drip cannot pin a handler).
    body_seconds: float = Settings.request_read_timeout_seconds
    # An idle connection, or one still sending its headers, is closed after this long.
    idle_seconds: float = 15.0
    # The deadline of each gRPC call behind a request.
    rpc_seconds: float = 10.0
    # Requests served at once; more get 503 at once rather than a place in a queue.
    max_concurrent_requests: int = Settings.http_max_concurrent_requests
    # Requests without a credential one client address may have in flight; more get 429 at
    # once, so that one address cannot hold what every caller shares.
    max_requests_per_address: int = Settings.http_max_concurrent_requests_per_address
    # Connections one client address may hold open; more are closed as they arrive.
    max_connections_per_address: int = Settings.http_max_connections_per_address


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Return `body` as a compact UTF-8 JSON response."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    response = web.Response(
        body=text.encode("utf-8"),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )
    # aiohttp would announce its own name and version, a free hint to anyone shopping for CVEs.
    response.headers[SERVER_HEADER] = SERVER_NAME
    return response


def problem_response(problem: HttpProblem) -> web.Response:
    """Return the JSON error answer for `problem`."""
    return json_response(problem.body(), problem.status, problem.headers)


# The access rule of every path under an admin-only prefix, known route or not.
_ADMIN_PREFIX_RULE = AccessRule(ADMIN, auth_pb2.CALLER_AUTH_ADMIN)
# Scraping metrics needs a key with this scope (the admin secret holds it too).
_METRICS_RULE = AccessRule(METRICS_READ, auth_pb2.CALLER_AUTH_ADMIN)
# As HTTP callers spell it (request headers are read case-insensitively anyway).
_REQUEST_ID_RESPONSE_HEADER = "X-Request-Id"
# What a request is named by when no route matched (or it failed before routing).
_UNROUTED = "unmatched"
# Set (by the connection's protocol) on a request that came in HTTP/0.9, which is refused.
HTTP09_REQUEST = web.RequestKey("pluct.http09", bool)
# Routes whose RPC charges the per-address limit inside its own statement, so that a vend stays
# one database round trip; every other route pays it in a statement of its own first.
_FOLDS_ADDRESS_CHARGE = frozenset({"tokens:vend"})
# Headers of a route's successful answers, by RPC. The JWKS may be cached for 5 minutes:
# verifiers refetch it at once when a token names a kid they lack, so this bounds only how long
# a shared cache may serve an old set (the README's rotation waits that long before switching).
_RESPONSE_HEADERS: Mapping[str, Mapping[str, str]] = {
    "pluct.token.v1.TokenService.GetJwks": {"Cache-Control": "public, max-age=300"},
}


@dataclass(frozen=True)
class Guards:
    """Who may call and how often: what the shim checks before it reads a body."""

    authenticator: Authenticator
    limiter: Limiter
    rules: Mapping[str, AccessRule]
    webhook_secrets: tuple[str, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    # Signature times are checked, and answers stamped, by the server's clock.
    clock: Clock = SYSTEM_CLOCK


class ShimHandler:
    """The aiohttp handler behind every path."""

    def __init__(
        self,
        *,
        router: Router,
        calls: InProcessCalls,
        guards: Guards,
        profile: LegacyProfile,
        limits: HttpLimits,
        info: ServiceInfo,
        probe: Probe,
        openapi: Mapping[str, Any],
    ) -> None:
        self._router = router
        self._calls = calls
        self._guards = guards
        self._profile = profile
        self._renderer = Renderer(profile)
        self._transcoder = Transcoder(profile)
        self._limits = limits
        self._info = info
        self._probe = probe
        self._openapi = openapi
        self._builtins: dict[str, Callable[[], Awaitable[web.Response]]] = {
            DESCRIBE.name: self._describe,
            HEALTH.name: self._health,
            OPENAPI.name: self._openapi_document,
            METRICS.name: self._metrics,
        }
        self._in_flight = 0
        # Requests without a credential: per address, and in all at most half of every request,
        # so strangers from many addresses still leave room for callers that prove who they are.
        self._anonymous = Shares(
            limits.max_requests_per_address, total=max(1, limits.max_concurrent_requests // 2)
        )
        self.draining = False

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request; every failure becomes a JSON error, never a stack trace."""
        record = CallRecord(
            "http",
            _UNROUTED,
            request.remote or "-",
            request_id_from(request.headers.get(REQUEST_ID_HEADER)),
        )
        # A connection's requests share its task: each one sets, and then resets, its own record.
        token = CURRENT_CALL.set(record)
        begin = time.perf_counter()
        response: web.StreamResponse | None = None
        try:
            response = await self._serve(request)
            return response
        finally:
            status = response.status if response is not None else 499
            if response is not None:
                response.headers[_REQUEST_ID_RESPONSE_HEADER] = record.request_id
            _observe_http(request.method, record, status, time.perf_counter() - begin)
            CURRENT_CALL.reset(token)

    def _note_route(self, route: Route) -> None:
        """Name the request by its route template: raw paths would grow the metrics unbounded."""
        record = CURRENT_CALL.get()
        if record is not None:
            record.method = route_key(route)

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        route: Route | None = None
        bearer = False
        try:
            if request.get(HTTP09_REQUEST):
                # HTTP/0.9 has no headers: no Content-Type, no credentials, no Host.
                raise HttpProblem(400, "HTTP/1.0 or newer is required", "MALFORMED_HTTP")
            parts = split_path(request.rel_url.raw_path)
            address = client_address(
                request.remote or UNKNOWN,
                # Every line of it: a proxy may add its own line after the client's forged one.
                ",".join(request.headers.getall("X-Forwarded-For", ())),
                self._guards.trusted_proxies,
            )
            bearer = self._router.admin_only(parts)
            variables: Mapping[str, str] = {}
            if bearer:
                # Resolved for the shape of its errors alone: it is served only once admitted.
                route = self._quietly_resolved(request.method, parts)
            else:
                route, variables = self._router.resolve(request.method, parts)
                self._note_route(route)
                if route is HEALTH:
                    # Unbounded and unmetered: probes must pass whoever else misbehaves.
                    return await self._health()
            if self._in_flight >= self._limits.max_concurrent_requests:
                # Shed load rather than queue it: a flood must not take the memory with it.
                raise HttpProblem(503, "Server busy", "OVERLOADED", headers={"Retry-After": "1"})
            self._in_flight += 1
            try:
                return await self._serve_counted(
                    request, parts, None if bearer else route, variables, address
                )
            finally:
                self._in_flight -= 1
        except NoRoute:
            return problem_response(HttpProblem(404, "Not found", "NOT_FOUND"))
        except WrongMethod as wrong:
            allow = ", ".join(wrong.allowed)
            return problem_response(
                HttpProblem(
                    405, "Method not allowed", "METHOD_NOT_ALLOWED", headers={"Allow": allow}
                )
            )
        except CallError as error:
            bearer = bearer or _needs_bearer(route)
            response = problem_response(
                to_problem(error, self._profile, bearer_route=bearer, json_names=_json_names(route))
            )
            if error.reason == TooManyAtOnce.reason:
                response.force_close()  # an address over its share gets no connection to keep
            return response
        except HttpProblem as problem:
            response = problem_response(problem)
            if problem.status in (400, 408, 413, 415):
                response.force_close()  # the rest of that request is not worth reading
            return response
        except asyncio.CancelledError:
            raise
        except Exception:
            _LOGGER.exception(
                "unexpected error serving %s %s", request.method, request.rel_url.raw_path
            )
            return problem_response(HttpProblem(500, "internal error", "INTERNAL"))

    def _quietly_resolved(self, verb: str, parts: Sequence[str]) -> Route | None:
        """Return the route of `parts`, or None where there is none."""
        try:
            return self._router.resolve(verb, parts)[0]
        except (NoRoute, WrongMethod):
            return None

    async def _serve_counted(
        self,
        request: web.BaseRequest,
        parts: Sequence[str],
        route: Route | None,
        variables: Mapping[str, str],
        address: str,
    ) -> web.StreamResponse:
        """Serve a request that has its place among those in flight: share, charge, caller, call.

        A request without a credential takes its address's share before anything is done for
        it; one with a credential has it checked at once, and is not counted against the share
        when it is right. Every request pays the per-address rate once: up front, or, on the
        route that folds it into its own statement, when it is refused before that statement.
        """
        presented = _presented(request.headers)
        rule = self._guards.rules[route.rpc.path] if route is not None and route.rpc else None
        deferred = rule is not None and rule.scope in _FOLDS_ADDRESS_CHARGE
        method = _credential_method(route)
        # A signed payment proves itself by its body: until that is read, it is a stranger's,
        # whatever other headers its sender's library adds.
        signed = (
            rule is not None
            and rule.legacy == auth_pb2.CALLER_AUTH_WEBHOOK
            and SIGNATURE_HEADER in request.headers
        )
        credentialed = method is not None and presented.any and not signed
        taken = None
        if not credentialed:
            taken = self._anonymous.take(address)
            if taken is None:
                raise CallError.from_domain(TooManyAtOnce())
        try:
            if not deferred:
                await self._charge_address(address)
            try:
                caller = Caller(ANONYMOUS_ID, address=address, via_http=True)
                if credentialed:
                    payments = rule is not None and rule.scope == PAYMENTS
                    caller = await self._identify(method or "", presented, address, payments)
                if route is None:  # under an admin-only prefix
                    try:
                        route, variables = self._router.resolve(request.method, parts)
                    except (NoRoute, WrongMethod):
                        # Strangers learn nothing about /admin/...: no 404 or 405 without a key.
                        self._authorize("/admin", _ADMIN_PREFIX_RULE, caller)
                        raise
                    self._note_route(route)
                    rule = self._guards.rules[route.rpc.path] if route.rpc else None
                if route.rpc is None or rule is None:
                    if route is METRICS:
                        self._authorize("/metrics", _METRICS_RULE, caller)
                    return await self._builtins[route.name]()
                message, caller = await self._request_message(
                    request, route, variables, rule, caller, address
                )
            except (CallError, HttpProblem):
                if deferred:
                    # Refused before its statement could count it: count it here.
                    await self._charge_address(address)
                raise
            if deferred:
                # The route's RPC pays the per-address limit in its own statement.
                limiter = self._guards.limiter
                caller = replace(caller, deferred_charges=limiter.charges((HTTP, address)))
            answer = await self._call(route, message, caller)
            return json_response(
                self._renderer.response(route, message, answer, self._guards.clock.now()),
                headers=_RESPONSE_HEADERS.get(route.rpc.method.full_name),
            )
        finally:
            if taken is not None:
                self._anonymous.give_back(taken)

    async def _request_message(
        self,
        request: web.BaseRequest,
        route: Route,
        variables: Mapping[str, str],
        rule: AccessRule,
        caller: Caller,
        address: str,
    ) -> tuple[Message, Caller]:
        """Check the caller, read the body and build the request message, in that order."""
        assert route.rpc is not None
        signed = request.headers.get(SIGNATURE_HEADER)
        body = None
        if signed is not None and rule.legacy == auth_pb2.CALLER_AUTH_WEBHOOK:
            # The signature covers the raw body, so the body is read before it is checked, but
            # only once the header's time window holds.
            await self._check_signature_time(route.rpc.path, signed, address)
            if route.rpc.body:
                _check_content_type(request)
            raw = await self._read_body(request)
            digest = await self._check_signature(route.rpc.path, signed, raw, address)
            caller = Caller(WEBHOOK_ID, WEBHOOK_SCOPES, address, True, signature=digest)
            self._authorize(route.rpc.path, rule, caller)
            body = parse_json_body(raw) if route.rpc.body else None
        else:
            # The secret is checked before the body is read, so strangers cannot make us read.
            self._authorize(route.rpc.path, rule, caller)
            if route.rpc.body:
                _check_content_type(request)
                body = parse_json_body(await self._read_body(request))
        message = self._transcoder.request(
            route,
            variables,
            request.rel_url.raw_query_string,
            body,
            request.headers.get(IDEMPOTENCY_HEADER),
        )
        return message, caller

    async def _call(self, route: Route, request: Message, caller: Caller) -> Message:
        """Call the route's RPC in-process as `caller`; raise CallError with how it failed."""
        assert route.rpc is not None
        try:
            async with asyncio.timeout(self._limits.rpc_seconds):
                return await self._calls.call(route.rpc.path, request, caller)
        except CallAborted as aborted:
            raise CallError.from_status(aborted.code, aborted.trailing_metadata) from None
        except TimeoutError:
            raise CallError.from_status(grpc.StatusCode.DEADLINE_EXCEEDED, ()) from None

    async def _identify(
        self, method: str, presented: Presented, address: str, payments: bool
    ) -> Caller:
        """Return who the request's credentials name; refuse wrong ones."""
        try:
            return await self._guards.authenticator.identify(
                method, presented, address, via_http=True, payments=payments
            )
        except (DomainError, StoreFailure) as failure:
            raise CallError.from_domain(failure) from None

    def _authorize(self, method: str, rule: AccessRule, caller: Caller) -> None:
        try:
            self._guards.authenticator.authorize(method, rule, caller)
        except (DomainError, StoreFailure) as failure:
            raise CallError.from_domain(failure) from None

    async def _charge_address(self, address: str) -> None:
        limiter = self._guards.limiter
        try:
            await limiter.charge(limiter.charges((HTTP, address)))
        except (DomainError, StoreFailure) as failure:
            raise CallError.from_domain(failure) from None

    async def _check_signature_time(self, method: str, header: str, address: str) -> None:
        try:
            webhooks.check_time(webhooks.parse(header), self._guards.clock.time())
        except webhooks.BadSignature as bad:
            await self._refuse_signature(method, address, str(bad))

    async def _check_signature(self, method: str, header: str, raw: bytes, address: str) -> str:
        try:
            return webhooks.verify(
                header, raw, self._guards.webhook_secrets, self._guards.clock.time()
            )
        except webhooks.BadSignature as bad:
            await self._refuse_signature(method, address, str(bad))

    async def _refuse_signature(self, method: str, address: str, why: str) -> NoReturn:
        error = await self._guards.authenticator.failed(method, address, why)
        raise CallError.from_domain(error)

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        limit = self._limits.max_body_bytes
        too_large = HttpProblem(413, f"Request body larger than {limit} bytes", "PAYLOAD_TOO_LARGE")
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        if request.headers.get("Expect", "").lower() == "100-continue":
            # The secret was fine and the size is allowed: now the client may send the body.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._limits.body_seconds):
                while chunk := await request.content.readany():
                    size += len(chunk)
                    if size > limit:
                        raise too_large
                    chunks.append(chunk)
        except TimeoutError:
            raise HttpProblem(408, "Request body not received in time", "REQUEST_TIMEOUT") from None
        except HttpProcessingError:
            raise HttpProblem(400, "Request body could not be read", "INVALID_ARGUMENT") from None
        return b"".join(chunks)

    async def _describe(self) -> web.Response:
        return json_response(self_description(self._router.routes, self._info))

    async def _health(self) -> web.Response:
        healthy = False
        if not self.draining:
            try:
                # A fresh ping: a balancer should not route to us on a minutes-old answer.
                healthy = await self._probe()
            except Exception:
                _LOGGER.exception("health probe failed")
        body = health_body(
            healthy,
            self._router.routes,
            self._info,
            self._guards.clock.now(),
            self._profile.timestamp_fraction_digits,
        )
        return json_response(body, 200 if healthy else 503)

    async def _openapi_document(self) -> web.Response:
        return json_response(self._openapi)

    async def _metrics(self) -> web.Response:
        body, content_type = exposition()
        response = web.Response(body=body, headers={"Content-Type": content_type})
        response.headers[SERVER_HEADER] = SERVER_NAME
        return response


def _observe_http(method: str, record: CallRecord, status: int, seconds: float) -> None:
    """Count and log one answered request."""
    route = record.method
    count_of(HTTP_REQUESTS, method, route, str(status)).inc()
    histogram_of(HTTP_REQUEST_SECONDS, method, route).observe(seconds)
    record.code = str(status)
    log_access(record, seconds)


def _check_content_type(request: web.BaseRequest) -> None:
    """Refuse a body declared as anything but JSON; one declared as nothing is read as JSON."""
    if "Content-Type" not in request.headers:
        return  # the legacy callers that send none keep working
    declared = request.content_type  # the media type alone, lower case, without parameters
    if declared == "application/json" or (
        declared.startswith("application/") and declared.endswith("+json")
    ):
        return
    raise HttpProblem(
        415,
        "Content-Type must be application/json",
        "UNSUPPORTED_MEDIA_TYPE",
        headers={"Accept-Post": "application/json"},
    )


def _credential_method(route: Route | None) -> str | None:
    """Return the method a route's credentials are checked for; None when it reads none."""
    if route is None:
        return "/admin"  # an admin-only prefix, before its route is resolved
    if route.rpc is not None:
        return route.rpc.path
    return "/metrics" if route is METRICS else None  # the other documents are public


def _needs_bearer(route: Route | None) -> bool:
    """Tell whether a route's refusals name the Bearer scheme (admin routes)."""
    return (
        route is not None
        and route.rpc is not None
        and route.rpc.caller_auth == auth_pb2.CALLER_AUTH_ADMIN
    )


def _presented(headers: Mapping[str, str]) -> Presented:
    """Return the credentials a request's headers carry."""
    return Presented(_header(headers, AUTHORIZATION_HEADER), _header(headers, WEBHOOK_HEADER))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # A secret is printable ASCII: anything else could not be a valid one, and leaving it out
    # answers "missing" as gRPC metadata (which carries only that) would.
    value = headers.get(name)
    return value if value is not None and value.isascii() and value.isprintable() else None


def _json_names(route: Route | None) -> dict[str, str]:
    if route is None or route.rpc is None:
        return {}
    return {field.name: field.json_name for field in route.rpc.method.input_type.fields}
