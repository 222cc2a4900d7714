"""The chaos report: a summary table for the terminal, REPORT.md and report.json for keeping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import psutil

from chaos.outcome import Outcome
from chaos.pgbouncer import find_pgbouncer
from pluct_server.runtime.embedded_postgres import postgres_tool

_COLUMNS = ("Scenario", "Verdict", "Seconds", "Calls", "Attempts", "Retries", "Errors by code")
_MOST_FAULTS_LISTED = 12


def summary(outcomes: Sequence[Outcome], elapsed: float) -> str:
    """Return the summary table, for the terminal."""
    rows = [_COLUMNS] + [
        (
            o.name,
            o.status,
            f"{o.seconds:.0f}",
            f"{o.calls:,}",
            f"{o.attempts:,}",
            f"{o.retries:,}",
            _errors(o) or "-",
        )
        for o in outcomes
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = [""] + [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(2, "  ".join("-" * width for width in widths))
    for outcome in outcomes:
        lines.append(f"\n{outcome.name}: {outcome.title}")
        recovery = outcome.figures.get("recovery")
        if recovery:
            lines.append(f"  recovery: {recovery}")
        for check in outcome.checks:
            mark = "ok  " if check.passed else "FAIL"
            lines.append(f"  {mark} {check.name}" + (f" ({check.detail})" if check.detail else ""))
        lines.extend(f"  note: {note}" for note in outcome.notes)
    lines.append(f"\n{len(outcomes)} scenario(s) in {elapsed:.0f} s")
    return "\n".join(lines)


def write_reports(outcomes: Sequence[Outcome], elapsed: float, out: Path, *, short: bool) -> Path:
    """Write out/REPORT.md and out/report.json; return the markdown's path."""
    machine = _machine()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    (out / "report.json").write_text(
        json.dumps(
            {
                "when": when,
                "machine": machine,
                "short": short,
                "seconds": round(elapsed, 1),
                "scenarios": [asdict(outcome) for outcome in outcomes],
            },
            indent=2,
        )
        + "\n"
    )
    report = out / "REPORT.md"
    report.write_text(_markdown(outcomes, elapsed, when, machine, short))
    return report


def _markdown(
    outcomes: Sequence[Outcome], elapsed: float, when: str, machine: str, short: bool
) -> str:
    lines = [
        "# Chaos report",
        "",
        f"{when}; {machine}; {'short run' if short else 'full run'}, {elapsed:.0f} s in all.",
        "",
        "Calls count each request once; attempts count every send, retries included. Errors by "
        "code count attempts not answered OK: FAILED_PRECONDITION and HTTP 403 are users out of "
        "credits (sign-ups start with 10), the rest are the faults' doing, each retried with the "
        "same request id until it settled.",
        "",
        "| Scenario | Verdict | Seconds | Calls | Attempts | OK attempts | Retries | "
        "Errors by code | Recovery |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.name} | {o.status} | {o.seconds:.0f} | {o.calls:,} | {o.attempts:,} | "
            f"{o.ok_attempts:,} | {o.retries:,} | {_errors(o) or '-'} | "
            f"{o.figures.get('recovery', '-')} |"
        )
    for o in outcomes:
        lines += ["", f"## {o.name}: {o.title}", "", f"**{o.status}** in {o.seconds:.0f} s.", ""]
        lines += [f"- {'✓' if c.passed else '✗'} {c.name}" + (f": {c.detail}" if c.detail else "")
                  for c in o.checks]  # fmt: skip
        if o.mutations:
            settled = ", ".join(f"{n:,} {outcome}" for outcome, n in sorted(o.mutations.items()))
            lines += ["", f"Mutations: {settled}."]
        figures = {k: v for k, v in o.figures.items() if k != "recovery"}
        if figures:
            lines += ["", "| Figure | Value |", "|---|---|"]
            lines += [f"| {name.replace('_', ' ')} | {value} |" for name, value in figures.items()]
        if o.faults:
            lines += [
                "",
                "| Fault | At (s) | Vends back after (s) | Health |",
                "|---|---:|---:|---|",
            ]
            for fault in o.faults[:_MOST_FAULTS_LISTED]:
                heal = "-" if fault.heal_seconds is None else f"{fault.heal_seconds:.2f}"
                lines.append(f"| {fault.label} | {fault.at:.1f} | {heal} | {fault.health or '-'} |")
            if len(o.faults) > _MOST_FAULTS_LISTED:
                lines.append(f"| … and {len(o.faults) - _MOST_FAULTS_LISTED} more | | | |")
        for rule, examples in o.broken.items():
            lines += ["", f"Broken: {rule}, e.g.:", ""] + [f"- `{e}`" for e in examples]
        lines += [""] + [f"Note: {note}" for note in o.notes] if o.notes else []
    return "\n".join(lines) + "\n"


def _errors(outcome: Outcome) -> str:
    return ", ".join(f"{code} {n:,}" for code, n in outcome.errors.items())


def _machine() -> str:
    memory = psutil.virtual_memory().total / 2**30
    versions = [_version([postgres_tool("postgres"), "--version"])]
    bouncer = find_pgbouncer()
    if bouncer is not None:
        versions.append(_version([bouncer, "--version"]))
    return (
        f"{os.cpu_count()} cores, {memory:.0f} GiB, Python {sys.version.split()[0]}, "
        + ", ".join(versions)
    )


def _version(argv: list[str]) -> str:
    """Return the first line a program prints about its version."""
    try:
        done = subprocess.run(  # noqa: S603 - our own tools, fixed arguments
            argv, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return f"{Path(argv[0]).name} (version unknown)"
    return (done.stdout.strip().splitlines() or [Path(argv[0]).name])[0]
