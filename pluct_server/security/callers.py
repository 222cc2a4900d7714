"""Who is calling: the identity every RPC runs as, and the scopes it holds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.descriptor import ServiceDescriptor
from pluct.api.v1 import auth_pb2

from pluct_server.security.addresses import limit_subject
from pluct_server.security.limits import Charge

ADMIN = "admin"
PUBLIC = "public"
PAYMENTS = "credits:grant"
METRICS_READ = "metrics:read"


def _scope_name(enum_name: str) -> str:
    # SCOPE_USERS_CREATE -> "users:create", SCOPE_ADMIN -> "admin": one spelling, from the proto.
    area, _, action = enum_name.removeprefix("SCOPE_").lower().partition("_")
    return f"{area}:{action}" if action else area


SCOPE_NAMES: Mapping[int, str] = MappingProxyType(
    {
        value.number: _scope_name(value.name)
        for value in auth_pb2.Scope.DESCRIPTOR.values
        if value.number != auth_pb2.SCOPE_UNSPECIFIED
    }
)
# What an API key may be given; "public" is not a permission but the absence of one.
GRANTABLE_SCOPES = frozenset(name for name in SCOPE_NAMES.values() if name != PUBLIC)

# The ids callers without an API key act under, in logs and ledger entries (request ids are
# scoped by Caller.request_scope).
ANONYMOUS_ID = "public"
ADMIN_SECRET_ID = "admin-secret"
WEBHOOK_ID = "webhook"


@dataclass(frozen=True)
class AccessRule:
    """Who may call one RPC: the key scope it needs, and who may call without a key."""

    scope: str
    legacy: int

    @property
    def public(self) -> bool:
        """Tell whether anyone may call, with or without a key."""
        return self.scope == PUBLIC


def access_rules(services: Iterable[ServiceDescriptor]) -> dict[str, AccessRule]:
    """Map each RPC's method path to its access option; refuse one that lacks it, or streams."""
    rules = {}
    for service in services:
        for method in service.methods:
            # The interceptor can check callers of unary calls only: a streaming RPC would go
            # out unguarded, so it is refused here, at start, rather than left open.
            if method.client_streaming or method.server_streaming:
                raise ValueError(
                    f"{method.full_name} streams; only unary RPCs can be guarded (see rpc.py)"
                )
            access = method.GetOptions().Extensions[auth_pb2.access]
            # Secure by default: a new RPC without an explicit option never goes out open.
            if access.scope == auth_pb2.SCOPE_UNSPECIFIED:
                raise ValueError(f"{method.full_name} names no scope in (pluct.api.v1.access)")
            if access.legacy == auth_pb2.CALLER_AUTH_UNSPECIFIED:
                raise ValueError(
                    f"{method.full_name} names no legacy caller in (pluct.api.v1.access)"
                )
            rules[f"/{service.full_name}/{method.name}"] = AccessRule(
                SCOPE_NAMES[access.scope], access.legacy
            )
    return rules


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


ANONYMOUS = Caller(ANONYMOUS_ID)

# Set by the interceptor for the duration of each call; servicers read it with current_caller().
_CURRENT: ContextVar[Caller] = ContextVar("pluct_caller", default=ANONYMOUS)


def current_caller() -> Caller:
    """Return the caller of the RPC being served."""
    return _CURRENT.get()


def set_current_caller(caller: Caller) -> None:
    """Record the caller of the RPC being served (each call runs in a task of its own)."""
    _CURRENT.set(caller)


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """Return the scopes as a set, or raise ValueError naming the first unknown one."""
    found = frozenset(scopes)
    unknown = sorted(found - GRANTABLE_SCOPES)
    if unknown:
        known = ", ".join(sorted(GRANTABLE_SCOPES))
        raise ValueError(f"unknown scope {unknown[0]!r}; known scopes are {known}")
    return found
