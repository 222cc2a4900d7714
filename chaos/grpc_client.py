"""The typed client, noting every attempt it makes (its own resends included) in a tally."""

from __future__ import annotations

import time
from typing import Any

import grpc
from pluct_client import PluctClient

from chaos.tally import OK, Tally

# Which mutation each request message is; anything else is a read.
_KINDS = {
    "pluct.token.v1.VendTokenRequest": "vend",
    "pluct.credit.v1.AddCreditsRequest": "payment",
    "pluct.admin.v1.AddCreditsRequest": "grant",
    "pluct.credit.v1.CreateUserRequest": "create",
}


class RecordingClient(PluctClient):
    """A PluctClient whose every attempt, retries included, lands in `tally`."""

    def __init__(self, target: str, tally: Tally, **options: Any) -> None:
        super().__init__(target, **options)
        self.tally = tally

    async def _call(self, method: Any, request: Any, metadata: Any = None) -> Any:
        kind = _KINDS.get(request.DESCRIPTOR.full_name, "read")
        tally = self.tally

        async def attempt(message: Any, **kwargs: Any) -> Any:
            start = time.monotonic()
            try:
                reply = await method(message, **kwargs)
            except grpc.aio.AioRpcError as error:
                tally.attempt(kind, error.code().name, start)
                raise
            tally.attempt(kind, OK, start)
            return reply

        # The client's own retry loop stays in charge: only each send is observed.
        return await super()._call(attempt, request, metadata)
