"""One access line per call, gRPC or HTTP: who called what, about whom, and how it ended."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from pluct_server.observability.logs import direct_handler, json_value

ACCESS_LOGGER = logging.getLogger("pluct_server.access")
REQUEST_ID_HEADER = "x-request-id"
_ACCESS_NAME = ACCESS_LOGGER.name
# A caller's request id is logged and echoed, so it is cut short and kept to printable ASCII.
_MAX_REQUEST_ID = 128
# Any value on an access line is cut to this length.
_MAX_VALUE = 128


@dataclass
class CallRecord:
    """What the access line of one call says; filled in as the call learns it."""

    protocol: str
    method: str
    peer: str
    request_id: str
    code: str = "OK"
    caller_id: str = "-"
    user_id: str = "-"


# Request ids made here are random, so that two of them tell nothing of the calls between
# (a count would). They are drawn 512 at a time: secrets.token_hex(8) costs a system call each.
_REQUEST_IDS_PER_DRAW = 512
_unused_request_ids: list[str] = []

CURRENT_CALL: ContextVar[CallRecord | None] = ContextVar("pluct_current_call", default=None)


def request_id_from(presented: str | None) -> str:
    """Return the caller's request id when it is sane, or a new one."""
    if (
        presented
        and len(presented) <= _MAX_REQUEST_ID
        and presented.isascii()
        and presented.isprintable()
        and " " not in presented
    ):
        return presented
    return _new_request_id()


def _new_request_id() -> str:
    """Return 16 random hex digits."""
    if not _unused_request_ids:
        drawn = os.urandom(8 * _REQUEST_IDS_PER_DRAW).hex()
        _unused_request_ids.extend(drawn[i : i + 16] for i in range(0, len(drawn), 16))
    return _unused_request_ids.pop()


def current_request_id() -> str | None:
    """Return the current call's request id (None outside a call)."""
    record = CURRENT_CALL.get()
    return None if record is None else record.request_id


def note_caller(caller_id: str) -> None:
    """Record who is calling on the current call's access line."""
    record = CURRENT_CALL.get()
    if record is not None:
        record.caller_id = caller_id


def note_user(user_id: str) -> None:
    """Record which user the current call is about."""
    record = CURRENT_CALL.get()
    if record is not None and user_id:
        record.user_id = user_id


def note_code(code: str) -> None:
    """Record how the current call ended (a gRPC status name)."""
    record = CURRENT_CALL.get()
    if record is not None:
        record.code = code


def log_access(record: CallRecord, seconds: float) -> None:
    """Write the access line of a finished call (never a secret, a token or a body)."""
    if not ACCESS_LOGGER.isEnabledFor(logging.INFO):
        return
    duration = _milliseconds(seconds)
    varying = (record.peer, record.request_id, record.user_id, record.caller_id)
    plain = _plain(varying)
    message = _message(record, duration, varying, plain)
    # With the set-up of setup_logging, the line goes straight to its handler: a LogRecord
    # and its formatting would cost more than the line. Any other set-up gets the record.
    handler = direct_handler(ACCESS_LOGGER)
    if handler is None:
        ACCESS_LOGGER.info(message, extra={"fields": _fields(record, seconds)})
    elif handler.json:
        handler.write_info(_ACCESS_NAME, message, _json_members(record, duration))
    else:
        handler.write_info(_ACCESS_NAME, message)


def _milliseconds(seconds: float) -> str:
    """Return str(round(seconds * 1000, 2)) at a third of the cost: one trip to decimal, not 3."""
    milliseconds = seconds * 1000
    if not -1e12 < milliseconds < 1e12:  # beyond, repr may write an exponent (and NaN is NaN)
        return str(round(milliseconds, 2))
    # Both round the exact binary value to 2 decimals; repr then writes that decimal (at most
    # 14 digits, so it reads back) without trailing zeros, but always with a digit after ".".
    text = f"{milliseconds:.2f}".rstrip("0")
    return text + "0" if text[-1] == "." else text


def _plain(values: tuple[str, ...]) -> bool:
    """Tell whether values may go as they are on a text line and in JSON (between quotes)."""
    try:
        joined = "".join(values)
    except TypeError:  # not all text: _safe and json_value cope
        return False
    return (
        joined.isascii()
        and joined.isprintable()
        and " " not in joined
        and '"' not in joined
        and "\\" not in joined
        and (len(joined) <= _MAX_VALUE or max(map(len, values)) <= _MAX_VALUE)
    )


def _message(record: CallRecord, duration: str, varying: tuple[str, ...], plain: bool) -> str:
    """Return the text of the access line: name=value pairs, any value that needs it quoted."""
    peer, request_id, user_id, key_id = varying if plain else map(_safe, varying)
    return (
        f"protocol={_TEXT[record.protocol]} method={_TEXT[record.method]} "
        f"code={_TEXT[record.code]} duration_ms={duration} peer={peer} "
        f"request_id={request_id} user_id={user_id} key_id={key_id}"
    )


def _json_members(record: CallRecord, duration: str) -> str:
    """Return the fields as members of a JSON object, each led by ", "."""
    return (
        f', "protocol": {_JSON[record.protocol]}, "method": {_JSON[record.method]}, '
        f'"code": {_JSON[record.code]}, "duration_ms": {duration}, '
        f'"peer": {json_value(record.peer)}, "request_id": {json_value(record.request_id)}, '
        f'"user_id": {json_value(record.user_id)}, "key_id": {json_value(record.caller_id)}'
    )


def _fields(record: CallRecord, seconds: float) -> dict[str, object]:
    """Return the access line's fields, in the order the line shows them."""
    return {
        "protocol": record.protocol,
        "method": record.method,
        "code": record.code,
        "duration_ms": round(seconds * 1000, 2),
        "peer": record.peer,
        "request_id": record.request_id,
        "user_id": record.user_id,
        "key_id": record.caller_id,
    }


def _safe(value: object) -> str:
    """Return a value for a text log line: anything that could forge a line is quoted."""
    text = str(value)[:_MAX_VALUE]
    if text.isprintable() and " " not in text and '"' not in text:
        return text
    return json.dumps(text)


class _Shown(dict[str, str]):
    """How values of few kinds (protocol, method, code) are shown, each worked out once."""

    def __init__(self, show: Callable[[str], str]) -> None:
        super().__init__()
        self._show = show

    def __missing__(self, value: str) -> str:
        shown = self._show(value)
        if len(self) < _SHOWN_MAX:  # a bound, should a caller ever choose these values
            self[value] = shown
        return shown


_SHOWN_MAX = 1024
_TEXT = _Shown(_safe)
_JSON = _Shown(json_value)
