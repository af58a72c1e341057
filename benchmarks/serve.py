"""Serving benchmark: the production server under wrk, against the in-process ceiling of the same model.

    python benchmarks/serve.py                      # full run: 10 s per wrk run, 1, 8 and 64 connections
    python benchmarks/serve.py --quick              # smoke test: 3 s runs
    python benchmarks/serve.py --profile            # also sample a worker with py-spy where a target is missed
    python benchmarks/serve.py --only grpc --grpc-peers   # only gRPC 1-row infer against KServe and MLServer

What it does:

1. builds a temporary model store with a scikit-learn LogisticRegression on x0..x3 (flavor sklearn) and the demo
   sales forecaster (`train_sales(demo_history(), range_max=365)`, flavor forecaster);
2. measures the in-process ceiling: `Model.predict` on the same inputs, with `signature.check_records`
   validation as the server does, no HTTP (logistic regression: 1 row per call and 64 rows per call;
   forecaster: `{"series": "total", "range": 7}`);
3. starts `python -m conveyor.cli serve ... --workers 2` (`--workers N`) on a free port, waits for /readyz (and for every worker
   to have loaded the model), and drives it with wrk at increasing concurrency, with batching on (defaults),
   off (`--max-batch-rows 1`) and with `--max-wait-ms 2`;
4. prints a table and writes benchmarks/results/serve.json and serve.md;
5. with --grpc-peers: `conveyor serve --grpc-port` beside KServe's and MLServer's gRPC servers (benchmarks/peers.py
   installs them in their own venvs), the same fitted model, ghz driving ModelInfer with the same 1-row request;
   writes serve_grpc.json and serve_grpc.md.

wrk and the server share the machine: on 2 cores, wrk's own CPU use is measured and reported (`wrk cpu`),
so a ratio far below 1 can be told apart from a slow server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PYTHON = sys.executable

LR_RECORD = {"x0": 0.25, "x1": -1.5, "x2": 0.75, "x3": 2.0}
LR_BODY = json.dumps({"instances": [LR_RECORD]})
FORECAST_RECORD = {"series": "total", "range": 7}
FORECAST_PATH = "/predict?range=7"

# Targets (at the highest concurrency, 64 connections by default).
LR_TARGET_RPS = 3000.0
LR_TARGET_P99_MS = 50.0
FORECAST_TARGET_RPS = 1500.0
TARGET_CONNECTIONS = 64

WORKERS = 2
NOISY_CPU = 0.2  # cores used by other processes during a run above which the run is flagged
CLK_TCK = os.sysconf("SC_CLK_TCK")


def peers_module() -> Any:
    """benchmarks/peers.py (the peers, ghz and the CPU split), however this script was started."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks import peers

    return peers


# --- model store -----------------------------------------------------------------------------------------------
@dataclass
class Store:
    path: Path
    models: dict[str, str] = field(default_factory=dict)  # model name -> kind ("lr" / "forecast")
    skipped: dict[str, str] = field(default_factory=dict)  # kind -> why it could not be built


def build_store(path: Path, log: Callable[[str], None]) -> Store:
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from conveyor.store import ModelStore

    store = Store(path)
    ms = ModelStore(str(path))

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(2000, 4)), columns=[f"x{i}" for i in range(4)])
    y = (X["x0"] - 0.5 * X["x1"] + 0.25 * X["x2"] + rng.normal(scale=0.5, size=len(X)) > 0).astype(int)
    ref = ms.add("iris_lr", LogisticRegression().fit(X, y), flavor="sklearn")
    store.models[ref.name] = "lr"
    log(f"store: registered {ref} (sklearn LogisticRegression, 4 float features)")

    try:
        from conveyor.forecast import train_sales
        from conveyor.sales_data import demo_history

        started = time.perf_counter()
        forecaster = train_sales(demo_history(), range_max=365)
        trained = time.perf_counter() - started
        ref = ms.add("sales", forecaster, flavor="forecaster")
        ms.load(ref)  # fail here rather than in the server
        store.models[ref.name] = "forecast"
        log(f"store: registered {ref} (demo sales forecaster, range_max 365, trained in {trained:.1f} s)")
    except Exception as exc:  # the forecaster (or its flavor) may still be in progress
        store.skipped["forecast"] = f"{type(exc).__name__}: {exc}"
        log(f"[bold red]store: NO FORECASTER — {store.skipped['forecast']}; its scenarios are skipped[/]")
    return store


# --- in-process ceiling ----------------------------------------------------------------------------------------
@dataclass
class Ceiling:
    name: str
    model: str
    rows_per_call: int
    calls_per_s: float
    rows_per_s: float
    us_per_call: float
    note: str = ""


def _rate(fn: Callable[[], Any], seconds: float) -> tuple[int, float]:
    for _ in range(50):  # warm up caches, lazy imports, sklearn config
        fn()
    calls, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(50):
            fn()
        calls += 50
        now = time.perf_counter()
        if now >= deadline:
            return calls, now - started


def measure_ceilings(store: Store, seconds: float) -> list[Ceiling]:
    """`Model.predict` on the inputs the server gets, validated with `check_records` as the server does."""
    import orjson
    import pandas as pd

    from conveyor.serve import codecs
    from conveyor.serve.batching import _split
    from conveyor.store import ModelStore

    ms = ModelStore(str(store.path))
    out: list[Ceiling] = []
    for name, kind in store.models.items():
        model = ms.load(name)
        sig = model.signature
        cases: list[tuple[str, list[dict[str, Any]], str]] = []
        if kind == "lr":
            cases += [("lr 1 row", [LR_RECORD], ""), ("lr 64 rows", [LR_RECORD] * 64, "")]
        else:
            cases += [("forecast range=7", [FORECAST_RECORD], "")]
        for label, records, note in cases:

            def call(records=records, model=model, sig=sig) -> Any:
                return model.predict(pd.DataFrame(sig.check_records(records), copy=False))

            calls, elapsed = _rate(call, seconds)
            rows = len(records)
            out.append(Ceiling(label, name, rows, calls / elapsed, calls * rows / elapsed, elapsed / calls * 1e6, note))

        # The whole request path without HTTP, for the profile breakdown (not the ceiling of the ratio).
        if kind == "lr":
            body = LR_BODY.encode()

            def pipeline(body=body, model=model, sig=sig) -> bytes:
                cols, rows = codecs.decode_body(body, "application/json", sig, 100_000)
                res = _split(model.predict(pd.DataFrame(cols, copy=False)), [rows])[0]
                return orjson.dumps({"model": model.name, "version": model.version, "predictions": codecs.records(res)})

            label = "lr 1 row, full path"
        else:

            def pipeline(model=model, sig=sig) -> bytes:
                cols, rows = codecs.decode_query({"range": "7"}, sig)
                res = _split(model.predict(pd.DataFrame(cols, copy=False)), [rows])[0]
                body = {"model": model.name, "version": model.version, "range": 7, "series": res["series"][0]}
                body["predictions"] = codecs.forecast_steps(res, 0)
                return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)

            label = "forecast range=7, full path"
        calls, elapsed = _rate(pipeline, seconds)
        out.append(
            Ceiling(
                label,
                name,
                1,
                calls / elapsed,
                calls / elapsed,
                elapsed / calls * 1e6,
                "decode + validate + predict + split + encode, no HTTP",
            )
        )
    return out


