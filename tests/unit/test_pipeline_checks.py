"""The pipeline's data checks and promotion gate, on the demo history and forecasters trained on it."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from conveyor.forecast import train_sales
from conveyor.sales_data import DEMO_SERIES_COLS, read_raw
from conveyor.workflow.checks import DataCheckFailed, check_history
from conveyor.workflow.gate import evaluate, out_of_sample
from conveyor.workflow.settings import DataChecks, Gate, SalesPipeline


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return read_raw(None)[0]


def _check(frame: pd.DataFrame, checks: DataChecks | None = None, **kw):
    return check_history(frame, checks or DataChecks(), series_cols=DEMO_SERIES_COLS, label="history", **kw)


def test_the_demo_history_passes_and_is_tidied_with_its_total(raw):
    tidy, report = _check(raw)
    assert report.rows == len(raw) and report.series == 13 and report.freq == "D"
    assert (report.first, report.last) == ("2014-01-01", "2016-12-31")
    assert list(tidy.columns) == ["date", "series", "sales"] and "total" in set(tidy["series"])


def test_a_day_missing_for_every_series_is_named(raw):
    with pytest.raises(DataCheckFailed, match=r"1 date\(s\) have no sales for any series: 2016-06-01"):
        _check(raw[raw["date"] != "2016-06-01"])
    _check(raw[raw["date"] != "2016-06-01"], DataChecks(closed_days=("06-01",)))  # closed by design: fine


def test_a_series_missing_a_day_is_named_unless_allowed(raw):
    holes = raw[~((raw["date"] == "2015-03-03") & (raw["store_nbr"] == 2) & (raw["family"] == "PRODUCE"))]
    with pytest.raises(DataCheckFailed, match=r"1 series lack dates .* 2/PRODUCE lacks 1: 2015-03-03"):
        _check(holes)
    _check(holes, DataChecks(max_missing=1))


def test_duplicates_name_their_rows(raw):
    twice = pd.concat([raw, raw.iloc[[7]]], ignore_index=True)
    row = raw.iloc[7]
    with pytest.raises(DataCheckFailed) as err:
        _check(twice)
    assert f"2 rows repeat a (series, date): {row['store_nbr']}/{row['family']} on {row['date']}" in str(err.value)
    assert f"rows 8, {len(twice)}" in str(err.value)


def test_several_series_without_series_cols_are_duplicates_with_a_hint_naming_the_columns(raw):
    with pytest.raises(DataCheckFailed) as err:
        check_history(raw, DataChecks())
    assert "rows repeat a (series, date): total on 2014-01-01" in str(err.value)
    assert "name their columns: series_cols=['store_nbr', 'family']" in str(err.value)


def test_a_missing_column_and_a_bad_value_name_the_column_and_the_row(raw):
    with pytest.raises(DataCheckFailed, match=r"no column 'sales'.*set sales_col"):
        _check(raw.drop(columns="sales"))
    bad = raw.astype({"sales": object})
    bad.loc[41, "sales"] = "n/a"
    with pytest.raises(DataCheckFailed, match=r"non-numeric 'sales' \(first: row 41.*'n/a'"):
        _check(bad)


def test_day_first_dates_are_checked_as_read(raw):
    """The checks re-read the dates with pandas' first-value guess (month-first): a crash on 13/01/2014."""
    day_first = raw.assign(date=pd.to_datetime(raw["date"]).dt.strftime("%d/%m/%Y"))
    tidy, report = _check(day_first)
    assert tidy["date"].min() == pd.Timestamp("2014-01-01")
    assert (report.first, report.last) == ("2014-01-01", "2016-12-31") and report.freq == "D"


def test_freshness_and_history_length_are_checked_when_asked(raw):
    old = DataChecks(max_age=dt.timedelta(days=2))
    now = dt.datetime(2017, 1, 10, tzinfo=dt.UTC)
    with pytest.raises(DataCheckFailed, match=r"newest sales are from 2016-12-31 .*, 10 days before 2017-01-10"):
        _check(raw, old, now=now)
    _check(raw, old, now=dt.datetime(2017, 1, 1, 12, tzinfo=dt.UTC))
    short = raw[raw["date"] >= "2016-12-25"]
    with pytest.raises(DataCheckFailed, match=r"12 series have fewer than 14 periods"):
        _check(short)


