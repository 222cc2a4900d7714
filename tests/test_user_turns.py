"""Statements for one user take turns in the worker: a few at a time, first come first served."""

from __future__ import annotations

import asyncio

import pytest

from pluct_server.domain.errors import UserBusy
from pluct_server.domain.user_turns import UserTurns

WAIT = 5.0  # as a pooled connection is waited for


async def hold_until(turns: UserTurns, release: asyncio.Event) -> None:
    """Hold the hot user's turn, as a statement in flight does, until `release` is set."""
    async with turns.turn("hot"):
        await release.wait()


@pytest.mark.parametrize("at_once", [1, 3])
async def test_a_user_gets_at_most_its_turns_in_arrival_order_and_others_pass(at_once):
    turns = UserTurns(at_once, WAIT)
    holding = {"hot": 0, "other": 0}
    most = {"hot": 0, "other": 0}
    order: list[int] = []

    async def write(user_id: str, index: int) -> None:
        async with turns.turn(user_id):
            holding[user_id] += 1
            most[user_id] = max(most[user_id], holding[user_id])
            if user_id == "hot":
                order.append(index)
            await asyncio.sleep(0.001)  # a statement in flight: others arrive meanwhile
            holding[user_id] -= 1

    hot = [asyncio.ensure_future(write("hot", i)) for i in range(20)]
    await asyncio.sleep(0)
    # Another user's statement does not wait behind the hot user's queue.
    await asyncio.wait_for(write("other", 0), timeout=0.5)
    assert not all(task.done() for task in hot)
    await asyncio.gather(*hot)

    assert most == {"hot": at_once, "other": 1}
    assert order == list(range(20))
    assert len(turns) == 0  # nothing is remembered once nobody waits


async def test_a_caller_that_goes_away_while_waiting_frees_its_place():
    turns = UserTurns(1, WAIT)
    release = asyncio.Event()
    holder = asyncio.ensure_future(hold_until(turns, release))
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(hold_until(turns, release))
    await asyncio.sleep(0)
    waiter.cancel()
    release.set()
    await holder
    await asyncio.gather(waiter, return_exceptions=True)

    assert waiter.cancelled()
    assert len(turns) == 0
    async with turns.turn("hot"):  # the user's turn is free again
        pass


async def test_a_statement_that_fails_hands_its_turn_on():
    turns = UserTurns(1, WAIT)
    with pytest.raises(RuntimeError):
        async with turns.turn("hot"):
            raise RuntimeError("the statement failed")
    assert len(turns) == 0
    async with asyncio.timeout(1), turns.turn("hot"):
        pass


async def test_a_turn_not_free_within_the_wait_is_refused_as_unavailable():
    turns = UserTurns(1, 0.05)
    release = asyncio.Event()
    holder = asyncio.ensure_future(hold_until(turns, release))
    await asyncio.sleep(0)
    with pytest.raises(UserBusy):
        async with turns.turn("hot"):
            pass
    release.set()
    await holder
    assert len(turns) == 0
