"""`conveyor deploy function`: the bundles it writes, run by the real function runtimes.

gcp: the source directory is installed as Cloud Run's buildpack installs it (a fresh venv, `pip install --no-index
--find-links wheelhouse -r requirements.txt`) and served by functions-framework from that venv.
aws: function.zip is unzipped and run by the Lambda Runtime Interface Emulator (scripts/lambda-rie.sh) with
awslambdaric on a CPython 3.12 (python3.12's runtime), importing only what the zip holds; events are
API Gateway HTTP API 2.0, Function URL and REST API 1.0 documents, and direct invocations.
Both answer as `conveyor serve` answers the same requests.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import httpx
import pytest

from conveyor.deploy.function import AWS_RUNTIMES, runtime_python
from conveyor.deploy.local import gcp_function, lambda_client, lambda_function, unzip
from tests.conftest import assert_one_line_error, conveyor

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("CONVEYOR_CACHE", Path.home() / ".cache" / "conveyor"))
PY312 = AWS_RUNTIMES["python3.12"]


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def bundles(store_dir, tmp_path_factory) -> dict[str, Path]:
    """Both targets for the sales forecaster and the scikit-learn model, rendered by the command."""
    root = tmp_path_factory.mktemp("functions")
    out = {}
    for target in ("gcp", "aws"):
        for model in ("sales", "iris"):
            dest = root / f"{model}-{target}"
            args = ["deploy", "function", model, "--target", target, "-o", str(dest), "--store", str(store_dir)]
            if target == "gcp" and model == "iris":  # a gcp function carries every dependency: the same wheels
                args += ["--wheelhouse", str(out["sales-gcp"] / "wheelhouse")]
            print(conveyor(*args).stdout)
            out[f"{model}-{target}"] = dest
    return out


# --- gcp ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gcp_python(bundles, tmp_path_factory) -> str:
    """A fresh venv with exactly the sales function's requirements, from its vendored wheels only."""
    env_dir = tmp_path_factory.mktemp("gcp-venv")
    venv.create(env_dir, with_pip=False)
    python = str(env_dir / "bin" / "python")
    source = bundles["sales-gcp"]  # --no-compile: byte-compiling was 60% of the install; the function runs alike
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-index", "--find-links",
         str(source / "wheelhouse"), "-r", str(source / "requirements.txt"), "--quiet", "--no-compile"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return python


def test_the_gcp_function_answers_as_the_service_does(bundles, gcp_python, store_dir, serve, tmp_path):
    source = bundles["sales-gcp"]  # --no-compile: byte-compiling was 60% of the install; the function runs alike
    assert sorted(p.name for p in source.iterdir()) == [
        ".gcloudignore",
        "main.py",
        "model",
        "requirements.txt",
        "wheelhouse",
    ]
    pinned = {line.split("==")[0] for line in (source / "requirements.txt").read_text().split()}
    assert {"conveyor-ml", "functions-framework", "numpy", "pandas", "orjson"} <= pinned
    wheels = {w.name.split("-")[0].lower().replace("_", "-") for w in (source / "wheelhouse").glob("*.whl")}
    assert pinned == wheels  # every requirement vendored, nothing else
    server = serve(store_dir, "sales")
    with (
        gcp_function(source, tmp_path / "ff.log", python=gcp_python) as running,
        httpx.Client(base_url=running.url, timeout=60) as fn,
        server.client() as svc,
    ):
        for path, params in [("/predict", {"range": 3}), ("/predict", {"range": 2, "series": "*"}), ("/", {})]:
            assert fn.get(path, params=params).json() == svc.get(path, params=params).json()
        assert fn.get("/v2/models/sales").json() == svc.get("/v2/models/sales").json()
        posts = [
            {"json": {"instances": [{"series": "total", "range": 2}]}},
            {"json": {"dataframe_split": {"columns": ["range"], "data": [[1], [2]]}}},
            {"content": b"series,range\ntotal,1\n", "headers": {"content-type": "text/csv"}},
        ]
        for kw in posts:
            got, want = fn.post("/predict", **kw), svc.post("/predict", **kw)
            assert got.status_code == want.status_code == 200 and got.json() == want.json()
        refused = [
            ("GET", "/predict", {"params": {"range": 0}}),
            ("GET", "/predict", {"params": {"series": "nope"}}),
            ("POST", "/predict", {"content": b"{nope", "headers": {"content-type": "application/json"}}),
            (
                "POST",
                "/predict",
                {"content": b"series,range\ntotal,1,5\n", "headers": {"content-type": "text/csv"}},
            ),
            ("POST", "/predict", {"content": b"x", "headers": {"content-type": "image/png"}}),
            ("GET", "/v2/models/other", {}),
            ("GET", "/nope", {}),
        ]
        for method, path, kw in refused:
            got, want = fn.request(method, path, **kw), svc.request(method, path, **kw)
            assert 400 <= got.status_code < 500 and got.status_code == want.status_code, (path, kw, got.text)
            # /v2 routes answer `error` as the message (the protocol's clients show it) and `kind` beside it
            kind = [r.json().get("kind", r.json()["error"]) for r in (got, want)]
            assert kind[0] == kind[1] and got.json()["message"], got.text
        put = fn.put("/predict")
        assert put.status_code == 405 and put.json()["error"] == "method_not_allowed"


