"""A history's frequency and season, and the dates that follow it."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from conveyor.errors import InvalidInput

_SEASONS = {"D": 7, "B": 5, "W": 52, "MS": 12, "ME": 12, "M": 12, "BMS": 12, "BME": 12, "QS": 4, "QE": 4, "Q": 4}


def infer_frequency(dates: Iterable[Any]) -> str:
    """The pandas frequency alias of a history's dates ("D", "W-SUN", "MS"...).

    Daily or weekly dates with a few missing periods (shops closed on Christmas) are accepted as
    daily/weekly; the missing periods then count as zero sales.
    """
    if not isinstance(dates, pd.Series | pd.Index | np.ndarray):
        dates = list(dates)
    index = pd.DatetimeIndex(pd.to_datetime(dates)).unique().sort_values()
    if len(index) < 3:
        raise InvalidInput(f"history has {len(index)} distinct date(s): at least 3 are needed to infer a frequency")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        freq = pd.infer_freq(index)
    if freq is not None:
        return str(getattr(freq, "freqstr", freq))
    return _frequency_with_gaps(index)


def _frequency_with_gaps(index: pd.DatetimeIndex) -> str:
    if index.is_month_start.all():
        return "MS"
    if index.is_month_end.all():
        return "ME"
    gaps = np.diff(index.as_unit("s").asi8) / 86400.0
    step = gaps.min()
    regular = step in (1.0, 7.0) and np.all(gaps % step == 0) and np.mean(gaps == step) >= 0.9
    if regular and (index == index.normalize()).all():
        return "D" if step == 1.0 else f"W-{index[0].day_name()[:3].upper()}"
    shown = ", ".join(f"{g:g}" for g in np.unique(gaps)[:5])
    raise InvalidInput(
        f"history dates are irregular (gaps of {shown} days): cannot infer a frequency; "
        "resample the history to daily, weekly or monthly totals"
    )


def season_length(freq: str) -> int:
    """Observations per season the frequency implies: D -> 7 (weekly), W -> 52, M -> 12, Q -> 4; else 1."""
    mult, base = split_freq(freq)
    return _SEASONS.get(base, 1) if mult == 1 else 1


def split_freq(freq: str) -> tuple[int, str]:
    match = re.match(r"^(\d*)([A-Za-z]+)", freq)
    if not match:
        return 1, freq
    return int(match.group(1) or 1), match.group(2)


def future_dates(last: pd.Timestamp, freq: str, steps: int) -> pd.DatetimeIndex:
    return pd.date_range(last, periods=steps + 1, freq=freq)[1:]


def iso_dates(dates: pd.DatetimeIndex) -> list[str]:
    if (dates == dates.normalize()).all():
        return list(dates.strftime("%Y-%m-%d"))
    return [d.isoformat() for d in dates]
