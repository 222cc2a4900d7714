"""SQL for rate-limit counters: one statement charges every limit of a call, all or none."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from pluct_server.store.database import Database
from pluct_server.store.errors import RateLimitExceeded


class Charge(Protocol):
    """What the store needs of a charge (limits.Charge): which counter, and by how much."""

    @property
    def subject(self) -> str: ...  # noqa: D102 - the Protocol mirrors limits.Charge
    @property
    def bucket(self) -> str: ...  # noqa: D102
    @property
    def step_seconds(self) -> float: ...  # noqa: D102
    @property
    def tolerance_seconds(self) -> float: ...  # noqa: D102


# The CTE charges every counter of the call by the rule of sql/rate_limits.sql (pluct_gcra_tat,
# NULL when a counter refuses), and pluct_rate_limited() aborts the whole statement when one
# refused, so a refused call moves no counter. (A vend charges in pluct_spend_batch instead.)
_CHARGE = """
WITH charged AS (
    INSERT INTO rate_limits AS r (subject, bucket, tat, tolerance)
    SELECT w.subject, w.bucket, now() + make_interval(secs => w.step),
           make_interval(secs => w.tolerance)
      FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[])
           AS w(subject, bucket, step, tolerance)
     -- The lock order of pluct_spend_batch (by key), so a call and a batch never deadlock.
     ORDER BY w.subject, w.bucket
    ON CONFLICT (subject, bucket) DO UPDATE
       SET tat = pluct_gcra_tat(r.tat, EXCLUDED.tat - now(), EXCLUDED.tolerance),
           tolerance = EXCLUDED.tolerance
     WHERE pluct_gcra_tat(r.tat, EXCLUDED.tat - now(), EXCLUDED.tolerance) IS NOT NULL
    RETURNING 1
)
SELECT CASE WHEN count(*) < cardinality($1::text[]) THEN pluct_rate_limited() ELSE true END
  FROM charged
"""

# Counters idle for a minute (their allowance long whole: the same as no row), a chunk at a
# time, skipping any a call holds: the purge never waits for a call, nor a call long for it.
_PURGE = """
DELETE FROM rate_limits
 WHERE (subject, bucket) IN (
       SELECT subject, bucket FROM rate_limits
        WHERE tat < now() - interval '1 minute'
        LIMIT $1
          FOR UPDATE SKIP LOCKED)
"""
_PURGE_CHUNK = 5000


def _charge_arguments(charges: Sequence[Charge]) -> tuple[Any, ...]:
    """Return the four array parameters of _CHARGE, in its placeholder order."""
    return (
        [charge.subject for charge in charges],
        [charge.bucket for charge in charges],
        [charge.step_seconds for charge in charges],
        [charge.tolerance_seconds for charge in charges],
    )


class LimitStore:
    """Charges and forgets rate-limit counters."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def charge(self, charges: Sequence[Charge]) -> bool:
        """Count one event on each counter; False (and nothing counted) when one is spent."""
        try:
            await self._db.fetchrow(_CHARGE, *_charge_arguments(charges))
        except RateLimitExceeded:
            return False
        return True

    async def purge(self) -> int:
        """Delete counters whose allowance is whole again (they equal no row); return how many."""
        total = 0
        while True:
            status = await self._db.execute(_PURGE, _PURGE_CHUNK)
            deleted = int(status.rsplit(" ", 1)[-1])
            total += deleted
            if deleted < _PURGE_CHUNK:
                return total
