"""Serverless function bundles: a Cloud Run functions source directory, an AWS Lambda zip.

Both hold the entry point (`main.py`, `handler.py`), the model in store layout (baked) or its store URI, and
exactly the wheels the function imports, for the runtime's own Python and glibc: Cloud Run functions build
from source with pip, so the wheels are vendored beside `requirements.txt` (GOOGLE_VENDOR_PIP_DEPENDENCIES:
Conveyor's wheel is not on PyPI, and a vendored build installs what was tested); a Lambda zip is unpacked into
/var/task as it is, so the libraries are installed into it here, compiled when an interpreter of the runtime's
version is at hand (/var/task is read-only: a module without its .pyc is compiled at every cold start).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from conveyor.deploy.context import verified_files, write_store
from conveyor.deploy.names import check_image, dns_name
from conveyor.deploy.render import UID, ModelInfo, find_model, render_template, staging
from conveyor.deploy.wheelhouse import (
    DEBIAN,
    NOT_SERVED,
    REQUIREMENTS,
    Platform,
    build_wheelhouse,
    extras_for,
    installer_pin,
    project_version,
    run_pip,
    runtime_pins,
    unused_libraries,
    wheel_name,
)
from conveyor.errors import InvalidInput
from conveyor.store import ModelStore

TARGETS = ("gcp", "aws")
# Cloud Run functions' python311 runs on Google's google-22 stack (Ubuntu 22.04: glibc 2.35).
GCP_RUNTIMES = {"python311": Platform("3.11", "3.11.13", 35), "python312": Platform("3.12", "3.12.11", 35)}
# Lambda's python3.12 and later run on Amazon Linux 2023 (glibc 2.34); python3.11 ran on Amazon Linux 2 (2.26),
# which numpy's and scipy's current wheels no longer support.
AWS_RUNTIMES = {"python3.12": Platform("3.12", "3.12.11", 34), "python3.13": Platform("3.13", "3.13.5", 34)}
DEFAULT_RUNTIME = {"gcp": "python311", "aws": "python3.12"}
# Lambda's limit for a function's code, unzipped, layers included: 250 MB as Lambda counts (262,144,000 bytes).
ZIP_LIMIT = 250 * 1024 * 1024
# Core dependencies a function never imports: it has no CLI, no settings model, no SQL prediction store.
FUNCTION_NOT_USED = ("click", "rich", "pydantic", "pydantic-settings", "annotated-types", "sqlalchemy")
# The runtime interface client is part of Lambda's managed Python runtimes: a zip does not carry it.
AWS_PROVIDED = ("awslambdaric",)
BAKED_DIR = "model"
PACKAGES = ("zip", "image")


@dataclass(frozen=True)
class FunctionBundle:
    path: Path
    target: str
    runtime: str
    name: str
    model: ModelInfo
    wheels: int
    unzipped_bytes: int = 0
    zip_bytes: int = 0
    compiled: bool = False
    tag: str | None = None  # a container image's, for Lambda

    @property
    def artifact(self) -> Path:
        return self.path / "function.zip" if self.target == "aws" and self.tag is None else self.path


def render_function(
    store_uri: str,
    ref: str,
    output_dir: str | Path,
    target: str,
    from_store: str | None = None,
    runtime: str | None = None,
    name: str | None = None,
    wheels: bool | Path = True,
    package: str = "zip",
    tag: str | None = None,
) -> FunctionBundle:
    """Write the function for `ref` into `output_dir`: the model baked in, or read from `from_store` at start.

    `wheels` is True to download the wheels from PyPI, a directory to copy them from, or False (gcp only) for
    a source directory without them, run where the requirements are already installed (`conveyor plan`).
    """
    if target not in TARGETS:
        raise InvalidInput(f"unknown target {target!r}: choose gcp (Cloud Run functions) or aws (Lambda)")
    if package not in PACKAGES:
        raise InvalidInput(f"unknown package {package!r}: choose zip or image")
    if target == "aws" and package == "image":
        return _render_image(store_uri, ref, Path(output_dir), from_store, name, wheels, tag)
    runtimes = GCP_RUNTIMES if target == "gcp" else AWS_RUNTIMES
    runtime = runtime or DEFAULT_RUNTIME[target]
    if runtime not in runtimes:
        raise InvalidInput(
            f"--runtime {runtime} is not one conveyor builds {target} functions for: {', '.join(runtimes)}"
        )
    if isinstance(wheels, Path) and not wheels.is_dir():
        raise InvalidInput(f"wheelhouse {wheels} is not a directory")
    model = find_model(store_uri, ref)
    name = dns_name(name or model.ref.name)
    files = None if from_store else verified_files(ModelStore(store_uri), model)
    # Cloud Run's build installs requirements.txt with pip's resolver, which wants every dependency Conveyor
    # declares: the source directory carries them all (what the function never imports costs no cold start).
    # A zip is unpacked as it is, so it holds only what the function imports.
    left_out: list[str] = []
    if target == "aws":
        left_out = [*NOT_SERVED, *FUNCTION_NOT_USED, *AWS_PROVIDED]
        if files is not None:
            left_out += unused_libraries(store_uri, str(model.ref), model.sha256)
    extra = f"function-{target}"
    platform = runtimes[runtime]
    pins = runtime_pins([extra, *extras_for(from_store)[1:]], left_out, platform)
    store_expr = (
        f"os.path.join(os.path.dirname(os.path.abspath(__file__)), {BAKED_DIR!r})"
        if files is not None
        else repr(from_store)
    )
    values = {"model": model, "store_expr": store_expr, "conveyor_version": project_version()}
    copy_from = wheels if isinstance(wheels, Path) else None
    output = Path(output_dir)
    if target == "gcp":
        owned = ("main.py", REQUIREMENTS, ".gcloudignore", "wheelhouse", BAKED_DIR)
        with staging(output, owned) as stage:
            (stage / "main.py").write_text(render_template("function/main.py.j2", values))
            (stage / ".gcloudignore").write_text(render_template("function/gcloudignore.j2", values))
            if files is not None:
                write_store(stage / BAKED_DIR, model, files)
            if wheels is False:
                (stage / REQUIREMENTS).write_text(_requirements(pins))
                count = 0
            else:
                count = _vendored_wheels(stage, pins, copy_from, platform)
        return FunctionBundle(output, target, runtime, name, model, count)
    if wheels is False:
        raise InvalidInput("a Lambda zip holds its wheels: give a wheelhouse or let them be downloaded")
    with staging(output, ("function.zip",)) as stage, tempfile.TemporaryDirectory(prefix="conveyor-fn-") as tmp:
        package = Path(tmp) / "package"
        count = _vendored_wheels(Path(tmp), pins, copy_from, platform)
        _install(Path(tmp) / "wheelhouse", package, platform)
        (package / "handler.py").write_text(render_template("function/handler.py.j2", values))
        if files is not None:
            write_store(package / BAKED_DIR, model, files)
        compiled = _compile(package, platform)
        unzipped = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
        if unzipped > ZIP_LIMIT:
            raise InvalidInput(
                f"the function is {unzipped / 1e6:,.1f} MB unzipped ({unzipped:,} bytes), over Lambda's "
                f"{ZIP_LIMIT:,}-byte limit for a zip: package it as a container image with --package image"
            )
        _zip(package, stage / "function.zip")
        size = (stage / "function.zip").stat().st_size
    return FunctionBundle(output, target, runtime, name, model, count, unzipped, size, compiled)


def _render_image(
    store_uri: str,
    ref: str,
    output: Path,
    from_store: str | None,
    name: str | None,
    wheels: bool | Path,
    tag: str | None,
) -> FunctionBundle:
    """A Lambda container image's build context: Debian's python3, the wheels, awslambdaric, the handler."""
    if wheels is False:
        raise InvalidInput("an image is built from its wheels: give a wheelhouse or let them be downloaded")
    model = find_model(store_uri, ref)
    name = dns_name(name or model.ref.name)
    tag = check_image(tag or f"conveyor-{name}-lambda:{model.ref.version}")
    files = None if from_store else verified_files(ModelStore(store_uri), model)
    left_out = [*NOT_SERVED, *FUNCTION_NOT_USED]
    if files is not None:
        left_out += unused_libraries(store_uri, str(model.ref), model.sha256)
    pins = runtime_pins(["function-aws", *extras_for(from_store)[1:]], left_out, DEBIAN)
    installer = installer_pin()
    values = {
        "model": model,
        "bake": files is not None,
        "tag": tag,
        "title": f"conveyor-{name}-lambda",
        "uid": UID,
        "conveyor_version": project_version(),
        "pip": f"/tmp/wheelhouse/{wheel_name(installer)}/pip",
        "store_expr": (
            f"os.path.join(os.path.dirname(os.path.abspath(__file__)), {BAKED_DIR!r})"
            if files is not None
            else repr(from_store)
        ),
    }
    owned = ("Dockerfile", "handler.py", BAKED_DIR, "wheelhouse", "dist")
    with staging(output, owned) as stage:
        (stage / "Dockerfile").write_text(render_template("function/Dockerfile.lambda.j2", values))
        (stage / "handler.py").write_text(render_template("function/handler.py.j2", values))
        if files is not None:
            write_store(stage / BAKED_DIR, model, files)
        copy_from = wheels if isinstance(wheels, Path) else None
        count = build_wheelhouse(stage, pins, installer, copy_from=copy_from, platform=DEBIAN)
    return FunctionBundle(output, "aws", "image", name, model, count, tag=tag)


def _vendored_wheels(directory: Path, pins, copy_from: Path | None, platform: Platform) -> int:
    """`wheelhouse/` with every wheel, Conveyor's included, and `requirements.txt` beside it naming them all."""
    count = build_wheelhouse(directory, pins, None, copy_from=copy_from, platform=platform)
    wheelhouse = directory / "wheelhouse"
    for wheel in (directory / "dist").glob("*.whl"):
        wheel.rename(wheelhouse / wheel.name)
    (directory / "dist").rmdir()
    (wheelhouse / REQUIREMENTS).unlink()
    (directory / REQUIREMENTS).write_text(_requirements(pins))
    return count


