"""Sales history in, tidy frame out: CSV, Parquet or SQL, plus the synthetic Store Sales data behind the demo.

Every reader ends in the same tidy shape — `date` (datetime64), `series` (str), `sales` (float) — so the
forecaster never needs to know where the history came from.
"""

from __future__ import annotations

import re
import sys
from functools import reduce
from pathlib import Path

import numpy as np
import pandas as pd

from conveyor.errors import InvalidInput, MalformedInput, NotFound, first_line
from conveyor.io import open_text, read_csv

DEMO_PATH = Path(__file__).parent / "data" / "demo_sales.csv.gz"
DEMO_FAMILIES = ["GROCERY I", "BEVERAGES", "PRODUCE", "CLEANING"]
DEMO_SPEC = {"n_stores": 3, "families": DEMO_FAMILIES, "start": "2014-01-01", "periods": 1096, "seed": 7}
DEMO_SERIES_COLS = ["store_nbr", "family"]
DEFAULT_QUERY = "SELECT * FROM sales"
TOTAL = "total"

# Kaggle Store Sales families with a typical daily level per store, the demo's four first.
FAMILY_LEVELS = {
    "GROCERY I": 3500.0,
    "BEVERAGES": 2400.0,
    "PRODUCE": 1300.0,
    "CLEANING": 1000.0,
    "DAIRY": 700.0,
    "BREAD/BAKERY": 450.0,
    "POULTRY": 350.0,
    "MEATS": 340.0,
    "PERSONAL CARE": 270.0,
    "DELI": 260.0,
    "HOME CARE": 180.0,
    "EGGS": 170.0,
    "FROZEN FOODS": 150.0,
    "PREPARED FOODS": 100.0,
    "LIQUOR,WINE,BEER": 85.0,
    "SEAFOOD": 22.0,
    "GROCERY II": 20.0,
    "HOME AND KITCHEN I": 20.0,
    "HOME AND KITCHEN II": 17.0,
    "CELEBRATION": 9.0,
    "LINGERIE": 7.0,
    "AUTOMOTIVE": 6.0,
    "PLAYERS AND ELECTRONICS": 6.0,
    "PET SUPPLIES": 4.0,
    "LADIESWEAR": 4.0,
    "MAGAZINES": 3.0,
    "SCHOOL AND OFFICE SUPPLIES": 3.0,
    "BEAUTY": 3.0,
    "LAWN AND GARDEN": 6.0,
    "HARDWARE": 1.2,
    "HOME APPLIANCES": 0.5,
    "BABY CARE": 0.2,
    "BOOKS": 0.1,
}

_SQL_DIALECTS = frozenset(
    [
        "sqlite",
        "postgresql",
        "postgres",
        "mysql",
        "mariadb",
        "mssql",
        "oracle",
        "duckdb",
        "snowflake",
        "bigquery",
        "redshift",
        "trino",
    ]
)
_SQL_URL = re.compile(r"^([a-z][a-z0-9]*)(\+\w+)?:")
_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_WEEKDAY_PROFILE = np.array([-0.08, -0.12, -0.09, -0.06, 0.04, 0.18, 0.13])


# --- reading ---------------------------------------------------------------------------------------


def load_history(
    source: str | Path | None,
    *,
    query: str | None = None,
    date_col: str = "date",
    sales_col: str = "sales",
    series_cols: list[str] | None = None,
) -> pd.DataFrame:
    """Read sales history into the tidy `date, series, sales` frame the forecaster trains on.

    `source` is a CSV (optionally compressed) or Parquet path, a SQLAlchemy URL (`sqlite:///sales.db`,
    `postgresql://...`) read with `query` (default `SELECT * FROM sales`), or None for the shipped demo data.
    Series are named by joining `series_cols` with "/", else taken from a `series` column, else the whole
    history is one series "total". A `total` series (the sum per date) is added when there are several.
    """
    raw, label = read_raw(source, query=query)
    if source is None and series_cols is None:
        series_cols = DEMO_SERIES_COLS
    return tidy_history(raw, date_col=date_col, sales_col=sales_col, series_cols=series_cols, label=label)


