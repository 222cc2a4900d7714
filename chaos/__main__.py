"""`make chaos`: every scenario in turn, a summary table, chaos/out/REPORT.md and report.json."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from chaos.accounts import tool_account
from chaos.outcome import FAILED, SKIPPED, Outcome
from chaos.progress import Progress
from chaos.report import summary, write_reports
from chaos.run import Run
from chaos.scenarios import db_restart, failover, hostile_clients, killed_workers, pgbouncer

OUT = Path(__file__).parent / "out"
Scenario = Callable[[Run], Awaitable[None]]
SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "killed-workers": (killed_workers.TITLE, killed_workers.scenario),
    "db-restart": (db_restart.TITLE, db_restart.scenario),
    "pgbouncer": (pgbouncer.TITLE, pgbouncer.scenario),
    "failover": (failover.TITLE, failover.scenario),
    "hostile-clients": (hostile_clients.TITLE, hostile_clients.scenario),
}


async def run_all(names: list[str], *, short: bool) -> list[Outcome]:
    """Run the named scenarios one after the other; a failing one does not stop the rest."""
    # SIGTERM stops the run as Ctrl-C does, so every server is still cleaned up.
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    progress = Progress()
    account = await asyncio.to_thread(tool_account)
    outcomes = []
    for name in names:
        title, scenario = SCENARIOS[name]
        outcome = Outcome(name, title)
        outcomes.append(outcome)
        progress.begin(name)
        run = Run(outcome, progress, OUT / name, account, short=short)
        try:
            await scenario(run)
        except Exception as error:
            outcome.check("ran to the end", False, f"{type(error).__name__}: {error}")
            (OUT / name / "error.txt").write_text(traceback.format_exc())
        finally:
            # Not in a thread: a cancelled run must still stop every server before it ends.
            run.close()
        progress.say(f"{outcome.status} in {outcome.seconds:.0f} s")
    return outcomes


def main() -> int:
    """Run the scenarios, print the summary and write the reports; 1 if anything broke."""
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument(
        "--short", action="store_true", help="shorter loads and fewer faults (CI: about a minute)"
    )
    parser.add_argument(
        "--only", action="append", choices=list(SCENARIOS), help="run this scenario (repeatable)"
    )
    args = parser.parse_args()
    names = args.only or list(SCENARIOS)
    OUT.mkdir(exist_ok=True)
    started = time.monotonic()
    try:
        outcomes = asyncio.run(run_all(names, short=args.short))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("stopped; every server started was stopped", file=sys.stderr)
        return 130
    elapsed = time.monotonic() - started
    print(summary(outcomes, elapsed))
    report = write_reports(outcomes, elapsed, OUT, short=args.short)
    print(f"(wrote {report} and {report.with_name('report.json')})")
    failed = [o.name for o in outcomes if o.status == FAILED]
    skipped = [o.name for o in outcomes if o.status == SKIPPED]
    if skipped:
        print(f"skipped: {', '.join(skipped)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
