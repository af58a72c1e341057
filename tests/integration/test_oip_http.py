"""The Open Inference Protocol over REST as its standard client speaks it: tritonclient.http, default settings.

tritonclient.http sends inputs as raw binary data after a JSON header by default (`binary_data=True`, the
binary data extension) and, without `outputs=`, asks for every output raw (`binary_data_output`). One real
server serves both test models; every answer is compared with POST /predict's for the same rows.
"""

from __future__ import annotations

import gzip

import httpx
import numpy as np
import pytest

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(store_dir, tmp_path_factory):
    from tests.conftest import start_server

    server = start_server(store_dir, "sales", tmp_path_factory.mktemp("oip-http"), "iris", "--workers", "2")
    yield server
    assert server.stop() == 0
    log = server.log.read_text()
    assert "answered 500" not in log and "Traceback" not in log, log[-3000:]  # every refusal was a 4xx


@pytest.fixture(scope="module")
def client(server):
    client = InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def iris_rows(iris_model):
    return iris_model[1].iloc[:5]


@pytest.fixture(scope="module")
def series(server):
    info = httpx.get(f"{server.url}/", headers={"accept": "application/json"}).json()
    fields = {f["name"]: f for f in info["signature"]["inputs"]}
    return fields["series"]["choices"][:3]


OUTPUTS = ["prediction", "proba_no", "proba_yes"]


def _iris_inputs(rows, binary: bool = True) -> list[InferInput]:
    inputs = []
    for name in rows.columns:
        tensor = InferInput(name, [len(rows)], "FP64")
        tensor.set_data_from_numpy(rows[name].to_numpy(np.float64), binary_data=binary)
        inputs.append(tensor)
    return inputs


SALES_OUTPUTS = ["series", "date", "forecast", "lower", "upper"]


def _sales_inputs(series: list[str], horizon: int, binary: bool = True, range_type: str = "INT64") -> list[InferInput]:
    names = InferInput("series", [len(series)], "BYTES")
    names.set_data_from_numpy(np.array([s.encode() for s in series], dtype=object), binary_data=binary)
    ranges = InferInput("range", [len(series), 1], range_type)
    ranges.set_data_from_numpy(
        np.full((len(series), 1), horizon, dtype=np.dtype(range_type.lower())), binary_data=binary
    )
    return [names, ranges]


def _predict(server, model: str, instances: list[dict]) -> list[dict]:
    r = httpx.post(f"{server.url}/predict", params={"model": model}, json={"instances": instances}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris") and client.is_model_ready("sales")
    assert client.get_server_metadata()["name"] == "conveyor"
    iris = client.get_model_metadata("iris")
    assert [(t["name"], t["datatype"], t["shape"]) for t in iris["inputs"]] == [
        (f"x{i}", "FP64", [-1]) for i in range(4)
    ]
    sales = client.get_model_metadata("sales")
    assert {t["name"]: t["datatype"] for t in sales["inputs"]} == {"series": "BYTES", "range": "INT64"}
    assert {t["name"]: t["shape"] for t in sales["outputs"]}["forecast"] == [-1, -1]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_iris_fp64_answers_as_post_predict(client, server, iris_rows, binary):
    # binary_data=False sends the inputs as JSON; the outputs come as JSON only when each is asked for so
    outputs = None if binary else [InferRequestedOutput(n, binary_data=False) for n in OUTPUTS]
    result = client.infer("iris", _iris_inputs(iris_rows, binary), request_id="iris-1", outputs=outputs)
    response = result.get_response()
    assert response["model_name"] == "iris" and response["id"] == "iris-1"
    assert [o["name"] for o in response["outputs"]] == OUTPUTS
    assert all(("parameters" in o) is binary for o in response["outputs"])  # default: every output raw
    want = _predict(server, "iris", iris_rows.to_dict("records"))
    assert result.as_numpy("proba_yes").tolist() == [p["proba_yes"] for p in want]  # the same numbers, exactly
    assert result.as_numpy("proba_no").dtype == np.float64
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("prediction").tolist()]
    assert labels == [p["prediction"] for p in want]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_forecaster_bytes_and_int64_inputs_answer_rows_by_range_tensors(client, server, series, binary):
    outputs = None if binary else [InferRequestedOutput(n, binary_data=False) for n in SALES_OUTPUTS]
    result = client.infer("sales", _sales_inputs(series, 4, binary), outputs=outputs)
    assert all(("data" in o) is not binary for o in result.get_response()["outputs"])
    assert result.as_numpy("forecast").shape == (3, 4) and result.as_numpy("forecast").dtype == np.float64
    assert result.as_numpy("date").shape == (3, 4) and result.as_numpy("series").shape == (3,)
    want = _predict(server, "sales", [{"series": s, "range": 4} for s in series])
    assert result.as_numpy("forecast").tolist() == [p["forecast"] for p in want]
    assert result.as_numpy("lower").tolist() == [p["lower"] for p in want]
    dates = [[d.decode() if isinstance(d, bytes) else d for d in row] for row in result.as_numpy("date").tolist()]
    assert dates == [p["date"] for p in want]


