"""The wheelhouse an image installs from: the project wheel and the pinned wheels serving the model needs.

Versions are uv.lock's (`uv export`) in a checkout, so an image runs what the tests ran; outside one, those
conveyor runs with here. What serving never imports stays out: pandas' optional Arrow backend and the training
plots and the forecaster's training libraries (statsforecast and its numba, holidays) always, and the model
libraries (scikit-learn, statsmodels, and what only they need, scipy among them) unless loading the model imports
them. Images install with `pip install --no-index --no-deps -r requirements.txt`, so a build needs no index (and
no TLS) and installs exactly these wheels. The wheels are for where they will run (`Platform`), whatever renders
the context: Debian bookworm's CPython 3.11 on glibc 2.36 for images, the function runtimes' own Pythons and glibcs
for serverless functions.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conveyor.errors import ConveyorError, MissingExtra
from conveyor.io import FILESYSTEM_EXTRAS

PACKAGE = "conveyor-ml"
REQUIREMENTS = "requirements.txt"
# Core dependencies no model served here imports: pandas only uses pyarrow when present, plots are drawn at training,
# and so are the forecaster's statsforecast models and holiday dates (no flavor loads a statsforecast model). Left
# out of every image, a pulled model's too, with what only they need (numba, llvmlite, coreforecast, fugue...).
NOT_SERVED = ("pyarrow", "matplotlib", "statsforecast", "holidays")
# Core dependencies only some models import, by the module their pickles name.
MODEL_LIBRARIES = {"scikit-learn": "sklearn", "statsmodels": "statsmodels"}


@dataclass(frozen=True)
class Platform:
    """Where the wheels will run: a CPython version on an x86_64 glibc (which manylinux wheels it accepts)."""

    python: str
    full_version: str
    glibc_minor: int

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    @property
    def markers(self) -> dict[str, str]:
        """The interpreter's values for the dependencies' environment markers."""
        return {
            "python_version": self.python,
            "python_full_version": self.full_version,
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "sys_platform": "linux",
            "platform_system": "Linux",
            "platform_machine": "x86_64",
            "os_name": "posix",
        }

    @property
    def tags(self) -> list[str]:
        """Every manylinux tag this glibc accepts, newest first."""
        newest = [f"manylinux_2_{minor}_x86_64" for minor in range(self.glibc_minor, 4, -1)]
        return [*newest, "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


# The images' Debian bookworm: python3 is CPython 3.11 on glibc 2.36.
DEBIAN = Platform("3.11", "3.11.2", 36)


@dataclass(frozen=True)
class Pin:
    """One distribution at one version; `hashes` (sha256 of its files) when the lock gives them."""

    name: str
    version: str
    hashes: tuple[str, ...] = ()

    def requirement(self, with_hashes: bool = False) -> str:
        hashes = "".join(f" --hash=sha256:{h}" for h in self.hashes) if with_hashes else ""
        return f"{self.name}=={self.version}{hashes}"


def project_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise ConveyorError(f"{PACKAGE} is not installed: run  pip install -e .  in the source tree") from exc


def source_tree() -> Path | None:
    """The checkout Conveyor runs from (an editable install), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[3]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and f'name = "{PACKAGE}"' in pyproject.read_text():
        return root
    return None


def extras_for(store_uri: str | None, grpc: bool = False) -> list[str]:
    """The extras an image needs: serving, gRPC when it serves it, and the filesystem of a store it pulls from
    (gs:// needs gcsfs)."""
    scheme = store_uri.split("://", 1)[0] if store_uri and "://" in store_uri else ""
    filesystem = [FILESYSTEM_EXTRAS[scheme][1]] if scheme in FILESYSTEM_EXTRAS else []
    return ["serve", *(["grpc"] if grpc else []), *filesystem]


@functools.lru_cache(maxsize=64)
def unused_libraries(store_uri: str, ref: str, manifest_sha256: str) -> tuple[str, ...]:
    """The MODEL_LIBRARIES that loading `ref` does not import, found by loading it in a fresh interpreter
    (once per version: the sha256 of its manifest, which holds its files' sha256, names what is loaded)."""
    probe = "import sys; from conveyor.store import ModelStore; ModelStore(sys.argv[1]).load(sys.argv[2]); print(*sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe, store_uri, ref], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise ConveyorError(f"cannot load {ref} to see which libraries it needs: {lines[-1] if lines else ''}")
    imported = set(done.stdout.split())
    return tuple(dist for dist, module in MODEL_LIBRARIES.items() if module not in imported)


