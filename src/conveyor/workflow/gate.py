"""The promotion gate: the new version against seasonal naive and the serving version, on one backtest window.

The window is the new version's holdout: the last periods of the history, forecast by a fit on the periods
before them. Seasonal naive forecasts the same window from the same cut. The serving version is scored by
what it forecast for those dates without having seen them: its own holdout forecasts, or its forecasts
past its last training date. Every score is MASE (mean absolute error over the in-sample seasonal naive
error) averaged over the series all three forecast, so the comparison is on identical series and dates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from conveyor.forecast import SalesForecaster, future_dates, mase_scale, season_length
from conveyor.forecast.metrics import naive_from
from conveyor.workflow.settings import Gate


@dataclass
class Verdict:
    passed: bool
    reason: str
    candidate: str
    candidate_mase: float
    naive_mase: float
    production: str | None = None
    production_mase: float | None = None
    window: tuple[str, str] | None = None
    series: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def out_of_sample(forecaster: SalesForecaster, series: list[str], dates: pd.DatetimeIndex) -> np.ndarray:
    """(series x dates) forecasts `forecaster` made without seeing those dates; NaN where it made none."""
    out = np.full((len(series), len(dates)), np.nan)
    rows = {name: i for i, name in enumerate(forecaster.series)}
    sources = []
    bt = forecaster.backtest or {}
    if bt.get("dates"):
        sources.append((pd.DatetimeIndex(pd.to_datetime(bt["dates"])), np.asarray(bt["forecast"], dtype=float)))
    ahead = future_dates(pd.Timestamp(forecaster.last_date), forecaster.freq, forecaster.range_max)
    sources.append((ahead, np.asarray(forecaster.forecast, dtype=float)))
    for known, values in sources:
        cols = known.get_indexer(dates)
        hit = cols >= 0
        for i, name in enumerate(series):
            r = rows.get(name)
            if r is not None and hit.any():
                out[i, hit] = np.where(np.isnan(out[i, hit]), values[r, cols[hit]], out[i, hit])
    return out


def evaluate(
    history: pd.DataFrame,
    candidate: SalesForecaster,
    candidate_ref: str,
    production: Any | None,
    production_ref: str | None,
    gate: Gate,
) -> Verdict:
    """Score the candidate, seasonal naive and (when there is one) the serving version; say if it may serve."""
    bt = candidate.backtest or {}
    if not bt.get("dates"):
        return Verdict(False, f"{candidate_ref} has no backtest to judge it by", candidate_ref, np.nan, np.nan)
    dates = pd.DatetimeIndex(pd.to_datetime(bt["dates"]))
    wide = history.pivot_table(index="series", columns="date", values="sales", aggfunc="sum")
    series = [s for s in candidate.series if s in wide.index]
    actual = wide.reindex(index=series, columns=dates).to_numpy(dtype=float)
    before = wide.loc[series, wide.columns < dates[0]].to_numpy(dtype=float)
    m = season_length(candidate.freq)
    naive = np.vstack([naive_from(row, m, len(dates)) for row in before])
    rows = [candidate.series.index(s) for s in series]
    cand = np.asarray(bt["forecast"], dtype=float)[rows]
    prod = None
    if isinstance(production, SalesForecaster):
        prod = out_of_sample(production, series, dates)
    scales = np.array([mase_scale(row[~np.isnan(row)], m) for row in before])
    usable = np.isfinite(actual) & np.isfinite(cand) & np.isfinite(naive)
    if prod is not None and (usable & np.isfinite(prod)).any():
        usable &= np.isfinite(prod)
    else:
        prod = None
    keep = usable.any(axis=1) & (scales > 0)
    window = (f"{dates[0]:%Y-%m-%d}", f"{dates[-1]:%Y-%m-%d}")

    def score(pred: np.ndarray) -> float:
        err = np.where(usable, np.abs(actual - pred), np.nan)[keep]
        return float(np.mean(np.nanmean(err, axis=1) / scales[keep])) if keep.any() else float("nan")

    c, n = score(cand), score(naive)
    p = score(prod) if prod is not None else None
    verdict = Verdict(True, "", candidate_ref, c, n, production_ref, p, window, int(keep.sum()))
    where = f"on {verdict.series} series, {window[0]}..{window[1]}"
    if not np.isfinite(c):
        verdict.passed, verdict.reason = False, f"{candidate_ref} could not be scored {where}"
    elif gate.beat_naive and not c < n:
        verdict.passed = False
        verdict.reason = f"{candidate_ref} does not beat seasonal naive {where}: MASE {c:.3f} vs {n:.3f}"
    elif p is not None and c > p * (1 + gate.margin):
        verdict.passed = False
        verdict.reason = (
            f"{candidate_ref} is worse than {production_ref} {where}: MASE {c:.3f} vs {p:.3f} "
            f"(more than the {gate.margin:.0%} margin)"
        )
    else:
        versus = (
            f"{production_ref} {p:.3f}"
            if p is not None
            else (
                f"{production_ref} made no forecast for the window"
                if production_ref
                else f"no {gate.alias} version yet"
            )
        )
        verdict.reason = f"{candidate_ref} passes {where}: MASE {c:.3f}, seasonal naive {n:.3f}, {versus}"
    return verdict