# --- server ----------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat), to tell other processes' load apart."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Server:
    """`python -m conveyor.cli serve` in its own process group; always stopped on exit."""

    def __init__(self, store: Path, model: str, workdir: Path, flags: list[str], env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"server-{model}-{self.port}.log"
        metrics_dir = workdir / f"metrics-{self.port}"
        metrics_dir.mkdir()
        cmd = [PYTHON, "-m", "conveyor.cli", "serve", model, "--store", str(store), "--port", str(self.port)]
        cmd += ["--workers", str(WORKERS), *flags]
        self.cmd = cmd
        full_env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), **(env or {})}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            peers_module().CPUS.on_server(cmd),
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        """/readyz answers 200 and every worker reports its model in /metrics (conveyor_model_info)."""
        deadline = time.monotonic() + timeout
        ready = False
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                status, _ = _get(self.url + "/readyz")
                ready = ready or status == 200
                if ready:
                    _, text = _get(self.url + "/metrics")
                    live = re.findall(rb'^conveyor_model_info\{[^}]*pid="(\d+)"[^}]*\} 1\.0', text, re.M)
                    if len(set(live)) >= WORKERS:
                        return
            time.sleep(0.2)
        if not ready:
            raise RuntimeError(f"server not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        # stray workers of the group (the master died first)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


# --- wrk -------------------------------------------------------------------------------------------------------
@dataclass
class WrkResult:
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float | None = None
    p75_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    wrk_cpu: float = 0.0  # CPU seconds wrk used per wall second (2.0 = both cores)
    server_cpu: float = 0.0  # CPU seconds of the workers per wall second
    other_cpu: float = 0.0  # CPU of every other process on the machine per wall second (should be ~0)
    raw: str = ""

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(text: str) -> WrkResult:
    r = WrkResult(raw=text)
    if m := re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text):
        r.requests = int(m.group(1))
        r.seconds = _ms(m.group(2) + m.group(3)) / 1000
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        r.rps = float(m.group(1))
    for pct, attr in (("50", "p50_ms"), ("75", "p75_ms"), ("90", "p90_ms"), ("99", "p99_ms")):
        if m := re.search(rf"^\s+{pct}(?:\.0+)?%\s+([\d.]+(?:us|ms|s|m|h))\s*$", text, re.M):
            setattr(r, attr, _ms(m.group(1)))
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text):
        r.non_2xx = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        r.socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True))
    return r


def wrk_script(workdir: Path, kind: str) -> Path | None:
    if kind != "lr":
        return None
    path = workdir / "post_lr.lua"
    body = LR_BODY.replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(f'wrk.method = "POST"\nwrk.body = "{body}"\nwrk.headers["Content-Type"] = "application/json"\n')
    return path


def run_wrk(url: str, connections: int, seconds: float, script: Path | None, workers: list[int]) -> WrkResult:
    threads = max(1, min(2, connections))
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    before_workers = sum(cpu_seconds(p) for p in workers)
    before_machine = machine_busy_seconds()
    started = time.perf_counter()
    proc = subprocess.run(peers_module().CPUS.on_client(cmd), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    after_workers = sum(cpu_seconds(p) for p in workers)
    after_machine = machine_busy_seconds()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    result = parse_wrk(proc.stdout)
    wrk_cpu = (after_children.ru_utime - before_children.ru_utime) + (
        after_children.ru_stime - before_children.ru_stime
    )
    result.wrk_cpu = wrk_cpu / wall
    result.server_cpu = (after_workers - before_workers) / wall
    result.other_cpu = max(0.0, (after_machine - before_machine) / wall - result.wrk_cpu - result.server_cpu)
    return result


# --- py-spy ----------------------------------------------------------------------------------------------------
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    # scanned from the leaf frame upwards: the first frame that matches names the category
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("validation (signature.py)", ("conveyor/signature.py",)),
    (
        "predict (model + library)",
        ("sklearn/", "conveyor/flavors/", "conveyor/forecast/", "conveyor/model.py", "scipy/"),
    ),
    ("batching glue (DataFrame, split)", ("conveyor/serve/batching.py",)),
    ("JSON encode (orjson.dumps in render)", ("render (",)),
    ("request decode (codecs.py)", ("conveyor/serve/codecs.py",)),
    ("handlers + middleware (app.py)", ("conveyor/serve/app.py",)),
    ("starlette (routing, request, response)", ("starlette/",)),
    ("uvicorn / HTTP parsing", ("uvicorn/", "httptools", "h11/")),
    ("asyncio event loop", ("asyncio/", "uvloop")),
    ("thread pool (executor)", ("concurrent/futures", "threading.py")),
    ("gunicorn", ("gunicorn/", "uvicorn_worker")),
]


def _match(frame: str, pattern: str) -> bool:
    if pattern == "render (":  # the JSON response class's render(): orjson.dumps
        return frame.startswith("render (") and "conveyor/serve/app.py" in frame
    return pattern in frame


def categorise(collapsed: Path) -> dict[str, Any]:
    """Where samples of py-spy's collapsed stacks (`-f raw`) fall, by category and by leaf function."""
    cats: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        if frames and frames[0].startswith(("thread (", "process ")):
            threads[frames[0]] += n
        leaves[frames[-1]] += n
        for frame in reversed(frames):
            hit = next((name for name, pats in CATEGORIES if any(_match(frame, p) for p in pats)), None)
            if hit:
                cats[hit] += n
                break
        else:
            cats["other"] += n
    return {
        "samples": total,
        "categories": {k: round(v / total, 4) for k, v in cats.most_common()} if total else {},
        "top_leaves": [(k, round(v / total, 4)) for k, v in leaves.most_common(15)] if total else [],
        "threads": {k: round(v / total, 4) for k, v in threads.most_common()} if total else {},
    }


PROFILE_RATE = 100


