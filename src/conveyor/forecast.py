"""The sales forecaster: a model chosen per series by backtest, its forecasts precomputed for serving.

Training fits three candidates on each series — Holt-Winters, the seed's linear regression on calendar
features, seasonal naive — keeps the one with the lowest MASE on a holdout, refits it on the whole history
and stores its forecasts and intervals up to `range_max` as arrays. `predict` only slices those arrays, so
the HTTP hot path never calls statsmodels.

Prediction intervals: the h-step error variance grows linearly, sigma_h^2 = sigma_1^2 * (1 + g * (h - 1)),
where sigma_1 is the root mean square of the winner's one-step in-sample residuals and g is chosen so that the
mean of sigma_h^2 over the holdout's H steps equals the squared RMSE actually measured there. Where the
holdout error is no larger than the one-step error, g is floored at 1/H (the variance doubles over a holdout):
a band always widens with the horizon. The band is forecast +- z * sigma_h, clipped at zero because sales
cannot be negative.
"""

from __future__ import annotations

import hashlib
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from conveyor.errors import InvalidInput
from conveyor.signature import Field, Signature

try:
    from pandas.api.internals import create_dataframe_from_blocks as _from_blocks
except ImportError:  # pandas < 2.2
    _from_blocks = None

TOTAL = "total"
DEFAULT_RANGE_MAX = 365
HOLDOUT_SHARE = 0.2
MIN_TRAIN = 3
METHODS = ("seasonal_naive", "holt_winters", "linear")
OUTPUT_COLUMNS = ("series", "date", "forecast", "lower", "upper")
_OUTPUT_INDEX = pd.Index(OUTPUT_COLUMNS)
_PLACEMENT = np.arange(len(OUTPUT_COLUMNS))
_SEASONS = {"D": 7, "B": 5, "W": 52, "MS": 12, "ME": 12, "M": 12, "BMS": 12, "BME": 12, "QS": 4, "QE": 4, "Q": 4}
_SMALL_BATCH = 8
_LIST_CACHE_SERIES = 2048


# --- frequency -------------------------------------------------------------------------------------


def infer_frequency(dates: Iterable[Any]) -> str:
    """The pandas frequency alias of a history's dates ("D", "W-SUN", "MS"...).

    Daily or weekly dates with a few missing periods (shops closed on Christmas) are accepted as
    daily/weekly; the missing periods then count as zero sales.
    """
    if not isinstance(dates, pd.Series | pd.Index | np.ndarray):
        dates = list(dates)
    index = pd.DatetimeIndex(pd.to_datetime(dates)).unique().sort_values()
    if len(index) < 3:
        raise InvalidInput(f"history has {len(index)} distinct date(s): at least 3 are needed to infer a frequency")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        freq = pd.infer_freq(index)
    if freq is not None:
        return str(getattr(freq, "freqstr", freq))
    return _frequency_with_gaps(index)


def _frequency_with_gaps(index: pd.DatetimeIndex) -> str:
    if index.is_month_start.all():
        return "MS"
    if index.is_month_end.all():
        return "ME"
    gaps = np.diff(index.as_unit("s").asi8) / 86400.0
    step = gaps.min()
    regular = step in (1.0, 7.0) and np.all(gaps % step == 0) and np.mean(gaps == step) >= 0.9
    if regular and (index == index.normalize()).all():
        return "D" if step == 1.0 else f"W-{index[0].day_name()[:3].upper()}"
    shown = ", ".join(f"{g:g}" for g in np.unique(gaps)[:5])
    raise InvalidInput(
        f"history dates are irregular (gaps of {shown} days): cannot infer a frequency; "
        "resample the history to daily, weekly or monthly totals"
    )


def season_length(freq: str) -> int:
    """Observations per season the frequency implies: D -> 7 (weekly), W -> 52, M -> 12, Q -> 4; else 1."""
    mult, base = _split_freq(freq)
    return _SEASONS.get(base, 1) if mult == 1 else 1


def _split_freq(freq: str) -> tuple[int, str]:
    match = re.match(r"^(\d*)([A-Za-z]+)", freq)
    if not match:
        return 1, freq
    return int(match.group(1) or 1), match.group(2)


def future_dates(last: pd.Timestamp, freq: str, steps: int) -> pd.DatetimeIndex:
    return pd.date_range(last, periods=steps + 1, freq=freq)[1:]


