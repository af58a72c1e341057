"""`conveyor deploy`: real renders into temp dirs, checked by hadolint and against the Kubernetes schemas.

Gateway API objects (Gateway, HTTPRoute) are CRDs, absent from kubernetes-validate's schemas: they are
checked structurally here instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from conveyor.cli import Group
from conveyor.deploy.cli import deploy
from conveyor.store import ModelStore

# kustomize (kubectl's, or built from the Go module proxy), the Gateway API's schemas (Go module proxy), uv export
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
FUNC = """
import pandas as pd
SIGNATURE = {"inputs": [{"name": "x", "type": "float"}], "outputs": [{"name": "y", "type": "float"}]}
def predict(frame):
    return pd.DataFrame({"y": frame["x"] * 2})
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """`sales` (production -> 1, plus 2), `Sales_EU` (needs a derived name) and `9lives` (no valid Service name)."""
    root = tmp_path_factory.mktemp("deploy-store")
    source = root.parent / "double.py"
    source.write_text(FUNC)
    ms = ModelStore(root)
    for name in ("sales", "sales", "Sales_EU", "9lives"):
        ms.add(name, source, flavor="function")
    ms.promote("sales:1", "production")
    return root


def locked_versions() -> dict[str, set[str]]:
    """Every package uv.lock pins (scipy has one version per Python range), by canonical name."""
    with (ROOT / "uv.lock").open("rb") as f:
        lock = tomllib.load(f)
    versions: dict[str, set[str]] = {}
    for package in lock["package"]:
        versions.setdefault(package["name"], set()).add(package["version"])
    return versions


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """Stands in for the PyPI download: a file named as each locked wheel would be (building is the
    integration test's job), so a render shows which of them an image installs."""
    path = tmp_path_factory.mktemp("wheels")
    for name, versions in locked_versions().items():
        for version in versions:
            (path / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"not a real wheel")
    return path


def installed(context: Path) -> dict[str, str]:
    """What the image's pip installs: the context's requirements.txt, `name==version` per line."""
    lines = (context / "wheelhouse" / "requirements.txt").read_text().split()
    return dict(line.split("==") for line in lines)


def run(*args: str | Path) -> click.testing.Result:
    """Through the same Group as `conveyor`, so errors come out as they do for users."""
    root = Group(commands={"deploy": deploy})
    return CliRunner().invoke(root, ["deploy", *map(str, args)])


