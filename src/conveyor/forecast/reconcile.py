"""Totals coherent with their parts: the `total` series is the sum of its series' forecasts (bottom-up).

Fitted on its own, the total forgot what its parts knew (a New Year's Day the series dip on, the total did
not) and disagreed with their sum. Its forecasts, cross-validated forecasts and model deviations are now the
sums of its series' (deviations as if independent: the conformal step then sets the total's band width from
the total's own cross-validated errors). Seasonal naive on the total itself stays the yardstick.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from conveyor.forecast.forecaster import TOTAL
from conveyor.forecast.selection import SeriesFit, Setup, cross_validate, cv_scores, series_metrics

METHOD = "bottom_up"


def total_row(names: list[str], observed: np.ndarray) -> int | None:
    """The row of `total` when it is the sum of at least two other series (as `tidy_history` builds it)."""
    if TOTAL not in names or len(names) < 3:
        return None
    row = names.index(TOTAL)
    parts = np.delete(observed, row, axis=0)
    any_part = np.isfinite(parts).any(axis=0)
    sums = np.where(any_part, np.nansum(parts, axis=0), np.nan)
    known = np.isfinite(observed[row]) & any_part
    if not known.any() or not np.allclose(observed[row][known], sums[known], rtol=1e-6, atol=1e-6):
        return None
    return row


def bottom_up(parts: list[SeriesFit], y: np.ndarray, first: int, setup: Setup) -> SeriesFit:
    """The total's fit from its parts'; `y` is the total's own history (from `first`) for its scores."""
    cv_pred = _sum_known(np.stack([p.cv_pred for p in parts]))
    cv_var = _sum_known(np.stack([p.cv_sigma**2 for p in parts]))
    naive_only = replace(setup, candidates=("seasonal_naive",))
    kinds, x = setup.kinds[first:], setup.x[first:]
    trials = cross_validate(y, first, kinds, x, naive_only)
    naive = trials["seasonal_naive"]
    trials[METHOD] = {"pred": cv_pred, "sigma": np.sqrt(cv_var), **cv_scores(naive["actual"], cv_pred, naive["scales"])}
    return SeriesFit(
        method=METHOD,
        forecast=np.sum([p.forecast for p in parts], axis=0),
        sigma=np.sqrt(np.sum([p.sigma**2 for p in parts], axis=0)),
        cv_pred=cv_pred,
        cv_sigma=np.sqrt(cv_var),
        metrics=series_metrics(METHOD, naive_only, trials),
    )


def _sum_known(stack: np.ndarray) -> np.ndarray:
    any_known = np.isfinite(stack).any(axis=0)
    return np.where(any_known, np.nansum(stack, axis=0), np.nan)
