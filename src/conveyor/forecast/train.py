"""Training: a tidy history becomes a SalesForecaster with every series' forecasts precomputed."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from conveyor.errors import InvalidInput
from conveyor.forecast.calendar import Calendar, closed_periods
from conveyor.forecast.candidates import resolve_candidates
from conveyor.forecast.forecaster import DEFAULT_RANGE_MAX, SalesForecaster
from conveyor.forecast.frequency import infer_frequency, iso_dates, season_length
from conveyor.forecast.gaps import FILLS
from conveyor.forecast.intervals import bands, calibrate, held_out_coverage, ratios
from conveyor.forecast.reconcile import bottom_up, total_row
from conveyor.forecast.selection import WINDOWS, SeriesFit, Setup, cv_plan, fit_series

TAIL_PERIODS = 180  # history kept for people to see beside the forecast (at least three seasons)


def train_sales(
    history: pd.DataFrame,
    *,
    range_max: int = DEFAULT_RANGE_MAX,
    holdout: int | None = None,
    interval: float = 0.95,
    progress: bool = False,
    n_jobs: int = 1,
    fill: str = "interpolate",
    country: str | None = None,
    candidates: str | tuple[str, ...] = "auto",
    windows: int = WINDOWS,
    cap: bool = True,
) -> SalesForecaster:
    """Cross-validate, select and refit a model per series of a tidy `date, series, sales` history.

    `holdout` is the length of each cross-validation window in periods (default: from the history and
    `range_max`). `fill` says what a missing period is: "interpolate" (unknown: scored nowhere, filled for the
    models that need a complete series) or "zero" (no sales). `country` adds its public holidays (ISO code).
    `candidates`: "auto" (by the size of the job), "basic", "all" or a tuple of names in `candidates.METHODS`.
    `n_jobs` > 1 fits series in parallel processes (joblib), worth it from a few hundred series.
    `cap`: cut `range_max` to half the history (with a warning); batch jobs that write a fixed range pass False.
    """
    started = time.perf_counter()
    _check_params(history, range_max, holdout, interval)
    if fill not in FILLS:
        raise InvalidInput(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
    freq = infer_frequency(history["date"])
    index, names, wide, seen = _wide(history, freq)
    notes: list[str] = []
    range_max, horizon = _cap_horizon(range_max, len(index), freq, notes) if cap else (range_max, None)
    calendar = Calendar.build(index, freq, range_max, country=country, closed=closed_periods(wide, seen))
    m = season_length(freq)
    origins, h = cv_plan(len(index), m, range_max, holdout, windows)
    chosen = resolve_candidates(candidates, len(names), len(index), m)
    setup = Setup(freq, m, range_max, origins, h, calendar.x, calendar.kinds, chosen, fill, calendar.yearly,
                  calendar.year_periods)  # fmt: skip
    observed = np.where(seen, wide, 0.0 if fill == "zero" else np.nan)
    first = seen.argmax(axis=1)
    total = total_row(names, observed)
    bottoms = [i for i in range(len(names)) if i != total]
    jobs = [(observed[i, first[i] :], int(first[i])) for i in bottoms]
    fits = dict(zip(bottoms, _run(jobs, setup, progress=progress, n_jobs=n_jobs), strict=True))
    if total is not None:
        fits[total] = bottom_up([fits[i] for i in bottoms], observed[total, first[total] :], int(first[total]), setup)
    ordered = [fits[i] for i in range(len(names))]
    levels = tuple(sorted({0.8, interval}))
    bands = calibrated_bands(ordered, observed, setup, levels, total)
    training = {
        "fill": fill,
        "country": country,
        "candidates": list(chosen),
        "windows": len(origins),
        "window_periods": h,
        "horizon": horizon,
        "holidays": calendar.holidays,
        "coverage": bands.coverage,
        "reconciliation": "bottom_up" if total is not None else None,
        "warnings": notes,
    }
    return _assemble(
        ordered,
        observed=np.where(seen, wide, np.nan),
        names=names,
        index=index,
        setup=setup,
        bands=bands,
        levels=levels,
        interval=interval,
        training=training,
        calendar=calendar,
        fingerprint=fingerprint(history),
        seconds=time.perf_counter() - started,
    )


def _cap_horizon(asked: int, n: int, freq: str, notes: list[str]) -> tuple[int, dict[str, Any]]:
    """At most half the history ahead: a 10-day history does not answer for a year."""
    cap = max(1, n // 2)
    horizon = {"asked": asked, "cap": cap, "range_max": min(asked, cap)}
    if asked > cap:
        notes.append(
            f"{n} periods ({freq}) of history support forecasts up to {cap} periods ahead (half the history): "
            f"the horizon {asked} was cut to {cap}"
        )
    return min(asked, cap), horizon


def _check_params(history: pd.DataFrame, range_max: int, holdout: int | None, interval: float) -> None:
    missing = [c for c in ("date", "series", "sales") if c not in history.columns]
    if missing:
        raise InvalidInput(
            f"history lacks column(s) {missing}; columns are {list(history.columns)}: "
            "read it with conveyor.sales_data.load_history"
        )
    if len(history) == 0:
        raise InvalidInput("history has no rows")
    if not 1 <= range_max <= 100_000:
        raise InvalidInput(f"range_max must be between 1 and 100000, got {range_max}")
    if holdout is not None and holdout < 1:
        raise InvalidInput(f"holdout must be at least 1 period, got {holdout}")
    if not 0 < interval < 1:
        raise InvalidInput(f"interval must be a coverage between 0 and 1 (e.g. 0.95), got {interval}")


def _wide(history: pd.DataFrame, freq: str) -> tuple[pd.DatetimeIndex, list[str], np.ndarray, np.ndarray]:
    """Series x dates matrix on the frequency's grid and which periods have sales (a NaN row counts as none)."""
    dates = pd.DatetimeIndex(history["date"]).as_unit("ns")
    index = pd.date_range(dates.min(), dates.max(), freq=freq).as_unit("ns")
    pos = index.get_indexer(dates)
    if (pos < 0).any():
        off = dates[pos < 0][0]
        raise InvalidInput(
            f"date {off} is not on the {freq} grid starting {index[0].date()}; resample the history to one frequency"
        )
    codes, uniques = pd.factorize(history["series"].astype(str), sort=True)
    wide = np.zeros((len(uniques), len(index)))
    seen = np.zeros(wide.shape, dtype=bool)
    sales = history["sales"].to_numpy(dtype=float)
    known = np.isfinite(sales)  # a row without sales (refused by batch) places its date on the grid, no more
    np.add.at(wide, (codes[known], pos[known]), sales[known])
    seen[codes[known], pos[known]] = True
    return index, [str(u) for u in uniques], wide, seen