def _requirements(pins) -> str:
    return "".join(f"{p.requirement()}\n" for p in pins) + f"conveyor-ml=={project_version()}\n"


def _install(wheelhouse: Path, target: Path, platform: Platform) -> None:
    """Unpack the wheels into `target` as the runtime's Python would install them, without the test suites."""
    tags = [flag for tag in platform.tags for flag in ("--platform", tag)]
    run_pip(
        "install",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--only-binary=:all:",
        "--target",
        str(target),
        "--python-version",
        platform.python,
        "--implementation",
        "cp",
        "--abi",
        platform.abi,
        *tags,
        *(str(w) for w in sorted(wheelhouse.glob("*.whl"))),
    )
    for tests in [p for p in target.rglob("tests") if p.is_dir()]:
        shutil.rmtree(tests, ignore_errors=True)
    shutil.rmtree(target / "bin", ignore_errors=True)


def runtime_python(platform: Platform) -> str | None:
    """An interpreter of the runtime's Python version on this machine, to compile the bundle with, or None."""
    candidates = [shutil.which(f"python{platform.python}")]
    candidates += [str(p) for p in sorted(Path.home().glob(f".pyenv/versions/{platform.python}.*/bin/python3"))]
    for candidate in filter(None, candidates):
        done = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
        )
        if done.returncode == 0 and done.stdout.strip() == platform.python:
            return candidate
    return None


