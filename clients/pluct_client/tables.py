"""Answers as tables for people (the command line's default); scripts ask for --json."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message


def as_table(answer: object) -> str:
    """Render an answer: the rows of its one list as columns, or its fields as name: value."""
    if not isinstance(answer, Message):
        return str(answer)
    fields = json_format.MessageToDict(answer, preserving_proto_field_name=True)
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
