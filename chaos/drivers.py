"""Client processes, each running the mixed load over connections of its own.

gRPC shares one connection between every channel of a process, and the workers share the port
by connection, so one process would only ever reach one worker: several clients reach them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from multiprocessing.process import BaseProcess
from typing import Any

from chaos.grpc_client import RecordingClient
from chaos.http_client import HttpClient
from chaos.load import LoadPlan, MixedLoad
from chaos.tally import OK, Tally

_PR_SET_PDEATHSIG = 1
RESULT_TIMEOUT_SECONDS = 120.0
_PROGRESS_SECONDS = 0.5


class Drivers:
    """Starts one client process per plan, stops their load, and gathers their tallies."""

    def __init__(self, plans: list[LoadPlan]) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._results: Any = context.Queue()
        # Per client: attempts so far, and how many of them failed.
        self._progress = [context.Array("q", 2) for _ in plans]
        self._processes: list[BaseProcess] = [
            context.Process(
                target=drive,
                args=(plan, self._stop, self._progress[index], self._results, os.getpid()),
                name=f"chaos-client-{plan.name}",
                daemon=True,
            )
            for index, plan in enumerate(plans)
        ]

    def start(self) -> None:
        """Start every client; each starts its load at once."""
        for process in self._processes:
            process.start()

    def progress(self) -> tuple[int, int]:
        """Return the attempts made so far by every client, and how many failed."""
        return (
            sum(shared[0] for shared in self._progress),
            sum(shared[1] for shared in self._progress),
        )

    async def finish(self) -> Tally:
        """Stop the load, wait for every mutation in flight to settle, and merge the tallies."""
        self._stop.set()
        merged = Tally()
        for _ in self._processes:
            tally = await asyncio.to_thread(self._results.get, True, RESULT_TIMEOUT_SECONDS)
            merged.merge(tally)
        for process in self._processes:
            await asyncio.to_thread(process.join, 10)
        return merged

    def kill(self) -> None:
        """Stop every client still running, whatever it is doing."""
        for process in self._processes:
            if process.is_alive():
                process.kill()
                process.join(5)


def drive(plan: LoadPlan, stop: Any, progress: Any, results: Any, parent: int) -> None:
    """Run the mixed load until `stop` is set; put the tally on `results` (the process's entry)."""
    _die_with(parent)
    tally = Tally()
    try:
        asyncio.run(_drive(plan, tally, stop, progress))
    finally:
        results.put(tally)


async def _drive(plan: LoadPlan, tally: Tally, stop: Any, progress: Any) -> None:
    async with (
        RecordingClient(
            plan.grpc_target, tally, api_key=plan.caller_key, webhook_secret=plan.webhook_secret
        ) as caller,
        RecordingClient(plan.grpc_target, tally, api_key=plan.admin_key) as admin,
        HttpClient(plan.http_base, plan.webhook_secret, tally) as http,
    ):
        reporter = asyncio.create_task(_report(tally, progress))
        try:
            await MixedLoad(plan, tally, caller, admin, http).run(stop.is_set)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter


async def _report(tally: Tally, progress: Any) -> None:
    """Publish this client's counts for the progress lines, twice a second."""
    seen = failed = 0
    while True:
        new = tally.attempts[seen:]
        failed += sum(1 for attempt in new if attempt.code != OK)
        seen += len(new)
        progress[0], progress[1] = seen, failed
        await asyncio.sleep(_PROGRESS_SECONDS)


def _die_with(parent: int) -> None:
    """Have the kernel stop this client when the harness dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the request was in place
        sys.exit(0)
