"""JSON Schema limits for the OpenAPI document, read from the protos' buf.validate annotations."""

from __future__ import annotations

import re
import sys
import unicodedata
from functools import cache
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from pluct_server.api.grpc.field_rules import rules_of

_NUMBER_RULES = ("int32", "int64", "uint32", "uint64", "sint32", "sint64")
_CATEGORY = re.compile(r"\\p\{(\w+)\}")


def rules_schema(field: FieldDescriptor) -> dict[str, Any]:
    """Return the JSON Schema keywords that say a field's rules (for one value of it)."""
    return _value_schema(rules_of(field))


def _value_schema(rules: Any) -> dict[str, Any]:
    """Return the JSON Schema keywords of one value's buf.validate rules."""
    kind = rules.WhichOneof("type")
    if kind == "repeated" and rules.repeated.HasField("items"):
        # A list's rules for each of its items.
        return _value_schema(rules.repeated.items)
    schema: dict[str, Any] = {}
    if kind == "string":
        text = rules.string
        if text.HasField("min_len") or rules.required:
            schema["minLength"] = max(text.min_len, 1 if rules.required else 0)
        if text.HasField("max_len"):
            schema["maxLength"] = text.max_len
        if text.HasField("pattern"):
            schema["pattern"] = ecma_pattern(text.pattern)
        if text.not_in:
            schema["not"] = {"enum": list(text.not_in)}
        if getattr(text, "in"):
            schema["enum"] = list(getattr(text, "in"))
    elif kind in _NUMBER_RULES:
        number = getattr(rules, kind)
        if number.HasField("gte"):
            schema["minimum"] = number.gte
        if number.HasField("lte"):
            schema["maximum"] = number.lte
    return schema


def list_schema(field: FieldDescriptor) -> dict[str, Any]:
    """Return the JSON Schema keywords that say a repeated field's rules about its length."""
    rules = rules_of(field)
    if rules.WhichOneof("type") != "repeated":
        return {}
    said: dict[str, Any] = {}
    if rules.repeated.HasField("min_items"):
        said["minItems"] = rules.repeated.min_items
    if rules.repeated.HasField("max_items"):
        said["maxItems"] = rules.repeated.max_items
    if rules.repeated.unique:
        said["uniqueItems"] = True
    return said


def is_required(field: FieldDescriptor) -> bool:
    """Return whether a request must carry the field: its zero value breaks its rules."""
    rules = rules_of(field)
    if rules.required:
        return True
    kind = rules.WhichOneof("type")
    if kind == "string":
        return bool(rules.string.min_len > 0)
    if kind in _NUMBER_RULES:
        number = getattr(rules, kind)
        return bool(
            (number.HasField("gte") and number.gte > 0)
            or (number.HasField("lte") and number.lte < 0)
        )
    return False


def ecma_pattern(pattern: str) -> str:
    r"""Spell a protovalidate (RE2) pattern so that ECMA-262 and Python read it alike.

    Our patterns name Unicode categories (\p{Cc}) inside character classes; OpenAPI 3.0's
    dialect has no such escape, so each becomes the ranges of the Basic Multilingual Plane in
    that category, as this Python's Unicode database has them.
    """
    return _CATEGORY.sub(lambda match: _category_ranges(match.group(1)), pattern)


@cache
def _category_ranges(category: str) -> str:
    r"""Return a class body (\uXXXX-\uXXXX...) of the BMP characters in a general category."""
    spans: list[tuple[int, int]] = []
    for first, last, name in _category_runs():
        if name.startswith(category):
            if spans and spans[-1][1] == first - 1:
                spans[-1] = (spans[-1][0], last)
            else:
                spans.append((first, last))
    return "".join(
        f"\\u{first:04x}" if first == last else f"\\u{first:04x}-\\u{last:04x}"
        for first, last in spans
    )


@cache
def _category_runs() -> tuple[tuple[int, int, str], ...]:
    """Return the BMP as runs of code points of one general category: (first, last, category).

    Read once, so each category asked for costs a pass over a few thousand runs rather than
    65,536 look-ups (the document is built as a worker starts).
    """
    runs: list[tuple[int, int, str]] = []
    for point in range(min(sys.maxunicode, 0xFFFF) + 1):
        name = unicodedata.category(chr(point))
        if runs and runs[-1][2] == name:
            runs[-1] = (runs[-1][0], point, name)
        else:
            runs.append((point, point, name))
    return tuple(runs)
