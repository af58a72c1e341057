"""The wheelhouse an image installs from: the project and its serving dependencies as Linux wheels.

Images install with `pip install --no-index --find-links`, so a build needs no index (and no TLS) and
installs exactly the wheels resolved here. Debian bookworm's python3 is CPython 3.11 on glibc 2.36, so
the wheels are resolved for cp311 manylinux x86_64 whatever machine renders the context.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from conveyor.errors import ConveyorError, MissingExtra

PACKAGE = "conveyor-ml"
STORE_EXTRAS = {"gs": "gcp", "gcs": "gcp", "s3": "aws"}
PYTHON_VERSION = "3.11"
ABI = "cp311"
# every manylinux tag a glibc 2.36 x86_64 system accepts, newest first
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)]
PLATFORMS += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


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


def extras_for(store_uri: str | None) -> list[str]:
    """The extras an image needs: serving, plus the filesystem of a store it pulls from (gs:// needs gcsfs)."""
    scheme = store_uri.split("://", 1)[0] if store_uri and "://" in store_uri else ""
    return ["serve", *([STORE_EXTRAS[scheme]] if scheme in STORE_EXTRAS else [])]


def build_wheelhouse(dest: Path, copy_from: Path | None = None, extras: list[str] | None = None) -> list[Path]:
    """Fill `dest` with the project wheel and every wheel `conveyor-ml[extras]` needs; returns the wheels.

    `copy_from` takes the wheels from a directory instead (an offline or cached build).
    """
    dest.mkdir(parents=True, exist_ok=True)
    if copy_from is not None:
        wheels = sorted(copy_from.glob("*.whl"))
        if not any(w.name.startswith("conveyor_ml-") for w in wheels):
            raise ConveyorError(f"{copy_from} holds no conveyor_ml wheel: it is not a wheelhouse")
        for wheel in wheels:
            shutil.copy2(wheel, dest / wheel.name)
        return sorted(dest.glob("*.whl"))
    _require_pip()
    version = project_version()
    tree = source_tree()
    if tree is not None:
        with tempfile.TemporaryDirectory(prefix="conveyor-sdist-") as tmp:
            _pip("wheel", "--no-deps", "--wheel-dir", str(dest), str(_copy_sources(tree, Path(tmp))))
    else:
        _pip("download", "--no-deps", "--dest", str(dest), f"{PACKAGE}=={version}")
    own = sorted(dest.glob("conveyor_ml-*.whl"))
    if not own:
        raise ConveyorError(f"pip produced no conveyor_ml wheel in {dest}")
    platform_flags = [flag for p in PLATFORMS for flag in ("--platform", p)]
    _pip(
        "download",
        "--dest",
        str(dest),
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        "--abi",
        ABI,
        *platform_flags,
        f"{own[-1]}[{','.join(extras or ['serve'])}]",
    )
    return sorted(dest.glob("*.whl"))


def _copy_sources(tree: Path, dest: Path) -> Path:
    """Only what the wheel is built from: an in-tree build would leave build/ behind, and reuse its stale files."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
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


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit code {done.returncode}"
        raise ConveyorError(f"building the wheelhouse failed (pip {args[0]}): {last}")
