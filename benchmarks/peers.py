"""The peers of the gRPC benchmark: KServe's and MLServer's Open Inference Protocol gRPC servers, and ghz.

`benchmarks/serve.py --grpc-peers` serves the benchmark's fitted LogisticRegression (joblib-dumped) from each peer
and from `conveyor serve --grpc-port`, checks that each answers a 1-row ModelInfer with the model's own
prediction, then drives `inference.GRPCInferenceService/ModelInfer` with ghz, the same request bytes for every
server. This module sets the peers up and runs ghz; serve.py owns the scenarios and the report.

The peers conflict with the project's dependencies, so each gets its own venv under
~/.cache/conveyor/peers (override: CONVEYOR_PEERS_HOME), made on first use with uv (or venv + pip) and reused
while its requirements are unchanged; ghz is `go install`ed into its bin/.

Run inside KServe's venv, `python peers.py kserve-server ...` is the KServe model server (a `kserve.Model` that
predicts as KServe's own sklearnserver does: `get_predict_input` -> `estimator.predict` -> `get_predict_response`).
Only the standard library is imported at module level, so that works.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS_HOME = Path(os.environ.get("CONVEYOR_PEERS_HOME", "~/.cache/conveyor/peers")).expanduser()

KSERVE_VERSION = "0.21.0"
MLSERVER_VERSION = "1.7.1"
GHZ_MODULE = "github.com/bojand/ghz/cmd/ghz"
GHZ_VERSION = "v0.120.0"

SERVICE = "inference.GRPCInferenceService"
INFER = f"{SERVICE}/ModelInfer"
# Conveyor's copy of the protocol's proto; until it ships, the protocol's own (KServe's grpc_predict_v2.proto,
# read from KServe's installed descriptor into a protoset): the same package, service and messages on the wire.
CONVEYOR_PROTO = ROOT / "src" / "conveyor" / "serve" / "oip" / "inference.proto"

PEERS = ("kserve", "kserve-x2", "mlserver", "mlserver-inproc")
# Not a peer: the most any Python grpc.aio server reaches on this machine, timed beside the others in every run
FLOOR = "grpc-floor"
# Not a peer either: the least work a batching model server must do for Conveyor's answer (decode, batch, one
# predict_proba per batch, three outputs), with Conveyor's accept fix and nothing else: no validation, no metrics
BATCH_FLOOR = "grpc-batch-floor"
BATCH_FLOOR_LISTENERS = 8  # Conveyor's --grpc-listeners default


# --- CPUs ------------------------------------------------------------------------------------------------------
@dataclass
class CpuSplit:
    """The CPUs the servers and the load generator run on (`taskset` lists); None: anywhere, sharing them.

    A load generator on the servers' cores takes CPU in proportion to the rate it drives (ghz: ~90 us a call on
    this machine), so it takes the most from the fastest server and narrows the gap it measures. grpc_bench gives
    server and client CPUs of their own for that reason (GRPC_SERVER_CPUS, GRPC_CLIENT_CPUS, one each by default).
    """

    server: str | None = None
    client: str | None = None

    def on_server(self, cmd: list[str]) -> list[str]:
        """`cmd`, and every process it starts, confined to the servers' CPUs."""
        return ["taskset", "--cpu-list", self.server, *cmd] if self.server else cmd

    def on_client(self, cmd: list[str]) -> list[str]:
        return ["taskset", "--cpu-list", self.client, *cmd] if self.client else cmd

    def describe(self) -> str:
        if not self.server and not self.client:
            return "servers and load generator share every CPU"
        where = lambda cpus: f"CPU {cpus}" if cpus else "any CPU"  # noqa: E731
        return f"servers on {where(self.server)}, load generator on {where(self.client)} (taskset)"


CPUS = CpuSplit()  # set by serve.py's --server-cpus and --client-cpus