def _run(jobs: list[tuple[np.ndarray, int]], setup: Setup, *, progress: bool, n_jobs: int) -> list[SeriesFit]:
    if n_jobs == 1:
        results: Iterable[SeriesFit] = (fit_series(y, first, setup) for y, first in jobs)
    else:
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=n_jobs, return_as="generator")
        results = parallel(delayed(fit_series)(y, first, setup) for y, first in jobs)
    if progress:
        from rich.progress import track

        results = track(results, total=len(jobs), description="fitting series")
    return list(results)


@dataclass
class Bands:
    """Calibrated bands per level for the horizon and for the last CV window, and their held-out coverage."""

    horizon: dict[float, tuple[np.ndarray, np.ndarray]]
    backtest: dict[float, tuple[np.ndarray, np.ndarray]]
    coverage: dict[str, float | None]
    per_series: np.ndarray  # (levels, series)


def calibrated_bands(
    fits: list[SeriesFit], observed: np.ndarray, setup: Setup, levels: tuple[float, ...], total: int | None
) -> Bands:
    """Conformal bands from the CV errors: the series pooled together, the total on its own errors."""
    windows = [observed[:, o : o + setup.h] for o in setup.origins]
    actual = np.stack(windows, axis=1) if windows else np.empty((len(fits), 0, setup.h))  # (series, windows, h)
    pred = np.stack([f.cv_pred for f in fits])
    sigma = np.stack([f.cv_sigma for f in fits])
    r = ratios(pred - actual, sigma)
    point = np.stack([f.forecast for f in fits])
    dev = np.stack([f.sigma for f in fits])
    groups = [[i for i in range(len(fits)) if i != total]] + ([[total]] if total is not None else [])
    horizon = {lv: (np.zeros_like(point), np.zeros_like(point)) for lv in levels}
    last = pred[:, -1] if pred.shape[1] else np.empty((len(fits), 0))
    last_sigma = sigma[:, -1] if pred.shape[1] else np.empty((len(fits), 0))
    backtest = {lv: (np.full(last.shape, np.nan), np.full(last.shape, np.nan)) for lv in levels}
    per_series = np.full((len(levels), len(fits)), np.nan)
    hits = np.zeros(len(levels))
    counted = 0.0
    for rows in groups:
        q = calibrate(r[rows], levels)
        for lv, got, bt in zip(levels, bands(point[rows], dev[rows], q), bands(last[rows], last_sigma[rows], q),
                               strict=True):  # fmt: skip
            horizon[lv][0][rows], horizon[lv][1][rows] = got
            backtest[lv][0][rows], backtest[lv][1][rows] = bt
        overall, own = held_out_coverage(r[rows], levels)
        per_series[:, rows] = own
        n = np.isfinite(r[rows]).sum()
        if n and np.isfinite(overall).all():
            hits += overall * n
            counted += n
    coverage = {f"{lv * 100:g}": (float(h / counted) if counted else None) for lv, h in zip(levels, hits, strict=True)}
    return Bands(horizon, backtest, coverage, per_series)


