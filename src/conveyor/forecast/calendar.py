"""Calendar features for the seed's regression: trend, seasonal dummies, yearly Fourier terms, New Year."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from conveyor.forecast.frequency import season_length, split_freq


@dataclass
class CalendarFeatures:
    """Constant, trend, seasonal dummies, yearly Fourier terms (order 4) and a New Year flag over a date grid."""

    process: Any
    new_year: bool

    @classmethod
    def build(cls, index: pd.DatetimeIndex, freq: str) -> CalendarFeatures:
        from statsmodels.tsa.deterministic import CalendarFourier, DeterministicProcess

        _, base = split_freq(freq)
        sub_monthly = base in ("D", "B", "W")
        seasonal = base in ("D", "B") or season_length(freq) in (4, 12)
        terms = [CalendarFourier(freq="YE", order=4)] if sub_monthly else []
        process = DeterministicProcess(
            index, constant=True, order=1, seasonal=seasonal, additional_terms=terms, drop=True
        )
        return cls(process=process, new_year=sub_monthly)

    def in_sample(self) -> np.ndarray:
        return self._with_new_year(self.process.in_sample())

    def out_of_sample(self, steps: int) -> np.ndarray:
        return self._with_new_year(self.process.out_of_sample(steps))

    def _with_new_year(self, frame: pd.DataFrame) -> np.ndarray:
        x = frame.to_numpy(dtype=float)
        if not self.new_year:
            return x
        dates = pd.DatetimeIndex(frame.index)
        # A daily row is New Year's Day; a weekly row (labelled by its last day) is the week holding it.
        weekly = len(dates) > 1 and (dates[1] - dates[0]).days == 7
        flag = dates.day_of_year <= 7 if weekly else (dates.month == 1) & (dates.day == 1)
        return np.column_stack([x, np.asarray(flag, dtype=float)])