def read_raw(source: str | Path | None, *, query: str | None = None) -> tuple[pd.DataFrame, str]:
    """The history's rows as stored (before any tidying) and a label naming where they came from."""
    if source is None:
        return _read_file(DEMO_PATH), "demo data"
    if is_sql_url(str(source)):
        return _read_sql(str(source), query or DEFAULT_QUERY), "SQL query result"
    if query is not None:
        raise InvalidInput(f"query= is only for SQL sources (sqlite:///..., postgresql://...), not {source!r}")
    return _read_file(source), f"history {str(source)!r}"


def demo_history() -> pd.DataFrame:
    """The shipped demo history (3 stores x 4 families, daily, 2014-2016) with its `total` series."""
    return load_history(None)


def is_sql_url(source: str) -> bool:
    """A SQLAlchemy URL of a database Conveyor reads history from (sqlite, postgresql, mysql...)."""
    match = _SQL_URL.match(source)
    return bool(match) and match.group(1) in _SQL_DIALECTS


def _read_sql(url: str, query: str) -> pd.DataFrame:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
    except (sqlalchemy.exc.ArgumentError, ImportError) as exc:
        raise InvalidInput(f"cannot open SQL history {url!r}: {first_line(exc)}") from None
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            return pd.read_sql_query(sqlalchemy.text(query), conn)
    except (sqlalchemy.exc.SQLAlchemyError, pd.errors.DatabaseError) as exc:
        cause = exc.__cause__ if isinstance(exc, pd.errors.DatabaseError) and exc.__cause__ else exc
        reason = first_line(cause)
        raise InvalidInput(f"cannot read history from {shown} with {query!r}: {reason}; pass --query") from None
    finally:
        engine.dispose()


def _read_file(source: str | Path) -> pd.DataFrame:
    name = str(source)
    lower = name.lower()
    if "://" not in name and not Path(name).exists():
        raise NotFound(f"history file {name!r} does not exist")
    try:
        if lower.endswith(_CSV_SUFFIXES):  # the CSV reader of every path: a line of another width is refused
            with open_text(name) as f:
                return read_csv(f, name, name)
        if lower.endswith(_PARQUET_SUFFIXES):
            return pd.read_parquet(source)
    except MalformedInput as exc:  # the CSV reader's one line (a bad line, an empty file): the history is refused
        raise InvalidInput(f"history {exc}") from None
    except pd.errors.EmptyDataError:
        raise InvalidInput(f"history file {name!r} is empty: it needs a header and at least one row") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read history file {name!r}: {first_line(exc)}") from None
    raise InvalidInput(
        f"cannot read history {name!r}: expected a .csv, .csv.gz, .parquet file "
        "or a SQLAlchemy URL such as sqlite:///sales.db"
    )


# --- tidying ---------------------------------------------------------------------------------------


def tidy_history(
    raw: pd.DataFrame,
    *,
    date_col: str = "date",
    sales_col: str = "sales",
    series_cols: list[str] | None = None,
    label: str = "history",
) -> pd.DataFrame:
    """Check and reshape a raw frame into sorted `date, series, sales` rows, duplicates summed."""
    if len(raw) == 0:
        raise InvalidInput(f"{label} has no rows: it needs at least one dated sales row")
    _require_column(raw, date_col, "--date-col", label)
    _require_column(raw, sales_col, "--sales-col", label)
    for col in series_cols or ():
        _require_column(raw, col, "--series-cols", label)
    raw = raw.reset_index(drop=True)
    dates = _parse_dates(raw[date_col], date_col, label)
    sales = _parse_sales(raw[sales_col], dates, sales_col, label)
    series = series_names(raw, series_cols)
    tidy = pd.DataFrame({"date": dates, "series": series, "sales": sales})
    tidy = tidy.groupby(["series", "date"], sort=True, as_index=False)["sales"].sum()
    if tidy["series"].nunique() > 1 and not (tidy["series"] == TOTAL).any():
        total = tidy.groupby("date", as_index=False)["sales"].sum().assign(series=TOTAL)
        tidy = pd.concat([tidy, total[["series", "date", "sales"]]], ignore_index=True)
    tidy["series"] = tidy["series"].astype(str)
    return tidy[["date", "series", "sales"]].sort_values(["series", "date"], ignore_index=True)


