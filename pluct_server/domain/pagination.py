"""Page sizes and opaque page tokens for list RPCs (AIP-158)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from pluct_server.domain.errors import InvalidArgument

# Listing -> the listing it replaced: a token of the old one names a position in an order that
# is gone, and its caller is told so, not merely that the token is wrong.
_REPLACED_LISTINGS = {"users_by_create_time": "users"}
_BIGINT_LIMIT = 2**63
Row = TypeVar("Row")


def clamp_page_size(requested: int, default: int, maximum: int) -> int:
    """Apply AIP-158: 0 means the default, above the maximum the maximum (protos refuse < 0)."""
    if requested <= 0:
        return default
    return min(requested, maximum)


def encode_page_token(listing: str, scope: str | None, position: list[Any]) -> str:
    """Make an opaque token that resumes `listing` (filtered by `scope`) after `position`."""
    payload = json.dumps({"l": listing, "s": scope, "p": position}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_page_token(token: str, listing: str, scope: str | None) -> list[Any] | None:
    """Return the position a token resumes from, or None for an empty token (the first page)."""
    if not token:
        return None
    invalid = InvalidArgument("page_token", "page_token is not a token this list returned")
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise invalid from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("p"), list):
        raise invalid
    replaced = _REPLACED_LISTINGS.get(listing)
    if replaced is not None and payload.get("l") == replaced:
        raise InvalidArgument(
            "page_token",
            "page_token was issued before this list changed its order; start again without one",
        )
    if payload.get("l") != listing or payload.get("s") != scope:
        # AIP-158: a token only continues the very listing, with the same filter, that issued it.
        raise InvalidArgument("page_token", "page_token belongs to a different request")
    position: list[object] = payload["p"]
    return position


def _not_ours() -> InvalidArgument:
    return InvalidArgument("page_token", "page_token is not a token this list returned")


def one_page(
    rows: list[Row], size: int, listing: str, scope: str | None, last_id: Callable[[Row], int]
) -> tuple[list[Row], str]:
    """Cut a fetch of up to `size` + 1 rows to a page; return it and the next page's token.

    The extra row only says that there is a next page: the token resumes after the page's last.
    """
    if len(rows) <= size:
        return rows, ""
    page = rows[:size]
    return page, encode_page_token(listing, scope, [last_id(page[-1])])


def _bigint(value: object, minimum: int) -> int:
    """Return `value` if it is a whole number from `minimum` up that a bigint holds."""
    # A forged token may carry any JSON value; only such a number can be a real position.
    if isinstance(value, int) and not isinstance(value, bool) and minimum <= value < _BIGINT_LIMIT:
        return value
    raise _not_ours()


def id_position(position: list[Any] | None) -> int | None:
    """Return the id a token resumes after: a positive bigint, or None for the first page."""
    if position is None:
        return None
    if len(position) != 1:
        raise _not_ours()
    return _bigint(position[0], 1)


def xid_and_id_position(position: list[Any] | None) -> tuple[int, int] | None:
    """Return the (transaction id, entry id) a token resumes after, or None for the first page."""
    if position is None:
        return None
    if len(position) != 2:
        raise _not_ours()
    # (0, 0), before every entry, is where a follower that has seen nothing yet resumes.
    return _bigint(position[0], 0), _bigint(position[1], 0)


def time_and_name_position(
    position: list[Any] | None, name_is_valid: Callable[[str], bool]
) -> tuple[datetime, str] | None:
    """Return the (time, name) a token resumes after, or None for the first page."""
    if position is None:
        return None
    if len(position) != 2 or not all(isinstance(part, str) for part in position):
        raise _not_ours()
    try:
        moment = datetime.fromisoformat(position[0])
        # Tokens we issue carry an offset; anything else was made by hand. In UTC, as the
        # database compares it, a forged "0001-01-01T00:00:00+14:00" overflows.
        if moment.tzinfo is None:
            raise ValueError(position[0])
        moment = moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _not_ours() from None
    if not name_is_valid(position[1]):
        raise _not_ours()
    return moment, position[1]
