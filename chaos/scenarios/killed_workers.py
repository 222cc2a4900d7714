"""Killed workers: SIGKILL a random worker about every second while the load runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import statistics
import time

from chaos.run import DATABASE, OWNER, SERVING_ROLE, WORKERS, Run
from chaos.service import Service

TITLE = "Every worker SIGKILLed at once, then a random one about every second"
LOAD_SECONDS = 30.0
FIRST_KILL_SECONDS = 2.0
BACK_WITHIN_SECONDS = 30.0
# The supervisor's longest back-off for a worker that keeps dying young, plus a start-up.
REPLACED_WITHIN_SECONDS = 10.0 + 2.0
# README: "replaces a worker that dies within a second" (its first back-off is 0.5 s).
FIRST_REPLACED_WITHIN_SECONDS = 1.0
_POLL_SECONDS = 0.05


class Replacements:
    """Watches the worker pids: how long each killed worker took to be replaced."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self._pending: list[float] = []
        self.seconds: list[float] = []
        self.no_worker_seconds = 0.0
        self._task: asyncio.Task[None] | None = None

    def killed(self) -> None:
        """Note that a worker was killed just now."""
        self._pending.append(time.monotonic())

    async def __aenter__(self) -> Replacements:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        known = {worker.pid for worker in self._service.workers()}
        while True:
            await asyncio.sleep(_POLL_SECONDS)
            alive = {worker.pid for worker in self._service.workers()}
            for _ in alive - known:
                if self._pending:
                    self.seconds.append(time.monotonic() - self._pending.pop(0))
            if not alive:
                self.no_worker_seconds += _POLL_SECONDS
            known = alive


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


async def scenario(run: Run) -> None:
    """Kill workers under load; the supervisor replaces them and every retried call settles."""
    primary = await run.cluster("primary")
    service = await run.service(primary.url(SERVING_ROLE, DATABASE), primary.url(OWNER, DATABASE))
    drivers = await run.start_load(service)
    chooser = random.Random(7)  # noqa: S311 - which worker dies, not a secret
    end = time.monotonic() + run.seconds(LOAD_SECONDS)
    async with Replacements(service) as replacements:
        # The whole service down at once: nothing serves until the supervisor replaces them.
        await asyncio.sleep(FIRST_KILL_SECONDS)
        everyone = run.fault(f"SIGKILL all {WORKERS} workers at once")
        killed = frozenset(worker.pid for worker in service.workers())
        for pid in killed:
            _kill(pid)
            replacements.killed()
        faults = [everyone]
        all_back = await service.wait_for_workers(WORKERS, BACK_WITHIN_SECONDS, besides=killed)
        # Then one worker at a time, never the last one: the service keeps serving throughout.
        while time.monotonic() < end:
            await asyncio.sleep(chooser.uniform(0.6, 1.4))
            workers = service.workers()
            if len(workers) < 2:
                continue
            victim = chooser.choice(workers)
            faults.append(run.fault(f"SIGKILL worker pid {victim.pid} ({len(workers)} alive)"))
            _kill(victim.pid)
            replacements.killed()
        await run.finish_load(drivers)
        back = await service.wait_for_workers(WORKERS, BACK_WITHIN_SECONDS)
        await asyncio.sleep(2 * _POLL_SECONDS)
    heals = [run.heal(fault) for fault in faults]
    healed = [h for h in heals if h is not None]
    times = replacements.seconds
    outcome = run.outcome
    slowest = max(times, default=0.0)
    outcome.figures.update(
        kills=len(faults) - 1 + WORKERS,
        replacements=len(times),
        replacement_seconds_median=round(statistics.median(times), 2) if times else None,
        replacement_seconds_max=round(max(times), 2) if times else None,
        seconds_with_no_worker=round(replacements.no_worker_seconds, 1),
        heal_seconds_max=round(max(healed), 2) if healed else None,
    )
    outcome.figures["recovery"] = (
        f"all killed: vends back in {_seconds(everyone.heal_seconds)}; "
        f"replacements {_seconds(outcome.figures['replacement_seconds_median'])} median, "
        f"{_seconds(slowest)} max"
    )
    outcome.check(
        f"all {WORKERS} workers alive again at the end",
        back is not None,
        f"{len(service.workers())} alive {BACK_WITHIN_SECONDS:.0f} s after the load",
    )
    outcome.check(
        "every killed worker was replaced",
        len(times) >= outcome.figures["kills"],
        f"{outcome.figures['kills']} killed, {len(times)} replaced",
    )
    outcome.figures["all_killed_all_back_seconds"] = (
        None if all_back is None else round(all_back, 2)
    )
    outcome.check(
        f"every worker killed at once replaced within {FIRST_REPLACED_WITHIN_SECONDS:.0f} s",
        all_back is not None and all_back <= FIRST_REPLACED_WITHIN_SECONDS,
        f"all {WORKERS} back after {_seconds(all_back)}",
    )
    outcome.check(
        f"each replaced within {REPLACED_WITHIN_SECONDS:.0f} s (longest back-off + start-up)",
        slowest <= REPLACED_WITHIN_SECONDS,
        f"slowest {slowest:.1f} s",
    )
    outcome.check(
        "vends succeeded again after every kill",
        len(healed) == len(heals),
        f"{len(heals) - len(healed)} kill(s) never healed" if len(healed) != len(heals) else "",
    )
    await run.prove(primary.url(OWNER, DATABASE))
