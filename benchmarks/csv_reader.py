"""CSV reader benchmark: Conveyor's one CSV reader (conveyor.io) against pandas' own, on the same text.

The reader adds the checks pandas lacks (a row with a field more or less is a bad line, never shifted); this
measures what they cost. Whole files (what `conveyor predict` and `train` read): time and peak memory, each
reader in a fresh process; request bodies (what `POST /predict` with text/csv reads): time per body.

    python benchmarks/csv_reader.py [--rows N]

Writes benchmarks/results/csv_reader.json and csv_reader.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results"

# One reader in a fresh interpreter: its time and the process's peak memory above what it held before.
# (VmHWM, not ru_maxrss: Linux keeps the parent's peak in ru_maxrss across exec)
_CHILD = """
import sys, time
import pandas as pd
from conveyor.io import read_table
def peak():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
path, which = sys.argv[1], sys.argv[2]
before = peak()
started = time.perf_counter()
frame = pd.read_csv(path) if which == "pandas" else read_table(path)
seconds = time.perf_counter() - started
print(seconds, (peak() - before) * 1024, len(frame))
"""


def frame(rows: int, empty_last: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    out = pd.DataFrame(
        {
            "id": np.arange(rows),
            "plan": rng.choice(["basic", "pro", "team"], rows),
            "x0": rng.normal(size=rows).round(6),
            "x1": rng.normal(size=rows).round(6),
            "x2": rng.integers(0, 100, rows),
        }
    )
    if empty_last:  # a column of mostly missing values: every such row could be a short one
        out["x2"] = np.where(rng.random(rows) < 0.9, np.nan, out["x2"])
    return out


def whole_file(path: Path, which: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path), which], capture_output=True, text=True, check=True)
    seconds, peak, rows = done.stdout.split()
    return {"seconds": float(seconds), "peak_mb": int(peak) / 2**20, "rows": int(rows)}


def bodies() -> list[dict]:
    from conveyor.io import read_csv

    out = []
    for rows in (1, 100, 10_000):
        text = frame(rows).to_csv(index=False)
        number = 500 if rows < 1000 else 20
        ours = min(timeit.repeat(lambda t=text: read_csv(io.StringIO(t, newline=""), "body"), number=number, repeat=3))
        theirs = min(timeit.repeat(lambda t=text: pd.read_csv(io.StringIO(t)), number=number, repeat=3))
        out.append({"rows": rows, "ours_us": ours / number * 1e6, "pandas_us": theirs / number * 1e6})
    return out


def write_results(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "csv_reader.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# CSV reader benchmark ({results['machine']})",
        "",
        "| input | conveyor.io | pandas | ratio |",
        "|---|---|---|---|",
    ]
    for name, case in results["files"].items():
        ours, theirs = case["conveyor"], case["pandas"]
        lines.append(
            f"| {name} ({ours['rows']:,} rows) | {ours['seconds']:.2f} s, {ours['peak_mb']:.0f} MB | "
            f"{theirs['seconds']:.2f} s, {theirs['peak_mb']:.0f} MB | {ours['seconds'] / theirs['seconds']:.2f}x |"
        )
    for body in results["bodies"]:
        lines.append(
            f"| request body, {body['rows']:,} rows | {body['ours_us']:,.0f} µs | {body['pandas_us']:,.0f} µs | "
            f"{body['ours_us'] / body['pandas_us']:.2f}x |"
        )
    (RESULTS / "csv_reader.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000, help="Rows of the whole-file cases.")
    args = parser.parse_args()
    results: dict = {"machine": f"{platform.python_version()}, {os.cpu_count()} cores", "argv": sys.argv[1:]}
    results["files"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, empty in (("clean file", False), ("file, last column 90% empty", True)):
            path = Path(tmp) / "in.csv"
            frame(args.rows, empty).to_csv(path, index=False)
            results["files"][name] = {which: whole_file(path, which) for which in ("conveyor", "pandas")}
    results["bodies"] = bodies()
    write_results(results)


if __name__ == "__main__":
    main()
