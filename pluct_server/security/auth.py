"""Who may call what: credentials become a Caller, checked against each RPC's access option."""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from pluct.api.v1 import auth_pb2

from pluct_server.domain.errors import (
    DomainError,
    MalformedCredentials,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from pluct_server.observability.logs import Sampled
from pluct_server.security.api_keys import ApiKeys
from pluct_server.security.callers import AccessRule
from pluct_server.security.key_secrets import key_id_of
from pluct_server.security.limits import Limiter
from pluct_server.values.addresses import limit_subject
from pluct_server.values.callers import (
    ADMIN,
    ADMIN_SECRET_ID,
    ANONYMOUS_ID,
    PAYMENTS,
    WEBHOOK_ID,
    Caller,
)
from pluct_server.values.charges import AUTH_FAILURE
from pluct_server.values.clock import SYSTEM_CLOCK, Clock

_LOGGER = logging.getLogger(__name__)

WEBHOOK_HEADER = "x-webhook-secret"
AUTHORIZATION_HEADER = "authorization"
WEBHOOK_SCOPES = frozenset({PAYMENTS})
# Refusals logged one by one per address, method and reason in ten seconds; more are counted.
_REFUSALS_LOGGED = 100


@dataclass(frozen=True)
class Presented:
    """The credentials a call carried."""

    authorization: str | None = None
    webhook_secret: str | None = None

    @property
    def any(self) -> bool:
        """Tell whether the call carried any credential at all."""
        return self.authorization is not None or self.webhook_secret is not None


def _same_secret(presented: str, expected: str) -> bool:
    # An unset secret admits nobody, rather than everybody who also sends nothing.
    if not expected:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


class Authenticator:
    """Turns credentials into a Caller and admits it to an RPC, or refuses and counts the try."""

    def __init__(
        self,
        *,
        admin_secret: str,
        webhook_secrets: Sequence[str],
        keys: ApiKeys,
        limiter: Limiter,
        open_callers: bool = False,
        legacy_webhook_secret: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._clock = clock
        self._admin_secret = admin_secret
        self._webhook_secrets = tuple(webhook_secrets)
        self._keys = keys
        self._limiter = limiter
        self._open = open_callers
        self._legacy_webhook_secret = legacy_webhook_secret
        # Addresses over their failure limit, and until when (monotonic). Only failures are
        # held back: a failure from such an address is refused without counting it again.
        self._over: dict[str, float] = {}
        # Every refusal is logged, but for a flood from one address: then a hundred lines in
        # ten seconds, and how many more.
        self._refusals = Sampled(_LOGGER, burst=_REFUSALS_LOGGED)

    async def admit(
        self,
        method: str,
        rule: AccessRule,
        presented: Presented,
        address: str,
        *,
        via_http: bool = False,
    ) -> Caller:
        """Return who is calling, or raise why they may not call `method`."""
        caller = await self.identify(
            method, presented, address, via_http=via_http, payments=rule.scope == PAYMENTS
        )
        return self.authorize(method, rule, caller)

    async def identify(
        self,
        method: str,
        presented: Presented,
        address: str,
        *,
        via_http: bool = False,
        payments: bool = False,
    ) -> Caller:
        """Return who the credentials say is calling; raise when they are wrong.

        A correct credential is always recognised, even from an address whose failures are
        held back: a 256-bit key or a 32-character secret is not guessed, and locking its
        owner out would hand the lock to whoever shares the address.
        """
        # The credential the method is about wins: the payment route takes x-webhook-secret as
        # it always did, whatever else a caller's library sends along. (A signed payment proves
        # itself by its body, which only the shim reads: it makes that caller itself.)
        if presented.webhook_secret is not None and (payments or presented.authorization is None):
            return await self._webhook_caller(method, presented.webhook_secret, address, via_http)
        if presented.authorization is not None:
            return await self._bearer_caller(method, presented.authorization, address, via_http)
        return Caller(ANONYMOUS_ID, frozenset(), address, via_http)

    def authorize(self, method: str, rule: AccessRule, caller: Caller) -> Caller:
        """Return `caller` when it may call `method`; raise why it may not."""
        if rule.public or caller.may(rule.scope):
            return caller
        legacy = caller.via_http or self._open
        if legacy and rule.legacy == auth_pb2.CALLER_AUTH_PUBLIC:
            return caller
        if not _is_api_key(caller):
            # No credential, or a bootstrap secret of another route: the one this route needs
            # is missing, as the legacy routes always said.
            self._log_refusal(method, caller.address, caller.id, "no credentials for this method")
            raise Unauthenticated("Unauthorized", reason="MISSING_CREDENTIALS")
        self._log_refusal(method, caller.address, caller.id, f"key lacks scope {rule.scope}")
        raise PermissionDenied(f"this API key lacks the {rule.scope!r} scope", scope=rule.scope)

    def is_admin_secret(self, token: str) -> bool:
        """Tell whether `token` is the bootstrap ADMIN_SECRET."""
        return _same_secret(token, self._admin_secret)

    async def _bearer_caller(
        self, method: str, authorization: str, address: str, via_http: bool
    ) -> Caller:
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            await self._failed(method, address, "malformed authorization header")
            raise MalformedCredentials("authorization must be 'Bearer <token>'")
        if self.is_admin_secret(token):
            return Caller(ADMIN_SECRET_ID, frozenset({ADMIN}), address, via_http)
        # An address whose failures are held back gets no database lookup for a key this
        # replica does not know: the live keys are all in memory, refreshed every few seconds.
        record = await self._keys.identify(token, look_up=not self._held_back(address))
        if record is None:
            # The id a secret claims is no secret (16 hex digits), and names the key to chase.
            claimed = key_id_of(token) or "-"
            await self._failed(method, address, "unknown or revoked API key", key_id=claimed)
            raise Unauthenticated("Unauthorized", reason="BAD_CREDENTIALS")
        return Caller(record.key_id, record.scopes, address, via_http)

    async def _webhook_caller(
        self, method: str, secret: str, address: str, via_http: bool
    ) -> Caller:
        if not self._legacy_webhook_secret:
            await self._failed(method, address, "x-webhook-secret is switched off")
            raise Unauthenticated("Unauthorized", reason="BAD_CREDENTIALS")
        if not any(_same_secret(secret, expected) for expected in self._webhook_secrets):
            await self._failed(method, address, "wrong webhook secret")
            raise Unauthenticated("Unauthorized", reason="BAD_CREDENTIALS")
        return Caller(WEBHOOK_ID, WEBHOOK_SCOPES, address, via_http)

    async def failed(self, method: str, address: str, why: str) -> DomainError:
        """Count a failed authentication found elsewhere (a forged webhook signature)."""
        try:
            await self._failed(method, address, why)
        except RateLimited as limited:
            return limited
        return Unauthenticated("Unauthorized", reason="BAD_CREDENTIALS")

    async def _failed(self, method: str, address: str, why: str, key_id: str = "-") -> None:
        """Log and count one failed authentication; raise RateLimited once the address is over.

        The count lives in PostgreSQL, shared by every worker and replica; an address known to
        be over is answered from memory, as counting a refused failure would change nothing.
        """
        self._log_refusal(method, address, key_id, why)
        subject = limit_subject(address)
        now = self._clock.monotonic()
        until = self._over.get(subject)
        if until is not None and until > now:
            raise RateLimited(max(1, math.ceil(until - now)))
        charges = self._limiter.charges((AUTH_FAILURE, address))
        try:
            await self._limiter.charge(charges)
        except RateLimited as limited:
            self._over[subject] = now + limited.retry_after_seconds
            raise

    def _held_back(self, address: str) -> bool:
        """Tell whether `address` is known to be over its failure limit."""
        until = self._over.get(limit_subject(address))
        return until is not None and until > self._clock.monotonic()

    async def forget_expired_holds(self) -> None:
        """Drop what has run out, so many failing addresses cannot grow memory forever."""
        now = self._clock.monotonic()
        self._over = {subject: until for subject, until in self._over.items() if until > now}

    def _log_refusal(self, method: str, address: str, key_id: str, reason: str) -> None:
        # Never the secret itself: only what lets an operator find and block the caller.
        self._refusals.log(
            logging.WARNING,
            (limit_subject(address), method, reason),
            "authentication refused: address=%s method=%s key_id=%s reason=%s",
            address,
            method,
            key_id,
            reason,
        )


def _is_api_key(caller: Caller) -> bool:
    return caller.id not in (ANONYMOUS_ID, ADMIN_SECRET_ID, WEBHOOK_ID)
