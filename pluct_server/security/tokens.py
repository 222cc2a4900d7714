"""Signing and checking the JWTs that vended credits buy: HS256 or Ed25519, with key rotation."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from jwt.algorithms import HMACAlgorithm, OKPAlgorithm

from pluct_server.values.clock import SYSTEM_CLOCK, Clock
from pluct_server.values.records import DEFAULT_FEATURE, TokenClaims

if TYPE_CHECKING:
    from jwt.types import Options

HS256 = "HS256"
EDDSA = "EdDSA"
EXPIRED = "Token expired"
INVALID_SIGNATURE = "Invalid token signature"
REVOKED = "Token revoked"
OTHER_FEATURE = "Token is for another feature"

# 9999-12-31T23:59:59Z: datetime holds nothing later, and no token of ours lives that long.
_LATEST_TIME = 253_402_300_799
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
# The very HMAC that jwt.decode uses, to vet secrets once instead of failing on every verify.
_HMAC = HMACAlgorithm(HMACAlgorithm.SHA256)

RevocationCheck = Callable[[str, str, int], bool]


@dataclass(frozen=True)
class Verdict:
    """What ValidateToken answers: the subject and expiry of a good token, or why it is not good."""

    valid: bool
    user_id: str | None = None
    expires_at: datetime | None = None
    reason: str | None = None
    # The feature the token was sold for: its feat claim, `default` without one; when valid.
    feature: str | None = None


@dataclass(frozen=True, slots=True)
class _Vetted:
    """A token whose signature and claims passed: what each later use must still check."""

    token_id: str
    subject: str
    issued_at: int
    expires: float
    verdict: Verdict


# A service validates the same token on each use of what it bought: the tokens that passed are
# kept (this many at most, oldest out first), so a repeat checks only its expiry and revocation.
VETTED_TOKENS = 4096

# Verdicts carry no per-token data when a token fails, so the hot path shares these.
_INVALID = Verdict(valid=False, reason=INVALID_SIGNATURE)
_EXPIRED = Verdict(valid=False, reason=EXPIRED)
_REVOKED = Verdict(valid=False, reason=REVOKED)
_OTHER_FEATURE = Verdict(valid=False, reason=OTHER_FEATURE)


@dataclass(frozen=True, slots=True)
class _Verifier:
    """The keys a token may be checked with, and the one algorithm they are for."""

    keys: tuple[bytes, ...] | tuple[Ed25519PublicKey, ...]
    algorithms: tuple[str]


class TokenKeys:
    """Signs tokens with the active key and verifies them with every configured key."""

    def __init__(
        self,
        hs256_secrets: str | Sequence[str] = (),
        *,
        algorithm: str = HS256,
        ed25519_keys: Mapping[str, bytes] | None = None,
        active_kid: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        max_lifetime: timedelta | None = None,
        leeway_seconds: int = 30,
        is_revoked: RevocationCheck | None = None,
        accept_hs256: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if algorithm not in (HS256, EDDSA):
            raise ValueError(f"JWT algorithm must be {HS256} or {EDDSA}, not {algorithm!r}")
        if leeway_seconds < 0:
            raise ValueError("leeway_seconds must not be negative")
        if max_lifetime is not None and max_lifetime <= timedelta(0):
            raise ValueError("max_lifetime must be positive")
        if issuer == "" or audience == "":
            raise ValueError("issuer and audience must be None or non-empty")
        secrets = [hs256_secrets] if isinstance(hs256_secrets, str) else list(hs256_secrets)
        if algorithm == HS256 and not secrets:
            raise ValueError("JWT secret must not be empty")
        if accept_hs256 and not secrets:
            raise ValueError("accept_hs256 needs at least one HS256 secret")

        self._algorithm = algorithm
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._max_lifetime = None if max_lifetime is None else max_lifetime.total_seconds()
        self._is_revoked = is_revoked
        self._clock = clock
        # Keyed by the whole token: a token altered in any byte is checked afresh.
        self._vetted: dict[str, _Vetted] = {}
        self._verifiers: dict[str, _Verifier] = {}
        # Tokens of the legacy engine have no kid: they are tried against every HS256 secret.
        self._legacy: _Verifier | None = None
        self._signing_key: bytes | Ed25519PrivateKey
        self._active_kid: str

        hs256_keys: list[bytes] = []
        if algorithm == HS256 or accept_hs256:
            for secret in secrets:
                key = _hs256_key(secret)
                kid = _hs256_kid(key)
                if kid not in self._verifiers:
                    self._verifiers[kid] = _Verifier((key,), (HS256,))
                    hs256_keys.append(key)
            self._legacy = _Verifier(tuple(hs256_keys), (HS256,))

        private_keys: dict[str, Ed25519PrivateKey] = {}
        self._jwks: list[dict[str, str]] = []
        for kid, pem in sorted((ed25519_keys or {}).items()):
            _check_kid(kid)
            if kid in self._verifiers:
                raise ValueError(f"Ed25519 key id {kid!r} is also the id of an HS256 secret")
            private_key = _ed25519_private_key(pem, f"Ed25519 key {kid!r}")
            public_key = private_key.public_key()
            private_keys[kid] = private_key
            self._verifiers[kid] = _Verifier((public_key,), (EDDSA,))
            self._jwks.append(
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": OKPAlgorithm.to_jwk(public_key, as_dict=True)["x"],
                    "kid": kid,
                    "alg": EDDSA,
                    "use": "sig",
                }
            )

        if algorithm == EDDSA:
            if active_kid is None:
                raise ValueError("EdDSA signing needs active_kid")
            if active_kid not in private_keys:
                raise ValueError(f"active_kid {active_kid!r} is not one of the Ed25519 keys")
            self._active_kid = active_kid
            self._signing_key = private_keys[active_kid]
        else:
            # active_kid names an Ed25519 key; it is ignored here so that switching back to HS256
            # (keys kept for verifying) needs no other setting changed. The first secret signs.
            self._active_kid = _hs256_kid(hs256_keys[0])
            self._signing_key = hs256_keys[0]

        # The header segment each of our keys signs under, exactly as sign() writes it.
        self._own_headers: dict[str, _Verifier] = {
            _header_segment(verifier.algorithms[0], kid): verifier
            for kid, verifier in self._verifiers.items()
        }
        self._signing_header = _header_segment(self._algorithm, self._active_kid)

        # Times are checked by _judge: PyJWT would read "exp": "123" or 1e400 as a time, and
        # checks nothing of lifetimes. PyJWT requires iss and aud once given one to match; an aud
        # is only checked when we have one to compare with.
        self._options: Options = {
            "require": ["exp", "sub"],
            "verify_exp": False,
            "verify_iat": False,
            "verify_nbf": False,
            "verify_aud": audience is not None,
        }

    @classmethod
    def load(
        cls,
        algorithm: str,
        hs256_secrets: str | Sequence[str],
        keys_dir: Path | None,
        active_kid: str | None,
        issuer: str | None = None,
        audience: str | None = None,
        max_lifetime: timedelta | None = None,
        *,
        leeway_seconds: int = 30,
        is_revoked: RevocationCheck | None = None,
        accept_hs256: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> TokenKeys:
        """Build the keys from settings, with every `<kid>.pem` in `keys_dir` as an Ed25519 key."""
        pems: dict[str, bytes] = {}
        if keys_dir is not None:
            if not keys_dir.is_dir():
                raise ValueError(f"JWT key directory {str(keys_dir)!r} is not a directory")
            for path in sorted(keys_dir.glob("*.pem")):
                kid = path.name.removesuffix(".pem")
                if not _KID.fullmatch(kid):
                    raise ValueError(
                        f"{str(path)!r}: a key file must be named <kid>.pem, the kid being 1 to 64"
                        " of A-Z a-z 0-9 . _ -"
                    )
                if not path.is_file():
                    raise ValueError(f"{str(path)!r}: not a regular file")
                pem = path.read_bytes()
                # Parsed here too, so that an error names the file rather than only the kid.
                _ed25519_private_key(pem, repr(str(path)))
                pems[kid] = pem
        return cls(
            hs256_secrets,
            algorithm=algorithm,
            ed25519_keys=pems,
            active_kid=active_kid,
            issuer=issuer,
            audience=audience,
            max_lifetime=max_lifetime,
            leeway_seconds=leeway_seconds,
            is_revoked=is_revoked,
            accept_hs256=accept_hs256,
            clock=clock,
        )

    @property
    def algorithm(self) -> str:
        """The algorithm new tokens are signed with: HS256 or EdDSA."""
        return self._algorithm

    @property
    def active_kid(self) -> str:
        """The kid of the key new tokens are signed with."""
        return self._active_kid

    def jwks(self) -> list[dict[str, str]]:
        """Return the public Ed25519 keys as JWKs, sorted by kid; HS256 secrets are never listed."""
        return [dict(jwk) for jwk in self._jwks]

    def sign(self, claims: TokenClaims) -> str:
        """Return the JWT for `claims`; the same claims always give the same token."""
        # Fixed claim order and sorted headers keep the bytes stable; Ed25519 is deterministic.
        payload: dict[str, Any] = {
            "sub": claims.user_id,
            "jti": str(claims.token_id),
            "iat": int(claims.issued_at.timestamp()),
            "exp": int(claims.expires_at.timestamp()),
        }
        if claims.feature != DEFAULT_FEATURE:
            # A default token stays exactly what it always was, for verifiers that know no more.
            payload["feat"] = claims.feature
            payload["cost"] = claims.cost
        if self._issuer is not None:
            payload["iss"] = self._issuer
        if self._audience is not None:
            payload["aud"] = self._audience
        # Byte for byte what jwt.encode makes (tests hold it to that), without re-vetting the
        # key on every call: compact JSON, then base64url of header, payload and signature.
        body = _b64encode(json.dumps(payload, separators=(",", ":")).encode())
        signed = f"{self._signing_header}.{body}".encode("ascii")
        key = self._signing_key
        if isinstance(key, bytes):
            signature = hmac.new(key, signed, hashlib.sha256).digest()
        else:
            signature = key.sign(signed)
        return f"{self._signing_header}.{body}.{_b64encode(signature)}"

    def verify(self, token: str, feature: str = "") -> Verdict:
        """Check a token's key, algorithm, signature, claims, times, revocation, then feature.

        With `feature` set, a token sold for another feature is not valid.
        """
        verdict = self._verify(token)
        if feature and verdict.valid and verdict.feature != feature:
            return _OTHER_FEATURE
        return verdict

    def _verify(self, token: str) -> Verdict:
        vetted = self._vetted.get(token)
        if vetted is not None:
            return self._current(vetted)
        # A compact JWT is base64url and dots; this also keeps lone surrogates, which cannot be
        # encoded to UTF-8, away from PyJWT.
        if not token.isascii():
            return _INVALID
        head, _, rest = token.partition(".")
        own = self._own_headers.get(head)
        if own is not None:
            judged = self._verify_own(own, head, rest)
            if isinstance(judged, Verdict):
                return judged
            self._remember(token, judged)
            return self._current(judged)
        try:
            # Only the header picks the key, and jwt.decode checks the whole token next: so the
            # payload and signature (most of the token) are not validated twice.
            header = jwt.get_unverified_header(token.partition(".")[0] + "..")
        except jwt.InvalidTokenError:
            return _INVALID
        kid = header.get("kid")
        if kid is None:
            verifier = self._legacy
        elif isinstance(kid, str):
            verifier = self._verifiers.get(kid)
        else:
            verifier = None
        if verifier is None:
            return _INVALID
        for key in verifier.keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=verifier.algorithms,
                    options=self._options,
                    issuer=self._issuer,
                    audience=self._audience,
                )
            except jwt.InvalidSignatureError:
                continue  # a legacy token may be signed by another of the secrets
            except jwt.InvalidTokenError:
                return _INVALID
            return self._judge(claims)
        return _INVALID

    def _verify_own(self, verifier: _Verifier, head: str, rest: str) -> Verdict | _Vetted:
        """Verify a token whose header is byte for byte one we issue: the hot path.

        The header names the algorithm and the key already, so only the signature, then the
        claims PyJWT would check (exp and sub present, sub and jti strings, iss, aud), remain.
        """
        body, dot, signature = rest.partition(".")
        if not dot or "." in signature:
            return _INVALID
        digest = _b64decode(signature)
        payload = _b64decode(body)
        if digest is None or payload is None:
            return _INVALID
        signed = f"{head}.{body}".encode("ascii")
        key = verifier.keys[0]
        if isinstance(key, bytes):
            if not hmac.compare_digest(hmac.new(key, signed, hashlib.sha256).digest(), digest):
                return _INVALID
        else:
            try:
                key.verify(digest, signed)
            except InvalidSignature:
                return _INVALID
        try:
            claims = json.loads(payload)
        except (ValueError, RecursionError):
            return _INVALID
        if not isinstance(claims, dict) or not self._claims_as_pyjwt_would(claims):
            return _INVALID
        return self._vet(claims)

    def _claims_as_pyjwt_would(self, claims: dict[str, Any]) -> bool:
        """Apply the checks jwt.decode makes with our options (see self._options)."""
        if "exp" not in claims or not isinstance(claims.get("sub"), str):
            return False
        if "jti" in claims and not isinstance(claims["jti"], str):
            return False
        if self._issuer is not None and claims.get("iss") != self._issuer:
            return False
        if self._audience is not None:
            audience = claims.get("aud")
            heard = [audience] if isinstance(audience, str) else audience
            if not isinstance(heard, list) or not all(isinstance(a, str) for a in heard):
                return False
            if self._audience not in heard:
                return False
        return True

    def _remember(self, token: str, vetted: _Vetted) -> None:
        if len(self._vetted) >= VETTED_TOKENS:
            del self._vetted[next(iter(self._vetted))]
        self._vetted[token] = vetted

    def _current(self, vetted: _Vetted) -> Verdict:
        """Check what can change after a token passed: its expiry, and its revocation."""
        if vetted.expires <= self._clock.time():
            return _EXPIRED
        if self._is_revoked is not None and self._is_revoked(
            vetted.token_id, vetted.subject, vetted.issued_at
        ):
            return _REVOKED
        return vetted.verdict

    def _judge(self, claims: dict[str, Any]) -> Verdict:
        """Check the claims of a token whose signature, iss, aud and claim types PyJWT verified."""
        vetted = self._vet(claims)
        return vetted if isinstance(vetted, Verdict) else self._current(vetted)

    def _vet(self, claims: dict[str, Any]) -> Verdict | _Vetted:
        """Check what stays true once true (as time only moves on), or say why the token fails.

        A token issued in the future, or too long-lived, fails; one that passes keeps passing.
        """
        subject = claims["sub"]  # required, and verify_sub made it a string
        exp = claims["exp"]
        if not subject or not _is_time(exp):
            return _INVALID
        now = self._clock.time()
        latest_start = now + self._leeway
        if "iat" in claims:
            iat = claims["iat"]
            if not _is_time(iat) or iat > latest_start:
                return _INVALID
            if self._max_lifetime is not None and exp - iat > self._max_lifetime + self._leeway:
                return _INVALID
            issued_at = int(iat)
        elif self._max_lifetime is not None:
            # A legacy token has no iat, so only how far its exp lies ahead can be bounded.
            if exp - now > self._max_lifetime + self._leeway:
                return _INVALID
            issued_at = int(exp - self._max_lifetime)
        else:
            issued_at = int(exp)
        if "nbf" in claims:
            nbf = claims["nbf"]
            if not _is_time(nbf) or nbf > latest_start:
                return _INVALID
        feature = claims.get("feat", DEFAULT_FEATURE)
        if not isinstance(feature, str) or not feature:
            return _INVALID
        verdict = Verdict(
            valid=True,
            user_id=subject,
            expires_at=datetime.fromtimestamp(int(exp), tz=UTC),
            feature=feature,
        )
        return _Vetted(claims.get("jti") or "", subject, issued_at, exp, verdict)


def generate_ed25519_key(keys_dir: Path, kid: str) -> Path:
    """Write a new Ed25519 private key to `keys_dir/<kid>.pem`, readable by its owner only."""
    _check_kid(kid)
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = keys_dir / f"{kid}.pem"
    pem = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    # O_EXCL: a key that may have signed live tokens is never overwritten. Mode 0600 from the
    # start, so the key is never readable by others, not even between creation and a chmod.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        os.fchmod(descriptor, 0o600)  # the umask may have narrowed it; state it exactly
        out.write(pem)
    return path


def _hs256_key(secret: str) -> bytes:
    """Return the HMAC key for `secret`, refusing one that PyJWT would refuse on every verify."""
    if not secret:
        raise ValueError("JWT secret must not be empty")
    key = secret.encode("utf-8")
    try:
        _HMAC.prepare_key(key)
    except jwt.InvalidKeyError:
        raise ValueError(
            "JWT secret must be a plain secret, not a PEM, SSH, DER or JWK key"
        ) from None
    return key


def _hs256_kid(key: bytes) -> str:
    """Return the short, stable name of an HS256 secret, so verifiers pick the right one."""
    return hashlib.sha256(b"pluct-jwt-kid:" + key).hexdigest()[:16]


def _check_kid(kid: str) -> None:
    """Refuse a key id that could not safely name a file or a JWK."""
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise ValueError(f"key id {kid!r} must be 1 to 64 of A-Z a-z 0-9 . _ -")


def _ed25519_private_key(pem: bytes, where: str) -> Ed25519PrivateKey:
    """Parse an unencrypted Ed25519 private key; the error names `where`, never the content."""
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{where}: not an unencrypted Ed25519 private key in PEM form")
    return key


def _is_time(value: object) -> bool:
    """Tell whether a claim is a JSON number within datetime's range, as a time of ours is."""
    # bool is an int to Python, but "exp": true is no time; NaN and infinities fail the bounds.
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0 <= value <= _LATEST_TIME
    )


def _header_segment(algorithm: str, kid: str) -> str:
    """Return the base64url JOSE header of our tokens, as jwt.encode writes it (sorted keys)."""
    header = {"alg": algorithm, "kid": kid, "typ": "JWT"}
    return _b64encode(json.dumps(header, separators=(",", ":"), sort_keys=True).encode())


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(segment: str) -> bytes | None:
    """Decode unpadded base64url strictly: any other character is a forgery, not noise."""
    if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None
    # The last character may carry bits the bytes leave unused, which a decoder ignores: a
    # signature could pass under several spellings, and its token past a check that keys on
    # the text. Only the spelling every encoder writes, with those bits zero, is the token.
    # (A header or payload spelled otherwise changes the signed text, so its signature fails.)
    return data if _b64encode(data) == segment else None
