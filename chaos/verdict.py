"""A scenario's verdict on its calls: the figures, the codes answered, and the invariants."""

from __future__ import annotations

from chaos.invariants import prove
from chaos.outcome import Outcome
from chaos.tally import BUG_CODES, EXPECTED_REFUSALS, RETRYABLE_CODES, Tally


async def judge(outcome: Outcome, tally: Tally, owner_url: str) -> None:
    """Record the figures of every call, check the codes, and prove the books on `owner_url`."""
    codes = tally.codes()
    outcome.calls = sum(tally.calls.values())
    outcome.attempts = len(tally.attempts)
    outcome.ok_attempts = codes.pop("OK", 0)
    outcome.errors = dict(codes.most_common())
    outcome.retries = tally.retries()
    outcome.mutations = dict(tally.outcomes())
    outcome.figures["calls_by_kind"] = ", ".join(
        f"{kind} {n:,}" for kind, n in tally.calls.most_common()
    )
    bugs = {code: n for code, n in codes.items() if code in BUG_CODES}
    outcome.check(
        "no call answered INTERNAL or UNKNOWN (HTTP 500)",
        not bugs,
        ", ".join(f"{code}: {n}" for code, n in bugs.items()),
    )
    odd = {
        code: n
        for code, n in codes.items()
        if code not in RETRYABLE_CODES | EXPECTED_REFUSALS | BUG_CODES
    }
    outcome.check(
        "every failed call answered a retryable code (or out of credits)",
        not odd,
        ", ".join(f"{code}: {n}" for code, n in odd.items()),
    )
    proof = await prove(owner_url, tally)
    outcome.figures.update(proof.figures)
    outcome.broken = proof.broken
    outcome.check("pluct audit is clean", proof.audit_exit == 0, proof.audit_says)
    outcome.check(
        "every OK counted exactly once, nothing counted twice, balances = answers",
        not proof.broken,
        "; ".join(f"{rule}: {n}" for rule, n in proof.broken_counts.items()),
    )
    unknown = outcome.mutations.get("unknown", 0)
    outcome.check(
        "every mutation settled (none left with an unknown outcome)",
        unknown == 0,
        f"{unknown} unknown" if unknown else "",
    )
