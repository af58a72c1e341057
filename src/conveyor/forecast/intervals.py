"""Prediction bands calibrated on cross-validated errors (split conformal), widening with the horizon.

Each candidate gives its own h-step standard deviation s_h: its shape (a seasonal random walk's steps, an ETS
model's variance growth) says how the band widens. Cross-validation gives what the forecasts actually missed by:
the errors divided by s_h are pooled over series, windows and nearby horizon steps, and the conformal quantile
q of that pool at each level scales the band, point +- q * s_h. Half-widths never shrink as h grows, so a band
always widens with the horizon; beyond the cross-validated steps the model's s_h carries the growth.
The manifest reports the coverage each band had on the window it was not calibrated on (leave one window out).
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

LEVELS = (0.8, 0.95)
MIN_POOL = 30  # errors per horizon bucket; thinner buckets are merged into the one before


def step_buckets(h: int) -> np.ndarray:
    """A bucket per horizon step 1..h: 1, 2, 3-4, 5-8, 9-16... (errors of nearby steps pooled together)."""
    return np.ceil(np.log2(np.arange(1, h + 1))).astype(int)


def calibrate(ratios: np.ndarray, levels: tuple[float, ...] = LEVELS) -> np.ndarray:
    """(levels x steps) multipliers of s_h from studentized absolute errors shaped (..., steps), NaN where none."""
    steps = ratios.shape[-1]
    flat = ratios.reshape(-1, steps)
    buckets = step_buckets(steps)
    groups: list[list[int]] = []
    for b in np.unique(buckets).tolist():
        members = np.flatnonzero(buckets == b).tolist()
        if groups and np.isfinite(flat[:, groups[-1]]).sum() < MIN_POOL:
            groups[-1].extend(members)
        else:
            groups.append(members)
    if len(groups) > 1 and np.isfinite(flat[:, groups[-1]]).sum() < MIN_POOL:
        groups[-2].extend(groups.pop())
    q = np.full((len(levels), steps), np.nan)
    values = np.full((len(levels), len(groups)), np.nan)
    weights = np.zeros(len(groups))
    for g, members in enumerate(groups):
        pool = flat[:, members]
        pool = pool[np.isfinite(pool)]
        if len(pool):
            values[:, g] = [conformal_quantile(pool, level) for level in levels]
            weights[g] = len(pool)
    known = weights > 0
    for i in range(len(levels)):
        # a further step is never surer than a nearer one: the closest non-decreasing fit, not a running max
        fitted = np.full(len(groups), np.nan)
        fitted[known] = increasing_fit(values[i, known], weights[known])
        for g, members in enumerate(groups):
            q[i, members] = fitted[g]
    return _fill_steps(q, [NormalDist().inv_cdf(0.5 + level / 2) for level in levels])


def increasing_fit(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-decreasing sequence closest to `values` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, count]
    for v, w in zip(values.tolist(), weights.tolist(), strict=True):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (v2, w2, c2), (v1, w1, c1) = blocks.pop(), blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return np.repeat([b[0] for b in blocks], [b[2] for b in blocks])


def conformal_quantile(values: np.ndarray, level: float) -> float:
    """The ceil((n + 1) * level)-th smallest value: covers a new point with probability >= level."""
    k = int(np.ceil((len(values) + 1) * level)) - 1
    return float(np.partition(values, min(k, len(values) - 1))[min(k, len(values) - 1)])


def bands(point: np.ndarray, sigma: np.ndarray, q: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(lower, upper) per level for forecasts (..., steps) with model deviations `sigma` of the same shape."""
    steps = point.shape[-1]
    cols = np.minimum(np.arange(steps), q.shape[1] - 1)
    out = []
    for qi in q:
        half = np.maximum.accumulate(np.nan_to_num(qi[cols] * sigma, nan=0.0), axis=-1)
        half = np.where(sigma > 0, half, 0.0)  # a closed day is sure: nothing sold
        out.append((np.clip(point - half, 0, None), point + half))
    return out


def ratios(errors: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """|error| / s_h where both are known and s_h > 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(errors) / sigma
    return np.where(np.isfinite(r) & (sigma > 0), r, np.nan)


def held_out_coverage(r: np.ndarray, levels: tuple[float, ...] = LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """Coverage of each level on each window when calibrated on the other windows: r is (series, windows, steps).

    Returns (levels,) overall and (levels, series) per series, NaN where nothing was scored."""
    n_series, n_windows, _ = r.shape
    hits = np.zeros((len(levels), n_series))
    seen = np.zeros(n_series)
    for w in range(n_windows):
        others = np.delete(r, w, axis=1)
        if not np.isfinite(others).any():
            continue
        q = calibrate(others, levels)
        held = r[:, w, :]
        known = np.isfinite(held)
        for i, qi in enumerate(q):
            hits[i] += ((held <= qi[None, :]) & known).sum(axis=1)
        seen += known.sum(axis=1)
    with np.errstate(invalid="ignore"):
        per_series = hits / seen
        overall = hits.sum(axis=1) / seen.sum() if seen.sum() else np.full(len(levels), np.nan)
    return overall, per_series


def _fill_steps(q: np.ndarray, normal_multipliers: list[float]) -> np.ndarray:
    """Steps no error reached take the nearest calibrated step's multiplier (the normal one when none is)."""
    known = np.isfinite(q[0])
    if not known.any():
        return np.repeat(np.array(normal_multipliers)[:, None], q.shape[1], axis=1)
    idx = np.flatnonzero(known)
    steps = np.arange(q.shape[1])
    return np.vstack([np.interp(steps, idx, row[idx]) for row in q])
