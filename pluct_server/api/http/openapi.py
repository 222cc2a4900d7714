"""The OpenAPI 3 document of the routes served, generated from the same descriptors and profile."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from pluct.api.v1 import auth_pb2

from pluct_server.api.http.describe import ServiceInfo, builtin_schemas
from pluct_server.api.http.legacy import LegacyProfile
from pluct_server.api.http.render import TIMESTAMP, Renderer, scalar_schema
from pluct_server.api.http.routes import Route, Variable, display_template
from pluct_server.api.http.schema_rules import is_required, list_schema, rules_schema
from pluct_server.api.http.status import possible_statuses
from pluct_server.api.http.transcode import IDEMPOTENCY_HEADER, REQUEST_ID_FIELD

# Accepted but not advertised: legacy shapes carry no next_page_token, so over HTTP a caller
# never holds a token to pass. (A field with a legacy alias is advertised under the alias.)
_UNADVERTISED_QUERY = frozenset({"page_token"})
_ERRORS_CLAUSE = re.compile(r"Errors:(.*)\Z", re.DOTALL)
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_REASONS = {
    400: "Invalid request",
    401: "Missing or wrong credentials",
    403: "Refused",
    408: "The body did not arrive in time",
    409: "Already exists",
    413: "Request body too large",
    415: "The body is declared as something other than JSON",
    429: "Too many requests; retry after Retry-After seconds",
    500: "Internal error",
    503: "Unavailable; retry later",
    504: "The service did not answer in time",
}
_SECURITY: dict[int, list[dict[str, list[str]]]] = {
    auth_pb2.CALLER_AUTH_ADMIN: [{"adminBearer": []}],
    auth_pb2.CALLER_AUTH_WEBHOOK: [{"webhookSecret": []}],
}


def openapi_document(
    routes: Sequence[Route], profile: LegacyProfile, renderer: Renderer, info: ServiceInfo
) -> dict[str, Any]:
    """Return the OpenAPI 3.0 document for `routes` as the shim serves them."""
    paths: dict[str, dict[str, Any]] = {}
    builtins = builtin_schemas()
    for route in routes:
        path = paths.setdefault(display_template(route), {})
        if route.rpc is None:
            path[route.verb.lower()] = _builtin_operation(route, builtins[route.name])
        else:
            path[route.verb.lower()] = _rpc_operation(route, profile, renderer)
    schemas: dict[str, Any] = {"Error": _error_schema()}
    for name, descriptor in sorted(renderer.referenced_messages(list(routes)).items()):
        schemas[name] = renderer.message_schema(descriptor)
    return {
        "openapi": "3.0.3",
        "info": {"title": info.title, "version": info.version, "description": info.description},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "adminBearer": {"type": "http", "scheme": "bearer"},
                "webhookSecret": {"type": "apiKey", "in": "header", "name": "x-webhook-secret"},
            },
        },
    }


def _builtin_operation(route: Route, schema: dict[str, Any]) -> dict[str, Any]:
    if route.name == "metrics":
        return _metrics_operation(route)
    responses = {"200": _json_response("OK", schema)}
    if route.name == "health":
        responses["503"] = _json_response("Unhealthy: the database is unreachable", schema)
    return {"operationId": route.name, "summary": route.summary, "responses": responses}


def _metrics_operation(route: Route) -> dict[str, Any]:
    """Describe /metrics: Prometheus text for a scraper with the key, JSON errors otherwise."""
    text = {"text/plain": {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {"200": {"description": "Prometheus text format", "content": text}}
    for status in (401, 403, 429):
        responses[str(status)] = _json_response(_REASONS.get(status, "Error"), _ERROR_REF)
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "responses": responses,
    }
    security = _SECURITY.get(auth_pb2.CALLER_AUTH_ADMIN)
    if security:
        operation["security"] = security
    return operation


def _rpc_operation(route: Route, profile: LegacyProfile, renderer: Renderer) -> dict[str, Any]:
    assert route.rpc is not None
    request = route.rpc.method.input_type
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "description": route.description,
        "tags": [route.rpc.method.containing_service.name],
        "parameters": _parameters(route, request, profile),
    }
    if route.rpc.body == "*":
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _request_schema(request, route)}},
        }
    if not operation["parameters"]:
        del operation["parameters"]
    responses = {"200": _json_response("OK", renderer.response_schema(route))}
    for status in sorted(_error_statuses(route)):
        responses[str(status)] = _json_response(_REASONS.get(status, "Error"), _ERROR_REF)
    operation["responses"] = responses
    security = _SECURITY.get(route.rpc.caller_auth)
    if security:
        operation["security"] = security
    return operation


def _parameters(route: Route, request: Descriptor, profile: LegacyProfile) -> list[dict[str, Any]]:
    assert route.rpc is not None
    parameters: list[dict[str, Any]] = []
    for part in route.segments:
        if isinstance(part, Variable):
            field = request.fields_by_name[part.field]
            parameters.append(
                {
                    "name": field.json_name,
                    "in": "path",
                    "required": True,
                    "schema": _field_schema(field),
                }
            )
    bound = set(route.variables)
    if not route.rpc.body:
        aliases = {a.field: a for a in profile.query_aliases if a.field in request.fields_by_name}
        for field in request.fields:
            if (
                field.name in bound
                or field.name in _UNADVERTISED_QUERY
                or field.type == FieldDescriptor.TYPE_MESSAGE
            ):
                continue
            alias = aliases.get(field.name)
            if alias is None:
                schema = _field_schema(field)
                parameters.append({"name": field.json_name, "in": "query", "schema": schema})
                continue
            # Larger numbers are fine: the service caps them (no maximum to state).
            parameters.append(
                {
                    "name": alias.name,
                    "in": "query",
                    "description": f"How many at most (the legacy name of {field.json_name}).",
                    "schema": {"type": "integer", "minimum": alias.minimum},
                }
            )
    if REQUEST_ID_FIELD in request.fields_by_name:
        parameters.append(
            {
                "name": IDEMPOTENCY_HEADER,
                "in": "header",
                "description": "The requestId (AIP-155): a retry with the same key returns the "
                "first answer and changes nothing. When the body has a requestId too, the two "
                "must be equal.",
                "schema": _field_schema(request.fields_by_name[REQUEST_ID_FIELD]),
            }
        )
    return parameters


def _request_schema(request: Descriptor, route: Route) -> dict[str, Any]:
    properties = {}
    required = []
    for field in request.fields:
        if field.name in route.variables:
            continue
        properties[field.json_name] = _field_schema(field)
        if field.has_presence:
            properties[field.json_name]["nullable"] = True  # null means "not given"
        elif is_required(field):
            required.append(field.json_name)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _field_schema(field: FieldDescriptor) -> dict[str, Any]:
    if field.message_type is not None and field.message_type.full_name == TIMESTAMP:
        # Protobuf's JSON mapping writes a Timestamp as an RFC 3339 string.
        return {"type": "string", "format": "date-time"}
    schema = scalar_schema(field)
    # The limits are the protos' buf.validate annotations, which the service enforces.
    schema.update(rules_schema(field))
    if field.enum_type is not None:
        # A request names an enum value as protobuf's JSON mapping does: by its full name.
        schema["enum"] = [value.name for value in field.enum_type.values]
    if field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
        schema.setdefault("maximum", 2**31 - 1)
    if field.is_repeated:
        return {"type": "array", "items": schema, **list_schema(field)}
    return schema


def _error_statuses(route: Route) -> set[int]:
    assert route.rpc is not None
    # The status codes each RPC's comment lists, through the one status table.
    listed = _ERRORS_CLAUSE.search(route.description)
    names = set(re.findall(r"\b[A-Z_]+\b", listed.group(1))) if listed else set()
    codes = {code for code in grpc.StatusCode if code.name in names}
    statuses = {status for code in codes for status in possible_statuses(code)}
    # The shim's own: bad JSON, an address over its share, a dead channel, a deadline.
    statuses.update({400, 429, 500, 503, 504})
    if route.rpc.caller_auth != auth_pb2.CALLER_AUTH_PUBLIC:
        statuses.add(401)
    if route.rpc.body:
        statuses.update({408, 413, 415})
    return statuses


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error", "code"],
        "properties": {
            "error": {"type": "string"},
            "code": {"type": "integer"},
            "reason": {"type": "string"},
            "field": {"type": "string"},
            "detail": {"type": "string"},
        },
    }
