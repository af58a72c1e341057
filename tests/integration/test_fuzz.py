"""Property-based fuzzing of the service through its own OpenAPI document (issue 14): no 5xx, answers as declared.

schemathesis reads the real server's /openapi.json and sends every operation it describes: the document's
examples, its coverage cases (bounds, wrong types, missing and duplicated parameters, unexpected methods) and
seeded, derandomized Hypothesis examples, valid and invalid. Each answer must not be a 5xx, and must have a
status, content type and body schema the document declares. Two servers cover both kinds of signature: the
sales forecaster (a string series with choices, an integer range; paths out) and a classifier (four floats);
the classifier's server is fuzzed once more with its model unloaded (readiness 503, the model's routes 404).
A failure prints the request that reproduces it as a curl command.

Below the fuzzing, hand-written inputs a generator is unlikely to build (huge numbers, NaN, deep nesting,
non-UTF-8 bytes, repeated keys, empty arrays): each is refused with a 4xx and a JSON error body.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.integration

MODELS = ("sales", "iris")
# Hypothesis examples per operation and generation mode, on top of the document's examples and the coverage
# cases: the whole module (two servers, forecaster training included) stays under a minute on 2 loaded cores.
MAX_EXAMPLES = 10
SEED = 14
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def servers(store_dir, tmp_path_factory):
    from tests.conftest import start_server

    def start(name):
        return start_server(store_dir, name, tmp_path_factory.mktemp(f"{name}-log"), "--workers", "1")

    with ThreadPoolExecutor(len(MODELS)) as pool:  # both boot, and stop, at once: half the wait
        futures = {name: pool.submit(start, name) for name in MODELS}
        try:
            yield {name: future.result() for name, future in futures.items()}
        finally:  # every one that started, even when another did not
            running = [future.result() for future in futures.values() if future.exception() is None]
            list(pool.map(lambda server: server.stop(), running))


@pytest.fixture(scope="module")
def http():
    with requests.Session() as session:  # one keep-alive connection for thousands of small requests
        yield session


@pytest.fixture(params=[*MODELS, "unloaded"])
def api(request, servers):
    """The document a server publishes, loaded as schemathesis' schema. `unloaded`: the classifier's server with
    its one model unloaded (repository API), where readiness answers 503 and the model's routes 404."""
    # schemathesis 4.32.5's from_fixture reads `Node._nodeid`, which pytest 9.2 no longer has (it renames the
    # node per operation for its report); the attribute it reads is given back here.
    request.node._nodeid = request.node.nodeid
    model = "iris" if request.param == "unloaded" else request.param
    server = servers[model]
    expected = ["2xx", "3xx", "4xx"]
    if request.param == "unloaded":
        expected.append("503")  # not ready: by design, and declared
        unload = httpx.post(f"{server.url}/v2/repository/models/{model}/unload", timeout=30)
        assert unload.status_code == 200, unload.text

        def load_again() -> None:  # the tests after this one ask the classifier
            load = httpx.post(f"{server.url}/v2/repository/models/{model}/load", timeout=60)
            assert load.status_code == 200, load.text

        request.addfinalizer(load_again)
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "phases": {
                # 405 for a method a path does not answer: three methods tell it, not all eight per operation
                "coverage": {
                    "generate-duplicate-query-parameters": True,
                    "unexpected-methods": ["DELETE", "PATCH", "PUT"],
                },
                "stateful": {"enabled": False},
            },
            "operations": [
                # infer's examples are about the body: the served model's name and version, not random ones (404)
                {"include-path-regex": "/infer$", "parameters": {"path.name": model, "path.version": "1"}},
                # load and unload a model the store does not have: the served one stays loaded for the others
                {"include-path-regex": "^/v2/repository/models/", "parameters": {"path.name": "no-such-model"}},
            ],
            "checks": {"not_a_server_error": {"expected-statuses": expected}},
            "request-timeout": 10,
        }
    )
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api")


@schema.parametrize()
def test_no_server_error_and_answers_as_documented(case, http):
    case.call_and_validate(session=http, checks=CHECKS)


# --- inputs a generator is unlikely to build ------------------------------------------------------------------
IRIS_ROW = "x1=0&x2=0&x3=0"