def parse_cpus(text: str, option: str) -> set[int]:
    """A `taskset` CPU list ("0", "0-1", "0,2") of CPUs this process may use, or SystemExit saying what is wrong."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        raise SystemExit(f"error: {option} {text!r}: give CPU numbers like 0, 0-1 or 0,2") from None
    available = os.sched_getaffinity(0)
    if not cpus or not cpus <= available:
        raise SystemExit(f"error: {option} {text!r}: this machine's CPUs here are {sorted(available)}")
    return cpus


# --- environments ----------------------------------------------------------------------------------------------
def _base_python() -> str:
    """The interpreter the project's venv was made from (same Python version for the peers' venvs)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_venv(name: str, requirements: list[str], log: Callable[[str], None]) -> Path:
    """A venv at PEERS_HOME/name with exactly `requirements` installed; made once, then reused. Returns its python."""
    venv = PEERS_HOME / name
    python = venv / "bin" / "python"
    marker = venv / ".conveyor-requirements"
    wanted = "\n".join(requirements) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    log(f"peers: installing {' '.join(requirements)} into {venv} (once)")
    started = time.perf_counter()
    uv = shutil.which("uv")
    if uv:
        _run([uv, "venv", "--clear", "--quiet", "--python", _base_python(), str(venv)])
        _run([uv, "pip", "install", "--quiet", "--python", str(python), *requirements])
    else:
        shutil.rmtree(venv, ignore_errors=True)
        _run([_base_python(), "-m", "venv", str(venv)])
        _run([str(python), "-m", "pip", "install", "--quiet", *requirements])
    marker.write_text(wanted)
    log(f"peers: {name} ready in {time.perf_counter() - started:.0f} s")
    return python


def kserve_python(sklearn_version: str, log: Callable[[str], None]) -> Path:
    return ensure_venv("kserve", [f"kserve=={KSERVE_VERSION}", f"scikit-learn=={sklearn_version}", "joblib"], log)


def mlserver_python(sklearn_version: str, log: Callable[[str], None]) -> Path:
    reqs = [
        f"mlserver=={MLSERVER_VERSION}",
        f"mlserver-sklearn=={MLSERVER_VERSION}",
        f"scikit-learn=={sklearn_version}",
    ]
    # uvloop 0.22 made asyncio.get_event_loop() raise where MLServer 1.7.1's parallel workers call it, so they die
    # at start (SeldonIO/MLServer#2286, unreleased fix #2285)
    reqs.append("uvloop<0.22")
    return ensure_venv("mlserver", reqs, log)


def ensure_ghz(log: Callable[[str], None]) -> Path:
    """ghz built from the Go module proxy into PEERS_HOME/bin (once per version)."""
    bindir = PEERS_HOME / "bin"
    exe = bindir / "ghz"
    marker = bindir / ".ghz-version"
    if exe.exists() and marker.exists() and marker.read_text().strip() == GHZ_VERSION:
        return exe
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(f"go is not installed: ghz is built with `go install {GHZ_MODULE}@{GHZ_VERSION}`")
    bindir.mkdir(parents=True, exist_ok=True)
    log(f"peers: go install {GHZ_MODULE}@{GHZ_VERSION} (once)")
    _run([go, "install", f"{GHZ_MODULE}@{GHZ_VERSION}"], env={**os.environ, "GOBIN": str(bindir)}, cwd=PEERS_HOME)
    marker.write_text(GHZ_VERSION + "\n")
    return exe


def _run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stderr or proc.stdout)[-2000:]}")
    return proc.stdout


def versions(python: Path, packages: list[str]) -> dict[str, str]:
    code = (
        "import json, sys\nfrom importlib.metadata import version\n"
        "print(json.dumps({p: version(p) for p in sys.argv[1:]}))"
    )
    return json.loads(_run([str(python), "-c", code, *packages]))


