import io
import json

import joblib
import numpy as np
import pandas as pd
import pytest

from conveyor.errors import ConveyorError, InvalidInput
from conveyor.flavors.forecaster import ForecasterFlavor
from conveyor.flavors.statsmodels import StatsmodelsFlavor
from conveyor.forecast import (
    METHODS,
    SalesForecaster,
    infer_frequency,
    mape,
    mase,
    mase_scale,
    plot_backtest,
    season_length,
    smape,
    train_sales,
    wrap_results,
)
from conveyor.model import Model, guess_flavor
from conveyor.sales_data import generate_sales, tidy_history

RANGE_MAX = 30


def history(freq: str = "D", periods: int = 240, seed: int = 5) -> pd.DataFrame:
    raw = generate_sales(2, ["GROCERY I", "BEVERAGES"], start="2014-01-01", periods=periods, freq=freq, seed=seed)
    return tidy_history(raw, series_cols=["store_nbr", "family"])


@pytest.fixture(scope="module")
def daily() -> pd.DataFrame:
    return history()


@pytest.fixture(scope="module")
def forecaster(daily) -> SalesForecaster:
    return train_sales(daily, range_max=RANGE_MAX)


# --- frequency ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dates", "freq", "season"),
    [
        (pd.date_range("2020-01-01", periods=20, freq="D"), "D", 7),
        (pd.date_range("2020-01-05", periods=20, freq="W"), "W-SUN", 52),
        (pd.date_range("2020-01-01", periods=20, freq="W-WED"), "W-WED", 52),
        (pd.date_range("2020-01-01", periods=20, freq="MS"), "MS", 12),
        (pd.date_range("2020-01-31", periods=20, freq="ME"), "ME", 12),
    ],
)
def test_infer_frequency(dates, freq, season):
    shuffled_with_repeats = list(dates[::-1]) + list(dates[:5])
    assert infer_frequency(shuffled_with_repeats) == freq
    assert season_length(freq) == season


def test_infer_frequency_accepts_a_few_missing_days():
    dates = pd.date_range("2015-12-01", "2017-01-31", freq="D")
    closed = dates[(dates.month == 12) & (dates.day == 25)]
    assert infer_frequency(dates.difference(closed)) == "D"


