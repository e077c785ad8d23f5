"""agent_server/openapi.py: ``GET /openapi.json`` is a valid OpenAPI 3.1 document of every
HTTP route, its references resolve, and it follows the app's prefix and settings."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import jsonschema
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient

import agent_server
from agent_server import openapi
from agent_server.app import create_app
from agent_server.auth import OPEN_PATHS
from agent_server.cursors import BadCursor, parse_id, parse_run_cursor, parse_thread_cursor
from agent_server.schemas import RunRequest
from tests.conftest import test_settings

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def document_of(**settings: Any) -> dict[str, Any]:
    app = create_app(test_settings(**settings))
    with TestClient(app) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return document_of()


def meta_schema() -> dict[str, Any] | None:
    """OpenAPI 3.1's own JSON schema, from whichever package ships it here."""
    try:
        from openapi_spec_validator.schemas import schema_v31  # type: ignore[import-not-found]

        return dict(schema_v31)
    except ImportError:
        pass
    try:
        from schemathesis.specs.openapi.definitions import OPENAPI_31

        return dict(OPENAPI_31)
    except ImportError:
        return None


def test_valid_openapi_31(document: dict[str, Any]) -> None:
    schema = meta_schema()
    if schema is not None:
        validator = jsonschema.Draft202012Validator(schema)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
        assert not errors, errors[:5]
        assert list(validator.iter_errors({**document, "info": {}}))  # the check can fail
    # The structure checked by hand too, so this test means something without either.
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] and document["info"]["version"]
    ids = []
    for path, item in document["paths"].items():
        assert path.startswith("/")
        for method, operation in item.items():
            assert method in METHODS
            ids.append(operation["operationId"])
            assert operation["summary"] and operation["responses"]
            for status, response in operation["responses"].items():
                assert re.fullmatch(r"[1-5](?:\d\d|XX)", status) and response["description"]
            declared = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), path
    assert len(ids) == len(set(ids))


