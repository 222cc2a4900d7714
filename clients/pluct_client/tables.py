"""Answers as tables for people (the command line's default); scripts ask for --json."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message


def as_dict(message: Message) -> dict[str, Any]:
    """Return a message as its JSON mapping, every field in the order the proto declares it."""
    # Zero, false and empty are answers too (a balance of 0, "valid: false"): all are shown.
    fields = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _declared_order(message, fields)


def _declared_order(message: Message, fields: dict[str, Any]) -> dict[str, Any]:
    """Reorder `fields` (MessageToDict puts the fields left at their default last)."""
    ordered: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        if field.name not in fields:
            continue
        value = fields[field.name]
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            inner = getattr(message, field.name)
            if isinstance(value, dict):
                value = _declared_order(inner, value)
            elif isinstance(value, list):
                value = [
                    _declared_order(item, entry) if isinstance(entry, dict) else entry
                    for item, entry in zip(inner, value, strict=True)
                ]
        ordered[field.name] = value
    # Anything a well-known type renders its own way keeps its place after the fields.
    return ordered | {name: value for name, value in fields.items() if name not in ordered}


def as_table(answer: object) -> str:
    """Render an answer: the rows of its one list as columns, or its fields as name: value."""
    if not isinstance(answer, Message):
        return str(answer)
    fields = as_dict(answer)
    rows = [value for value in fields.values() if _is_rows(value)]
    if len(rows) == 1:
        scalars = {name: value for name, value in fields.items() if not _is_rows(value)}
        table = _columns(rows[0])
        return "\n".join(filter(None, [table, _pairs(scalars)]))
    return _pairs(fields)


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _columns(rows: list[dict[str, Any]]) -> str:
    """Render rows of one kind as aligned columns under a header."""
    if not rows:
        return "(none)"
    names = list(dict.fromkeys(name for row in rows for name in row))
    cells = [[_cell(row.get(name, "")) for name in names] for row in rows]
    widths = [max(len(name), *(len(line[i]) for line in cells)) for i, name in enumerate(names)]
    lines = [names, *cells]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _pairs(fields: dict[str, Any]) -> str:
    """Render fields as `name: value` lines, names aligned."""
    if not fields:
        return ""
    width = max(len(name) for name in fields)
    return "\n".join(f"{name.ljust(width)}  {_cell(value)}" for name, value in fields.items())


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(_cell(item) for item in value)
    if isinstance(value, dict):
        return " ".join(f"{name}={_cell(item)}" for name, item in value.items())
    return str(value)
