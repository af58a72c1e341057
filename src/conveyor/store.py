"""The model store: versioned, checksummed (optionally signed) artifacts under any fsspec URI.

Layout: `<root>/<name>/<version>/` holds the artifact files and `manifest.json`, written last: a version
without a manifest does not exist. Aliases are one small file each under `<root>/<name>/aliases/`,
replaced atomically, so readers never see a half-moved alias.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import platform
import re
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from conveyor.errors import ConveyorError, IntegrityError, InvalidInput, NotFound
from conveyor.io import filesystem
from conveyor.model import Model, get_flavor, guess_flavor, load_predictor, to_frame
from conveyor.signature import Signature

MANIFEST = "manifest.json"
ALIASES = "aliases"
DEFAULT_ALIAS = "production"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_REF = re.compile(r"^(?P<name>[^:@]+)(?::(?P<version>[^:@]+)|@(?P<alias>[^:@]+))?$")
_TRACKED_LIBRARIES = ("numpy", "pandas", "scikit-learn", "statsmodels", "mlflow-skinny", "mlflow", "skops")


@dataclass(frozen=True)
class Ref:
    """A parsed model reference: `NAME`, `NAME:VERSION` or `NAME@ALIAS`."""

    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> Ref:
        m = _REF.match(text.strip())
        if not m or not _NAME.match(m["name"]):
            raise InvalidInput(f"bad model reference {text!r}: use NAME, NAME:VERSION or NAME@ALIAS")
        version = None
        if m["version"] is not None:
            if not m["version"].isdigit() or int(m["version"]) < 1:
                raise InvalidInput(f"bad version {m['version']!r} in {text!r}: versions are 1, 2, 3...")
            version = int(m["version"])
        if m["alias"] is not None:
            check_name(m["alias"], "alias")
        return cls(m["name"], version, m["alias"])

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


def check_name(name: str, what: str = "model name") -> str:
    if not _NAME.match(name):
        raise InvalidInput(
            f"bad {what} {name!r}: use letters, digits, '.', '_' or '-' (starting with a letter or digit)"
        )
    return name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _canonical(manifest: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "hmac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def sign(manifest: Mapping[str, Any], key: bytes) -> str:
    return hmac.new(key, _canonical(manifest), hashlib.sha256).hexdigest()


def _library_versions() -> dict[str, str]:
    from importlib import metadata  # only when registering: loading a model (a function's cold start) skips it

    out = {"python": platform.python_version()}
    for lib in ("conveyor-ml", *_TRACKED_LIBRARIES):
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return out


class ModelStore:
    """Read and write model versions under `uri` (a path, file://, memory://, gs://, s3://)."""

    def __init__(self, uri: str | os.PathLike[str] = "./models", signing_key: str | bytes | None = None) -> None:
        self.uri = str(uri)
        self.fs, root = filesystem(self.uri)
        self.root = root.rstrip("/") or "/"
        self.local = "file" in _protocols(self.fs)
        if signing_key is None:
            signing_key = os.environ.get("CONVEYOR_SIGNING_KEY") or None
        self.signing_key = signing_key.encode() if isinstance(signing_key, str) else signing_key

    def __repr__(self) -> str:
        return f"ModelStore({self.uri!r})"

    def _path(self, *parts: object) -> str:
        return "/".join([self.root, *(str(p) for p in parts)])

    # --- reading -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        out = []
        for entry in self.fs.ls(self.root, detail=True):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if entry["type"] == "directory" and _NAME.match(name) and self.versions(name):
                out.append(name)
        return sorted(out)

    def versions(self, name: str) -> list[int]:
        """Complete versions only: those whose manifest has been written."""
        return [v for v in self._version_dirs(name) if self._complete(name, v)]

    def _version_dirs(self, name: str) -> list[int]:
        base = self._path(name)
        if not self.fs.exists(base):
            return []
        found = []
        for p in self.fs.ls(base, detail=False):
            leaf = p.rstrip("/").rsplit("/", 1)[-1]
            if leaf.isdigit():
                found.append(int(leaf))
        return sorted(found)

    def aliases(self, name: str) -> dict[str, int]:
        base = self._path(name, ALIASES)
        if not self.fs.exists(base):
            return {}
        out = {}
        for p in self.fs.ls(base, detail=False):
            alias = p.rstrip("/").rsplit("/", 1)[-1]
            if alias.startswith("."):
                continue
            try:
                out[alias] = int(json.loads(self.fs.cat_file(p))["version"])
            except (FileNotFoundError, ValueError, KeyError):
                continue  # replaced or removed while we listed
        return dict(sorted(out.items()))

    def resolve(self, ref: str | Ref) -> Ref:
        """Turn any reference into `NAME:VERSION` (a bare name means `production`, else the latest).

        A pinned version or an alias costs one or two small reads, which is what services polling an alias pay.
        """
        r = Ref.parse(ref) if isinstance(ref, str) else ref
        if r.version is not None:
            if self._complete(r.name, r.version):
                return Ref(r.name, r.version)
            versions = self._known_versions(r.name)
            raise NotFound(f"{r.name} has no version {r.version}; versions: {_ranges(versions)}")
        alias = r.alias or DEFAULT_ALIAS
        version = self._read_alias(r.name, alias)
        if version is not None:
            if not self._complete(r.name, version):
                raise NotFound(f"{r.name}@{alias} points to version {version}, which no longer exists")
            return Ref(r.name, version)
        versions = self._known_versions(r.name)
        if r.alias:
            aliases = self.aliases(r.name)
            shown = ", ".join(f"{a} -> {v}" for a, v in aliases.items()) or "none set"
            raise NotFound(f"{r.name} has no alias {r.alias!r}; aliases: {shown}")
        return Ref(r.name, versions[-1])

    def _complete(self, name: str, version: int) -> bool:
        return self.fs.exists(self._path(name, version, MANIFEST))

    def _known_versions(self, name: str) -> list[int]:
        """The versions of `name`, or NotFound naming the models that do exist."""
        versions = self.versions(name)
        if not versions:
            known = self.names()
            hint = f"known models: {', '.join(known)}" if known else "the store is empty: train or add a model first"
            raise NotFound(f"no model named {name!r} in {self.uri} ({hint})")
        return versions

    def _read_alias(self, name: str, alias: str) -> int | None:
        try:
            return int(json.loads(self.fs.cat_file(self._path(name, ALIASES, alias)))["version"])
        except FileNotFoundError:
            return None

    def manifest(self, ref: str | Ref) -> dict[str, Any]:
        r = self.resolve(ref)
        return json.loads(self.fs.cat_file(self._path(r.name, r.version, MANIFEST)))

    def load(self, ref: str | Ref) -> Model:
        """Load a version after checking every file against the manifest (and its signature, if keyed)."""
        r = self.resolve(ref)
        manifest = self.manifest(r)
        self._verify_signature(manifest, r)
        workdir = tempfile.mkdtemp(prefix=f"conveyor-{r.name}-{r.version}-")
        try:
            self._copy_verified(r, manifest, Path(workdir))
            predictor = load_predictor(manifest["flavor"], Path(workdir), manifest.get("flavor_meta", {}))
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        model = Model(
            name=r.name,
            version=int(r.version),
            flavor=manifest["flavor"],
            signature=Signature.from_dict(manifest["signature"]),
            predictor=predictor,
            manifest=manifest,
        )
        # the verified copy lives as long as the model (a swapped-out version frees it once its requests end)
        weakref.finalize(model, shutil.rmtree, workdir, True)
        return model

    def _copy_verified(self, r: Ref, manifest: Mapping[str, Any], workdir: Path) -> None:
        """Copy every file to `workdir`, checked against its manifest checksum; loading reads only the copy."""
        for rel, info in manifest["files"].items():
            data = self.fs.cat_file(self._path(r.name, r.version, rel))
            digest = hashlib.sha256(data).hexdigest()
            if digest != info["sha256"]:
                raise IntegrityError(
                    f"{r}: {rel} does not match its manifest checksum (sha256 {digest[:12]}..., expected "
                    f"{info['sha256'][:12]}...): the artifact is corrupted or was tampered with; refusing to load"
                )
            dest = workdir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)

    def _verify_signature(self, manifest: Mapping[str, Any], r: Ref) -> None:
        if not self.signing_key:
            return
        got = manifest.get("hmac")
        if not got:
            raise IntegrityError(
                f"{r} is not signed and CONVEYOR_SIGNING_KEY is set: refusing to load an unsigned artifact "
                "(re-register it with the key set)"
            )
        if not hmac.compare_digest(got, sign(manifest, self.signing_key)):
            raise IntegrityError(
                f"{r}: manifest signature does not match CONVEYOR_SIGNING_KEY: the manifest was tampered with "
                "or signed with another key; refusing to load"
            )

    # --- writing -------------------------------------------------------------------------------
    def add(
        self,
        name: str,
        source: Any,
        *,
        flavor: str | None = None,
        example: pd.DataFrame | None = None,
        signature: Signature | None = None,
        metrics: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        extra_files: Mapping[str, Path] | None = None,
    ) -> Ref:
        """Register `source` (a path, URI or model object) as the next version of `name`."""
        check_name(name)
        flavor = flavor or guess_flavor(source)
        impl = get_flavor(flavor)
        with tempfile.TemporaryDirectory(prefix="conveyor-add-") as tmp:
            staging = Path(tmp)
            meta = impl.save(source, staging)
            predictor = load_predictor(flavor, staging, meta)
            signature = signature or _signature_from(impl, predictor, meta, example)
            for rel, path in (extra_files or {}).items():
                shutil.copyfile(path, staging / rel)
            files = {
                p.relative_to(staging).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
                for p in sorted(staging.rglob("*"))
                if p.is_file()
            }
            version = self._allocate(name)
            target = self._path(name, version)
            for rel in files:
                dest = f"{target}/{rel}"
                if "/" in rel:
                    self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(staging / rel), dest)
        manifest: dict[str, Any] = {
            "name": name,
            "version": version,
            "flavor": flavor,
            "flavor_meta": meta,
            "signature": signature.to_dict(),
            "metrics": dict(metrics or {}),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "files": files,
            "libraries": _library_versions(),
            **dict(extra or {}),
        }
        if self.signing_key:
            manifest["hmac"] = sign(manifest, self.signing_key)
        self._write(self._path(name, version, MANIFEST), json.dumps(manifest, indent=2, default=str).encode())
        return Ref(name, version)

    def _allocate(self, name: str) -> int:
        """Claim the next version directory; mkdir is exclusive, so concurrent adds get distinct versions."""
        base = self._path(name)
        self.fs.makedirs(base, exist_ok=True)
        version = (max(self._version_dirs(name), default=0)) + 1
        while True:
            path = self._path(name, version)
            try:
                if self.local:
                    os.mkdir(path)
                else:
                    if self.fs.exists(path):
                        raise FileExistsError(path)
                    self.fs.makedirs(path, exist_ok=False)
                return version
            except FileExistsError:
                version += 1

    def promote(self, ref: str | Ref, alias: str = DEFAULT_ALIAS) -> Ref:
        """Point `alias` at a version, atomically: a reader sees the old or the new version, never neither."""
        check_name(alias, "alias")
        r = self.resolve(ref)
        self.fs.makedirs(self._path(r.name, ALIASES), exist_ok=True)
        body = {"version": r.version, "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        self._write(self._path(r.name, ALIASES, alias), json.dumps(body).encode())
        return r

    def unset_alias(self, name: str, alias: str) -> None:
        path = self._path(name, ALIASES, alias)
        if not self.fs.exists(path):
            raise NotFound(f"{name} has no alias {alias!r}")
        self.fs.rm_file(path)

    def remove(self, ref: str | Ref, force: bool = False) -> Ref:
        r = Ref.parse(ref) if isinstance(ref, str) else ref
        if r.version is None:
            raise InvalidInput(f"say which version to remove: {r.name}:VERSION")
        r = self.resolve(r)
        pointing = [a for a, v in self.aliases(r.name).items() if v == r.version]
        if pointing and not force:
            raise ConveyorError(
                f"{r} is aliased as {', '.join(pointing)}: promote another version first, or pass --force"
            )
        for alias in pointing:
            self.unset_alias(r.name, alias)
        # the manifest goes first, so a half-removed version already does not exist
        self.fs.rm_file(self._path(r.name, r.version, MANIFEST))
        self.fs.rm(self._path(r.name, r.version), recursive=True)
        return r

    def _write(self, path: str, data: bytes) -> None:
        """Replace `path` atomically: rename on local disks; single-object writes are atomic elsewhere."""
        if self.local:
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            tmp = str(Path(tmp).with_name("." + Path(tmp).name))
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)


