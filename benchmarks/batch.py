"""Batch benchmark: Beam's DirectRunner against the in-process ceiling on the same data and machine.

Scoring: N rows (default 1,000,000) of four features through a scikit-learn classifier, Parquet in and
out. The ceiling is the same job without Beam: read the Parquet, validate and predict in one vectorised
call, write the Parquet. Forecasting: S series (default 10,000) of two years of daily sales, 30-day
horizon; its ceiling is `train_sales` over a sample of the series in one process, scaled to S.

    python benchmarks/batch.py [--rows N] [--series S] [--workers W] [--skip-forecast]

Writes benchmarks/results/batch.json and batch.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results"


def _timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def bench_score(tmp: Path, rows: int, workers: int) -> dict:
    from sklearn.linear_model import LogisticRegression

    from conveyor.batch.jobs import Output
    from conveyor.batch.score import ScoreJob, score
    from conveyor.io import read_table, write_table
    from conveyor.store import ModelStore

    rng = np.random.default_rng(0)
    train = pd.DataFrame(rng.normal(size=(1000, 4)), columns=["x0", "x1", "x2", "x3"])
    store = ModelStore(tmp / "store")
    est = LogisticRegression().fit(train, np.where(train["x0"] + train["x1"] > 0, "yes", "no"))
    store.add("clf", est, flavor="sklearn", example=train.iloc[:5])
    data = pd.DataFrame(rng.normal(size=(rows, 4)), columns=["x0", "x1", "x2", "x3"])
    data.insert(0, "id", np.arange(rows))
    source = tmp / "score.parquet"
    data.to_parquet(source)
    model = store.load("clf")

    def ceiling() -> None:
        frame = read_table(str(source))
        out = pd.concat([frame, model.predict_frame(frame)], axis=1)
        out["model"], out["version"], out["run_id"] = model.name, model.version, "ceiling"
        write_table(out, str(tmp / "ceiling.parquet"))

    _, ceiling_s = _timed(ceiling)
    _, predict_s = _timed(lambda: model.predict_frame(data))
    result = {"rows": rows, "ceiling_s": ceiling_s, "predict_only_s": predict_s, "runs": {}}
    # One output file (parts merged by the driver) and a directory of part files (what scales out).
    runs = [(w, "file") for w in sorted({1, workers})] + [(1, "directory")]
    for w, shape in runs:
        args = [] if w == 1 else ["--direct_num_workers", str(w), "--direct_running_mode", "multi_processing"]
        target = f"{tmp}/out-{w}-{shape}.parquet" + ("/" if shape == "directory" else "")
        job = ScoreJob(str(tmp / "store"), "clf", str(source), Output(target), beam_args=args)
        report, seconds = _timed(lambda job=job: score(job))
        assert report.rows_out == rows, report
        result["runs"][f"{w} worker(s), {shape} output"] = {"seconds": seconds, "rows_per_s": rows / seconds}
        print(
            f"score, {w} worker(s), {shape} output: {rows:,} rows in {seconds:.1f}s = {rows / seconds:,.0f} rows/s",
            flush=True,
        )
    result["ceiling_rows_per_s"] = rows / ceiling_s
    single = [r["rows_per_s"] for k, r in result["runs"].items() if k.endswith("file output")]
    result["ratio_to_ceiling"] = max(single) / result["ceiling_rows_per_s"]
    print(
        f"score ceiling (same read + validate + predict + label + write, no Beam): {rows / ceiling_s:,.0f} rows/s; "
        f"predict alone {rows / predict_s:,.0f} rows/s; Beam (one output file) at {result['ratio_to_ceiling']:.0%} of the ceiling",
        flush=True,
    )
    return result


def bench_forecast(tmp: Path, series: int, workers: int, days: int = 730, steps: int = 30) -> dict:
    from conveyor.batch.forecast import ForecastJob, forecast
    from conveyor.batch.forecasting import HistorySpec
    from conveyor.batch.jobs import Output
    from conveyor.forecast import train_sales
    from conveyor.sales_data import generate_sales

    stores = max(1, int(np.sqrt(series)))
    families = series // stores
    raw = generate_sales(stores, families, periods=days, seed=0)
    n_series = stores * families
    source = tmp / "history.parquet"
    raw.to_parquet(source)
    print(f"forecast: {n_series:,} series x {days} days = {len(raw):,} rows of history", flush=True)

    sample = raw[raw["store_nbr"] == raw["store_nbr"].iloc[0]].head(days * min(families, 100))
    tidy = sample.assign(series=sample["store_nbr"].astype(str) + "/" + sample["family"].astype(str))[
        ["date", "series", "sales"]
    ]
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # as the Beam workers run it: faster for many small fits
        _, sample_s = _timed(lambda: train_sales(tidy, range_max=steps))
    per_series = sample_s / tidy["series"].nunique()
    ceiling_s = per_series * n_series
    print(f"forecast ceiling (train_sales in one process): {per_series * 1000:.0f} ms/series", flush=True)

    spec = HistorySpec(series_cols=("store_nbr", "family"))
    args = [] if workers == 1 else ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
    job = ForecastJob(
        "sales", str(source), steps, Output(str(tmp / "forecast.parquet")), spec=spec, aggregate="store_nbr",
        shards=max(8, n_series // 100), beam_args=args,
    )  # fmt: skip
    report, seconds = _timed(lambda: forecast(job))
    assert report.extra["series"] == n_series, report
    print(
        f"forecast, {workers} worker(s): {n_series:,} series in {seconds:.1f}s = {n_series / seconds:,.1f} series/s "
        f"({report.rows_out:,} rows); single-process ceiling {ceiling_s:.0f}s",
        flush=True,
    )
    return {
        "series": n_series,
        "days": days,
        "range": steps,
        "history_rows": len(raw),
        "workers": workers,
        "seconds": seconds,
        "series_per_s": n_series / seconds,
        "rows_out": report.rows_out,
        "ceiling_ms_per_series": per_series * 1000,
        "ceiling_s_one_process": ceiling_s,
        "ratio_to_one_process_ceiling": ceiling_s / seconds,
    }


def write_results(results: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batch.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Batch benchmark ({results['machine']})", ""]
    s = results.get("score")
    if s:
        lines += [
            f"Scoring {s['rows']:,} rows (Parquet in and out, scikit-learn classifier):",
            "",
            "| path | seconds | rows/s | share of ceiling |",
            "|---|---|---|---|",
            f"| in-process ceiling (no Beam) | {s['ceiling_s']:.1f} | {s['ceiling_rows_per_s']:,.0f} | 100% |",
        ]
        for name, r in s["runs"].items():
            share = r["rows_per_s"] / s["ceiling_rows_per_s"]
            lines.append(
                f"| Beam DirectRunner, {name.replace('_', ' ')} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {share:.0%} |"
            )
        lines += ["", f"Predict alone (no I/O): {s['rows'] / s['predict_only_s']:,.0f} rows/s.", ""]
    f = results.get("forecast")
    if f:
        lines += [
            f"Forecasting {f['series']:,} series x {f['days']} days ({f['history_rows']:,} rows), horizon {f['range']}, "
            f"{f['workers']} worker(s): {f['seconds']:.0f}s ({f['series_per_s']:.1f} series/s); one process without "
            f"Beam would take ~{f['ceiling_s_one_process']:.0f}s ({f['ceiling_ms_per_series']:.0f} ms/series).",
            "",
        ]
    (RESULTS / "batch.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-forecast", action="store_true")
    parser.add_argument("--skip-score", action="store_true", help="Keep the recorded scoring results.")
    args = parser.parse_args()
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    results: dict = {"machine": f"{platform.python_version()}, {os.cpu_count()} cores", "argv": sys.argv[1:]}
    previous = json.loads((RESULTS / "batch.json").read_text()) if (RESULTS / "batch.json").exists() else {}
    if args.skip_forecast and previous.get("forecast"):
        results["forecast"] = previous["forecast"]  # keep the last forecast figures beside a new scoring run
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip_score and previous.get("score"):
            results["score"] = previous["score"]
        else:
            results["score"] = bench_score(Path(tmp), args.rows, args.workers)
            write_results(results)
        if not args.skip_forecast:
            results["forecast"] = bench_forecast(Path(tmp), args.series, args.workers)
            write_results(results)


if __name__ == "__main__":
    main()
