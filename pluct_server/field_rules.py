"""Field rules: the buf.validate annotations of protos/, checked before every RPC, read by the shim.

Every limit on a request field (lengths, ranges, characters, required fields) is written once,
as an annotation beside the field in protos/. The one rule an annotation cannot say is that a
user id is in Unicode NFKC form; it is checked here too, for every field named user_id.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import protovalidate
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from pluct import _validate_rules  # noqa: F401  (registers buf/validate/validate.proto)

from pluct_server.errors import FieldViolation, InvalidArgument

_VALIDATOR = protovalidate.Validator()
_FIELD_RULES = descriptor_pool.Default().FindExtensionByName("buf.validate.field")
# Fields holding a user id: NFKC form keeps one user from hiding behind a look-alike spelling,
# such as full-width letters or a decomposed accent.
USER_ID_FIELD = "user_id"


def check_fields(request: Message) -> None:
    """Raise InvalidArgument naming every field of `request` that breaks a rule, else return."""
    violations = [_field_violation(found.proto) for found in _VALIDATOR.collect_violations(request)]
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


def rules_of(field: FieldDescriptor) -> Any:
    """Return a field's buf.validate FieldRules (an empty one when it has none)."""
    return field.GetOptions().Extensions[_FIELD_RULES]  # type: ignore[index]  # built at run time


def _field_violation(violation: Any) -> FieldViolation:
    """Turn a protovalidate violation into an AIP-193 field violation with a readable text."""
    path = ".".join(_path_element(element) for element in violation.field.elements)
    # protovalidate's texts speak of "value": name the field instead.
    text = violation.message.removeprefix("value ")
    return FieldViolation(path, f"{path} {text}", violation.rule_id)


def _path_element(element: Any) -> str:
    """Return one step of a field path: `name`, or `name[i]` for an item of a list."""
    return (
        f"{element.field_name}[{element.index}]"
        if element.has_field("index")
        else element.field_name
    )