def py_spy() -> str | None:
    local = Path(PYTHON).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def profiling(workers: list[int], scenario: str, seconds: float, results: Path) -> Iterator[dict[str, Any]]:
    """Sample one worker to an SVG flame graph and the other to collapsed stacks, while the body runs the load."""
    info: dict[str, Any] = {}
    exe = py_spy()
    if exe is None or not workers:
        info["error"] = "py-spy not available (uv pip install --python .venv/bin/python py-spy)"
        yield info
        return
    results.mkdir(parents=True, exist_ok=True)
    svg = results / f"profile-{scenario}.svg"
    raw = results / f"profile-{scenario}.txt"
    duration = str(max(1, int(seconds)))
    common = ["--duration", duration, "--rate", str(PROFILE_RATE), "--nonblocking", "--threads"]
    procs = [
        subprocess.Popen(
            [exe, "record", "-o", str(svg), "--pid", str(workers[0]), *common],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ),
        subprocess.Popen(
            # --gil: only the thread holding the GIL, i.e. where the worker's Python CPU time goes
            [exe, "record", "-f", "raw", "--gil", "-o", str(raw), "--pid", str(workers[-1]), *common],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ),
    ]
    try:
        time.sleep(0.5)  # let py-spy attach
        yield info
    finally:
        for p in procs:
            try:
                _, err = p.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
            if p.returncode != 0:
                info.setdefault("error", err.decode(errors="replace")[-500:])
    if raw.exists():
        info.update(categorise(raw))
        # share of wall time a thread of the worker held the GIL (1.0: the worker is GIL-bound)
        info["gil_busy"] = round(info["samples"] / (PROFILE_RATE * int(duration)), 3)
        info["svg"] = _rel(svg) if svg.exists() else None
        info["collapsed"] = _rel(raw)


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# --- scenarios -------------------------------------------------------------------------------------------------
@dataclass
class Scenario:
    name: str
    kind: str  # "lr" or "forecast"
    model: str
    flags: list[str]
    connections: list[int]
    description: str


@dataclass
class Row:
    scenario: str
    kind: str
    description: str
    connections: int
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    non_2xx: int
    socket_errors: dict[str, int]
    errors: int
    ceiling_calls_per_s: float
    ratio: float
    wrk_cpu: float
    server_cpu: float
    other_cpu: float
    target: str | None  # None: no target at this concurrency
    target_ok: bool | None


def scenarios(store: Store, connections: list[int]) -> list[Scenario]:
    top = max(connections)
    out = []
    for model, kind in store.models.items():
        short = "lr" if kind == "lr" else "forecast"
        out += [
            Scenario(f"{short}-batching", kind, model, [], connections, "defaults (adaptive batching, max 256 rows)"),
            Scenario(f"{short}-nobatch", kind, model, ["--max-batch-rows", "1"], connections, "--max-batch-rows 1"),
            Scenario(f"{short}-wait2ms", kind, model, ["--max-wait-ms", "2"], [top], "--max-wait-ms 2"),
        ]
    return out


def check_target(kind: str, connections: int, rps: float, p99: float | None) -> tuple[str | None, bool | None]:
    if connections != TARGET_CONNECTIONS:
        return None, None
    if kind == "lr":
        ok = rps >= LR_TARGET_RPS and p99 is not None and p99 <= LR_TARGET_P99_MS
        return f">= {LR_TARGET_RPS:,.0f} req/s, p99 <= {LR_TARGET_P99_MS:.0f} ms", ok
    return f">= {FORECAST_TARGET_RPS:,.0f} req/s", rps >= FORECAST_TARGET_RPS


