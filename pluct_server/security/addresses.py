"""Client addresses: from the socket, or from X-Forwarded-For only behind a trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import unquote

from pluct_server.values.addresses import parse_address

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
UNKNOWN = "-"


def peer_host(peer: str) -> str:
    """Return the host of a gRPC peer string ("ipv4:1.2.3.4:5", "ipv6:[::1]:5", "unix:...")."""
    # gRPC percent-encodes its peer strings: an IPv6 peer comes as "ipv6:%5B::1%5D:5".
    kind, _, rest = unquote(peer).partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or UNKNOWN
    if kind == "ipv6":
        host = rest.rpartition(":")[0]
        return host.strip("[]") or UNKNOWN
    return "local" if kind.startswith("unix") else UNKNOWN


def is_trusted(text: str, proxies: Sequence[Network]) -> bool:
    """Tell whether the address `text` is one of the trusted proxies."""
    if not proxies:
        return False
    address = parse_address(text)
    return address is not None and any(address in network for network in proxies)


def client_address(peer: str, forwarded_for: str | None, proxies: Sequence[Network]) -> str:
    """Return the client's address: the peer's, unless the peer is a trusted proxy.

    Behind trusted proxies the client is the right-most X-Forwarded-For entry that is not itself
    a trusted proxy: entries to its left were written by the client and prove nothing.
    """
    if not forwarded_for or not proxies or not is_trusted(peer, proxies):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, proxies):
            address = parse_address(hop)
            return str(address) if address is not None else UNKNOWN
    return hops[0] if hops else peer
