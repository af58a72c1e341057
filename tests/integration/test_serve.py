"""The real gunicorn + uvicorn server, driven over real HTTP: every endpoint and every bad input."""

from __future__ import annotations

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conveyor.sinks.sql import SQLSink

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sales_server(store_dir, tmp_path_factory):
    from tests.conftest import start_server

    server = start_server(store_dir, "sales", tmp_path_factory.mktemp("sales-log"), "--workers", "2")
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def iris_server(store_dir, tmp_path_factory):
    from tests.conftest import start_server

    server = start_server(
        store_dir,
        "iris",
        tmp_path_factory.mktemp("iris-log"),
        "--workers",
        "1",
        env={"CONVEYOR_MAX_BODY_BYTES": "65536"},
    )
    yield server
    server.stop()


def check_steps(steps, n):
    assert len(steps) == n
    for s in steps:
        assert set(s) == {"date", "forecast", "lower", "upper"}
        assert s["lower"] <= s["forecast"] <= s["upper"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", s["date"])


def test_seed_client_call(sales_server):
    # the seed's client, verbatim apart from the address
    import requests

    result = requests.get(f"{sales_server.url}/predict?range=1").json()
    assert result["model"] == "sales" and result["version"] == 1
    assert result["series"] == "total" and result["range"] == 1
    check_steps(result["predictions"], 1)


def test_forecast_series_and_horizon(sales_server, sales_forecaster):
    with sales_server.client() as c:
        series = next(s for s in sales_forecaster.signature().field("series").choices if s != "total")
        body = c.get("/predict", params={"range": 7, "series": series}).json()
        assert body["series"] == series
        check_steps(body["predictions"], 7)
        dates = [s["date"] for s in body["predictions"]]
        assert dates == sorted(dates) and len(set(dates)) == 7
        every = c.get("/predict", params={"range": 3, "series": "*"}).json()
        names = [f["series"] for f in every["forecasts"]]
        assert set(names) == set(sales_forecaster.signature().field("series").choices)
        for f in every["forecasts"]:
            check_steps(f["predictions"], 3)


@pytest.mark.parametrize(
    ("query", "status", "text"),
    [
        ("range=0", 422, "'range' must be an integer between 1 and 60, got 0"),
        ("range=-1", 422, "got -1"),
        ("range=1000000000", 422, "got 1000000000"),
        ("range=abc", 422, "got 'abc'"),
        ("range=1.5", 422, "got 1.5"),
        ("range=nan", 422, "got nan"),
        ("range=inf", 422, "got inf"),
        ("series=nowhere", 422, "unknown series 'nowhere'"),
        ("rnage=3", 422, "unknown field(s) ['rnage']"),
    ],
)
def test_bad_queries_get_precise_4xx(sales_server, query, status, text):
    r = httpx.get(f"{sales_server.url}/predict?{query}")
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == "invalid_input" and text in body["message"]


def test_tabular_post_shapes(iris_server, iris_model):
    est, X = iris_model
    rows = X.iloc[:5]
    expected = est.predict(rows).tolist()
    with iris_server.client() as c:
        a = c.post("/predict", json={"instances": rows.to_dict(orient="records")}).json()
        b = c.post("/predict", json={"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}).json()
        d = c.post("/predict", content=rows.to_csv(index=False), headers={"content-type": "text/csv"}).json()
        e = c.post("/predict", json={"inputs": {k: list(v.values()) for k, v in rows.to_dict().items()}}).json()
        f = c.get("/predict", params=rows.iloc[0].to_dict()).json()
    for body in (a, b, d, e):
        assert body["model"] == "iris" and body["version"] == 1
        assert [p["prediction"] for p in body["predictions"]] == expected
        for p in body["predictions"]:
            assert math.isclose(p["proba_no"] + p["proba_yes"], 1.0)
    assert f["predictions"][0]["prediction"] == expected[0]


@pytest.mark.parametrize(
    ("kwargs", "status", "kind", "text"),
    [
        ({"content": b"{not json"}, 400, "malformed_input", "malformed JSON"),
        ({"content": b""}, 400, "malformed_input", "empty body"),
        ({"json": {"instances": []}}, 422, "invalid_input", "no rows"),
        ({"json": {"rows": []}}, 400, "malformed_input", "unknown body shape"),
        ({"json": [1, 2]}, 400, "malformed_input", "expected a JSON object"),
        ({"json": {"instances": [{"x0": "a", "x1": 1, "x2": 1, "x3": 1}]}}, 422, "invalid_input", "'x0' must be"),
        ({"json": {"instances": [{"x0": 1, "x1": 1, "x2": 1}]}}, 422, "invalid_input", "missing field 'x3'"),
        ({"json": {"instances": [{"x0": 1, "x1": 1, "x2": 1, "x3": "inf"}]}}, 422, "invalid_input", "got inf"),
        ({"content": b'{"instances": [{"x0": NaN, "x1": 1, "x2": 1, "x3": 1}]}'}, 400, "malformed_input", "JSON"),
        (
            {"json": {"instances": [{"x0": None, "x1": 1, "x2": 1, "x3": 1}]}},
            422,
            "invalid_input",
            "missing field 'x0'",
        ),
        ({"json": {"instances": [{"x0": 1, "x1": 1, "x2": 1, "x3": 1, "x9": 1}]}}, 422, "invalid_input", "unknown"),
        ({"content": b"x0,x1\n1,2\n", "headers": {"content-type": "text/csv"}}, 422, "invalid_input", "missing"),
        ({"content": b"a", "headers": {"content-type": "application/xml"}}, 415, "unsupported_media_type", "xml"),
        ({"content": b"x" * 70_000}, 413, "payload_too_large", "at most 65536 bytes"),
    ],
)
def test_bad_bodies_get_precise_4xx(iris_server, kwargs, status, kind, text):
    r = httpx.post(f"{iris_server.url}/predict", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"] == kind
    assert text in r.json()["message"]


def test_open_inference_protocol(iris_server, iris_model):
    est, X = iris_model
    rows = X.iloc[:3]
    with iris_server.client() as c:
        assert c.get("/v2").json()["name"] == "conveyor"
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get("/v2/models/iris/ready").json()["ready"] is True
        meta = c.get("/v2/models/iris").json()
        assert meta["name"] == "iris" and [i["name"] for i in meta["inputs"]] == ["x0", "x1", "x2", "x3"]
        assert meta["inputs"][0]["datatype"] == "FP64"
        req = {
            "id": "req-1",
            "inputs": [{"name": n, "shape": [3], "datatype": "FP64", "data": rows[n].tolist()} for n in rows.columns],
        }
        out = c.post("/v2/models/iris/infer", json=req).json()
        assert out["model_name"] == "iris" and out["id"] == "req-1"
        by_name = {o["name"]: o for o in out["outputs"]}
        assert by_name["prediction"]["data"] == est.predict(rows).tolist()
        assert by_name["prediction"]["datatype"] == "BYTES" and by_name["proba_yes"]["datatype"] == "FP64"
        assert c.post("/v2/models/iris/versions/1/infer", json=req).status_code == 200
        assert c.post("/v2/models/other/infer", json=req).status_code == 404
        assert c.post("/v2/models/iris/versions/7/infer", json=req).status_code == 404
        bad = {"inputs": [{"name": "x0", "shape": [2], "datatype": "FP64", "data": [1.0]}]}
        r = c.post("/v2/models/iris/infer", json=bad)
        assert r.status_code == 400 and "shape [2] does not match 1 values" in r.json()["error"]


def test_health_metrics_openapi_docs(iris_server):
    with iris_server.client() as c:
        assert c.get("/healthz").json() == {"live": True}
        assert c.get("/readyz").json() == {"ready": True, "model": "iris", "version": 1}
        for _ in range(3):
            c.post("/predict", json={"instances": [{"x0": 1, "x1": 1, "x2": 1, "x3": 1}]})
        c.get("/predict?x0=bad")
        spec = c.get("/openapi.json").json()
        assert spec["openapi"].startswith("3.") and "/predict" in spec["paths"]
        body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        instances = body["anyOf"][0]["properties"]["instances"]["anyOf"][0]  # rows as objects, one per row
        assert list(instances["items"]["properties"]) == ["x0", "x1", "x2", "x3"]
        docs = c.get("/docs")
        assert docs.status_code == 200 and "openapi.json" in docs.text
        text = c.get("/metrics").text
        assert re.search(r'conveyor_requests_total\{method="POST",route="/predict",status="200"\} [3-9]', text)
        assert 'conveyor_errors_total{kind="invalid_input"}' in text
        assert re.search(r'conveyor_model_info\{flavor="sklearn",name="iris",pid="\d+",version="1"\} 1.0', text)
        assert "conveyor_batch_rows_bucket" in text and "conveyor_request_duration_seconds_bucket" in text
        info = c.get("/").json()
        assert info["model"] == "iris" and info["flavor"] == "sklearn"


def test_metrics_port_keeps_metrics_off_the_service_port(store_dir, serve):
    """Issue 9 point 11: whatever exposes the service's port (a LoadBalancer passes every path) must not expose
    /metrics; with --metrics-port the workers answer it there only, with every worker's counts."""
    from tests.conftest import free_port, scrape

    metrics_port = free_port()
    server = serve(store_dir, "iris", "--workers", "2", "--metrics-port", str(metrics_port))
    row = {"instances": [{"x0": 1, "x1": 1, "x2": 1, "x3": 1}]}
    with server.client() as c:
        for _ in range(6):
            assert c.post("/predict", json=row).status_code == 200
        hidden = c.get("/metrics")
    assert hidden.status_code == 404 and hidden.json()["error"] == "not_found"
    assert httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).status_code == 200
    scrape(
        f"http://127.0.0.1:{metrics_port}/metrics",
        r'conveyor_requests_total\{method="POST",route="/predict",status="200"\} 6.0',
    )
    other = httpx.post(f"http://127.0.0.1:{metrics_port}/predict", json=row, timeout=10)
    assert other.status_code == 404 and "serves GET /metrics only" in other.json()["message"]


def test_unknown_routes_and_methods_are_json(iris_server):
    r = httpx.get(f"{iris_server.url}/nope")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = httpx.delete(f"{iris_server.url}/predict")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_concurrent_requests_are_batched(iris_server):
    body = {"instances": [{"x0": 1, "x1": 2, "x2": 3, "x3": 4}]}
    with httpx.Client(base_url=iris_server.url, limits=httpx.Limits(max_connections=64)) as c:
        with ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(lambda _: c.post("/predict", json=body).status_code, range(400)))
        assert statuses == [200] * 400
        text = c.get("/metrics").text
    # some predict calls merged several requests: the "+Inf" count exceeds the "1" bucket
    ones = float(re.search(r'conveyor_batch_requests_bucket\{le="1.0"\} (\S+)', text).group(1))
    total = float(re.search(r"conveyor_batch_requests_count (\S+)", text).group(1))
    assert total < 400 + 20 and ones < total, (ones, total)


def test_stored_predictions(store_dir, serve, tmp_path):
    db = f"sqlite:///{tmp_path / 'predictions.db'}"
    sink = SQLSink(db, "predictions", key=("key", "date"))
    sink.write(
        [
            {"key": "1/BEVERAGES", "date": "2017-01-01", "forecast": 12.5, "model": "sales", "version": 1},
            {"key": "1/BEVERAGES", "date": "2017-01-02", "forecast": 13.5, "model": "sales", "version": 1},
        ]
    )
    sink.write([{"key": "1/BEVERAGES", "date": "2017-01-02", "forecast": 14.0, "model": "sales", "version": 2}])
    server = serve(store_dir, "iris", "--workers", "1", "--predictions", db)
    with server.client() as c:
        body = c.get("/predictions/1/BEVERAGES").json()
        assert body["key"] == "1/BEVERAGES"
        assert sorted((p["date"], p["forecast"]) for p in body["predictions"]) == [
            ("2017-01-01", 12.5),
            ("2017-01-02", 14.0),
        ]
        r = c.get("/predictions/unknown")
        assert r.status_code == 404 and "no stored prediction for key 'unknown'" in r.json()["message"]


def test_stored_predictions_not_configured(iris_server):
    r = httpx.get(f"{iris_server.url}/predictions/x")
    assert r.status_code == 404 and "--predictions" in r.json()["message"]


def test_open_inference_protocol_forecast_tensors(sales_server):
    req = {
        "inputs": [
            {"name": "range", "shape": [2], "datatype": "INT64", "data": [3, 3]},
            {"name": "series", "shape": [2], "datatype": "BYTES", "data": ["total", "total"]},
        ]
    }
    out = httpx.post(f"{sales_server.url}/v2/models/sales/infer", json=req).json()
    by_name = {o["name"]: o for o in out["outputs"]}
    assert by_name["forecast"]["shape"] == [2, 3] and by_name["forecast"]["datatype"] == "FP64"
    assert len(by_name["forecast"]["data"]) == 6 and by_name["date"]["datatype"] == "BYTES"
    # tensors are rectangular: rows asking for different ranges are refused, as the metadata's [-1, -1] implies
    ragged = {"inputs": [{"name": "range", "shape": [2], "datatype": "INT64", "data": [1, 2]}]}
    r = httpx.post(f"{sales_server.url}/v2/models/sales/infer", json=ragged)
    assert r.status_code == 400 and "same range" in r.json()["error"]


# --- a prediction store that cannot be used (issue 9, point 5) -------------------------------------
def test_unusable_prediction_store_refuses_to_start(store_dir, tmp_path):
    from tests.conftest import assert_one_line_error, conveyor, free_port

    port = free_port()
    stores = {
        "sqlite:////nonexistent/x.db": "unable to open database file",
        f"postgresql://reader:s3cret@127.0.0.1:{free_port()}/sales": "refused",
        f"redis://:s3cret@127.0.0.1:{free_port()}/0": "refused",
    }
    for url, reason in stores.items():
        args = ("serve", "iris", "--store", str(store_dir), "--port", str(port), "--predictions", url)
        proc = conveyor(*args, check=False, timeout=60)
        assert_one_line_error(proc, 1, "cannot read stored predictions from ")
        assert reason in proc.stderr and "s3cret" not in proc.stderr
        with pytest.raises(httpx.TransportError):  # nothing was left listening
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)


def test_store_failing_at_run_time_answers_503_without_library_text(store_dir, serve, tmp_path):
    db = tmp_path / "predictions.db"
    SQLSink(f"sqlite:///{db}", "predictions", key=("key",)).write([{"key": "a", "forecast": 1.0}])
    server = serve(store_dir, "iris", "--workers", "1", "--predictions", f"sqlite:///{db}")
    with server.client() as c:
        assert c.get("/predictions/a").json()["predictions"] == [{"key": "a", "forecast": 1.0}]
        db.write_bytes(b"this is no longer a database" * 200)  # the file is damaged under the running service
        r = c.get("/predictions/a")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["error"] == "unavailable" and "try again" in body["message"]
        assert "sqlite" not in r.text.lower() and "not a database" not in r.text
        request_id = r.headers["x-request-id"]
        assert request_id in body["message"]
    log = server.log.read_text()
    line = next(line for line in log.splitlines() if request_id in line)
    assert "GET /predictions/a" in line
    assert "file is not a database" in log  # the library's text is in the server log, for the operator


BROKEN = """
import pandas as pd
SIGNATURE = {"inputs": [{"name": "x", "type": "float"}], "outputs": [{"name": "y", "type": "float"}]}
def predict(frame):
    if (frame["x"] < 0).any():
        raise RuntimeError("password=hunter2 in /srv/secret/config.yaml")
    return pd.DataFrame({"y": frame["x"]})
"""


def test_unexpected_errors_answer_internal_with_a_request_id_and_no_library_text(serve, tmp_path):
    from conveyor.store import ModelStore

    store = ModelStore(tmp_path / "store")
    (tmp_path / "broken.py").write_text(BROKEN)
    store.add("broken", f"{tmp_path / 'broken.py'}:predict", flavor="function")
    server = serve(store.uri, "broken", "--workers", "1")
    with server.client() as c:
        assert c.post("/predict", json={"instances": [{"x": 1}]}).status_code == 200
        r = c.post("/predict", json={"instances": [{"x": -1}]}, headers={"x-request-id": "client-chosen-7"})
        assert r.status_code == 500
        assert r.json() == {
            "error": "internal",
            "message": "internal error: the server log has the details under request id client-chosen-7",
        }
        assert r.headers["x-request-id"] == "client-chosen-7"
        r = c.post("/predict", json={"instances": [{"x": -2}]}, headers={"x-request-id": "bad id <script>"})
        assert r.status_code == 500 and "hunter2" not in r.text and "<script>" not in r.text
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])  # an unusable id is replaced
        assert c.post("/predict", json={"instances": [{"x": 2}]}).json()["predictions"] == [{"y": 2.0}]
    log = server.log.read_text()
    assert "client-chosen-7" in log and "password=hunter2" in log


