"""The audit: every user's balance checked against its ledger, on a live database."""

from __future__ import annotations

from dataclasses import dataclass

from pluct_server.store.audit_store import AuditStore, Books

# More than this many problems is a disaster a list will not help with; the count says so.
MOST_REPORTED = 1000


@dataclass(frozen=True)
class Problem:
    """One user whose books disagree, and what disagrees."""

    user_id: str
    balance: int
    ledger_sum: int
    findings: tuple[str, ...]


@dataclass(frozen=True)
class AuditReport:
    """What the audit found: clean when there are no problems."""

    users_checked: int
    problems: tuple[Problem, ...]

    @property
    def clean(self) -> bool:
        """Tell whether every user's books agree."""
        return not self.problems


def findings(books: Books) -> tuple[str, ...]:
    """Say, one phrase each, what is wrong with a user's books."""
    found = []
    if books.balance < 0:
        found.append("negative balance")
    if books.balance != books.ledger_sum:
        found.append("balance differs from the ledger")
    if books.transaction_count != books.entries:
        found.append("transaction count differs from the ledger")
    if books.total_spent != books.spent:
        found.append("total spent differs from the ledger")
    if books.odd_spends:
        found.append("a spend that did not buy one token at its price")
    if books.reused_tokens:
        found.append("a token paid for twice")
    if books.balance != books.granted:
        found.append("balance differs from what remains of the grants")
    if books.odd_grants:
        found.append("a grant whose remainder differs from what was drawn from it")
    if books.unevented:
        found.append("a ledger entry without its one event")
    return tuple(found)


async def audit(store: AuditStore) -> AuditReport:
    """Check every user against its ledger."""
    users, disagreeing = await store.disagreeing(MOST_REPORTED)
    problems = tuple(
        Problem(books.user_id, books.balance, books.ledger_sum, findings(books))
        for books in disagreeing
    )
    return AuditReport(users, problems)
