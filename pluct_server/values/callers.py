"""Who is calling: the identity every call runs as, the scopes it holds, and what it still owes."""

from __future__ import annotations

from dataclasses import dataclass, field

from pluct_server.values.addresses import limit_subject
from pluct_server.values.charges import Charge

ADMIN = "admin"
PUBLIC = "public"
PAYMENTS = "credits:grant"
METRICS_READ = "metrics:read"


# The ids callers without an API key act under, in logs and ledger entries (request ids are
# scoped by Caller.request_scope).
ANONYMOUS_ID = "public"
ADMIN_SECRET_ID = "admin-secret"
WEBHOOK_ID = "webhook"


@dataclass(frozen=True)
class Caller:
    """The identity a call runs as: an API key, a bootstrap secret, or nobody in particular."""

    id: str
    scopes: frozenset[str] = frozenset()
    address: str = "-"
    # True for calls that came in through the legacy HTTP routes.
    via_http: bool = False
    # Limit charges the call still owes, paid inside its own database statement (see limits.py).
    deferred_charges: tuple[Charge, ...] = field(default=(), compare=False)
    # The digest of the Pluct-Signature that proved a webhook call (set for signed calls only).
    signature: str | None = None

    def may(self, scope: str) -> bool:
        """Tell whether this caller holds `scope`; admin holds every scope but payments'."""
        if scope == PUBLIC or scope in self.scopes:
            return True
        # Payments are the provider's word alone; an admin grants with AdminService.AddCredits,
        # so the ledger never shows an admin's credit as a payment.
        return ADMIN in self.scopes and scope != PAYMENTS

    def may_grant(self, scope: str) -> bool:
        """Tell whether this caller may give `scope` to a key it makes: only a scope it holds."""
        # A key never makes a key stronger than itself, so a leaked admin key cannot mint the
        # payment provider's; the bootstrap secret stands above every key and makes that one.
        return self.id == ADMIN_SECRET_ID or self.may(scope)

    @property
    def is_admin(self) -> bool:
        """Tell whether this caller holds the admin scope."""
        return ADMIN in self.scopes

    @property
    def request_scope(self) -> str:
        """Return whose request ids this caller's are: its own id, or a stranger's address."""
        if self.id != ANONYMOUS_ID:
            return self.id
        # Every caller without a key is "public", so their ids would be one pool in which
        # anyone could replay another's id (and get its token). The address is what tells
        # strangers apart, counted as the limits count it: an IPv6 client holds its whole /64
        # and moves within it (temporary addresses, RFC 8981), so its retries stay its own.
        return f"{ANONYMOUS_ID}@{limit_subject(self.address)}"