# --- V2 metadata declares what /infer returns (issue 9, point 7) -----------------------------------
def _matches(declared: list[int], actual: list[int]) -> bool:
    return len(declared) == len(actual) and all(d in (-1, a) for d, a in zip(declared, actual, strict=True))


@pytest.mark.parametrize("which", ["sales", "iris"])
def test_v2_metadata_declares_what_infer_returns(which, sales_server, iris_server, iris_model):
    server = {"sales": sales_server, "iris": iris_server}[which]
    if which == "sales":
        inputs = [
            {"name": "series", "shape": [2], "datatype": "BYTES", "data": ["total", "total"]},
            {"name": "range", "shape": [2], "datatype": "INT64", "data": [4, 4]},
        ]
    else:
        rows = iris_model[1].iloc[:2]
        inputs = [{"name": n, "shape": [2], "datatype": "FP64", "data": rows[n].tolist()} for n in rows.columns]
    with server.client() as c:
        meta = c.get(f"/v2/models/{which}").json()
        out = c.post(f"/v2/models/{which}/infer", json={"inputs": inputs})
    assert out.status_code == 200, out.text
    declared_in = {t["name"]: t for t in meta["inputs"]}
    for tensor in inputs:
        assert declared_in[tensor["name"]]["datatype"] == tensor["datatype"]
        assert _matches(declared_in[tensor["name"]]["shape"], tensor["shape"])
    declared = {t["name"]: t for t in meta["outputs"]}
    answered = {t["name"]: t for t in out.json()["outputs"]}
    assert set(declared) == set(answered)
    for name, tensor in answered.items():
        assert declared[name]["datatype"] == tensor["datatype"], name
        assert _matches(declared[name]["shape"], tensor["shape"]), (name, declared[name]["shape"], tensor["shape"])
        assert len(tensor["data"]) == math.prod(tensor["shape"])
        python_type = {"FP64": float, "INT64": int, "BYTES": str, "BOOL": bool}[tensor["datatype"]]
        assert all(type(v) is python_type for v in tensor["data"]), name
    if which == "sales":
        assert declared["forecast"] == {"name": "forecast", "datatype": "FP64", "shape": [-1, -1]}
        assert answered["forecast"]["shape"] == [2, 4] and answered["date"]["shape"] == [2, 4]