def _iso(dates: pd.DatetimeIndex) -> list[str]:
    if (dates == dates.normalize()).all():
        return list(dates.strftime("%Y-%m-%d"))
    return [d.isoformat() for d in dates]


# --- calendar features (the seed's model) ----------------------------------------------------------


@dataclass
class CalendarFeatures:
    """Constant, trend, seasonal dummies, yearly Fourier terms (order 4) and a New Year flag over a date grid."""

    process: Any
    new_year: bool

    @classmethod
    def build(cls, index: pd.DatetimeIndex, freq: str) -> CalendarFeatures:
        from statsmodels.tsa.deterministic import CalendarFourier, DeterministicProcess

        _, base = _split_freq(freq)
        sub_monthly = base in ("D", "B", "W")
        seasonal = base in ("D", "B") or season_length(freq) in (4, 12)
        terms = [CalendarFourier(freq="YE", order=4)] if sub_monthly else []
        process = DeterministicProcess(
            index, constant=True, order=1, seasonal=seasonal, additional_terms=terms, drop=True
        )
        return cls(process=process, new_year=sub_monthly)

    def in_sample(self) -> np.ndarray:
        return self._with_new_year(self.process.in_sample())

    def out_of_sample(self, steps: int) -> np.ndarray:
        return self._with_new_year(self.process.out_of_sample(steps))

    def _with_new_year(self, frame: pd.DataFrame) -> np.ndarray:
        x = frame.to_numpy(dtype=float)
        if not self.new_year:
            return x
        dates = pd.DatetimeIndex(frame.index)
        # A daily row is New Year's Day; a weekly row (labelled by its last day) is the week holding it.
        weekly = len(dates) > 1 and (dates[1] - dates[0]).days == 7
        flag = dates.day_of_year <= 7 if weekly else (dates.month == 1) & (dates.day == 1)
        return np.column_stack([x, np.asarray(flag, dtype=float)])


# --- candidates ------------------------------------------------------------------------------------

# A candidate fits a training series (with its feature rows) and returns the fitted model, its one-step
# in-sample residuals and a function forecasting `steps` ahead given the feature rows that follow.
Forecast = Callable[[int, np.ndarray], np.ndarray]


def _fit_seasonal_naive(y: np.ndarray, x: np.ndarray, m: int) -> tuple[Any, np.ndarray, Forecast]:
    k = m if len(y) > m else 1
    season = y[-k:].copy()
    return season, y[k:] - y[:-k], lambda steps, _x: np.resize(season, steps)


def _fit_holt_winters(y: np.ndarray, x: np.ndarray, m: int) -> tuple[Any, np.ndarray, Forecast]:
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    if len(y) < 10:
        raise ValueError("Holt-Winters needs at least 10 observations")
    seasonal = m > 1 and len(y) >= 2 * m
    model = ExponentialSmoothing(
        y,
        trend="add",
        damped_trend=True,
        seasonal="add" if seasonal else None,
        seasonal_periods=m if seasonal else None,
        # The heuristic start is 4x faster than estimating the initial states and forecasts as well here.
        initialization_method="heuristic",
    )
    result = model.fit(use_brute=False)
    return result, y - np.asarray(result.fittedvalues), lambda steps, _x: np.asarray(result.forecast(steps))


def _fit_linear(y: np.ndarray, x: np.ndarray, m: int) -> tuple[Any, np.ndarray, Forecast]:
    from sklearn.linear_model import LinearRegression

    if len(y) < 2 * x.shape[1]:
        raise ValueError("too few observations for the calendar features: the regression would overfit")
    reg = LinearRegression(fit_intercept=False).fit(x, y)
    return reg, y - reg.predict(x), lambda steps, x_next: reg.predict(x_next[:steps])


CANDIDATES: dict[str, Callable[[np.ndarray, np.ndarray, int], tuple[Any, np.ndarray, Forecast]]] = {
    "seasonal_naive": _fit_seasonal_naive,
    "holt_winters": _fit_holt_winters,
    "linear": _fit_linear,
}


# --- metrics ---------------------------------------------------------------------------------------


