"""Pure-pandas steps of batch forecasting: tidy a history chunk, fit a shard of series, sum forecasts.

Beam calls these; they know nothing of Beam, so they are tested and benchmarked on their own.
Bounds of an aggregate are the sums of the series' bounds: exact for perfectly correlated errors and
otherwise wider than the true interval — a cautious band, never a falsely narrow one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from conveyor.errors import InvalidInput
from conveyor.model import Model
from conveyor.sales_data import to_dates

SERIES_COLUMNS = ("series", "date", "forecast", "lower", "upper", "method")
MIN_DATES = 3  # what inferring a frequency takes


@dataclass(frozen=True)
class HistorySpec:
    """How to read series out of raw history rows; `date_format` (strftime or ISO8601) is settled once per job,
    on the driver, so every chunk reads its dates alike."""

    date_col: str = "date"
    sales_col: str = "sales"
    series_cols: tuple[str, ...] = ()
    date_format: str | None = None

    def required(self) -> list[str]:
        return [self.date_col, self.sales_col, *self.series_cols]

    def check(self, names: Sequence[str]) -> None:
        missing = [c for c in self.required() if c not in names]
        if missing:
            raise InvalidInput(f"history lacks column(s) {missing}; it has {list(names)}")


def tidy(frame: pd.DataFrame, spec: HistorySpec) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """`series, date, sales` (+ the series columns as text) and the rows refused, with their reasons.

    Refused rows with a readable date and series are kept with sales NaN (a missing period, see `train_sales`)."""
    dates = to_dates(frame[spec.date_col], spec.date_format, spec.date_col)
    sales = pd.to_numeric(frame[spec.sales_col], errors="coerce")
    reasons = pd.Series(None, index=frame.index, dtype=object)
    in_format = f" in format {spec.date_format}" if spec.date_format else ""
    reasons[dates.isna()] = f"{spec.date_col!r} must be a date{in_format}"
    reasons[sales.isna() & reasons.isna()] = f"{spec.sales_col!r} must be a number"
    reasons[(sales < 0) & reasons.isna()] = f"{spec.sales_col!r} must be >= 0"
    if spec.series_cols:
        parts = {c: frame[c].astype(str) for c in spec.series_cols}
        for c in spec.series_cols:
            reasons[frame[c].isna() & reasons.isna()] = f"missing value for series column {c!r}"
        names = parts[spec.series_cols[0]]
        for c in spec.series_cols[1:]:
            names = names + "/" + parts[c]
    elif "series" in frame.columns:
        parts = {}
        names = frame["series"].astype(str)
    else:
        parts = {}
        names = pd.Series("total", index=frame.index)
    ok = reasons.isna().to_numpy()
    # A refused row whose date and series are readable stays on its series' calendar as a missing period: never
    # zero sales, and a history whose last rows were refused still ends on their dates.
    named = frame[list(spec.series_cols)].notna().all(axis=1) if spec.series_cols else pd.Series(True, frame.index)
    placed = ok | (dates.notna() & named).to_numpy()
    values = sales.astype(float).where(ok)
    out = pd.DataFrame({"series": names, "date": dates.astype("datetime64[ns]"), "sales": values})
    for c, v in parts.items():
        out[c] = v
    rejects = [(int(i), str(r)) for i, r in reasons[~ok].items()]
    return out[placed], rejects


def shard_of(series: pd.Series, shards: int) -> np.ndarray:
    """A stable shard number per series name (the same in every process, unlike `hash`)."""
    return (pd.util.hash_array(series.to_numpy(dtype=object)) % np.uint64(shards)).astype(np.int64)


def fit_shard(
    history: pd.DataFrame, steps: int, series_cols: Sequence[str]
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Fit every series of the shard (best of the forecaster's candidates by backtest) and forecast `steps`.

    Returns the long forecast frame (one row per series and date) and the series that could not be fitted.
    """
    from conveyor.forecast import train_sales

    # Fitted together, a short series would borrow the shard's frequency and be forecast from one or two
    # dates, or not, depending on its shard: the rule is per series, so --shards never changes the answer.
    dates = history.dropna(subset=["sales"]).groupby("series", sort=True)["date"].nunique()
    dates = dates.reindex(history["series"].unique(), fill_value=0).sort_index()
    short = dates[dates < MIN_DATES]
    failed = [(str(name), f"{n} date(s) of history: at least {MIN_DATES} are needed") for name, n in short.items()]
    history = history[~history["series"].isin(short.index)]
    if history.empty:
        return pd.DataFrame(columns=list(SERIES_COLUMNS)), failed
    frames = []
    try:
        frames.append(_forecast_frame(train_sales(history[["date", "series", "sales"]], range_max=steps, cap=False)))
    except InvalidInput:
        # One odd series (too short, irregular dates) must not sink the shard: fit them one by one.
        for name, own in history.groupby("series", sort=True):
            try:
                frames.append(
                    _forecast_frame(train_sales(own[["date", "series", "sales"]], range_max=steps, cap=False))
                )
            except InvalidInput as exc:
                failed.append((str(name), str(exc)))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SERIES_COLUMNS))
    if series_cols and len(out):
        labels = history.drop_duplicates("series").set_index("series")[list(series_cols)]
        out = out.join(labels, on="series")
    return out, failed


