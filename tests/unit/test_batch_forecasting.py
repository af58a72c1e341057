"""Batch forecasting's history reading without Beam: the date format is settled once, on the driver, and
every chunk is read with it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conveyor.batch.forecasting import HistorySpec, tidy
from conveyor.batch.jobs import ForecastJob, Output, plan_forecast
from conveyor.errors import InvalidInput


def _history(start: str, periods: int, fmt: str) -> pd.DataFrame:
    days = pd.date_range(start, periods=periods, freq="D")
    return pd.DataFrame({"date": days.strftime(fmt), "sales": np.arange(periods, dtype=float)})


def test_a_chunk_is_read_with_the_settled_format_and_bad_dates_are_rejects_naming_it():
    frame = _history("2016-01-01", 10, "%d/%m/%Y")  # any chunk may hold only days <= 12
    frame.loc[4, "date"] = "31/02/2016"
    rows, rejects = tidy(frame, HistorySpec(date_format="%d/%m/%Y"))
    assert rows["date"].tolist() == [d for i, d in enumerate(pd.date_range("2016-01-01", periods=10)) if i != 4]
    assert rejects == [(4, "'date' must be a date in format %d/%m/%Y")]


def _plan(tmp_path, frame: pd.DataFrame, **spec) -> ForecastJob:
    frame.to_csv(tmp_path / "h.csv", index=False)
    job = ForecastJob("sales", str(tmp_path / "h.csv"), 7, Output(str(tmp_path / "f.csv")), HistorySpec(**spec))
    plan_forecast(job)
    return job


def test_the_date_format_is_detected_once_from_the_first_chunk(tmp_path):
    assert _plan(tmp_path, _history("2016-01-01", 40, "%d/%m/%Y")).spec.date_format == "%d/%m/%Y"
    assert _plan(tmp_path, _history("2016-01-01", 40, "%m/%d/%Y")).spec.date_format == "%m/%d/%Y"
    assert _plan(tmp_path, _history("2016-01-01", 10, "%d/%m/%Y"), date_format="%m/%d/%Y").spec.date_format == (
        "%m/%d/%Y"
    )


def test_dates_that_read_either_way_or_not_with_the_given_format_are_refused_before_the_job(tmp_path):
    with pytest.raises(InvalidInput, match="pass --date-format %d/%m/%Y or %m/%d/%Y"):
        _plan(tmp_path, _history("2016-01-01", 10, "%d/%m/%Y"))
    with pytest.raises(InvalidInput) as err:
        _plan(tmp_path, _history("2016-01-01", 40, "%d/%m/%Y"), date_format="%Y-%m-%d")
    assert "in format %Y-%m-%d (given by --date-format)" in str(err.value)
    assert "pass --date-format %d/%m/%Y" in str(err.value)
