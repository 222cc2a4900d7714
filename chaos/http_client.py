"""The legacy JSON routes, called as the mobile apps and the payment provider call them."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from chaos.tally import OK, Tally

TIMEOUT_SECONDS = 5.0
# Statuses a legacy caller retries with the same Idempotency-Key: unavailable or outcome
# unknown (503), a gateway timeout (504), a conflict that is an aborted write (409), and a 500,
# which no caller can tell from a lost answer either.
RETRIED_STATUSES = frozenset({409, 429, 500, 502, 503, 504})


class HttpAnswer(Exception):
    """A call that was not answered 200: its status (0 when no answer came at all)."""

    def __init__(self, status: int, code: str, detail: str = "") -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.detail = detail

    @property
    def retried(self) -> bool:
        """Tell whether the same call should be sent again."""
        return self.status == 0 or self.status in RETRIED_STATUSES


class HttpClient:
    """POSTs to the shim with an Idempotency-Key, noting every attempt in `tally`."""

    def __init__(self, base: str, webhook_secret: str, tally: Tally) -> None:
        self._base = base
        self._webhook = {"x-webhook-secret": webhook_secret}
        self._tally = tally
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpClient:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS),
            # Many connections, as many phones make: the kernel spreads them over the workers.
            connector=aiohttp.TCPConnector(limit=64, force_close=False),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def vend(self, user_id: str, request_id: str) -> tuple[str, int]:
        """Vend a token; return its id and the balance after."""
        body = await self._post("vend", "/vend-token", {"userId": user_id}, request_id, {})
        return str(body["tokenId"]), int(body["balanceAfter"])

    async def payment(self, user_id: str, amount: int, request_id: str) -> int:
        """Credit a payment with the webhook secret; return the new balance."""
        payload = {"userId": user_id, "amount": amount}
        body = await self._post("payment", "/add-credits", payload, request_id, self._webhook)
        return int(body["newBalance"])

    async def _post(
        self,
        kind: str,
        path: str,
        payload: dict[str, Any],
        request_id: str,
        headers: dict[str, str],
    ) -> dict[str, Any]:
        assert self._session is not None, "use HttpClient in `async with`"
        start = time.monotonic()
        try:
            async with self._session.post(
                self._base + path,
                json=payload,
                headers={**headers, "Idempotency-Key": request_id},
            ) as response:
                status = response.status
                body: dict[str, Any] = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as error:
            self._tally.attempt(kind, "HTTP no answer", start)
            raise HttpAnswer(0, f"HTTP no answer ({type(error).__name__})") from error
        code = OK if status == 200 else f"HTTP {status}"
        self._tally.attempt(kind, code, start)
        if status != 200:
            detail = str(body.get("error", "")) if isinstance(body, dict) else ""
            raise HttpAnswer(status, code, detail)
        return body