def runtime_pins(extras: list[str], prune: Iterable[str], platform: Platform = DEBIAN) -> list[Pin]:
    """Every distribution `conveyor-ml[extras]` needs without `prune` (and what only they need), pinned.

    A pruned distribution that a kept one still requires (flask needs click) is kept: pip would refuse the set.
    """
    tree = source_tree()
    prune = list(prune)
    while True:
        if tree is not None and (tree / "uv.lock").is_file():
            pins = locked_pins(tree, extras, prune, platform)
        else:
            pins = [Pin(name, version) for name, version in installed_pins(extras, prune, platform)]
        needed = {dep for pin in pins for dep in requires(pin.name)}
        kept = [p for p in prune if canonicalize_name(p) not in needed]
        if kept == prune:
            return pins
        prune = kept


def requires(name: str) -> set[str]:
    """What a distribution requires, whatever the markers (uv.lock's graph in a checkout, else its metadata)."""
    tree = source_tree()
    if tree is not None and (tree / "uv.lock").is_file():
        return _lock_graph(tree / "uv.lock").get(name, set())
    try:
        requires = metadata.distribution(name).requires or []
    except metadata.PackageNotFoundError:
        return set()
    return {canonicalize_name(Requirement(r).name) for r in requires if "extra ==" not in r}


@functools.lru_cache(maxsize=4)
def _lock_graph(lock: Path) -> dict[str, set[str]]:
    import tomllib

    packages = tomllib.loads(lock.read_text())["package"]
    return {
        canonicalize_name(p["name"]): {canonicalize_name(d["name"]) for d in p.get("dependencies", [])}
        for p in packages
    }


def installer_pin() -> Pin:
    """pip, which runs from its own wheel in the image build, so the image holds no pip: the deploy extra's pip."""
    tree = source_tree()
    if tree is not None and (tree / "uv.lock").is_file():
        (pin,) = [p for p in locked_pins(tree, ["deploy"], []) if p.name == "pip"]
        return pin
    return Pin("pip", metadata.version("pip"))


def wheel_name(pin: Pin) -> str:
    """The file name of a pure-Python wheel (pip's, for one)."""
    return f"{pin.name.replace('-', '_')}-{pin.version}-py3-none-any.whl"


