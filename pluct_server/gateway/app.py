"""Serving one HTTP request: route, check the secret, read, transcode, call, print; always JSON."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pluct.api.v1 import auth_pb2

from pluct_server.auth import Authenticator
from pluct_server.errors import DomainError
from pluct_server.gateway.describe import (
    DESCRIBE,
    HEALTH,
    OPENAPI,
    ServiceInfo,
    health_body,
    self_description,
)
from pluct_server.gateway.legacy import LegacyProfile
from pluct_server.gateway.problems import CallError, HttpProblem, to_problem
from pluct_server.gateway.proxy import RpcProxy, forwarded_metadata, pages_everything
from pluct_server.gateway.render import Renderer
from pluct_server.gateway.routes import NoRoute, Route, Router, WrongMethod
from pluct_server.gateway.transcode import (
    IDEMPOTENCY_HEADER,
    Transcoder,
    parse_json_body,
    split_path,
)

_LOGGER = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class HttpLimits:
    """How much an HTTP client may send, and how long anyone may take."""

    # Larger bodies are refused with 413 (none of our requests comes near it).
    max_body_bytes: int = 64 * 1024
    # A client has this long to send a whole body, or gets 408 (a slow drip cannot pin a handler).
    body_seconds: float = 10.0
    # An idle connection, or one still sending its headers, is closed after this long.
    idle_seconds: float = 15.0
    # The deadline of each gRPC call behind a request.
    rpc_seconds: float = 10.0


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Return `body` as a compact UTF-8 JSON response."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return web.Response(
        body=text.encode("utf-8"),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def problem_response(problem: HttpProblem) -> web.Response:
    """Return the JSON error answer for `problem`."""
    return json_response(problem.body(), problem.status, problem.headers)


class ShimHandler:
    """The aiohttp handler behind every path."""

    def __init__(
        self,
        *,
        router: Router,
        proxy: RpcProxy,
        authenticator: Authenticator,
        profile: LegacyProfile,
        limits: HttpLimits,
        info: ServiceInfo,
        probe: Probe,
        openapi: Mapping[str, Any],
    ) -> None:
        self._router = router
        self._proxy = proxy
        self._authenticator = authenticator
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
        }
        self.draining = False

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request; every failure becomes a JSON error, never a stack trace."""
        route: Route | None = None
        bearer = False
        try:
            parts = split_path(request.rel_url.raw_path)
            metadata = forwarded_metadata(request.headers)
            bearer = self._router.admin_only(parts)
            if bearer:
                # Strangers learn nothing about /admin/...: no token, no 404 or 405 either.
                self._require(auth_pb2.CALLER_AUTH_ADMIN, metadata)
            route, variables = self._router.resolve(request.method, parts)
            if route.rpc is None:
                return await self._builtins[route.name]()
            if not bearer:
                # The secret is checked before the body is read, so strangers cannot make us read.
                self._require(route.rpc.caller_auth, metadata)
                bearer = route.rpc.caller_auth == auth_pb2.CALLER_AUTH_ADMIN
            body = None
            if route.rpc.body:
                body = parse_json_body(await self._read_body(request))
            message = self._transcoder.request(
                route,
                variables,
                request.rel_url.raw_query_string,
                body,
                request.headers.get(IDEMPOTENCY_HEADER),
            )
            shape = self._profile.route_shape(route.rpc.method.full_name)
            if pages_everything(route, message, shape.all_pages_size):
                answer = await self._proxy.call_all_pages(
                    route, message, metadata, shape.all_pages_size
                )
            else:
                answer = await self._proxy.call(route, message, metadata)
            return json_response(self._renderer.response(route, message, answer, datetime.now(UTC)))
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
            return problem_response(
                to_problem(error, self._profile, bearer_route=bearer, json_names=_json_names(route))
            )
        except HttpProblem as problem:
            response = problem_response(problem)
            if problem.status in (408, 413):
                response.force_close()  # the rest of that body is not worth reading
            return response
        except asyncio.CancelledError:
            raise
        except Exception:
            _LOGGER.exception(
                "unexpected error serving %s %s", request.method, request.rel_url.raw_path
            )
            return problem_response(HttpProblem(500, "internal error", "INTERNAL"))

    def _require(self, requirement: int, metadata: Sequence[tuple[str, str]]) -> None:
        try:
            self._authenticator.require(requirement, metadata)
        except DomainError as error:
            raise CallError.from_domain(error) from None

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
            datetime.now(UTC),
            self._profile.timestamp_fraction_digits,
        )
        return json_response(body, 200 if healthy else 503)

    async def _openapi_document(self) -> web.Response:
        return json_response(self._openapi)


def _json_names(route: Route | None) -> dict[str, str]:
    if route is None or route.rpc is None:
        return {}
    return {field.name: field.json_name for field in route.rpc.method.input_type.fields}
