"""Train the sales forecaster and register it: one path for `conveyor train sales` and the pipeline's train task."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from conveyor.forecast import SalesForecaster, infer_frequency, plot_backtest, season_length, train_sales
from conveyor.store import ModelStore, Ref


@dataclass
class Trained:
    ref: Ref
    forecaster: SalesForecaster
    summary: dict[str, Any]
    seconds: float

    def warnings(self) -> list[str]:
        return list(self.summary.get("warnings") or [])

    def line(self) -> str:
        """What a person reads after training: the version, its error and seasonal naive's."""
        overall = self.summary["overall"]
        return (
            f"trained {self.ref} in {self.seconds:.1f}s ({self.forecaster.freq}, horizon up to "
            f"{self.forecaster.range_max}): MASE {overall['mase']:.3f} vs {overall['naive_mase']:.3f} for seasonal "
            f"naive, sMAPE {overall['smape']:.1f}%; {self.summary['beats_naive_text']}"
        )


def default_horizon(history: pd.DataFrame) -> int:
    """A year of days (the seed's range), two years of weeks, months or quarters."""
    season = season_length(infer_frequency(history["date"]))
    return {7: 365, 52: 104, 12: 24, 4: 8}.get(season, 365)


def train_and_register(
    history: pd.DataFrame,
    store: ModelStore,
    name: str,
    *,
    range_max: int | None = None,
    holdout: int | None = None,
    progress: bool = False,
    plot_path: Path | None = None,
    extra: Mapping[str, Any] | None = None,
    **options: Any,
) -> Trained:
    """Fit on the tidy history and add the forecaster as the next version of `name`, with its backtest plot.

    `options` go to `train_sales` (fill, country, candidates, n_jobs)."""
    started = time.perf_counter()
    forecaster = train_sales(
        history, range_max=range_max or default_horizon(history), holdout=holdout, progress=progress, **options
    )
    seconds = time.perf_counter() - started
    summary = forecaster.summary()
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_backtest(forecaster, history, Path(tmp, "backtest.png"))
        if plot_path is not None:
            plot_path.write_bytes(png.read_bytes())
        ref = store.add(
            name,
            forecaster,
            flavor="forecaster",
            metrics=summary,
            extra={"data_fingerprint": forecaster.fingerprint, "training_seconds": round(seconds, 2), **(extra or {})},
            extra_files={"backtest.png": png},
        )
    return Trained(ref, forecaster, summary, seconds)
