"""One access line per call, gRPC or HTTP: who called what, about whom, and how it ended."""

from __future__ import annotations

import json
import logging
import secrets
from contextvars import ContextVar
from dataclasses import dataclass

ACCESS_LOGGER = logging.getLogger("pluct_server.access")
REQUEST_ID_HEADER = "x-request-id"
# A caller's request id is logged and echoed, so it is cut short and kept to printable ASCII.
_MAX_REQUEST_ID = 128


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
    return secrets.token_hex(8)


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
    fields = {
        "protocol": record.protocol,
        "method": record.method,
        "code": record.code,
        "duration_ms": round(seconds * 1000, 2),
        "peer": record.peer,
        "request_id": record.request_id,
        "user_id": record.user_id,
        "key_id": record.caller_id,
    }
    ACCESS_LOGGER.info(
        " ".join(f"{name}={_safe(value)}" for name, value in fields.items()),
        extra={"fields": fields},
    )


def _safe(value: object) -> str:
    """Return a value for a text log line: anything that could forge a line is quoted."""
    text = str(value)[:_MAX_REQUEST_ID]
    if text.isprintable() and " " not in text and '"' not in text:
        return text
    return json.dumps(text)
