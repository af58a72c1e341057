"""Per series: rolling-origin cross-validation of every candidate, the best (or an ensemble) refitted on all of it.

The windows are the same dates for every series (the last `windows` blocks of `h` periods before the history's
end), so the total's cross-validated forecasts are the sums of its series'. A series scores each candidate by
its mean MASE over the windows it has enough history for, on observed periods only. The mean of the best two
or three candidates is kept instead when it cross-validates better than the best alone.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conveyor.forecast.calendar import CLOSED
from conveyor.forecast.candidates import CANDIDATES, Train
from conveyor.forecast.gaps import fill_gaps, holiday_baseline, holiday_factors
from conveyor.forecast.metrics import mase_scale, scores

WINDOWS = 3
ENSEMBLE_SIZES = (2, 3)


@dataclass
class Setup:
    freq: str
    m: int
    range_max: int
    origins: list[int]  # grid positions where each CV window starts (its training cut ends)
    h: int  # periods per CV window
    x: np.ndarray  # calendar features over the grid and the horizon
    kinds: np.ndarray  # holiday kind per period over the grid and the horizon
    candidates: tuple[str, ...]
    fill: str = "interpolate"
    yearly: np.ndarray | None = None  # yearly Fourier columns of x
    year_periods: int = 0


@dataclass
class SeriesFit:
    method: str
    forecast: np.ndarray  # (range_max,)
    sigma: np.ndarray  # (range_max,) the model's own h-step deviation
    cv_pred: np.ndarray  # (windows, h) the chosen method's CV forecasts, NaN where a window was not usable
    cv_sigma: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)


def cv_plan(n: int, m: int, range_max: int, holdout: int | None, windows: int = WINDOWS) -> tuple[list[int], int]:
    """CV window starts and length: `windows` blocks ending at the history's end, within its last half."""
    min_train = min_train_length(m, n)
    room = max(1, min(n - min_train, n // 2))
    h = holdout if holdout is not None else max(1, min(range_max, room // windows))
    h = max(1, min(h, n - 3))
    origins = [n - h * k for k in range(windows, 0, -1)]
    return [o for o in origins if o >= 3], h


def min_train_length(m: int, n: int) -> int:
    """Two seasons and a period when the history allows, else half of it."""
    return min(max(2 * m + 1, 10), max(3, n // 2))


def fit_series(y: np.ndarray, first: int, setup: Setup) -> SeriesFit:
    """Cross-validate the candidates on one series (from its first observed period), keep the best, refit."""
    with warnings.catch_warnings():
        # statsmodels and statsforecast warn about convergence on nearly every real series; the
        # cross-validation, not the optimizer's message, tells whether a fit is any good.
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return _fit_series(y, first, setup)


def _fit_series(y: np.ndarray, first: int, setup: Setup) -> SeriesFit:
    kinds = setup.kinds[first:]
    x = setup.x[first:]
    y = np.where(kinds[: len(y)] == CLOSED, np.nan, y)
    trials = cross_validate(y, first, kinds, x, setup)
    method, members = _choose(trials)
    point, sigma = _final(members, y, kinds, x, setup)
    chosen = trials[method]  # seasonal naive's when nothing scored; an ensemble's is added by _choose
    return SeriesFit(
        method=method,
        forecast=point,
        sigma=sigma,
        cv_pred=chosen["pred"],
        cv_sigma=chosen["sigma"],
        metrics=series_metrics(method, setup, trials),
    )


def cross_validate(
    y: np.ndarray, first: int, kinds: np.ndarray, x: np.ndarray, setup: Setup
) -> dict[str, dict[str, Any]]:
    n, h, w = len(y), setup.h, len(setup.origins)
    preds = {c: np.full((w, h), np.nan) for c in setup.candidates}
    sigmas = {c: np.full((w, h), np.nan) for c in setup.candidates}
    actual = np.full((w, h), np.nan)
    scales = np.full(w, np.nan)
    floor = min_train_length(setup.m, n)
    cache: dict[str, Any] = {}  # models fitted on the first usable window, moved on to the later ones
    for i, origin in enumerate(setup.origins):
        o = origin - first
        if o < floor or o + h > n:
            continue
        train = make_train(y[:o], kinds[:o], x[:o], setup)
        actual[i] = y[o : o + h]
        scales[i] = mase_scale(y[:o], setup.m)
        for name in setup.candidates:
            got = forecast_with(name, train, kinds[o : o + h], x[o : o + h], h, cache)
            if got is not None:
                preds[name][i], sigmas[name][i] = got
    trials = {name: {"pred": preds[name], "sigma": sigmas[name], **cv_scores(actual, preds[name], scales)}
              for name in setup.candidates}  # fmt: skip
    for t in trials.values():
        t["actual"], t["scales"] = actual, scales
    return trials


def make_train(y: np.ndarray, kinds: np.ndarray, x: np.ndarray, setup: Setup) -> Train:
    m = setup.m
    observed = np.nan_to_num(y, nan=0.0) if setup.fill == "zero" else y
    # yearly terms need a year to be estimated: on a shorter cut they extrapolate a guess (CV MASE 8 on 200 days)
    short = setup.yearly is not None and setup.yearly.any() and len(y) < setup.year_periods
    cols = ~setup.yearly if short else None
    special = kinds > 0
    if not special.any():
        return Train(y=observed, base=fill_gaps(observed, m), x=x, m=m, cols=cols)
    base = holiday_baseline(observed, special, m)
    ordinary = np.where(special, np.nan, observed)
    return Train(y=ordinary, base=base, x=x, m=m, factors=holiday_factors(observed, base, kinds), cols=cols)


def forecast_with(
    name: str,
    train: Train,
    kinds_next: np.ndarray,
    x_next: np.ndarray,
    steps: int,
    cache: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """One candidate's forecast and deviation for `steps` periods, holidays applied; None when it cannot fit."""
    try:
        mean, sigma = CANDIDATES[name](train, cache)(steps, x_next)
    except Exception:  # a candidate that cannot fit this series is left out; seasonal naive always fits
        if name == "seasonal_naive":
            raise
        return None
    mean = np.asarray(mean, dtype=float)
    if not np.isfinite(mean).all():
        return None
    for code, factor in train.factors.items():
        at = kinds_next[:steps] == code
        mean[at] *= factor
        sigma = np.where(at, sigma * max(factor, 1e-3), sigma)
    closed = kinds_next[:steps] == CLOSED
    mean[closed] = 0.0
    sigma = np.where(closed, 0.0, np.nan_to_num(sigma, nan=0.0))
    return np.clip(mean, 0, None), sigma


def cv_scores(actual: np.ndarray, pred: np.ndarray, scales: np.ndarray) -> dict[str, float]:
    """Mean over usable windows; NaN when the candidate failed in a window the series could use."""
    rows = [scores(actual[i], pred[i], scales[i]) for i in range(len(scales)) if np.isfinite(scales[i])]
    if not rows or any(not np.isfinite(pred[i]).any() for i in range(len(scales)) if np.isfinite(scales[i])):
        return {"mape": float("nan"), "smape": float("nan"), "mase": float("nan"), "windows": len(rows)}
    return {k: float(np.nanmean([r[k] for r in rows])) for k in ("mape", "smape", "mase")} | {"windows": len(rows)}


def _choose(trials: dict[str, dict[str, Any]]) -> tuple[str, list[str]]:
    """The best candidate by CV MASE (then sMAPE), or the mean of the best few when that scores lower (added to
    `trials` under its name); seasonal naive when no window could be scored."""
    scored = [k for k, t in trials.items() if np.isfinite(t["mase"])]
    if not scored:
        return "seasonal_naive", ["seasonal_naive"]
    ranked = sorted(scored, key=lambda k: (round(trials[k]["mase"], 9), trials[k]["smape"]))
    best = ranked[0]
    winner, members, score = best, [best], trials[best]["mase"]
    any_trial = trials[best]
    for size in ENSEMBLE_SIZES:
        if len(ranked) < size:
            break
        group = ranked[:size]
        pred = np.mean([trials[m]["pred"] for m in group], axis=0)
        got = cv_scores(any_trial["actual"], pred, any_trial["scales"])
        if got["mase"] < score - 1e-9:
            name = "ensemble(" + "+".join(sorted(group)) + ")"
            sigma = np.mean([trials[m]["sigma"] for m in group], axis=0)
            trials[name] = {"pred": pred, "sigma": sigma, **got, "actual": any_trial["actual"],
                            "scales": any_trial["scales"]}  # fmt: skip
            winner, members, score = name, group, got["mase"]
    return winner, members


def _final(
    members: list[str], y: np.ndarray, kinds: np.ndarray, x: np.ndarray, setup: Setup
) -> tuple[np.ndarray, np.ndarray]:
    """The members refitted on the whole series, forecasting the horizon; their mean for an ensemble."""
    n = len(y)
    train = make_train(y, kinds[:n], x[:n], setup)
    steps, x_next, k_next = setup.range_max, x[n : n + setup.range_max], kinds[n : n + setup.range_max]
    got = [forecast_with(m, train, k_next, x_next, steps) for m in members]
    got = [g for g in got if g is not None] or [forecast_with("seasonal_naive", train, k_next, x_next, steps)]
    return np.mean([g[0] for g in got], axis=0), np.mean([g[1] for g in got], axis=0)


def series_metrics(method: str, setup: Setup, trials: dict[str, dict[str, Any]]) -> dict[str, Any]:
    nan = float("nan")
    won = trials.get(method, {})
    base = trials.get("seasonal_naive", {})
    singles = [c for c in setup.candidates if c in trials]
    return {
        "method": method,
        "holdout": setup.h,
        "windows": int(won.get("windows", 0)),
        "mape": won.get("mape", nan),
        "smape": won.get("smape", nan),
        "mase": won.get("mase", nan),
        "naive_mape": base.get("mape", nan),
        "naive_smape": base.get("smape", nan),
        "naive_mase": base.get("mase", nan),
        "candidates_mase": {k: trials[k]["mase"] for k in singles},
        "cv": {k: {"mase": trials[k]["mase"], "smape": trials[k]["smape"]} for k in [*singles, method] if k in trials},
    }
