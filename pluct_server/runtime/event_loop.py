"""The event loop a worker runs on: uvloop unless PLUCT_EVENT_LOOP says asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

# uvloop first: measured on the whole service, it serves more calls per core (README, "Scaling").
EVENT_LOOPS = ("uvloop", "asyncio")

T = TypeVar("T")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """Return the callable that makes a new event loop of the named kind."""
    if name == "uvloop":
        import uvloop  # imported on demand: the asyncio choice must not need it

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_on(name: str, main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a new event loop of the named kind, like asyncio.run."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)


def loop_kind(loop: asyncio.AbstractEventLoop) -> str:
    """Name the kind of a running loop as PLUCT_EVENT_LOOP does."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def event_loop_policy_of(name: str) -> asyncio.AbstractEventLoopPolicy:
    """Return the policy that makes event loops of the named kind (for tools that want one)."""
    if name == "uvloop":
        import uvloop

        policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
        return policy
    return asyncio.DefaultEventLoopPolicy()
