"""PgBouncer in transaction mode: migrations and serving through it, and 500 vends at once."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from bench.harness import REPO
from chaos.pgbouncer import find_pgbouncer
from chaos.run import DATABASE, OWNER, SERVING_ROLE, Run

TITLE = "Behind PgBouncer in transaction mode, with 500 vends at once"
LOAD_SECONDS = 10.0
BURST_VENDS = 500
MIGRATE_TIMEOUT_SECONDS = 120.0


async def scenario(run: Run) -> None:
    """Serve through PgBouncer (no named prepared statements); nothing answers INTERNAL."""
    program = find_pgbouncer()
    if program is None:
        run.outcome.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
        return
    primary = await run.cluster("primary")
    bouncer = await run.pgbouncer(program, primary)
    serving_url = bouncer.url(SERVING_ROLE, DATABASE)
    owner_url = bouncer.url(OWNER, DATABASE)
    # As a release step would, before any server starts: migrations through the pooler too.
    code, said = await _migrate(serving_url, owner_url)
    run.outcome.check("python -m pluct_server migrate through PgBouncer", code == 0, said)
    settings = {"PLUCT_DB_STATEMENT_CACHE_SIZE": "0"}
    try:
        service = await run.service(serving_url, owner_url, settings=settings)
    except RuntimeError as error:
        run.outcome.check(
            "the service starts behind PgBouncer, migrating through it",
            False,
            f"{error}: {_last_error(run.out / 'service.log')}",
        )
        # The documented way around: migrate on PostgreSQL directly, serve through PgBouncer.
        run.say("start-up through PgBouncer failed; migrating on PostgreSQL directly instead")
        await bouncer.restart()  # drops its server connections, and what was prepared on them
        direct_owner = primary.url(OWNER, DATABASE)
        code, said = await _migrate(primary.url(SERVING_ROLE, DATABASE), direct_owner)
        if code != 0:
            raise RuntimeError(f"migration on PostgreSQL directly failed too: {said}") from error
        service = await run.service(serving_url, direct_owner, settings=settings)
        run.outcome.notes.append(
            "the service did not start with its migrations through PgBouncer; the rest of this "
            "scenario ran with PLUCT_MIGRATE_DATABASE_URL naming PostgreSQL directly"
        )
    else:
        run.outcome.check("the service starts behind PgBouncer, migrating through it", True)
    drivers = await run.start_load(service)
    await asyncio.sleep(run.seconds(LOAD_SECONDS))
    await run.finish_load(drivers)
    run.say(f"{BURST_VENDS} vends at once")
    before, started = len(run.tally.mutations), time.monotonic()
    async with run.clients() as load:
        await load.burst(BURST_VENDS)
    burst = run.tally.mutations[before:]
    outcomes = {m.outcome: sum(1 for n in burst if n.outcome == m.outcome) for m in burst}
    internal = sum(1 for a in run.tally.attempts if a.start >= started and a.code == "INTERNAL")
    run.outcome.figures.update(
        burst_vends=len(burst),
        burst_ok=outcomes.get("ok", 0),
        burst_refused=outcomes.get("refused", 0),
    )
    run.outcome.figures["recovery"] = "no fault injected"
    run.outcome.check(
        f"{BURST_VENDS} vends at once all settled",
        outcomes.get("ok", 0) + outcomes.get("refused", 0) == len(burst),
        ", ".join(f"{n} {outcome}" for outcome, n in outcomes.items()),
    )
    run.outcome.check(
        "none of them answered INTERNAL", not internal, f"{internal} INTERNAL" if internal else ""
    )
    await run.prove(primary.url(OWNER, DATABASE))


async def _migrate(serving_url: str, owner_url: str) -> tuple[int, str]:
    """Run `python -m pluct_server migrate`; return its exit status and last line."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'clients'}",
        "DATABASE_URL": serving_url,
        "PLUCT_MIGRATE_DATABASE_URL": owner_url,
        "PLUCT_DB_STATEMENT_CACHE_SIZE": "0",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pluct_server",
        "migrate",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), MIGRATE_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        return 1, f"no answer within {MIGRATE_TIMEOUT_SECONDS:.0f} s"
    lines = output.decode(errors="replace").strip().splitlines()
    if process.returncode == 0:
        return 0, ""
    return int(process.returncode or 1), lines[-1] if lines else "(no output)"


def _last_error(log: Path) -> str:
    """Return the last exception line of a log (the error a start-up died of)."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    errors = [line for line in lines if "Error" in line and not line.startswith(" ")]
    return errors[-1] if errors else "(nothing in the log)"
