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


@pytest.mark.parametrize(("freq", "periods", "range_max"), [("D", 240, 14), ("W", 156, 26), ("MS", 48, 12)])
def test_training_picks_a_model_that_matches_or_beats_seasonal_naive(freq, periods, range_max):
    fc = train_sales(history(freq, periods), range_max=range_max)
    summary = fc.summary()
    assert set(fc.methods) <= set(METHODS)
    assert summary["n_series"] == 5
    assert summary["overall"]["mase"] <= summary["overall"]["naive_mase"] + 1e-9
    for metrics in summary["series"].values():
        assert metrics["mase"] <= metrics["naive_mase"] + 1e-9
        assert set(metrics["candidates_mase"]) >= {"seasonal_naive", "linear"}
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
    assert summary["holdout"] == min(RANGE_MAX, round(0.2 * 240))
    assert summary["fingerprint"] == forecaster.fingerprint
    assert forecaster.backtest["forecast"].shape == (5, summary["holdout"])
    assert len(forecaster.backtest["dates"]) == summary["holdout"]


def test_fingerprint_changes_with_the_data(daily, forecaster):
    changed = daily.copy()
    changed.loc[0, "sales"] += 1
    assert train_sales(changed, range_max=3).fingerprint != forecaster.fingerprint


def test_train_rejects_bad_parameters(daily):
    with pytest.raises(InvalidInput, match="interval"):
        train_sales(daily, interval=95)
    with pytest.raises(InvalidInput, match="holdout"):
        train_sales(daily, holdout=0)
    with pytest.raises(InvalidInput, match="load_history"):
        train_sales(daily.rename(columns={"sales": "units"}))


def test_short_series_still_train():
    dates = pd.date_range("2020-01-01", periods=5, freq="D")
    short = pd.DataFrame({"date": dates, "series": "total", "sales": [1.0, 2.0, 3.0, 4.0, 5.0]})
    fc = train_sales(short, range_max=3)
    assert fc.methods == ["seasonal_naive"]
    assert len(fc.predict(pd.DataFrame({"series": ["total"], "range": [3]}))["forecast"][0]) == 3


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
    width = forecaster.upper - forecaster.forecast
    assert (width > 0).all()
    # strictly, step after step: a band that stops widening claims the far future is as sure as next week
    assert (np.diff(width, axis=1) > 1e-6 * width[:, 1:]).all()


def test_interval_sigma_matches_the_holdout_error_and_always_grows():
    from conveyor.forecast import interval_sigma

    # the holdout's mean squared error is what the band's variance averages to over the holdout
    sigma = interval_sigma(2.0, 5.0, 30, 10)
    assert np.mean(sigma[:10] ** 2) == pytest.approx(25.0)
    assert (np.diff(sigma) > 0).all()
    # a holdout error below the one-step error (the case that used to flatten the band at h=1) still widens
    low = interval_sigma(4.0, 1.0, 30, 10)
    assert low[0] == pytest.approx(4.0) and (np.diff(low) > 0).all()
    assert low[10] ** 2 == pytest.approx(16.0 * 2)  # the variance doubles over one holdout
    assert (np.diff(interval_sigma(0.0, 3.0, 5, 1)) > 0).all()


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
    dates = pd.date_range("2020-01-01", periods=40, freq="D")
    frame = pd.DataFrame({"date": dates, "series": "store", "sales": np.arange(40.0)})
    sig = train_sales(frame).signature()
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
