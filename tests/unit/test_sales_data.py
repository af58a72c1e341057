import gzip

import numpy as np
import pandas as pd
import pytest
import sqlalchemy

from conveyor.errors import InvalidInput, NotFound
from conveyor.forecast import infer_frequency
from conveyor.sales_data import (
    DEMO_PATH,
    demo_history,
    generate_sales,
    load_history,
    tidy_history,
    write_demo,
)


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return generate_sales(2, ["GROCERY I", "BEVERAGES"], start="2015-01-01", periods=60, seed=3)


def test_generate_sales_has_kaggle_shape_and_is_deterministic(raw):
    assert list(raw.columns) == ["date", "store_nbr", "family", "sales"]
    assert len(raw) == 60 * 4
    assert raw["date"].iloc[0] == pd.Timestamp("2015-01-01")
    assert set(raw["family"]) == {"GROCERY I", "BEVERAGES"}
    assert (raw["sales"] >= 0).all()
    again = generate_sales(2, ["GROCERY I", "BEVERAGES"], start="2015-01-01", periods=60, seed=3)
    pd.testing.assert_frame_equal(raw, again)
    assert not generate_sales(2, 2, start="2015-01-01", periods=60, seed=4)["sales"].equals(raw["sales"])


def test_generate_sales_calendar_effects():
    frame = generate_sales(3, 3, start="2014-01-01", periods=3 * 365, seed=0)
    daily = frame.groupby("date")["sales"].sum()
    new_year = daily[(daily.index.month == 1) & (daily.index.day == 1)]
    christmas_eve = daily[(daily.index.month == 12) & (daily.index.day == 24)]
    assert (new_year < 0.2 * daily.median()).all()
    assert (christmas_eve > 1.3 * daily.median()).all()
    weekday_mean = daily.groupby(daily.index.day_of_week).mean()
    assert weekday_mean.idxmax() in (5, 6)


@pytest.mark.parametrize(("freq", "periods", "expected"), [("W", 10, "W-SUN"), ("MS", 6, "MS")])
def test_generate_sales_coarser_frequencies_sum_days(freq, periods, expected):
    frame = generate_sales(1, 1, start="2015-01-01", periods=periods, freq=freq, seed=1)
    dates = pd.DatetimeIndex(frame["date"].unique())
    assert len(dates) == periods
    assert infer_frequency(dates) == expected
    daily = generate_sales(1, 1, start="2015-01-01", periods=periods, freq="D", seed=1)
    assert frame["sales"].median() > 5 * daily["sales"].median()


def test_generate_sales_makes_many_series_at_once():
    frame = generate_sales(20, 33, periods=400, seed=0)
    assert len(frame) == 20 * 33 * 400
    assert frame["family"].nunique() == 33


def test_tidy_joins_series_columns_and_adds_total(raw):
    tidy = tidy_history(raw, series_cols=["store_nbr", "family"])
    assert list(tidy.columns) == ["date", "series", "sales"]
    assert tidy["date"].dtype.kind == "M"
    assert tidy["sales"].dtype == np.float64
    assert set(tidy["series"]) == {"1/GROCERY I", "1/BEVERAGES", "2/GROCERY I", "2/BEVERAGES", "total"}
    total = tidy[tidy["series"] == "total"].set_index("date")["sales"]
    assert total.sum() == pytest.approx(raw["sales"].sum())
    assert total.loc["2015-01-05"] == pytest.approx(raw.loc[raw["date"] == "2015-01-05", "sales"].sum())


def test_tidy_single_series_is_named_total_without_extra_total():
    raw = pd.DataFrame({"date": ["2020-01-01", "2020-01-02"], "sales": [1.0, 2.0]})
    tidy = tidy_history(raw)
    assert tidy["series"].tolist() == ["total", "total"]


def test_tidy_uses_series_column_and_sums_duplicates():
    raw = pd.DataFrame(
        {
            "day": ["2020-01-01", "2020-01-01", "2020-01-02", "2020-01-01"],
            "series": ["a", "a", "a", "b"],
            "units": [1, 2, 3, 4],
        }
    )
    tidy = tidy_history(raw, date_col="day", sales_col="units")
    a = tidy[tidy["series"] == "a"]["sales"].tolist()
    assert a == [3.0, 3.0]
    assert tidy[tidy["series"] == "total"]["sales"].tolist() == [7.0, 3.0]


def test_tidy_keeps_an_existing_total_series():
    raw = pd.DataFrame({"date": ["2020-01-01"] * 2, "series": ["total", "x"], "sales": [5.0, 1.0]})
    assert sorted(tidy_history(raw)["series"]) == ["total", "x"]


