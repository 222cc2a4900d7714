"""The service's clock: background upkeep runs by it, so tests move it instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from pluct_server.app.maintenance import Maintenance
from pluct_server.values.clock import SYSTEM_CLOCK
from tests.support import MovableClock

HOUR = 3600.0


async def settle(runs: Counter[str], wanted: dict[str, int]) -> None:
    """Wait, bounded, until `runs` holds `wanted`; then let the loop run on a little."""
    deadline = time.monotonic() + 5
    while any(runs[job] < count for job, count in wanted.items()):
        assert time.monotonic() < deadline, (runs, wanted)
        await asyncio.sleep(0.01)
    for _ in range(20):
        await asyncio.sleep(0)
    assert dict(runs) == wanted


async def test_upkeep_refreshes_and_purges_when_the_clock_says_so_and_not_before():
    clock = MovableClock()
    runs: Counter[str] = Counter()

    async def refresh() -> None:
        runs["refresh"] += 1

    async def purge() -> None:
        runs["purge"] += 1

    upkeep = Maintenance(
        [refresh], [purge], refresh_seconds=HOUR, purge_seconds=2 * HOUR, clock=clock
    )
    upkeep.start()
    try:
        await settle(runs, {})
        clock.advance(HOUR)
        await settle(runs, {"refresh": 1, "purge": 1})
        clock.advance(HOUR)
        await settle(runs, {"refresh": 2, "purge": 1})
        clock.advance(HOUR)
        await settle(runs, {"refresh": 3, "purge": 2})
    finally:
        await upkeep.stop()


async def test_a_moved_clock_moves_every_reading_and_only_forward():
    clock = MovableClock()
    wall, steady = clock.time(), clock.monotonic()
    clock.advance(90)

    assert clock.time() - wall >= 90
    assert clock.monotonic() - steady >= 90
    assert abs(clock.now().timestamp() - clock.time()) < 1
    assert abs(SYSTEM_CLOCK.time() + 90 - clock.time()) < 1
    with pytest.raises(ValueError):
        clock.advance(-1)
