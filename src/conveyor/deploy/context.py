"""The build context an image is made from: Dockerfile, .dockerignore, the wheels and (baked) the model."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from conveyor.deploy.kubernetes import GRPC_PORT
from conveyor.deploy.names import check_image, dns_name
from conveyor.deploy.render import (
    BAKED_STORE,
    PORT,
    UID,
    ModelInfo,
    check_workers,
    default_tag,
    find_model,
    render_template,
    staging,
)
from conveyor.deploy.wheelhouse import (
    NOT_SERVED,
    build_wheelhouse,
    extras_for,
    installer_pin,
    project_version,
    runtime_pins,
    unused_libraries,
    wheel_name,
)
from conveyor.errors import IntegrityError, InvalidInput
from conveyor.store import ALIASES, DEFAULT_ALIAS, MANIFEST, ModelStore, Ref, sign


@dataclass(frozen=True)
class DockerContext:
    path: Path
    tag: str
    model: ModelInfo
    wheels: int
    left_out: list[str]


def render_docker_context(
    store_uri: str,
    ref: str,
    output_dir: str | Path,
    bake: bool = True,
    from_store: str | None = None,
    tag: str | None = None,
    wheels: bool | Path = True,
    workers: int = 2,
    grpc: bool = False,
) -> DockerContext:
    """Write a build context for `ref`: the model baked into the image, or pulled from `from_store` at start.

    `grpc` adds the gRPC extra and serves the Open Inference Protocol over gRPC on GRPC_PORT beside HTTP.

    `wheels` is True to download the wheels from PyPI, a directory to copy them from, or False to leave
    them out (the Dockerfile then needs `wheelhouse/` and `dist/` placed beside it before a build).
    """
    if bake == bool(from_store):
        raise InvalidInput("choose one: bake the model into the image (--bake) or pull it at start (--from-store URI)")
    check_workers(workers)
    model = find_model(store_uri, ref)
    tag = check_image(tag or default_tag(model))
    if isinstance(wheels, Path) and not wheels.is_dir():
        raise InvalidInput(f"wheelhouse {wheels} is not a directory")
    files = verified_files(ModelStore(store_uri), model) if bake else {}
    # a pulled model's alias may move to a model of another flavor: it keeps every model library
    left_out = [*NOT_SERVED, *(unused_libraries(store_uri, str(model.ref), model.sha256) if bake else [])]
    pins = runtime_pins(extras_for(from_store, grpc), left_out) if wheels is not False else []
    installer = installer_pin()
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
        "grpc_port": GRPC_PORT if grpc else None,
        "uid": UID,
        "workers": workers,
        "pip": f"/tmp/wheelhouse/{wheel_name(installer)}/pip",
    }
    output = Path(output_dir)
    with staging(output, ("Dockerfile", ".dockerignore", "model", "wheelhouse", "dist")) as stage:
        (stage / "Dockerfile").write_text(render_template("Dockerfile.j2", values))
        (stage / ".dockerignore").write_text(render_template("dockerignore.j2", values))
        if bake:
            write_store(stage / "model", model, files)
        count = 0
        if wheels is not False:
            copy_from = wheels if isinstance(wheels, Path) else None
            count = build_wheelhouse(stage, pins, installer, copy_from=copy_from)
    return DockerContext(path=output, tag=tag, model=model, wheels=count, left_out=left_out)


def verified_files(store: ModelStore, model: ModelInfo) -> dict[str, bytes]:
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


def write_store(root: Path, model: ModelInfo, files: dict[str, bytes]) -> None:
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
