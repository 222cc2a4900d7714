"""Credits to one user take turns in the worker, not in PostgreSQL's queue for the user's row."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pluct_server.domain.errors import UserBusy


class UserTurns:
    """Lets at most `at_once` statements per user run from this worker; the rest wait here.

    Many concurrent writers of one row each hold a connection while PostgreSQL queues them on
    the row lock, and every commit wakes them all to re-check: credits to one user ran at half
    the rate at 64 in flight that they ran at 8. Waiting here holds no connection. The database
    still does the locking that keeps balances right; this only keeps a hot user from taking a
    worker's pool, and the database's time, with it. A turn is waited for as long as a pooled
    connection would be, and then refused as UserBusy: retry later.
    """

    def __init__(self, at_once: int, wait_seconds: float) -> None:
        self._at_once = at_once
        self._wait_seconds = wait_seconds
        # Per user with a statement running or waiting: its turns, and how many hold or await one.
        self._turns: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @asynccontextmanager
    async def turn(self, user_id: str) -> AsyncIterator[None]:
        """Wait, first come first served, until `user_id` has a free turn; hold it meanwhile."""
        turns, callers = self._turns.get(user_id) or (asyncio.Semaphore(self._at_once), 0)
        self._turns[user_id] = (turns, callers + 1)
        try:
            try:
                async with asyncio.timeout(self._wait_seconds):
                    await turns.acquire()
            except TimeoutError:
                raise UserBusy() from None
            try:
                yield
            finally:
                turns.release()
        finally:
            # Forget a user nobody waits for, so memory follows the calls in flight.
            turns, callers = self._turns[user_id]
            if callers == 1:
                del self._turns[user_id]
            else:
                self._turns[user_id] = (turns, callers - 1)

    def __len__(self) -> int:
        """Return how many users have a statement running or waiting."""
        return len(self._turns)
