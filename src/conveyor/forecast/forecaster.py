"""The trained forecaster: forecasts precomputed per series, served by slicing arrays."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from conveyor.errors import InvalidInput
from conveyor.forecast.calendar import Calendar
from conveyor.forecast.frequency import future_dates, iso_dates
from conveyor.forecast.metrics import nanmean
from conveyor.signature import Field, Signature

try:
    from pandas.api.internals import create_dataframe_from_blocks as _from_blocks
except ImportError:  # pandas < 2.2
    _from_blocks = None

TOTAL = "total"
DEFAULT_RANGE_MAX = 365
OUTPUT_COLUMNS = ("series", "date", "forecast", "lower", "upper")
_OUTPUT_INDEX = pd.Index(OUTPUT_COLUMNS)
_PLACEMENT = np.arange(len(OUTPUT_COLUMNS))
_SMALL_BATCH = 8
_LIST_CACHE_SERIES = 2048


@dataclass(eq=False)
class SalesForecaster:
    """Per-series forecasts up to `range_max`, served by slicing precomputed arrays.

    `forecast`, `lower` and `upper` have shape (len(series), range_max). `models` holds each series' fitted
    model (statsmodels results, scikit-learn regression, or the last season for seasonal naive) so a
    forecaster can be inspected after training; `predict` never calls them, so they (and `features`) are not
    pickled: loading a forecaster then needs neither statsmodels, scikit-learn nor scipy.
    """

    freq: str
    range_max: int
    series: list[str]
    methods: list[str]
    forecast: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    last_date: str
    interval: float = 0.95
    models: dict[str, Any] = field(default_factory=dict)
    features: Calendar | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    backtest: dict[str, Any] | None = None
    holdout: int = 0
    fingerprint: str = ""
    train_seconds: float = 0.0
    # For people rather than the hot path (the forecast page, `evaluate`): the 80% band and the history's last
    # periods (NaN where a period has no sales row). Versions trained before they existed load with None.
    lower80: np.ndarray | None = None
    upper80: np.ndarray | None = None
    tail_dates: list[str] | None = None
    tail: np.ndarray | None = None
    # How it was trained: fill, country, candidates, CV windows, horizon cap, holidays, band coverage, warnings.
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._prepare()

    def _prepare(self) -> None:
        """Build the lookup tables `predict` slices from (after training and after unpickling)."""
        self._rows = {name: i for i, name in enumerate(self.series)}
        self._index = pd.Index(self.series, dtype=object)
        self._names = np.array(self.series, dtype=object)
        self._dates = iso_dates(future_dates(pd.Timestamp(self.last_date), self.freq, self.range_max))
        self._default_series = TOTAL if TOTAL in self._rows else self.series[0]
        self._lists: dict[int, tuple[list[float], list[float], list[float]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_") and k not in ("models", "features")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"models": {}, "features": None, "training": {}, **state})
        self._prepare()

    @property
    def dates(self) -> list[str]:
        """ISO dates of the forecast horizon, 1..range_max periods after the last history date."""
        return list(self._dates)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row per input `{series, range}`: the next `range` dates with forecasts and interval bounds."""
        return _frame(self._outputs(frame, len(frame)))

    def predict_columns(self, columns: Mapping[str, Any], rows: int) -> dict[str, np.ndarray]:
        """`predict` without a DataFrame on either side (a single request's fixed cost)."""
        return dict(zip(OUTPUT_COLUMNS, self._outputs(columns, rows), strict=True))

    def _outputs(self, columns: pd.DataFrame | Mapping[str, Any], n: int) -> np.ndarray:
        """The (output columns x rows) object block both `predict` and `predict_columns` answer with."""
        rows = self._lookup(_column(columns, "series", self._default_series, n))
        steps = self._steps(_column(columns, "range", 1, n))
        lists = [self._series_lists(i) for i in rows.tolist()]
        dates = self._dates
        out = np.empty((len(OUTPUT_COLUMNS), n), dtype=object)
        out[0] = self._names[rows]
        out[1] = _objects((dates[:k] for k in steps), n)
        for col in (2, 3, 4):
            out[col] = _objects((row[col - 2][:k] for row, k in zip(lists, steps, strict=True)), n)
        return out

    def _series_lists(self, i: int) -> tuple[list[float], list[float], list[float]]:
        """Forecast, lower and upper of series `i` as Python lists: slicing a list is 3x faster than
        `ndarray.tolist()`. The cache is cleared when it holds too many series, bounding its memory."""
        cached = self._lists.get(i)
        if cached is None:
            if len(self._lists) >= _LIST_CACHE_SERIES:
                self._lists.clear()
            cached = self._lists[i] = (self.forecast[i].tolist(), self.lower[i].tolist(), self.upper[i].tolist())
        return cached

    def _lookup(self, names: Any) -> np.ndarray:
        if len(names) <= _SMALL_BATCH:
            try:
                return np.array([self._rows[s] for s in names], dtype=np.intp)
            except (KeyError, TypeError):
                pass
        rows = self._index.get_indexer(np.asarray(names, dtype=object))
        if (rows < 0).any():
            bad = np.asarray(names, dtype=object)[rows < 0][0]
            raise InvalidInput(f"unknown series {bad!r}; known: {self.series[:8]}")
        return rows

    def _steps(self, ranges: Any) -> list[int]:
        if isinstance(ranges, np.ndarray | pd.api.extensions.ExtensionArray) and ranges.dtype.kind not in "iu":
            ranges = np.asarray(ranges, dtype=np.int64)
        steps = ranges.tolist() if hasattr(ranges, "tolist") else [int(r) for r in ranges]
        low, high = min(steps, default=1), max(steps, default=1)
        if low < 1 or high > self.range_max:
            bad = low if low < 1 else high
            raise InvalidInput(f"'range' must be an integer between 1 and {self.range_max}, got {bad}")
        return steps

    def detail(self, series: str | None = None, steps: int | None = None) -> dict[str, Any]:
        """One series for a person to look at: its recent history, the forecast with its 80% and 95% bands, the
        method and its scores. Not on the hot path (`predict` is): it builds lists each call."""
        name = self._default_series if series is None else series
        i = int(self._lookup([name])[0])
        k = self._steps([self.range_max if steps is None else steps])[0]

        def values(arr: np.ndarray | None) -> list[float | None] | None:
            return None if arr is None else _json_safe([float(v) for v in arr[i, :k]])

        history = None
        if self.tail is not None and self.tail_dates is not None:
            history = {"date": list(self.tail_dates), "sales": _json_safe([float(v) for v in self.tail[i]])}
        return {
            "series": name,
            "freq": self.freq,
            "last_date": self.last_date,
            "method": self.methods[i],
            "history": history,
            "forecast": {
                "date": self._dates[:k],
                "forecast": values(self.forecast),
                "lower95": values(self.lower),
                "upper95": values(self.upper),
                "lower80": values(self.lower80),
                "upper80": values(self.upper80),
            },
            "interval": self.interval,
            "metrics": _json_safe(self.metrics.get(name, {})),
        }

    def signature(self) -> Signature:
        """Inputs `series` (one of the trained series, default "total") and `range` (1..range_max, default 1)."""
        return Signature(
            inputs=(
                Field(
                    "series",
                    "str",
                    default=self._default_series,
                    required=False,
                    choices=tuple(self.series),
                    description="which series to forecast",
                ),
                Field(
                    "range",
                    "int",
                    default=1,
                    required=False,
                    min=1,
                    max=self.range_max,
                    description=f"forecast horizon in periods ({self.freq})",
                ),
            ),
            outputs=(
                Field("series", "str"),
                Field("date", "object", items="str", description="ISO dates of the horizon"),
                Field("forecast", "object", items="float", description="point forecasts, one per date"),
                Field("lower", "object", items="float", description=f"lower bound of the {self.interval:.0%} interval"),
                Field("upper", "object", items="float", description=f"upper bound of the {self.interval:.0%} interval"),
            ),
        )

    def summary(self) -> dict[str, Any]:
        """JSON-ready metrics for the manifest: per series and overall, for the chosen model and seasonal naive."""
        keys = ("mape", "smape", "mase", "naive_mape", "naive_smape", "naive_mase")
        overall = {k: nanmean([m.get(k, np.nan) for m in self.metrics.values()]) for k in keys}
        scored = [m for m in self.metrics.values() if np.isfinite(m.get("mase", np.nan))]
        beats = sum(1 for m in scored if m["mase"] < m["naive_mase"] - 1e-12)
        return _json_safe(
            {
                "freq": self.freq,
                "range_max": self.range_max,
                "interval": self.interval,
                "holdout": self.holdout,
                "n_series": len(self.series),
                "last_date": self.last_date,
                "fingerprint": self.fingerprint,
                "train_seconds": self.train_seconds,
                "methods": dict(Counter(self.methods)),
                **self.training,
                "overall": overall,
                "beats_naive": beats,
                "beats_naive_text": f"beats seasonal naive on {beats} of {len(scored)} series",
                "series": self.metrics,
            }
        )


