"""aiohttp's connection handling, made to answer even unparseable requests in JSON."""

from __future__ import annotations

import logging
from http import HTTPStatus

from aiohttp import web

from pluct_server.gateway.app import json_response

_LOGGER = logging.getLogger(__name__)


class JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's per-connection protocol, with JSON for the requests it refuses before routing."""

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
    """web.Server whose connections use JsonErrorRequestHandler."""

    def __call__(self) -> JsonErrorRequestHandler:
        """Return the protocol for one new connection."""
        # Same construction as web.Server.__call__, with our handler class.
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)
