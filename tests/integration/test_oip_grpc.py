"""The Open Inference Protocol over gRPC, asked by the reference client (tritonclient.grpc, default settings).

One real server (`conveyor serve sales iris broken --grpc-port P --workers 2`) answers the whole module; its gRPC answers
are compared with POST /predict's for the same rows. Requests tritonclient cannot make (typed contents, broken raw
contents) go through Triton's own generated stub, as KServe's and MLServer's clients send them.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as tc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from conveyor.store import ModelStore
from tests.conftest import Server, assert_one_line_error, free_port, scrape, start_server

pytestmark = pytest.mark.integration

IRIS = ["x0", "x1", "x2", "x3"]


# A model whose own code fails: its message (a secret, a path) must reach the server log, never the client.
BROKEN = """
import pandas as pd
SIGNATURE = {"inputs": [{"name": "x", "type": "float"}], "outputs": [{"name": "y", "type": "float"}]}
def predict(frame):
    if (frame["x"] < 0).any():
        raise RuntimeError("password=hunter2 in /srv/secret/config.yaml")
    return pd.DataFrame({"y": frame["x"]})
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory, sales_forecaster, iris_model) -> ModelStore:
    root = tmp_path_factory.mktemp("grpc-store")
    store = ModelStore(root / "store")
    store.add("sales", sales_forecaster, flavor="forecaster", metrics=sales_forecaster.summary())
    store.add("iris", iris_model[0], flavor="sklearn")
    (root / "broken.py").write_text(BROKEN)
    store.add("broken", f"{root / 'broken.py'}:predict", flavor="function")
    return store


@pytest.fixture(scope="module")
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for srv in started:
        srv.stop()


@pytest.fixture
def server(servers, store, tmp_path_factory) -> Server:
    """The module's server: three models over HTTP and gRPC from two workers; a new one if a test stopped it."""
    if not servers or servers[-1].process.poll() is not None:
        port = free_port()
        tmp = tmp_path_factory.mktemp("grpc-server")
        srv = start_server(store.uri, "sales", tmp, "iris", "broken", "--grpc-port", str(port), "--workers", "2")
        srv.grpc = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
        servers.append(srv)
    return servers[-1]


@pytest.fixture
def client(server):
    with tc.InferenceServerClient(server.grpc) as c:
        yield c


@pytest.fixture(scope="module")
def series(store) -> list[str]:
    return list(store.load("sales").signature.field("series").choices[:3])


