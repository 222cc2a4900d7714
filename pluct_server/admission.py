"""The edge: how much one client address may hold at once, and how long a request may take to come.

A stranger that opens connections or calls and then sends nothing must not hold what other
callers need: each address gets a bounded share before any work is done for it, and a request
that has not arrived whole in time is ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from pluct_server.addresses import limit_subject

T = TypeVar("T")


class AddressShares:
    """Counts what each client address holds; refuses an address at its share, or a full total."""

    def __init__(self, per_address: int, total: int | None = None) -> None:
        self._per_address = per_address
        self._total = total
        self._held: dict[str, int] = {}
        self.in_use = 0

    def take(self, address: str) -> str | None:
        """Take one for `address`; return what to give back, or None when it may not have one."""
        if self._total is not None and self.in_use >= self._total:
            return None
        # An IPv6 customer holds a whole /64: rotating addresses inside it buys no more.
        subject = limit_subject(address)
        held = self._held.get(subject, 0)
        if held >= self._per_address:
            return None
        self._held[subject] = held + 1
        self.in_use += 1
        return subject

    def give_back(self, subject: str) -> None:
        """Give back one that `take` returned `subject` for."""
        held = self._held[subject] - 1
        if held:
            self._held[subject] = held
        else:
            del self._held[subject]  # addresses come and go: keep only those holding something
        self.in_use -= 1

    def held_by(self, address: str) -> int:
        """Return how many `address` holds now."""
        return self._held.get(limit_subject(address), 0)


class RequestTimedOut(Exception):
    """A request did not arrive whole within the read timeout."""


class ArrivalDeadlines:
    """Ends waits for a request that has not arrived within `seconds`.

    A timer per call would cost every call a timer handle; one sweep a fraction of the timeout
    apart costs a dictionary entry instead, and ends a late wait within a sweep of its deadline.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._sweep_seconds = min(1.0, seconds / 4)
        # Waiting tasks and their deadlines, oldest first: every wait gets the same timeout.
        self._waiting: dict[asyncio.Task[object], float] = {}
        self._overdue: set[asyncio.Task[object]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def wait_for(self, arrival: Awaitable[T]) -> T:
        """Await `arrival` in the current task; raise RequestTimedOut when it comes too late."""
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = loop.create_task(self._sweep(), name="arrival-deadlines")
        self._waiting[task] = loop.time() + self.seconds
        try:
            return await arrival
        except asyncio.CancelledError:
            if task not in self._overdue:
                raise  # the caller went away, or the server is stopping
            self._overdue.discard(task)
            task.uncancel()
            raise RequestTimedOut() from None
        finally:
            self._waiting.pop(task, None)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._sweep_seconds)
            now = loop.time()
            overdue = []
            for task, deadline in self._waiting.items():
                if deadline > now:
                    break  # every later entry is due later still
                overdue.append(task)
            for task in overdue:
                del self._waiting[task]
                self._overdue.add(task)
                task.cancel()

    async def close(self) -> None:
        """Stop sweeping (a server that stops)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
