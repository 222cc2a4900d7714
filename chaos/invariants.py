"""The proof after a scenario: the service's own audit, and the ledger against what clients saw."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import asyncpg

from bench.harness import REPO
from chaos.tally import LEDGER_TYPES, Mutation, Tally

EXAMPLES = 5
AUDIT_TIMEOUT_SECONDS = 120
_LEDGER = """
SELECT user_id, type, amount, balance_after, request_id, token_id::text AS token_id FROM ledger
"""
_BALANCES = "SELECT user_id, balance FROM users"


@dataclass
class Proof:
    """What the proof found; the invariants hold when the audit is clean and nothing is listed."""

    audit_exit: int = -1
    audit_says: str = ""
    # Each broken rule, with up to EXAMPLES cases and how many there were.
    broken: dict[str, list[str]] = field(default_factory=dict)
    broken_counts: Counter[str] = field(default_factory=Counter)
    figures: dict[str, int] = field(default_factory=dict)

    @property
    def holds(self) -> bool:
        """Tell whether every invariant holds."""
        return self.audit_exit == 0 and not self.broken

    def breaks(self, rule: str, case: str) -> None:
        """Note one case of a broken rule."""
        self.broken_counts[rule] += 1
        examples = self.broken.setdefault(rule, [])
        if len(examples) < EXAMPLES:
            examples.append(case)


async def prove(owner_url: str, tally: Tally) -> Proof:
    """Run the audit and compare the ledger with every answer the clients got."""
    proof = Proof()
    proof.audit_exit, proof.audit_says = await run_audit(owner_url)
    conn = await asyncpg.connect(owner_url)
    try:
        rows = await conn.fetch(_LEDGER)
        balances = {row["user_id"]: int(row["balance"]) for row in await conn.fetch(_BALANCES)}
    finally:
        await conn.close()
    compare(proof, tally.mutations, rows, balances)
    return proof


async def run_audit(url: str) -> tuple[int, str]:
    """Run `python -m pluct_server audit` on `url`; return its exit status and its verdict line."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'clients'}",
        "DATABASE_URL": url,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pluct_server",
        "audit",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), AUDIT_TIMEOUT_SECONDS)
    lines = output.decode(errors="replace").strip().splitlines()
    return int(process.returncode or 0), lines[-1] if lines else "(no output)"


def compare(
    proof: Proof,
    mutations: list[Mutation],
    rows: list[asyncpg.Record],
    balances: dict[str, int],
) -> None:
    """Check every mutation against its ledger entries, and every balance against the answers."""
    entries: dict[str | None, list[asyncpg.Record]] = defaultdict(list)
    for row in rows:
        entries[row["request_id"]].append(row)
    expected: Counter[str] = Counter()
    asked = set()
    outcomes: Counter[str] = Counter()
    for mutation in mutations:
        asked.add(mutation.request_id)
        found = entries.get(mutation.request_id, [])
        applied = _check_one(proof, mutation, found)
        outcomes[f"{mutation.outcome}, {'applied' if applied else 'not applied'}"] += 1
        if applied:
            expected[mutation.user_id] += mutation.change
    for request_id, found in entries.items():
        if request_id not in asked:
            for row in found:
                proof.breaks(
                    "a ledger entry no client asked for",
                    f"{row['type']} of {row['amount']} for {row['user_id']} ({request_id})",
                )
    for user_id, balance in balances.items():
        if balance < 0:
            proof.breaks("a negative balance", f"{user_id}: {balance}")
        if balance != expected[user_id]:
            proof.breaks(
                "a balance differs from what the answers add up to",
                f"{user_id}: balance {balance}, answers {expected[user_id]}",
            )
    spends = sum(1 for row in rows if row["type"] == "spend")
    vends = sum(1 for m in mutations if m.kind == "vend" and m.outcome == "ok")
    proof.figures.update(
        ledger_entries=len(rows),
        ledger_spends=spends,
        vends_ok=vends,
        ok_applied=outcomes["ok, applied"],
        unknown_applied=outcomes["unknown, applied"],
        unknown_not_applied=outcomes["unknown, not applied"],
        refused=outcomes["refused, not applied"] + outcomes["refused, applied"],
    )
    vends_applied = spends - sum(
        1
        for m in mutations
        if m.kind == "vend" and m.outcome == "unknown" and entries.get(m.request_id)
    )
    if vends_applied != vends:
        proof.breaks(
            "tokens vended differ from the ledger's spends",
            f"{vends} vends answered OK, {vends_applied} spends in the ledger for them",
        )


def _check_one(proof: Proof, mutation: Mutation, found: list[asyncpg.Record]) -> bool:
    """Check one mutation's ledger entries; return whether it was applied."""
    label = f"{mutation.kind} via {mutation.via} for {mutation.user_id} ({mutation.request_id})"
    if len(found) > 1:
        proof.breaks("a request counted twice", f"{label}: {len(found)} entries")
    if mutation.outcome == "ok" and not found:
        proof.breaks("an OK answer missing from the ledger", label)
    if mutation.outcome == "refused" and found:
        proof.breaks("a refused request applied", f"{label}: refused {mutation.last_code}")
    if not found:
        return False
    row = found[0]
    entry = (row["user_id"], row["type"], int(row["amount"]))
    wanted = (mutation.user_id, LEDGER_TYPES[mutation.kind], abs(mutation.change))
    if entry != wanted:
        proof.breaks("an entry differs from its request", f"{label}: {entry} for {wanted}")
    if mutation.outcome == "ok":
        answered = (mutation.token_id or None, mutation.balance_after)
        recorded = (row["token_id"], int(row["balance_after"]))
        if answered != recorded:
            proof.breaks(
                "an answer differs from its ledger entry",
                f"{label}: answered {answered}, ledger {recorded}",
            )
    return True
