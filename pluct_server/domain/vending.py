"""Selling tokens: a feature's price out of the ledger, one signed token back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol
from uuid import uuid4

from pluct_server.domain.ledger import Ledger
from pluct_server.observability.metrics import CREDITS_SPENT, TOKENS_VENDED, count_of
from pluct_server.values.callers import Caller
from pluct_server.values.clock import SYSTEM_CLOCK, Clock
from pluct_server.values.records import DEFAULT_FEATURE, TokenClaims


class Signer(Protocol):
    """What vending asks of the token keys: a signed token for the claims a spend recorded."""

    def sign(self, claims: TokenClaims) -> str:
        """Return the signed token of `claims`."""


@dataclass(frozen=True)
class VendedToken:
    """A token bought with its feature's price (claims.cost)."""

    token: str
    claims: TokenClaims
    balance_after: int


class TokenVendor:
    """Charges one credit per token and signs the token the ledger recorded."""

    def __init__(
        self, ledger: Ledger, signer: Signer, ttl: timedelta, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._ledger = ledger
        self._clock = clock
        self._signer = signer
        self._ttl = ttl
        self._vended = count_of(TOKENS_VENDED)
        self._spent = count_of(CREDITS_SPENT)

    async def vend(
        self, user_id: str, request_id: str, caller: Caller, feature: str = DEFAULT_FEATURE
    ) -> VendedToken:
        """Spend the price of `feature` from `user_id` and return the token it bought."""
        # JWT times are whole seconds; storing them whole lets a retry re-sign the identical token.
        now = self._clock.now().replace(microsecond=0)
        claims = TokenClaims(
            user_id=user_id,
            token_id=uuid4(),
            issued_at=now,
            expires_at=now + self._ttl,
            feature=feature,
        )
        spend = await self._ledger.spend_for_token(claims, request_id, caller)
        if spend.claims.token_id == claims.token_id:  # a new spend, not a retry's first answer
            self._vended.inc()
            self._spent.inc(spend.claims.cost)
        return VendedToken(
            token=self._signer.sign(spend.claims),
            claims=spend.claims,
            balance_after=spend.balance_after,
        )