def _require_column(raw: pd.DataFrame, col: str, option: str, label: str) -> None:
    if col not in raw.columns:
        raise InvalidInput(f"{label} has no column {col!r}; columns are {list(map(str, raw.columns))}: pass {option}")


def _parse_dates(col: pd.Series, name: str, label: str) -> pd.Series:
    values = col.astype(str) if col.dtype.kind in "iu" else col
    parsed = pd.to_datetime(values, errors="coerce") if values.dtype.kind != "M" else values
    bad = parsed.isna().to_numpy()
    if bad.any():
        rows = np.flatnonzero(bad)
        raise InvalidInput(
            f"{label}: {len(rows)} value(s) of column {name!r} are not dates "
            f"(first: row {rows[0]}, {col.iloc[rows[0]]!r}); fix them or pass --date-col"
        )
    if parsed.dt.tz is not None:
        parsed = parsed.dt.tz_localize(None)
    return parsed.astype("datetime64[ns]")


def _parse_sales(col: pd.Series, dates: pd.Series, name: str, label: str) -> pd.Series:
    sales = pd.to_numeric(col, errors="coerce").astype(float)
    missing = (~np.isfinite(sales.to_numpy())).nonzero()[0]
    if len(missing):
        i = missing[0]
        raise InvalidInput(
            f"{label}: {len(missing)} row(s) have missing or non-numeric {name!r} "
            f"(first: row {i}, date {dates.iloc[i].date()}, value {col.iloc[i]!r}); drop or fill them"
        )
    negative = (sales.to_numpy() < 0).nonzero()[0]
    if len(negative):
        i = negative[0]
        raise InvalidInput(
            f"{label}: {len(negative)} row(s) have negative {name!r} "
            f"(first: row {i}, date {dates.iloc[i].date()}, value {sales.iloc[i]}); sales must be >= 0"
        )
    return sales


def series_names(raw: pd.DataFrame, series_cols: list[str] | None) -> pd.Series | str:
    """Each row's series: `series_cols` joined with '/', else a `series` column, else the one series 'total'."""
    if series_cols:
        parts = [raw[c].astype(str) for c in series_cols]
        return reduce(lambda a, b: a + "/" + b, parts)
    if "series" in raw.columns:
        return raw["series"].astype(str)
    return TOTAL


# --- synthetic Store Sales -------------------------------------------------------------------------


def generate_sales(
    n_stores: int,
    families: list[str] | int,
    start: str = "2013-01-01",
    periods: int | None = None,
    freq: str = "D",
    seed: int = 0,
) -> pd.DataFrame:
    """Deterministic synthetic sales in Kaggle Store Sales' shape: `date, store_nbr, family, sales`.

    Each series (store x family) has its own level, trend, weekly profile, yearly cycle and noise; New Year
    is near-closed and the days before Christmas peak. Daily values are simulated for all series at once
    with numpy and summed into weeks ("W", "W-SUN"...) or months ("MS", "ME") for coarser `freq`.
    `periods` defaults to three years. Rows are ordered by date, store, family like the Kaggle file.
    """
    names = _family_names(families)
    labels = _period_labels(start, periods, freq)
    days, offsets = _daily_span(labels, freq)
    rng = np.random.default_rng(seed)
    daily = _simulate_daily(days, n_stores, names, rng)
    values = daily if offsets is None else np.add.reduceat(daily, offsets, axis=1)
    n_series = n_stores * len(names)
    n_dates = len(labels)
    return pd.DataFrame(
        {
            "date": np.repeat(labels.to_numpy(), n_series),
            "store_nbr": np.tile(np.repeat(np.arange(1, n_stores + 1), len(names)), n_dates),
            "family": pd.Categorical.from_codes(np.tile(np.arange(len(names)), n_stores * n_dates), names),
            "sales": np.round(values.T.ravel(), 2),
        }
    )