def _assemble(
    fits: list[SeriesFit],
    *,
    observed: np.ndarray,
    names: list[str],
    index: pd.DatetimeIndex,
    setup: Setup,
    bands: Bands,
    levels: tuple[float, ...],
    interval: float,
    training: dict[str, Any],
    calendar: Calendar,
    fingerprint: str,
    seconds: float,
) -> SalesForecaster:
    point = np.vstack([f.forecast for f in fits])
    tail = min(len(index), max(TAIL_PERIODS, 3 * setup.m))
    metrics = {}
    for i, (name, f) in enumerate(zip(names, fits, strict=True)):
        coverage = {f"coverage{lv * 100:g}": float(bands.per_series[k, i]) for k, lv in enumerate(levels)}
        metrics[name] = {**f.metrics, **coverage}
    low80, up80 = bands.horizon[0.8]
    window = index[setup.origins[-1] : setup.origins[-1] + setup.h] if setup.origins else index[:0]
    bt_low, bt_up = bands.backtest[interval]
    return SalesForecaster(
        freq=setup.freq,
        range_max=setup.range_max,
        series=names,
        methods=[f.method for f in fits],
        forecast=point,
        lower=bands.horizon[interval][0],
        upper=bands.horizon[interval][1],
        last_date=index[-1].isoformat(),
        interval=interval,
        features=calendar,
        metrics=metrics,
        backtest={
            "dates": iso_dates(window),
            "forecast": np.stack([f.cv_pred[-1] for f in fits]) if setup.origins else np.empty((len(fits), 0)),
            "lower": bt_low,
            "upper": bt_up,
        },
        holdout=setup.h,
        fingerprint=fingerprint,
        train_seconds=round(seconds, 3),
        lower80=low80,
        upper80=up80,
        tail_dates=iso_dates(index[len(index) - tail :]),
        tail=observed[:, len(index) - tail :].astype(np.float32),
        training=training,
    )


def fingerprint(history: pd.DataFrame) -> str:
    """sha256 of the tidy history's values (dates, series, sales), independent of where it was read from."""
    tidy = history[["date", "series", "sales"]].astype({"date": "datetime64[ns]", "series": str, "sales": "float64"})
    hashed = pd.util.hash_pandas_object(tidy, index=False).to_numpy()
    return "sha256:" + hashlib.sha256(hashed.tobytes()).hexdigest()
