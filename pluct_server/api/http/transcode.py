"""HTTP to request message: path variables, query parameters and the JSON body, strictly typed."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from pluct_server.api.http.legacy import LegacyProfile, QueryAlias
from pluct_server.api.http.problems import CallError
from pluct_server.api.http.render import TIMESTAMP
from pluct_server.api.http.routes import Route

REQUEST_ID_FIELD = "request_id"
IDEMPOTENCY_HEADER = "Idempotency-Key"
REQUEST_ID_MISMATCH = "REQUEST_ID_MISMATCH"
_INTEGER_TEXT = re.compile(r"-?[0-9]{1,20}\Z")
_ANY_INTEGER_TEXT = re.compile(r"-?[0-9]+\Z")
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOATS = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)


def split_path(raw_path: str) -> list[str]:
    """Return the percent-decoded segments of a raw path; "/" is [], "/a/" is ["a"]."""
    path = raw_path.removeprefix("/")
    # The legacy engine (Express, non-strict routing) took /health/ for /health.
    path = path.removesuffix("/")
    if not path:
        return []
    try:
        # Decoding per segment keeps an encoded "/" (%2F) inside its segment.
        return [unquote(part, errors="strict") for part in path.split("/")]
    except UnicodeDecodeError:
        raise CallError.invalid("the path is not valid percent-encoded UTF-8") from None


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Return the body as a JSON object; an empty body is {} (legacy read it so)."""
    if not raw.strip():
        return {}
    try:
        # utf-8-sig: a leading byte-order mark is dropped, as the legacy engine's parser did.
        value = json.loads(
            raw.decode("utf-8-sig"), parse_constant=_no_constants, object_pairs_hook=_unique_keys
        )
    except DuplicateKey as duplicate:
        raise CallError.invalid(f"Request body names {duplicate.key!r} more than once") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CallError.invalid("Request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise CallError.invalid("Request body must be a JSON object")
    return value


class DuplicateKey(ValueError):
    """A JSON object named one key twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which duplicate wins (first, last, error); a proxy that checked one
    # copy and a service that used the other is how a request gets smuggled. Refuse it.
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKey(key)
        found[key] = value
    return found


def _no_constants(name: str) -> Any:
    # json.loads takes NaN and Infinity, which JSON itself does not have.
    raise ValueError(name)


class Transcoder:
    """Builds the request message of a route from what an HTTP request carried."""

    def __init__(self, profile: LegacyProfile) -> None:
        self._aliases: Mapping[str, QueryAlias] = {a.name: a for a in profile.query_aliases}
        self._profile = profile

    def request(
        self,
        route: Route,
        variables: Mapping[str, str],
        query: str,
        body: dict[str, Any] | None,
        idempotency_key: str | None,
    ) -> Message:
        """Return the request: body first, then query, then path (the path always wins)."""
        assert route.rpc is not None
        descriptor = route.rpc.method.input_type
        message = message_factory.GetMessageClass(descriptor)()
        bound = set(variables)
        if route.rpc.body == "*":
            from_body: set[str] = set()
            for key, value in (body or {}).items():
                field = _field_named(descriptor, key)
                # Unknown keys are ignored, as the legacy engine ignored them.
                if field is None or field.name in bound:
                    continue
                if field.name in from_body:
                    # userId and user_id both: the duplicate-key smuggling, in two spellings.
                    raise CallError.invalid(
                        f"Request body names {field.json_name!r} more than once"
                    )
                from_body.add(field.name)
                _set_from_json(message, field, value, key)
            bound.update(f.name for f in descriptor.fields)
        elif route.rpc.body:
            field = descriptor.fields_by_name[route.rpc.body]
            _set_from_json(message, field, body or {}, field.json_name)
            bound.add(field.name)
        self._apply_query(message, descriptor, query, bound)
        for name, text in variables.items():
            field = descriptor.fields_by_name[name]
            _set_from_json(
                message, field, _from_text(field, text, field.json_name), field.json_name
            )
        self._apply_defaults(message, route, bound)
        _apply_idempotency_key(message, descriptor, idempotency_key)
        return message

    def _apply_defaults(self, message: Message, route: Route, bound: set[str]) -> None:
        """Set the route's legacy defaults on the fields its caller did not give."""
        assert route.rpc is not None
        defaults = self._profile.route_shape(route.rpc.method.full_name).request_defaults
        for name, value in defaults.items():
            if name not in bound:
                field = route.rpc.method.input_type.fields_by_name[name]
                _set_from_json(message, field, value, field.json_name)

    def _apply_query(
        self, message: Message, descriptor: Descriptor, query: str, bound: set[str]
    ) -> None:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise CallError.invalid("the query string is not valid UTF-8") from None
        values: dict[str, list[str]] = {}
        for key, value in pairs:
            values.setdefault(key, []).append(value)
        for key, texts in values.items():
            alias = self._aliases.get(key)
            if alias is not None and alias.field in descriptor.fields_by_name:
                target = descriptor.fields_by_name[alias.field]
                if alias.field in bound:
                    raise CallError.invalid(f"give {key} or {target.json_name}, not both", key)
                value = _from_text(target, _alias_value(alias, _one(key, texts)), key)
                _set_from_json(message, target, value, key)
                bound.add(target.name)
                continue
            field = _field_named(descriptor, key)
            # Unknown parameters are ignored (cache busters and the like must not break calls).
            if field is None or field.name in bound or field.type == field.TYPE_MESSAGE:
                continue
            if field.is_repeated:
                _set_from_json(message, field, [_from_text(field, t, key) for t in texts], key)
            else:
                _set_from_json(message, field, _from_text(field, _one(key, texts), key), key)
            bound.add(field.name)


def _field_named(descriptor: Descriptor, key: str) -> FieldDescriptor | None:
    # Both spellings are accepted, as protobuf's JSON parser does: userId and user_id.
    field = descriptor.fields_by_name.get(key)
    if field is None:
        field = next((f for f in descriptor.fields if f.json_name == key), None)
    return field


def _one(key: str, texts: Sequence[str]) -> str:
    if len(texts) != 1:
        raise CallError.invalid(f"{key} must be given once", key)
    return texts[0]


def _alias_value(alias: QueryAlias, text: str) -> str:
    if not _ANY_INTEGER_TEXT.match(text):
        raise CallError.invalid(f"{alias.name} must be a whole number", alias.name)
    digits = text.removeprefix("-").lstrip("0") or "0"
    # Any huge number just means "as many as you allow" (legacy capped it silently too).
    value = alias.cap if len(digits) > len(str(alias.cap)) else min(int(digits), alias.cap)
    if text.startswith("-") or value < alias.minimum:
        raise CallError.invalid(f"{alias.name} must be at least {alias.minimum}", alias.name)
    return str(value)


def _apply_idempotency_key(message: Message, descriptor: Descriptor, key: str | None) -> None:
    field = descriptor.fields_by_name.get(REQUEST_ID_FIELD)
    if key is None or field is None:
        return
    given = getattr(message, REQUEST_ID_FIELD)
    if not given:
        _set_from_json(message, field, key, IDEMPOTENCY_HEADER)
    elif given != key:
        # Two different ids for one request is a client bug; picking one could double-charge.
        raise CallError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{IDEMPOTENCY_HEADER} and {field.json_name} differ; send one, or the same in both",
            REQUEST_ID_MISMATCH,
            {"field": field.name},
        )


