"""The pipeline's data checks: schema, duplicates, gaps, freshness and enough history, naming the rows at fault.

Training on a history with a day missing for every series, or with a day loaded twice, gives a model that
looks fine and is wrong; these checks stop the run before `train` and say which rows to fix.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from conveyor.errors import InvalidInput
from conveyor.forecast import infer_frequency, season_length
from conveyor.sales_data import series_names, tidy_history, to_dates
from conveyor.workflow.settings import DataChecks

SHOWN = 5  # examples named per problem


class DataCheckFailed(InvalidInput):
    """The history fails a check; the message lists every problem found, each with the rows at fault."""


@dataclass
class HistoryReport:
    rows: int
    series: int
    first: str
    last: str
    freq: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_history(
    raw: pd.DataFrame,
    checks: DataChecks,
    *,
    date_col: str = "date",
    sales_col: str = "sales",
    series_cols: list[str] | None = None,
    now: dt.datetime | None = None,
    label: str = "history",
) -> tuple[pd.DataFrame, HistoryReport]:
    """The tidy history the forecaster trains on, or DataCheckFailed naming every problem and its rows.

    Rows are numbered from 1 in the order the source gave them (in a CSV file, row N is line N + 1).
    """
    try:  # schema and values: the columns exist, dates are dates, sales are numbers >= 0
        tidy = tidy_history(raw, date_col=date_col, sales_col=sales_col, series_cols=series_cols, label=label)
    except InvalidInput as exc:  # its hints name the CLI flags; a pipeline sets the same keyword arguments
        text = str(exc)
        for flag, keyword in (
            ("--date-col", "date_col"),
            ("--sales-col", "sales_col"),
            ("--series-cols", "series_cols"),
        ):
            text = text.replace(f"pass {flag}", f"set {keyword}")
        raise DataCheckFailed(f"{label} fails the schema check: {text}") from None
    raw = raw.reset_index(drop=True)
    dates = to_dates(raw[date_col], tidy.attrs["date_format"])  # the format tidy_history read them with
    names = series_names(raw, series_cols)
    names = names if isinstance(names, pd.Series) else pd.Series(names, index=raw.index)
    freq = infer_frequency(tidy["date"])
    problems = [
        *_duplicates(names, dates, _series_hint(raw, date_col, sales_col, series_cols)),
        *_gaps(names, dates, freq, checks),
        *_short_series(names, dates, freq, checks),
        *_stale(dates, freq, checks, now),
    ]
    if problems:
        raise DataCheckFailed(f"{label} fails {len(problems)} check(s): " + "; ".join(problems))
    report = HistoryReport(
        rows=len(raw),
        series=int(tidy["series"].nunique()),
        first=f"{dates.min():%Y-%m-%d}",
        last=f"{dates.max():%Y-%m-%d}",
        freq=freq,
    )
    return tidy, report


def _rows(positions: np.ndarray) -> str:
    shown = ", ".join(str(int(p) + 1) for p in positions[:SHOWN])
    more = f" and {len(positions) - SHOWN} more" if len(positions) > SHOWN else ""
    return f"row{'s' if len(positions) > 1 else ''} {shown}{more}"


def _series_hint(raw: pd.DataFrame, date_col: str, sales_col: str, series_cols: list[str] | None) -> str:
    """When no column names a series, repeated dates are most often several series in one table."""
    if series_cols or "series" in raw.columns:
        return ""
    others = [str(c) for c in raw.columns if c not in (date_col, sales_col)]
    if not others:
        return ""
    return f" (several series in one table? name their columns: series_cols={others!r})"


def _duplicates(names: pd.Series, dates: pd.Series, hint: str = "") -> list[str]:
    key = pd.DataFrame({"series": names.to_numpy(), "date": dates.to_numpy()})
    repeated = key.duplicated(keep=False).to_numpy()
    if not repeated.any():
        return []
    positions = np.flatnonzero(repeated)
    first = key.iloc[positions[0]]
    same = np.flatnonzero((key["series"] == first["series"]) & (key["date"] == first["date"]))
    where = f"{first['series']} on {first['date']:%Y-%m-%d} at {_rows(same)}"
    others = f"; in all {_rows(positions)}" if len(same) < len(positions) else ""
    return [f"duplicates: {len(positions)} rows repeat a (series, date): {where}{others}{hint}"]


def _calendar(dates: pd.Series, freq: str) -> pd.DatetimeIndex:
    """Every period from the first date to the last at the data's frequency."""
    return pd.date_range(dates.min(), dates.max(), freq=freq)


