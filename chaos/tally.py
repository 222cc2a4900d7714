"""What the clients saw: every attempt with its status, and every mutation with its outcome."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

OK = "OK"
# A server bug by the service's own contract: never an acceptable answer, even under chaos.
BUG_CODES = frozenset({"INTERNAL", "UNKNOWN", "HTTP 500"})
# What a fault may make a call answer: try again, with the same request id (HTTP: the legacy
# statuses of the same; "no answer" is a dropped connection or the client's own deadline).
RETRYABLE_CODES = frozenset(
    {
        "UNAVAILABLE",
        "ABORTED",
        "DEADLINE_EXCEEDED",
        "HTTP 503",
        "HTTP 504",
        "HTTP 409",
        "HTTP no answer",
    }
)
# Refusals the load meets without any fault: a user out of credits.
EXPECTED_REFUSALS = frozenset({"FAILED_PRECONDITION", "HTTP 403"})
# Mutations and the ledger entry type each one writes.
LEDGER_TYPES = {
    "create": "user_creation",
    "vend": "spend",
    "payment": "add_webhook",
    "grant": "admin_add",
}


@dataclass(slots=True)
class Attempt:
    """One call sent once: what it was, how it ended, and when (time.monotonic)."""

    kind: str
    code: str
    start: float
    end: float

    @property
    def ok(self) -> bool:
        """Tell whether the attempt was answered OK."""
        return self.code == OK


@dataclass(slots=True)
class Mutation:
    """One request that moves credits, with its request id, followed until it settles."""

    kind: str
    via: str
    user_id: str
    request_id: str
    # The balance change it asks for: +n for a credit, -1 for a vend.
    change: int
    # pending while retried; then ok, refused (a definitive "no") or unknown (never settled).
    outcome: str = "pending"
    last_code: str = ""
    # The service's own words with a refusal, to tell a normal one from a surprise.
    detail: str = ""
    token_id: str = ""
    balance_after: int | None = None


@dataclass
class Tally:
    """Every attempt and mutation of one client, or of several merged."""

    attempts: list[Attempt] = field(default_factory=list)
    mutations: list[Mutation] = field(default_factory=list)
    # Calls made, each counted once however many times it was sent.
    calls: Counter[str] = field(default_factory=Counter)

    def attempt(self, kind: str, code: str, start: float) -> None:
        """Note an attempt that started at `start` and ended now."""
        self.attempts.append(Attempt(kind, code, start, time.monotonic()))

    def merge(self, other: Tally) -> None:
        """Add another client's attempts and mutations to these."""
        self.attempts.extend(other.attempts)
        self.mutations.extend(other.mutations)
        self.calls.update(other.calls)

    def codes(self) -> Counter[str]:
        """Return how many attempts ended with each status."""
        return Counter(attempt.code for attempt in self.attempts)

    def outcomes(self) -> Counter[str]:
        """Return how many mutations ended ok, refused or unknown."""
        return Counter(mutation.outcome for mutation in self.mutations)

    def retries(self) -> int:
        """Return how many attempts were resends of a call already sent."""
        return max(0, len(self.attempts) - sum(self.calls.values()))

    def bugs(self) -> int:
        """Return how many attempts were answered INTERNAL or UNKNOWN (HTTP 500)."""
        return sum(1 for attempt in self.attempts if attempt.code in BUG_CODES)
