"""Many models in one server: each at its own paths, the repository API across workers, broken models refused."""

from __future__ import annotations

import re
import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from conveyor.store import ModelStore
from tests.conftest import assert_one_line_error, conveyor, free_port, scrape, start_server
from tests.integration.test_reload import add_scale

pytestmark = pytest.mark.integration

IRIS_ROWS = [{"x0": 1.0, "x1": 0.5, "x2": 0.0, "x3": -1.0}, {"x0": -2.0, "x1": -0.5, "x2": 0.3, "x3": 0.1}]


@pytest.fixture(scope="module")
def store(tmp_path_factory, sales_forecaster, iris_model) -> ModelStore:
    root = tmp_path_factory.mktemp("repo")
    store = ModelStore(root / "store")
    store.path = root / "store"  # type: ignore[attr-defined]
    store.add("sales", sales_forecaster, flavor="forecaster", metrics=sales_forecaster.summary())
    store.add("iris", iris_model[0], flavor="sklearn")
    add_scale(store, root, 2)
    store.promote("scale:1", "production")
    return store


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("repo-server")
    grpc_port = free_port()
    srv = start_server(
        store.uri,
        "sales",
        tmp,
        "iris",
        "scale@production",
        "--workers",
        "2",
        "--poll-interval",
        "0.2",
        "--grpc-port",
        str(grpc_port),
    )
    srv.grpc = f"127.0.0.1:{grpc_port}"  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def index(client: httpx.Client) -> dict[str, dict]:
    r = client.post("/v2/repository/index", json={})
    assert r.status_code == 200, r.text
    return {row["name"]: row for row in r.json()}


def scale(client: httpx.Client, x: float) -> float:
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [x]}]}
    r = client.post("/v2/models/scale/infer", json=body)
    assert r.status_code == 200, r.text
    return r.json()["outputs"][0]["data"][0]


def grpc_scale(target: str, x: float) -> float:
    client = tc.InferenceServerClient(target)
    try:
        tensor = tc.InferInput("x", [1], "FP64")
        tensor.set_data_from_numpy(np.array([x]))
        return float(client.infer("scale", [tensor]).as_numpy("y")[0])
    finally:
        client.close()


def test_three_models_answer_at_their_own_paths(server, iris_model):
    est, _ = iris_model
    with server.client() as c:
        sales = c.get("/predict", params={"range": 2})  # the first named keeps the seed's GET /predict
        assert sales.status_code == 200 and sales.json()["model"] == "sales" and len(sales.json()["predictions"]) == 2
        iris = c.post("/predict", params={"model": "iris"}, json={"instances": IRIS_ROWS})
        assert iris.status_code == 200, iris.text
        import pandas as pd

        expected = list(est.predict(pd.DataFrame(IRIS_ROWS)))
        assert [p["prediction"] for p in iris.json()["predictions"]] == expected
        assert scale(c, 1.5) == 3.0
        for name in ("sales", "iris", "scale"):
            assert c.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
            assert c.get(f"/v2/models/{name}").json()["name"] == name
        unknown = c.post("/predict", params={"model": "nope"}, json={"instances": IRIS_ROWS})
        assert unknown.status_code == 404 and "'nope'" in unknown.json()["message"]
        assert {n: r["state"] for n, r in index(c).items()} == {"sales": "READY", "iris": "READY", "scale": "READY"}
        ready = c.get("/readyz").json()
        assert ready["ready"] and ready["model"] == "sales" and set(ready["models"]) == {"sales", "iris", "scale"}
        grpc = tc.InferenceServerClient(server.grpc)
        for name in ("sales", "iris", "scale"):
            assert grpc.is_model_ready(name) and grpc.get_model_metadata(name).name == name
        inputs = []
        for column in ("x0", "x1", "x2", "x3"):
            tensor = tc.InferInput(column, [2], "FP64")
            tensor.set_data_from_numpy(np.array([row[column] for row in IRIS_ROWS]))
            inputs.append(tensor)
        answer = grpc.infer("iris", inputs).as_numpy("prediction")
        assert [v.decode() for v in answer] == expected
        series = tc.InferInput("series", [1], "BYTES")
        series.set_data_from_numpy(np.array([b"total"], dtype=object))
        horizon = tc.InferInput("range", [1], "INT64")
        horizon.set_data_from_numpy(np.array([2], dtype=np.int64))
        assert grpc.infer("sales", [series, horizon]).as_numpy("forecast").shape == (1, 2)
        grpc.close()
        assert grpc_scale(server.grpc, 1.5) == 3.0
        scrape(
            f"{server.url}/metrics",
            re.escape('conveyor_model_requests_total{model="iris",outcome="ok"} ') + "[1-9]",
            re.escape('conveyor_model_requests_total{model="scale",outcome="ok"} ') + "[1-9]",
        )