def _family_names(families: list[str] | int) -> list[str]:
    if isinstance(families, int):
        known = list(FAMILY_LEVELS)
        return known[:families] + [f"FAMILY {i + 1}" for i in range(len(known), families)]
    if not families:
        raise ValueError("families must name at least one product family")
    return list(families)


def _period_labels(start: str, periods: int | None, freq: str) -> pd.DatetimeIndex:
    if periods is None:
        first = pd.Timestamp(start)
        return pd.date_range(first, first + pd.DateOffset(years=3) - pd.Timedelta(days=1), freq=freq)
    return pd.date_range(start, periods=periods, freq=freq)


def _daily_span(labels: pd.DatetimeIndex, freq: str) -> tuple[pd.DatetimeIndex, np.ndarray | None]:
    """The days to simulate and where each output period starts among them (None: daily output)."""
    base = freq.upper().split("-")[0]
    if base == "D":
        return labels, None
    if base == "W":
        starts = labels - pd.Timedelta(days=6)
        end = labels[-1]
    elif base in ("MS", "M", "ME"):
        starts = labels.to_period("M").start_time
        end = labels[-1].to_period("M").end_time.normalize()
    else:
        raise ValueError(f"generate_sales supports freq 'D', 'W[-DAY]', 'MS' or 'ME', not {freq!r}")
    days = pd.date_range(starts[0], end, freq="D")
    return days, (starts - days[0]).days.to_numpy()


def _simulate_daily(days: pd.DatetimeIndex, n_stores: int, families: list[str], rng) -> np.ndarray:
    """Sales of every series on every day, shape (n_series, n_days); multiplicative components."""
    n_fam = len(families)
    n_series = n_stores * n_fam
    fam_level = np.array([FAMILY_LEVELS.get(f, 0.0) for f in families])
    unknown = fam_level == 0
    fam_level[unknown] = rng.lognormal(4.0, 1.5, unknown.sum())
    store_factor = rng.lognormal(0.0, 0.35, n_stores)
    level = (store_factor[:, None] * fam_level[None, :]).ravel() * rng.lognormal(0.0, 0.1, n_series)
    years = (days - days[0]).days.to_numpy() / 365.25
    growth = rng.uniform(0.02, 0.12, n_series)
    trend = 1.0 + growth[:, None] * years[None, :]
    weekly_amp = rng.uniform(0.6, 1.4, n_series)
    profile = 1.0 + weekly_amp[:, None] * _WEEKDAY_PROFILE + rng.normal(0.0, 0.015, (n_series, 7))
    weekly = profile[:, days.day_of_week.to_numpy()]
    angle = 2.0 * np.pi * days.day_of_year.to_numpy() / 365.25
    yearly_amp = rng.uniform(0.05, 0.2, n_series)[:, None]
    phase = rng.uniform(0.0, 2.0 * np.pi, n_series)[:, None]
    yearly = 1.0 + yearly_amp * np.sin(angle + phase) + 0.3 * yearly_amp * np.sin(2.0 * angle + 2.0 * phase)
    noise = rng.lognormal(0.0, 1.0, (n_series, len(days))) ** rng.uniform(0.04, 0.1, n_series)[:, None]
    return level[:, None] * trend * weekly * yearly * _holidays(days)[None, :] * noise


def _holidays(days: pd.DatetimeIndex) -> np.ndarray:
    """New Year's Day nearly closed, a ramp up to Christmas Eve, Christmas Day low."""
    month = days.month.to_numpy()
    day = days.day.to_numpy()
    factor = np.ones(len(days))
    factor[(month == 1) & (day == 1)] = 0.05
    before = (month == 12) & (day >= 15) & (day <= 24)
    factor[before] = 1.0 + 0.08 * (day[before] - 14)
    factor[(month == 12) & (day == 25)] = 0.3
    return factor


def write_demo(path: Path = DEMO_PATH) -> Path:
    """Regenerate the shipped demo file byte for byte (fixed seed, gzip without a timestamp)."""
    frame = generate_sales(**DEMO_SPEC)
    frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, compression={"method": "gzip", "mtime": 0})
    return path


if __name__ == "__main__":
    print(f"wrote {write_demo(Path(sys.argv[1]) if len(sys.argv) > 1 else DEMO_PATH)}")
