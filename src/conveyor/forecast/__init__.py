"""The sales forecaster: a model chosen per series by backtest, its forecasts precomputed for serving.

Training (`train.py`) fits the candidates (`candidates.py`) on each series, keeps the one with the lowest MASE on
a holdout (`selection.py`), refits it on the whole history and stores its forecasts and intervals
(`intervals.py`) up to `range_max` as arrays in a `SalesForecaster` (`forecaster.py`), whose `predict` only
slices them: the HTTP hot path never calls a model library.

Pickles written before this package existed name `conveyor.forecast.SalesForecaster`; the name below keeps them
loading.
"""

from conveyor.forecast.calendar import CalendarFeatures
from conveyor.forecast.candidates import CANDIDATES, METHODS
from conveyor.forecast.forecaster import DEFAULT_RANGE_MAX, OUTPUT_COLUMNS, TOTAL, SalesForecaster
from conveyor.forecast.frequency import future_dates, infer_frequency, season_length
from conveyor.forecast.intervals import interval_sigma
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
    "CalendarFeatures",
    "SalesForecaster",
    "fingerprint",
    "future_dates",
    "infer_frequency",
    "interval_sigma",
    "mape",
    "mase",
    "mase_scale",
    "plot_backtest",
    "season_length",
    "smape",
    "train_sales",
    "wrap_results",
]