_DESCRIPTORS = {  # the protocol's proto as each peer ships it (generated code only; no .proto file)
    "kserve": ("kserve.protocol.grpc.grpc_predict_v2_pb2", f"KServe {KSERVE_VERSION}'s grpc_predict_v2.proto"),
    "mlserver": ("mlserver.grpc.dataplane_pb2", f"MLServer {MLSERVER_VERSION}'s dataplane.proto"),
}


def ghz_proto_args(workdir: Path, pythons: dict[str, Path]) -> tuple[list[str], str]:
    """ghz's flags naming the service definition, and which one it is: Conveyor's proto once committed, else
    a protoset written from a peer's installed descriptor (the same package, service and messages)."""
    if CONVEYOR_PROTO.exists() and _tracked(CONVEYOR_PROTO):
        return ["--import-paths", str(CONVEYOR_PROTO.parent), "--proto", str(CONVEYOR_PROTO)], _rel(CONVEYOR_PROTO)
    for name, python in pythons.items():
        module, label = _DESCRIPTORS[name]
        protoset = workdir / f"{name}.protoset"
        code = (
            "import importlib, sys\nfrom google.protobuf import descriptor_pb2\n"
            "m = importlib.import_module(sys.argv[1])\n"
            "fds = descriptor_pb2.FileDescriptorSet()\nm.DESCRIPTOR.CopyToProto(fds.file.add())\n"
            "open(sys.argv[2], 'wb').write(fds.SerializeToString())"
        )
        _run([str(python), "-c", code, module, str(protoset)])
        return ["--protoset", str(protoset)], f"{label} (its installed descriptor as a protoset)"
    raise RuntimeError(f"no proto for ghz: {_rel(CONVEYOR_PROTO)} is not committed and no peer is installed")


def _tracked(path: Path) -> bool:
    proc = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=ROOT, capture_output=True)
    return proc.returncode == 0


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# --- the request -----------------------------------------------------------------------------------------------
BODIES = ("typed", "raw", "matrix")


def infer_request(model: str, record: dict[str, float], body: str) -> dict[str, Any]:
    """A 1-row ModelInferRequest in protobuf's JSON form (what ghz sends; the check parses the same dict).

    typed and raw: one FP64 [1, 1] tensor per column, as the Open Inference Protocol carries a table and as all
    three servers read it; `content_type: pd` asks KServe and MLServer to decode the inputs as a DataFrame with
    those column names (the estimator was fitted on one). typed: `contents.fp64_contents`; raw:
    `raw_input_contents`, one little-endian float64 per input. matrix: the peers' own fast path, one FP64 [1, 4]
    tensor (input-0) decoded straight to a numpy array, no DataFrame; Conveyor takes one tensor per column.
    """
    if body == "matrix":
        tensor = {"name": "input-0", "datatype": "FP64", "shape": [1, len(record)]}
        tensor["contents"] = {"fp64_contents": list(record.values())}
        return {"model_name": model, "inputs": [tensor]}
    if body not in BODIES:
        raise ValueError(f"unknown request body {body!r} (known: {', '.join(BODIES)})")
    raw = body == "raw"
    inputs: list[dict[str, Any]] = []
    for name, value in record.items():
        tensor: dict[str, Any] = {"name": name, "datatype": "FP64", "shape": [1, 1]}
        if not raw:
            tensor["contents"] = {"fp64_contents": [value]}
        inputs.append(tensor)
    request: dict[str, Any] = {
        "model_name": model,
        "inputs": inputs,
        "parameters": {"content_type": {"string_param": "pd"}},
    }
    if raw:
        request["raw_input_contents"] = [base64.b64encode(struct.pack("<d", v)).decode() for v in record.values()]
    return request


_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_RAW = {"BOOL": "?", "INT32": "<i", "INT64": "<q", "UINT32": "<I", "UINT64": "<Q", "FP32": "<f", "FP64": "<d"}


