"""/openapi.json is a valid OpenAPI 3.1 document that describes every route the server answers (issue 9, point 10)."""

from __future__ import annotations

import re

import httpx
import pytest
from openapi_spec_validator import validate

from conveyor.serve.app import create_app
from conveyor.serve.page import FORECASTER_PATHS
from conveyor.settings import ServeSettings

pytestmark = pytest.mark.integration

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def servers(store_dir, tmp_path_factory):
    from tests.conftest import start_server

    started = {
        name: start_server(store_dir, name, tmp_path_factory.mktemp(f"{name}-log"), "--workers", "1")
        for name in ("sales", "iris")
    }
    yield started
    for server in started.values():
        server.stop()


def operations(spec: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in spec["paths"].items() for method in item if method in METHODS}


def routes(model: str, store: str) -> set[tuple[str, str]]:
    """What the server answers, read from its Starlette routes (a HEAD beside a GET is implied)."""
    app = create_app(ServeSettings(model=model, store=store))
    try:
        return {
            (re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path), method.lower())
            for route in app.routes
            for method in route.methods - {"HEAD"}
        }
    finally:
        app.state.service.batcher.close()


@pytest.mark.parametrize("model", ["sales", "iris"])
def test_openapi_is_valid_and_describes_every_route(servers, store_dir, model):
    spec = httpx.get(f"{servers[model].url}/openapi.json").json()
    validate(spec)  # raises with the first violation of the OpenAPI 3.1 schema and its rules
    assert spec["openapi"] == "3.1.0"
    expected = routes(model, str(store_dir))
    if model != "sales":  # the forecast page's routes answer a forecaster only (404 otherwise): not described
        expected -= {(path, "get") for path in FORECASTER_PATHS}
    assert operations(spec) == expected


@pytest.mark.parametrize("model", ["sales", "iris"])
def test_every_operation_answers_as_its_examples_are_filled_in(servers, model):
    """What /docs does in a browser, without one: fill each operation from its examples and send it."""
    server = servers[model]
    spec = httpx.get(f"{server.url}/openapi.json").json()
    with server.client() as c:
        for path, method in sorted(operations(spec)):
            op = spec["paths"][path][method]
            url, params = path, {}
            for p in op.get("parameters", []):
                value = p.get("example", p["schema"].get("default"))
                assert value is not None or not p["required"], (path, method, p["name"])
                if p["in"] == "path":
                    url = url.replace("{" + p["name"] + "}", str(value))
                elif value is not None:
                    params[p["name"]] = value
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("example")
            r = c.request(method, url, params=params, json=body)
            documented = {int(code) for code in op["responses"]}
            assert r.status_code in documented, (method, url, r.status_code, r.text[:300])
            expected = 404 if path == "/predictions/{key}" else 200  # no --predictions: documented 404
            assert r.status_code == expected, (method, url, r.status_code, r.text[:300])
