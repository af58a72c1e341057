"""Serverless functions benchmark: cold start and warm latency of `conveyor deploy function`'s bundles, in the
real function runtimes, beside a minimal hand-written handler that only loads the same model with joblib.

For the scikit-learn demo model (LogisticRegression on x0..x3) and the sales forecaster:
- gcp: the source directory under functions-framework (this venv), and a minimal main.py
  (`joblib.load` + `predict` on the request's rows) under functions-framework too;
- aws: function.zip unzipped and run by aws-lambda-rie with awslambdaric on CPython 3.12 (Lambda's python3.12),
  and a minimal handler.py placed in the same unzipped directory (so it has the same libraries).
Cold start = the runtime's process start to the first answer (interpreter, imports, model load, first predict).
Warm = sequential requests on that instance. The request is the same one-row POST body for both handlers.

    python benchmarks/functions.py [--cold N] [--warm N]

Writes benchmarks/results/functions.json and functions.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import urlsplit

RESULTS = Path(__file__).parent / "results"
TARGET_RATIO, TARGET_COLD_S, TARGET_WARM_MS = 1.3, 1.5, 5.0

MINIMAL_GCP = '''"""The least a function can do: load the model with joblib, predict the posted rows."""
import functions_framework
import joblib
import pandas as pd

model = joblib.load({path!r})


@functions_framework.http
def predict(request):
    rows = pd.DataFrame(request.get_json()["instances"])
    return {{"predictions": pd.DataFrame(model.predict(rows)).to_dict("records")}}
'''

MINIMAL_AWS = '''"""The least a Lambda handler can do: load the model with joblib, predict the rows it is given."""
import joblib
import pandas as pd

model = joblib.load({path!r})


def handler(event, context):
    rows = pd.DataFrame(event["instances"])
    return {{"predictions": pd.DataFrame(model.predict(rows)).to_dict("records")}}
'''


def build_store(root: Path) -> dict[str, dict]:
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from conveyor.forecast import train_sales
    from conveyor.sales_data import demo_history
    from conveyor.store import ModelStore

    store = ModelStore(root)
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(300, 4)), columns=["x0", "x1", "x2", "x3"])
    store.add("lr", LogisticRegression().fit(x, np.where(x["x0"] + x["x1"] > 0, "yes", "no")), flavor="sklearn")
    store.add("sales", train_sales(demo_history()), flavor="forecaster")
    return {
        "lr": {"instances": [{"x0": 0.25, "x1": -1.5, "x2": 0.75, "x3": 2.0}]},
        "sales": {"instances": [{"series": "total", "range": 7}]},
    }


def model_file(store: Path, name: str) -> Path:
    manifest = json.loads((store / name / "1" / "manifest.json").read_text())
    return store / name / "1" / manifest["flavor_meta"].get("file", "model.joblib")


class Client:
    """One kept-alive stdlib connection per instance: a new connection per request, or httpx's own work per
    request (~1.5 ms here), would be more of the measured time than the function's."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        self.path = parts.path

    def post(self, path: str, body: bytes) -> bytes:
        self.connection.request("POST", self.path + path, body=body, headers={"content-type": "application/json"})
        reply = self.connection.getresponse()
        data = reply.read()
        if reply.status != 200:
            raise RuntimeError(f"{reply.status}: {data[:200]!r}")
        return data


