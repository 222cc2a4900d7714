"""Where a call came from: straight over gRPC, or through the HTTP shim, which vouches for it."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from pluct_server.security.addresses import Network, client_address, peer_host
from pluct_server.security.auth import AUTHORIZATION_HEADER, WEBHOOK_HEADER, Presented

# Metadata only the shim sets. Each is believed only next to the shim's per-process token, which
# strangers cannot know; the shim never forwards a caller's own x-pluct-* headers.
GATEWAY_TOKEN = "x-pluct-gateway"
GATEWAY_CLIENT_ADDRESS = "x-pluct-client-address"
GATEWAY_WEBHOOK_SIGNATURE = "x-pluct-webhook-signature"
# The shim left its per-address limit to be charged in the call's own statement.
GATEWAY_DEFERRED_HTTP_CHARGE = "x-pluct-defer-http-charge"
FORWARDED_FOR = "x-forwarded-for"

Metadata = Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True)
class Origin:
    """A call's credentials and client address, and whether the shim vouched for them."""

    presented: Presented
    address: str
    via_http: bool = False
    deferred_http_charge: bool = False


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def call_origin(
    metadata: Metadata, peer: str, gateway_token: str, trusted_proxies: Sequence[Network]
) -> Origin:
    """Read a call's metadata once and tell where it came from."""
    authorization = webhook = token = address = signature = None
    forwarded: list[str] = []
    deferred = False
    for key, raw in metadata:
        if key == AUTHORIZATION_HEADER:
            authorization = _text(raw)
        elif key == WEBHOOK_HEADER:
            webhook = _text(raw)
        elif key == GATEWAY_TOKEN:
            token = _text(raw)
        elif key == GATEWAY_CLIENT_ADDRESS:
            address = _text(raw)
        elif key == GATEWAY_WEBHOOK_SIGNATURE:
            signature = _text(raw)
        elif key == GATEWAY_DEFERRED_HTTP_CHARGE:
            deferred = True
        elif key == FORWARDED_FOR:
            forwarded.append(_text(raw))  # every entry: a proxy appends after a forged one
    via_http = token is not None and hmac.compare_digest(token.encode(), gateway_token.encode())
    if via_http:
        return Origin(
            Presented(authorization, webhook, webhook_signature=signature),
            address or "-",
            via_http=True,
            deferred_http_charge=deferred,
        )
    host = client_address(peer_host(peer), ",".join(forwarded), trusted_proxies)
    return Origin(Presented(authorization, webhook), host)


def gateway_metadata(
    gateway_token: str,
    address: str,
    *,
    webhook_signature: str | None,
    deferred_http_charge: bool,
) -> tuple[tuple[str, str], ...]:
    """Return what the shim adds to a call it makes for an HTTP client."""
    metadata = [(GATEWAY_TOKEN, gateway_token), (GATEWAY_CLIENT_ADDRESS, address)]
    if webhook_signature is not None:
        metadata.append((GATEWAY_WEBHOOK_SIGNATURE, webhook_signature))
    if deferred_http_charge:
        metadata.append((GATEWAY_DEFERRED_HTTP_CHARGE, "1"))
    return tuple(metadata)
