"""µs to sign and to verify a token, HS256 against EdDSA, as the service does both.

`.venv/bin/python -m bench.token_algorithms` signs tokens with TokenKeys (what VendToken does),
then verifies each once (a token's first ValidateToken: signature, claims, expiry) and again (a
token that passed is remembered: expiry and revocation only). Figures are this process's CPU
time per token, the best of several short runs taken in turn.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

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


def measure(algorithm: str, count: int, folder: Path) -> dict[str, float]:
    """Return µs per token to sign, to verify it first, and to verify it again."""
    keys = keys_for(algorithm, folder)
    batch = claims(count)
    tokens: list[str] = []
    figures = {"sign": per_item(lambda: tokens.extend(map(keys.sign, batch)), count)}
    for step in ("first verify", "verify again"):
        figures[step] = per_item(lambda: all(keys.verify(t).valid for t in tokens), count)
    assert all(keys.verify(t).valid for t in tokens)
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
    print(f"  {'':8s} {'sign':>8s} {'first verify':>13s} {'verify again':>13s}")
    for algorithm, figures in best.items():
        row = " ".join(f"{figures[s]:>{w}.2f}" for s, w in zip(figures, (8, 13, 13), strict=True))
        print(f"  {algorithm:8s} {row}")


if __name__ == "__main__":
    main()
