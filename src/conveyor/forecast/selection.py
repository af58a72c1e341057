"""Per series: backtest every candidate on a holdout, keep the best, refit it on the whole history."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from conveyor.forecast.candidates import CANDIDATES
from conveyor.forecast.intervals import interval_sigma
from conveyor.forecast.metrics import mase_scale, rms, scores

HOLDOUT_SHARE = 0.2
MIN_TRAIN = 3


@dataclass
class Setup:
    freq: str
    m: int
    range_max: int
    holdout: int | None
    x: np.ndarray
    x_future: np.ndarray


@dataclass
class SeriesFit:
    method: str
    model: Any
    forecast: np.ndarray
    sigma: np.ndarray
    backtest: np.ndarray
    backtest_sigma: np.ndarray
    metrics: dict[str, Any]


def holdout_length(n: int, setup: Setup) -> int:
    wanted = setup.holdout if setup.holdout is not None else min(setup.range_max, round(HOLDOUT_SHARE * n))
    return max(0, min(wanted, n - MIN_TRAIN))


def fit_series(y: np.ndarray, first: int, setup: Setup) -> SeriesFit:
    """Backtest every candidate on the holdout, keep the best by MASE (then sMAPE), refit it on all of `y`."""
    with warnings.catch_warnings():
        # statsmodels warns about convergence and overflow on nearly every real series; the backtest,
        # not the optimizer's message, tells whether a fit is any good.
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return _select_and_refit(y, setup.x[first:], setup)


def _select_and_refit(y: np.ndarray, x: np.ndarray, setup: Setup) -> SeriesFit:
    h = holdout_length(len(y), setup)
    trials = _backtest(y, x, h, setup) if h else {}
    method = (
        min(trials, key=lambda k: (round(trials[k]["mase"], 9), trials[k]["smape"])) if trials else "seasonal_naive"
    )
    model, resid, forecast = CANDIDATES[method](y, x, setup.m)
    point = np.clip(forecast(setup.range_max, setup.x_future), 0, None)
    sigma_1 = rms(resid)
    won = trials.get(method)
    holdout_rms = won["rmse"] if won else sigma_1
    return SeriesFit(
        method=method,
        model=model,
        forecast=point,
        sigma=interval_sigma(sigma_1, holdout_rms, setup.range_max, h),
        backtest=won["pred"] if won else np.empty(0),
        backtest_sigma=interval_sigma(won["sigma_1"], holdout_rms, h, h) if won else np.empty(0),
        metrics=_series_metrics(method, h, trials),
    )


def _backtest(y: np.ndarray, x: np.ndarray, h: int, setup: Setup) -> dict[str, dict[str, Any]]:
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
                **scores(test, pred, scale),
                "rmse": rms(test - pred),
                "sigma_1": rms(resid),
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
