"""Who may call what: the caller_auth option of each RPC, checked against the configured secrets."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence

from google.protobuf.descriptor import ServiceDescriptor
from pluct.api.v1 import auth_pb2

from pluct_server.errors import MalformedCredentials, Unauthenticated

Metadata = Sequence[tuple[str, str | bytes]]

PUBLIC = auth_pb2.CALLER_AUTH_PUBLIC
WEBHOOK = auth_pb2.CALLER_AUTH_WEBHOOK
ADMIN = auth_pb2.CALLER_AUTH_ADMIN

WEBHOOK_HEADER = "x-webhook-secret"
AUTHORIZATION_HEADER = "authorization"


def caller_auth_by_method(services: Iterable[ServiceDescriptor]) -> dict[str, int]:
    """Map each RPC's full method path to its caller_auth option; refuse an RPC that lacks one."""
    table = {}
    for service in services:
        for method in service.methods:
            requirement = method.GetOptions().Extensions[auth_pb2.caller_auth]
            if requirement == auth_pb2.CALLER_AUTH_UNSPECIFIED:
                # Secure by default: a new RPC without an explicit option never goes out open.
                raise ValueError(f"{method.full_name} has no (pluct.api.v1.caller_auth) option")
            table[f"/{service.full_name}/{method.name}"] = requirement
    return table


def _header(metadata: Metadata, name: str) -> str | None:
    for key, value in metadata:
        if key == name:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


def _same_secret(presented: str, expected: str) -> bool:
    # An unset secret admits nobody, rather than everybody who also sends nothing.
    if not expected:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


class Authenticator:
    """Checks the secrets callers present; compares in constant time and never echoes them."""

    def __init__(self, admin_secret: str, webhook_secret: str) -> None:
        self._admin_secret = admin_secret
        self._webhook_secret = webhook_secret

    def require(self, requirement: int, metadata: Metadata) -> None:
        """Raise unless `metadata` satisfies `requirement`."""
        if requirement == PUBLIC:
            return
        if requirement == WEBHOOK:
            self._require_webhook(metadata)
        elif requirement == ADMIN:
            self._require_admin(metadata)
        else:
            raise Unauthenticated("Unauthorized")

    def is_admin(self, metadata: Metadata) -> bool:
        """Tell whether `metadata` carries the admin token (a missing or bad one is just False)."""
        try:
            self._require_admin(metadata)
        except (Unauthenticated, MalformedCredentials):
            return False
        return True

    def _require_webhook(self, metadata: Metadata) -> None:
        presented = _header(metadata, WEBHOOK_HEADER)
        if presented is None:
            raise Unauthenticated("Unauthorized", reason="MISSING_CREDENTIALS")
        if not _same_secret(presented, self._webhook_secret):
            raise Unauthenticated("Unauthorized", reason="BAD_CREDENTIALS")

    def _require_admin(self, metadata: Metadata) -> None:
        header = _header(metadata, AUTHORIZATION_HEADER)
        if header is None:
            raise Unauthenticated("Unauthorized", reason="MISSING_CREDENTIALS")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip() or " " in token.strip():
            raise MalformedCredentials("authorization must be 'Bearer <token>'")
        if not _same_secret(token.strip(), self._admin_secret):
            raise Unauthenticated("Unauthorized", reason="BAD_CREDENTIALS")
