"""Response messages to the legacy JSON, and the JSON Schema of exactly that output, together."""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from pluct_server.api.http.legacy import LegacyProfile, MessageShape
from pluct_server.api.http.routes import Route

TIMESTAMP = Timestamp.DESCRIPTOR.full_name
_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_INT32_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_SFIXED32,
    }
)
_CAMEL_BOUNDARY = re.compile(r"(?<!^)(?=[A-Z])")


def format_timestamp(moment: datetime, digits: int) -> str:
    """Return `moment` in UTC as 2024-01-01T00:00:00.000Z (with `digits` fraction digits)."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{moment.microsecond:06d}"[:digits]
    return text + "Z"


def enum_prefix(enum: EnumDescriptor) -> str:
    """Return the Buf-style prefix of `enum`'s values: TransactionType -> TRANSACTION_TYPE_."""
    return _CAMEL_BOUNDARY.sub("_", enum.name).upper() + "_"


class Renderer:
    """Prints responses the way the legacy engine did, as the profile declares."""

    def __init__(self, profile: LegacyProfile) -> None:
        self._profile = profile
        self._enum_prefixes: dict[str, str] = {}

    def check(self, routes: list[Route]) -> None:
        """Fail at start, not per request, when the profile names a field the protos lack."""
        for route in routes:
            if route.rpc is None:
                continue
            shape = self._profile.route_shape(route.rpc.method.full_name)
            keys = set(self.message_schema(route.rpc.method.output_type)["properties"])
            wanted = set(shape.keep or ()) | ({shape.count_of} if shape.count_of else set())
            if not wanted <= keys:
                raise ValueError(f"{route.name}: legacy shape names unknown keys {wanted - keys}")
            for descriptor in [
                route.rpc.method.output_type,
                *self.referenced_messages([route]).values(),
            ]:
                message = self._profile.message_shape(descriptor.full_name)
                named = {*(message.fields or ()), *message.rename, *message.null_when_unset}
                unknown = named - set(descriptor.fields_by_name)
                if unknown:
                    raise ValueError(f"{descriptor.full_name}: legacy shape names {unknown}")

    # ---- values -----------------------------------------------------------------------------

    def response(self, route: Route, request: Message, response: Message, now: datetime) -> Any:
        """Return the JSON for one RPC answer on `route`."""
        assert route.rpc is not None
        if route.rpc.response_body:
            field = route.rpc.method.output_type.fields_by_name[route.rpc.response_body]
            return self._field(field, getattr(response, field.name))
        shape = self._profile.route_shape(route.rpc.method.full_name)
        own = self.message(response)
        out: dict[str, Any] = dict(shape.before)
        out.update(own if shape.keep is None else {k: own[k] for k in shape.keep if k in own})
        if shape.count_of is not None:
            out["count"] = len(own[shape.count_of])
        if shape.timestamp:
            out["timestamp"] = format_timestamp(now, self._profile.timestamp_fraction_digits)
        if shape.after:
            fields = {f.name: getattr(request, f.name) for f in request.DESCRIPTOR.fields}
            for key, value in shape.after.items():
                out[key] = value.format_map(fields) if isinstance(value, str) else value
        return out

    def message(self, message: Message) -> dict[str, Any]:
        """Return one message as a JSON object."""
        descriptor = cast(Descriptor, message.DESCRIPTOR)
        shape = self._profile.message_shape(descriptor.full_name)
        out: dict[str, Any] = {}
        for field in _printed_fields(descriptor, shape):
            key = _key(field, shape)
            if field.has_presence and not message.HasField(field.name):
                if field.name in shape.null_when_unset:
                    out[key] = None
                continue
            value = getattr(message, field.name)
            if not self._profile.print_zero_values and not field.has_presence and not value:
                continue
            out[key] = self._field(field, value)
        return out

    def _field(self, field: FieldDescriptor, value: Any) -> Any:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            return {str(k): self._single(value_field, v) for k, v in value.items()}
        if field.is_repeated:
            return [self._single(field, item) for item in value]
        return self._single(field, value)

    def _single(self, field: FieldDescriptor, value: Any) -> Any:
        nested, enum = field.message_type, field.enum_type
        if nested is not None:
            if nested.full_name == TIMESTAMP:
                return format_timestamp(
                    value.ToDatetime(tzinfo=UTC), self._profile.timestamp_fraction_digits
                )
            if nested.file.package.startswith("google.protobuf"):
                return json_format.MessageToDict(value)  # other well-known types, as protobuf
            return self.message(value)
        if enum is not None:
            return self._enum(enum, value)
        if field.type in _INT64_TYPES and not self._profile.int64_as_number:
            return str(value)
        if field.type == FieldDescriptor.TYPE_BYTES:
            return base64.b64encode(value).decode("ascii")
        if isinstance(value, float) and not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return value

    def _enum(self, enum: EnumDescriptor, number: int) -> Any:
        value = enum.values_by_number.get(number)
        if value is None:
            return number
        if not self._profile.short_lowercase_enums:
            return value.name
        return value.name.removeprefix(self._enum_prefix(enum)).lower()

    def _enum_prefix(self, enum: EnumDescriptor) -> str:
        # Once per enum, not once per printed row.
        prefix = self._enum_prefixes.get(enum.full_name)
        if prefix is None:
            prefix = self._enum_prefixes[enum.full_name] = enum_prefix(enum)
        return prefix

    # ---- schemas ----------------------------------------------------------------------------

    def response_schema(self, route: Route) -> dict[str, Any]:
        """Return the JSON Schema of what `response` prints for `route`."""
        assert route.rpc is not None
        output = route.rpc.method.output_type
        if route.rpc.response_body:
            return self._field_schema(output.fields_by_name[route.rpc.response_body])
        shape = self._profile.route_shape(route.rpc.method.full_name)
        own = self.message_schema(output)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for key, value in shape.before.items():
            properties[key] = _constant_schema(value)
            required.append(key)
        keys = list(own["properties"]) if shape.keep is None else list(shape.keep)
        for key in keys:
            properties[key] = own["properties"][key]
            if key in own.get("required", []):
                required.append(key)
        if shape.count_of is not None:
            properties["count"] = {"type": "integer", "minimum": 0}
            required.append("count")
        if shape.timestamp:
            properties["timestamp"] = _timestamp_schema()
            required.append("timestamp")
        for key, value in shape.after.items():
            templated = isinstance(value, str) and "{" in value
            properties[key] = {"type": "string"} if templated else _constant_schema(value)
            required.append(key)
        return _object_schema(properties, required)

    def message_schema(self, descriptor: Descriptor) -> dict[str, Any]:
        """Return the JSON Schema of `message` output for messages of `descriptor`."""
        shape = self._profile.message_shape(descriptor.full_name)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in _printed_fields(descriptor, shape):
            key = _key(field, shape)
            schema = self._field_schema(field)
            if field.has_presence:
                if field.name in shape.null_when_unset:
                    schema = {**schema, "nullable": True}
                    required.append(key)
            elif self._profile.print_zero_values:
                required.append(key)
            properties[key] = schema
        return _object_schema(properties, required)

    def _field_schema(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self._single_schema(value_field)}
        if field.is_repeated:
            return {"type": "array", "items": self._single_schema(field)}
        return self._single_schema(field)

    def _single_schema(self, field: FieldDescriptor) -> dict[str, Any]:
        nested, enum = field.message_type, field.enum_type
        if nested is not None:
            if nested.full_name == TIMESTAMP:
                return _timestamp_schema()
            if nested.file.package.startswith("google.protobuf"):
                return {}
            return {"$ref": f"#/components/schemas/{schema_name(nested)}"}
        if enum is not None:
            # The UNSPECIFIED value (number 0) is never served.
            names = [self._enum(enum, value.number) for value in enum.values if value.number]
            return {"type": "string", "enum": names}
        return scalar_schema(field, int64_as_number=self._profile.int64_as_number)

    def referenced_messages(self, routes: list[Route]) -> dict[str, Descriptor]:
        """Return every message a response schema refers to, by schema name."""
        found: dict[str, Descriptor] = {}
        pending = [route.rpc.method.output_type for route in routes if route.rpc is not None]
        while pending:
            descriptor = pending.pop()
            for field in descriptor.fields:
                nested = field.message_type
                if (
                    nested is None
                    or nested.GetOptions().map_entry
                    or nested.file.package.startswith("google.protobuf")
                ):
                    continue
                if schema_name(nested) not in found:
                    found[schema_name(nested)] = nested
                    pending.append(nested)
        return found


