"""Where a gRPC call came from: its credentials, and its client's address."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pluct_server.security.addresses import Network, client_address, peer_host
from pluct_server.security.auth import AUTHORIZATION_HEADER, WEBHOOK_HEADER, Presented

FORWARDED_FOR = "x-forwarded-for"

Metadata = Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True)
class Origin:
    """A call's credentials and client address."""

    presented: Presented
    address: str


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def call_origin(metadata: Metadata, peer: str, trusted_proxies: Sequence[Network]) -> Origin:
    """Read a call's metadata once and tell where it came from."""
    authorization = webhook = None
    forwarded: list[str] = []
    for key, raw in metadata:
        if key == AUTHORIZATION_HEADER:
            authorization = _text(raw)
        elif key == WEBHOOK_HEADER:
            webhook = _text(raw)
        elif key == FORWARDED_FOR:
            forwarded.append(_text(raw))  # every entry: a proxy appends after a forged one
    host = client_address(peer_host(peer), ",".join(forwarded), trusted_proxies)
    return Origin(Presented(authorization, webhook), host)
