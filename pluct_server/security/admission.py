"""The edge: how much one client address may hold at once, and how long a request may take to come.

A stranger that opens connections or calls and then sends nothing must not hold what other
callers need: each address gets a bounded share before any work is done for it, and a request
that has not arrived whole in time is ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pluct_server.values.addresses import limit_subject

T = TypeVar("T")


class Shares:
    """Counts what each subject holds at once (a client address, a key): at most so many each.

    With a `total`, the subjects together hold at most that many too, but for what is taken
    outside it (see `take`).
    """

    def __init__(
        self,
        per_subject: int,
        total: int | None = None,
        subject_of: Callable[[str], str] = limit_subject,
    ) -> None:
        self._per_subject = per_subject
        self._total = total
        # An IPv6 customer holds a whole /64: rotating addresses inside it buys no more.
        self._subject_of = subject_of
        self._held: dict[str, int] = {}
        self._in_total = 0

    def take(self, who: str, *, within_total: bool = True) -> tuple[str, bool] | None:
        """Take one for `who`; return what to give back, or None when it may not have one."""
        if within_total and self._total is not None and self._in_total >= self._total:
            return None
        subject = self._subject_of(who)
        held = self._held.get(subject, 0)
        if held >= self._per_subject:
            return None
        self._held[subject] = held + 1
        if within_total:
            self._in_total += 1
        return subject, within_total

    def give_back(self, taken: tuple[str, bool]) -> None:
        """Give back one that `take` returned `taken` for."""
        subject, within_total = taken
        held = self._held[subject] - 1
        if held:
            self._held[subject] = held
        else:
            del self._held[subject]  # subjects come and go: keep only those holding something
        if within_total:
            self._in_total -= 1


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
            if task.uncancel() > 0:
                raise  # cancelled by someone else too: that cancellation stands
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
