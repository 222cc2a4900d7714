"""The shim's own routes: the self-description at /, /health and /openapi.json, and their shapes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from typing import Any

from pluct.api.v1 import auth_pb2

from pluct_server.api.http.render import format_timestamp
from pluct_server.api.http.routes import Route, display_template, parse_template

API_TITLE = "Pluct Business Engine API"
_DISTRIBUTION = "pluct-business-engine"


def _builtin(template: str, name: str, summary: str) -> Route:
    return Route("GET", template, parse_template(template), name=name, summary=summary)


DESCRIBE = _builtin("/", "describe", "Describe this API: every route and how to authenticate.")
HEALTH = _builtin(
    "/health", "health", "Tell whether the service can serve: 503 while the database is down."
)
OPENAPI = _builtin(
    "/openapi.json", "openapi", "The OpenAPI 3 document of every route, generated from the protos."
)
METRICS = _builtin(
    "/metrics",
    "metrics",
    "Prometheus metrics of every worker (a key with the metrics:read scope, or the admin secret).",
)
BUILTIN_ROUTES = (DESCRIBE, HEALTH, OPENAPI, METRICS)

# How a caller proves each caller_auth requirement over HTTP.
AUTH_HEADERS = {
    auth_pb2.CALLER_AUTH_ADMIN: ("admin", "Authorization: Bearer <ADMIN_SECRET>"),
    auth_pb2.CALLER_AUTH_WEBHOOK: ("webhook", "x-webhook-secret: <WEBHOOK_SECRET>"),
}


@dataclass(frozen=True)
class ServiceInfo:
    """Name, version and one-line description of the running service."""

    title: str
    version: str
    description: str

    @classmethod
    def installed(cls) -> ServiceInfo:
        """Read version and description from the installed package's metadata."""
        try:
            found = metadata.metadata(_DISTRIBUTION)
            return cls(API_TITLE, found["Version"], found["Summary"] or "")
        except metadata.PackageNotFoundError:
            return cls(API_TITLE, "unknown", "")


def route_key(route: Route) -> str:
    """Return "METHOD /path" as the self-description lists it, e.g. "GET /user/{userId}/balance"."""
    return f"{route.verb} {display_template(route)}"


def endpoints(routes: Sequence[Route]) -> dict[str, str]:
    """Return one entry per route: "METHOD /path": what it does."""
    return {route_key(route): route.summary for route in routes}


def authentication(routes: Sequence[Route]) -> dict[str, Any]:
    """Return, per secret, the header that carries it and the routes that need it."""
    described: dict[str, Any] = {}
    for requirement, (name, header) in AUTH_HEADERS.items():
        needing = [
            route_key(route)
            for route in routes
            if route.rpc is not None and route.rpc.caller_auth == requirement
        ]
        if needing:
            described[name] = {"header": header, "endpoints": needing}
    return described


def self_description(routes: Sequence[Route], info: ServiceInfo) -> dict[str, Any]:
    """Return the body of GET /."""
    return {
        "message": info.title,
        "version": info.version,
        "description": info.description,
        "endpoints": endpoints(routes),
        "authentication": authentication(routes),
    }


def health_body(
    healthy: bool, routes: Sequence[Route], info: ServiceInfo, now: datetime, digits: int
) -> dict[str, Any]:
    """Return the body of GET /health."""
    return {
        "status": "healthy" if healthy else "unhealthy",
        "timestamp": format_timestamp(now, digits),
        "version": info.version,
        "endpoints": endpoints(routes),
    }


def builtin_schemas() -> dict[str, dict[str, Any]]:
    """Return the JSON Schemas of the shim's own answers, by route name."""
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    return {
        DESCRIBE.name: {
            "type": "object",
            "required": ["message", "version", "description", "endpoints", "authentication"],
            "properties": {
                "message": {"type": "string"},
                "version": {"type": "string"},
                "description": {"type": "string"},
                "endpoints": string_map,
                "authentication": {"type": "object"},
            },
        },
        HEALTH.name: {
            "type": "object",
            "required": ["status", "timestamp", "version", "endpoints"],
            "properties": {
                "status": {"type": "string", "enum": ["healthy", "unhealthy"]},
                "timestamp": {"type": "string", "format": "date-time"},
                "version": {"type": "string"},
                "endpoints": string_map,
            },
        },
        OPENAPI.name: {"type": "object", "required": ["openapi", "paths"]},
        METRICS.name: {"type": "string"},
    }
