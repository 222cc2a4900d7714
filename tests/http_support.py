"""Plumbing for the shim's tests: HTTP clients, raw sockets, curl, and a shim with tight limits."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pluct_server.api.http import Gateway, HttpLimits
from pluct_server.app.server import SERVICES, PluctServer
from tests.support import ADMIN_SECRET, WEBHOOK_SECRET

ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_SECRET}"}
WEBHOOK_HEADERS = {"x-webhook-secret": WEBHOOK_SECRET}
# ISO-8601 UTC, as JavaScript's toISOString() prints it.
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
# A hang guard, not a timing claim: generous enough for the slowest CI machine.
HANG_GUARD_SECONDS = 30


@asynccontextmanager
async def http_client(port: int) -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session against the shim on `port` of this host."""
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as session:
        yield session


@dataclass
class Reply:
    """One HTTP answer, read whole."""

    status: int
    headers: Mapping[str, str]
    body: Any
    raw: bytes = b""

    @property
    def error(self) -> str:
        """Return the legacy error string of an error body."""
        return str(self.body["error"])


async def call(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    data: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """Make one request and return its status, headers and JSON body.

    Every answer is JSON, but for a scrape of /metrics that succeeds (Prometheus text). Raw
    `data` is declared JSON, as the legacy callers send it, unless `headers` say otherwise.
    """
    if data is not None and not any(name.lower() == "content-type" for name in headers or {}):
        headers = {**(headers or {}), "Content-Type": "application/json"}
    async with http.request(
        method, path, json=json_body, data=data, headers=headers, allow_redirects=False
    ) as response:
        raw = await response.read()
        if path == "/metrics" and response.status == 200:
            assert response.content_type == "text/plain", raw[:200]
            return Reply(response.status, dict(response.headers), raw.decode(), raw)
        assert response.content_type == "application/json", (method, path, raw[:200])
        body = json.loads(raw) if method != "HEAD" else None
        return Reply(response.status, dict(response.headers), body, raw)


@dataclass
class RawReply:
    """An HTTP answer read off a raw socket, and whether the server closed the connection."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


async def read_reply(reader: asyncio.StreamReader) -> RawReply:
    """Read one HTTP/1.1 response (with a Content-Length body) from `reader`."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return RawReply(status, headers, body)


@asynccontextmanager
async def raw_connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A plain TCP connection to the shim, for requests no polite client would send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


@asynccontextmanager
async def strict_gateway(server: PluctServer, **limits: Any) -> AsyncIterator[Gateway]:
    """A second shim in front of `server`'s RPCs, with tight limits a test can wait out."""
    assert server.guards is not None and server.calls is not None
    gateway = Gateway(
        SERVICES,
        server.guards,
        server.calls,
        probe=server.health.check_now,
        limits=HttpLimits(**limits),
    )
    await gateway.start("127.0.0.1:0")
    try:
        yield gateway
    finally:
        await gateway.stop(1.0)


def curl_argv(command: str, port: int, env: Mapping[str, str]) -> list[str]:
    """Split a README curl line into argv, aimed at `port`, with $VARS taken from `env`."""
    expanded = re.sub(r"\$([A-Z_]+)", lambda m: env[m.group(1)], command)
    expanded = expanded.replace("localhost:8787", f"localhost:{port}")
    return shlex.split(expanded)


@dataclass
class CurlRequest:
    """What a curl command line asks for, read by the tiny subset of curl options we use."""

    method: str
    url: str
    headers: dict[str, str]
    data: str | None


def parse_curl(argv: list[str]) -> CurlRequest:
    """Read -X, -H, -d and the URL from a curl argv (for machines without curl)."""
    method, url, headers, data = "", "", {}, None
    args = iter(argv[1:])
    for arg in args:
        if arg == "-X":
            method = next(args)
        elif arg == "-H":
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            data = next(args)
        else:
            url = arg
    return CurlRequest(method or ("POST" if data is not None else "GET"), url, headers, data)


async def run_curl(argv: list[str]) -> tuple[int, Any]:
    """Run curl (without blocking the loop the server runs on); return status and JSON body."""
    process = await asyncio.create_subprocess_exec(
        *argv[:1],
        "--silent",
        "--show-error",
        "--write-out",
        "\n%{http_code}",
        *argv[1:],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), HANG_GUARD_SECONDS)
    assert process.returncode == 0, err.decode()
    body, _, status = out.decode().rpartition("\n")
    return int(status), json.loads(body)


async def run_without_curl(request: CurlRequest) -> tuple[int, Any]:
    """Send what a curl command line would, with aiohttp."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            request.method, request.url, data=request.data, headers=request.headers
        ) as response,
    ):
        return response.status, json.loads(await response.read())
