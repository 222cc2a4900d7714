"""What one scenario found: its checks, its figures and its faults, ready for the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PASSED, FAILED, SKIPPED = "PASSED", "FAILED", "SKIPPED"


@dataclass
class Check:
    """One thing the scenario proves, and whether it did."""

    name: str
    passed: bool
    detail: str = ""


@dataclass
class Fault:
    """One fault injected, when (seconds into the scenario), and how long vends took to heal."""

    label: str
    at: float
    heal_seconds: float | None = None
    health: str = ""


@dataclass
class Outcome:
    """A scenario's verdict and everything measured on the way."""

    name: str
    title: str
    status: str = PASSED
    seconds: float = 0.0
    calls: int = 0
    attempts: int = 0
    ok_attempts: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    mutations: dict[str, int] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    broken: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def check(self, name: str, passed: bool, detail: str = "") -> bool:
        """Record a check; a failed one fails the scenario. Return `passed`."""
        self.checks.append(Check(name, passed, detail))
        if not passed and self.status != SKIPPED:
            self.status = FAILED
        return passed

    def skip(self, why: str) -> None:
        """Mark the scenario skipped, saying why."""
        self.status = SKIPPED
        self.notes.append(why)
