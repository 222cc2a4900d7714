"""Calls the RPCs behind the routes: HTTP meets the very same auth, checks and errors as gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
from google.protobuf.message import Message

from pluct_server.api.grpc.inprocess import CallAborted, InProcessCalls
from pluct_server.api.grpc.interceptor import REQUEST_ID_KEYS
from pluct_server.api.http.problems import CallError
from pluct_server.api.http.routes import Route
from pluct_server.observability.access import REQUEST_ID_HEADER
from pluct_server.security.auth import AUTHORIZATION_HEADER, WEBHOOK_HEADER

Metadata = tuple[tuple[str, str], ...]

# HTTP headers that travel on as gRPC metadata: the secrets the interceptor checks, and the
# ids the interceptor logs failures with, so HTTP and gRPC logs can be joined.
FORWARDED_HEADERS = (AUTHORIZATION_HEADER, WEBHOOK_HEADER, *REQUEST_ID_KEYS)


def forwarded_metadata(headers: Mapping[str, str], request_id: str | None = None) -> Metadata:
    """Return the gRPC metadata for an HTTP request's headers (and the request's id, if given)."""
    metadata = [] if request_id is None else [(REQUEST_ID_HEADER, request_id)]
    for name in FORWARDED_HEADERS:
        if request_id is not None and name == REQUEST_ID_HEADER:
            continue
        value = headers.get(name)
        # gRPC metadata is printable ASCII; anything else could not be a valid secret anyway,
        # and dropping it lets the service answer "missing" rather than the channel failing.
        if value is not None and value.isascii() and value.isprintable():
            metadata.append((name, value))
    return tuple(metadata)


class RpcProxy:
    """Calls the routed RPCs in-process, through the same guard gRPC callers meet."""

    def __init__(self, calls: InProcessCalls, timeout: float) -> None:
        self._calls = calls
        self._timeout = timeout

    async def call(self, route: Route, request: Message, metadata: Metadata) -> Message:
        """Call the route's RPC; raise CallError with the status it failed with."""
        assert route.rpc is not None
        try:
            async with asyncio.timeout(self._timeout):
                return await self._calls.call(route.rpc.path, request, metadata)
        except CallAborted as aborted:
            raise CallError.from_status(aborted.code, aborted.trailing_metadata) from None
        except TimeoutError:
            raise CallError.from_status(grpc.StatusCode.DEADLINE_EXCEEDED, ()) from None