def locked_pins(tree: Path, extras: list[str], prune: Iterable[str], platform: Platform = DEBIAN) -> list[Pin]:
    """The versions and hashes uv.lock holds, for the target's Python and platform."""
    uv = shutil.which("uv")
    if uv is None:
        raise ConveyorError(f"reading {tree / 'uv.lock'} needs uv: pip install uv (or run make install)")
    cmd = [uv, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-header", "--no-annotate"]
    cmd += [f"--extra={e}" for e in extras] + [f"--prune={p}" for p in prune]
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise ConveyorError(f"uv export failed: {lines[-1] if lines else done.returncode}")
    pins = []
    for entry in re.split(r"\n(?=\S)", done.stdout.strip()):
        words = entry.replace("\\\n", " ").split()
        hashes = tuple(w.removeprefix("--hash=sha256:") for w in words if w.startswith("--hash="))
        req = Requirement(" ".join(w for w in words if not w.startswith("--hash=")))
        if req.marker is None or req.marker.evaluate(platform.markers):
            (spec,) = req.specifier
            pins.append(Pin(canonicalize_name(req.name), spec.version, hashes))
    return sorted(pins, key=lambda p: p.name)


def installed_pins(extras: list[str], prune: Iterable[str], platform: Platform = DEBIAN) -> list[tuple[str, str]]:
    """The versions installed here of what `conveyor-ml[extras]` needs without `prune`: (name, version) pairs."""
    pruned = {canonicalize_name(p) for p in prune}
    versions: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    todo = [(canonicalize_name(PACKAGE), extra) for extra in ["", *extras]]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen or name in pruned:
            continue
        seen.add((name, extra))
        dist = metadata.distribution(name)
        versions[name] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({**platform.markers, "extra": extra}):
                todo += [(canonicalize_name(req.name), e) for e in ["", *req.extras]]
    versions.pop(canonicalize_name(PACKAGE))
    return sorted(versions.items())


def build_wheelhouse(
    context: Path, pins: list[Pin], installer: Pin | None, copy_from: Path | None = None, platform: Platform = DEBIAN
) -> int:
    """Write `wheelhouse/` (a wheel per pin, the requirements.txt installing them, and the `installer` pip's
    wheel) and `dist/` (the project wheel) into a build context; returns the number of wheels.

    Two directories, so an image build installs them in two layers: a change to Conveyor alone reuses the
    cached dependencies. `copy_from` takes the wheels from a directory instead of PyPI (offline or cached builds).
    """
    wheelhouse, dist = context / "wheelhouse", context / "dist"
    wheelhouse.mkdir(parents=True, exist_ok=True)
    dist.mkdir(parents=True, exist_ok=True)
    wanted = [*pins, *([installer] if installer is not None else [])]  # a function's runtime brings its own pip
    if copy_from is not None:
        _copy_wheels(copy_from, dist, [Pin(canonicalize_name(PACKAGE), project_version())])
        _copy_wheels(copy_from, wheelhouse, wanted)
    else:
        _project_wheel(dist)
        _download_wheels(wheelhouse, wanted, platform)
    (wheelhouse / REQUIREMENTS).write_text("".join(f"{p.requirement()}\n" for p in pins))
    return len([*wheelhouse.glob("*.whl"), *dist.glob("*.whl")])


def _project_wheel(dest: Path) -> None:
    _require_pip()
    tree = source_tree()
    with tempfile.TemporaryDirectory(prefix="conveyor-wheel-") as tmp:
        if tree is not None:
            # a fixed timestamp makes the same sources the same wheel: image builds then reuse their cached layers
            sources = _copy_sources(tree, Path(tmp) / "src")
            run_pip(
                "wheel", "--no-deps", "--wheel-dir", str(dest), str(sources), env={"SOURCE_DATE_EPOCH": "315532800"}
            )
        else:
            run_pip("download", "--no-deps", "--dest", str(dest), f"{PACKAGE}=={project_version()}")
    if not list(dest.glob("conveyor_ml-*.whl")):
        raise ConveyorError(f"pip produced no conveyor_ml wheel in {dest}")


def _download_wheels(dest: Path, pins: list[Pin], platform: Platform) -> None:
    if not pins:
        return
    _require_pip()
    with tempfile.TemporaryDirectory(prefix="conveyor-wheels-") as tmp:
        hashed = all(p.hashes for p in pins)
        requirements = Path(tmp) / REQUIREMENTS
        requirements.write_text("".join(f"{p.requirement(with_hashes=hashed)}\n" for p in pins))
        tags = [flag for tag in platform.tags for flag in ("--platform", tag)]
        target = ["--python-version", platform.python, "--implementation", "cp", "--abi", platform.abi, *tags]
        run_pip("download", "--no-deps", "--only-binary=:all:", *target, "--dest", str(dest), "-r", str(requirements))


def _copy_wheels(source: Path, dest: Path, pins: list[Pin]) -> None:
    wheels = {(canonicalize_name(w.name.split("-")[0]), _wheel_version(w)): w for w in source.glob("*.whl")}
    missing = [p.requirement() for p in pins if (p.name, Version(p.version)) not in wheels]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConveyorError(f"wheelhouse {source} lacks {shown}: add them, or leave out --wheelhouse to download")
    for pin in pins:
        wheel = wheels[(pin.name, Version(pin.version))]
        shutil.copy2(wheel, dest / wheel.name)


def _wheel_version(wheel: Path) -> Version:
    return Version(wheel.name.split("-")[1])


def _copy_sources(tree: Path, dest: Path) -> Path:
    """Only what the wheel is built from: an in-tree build would leave build/ behind, and reuse its stale files."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"):
        if (tree / name).is_file():
            shutil.copy2(tree / name, dest / name)
    shutil.copytree(tree / "src", dest / "src", ignore=ignore)
    return dest


def _require_pip() -> None:
    try:
        import pip  # noqa: F401
    except ImportError as exc:
        raise MissingExtra("pip", "deploy") from exc


def run_pip(*args: str, env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit code {done.returncode}"
        raise ConveyorError(f"building the wheelhouse failed (pip {args[0]}): {last}")