def test_every_problem_is_reported_at_once(raw):
    broken = pd.concat([raw[raw["date"] != "2016-06-01"], raw.iloc[[3]]], ignore_index=True)
    with pytest.raises(DataCheckFailed, match=r"fails 2 check\(s\): duplicates: .*; gaps: "):
        _check(broken)


# --- the gate -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def history(raw) -> pd.DataFrame:
    return _check(raw)[0]


@pytest.fixture(scope="module")
def good(history):
    return train_sales(history, range_max=90, holdout=60)


def test_a_first_version_needs_only_to_beat_seasonal_naive(history, good):
    verdict = evaluate(history, good, "sales:1", None, None, Gate())
    assert verdict.passed and verdict.production_mase is None
    assert verdict.candidate_mase < verdict.naive_mase and verdict.series == 13
    assert verdict.window == ("2016-11-02", "2016-12-31")
    assert "no production version yet" in verdict.reason


def test_an_equal_version_passes_and_a_worse_one_is_refused_with_the_scores(history, good):
    same = evaluate(history, good, "sales:2", good, "sales:1", Gate())
    assert same.passed and same.production_mase == pytest.approx(same.candidate_mase)
    rng = np.random.default_rng(1)
    noisy = history.copy()
    old = noisy["date"] < "2016-11-02"
    noisy.loc[old, "sales"] *= rng.lognormal(0, 0.6, int(old.sum()))
    worse = train_sales(noisy, range_max=90, holdout=60)
    verdict = evaluate(noisy, worse, "sales:3", good, "sales:1", Gate(margin=0.05))
    assert not verdict.passed
    assert verdict.candidate_mase > verdict.production_mase * 1.05
    assert verdict.reason.startswith("sales:3 is worse than sales:1 on 13 series, 2016-11-02..2016-12-31: MASE")
    loose = evaluate(noisy, worse, "sales:3", good, "sales:1", Gate(margin=100))
    assert loose.passed == (loose.candidate_mase < loose.naive_mase)


def test_production_is_scored_by_what_it_forecast_past_its_training(history, good):
    """A version trained 30 days earlier forecast the last 30 days without seeing them: those count."""
    earlier = train_sales(history[history["date"] <= "2016-12-01"], range_max=90, holdout=60)
    dates = pd.date_range("2016-11-02", "2016-12-31")
    seen = out_of_sample(earlier, ["total"], dates)
    ahead = earlier.forecast[earlier.series.index("total"), :30]
    assert np.allclose(seen[0, -30:], ahead)
    assert np.isfinite(seen).all()  # the rest from its own backtest (2016-10-03..2016-12-01)
    verdict = evaluate(history, good, "sales:2", earlier, "sales:1", Gate())
    assert verdict.production_mase is not None and np.isfinite(verdict.production_mase)


def test_a_version_no_better_than_seasonal_naive_is_refused(history):
    naive_only = train_sales(history, range_max=90, holdout=60)
    naive_only.backtest = {
        **naive_only.backtest,
        "forecast": np.full_like(naive_only.backtest["forecast"], float(history["sales"].mean())),
    }
    verdict = evaluate(history, naive_only, "sales:4", None, None, Gate())
    assert not verdict.passed and "does not beat seasonal naive" in verdict.reason


def test_settings_refuse_what_cannot_run():
    from conveyor.errors import InvalidSetting

    with pytest.raises(InvalidSetting, match="range must be between 1 and 3660"):
        SalesPipeline(range=0)
    with pytest.raises(InvalidSetting, match="cannot exceed range_max"):
        SalesPipeline(range=100, range_max=30)
    assert SalesPipeline(store="gs://b/models/").artifacts_uri == "gs://b/models/_pipeline_runs"
