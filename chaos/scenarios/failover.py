"""Failover: the primary stops dead, its synchronous standby is promoted, the service follows."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from chaos.health import NOT_SERVING, HealthWatch
from chaos.postgres import Postgres
from chaos.run import DATABASE, OWNER, SERVING_ROLE, Run
from tests.support import free_port

TITLE = "Primary stopped dead, synchronous standby promoted"
WARM_SECONDS = 5.0
DETECTION_SECONDS = 2.0
AFTER_SECONDS = 6.0
SYNC_TIMEOUT_SECONDS = 30.0


async def scenario(run: Run) -> None:
    """Fail over under load; nothing acknowledged is lost, and vends resume on the new primary."""
    primary = await run.cluster("primary")
    standby = await asyncio.to_thread(primary.standby, run.root / "standby", free_port())
    run.adopt(standby)
    await asyncio.to_thread(standby.start)
    await _make_synchronous(primary)
    run.say(f"standby on port {standby.port}, replicating synchronously")
    service = await run.service(
        _both(primary, standby, SERVING_ROLE), _both(primary, standby, OWNER)
    )
    async with HealthWatch(service.grpc_target) as health:
        drivers = await run.start_load(service)
        await asyncio.sleep(run.seconds(WARM_SECONDS))
        stop = run.fault("primary: pg_ctl stop -m immediate")
        await asyncio.to_thread(primary.stop, "immediate")
        # The time an operator or a failover manager takes to notice and decide.
        await asyncio.sleep(DETECTION_SECONDS)
        promote = run.fault("standby: pg_ctl promote")
        took = time.monotonic()
        await asyncio.to_thread(standby.promote)
        promote.label += f" (writable in {time.monotonic() - took:.1f} s)"
        await asyncio.sleep(run.seconds(AFTER_SECONDS))
        await run.finish_load(drivers)
        healed = run.heal(stop)
        after_promotion = None if healed is None else healed - (promote.at - stop.at)
        promote.heal_seconds = after_promotion
        saw_down = health.seen(NOT_SERVING, run.at(stop), run.at(promote) + (after_promotion or 0))
        stop.health = "NOT_SERVING seen" if saw_down else "NOT_SERVING never seen"
    outcome = run.outcome
    outcome.figures.update(
        seconds_without_vends=None if healed is None else round(healed, 2),
        vends_back_after_promotion_seconds=(
            None if after_promotion is None else round(max(0.0, after_promotion), 2)
        ),
    )
    outcome.figures["recovery"] = (
        f"vends back {_seconds(healed)} after the primary stopped, "
        f"{_seconds(after_promotion)} after promotion"
    )
    outcome.check("vends succeeded again on the promoted standby", healed is not None)
    outcome.check(
        "health reported NOT_SERVING between the stop and the promotion", saw_down, stop.health
    )
    # The books are proven on the promoted server: every OK there, nothing twice.
    await run.prove(standby.url(OWNER, DATABASE))


async def _make_synchronous(primary: Postgres) -> None:
    """Have every commit wait for the standby, so no acknowledged write can be lost."""
    conn = await asyncpg.connect(primary.url())
    try:
        # Set after the base backup, so the standby, once promoted, waits for nobody.
        await conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        await conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + SYNC_TIMEOUT_SECONDS
        while (
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'"
            )
            == 0
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the standby never became synchronous")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


def _both(primary: Postgres, standby: Postgres, user: str) -> str:
    """Return a URL naming both servers, for whichever of them accepts writes."""
    return (
        f"postgresql://{user}@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/{DATABASE}"
        "?target_session_attrs=read-write"
    )


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{max(0.0, value):.1f} s"