def test_unload_and_load_apply_to_every_worker(server):
    with server.client() as c:
        r = c.post("/v2/repository/models/iris/unload")
        assert r.status_code == 200, r.text
        # new connections land on either worker: none of them serves iris any more, both serve the others
        for _ in range(12):
            with server.client() as fresh:
                assert fresh.get("/v2/models/iris/ready").status_code == 404
                assert (
                    fresh.post("/predict", params={"model": "iris"}, json={"instances": IRIS_ROWS}).status_code == 404
                )
                assert scale(fresh, 2.0) == 4.0
                assert fresh.get("/predict", params={"range": 1}).status_code == 200
            grpc = tc.InferenceServerClient(server.grpc)  # a new channel: either worker
            with pytest.raises(InferenceServerException) as gone:
                grpc.get_model_metadata("iris")
            assert gone.value.status() == "StatusCode.NOT_FOUND"
            with pytest.raises(InferenceServerException, match="does not serve model 'iris'"):
                grpc.is_model_ready("iris")  # NOT_FOUND, as KServe answers a model it does not serve
            assert grpc.is_model_ready("sales")
            grpc.close()
            assert grpc_scale(server.grpc, 2.0) == 4.0
        assert index(c)["iris"] == {"name": "iris", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}
        assert [row["name"] for row in c.post("/v2/repository/index", json={"ready": True}).json()] == [
            "sales",
            "scale",
        ]
        r = c.post("/v2/repository/models/iris/load")
        assert r.status_code == 200, r.text
        for _ in range(12):
            with server.client() as fresh:
                got = fresh.post("/predict", params={"model": "iris"}, json={"instances": IRIS_ROWS})
                assert got.status_code == 200, got.text
        missing = c.post("/v2/repository/models/ghost/load")
        assert missing.status_code == 404 and "ghost" in missing.json()["message"]
        assert c.post("/v2/repository/models/ghost/unload").status_code == 404


def test_the_repository_over_grpc_as_tritonclient_calls_it(server):
    """Triton's repository RPCs: the same index as REST, unload and load in every worker, refusals as statuses."""
    grpc = tc.InferenceServerClient(server.grpc)
    try:
        with server.client() as c:
            rest = index(c)
            listed = grpc.get_model_repository_index(as_json=True)["models"]
            assert {m["name"]: m["state"] for m in listed} == {n: r["state"] for n, r in rest.items()}
            assert {m["name"]: m.get("version", "") for m in listed} == {n: r["version"] for n, r in rest.items()}
            grpc.unload_model("scale")  # tritonclient sends unload_dependents=False: accepted, and moot
            assert index(c)["scale"] == {"name": "scale", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}
            listed = grpc.get_model_repository_index(as_json=True)["models"]
            assert {m["name"]: m.get("reason", "") for m in listed}["scale"] == "unloaded"
            assert repository_index(server.grpc, ready=True) == [("sales", "READY"), ("iris", "READY")]
            for _ in range(8):  # a new channel lands on either worker: neither serves it
                with pytest.raises(InferenceServerException) as gone:
                    grpc_scale(server.grpc, 2.0)
                assert gone.value.status() == "StatusCode.NOT_FOUND"
            grpc.load_model("scale")
            for _ in range(8):
                assert grpc_scale(server.grpc, 2.0) == 4.0
            assert index(c)["scale"]["state"] == "READY"

            import grpc as grpcio

            with pytest.raises(grpcio.RpcError) as other:
                repository_index(server.grpc, repository_name="models")
            assert other.value.code() == grpcio.StatusCode.INVALID_ARGUMENT
            assert "leave repository_name empty" in other.value.details()
            with pytest.raises(InferenceServerException) as config:
                grpc.load_model("iris", config='{"backend": "onnxruntime"}')
            assert config.value.status() == "StatusCode.INVALID_ARGUMENT"
            assert "load takes no 'config'" in config.value.message()
            with pytest.raises(InferenceServerException) as ghost:
                grpc.load_model("ghost")
            assert ghost.value.status() == "StatusCode.NOT_FOUND" and "'ghost'" in ghost.value.message()
            with pytest.raises(InferenceServerException) as ghost:
                grpc.unload_model("ghost", unload_dependents=True)
            assert ghost.value.status() == "StatusCode.NOT_FOUND"

            for body in ({"parameters": {"config": "{}"}}, {"parameters": {"file:1/model.onnx": "AAAA"}}):
                refused = c.post("/v2/repository/models/iris/load", json=body)
                assert refused.status_code == 400 and "load takes no" in refused.json()["message"], refused.text
            not_object = c.post("/v2/repository/models/iris/load", json={"parameters": []})
            assert (
                not_object.status_code == 400 and not_object.json()["message"] == '"parameters" must be a JSON object'
            )
            odd = c.post("/v2/repository/models/iris/unload", json={"parameters": {"force": True}})
            assert odd.status_code == 400
            assert odd.json()["message"] == "unload takes no parameter 'force' (accepted: unload_dependents)"
            assert index(c)["iris"]["state"] == "READY"  # nothing refused was done
    finally:
        grpc.close()


