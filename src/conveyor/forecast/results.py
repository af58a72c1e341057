"""A user's fitted statsmodels time-series results, served like the sales forecaster (one series)."""

from __future__ import annotations

import warnings
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from conveyor.errors import InvalidInput
from conveyor.forecast.forecaster import DEFAULT_RANGE_MAX, TOTAL, SalesForecaster
from conveyor.forecast.frequency import infer_frequency
from conveyor.forecast.metrics import rms


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
    sigma = rms(np.asarray(getattr(results, "resid", np.zeros(1)), dtype=float)) * np.sqrt(np.arange(1, steps + 1))
    z = NormalDist().inv_cdf(0.5 + interval / 2)
    return point - z * sigma, point + z * sigma
