"""The candidate models fitted to every series; selection keeps the best by backtest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

METHODS = ("seasonal_naive", "holt_winters", "linear")

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
