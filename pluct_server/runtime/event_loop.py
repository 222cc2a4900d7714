"""The event loop a worker runs on: uvloop unless PLUCT_EVENT_LOOP says asyncio."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pluct_server.values.settings import EVENT_LOOPS

T = TypeVar("T")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """Return the callable that makes a new event loop of the named kind."""
    if name == "uvloop":
        import uvloop  # imported on demand: the asyncio choice must not need it

        return uvloop.new_event_loop
    if name == "asyncio":
        return _python_loop
    raise ValueError(f"unknown event loop {name!r}: expected one of {', '.join(EVENT_LOOPS)}")


def _python_loop() -> asyncio.AbstractEventLoop:
    """Make asyncio's own loop, whatever event loop policy the process has set."""
    if sys.platform == "win32":
        return asyncio.ProactorEventLoop()
    return asyncio.SelectorEventLoop()


def run_on(name: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run main() to completion on a new event loop of the named kind, like asyncio.run."""
    # The loop first: a loop that cannot be made must not leave main's coroutine unawaited.
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main())


def loop_kind(loop: asyncio.AbstractEventLoop) -> str:
    """Name the kind of a running loop as PLUCT_EVENT_LOOP does."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
