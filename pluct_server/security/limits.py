"""Rate limits shared by every process on one database: what each kind of call may cost."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pluct_server.domain.errors import RateLimited
from pluct_server.store.errors import DatabaseUnavailable
from pluct_server.store.limit_store import LimitStore
from pluct_server.values.addresses import limit_subject
from pluct_server.values.charges import (
    ADDRESS_BUCKETS,
    AUTH_FAILURE,
    HTTP,
    SIGNUP,
    VEND,
    Charge,
    retry_after_seconds,
)
from pluct_server.values.settings import Rate

_LOGGER = logging.getLogger(__name__)


class Limiter:
    """Builds charges from the configured rates and charges them against the database."""

    def __init__(
        self,
        store: LimitStore,
        *,
        vend: Rate,
        http: Rate,
        signup: Rate,
        auth_failure: Rate,
    ) -> None:
        self._store = store
        self._rates = {VEND: vend, HTTP: http, SIGNUP: signup, AUTH_FAILURE: auth_failure}

    def charge_for(self, bucket: str, subject: str) -> Charge | None:
        """Return one event in `bucket` for `subject`, or None while that limit is off."""
        rate = self._rates[bucket]
        if rate.off:
            return None
        if bucket in ADDRESS_BUCKETS:
            subject = limit_subject(subject)
        return Charge(subject, bucket, rate)

    def charges(self, *wanted: tuple[str, str]) -> tuple[Charge, ...]:
        """Return the charges of (bucket, subject) events whose limits are on, in lock order."""
        found = (self.charge_for(bucket, subject) for bucket, subject in wanted)
        # Always the same order, so two statements charging the same counters cannot deadlock.
        return tuple(sorted(charge for charge in found if charge is not None))

    async def charge(self, charges: Sequence[Charge]) -> None:
        """Count one event against each limit, all or none; raise RateLimited when one is spent."""
        if not charges:
            return
        try:
            admitted = await self._store.charge(charges)
        except DatabaseUnavailable:
            # Fail open: a call that needs the database fails on its own, and one that does not
            # (validating a token) should keep working through an outage.
            _LOGGER.warning("rate limits not checked: the database is unavailable")
            return
        if not admitted:
            raise RateLimited(retry_after_seconds(charges))

    async def forget_spent_counters(self) -> int:
        """Delete counters whose allowance is whole again; return how many."""
        return await self._store.purge()