def schema_name(descriptor: Descriptor) -> str:
    """Return the components/schemas name of a message: pluct.admin.v1.User -> admin.v1.User."""
    return descriptor.full_name.removeprefix("pluct.")


def scalar_schema(field: FieldDescriptor, *, int64_as_number: bool = True) -> dict[str, Any]:
    """Return the JSON Schema of a scalar field's JSON value."""
    if field.type in _INT64_TYPES:
        return {"type": "integer", "format": "int64"} if int64_as_number else {"type": "string"}
    if field.type in _INT32_TYPES:
        return {"type": "integer", "format": "int32"}
    if field.type == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return {"type": "number"}
    if field.type == FieldDescriptor.TYPE_BYTES:
        return {"type": "string", "format": "byte"}
    return {"type": "string"}


def _printed_fields(descriptor: Descriptor, shape: MessageShape) -> list[FieldDescriptor]:
    if shape.fields is None:
        return list(descriptor.fields)
    return [descriptor.fields_by_name[name] for name in shape.fields]


def _key(field: FieldDescriptor, shape: MessageShape) -> str:
    return shape.rename.get(field.name) or (field.name if shape.proto_names else field.json_name)


def _timestamp_schema() -> dict[str, Any]:
    return {"type": "string", "format": "date-time"}


def _constant_schema(value: Any) -> dict[str, Any]:
    kind = {bool: "boolean", int: "integer", str: "string"}.get(type(value), "string")
    return {"type": kind, "enum": [value]}


def _object_schema(properties: Mapping[str, Any], required: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": dict(properties)}
    if required:
        schema["required"] = required
    return schema
