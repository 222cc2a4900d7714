"""What a call costs against the rate limits: one charge per (subject, bucket), a value."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pluct_server.values.settings import Rate

# Bucket names, stored with every counter; a subject is a user id or a client address.
VEND = "vend"
HTTP = "http"
SIGNUP = "signup"
AUTH_FAILURE = "auth-failure"
# Buckets counted per client address rather than per user.
ADDRESS_BUCKETS = frozenset({HTTP, SIGNUP, AUTH_FAILURE})


@dataclass(frozen=True, order=True)
class Charge:
    """One event counted against one limit (GCRA: one `step` of a `period`-long allowance)."""

    subject: str
    bucket: str
    rate: Rate

    @property
    def step_seconds(self) -> float:
        """Return the time one event uses up: the period divided by the count."""
        return self.rate.period_seconds / self.rate.count

    @property
    def tolerance_seconds(self) -> float:
        """Return how far ahead of now the allowance may be spent: a full period minus one step."""
        return self.rate.period_seconds - self.step_seconds


def retry_after_seconds(charges: Sequence[Charge]) -> int:
    """Return when a refused caller may try again: one step of the slowest limit, rounded up."""
    # GCRA refuses only while the next step is less than a step away, so this is an upper bound.
    return max(1, math.ceil(max((charge.step_seconds for charge in charges), default=1.0)))
