"""Background upkeep: refresh what every call reads from memory, forget what has expired."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from pluct_server.store.errors import StoreFailure
from pluct_server.values.clock import SYSTEM_CLOCK, Clock

_LOGGER = logging.getLogger(__name__)

Job = Callable[[], Awaitable[object]]


class Maintenance:
    """Runs `refreshers` every `refresh_seconds` and `purgers` every `purge_seconds`."""

    def __init__(
        self,
        refreshers: Sequence[Job],
        purgers: Sequence[Job],
        *,
        refresh_seconds: float,
        purge_seconds: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._clock = clock
        self._refreshers = tuple(refreshers)
        self._purgers = tuple(purgers)
        self._refresh_seconds = refresh_seconds
        self._purge_seconds = purge_seconds
        self._task: asyncio.Task[None] | None = None

    async def refresh_now(self) -> None:
        """Run every refresher once; a database outage leaves the caches as they were."""
        await self._run(self._refreshers)

    def start(self) -> None:
        """Start the background loop."""
        self._task = asyncio.create_task(self._loop(), name="maintenance")

    async def stop(self) -> None:
        """Stop the background loop."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        clock = self._clock
        next_purge = clock.monotonic()
        while True:
            await clock.sleep(self._refresh_seconds)
            await self._run(self._refreshers)
            if clock.monotonic() >= next_purge:
                await self._run(self._purgers)
                next_purge = clock.monotonic() + self._purge_seconds

    @staticmethod
    async def _run(jobs: Sequence[Job]) -> None:
        for job in jobs:
            try:
                await job()
            except StoreFailure:
                return  # the health monitor reports outages; the next round tries again
            except Exception:
                _LOGGER.exception("background upkeep failed")