def _signature_from(impl: Any, predictor: Any, meta: Mapping[str, Any], example: pd.DataFrame | None) -> Signature:
    """The artifact's own signature, settled by the example rows where it leaves types open and checked against
    them; else one inferred from the example rows."""
    declared = impl.signature(predictor, meta, example)
    if declared is not None:
        if example is not None:
            _predict_example(predictor, declared, example)
        return declared
    if example is None:
        raise ConveyorError("cannot tell this model's input columns: pass --example FILE with a few input rows")
    return Signature.infer(example, _predict_example(predictor, None, example))


def _predict_example(predictor: Any, signature: Signature | None, example: pd.DataFrame) -> pd.DataFrame:
    """The model's output on the example rows, or one line saying why the rows do not fit the model."""
    try:
        rows = signature.validate_frame(example) if signature is not None else example
    except InvalidInput as exc:
        raise InvalidInput(f"the example rows do not fit the model's signature: {exc}") from None
    try:
        return to_frame(predictor.predict(rows))
    except ConveyorError:
        raise
    except Exception as exc:  # the library's own error on rows it cannot take
        text = str(exc).strip().splitlines()
        raise InvalidInput(
            f"the model cannot predict the example rows: {type(exc).__name__}: {text[0] if text else ''}"
        ) from exc


def _protocols(fs: Any) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def _ranges(versions: list[int]) -> str:
    if len(versions) > 10:
        return f"{versions[0]}..{versions[-1]} ({len(versions)} versions)"
    return ", ".join(map(str, versions))


def default_store_uri() -> str:
    return os.environ.get("CONVEYOR_STORE", "./models")
