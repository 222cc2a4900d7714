"""Signed payment webhooks: `Pluct-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

SIGNATURE_HEADER = "Pluct-Signature"
SCHEME = "v1"
# A signature older (or newer) than this is refused, so a captured request cannot be replayed
# later; within the window a replay is the same signed eventId again, which credits nothing more.
TOLERANCE_SECONDS = 300
_MAX_HEADER_CHARS = 1024
_HEX_DIGEST_CHARS = 64


class BadSignature(Exception):
    """The signature header is malformed, out of its time window, or matches no secret."""


@dataclass(frozen=True)
class Signature:
    """A parsed Pluct-Signature header: when it was made, and its v1 digests."""

    timestamp: int
    digests: tuple[str, ...]


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """Return the Pluct-Signature header value for `body`, as a payment provider computes it."""
    return f"t={timestamp},{SCHEME}={_digest(body, secret, timestamp)}"


def parse(header: str) -> Signature:
    """Read a Pluct-Signature header; several v1 values are allowed (a provider mid-rotation)."""
    if len(header) > _MAX_HEADER_CHARS:
        raise BadSignature("signature header too long")
    timestamp: int | None = None
    digests = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise BadSignature("signature header is not a list of name=value")
        if name == "t":
            # isascii too: a superscript two is a digit to Python but no number to int().
            whole = value.isascii() and value.isdigit() and len(value) <= 12
            if timestamp is not None or not whole:
                raise BadSignature("signature timestamp is not unix seconds")
            timestamp = int(value)
        elif name == SCHEME:
            digests.append(value.lower())
        # Other schemes are ignored, so a provider may add one without breaking us.
    if timestamp is None or not digests:
        raise BadSignature("signature header needs t= and v1=")
    return Signature(timestamp, tuple(digests))


def verify(
    header: str, body: bytes, secrets: Sequence[str], now: float, tolerance: int = TOLERANCE_SECONDS
) -> str:
    """Return the digest of `header` that signs `body` with one of `secrets` within `tolerance`.

    Raises BadSignature when none does.
    """
    signature = parse(header)
    check_time(signature, now, tolerance)
    expected = [_digest(body, secret, signature.timestamp) for secret in secrets if secret]
    # Every pair is compared, in constant time each, so timing tells nothing about which matched.
    matched = ""
    for digest in signature.digests:
        if len(digest) != _HEX_DIGEST_CHARS:
            continue
        for candidate in expected:
            if hmac.compare_digest(digest.encode(), candidate.encode()):
                matched = digest
    if not matched:
        raise BadSignature("signature matches no webhook secret")
    return matched


def check_time(signature: Signature, now: float, tolerance: int = TOLERANCE_SECONDS) -> None:
    """Raise BadSignature when the signature was made too long ago or too far ahead."""
    if signature.timestamp < now - tolerance:
        raise BadSignature("signature is too old")
    if signature.timestamp > now + tolerance:
        raise BadSignature("signature is from the future")


def _digest(body: bytes, secret: str, timestamp: int) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()