def test_every_integer_datatype_a_range_may_be_sent_as(client, series):
    want = client.infer("sales", _sales_inputs(series[:1], 2)).as_numpy("forecast").tolist()
    for datatype in ("INT8", "INT16", "INT32", "UINT8", "UINT16", "UINT32", "UINT64"):
        assert (
            client.infer("sales", _sales_inputs(series[:1], 2, range_type=datatype)).as_numpy("forecast").tolist()
            == want
        )


def test_outputs_asked_for_are_the_ones_answered_each_as_asked(client, series):
    outputs = [InferRequestedOutput("forecast"), InferRequestedOutput("date", binary_data=False)]
    result = client.infer("sales", _sales_inputs(series[:2], 3), outputs=outputs)
    answered = {o["name"]: o for o in result.get_response()["outputs"]}
    assert list(answered) == ["forecast", "date"]
    assert answered["forecast"]["parameters"]["binary_data_size"] == 2 * 3 * 8 and "data" not in answered["forecast"]
    assert len(answered["date"]["data"]) == 6 and "parameters" not in answered["date"]
    assert result.as_numpy("forecast").shape == (2, 3) and result.as_numpy("lower") is None
    with pytest.raises(InferenceServerException) as refused:
        client.infer("sales", _sales_inputs(series[:1], 3), outputs=[InferRequestedOutput("nope")])
    assert refused.value.status() == "400"
    assert "unknown output(s) ['nope']; this model answers ['series', 'date'" in refused.value.message()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_a_compressed_request_is_read(client, iris_rows, algorithm):
    plain = client.infer("iris", _iris_inputs(iris_rows)).as_numpy("proba_yes")
    packed = client.infer("iris", _iris_inputs(iris_rows), request_compression_algorithm=algorithm)
    assert packed.as_numpy("proba_yes").tolist() == plain.tolist()
    # asked for a compressed answer, the server answers plainly (allowed: no Content-Encoding), and it is read
    plain_answer = client.infer("iris", _iris_inputs(iris_rows), response_compression_algorithm=algorithm)
    assert plain_answer.as_numpy("proba_yes").tolist() == plain.tolist()


def _with(inputs: list[InferInput], name: str, datatype: str, values: np.ndarray, shape=None) -> list[InferInput]:
    tensor = InferInput(name, list(values.shape), datatype)
    tensor.set_data_from_numpy(values)
    if shape is not None:
        tensor.set_shape(shape)
    return [t for t in inputs if t.name() != name] + [tensor]


def test_bad_tensors_are_refused_with_400_and_a_readable_message(client, iris_rows, series):
    iris = _iris_inputs(iris_rows)
    sales = _sales_inputs(series[:1], 2)
    refused = [
        (
            "iris",
            _with(iris, "x0", "FP64", np.zeros(2)),
            "input 'x0' has 2 rows but input 'x1' has 5",
        ),
        (
            "iris",
            _with(iris, "x0", "FP64", np.zeros((5, 2))),
            "input 'x0': shape [5, 2] does not match 10 values (one column: [n] or [n, 1])",
        ),
        (
            "iris",
            _with(iris, "x0", "FP64", np.zeros(5), shape=[6]),
            "input 'x0': a FP64 tensor of shape [6] is 48 bytes (6 x 8), but its raw data is 40 bytes",
        ),
        (
            "iris",
            _with(iris, "x0", "BYTES", np.array([b"1"] * 5, dtype=object)),
            "input 'x0' is BYTES, but this model takes it as float (a finite number): send a number datatype",
        ),
        (
            "sales",
            _with(sales, "series", "FP64", np.zeros(1)),
            "input 'series' is FP64, but this model takes it as str",
        ),
        (
            "sales",
            _with(sales, "series", "BYTES", np.array([b"\xff"], dtype=object)),
            "input 'series': BYTES element 0 is not UTF-8 text",
        ),
        (
            "sales",
            _with(sales, "range", "FP32", np.ones(1, dtype=np.float32)),
            "input 'range' is FP32, but this model takes it as int",
        ),
        ("iris", [*iris, _with([], "nope", "FP64", np.zeros(5))[0]], "unknown input 'nope'; this model takes"),
        ("sales", _with(sales, "range", "INT64", np.array([0])), "'range' must be an integer between 1 and"),
    ]
    for model, inputs, message in refused:
        with pytest.raises(InferenceServerException) as error:
            client.infer(model, inputs)
        assert error.value.status() == "400", (message, error.value)
        assert message in error.value.message(), error.value.message()
    with pytest.raises(InferenceServerException) as error:
        client.infer("nope", iris)
    assert error.value.status() == "404" and "'nope'" in error.value.message()