def test_infer_frequency_refuses_irregular_dates():
    with pytest.raises(InvalidInput, match=r"irregular \(gaps of 1, 3, 17 days\).*resample"):
        infer_frequency(pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-05", "2020-01-22"]))
    with pytest.raises(InvalidInput, match="at least 3"):
        infer_frequency(pd.to_datetime(["2020-01-01", "2020-01-02"]))


# --- metrics -----------------------------------------------------------------------------------


def test_metrics():
    actual = np.array([0.0, 10.0, 20.0])
    pred = np.array([0.0, 12.0, 15.0])
    assert mape(actual, pred) == pytest.approx((0.2 + 0.25) / 2 * 100)
    assert smape(actual, pred) == pytest.approx((0 + 2 / 22 + 5 / 35) / 3 * 200)
    assert mase(actual, pred, 2.0) == pytest.approx(7 / 3 / 2)
    assert mase_scale(np.array([1.0, 2.0, 4.0, 4.0]), 2) == pytest.approx(2.5)
    assert mase_scale(np.ones(5), 2) == 1.0


# --- training ----------------------------------------------------------------------------------


def _known_method(method: str) -> bool:
    if method.startswith("ensemble("):
        return set(method[len("ensemble(") : -1].split("+")) <= set(METHODS)
    return method in METHODS


@pytest.mark.parametrize(("freq", "periods", "range_max"), [("D", 240, 14), ("W", 156, 26), ("MS", 48, 12)])
def test_training_picks_a_model_that_matches_or_beats_seasonal_naive(freq, periods, range_max):
    fc = train_sales(history(freq, periods), range_max=range_max)
    summary = fc.summary()
    assert fc.methods[fc.series.index("total")] == "bottom_up"
    assert all(_known_method(m) for s, m in zip(fc.series, fc.methods, strict=True) if s != "total"), fc.methods
    assert summary["n_series"] == 5
    for name, metrics in summary["series"].items():
        if name == "total":
            continue
        # selection includes seasonal naive, and an ensemble is kept only when it cross-validates better
        assert metrics["mase"] <= metrics["naive_mase"] + 1e-9
        assert set(metrics["candidates_mase"]) >= {"seasonal_naive", "linear"}
        assert metrics["windows"] >= 1 and set(metrics["cv"]) >= set(metrics["candidates_mase"])
    # Clearly seasonal data: a real model wins on most series.
    assert summary["beats_naive"] >= 4
    assert summary["beats_naive_text"] == f"beats seasonal naive on {summary['beats_naive']} of 5 series"


def test_forecaster_records_training(forecaster, daily):
    assert forecaster.freq == "D"
    assert forecaster.series == sorted(daily["series"].unique())
    assert forecaster.last_date.startswith(str(daily["date"].max().date()))
    assert forecaster.fingerprint.startswith("sha256:")
    assert forecaster.forecast.shape == (5, RANGE_MAX)
    summary = forecaster.summary()
    assert summary["holdout"] == RANGE_MAX and summary["windows"] == 3  # three CV windows of the horizon's length
    assert summary["fill"] == "interpolate" and summary["reconciliation"] == "bottom_up"
    assert summary["fingerprint"] == forecaster.fingerprint
    assert forecaster.backtest["forecast"].shape == (5, summary["holdout"])
    assert len(forecaster.backtest["dates"]) == summary["holdout"]
    assert forecaster.backtest["dates"][-1] == str(daily["date"].max().date())


def test_fingerprint_changes_with_the_data(daily, forecaster):
    changed = daily.copy()
    changed.loc[0, "sales"] += 1
    assert train_sales(changed, range_max=3, candidates="basic").fingerprint != forecaster.fingerprint


def test_train_rejects_bad_parameters(daily):
    with pytest.raises(InvalidInput, match="interval"):
        train_sales(daily, interval=95)
    with pytest.raises(InvalidInput, match="holdout"):
        train_sales(daily, holdout=0)
    with pytest.raises(InvalidInput, match="load_history"):
        train_sales(daily.rename(columns={"sales": "units"}))
    with pytest.raises(InvalidInput, match="fill must be one of interpolate, zero"):
        train_sales(daily, fill="mean")
    with pytest.raises(InvalidInput, match="unknown candidate"):
        train_sales(daily, candidates=("prophet",))


def test_short_series_still_train():
    dates = pd.date_range("2020-01-01", periods=5, freq="D")
    short = pd.DataFrame({"date": dates, "series": "total", "sales": [1.0, 2.0, 3.0, 4.0, 5.0]})
    fc = train_sales(short, range_max=3)
    assert fc.range_max == 2  # half the history
    assert len(fc.predict(pd.DataFrame({"series": ["total"], "range": [2]}))["forecast"][0]) == 2


def test_a_ten_day_history_is_not_asked_for_a_year_and_says_so():
    """The issue's case: 10 days trained silently and served a 365-day sawtooth."""
    dates = pd.date_range("2020-03-01", periods=10, freq="D")
    short = pd.DataFrame({"date": dates, "series": "total", "sales": np.arange(10.0) + 100})
    fc = train_sales(short, range_max=365)
    summary = fc.summary()
    assert fc.range_max == 5
    assert summary["horizon"] == {"asked": 365, "cap": 5, "range_max": 5}
    assert summary["warnings"] == [
        "10 periods (D) of history support forecasts up to 5 periods ahead (half the history): "
        "the horizon 365 was cut to 5"
    ]
    with pytest.raises(InvalidInput, match="between 1 and 5, got 6"):
        fc.signature().validate_records([{"series": "total", "range": 6}])


# --- predict contract --------------------------------------------------------------------------


def test_predict_one_row_per_input_row_in_order(forecaster):
    frame = pd.DataFrame({"series": ["total", "1/BEVERAGES", "total", "2/GROCERY I"], "range": [3, 1, 30, 7]})
    out = forecaster.predict(frame)
    assert list(out.columns) == ["series", "date", "forecast", "lower", "upper"]
    assert out["series"].tolist() == frame["series"].tolist()
    assert [len(d) for d in out["date"]] == [3, 1, 30, 7]
    for dates, point, lower, upper in out[["date", "forecast", "lower", "upper"]].itertuples(index=False):
        assert len(point) == len(lower) == len(upper) == len(dates)
        assert all(isinstance(v, float) for v in point)
        assert np.all(np.array(lower) <= np.array(point))
        assert np.all(np.array(point) <= np.array(upper))
        assert min(lower) >= 0
    assert out["date"][2][0] == "2014-08-29"
    assert (pd.to_datetime(out["date"][2]).to_series().diff().dropna() == pd.Timedelta(days=1)).all()


@pytest.mark.parametrize(("freq", "periods", "step"), [("W", 120, pd.Timedelta(days=7)), ("MS", 40, None)])
def test_predict_dates_follow_the_frequency(freq, periods, step):
    fc = train_sales(history(freq, periods), range_max=6)
    dates = pd.to_datetime(fc.predict(pd.DataFrame({"series": ["total"], "range": [6]}))["date"][0])
    if step is not None:
        assert (dates.to_series().diff().dropna() == step).all()
    else:
        assert dates.is_month_start.all() and (dates.to_series().dt.month.diff().dropna() % 12 == 1).all()


def test_intervals_widen_with_the_horizon(forecaster):
    for upper in (forecaster.upper, forecaster.upper80):
        width = upper - forecaster.forecast
        assert (width > 0).all()
        assert (np.diff(width, axis=1) >= -1e-9 * width[:, 1:]).all()  # never narrower further out
        assert (width[:, -1] > width[:, 0]).all()  # and wider at the end than at the start
    assert (forecaster.upper80 <= forecaster.upper).all() and (forecaster.lower80 >= forecaster.lower).all()


def test_predict_columns_answers_as_predict_without_a_dataframe(forecaster):
    frame = pd.DataFrame({"series": ["total", "1/BEVERAGES", "total"], "range": [3, 1, 30]})
    slow = forecaster.predict(frame)
    fast = forecaster.predict_columns({n: frame[n].to_numpy() for n in frame.columns}, len(frame))
    assert list(fast) == list(slow.columns)
    for name in slow.columns:
        assert fast[name].tolist() == slow[name].tolist()
    defaults = forecaster.predict_columns({}, 2)
    assert defaults["series"].tolist() == ["total", "total"] and [len(d) for d in defaults["date"]] == [1, 1]
    with pytest.raises(InvalidInput, match="unknown series 'nope'"):
        forecaster.predict_columns({"series": np.array(["nope"], dtype=object)}, 1)


def test_predict_batch_and_defaults(forecaster):
    rng = np.random.default_rng(0)
    n = 1000
    frame = pd.DataFrame({"series": rng.choice(forecaster.series, n), "range": rng.integers(1, RANGE_MAX + 1, n)})
    out = forecaster.predict(frame)
    assert len(out) == n
    assert [len(f) for f in out["forecast"]] == frame["range"].tolist()
    i = forecaster.series.index(frame["series"][10])
    assert out["forecast"][10] == forecaster.forecast[i, : frame["range"][10]].tolist()
    defaults = forecaster.predict(pd.DataFrame(index=range(2)))
    assert defaults["series"].tolist() == ["total", "total"] and len(defaults["date"][0]) == 1


def test_predict_refuses_what_the_signature_would(forecaster):
    with pytest.raises(InvalidInput, match="unknown series 'nope'"):
        forecaster.predict(pd.DataFrame({"series": ["nope"], "range": [1]}))
    with pytest.raises(InvalidInput, match="between 1 and 30, got 31"):
        forecaster.predict(pd.DataFrame({"series": ["total"], "range": [31]}))


def test_signature_validates_requests(forecaster):
    sig = forecaster.signature()
    frame = sig.validate_records([{}, {"series": "1/BEVERAGES", "range": 5}])
    assert frame["series"].tolist() == ["total", "1/BEVERAGES"]
    assert frame["range"].tolist() == [1, 5]
    assert sig.output_names == ["series", "date", "forecast", "lower", "upper"]
    for bad, message in [
        ({"range": 0}, "'range' must be an integer between 1 and 30, got 0"),
        ({"range": RANGE_MAX + 1}, "got 31"),
        ({"series": "9/BOOKS"}, "unknown series '9/BOOKS'"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            sig.validate_records([bad])
    model = Model("sales", 1, "forecaster", sig, forecaster)
    out = model.predict_records([{"series": "total", "range": 2}])
    assert len(out["forecast"][0]) == 2


def test_signature_range_366_refused_with_default_range_max():
    dates = pd.date_range("2020-01-01", periods=740, freq="D")
    frame = pd.DataFrame({"date": dates, "series": "store", "sales": np.arange(740.0) % 7 + 10})
    sig = train_sales(frame, candidates="basic").signature()
    assert sig.field("series").default == "store"
    assert sig.field("range").max == 365
    sig.validate_records([{"range": 365}])
    with pytest.raises(InvalidInput, match="got 366"):
        sig.validate_records([{"range": 366}])


def test_pickle_round_trip_keeps_predictions(forecaster):
    buf = io.BytesIO()
    joblib.dump(forecaster, buf)
    buf.seek(0)
    loaded = joblib.load(buf)
    frame = pd.DataFrame({"series": ["total", "1/GROCERY I"], "range": [4, 2]})
    pd.testing.assert_frame_equal(loaded.predict(frame), forecaster.predict(frame))
    assert loaded.summary() == forecaster.summary()


# --- statsmodels results and the flavor -------------------------------------------------------


@pytest.fixture(scope="module")
def holt_winters(daily):
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    total = daily[daily["series"] == "total"].set_index("date")["sales"].asfreq("D")
    return ExponentialSmoothing(total, trend="add", seasonal="add", seasonal_periods=7).fit()


def test_wrap_results_serves_a_holt_winters_fit(holt_winters, daily):
    wrapped = wrap_results(holt_winters, range_max=10)
    out = wrapped.predict(pd.DataFrame({"series": ["total"], "range": [10]}))
    assert out["date"][0][0] == str((daily["date"].max() + pd.Timedelta(days=1)).date())
    assert out["forecast"][0] == pytest.approx(np.clip(holt_winters.forecast(10).to_numpy(), 0, None).tolist())
    assert np.all(np.array(out["lower"][0]) < np.array(out["forecast"][0]))
    assert wrapped.signature().field("range").max == 10


def test_wrap_results_uses_conf_int_when_available(daily):
    from statsmodels.tsa.arima.model import ARIMA

    total = daily[daily["series"] == "total"].set_index("date")["sales"].asfreq("D")
    result = ARIMA(total, order=(1, 0, 0)).fit()
    wrapped = wrap_results(result, range_max=5, interval=0.8)
    ci = result.get_forecast(5).conf_int(alpha=0.2).to_numpy()
    assert wrapped.upper[0] == pytest.approx(ci[:, 1])


def test_wrap_results_needs_dates():
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    result = ExponentialSmoothing(np.arange(1.0, 30.0)).fit()
    with pytest.raises(InvalidInput, match="DatetimeIndex"):
        wrap_results(result)


def test_flavor_round_trip_for_a_forecaster(forecaster, tmp_path):
    flavor = ForecasterFlavor()
    assert flavor.accepts(forecaster)
    meta = flavor.save(forecaster, tmp_path / "v1")
    assert meta == {"file": "model.joblib", "kind": "sales_forecaster"}
    loaded = flavor.load(tmp_path / "v1", meta)
    frame = pd.DataFrame({"series": ["total"], "range": [5]})
    pd.testing.assert_frame_equal(loaded.predict(frame), forecaster.predict(frame))
    assert flavor.signature(loaded, meta) == forecaster.signature()
    assert flavor.accepts(tmp_path / "v1" / "model.joblib")
    assert guess_flavor(forecaster) == "forecaster"
    assert guess_flavor(tmp_path / "v1" / "model.joblib") == "forecaster"
    assert not StatsmodelsFlavor().accepts(forecaster)
    with pytest.raises(ConveyorError, match="saved with the 'forecaster' flavor"):
        StatsmodelsFlavor().save(forecaster, tmp_path / "v2")


def test_a_forecaster_saved_before_the_forecaster_flavor_still_loads_and_answers_the_same():
    """tests/data/old_forecaster_store holds a version written by the single-module forecaster (flavor
    statsmodels, pickle naming conveyor.forecast.SalesForecaster) and the answer it gave when it was written."""
    from pathlib import Path

    from conveyor.store import ModelStore

    root = Path(__file__).parents[1] / "data" / "old_forecaster_store"
    model = ModelStore(root).load("sales")
    assert model.flavor == "statsmodels"
    out = model.predict_records([{"series": "total", "range": 3}])
    expected = json.loads((root / "expected.json").read_text())
    assert out["date"][0] == expected["date"]
    for key in ("forecast", "lower", "upper"):
        assert out[key][0] == pytest.approx(expected[key], rel=1e-12)


def test_flavor_round_trip_for_results_and_files(holt_winters, tmp_path):
    flavor = StatsmodelsFlavor()
    assert flavor.accepts(holt_winters)
    path = tmp_path / "hw.pkl"
    joblib.dump(holt_winters, path)
    assert flavor.accepts(path)
    meta = flavor.save(path, tmp_path / "v2")
    assert meta["kind"] == "statsmodels_results"
    loaded = flavor.load(tmp_path / "v2", meta)
    out = loaded.predict(pd.DataFrame({"series": ["total"], "range": [3]}))
    assert out["forecast"][0] == pytest.approx(holt_winters.forecast(3).tolist())
    assert not flavor.accepts(tmp_path / "missing.joblib")
    assert not flavor.accepts({"not": "a model"})


def test_plot_backtest_writes_a_png(forecaster, daily, tmp_path):
    path = plot_backtest(forecaster, daily, tmp_path / "plots" / "backtest.png", max_series=2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InvalidInput, match="unknown series"):
        plot_backtest(forecaster, daily, tmp_path / "x.png", series="nope")


def test_detail_shows_a_person_the_recent_history_and_the_forecast_with_both_bands(daily):
    """What the forecast page draws: the history's last periods (a period without a row is None, not 0), the
    forecast as `predict` answers it, an 80% band inside the 95% band."""
    gappy = daily.drop(daily.index[(daily["series"] == "1/BEVERAGES")][-3:-1])
    fc = train_sales(gappy, range_max=RANGE_MAX)
    d = fc.detail("1/BEVERAGES", 5)
    answer = fc.predict(pd.DataFrame({"series": ["1/BEVERAGES"], "range": [5]}))
    assert d["forecast"]["date"] == answer["date"][0]
    assert d["forecast"]["forecast"] == pytest.approx(answer["forecast"][0])
    assert d["forecast"]["lower95"] == pytest.approx(answer["lower"][0])
    for lo95, lo80, point, hi80, hi95 in zip(
        *(d["forecast"][k] for k in ("lower95", "lower80", "forecast", "upper80", "upper95")), strict=True
    ):
        assert lo95 <= lo80 <= point <= hi80 <= hi95
    history = d["history"]
    assert history["date"][-1] == fc.last_date[:10] and len(history["date"]) == len(history["sales"])
    assert history["sales"][-3:-1] == [None, None] and history["sales"][-1] is not None
    assert d["method"] in METHODS and d["metrics"]["method"] == d["method"]
    json.dumps(d, allow_nan=False)
    restored = joblib.load(io.BytesIO(_dumped(fc)))
    assert restored.detail("1/BEVERAGES", 5) == d
    with pytest.raises(InvalidInput, match="unknown series"):
        fc.detail("nope")
    with pytest.raises(InvalidInput, match="between 1 and 30"):
        fc.detail("total", 31)


def _dumped(obj) -> bytes:
    buf = io.BytesIO()
    joblib.dump(obj, buf)
    return buf.getvalue()


# --- calendars, gaps, holidays, totals, bands (issue 13) ----------------------------------------------------


def _one_series(values: np.ndarray, start: str = "2014-01-01", freq: str = "D", name: str = "s") -> pd.DataFrame:
    dates = pd.date_range(start, periods=len(values), freq=freq)
    return pd.DataFrame({"date": dates, "series": name, "sales": values})


def _weekly_pattern(n: int, seed: int = 1, level: float = 100.0, noise: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    week = np.array([1.0, 1.1, 0.9, 1.0, 1.2, 1.4, 0.8])
    return level * np.resize(week, n) + rng.normal(0, noise, n)


def test_missing_days_stay_missing_instead_of_counting_as_zero_sales():
    """The issue's case: 4 rows dropped from a ~100/day series gave MASE 29.5 instead of 0.64."""
    full = _one_series(_weekly_pattern(200))
    gappy = full.drop(index=[150, 160, 170, 185])
    whole = train_sales(full, range_max=14, candidates="basic").summary()["series"]["s"]
    holed = train_sales(gappy, range_max=14, candidates="basic")
    got = holed.summary()["series"]["s"]
    assert got["mase"] == pytest.approx(whole["mase"], rel=0.1)
    assert got["smape"] < 5
    assert holed.forecast.min() > 50  # nothing pulled towards zero
    assert holed.summary()["fill"] == "interpolate"
    zero = train_sales(gappy, range_max=14, candidates="basic", fill="zero")
    assert zero.summary()["fill"] == "zero"
    assert zero.summary()["series"]["s"]["mase"] > 2 * got["mase"]  # asked for: a missing day is no sales


def test_a_holiday_effect_is_learned_and_forecast_and_seasonal_naive_does_not_repeat_it():
    days = pd.date_range("2013-01-01", "2016-12-31", freq="D")
    values = _weekly_pattern(len(days))
    new_year = (days.month == 1) & (days.day == 1)
    christmas = (days.month == 12) & (days.day == 25)
    values[new_year] *= 0.05
    values[christmas] *= 0.3
    for method in ("seasonal_naive", "linear", "holt_winters"):
        fc = train_sales(_one_series(values, "2013-01-01"), range_max=60, candidates=(method,))
        ahead = pd.to_datetime(fc.dates)
        point = fc.forecast[0]
        jan1 = point[(ahead.month == 1) & (ahead.day == 1)][0]
        ordinary = point[(ahead.month == 1) & (ahead.day > 1)]
        assert jan1 < 0.1 * ordinary.mean(), (method, jan1)
        # the last week of history holds Christmas (a Wednesday): the Wednesdays ahead stay ordinary
        wednesdays = point[(ahead.day_of_week == 2)]
        assert wednesdays.min() > 0.8 * 100 * 0.9, (method, wednesdays)
    assert fc.summary()["holidays"]["new_year"] == 5  # four in the history, one ahead


def test_a_day_closed_every_year_is_forecast_closed():
    days = pd.date_range("2013-01-01", "2016-12-31", freq="D")
    frame = _one_series(_weekly_pattern(len(days)), "2013-01-01")
    frame = frame[~((frame["date"].dt.month == 12) & (frame["date"].dt.day == 25))]  # no rows on Christmas
    fc = train_sales(frame, range_max=365, candidates="basic")
    ahead = pd.to_datetime(fc.dates)
    christmas = (ahead.month == 12) & (ahead.day == 25)
    assert fc.forecast[0][christmas].tolist() == [0.0] and fc.upper[0][christmas].tolist() == [0.0]
    assert fc.forecast[0][~christmas].min() > 50


def test_country_holidays_come_from_the_holidays_package():
    days = pd.date_range("2015-01-01", "2016-12-31", freq="D")
    fc = train_sales(_one_series(_weekly_pattern(len(days)), "2015-01-01"), range_max=30, candidates="basic",
                     country="EC")  # fmt: skip
    assert fc.summary()["country"] == "EC" and fc.summary()["holidays"]["holiday"] > 10
    with pytest.raises(InvalidInput, match="no such country"):
        train_sales(_one_series(_weekly_pattern(60)), range_max=5, country="XX")


def test_the_demo_total_is_the_sum_of_its_series_and_dips_on_new_year():
    """The quick start's answer: 32,421 for 2017-01-01 where the history shows 1,101-1,418."""
    from conveyor.sales_data import demo_history

    history = demo_history()
    fc = train_sales(history, range_max=30, candidates="basic")
    total = fc.series.index("total")
    parts = [i for i in range(len(fc.series)) if i != total]
    np.testing.assert_allclose(fc.forecast[total], fc.forecast[parts].sum(axis=0), rtol=1e-12)
    past = history[(history["series"] == "total") & (history["date"].dt.strftime("%m-%d") == "01-01")]["sales"]
    jan1 = fc.predict(pd.DataFrame({"series": ["total"], "range": [1]}))
    assert jan1["date"][0] == ["2017-01-01"]
    assert 0.5 * past.min() <= jan1["forecast"][0][0] <= 1.5 * past.max(), (jan1["forecast"][0], past.tolist())
    assert fc.methods[total] == "bottom_up"


def test_an_ensemble_is_kept_only_when_it_cross_validates_better():
    from conveyor.forecast.selection import _choose

    actual = np.array([[10.0, 10.0, 10.0, 10.0]])
    scales = np.array([1.0])

    def trial(pred):
        pred = np.array([pred], dtype=float)
        err = np.abs(pred - actual).mean()
        return {"pred": pred, "sigma": np.ones_like(pred), "mase": err, "smape": err, "actual": actual,
                "scales": scales}  # fmt: skip

    # errors on opposite sides cancel in the mean: the ensemble wins
    trials = {"a": trial([12, 12, 12, 12]), "b": trial([7, 7, 7, 7]), "seasonal_naive": trial([15, 15, 15, 15])}
    method, members = _choose(trials)
    assert method == "ensemble(a+b)" and members == ["a", "b"]
    assert trials[method]["mase"] == pytest.approx(0.5)
    # errors on the same side: the best alone stays
    trials = {"a": trial([11, 11, 11, 11]), "b": trial([13, 13, 13, 13]), "seasonal_naive": trial([15, 15, 15, 15])}
    assert _choose(trials) == ("a", ["a"])
    # nothing scored (too short for any window): seasonal naive
    empty = {"a": {**trial([1, 1, 1, 1]), "mase": float("nan")}}
    assert _choose(empty) == ("seasonal_naive", ["seasonal_naive"])


def test_bands_cover_what_they_claim_on_series_with_known_noise():
    """200 series of a weekly pattern plus Gaussian noise: the bands are checked against new draws from the
    same process over the whole horizon."""
    rng = np.random.default_rng(11)
    n, h, k = 150, 28, 200
    days = pd.date_range("2015-01-05", periods=n + h, freq="D")
    frames, future = [], []
    for i in range(k):
        level, noise = rng.uniform(50, 500), rng.uniform(2, 20)
        values = level * np.resize([1.0, 1.1, 0.9, 1.0, 1.2, 1.4, 0.8], n + h) + rng.normal(0, noise, n + h)
        frames.append(pd.DataFrame({"date": days[:n], "series": f"s{i:03d}", "sales": values[:n]}))
        future.append(values[n:])
    frame = pd.concat(frames)
    fc = train_sales(frame.assign(series=frame["series"]), range_max=h, candidates=("linear",))
    rows = [fc.series.index(f"s{i:03d}") for i in range(k)]
    truth = np.array(future)
    inside95 = (truth >= fc.lower[rows]) & (truth <= fc.upper[rows])
    inside80 = (truth >= fc.lower80[rows]) & (truth <= fc.upper80[rows])
    assert 0.93 <= inside95.mean() <= 0.97, inside95.mean()
    assert 0.76 <= inside80.mean() <= 0.84, inside80.mean()
    reported = fc.summary()["coverage"]
    assert 0.9 <= reported["95"] <= 0.99 and 0.74 <= reported["80"] <= 0.86, reported


@pytest.mark.parametrize(("freq", "periods"), [("D", 120), ("W", 110), ("MS", 60), ("QS", 40)])
def test_every_frequency_trains_cross_validated_and_answers(freq, periods):
    if freq == "QS":  # quarters: the monthly history summed
        monthly = history("MS", periods * 3)
        data = monthly.groupby(["series", monthly["date"].dt.to_period("Q").dt.start_time], as_index=False)["sales"]
        frame = data.sum().rename(columns={"date": "date"})
    else:
        frame = history(freq, periods)
    fc = train_sales(frame, range_max=8, candidates="basic")
    assert fc.freq.startswith(freq[0]) or fc.freq.startswith("Q")
    summary = fc.summary()
    assert summary["windows"] == 3 and summary["overall"]["mase"] < summary["overall"]["naive_mase"] * 1.2
    out = fc.predict(pd.DataFrame({"series": ["total"], "range": [8]}))
    assert len(out["forecast"][0]) == 8 and all(lo <= p <= hi for lo, p, hi in zip(
        out["lower"][0], out["forecast"][0], out["upper"][0], strict=True))  # fmt: skip


def test_mstl_takes_weekly_and_yearly_seasonality_of_two_years_of_days():
    n = 800
    t = np.arange(n)
    rng = np.random.default_rng(0)
    y = 100 + 10 * np.sin(t * 2 * np.pi / 7) + 20 * np.sin(t * 2 * np.pi / 365.25) + rng.normal(0, 3, n)
    frame = pd.DataFrame({"date": pd.date_range("2014-03-01", periods=n), "series": "s", "sales": y})
    fc = train_sales(frame, range_max=30, candidates=("mstl",))
    scores = fc.summary()["series"]["s"]["candidates_mase"]
    assert fc.methods == ["mstl"] and scores["mstl"] < 0.8 * scores["seasonal_naive"], scores
