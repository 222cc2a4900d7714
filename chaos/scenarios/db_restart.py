"""PostgreSQL restarted under load: a fast restart, an immediate one, and seconds of outage."""

from __future__ import annotations

import asyncio
import time

from chaos.health import NOT_SERVING, SERVING, HealthWatch
from chaos.outcome import Fault
from chaos.run import DATABASE, OWNER, SERVING_ROLE, Run

TITLE = "PostgreSQL restarted under load (fast, immediate, and 3 s down)"
WARM_SECONDS = 4.0
GAP_SECONDS = 5.0
# Each restart a new chance for a call to meet a connection the restart broke mid-way.
RESTARTS = ("fast", "immediate", "fast", "immediate")
DOWN_SECONDS = 3.0
SERVING_AGAIN_SECONDS = 15.0


async def scenario(run: Run) -> None:
    """Restart the database three ways; calls answer only retryable codes, and all settle."""
    primary = await run.cluster("primary")
    service = await run.service(primary.url(SERVING_ROLE, DATABASE), primary.url(OWNER, DATABASE))
    async with HealthWatch(service.grpc_target) as health:
        drivers = await run.start_load(service)
        await asyncio.sleep(run.seconds(WARM_SECONDS))
        restarts = []
        modes = RESTARTS[:2] if run.short else RESTARTS
        for mode in modes:
            fault = run.fault(f"pg_ctl restart -m {mode}")
            took = time.monotonic()
            await asyncio.to_thread(primary.restart, mode)
            fault.label += f" (PostgreSQL back in {time.monotonic() - took:.1f} s)"
            restarts.append(fault)
            await asyncio.sleep(run.seconds(GAP_SECONDS))
        down = run.fault(f"pg_ctl stop -m immediate, {DOWN_SECONDS:.0f} s down, pg_ctl start")
        await asyncio.to_thread(primary.stop, "immediate")
        await asyncio.sleep(DOWN_SECONDS)
        await asyncio.to_thread(primary.start)
        await asyncio.sleep(run.seconds(GAP_SECONDS))
        await run.finish_load(drivers)
        serving_again = await _wait_for(health, SERVING, SERVING_AGAIN_SECONDS)
        for fault in [*restarts, down]:
            run.heal(fault)
            fault.health = _health_story(run, health, fault)
    outcome = run.outcome
    labels = [*(f"-m {mode}" for mode in modes), f"{DOWN_SECONDS:.0f} s down"]
    outcome.figures["recovery"] = "vends back in " + ", ".join(
        f"{_seconds(fault.heal_seconds)} ({label})"
        for label, fault in zip(labels, [*restarts, down], strict=True)
    )
    for fault in [*restarts, down]:
        outcome.check(
            f"vends succeeded again after: {fault.label}",
            fault.heal_seconds is not None,
            _seconds(fault.heal_seconds),
        )
    outcome.check(
        f"health reported NOT_SERVING while PostgreSQL was down {DOWN_SECONDS:.0f} s",
        run.health_between(health, down, NOT_SERVING),
        down.health,
    )
    outcome.check("health reported SERVING again at the end", serving_again, health.state())
    await run.prove(primary.url(OWNER, DATABASE))


def _health_story(run: Run, health: HealthWatch, fault: Fault) -> str:
    """Say what health reported from the fault until shortly after vends were back."""
    since = run.at(fault)
    until = since + (fault.heal_seconds or GAP_SECONDS) + 2.0
    states = [state for at, state in health.changes if since <= at <= until]
    before = [state for at, state in health.changes if at < since][-1:]
    story = " → ".join(before + states[:6])
    return story or "unchanged"


async def _wait_for(health: HealthWatch, state: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while health.state() != state:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"