# --- responses are bounded (issue 9, point 8) ----------------------------------------------------
def test_forecast_steps_per_request_are_bounded_with_413(store_dir, serve):
    server = serve(store_dir, "sales", "--workers", "1", "--max-forecast-steps", "500")
    with server.client() as c:
        r = c.post("/predict", json={"instances": [{"range": 60}] * 100})
        assert r.status_code == 413, r.text
        assert r.json() == {
            "error": "payload_too_large",
            "message": "this request asks for 6,000 forecast steps (the sum of range over 100 rows); "
            "at most 500 are answered per request (--max-forecast-steps): split it, "
            "or forecast in bulk with `conveyor batch forecast`",
        }
        assert c.post("/predict", json={"instances": [{"range": 5}] * 100}).status_code == 200  # 500: the limit
        n = len(c.get("/predict", params={"series": "*", "range": 1}).json()["forecasts"])
        r = c.get("/predict", params={"series": "*", "range": 500 // n + 1})
        assert r.status_code == 413 and "at most 500 are answered" in r.json()["message"]
        assert c.get("/predict", params={"series": "*", "range": 500 // n}).status_code == 200
        v2 = {"inputs": [{"name": "range", "shape": [20], "datatype": "INT64", "data": [60] * 20}]}
        r = c.post("/v2/models/sales/infer", json=v2)
        assert r.status_code == 413 and "1,200 forecast steps" in r.json()["error"]


def _worker_peak_rss_mb(master: int) -> float:
    """VmHWM of the server's one gunicorn worker: the most memory it ever held."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, children
    status = Path(f"/proc/{children[0]}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def test_a_refused_oversized_request_does_not_grow_the_worker(store_dir, serve):
    server = serve(store_dir, "sales", "--workers", "1", env={"CONVEYOR_MAX_FORECAST_STEPS": "100000"})
    body = json.dumps({"instances": [{"series": "total", "range": 60}] * 10_000})  # 600,000 steps
    with httpx.Client(base_url=server.url, timeout=120) as c:
        for _ in range(3):  # warm up: the first requests allocate what every request reuses
            assert c.post("/predict", json={"instances": [{"range": 60}] * 100}).status_code == 200
            assert c.post("/predict", content=body[:40] + "]}").status_code in (400, 422)
        before = _worker_peak_rss_mb(server.process.pid)
        r = c.post("/predict", content=body, headers={"content-type": "application/json"})
        after = _worker_peak_rss_mb(server.process.pid)
    assert r.status_code == 413 and "600,000 forecast steps" in r.text
    assert after - before < 20, (before, after)  # answering it would have held ~60 MB more