def _compile(package: Path, platform: Platform) -> bool:
    python = runtime_python(platform)
    if python is None:
        return False
    # unchecked-hash pycs stay valid whatever the files' times become in the zip
    done = subprocess.run(
        [python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash", str(package)],
        capture_output=True,
        text=True,
    )
    return done.returncode == 0


def _zip(package: Path, dest: Path) -> None:
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in sorted(package.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(package).as_posix())


ZIP_UPLOAD_LIMIT = 50 * 1024 * 1024  # a larger zip goes through S3


def deploy_commands(bundle: FunctionBundle, region: str, memory_mb: int) -> list[str]:
    """The commands that deploy the bundle (printed, never run: they need the team's cloud credentials)."""
    out, name = bundle.path, bundle.name
    if bundle.target == "gcp":
        return [
            f"gcloud run deploy {name} --source {out} --function predict --base-image {bundle.runtime} "
            f"--region {region} --memory {memory_mb}Mi --allow-unauthenticated "
            "--set-build-env-vars GOOGLE_VENDOR_PIP_DEPENDENCIES=wheelhouse"
        ]
    if bundle.tag is not None:
        registry = f"ACCOUNT_ID.dkr.ecr.{region}.amazonaws.com"
        image = f"{registry}/{bundle.tag}"
        return [
            f"aws ecr create-repository --repository-name {bundle.tag.split(':')[0]} --region {region}",
            f"aws ecr get-login-password --region {region} | docker login --username AWS --password-stdin {registry}",
            f"docker tag {bundle.tag} {image} && docker push {image}",
            f"aws lambda create-function --function-name {name} --package-type Image --code ImageUri={image} "
            f"--role arn:aws:iam::ACCOUNT_ID:role/ROLE --memory-size {memory_mb} --timeout 30 --region {region}",
            *_function_url(name, region),
        ]
    if bundle.zip_bytes > ZIP_UPLOAD_LIMIT:
        code = [f"aws s3 cp {bundle.artifact} s3://BUCKET/{name}/function.zip"]
        source = f"--code S3Bucket=BUCKET,S3Key={name}/function.zip"
    else:
        code, source = [], f"--zip-file fileb://{bundle.artifact}"
    return [
        *code,
        f"aws lambda create-function --function-name {name} --runtime {bundle.runtime} --architectures x86_64 "
        f"--handler handler.handler {source} --role arn:aws:iam::ACCOUNT_ID:role/ROLE "
        f"--memory-size {memory_mb} --timeout 30 --region {region}",
        *_function_url(name, region),
    ]


def _function_url(name: str, region: str) -> list[str]:
    """A public HTTPS endpoint: since October 2025 a Function URL needs both permissions."""
    return [
        f"aws lambda create-function-url-config --function-name {name} --auth-type NONE --region {region}",
        f"aws lambda add-permission --function-name {name} --statement-id url --action lambda:InvokeFunctionUrl "
        f"--principal '*' --function-url-auth-type NONE --region {region}",
        f"aws lambda add-permission --function-name {name} --statement-id url-invoke --action lambda:InvokeFunction "
        f"--principal '*' --invoked-via-function-url --region {region}",
    ]