def routes_of(routes: list[Any], prefix: str = "") -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Mount):
            found |= routes_of(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            found |= {(m.lower(), prefix + route.path) for m in route.methods or ()} - {
                ("head", prefix + route.path)
            }
        else:
            assert isinstance(route, WebSocketRoute)  # /ws: described, not an operation
    return found


def test_every_route_appears(document: dict[str, Any]) -> None:
    app = create_app(test_settings())
    documented = {(m, p) for p, item in document["paths"].items() for m in item}
    assert documented == routes_of(list(app.routes))
    assert ("post", "/langgraph/threads/{thread_id}/runs/stream") in documented
    assert ("post", "/ag-ui/{graph}") in documented and ("get", "/openapi.json") in documented


def test_a_route_without_an_entry_fails_the_build() -> None:
    app = create_app(test_settings())

    async def nothing(request: Any) -> Any:
        return None

    routes = [*app.routes, Route("/undocumented", nothing)]
    with pytest.raises(LookupError, match="/undocumented"):
        openapi.build_document(routes, test_settings(), "")


def refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def test_every_ref_resolves(document: dict[str, Any]) -> None:
    found = set(refs(document))
    assert "#/components/schemas/RunAgentInput" in found  # and its messages' models
    for ref in found:
        assert ref.startswith("#/")
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[part]
        assert isinstance(target, dict), ref


def test_bodies_and_errors_are_the_models(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert (
        schemas["RunRequest"]["properties"]
        == RunRequest.model_json_schema(ref_template=openapi.REF)["properties"]
    )
    assert "threadId" in schemas["RunAgentInput"]["properties"]  # AG-UI's camelCase wire names
    post = document["paths"]["/runs/stream"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RunRequest"
    }
    assert "text/event-stream" in post["responses"]["200"]["content"]
    assert set(schemas["ErrorBody"]["required"]) == {"code", "message"}
    assert set(schemas["LangGraphError"]["required"]) == {"detail", "code"}
    native = post["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    lg = document["paths"]["/langgraph/threads"]["post"]["responses"]["422"]
    assert native.endswith("/ErrorBody")
    assert lg["content"]["application/json"]["schema"]["$ref"].endswith("/LangGraphError")


def errors_match(document: dict[str, Any], ref: str, body: Any) -> None:
    jsonschema.validate(body, {"$ref": ref, "components": document["components"]})


def test_real_errors_have_the_documented_shapes() -> None:
    app = create_app(test_settings())
    with TestClient(app) as client:
        document = client.get("/openapi.json").json()
        native = client.get("/runs/nope").json()
        invalid = client.post("/runs", json={"graph": "agent"}).json()
        lg = client.get("/langgraph/threads/nope").json()
        bad_id = client.get("/langgraph/threads/a%00b").json()
    errors_match(document, "#/components/schemas/ErrorBody", native)
    errors_match(document, "#/components/schemas/ErrorBody", invalid)
    errors_match(document, "#/components/schemas/LangGraphError", lg)
    errors_match(document, "#/components/schemas/LangGraphError", bad_id)
    with pytest.raises(jsonschema.ValidationError):
        errors_match(document, "#/components/schemas/LangGraphError", native)


def test_patterns_agree_with_the_parsers(document: dict[str, Any]) -> None:
    """A value the document's pattern allows is one the server's parser takes."""

    def pattern(path: str, method: str, name: str) -> re.Pattern[str]:
        for param in document["paths"][path][method]["parameters"]:
            if param["name"] == name:
                return re.compile(param["schema"]["pattern"])
        raise KeyError(name)

    samples = ["1", "0", "42", "r:7", "a:b:3", "²", "٣", "9" * 18, "9" * 19, "9" * 4301,
               "", "-", "-1", "1-2", "1-", "1-*", "x", "a\x00b", "x" * 128, "x" * 129]  # fmt: skip

    def accepts(parse: Any, text: str) -> bool:
        try:
            parse(text)
        except BadCursor:
            return False
        return True

    join = pattern("/runs/{run_id}/stream", "get", "Last-Event-ID")
    thread = pattern("/langgraph/threads/{thread_id}/stream", "get", "Last-Event-ID")
    ids = pattern("/runs/{run_id}", "get", "run_id")
    for text in samples:
        assert bool(join.fullmatch(text)) == accepts(parse_run_cursor, text), text
        if text not in ("-", "0"):  # both mean "every run" there, before parsing
            assert bool(thread.fullmatch(text)) == accepts(parse_thread_cursor, text), text
        assert bool(ids.fullmatch(text)) == accepts(parse_id, text), text


def test_security_schemes_when_auth_is_on() -> None:
    app = create_app(test_settings(auth="api_keys", api_keys={"alice": "k-1"}))
    with TestClient(app) as client:
        document = client.get("/openapi.json", headers={"X-Api-Key": "k-1"}).json()
        refused = client.get("/graphs")
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-Api-Key"}
    assert document["security"] == [{"bearer": []}, {"apiKey": []}]
    for path, item in document["paths"].items():  # what auth.OPEN_PATHS lets through
        assert ("security" in item["get" if "get" in item else "post"]) == (path in OPEN_PATHS)
    assert document["paths"]["/healthz"]["get"]["security"] == []  # probes need no token
    assert refused.status_code == 401
    errors_match(document, "#/components/schemas/ErrorBody", refused.json())
    assert "401" in document["paths"]["/runs"]["post"]["responses"]
    assert "securitySchemes" not in document_of()["components"]


def test_mounted_under_a_prefix_with_another_langgraph_prefix() -> None:
    """Embedded (docs/embedding.md): the server URL is the mount, the LangGraph API is
    where the settings put it."""
    agents = create_app(test_settings(langgraph_api_prefix="/lg"))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with agent_server.lifespan(agents) as state:
            yield {"agent_server": state}

    host = Starlette(routes=[Mount("/agents", agents)], lifespan=lifespan)
    with TestClient(host) as client:
        document = client.get("/agents/openapi.json").json()
        again = client.get("/agents/openapi.json").content
        run = client.get("/agents/runs/nope")
    assert document["servers"] == [{"url": "/agents"}]
    assert "/lg/threads/{thread_id}/runs/stream" in document["paths"]
    assert not any(p.startswith(("/langgraph", "/agents")) for p in document["paths"])
    assert run.status_code == 404  # the paths are served where the document says
    assert agents.state.openapi_documents["/agents"] == again  # built once, then reused


def test_built_once_per_app(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    build = openapi.build_document

    def counting(*args: Any) -> dict[str, Any]:
        calls.append(args)
        return build(*args)

    monkeypatch.setattr(openapi, "build_document", counting)
    app = create_app(test_settings())
    with TestClient(app) as client:
        first = client.get("/openapi.json").content
        second = client.get("/openapi.json").content
    assert first == second and len(calls) == 1
