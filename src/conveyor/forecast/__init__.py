"""The sales forecaster: a model chosen per series by backtest, its forecasts precomputed for serving.

Training (`train.py`) lays the history on its calendar (`calendar.py`: holidays, closures; `gaps.py`: missing
periods stay missing), cross-validates the candidates (`candidates.py`) on rolling origins and keeps the best or
an ensemble per series (`selection.py`), sums the series into the total (`reconcile.py`), calibrates the bands on
the cross-validated errors (`intervals.py`) and stores forecasts and bands up to `range_max` as arrays in a
`SalesForecaster` (`forecaster.py`), whose `predict` only slices them: the HTTP hot path never calls a model
library.

Pickles written before this package existed name `conveyor.forecast.SalesForecaster`; the name below keeps them
loading.
"""

from conveyor.forecast.calendar import Calendar, CalendarFeatures
from conveyor.forecast.candidates import CANDIDATES, METHODS
from conveyor.forecast.forecaster import DEFAULT_RANGE_MAX, OUTPUT_COLUMNS, TOTAL, SalesForecaster
from conveyor.forecast.frequency import future_dates, infer_frequency, season_length
from conveyor.forecast.metrics import mape, mase, mase_scale, smape
from conveyor.forecast.plot import plot_backtest
from conveyor.forecast.results import wrap_results
from conveyor.forecast.train import fingerprint, train_sales

__all__ = [
    "CANDIDATES",
    "DEFAULT_RANGE_MAX",
    "METHODS",
    "OUTPUT_COLUMNS",
    "TOTAL",
    "Calendar",
    "CalendarFeatures",
    "SalesForecaster",
    "fingerprint",
    "future_dates",
    "infer_frequency",
    "mape",
    "mase",
    "mase_scale",
    "plot_backtest",
    "season_length",
    "smape",
    "train_sales",
    "wrap_results",
]