def test_a_cut_short_body_or_header_length_is_a_400(server, iris_rows):
    """A body tritonclient builds, sent cut short or with a header length past its end (as a proxy might)."""
    body, json_size = InferenceServerClient.generate_request_body(_iris_inputs(iris_rows))
    url = f"{server.url}/v2/models/iris/infer"
    cases = [
        (body[:-3], json_size, "input 'x3': binary_data_size is 40 bytes but only 37 of the 157 bytes"),
        (body, len(body) + 1, f"Inference-Header-Content-Length is {len(body) + 1} bytes but the whole body is"),
        (body + b"xx", json_size, "2 bytes after the JSON header belong to no input"),
        (body, "x", "Inference-Header-Content-Length must be the JSON header's size in bytes, got 'x'"),
        (body[json_size:], 0, "malformed JSON"),
        (gzip.compress(body)[:-9], json_size, "the gzip body is cut short"),
    ]
    for i, (content, length, message) in enumerate(cases):
        headers = {"inference-header-content-length": str(length)}
        if i == len(cases) - 1:
            headers["content-encoding"] = "gzip"
        r = httpx.post(url, content=content, headers=headers)
        assert r.status_code == 400, (message, r.text)
        assert message in r.json()["error"] and r.json()["kind"] == "malformed_input", r.text
    r = httpx.post(url, content=body, headers={"inference-header-content-length": str(json_size)})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert int(r.headers["inference-header-content-length"]) < len(r.content)


def test_a_serverless_function_reads_and_answers_binary_tensors_alike(store_dir, client, iris_rows):
    """The Lambda adapter runs the service's V2 codecs: raw tensors in, raw tensors out (base64 over Lambda)."""
    import base64

    from tritonclient.http import InferResult

    from conveyor.serve.aws_lambda import lambda_handler
    from conveyor.serve.function import Function

    body, json_size = InferenceServerClient.generate_request_body(_iris_inputs(iris_rows))
    event = {
        "version": "2.0",
        "rawPath": "/v2/models/iris/infer",
        "rawQueryString": "",
        "headers": {"inference-header-content-length": str(json_size), "content-type": "application/octet-stream"},
        "requestContext": {"http": {"method": "POST"}, "stage": "$default"},
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
    }
    answer = lambda_handler(Function.load(str(store_dir), "iris"))(event)
    assert answer["statusCode"] == 200 and answer["isBase64Encoded"], answer
    length = int(answer["headers"]["inference-header-content-length"])
    result = InferResult.from_response_body(base64.b64decode(answer["body"]), header_length=length)
    want = client.infer("iris", _iris_inputs(iris_rows))
    assert result.as_numpy("proba_yes").tolist() == want.as_numpy("proba_yes").tolist()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_one_matrix_tensor_as_kserve_and_mlserver_sklearn_clients_send(client, server, iris_rows, binary):
    # their scikit-learn servers take one [rows, features] tensor (`input-0`): its columns in the signature's order
    matrix = InferInput("input-0", list(iris_rows.shape), "FP64")
    matrix.set_data_from_numpy(iris_rows.to_numpy(np.float64), binary_data=binary)
    result = client.infer("iris", [matrix])
    want = _predict(server, "iris", iris_rows.to_dict("records"))
    assert result.as_numpy("proba_yes").tolist() == [p["proba_yes"] for p in want]
    narrow = InferInput("input-0", [len(iris_rows), 3], "FP64")
    narrow.set_data_from_numpy(iris_rows.to_numpy(np.float64)[:, :3], binary_data=binary)
    with pytest.raises(InferenceServerException, match=r"'input-0' is not one of this model's inputs.*\[rows, 4\]"):
        client.infer("iris", [narrow])  # 3 columns for a model of 4: not a matrix of its inputs
