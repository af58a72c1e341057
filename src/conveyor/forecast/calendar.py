"""The calendar a history lives on: regression features, holidays and closures over history and horizon.

Holidays are what makes a retail series wrong where a person looks first: New Year's Day and Christmas are
built in for daily and weekly data, a country's public holidays come from the `holidays` package
(`--country`), and a closure is a day of the year that had no sales (no row, or zero in every series) in
every year the history covers. Candidates fit on a history with holiday periods replaced by their seasonal
baseline and get each holiday's learned effect back on the horizon as a factor (`gaps.holiday_factors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from conveyor.errors import InvalidInput
from conveyor.forecast.frequency import season_length, split_freq

# Kind codes of `Calendar.kinds`; 0 is an ordinary period.
ORDINARY, NEW_YEAR, CHRISTMAS, HOLIDAY, CLOSED = 0, 1, 2, 3, 4
KIND_NAMES = {NEW_YEAR: "new_year", CHRISTMAS: "christmas", HOLIDAY: "holiday", CLOSED: "closed"}


@dataclass
class Calendar:
    """Features and holiday kinds for the history's `n_history` periods followed by the horizon's."""

    dates: pd.DatetimeIndex
    n_history: int
    x: np.ndarray
    kinds: np.ndarray
    country: str | None = None
    yearly: np.ndarray | None = None  # which columns of x are yearly Fourier terms
    year_periods: int = 0  # periods in a year (daily 365, weekly 52): a shorter cut fits without yearly terms

    @classmethod
    def build(
        cls,
        index: pd.DatetimeIndex,
        freq: str,
        steps: int,
        *,
        country: str | None = None,
        closed: np.ndarray | None = None,
    ) -> Calendar:
        """`closed`: a bool per history period with no sales anywhere (see `closed_periods`)."""
        dates = pd.date_range(index[0], periods=len(index) + steps, freq=freq)
        kinds = holiday_kinds(dates, freq, country)
        if closed is not None:
            kinds[_recurring_closures(dates, len(index), closed, freq)] = CLOSED
        x, yearly = _features(dates, freq)
        _, base = split_freq(freq)
        year = {"D": 365, "B": 260, "W": 52}.get(base, 0)
        return cls(dates=dates, n_history=len(index), x=x, kinds=kinds, country=country, yearly=yearly,
                   year_periods=year)  # fmt: skip

    @property
    def holidays(self) -> dict[str, int]:
        """How many history and horizon periods each kind marks, for the manifest."""
        return {
            name: int((self.kinds == code).sum()) for code, name in KIND_NAMES.items() if (self.kinds == code).any()
        }


class CalendarFeatures:
    """The name older pickles of a forecaster gave their regression features (before `Calendar`): serving never
    reads them, so this stand-in only lets such a version load."""


def holiday_kinds(dates: pd.DatetimeIndex, freq: str, country: str | None = None) -> np.ndarray:
    """A kind code per period: New Year, Christmas, another public holiday of `country`, else ordinary."""
    kinds = np.zeros(len(dates), dtype=np.int8)
    _, base = split_freq(freq)
    if base not in ("D", "B", "W"):
        return kinds  # months and quarters: seasonal terms already carry December and January
    days = _days_of(dates, base)
    if country:
        others = _country_days(country, days)
        kinds[_periods_holding(dates, base, days, others)] = HOLIDAY
    md = days.month * 100 + days.day
    kinds[_periods_holding(dates, base, days, days[md == 1225])] = CHRISTMAS
    kinds[_periods_holding(dates, base, days, days[md == 101])] = NEW_YEAR
    return kinds


def closed_periods(wide: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Periods of the grid where no series sold anything: no row at all, or only zeros."""
    sold = np.where(seen, wide, 0.0)
    return ~(sold > 0).any(axis=0)


def _recurring_closures(dates: pd.DatetimeIndex, n_history: int, closed: np.ndarray, freq: str) -> np.ndarray:
    """Days of the year closed in every year of the history that holds them (at least one), over the whole grid."""
    _, base = split_freq(freq)
    out = np.zeros(len(dates), dtype=bool)
    if base not in ("D", "B") or not closed.any():
        return out
    md = np.asarray(dates.month * 100 + dates.day)
    hist = pd.DataFrame({"md": md[:n_history], "closed": closed})
    by_day = hist.groupby("md")["closed"].agg(["all", "size"])
    # closed every time it came round: twice at least, or once for the two days shops close on
    recurring = by_day.index[by_day["all"] & ((by_day["size"] >= 2) | by_day.index.isin([101, 1225]))]
    out[np.isin(md, recurring)] = True
    return out


def _days_of(dates: pd.DatetimeIndex, base: str) -> pd.DatetimeIndex:
    if base != "W":
        return dates
    start = dates[0] - pd.Timedelta(days=6)
    return pd.date_range(start, dates[-1], freq="D")


def _periods_holding(dates: pd.DatetimeIndex, base: str, days: pd.DatetimeIndex, marked: Any) -> np.ndarray:
    """Positions in `dates` of the periods holding any of the `marked` days (a week is labelled by its last day)."""
    marked = pd.DatetimeIndex(marked)
    if base != "W":
        return np.flatnonzero(dates.isin(marked))
    pos = dates.searchsorted(marked)  # the first week label on or after the day
    return np.unique(pos[pos < len(dates)])


def _country_days(country: str, days: pd.DatetimeIndex) -> pd.DatetimeIndex:
    import holidays

    try:
        calendar = holidays.country_holidays(country.upper(), years=range(days[0].year, days[-1].year + 1))
    except NotImplementedError:
        raise InvalidInput(
            f"--country {country!r}: the holidays package knows no such country; use an ISO 3166 code such as "
            "US, GB, DE or EC"
        ) from None
    return pd.DatetimeIndex(sorted(pd.Timestamp(d) for d in calendar))


def _features(dates: pd.DatetimeIndex, freq: str) -> tuple[np.ndarray, np.ndarray]:
    """The seed's regression: constant, trend, seasonal dummies and, for sub-monthly data, yearly Fourier terms
    (order 4; a training cut shorter than a year leaves them out, see `candidates.Train.cols`), and which columns
    are the Fourier terms. Holidays are factors on top (`candidates.py`)."""
    from statsmodels.tsa.deterministic import CalendarFourier, DeterministicProcess

    _, base = split_freq(freq)
    sub_monthly = base in ("D", "B", "W")
    seasonal = base in ("D", "B") or season_length(freq) in (4, 12)
    terms = [CalendarFourier(freq="YE", order=4)] if sub_monthly else []
    process = DeterministicProcess(dates, constant=True, order=1, seasonal=seasonal, additional_terms=terms, drop=True)
    frame = process.in_sample()
    yearly = np.array([str(c).startswith(("sin(", "cos(")) for c in frame.columns])
    return frame.to_numpy(dtype=float), yearly