def mape(actual: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute percentage error (%), over non-zero actuals only."""
    nz = actual != 0
    return float(np.mean(np.abs(actual[nz] - pred[nz]) / np.abs(actual[nz])) * 100) if nz.any() else float("nan")


def smape(actual: np.ndarray, pred: np.ndarray) -> float:
    """Symmetric MAPE (%, 0..200); a period where both are zero counts as a perfect forecast."""
    denom = np.abs(actual) + np.abs(pred)
    ratio = np.divide(np.abs(actual - pred), denom, out=np.zeros_like(denom, dtype=float), where=denom > 0)
    return float(np.mean(ratio) * 200)


def mase(actual: np.ndarray, pred: np.ndarray, scale: float) -> float:
    """Mean absolute scaled error: MAE over the in-sample seasonal-naive MAE (< 1 beats seasonal naive)."""
    return float(np.mean(np.abs(actual - pred)) / scale)


def mase_scale(train: np.ndarray, m: int) -> float:
    """In-sample seasonal-naive MAE; falls back to lag 1, then 1.0, so a flat series still gets a score."""
    for k in (m, 1):
        if len(train) > k:
            mae = float(np.mean(np.abs(train[k:] - train[:-k])))
            if mae > 0:
                return mae
    return 1.0


def _scores(actual: np.ndarray, pred: np.ndarray, scale: float) -> dict[str, float]:
    return {"mape": mape(actual, pred), "smape": smape(actual, pred), "mase": mase(actual, pred, scale)}


def _rms(errors: np.ndarray) -> float:
    errors = errors[np.isfinite(errors)]
    return float(np.sqrt(np.mean(errors**2))) if len(errors) else 0.0


def interval_sigma(sigma_1: float, sigma_holdout: float, steps: int, holdout: int) -> np.ndarray:
    """Standard deviation of the h-step error, h = 1..steps, growing with h (see the module docstring)."""
    base = sigma_1**2 if sigma_1 > 0 else sigma_holdout**2
    h = np.arange(1, steps + 1)
    if base == 0:
        return np.zeros(steps)
    floor = 1 / max(holdout, 1)
    growth = 2 * (sigma_holdout**2 / base - 1) / (holdout - 1) if holdout > 1 else floor
    return np.sqrt(base * (1 + max(growth, floor) * (h - 1)))


# --- training --------------------------------------------------------------------------------------


@dataclass
class _Setup:
    freq: str
    m: int
    range_max: int
    holdout: int | None
    x: np.ndarray
    x_future: np.ndarray


@dataclass
class _SeriesFit:
    method: str
    model: Any
    forecast: np.ndarray
    sigma: np.ndarray
    backtest: np.ndarray
    backtest_sigma: np.ndarray
    metrics: dict[str, Any]


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
    index, names, wide, first = _wide(history, freq)
    features = CalendarFeatures.build(index, freq)
    setup = _Setup(
        freq, season_length(freq), range_max, holdout, features.in_sample(), features.out_of_sample(range_max)
    )
    jobs = [(wide[i, first[i] :], first[i]) for i in range(len(names))]
    fits = _run(jobs, setup, progress=progress, n_jobs=n_jobs)
    return _assemble(
        fits,
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
    """Series x dates matrix on the frequency's grid (missing periods are 0) and where each series starts."""
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
    first = seen.argmax(axis=1)
    return index, [str(u) for u in uniques], wide, first


def _run(jobs: list[tuple[np.ndarray, int]], setup: _Setup, *, progress: bool, n_jobs: int) -> list[_SeriesFit]:
    if n_jobs == 1:
        results: Iterable[_SeriesFit] = (_fit_series(y, first, setup) for y, first in jobs)
    else:
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=n_jobs, return_as="generator")
        results = parallel(delayed(_fit_series)(y, first, setup) for y, first in jobs)
    if progress:
        from rich.progress import track

        results = track(results, total=len(jobs), description="fitting series")
    return list(results)


def _holdout_length(n: int, setup: _Setup) -> int:
    wanted = setup.holdout if setup.holdout is not None else min(setup.range_max, round(HOLDOUT_SHARE * n))
    return max(0, min(wanted, n - MIN_TRAIN))


def _fit_series(y: np.ndarray, first: int, setup: _Setup) -> _SeriesFit:
    """Backtest every candidate on the holdout, keep the best by MASE (then sMAPE), refit it on all of `y`."""
    with warnings.catch_warnings():
        # statsmodels warns about convergence and overflow on nearly every real series; the backtest,
        # not the optimizer's message, tells whether a fit is any good.
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return _select_and_refit(y, setup.x[first:], setup)


