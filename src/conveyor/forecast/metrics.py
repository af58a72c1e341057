"""Forecast accuracy: MAPE, sMAPE and MASE (scaled by seasonal naive's in-sample error).

Periods without an observation (NaN) are left out of every score: a missing day is not a day of zero sales.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
    """In-sample seasonal-naive MAE (over pairs of observed periods); falls back to lag 1, then 1.0, so a flat
    series still gets a score."""
    for k in (m, 1):
        if len(train) > k:
            diffs = np.abs(train[k:] - train[:-k])
            diffs = diffs[np.isfinite(diffs)]
            mae = float(np.mean(diffs)) if len(diffs) else 0.0
            if mae > 0:
                return mae
    return 1.0


def naive_from(before: np.ndarray, m: int, steps: int) -> np.ndarray:
    """The last season of a cut's observed values, repeated: what seasonal naive forecasts from that cut."""
    known = before[~np.isnan(before)]
    if len(known) == 0:
        return np.full(steps, np.nan)
    k = m if len(known) > m else 1
    return np.resize(known[-k:], steps)


def scores(actual: np.ndarray, pred: np.ndarray, scale: float) -> dict[str, float]:
    """MAPE, sMAPE and MASE over the periods where both the actual and the forecast are known."""
    seen = np.isfinite(actual) & np.isfinite(pred)
    if not seen.any():
        return {"mape": float("nan"), "smape": float("nan"), "mase": float("nan")}
    a, p = actual[seen], pred[seen]
    return {"mape": mape(a, p), "smape": smape(a, p), "mase": mase(a, p, scale)}


def rms(errors: np.ndarray) -> float:
    errors = errors[np.isfinite(errors)]
    return float(np.sqrt(np.mean(errors**2))) if len(errors) else 0.0


def nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")
