"""Training benchmark: `conveyor train sales` on S daily series of two years (default 10,000 x 730 days).

The issue's target is under 10 minutes on this 2-core machine. The history is generated (`generate_sales`,
Store Sales' shape: weekly and yearly seasonality, New Year and Christmas), written as Parquet, and trained the
way the command trains it: `load_history` then `train_and_register` into a temporary store, with `--jobs`
processes; it also reports what the forecaster chose and its cross-validated scores.

    python benchmarks/train.py [--stores 100] [--families 100] [--days 730] [--jobs 2] [--candidates auto]

Writes benchmarks/results/train.json and train.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, default=100)
    parser.add_argument("--families", type=int, default=100)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--candidates", default="auto")
    args = parser.parse_args()

    from conveyor.sales_data import generate_sales, load_history
    from conveyor.store import ModelStore
    from conveyor.training import train_and_register

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "history.parquet")
        generate_sales(args.stores, args.families, periods=args.days, seed=1).to_parquet(path)
        started = time.perf_counter()
        history = load_history(str(path), series_cols=["store_nbr", "family"])
        read = time.perf_counter() - started
        trained = train_and_register(history, ModelStore(Path(tmp, "models")), "sales", progress=True,
                                     n_jobs=args.jobs, candidates=args.candidates)  # fmt: skip
        total = time.perf_counter() - started
    summary = trained.summary
    series = summary["n_series"]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "series": series,
        "days": args.days,
        "jobs": args.jobs,
        "candidates": summary["candidates"],
        "read_seconds": round(read, 1),
        "train_seconds": round(trained.seconds, 1),
        "total_seconds": round(total, 1),
        "ms_per_series": round(1000 * trained.seconds / series, 1),
        "target_seconds": 600,
        "methods": summary["methods"],
        "overall": summary["overall"],
        "coverage": summary["coverage"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    verdict = "met" if total < 600 else "missed"
    lines = [
        f"# train sales: {series:,} daily series x {args.days} days, --jobs {args.jobs} ({result['machine']})",
        "",
        "| step | seconds |",
        "|---|---|",
        f"| read (load_history) | {read:.1f} |",
        f"| train_and_register ({', '.join(summary['candidates'])}; 3 CV windows) | {trained.seconds:.1f} |",
        f"| total | **{total:.1f}** (target < 600: {verdict}) |",
        "",
        f"{result['ms_per_series']} ms a series; chose {summary['methods']}; CV MASE "
        f"{summary['overall']['mase']:.3f} vs {summary['overall']['naive_mase']:.3f} for seasonal naive; band "
        f"coverage 80%: {summary['coverage']['80']:.1%}, 95%: {summary['coverage']['95']:.1%}",
    ]
    (RESULTS / "train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
