"""The event loop workers run on: the default, the other choice, a missing one, its timers."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta

import pytest

from pluct_server.runtime.event_loop import loop_factory, loop_kind
from pluct_server.store.spend_batch import timer_seconds
from pluct_server.values.settings import ConfigError, Settings, load_settings

STRONG = {
    "ADMIN_SECRET": "0123456789abcdefghijklmnopqrstuvwxyz-admin",
    "JWT_SECRET": "0123456789abcdefghijklmnopqrstuvwxyz-jwt",
    "WEBHOOK_SECRET": "0123456789abcdefghijklmnopqrstuvwxyz-hook",
}


async def test_the_suite_runs_on_the_loop_workers_run_on_by_default():
    assert loop_kind(asyncio.get_running_loop()) == Settings.event_loop == "uvloop"


def test_each_choice_makes_a_loop_of_its_kind():
    for name in ("uvloop", "asyncio"):
        loop = loop_factory(name)()
        try:
            assert loop_kind(loop) == name
        finally:
            loop.close()


def test_an_unknown_loop_name_is_refused_not_replaced():
    with pytest.raises(ValueError, match="trio"):
        loop_factory("trio")


def test_a_missing_uvloop_stops_the_start_with_one_line_naming_the_setting(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as where it is not installed

    with pytest.raises(ConfigError) as raised:
        load_settings({"DATABASE_URL": "postgresql://db/pluct", **STRONG})

    assert str(raised.value).startswith("PLUCT_EVENT_LOOP")
    assert "PLUCT_EVENT_LOOP=asyncio" in str(raised.value)
    told = load_settings(
        {"DATABASE_URL": "postgresql://db/pluct", "PLUCT_EVENT_LOOP": "asyncio", **STRONG}
    )
    assert told.event_loop == "asyncio"


async def test_a_spend_batch_wait_under_a_millisecond_still_waits():
    # uvloop runs a timer of under half a millisecond at once; the batcher rounds waits up.
    assert timer_seconds(timedelta(0)) == 0
    assert timer_seconds(timedelta(microseconds=1500)) == 0.002
    loop = asyncio.get_running_loop()
    fired: asyncio.Future[float] = loop.create_future()
    began = time.perf_counter()
    loop.call_later(
        timer_seconds(timedelta(microseconds=200)), lambda: fired.set_result(time.perf_counter())
    )

    assert await fired - began >= 0.0009
