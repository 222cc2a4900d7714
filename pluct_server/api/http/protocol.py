"""aiohttp's connection handling: JSON for unparseable requests, and a share per client address."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from aiohttp import HttpVersion10, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import RawRequestMessage
from aiohttp.streams import StreamReader

from pluct_server.api.http.app import HTTP09_REQUEST, json_response
from pluct_server.observability.logs import Sampled
from pluct_server.security.addresses import UNKNOWN, Network, is_trusted
from pluct_server.security.admission import Shares

_LOGGER = logging.getLogger(__name__)
_REFUSED = Sampled(_LOGGER, burst=10)


class JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's per-connection protocol, with JSON for the requests it refuses before routing."""

    # What this connection holds of its address's share (None: nothing, or a trusted proxy's).
    _share: tuple[str, bool] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Take the connection into its address's share, or close it at once."""
        server = self._manager
        assert isinstance(server, JsonErrorServer)
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if peer else UNKNOWN
        # A trusted proxy carries many clients' connections: their addresses are in the
        # requests, where the request shares count them.
        if not is_trusted(host, server.trusted_proxies):
            self._share = server.connection_shares.take(host)
            if self._share is None:
                _REFUSED.log(
                    logging.INFO,
                    host,
                    "closed a connection from %s: it holds its share of connections already",
                    host,
                )
                transport.close()
                return
        try:
            super().connection_made(transport)
        except BaseException:
            # uvloop reports no loss for a connection whose set-up failed: give its place back.
            self.connection_lost(None)
            raise

    def connection_lost(self, exc: BaseException | None) -> None:
        """Give the connection's place in its address's share back."""
        if self._share is not None:
            server = self._manager
            assert isinstance(server, JsonErrorServer)
            server.connection_shares.give_back(self._share)
            self._share = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer a request aiohttp could not parse (bad request line, oversized header...)."""
        # The client's mistake, not ours: one line, no stack trace for anyone to fill the log with.
        _LOGGER.info(
            "refused a malformed HTTP request from %s: %s",
            request.remote,
            type(exc).__name__ if exc is not None else status,
        )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        if status >= 500:
            body = {"error": "internal error", "code": status, "reason": "INTERNAL"}
        else:
            phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
            body = {
                "error": f"Malformed HTTP request ({phrase or status})",
                "code": status,
                "reason": "MALFORMED_HTTP",
            }
        response = json_response(body, status)
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    """web.Server whose connections use JsonErrorRequestHandler, at most so many per address."""

    def __init__(
        self,
        handler: Any,
        *,
        connections_per_address: int,
        trusted_proxies: Sequence[Network] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, request_factory=self._make_request_of_any_version, **kwargs)
        self.connection_shares = Shares(connections_per_address)
        self.trusted_proxies = tuple(trusted_proxies)

    def _make_request_of_any_version(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        """Make a request; one in HTTP/0.9 is marked for refusal, to be answered in HTTP/1.0."""
        request = web.BaseRequest
        if message.version >= HttpVersion10:
            return request(message, payload, protocol, writer, task, self._loop)
        # An answer goes out in the request's version, and HTTP/0.9 has no status line or
        # headers to say "400": HTTP/1.0 says it, and closes.
        message = message._replace(version=HttpVersion10, should_close=True)
        made = request(message, payload, protocol, writer, task, self._loop)
        made[HTTP09_REQUEST] = True
        return made

    def __call__(self) -> JsonErrorRequestHandler:
        """Return the protocol for one new connection."""
        # Same construction as web.Server.__call__, with our handler class.
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)
