"""How long a fault kept vends from succeeding, read from the clients' attempts."""

from __future__ import annotations

from chaos.tally import EXPECTED_REFUSALS, Attempt


def heal_seconds(attempts: list[Attempt], fault: float) -> float | None:
    """Return the seconds from `fault` until a vend sent after the first failure succeeded.

    0 when no vend failed after the fault; None when none succeeded again. A user out of
    credits is no failure of the service: counted as one, a refusal in the instant the fault
    began made a vend answered just before the outage look like the recovery.
    """
    vends = sorted((a for a in attempts if a.kind == "vend" and a.end >= fault), key=_end)
    first_failure = next(
        (a.end for a in vends if not a.ok and a.code not in EXPECTED_REFUSALS), None
    )
    if first_failure is None:
        return 0.0
    healed = next((a.end for a in vends if a.ok and a.start >= first_failure), None)
    return None if healed is None else healed - fault


def failures_between(attempts: list[Attempt], since: float, until: float) -> int:
    """Return how many attempts ended in failure between `since` and `until`."""
    return sum(1 for a in attempts if not a.ok and since <= a.end <= until)


def _end(attempt: Attempt) -> float:
    return attempt.end
