"""Webhook endpoints: where events go, each URL checked, each secret made here and shown once."""

from __future__ import annotations

import base64
import ipaddress
import re
import secrets
import socket
from datetime import timedelta
from urllib.parse import urlsplit

from pluct_server.domain.errors import InvalidArgument, WebhookEndpointNotFound
from pluct_server.store.webhook_endpoint_store import WebhookEndpointStore
from pluct_server.values.records import WebhookEndpoint

# Standard Webhooks' secret: whsec_ and the base64 of the key's bytes.
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# After a rotation both secrets sign, so a receiver can switch without missing a delivery.
SECRET_OVERLAP = timedelta(hours=24)
# IPv6 ranges whose last 32 bits are an IPv4 address: compatible, translated, NAT64.
_CARRIES_IPV4 = tuple(
    ipaddress.IPv6Network(net) for net in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96")
)
# Never a receiver: local-use NAT64, Teredo, deprecated site-local.
_REFUSED_IPV6 = tuple(
    ipaddress.IPv6Network(net) for net in ("64:ff9b:1::/48", "2001::/32", "fec0::/10")
)
# Digits, hex digits, x and dots only: what inet_aton may read as an IPv4 address.
_LEGACY_IPV4 = re.compile(r"^[0-9a-fx.]+$")


def new_secret() -> str:
    """Return a fresh signing secret."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def checked_url(url: str, allow_private: bool) -> str:
    """Return `url` if events may be sent there; refuse it with INVALID_ARGUMENT otherwise.

    Without `allow_private`, only https to a public host: a name is checked again for the
    addresses it resolves to when a delivery connects, as a name can change what it points at.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidArgument("url", "url is not a URL") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise InvalidArgument("url", f"url must start with {' or '.join(schemes)}://")
    host = parts.hostname
    if not host or not host.strip("."):
        raise InvalidArgument("url", "url names no host")
    if not host.isascii():
        # Resolvers fold full-width digits and other look-alikes into addresses (127.0.0.1).
        raise InvalidArgument("url", "url must name an ASCII host: an international name in xn--")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument("url", "url must not carry credentials: the signature proves us")
    if port == 0:
        raise InvalidArgument("url", "url names port 0")
    if not allow_private and not public_host(host):
        raise InvalidArgument(
            "url",
            "url names a loopback, private, link-local or metadata address; events go to "
            "public hosts only (PLUCT_EVENTS_ALLOW_PRIVATE_URLS allows others)",
        )
    return url


def public_host(host: str) -> bool:
    """Tell whether a URL's host may be public: not local by name, not a non-global address."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return False
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        legacy = _legacy_ipv4(name)
        if legacy is None:
            return True  # a name: what it resolves to is for the sender to check
        address = legacy
    return public_address(address)


def _legacy_ipv4(name: str) -> ipaddress.IPv4Address | None:
    """Return the address of an IPv4 host written as resolvers still read it, or None.

    2130706433, 0x7f000001, 0177.0.0.1 and 127.1 all reach 127.0.0.1 through getaddrinfo;
    each must be judged as the address it is, not waved through as a name.
    """
    if not _LEGACY_IPV4.match(name):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except OSError:
        return None


def public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Tell whether events may go to `address`: only a globally routable one."""
    # Never loopback, private, link-local (the cloud metadata address among them), shared,
    # reserved or multicast. An IPv6 address that carries an IPv4 one (mapped, compatible,
    # translated, NAT64, 6to4) is judged as the address it reaches.
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_multicast or any(address in net for net in _REFUSED_IPV6):
            return False
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and any(address in net for net in _CARRIES_IPV4):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return public_address(embedded)
    return address.is_global and not address.is_multicast


class WebhookEndpoints:
    """Makes, lists, removes and re-keys the endpoints events go to."""

    def __init__(self, store: WebhookEndpointStore, allow_private: bool) -> None:
        self._store = store
        self._allow_private = allow_private

    async def create(
        self, url: str, event_types: list[str], thresholds: list[int]
    ) -> tuple[WebhookEndpoint, str]:
        """Make an endpoint; return it and its secret, which is shown this once."""
        # The event types and thresholds were checked by the field rules (the protos' `in`).
        checked_url(url, self._allow_private)
        secret = new_secret()
        endpoint = await self._store.create(url, event_types, sorted(thresholds), secret)
        return endpoint, secret

    async def all(self) -> list[WebhookEndpoint]:
        """Return every endpoint, oldest first."""
        return await self._store.all()

    async def delete(self, endpoint_id: str) -> WebhookEndpoint:
        """Remove an endpoint; return it as it was."""
        removed = await self._store.delete(_endpoint_key(endpoint_id))
        if removed is None:
            raise WebhookEndpointNotFound(endpoint_id)
        return removed

    async def rotate(self, endpoint_id: str) -> tuple[WebhookEndpoint, str]:
        """Give an endpoint a new secret, shown this once; the old one signs a day more."""
        secret = new_secret()
        endpoint = await self._store.rotate(_endpoint_key(endpoint_id), secret, SECRET_OVERLAP)
        if endpoint is None:
            raise WebhookEndpointNotFound(endpoint_id)
        return endpoint, secret


def _endpoint_key(endpoint_id: str) -> int:
    """Return the row an endpoint id names; an id we never gave out names none."""
    if not (endpoint_id.isascii() and endpoint_id.isdigit()) or not 0 < int(endpoint_id) < 2**63:
        raise WebhookEndpointNotFound(endpoint_id)
    return int(endpoint_id)