def _kind(field: FieldDescriptor) -> str:
    if field.type in _INT_RANGES:
        return "a whole number"
    if field.type == FieldDescriptor.TYPE_STRING:
        return "a string"
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "true or false"
    if field.type in _FLOATS:
        return "a number"
    if field.type == FieldDescriptor.TYPE_BYTES:
        return "a base64 string"
    if field.enum_type is not None:
        return "one of " + ", ".join(value.name for value in field.enum_type.values)
    if field.message_type is not None and field.message_type.full_name == TIMESTAMP:
        return "an RFC 3339 time such as 2030-01-31T00:00:00Z"
    return "an object"


def _wrong(field: FieldDescriptor, shown: str) -> CallError:
    return CallError.invalid(f"{shown} must be {_kind(field)}", field.name)


def _from_text(field: FieldDescriptor, text: str, shown: str) -> Any:
    """Return a path or query string as the field's JSON value: numbers and booleans strictly."""
    if field.type in _INT_RANGES:
        if not _INTEGER_TEXT.match(text):
            raise _wrong(field, shown)
        return int(text)
    if field.type == FieldDescriptor.TYPE_BOOL:
        if text not in ("true", "false"):
            raise _wrong(field, shown)
        return text == "true"
    if field.type in _FLOATS:
        try:
            return float(text)
        except ValueError:
            raise _wrong(field, shown) from None
    # By name only, as the OpenAPI document lists them: protobuf's parser would also take "2".
    if field.enum_type is not None and text not in field.enum_type.values_by_name:
        raise _wrong(field, shown)
    return text