def hadolint(dockerfile: Path) -> list[dict]:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([binary, "--format", "json", "--no-fail", str(dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    findings = json.loads(done.stdout or "[]")
    print(f"hadolint {dockerfile.name}: {len(findings)} findings {findings}")
    return findings


# --- docker ------------------------------------------------------------------------------------
def test_baked_context(store, wheelhouse, tmp_path):
    out = tmp_path / "ctx"
    result = run("docker", "sales", "--output", out, "--store", store, "--wheelhouse", wheelhouse)
    assert result.exit_code == 0, result.output
    assert "sales:1" in result.output and "baked in" in result.output

    manifest = (store / "sales" / "1" / "manifest.json").read_bytes()
    baked = out / "model" / "sales"
    assert (baked / "1" / "manifest.json").read_bytes() == manifest
    assert (baked / "1" / "model.py").read_text() == FUNC
    assert json.loads((baked / "aliases" / "production").read_text()) == {"version": 1}
    assert not (baked / "2").exists()
    assert len(list((out / "wheelhouse").glob("*.whl"))) == len(installed(out)) + 1  # + pip, to install them
    assert [p.name for p in (out / "dist").iterdir()] == ["conveyor_ml-0.1.0-py3-none-any.whl"]

    dockerfile = (out / "Dockerfile").read_text()
    assert dockerfile.count("FROM docker.io/library/debian:bookworm-slim") == 1
    assert "--no-index --no-deps --find-links /tmp/wheelhouse -r /tmp/wheelhouse/requirements.txt" in dockerfile
    assert "--no-index --no-deps /tmp/dist/*.whl" in dockerfile
    assert "python3 -m venv --without-pip /opt/venv" in dockerfile  # pip runs from its wheel: the image has none
    (pip,) = (out / "wheelhouse").glob("pip-*.whl")
    assert f"/opt/venv/bin/python /tmp/wheelhouse/{pip.name}/pip install" in dockerfile
    assert "pip" not in installed(out)
    assert not {"grpcio", "protobuf"} & set(installed(out))  # gRPC only with --grpc
    assert "CONVEYOR_GRPC_PORT" not in dockerfile and "EXPOSE 8080\n" in dockerfile
    assert "COPY model/ /models/" in dockerfile
    assert "USER 10001:10001" in dockerfile
    assert f'io.conveyor.model.sha256="{hashlib.sha256(manifest).hexdigest()}"' in dockerfile
    assert 'io.conveyor.model.name="sales"' in dockerfile and 'io.conveyor.model.version="1"' in dockerfile
    assert "org.opencontainers.image.created=" in dockerfile
    assert 'CONVEYOR_STORE="/models"' in dockerfile and 'CONVEYOR_MODEL="sales"' in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    assert 'ENTRYPOINT ["conveyor", "serve"]' in dockerfile
    assert "!model/" in (out / ".dockerignore").read_text()
    assert [f for f in hadolint(out / "Dockerfile") if f["level"] == "error"] == []


def test_pulled_context(store, wheelhouse, tmp_path):
    out = tmp_path / "ctx"
    uri = "gs://bucket/models"
    result = run(
        "docker", "sales:2", "-o", out, "--from-store", uri, "--store", store, "--wheelhouse", wheelhouse, "-t", "x/y:2"
    )
    assert result.exit_code == 0, result.output
    dockerfile = (out / "Dockerfile").read_text()
    assert not (out / "model").exists() and "COPY model/" not in dockerfile
    assert f'CONVEYOR_STORE="{uri}"' in dockerfile and 'CONVEYOR_MODEL="sales:2"' in dockerfile
    assert "CONVEYOR_POLL_INTERVAL=0" not in dockerfile  # a pulled model follows its alias
    assert 'io.conveyor.model.baked="false"' in dockerfile
    assert "gcsfs" in installed(out)  # to read gs:// at start
    assert [f for f in hadolint(out / "Dockerfile") if f["level"] == "error"] == []


def test_grpc_context(store, wheelhouse, tmp_path):
    """--grpc: the gRPC extra's locked wheels, the port set and exposed beside HTTP."""
    out = tmp_path / "ctx"
    result = run("docker", "sales", "-o", out, "--store", store, "--wheelhouse", wheelhouse, "--grpc")
    assert result.exit_code == 0, result.output
    versions = locked_versions()
    for dist in ("grpcio", "protobuf", "grpcio-health-checking"):
        assert installed(out)[dist] in versions[dist]
    dockerfile = (out / "Dockerfile").read_text()
    assert "CONVEYOR_GRPC_PORT=8081" in dockerfile and "EXPOSE 8080 8081\n" in dockerfile
    assert [f for f in hadolint(out / "Dockerfile") if f["level"] == "error"] == []


# what serving never imports stays out of the image; what it does is the locked version (issue 9 point 12)
NOT_SERVED = {"pyarrow", "matplotlib", "pillow", "fonttools", "kiwisolver", "contourpy"}
SERVING = {"numpy", "pandas", "joblib", "gunicorn", "uvicorn", "uvicorn-worker", "starlette"}


def test_demo_forecaster_image_leaves_out_what_serving_never_imports(store_dir, wheelhouse, tmp_path):
    """The sales forecaster serves precomputed arrays: neither statsmodels, scikit-learn, scipy, statsforecast (and
    its numba) nor holidays is loaded."""
    out = tmp_path / "ctx"
    result = run("docker", "sales", "-o", out, "--store", store_dir, "--wheelhouse", wheelhouse)
    assert result.exit_code == 0, result.output
    names = set(installed(out))
    assert names >= SERVING
    training_only = {"statsmodels", "scikit-learn", "scipy", "patsy", "statsforecast", "numba", "llvmlite", "holidays"}
    assert not names & (NOT_SERVED | training_only), names
    assert "left out (serving sales:1 never imports them): " in result.output
    wheels = {p.name.split("-")[0] for p in (out / "wheelhouse").glob("*.whl")}
    assert wheels == {n.replace("-", "_") for n in names | {"pip"}}


def test_a_scikit_learn_model_keeps_its_libraries(store_dir, wheelhouse, tmp_path):
    out = tmp_path / "ctx"
    result = run("docker", "iris", "-o", out, "--store", store_dir, "--wheelhouse", wheelhouse)
    assert result.exit_code == 0, result.output
    names = set(installed(out))
    assert names >= SERVING | {"scikit-learn", "scipy", "threadpoolctl"}
    assert not names & (NOT_SERVED | {"statsmodels", "patsy"}), names


def test_a_pulled_model_keeps_every_model_library(store_dir, wheelhouse, tmp_path):
    """Its alias may move to a model of another flavor: only what no model needs is left out."""
    out = tmp_path / "ctx"
    args = ("-o", out, "--store", store_dir, "--wheelhouse", wheelhouse, "--from-store", "s3://bucket/models")
    assert run("docker", "sales", *args).exit_code == 0
    names = set(installed(out))
    assert names >= SERVING | {"scikit-learn", "statsmodels", "scipy", "s3fs"}
    assert not names & NOT_SERVED, names


def test_the_image_installs_the_locked_versions(store_dir, wheelhouse, tmp_path):
    out = tmp_path / "ctx"
    assert run("docker", "iris", "-o", out, "--store", store_dir, "--wheelhouse", wheelhouse).exit_code == 0
    locked = locked_versions()
    assert all(version in locked[name] for name, version in installed(out).items()), installed(out)


def test_missing_wheels_are_named(store_dir, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "conveyor_ml-0.1.0-py3-none-any.whl").write_bytes(b"x")
    result = run("docker", "sales", "-o", tmp_path / "ctx", "--store", store_dir, "--wheelhouse", partial)
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert re.search(rf"{partial} lacks [-\w]+==[\w.]+, ", result.output), result.output
    assert not (tmp_path / "ctx").exists()


def test_installed_versions_agree_with_the_lock():
    """Outside a checkout (no uv.lock) the image pins what conveyor runs with: here, the same versions."""
    from conveyor.deploy.wheelhouse import installed_pins, locked_pins

    prune = ["pyarrow", "matplotlib", "statsmodels"]
    assert installed_pins(["serve"], prune) == [(p.name, p.version) for p in locked_pins(ROOT, ["serve"], prune)]


def test_rerender_replaces_the_context(store, wheelhouse, tmp_path):
    out = tmp_path / "ctx"
    assert run("docker", "sales", "-o", out, "--store", store, "--wheelhouse", wheelhouse).exit_code == 0
    assert run("docker", "sales:2", "-o", out, "--store", store, "--wheelhouse", wheelhouse).exit_code == 0
    assert sorted(p.name for p in (out / "model" / "sales").iterdir()) == ["2", "aliases"]
    assert [p.name for p in tmp_path.iterdir()] == ["ctx"]  # no staging directory left behind


def test_corrupted_model_is_not_baked(store, wheelhouse, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    (copy / "sales" / "1" / "model.py").write_text(FUNC.replace("* 2", "* 3"))
    result = run("docker", "sales", "-o", tmp_path / "ctx", "--store", copy, "--wheelhouse", wheelhouse)
    assert result.exit_code == 4
    assert "does not match its manifest checksum" in result.output
    assert not (tmp_path / "ctx").exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["nope"], 3, "no model named 'nope'"),
        (["sales:7"], 3, "sales has no version 7"),
        (["sales", "--tag", "Bad Tag"], 2, "bad image reference"),
        (["sales", "--push", "UPPER/case"], 2, "bad image reference"),
        (["sales", "--workers", "0"], 2, "--workers must be between 1 and 64"),
        (["sales", "--bake", "--from-store", "gs://b/m"], 2, "exclude each other"),
    ],
)
def test_docker_refusals_write_nothing(store, wheelhouse, tmp_path, args, code, message):
    out = tmp_path / "ctx"
    result = run("docker", *args, "-o", out, "--store", store, "--wheelhouse", wheelhouse)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# --- kubernetes --------------------------------------------------------------------------------
GATEWAY_API = "sigs.k8s.io/gateway-api@v1.6.3"
KUSTOMIZE = "sigs.k8s.io/kustomize/kustomize/v5@v5.5.0"
CACHE = Path(os.environ.get("CONVEYOR_CACHE", Path.home() / ".cache" / "conveyor"))
GATEWAY_KINDS = {"Gateway": "gateways", "HTTPRoute": "httproutes"}


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def gateway_api() -> dict[str, dict]:
    """The Gateway API's own v1 schemas, from its Go module (the proxy serves it): kubernetes-validate has no CRDs."""
    if shutil.which("go") is None:
        skip_or_fail("go is not installed: the Gateway API schemas come from the Go module proxy")
    done = subprocess.run(["go", "mod", "download", "-json", GATEWAY_API], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    crds = Path(json.loads(done.stdout)["Dir"]) / "config" / "crd" / "standard"
    schemas = {}
    for kind, plural in GATEWAY_KINDS.items():
        crd = yaml.safe_load((crds / f"gateway.networking.k8s.io_{plural}.yaml").read_text())
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schemas[kind] = v1["schema"]["openAPIV3Schema"]
    return schemas


@functools.cache
def kustomize_command() -> tuple[str, ...]:
    """kustomize as `kubectl apply -k` runs it: kubectl's, else a kustomize on PATH, else one built once from the
    Go module proxy into the cache (two minutes)."""
    if shutil.which("kubectl"):
        return ("kubectl", "kustomize")
    built = CACHE / "bin" / "kustomize"
    found = shutil.which("kustomize") or (str(built) if built.is_file() else None)
    if found:
        return (found, "build")
    if shutil.which("go") is None:
        skip_or_fail("neither kubectl nor kustomize is installed, and no go to build kustomize")
    env = {**os.environ, "GOBIN": str(built.parent)}
    done = subprocess.run(["go", "install", KUSTOMIZE], capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stderr
    return (str(built), "build")


def kustomize(directory: Path) -> list[dict]:
    """What `kubectl apply -k DIRECTORY` applies: kustomize's own build of the directory."""
    done = subprocess.run([*kustomize_command(), str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def render_k8s(store: Path, out: Path, *args: str, model: str = "sales") -> list[dict]:
    """The objects `kubectl apply -k` would apply from a fresh render."""
    result = run("k8s", model, "-o", out, "--store", store, *args)
    assert result.exit_code == 0, result.output
    return kustomize(out)


def by_kind(objects: list[dict]) -> dict[str, dict]:
    kinds = [o["kind"] for o in objects]
    assert len(kinds) == len(set(kinds)), f"two objects of one kind: {kinds}"
    return {o["kind"]: o for o in objects}


def validate(doc: dict, gateway_api: dict[str, dict]) -> None:
    if doc["kind"] in gateway_api:
        schema = gateway_api[doc["kind"]]
        jsonschema.validate(doc, schema)
        assert unknown_fields(doc, schema) == [], doc["kind"]
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def unknown_fields(doc: object, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not declare (the API server drops or refuses them): kubectl's strict validation."""
    if isinstance(doc, dict) and "properties" in schema:
        found = [f"{path}.{k}" for k in doc if k not in schema["properties"]]
        for key, value in doc.items():
            if key in schema["properties"]:
                found += unknown_fields(value, schema["properties"][key], f"{path}.{key}")
        return found
    if isinstance(doc, list) and "items" in schema:
        return [f for i, item in enumerate(doc) for f in unknown_fields(item, schema["items"], f"{path}[{i}]")]
    return []


MODES = {
    "default": [],
    "gateway": ["--expose", "gateway"],
    "cluster": ["--expose", "cluster"],
    "gke-traffic": ["--expose", "gateway", "--autoscale", "gke-traffic"],
    "prometheus": ["--autoscale", "prometheus", "--rps-per-pod", "20"],
    "min=max": ["--min", "3", "--max", "3"],
    "cpu1": ["--cpu-percent", "1"],
    "cpu100-internal-gateway": ["--cpu-percent", "100", "--expose", "gateway", "--gateway-class", "gke-l7-rilb"],
    "one-replica": ["--min", "1", "--max", "1", "--workers", "1"],
    "ten-replicas": ["--min", "1", "--max", "10", "--workers", "8", "--memory", "4Gi", "--cpu", "2"],
    "service-account": ["--service-account", "sales-reader", "--from-store", "gs://bucket/models"],
    "grpc": ["--grpc"],
    "grpc-cluster": ["--grpc", "--expose", "cluster", "--autoscale", "prometheus"],
}


@pytest.mark.parametrize("args", MODES.values(), ids=MODES.keys())
def test_manifests_validate(store, gateway_api, tmp_path, args):
    objects = render_k8s(store, tmp_path / "k8s", *args)
    kinds = sorted(o["kind"] for o in objects)
    expected = ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    expected += ["Gateway", "HTTPRoute"] if "gateway" in args else []
    expected += ["ServiceAccount"] if "--service-account" in args else []
    assert kinds == sorted(expected)
    for obj in objects:
        validate(obj, gateway_api)
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "conveyor"
        assert len(obj["metadata"]["name"]) <= 63


# issue 9 point 11: manifests that do not fight the autoscaler, one autoscaler per mode, internal behind a Gateway
@pytest.mark.parametrize("args", MODES.values(), ids=MODES.keys())
def test_the_autoscaler_owns_the_replica_count(store, tmp_path, args):
    """A `replicas` in the Deployment would reset the HPA's count on every `kubectl apply -k`."""
    deployment = by_kind(render_k8s(store, tmp_path / "k8s", *args))["Deployment"]
    assert "replicas" not in deployment["spec"]


@pytest.mark.parametrize(
    ("args", "metric"),
    [
        ([], {"type": "Resource", "name": "cpu"}),
        (["--expose", "gateway", "--autoscale", "gke-traffic"], {"type": "Object", "name": "gclb-capacity"}),
        (["--autoscale", "prometheus"], {"type": "Pods", "name": "conveyor_requests_per_second"}),
    ],
    ids=["cpu", "gke-traffic", "prometheus"],
)
def test_one_autoscaler_per_mode(store, tmp_path, args, metric):
    out = tmp_path / "k8s"
    run("k8s", "sales", "-o", out, "--store", store, "--autoscale", "prometheus")  # an earlier render
    (out / "autoscaling").mkdir()  # where older renders left their second, same-named autoscalers
    (out / "autoscaling" / "gke-traffic.yaml").write_text((out / "hpa.yaml").read_text())
    objects = render_k8s(store, out, *args)
    (hpa,) = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == by_kind(objects)["Deployment"]["metadata"]["name"]
    first = hpa["spec"]["metrics"][0]
    assert first["type"] == metric["type"]
    described = first.get("resource") or first.get("pods", {}).get("metric") or first["object"]["metric"]
    assert metric["name"] in described["name"]
    # no second autoscaler lies beside the kustomization to be applied by hand (and fight this one)
    others = [
        p
        for p in out.rglob("*.yaml")
        for d in yaml.safe_load_all(p.read_text())
        if d and d.get("kind") == "HorizontalPodAutoscaler"
    ]
    assert others == [out / "hpa.yaml"]
    adapter = out / "prometheus-adapter-values.yaml"
    assert adapter.exists() == ("prometheus" in args)


def test_gke_traffic_needs_the_gateway(store, tmp_path):
    result = run("k8s", "sales", "-o", tmp_path / "k8s", "--store", store, "--autoscale", "gke-traffic")
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert "--autoscale gke-traffic needs --expose gateway" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("expose", "service_type"), [("loadbalancer", "LoadBalancer"), ("gateway", "ClusterIP"), ("cluster", "ClusterIP")]
)
def test_the_service_is_internal_behind_a_gateway(store, tmp_path, expose, service_type):
    objects = by_kind(render_k8s(store, tmp_path / "k8s", "--expose", expose))
    service = objects["Service"]
    assert service["spec"]["type"] == service_type
    assert ("Gateway" in objects) == (expose == "gateway") == ("HTTPRoute" in objects)
    if expose == "gateway":
        route, gateway = objects["HTTPRoute"], objects["Gateway"]
        assert route["spec"]["parentRefs"] == [{"kind": "Gateway", "name": gateway["metadata"]["name"]}]
        backends = [b for rule in route["spec"]["rules"] for b in rule["backendRefs"]]
        assert backends == [{"name": service["metadata"]["name"], "port": 80}]


def served_paths() -> list[str]:
    """A concrete path for every route the real server answers."""
    from conveyor.serve.app import create_app
    from conveyor.settings import ServeSettings

    samples = {"name": "sales", "version": "1", "key": "total"}
    app = create_app(ServeSettings(model="sales", store="memory://none"))
    return [re.sub(r"\{(\w+)(:\w+)?\}", lambda m: samples[m[1]], route.path) for route in app.routes]


def routed(route: dict, path: str) -> bool:
    """Gateway API path matching: Exact is the whole path, PathPrefix whole path elements (/predict not /predictions)."""
    for rule in route["spec"]["rules"]:
        for match in rule.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]:
            kind, value = match["path"]["type"], match["path"]["value"]
            if path == value or (kind == "PathPrefix" and path.startswith(value.rstrip("/") + "/")):
                return True
    return False


def test_metrics_are_not_routed_through_the_gateway(store, tmp_path):
    """The Gateway is public: it routes the API, never /metrics (nor the kubelet's probes)."""
    route = by_kind(render_k8s(store, tmp_path / "k8s", "--expose", "gateway"))["HTTPRoute"]
    private = {"/metrics", "/healthz", "/readyz"}
    paths = served_paths()
    assert private <= set(paths) and "/predict" in paths and "/v2/models/sales/infer" in paths
    assert [p for p in paths if routed(route, p)] == [p for p in paths if p not in private]
    assert not routed(route, "/metrics/") and not routed(route, "/metricsx")


@pytest.mark.parametrize("expose", ["loadbalancer", "gateway", "cluster"])
def test_metrics_are_on_a_pod_port_no_service_exposes(store, tmp_path, expose):
    """Issue 9 point 11: a LoadBalancer passes every path of the port it exposes, so /metrics has a port of its own
    (the server answers it there only: tests/integration/test_serve.py), scraped from the pods."""
    objects = by_kind(render_k8s(store, tmp_path / "k8s", "--expose", expose))
    pod = objects["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CONVEYOR_METRICS_PORT"] == str(ports["metrics"]) and env["CONVEYOR_PORT"] == str(ports["http"])
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    exposed = {p["targetPort"] for p in objects["Service"]["spec"]["ports"]}
    assert exposed == {"http"}


def test_pods_spread_across_nodes_and_zones(store, tmp_path):
    deployment = by_kind(render_k8s(store, tmp_path / "k8s"))["Deployment"]
    pod = deployment["spec"]["template"]
    spread = pod["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    for constraint in spread:
        assert constraint["maxSkew"] == 1
        # soft: a one-zone or one-node cluster still schedules every replica
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["labelSelector"] == deployment["spec"]["selector"]
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]  # each rollout's pods spread on their own


def test_service_account_for_workload_identity(store, tmp_path):
    objects = by_kind(
        render_k8s(store, tmp_path / "k8s", "--service-account", "sales-reader", "--from-store", "gs://b/models")
    )
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "sales-reader"
    assert objects["ServiceAccount"]["metadata"]["name"] == "sales-reader"
    assert pod["automountServiceAccountToken"] is True  # the token Workload Identity exchanges
    default = by_kind(render_k8s(store, tmp_path / "k8s2"))["Deployment"]["spec"]["template"]["spec"]
    assert "serviceAccountName" not in default and default["automountServiceAccountToken"] is False


@pytest.mark.parametrize(("workers", "memory"), [("1", "512Mi"), ("2", "896Mi"), ("4", "1664Mi")])
def test_memory_follows_the_workers(store, tmp_path, workers, memory):
    """128Mi for the gunicorn master and 384Mi per worker (the demo forecaster's workers peaked at 340Mi)."""
    deployment = by_kind(render_k8s(store, tmp_path / "k8s", "--workers", workers))["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"] == memory
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CONVEYOR_WORKERS"] == workers


def test_memory_can_be_set(store, tmp_path):
    deployment = by_kind(render_k8s(store, tmp_path / "k8s", "--workers", "4", "--memory", "3Gi"))["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"] == "3Gi"


def test_manifest_contents(store, tmp_path):
    objects = by_kind(
        render_k8s(store, tmp_path / "k8s", "--image", "us.gcr.io/proj/echo_service:1", "--from-store", "gs://b/m")
    )
    deployment, service = objects["Deployment"], objects["Service"]
    hpa, pdb = objects["HorizontalPodAutoscaler"], objects["PodDisruptionBudget"]
    assert deployment["metadata"]["name"] == "sales"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "us.gcr.io/proj/echo_service:1"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CONVEYOR_STORE"] == "gs://b/m" and env["CONVEYOR_MODEL"] == "sales"
    assert env["CONVEYOR_HOST"] == "0.0.0.0" and env["CONVEYOR_PORT"] == "8080"
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "896Mi"}
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "896Mi"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert pod["terminationGracePeriodSeconds"] > 5 + int(env["CONVEYOR_GRACEFUL_TIMEOUT"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "9090"
    manifest = (store / "sales" / "1" / "manifest.json").read_bytes()
    assert deployment["metadata"]["annotations"]["io.conveyor/model-sha256"] == hashlib.sha256(manifest).hexdigest()
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert container["ports"][0] == {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 80}
    selector = {"matchLabels": {"app.kubernetes.io/name": "sales"}}
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"] == selector


def test_grpc_port_on_the_pod_and_the_service(store, tmp_path):
    objects = by_kind(render_k8s(store, tmp_path / "k8s", "--grpc"))
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert {"name": "grpc", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    assert {"name": "CONVEYOR_GRPC_PORT", "value": "8081"} in container["env"]
    grpc = {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}
    assert objects["Service"]["spec"]["ports"][1:] == [grpc]
    plain = by_kind(render_k8s(store, tmp_path / "plain"))
    (container,) = plain["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert "grpc" not in str(container) and len(plain["Service"]["spec"]["ports"]) == 1


def test_grpc_is_not_routed_through_a_gateway(store, tmp_path):
    result = run("k8s", "sales", "-o", tmp_path / "k8s", "--store", store, "--grpc", "--expose", "gateway")
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert "--grpc needs --expose loadbalancer or cluster" in result.output
    assert list(tmp_path.iterdir()) == []


def test_traffic_autoscalers(store, tmp_path):
    gke = by_kind(render_k8s(store, tmp_path / "gke", "--expose", "gateway", "--autoscale", "gke-traffic"))
    (metric,) = gke["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["object"]["describedObject"] == {"apiVersion": "v1", "kind": "Service", "name": "sales"}
    assert metric["object"]["metric"]["name"] == "autoscaling.googleapis.com|gclb-capacity-utilization"
    assert gke["Service"]["metadata"]["annotations"]["networking.gke.io/max-rate-per-endpoint"] == "50"
    prom = by_kind(render_k8s(store, tmp_path / "prom", "--autoscale", "prometheus", "--rps-per-pod", "20"))
    rps, cpu = prom["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert rps["pods"]["target"] == {"type": "AverageValue", "averageValue": "20"}
    assert cpu["resource"]["name"] == "cpu"
    values = yaml.safe_load((tmp_path / "prom" / "prometheus-adapter-values.yaml").read_text())
    assert values["rules"]["custom"][0]["name"]["as"] == "conveyor_requests_per_second"
    assert "/metrics" in values["rules"]["custom"][0]["metricsQuery"]  # scrapes are not traffic


def test_names_come_from_the_model(store, tmp_path):
    deployment = by_kind(render_k8s(store, tmp_path / "k8s", model="Sales_EU"))["Deployment"]
    assert deployment["metadata"]["name"] == "sales-eu"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "conveyor-sales-eu:1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sales", "--min", "4", "--max", "3"], "--min (4) must not be greater than --max (3)"),
        (["sales", "--cpu-percent", "0"], "--cpu-percent must be between 1 and 100, got 0"),
        (["sales", "--cpu-percent", "101"], "--cpu-percent must be between 1 and 100, got 101"),
        (["sales", "--min", "0"], "--min must be at least 1"),
        (["sales", "--name", "Bad_Name"], "bad Kubernetes name 'Bad_Name'"),
        (["sales", "--name", "x" * 60], "bad Kubernetes name"),
        (["sales", "--service-account", "Bad_Name"], "bad service account name 'Bad_Name'"),
        (["sales", "--service-account", "default"], "--service-account default is the namespace's own account"),
        (["9lives"], "bad Kubernetes name '9lives'"),
        (["sales", "--image", "Not An Image"], "bad image reference"),
        (["sales", "--memory", "lots"], "bad memory 'lots'"),
        (["sales", "--rps-per-pod", "0"], "--rps-per-pod must be at least 1"),
        (["nope"], "no model named 'nope'"),
        (["sales@staging"], "sales has no alias 'staging'"),
    ],
)
def test_k8s_refusals_write_nothing(store, tmp_path, args, message):
    result = run("k8s", *args, "-o", tmp_path / "k8s", "--store", store)
    assert result.exit_code != 0
    assert result.output.startswith("error: ") and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_apply_without_kubectl_is_refused(store, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = run("k8s", "sales", "-o", tmp_path / "k8s", "--store", store, "--apply")
    assert result.exit_code == 1
    assert "--apply needs kubectl on PATH" in result.output
    assert not (tmp_path / "k8s").exists()


def test_help_explains_the_commands():
    for cmd in ("docker", "k8s"):
        result = run(cmd, "--help")
        assert result.exit_code == 0
        assert "--output" in result.output
    assert "--cpu-percent" in run("k8s", "--help").output


def test_unsigned_model_is_not_baked_when_a_key_is_set(store, wheelhouse, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVEYOR_SIGNING_KEY", "secret")
    result = run("docker", "sales", "-o", tmp_path / "ctx", "--store", store, "--wheelhouse", wheelhouse)
    assert result.exit_code == 4 and "unsigned" in result.output
    assert list(tmp_path.iterdir()) == []


def fake_tool(bin_dir: Path, name: str, log: Path, script: str = "") -> None:
    """A stand-in for docker/podman/buildah that records its arguments (the real ones run in the integration test)."""
    path = bin_dir / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n{script}\nexit 0\n')
    path.chmod(0o755)


def real_uv() -> Path:
    """uv's binary, not pyenv's shim of it (a bash script needing pyenv on PATH)."""
    uv = shutil.which("uv")
    assert uv, "uv is not installed: make install installs it"
    if "/shims/" in uv:
        uv = subprocess.run(["pyenv", "which", "uv"], capture_output=True, text=True, check=True).stdout.strip()
    return Path(uv)


def test_build_and_push_with_podman(store, wheelhouse, tmp_path, monkeypatch):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    fake_tool(bin_dir, "docker", log, 'case "$1" in info) exit 1;; esac')  # a client without a daemon
    fake_tool(bin_dir, "podman", log, 'case "$*" in *"image inspect"*) echo 123456789;; esac')
    (bin_dir / "uv").symlink_to(real_uv())  # reads uv.lock
    monkeypatch.setenv("PATH", str(bin_dir))
    out = tmp_path / "ctx"
    result = run(
        "docker",
        "sales",
        "-o",
        out,
        "--store",
        store,
        "--wheelhouse",
        wheelhouse,
        "--push",
        "us.gcr.io/p/echo_service:1",
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"built conveyor-sales:1 with podman in [\d.]+s: image size 123.5 MB", result.output)
    assert "pushed us.gcr.io/p/echo_service:1" in result.output
    calls = log.read_text().splitlines()
    flags = "--storage-driver vfs --runtime runc --cgroup-manager=cgroupfs"
    assert calls[0] == "docker info"
    assert calls[1] == f"podman {flags} build --isolation chroot --format docker -t conveyor-sales:1 {out}"
    assert calls[-2:] == [
        f"podman {flags} tag conveyor-sales:1 us.gcr.io/p/echo_service:1",
        f"podman {flags} push us.gcr.io/p/echo_service:1",
    ]


def test_buildah_flags(tmp_path, monkeypatch):
    from conveyor.deploy.build import find_builder

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(bin_dir, "buildah", tmp_path / "log")
    monkeypatch.setenv("PATH", str(bin_dir))
    builder = find_builder()
    assert builder.build_args(Path("ctx"), "t:1") == [
        "buildah", "--storage-driver", "vfs", "bud", "--isolation", "chroot", "--format", "docker", "-t", "t:1", "ctx"
    ]  # fmt: skip


def test_no_builder_is_refused_before_writing(store, wheelhouse, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = run("docker", "sales", "-o", tmp_path / "ctx", "--store", store, "--wheelhouse", wheelhouse, "--build")
    assert result.exit_code == 1 and "no image builder found" in result.output
    assert not (tmp_path / "ctx").exists()
