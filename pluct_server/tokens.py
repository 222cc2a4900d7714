"""Signing and checking the HS256 JWTs that vended credits buy."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt

from pluct_server.errors import InvalidArgument
from pluct_server.models import TokenClaims

ALGORITHM = "HS256"
TOKEN_MAX_CHARS = 4096
EXPIRED = "Token expired"
INVALID_SIGNATURE = "Invalid token signature"


@dataclass(frozen=True)
class Verdict:
    """What ValidateToken answers: the subject and expiry of a good token, or why it is not good."""

    valid: bool
    user_id: str | None = None
    expires_at: datetime | None = None
    reason: str | None = None


class TokenSigner:
    """Signs and verifies tokens with the shared JWT secret."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("JWT secret must not be empty")
        self._key = secret.encode("utf-8")
        # A short, stable name for the key, so verifiers can pick the right one after a rotation.
        self.key_id = hashlib.sha256(b"pluct-jwt-kid:" + self._key).hexdigest()[:16]

    def sign(self, claims: TokenClaims) -> str:
        """Return the JWT for `claims`; the same claims always give the same token."""
        payload = {
            "sub": claims.user_id,
            "jti": str(claims.token_id),
            "iat": int(claims.issued_at.timestamp()),
            "exp": int(claims.expires_at.timestamp()),
        }
        return jwt.encode(payload, self._key, algorithm=ALGORITHM, headers={"kid": self.key_id})

    def verify(self, token: str) -> Verdict:
        """Check a token's algorithm, signature and expiry."""
        if not token.strip():
            raise InvalidArgument("token", "token is required")
        if len(token) > TOKEN_MAX_CHARS:
            raise InvalidArgument("token", f"token must be at most {TOKEN_MAX_CHARS} characters")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            # PyJWT checks the signature before the expiry, so this token really is ours.
            return Verdict(valid=False, reason=EXPIRED)
        except jwt.InvalidTokenError:
            return Verdict(valid=False, reason=INVALID_SIGNATURE)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or not _numeric_dates(claims):
            return Verdict(valid=False, reason=INVALID_SIGNATURE)
        return Verdict(
            valid=True,
            user_id=subject,
            expires_at=datetime.fromtimestamp(int(claims["exp"]), tz=UTC),
        )


def _numeric_dates(claims: dict[str, object]) -> bool:
    """Tell whether exp (and iat, nbf if present) are JSON numbers, as RFC 7519 requires."""
    # PyJWT would take "exp": "1700000000" as a number; a token we or the legacy engine
    # signed never carries a string there, so such a token is malformed.
    return all(
        isinstance(claims[name], int | float) and not isinstance(claims[name], bool)
        for name in ("exp", "iat", "nbf")
        if name in claims
    )
