"""What a person reads about a forecaster's accuracy: after `train sales` and from `conveyor evaluate`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from conveyor.forecast.forecaster import TOTAL, SalesForecaster
from conveyor.forecast.frequency import future_dates, season_length
from conveyor.forecast.metrics import mase_scale, naive_from, scores


def cv_summary(summary: dict[str, Any]) -> list[str]:
    """Lines: each candidate's and the chosen method's mean cross-validated MASE and sMAPE, band coverage."""
    series = {k: v for k, v in summary.get("series", {}).items() if k != TOTAL or summary.get("reconciliation") is None}
    if not series or "cv" not in next(iter(series.values())):
        return []
    rows: dict[str, list[tuple[float, float]]] = {}
    for m in series.values():
        for name, got in m.get("cv", {}).items():
            if name.startswith("ensemble(") or name == "bottom_up":
                continue  # the chosen row holds them
            rows.setdefault(name, []).append((got["mase"], got["smape"]))
        rows.setdefault("chosen per series", []).append((m.get("mase", np.nan), m.get("smape", np.nan)))
    windows, h = summary.get("windows", 0), summary.get("window_periods", summary.get("holdout", 0))
    out = [f"cross-validation: {windows} windows of {h} periods ({summary.get('freq')}), {len(series)} series"]
    out.append(f"  {'method':<20} {'series':>6} {'MASE':>7} {'sMAPE':>7}")
    for name, vals in sorted(rows.items(), key=lambda kv: (kv[0] != "chosen per series", _mean(kv[1], 0))):
        out.append(f"  {name:<20} {len(vals):>6} {_mean(vals, 0):>7.3f} {_mean(vals, 1):>6.1f}%")
    coverage = summary.get("coverage") or {}
    if coverage.get("95") is not None:
        out.append(
            f"bands: the 80% band held {coverage['80']:.1%} and the 95% band {coverage['95']:.1%} of the points of "
            "a window they were not calibrated on"
        )
    return out


def per_series_lines(summary: dict[str, Any]) -> list[str]:
    """One line per series: its method, cross-validated MASE against seasonal naive's, sMAPE, band coverage."""
    out = [f"  {'series':<24} {'method':<34} {'MASE':>7} {'naive':>7} {'sMAPE':>7} {'80%':>6} {'95%':>6}"]
    for name, m in summary.get("series", {}).items():
        cov = [m.get("coverage80"), m.get("coverage95")]
        shown = [f"{c:>6.0%}" if c is not None else f"{'-':>6}" for c in cov]
        out.append(
            f"  {name[:24]:<24} {m['method'][:34]:<34} {_num(m.get('mase')):>7} {_num(m.get('naive_mase')):>7} "
            f"{_num(m.get('smape'), '{:.1f}%'):>7} {shown[0]} {shown[1]}"
        )
    return out


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if value is None or not np.isfinite(value) else fmt.format(value)


def ahead_of_training(forecaster: SalesForecaster, history: pd.DataFrame) -> dict[str, Any] | None:
    """The stored forecasts scored on the history's dates after the forecaster's last date (what it could not see):
    per series and overall MASE and sMAPE, seasonal naive's from the same cut, and band coverage."""
    last = pd.Timestamp(forecaster.last_date)
    ahead = pd.DatetimeIndex(future_dates(last, forecaster.freq, forecaster.range_max))
    new = history[history["date"] > last]
    if new.empty:
        return None
    m = season_length(forecaster.freq)
    per_series: dict[str, dict[str, float]] = {}
    inside = {"80": [0, 0], "95": [0, 0]}
    for name, rows in new.groupby("series"):
        if name not in forecaster.series:
            continue
        i = forecaster.series.index(name)
        cols = ahead.get_indexer(pd.DatetimeIndex(rows["date"]))
        keep = cols >= 0
        if not keep.any():
            continue
        actual = rows["sales"].to_numpy(dtype=float)[keep]
        cols = cols[keep]
        past = history[(history["series"] == name) & (history["date"] <= last)].set_index("date")["sales"]
        grid = past.reindex(pd.date_range(past.index.min(), last, freq=forecaster.freq)).to_numpy(dtype=float)
        scale = mase_scale(grid, m)
        naive = naive_from(grid, m, forecaster.range_max)[cols]
        got = scores(actual, forecaster.forecast[i, cols], scale)
        base = scores(actual, naive, scale)
        per_series[name] = {**got, "naive_mase": base["mase"], "naive_smape": base["smape"], "points": len(cols)}
        for level, (low, up) in {"95": (forecaster.lower, forecaster.upper),
                                 "80": (forecaster.lower80, forecaster.upper80)}.items():  # fmt: skip
            if low is not None:
                inside[level][0] += int(((actual >= low[i, cols]) & (actual <= up[i, cols])).sum())
                inside[level][1] += len(cols)
    if not per_series:
        return None
    keys = ("mase", "smape", "naive_mase", "naive_smape")
    overall = {k: float(np.nanmean([s[k] for s in per_series.values()])) for k in keys}
    coverage = {k: (v[0] / v[1] if v[1] else None) for k, v in inside.items()}
    return {"series": per_series, "overall": overall, "coverage": coverage,
            "dates": [str(new["date"].min().date()), str(new["date"].max().date())]}  # fmt: skip


def ahead_lines(result: dict[str, Any]) -> list[str]:
    o, c = result["overall"], result["coverage"]
    first, last = result["dates"]
    lines = [
        f"ahead of training ({first} .. {last}, {len(result['series'])} series): MASE {o['mase']:.3f} vs "
        f"{o['naive_mase']:.3f} for seasonal naive, sMAPE {o['smape']:.1f}% vs {o['naive_smape']:.1f}%"
    ]
    levels = [level for level in ("80", "95") if c.get(level) is not None]  # older versions: only the 95% band
    held = [f"the {level}% band{' held' if i == 0 else ''} {c[level]:.1%}" for i, level in enumerate(levels)]
    if held:
        lines.append(f"bands there: {', '.join(held)} of the points")
    return lines


def _mean(vals: list[tuple[float, float]], i: int) -> float:
    arr = np.array([v[i] for v in vals], dtype=float)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")