# --- report ----------------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": None,
        "git_commit": git_commit(),
        "loadavg_at_start": None,
    }
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        info["wrk"] = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    versions = {}
    for pkg in ("conveyor-ml", "uvicorn", "gunicorn", "starlette", "orjson", "scikit-learn", "pandas", "numpy"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[pkg] = version(pkg)
    info["versions"] = versions
    return info


def git_commit() -> str | None:
    """HEAD's commit, read from .git without running git."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return None


def processes(n: int) -> str:
    return f"{n} process{'es' * (n != 1)}"


def cpu_split(cpus: dict[str, Any] | None) -> str:
    """Where the servers and the load generator ran, for a results header (older results: shared)."""
    return peers_module().CpuSplit(**(cpus or {})).describe()


def _f(x: float | None, fmt: str = ".1f") -> str:
    return "—" if x is None else format(x, fmt)


def _target_cell(row: Row) -> str:
    if row.target_ok is None:
        return ""
    return "PASS" if row.target_ok else "MISS"


def print_table(console: Any, rows: list[Row], ceilings: list[Ceiling]) -> None:
    from rich.table import Table

    t = Table(title="In-process ceiling (no HTTP)")
    for col in ("case", "rows/call", "calls/s", "rows/s", "µs/call", "note"):
        t.add_column(col, justify="right" if col not in ("case", "note") else "left")
    for c in ceilings:
        t.add_row(
            c.name,
            str(c.rows_per_call),
            f"{c.calls_per_s:,.0f}",
            f"{c.rows_per_s:,.0f}",
            f"{c.us_per_call:,.0f}",
            c.note,
        )
    console.print(t)

    t = Table(title=f"Server under wrk ({WORKERS} gunicorn/uvicorn workers, {os.cpu_count()} cores)")
    cols = (
        "scenario",
        "conns",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "ratio",
        "wrk cpu",
        "srv cpu",
        "other cpu",
        "target",
    )
    for col in cols:
        t.add_column(col, justify="left" if col == "scenario" else "right")
    for r in rows:
        err = f"[bold red]{r.errors}[/]" if r.errors else "0"
        tgt = _target_cell(r)
        tgt = {"PASS": "[green]PASS[/]", "MISS": "[bold red]MISS[/]"}.get(tgt, tgt)
        t.add_row(
            r.scenario,
            str(r.connections),
            f"{r.rps:,.0f}",
            _f(r.p50_ms, ".2f"),
            _f(r.p99_ms, ".2f"),
            err,
            f"{r.ratio:.2f}",
            f"{r.wrk_cpu:.2f}",
            f"{r.server_cpu:.2f}",
            f"[bold red]{r.other_cpu:.2f}[/]" if r.other_cpu > NOISY_CPU else f"{r.other_cpu:.2f}",
            tgt,
        )
    console.print(t)
    console.print(
        "ratio = server req/s ÷ in-process calls/s (1 row per call, validation included); "
        "wrk cpu / srv cpu = cores used by wrk / by the 2 workers during the run (2.00 = the whole machine)."
    )


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        "# Serving benchmark",
        "",
        f"- date: {m['date']}",
        f"- commit: {m['git_commit'] or 'unknown'}",
        f"- machine: {m['nproc']} cores ({m['cpu']}), {m['platform']}; load average at start "
        f"{' '.join(m.get('loadavg_at_start') or [])}, at end {' '.join(m.get('loadavg_at_end') or [])}",
        f"- Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
        f"- load generator: {m.get('wrk', 'wrk')}, {doc['settings']['duration_s']} s per run, "
        f"`-t min(2, connections)`, on the same machine as the server; {cpu_split(doc['settings'].get('cpus'))}",
        f"- server: `conveyor serve NAME --workers {WORKERS}` (gunicorn + uvicorn workers)",
        "",
    ]
    if doc["skipped"]:
        for kind, why in doc["skipped"].items():
            lines += [f"> **{kind} not benchmarked**: {why}", ""]
    lines += [
        "## In-process ceiling (no HTTP)",
        "",
        "| case | rows/call | calls/s | rows/s | µs/call | note |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for c in doc["ceilings"]:
        lines.append(
            f"| {c['name']} | {c['rows_per_call']} | {c['calls_per_s']:,.0f} | {c['rows_per_s']:,.0f} | "
            f"{c['us_per_call']:,.0f} | {c['note']} |"
        )
    lines += [
        "",
        "## Server under wrk",
        "",
        "| scenario | settings | conns | req/s | p50 ms | p99 ms | errors | ratio to ceiling | wrk cpu | server cpu "
        "| other cpu | target |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in doc["rows"]:
        target = ""
        if r["target_ok"] is not None:
            target = ("PASS" if r["target_ok"] else "**MISS**") + f" ({r['target']})"
        errors = f"**{r['errors']}**" if r["errors"] else "0"
        lines.append(
            f"| {r['scenario']} | {r['description']} | {r['connections']} | {r['rps']:,.0f} | {_f(r['p50_ms'], '.2f')} | "
            f"{_f(r['p99_ms'], '.2f')} | {errors} | {r['ratio']:.2f} | {r['wrk_cpu']:.2f} | {r['server_cpu']:.2f} | {r['other_cpu']:.2f} | {target} |"
        )
    lines += [
        "",
        "ratio = server req/s ÷ in-process calls/s of the 1-row case; wrk cpu and server cpu are cores used "
        "(2.00 = the whole machine) by wrk and by the two workers during the run; other cpu is every other "
        "process on the machine (should be ~0: above "
        f"{NOISY_CPU} the run shared the cores with something else and its numbers are pessimistic).",
    ]
    noisy = [r for r in doc["rows"] if r["other_cpu"] > NOISY_CPU]
    if noisy:
        lines += [
            "",
            "**Noisy runs (other processes used CPU):** "
            + ", ".join(f"{r['scenario']}@{r['connections']} ({r['other_cpu']:.2f} cores)" for r in noisy),
        ]
    bad = [r for r in doc["rows"] if r["errors"]]
    if bad:
        lines += ["", "**Runs with errors:** " + ", ".join(f"{r['scenario']}@{r['connections']}" for r in bad)]
    if doc["profiles"]:
        lines += ["", "## Profiles (py-spy, one worker, under the same load)", ""]
        for name, p in doc["profiles"].items():
            if "error" in p and not p.get("samples"):
                lines += [f"- {name}: profiling failed: {p['error']}"]
                continue
            lines += [
                f"### {name}",
                "",
                f"At {p.get('connections')} connections ({p.get('rps_under_profiler', 0):,.0f} req/s under the "
                f"profiler). {p.get('samples', 0)} samples of the thread holding the GIL (py-spy --gil): the GIL was "
                f"held {p.get('gil_busy', 0):.0%} of the time. Flame graph of the other worker: `{p.get('svg')}`; "
                f"collapsed stacks: `{p.get('collapsed')}`.",
                "",
            ]
            lines += ["| where | share of samples |", "|---|--:|"]
            lines += [f"| {k} | {v:.1%} |" for k, v in p.get("categories", {}).items()]
            lines += ["", "Top leaf frames:", ""]
            lines += [f"- {v:.1%} `{k}`" for k, v in p.get("top_leaves", [])[:10]]
            lines.append("")
    return "\n".join(lines) + "\n"


# --- gRPC 1-row infer against KServe and MLServer ---------------------------------------------------------------
GRPC_TARGET_RATIO = 2.0  # issue 14: >= 2x the better peer's req/s at a lower p99
GRPC_BODIES = ("typed", "raw", "matrix")  # benchmarks.peers.BODIES
FLOOR = "grpc-floor"  # benchmarks.peers.FLOOR: an empty servicer, the transport's own ceiling, never a rival
BATCH_FLOOR = "grpc-batch-floor"  # benchmarks.peers.BATCH_FLOOR: the least a batching server does, never a rival
# Conveyor with other settings, timed beside the defaults on demand, never rivals: a batching window for gRPC, and
# one gRPC server per worker (the accept loop before --grpc-listeners)
VARIANTS = {"conveyor-wait1": ["--max-wait-ms", "1"], "conveyor-listeners1": ["--grpc-listeners", "1"]}


@dataclass
class GrpcRow:
    scenario: str  # "gRPC 1-row: conveyor"
    server: str  # conveyor, kserve, kserve-x2, mlserver
    description: str
    body: str  # typed (fp64_contents), raw (raw_input_contents), matrix (one [1, 4] tensor)
    concurrency: int
    connections: int
    rps: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    errors: int
    error_kinds: dict[str, int]
    ghz_cpu: float
    server_cpu: float
    server_cpu_by_pid: dict[str, float]
    other_cpu: float
    ratio: float | None = None  # conveyor: req/s / the better peer's; peers: req/s / conveyor's
    ratio_same_body: float | None = None  # conveyor: req/s / the better peer's with the same request bytes
    target: str | None = None
    target_ok: bool | None = None


def grpc_servers(spec: str) -> list[str]:
    """conveyor, then the peers asked for ("all" or a comma-separated list)."""
    peers = peers_module()
    known = (*peers.PEERS, peers.FLOOR, peers.BATCH_FLOOR, *VARIANTS)
    wanted = (
        [*peers.PEERS, peers.FLOOR, peers.BATCH_FLOOR]
        if spec == "all"
        else [p.strip() for p in spec.split(",") if p.strip()]
    )
    unknown = [p for p in wanted if p not in known]
    if unknown:
        raise SystemExit(f"error: unknown peer {', '.join(unknown)} (known: {', '.join(known)})")
    return ["conveyor", *wanted]


def run_grpc_peers(
    store: Store, workdir: Path, wanted: list[str], concurrency: list[int], bodies: list[str], seconds: float, log: Any
) -> dict[str, Any]:
    """Conveyor and each peer serve the same LogisticRegression over gRPC; ghz drives each in turn.

    Every server is started and checked first (a correct 1-row answer to each request body); then the runs go
    round-robin over the servers for each body and concurrency, so that the machine's load drifts alike on all.
    """
    import joblib
    import pandas as pd
    import sklearn

    from conveyor.store import ModelStore

    peers = peers_module()

    model = next((m for m, kind in store.models.items() if kind == "lr"), None)
    if model is None:
        raise RuntimeError("no logistic regression in the store")
    estimator = ModelStore(str(store.path)).load(model).predictor.estimator
    model_file = workdir / "lr.joblib"
    joblib.dump(estimator, model_file)
    expected = estimator.predict(pd.DataFrame([LR_RECORD]))[0].item()

    pythons: dict[str, Path] = {}
    if any(p.startswith("kserve") for p in wanted):
        pythons["kserve"] = peers.kserve_python(sklearn.__version__, log)
    if any(p.startswith("mlserver") for p in wanted):
        pythons["mlserver"] = peers.mlserver_python(sklearn.__version__, log)
    ghz = peers.ensure_ghz(log)
    proto_args, proto = peers.ghz_proto_args(workdir, pythons)
    body_files = {}
    for body in bodies:
        body_files[body] = workdir / f"infer-{body}.json"
        body_files[body].write_text(json.dumps(peers.infer_request(model, LR_RECORD, body)))

    versions: dict[str, Any] = {"ghz": f"{peers.GHZ_MODULE}@{peers.GHZ_VERSION}", "proto": proto}
    for name, python in pythons.items():
        pkgs = ["kserve"] if name == "kserve" else ["mlserver", "mlserver-sklearn", "uvloop"]
        versions[name] = peers.versions(python, [*pkgs, "grpcio", "protobuf", "scikit-learn", "numpy"])
    versions["conveyor"] = {}
    for pkg in ("grpcio", "protobuf", "scikit-learn", "numpy"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions["conveyor"][pkg] = version(pkg)

    servers: dict[str, Any] = {}  # name -> (description, target, pids(), stop(), log_tail())
    failed: dict[str, str] = {}  # "server" or "server/body" -> why it was not timed
    checks: dict[str, str] = {}
    started: list[Any] = []
    try:
        for name in wanted:
            log(f"[bold]gRPC[/]: starting {name}")
            try:
                if name == "conveyor" or name in VARIANTS:
                    grpc_port = free_port()
                    window = VARIANTS.get(name, [])
                    srv = Server(store.path, model, workdir, ["--grpc-port", str(grpc_port), *window])
                    started.append(srv)
                    srv.wait_ready()
                    target = f"127.0.0.1:{grpc_port}"
                    peers.wait_ready(target, model, lambda srv=srv: srv.proc.poll() is None, 60)
                    flags = "".join(f" {f}" for f in window)
                    desc = f"conveyor serve --workers {WORKERS} --grpc-port P{flags} (gunicorn + {WORKERS} uvicorn workers)"
                    pids = lambda srv=srv: [srv.proc.pid, *peers.descendants(srv.proc.pid)]  # noqa: E731
                    servers[name] = (desc, target, pids, srv.log_tail)
                else:
                    if name == peers.FLOOR:
                        srv = peers.start_floor(int(expected), workdir, WORKERS)
                    elif name == peers.BATCH_FLOOR:
                        srv = peers.start_batch_floor(model_file, model, workdir, WORKERS)
                    else:
                        srv = peers.start_peer(name, pythons, model_file, model, workdir)
                    started.append(srv)
                    srv.wait_ready(model)
                    servers[name] = (srv.description, srv.target, srv.pids, srv.log_tail)
            except Exception as exc:  # a server that does not start is reported, the others still run
                failed[name] = f"did not start: {exc}"
                log(f"  [bold red]{name}: {failed[name]}[/]")
                continue
            for body in bodies:
                try:
                    request = json.loads(body_files[body].read_text())
                    checks[f"{name}/{body}"] = peers.check_infer(servers[name][1], request, expected)
                    log(f"  {name} {body}: answers {checks[f'{name}/{body}']}")
                except RuntimeError as exc:
                    errors = re.findall(r"^\w*(?:Error|Exception): .*$", servers[name][3](), re.M)
                    why = f" (its log: {errors[-1][:200]})" if errors else ""
                    failed[f"{name}/{body}"] = f"wrong or no answer to the 1-row request: {exc}{why}"
                    log(f"  [bold red]{name} {body}: {failed[f'{name}/{body}']}[/]")
            if any(f"{name}/{b}" in checks for b in bodies):
                body = next(b for b in bodies if f"{name}/{b}" in checks)
                peers.run_ghz(ghz, proto_args, servers[name][1], body_files[body], 8, 2.0, [], cpu_seconds, _zero)

        rows: list[GrpcRow] = []
        for conc in concurrency:
            for body in bodies:
                for name, (desc, target, pids, log_tail) in servers.items():
                    if f"{name}/{body}" not in checks:
                        continue
                    res = peers.run_ghz(
                        ghz, proto_args, target, body_files[body], conc, seconds, pids(), cpu_seconds,
                        machine_busy_seconds,
                    )  # fmt: skip
                    row = GrpcRow(
                        f"gRPC 1-row: {name}", name, desc, body, conc, peers.ghz_connections(conc), res.rps,
                        res.p50_ms, res.p90_ms, res.p99_ms, res.errors, res.error_kinds, res.ghz_cpu, res.server_cpu,
                        res.server_cpu_by_pid, res.other_cpu,
                    )  # fmt: skip
                    rows.append(row)
                    log(
                        f"  {name:<15} {body:<5} c={conc:<3} {res.rps:>8,.0f} req/s  p50 {_f(res.p50_ms, '.2f')} ms  "
                        f"p99 {_f(res.p99_ms, '.2f')} ms  errors {res.errors}  ghz cpu {res.ghz_cpu:.2f}  "
                        f"server cpu {res.server_cpu:.2f}  other cpu {res.other_cpu:.2f}"
                    )
                    if res.errors:
                        log(f"  [bold red]!!! {res.errors} errors: {res.error_kinds}[/]\n{log_tail()}")
    finally:
        for srv in started:
            srv.stop()
    grpc_targets(rows)
    return {
        "settings": {
            "duration_s": seconds,
            "concurrency": concurrency,
            "bodies": bodies,
            "workers": WORKERS,
            "cpus": asdict(peers.CPUS),
        },
        "servers": {name: s[0] for name, s in servers.items()},
        "versions": versions,
        "checks": checks,
        "failed": failed,
        "rows": [asdict(r) for r in rows],
    }


def _zero() -> float:
    return 0.0


def grpc_targets(rows: list[GrpcRow]) -> None:
    """Each Conveyor row against the better peer (most req/s) at the same concurrency, over the peers' rows of
    the same body and of the matrix body (their own fastest path): >= 2x its req/s at a lower p99. A peer's
    ratio is its req/s over Conveyor's with the same body (typed for matrix)."""
    ok = [r for r in rows if not r.errors]
    references = [r for r in ok if r.server in (FLOOR, BATCH_FLOOR, *VARIANTS)]  # timed beside, never rivals
    floor = {(r.body, r.concurrency): r for r in references if r.server == FLOOR}
    batch_floor = {(r.body, r.concurrency): r for r in references if r.server == BATCH_FLOOR}
    ok = [r for r in ok if r not in references]

    def conveyor(body: str, concurrency: int) -> GrpcRow | None:
        return next((r for r in ok if r.server == "conveyor" and (r.body, r.concurrency) == (body, concurrency)), None)

    for r in [*ok, *references]:
        if r.server != "conveyor":
            ours = conveyor("typed" if r.body == "matrix" else r.body, r.concurrency)
            r.ratio = r.rps / ours.rps if ours and ours.rps else None
    for ours in [r for r in ok if r.server == "conveyor"]:
        rivals = [
            r
            for r in ok
            if r.server != "conveyor" and r.concurrency == ours.concurrency and r.body in (ours.body, "matrix")
        ]
        best = max(rivals, key=lambda r: r.rps, default=None)
        if best is None:
            continue
        same = max((r.rps for r in rivals if r.body == ours.body), default=0.0)
        ours.ratio_same_body = ours.rps / same if same else None
        ours.ratio = ours.rps / best.rps if best.rps else None
        ours.target = (
            f">= {GRPC_TARGET_RATIO:g}x {best.server}'s {best.rps:,.0f} req/s ({best.body}), "
            f"p99 < its {_f(best.p99_ms, '.2f')} ms"
        )
        best_floor = floor.get((best.body, best.concurrency))
        if best_floor is not None and best_floor.rps:  # what the target asks of the transport alone
            ours.target += (
                f"; that is {GRPC_TARGET_RATIO * best.rps / best_floor.rps:.0%} of the empty servicer's req/s"
            )
        least = batch_floor.get((best.body, best.concurrency))
        if least is not None and least.rps:  # what the target asks of the least a batching server does
            ours.target += f" and {GRPC_TARGET_RATIO * best.rps / least.rps:.0%} of the minimal batching servicer's"
        ours.target_ok = bool(
            ours.ratio is not None
            and ours.ratio >= GRPC_TARGET_RATIO
            and ours.p99_ms is not None
            and best.p99_ms is not None
            and ours.p99_ms < best.p99_ms
        )


def print_grpc_table(console: Any, grpc: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(
        title=f"gRPC ModelInfer, 1 row (ghz, {grpc['settings']['duration_s']:g} s per run, {os.cpu_count()} cores)"
    )
    cols = ("scenario", "body", "conc", "req/s", "p50 ms", "p99 ms", "errors", "ratio", "ghz cpu", "srv cpu")
    for col in (*cols, "other cpu", "target"):
        t.add_column(col, justify="left" if col in ("scenario", "body") else "right")
    for r in grpc["rows"]:
        tgt = {True: "[green]PASS[/]", False: "[bold red]MISS[/]", None: ""}[r["target_ok"]]
        t.add_row(
            r["scenario"],
            r["body"],
            str(r["concurrency"]),
            f"{r['rps']:,.0f}",
            _f(r["p50_ms"], ".2f"),
            _f(r["p99_ms"], ".2f"),
            f"[bold red]{r['errors']}[/]" if r["errors"] else "0",
            _f(r["ratio"], ".2f"),
            f"{r['ghz_cpu']:.2f}",
            f"{r['server_cpu']:.2f}",
            f"[bold red]{r['other_cpu']:.2f}[/]" if r["other_cpu"] > NOISY_CPU else f"{r['other_cpu']:.2f}",
            tgt,
        )
    console.print(t)
    console.print(
        "ratio: conveyor's req/s ÷ the better peer's (same concurrency, same body or matrix); a peer's: its req/s ÷ "
        "conveyor's (same body; typed for matrix). "
        "cpu columns: cores used by ghz, by the server's processes, by everything else."
    )
    for what, why in grpc["failed"].items():
        console.print(f"[bold red]not timed: {what}: {why}[/]")


def _spread(row: dict[str, Any]) -> str:
    busy = sorted((c for c in row["server_cpu_by_pid"].values() if c >= 0.05), reverse=True)
    detail = f" ({' + '.join(f'{c:.2f}' for c in busy)})" if len(busy) > 1 else ""
    return f"{row['server_cpu']:.2f}{detail}"


def grpc_markdown(doc: dict[str, Any], grpc: dict[str, Any]) -> str:
    m = doc["machine"]
    v = grpc["versions"]
    lines = [
        "# Serving benchmark: gRPC 1-row infer against KServe and MLServer",
        "",
        f"- date: {m['date']}",
        f"- commit: {m['git_commit'] or 'unknown'}",
        f"- machine: {m['nproc']} cores ({m['cpu']}), {m['platform']}; load average at start "
        f"{' '.join(m.get('loadavg_at_start') or [])}, at end {' '.join(m.get('loadavg_at_end') or [])}",
        f"- load generator: `{v['ghz']}`, {grpc['settings']['duration_s']:g} s per run, `--connections` = "
        "concurrency ÷ 4 (1 to 16), on the same machine as the servers; runs go round-robin over the servers; "
        + cpu_split(grpc["settings"].get("cpus")),
        f"- proto given to ghz: {v['proto']}",
        "- request (the same bytes to every server): ModelInfer of the sklearn LogisticRegression, one row as four "
        'FP64 [1, 1] inputs x0..x3 with `parameters.content_type = "pd"`; typed = `contents.fp64_contents`, '
        "raw = `raw_input_contents`; matrix = one FP64 [1, 4] tensor `input-0` without the parameter, the peers' "
        "own path (a numpy array, no DataFrame), which Conveyor reads as its columns in signature order since 9edf24b",
        "- target (issue 14): conveyor >= 2x the better peer's req/s at a lower p99",
        f"- {FLOOR}: not a model server but the floor of every Python gRPC server here: an empty grpc.aio servicer "
        f"({processes(grpc['settings']['workers'])}, uvloop) answering a fixed response; the target line says what share of its req/s the target "
        "asks for",
        f"- {BATCH_FLOOR}: not a model server either but the least work a batching one must do for Conveyor's "
        "answer: read the row, merge the calls waiting into one predict_proba, answer three outputs; no validation, "
        f"metrics or timeouts; {processes(grpc['settings']['workers'])} of 8 grpc.aio servers each, as Conveyor runs "
        "(`--grpc-listeners`)",
        "",
        "| server | how it ran | versions |",
        "|---|---|---|",
    ]
    for name, desc in grpc["servers"].items():
        pkgs = v.get(name.split("-")[0], {})
        lines.append(f"| {name} | {desc} | {', '.join(f'{k} {x}' for k, x in pkgs.items())} |")
    lines += [
        "",
        "| scenario | body | concurrency | req/s | p50 ms | p90 ms | p99 ms | errors | ratio | ratio, same body "
        "| ghz cpu | server cpu | other cpu | target |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in grpc["rows"]:
        target = ""
        if r["target_ok"] is not None:
            target = ("PASS" if r["target_ok"] else "**MISS**") + f" ({r['target']})"
        lines.append(
            f"| {r['scenario']} | {r['body']} | {r['concurrency']} | {r['rps']:,.0f} | {_f(r['p50_ms'], '.2f')} | "
            f"{_f(r['p90_ms'], '.2f')} | {_f(r['p99_ms'], '.2f')} | {r['errors']} | {_f(r['ratio'], '.2f')} | "
            f"{_f(r['ratio_same_body'], '.2f')} | "
            f"{r['ghz_cpu']:.2f} | {_spread(r)} | {r['other_cpu']:.2f} | {target} |"
        )
    lines += [
        "",
        "ratio: conveyor's req/s ÷ the better peer's at the same concurrency, over the peers' rows of the same body "
        "and of the matrix body (their own fastest path); a peer's is its req/s ÷ conveyor's with the same body "
        "(typed for matrix). ratio, same body: conveyor's req/s ÷ the better peer's sent the very same request. ghz cpu, server cpu and other cpu are cores used (2.00 = the whole machine) by ghz, by the "
        f"server's processes (in brackets: each process using 0.05 or more, to see how the load spread) and by "
        f"everything else (above {NOISY_CPU} the run shared the cores with something else).",
        "",
        "Answers checked before timing (first output of the 1-row infer, the model predicts the same):",
        "",
    ]
    lines += [f"- {k}: {a}" for k, a in grpc["checks"].items()]
    if grpc["failed"]:
        lines += ["", "Not timed:", ""]
        lines += [f"- {k}: {why.splitlines()[0]}" for k, why in grpc["failed"].items()]
    return "\n".join(lines) + "\n"


# --- main ------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    global WORKERS  # --workers
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run [10]")
    parser.add_argument("--connections", default="1,8,64", help="comma-separated wrk connection counts [1,8,64]")
    parser.add_argument("--quick", action="store_true", help="3 s runs: a smoke test")
    parser.add_argument("--profile", action="store_true", help="sample a worker with py-spy where a target is missed")
    parser.add_argument("--profile-all", action="store_true", help="profile every scenario at the highest concurrency")
    parser.add_argument("--only", default=None, help="comma-separated scenario names or kinds (lr, forecast)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="results directory [benchmarks/results]")
    parser.add_argument(
        "--grpc-peers",
        nargs="?",
        const="all",
        default=None,
        help="also run gRPC 1-row infer against KServe and MLServer, an empty grpc.aio servicer as the floor and a "
        "minimal batching one (all, or some of kserve,kserve-x2,mlserver,mlserver-inproc,grpc-floor,grpc-batch-floor,"
        "conveyor-wait1, conveyor-listeners1: Conveyor with --max-wait-ms 1 or --grpc-listeners 1, not in all); with "
        "--only grpc, only that",
    )
    parser.add_argument("--grpc-concurrency", default="1,64", help="ghz concurrent calls for --grpc-peers [1,64]")
    parser.add_argument(
        "--workers", type=int, default=WORKERS, help=f"Conveyor's workers, and the floors' processes [{WORKERS}]"
    )
    parser.add_argument(
        "--server-cpus",
        default=None,
        help="run every server on these CPUs (a taskset list: 0, 0-1, 0,2) [all, shared with the load generator]",
    )
    parser.add_argument(
        "--client-cpus", default=None, help="run wrk and ghz on these CPUs [all, shared with the servers]"
    )
    parser.add_argument(
        "--grpc-bodies",
        default="typed,raw,matrix",
        help="request bodies for --grpc-peers: typed (fp64_contents), raw (raw_input_contents), matrix (one [1,4] "
        "tensor: the peers' numpy path) [typed,raw,matrix]",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        raise SystemExit(f"error: --workers {args.workers}: give 1 or more")
    WORKERS = args.workers
    peers = peers_module()
    server_cpus = peers.parse_cpus(args.server_cpus, "--server-cpus") if args.server_cpus else set()
    client_cpus = peers.parse_cpus(args.client_cpus, "--client-cpus") if args.client_cpus else set()
    if server_cpus & client_cpus:
        raise SystemExit(f"error: --server-cpus and --client-cpus share CPU {min(server_cpus & client_cpus)}")
    peers.CPUS = peers.CpuSplit(args.server_cpus, args.client_cpus)
    cpus = asdict(peers.CPUS)

    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 150)
    log = console.print
    duration = 3.0 if args.quick else args.duration
    grpc_wanted = grpc_servers(args.grpc_peers) if args.grpc_peers else []  # unknown names fail before any run
    grpc_bodies = [b.strip() for b in args.grpc_bodies.split(",") if b.strip()]
    if unknown := [b for b in grpc_bodies if b not in GRPC_BODIES]:
        raise SystemExit(f"error: unknown --grpc-bodies {', '.join(unknown)} (known: {', '.join(GRPC_BODIES)})")
    connections = sorted({int(c) for c in args.connections.split(",") if c.strip()})
    if shutil.which("wrk") is None:
        log("[bold red]wrk is not installed (apt-get install wrk)[/]")
        return 2

    machine = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    servers: list[Server] = []

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    rows: list[Row] = []
    profiles: dict[str, Any] = {}
    grpc: dict[str, Any] | None = None
    try:
        store = build_store(workdir / "store", log)
        ceilings = measure_ceilings(store, seconds=1.0 if args.quick else 3.0)
        one_row = {c.model: c.calls_per_s for c in ceilings if c.rows_per_call == 1 and not c.note}
        for c in ceilings:
            log(f"ceiling: {c.name:<28} {c.calls_per_s:>10,.0f} calls/s {c.rows_per_s:>12,.0f} rows/s  {c.note}")

        todo = scenarios(store, connections)
        if args.only:
            wanted = {w.strip() for w in args.only.split(",")}
            todo = [s for s in todo if s.name in wanted or s.kind in wanted or s.name.split("-")[0] in wanted]
        for sc in todo:
            log(f"[bold]{sc.name}[/]: {sc.description}")
            server = Server(store.path, sc.model, workdir, sc.flags)
            servers.append(server)
            try:
                server.wait_ready()
                workers = server.workers()
                path = "/predict" if sc.kind == "lr" else FORECAST_PATH
                url = server.url + path
                script = wrk_script(workdir, sc.kind)
                run_wrk(url, 8, 2.0, script, workers)  # warm-up (lazy imports, both workers), not reported
                for conns in sc.connections:
                    res = run_wrk(url, conns, duration, script, workers)
                    if server.proc.poll() is not None:
                        raise RuntimeError(f"server died during the run:\n{server.log_tail()}")
                    ceiling = one_row.get(sc.model, 0.0)
                    target, ok = check_target(sc.kind, conns, res.rps, res.p99_ms)
                    row = Row(
                        sc.name,
                        sc.kind,
                        sc.description,
                        conns,
                        res.rps,
                        res.p50_ms,
                        res.p99_ms,
                        res.non_2xx,
                        res.socket_errors,
                        res.errors,
                        ceiling,
                        res.rps / ceiling if ceiling else 0.0,
                        res.wrk_cpu,
                        res.server_cpu,
                        res.other_cpu,
                        target,
                        ok,
                    )
                    rows.append(row)
                    flag = {True: " [green]target PASS[/]", False: " [bold red]target MISS[/]", None: ""}[ok]
                    log(
                        f"  c={conns:<3} {res.rps:>9,.0f} req/s  p50 {_f(res.p50_ms, '.2f')} ms  "
                        f"p99 {_f(res.p99_ms, '.2f')} ms  wrk cpu {res.wrk_cpu:.2f}  server cpu {res.server_cpu:.2f}  "
                        f"other cpu {res.other_cpu:.2f}{flag}"
                    )
                    if res.errors:
                        log(
                            f"  [bold red]!!! {res.errors} ERRORS: non-2xx {res.non_2xx}, socket {res.socket_errors}[/]\n"
                            f"{res.raw}\n{server.log_tail()}"
                        )
                    if res.requests == 0:
                        log(f"  [bold red]!!! wrk completed no request[/]\n{res.raw}")
                    want_profile = (args.profile and ok is False) or (args.profile_all and conns == max(sc.connections))
                    if want_profile:
                        log(f"  profiling {sc.name} at c={conns} with py-spy ...")
                        with profiling(server.workers(), sc.name, duration, args.output) as info:
                            prof = run_wrk(url, conns, duration, script, workers)
                        info["rps_under_profiler"] = prof.rps
                        info["connections"] = conns
                        profiles[sc.name] = info
                        log(f"    GIL held {info.get('gil_busy', 0):.0%} of the time; where the GIL holder was:")
                        for k, v in list(info.get("categories", {}).items())[:8]:
                            log(f"    {v:6.1%}  {k}")
                        if info.get("error"):
                            log(f"    [red]py-spy: {info['error']}[/]")
            finally:
                server.stop()
                servers.remove(server)
        if grpc_wanted:
            grpc = run_grpc_peers(
                store,
                workdir,
                grpc_wanted,
                sorted({int(c) for c in args.grpc_concurrency.split(",") if c.strip()}),
                grpc_bodies,
                duration,
                log,
            )
    except KeyboardInterrupt:
        log("[red]interrupted[/]")
        return 130
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    doc = {
        "machine": machine,
        "settings": {"duration_s": duration, "connections": connections, "workers": WORKERS, "cpus": cpus},
        "targets": {
            "lr": {"connections": TARGET_CONNECTIONS, "rps": LR_TARGET_RPS, "p99_ms": LR_TARGET_P99_MS},
            "forecast": {"connections": TARGET_CONNECTIONS, "rps": FORECAST_TARGET_RPS},
        },
        "skipped": store.skipped,
        "ceilings": [asdict(c) for c in ceilings],
        "rows": [asdict(r) for r in rows],
        "profiles": profiles,
    }
    with contextlib.suppress(OSError):
        machine["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    args.output.mkdir(parents=True, exist_ok=True)
    if rows or grpc is None:  # a gRPC-only run (--only grpc) leaves the REST results alone
        print_table(console, rows, ceilings)
        (args.output / "serve.json").write_text(json.dumps(doc, indent=2) + "\n")
        (args.output / "serve.md").write_text(markdown(doc))
        log(f"wrote {args.output / 'serve.json'} and {args.output / 'serve.md'}")
    if grpc is not None:
        print_grpc_table(console, grpc)
        grpc_doc = {"machine": machine, **grpc}
        (args.output / "serve_grpc.json").write_text(json.dumps(grpc_doc, indent=2) + "\n")
        (args.output / "serve_grpc.md").write_text(grpc_markdown(doc, grpc))
        log(f"wrote {args.output / 'serve_grpc.json'} and {args.output / 'serve_grpc.md'}")
        rows_with_errors = [r for r in grpc["rows"] if r["errors"]]
        if rows_with_errors or any("/" not in k for k in grpc["failed"]):
            log("[bold red]gRPC: errors, or servers that did not start: these numbers are incomplete[/]")
        if rows_with_errors:
            return 1

    errors = [r for r in rows if r.errors]
    if errors:
        log(
            "[bold red]ERRORS in "
            + ", ".join(f"{r.scenario}@{r.connections} ({r.errors})" for r in errors)
            + ": these numbers are not valid[/]"
        )
    for kind, why in store.skipped.items():
        log(f"[bold red]{kind} scenarios SKIPPED: {why}[/]")
    noisy = [r for r in rows if r.other_cpu > NOISY_CPU]
    if noisy:
        log(
            "[bold yellow]NOISY: other processes used CPU during "
            + ", ".join(f"{r.scenario}@{r.connections} ({r.other_cpu:.2f} cores)" for r in noisy)
            + "[/]"
        )
    missed = [r for r in rows if r.target_ok is False]
    if missed:
        log("[yellow]targets missed: " + ", ".join(f"{r.scenario}@{r.connections}" for r in missed) + "[/]")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
