"""Training: a tidy history becomes a SalesForecaster with every series' forecasts precomputed."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from conveyor.errors import InvalidInput
from conveyor.forecast.calendar import CalendarFeatures
from conveyor.forecast.forecaster import DEFAULT_RANGE_MAX, SalesForecaster
from conveyor.forecast.frequency import infer_frequency, iso_dates, season_length
from conveyor.forecast.selection import SeriesFit, Setup, fit_series, holdout_length

TAIL_PERIODS = 180  # history kept for people to see beside the forecast (at least three seasons)


def train_sales(
    history: pd.DataFrame,
    *,
    range_max: int = DEFAULT_RANGE_MAX,
    holdout: int | None = None,
    interval: float = 0.95,
    progress: bool = False,
    n_jobs: int = 1,
) -> SalesForecaster:
    """Fit, backtest and select a model per series of a tidy `date, series, sales` history.

    `holdout` is the backtest length in periods (default: `range_max`, at most 20% of each series).
    `n_jobs` > 1 fits series in parallel processes (joblib), worth it from a few hundred series.
    """
    started = time.perf_counter()
    _check_params(history, range_max, holdout, interval)
    freq = infer_frequency(history["date"])
    index, names, wide, seen = _wide(history, freq)
    first = seen.argmax(axis=1)
    features = CalendarFeatures.build(index, freq)
    setup = Setup(
        freq, season_length(freq), range_max, holdout, features.in_sample(), features.out_of_sample(range_max)
    )
    jobs = [(wide[i, first[i] :], first[i]) for i in range(len(names))]
    fits = _run(jobs, setup, progress=progress, n_jobs=n_jobs)
    return _assemble(
        fits,
        observed=np.where(seen, wide, np.nan),
        names=names,
        index=index,
        setup=setup,
        features=features,
        interval=interval,
        fingerprint=fingerprint(history),
        seconds=time.perf_counter() - started,
    )


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
    """Series x dates matrix on the frequency's grid (missing periods are 0) and which periods have a row."""
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
    np.add.at(wide, (codes, pos), history["sales"].to_numpy(dtype=float))
    seen[codes, pos] = True
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


def _assemble(
    fits: list[SeriesFit],
    *,
    observed: np.ndarray,
    names: list[str],
    index: pd.DatetimeIndex,
    setup: Setup,
    features: CalendarFeatures,
    interval: float,
    fingerprint: str,
    seconds: float,
) -> SalesForecaster:
    z = NormalDist().inv_cdf(0.5 + interval / 2)
    z80 = NormalDist().inv_cdf(0.9)
    point = np.vstack([f.forecast for f in fits])
    sigma = np.vstack([f.sigma for f in fits])
    width = max((len(f.backtest) for f in fits), default=0)
    tail = min(len(index), max(TAIL_PERIODS, 3 * setup.m))
    return SalesForecaster(
        freq=setup.freq,
        range_max=setup.range_max,
        series=names,
        methods=[f.method for f in fits],
        forecast=point,
        lower=np.clip(point - z * sigma, 0, None),
        upper=point + z * sigma,
        last_date=index[-1].isoformat(),
        interval=interval,
        models={name: f.model for name, f in zip(names, fits, strict=True)},
        features=features if "linear" in {f.method for f in fits} else None,
        metrics={name: f.metrics for name, f in zip(names, fits, strict=True)},
        backtest=_backtest_arrays(fits, index[len(index) - width :], z),
        holdout=setup.holdout if setup.holdout is not None else holdout_length(len(index), setup),
        fingerprint=fingerprint,
        train_seconds=round(seconds, 3),
        lower80=np.clip(point - z80 * sigma, 0, None),
        upper80=point + z80 * sigma,
        tail_dates=iso_dates(index[len(index) - tail :]),
        tail=observed[:, len(index) - tail :].astype(np.float32),
    )


def _backtest_arrays(fits: list[SeriesFit], dates: pd.DatetimeIndex, z: float) -> dict[str, Any]:
    """Right-aligned (series x holdout) arrays of backtest forecasts and bands, NaN where a holdout is shorter."""
    width = len(dates)
    point = np.full((len(fits), width), np.nan)
    sigma = np.full((len(fits), width), np.nan)
    for i, f in enumerate(fits):
        if len(f.backtest):
            point[i, width - len(f.backtest) :] = f.backtest
            sigma[i, width - len(f.backtest) :] = f.backtest_sigma
    return {
        "dates": iso_dates(dates),
        "forecast": point,
        "lower": np.clip(point - z * sigma, 0, None),
        "upper": point + z * sigma,
    }


def fingerprint(history: pd.DataFrame) -> str:
    """sha256 of the tidy history's values (dates, series, sales), independent of where it was read from."""
    tidy = history[["date", "series", "sales"]].astype({"date": "datetime64[ns]", "series": str, "sales": "float64"})
    hashed = pd.util.hash_pandas_object(tidy, index=False).to_numpy()
    return "sha256:" + hashlib.sha256(hashed.tobytes()).hexdigest()
