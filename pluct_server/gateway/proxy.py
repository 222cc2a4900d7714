"""Calls the RPCs behind the routes: HTTP meets the very same auth, checks and errors as gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import grpc
from google.protobuf.message import Message

from pluct_server.auth import AUTHORIZATION_HEADER, WEBHOOK_HEADER
from pluct_server.gateway.problems import CallError
from pluct_server.gateway.routes import Route
from pluct_server.inprocess import CallAborted, InProcessCalls
from pluct_server.rpc import REQUEST_ID_KEYS

Metadata = tuple[tuple[str, str], ...]

# HTTP headers that travel on as gRPC metadata: the secrets the interceptor checks, and the
# ids the interceptor logs failures with, so HTTP and gRPC logs can be joined.
FORWARDED_HEADERS = (AUTHORIZATION_HEADER, WEBHOOK_HEADER, *REQUEST_ID_KEYS)
_PAGE_SIZE = "page_size"
_PAGE_TOKEN = "page_token"
_NEXT_PAGE_TOKEN = "next_page_token"


def forwarded_metadata(headers: Mapping[str, str]) -> Metadata:
    """Return the gRPC metadata for an HTTP request's headers."""
    metadata = []
    for name in FORWARDED_HEADERS:
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

    async def call_all_pages(
        self, route: Route, request: Message, metadata: Metadata, page_size: int
    ) -> Message:
        """Call a List RPC page after page and return one response holding every item."""
        assert route.rpc is not None
        items_field = route.rpc.response_body
        request = _copy(request)
        setattr(request, _PAGE_SIZE, page_size)
        first = await self.call(route, request, metadata)
        token = getattr(first, _NEXT_PAGE_TOKEN)
        while token:
            setattr(request, _PAGE_TOKEN, token)
            page = await self.call(route, request, metadata)
            getattr(first, items_field).extend(getattr(page, items_field))
            token = getattr(page, _NEXT_PAGE_TOKEN)
        setattr(first, _NEXT_PAGE_TOKEN, "")
        return first


def pages_everything(route: Route, request: Message, all_pages_size: int) -> bool:
    """Tell whether to collect every page: the shape asks for it and the caller set no size."""
    if route.rpc is None or not all_pages_size or not route.rpc.response_body:
        return False
    fields: Sequence[str] = [f.name for f in request.DESCRIPTOR.fields]
    output_fields = route.rpc.method.output_type.fields_by_name
    return (
        _PAGE_SIZE in fields
        and _PAGE_TOKEN in fields
        and _NEXT_PAGE_TOKEN in output_fields
        and not getattr(request, _PAGE_SIZE)
        and not getattr(request, _PAGE_TOKEN)
    )


def _copy(message: Message) -> Message:
    clone = type(message)()
    clone.CopyFrom(message)
    return clone
