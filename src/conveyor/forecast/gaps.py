"""Missing periods stay missing: a complete copy for the models that need one, and holiday baselines.

A period without a sales row is not a day without sales (a rejected row, a late file, a shop that did not
report). Scores are computed on observed periods only; the regression fits on them alone; models that need a
complete series (exponential smoothing, ARIMA, Theta, seasonal naive) fit on a copy where each gap holds the
mean of the same phase one season before and after, else a straight line between its neighbours.
`--fill zero` is the explicit other choice: a missing period then counts as zero sales.
"""

from __future__ import annotations

import numpy as np

FILLS = ("interpolate", "zero")


def fill_gaps(y: np.ndarray, m: int) -> np.ndarray:
    """`y` with its NaNs replaced (seasonal neighbours, then linear interpolation, then the nearest value)."""
    out = np.array(y, dtype=float)
    missing = np.isnan(out)
    if not missing.any():
        return out
    if not (~missing).any():
        return np.zeros_like(out)
    if m > 1 and len(out) > m:
        before = np.full_like(out, np.nan)
        after = np.full_like(out, np.nan)
        before[m:] = out[:-m]
        after[:-m] = out[m:]
        both = np.stack([before, after])
        count = np.isfinite(both).sum(axis=0)
        seasonal = np.divide(np.nansum(both, axis=0), count, out=np.full_like(out, np.nan), where=count > 0)
        out[missing] = seasonal[missing]
        missing = np.isnan(out)
    if missing.any():
        known = np.flatnonzero(~missing)
        out[missing] = np.interp(np.flatnonzero(missing), known, out[known])
    return out


def holiday_baseline(y: np.ndarray, special: np.ndarray, m: int) -> np.ndarray:
    """`y` with holiday and closure periods (and gaps) replaced as gaps are: what an ordinary period would sell."""
    return fill_gaps(np.where(special, np.nan, y), m)


def holiday_factors(y: np.ndarray, baseline: np.ndarray, kinds: np.ndarray) -> dict[int, float]:
    """Per holiday kind seen in `y`: the median ratio of its observed sales to the ordinary baseline there."""
    factors: dict[int, float] = {}
    for code in np.unique(kinds[kinds > 0]).tolist():
        at = (kinds == code) & np.isfinite(y) & (baseline > 0)
        if at.any():
            factors[int(code)] = float(np.clip(np.median(y[at] / baseline[at]), 0.0, 10.0))
    return factors
