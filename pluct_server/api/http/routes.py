"""HTTP routes read from the google.api.http annotations of the served RPCs, and matching them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from pluct.api.v1 import auth_pb2

from pluct_server.api.http.comments import Comments

_FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")
# The summary of an RPC is its comment up to the status codes it lists.
_ERRORS_CLAUSE = re.compile(r"\s*Errors:.*\Z", re.DOTALL)


@dataclass(frozen=True)
class Variable:
    """A path segment bound to a request field, `{field}` in a template."""

    field: str


Segment = str | Variable


@dataclass(frozen=True)
class RpcBinding:
    """What a route calls: the RPC and how its request and response meet HTTP."""

    method: MethodDescriptor
    body: str
    response_body: str
    # Who may call the route without an API key (the access option's `legacy`).
    caller_auth: int

    @property
    def path(self) -> str:
        """Return the gRPC method path, e.g. /pluct.credit.v1.CreditService/GetBalance."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"


@dataclass(frozen=True)
class Route:
    """One HTTP verb and path template, served by an RPC or by the shim itself."""

    verb: str
    template: str
    segments: tuple[Segment, ...]
    name: str
    summary: str
    description: str = ""
    rpc: RpcBinding | None = None
    literals: int = field(init=False)

    def __post_init__(self) -> None:
        # More literal segments means more specific: /a/b wins over /a/{x} for "/a/b".
        object.__setattr__(self, "literals", sum(isinstance(part, str) for part in self.segments))

    @property
    def variables(self) -> tuple[str, ...]:
        """Return the request fields bound by the path, in template order."""
        return tuple(part.field for part in self.segments if isinstance(part, Variable))

    def match(self, parts: Sequence[str]) -> dict[str, str] | None:
        """Return the path variables when `parts` (decoded segments) fit this template."""
        if len(parts) != len(self.segments):
            return None
        values: dict[str, str] = {}
        for expected, actual in zip(self.segments, parts, strict=True):
            if isinstance(expected, Variable):
                values[expected.field] = actual
            elif expected != actual:
                return None
        return values


def parse_template(template: str) -> tuple[Segment, ...]:
    """Split a google.api.http path template into literals and single-segment variables."""
    if not template.startswith("/"):
        raise ValueError(f"path template {template!r} must start with /")
    if template == "/":
        return ()
    segments: list[Segment] = []
    for raw in template[1:].split("/"):
        if raw.startswith("{") and raw.endswith("}"):
            name, _, pattern = raw[1:-1].partition("=")
            # Only what our protos use; anything richer fails at start rather than misroutes.
            if not _FIELD_NAME.match(name) or pattern not in ("", "*"):
                raise ValueError(f"unsupported path variable {raw!r} in {template!r}")
            segments.append(Variable(name))
        elif raw and not any(ch in raw for ch in "{}*:"):
            segments.append(raw)
        else:
            raise ValueError(f"unsupported path segment {raw!r} in {template!r}")
    return tuple(segments)


def display_template(route: Route) -> str:
    """Return the template with JSON field names, as callers write it: /user/{userId}/balance."""
    if route.rpc is None:
        return route.template
    fields = route.rpc.method.input_type.fields_by_name
    parts = [
        f"{{{fields[part.field].json_name}}}" if isinstance(part, Variable) else part
        for part in route.segments
    ]
    return "/" + "/".join(parts)


def rpc_routes(services: Iterable[ServiceDescriptor], comments: Comments) -> list[Route]:
    """Return a route for every google.api.http binding of every RPC of `services`."""
    routes = []
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            rule = options.Extensions[annotations_pb2.http]
            comment = comments.get(method.full_name)
            auth = options.Extensions[auth_pb2.access].legacy
            for binding in (rule, *rule.additional_bindings):
                routes.append(_route(method, binding, auth, comment))
    return routes


def _route(method: MethodDescriptor, rule: http_pb2.HttpRule, auth: int, comment: str) -> Route:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise ValueError(f"{method.full_name} has an http rule without a verb")
    if kind == "custom":
        verb, template = rule.custom.kind.upper(), rule.custom.path
    else:
        verb, template = kind.upper(), getattr(rule, kind)
    segments = parse_template(template)
    request_fields = method.input_type.fields_by_name
    response_fields = method.output_type.fields_by_name
    for part in segments:
        if isinstance(part, Variable) and part.field not in request_fields:
            raise ValueError(f"{template!r} names {part.field!r}, not a field of the request")
    if rule.body not in ("", "*") and rule.body not in request_fields:
        raise ValueError(f"{method.full_name}: body {rule.body!r} is not a request field")
    if rule.response_body and rule.response_body not in response_fields:
        raise ValueError(f"{method.full_name}: response_body {rule.response_body!r} is unknown")
    summary = _ERRORS_CLAUSE.sub("", comment) or method.name
    return Route(
        verb=verb,
        template=template,
        segments=segments,
        name=f"{method.containing_service.name}_{method.name}",
        summary=summary,
        description=comment,
        rpc=RpcBinding(method, rule.body, rule.response_body, auth),
    )


class NoRoute(Exception):
    """No route has this path."""


class WrongMethod(Exception):
    """Routes have this path, but none for this verb."""

    def __init__(self, allowed: Sequence[str]) -> None:
        super().__init__(", ".join(allowed))
        self.allowed = allowed


class Router:
    """Finds the route for a verb and a decoded path."""

    def __init__(self, routes: Sequence[Route]) -> None:
        seen: dict[tuple[str, tuple[str | None, ...]], str] = {}
        for route in routes:
            shape = tuple(None if isinstance(p, Variable) else p for p in route.segments)
            if (route.verb, shape) in seen:
                raise ValueError(f"{route.name} and {seen[route.verb, shape]} share a route")
            seen[route.verb, shape] = route.name
        self.routes = tuple(routes)
        self._admin_prefixes = _admin_prefixes(self.routes)

    def resolve(self, verb: str, parts: Sequence[str]) -> tuple[Route, dict[str, str]]:
        """Return the most specific route for `verb` and its path variables."""
        matches = [
            (route, values) for route in self.routes if (values := route.match(parts)) is not None
        ]
        if not matches:
            raise NoRoute()
        # HEAD is GET without the body, as HTTP has it (and as the legacy engine answered).
        wanted = "GET" if verb == "HEAD" else verb
        fitting = [match for match in matches if match[0].verb == wanted]
        if not fitting:
            allowed = sorted({route.verb for route, _ in matches})
            if "GET" in allowed:
                allowed.append("HEAD")
            raise WrongMethod(allowed)
        return max(fitting, key=lambda match: match[0].literals)

    def admin_only(self, parts: Sequence[str]) -> bool:
        """Tell whether `parts` lies under a prefix that only admin routes use (e.g. /admin)."""
        return bool(parts) and parts[0] in self._admin_prefixes


def _admin_prefixes(routes: Sequence[Route]) -> frozenset[str]:
    # A first segment used by admin routes and by nothing else: everything below it is admin's,
    # so an unknown /admin/... path says "401" to strangers instead of revealing what exists.
    admin: set[str] = set()
    other: set[str] = set()
    for route in routes:
        first = route.segments[0] if route.segments else ""
        is_admin = route.rpc is not None and route.rpc.caller_auth == auth_pb2.CALLER_AUTH_ADMIN
        if isinstance(first, Variable):
            if not is_admin:
                return frozenset()  # a public /{x}/... route could be shadowed; claim nothing
            continue
        (admin if is_admin else other).add(first)
    return frozenset(admin - other)