def odd(name: str, model: str, url: str, status: int, body: object = None, csv: bool = False):
    """A GET of `url`, or a POST of `body`: JSON from an object, bytes as they are (JSON, or CSV with `csv`)."""
    if body is None:
        return pytest.param(model, "GET", url, {}, status, id=name)
    if isinstance(body, bytes | str):
        raw = body.encode() if isinstance(body, str) else body
        kwargs = {"content": raw, "headers": {"content-type": "text/csv" if csv else "application/json"}}
    else:
        kwargs = {"json": body}
    return pytest.param(model, "POST", url, kwargs, status, id=name)


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def v2(*tensors: tuple) -> dict:
    return {"inputs": [{"name": n, "datatype": t, "shape": s, "data": d} for n, t, s, d in tensors]}


def iris_v2(shape: list, data: list) -> dict:
    return v2(*((f"x{i}", "FP64", shape, data) for i in range(4)))


def x0_v2(data: str) -> str:
    """A V2 body whose one input's data is this text: what a JSON encoder would not write (NaN), or nests deep."""
    return '{"inputs": [{"name": "x0", "datatype": "FP64", "shape": [1], "data": ' + data + "}]}"


IRIS_V2, SALES_V2 = "/v2/models/iris/infer", "/v2/models/sales/infer"
ODD = [
    # huge numbers
    odd("json-1e400", "iris", "/predict", 400, b'{"instances": [{"x0": 1e400, "x1": 0, "x2": 0, "x3": 0}]}'),
    odd("query-int-beyond-int64", "sales", "/predict?range=99999999999999999999999", 422),
    odd("json-int-beyond-int64", "sales", "/predict", 422, {"instances": [{"range": 2**70}]}),
    odd("v2-int-beyond-int64", "sales", SALES_V2, 422, v2(("range", "INT64", [1], [2**70]))),
    odd("v2-shape-1e23", "iris", IRIS_V2, 400, v2(("x0", "FP64", [1e23], [1]))),
    # NaN and Infinity: not JSON, and not finite numbers when spelled as strings, in a query or in CSV
    odd("json-NaN", "iris", "/predict", 400, b'{"instances": [{"x0": NaN, "x1": 0, "x2": 0, "x3": 0}]}'),
    odd("json-Infinity", "iris", "/predict", 400, b'{"inputs": {"x0": -Infinity, "x1": 0, "x2": 0, "x3": 0}}'),
    odd("json-string-NaN", "iris", "/predict", 422, {"instances": [{"x0": "NaN", "x1": 0, "x2": 0, "x3": 0}]}),
    odd("query-inf", "iris", f"/predict?x0=inf&{IRIS_ROW}", 422),
    odd("query-nan", "iris", f"/predict?x0=nan&{IRIS_ROW}", 422),
    odd("csv-inf", "iris", "/predict", 422, "x0,x1,x2,x3\ninf,0,0,0\n", csv=True),
    odd("v2-NaN", "iris", IRIS_V2, 400, x0_v2("[NaN]")),
    odd("v2-string-Infinity", "iris", IRIS_V2, 422, iris_v2([1], ["Infinity"])),
    # deep nesting: past the JSON parser's depth limit, and just under it
    odd("json-nested-past-limit", "iris", "/predict", 400, f'{{"instances": {nested(5000)}}}'),
    odd("json-nested-rows", "iris", "/predict", 422, f'{{"instances": {nested(500)}}}'),
    odd("json-nested-column", "iris", "/predict", 422, f'{{"inputs": {{"x0": {nested(500)}}}}}'),
    odd("v2-nested-data", "iris", IRIS_V2, 422, x0_v2(nested(500))),
    # bytes that are not UTF-8: in a JSON body, inside a JSON string, in CSV, in V2, in a query and in a path
    odd("json-not-utf8", "iris", "/predict", 400, b'\xff\xfe{"instances": []}'),
    odd("json-string-not-utf8", "iris", "/predict", 400, b'{"instances": [{"x0": "\xff", "x1": 0, "x2": 0, "x3": 0}]}'),
    odd("csv-not-utf8", "iris", "/predict", 400, b"x0,x1,x2,x3\n\xff,0,0,0\n", csv=True),
    odd("v2-not-utf8", "iris", IRIS_V2, 400, b'{"inputs": [{"name": "\xff"}]}'),
    odd("query-not-utf8", "sales", "/predict?series=%ff%fe", 422),
    odd("forecast-not-utf8", "sales", "/forecast?series=%ff", 422),
    odd("path-not-utf8", "iris", "/v2/models/%ff", 404),
    # a key given twice is ambiguous: refused, never one of the values picked
    odd("query-repeated-range", "sales", "/predict?range=1&range=60", 422),
    odd("query-repeated-series", "sales", "/predict?series=total&series=1/CLEANING", 422),
    odd("query-repeated-float", "iris", f"/predict?x0=1&x0=2&{IRIS_ROW}", 422),
    odd("forecast-repeated", "sales", "/forecast?series=total&range=1&range=2", 422),
    odd("series-repeated-limit", "sales", "/series?limit=1&limit=2", 422),
    odd("series-repeated-q", "sales", "/series?q=a&q=b", 422),
    odd(
        "split-repeated-column",
        "iris",
        "/predict",
        422,
        {"dataframe_split": {"columns": ["x0", "x0", "x1", "x2", "x3"], "data": [[1, 2, 3, 4, 5]]}},
    ),
    # empty arrays: no rows is an error in every shape
    odd("instances-empty", "iris", "/predict", 422, {"instances": []}),
    odd("records-empty", "iris", "/predict", 422, {"dataframe_records": []}),
    odd("split-empty", "iris", "/predict", 422, {"dataframe_split": {"columns": [], "data": []}}),
    odd("inputs-rows-empty", "iris", "/predict", 422, {"inputs": []}),
    odd("inputs-no-columns", "iris", "/predict", 422, {"inputs": {}}),
    odd("inputs-empty-columns", "iris", "/predict", 422, {"inputs": {"x0": [], "x1": [], "x2": [], "x3": []}}),
    odd("positional-row-empty", "iris", "/predict", 422, {"instances": [[]]}),
    odd("row-empty", "iris", "/predict", 422, {"instances": [{}]}),
    odd("csv-header-only", "iris", "/predict", 422, "x0,x1,x2,x3\n", csv=True),
    odd("v2-inputs-empty", "iris", IRIS_V2, 400, {"inputs": []}),
    odd("v2-zero-rows", "iris", IRIS_V2, 422, iris_v2([0], [])),
    odd("v2-zero-range", "sales", SALES_V2, 422, v2(("range", "INT64", [0], []))),
    # values of a type the code did not expect where it did not look
    odd("series-limit-superscript", "sales", "/series?limit=%C2%B2", 422),
    odd("split-number-column", "iris", "/predict", 400, {"dataframe_split": {"columns": [1, "a"], "data": [[1, 2]]}}),
    odd("split-list-column", "iris", "/predict", 400, {"dataframe_split": {"columns": [["x0"]], "data": [[1]]}}),
    odd("v2-list-name", "iris", IRIS_V2, 400, v2((["x0"], "FP64", [1], [1]))),
    # the protocol's id is a string, and an answer echoes it: any other JSON value is refused, not echoed
    odd("v2-object-id", "iris", IRIS_V2, 400, {**iris_v2([1], [0.0]), "id": {}}),
]


