"""The service's clock on the Python side: caches, refreshes, token times, signatures, holds."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime


class Clock:
    """Reads time for the process; tests hand the server one they can move instead of sleeping.

    Where PostgreSQL decides time (balances, limits, retention) its `now()` keeps deciding, one
    clock for every replica; this one is for what a process decides alone. Deadlines on sockets
    and child processes (admission, the supervisor) keep the event loop's and the OS's clocks:
    they time I/O, not the service's rules.
    """

    def time(self) -> float:
        """Return wall time in unix seconds: token times and signature times."""
        return time.time()

    def now(self) -> datetime:
        """Return wall time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.time(), UTC)

    def monotonic(self) -> float:
        """Return seconds on a clock that never goes back: intervals, holds, schedules."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = Clock()
