"""The raw record of a scenario, for a closer look: every attempt, and every mutation not OK."""

from __future__ import annotations

import csv
from pathlib import Path

from chaos.tally import Tally


def write_raw(tally: Tally, started: float, folder: Path) -> None:
    """Write attempts.csv (times in seconds into the scenario) and unsettled.csv."""
    with (folder / "attempts.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["start_s", "seconds", "kind", "code"])
        for a in sorted(tally.attempts, key=lambda a: a.start):
            writer.writerow([f"{a.start - started:.3f}", f"{a.end - a.start:.4f}", a.kind, a.code])
    with (folder / "not_ok.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["kind", "via", "user_id", "request_id", "outcome", "code", "detail"])
        for m in tally.mutations:
            if m.outcome != "ok":
                writer.writerow(
                    [m.kind, m.via, m.user_id, m.request_id, m.outcome, m.last_code, m.detail]
                )