def stored_forecasts(
    model: Model, history: pd.DataFrame, steps: int, series_cols: Sequence[str]
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Forecasts of the shard's series by a stored forecaster; series it does not know are returned as failed."""
    from conveyor.validation import split

    names = pd.Series(history["series"].unique())
    result = split(model.signature, pd.DataFrame({"series": names, "range": steps}))
    failed = [(str(names[i]), reason) for i, reason in result.rejects]
    if result.inputs is None:
        return pd.DataFrame(columns=list(SERIES_COLUMNS)), failed
    predicted = model.predict(result.inputs)
    long = predicted[["series", "date", "forecast", "lower", "upper"]].explode(["date", "forecast", "lower", "upper"])
    out = long.astype({"forecast": float, "lower": float, "upper": float}).assign(method="stored")
    out = out.reset_index(drop=True)
    if series_cols and len(out):
        labels = history.drop_duplicates("series").set_index("series")[list(series_cols)]
        out = out.join(labels, on="series")
    return out, failed


def _forecast_frame(forecaster) -> pd.DataFrame:
    n, steps = forecaster.forecast.shape
    return pd.DataFrame(
        {
            "series": np.repeat(np.asarray(forecaster.series, dtype=object), steps),
            "date": np.tile(np.asarray(forecaster.dates, dtype=object), n),
            "forecast": forecaster.forecast.ravel(),
            "lower": forecaster.lower.ravel(),
            "upper": forecaster.upper.ravel(),
            "method": np.repeat(np.asarray(forecaster.methods, dtype=object), steps),
        }
    )


def partial_sums(forecasts: pd.DataFrame, column: str) -> list[tuple[tuple[str, str], tuple[float, float, float]]]:
    """Per (column value, date): the shard's sums of forecast, lower and upper, for CombinePerKey."""
    sums = forecasts.groupby([column, "date"], sort=True)[["forecast", "lower", "upper"]].sum()
    return [((str(k[0]), str(k[1])), tuple(map(float, v))) for k, v in zip(sums.index, sums.to_numpy(), strict=True)]


def aggregate_frame(
    totals: Sequence[tuple[tuple[str, str], tuple[float, float, float]]], column: str, series_cols: Sequence[str]
) -> pd.DataFrame:
    """Aggregate rows shaped like series rows: series `COLUMN=VALUE`, method `sum`."""
    rows = sorted(totals)
    frame = pd.DataFrame(
        {
            "series": [f"{column}={k[0]}" for k, _ in rows],
            "date": [k[1] for k, _ in rows],
            "forecast": [v[0] for _, v in rows],
            "lower": [v[1] for _, v in rows],
            "upper": [v[2] for _, v in rows],
            "method": "sum",
        }
    )
    for c in series_cols:
        frame[c] = [k[0] for k, _ in rows] if c == column else None
    return frame
