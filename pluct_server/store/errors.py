"""What the store reports when the database did not do what was asked: facts, not meanings."""

from __future__ import annotations


class StoreFailure(Exception):
    """The database could not be asked, or its answer was lost; the domain says what it means."""


class DatabaseUnavailable(StoreFailure):
    """The database could not be reached, and nothing was sent to it."""


class WriteOutcomeUnknown(StoreFailure):
    """A write was sent, then its connection failed (or it ran too long): it may have committed."""

    def __init__(self, *, timed_out: bool) -> None:
        super().__init__("timed out" if timed_out else "connection lost")
        self.timed_out = timed_out


class RateLimitExceeded(Exception):
    """A statement charged a rate limit that was spent, and was undone."""


class UniqueViolation(Exception):
    """A unique constraint refused a row; `constraint` names which one."""

    def __init__(self, constraint: str) -> None:
        super().__init__(constraint)
        self.constraint = constraint