@pytest.mark.parametrize(
    ("frame", "kwargs", "message"),
    [
        (pd.DataFrame({"date": ["2020-01-01"], "units": [1]}), {}, "no column 'sales'; columns are ['date', 'units']"),
        (pd.DataFrame({"date": ["2020-01-01"], "units": [1]}), {}, "pass --sales-col"),
        (pd.DataFrame({"day": ["2020-01-01"], "sales": [1]}), {}, "pass --date-col"),
        (pd.DataFrame({"date": ["2020-01-01"], "sales": [1]}), {"series_cols": ["store"]}, "pass --series-cols"),
        (pd.DataFrame({"date": ["2020-01-01", "soon"], "sales": [1, 2]}), {}, "not dates (first: row 1, 'soon')"),
        (pd.DataFrame({"date": ["2020-01-01", "2020-01-02"], "sales": [1, None]}), {}, "missing or non-numeric"),
        (pd.DataFrame({"date": ["2020-01-01", "2020-01-02"], "sales": [1, "x"]}), {}, "first: row 1"),
        (pd.DataFrame({"date": ["2020-01-01", "2020-01-02"], "sales": [1, -3]}), {}, "negative 'sales'"),
        (pd.DataFrame({"date": [], "sales": []}), {}, "no rows"),
    ],
)
def test_tidy_errors_say_what_to_do(frame, kwargs, message):
    with pytest.raises(InvalidInput, match=None) as err:
        tidy_history(frame, **kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_load_csv_gz_and_parquet_agree(raw, tmp_path):
    csv = tmp_path / "sales.csv.gz"
    parquet = tmp_path / "sales.parquet"
    raw.to_csv(csv, index=False)
    raw.to_parquet(parquet)
    from_csv = load_history(str(csv), series_cols=["store_nbr", "family"])
    from_parquet = load_history(parquet, series_cols=["store_nbr", "family"])
    pd.testing.assert_frame_equal(from_csv, from_parquet, check_dtype=False)
    assert from_csv["series"].nunique() == 5


def test_load_sqlite_through_sqlalchemy(raw, tmp_path):
    url = f"sqlite:///{tmp_path / 'sales.db'}"
    engine = sqlalchemy.create_engine(url)
    raw.assign(date=raw["date"].dt.strftime("%Y-%m-%d")).to_sql("sales", engine, index=False)
    raw.head(10).to_sql("recent", engine, index=False)
    engine.dispose()
    history = load_history(url, series_cols=["store_nbr", "family"])
    assert history["series"].nunique() == 5
    assert history["sales"].sum() == pytest.approx(2 * raw["sales"].sum())
    recent = load_history(url, query="SELECT date, sales FROM recent")
    assert recent["series"].unique().tolist() == ["total"]
    with pytest.raises(InvalidInput, match="no such table: nope; pass --query"):
        load_history(url, query="SELECT * FROM nope")


def test_load_errors(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        load_history(str(tmp_path / "missing.csv"))
    (tmp_path / "sales.xlsx").write_bytes(b"x")
    with pytest.raises(InvalidInput, match=r"expected a \.csv, \.csv\.gz, \.parquet"):
        load_history(str(tmp_path / "sales.xlsx"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InvalidInput, match="is empty"):
        load_history(str(tmp_path / "empty.csv"))
    (tmp_path / "header.csv").write_text("date,sales\n")
    with pytest.raises(InvalidInput, match="no rows"):
        load_history(str(tmp_path / "header.csv"))
    with pytest.raises(InvalidInput, match="only for SQL sources"):
        load_history(str(tmp_path / "header.csv"), query="SELECT 1")


def test_demo_data_is_small_reproducible_and_complete(tmp_path):
    assert DEMO_PATH.stat().st_size < 300_000
    regenerated = write_demo(tmp_path / "demo.csv.gz")
    assert gzip.decompress(regenerated.read_bytes()) == gzip.decompress(DEMO_PATH.read_bytes())
    history = demo_history()
    assert history["series"].nunique() == 13
    assert "total" in set(history["series"])
    assert history["date"].min() == pd.Timestamp("2014-01-01")
    assert history["date"].max() == pd.Timestamp("2016-12-31")


def test_a_history_line_with_a_field_more_is_refused_not_shifted(tmp_path):
    """pandas moved the extra leading field into the index: dates became sales and sales vanished, silently."""
    path = tmp_path / "history.csv"
    path.write_text("date,sales\n2020-01-01,5\n2020-01-02,6,7\n2020-01-03,8\n")
    with pytest.raises(InvalidInput, match="line 3: expected 2 fields, saw 3"):
        load_history(str(path))


# --- date formats: detected once from the column's values, or given (--date-format) -------------------


def _daily(start: str, periods: int, fmt: str) -> pd.DataFrame:
    days = pd.date_range(start, periods=periods, freq="D")
    return pd.DataFrame({"date": days.strftime(fmt), "sales": np.arange(periods, dtype=float)})


def test_day_first_dates_are_read_day_first_from_the_first_row():
    """pandas guessed month-first from '01/01/2016': Jan 1, Feb 1 .. Dec 1, then failed on 13/01/2016."""
    tidy = tidy_history(_daily("2016-01-01", 40, "%d/%m/%Y"))  # 01/01/2016 .. 09/02/2016
    assert tidy["date"].tolist() == list(pd.date_range("2016-01-01", periods=40, freq="D"))
    assert tidy.attrs["date_format"] == "%d/%m/%Y"


@pytest.mark.parametrize(
    ("fmt", "detected"),
    [
        ("%m/%d/%Y", "%m/%d/%Y"),
        ("%d.%m.%Y", "%d.%m.%Y"),
        ("%d-%m-%Y", "%d-%m-%Y"),
        ("%Y%m%d", "ISO8601"),
        ("%d/%m/%y", "%d/%m/%y"),
    ],
)
def test_other_date_formats_are_detected(fmt, detected):
    tidy = tidy_history(_daily("2016-12-01", 40, fmt))
    assert tidy["date"].tolist() == list(pd.date_range("2016-12-01", periods=40, freq="D"))
    assert tidy.attrs["date_format"] == detected


def test_iso_dates_integer_dates_and_datetimes_keep_working():
    iso = tidy_history(_daily("2016-01-01", 5, "%Y-%m-%d"))
    assert iso.attrs["date_format"] == "ISO8601"
    numbers = pd.DataFrame({"date": [20160101, 20160102, 20160103], "sales": [1.0, 2.0, 3.0]})
    assert tidy_history(numbers)["date"].tolist() == list(pd.date_range("2016-01-01", periods=3))
    stamps = pd.DataFrame({"date": pd.date_range("2016-01-01", periods=3), "sales": [1.0, 2.0, 3.0]})
    assert tidy_history(stamps)["date"].tolist() == list(pd.date_range("2016-01-01", periods=3))


def test_a_given_date_format_is_used():
    raw = _daily("2016-01-01", 10, "%d/%m/%Y")  # 01/01/2016 .. 10/01/2016: either order fits
    day_first = tidy_history(raw, date_format="%d/%m/%Y")
    assert day_first["date"].tolist() == list(pd.date_range("2016-01-01", periods=10, freq="D"))
    assert day_first.attrs["date_format"] == "%d/%m/%Y"
    month_first = tidy_history(raw, date_format="%m/%d/%Y")
    assert month_first["date"].tolist() == list(pd.date_range("2016-01-01", periods=10, freq="MS"))


def test_ambiguous_dates_fail_in_one_line_naming_date_format():
    with pytest.raises(InvalidInput) as err:
        tidy_history(_daily("2016-01-01", 10, "%d/%m/%Y"))
    message = str(err.value)
    assert "pass --date-format %d/%m/%Y or %m/%d/%Y" in message and "\n" not in message


def test_day_or_month_first_is_settled_by_the_regular_grid():
    """Monthly data on the 1st (days all <= 12): day-first is a monthly grid, month-first 12 days a year."""
    months = pd.date_range("2014-01-01", periods=36, freq="MS")
    raw = pd.DataFrame({"date": months.strftime("%d/%m/%Y"), "sales": 1.0})
    tidy = tidy_history(raw)
    assert tidy["date"].tolist() == list(months) and tidy.attrs["date_format"] == "%d/%m/%Y"


def test_a_bad_value_names_the_format_it_does_not_match():
    raw = _daily("2016-01-01", 40, "%d/%m/%Y")
    raw.loc[30, "date"] = "31/02/2016"
    with pytest.raises(InvalidInput) as err:
        tidy_history(raw)
    message = str(err.value)
    assert "(first: row 30, '31/02/2016')" in message and "%d/%m/%Y" in message, message
    assert "pass --date-format" in message and "--date-col" not in message and "\n" not in message
    with pytest.raises(InvalidInput) as err:
        tidy_history(_daily("2016-01-01", 40, "%d/%m/%Y"), date_format="%Y-%m-%d")
    message = str(err.value)
    assert "40 value(s)" in message and "(first: row 0, '01/01/2016')" in message, message
    assert "in format %Y-%m-%d (given by --date-format)" in message and "--date-col" not in message
    assert "they read as %d/%m/%Y: pass --date-format %d/%m/%Y" in message, message


def test_a_column_of_no_dates_points_at_date_col():
    raw = pd.DataFrame({"date": ["north", "south", "east"], "sales": [1.0, 2.0, 3.0]})
    with pytest.raises(InvalidInput, match="pass --date-col") as err:
        tidy_history(raw)
    assert "(first: row 0, 'north')" in str(err.value)
