"""Who is calling: the identity every RPC runs as, and the scopes it holds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType

from google.protobuf.descriptor import ServiceDescriptor
from pluct.api.v1 import auth_pb2

from pluct_server.values.callers import ANONYMOUS_ID, PUBLIC, Caller


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