def repository_index(target: str, **request: object) -> list[tuple[str, str]]:
    """(name, state) of each model a fresh channel's RepositoryIndex lists, with fields tritonclient leaves out."""
    import grpc as grpcio
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpcio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(**request), timeout=30)
    return [(m.name, m.state) for m in response.models]


def test_a_broken_new_version_is_refused_while_every_model_serves(server, store, tmp_path):
    ref = add_scale(store, tmp_path, 5)
    (store.path / "scale" / str(ref.version) / "model.py").write_text("raise SystemExit('tampered')")
    store.promote(ref, "production")
    time.sleep(1.5)  # several alias checks
    with server.client() as c:
        for _ in range(6):
            assert scale(c, 1.0) == 2.0
            assert grpc_scale(server.grpc, 1.0) == 2.0
            assert c.post("/predict", params={"model": "iris"}, json={"instances": IRIS_ROWS}).status_code == 200
            assert c.get("/predict", params={"range": 1}).status_code == 200
        assert 'conveyor_model_reloads_total{outcome="refused"}' in c.get("/metrics").text
    store.promote("scale:1", "production")


def test_a_model_that_cannot_load_is_reported_and_the_others_serve(tmp_path, sales_forecaster, iris_model):
    store = ModelStore(tmp_path / "store")
    store.add("iris", iris_model[0], flavor="sklearn")
    ref = add_scale(store, tmp_path, 2)
    (tmp_path / "store" / "scale" / str(ref.version) / "model.py").write_text("raise SystemExit('tampered')")
    server = start_server(store.uri, "--all", tmp_path, "--workers", "1")
    try:
        with server.client() as c:
            ready = c.get("/readyz")
            assert ready.status_code == 200 and ready.json()["models"] == {"iris": 1}
            assert "checksum" in ready.json()["refused"]["scale"]
            rows = index(c)
            assert rows["iris"]["state"] == "READY"
            assert rows["scale"]["state"] == "UNAVAILABLE" and "checksum" in rows["scale"]["reason"]
            broken = c.get("/v2/models/scale/ready")
            assert broken.status_code == 503 and "could not be loaded" in broken.json()["message"]
            assert c.post("/predict", params={"model": "iris"}, json={"instances": IRIS_ROWS}).status_code == 200
        assert "warning: not serving scale" in server.log.read_text()
    finally:
        server.stop()


def test_serve_refuses_unknown_names_and_nothing_named(store):
    proc = conveyor("serve", "sales", "nope", "--store", store.uri, "--port", "1", check=False)
    assert_one_line_error(proc, 3, "nope")
    proc = conveyor("serve", "--store", store.uri, check=False)
    assert_one_line_error(proc, 2, "--all")
    proc = conveyor("serve", "sales", "--all", "--store", store.uri, check=False)
    assert_one_line_error(proc, 2, "not both")
    proc = conveyor("serve", "sales", "iris", "sales:1", "--store", store.uri, check=False)
    assert_one_line_error(proc, 2, "['sales'] named more than once")
