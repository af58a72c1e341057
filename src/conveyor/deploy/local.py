"""Run a function bundle on this machine in its provider's own runtime, to try it and to time it.

gcp: functions-framework (what Cloud Run functions run) serving the source directory `deploy function` wrote.
aws: the Lambda Runtime Interface Emulator (`scripts/lambda-rie.sh` builds it) driving awslambdaric over an
unzipped function.zip, with an interpreter of the runtime's Python version: invocations go through Lambda's
runtime API, as in Lambda. A runtime that cannot be had here is a ConveyorError saying what is missing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conveyor.errors import ConveyorError

INVOCATIONS = "/2015-03-31/functions/function/invocations"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rie_binary() -> Path | None:
    """aws-lambda-rie as scripts/lambda-rie.sh leaves it, if it is there."""
    cache = Path(os.environ.get("CONVEYOR_CACHE", Path.home() / ".cache" / "conveyor"))
    path = cache / "bin" / "aws-lambda-rie"
    return path if path.is_file() and os.access(path, os.X_OK) else None


@dataclass
class Running:
    """A function process listening on `url`; `started` is when its process was started (perf_counter)."""

    url: str
    process: subprocess.Popen
    log: Path
    started: float


def wait_listening(url: str, proc: subprocess.Popen, what: str, log: Path, timeout: float = 120) -> None:
    """Until `url`'s port accepts connections; a process that exits first is an error quoting its last line."""
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
            raise ConveyorError(f"{what} exited with code {proc.returncode}: {lines[-1] if lines else 'no output'}")
        try:
            socket.create_connection((host, int(port)), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise ConveyorError(f"{what} did not listen within {timeout:.0f}s") from None
            time.sleep(0.005)


@contextmanager
def process(
    cmd: Sequence[str], log: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """A process in a session of its own, stopped (SIGTERM, then SIGKILL) with everything it started."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**clean, **(env or {})},
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def gcp_function(source: Path, log: Path, python: str = sys.executable, target: str = "predict") -> Iterator[Running]:
    """functions-framework serving `source` (its main.py) on a free loopback port."""
    port = free_port()
    cmd = [python, "-m", "functions_framework", "--target", target, "--host", "127.0.0.1", "--port", str(port)]
    started = time.perf_counter()
    with process(cmd, log, cwd=source) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_listening(url, proc, "functions-framework", log)
        yield Running(url, proc, log, started)


def unzip(bundle: Path, dest: Path) -> Path:
    """function.zip unpacked as Lambda unpacks it into /var/task."""
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(dest)
    return dest


@contextmanager
def lambda_function(
    task: Path, log: Path, python: str, client: Path | None = None, handler: str = "handler.handler"
) -> Iterator[Running]:
    """aws-lambda-rie running `handler` from the unzipped `task` directory; `client` holds awslambdaric for
    `python` when it is not installed there (Lambda's managed runtimes bring their own)."""
    rie = rie_binary()
    if rie is None:
        raise ConveyorError("aws-lambda-rie is not built: run scripts/lambda-rie.sh build (it needs Go)")
    port, api = free_port(), free_port()
    cmd = [str(rie), "--runtime-interface-emulator-address", f"127.0.0.1:{port}"]
    cmd += ["--runtime-api-address", f"127.0.0.1:{api}", python, "-m", "awslambdaric", handler]
    env = {"PYTHONPATH": str(client)} if client is not None else {}
    started = time.perf_counter()
    with process(cmd, log, cwd=task, env=env) as proc:
        url = f"http://127.0.0.1:{port}{INVOCATIONS}"
        wait_listening(url, proc, "aws-lambda-rie", log)
        yield Running(url, proc, log, started)


def lambda_client(dest: Path, platform) -> Path:
    """awslambdaric and what it needs, for the runtime's Python, installed into `dest` (uv.lock's versions)."""
    from conveyor.deploy.wheelhouse import requires, run_pip, runtime_pins

    pins = {p.name: p for p in runtime_pins(["function-aws"], [], platform)}
    wanted = [pins["awslambdaric"], *(pins[d] for d in sorted(requires("awslambdaric")) if d in pins)]
    tags = [flag for tag in platform.tags for flag in ("--platform", tag)]
    run_pip(
        "install", "--no-deps", "--only-binary=:all:", "--target", str(dest), "--python-version", platform.python,
        "--implementation", "cp", "--abi", platform.abi, *tags, *(p.requirement() for p in wanted),
    )  # fmt: skip
    return dest
