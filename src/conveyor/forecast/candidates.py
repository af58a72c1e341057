"""The candidate models fitted to every series; cross-validation keeps the best (or an ensemble of the best).

A candidate fits a `Train` and returns a function forecasting `steps` ahead from the feature rows that follow:
the point forecast and the model's own h-step standard deviation, whose shape (how a band widens with the
horizon) the conformal calibration keeps while it sets the width from cross-validated errors.

`linear` (the seed's calendar regression) fits the observed ordinary periods, the others the complete series
with holidays at their ordinary baseline; every candidate gets each holiday's learned effect back on the horizon
as a factor (`gaps.holiday_factors`). Additive holiday dummies in the regression were tried first: a series that
grew 25% in three years sold 48-58 on New Year's Days and was forecast 410 there (the dummy's effect is a constant
amount, the day's is a share).
statsforecast's AutoETS, AutoARIMA, AutoTheta and MSTL (daily data: weekly and yearly seasonality, an ETS trend)
are called on numpy arrays, never through its DataFrame API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conveyor.errors import InvalidInput
from conveyor.forecast.metrics import rms

# The seed's three, cheap enough for ten thousand daily series; then the field's automatic models.
BASIC = ("seasonal_naive", "linear", "holt_winters")
AUTO = ("ets", "arima", "theta")
METHODS = (*BASIC, *AUTO, "mstl")
# "auto" adds the automatic models while a job is small enough for their searches (series x periods).
AUTO_POINTS = 60_000


def resolve_candidates(choice: str | tuple[str, ...], n_series: int, n_periods: int, m: int) -> tuple[str, ...]:
    """The candidate names for a job: "basic", "all", "auto" or an explicit tuple.

    "auto" adds AutoETS, AutoARIMA and AutoTheta for monthly and quarterly data while the job is small (series x
    periods): their searches take a second or more per fit on the hundreds of periods of a daily or weekly
    series, so daily and weekly data keep the basic three unless asked ("all" or names)."""
    if isinstance(choice, tuple | list):
        unknown = [c for c in choice if c not in METHODS]
        if unknown or not choice:
            raise InvalidInput(f"unknown candidate(s) {unknown}; choose among {', '.join(METHODS)}")
        return tuple(dict.fromkeys(["seasonal_naive", *choice]))  # seasonal naive is the yardstick
    if choice == "basic":
        return BASIC
    if choice == "all":
        return METHODS
    if choice == "auto":
        return BASIC + AUTO if m in (4, 12) and n_series * n_periods <= AUTO_POINTS else BASIC
    raise InvalidInput(f"candidates must be auto, basic, all or names among {', '.join(METHODS)}; got {choice!r}")


@dataclass
class Train:
    """One training cut of a series."""

    y: np.ndarray  # observed sales of ordinary periods, NaN where a period has no row or is a holiday
    base: np.ndarray  # complete: gaps filled, holiday and closure periods at their ordinary baseline
    x: np.ndarray  # calendar feature rows of y's periods
    m: int  # season length
    factors: dict[int, float] = field(default_factory=dict)  # holiday kind -> its effect on sales
    cols: np.ndarray | None = None  # the columns of x the regression uses (no yearly terms on a short cut)


Forecast = Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _seasonal_naive(t: Train, cache: dict[str, Any] | None = None) -> Forecast:
    y = t.base
    k = t.m if len(y) > t.m else 1
    season = y[-k:].copy()
    sigma_1 = rms(y[k:] - y[:-k]) if len(y) > k else 0.0

    def forecast(steps: int, _x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seasons = np.ceil(np.arange(1, steps + 1) / k)
        return np.resize(season, steps), sigma_1 * np.sqrt(seasons)

    return forecast


def _linear(t: Train, cache: dict[str, Any] | None = None) -> Forecast:
    seen = np.isfinite(t.y)
    if seen.sum() < 2 * (t.x.shape[1] if t.cols is None else int(t.cols.sum())):
        raise ValueError("too few observations for the calendar features: the regression would overfit")
    cols = t.cols if t.cols is not None else np.ones(t.x.shape[1], dtype=bool)
    x = t.x[seen][:, cols]
    coef, *_ = np.linalg.lstsq(x, t.y[seen], rcond=None)
    sigma = rms(t.y[seen] - x @ coef)
    inverse = np.linalg.pinv(x.T @ x)

    def forecast(steps: int, x_next: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = x_next[:steps][:, cols]
        # the prediction's own uncertainty grows as the trend is carried further from the data
        leverage = np.einsum("ij,jk,ik->i", rows, inverse, rows)
        return rows @ coef, sigma * np.sqrt(1 + np.maximum.accumulate(leverage))

    return forecast


def _holt_winters(t: Train, cache: dict[str, Any] | None = None) -> Forecast:
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    y = t.base
    if len(y) < 10:
        raise ValueError("Holt-Winters needs at least 10 observations")
    seasonal = t.m > 1 and len(y) >= 2 * t.m
    model = ExponentialSmoothing(
        y,
        trend="add",
        damped_trend=True,
        seasonal="add" if seasonal else None,
        seasonal_periods=t.m if seasonal else None,
        # The heuristic start is 4x faster than estimating the initial states and forecasts as well here.
        initialization_method="heuristic",
    )
    result = model.fit(use_brute=False)
    sigma_1 = rms(y - np.asarray(result.fittedvalues))
    alpha = float(result.params.get("smoothing_level", 0.5) or 0.5)

    def forecast(steps: int, _x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = np.arange(1, steps + 1)
        return np.asarray(result.forecast(steps)), sigma_1 * np.sqrt(1 + (h - 1) * alpha**2)

    return forecast


def _statsforecast(name: str) -> Callable[..., Forecast]:
    def fit(t: Train, cache: dict[str, Any] | None = None) -> Forecast:
        """With a `cache` from an earlier cut of the same series, its model moves on to this cut (statsforecast's
        `forward`: same parameters, states run over the longer history) instead of searching again: the
        cross-validation's later windows cost a few milliseconds instead of a fit."""
        from statsforecast import models

        previous = cache.get(name) if cache is not None else None
        if previous is None:
            m = t.m if len(t.base) >= 2 * t.m else 1
            if name == "mstl":  # weekly and, with two years of days, yearly seasonality; an ETS trend
                seasons = [m, 365] if m == 7 and len(t.base) >= 2 * 365 else [m]
                model = models.MSTL(season_length=seasons, trend_forecaster=models.AutoETS(model="ZZN"))
            else:
                cls = {"ets": models.AutoETS, "arima": models.AutoARIMA, "theta": models.AutoTheta}[name]
                model = cls(season_length=m)
            model = model.fit(t.base)
            if cache is not None:
                cache[name] = model

            def predict(steps: int) -> dict[str, Any]:
                return model.predict(h=steps, level=[95])
        else:

            def predict(steps: int) -> dict[str, Any]:
                return previous.forward(y=t.base, h=steps, level=[95])

        def forecast(steps: int, _x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            out = predict(steps)
            mean = np.asarray(out["mean"], dtype=float)
            return mean, np.abs(np.asarray(out["hi-95"], dtype=float) - mean) / 1.959964

        return forecast

    return fit


CANDIDATES: dict[str, Callable[..., Forecast]] = {
    "seasonal_naive": _seasonal_naive,
    "linear": _linear,
    "holt_winters": _holt_winters,
    **{name: _statsforecast(name) for name in (*AUTO, "mstl")},
}
