"""GET /openapi.json documents exactly the routes served, derived from the protos' annotations."""

from __future__ import annotations

import re

import pytest
from google.api import annotations_pb2  # type: ignore[import-untyped]

from pluct_server.app.server import SERVICES
from tests.http_support import ADMIN_HEADERS, WEBHOOK_HEADERS, call

BUILTIN = {("GET", "/"), ("GET", "/health"), ("GET", "/openapi.json"), ("GET", "/metrics")}
VERBS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def annotated_routes() -> set[tuple[str, str]]:
    """Every google.api.http binding of the served services, read here independently."""
    routes = set()
    for service in SERVICES:
        for method in service.methods:
            rule = method.GetOptions().Extensions[annotations_pb2.http]
            verb = rule.WhichOneof("pattern")
            if verb is None:
                continue
            path = json_named(getattr(rule, verb), method.input_type.fields_by_name)
            routes.add((verb.upper(), path))
    return routes


def json_named(template: str, fields) -> str:
    """/user/{user_id}/balance -> /user/{userId}/balance, as callers write paths."""
    return re.sub(r"\{(\w+)\}", lambda m: "{" + fields[m.group(1)].json_name + "}", template)


def documented(document) -> set[tuple[str, str]]:
    return {
        (verb.upper(), path)
        for path, operations in document["paths"].items()
        for verb in operations
        if verb.upper() in VERBS
    }


@pytest.fixture(scope="module")
async def document(http):
    reply = await call(http, "GET", "/openapi.json")
    assert reply.status == 200
    return reply.body


async def test_document_lists_every_annotated_rpc_and_the_shims_own_routes(document):
    assert document["openapi"].startswith("3.")
    assert documented(document) == annotated_routes() | BUILTIN


async def test_self_description_lists_the_same_routes(http, document):
    described = (await call(http, "GET", "/")).body["endpoints"]

    assert {tuple(key.split(" ", 1)) for key in described} == documented(document)


async def test_every_documented_operation_is_served(http, document):
    for verb, path in sorted(documented(document)):
        concrete = re.sub(r"\{\w+\}", "someone", path)
        reply = await call(
            http,
            verb,
            concrete,
            json_body={} if verb == "POST" else None,
            headers={**ADMIN_HEADERS, **WEBHOOK_HEADERS},
        )
        # A route that is not served answers 404 NOT_FOUND; a served one may still find no
        # such thing (WEBHOOK_ENDPOINT_NOT_FOUND, ...), which is a reason of its own.
        route_missing = reply.status == 404 and reply.body.get("reason") == "NOT_FOUND"
        assert reply.status != 405 and not route_missing, (verb, path, reply.body)


async def test_undocumented_methods_are_405_with_the_documented_allow(http, document):
    for path, operations in document["paths"].items():
        allowed = {verb.upper() for verb in operations}
        concrete = re.sub(r"\{\w+\}", "someone", path)
        for verb in set(VERBS) - allowed:
            reply = await call(http, verb, concrete, headers=ADMIN_HEADERS)
            assert reply.status == 405, (verb, path)
            shown = {v.strip() for v in reply.headers["Allow"].split(",")} - {"HEAD"}
            assert shown == allowed


async def test_operations_document_their_json_schemas_and_statuses(document):
    for operations in document["paths"].values():
        for operation in operations.values():
            assert operation["operationId"] and operation["summary"]
            assert "200" in operation["responses"]
            for status, response in operation["responses"].items():
                # Every answer is JSON but a successful scrape, which is Prometheus text.
                media = (
                    "text/plain"
                    if (operation["operationId"], status)
                    == (
                        "metrics",
                        "200",
                    )
                    else "application/json"
                )
                assert "schema" in response["content"][media]


async def test_legacy_shapes_are_what_the_document_says(document):
    paths = document["paths"]
    created = paths["/user/create"]["post"]["responses"]["200"]["content"]["application/json"]
    assert created["schema"]["properties"]["success"] == {"type": "boolean", "enum": [True]}
    assert created["schema"]["properties"]["initialBalance"]["type"] == "integer"
    users = paths["/admin/users"]["get"]["responses"]["200"]["content"]["application/json"]
    assert users["schema"]["type"] == "array"
    row = document["components"]["schemas"]["admin.v1.User"]
    assert list(row["properties"]) == [
        "user_id",
        "transaction_count",
        "total_spent",
        "current_credits",
    ]
    transaction = document["components"]["schemas"]["credit.v1.Transaction"]
    assert transaction["properties"]["reason"]["nullable"] is True
    # The legacy types, then those the contract's additions name (expiring grants, refunds).
    assert transaction["properties"]["type"]["enum"] == [
        "user_creation",
        "add_webhook",
        "admin_add",
        "spend",
        "expiration",
        "refund",
    ]
    vend = paths["/vend-token"]["post"]["responses"]
    assert {"200", "400", "403"} <= set(vend)
    assert "401" in paths["/add-credits"]["post"]["responses"]
    assert paths["/admin/users"]["get"]["security"] == [{"adminBearer": []}]
    limit = [
        p for p in paths["/user/{userId}/transactions"]["get"]["parameters"] if p["name"] == "limit"
    ]
    assert limit and limit[0]["schema"]["minimum"] == 1
