"""The OpenAPI document (/schema/openapi.json, over HTTP) describes every operation well
enough for a generated client: a typed success body, every request body's schema, and
each error status the operation can answer, with the error shape. The rules are
generic, so they hold for routes added later too."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
ERROR_BODY = "#/components/schemas/ErrorBody"


@pytest.fixture(scope="module")
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    answer = await client.get("/schema/openapi.json")
    assert answer.status_code == 200, answer.text
    return answer.json()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def json_schema(response_or_body: dict[str, Any]) -> dict[str, Any] | None:
    return response_or_body.get("content", {}).get("application/json", {}).get("schema")


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in schema:
        return schema
    name = schema["$ref"].removeprefix("#/components/schemas/")
    return document["components"]["schemas"][name]


def statuses_it_can_answer(document: dict[str, Any], path: str, operation: dict[str, Any]) -> set[str]:
    """What any operation of this shape can answer, whatever the route."""
    statuses = set()
    security = operation.get("security", document.get("security"))
    if security and any(security):
        statuses.add("401")  # no, expired or foreign token
    if operation.get("parameters"):
        statuses.add("400")  # a parameter of the wrong type or out of its bounds
    if "{" in path:
        statuses.add("404")  # no such resource, or another user's
    if "requestBody" in operation:
        statuses |= {"400", "413", "415"}  # malformed, too big, wrong Content-Type
    if "/admin/" in path:
        statuses.add("403")  # a plain user's token
    if path.startswith("/api/"):
        statuses.add("503")  # PostgreSQL or Redis unreachable
    return statuses


def test_the_document_lists_the_api(document: dict[str, Any]) -> None:
    listed = {(method, path) for method, path, _ in operations(document)}
    assert {
        ("POST", "/api/v1/orders"),
        ("GET", "/api/v1/transactions"),
        ("POST", "/api/v1/auth/token"),
    } <= listed
    assert len(listed) >= 16
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids)), "a generated client names each method by its operationId"


def test_every_operation_has_a_typed_success_response(document: dict[str, Any]) -> None:
    """A body with a schema (JSON, or say text for a metrics page), or 204 and no body."""
    missing = []
    for method, path, operation in operations(document):
        successes = {s: r for s, r in operation["responses"].items() if s.startswith("2")}
        typed = [
            s == "204" or any(c.get("schema") for c in r.get("content", {}).values())
            for s, r in successes.items()
        ]
        if not successes or not all(typed):
            missing.append(f"{method} {path}")
    assert missing == []


def test_every_request_body_has_a_schema_and_json_ones_refuse_unknown_fields(
    document: dict[str, Any],
) -> None:
    """JSON bodies answer 400 for an unknown field, so their schema says so. (The OAuth2
    token form ignores unknown parameters, as RFC 6749 section 3.2 requires.)"""
    bad = []
    for method, path, operation in operations(document):
        if "requestBody" not in operation:
            continue
        for media_type, body in operation["requestBody"]["content"].items():
            schema = resolve(document, body.get("schema", {}))
            strict = schema.get("additionalProperties") is False
            if (
                schema.get("type") != "object"
                or not schema.get("properties")
                or (media_type.endswith("json") and not strict)
            ):
                bad.append(f"{method} {path} ({media_type}): {schema}")
    assert bad == []


def test_every_error_an_operation_can_answer_is_declared_with_the_error_shape(
    document: dict[str, Any],
) -> None:
    undeclared, misshapen = [], []
    for method, path, operation in operations(document):
        responses = operation["responses"]
        for status in sorted(statuses_it_can_answer(document, path, operation) - set(responses)):
            undeclared.append(f"{method} {path}: {status}")
        success_schemas = [json_schema(r) for s, r in responses.items() if s.startswith("2")]
        for status, response in responses.items():
            if status[0] in "45":
                schema = json_schema(response)
                # /ready answers its own body with 503; every other error is ErrorBody.
                if schema != {"$ref": ERROR_BODY} and schema not in success_schemas:
                    misshapen.append(f"{method} {path}: {status} {schema}")
                if not response.get("description"):
                    misshapen.append(f"{method} {path}: {status} has no description")
    assert undeclared == []
    assert misshapen == []


def test_the_error_shape_is_the_one_every_error_uses(document: dict[str, Any]) -> None:
    body = resolve(document, {"$ref": ERROR_BODY})
    assert body["required"] == ["error"]
    detail = resolve(document, body["properties"]["error"])
    assert set(detail["properties"]) == {"code", "message", "details"}
    assert set(detail["required"]) == {"code", "message"}


async def test_a_declared_error_is_what_the_server_sends(client: httpx.AsyncClient) -> None:
    """The declared shape is the real one: a 415 from a JSON route, field for field."""
    answer = await client.post(
        "/api/v1/auth/register", content=b"email=x", headers={"Content-Type": "text/plain"}
    )
    assert answer.status_code == 415
    assert answer.json() == {
        "error": {
            "code": "unsupported_media_type",
            "message": "send the body as application/json",
            "details": {"expected": "application/json"},
        }
    }
