"""What rendering a build context and a kustomize directory share: the model as found in the store, the checks,
the templates, and the staging directory.

Every value is checked before a file is written, and everything is rendered into a staging directory
that replaces the output entries only once it is complete: a refused or failed render leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.deploy.names import dns_name
from conveyor.errors import InvalidInput, require
from conveyor.store import MANIFEST, ModelStore, Ref

TEMPLATES = Path(__file__).parent / "templates"
PORT = 8080
METRICS_PORT = 9090  # pods only: no Service, LoadBalancer or Gateway exposes it
UID = 10001
BAKED_STORE = "/models"


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


def find_model(store_uri: str, ref: str) -> ModelInfo:
    """Resolve `ref` in the store (NotFound if it is not there) and read its manifest."""
    store = ModelStore(store_uri)
    resolved = store.resolve(ref)
    data = store.fs.cat_file(f"{store.root}/{resolved.name}/{resolved.version}/{MANIFEST}")
    return ModelInfo(requested=ref.strip(), ref=resolved, manifest_bytes=data)


def default_tag(model: ModelInfo) -> str:
    return f"conveyor-{dns_name(model.ref.name)}:{model.ref.version}"


def check_workers(workers: int) -> None:
    if not 1 <= workers <= 64:
        raise InvalidInput(f"--workers must be between 1 and 64, got {workers}")


@contextlib.contextmanager
def staging(output: Path, owned: tuple[str, ...]) -> Iterator[Path]:
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


def render_template(template: str, values: dict[str, Any]) -> str:
    jinja2 = require("jinja2", "deploy")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template(template).render(**values)
