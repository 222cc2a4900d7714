"""µs to sign and to verify a token, HS256 against EdDSA, as the service does both.

`.venv/bin/python -m bench.token_algorithms` signs tokens with TokenKeys (what VendToken does),
then verifies each once (a token's first ValidateToken: signature, claims, expiry) and again (a
token that passed is remembered: expiry and revocation only). Beside them, PyJWT's own
`jwt.encode` and `jwt.decode` with keys prepared once, making the same tokens: what TokenKeys'
own path for the tokens it issues saves. Figures are this process's CPU time per token, the
best of several short runs taken in turn.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from pluct_server.security.tokens import EDDSA, HS256, TokenKeys, generate_ed25519_key
from pluct_server.values.records import TokenClaims

SECRET = "bench-jwt-secret-" + "0123456789abcdef" * 4


def keys_for(algorithm: str, folder: Path) -> TokenKeys:
    """Keys as the service builds them from its settings, for `algorithm`."""
    if algorithm == HS256:
        return TokenKeys(SECRET, algorithm=HS256)
    generate_ed25519_key(folder, "k1")
    return TokenKeys.load(EDDSA, (), folder, "k1")


def claims(count: int) -> list[TokenClaims]:
    """`count` distinct claims of one-hour tokens, as VendToken makes them."""
    now = datetime.now(UTC).replace(microsecond=0)
    later = now + timedelta(hours=1)
    return [
        TokenClaims(user_id=f"user-{n}", token_id=uuid4(), issued_at=now, expires_at=later)
        for n in range(count)
    ]


def per_item(work: Callable[[], object], count: int) -> float:
    """Return the µs of CPU that `work` took per item, for `count` items."""
    start = time.process_time()
    work()
    return (time.process_time() - start) / count * 1e6


def pyjwt_keys(algorithm: str, folder: Path) -> tuple[object, object]:
    """Return the (signing, verifying) keys PyJWT is given for `algorithm`, prepared once."""
    if algorithm == HS256:
        return SECRET.encode(), SECRET.encode()
    private = load_pem_private_key((folder / "k1.pem").read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    return private, private.public_key()


def payload(claim: TokenClaims) -> dict[str, object]:
    """The JWT payload TokenKeys.sign writes for `claim`, in its order."""
    return {
        "sub": claim.user_id,
        "jti": str(claim.token_id),
        "iat": int(claim.issued_at.timestamp()),
        "exp": int(claim.expires_at.timestamp()),
    }


def measure(algorithm: str, count: int, folder: Path) -> dict[str, float]:
    """Return µs per token to sign, to verify it first and again; then PyJWT's encode, decode."""
    keys = keys_for(algorithm, folder)
    batch = claims(count)
    tokens: list[str] = []
    figures = {"sign": per_item(lambda: tokens.extend(map(keys.sign, batch)), count)}
    for step in ("first verify", "verify again"):
        figures[step] = per_item(lambda: all(keys.verify(t).valid for t in tokens), count)
    assert all(keys.verify(t).valid for t in tokens)

    signing, verifying = pyjwt_keys(algorithm, folder)
    header = {"kid": keys.active_kid}
    payloads = [payload(claim) for claim in batch]
    encoded: list[str] = []
    figures["jwt.encode"] = per_item(
        lambda: encoded.extend(
            jwt.encode(p, signing, algorithm=algorithm, headers=header)  # type: ignore[arg-type]
            for p in payloads
        ),
        count,
    )
    assert encoded == tokens, "PyJWT and TokenKeys make the same tokens"
    # What jwt.decode checks for the service (TokenKeys' options); the claims still need
    # TokenKeys' own checks after it, which this figure leaves out.
    options: jwt.types.Options = {"require": ["exp", "sub"], "verify_exp": False}
    figures["jwt.decode"] = per_item(
        lambda: [
            jwt.decode(t, verifying, algorithms=[algorithm], options=options)  # type: ignore[arg-type]
            for t in tokens
        ],
        count,
    )
    return figures


def main() -> None:
    """Print µs per token for both algorithms."""
    parser = argparse.ArgumentParser(prog="python -m bench.token_algorithms", description=__doc__)
    parser.add_argument("--tokens", type=int, default=2_000, help="tokens per run")
    parser.add_argument("--runs", type=int, default=7, help="runs per figure (the best is shown)")
    args = parser.parse_args()
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.runs):
        for algorithm in (HS256, EDDSA):
            with tempfile.TemporaryDirectory() as folder:
                figures = measure(algorithm, args.tokens, Path(folder))
            mine = best.setdefault(algorithm, dict.fromkeys(figures, float("inf")))
            for step, figure in figures.items():
                mine[step] = min(mine[step], figure)
    print(f"µs of CPU per token, best of {args.runs} runs of {args.tokens} tokens")
    widths = (8, 13, 13, 11, 11)
    steps = ("sign", "first verify", "verify again", "jwt.encode", "jwt.decode")
    print(f"  {'':8s} " + " ".join(f"{s:>{w}s}" for s, w in zip(steps, widths, strict=True)))
    for algorithm, figures in best.items():
        row = " ".join(f"{figures[s]:>{w}.2f}" for s, w in zip(steps, widths, strict=True))
        print(f"  {algorithm:8s} {row}")


if __name__ == "__main__":
    main()