def _select_and_refit(y: np.ndarray, x: np.ndarray, setup: _Setup) -> _SeriesFit:
    h = _holdout_length(len(y), setup)
    trials = _backtest(y, x, h, setup) if h else {}
    method = (
        min(trials, key=lambda k: (round(trials[k]["mase"], 9), trials[k]["smape"])) if trials else "seasonal_naive"
    )
    model, resid, forecast = CANDIDATES[method](y, x, setup.m)
    point = np.clip(forecast(setup.range_max, setup.x_future), 0, None)
    sigma_1 = _rms(resid)
    won = trials.get(method)
    holdout_rms = won["rmse"] if won else sigma_1
    return _SeriesFit(
        method=method,
        model=model,
        forecast=point,
        sigma=interval_sigma(sigma_1, holdout_rms, setup.range_max, h),
        backtest=won["pred"] if won else np.empty(0),
        backtest_sigma=interval_sigma(won["sigma_1"], holdout_rms, h, h) if won else np.empty(0),
        metrics=_series_metrics(method, h, trials),
    )


def _backtest(y: np.ndarray, x: np.ndarray, h: int, setup: _Setup) -> dict[str, dict[str, Any]]:
    train, test = y[:-h], y[-h:]
    scale = mase_scale(train, setup.m)
    trials: dict[str, dict[str, Any]] = {}
    for name, fit in CANDIDATES.items():
        try:
            _, resid, forecast = fit(train, x[:-h], setup.m)
            pred = np.clip(forecast(h, x[-h:]), 0, None)
        except Exception:  # a candidate that cannot fit this series is skipped; seasonal naive always fits
            if name == "seasonal_naive":
                raise
            continue
        if np.isfinite(pred).all():
            trials[name] = {
                **_scores(test, pred, scale),
                "rmse": _rms(test - pred),
                "sigma_1": _rms(resid),
                "pred": pred,
            }
    return trials


def _series_metrics(method: str, h: int, trials: dict[str, dict[str, Any]]) -> dict[str, Any]:
    nan = float("nan")
    won = trials.get(method, {})
    naive = trials.get("seasonal_naive", {})
    return {
        "method": method,
        "holdout": h,
        "mape": won.get("mape", nan),
        "smape": won.get("smape", nan),
        "mase": won.get("mase", nan),
        "naive_mape": naive.get("mape", nan),
        "naive_smape": naive.get("smape", nan),
        "naive_mase": naive.get("mase", nan),
        "candidates_mase": {k: v["mase"] for k, v in trials.items()},
    }


def _assemble(
    fits: list[_SeriesFit],
    *,
    names: list[str],
    index: pd.DatetimeIndex,
    setup: _Setup,
    features: CalendarFeatures,
    interval: float,
    fingerprint: str,
    seconds: float,
) -> SalesForecaster:
    z = NormalDist().inv_cdf(0.5 + interval / 2)
    point = np.vstack([f.forecast for f in fits])
    sigma = np.vstack([f.sigma for f in fits])
    width = max((len(f.backtest) for f in fits), default=0)
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
        holdout=setup.holdout if setup.holdout is not None else _holdout_length(len(index), setup),
        fingerprint=fingerprint,
        train_seconds=round(seconds, 3),
    )


def _backtest_arrays(fits: list[_SeriesFit], dates: pd.DatetimeIndex, z: float) -> dict[str, Any]:
    """Right-aligned (series x holdout) arrays of backtest forecasts and bands, NaN where a holdout is shorter."""
    width = len(dates)
    point = np.full((len(fits), width), np.nan)
    sigma = np.full((len(fits), width), np.nan)
    for i, f in enumerate(fits):
        if len(f.backtest):
            point[i, width - len(f.backtest) :] = f.backtest
            sigma[i, width - len(f.backtest) :] = f.backtest_sigma
    return {
        "dates": _iso(dates),
        "forecast": point,
        "lower": np.clip(point - z * sigma, 0, None),
        "upper": point + z * sigma,
    }


def fingerprint(history: pd.DataFrame) -> str:
    """sha256 of the tidy history's values (dates, series, sales), independent of where it was read from."""
    tidy = history[["date", "series", "sales"]].astype({"date": "datetime64[ns]", "series": str, "sales": "float64"})
    hashed = pd.util.hash_pandas_object(tidy, index=False).to_numpy()
    return "sha256:" + hashlib.sha256(hashed.tobytes()).hexdigest()


