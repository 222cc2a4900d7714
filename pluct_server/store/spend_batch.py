"""Vends that arrive together are spent in one statement: sql/pluct_spend_batch.sql."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pluct_server.observability.metrics import (
    CREDITS_EXPIRED,
    SPEND_BATCH_SECONDS,
    SPEND_BATCH_SIZE,
    SPEND_WAIT_SECONDS,
    count_of,
    histogram_of,
)
from pluct_server.store.database import Database
from pluct_server.values.records import RequestKey, TokenClaims
from pluct_server.values.settings import Settings

if TYPE_CHECKING:
    from pluct_server.values.charges import Charge

SPENT = "spent"
INSUFFICIENT = "insufficient"
TAKEN = "taken"
LIMITED = "limited"
NO_FEATURE = "no_feature"

_SPEND_BATCH = """
SELECT item, outcome, balance_after, charged, expired
  FROM pluct_spend_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
"""


@dataclass(frozen=True)
class SpendRequest:
    """One vend's spend: the token's claims (the feature bought), its request key and charges."""

    claims: TokenClaims
    key: RequestKey | None
    charges: Sequence[Charge]


@dataclass(frozen=True)
class SpendOutcome:
    """What the database did with one spend of a batch."""

    # SPENT, INSUFFICIENT, TAKEN (the request key), LIMITED (a counter) or NO_FEATURE
    outcome: str
    balance_after: int | None = None
    # The credits spent: the feature's price when the batch ran.
    charged: int | None = None
    # Credits of the user's expired grants written off first.
    expired: int = 0


# A spend waiting for its batch: what it asks, its answer to come, and when it asked.
Waiting = tuple[SpendRequest, "asyncio.Future[SpendOutcome]", float]


def batch_arguments(requests: Sequence[SpendRequest]) -> tuple[Any, ...]:
    """Return the fourteen array parameters of pluct_spend_batch for `requests`, in order."""
    charges = [(index, c) for index, r in enumerate(requests) for c in r.charges]
    return (
        [r.claims.user_id for r in requests],
        [None if r.key is None else r.key.caller for r in requests],
        [None if r.key is None else r.key.request_id for r in requests],
        [None if r.key is None else r.key.fingerprint for r in requests],
        [r.claims.token_id for r in requests],
        [r.claims.issued_at for r in requests],
        [r.claims.expires_at for r in requests],
        [None if r.key is None else r.key.retention for r in requests],
        [r.claims.feature for r in requests],
        [index for index, _ in charges],
        [c.subject for _, c in charges],
        [c.bucket for _, c in charges],
        [c.step_seconds for _, c in charges],
        [c.tolerance_seconds for _, c in charges],
    )


def timer_seconds(wait: timedelta) -> float:
    """Return a wait as an event loop timer keeps it: rounded up to whole milliseconds."""
    # Both loops time in milliseconds, and uvloop runs a timer under half of one at once:
    # a wait that is set must wait.
    return math.ceil(wait / timedelta(milliseconds=1)) / 1000


class SpendBatcher:
    """Coalesces concurrent spends into batches, each one statement and one commit.

    A spend goes out at once when no batch is running, and waits for the next batch while
    `max_in_flight` are, so batches grow exactly as the database falls behind. In between,
    `max_wait` holds the first spend of a batch back a little, to gather more.
    """

    def __init__(
        self,
        database: Database,
        *,
        max_size: int = Settings.spend_batch_max,
        max_wait: timedelta = Settings.spend_batch_wait,
        max_in_flight: int = Settings.spend_batches_in_flight,
    ) -> None:
        self._db = database
        self._max_size = max_size
        self._max_wait = timer_seconds(max_wait)
        self._max_in_flight = max_in_flight
        self._waiting: list[Waiting] = []
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        # Strong references: a running batch must not be collected while callers wait on it.
        self._batches: set[asyncio.Task[None]] = set()
        # What was sent: batches, and the most spends one carried.
        self.sent = 0
        self.largest = 0
        self._sizes = histogram_of(SPEND_BATCH_SIZE)
        self._statement_seconds = histogram_of(SPEND_BATCH_SECONDS)
        self._waits = histogram_of(SPEND_WAIT_SECONDS)
        self._expired = count_of(CREDITS_EXPIRED)

    async def spend(self, request: SpendRequest) -> SpendOutcome:
        """Spend as part of the next batch; return what the database did with this spend."""
        future: asyncio.Future[SpendOutcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future, time.perf_counter()))
        self._schedule()
        # A caller that goes away does not stop the batch: its spend is made or not, and a
        # retry with the same request id finds out which.
        return await asyncio.shield(future)

    def _schedule(self) -> None:
        if self._in_flight >= self._max_in_flight:
            return  # a batch that finishes takes the waiting spends along
        # Alone, a spend goes at once: waiting only pays when others are coming, which a batch
        # already in flight says they are.
        idle = self._in_flight == 0
        if idle or self._max_wait <= 0 or len(self._waiting) >= self._max_size:
            self._send()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._max_wait, self._send)

    def _send(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._waiting or self._in_flight >= self._max_in_flight:
            return
        batch = self._waiting[: self._max_size]
        del self._waiting[: self._max_size]
        self.sent += 1
        self.largest = max(self.largest, len(batch))
        self._in_flight += 1
        sent = time.perf_counter()
        task = asyncio.get_running_loop().create_task(self._run(batch, sent))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)
        self._sizes.observe(len(batch))
        for _, _, asked in batch:
            self._waits.observe(sent - asked)

    async def _run(self, batch: list[Waiting], sent: float) -> None:
        """Run one batch's statement and answer each of its spends; `sent` is when it left."""
        try:
            arguments = batch_arguments([r for r, _, _ in batch])
            rows = await self._db.fetch(_SPEND_BATCH, *arguments, writes=True)
        except BaseException as error:
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
        else:
            for row in rows:
                future = batch[row["item"]][1]
                if not future.done():
                    balance, charged = row["balance_after"], row["charged"]
                    future.set_result(
                        SpendOutcome(
                            row["outcome"],
                            None if balance is None else int(balance),
                            None if charged is None else int(charged),
                            int(row["expired"]),
                        )
                    )
                if row["expired"]:
                    self._expired.inc(int(row["expired"]))
        finally:
            self._in_flight -= 1
            # Whatever waited while this batch ran goes now: it has waited long enough.
            if self._waiting:
                self._send()
            # From the batch's leaving, so the loop's turn before the task starts counts too.
            self._statement_seconds.observe(time.perf_counter() - sent)