def stub(server) -> tuple[grpc.Channel, service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(server.grpc)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def refused(call, code: str) -> str:
    """Run a client call that must fail with gRPC status `code`; its message."""
    with pytest.raises(InferenceServerException) as err:
        call()
    assert err.value.status() == f"StatusCode.{code}", (err.value.status(), err.value.message())
    return err.value.message()


def predict(server, model: str, rows: list[dict]) -> list[dict]:
    r = httpx.post(f"{server.url}/predict", params={"model": model}, json={"instances": rows}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris") and client.is_model_ready("sales")
    assert client.is_model_ready("iris", "1")
    meta = client.get_server_metadata()
    assert meta.name == "conveyor" and meta.version


def test_model_metadata_is_the_rest_metadata(server, client):
    for name in ("sales", "iris"):
        rest = httpx.get(f"{server.url}/v2/models/{name}").json()
        meta = client.get_model_metadata(name)
        assert (meta.name, list(meta.versions), meta.platform) == (rest["name"], rest["versions"], rest["platform"])
        for ours, theirs in ((meta.inputs, rest["inputs"]), (meta.outputs, rest["outputs"])):
            assert [(t.name, t.datatype, list(t.shape)) for t in ours] == [
                (t["name"], t["datatype"], t["shape"]) for t in theirs
            ]
    assert client.get_model_metadata("iris", "1").name == "iris"


def test_iris_fp64_answers_as_post_predict(server, client, iris_model):
    _, X = iris_model
    rows = X.iloc[:5]
    inputs = []
    for name in IRIS:
        tensor = tc.InferInput(name, [len(rows)], "FP64")
        tensor.set_data_from_numpy(rows[name].to_numpy(np.float64))
        inputs.append(tensor)
    result = client.infer("iris", inputs, request_id="iris-1")
    answer = result.get_response()
    assert (answer.model_name, answer.model_version, answer.id) == ("iris", "1", "iris-1")
    assert len(answer.raw_output_contents) == len(answer.outputs)  # raw in, raw out: what tritonclient reads
    expected = predict(server, "iris", rows.to_dict("records"))
    for out in answer.outputs:
        got = result.as_numpy(out.name)
        want = [p[out.name] for p in expected]
        if out.datatype == "BYTES":
            assert [v.decode() for v in got] == want
        else:
            np.testing.assert_array_equal(got, np.asarray(want))
    assert {o.name for o in answer.outputs} == set(expected[0])


def test_one_matrix_tensor_as_kserve_and_mlserver_sklearn_clients_send(server, client, iris_model):
    rows = iris_model[1].iloc[:3]
    matrix = tc.InferInput("input-0", list(rows.shape), "FP64")  # [rows, features], columns in signature order
    matrix.set_data_from_numpy(rows.to_numpy(np.float64))
    got = client.infer("iris", [matrix]).as_numpy("proba_yes")
    np.testing.assert_array_equal(got, [p["proba_yes"] for p in predict(server, "iris", rows.to_dict("records"))])


def test_sales_forecaster_bytes_and_int64_answer_rows_by_range(server, client, series):
    names = np.array([s.encode() for s in series], dtype=np.object_)
    horizon = np.full(len(series), 4, dtype=np.int64)
    s_in, r_in = tc.InferInput("series", [len(series)], "BYTES"), tc.InferInput("range", [len(series), 1], "INT64")
    s_in.set_data_from_numpy(names)
    r_in.set_data_from_numpy(horizon.reshape(-1, 1))
    result = client.infer("sales", [s_in, r_in])
    expected = predict(server, "sales", [{"series": s, "range": 4} for s in series])
    for name in ("forecast", "lower", "upper"):
        got = result.as_numpy(name)
        assert got.shape == (len(series), 4) and got.dtype == np.float64
        np.testing.assert_array_equal(got, np.array([p[name] for p in expected]))
    dates = result.as_numpy("date")
    assert dates.shape == (len(series), 4)
    assert [[d.decode() for d in row] for row in dates] == [p["date"] for p in expected]


def test_requested_outputs_only_in_their_order(client, series):
    s_in, r_in = tc.InferInput("series", [1], "BYTES"), tc.InferInput("range", [1], "INT64")
    s_in.set_data_from_numpy(np.array([series[0].encode()], dtype=np.object_))
    r_in.set_data_from_numpy(np.array([2], dtype=np.int64))
    wanted = [tc.InferRequestedOutput("upper"), tc.InferRequestedOutput("forecast")]
    result = client.infer("sales", [s_in, r_in], outputs=wanted)
    assert [o.name for o in result.get_response().outputs] == ["upper", "forecast"]
    assert result.as_numpy("forecast").shape == (1, 2)
    message = refused(
        lambda: client.infer("sales", [s_in, r_in], outputs=[tc.InferRequestedOutput("nope")]), "INVALID_ARGUMENT"
    )
    assert "nope" in message and "forecast" in message


def test_typed_contents_answer_typed_outputs_equal_to_raw(server, client, iris_model, series):
    """KServe's and MLServer's clients send typed contents (fp64_contents, bytes_contents, int64_contents)."""
    _, X = iris_model
    rows = X.iloc[:3]
    request = service_pb2.ModelInferRequest(model_name="iris", id="typed")
    for name in IRIS:
        tensor = request.inputs.add(name=name, datatype="FP64", shape=[len(rows)])
        tensor.contents.fp64_contents.extend(rows[name].tolist())
    channel, inference = stub(server)
    with channel:
        answer = inference.ModelInfer(request, timeout=10)
        assert answer.id == "typed" and len(answer.raw_output_contents) == 0
        expected = predict(server, "iris", rows.to_dict("records"))
        for out in answer.outputs:
            want = [p[out.name] for p in expected]
            if out.datatype == "BYTES":
                assert [v.decode() for v in out.contents.bytes_contents] == want
            else:
                assert list(out.contents.fp64_contents) == want

        request = service_pb2.ModelInferRequest(model_name="sales")
        request.inputs.add(name="series", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
            [s.encode() for s in series[:2]]
        )
        request.inputs.add(name="range", datatype="INT64", shape=[2]).contents.int64_contents.extend([3, 3])
        answer = inference.ModelInfer(request, timeout=10)
        forecast = next(o for o in answer.outputs if o.name == "forecast")
        assert list(forecast.shape) == [2, 3]
        expected = predict(server, "sales", [{"series": s, "range": 3} for s in series[:2]])
        assert list(forecast.contents.fp64_contents) == [v for p in expected for v in p["forecast"]]


def test_bad_tensors_are_invalid_argument_never_internal(server, client, series):
    logged = len(server.log.read_text())

    def iris_input(name: str, shape: list[int], datatype: str, data: np.ndarray) -> tc.InferInput:
        tensor = tc.InferInput(name, shape, datatype)
        tensor.set_data_from_numpy(data)
        return tensor

    good = [iris_input(n, [2], "FP64", np.array([0.1, 0.2])) for n in IRIS]
    wide = [iris_input(n, [2, 2], "FP64", np.zeros((2, 2))) for n in IRIS]
    assert "shape [2, 2]" in refused(lambda: client.infer("iris", wide), "INVALID_ARGUMENT")
    texts = [*good[:3], iris_input("x3", [2], "BYTES", np.array([b"a", b"b"], dtype=np.object_))]
    assert "x3" in refused(lambda: client.infer("iris", texts), "INVALID_ARGUMENT")
    unknown = [*good, iris_input("x9", [2], "FP64", np.array([0.1, 0.2]))]
    assert "x9" in refused(lambda: client.infer("iris", unknown), "INVALID_ARGUMENT")
    assert "nope" in refused(lambda: client.infer("nope", good), "NOT_FOUND")
    assert "version" in refused(lambda: client.infer("iris", good, model_version="7"), "NOT_FOUND")
    refused(lambda: client.is_model_ready("nope"), "NOT_FOUND")
    refused(lambda: client.get_model_metadata("nope"), "NOT_FOUND")
    s_in, r_in = tc.InferInput("series", [1], "BYTES"), tc.InferInput("range", [1], "INT64")
    s_in.set_data_from_numpy(np.array([series[0].encode()], dtype=np.object_))
    r_in.set_data_from_numpy(np.array([10_000], dtype=np.int64))
    refused(lambda: client.infer("sales", [s_in, r_in]), "INVALID_ARGUMENT")  # beyond the model's range

    channel, inference = stub(server)
    with channel:

        def status(request) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.RpcError) as err:
                inference.ModelInfer(request, timeout=10)
            return err.value.code(), err.value.details()

        short = service_pb2.ModelInferRequest(model_name="iris")  # 2 FP64 declared, 7 bytes sent
        for name in IRIS:
            short.inputs.add(name=name, datatype="FP64", shape=[2])
        short.raw_input_contents.extend([b"\0" * 16] * 3 + [b"\0" * 7])
        code, details = status(short)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "7 bytes" in details
        del short.raw_input_contents[-1]
        code, details = status(short)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "3 entries for 4 inputs" in details

        misplaced = service_pb2.ModelInferRequest(model_name="iris")
        for name in IRIS:
            misplaced.inputs.add(name=name, datatype="FP64", shape=[1]).contents.int64_contents.append(1)
        code, details = status(misplaced)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "fp64_contents" in details

        unknown_type = service_pb2.ModelInferRequest(model_name="iris")
        unknown_type.inputs.add(name="input-0", datatype="FP128", shape=[1, 4])
        code, details = status(unknown_type)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown datatype 'FP128'" in details

        too_wide = service_pb2.ModelInferRequest(model_name="iris")
        too_wide.inputs.add(name="input-0", datatype="FP64", shape=[1, 5]).contents.fp64_contents.extend([0.1] * 5)
        code, details = status(too_wide)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "must be [rows, 4]" in details and "[1, 5]" in details

        nameless = service_pb2.ModelInferRequest()
        assert status(nameless)[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert "Traceback" not in server.log.read_text()[logged:]


def test_too_large_is_resource_exhausted(client):
    """Over --max-body-bytes (8 MiB) grpc refuses the message itself; over --max-rows-per-request, the service."""
    big = [tc.InferInput(n, [1_200_000], "FP64") for n in IRIS]
    for tensor in big:
        tensor.set_data_from_numpy(np.zeros(1_200_000))
    assert "larger than max" in refused(lambda: client.infer("iris", big), "RESOURCE_EXHAUSTED")
    many = [tc.InferInput(n, [100_001], "FP64") for n in IRIS]
    for tensor in many:
        tensor.set_data_from_numpy(np.zeros(100_001))
    assert "split the request" in refused(lambda: client.infer("iris", many), "RESOURCE_EXHAUSTED")


def test_unexpected_errors_are_internal_with_a_request_id_and_no_library_text(server, client):
    x = tc.InferInput("x", [1], "FP64")
    x.set_data_from_numpy(np.array([1.0]))
    assert client.infer("broken", [x]).as_numpy("y").tolist() == [1.0]
    x.set_data_from_numpy(np.array([-1.0]))
    message = refused(lambda: client.infer("broken", [x], headers={"x-request-id": "client-chosen-7"}), "INTERNAL")
    assert message == "internal error: the server log has the details under request id client-chosen-7"
    channel, inference = stub(server)
    with channel:
        request = service_pb2.ModelInferRequest(model_name="broken")
        request.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(-2.0)
        with pytest.raises(grpc.RpcError) as err:
            inference.ModelInfer(request, timeout=10, metadata=[("x-request-id", "bad id <script>")])
        assert err.value.code() == grpc.StatusCode.INTERNAL and "hunter2" not in err.value.details()
        rid = dict(err.value.trailing_metadata())["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", rid) and rid in err.value.details()  # an unusable id is replaced
    x.set_data_from_numpy(np.array([2.0]))
    assert client.infer("broken", [x]).as_numpy("y").tolist() == [2.0]
    log = server.log.read_text()
    assert "client-chosen-7" in log and rid in log and "password=hunter2" in log


def test_both_workers_answer_grpc(server, iris_model):
    """Every worker binds the gRPC port (SO_REUSEPORT); the kernel gives each new connection to one of them."""
    master = psutil.Process(server.process.pid)
    port = int(server.grpc.rsplit(":", 1)[1])
    answered: set[int] = set()
    clients = []
    try:
        for _ in range(40):  # own connections: channels of one process share a subchannel unless told not to
            c = tc.InferenceServerClient(server.grpc, channel_args=[("grpc.use_local_subchannel_pool", 1)])
            clients.append(c)
            assert c.is_server_ready()
            for worker in master.children():
                if any(k.laddr.port == port and k.status == "ESTABLISHED" for k in worker.net_connections("tcp")):
                    answered.add(worker.pid)
            if len(answered) == 2:
                break
    finally:
        for c in clients:
            c.close()
    assert len(answered) == 2, answered


def test_calls_from_many_connections_batch_through_several_listeners(store, iris_model, tmp_path):
    """A grpc.aio server takes one call at a time from gRPC's core, so calls arriving on many connections reached
    one worker's batcher one by one. With --grpc-listeners 4 the worker runs four servers on the port: every
    connection is answered, the answers are right, and concurrent calls are predicted together."""
    port = free_port()
    srv = start_server(store.uri, "iris", tmp_path, "--grpc-port", str(port), "--grpc-listeners", "4", "--workers", "1")
    rows = iris_model[1].iloc[:16]
    want = predict(srv, "iris", rows.to_dict("records"))

    def ask(i: int) -> list[float]:
        c = tc.InferenceServerClient(f"127.0.0.1:{port}", channel_args=[("grpc.use_local_subchannel_pool", 1)])
        try:
            x = tc.InferInput("input-0", [1, 4], "FP64")
            x.set_data_from_numpy(rows.iloc[[i]].to_numpy(np.float64))
            return [float(c.infer("iris", [x]).as_numpy("proba_yes")[0]) for _ in range(40)]
        finally:
            c.close()

    try:
        assert "4 listener(s)" in srv.log.read_text()
        with ThreadPoolExecutor(16) as pool:  # 16 connections, one call in flight on each
            answers = list(pool.map(ask, range(16)))
        # a row predicted within a batch may differ from one predicted alone in the last bit (BLAS sums a
        # matrix product in another order), as with REST's batches
        np.testing.assert_allclose(answers, [[w["proba_yes"]] * 40 for w in want], rtol=1e-12)
        text = scrape(f"{srv.url}/metrics", r"conveyor_batch_requests_count [1-9]")
        merged = float(re.search(r"conveyor_batch_requests_sum (\S+)", text).group(1))
        batches = float(re.search(r"conveyor_batch_requests_count (\S+)", text).group(1))
        # one listener merges ~1.01 calls per predict here, four merge 1.5 to 2.7
        assert merged >= 640 and merged / batches > 1.2, (merged, batches)
    finally:
        srv.stop()


def test_grpc_requests_and_errors_are_in_the_metrics(server, client):
    client.is_server_live()
    refused(lambda: client.get_model_metadata("nope"), "NOT_FOUND")
    text = scrape(
        f"{server.url}/metrics",
        re.escape('conveyor_requests_total{method="GRPC",route="grpc:ServerLive",status="200"} ') + "[1-9]",
        re.escape('conveyor_requests_total{method="GRPC",route="grpc:ModelMetadata",status="404"} ') + "[1-9]",
    )
    assert 'conveyor_errors_total{kind="not_found"}' in text


def test_a_grpc_port_already_served_is_refused_in_one_line(server, store):
    """Workers bind with SO_REUSEPORT, which would let a second server of the same user take half of the
    connections to this port without a word; the second one is refused before it starts instead."""
    port = server.grpc.rsplit(":", 1)[1]
    args = ["serve", "iris", "--store", store.uri, "--port", str(free_port()), "--grpc-port", port, "--workers", "1"]
    proc = subprocess.run([sys.executable, "-m", "conveyor.cli", *args], capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc, 2, f"cannot serve gRPC on 127.0.0.1:{port}: Address already in use")


def test_grpc_port_without_the_grpc_extra_is_one_line(store):
    """The master checks the extra: the workers import grpc only after the fork, too late to say it in one line."""
    code = "import sys; sys.modules['grpc'] = None; from conveyor.cli import main; sys.argv[0] = 'conveyor'; main()"
    args = ["serve", "iris", "--store", store.uri, "--port", str(free_port()), "--grpc-port", str(free_port())]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc, 5, "pip install 'conveyor-ml[grpc]'")


def test_the_standard_health_service_answers_as_kubernetes_probes_ask(server):
    """grpc.health.v1, as Kubernetes' gRPC probes, Envoy and cloud load balancers call it."""
    with grpc.insecure_channel(server.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="grpc.reflection.v1.ServerReflection"), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert unknown.value.details() == (
            "unknown service 'grpc.reflection.v1.ServerReflection': ask '' or 'inference.GRPCInferenceService'"
        )
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        unknown_watch = health.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert next(unknown_watch).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN  # Watch's answer
        unknown_watch.cancel()


def test_sigterm_stops_the_grpc_server_cleanly(server):
    """SIGTERM stops every worker's gRPC server with its HTTP one: exit 0, no error logged, an idle gRPC connection
    does not hold the shutdown up, and a health Watch hears NOT_SERVING, then ends. (This stops the module's
    server; a later test gets a new one.)"""
    logged = len(server.log.read_text())
    with tc.InferenceServerClient(server.grpc) as idle, grpc.insecure_channel(server.grpc) as channel:
        assert idle.is_model_ready("iris")
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        started = time.monotonic()
        assert server.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 10
        assert [answer.status for answer in watch] == [health_pb2.HealthCheckResponse.NOT_SERVING]
        refused(lambda: idle.is_server_live(client_timeout=2), "UNAVAILABLE")
    log = server.log.read_text()[logged:]
    assert log.count("Application shutdown complete") == 2, log
    assert "Traceback" not in log and " ERROR " not in log, log