def _closed(calendar: pd.DatetimeIndex, closed_days: tuple[str, ...]) -> np.ndarray:
    mask = np.zeros(len(calendar), dtype=bool)
    month_day = calendar.strftime("%m-%d")
    iso = calendar.strftime("%Y-%m-%d")
    for day in closed_days:
        mask |= (month_day == day) if len(day) == 5 else (iso == day)
    return mask


def _gaps(names: pd.Series, dates: pd.Series, freq: str, checks: DataChecks) -> list[str]:
    calendar = _calendar(dates, freq)
    open_days = calendar[~_closed(calendar, checks.closed_days)]
    if len(open_days) == 0:
        return []
    codes, labels = pd.factorize(names, sort=True)
    col = open_days.get_indexer(dates)
    seen = np.zeros((len(labels), len(open_days)), dtype=bool)
    ok = col >= 0
    seen[codes[ok], col[ok]] = True
    starts = seen.argmax(axis=1)
    ends = len(open_days) - 1 - seen[:, ::-1].argmax(axis=1)
    span = np.arange(len(open_days))
    inside = (span >= starts[:, None]) & (span <= ends[:, None])
    missing = inside & ~seen
    problems = []
    everywhere = missing.all(axis=0) & inside.all(axis=0)
    if everywhere.any():
        days = open_days[everywhere]
        shown = ", ".join(f"{d:%Y-%m-%d}" for d in days[:SHOWN]) + (
            f" and {len(days) - SHOWN} more" if len(days) > SHOWN else ""
        )
        problems.append(
            f"gaps: {len(days)} date(s) have no sales for any series: {shown} (a partial load? if the business "
            "is closed then, list them in closed_days)"
        )
    counts = (missing & ~everywhere).sum(axis=1)
    over = np.flatnonzero(counts > checks.max_missing)
    if len(over):
        worst = over[np.argmax(counts[over])]
        days = open_days[missing[worst] & ~everywhere]
        problems.append(
            f"gaps: {len(over)} series lack dates inside their history (at most {checks.max_missing} allowed), "
            f"e.g. {labels[worst]} lacks {len(days)}: " + ", ".join(f"{d:%Y-%m-%d}" for d in days[:SHOWN])
        )
    return problems


def _short_series(names: pd.Series, dates: pd.Series, freq: str, checks: DataChecks) -> list[str]:
    need = checks.min_periods or 2 * season_length(freq)
    counts = pd.Series(dates.to_numpy()).groupby(names.to_numpy()).nunique()
    short = counts[counts < need]
    if short.empty:
        return []
    shown = ", ".join(f"{name} has {n}" for name, n in list(short.items())[:SHOWN])
    return [f"history: {len(short)} series have fewer than {need} periods (min_periods): {shown}"]


def _stale(dates: pd.Series, freq: str, checks: DataChecks, now: dt.datetime | None) -> list[str]:
    if checks.max_age is None:
        return []
    now = now or dt.datetime.now(dt.UTC)
    newest = dates.max().to_pydatetime().replace(tzinfo=dt.UTC)
    if now - newest <= checks.max_age:
        return []
    positions = np.flatnonzero((dates == dates.max()).to_numpy())
    return [
        f"freshness: the newest sales are from {newest:%Y-%m-%d} ({_rows(positions)}), "
        f"{(now - newest).days} days before {now:%Y-%m-%d}; max_age is {_age(checks.max_age)}"
    ]


def _age(age: dt.timedelta) -> str:
    hours = age.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 24 and hours % 24 == 0 else f"{hours:g} hours"