@pytest.mark.parametrize(
    ("model", "method", "url", "kwargs", "status"),
    [
        *ODD,
        # a header byte Starlette reads as "²": str.isdigit() accepts it, int() does not
        pytest.param(
            "iris",
            "POST",
            IRIS_V2,
            {"json": iris_v2([1], [0.0]), "headers": {"inference-header-content-length": b"\xb2"}},
            400,
            id="v2-header-length-superscript",
        ),
    ],
)
def test_odd_input_is_refused_with_a_json_error(servers, model, method, url, kwargs, status):
    with servers[model].client() as c:
        r = c.request(method, url, **kwargs)
    if url.startswith("/v2/") and status == 422:
        status = 400  # the Open Inference Protocol's clients expect 400 for any request sent wrong
    assert r.status_code == status, (method, url, r.status_code, r.text[:300])
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert {"error", "message"} <= set(body) and body["message"], body


def test_get_predict_serves_the_model_named_in_the_query(servers):
    """`/predict?model=NAME` picks one of the served models (issue 14 point 3), GET as well as POST."""
    with servers["sales"].client() as c:
        named = c.get("/predict", params={"model": "sales", "range": 2})
        plain = c.get("/predict", params={"range": 2})
    assert named.status_code == 200, named.text[:300]
    assert named.json() == plain.json()
