"""The backtest chart: history, holdout, backtest and future forecasts with their bands, per series."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from conveyor.errors import InvalidInput
from conveyor.forecast.forecaster import TOTAL, SalesForecaster
from conveyor.forecast.frequency import season_length


def plot_backtest(
    forecaster: SalesForecaster,
    history: pd.DataFrame,
    path: str | Path,
    series: str | Sequence[str] | None = None,
    max_series: int = 6,
) -> Path:
    """Write a PNG per-series panel: history tail, holdout actuals, backtest and future forecasts with bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _plot_series(forecaster, series, max_series)
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 2.8 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        _plot_one(ax, forecaster, history, name)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_series(forecaster: SalesForecaster, series: str | Sequence[str] | None, max_series: int) -> list[str]:
    if series is None:
        ordered = sorted(forecaster.series, key=lambda s: s != TOTAL)
        return ordered[:max_series]
    names = [series] if isinstance(series, str) else list(series)
    unknown = [s for s in names if s not in forecaster.series]
    if unknown:
        raise InvalidInput(f"unknown series {unknown}; known: {forecaster.series[:8]}")
    return names[:max_series]


def _plot_one(ax: Any, forecaster: SalesForecaster, history: pd.DataFrame, name: str) -> None:
    i = forecaster.series.index(name)
    bt = forecaster.backtest or {"dates": [], "forecast": np.empty((len(forecaster.series), 0))}
    bt_dates = pd.to_datetime(bt["dates"])
    tail = max(len(bt_dates) * 3, 8 * max(season_length(forecaster.freq), 1))
    own = history.loc[history["series"] == name].sort_values("date").tail(tail)
    ax.plot(own["date"], own["sales"], color="0.35", lw=0.8, label="history")
    shown = np.isfinite(bt["forecast"][i])
    if shown.any():
        ax.axvspan(bt_dates[shown][0], bt_dates[-1], color="0.92", label="holdout")
        ax.plot(bt_dates[shown], bt["forecast"][i][shown], color="tab:orange", lw=1, label="backtest")
        ax.fill_between(bt_dates[shown], bt["lower"][i][shown], bt["upper"][i][shown], color="tab:orange", alpha=0.2)
    future = pd.to_datetime(forecaster.dates)
    ax.plot(future, forecaster.forecast[i], color="tab:blue", lw=1, label="forecast")
    ax.fill_between(future, forecaster.lower[i], forecaster.upper[i], color="tab:blue", alpha=0.2)
    m = forecaster.metrics.get(name, {})
    ax.set_title(f"{name} — {forecaster.methods[i]}, MASE {_fmt(m.get('mase'))} (naive {_fmt(m.get('naive_mase'))})")
    ax.set_xlabel("date")
    ax.set_ylabel("sales")
    ax.legend(loc="upper left", fontsize=7, ncol=5)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.2f}"
