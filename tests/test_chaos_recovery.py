"""How the chaos runs read recovery from the clients' attempts (a pure function of them)."""

from __future__ import annotations

from chaos.recovery import heal_seconds
from chaos.tally import Attempt

FAULT = 100.0


def vend(code: str, start: float, end: float) -> Attempt:
    return Attempt("vend", code, start, end)


def test_recovery_counts_from_the_first_failure_the_fault_caused():
    attempts = [
        vend("OK", 99.0, 99.5),  # before the fault
        vend("UNAVAILABLE", 100.0, 100.2),
        vend("OK", 100.1, 100.3),  # sent before the failure: no proof of recovery
        vend("UNAVAILABLE", 100.5, 101.0),
        vend("OK", 102.0, 102.4),
    ]
    assert round(heal_seconds(attempts, FAULT) or 0, 6) == 2.4


def test_a_user_out_of_credits_is_no_failure_of_the_service():
    attempts = [
        vend("FAILED_PRECONDITION", 100.0, 100.05),  # refused by the books, not by the fault
        vend("OK", 100.06, 100.1),  # answered as the primary went down
        vend("UNAVAILABLE", 100.2, 100.3),
        vend("OK", 102.0, 102.1),
    ]
    assert round(heal_seconds(attempts, FAULT) or 0, 6) == 2.1


def test_no_failure_is_no_outage_and_no_success_is_no_recovery():
    assert heal_seconds([vend("OK", 100.0, 100.1), vend("HTTP 403", 100.1, 100.2)], FAULT) == 0.0
    assert heal_seconds([vend("UNAVAILABLE", 100.0, 100.1)], FAULT) is None