def timed(
    start: Callable[[], AbstractContextManager], call: Callable[[Client], None], cold: int, warm: int
) -> dict[str, float]:
    colds, warms = [], []
    for attempt in range(cold):
        with start() as running:
            client = Client(running.url)
            call(client)
            colds.append(time.perf_counter() - running.started)
            if attempt == 0:
                for _ in range(warm):
                    t = time.perf_counter()
                    call(client)
                    warms.append(time.perf_counter() - t)
            client.connection.close()
    warms.sort()
    return {
        "cold_s": statistics.median(colds),
        "cold_min_s": min(colds),
        "warm_p50_ms": statistics.median(warms) * 1000,
        "warm_p99_ms": warms[int(0.99 * (len(warms) - 1))] * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", type=int, default=5, help="cold starts per case (median reported)")
    parser.add_argument("--warm", type=int, default=300, help="warm requests per case")
    args = parser.parse_args(argv)

    from conveyor.deploy.function import AWS_RUNTIMES, render_function, runtime_python
    from conveyor.deploy.local import gcp_function, lambda_client, lambda_function, rie_binary, unzip

    py312 = AWS_RUNTIMES["python3.12"]
    python312 = runtime_python(py312)
    if rie_binary() is None or python312 is None:
        print("needs aws-lambda-rie (scripts/lambda-rie.sh build) and a CPython 3.12", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-fn-") as tmp:
        work = Path(tmp)
        store = work / "store"
        bodies = build_store(store)
        client = lambda_client(work / "ric", py312)
        for name, body in bodies.items():
            payload = json.dumps(body).encode()
            source = work / f"{name}-gcp"
            render_function(str(store), name, source, "gcp", wheels=False)
            minimal = work / f"{name}-gcp-minimal"
            minimal.mkdir()
            (minimal / "main.py").write_text(MINIMAL_GCP.format(path=str(model_file(store, name))))
            bundle = work / f"{name}-aws"
            render_function(str(store), name, bundle, "aws")
            task = unzip(bundle / "function.zip", work / f"{name}-task")
            (task / "minimal.py").write_text(MINIMAL_AWS.format(path=str(model_file(store, name))))

            def post(client: Client, payload: bytes = payload) -> None:
                client.post("/predict", payload)

            def invoke(client: Client, payload: bytes = payload) -> None:
                answer = client.post("", payload)
                assert b'"errorType"' not in answer, answer

            def log(label: str, name: str = name) -> Path:
                return work / f"{name}-{label}.log"

            cases: dict[str, tuple[Callable[[], AbstractContextManager], Callable[[Client], None]]] = {
                "gcp conveyor": (lambda s=source: gcp_function(s, log("gcp")), post),
                "gcp minimal": (lambda m=minimal: gcp_function(m, log("gcp-min")), post),
                "aws conveyor": (lambda t=task: lambda_function(t, log("aws"), python312, client), invoke),
                "aws minimal": (
                    lambda t=task: lambda_function(t, log("aws-min"), python312, client, "minimal.handler"),
                    invoke,
                ),
            }
            results = {}
            for case, (start, call) in cases.items():
                results[case] = timed(start, call, args.cold, args.warm)
                print(f"{name:6} {case:13} cold {results[case]['cold_s']:.2f}s  warm p50 "
                      f"{results[case]['warm_p50_ms']:.2f} ms  p99 {results[case]['warm_p99_ms']:.2f} ms", flush=True)  # fmt: skip
            for target in ("gcp", "aws"):
                ours, least = results[f"{target} conveyor"], results[f"{target} minimal"]
                ratio = ours["cold_s"] / least["cold_s"]
                ok = ratio <= TARGET_RATIO and ours["cold_s"] <= TARGET_COLD_S and ours["warm_p50_ms"] <= TARGET_WARM_MS
                rows.append({"model": name, "runtime": target, **{f"conveyor_{k}": v for k, v in ours.items()},
                             **{f"minimal_{k}": v for k, v in least.items()}, "cold_ratio": ratio, "meets": ok})  # fmt: skip
    header = "| model | runtime | cold start (conveyor) | cold start (minimal) | ratio | warm p50 | warm p99 | minimal warm p50 | target |"
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['conveyor_cold_s']:.2f} s | {r['minimal_cold_s']:.2f} s | "
            f"{r['cold_ratio']:.2f}x | {r['conveyor_warm_p50_ms']:.2f} ms | {r['conveyor_warm_p99_ms']:.2f} ms | "
            f"{r['minimal_warm_p50_ms']:.2f} ms | {'met' if r['meets'] else 'MISSED'} |"
        )
    table = "\n".join(lines)
    print(table)
    print(
        f"targets: cold start <= {TARGET_RATIO}x the minimal handler's and <= {TARGET_COLD_S} s; warm p50 <= {TARGET_WARM_MS} ms"
    )
    RESULTS.mkdir(exist_ok=True)
    doc = {
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "cold_starts": args.cold,
        "warm_requests": args.warm,
        "rows": rows,
    }
    (RESULTS / "functions.json").write_text(json.dumps(doc, indent=2) + "\n")
    (RESULTS / "functions.md").write_text(
        f"# Serverless functions\n\n`python benchmarks/functions.py --cold {args.cold} --warm {args.warm}`\n\n{table}\n"
    )
    return 0 if all(r["meets"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