def test_a_gcp_function_serves_a_scikit_learn_model(bundles, tmp_path):
    with gcp_function(bundles["iris-gcp"], tmp_path / "ff.log") as running:
        url = running.url
        rows = {
            "instances": [{"x0": 1.0, "x1": 1.0, "x2": 0.0, "x3": 0.0}, {"x0": -1.0, "x1": -1.0, "x2": 0.0, "x3": 0.0}]
        }
        body = httpx.post(f"{url}/predict", json=rows, timeout=60).json()
        assert [p["prediction"] for p in body["predictions"]] == ["yes", "no"]
        bad = httpx.post(f"{url}/predict", json={"instances": [{"x0": "a"}]}, timeout=10)
        assert bad.status_code == 422 and bad.json()["error"] == "invalid_input"


# --- aws ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lambda_runtime(tmp_path_factory) -> tuple[str, Path]:
    """(python3.12, awslambdaric for it): what Lambda's python3.12 runtime provides; and the emulator, built."""
    rie = subprocess.run(["bash", str(ROOT / "scripts" / "lambda-rie.sh"), "build"], capture_output=True, text=True)
    if rie.returncode != 0:
        _missing(f"aws-lambda-rie could not be built: {rie.stderr.strip()[-300:]}")
    python = runtime_python(PY312)
    if python is None:
        _missing("no CPython 3.12 on this machine (Lambda's python3.12 runtime)")
    return python, lambda_client(tmp_path_factory.mktemp("awslambdaric"), PY312)


class LocalLambda:
    """function.zip unzipped and run under aws-lambda-rie: invocations go through Lambda's runtime API."""

    def __init__(self, bundle: Path, runtime: tuple[str, Path], tmp: Path) -> None:
        self.task = unzip(bundle / "function.zip", tmp / "task")
        self._running = lambda_function(self.task, tmp / "rie.log", runtime[0], client=runtime[1])
        self.running = self._running.__enter__()
        self.log = self.running.log

    def invoke(self, event) -> dict:
        reply = httpx.post(self.running.url, content=json.dumps(event), timeout=120)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def stop(self) -> None:
        self._running.__exit__(None, None, None)


def http_event(method: str, path: str, query: str = "", body: bytes = b"", headers=None, stage="$default") -> dict:
    """An API Gateway HTTP API (payload 2.0) event, as AWS documents it; a Function URL's has the same shape."""
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path if stage == "$default" else f"/{stage}{path}",
        "rawQueryString": query,
        "headers": {"accept": "*/*", "user-agent": "curl/8.5.0", **(headers or {})},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api-id",
            "domainName": "id.execute-api.us-east-1.amazonaws.com",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1"},
            "requestId": "id",
            "routeKey": "$default",
            "stage": stage,
            "timeEpoch": 1583348638390,
        },
        "isBase64Encoded": bool(body),
    }
    if query:
        event["queryStringParameters"] = dict(pair.split("=", 1) for pair in query.split("&"))
    if body:
        event["body"] = base64.b64encode(body).decode()
    return event


def test_the_aws_function_answers_api_gateway_events_as_the_service_does(
    bundles, lambda_runtime, store_dir, serve, tmp_path
):
    svc = serve(store_dir, "sales").client()
    fn = LocalLambda(bundles["sales-aws"], lambda_runtime, tmp_path)
    try:
        first = fn.invoke(http_event("GET", "/predict", "range=3"))
        print(f"\ncold start (process start to first answer): {time.perf_counter() - fn.running.started:.2f}s")
        assert first["statusCode"] == 200 and first["headers"]["content-type"] == "application/json"
        assert json.loads(first["body"]) == svc.get("/predict", params={"range": 3}).json()
        # a named stage prefixes the path; repeated keys: refused, as in the service
        staged = fn.invoke(http_event("GET", "/predict", "range=1&range=2&series=total", stage="prod"))
        assert staged["statusCode"] == 422
        assert json.loads(staged["body"]) == svc.get("/predict?range=1&range=2&series=total").json()
        csv = b"series,range\ntotal,1\ntotal,2\n"
        posted = fn.invoke(http_event("POST", "/predict", body=csv, headers={"content-type": "text/csv"}))
        want = svc.post("/predict", content=csv, headers={"content-type": "text/csv"}).json()
        assert posted["statusCode"] == 200 and json.loads(posted["body"]) == want
        refused = fn.invoke(http_event("GET", "/predict", "range=0"))
        assert refused["statusCode"] == 422
        assert json.loads(refused["body"]) == svc.get("/predict", params={"range": 0}).json()
        bad_json = fn.invoke(http_event("POST", "/predict", body=b"{no", headers={"content-type": "application/json"}))
        assert bad_json["statusCode"] == 400 and json.loads(bad_json["body"])["error"] == "malformed_input"
        assert fn.invoke(http_event("GET", "/elsewhere"))["statusCode"] == 404
        # REST API (payload 1.0)
        rest = {
            "resource": "/{proxy+}", "path": "/predict", "httpMethod": "GET", "headers": {"Accept": "*/*"},
            "multiValueQueryStringParameters": {"range": ["2"]}, "queryStringParameters": {"range": "2"},
            "requestContext": {"stage": "prod", "path": "/prod/predict"}, "body": None, "isBase64Encoded": False,
        }  # fmt: skip
        assert json.loads(fn.invoke(rest)["body"]) == svc.get("/predict", params={"range": 2}).json()
        # direct invocations: the inputs themselves, the answer itself, a refusal as a function error
        assert fn.invoke({"range": 2, "series": "total"}) == svc.get("/predict?range=2&series=total").json()
        rows = {"instances": [{"series": "total", "range": 1}]}
        assert fn.invoke(rows) == svc.post("/predict", json=rows).json()
        error = fn.invoke({"range": 0})
        assert error["errorType"] == "RequestRefused" and error["errorMessage"].startswith("422 invalid_input: 'range'")
    finally:
        fn.stop()
        svc.close()


