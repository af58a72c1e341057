"""`conveyor deploy`: real renders into temp dirs, checked by hadolint and against the Kubernetes schemas.

Gateway API objects (Gateway, HTTPRoute) are CRDs, absent from kubernetes-validate's schemas: they are
checked structurally here instead.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from conveyor.cli import Group
from conveyor.deploy.cli import deploy
from conveyor.store import ModelStore

K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
CORE_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
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


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """Stands in for the PyPI download: rendering only copies wheels, building is the integration test's job."""
    path = tmp_path_factory.mktemp("wheels")
    (path / "conveyor_ml-0.1.0-py3-none-any.whl").write_bytes(b"not a real wheel")
    return path


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
    assert sorted(p.name for p in (out / "wheelhouse").iterdir()) == ["conveyor_ml-0.1.0-py3-none-any.whl"]

    dockerfile = (out / "Dockerfile").read_text()
    assert dockerfile.count("FROM docker.io/library/debian:bookworm-slim") == 2
    assert "pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse" in dockerfile
    assert '"conveyor-ml[serve]==' in dockerfile
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
    assert '"conveyor-ml[serve,gcp]==' in dockerfile  # gcsfs, to read gs:// at start
    assert [f for f in hadolint(out / "Dockerfile") if f["level"] == "error"] == []


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
def render_k8s(store: Path, out: Path, *args: str) -> dict[str, dict]:
    result = run("k8s", "sales", "-o", out, "--store", store, *args)
    assert result.exit_code == 0, result.output
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    docs = [yaml.safe_load((out / r).read_text()) for r in kustomization["resources"]]
    return {d["kind"]: d for d in docs}


def validate(doc: dict) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--traffic"],
        ["--min", "3", "--max", "3"],
        ["--cpu-percent", "1"],
        ["--cpu-percent", "100", "--traffic"],
        ["--replicas", "1", "--min", "1", "--max", "1"],
        ["--replicas", "10", "--min", "1", "--max", "10", "--workers", "1", "--memory", "512Mi", "--cpu", "1"],
    ],
    ids=["default", "traffic", "min=max", "cpu1", "cpu100-traffic", "replicas1", "replicas10"],
)
def test_manifests_validate(store, tmp_path, args):
    out = tmp_path / "k8s"
    objects = render_k8s(store, out, *args)
    traffic = "--traffic" in args
    expected = CORE_KINDS | ({"Gateway", "HTTPRoute"} if traffic else set())
    assert set(objects) == expected
    for kind in CORE_KINDS:
        validate(objects[kind])
    if traffic:
        check_gateway(objects["Gateway"], objects["HTTPRoute"], objects["Service"])
        for extra in ("requests-per-second.yaml", "gke-traffic.yaml"):
            hpa = yaml.safe_load((out / "autoscaling" / extra).read_text())
            validate(hpa)
            assert hpa["metadata"]["name"] == objects["HorizontalPodAutoscaler"]["metadata"]["name"]
        values = yaml.safe_load((out / "autoscaling" / "prometheus-adapter-values.yaml").read_text())
        assert values["rules"]["custom"][0]["name"]["as"] == "conveyor_requests_per_second"
    else:
        assert not (out / "autoscaling").exists()
    if shutil.which("kubectl"):  # kustomize itself accepts the directory
        done = subprocess.run(["kubectl", "kustomize", str(out)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert len(list(yaml.safe_load_all(done.stdout))) == len(expected)


def check_gateway(gateway: dict, route: dict, service: dict) -> None:
    """Gateway API v1 shapes: the schemas are CRDs that kubernetes-validate does not ship."""
    assert gateway["apiVersion"] == route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert gateway["spec"]["gatewayClassName"] == "gke-l7-global-external-managed"
    (listener,) = gateway["spec"]["listeners"]
    assert listener == {
        "name": "http",
        "protocol": "HTTP",
        "port": 80,
        "allowedRoutes": {"namespaces": {"from": "Same"}},
    }
    assert route["spec"]["parentRefs"] == [{"kind": "Gateway", "name": gateway["metadata"]["name"]}]
    (rule,) = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert rule["backendRefs"] == [{"name": service["metadata"]["name"], "port": 80}]
    assert service["metadata"]["annotations"]["networking.gke.io/max-rate-per-endpoint"] == "50"
    for obj in (gateway, route):
        assert len(obj["metadata"]["name"]) <= 63


def test_manifest_contents(store, tmp_path):
    objects = render_k8s(
        store, tmp_path / "k8s", "--image", "us.gcr.io/proj/echo_service:1", "--from-store", "gs://b/m"
    )
    deployment, service = objects["Deployment"], objects["Service"]
    hpa, pdb = objects["HorizontalPodAutoscaler"], objects["PodDisruptionBudget"]
    assert deployment["metadata"]["name"] == "sales" and deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "us.gcr.io/proj/echo_service:1"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CONVEYOR_STORE"] == "gs://b/m" and env["CONVEYOR_MODEL"] == "sales"
    assert env["CONVEYOR_HOST"] == "0.0.0.0" and env["CONVEYOR_PORT"] == "8080"
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "1Gi"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert pod["terminationGracePeriodSeconds"] > 5 + int(env["CONVEYOR_GRACEFUL_TIMEOUT"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8080"
    manifest = (store / "sales" / "1" / "manifest.json").read_bytes()
    assert deployment["metadata"]["annotations"]["io.conveyor/model-sha256"] == hashlib.sha256(manifest).hexdigest()
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert container["ports"][0] == {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 80}
    assert (
        pdb["spec"]["selector"]
        == deployment["spec"]["selector"]
        == {"matchLabels": {"app.kubernetes.io/name": "sales"}}
    )


def test_names_come_from_the_model(store, tmp_path):
    result = run("k8s", "Sales_EU", "-o", tmp_path / "k8s", "--store", store)
    assert result.exit_code == 0, result.output
    deployment = yaml.safe_load((tmp_path / "k8s" / "deployment.yaml").read_text())
    assert deployment["metadata"]["name"] == "sales-eu"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "conveyor-sales-eu:1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sales", "--min", "4", "--max", "3"], "--min (4) must not be greater than --max (3)"),
        (["sales", "--cpu-percent", "0"], "--cpu-percent must be between 1 and 100, got 0"),
        (["sales", "--cpu-percent", "101"], "--cpu-percent must be between 1 and 100, got 101"),
        (["sales", "--min", "0"], "--min must be at least 1"),
        (["sales", "--replicas", "9"], "--replicas 9 is outside --min 2 .. --max 5"),
        (["sales", "--name", "Bad_Name"], "bad Kubernetes name 'Bad_Name'"),
        (["sales", "--name", "x" * 60], "bad Kubernetes name"),
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


def test_build_and_push_with_podman(store, wheelhouse, tmp_path, monkeypatch):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    fake_tool(bin_dir, "docker", log, 'case "$1" in info) exit 1;; esac')  # a client without a daemon
    fake_tool(bin_dir, "podman", log, 'case "$*" in *"image inspect"*) echo 123456789;; esac')
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