def _set_from_json(message: Message, field: FieldDescriptor, value: Any, shown: str) -> None:
    """Set one field from a JSON value, refusing every value of the wrong JSON type."""
    if value is None:
        # null is "unset" where the field can be unset; elsewhere it is a wrong type.
        if field.has_presence:
            message.ClearField(field.name)
            return
        raise _wrong(field, shown)
    is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
    if field.is_repeated and not is_map:
        if not isinstance(value, list):
            raise CallError.invalid(f"{shown} must be a list", field.name)
        value = [_whole_float_as_int(field, item) for item in value]
        for item in value:
            _check_scalar(field, item, shown)
    elif not is_map:
        value = _whole_float_as_int(field, value)
        _check_scalar(field, value, shown)
    try:
        # The shape is checked; protobuf's own parser does ranges, enums and nested messages.
        json_format.ParseDict({field.name: value}, message, ignore_unknown_fields=False)
    except (json_format.ParseError, ValueError, TypeError):
        raise _wrong(field, shown) from None


def _whole_float_as_int(field: FieldDescriptor, value: Any) -> Any:
    # JSON has one number type: clients whose numbers are doubles send 5 as 5.0, and the legacy
    # engine (JavaScript) read it as 5. 5.5 stays a float and is refused below.
    if field.type in _INT_RANGES and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _check_scalar(field: FieldDescriptor, value: Any, shown: str) -> None:
    if field.type in _INT_RANGES:
        # Whole numbers only: no "5", no 5.5, no true (which Python counts as 1).
        ok = isinstance(value, int) and not isinstance(value, bool)
        low, high = _INT_RANGES[field.type]
        if ok and not low <= value <= high:
            raise CallError.invalid(f"{shown} is out of range ({low} to {high})", field.name)
    elif field.type == FieldDescriptor.TYPE_STRING:
        ok = isinstance(value, str) and _encodable(value)
    elif field.type == FieldDescriptor.TYPE_BOOL:
        ok = isinstance(value, bool)
    elif field.type in _FLOATS:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif field.message_type is not None and field.message_type.full_name == TIMESTAMP:
        ok = isinstance(value, str)  # its form is protobuf's parser's to check
    elif field.type == FieldDescriptor.TYPE_ENUM:
        # By name, as the OpenAPI document says (and as query parameters are): protobuf's
        # parser would also take numbers, and false and true as 0 and 1.
        ok = isinstance(value, str)
    else:
        ok = True  # bytes and messages: protobuf's parser checks them
    if not ok:
        raise _wrong(field, shown)


def _encodable(text: str) -> bool:
    # A lone surrogate ("\ud800" in JSON) is not text protobuf can carry.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
