"""Field rules: the buf.validate annotations of protos/, checked before every RPC, read by the shim.

Every limit on a request field (lengths, ranges, characters, required fields) is written once,
as an annotation beside the field in protos/. The one rule an annotation cannot say is that a
user id is in Unicode NFKC form; it is checked here too, for every field named user_id.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import protovalidate
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from pluct import _validate_rules  # noqa: F401  (registers buf/validate/validate.proto)
from pluct.credit.v1 import credit_service_pb2 as credit_pb

from pluct_server.domain.errors import FieldViolation, InvalidArgument

_VALIDATOR = protovalidate.Validator()
_FIELD_RULES = descriptor_pool.Default().FindExtensionByName("buf.validate.field")
# What each pattern of the protos asks, in words: a caller told a regex has to decode it, and
# the shim's legacy routes already speak in words. Keyed by the annotation's own text, so a
# pattern is worded once for every field that carries it (tests check that every one is).
PATTERN_WORDS: Mapping[str, str] = MappingProxyType(
    {
        r"^[^\p{Cc}\p{Cf}\p{Z}]*$": (
            "must not contain control, format (invisible) or whitespace characters"
        ),
        r"^[^\p{Cc}\p{Cf}\p{Z}]+$": (
            "must not be empty or contain control, format (invisible) or whitespace characters"
        ),
        r"^[^\p{Cc}]*$": "must not contain control characters",
        r"^https?://([A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
        r"([/?#][^\p{Cc}\p{Cf}\p{Z}]*)?$": (
            "must be an http or https URL with an ASCII host (an international name in its "
            "xn-- form), without credentials, spaces or control characters"
        ),
        r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$": (
            "must not contain control characters other than tab, line feed and carriage return"
        ),
        r"^[^\p{Cc}\p{Cf}\p{Zl}\p{Zp}]*[^\p{Cc}\p{Cf}\p{Z}][^\p{Cc}\p{Cf}\p{Zl}\p{Zp}]*$": (
            "must contain a visible character and no control, format (invisible) or "
            "line-breaking characters"
        ),
        r"^[0-9a-f]{16}$": "must be 16 lowercase hexadecimal digits",
        r"^[a-z][a-z0-9_.-]*$": (
            "must start with a lowercase letter, followed by lowercase letters, digits, '_', '.'"
            " or '-'"
        ),
        r"^([a-z][a-z0-9_.-]*)?$": (
            "must be empty, or start with a lowercase letter followed by lowercase letters,"
            " digits, '_', '.' or '-'"
        ),
        r"\S": "must not be blank",
    }
)
# Fields holding a user id: NFKC form keeps one user from hiding behind a look-alike spelling,
# such as full-width letters or a decomposed accent.
USER_ID_FIELD = "user_id"


def check_fields(request: Message) -> None:
    """Raise InvalidArgument naming every field of `request` that breaks a rule, else return."""
    violations = [_field_violation(found) for found in _VALIDATOR.collect_violations(request)]
    if not violations:
        user_id = user_id_of(request)
        if user_id and not unicodedata.is_normalized("NFKC", user_id):
            violations.append(
                FieldViolation(
                    USER_ID_FIELD, "user_id must be in Unicode NFKC normal form", "string.nfkc"
                )
            )
    if violations:
        raise InvalidArgument.of(violations)


def user_id_of(request: Message) -> str:
    """Return the user id a request is about, or "" when its message has no such field."""
    # Asked of the descriptor: a failed getattr on a message costs an exception.
    if USER_ID_FIELD in request.DESCRIPTOR.fields_by_name:
        return str(getattr(request, USER_ID_FIELD))
    return ""


def is_valid(request: Message) -> bool:
    """Return whether `request` keeps every rule (for values that arrive inside page tokens)."""
    try:
        check_fields(request)
    except InvalidArgument:
        return False
    return True


def is_user_id(text: str) -> bool:
    """Tell whether `text` is a valid user id, by the rules on the protos' user_id fields."""
    return is_valid(credit_pb.GetBalanceRequest(user_id=text))


def rules_of(field: FieldDescriptor) -> Any:
    """Return a field's buf.validate FieldRules (an empty one when it has none)."""
    return field.GetOptions().Extensions[_FIELD_RULES]  # type: ignore[index]  # built at run time


def _field_violation(violation: protovalidate.Violation) -> FieldViolation:
    """Turn a protovalidate violation into an AIP-193 field violation with a readable text."""
    found = violation.proto
    # A rule on a whole message (none of ours yet) names no field.
    elements = found.field.elements if found.field is not None else ()
    path = ".".join(_path_element(element) for element in elements)
    words = None
    if found.rule_id == "string.pattern":
        words = PATTERN_WORDS.get(violation.rule_value)
    # protovalidate's texts speak of "value": name the field instead.
    text = words or found.message.removeprefix("value ")
    return FieldViolation(path, f"{path} {text}", found.rule_id)


def _path_element(element: Any) -> str:
    """Return one step of a field path: `name`, or `name[i]` for an item of a list."""
    # The subscript is a oneof (index, or a map's key) that protovalidate gives as field/value.
    subscript = element.subscript
    if subscript is None:
        return str(element.field_name)
    return f"{element.field_name}[{subscript.value}]"