def test_the_aws_zip_holds_only_what_the_function_imports(bundles):
    with zipfile.ZipFile(bundles["sales-aws"] / "function.zip") as archive:
        names = archive.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {"handler.py", "conveyor", "numpy", "pandas", "model", "orjson"} <= tops
    for absent in ("sqlalchemy", "starlette", "uvicorn", "gunicorn", "click", "rich", "pydantic", "matplotlib",
                   "pyarrow", "statsmodels", "sklearn", "scipy", "statsforecast", "numba", "llvmlite", "holidays",
                   "awslambdaric", "pip"):  # fmt: skip
        assert absent not in tops, absent
    assert not [n for n in names if "/tests/" in n]
    unzipped = sum(i.file_size for i in zipfile.ZipFile(bundles["sales-aws"] / "function.zip").infolist())
    assert unzipped < 250 * 1024 * 1024


def test_the_aws_function_serves_a_scikit_learn_model(bundles, lambda_runtime, tmp_path):
    with zipfile.ZipFile(bundles["iris-aws"] / "function.zip") as archive:
        assert "sklearn/__init__.py" in archive.namelist()
    fn = LocalLambda(bundles["iris-aws"], lambda_runtime, tmp_path)
    try:
        rows = {"dataframe_split": {"columns": ["x0", "x1", "x2", "x3"], "data": [[1, 1, 0, 0], [-1, -1, 0, 0]]}}
        assert [p["prediction"] for p in fn.invoke(rows)["predictions"]] == ["yes", "no"]
        body = json.dumps({"instances": [{"x0": "a", "x1": 0, "x2": 0, "x3": 0}]}).encode()
        refused = fn.invoke(http_event("POST", "/predict", body=body, headers={"content-type": "application/json"}))
        assert refused["statusCode"] == 422 and json.loads(refused["body"])["error"] == "invalid_input"
    finally:
        fn.stop()


def test_deploy_function_refuses_an_unknown_runtime_in_one_line(store_dir, tmp_path):
    done = conveyor(
        "deploy", "function", "sales", "--target", "aws", "--runtime", "python3.11", "-o", str(tmp_path / "x"),
        "--store", str(store_dir), check=False,
    )  # fmt: skip
    assert_one_line_error(done, 2, "--runtime python3.11 is not one conveyor builds aws functions for")
    assert not (tmp_path / "x").exists()


def test_a_gcp_function_can_load_its_model_from_the_store_at_start(bundles, store_dir, tmp_path):
    """--from-store: no model in the directory; each instance loads it from the store when it starts."""
    source = tmp_path / "from-store"
    wheelhouse = bundles["sales-gcp"] / "wheelhouse"
    conveyor("deploy", "function", "sales", "--target", "gcp", "-o", str(source), "--from-store", str(store_dir),
             "--wheelhouse", str(wheelhouse))  # fmt: skip
    assert not (source / "model").exists() and repr(str(store_dir)) in (source / "main.py").read_text()
    with gcp_function(source, tmp_path / "ff.log") as running:
        body = httpx.get(f"{running.url}/predict", params={"range": 2}, timeout=60).json()
    assert body["model"] == "sales" and len(body["predictions"]) == 2


def test_a_lambda_zip_over_the_limit_is_refused_with_its_measured_size(store_dir, tmp_path, monkeypatch):
    from conveyor.deploy import function
    from conveyor.errors import InvalidInput

    monkeypatch.setattr(function, "ZIP_LIMIT", 10 * 1024 * 1024)  # the demo forecaster's zip is ~100 MB unzipped
    with pytest.raises(InvalidInput, match=r"the function is [\d,.]+ MB unzipped \([\d,]+ bytes\), over Lambda's "
                       r"10,485,760-byte limit for a zip: package it as a container image with --package image"):  # fmt: skip
        function.render_function(str(store_dir), "sales", tmp_path / "out", "aws")
    assert not (tmp_path / "out").exists()