# --- the forecaster --------------------------------------------------------------------------------


@dataclass(eq=False)
class SalesForecaster:
    """Per-series forecasts up to `range_max`, served by slicing precomputed arrays.

    `forecast`, `lower` and `upper` have shape (len(series), range_max). `models` holds each series' fitted
    model (statsmodels results, scikit-learn regression, or the last season for seasonal naive) so a
    forecaster can be inspected after training; `predict` never calls them, so they (and `features`) are not
    pickled: loading a forecaster then needs neither statsmodels, scikit-learn nor scipy.
    """

    freq: str
    range_max: int
    series: list[str]
    methods: list[str]
    forecast: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    last_date: str
    interval: float = 0.95
    models: dict[str, Any] = field(default_factory=dict)
    features: CalendarFeatures | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    backtest: dict[str, Any] | None = None
    holdout: int = 0
    fingerprint: str = ""
    train_seconds: float = 0.0

    def __post_init__(self) -> None:
        self._prepare()

    def _prepare(self) -> None:
        """Build the lookup tables `predict` slices from (after training and after unpickling)."""
        self._rows = {name: i for i, name in enumerate(self.series)}
        self._index = pd.Index(self.series, dtype=object)
        self._names = np.array(self.series, dtype=object)
        self._dates = _iso(future_dates(pd.Timestamp(self.last_date), self.freq, self.range_max))
        self._default_series = TOTAL if TOTAL in self._rows else self.series[0]
        self._lists: dict[int, tuple[list[float], list[float], list[float]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_") and k not in ("models", "features")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"models": {}, "features": None, **state})
        self._prepare()

    @property
    def dates(self) -> list[str]:
        """ISO dates of the forecast horizon, 1..range_max periods after the last history date."""
        return list(self._dates)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row per input `{series, range}`: the next `range` dates with forecasts and interval bounds."""
        return _frame(self._outputs(frame, len(frame)))

    def predict_columns(self, columns: Mapping[str, Any], rows: int) -> dict[str, np.ndarray]:
        """`predict` without a DataFrame on either side (a single request's fixed cost)."""
        return dict(zip(OUTPUT_COLUMNS, self._outputs(columns, rows), strict=True))

    def _outputs(self, columns: pd.DataFrame | Mapping[str, Any], n: int) -> np.ndarray:
        """The (output columns x rows) object block both `predict` and `predict_columns` answer with."""
        rows = self._lookup(_column(columns, "series", self._default_series, n))
        steps = self._steps(_column(columns, "range", 1, n))
        lists = [self._series_lists(i) for i in rows.tolist()]
        dates = self._dates
        out = np.empty((len(OUTPUT_COLUMNS), n), dtype=object)
        out[0] = self._names[rows]
        out[1] = _objects((dates[:k] for k in steps), n)
        for col in (2, 3, 4):
            out[col] = _objects((row[col - 2][:k] for row, k in zip(lists, steps, strict=True)), n)
        return out

    def _series_lists(self, i: int) -> tuple[list[float], list[float], list[float]]:
        """Forecast, lower and upper of series `i` as Python lists: slicing a list is 3x faster than
        `ndarray.tolist()`. The cache is cleared when it holds too many series, bounding its memory."""
        cached = self._lists.get(i)
        if cached is None:
            if len(self._lists) >= _LIST_CACHE_SERIES:
                self._lists.clear()
            cached = self._lists[i] = (self.forecast[i].tolist(), self.lower[i].tolist(), self.upper[i].tolist())
        return cached

    def _lookup(self, names: Any) -> np.ndarray:
        if len(names) <= _SMALL_BATCH:
            try:
                return np.array([self._rows[s] for s in names], dtype=np.intp)
            except (KeyError, TypeError):
                pass
        rows = self._index.get_indexer(np.asarray(names, dtype=object))
        if (rows < 0).any():
            bad = np.asarray(names, dtype=object)[rows < 0][0]
            raise InvalidInput(f"unknown series {bad!r}; known: {self.series[:8]}")
        return rows

    def _steps(self, ranges: Any) -> list[int]:
        if isinstance(ranges, np.ndarray | pd.api.extensions.ExtensionArray) and ranges.dtype.kind not in "iu":
            ranges = np.asarray(ranges, dtype=np.int64)
        steps = ranges.tolist() if hasattr(ranges, "tolist") else [int(r) for r in ranges]
        low, high = min(steps, default=1), max(steps, default=1)
        if low < 1 or high > self.range_max:
            bad = low if low < 1 else high
            raise InvalidInput(f"'range' must be an integer between 1 and {self.range_max}, got {bad}")
        return steps

    def signature(self) -> Signature:
        """Inputs `series` (one of the trained series, default "total") and `range` (1..range_max, default 1)."""
        return Signature(
            inputs=(
                Field(
                    "series",
                    "str",
                    default=self._default_series,
                    required=False,
                    choices=tuple(self.series),
                    description="which series to forecast",
                ),
                Field(
                    "range",
                    "int",
                    default=1,
                    required=False,
                    min=1,
                    max=self.range_max,
                    description=f"forecast horizon in periods ({self.freq})",
                ),
            ),
            outputs=(
                Field("series", "str"),
                Field("date", "object", items="str", description="ISO dates of the horizon"),
                Field("forecast", "object", items="float", description="point forecasts, one per date"),
                Field("lower", "object", items="float", description=f"lower bound of the {self.interval:.0%} interval"),
                Field("upper", "object", items="float", description=f"upper bound of the {self.interval:.0%} interval"),
            ),
        )

    def summary(self) -> dict[str, Any]:
        """JSON-ready metrics for the manifest: per series and overall, for the chosen model and seasonal naive."""
        keys = ("mape", "smape", "mase", "naive_mape", "naive_smape", "naive_mase")
        overall = {k: _nanmean([m.get(k, np.nan) for m in self.metrics.values()]) for k in keys}
        scored = [m for m in self.metrics.values() if np.isfinite(m.get("mase", np.nan))]
        beats = sum(1 for m in scored if m["mase"] < m["naive_mase"] - 1e-12)
        return _json_safe(
            {
                "freq": self.freq,
                "range_max": self.range_max,
                "interval": self.interval,
                "holdout": self.holdout,
                "n_series": len(self.series),
                "last_date": self.last_date,
                "fingerprint": self.fingerprint,
                "train_seconds": self.train_seconds,
                "methods": dict(Counter(self.methods)),
                "overall": overall,
                "beats_naive": beats,
                "beats_naive_text": f"beats seasonal naive on {beats} of {len(scored)} series",
                "series": self.metrics,
            }
        )


def _column(columns: pd.DataFrame | Mapping[str, Any], name: str, default: Any, n: int) -> Any:
    if not isinstance(columns, pd.DataFrame):
        return columns[name] if name in columns else [default] * n
    if name not in columns.columns:
        return [default] * n
    loc = columns.columns.get_loc(name)
    if isinstance(loc, int):
        try:
            # Private but stable since pandas 1.x: skips building a Series (~15 us a column on the hot path).
            return columns._get_column_array(loc)
        except AttributeError:
            pass
    return columns[name].to_numpy()


def _objects(values: Iterable[Any], n: int) -> np.ndarray:
    return np.fromiter(values, dtype=object, count=n)


def _frame(out: np.ndarray) -> pd.DataFrame:
    """A DataFrame over one (columns x rows) object block, without pandas' per-column checks and copies.

    Building a 1-row frame this way takes ~15 us against ~200 us for `DataFrame(dict)`; predict runs once
    per HTTP request, so that difference is most of its cost.
    """
    index = pd.RangeIndex(out.shape[1])
    if _from_blocks is None:
        return pd.DataFrame(dict(zip(OUTPUT_COLUMNS, out, strict=True)), index=index)
    return _from_blocks([(out, _PLACEMENT)], index=index, columns=_OUTPUT_INDEX)


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# --- user statsmodels results ----------------------------------------------------------------------


def wrap_results(
    results: Any, name: str = TOTAL, *, range_max: int = DEFAULT_RANGE_MAX, interval: float = 0.95
) -> SalesForecaster:
    """Serve a user's fitted statsmodels time-series results (HoltWinters, ARIMA, ETS...) as one series.

    Forecasts come from `results.forecast`; intervals from `get_forecast(...).conf_int()` when the results
    have it, else from the residuals' RMS growing with sqrt(h). The model must have been fitted on a pandas
    Series with a DatetimeIndex so the forecast has dates.
    """
    if not callable(getattr(results, "forecast", None)):
        raise InvalidInput(f"{type(results).__name__} has no forecast(steps): expected fitted statsmodels results")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        point = results.forecast(range_max)
        lower, upper = _results_interval(results, np.asarray(point, dtype=float), range_max, interval)
    dates = _results_dates(results, point)
    point = np.clip(np.asarray(point, dtype=float), 0, None)
    freq = dates.freqstr or infer_frequency(dates)
    last = pd.date_range(end=dates[0], periods=2, freq=freq)[0]
    return SalesForecaster(
        freq=freq,
        range_max=range_max,
        series=[name],
        methods=[f"statsmodels:{type(getattr(results, 'model', results)).__name__}"],
        forecast=point[None, :],
        lower=np.clip(np.minimum(lower, point), 0, None)[None, :],
        upper=np.maximum(upper, point)[None, :],
        last_date=last.isoformat(),
        interval=interval,
        models={name: results},
    )


def _results_dates(results: Any, point: Any) -> pd.DatetimeIndex:
    index = getattr(point, "index", None)
    if isinstance(index, pd.DatetimeIndex):
        return index
    raise InvalidInput(
        f"{type(results).__name__}'s forecast has no dates: fit the model on a pandas Series "
        "with a DatetimeIndex that has a frequency (e.g. series.asfreq('D'))"
    )


def _results_interval(results: Any, point: np.ndarray, steps: int, interval: float) -> tuple[np.ndarray, np.ndarray]:
    if callable(getattr(results, "get_forecast", None)):
        bounds = np.asarray(results.get_forecast(steps).conf_int(alpha=1 - interval), dtype=float)
        return bounds[:, 0], bounds[:, 1]
    sigma = _rms(np.asarray(getattr(results, "resid", np.zeros(1)), dtype=float)) * np.sqrt(np.arange(1, steps + 1))
    z = NormalDist().inv_cdf(0.5 + interval / 2)
    return point - z * sigma, point + z * sigma


# --- plotting --------------------------------------------------------------------------------------


def plot_backtest(
    forecaster: SalesForecaster,
    history: pd.DataFrame,
    path: str | Path,
    series: str | Sequence[str] | None = None,
    max_series: int = 6,
) -> Path:
    """Write a PNG per-series panel: history tail, holdout actuals, backtest and future forecasts with bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _plot_series(forecaster, series, max_series)
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 2.8 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        _plot_one(ax, forecaster, history, name)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_series(forecaster: SalesForecaster, series: str | Sequence[str] | None, max_series: int) -> list[str]:
    if series is None:
        ordered = sorted(forecaster.series, key=lambda s: s != TOTAL)
        return ordered[:max_series]
    names = [series] if isinstance(series, str) else list(series)
    unknown = [s for s in names if s not in forecaster.series]
    if unknown:
        raise InvalidInput(f"unknown series {unknown}; known: {forecaster.series[:8]}")
    return names[:max_series]


def _plot_one(ax: Any, forecaster: SalesForecaster, history: pd.DataFrame, name: str) -> None:
    i = forecaster.series.index(name)
    bt = forecaster.backtest or {"dates": [], "forecast": np.empty((len(forecaster.series), 0))}
    bt_dates = pd.to_datetime(bt["dates"])
    tail = max(len(bt_dates) * 3, 8 * max(season_length(forecaster.freq), 1))
    own = history.loc[history["series"] == name].sort_values("date").tail(tail)
    ax.plot(own["date"], own["sales"], color="0.35", lw=0.8, label="history")
    shown = np.isfinite(bt["forecast"][i])
    if shown.any():
        ax.axvspan(bt_dates[shown][0], bt_dates[-1], color="0.92", label="holdout")
        ax.plot(bt_dates[shown], bt["forecast"][i][shown], color="tab:orange", lw=1, label="backtest")
        ax.fill_between(bt_dates[shown], bt["lower"][i][shown], bt["upper"][i][shown], color="tab:orange", alpha=0.2)
    future = pd.to_datetime(forecaster.dates)
    ax.plot(future, forecaster.forecast[i], color="tab:blue", lw=1, label="forecast")
    ax.fill_between(future, forecaster.lower[i], forecaster.upper[i], color="tab:blue", alpha=0.2)
    m = forecaster.metrics.get(name, {})
    ax.set_title(f"{name} — {forecaster.methods[i]}, MASE {_fmt(m.get('mase'))} (naive {_fmt(m.get('naive_mase'))})")
    ax.legend(loc="upper left", fontsize=7, ncol=5)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.2f}"