def _column(columns: pd.DataFrame | Mapping[str, Any], name: str, default: Any, n: int) -> Any:
    if not isinstance(columns, pd.DataFrame):
        return columns[name] if name in columns else [default] * n
    if name not in columns.columns:
        return [default] * n
    loc = columns.columns.get_loc(name)
    if isinstance(loc, int):
        try:
            # Private but stable since pandas 1.x: skips building a Series (~15 us a column on the hot path).
            return columns._get_column_array(loc)
        except AttributeError:
            pass
    return columns[name].to_numpy()


def _objects(values: Iterable[Any], n: int) -> np.ndarray:
    return np.fromiter(values, dtype=object, count=n)


def _frame(out: np.ndarray) -> pd.DataFrame:
    """A DataFrame over one (columns x rows) object block, without pandas' per-column checks and copies.

    Building a 1-row frame this way takes ~15 us against ~200 us for `DataFrame(dict)`; predict runs once
    per HTTP request, so that difference is most of its cost.
    """
    index = pd.RangeIndex(out.shape[1])
    if _from_blocks is None:
        return pd.DataFrame(dict(zip(OUTPUT_COLUMNS, out, strict=True)), index=index)
    return _from_blocks([(out, _PLACEMENT)], index=index, columns=_OUTPUT_INDEX)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
