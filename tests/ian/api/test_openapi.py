"""The OpenAPI document: every JSON answer has a schema, every reference resolves, and what the
routes actually answer validates against what the document says."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from jsonschema import Draft202012Validator

from ian.api.auth import AdminGuard, require_admin
from ian.api.deps import get_node
from ian.api.routes import ROUTERS

pytestmark = pytest.mark.anyio

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method, op


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    target: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(target, dict) and part in target, f"{ref} does not resolve"
        target = target[part]
    return target


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """Validates against ``schema``, its ``#/components/...`` references resolved in ``doc``."""
    return Draft202012Validator({**doc, **schema})


async def test_every_json_answer_has_a_schema(api) -> None:
    r = await api.client.get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1")
    seen = 0
    for path, method, op in operations(doc):
        ok = {code: resp for code, resp in op["responses"].items() if code.startswith("2")}
        assert ok, f"{method} {path} documents no success answer"
        for code, resp in ok.items():
            content = resp.get("content")
            assert content, f"{method} {path} {code} documents no body"
            for media_type, body in content.items():
                schema = body.get("schema")
                assert schema, f"{method} {path} {code} {media_type} has no schema"
                if media_type == "application/json":
                    target = resolve(doc, schema["$ref"]) if "$ref" in schema else schema
                    assert target.get("type") == "object" and target.get("properties"), (
                        f"{method} {path} {code}: the JSON body is not a documented object"
                    )
                    seen += 1
    assert seen >= 20  # every JSON route of the API, not a vacuous walk


async def test_the_document_is_well_formed(api) -> None:
    doc = (await api.client.get("/api/v1/openapi.json")).json()
    ids = [op["operationId"] for _, _, op in operations(doc)]
    assert len(ids) == len(set(ids)), "operation ids must be unique"
    for ref in refs(doc):
        resolve(doc, ref)
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)  # raises SchemaError naming the problem
    assert "ContributeRequest" in doc["components"]["schemas"]
    log_entry = doc["components"]["schemas"]["LogEntry"]["properties"]
    for field in ("contribution_hash", "pack_hash"):
        assert log_entry[field]["type"] == "string"
        assert log_entry[field]["pattern"] == "^[0-9a-f]*$"
        assert "contentMediaType" not in log_entry[field] and "format" not in log_entry[field]


async def test_answers_validate_against_the_document(api, packs) -> None:
    """What the routes answer is what the document says, field for field."""
    doc = (await api.client.get("/api/v1/openapi.json")).json()
    for n in range(2):
        r = await api.contribute(packs.body(n))
        assert r.status_code == 200, r.text
    goal = packs.demo_goal
    admin = {"authorization": f"Bearer {api.node.admin_token}"}
    calls = [
        ("get", "/api/v1/status", "/api/v1/status", None),
        ("get", "/api/v1/status/{goal_id}", f"/api/v1/status/{goal}", None),
        ("get", "/api/v1/goals", "/api/v1/goals", None),
        ("get", "/api/v1/leaderboard/{goal_id}", f"/api/v1/leaderboard/{goal}", None),
        ("get", "/api/v1/log/{goal_id}", f"/api/v1/log/{goal}", None),
        ("get", "/api/v1/proof/{goal_id}/{log_index}", f"/api/v1/proof/{goal}/1", None),
        ("get", "/api/v1/policy/{goal_id}", f"/api/v1/policy/{goal}", None),
        ("get", "/api/v1/peers", "/api/v1/peers?all=1", None),
        ("get", "/api/v1/p2p/limits", "/api/v1/p2p/limits", None),
        ("get", "/api/v1/tau", "/api/v1/tau", None),
        ("get", "/readyz", "/readyz?verbose=1", None),
        ("post", "/api/v1/admin/log-level", "/api/v1/admin/log-level", {"level": "INFO"}),
        ("post", "/api/v1/admin/p2p/limits", "/api/v1/admin/p2p/limits", {"max_peers": 9}),
        ("post", "/api/v1/admin/certs/reload", "/api/v1/admin/certs/reload", None),
    ]
    for method, template, url, body in calls:
        r = await api.client.request(method, url, json=body, headers=admin)
        code = str(r.status_code)
        documented = doc["paths"][template][method]["responses"][code]
        schema = documented["content"]["application/json"]["schema"]
        errors = [e.message for e in validator(doc, schema).iter_errors(r.json())]
        assert not errors, f"{method} {url}: {errors}"
        assert validator(doc, schema).is_valid({"unexpected": 1}) is False


async def test_an_error_answer_validates_against_the_error_schema(api) -> None:
    doc = (await api.client.get("/api/v1/openapi.json")).json()
    r = await api.client.get("/api/v1/status/NO_SUCH_GOAL")
    assert r.status_code == 404
    schema = doc["paths"]["/api/v1/status/{goal_id}"]["get"]["responses"]["404"]["content"]
    assert validator(doc, schema["application/json"]["schema"]).is_valid(r.json())


def api_routes() -> list[APIRoute]:
    routes = [r for router in ROUTERS for r in router.routes]
    assert all(isinstance(r, APIRoute) for r in routes)
    return [r for r in routes if isinstance(r, APIRoute)]


async def test_the_app_serves_exactly_the_routers_routes(api) -> None:
    doc = (await api.client.get("/api/v1/openapi.json")).json()
    served = {(path, method) for path, method, _ in operations(doc)}
    declared = {(r.path, m.lower()) for r in api_routes() for m in r.methods}
    assert served == declared
    assert len(declared) >= 25


def test_admin_routes_are_exactly_those_the_guard_covers() -> None:
    """AdminGuard checks auth before the body is read for /api/v1/admin/ paths; the ADMIN
    dependency must be on every route there and on no route elsewhere."""
    for route in api_routes():
        calls = {d.call for d in _all_dependencies(route.dependant)}
        assert (require_admin in calls) is route.path.startswith(AdminGuard.PREFIX), route.path


def test_handlers_get_the_node_through_the_dependency() -> None:
    """No handler digs the node out of the request: only contribute takes the Request (it
    reads its body by hand), and it too gets the node from NodeDep."""
    takes_request = {r.path for r in api_routes() if r.dependant.request_param_name}
    assert takes_request == {"/api/v1/contribute"}
    with_node = {
        r.path for r in api_routes() if get_node in {d.call for d in _all_dependencies(r.dependant)}
    }
    assert "/api/v1/contribute" in with_node and len(with_node) >= 20


async def test_every_admin_route_refuses_before_reading_the_body(api, error_of) -> None:
    admin_routes = [r for r in api_routes() if r.path.startswith(AdminGuard.PREFIX)]
    assert len(admin_routes) >= 10
    for route in admin_routes:
        for method in route.methods:
            r = await api.client.request(
                method,
                route.path,
                content=b"{not json",
                headers={"content-type": "application/json"},
            )
            error_of(r, 401, "unauthorized")


def _all_dependencies(dependant: Any) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub
        yield from _all_dependencies(sub)
