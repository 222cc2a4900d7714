"""Events: what happened to users' credits, as the services that sell through this one hear it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pluct_server.domain.pagination import (
    clamp_page_size,
    decode_page_token,
    id_position,
    one_page,
)
from pluct_server.store.event_store import EventStore
from pluct_server.values.records import DEFAULT_FEATURE, EntryType, Event

EVENTS_PAGE = (50, 100)
EVENTS_LISTING = "events"
# JSON numbers are doubles to most readers: integers beyond 2^53 go as strings, exactly.
_EXACT_IN_JSON = 2**53
_SOURCES = {
    EntryType.USER_CREATION: "signup",
    EntryType.ADD_WEBHOOK: "payment",
    EntryType.ADMIN_ADD: "admin",
}


@dataclass(frozen=True)
class EventPage:
    """A page of a user's events and the token for the next one ("" on the last page)."""

    events: list[Event]
    next_page_token: str


def json_integer(value: int) -> int | str:
    """Return an integer as JSON carries it exactly: a number below 2^53, a string beyond."""
    return value if -_EXACT_IN_JSON < value < _EXACT_IN_JSON else str(value)


def rfc3339(moment: datetime) -> str:
    """Return a moment as RFC 3339 in UTC, with a Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def sequence(event: Event) -> int:
    """Return what orders a user's events: its entry's id."""
    # A user's entries are written one at a time under its row lock, with ids that only grow.
    return event.transaction_id


def payload(event: Event) -> str:
    """Return the JSON body a webhook receiver gets for `event` (Standard Webhooks' shape)."""
    data: dict[str, object] = {
        "user_id": event.user_id,
        "transaction_id": json_integer(event.transaction_id),
        "sequence": json_integer(sequence(event)),
        "amount": json_integer(event.amount),
        "balance_after": json_integer(event.balance_after),
    }
    if event.entry_type is EntryType.SPEND:
        data["feature"] = event.feature or DEFAULT_FEATURE
        data["credits_charged"] = json_integer(event.amount)
        data["token_id"] = event.token_id
    elif event.entry_type is EntryType.REFUND:
        data["refunded_transaction_id"] = json_integer(event.refunds or 0)
    else:
        data["grant_id"] = event.grant_id
        if event.entry_type in _SOURCES:
            data["source"] = _SOURCES[event.entry_type]
    body = {"type": event.type, "timestamp": rfc3339(event.create_time), "data": data}
    return json.dumps(body, separators=(",", ":"))


class Events:
    """Lists what happened to a user's credits, and forgets it after the retention."""

    def __init__(self, store: EventStore, retention: timedelta) -> None:
        self._store = store
        self._retention = retention

    async def forget_old(self) -> int:
        """Delete the events older than the retention; return how many."""
        return await self._store.purge(self._retention)

    async def of_user(self, user_id: str, page_size: int, page_token: str) -> EventPage:
        """Return one page of a user's events, newest first."""
        size = clamp_page_size(page_size, *EVENTS_PAGE)
        before_id = id_position(decode_page_token(page_token, EVENTS_LISTING, user_id))
        rows = await self._store.of_user(user_id, size + 1, before_id)
        page, token = one_page(rows, size, EVENTS_LISTING, user_id, lambda e: int(e.event_id))
        return EventPage(page, token)
