"""Render a build context (Dockerfile, .dockerignore, wheelhouse, baked model) and a kustomize directory.

Every value is checked before a file is written, and everything is rendered into a staging directory
that replaces the output entries only once it is complete: a refused or failed render leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from conveyor.deploy.kubernetes import AUTOSCALE, EXPOSE, PUBLIC_PATHS, pod_memory
from conveyor.deploy.names import check_dns_name, check_image, check_quantity, check_service_account, dns_name
from conveyor.deploy.wheelhouse import (
    NOT_SERVED,
    build_wheelhouse,
    extras_for,
    project_version,
    runtime_pins,
    unused_libraries,
)
from conveyor.errors import IntegrityError, InvalidInput, require
from conveyor.store import ALIASES, DEFAULT_ALIAS, MANIFEST, ModelStore, Ref, sign

TEMPLATES = Path(__file__).parent / "templates"
PORT = 8080
UID = 10001
BAKED_STORE = "/models"
PRE_STOP_SECONDS = 5
GRACEFUL_TIMEOUT = 30
# Every entry a render may write (`autoscaling/`: older renders' second autoscalers), replaced as a whole.
K8S_FILES = (
    "kustomization.yaml",
    "deployment.yaml",
    "service.yaml",
    "hpa.yaml",
    "pdb.yaml",
    "serviceaccount.yaml",
    "gateway.yaml",
    "httproute.yaml",
    "prometheus-adapter-values.yaml",
    "autoscaling",
)


@dataclass(frozen=True)
class ModelInfo:
    """A model version as found in the store: what was asked for, what it resolved to, its manifest."""

    requested: str
    ref: Ref
    manifest_bytes: bytes

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_bytes)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.manifest_bytes).hexdigest()


@dataclass(frozen=True)
class DockerContext:
    path: Path
    tag: str
    model: ModelInfo
    wheels: int
    left_out: list[str]


def find_model(store_uri: str, ref: str) -> ModelInfo:
    """Resolve `ref` in the store (NotFound if it is not there) and read its manifest."""
    store = ModelStore(store_uri)
    resolved = store.resolve(ref)
    data = store.fs.cat_file(f"{store.root}/{resolved.name}/{resolved.version}/{MANIFEST}")
    return ModelInfo(requested=ref.strip(), ref=resolved, manifest_bytes=data)


def default_tag(model: ModelInfo) -> str:
    return f"conveyor-{dns_name(model.ref.name)}:{model.ref.version}"


def render_docker_context(
    store_uri: str,
    ref: str,
    output_dir: str | Path,
    bake: bool = True,
    from_store: str | None = None,
    tag: str | None = None,
    wheels: bool | Path = True,
    workers: int = 2,
) -> DockerContext:
    """Write a build context for `ref`: the model baked into the image, or pulled from `from_store` at start.

    `wheels` is True to download the wheels from PyPI, a directory to copy them from, or False to leave
    them out (the Dockerfile then needs `wheelhouse/` and `dist/` placed beside it before a build).
    """
    if bake == bool(from_store):
        raise InvalidInput("choose one: bake the model into the image (--bake) or pull it at start (--from-store URI)")
    _check_workers(workers)
    model = find_model(store_uri, ref)
    tag = check_image(tag or default_tag(model))
    if isinstance(wheels, Path) and not wheels.is_dir():
        raise InvalidInput(f"wheelhouse {wheels} is not a directory")
    files = _verified_files(ModelStore(store_uri), model) if bake else {}
    # a pulled model's alias may move to a model of another flavor: it keeps every model library
    left_out = [*NOT_SERVED, *(unused_libraries(store_uri, str(model.ref)) if bake else [])]
    pins = runtime_pins(extras_for(from_store), left_out) if wheels is not False else []
    values = {
        "model": model,
        "bake": bake,
        "store": BAKED_STORE if bake else from_store,
        "tag": tag,
        "title": f"conveyor-{dns_name(model.ref.name)}",
        "description": f"Conveyor prediction service for {model.ref} ({model.manifest.get('flavor', 'model')})",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "conveyor_version": project_version(),
        "port": PORT,
        "uid": UID,
        "workers": workers,
    }
    output = Path(output_dir)
    with _staging(output, ("Dockerfile", ".dockerignore", "model", "wheelhouse", "dist")) as stage:
        (stage / "Dockerfile").write_text(_render("Dockerfile.j2", values))
        (stage / ".dockerignore").write_text(_render("dockerignore.j2", values))
        if bake:
            _write_store(stage / "model", model, files)
        count = 0
        if wheels is not False:
            copy_from = wheels if isinstance(wheels, Path) else None
            count = build_wheelhouse(stage, pins, copy_from=copy_from)
    return DockerContext(path=output, tag=tag, model=model, wheels=count, left_out=left_out)


def render_k8s(
    name: str | None,
    ref: str,
    output_dir: str | Path,
    image: str | None = None,
    cpu_percent: int = 80,
    min: int = 2,
    max: int = 5,
    store_uri: str | None = None,
    *,
    expose: str = "loadbalancer",
    autoscale: str = "cpu",
    service_account: str | None = None,
    lookup_store: str | None = None,
    workers: int = 2,
    cpu: str = "500m",
    cpu_limit: str = "2",
    memory: str | None = None,
    rps_per_pod: int = 50,
    gateway_class: str = "gke-l7-global-external-managed",
) -> list[Path]:
    """Write a kustomize directory serving `ref`; returns the files written.

    `store_uri` is where the pods read the model (default: the store baked into the image);
    `lookup_store` is where the model is checked now (default: `store_uri`). `expose` is one of EXPOSE,
    `autoscale` one of AUTOSCALE: the directory holds exactly one HorizontalPodAutoscaler, for that mode,
    and the Deployment no replica count (the autoscaler's to set), so re-applying it never fights the autoscaler.
    `memory` (request and limit) defaults to what `workers` need.
    """
    _check_scaling(cpu_percent, min, max)
    _check_workers(workers)
    if expose not in EXPOSE:
        raise InvalidInput(f"--expose must be one of {', '.join(EXPOSE)}, got {expose!r}")
    if autoscale not in AUTOSCALE:
        raise InvalidInput(f"--autoscale must be one of {', '.join(AUTOSCALE)}, got {autoscale!r}")
    if autoscale == "gke-traffic" and expose != "gateway":
        raise InvalidInput(
            "--autoscale gke-traffic needs --expose gateway: GKE measures the traffic at the Gateway's load balancer"
        )
    if rps_per_pod < 1:
        raise InvalidInput(f"--rps-per-pod must be at least 1, got {rps_per_pod}")
    memory = memory if memory is not None else pod_memory(workers)
    for value, what in ((cpu, "CPU request"), (cpu_limit, "CPU limit"), (memory, "memory")):
        check_quantity(value, what)
    if not gateway_class or not all(c.isalnum() or c in "-." for c in gateway_class):
        raise InvalidInput(f"bad gateway class {gateway_class!r}")
    if service_account is not None:
        check_service_account(service_account)
    model = find_model(lookup_store or store_uri or "./models", ref)
    name = check_dns_name(name if name is not None else dns_name(model.ref.name))
    image = check_image(image or default_tag(model))
    resources = ["deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"]
    resources += ["serviceaccount.yaml"] if service_account else []
    resources += ["gateway.yaml", "httproute.yaml"] if expose == "gateway" else []
    output = Path(output_dir)
    values = {
        "name": name,
        "model": model,
        "image": image,
        "cpu_percent": cpu_percent,
        "min_replicas": min,
        "max_replicas": max,
        "expose": expose,
        "autoscale": autoscale,
        "service_account": service_account,
        "store": store_uri or BAKED_STORE,
        "port": PORT,
        "uid": UID,
        "workers": workers,
        "cpu": cpu,
        "cpu_limit": cpu_limit,
        "memory": memory,
        "rps_per_pod": rps_per_pod,
        "capacity_percent": 70,
        "gateway_class": gateway_class,
        "public_paths": PUBLIC_PATHS,
        "pre_stop_seconds": PRE_STOP_SECONDS,
        "graceful_timeout": GRACEFUL_TIMEOUT,
        "termination_grace": PRE_STOP_SECONDS + GRACEFUL_TIMEOUT + 10,
        "resources": resources,
        "output_name": output.name,
    }
    # Helm values for prometheus-adapter: installed with helm, not applied with kubectl, so not a resource
    helm = ["prometheus-adapter-values.yaml"] if autoscale == "prometheus" else []
    written = ["kustomization.yaml", *resources, *helm]
    with _staging(output, K8S_FILES) as stage:
        for rel in written:
            (stage / rel).write_text(_render(f"k8s/{rel}.j2", values))
    return [output / rel for rel in written]


def _check_scaling(cpu_percent: int, min_replicas: int, max_replicas: int) -> None:
    if not 1 <= cpu_percent <= 100:
        raise InvalidInput(f"--cpu-percent must be between 1 and 100, got {cpu_percent}")
    if min_replicas < 1:
        raise InvalidInput(f"--min must be at least 1, got {min_replicas}")
    if max_replicas < min_replicas:
        raise InvalidInput(f"--min ({min_replicas}) must not be greater than --max ({max_replicas})")


def _check_workers(workers: int) -> None:
    if not 1 <= workers <= 64:
        raise InvalidInput(f"--workers must be between 1 and 64, got {workers}")


def _verified_files(store: ModelStore, model: ModelInfo) -> dict[str, bytes]:
    """Every file of the version, read once and checked against the manifest before anything is written."""
    manifest = model.manifest
    if store.signing_key and not hmac.compare_digest(manifest.get("hmac", ""), sign(manifest, store.signing_key)):
        raise IntegrityError(f"{model.ref}: manifest is unsigned or its signature does not match CONVEYOR_SIGNING_KEY")
    out = {}
    for rel, info in manifest["files"].items():
        path = PurePosixPath(rel)
        if path.is_absolute() or ".." in path.parts:
            raise IntegrityError(f"{model.ref}: manifest names a file outside the version: {rel!r}")
        data = store.fs.cat_file(f"{store.root}/{model.ref.name}/{model.ref.version}/{rel}")
        if hashlib.sha256(data).hexdigest() != info["sha256"]:
            raise IntegrityError(
                f"{model.ref}: {rel} does not match its manifest checksum: refusing to bake a corrupted model"
            )
        out[rel] = data
    return out


def _write_store(root: Path, model: ModelInfo, files: dict[str, bytes]) -> None:
    """The one version in store layout, with `production` (and the alias asked for) pointing at it."""
    version_dir = root / model.ref.name / str(model.ref.version)
    for rel, data in files.items():
        dest = version_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    (version_dir / MANIFEST).write_bytes(model.manifest_bytes)
    aliases = root / model.ref.name / ALIASES
    aliases.mkdir(parents=True)
    requested = Ref.parse(model.requested)
    body = json.dumps({"version": model.ref.version}).encode()
    for alias in {DEFAULT_ALIAS, requested.alias or DEFAULT_ALIAS}:
        (aliases / alias).write_bytes(body)


@contextlib.contextmanager
def _staging(output: Path, owned: tuple[str, ...]) -> Iterator[Path]:
    """A scratch directory beside `output`; on success its entries replace the `owned` entries of `output`."""
    output.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        yield stage
        output.mkdir(exist_ok=True)
        for entry in owned:
            target = output / entry
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
        for entry in stage.iterdir():
            entry.rename(output / entry.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _render(template: str, values: dict[str, Any]) -> str:
    jinja2 = require("jinja2", "deploy")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template(template).render(**values)
