"""The shape of an API key's secret: made, recognised and hashed here, and nowhere else."""

from __future__ import annotations

import hashlib
import re
import secrets

SECRET_PREFIX = "pluct_"
# pluct_<key id: 16 hex digits>_<43 url-safe characters: 256 random bits>
_SECRET = re.compile(r"pluct_([0-9a-f]{16})_[A-Za-z0-9_-]{43}\Z")
_KEY_ID = re.compile(r"[0-9a-f]{16}\Z")


def new_secret() -> tuple[str, str]:
    """Return a fresh (key id, secret); the id is readable inside the secret, as in Stripe's."""
    key_id = secrets.token_hex(8)
    return key_id, f"{SECRET_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(secret: str) -> str | None:
    """Return the key id a secret names, or None when it is not shaped like one of our secrets."""
    match = _SECRET.match(secret)
    return None if match is None else match[1]


def is_key_id(text: str) -> bool:
    """Tell whether `text` is shaped like a key id (16 hex digits)."""
    return _KEY_ID.match(text) is not None


def hash_secret(secret: str) -> bytes:
    """Return what is stored of a secret: its SHA-256 (a 256-bit random secret needs no salt)."""
    return hashlib.sha256(secret.encode("utf-8")).digest()