def first_output(response: Any) -> tuple[str, Any]:
    """The first output's name and first value, typed or raw."""
    out = response.outputs[0]
    if response.raw_output_contents:
        fmt = _RAW.get(out.datatype)
        if fmt is None:
            raise RuntimeError(f"cannot read a raw {out.datatype} output")
        return out.name, struct.unpack_from(fmt, response.raw_output_contents[0])[0]
    values = list(getattr(out.contents, _CONTENTS[out.datatype]))
    if not values:
        raise RuntimeError(f"output {out.name!r} has no values")
    return out.name, values[0]


def _channel_call(channel: Any, method: str, request: Any, reply: Any, timeout: float) -> Any:
    rpc = channel.unary_unary(
        f"/{SERVICE}/{method}",
        request_serializer=type(request).SerializeToString,
        response_deserializer=reply.FromString,
    )
    return rpc(request, timeout=timeout)


def wait_ready(target: str, model: str, alive: Callable[[], bool], timeout: float) -> None:
    """ServerReady and ModelReady(model) answer true, within `timeout` seconds while the server runs.

    Uses the message classes tritonclient ships (a dev dependency): the protocol's messages, wire-compatible.
    """
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    deadline = time.monotonic() + timeout
    last = "no answer"
    with grpc.insecure_channel(target) as channel:
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError(f"the server exited ({last})")
            try:
                if not _channel_call(channel, "ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse, 2).ready:
                    last = "ServerReady: false"
                elif not _channel_call(
                    channel, "ModelReady", pb.ModelReadyRequest(name=model), pb.ModelReadyResponse, 2
                ).ready:
                    last = f"ModelReady({model}): false"
                else:
                    return
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            time.sleep(0.5)
    raise RuntimeError(f"not ready after {timeout:.0f} s: {last}")


def check_infer(target: str, body: dict[str, Any], expected: Any, timeout: float = 10.0) -> str:
    """Send `body` once and compare the first output to `expected` (the model's own prediction).

    Returns a one-line description of the answer; raises RuntimeError when the server does not answer right.
    """
    import grpc
    from google.protobuf import json_format
    from tritonclient.grpc import service_pb2 as pb

    request = json_format.ParseDict(body, pb.ModelInferRequest())
    with grpc.insecure_channel(target) as channel:
        try:
            response = _channel_call(channel, "ModelInfer", request, pb.ModelInferResponse, timeout)
        except grpc.RpcError as exc:
            raise RuntimeError(f"{exc.code().name}: {exc.details()}") from None
    out_name, value = first_output(response)
    if value != expected:
        raise RuntimeError(f"answered {out_name}={value!r}, the model predicts {expected!r}")
    outputs = ", ".join(f"{o.name} {o.datatype} {list(o.shape)}" for o in response.outputs)
    return f"{out_name}={value!r} ({outputs}{', raw' if response.raw_output_contents else ''})"


# --- peer servers ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    kids = [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
                    found += kids
                    todo += kids
    return found


@dataclass
class PeerServer:
    """One or more processes serving gRPC on `grpc_port`, each in its own process group; always stopped."""

    name: str
    description: str
    grpc_port: int
    http_ports: list[int] = field(default_factory=list)  # REST ports, waited on too (workers still starting)
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, cmd: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> None:
        handle = log.open("wb")
        proc = subprocess.Popen(
            CPUS.on_server(cmd),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        self.procs.append(proc)
        self.logs.append(log)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def wait_ready(self, model: str, timeout: float = 180.0) -> None:
        """gRPC ServerReady/ModelReady, then each REST port's /v2/health/ready (so nothing is still starting)."""
        deadline = time.monotonic() + timeout
        wait_ready(self.target, model, self.alive, timeout)
        for port in self.http_ports:
            url = f"http://127.0.0.1:{port}/v2/health/ready"
            while True:
                with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        break
                if not self.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")
                time.sleep(0.5)

    def pids(self) -> list[int]:
        """Every process serving: the ones started and their children (workers, REST processes)."""
        out: list[int] = []
        for p in self.procs:
            if p.poll() is None:
                out += [p.pid, *descendants(p.pid)]
        return out

    def log_tail(self, lines: int = 25) -> str:
        text: list[str] = []
        for path in self.logs:
            with contextlib.suppress(OSError):
                text += [f"--- {path.name}", *path.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(text)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)  # workers left behind by a master that died first


def start_kserve(python: Path, model_file: Path, model: str, workdir: Path, processes: int) -> PeerServer:
    """KServe's ModelServer with this module's SklearnModel, `processes` of them on the same gRPC port.

    KServe serves gRPC from its main process only: its `--workers N` forks the REST server alone, and then pings
    each REST worker from the main process's event loop with a blocking 5 s wait, which stalls gRPC calls (and on
    a loaded machine kills and respawns workers still importing, over and over). So one ModelServer runs with
    `--workers 1`, and processes=2 runs two ModelServers sharing the gRPC port (grpc sets SO_REUSEPORT on Linux;
    connections are spread over both), as Conveyor's 2 workers do.
    """
    grpc_port = free_port()
    if processes == 1:
        desc = f"kserve {KSERVE_VERSION} ModelServer, --workers 1 (gRPC is served by the main process only)"
    else:
        desc = f"{processes} kserve {KSERVE_VERSION} ModelServers (--workers 1) sharing the gRPC port (SO_REUSEPORT)"
    server = PeerServer("kserve" if processes == 1 else f"kserve-x{processes}", desc, grpc_port)
    for i in range(processes):
        http_port = free_port()
        server.http_ports.append(http_port)
        cmd = [str(python), str(Path(__file__).resolve()), "kserve-server", "--model_file", str(model_file)]
        cmd += ["--model_name", model, "--http_port", str(http_port), "--grpc_port", str(grpc_port)]
        cmd += ["--workers", "1", "--enable_latency_logging", "false"]
        server.start(cmd, workdir / f"{server.name}-{i}.log", cwd=workdir)
    return server


def start_mlserver(python: Path, model_file: Path, model: str, workdir: Path, parallel_workers: int) -> PeerServer:
    """`mlserver start` on a repository holding the model with mlserver_sklearn.SKLearnModel.

    parallel_workers=2: the gRPC server in the main process hands each request to one of 2 inference processes;
    0: inference in the gRPC process itself (no inter-process hop, one process).
    """
    name = "mlserver" if parallel_workers else "mlserver-inproc"
    repo = workdir / f"{name}-repo"
    (repo / model).mkdir(parents=True, exist_ok=True)
    shutil.copy(model_file, repo / model / "model.joblib")
    grpc_port = free_port()
    settings = {
        "debug": False,  # no access log (Conveyor keeps none either)
        "host": "127.0.0.1",
        "http_port": free_port(),
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
        "metrics_dir": str(workdir / f"{name}-metrics"),
        "parallel_workers": parallel_workers,
    }
    (repo / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings = {
        "name": model,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"},
    }
    (repo / model / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    desc = f"mlserver {MLSERVER_VERSION} + mlserver-sklearn, parallel_workers={parallel_workers}, debug off"
    server = PeerServer(name, desc, grpc_port, http_ports=[settings["http_port"]])
    server.start([str(python.with_name("mlserver")), "start", str(repo)], workdir / f"{name}.log", cwd=repo)
    return server


def start_floor(answer: int, workdir: Path, processes: int = 2) -> PeerServer:
    """`processes` grpc.aio servers (uvloop, SO_REUSEPORT) whose ModelInfer reads nothing and answers a fixed
    1-row response: what the transport alone costs, the ceiling of every Python gRPC model server here."""
    grpc_port = free_port()
    desc = (
        f"{processes} process{'es' * (processes != 1)} of an empty grpc.aio servicer (uvloop, SO_REUSEPORT; Conveyor's grpcio and generated "
        "code): ModelInfer answers a fixed response without reading the request; not a model server, the floor"
    )
    server = PeerServer(FLOOR, desc, grpc_port)
    for i in range(processes):
        cmd = [sys.executable, str(Path(__file__).resolve()), "floor-server", "--port", str(grpc_port)]
        server.start([*cmd, "--answer", str(answer)], workdir / f"{FLOOR}-{i}.log", cwd=workdir)
    return server


def floor_server(argv: list[str]) -> None:
    import argparse

    import grpc
    import uvloop

    from conveyor.serve.oip import inference_pb2 as pb
    from conveyor.serve.oip import inference_pb2_grpc as pb_grpc

    parser = argparse.ArgumentParser(prog="peers.py floor-server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--answer", type=int, required=True)
    args = parser.parse_args(argv)
    answer = pb.ModelInferResponse(model_name="floor", model_version="1")
    answer.outputs.add(name="prediction", datatype="INT64", shape=[1]).contents.int64_contents.append(args.answer)

    class Floor(pb_grpc.GRPCInferenceServiceServicer):
        async def ServerReady(self, request: Any, context: Any) -> Any:
            return pb.ServerReadyResponse(ready=True)

        async def ModelReady(self, request: Any, context: Any) -> Any:
            return pb.ModelReadyResponse(ready=True)

        async def ModelInfer(self, request: Any, context: Any) -> Any:
            return answer

    async def serve() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Floor(), server)
        server.add_insecure_port(f"127.0.0.1:{args.port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(serve())


def start_batch_floor(model_file: Path, model: str, workdir: Path, processes: int = 2) -> PeerServer:
    """`processes` minimal batching servers (uvloop, BATCH_FLOOR_LISTENERS grpc.aio servers each on the port)."""
    grpc_port = free_port()
    desc = (
        f"{processes} process{'es' * (processes != 1)} of a minimal batching grpc.aio servicer ({BATCH_FLOOR_LISTENERS} servers each on the "
        "port, uvloop): reads the row, merges the calls waiting into one predict_proba, answers prediction and both "
        "probabilities; no validation, no metrics, no timeouts: not a model server, the least one does"
    )
    server = PeerServer(BATCH_FLOOR, desc, grpc_port)
    for i in range(processes):
        cmd = [sys.executable, str(Path(__file__).resolve()), "batch-floor-server", "--port", str(grpc_port)]
        cmd += ["--model-file", str(model_file), "--model-name", model]
        server.start(cmd, workdir / f"{BATCH_FLOOR}-{i}.log", cwd=workdir)
    return server


def batch_floor_server(argv: list[str]) -> None:
    import argparse
    import asyncio
    import warnings

    import grpc
    import joblib
    import numpy as np
    import sklearn
    import uvloop

    from conveyor.serve.oip import inference_pb2 as pb
    from conveyor.serve.oip import inference_pb2_grpc as pb_grpc

    parser = argparse.ArgumentParser(prog="peers.py batch-floor-server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-file", required=True)
    parser.add_argument("--model-name", required=True)
    args = parser.parse_args(argv)
    estimator = joblib.load(args.model_file)
    warnings.simplefilter("ignore")  # "X does not have valid feature names": the columns are in the fitted order
    width = len(estimator.feature_names_in_)
    waiting: list[tuple[np.ndarray, asyncio.Future]] = []

    def row(request: Any) -> np.ndarray:
        """One row from a [1, width] matrix or from width [1] inputs, typed or raw."""
        if request.raw_input_contents:
            return np.frombuffer(b"".join(request.raw_input_contents), dtype="<f8")
        values = [v for t in request.inputs for v in t.contents.fp64_contents]
        return np.fromiter(values, np.float64, width)

    async def drain() -> None:
        await asyncio.sleep(0)  # the calls accepted in this loop turn join
        while waiting:
            batch = waiting[:]
            waiting.clear()
            with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
                proba = estimator.predict_proba(np.vstack([x for x, _ in batch]))
            labels = estimator.classes_[proba.argmax(axis=1)]
            for i, (_, future) in enumerate(batch):
                future.set_result((labels[i], proba[i]))

    class BatchFloor(pb_grpc.GRPCInferenceServiceServicer):
        draining: asyncio.Task | None = None

        async def ServerReady(self, request: Any, context: Any) -> Any:
            return pb.ServerReadyResponse(ready=True)

        async def ModelReady(self, request: Any, context: Any) -> Any:
            return pb.ModelReadyResponse(ready=True)

        async def ModelInfer(self, request: Any, context: Any) -> Any:
            future = asyncio.get_running_loop().create_future()
            waiting.append((row(request), future))
            if BatchFloor.draining is None or BatchFloor.draining.done():
                BatchFloor.draining = asyncio.ensure_future(drain())
            label, proba = await future
            answer = pb.ModelInferResponse(model_name=args.model_name, model_version="1", id=request.id)
            answer.outputs.add(name="prediction", datatype="INT64", shape=[1]).contents.int64_contents.append(
                int(label)
            )
            for c, p in zip(estimator.classes_, proba, strict=True):
                answer.outputs.add(name=f"proba_{c}", datatype="FP64", shape=[1]).contents.fp64_contents.append(p)
            return answer

    async def serve() -> None:
        servicer = BatchFloor()
        servers = []
        for _ in range(BATCH_FLOOR_LISTENERS):
            server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
            pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
            server.add_insecure_port(f"127.0.0.1:{args.port}")
            await server.start()
            servers.append(server)
        await servers[0].wait_for_termination()

    uvloop.run(serve())


def start_peer(name: str, pythons: dict[str, Path], model_file: Path, model: str, workdir: Path) -> PeerServer:
    if name == "kserve":
        return start_kserve(pythons["kserve"], model_file, model, workdir, 1)
    if name == "kserve-x2":
        return start_kserve(pythons["kserve"], model_file, model, workdir, 2)
    if name == "mlserver":
        return start_mlserver(pythons["mlserver"], model_file, model, workdir, parallel_workers=2)
    if name == "mlserver-inproc":
        return start_mlserver(pythons["mlserver"], model_file, model, workdir, parallel_workers=0)
    raise ValueError(f"unknown peer {name!r} (known: {', '.join(PEERS)})")


# --- ghz -------------------------------------------------------------------------------------------------------
@dataclass
class GhzResult:
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)
    ghz_cpu: float = 0.0  # cores ghz used during the run (2.0 = both)
    server_cpu: float = 0.0  # cores the server's processes used
    server_cpu_by_pid: dict[str, float] = field(default_factory=dict)  # how the load spread over its processes
    other_cpu: float = 0.0  # cores every other process on the machine used (should be ~0)


def ghz_connections(concurrency: int) -> int:
    """One HTTP/2 connection per 4 concurrent calls, 16 at most: enough connections for SO_REUSEPORT to spread
    them over two processes (a single connection would pin every call to one worker)."""
    return max(1, min(16, concurrency // 4))


def parse_ghz(report: dict[str, Any]) -> GhzResult:
    """ghz's JSON report (`--format json`): rps, latency distribution (ns), status and error counts."""
    r = GhzResult()
    r.requests = int(report.get("count", 0))
    r.seconds = float(report.get("total", 0)) / 1e9
    r.rps = float(report.get("rps", 0.0))
    for item in report.get("latencyDistribution") or []:
        pct, ns = item.get("percentage"), item.get("latency")
        attr = {50: "p50_ms", 90: "p90_ms", 99: "p99_ms"}.get(pct)
        if attr and ns is not None:
            setattr(r, attr, ns / 1e6)
    r.statuses = dict(report.get("statusCodeDistribution") or {})
    r.error_kinds = dict(report.get("errorDistribution") or {})
    r.errors = sum(v for k, v in r.statuses.items() if k != "OK") or sum(r.error_kinds.values())
    return r


def run_ghz(
    ghz: Path,
    proto_args: list[str],
    target: str,
    body_file: Path,
    concurrency: int,
    seconds: float,
    pids: list[int],
    cpu_of: Callable[[int], float],
    machine_busy: Callable[[], float],
) -> GhzResult:
    """ghz at `concurrency` concurrent calls for `seconds`, with the CPU use of ghz, the server and the rest."""
    report_file = body_file.with_name(f"ghz-{os.getpid()}-{time.monotonic_ns()}.json")
    cmd = [str(ghz), "--insecure", *proto_args, "--call", INFER, "--data-file", str(body_file)]
    cmd += ["--concurrency", str(concurrency), "--connections", str(ghz_connections(concurrency))]
    cmd += ["--duration", f"{max(1, round(seconds))}s", "--duration-stop", "wait", "--timeout", "10s"]
    cmd += ["--format", "json"]
    cmd += ["--output", str(report_file), target]
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    before_pids = {p: cpu_of(p) for p in pids}
    before_machine = machine_busy()
    started = time.perf_counter()
    proc = subprocess.run(CPUS.on_client(cmd), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    after_pids = {p: cpu_of(p) for p in pids}
    after_machine = machine_busy()
    if not report_file.exists():
        raise RuntimeError(f"ghz failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    try:
        result = parse_ghz(json.loads(report_file.read_text()))
    finally:
        report_file.unlink(missing_ok=True)
    ghz_cpu = (after_children.ru_utime - before_children.ru_utime) + (
        after_children.ru_stime - before_children.ru_stime
    )
    result.ghz_cpu = ghz_cpu / wall
    by_pid = {p: max(0.0, after_pids[p] - before_pids[p]) / wall for p in pids}
    result.server_cpu = sum(by_pid.values())
    result.server_cpu_by_pid = {str(p): round(c, 3) for p, c in by_pid.items() if c >= 0.01}
    result.other_cpu = max(0.0, (after_machine - before_machine) / wall - result.ghz_cpu - result.server_cpu)
    return result


# --- the KServe model server (runs in KServe's venv) ------------------------------------------------------------
if importlib.util.find_spec("kserve") is not None:  # only in KServe's venv
    import joblib
    import kserve
    from kserve.utils.utils import get_predict_input, get_predict_response

    class SklearnModel(kserve.Model):
        """A joblib-dumped scikit-learn estimator, predicted as KServe's sklearnserver does.

        At module level: KServe's multi-process REST server pickles the model into spawned workers by name.
        """

        def __init__(self, name: str, path: str) -> None:
            super().__init__(name)
            self.path = path
            self.estimator: Any = None
            self.load()

        def load(self) -> bool:
            self.estimator = joblib.load(self.path)
            self.ready = True
            return self.ready

        def predict(self, payload: Any, headers: Any = None) -> Any:
            instances = get_predict_input(payload)
            result = self.estimator.predict(instances)
            return get_predict_response(payload, result, self.name)


def kserve_server(argv: list[str]) -> None:
    """KServe's ModelServer with SklearnModel. KServe's own flags (--http_port, --grpc_port, --workers,
    --enable_latency_logging, ...) are read by kserve from sys.argv when it is imported; ours are --model_file
    and --model_name."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--model_file", required=True)
    parser.add_argument("--model_name", required=True)
    args, _ = parser.parse_known_args(argv)
    model = SklearnModel(args.model_name, args.model_file)
    server = kserve.ModelServer()
    # KServe logs every gRPC call at INFO ("grpc method: ..."); Conveyor and MLServer (debug off) log none
    logging.getLogger("kserve").setLevel(logging.WARNING)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "kserve-server":
        kserve_server(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "floor-server":
        floor_server(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "batch-floor-server":
        batch_floor_server(sys.argv[2:])
    else:
        sys.exit(
            "usage: python peers.py kserve-server --model_file F --model_name N [kserve flags]\n"
            "       python peers.py floor-server --port P --answer N\n"
            "       python peers.py batch-floor-server --port P --model-file F --model-name N"
        )
