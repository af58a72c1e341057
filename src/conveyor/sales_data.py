"""Sales history in, tidy frame out: CSV, Parquet or SQL, plus the synthetic Store Sales data behind the demo.

Every reader ends in the same tidy shape — `date` (datetime64), `series` (str), `sales` (float) — so the
forecaster never needs to know where the history came from.
"""

from __future__ import annotations

import re
import sys
import warnings
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
    date_format: str | None = None,
) -> pd.DataFrame:
    """Read sales history into the tidy `date, series, sales` frame the forecaster trains on.

    `source` is a CSV (optionally compressed) or Parquet path, a SQLAlchemy URL (`sqlite:///sales.db`,
    `postgresql://...`) read with `query` (default `SELECT * FROM sales`), or None for the shipped demo data.
    Series are named by joining `series_cols` with "/", else taken from a `series` column, else the whole
    history is one series "total". A `total` series (the sum per date) is added when there are several.
    Dates are read with `date_format` or the format detected from them (see `parse_dates`), kept in the
    frame's `attrs["date_format"]`.
    """
    raw, label = read_raw(source, query=query)
    if source is None and series_cols is None:
        series_cols = DEMO_SERIES_COLS
    return tidy_history(
        raw, date_col=date_col, sales_col=sales_col, series_cols=series_cols, label=label, date_format=date_format
    )


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
    date_format: str | None = None,
) -> pd.DataFrame:
    """Check and reshape a raw frame into sorted `date, series, sales` rows, duplicates summed; the date format
    used (given or detected, None for datetimes) is in `attrs["date_format"]`."""
    if len(raw) == 0:
        raise InvalidInput(f"{label} has no rows: it needs at least one dated sales row")
    _require_column(raw, date_col, "--date-col", label)
    _require_column(raw, sales_col, "--sales-col", label)
    for col in series_cols or ():
        _require_column(raw, col, "--series-cols", label)
    raw = raw.reset_index(drop=True)
    dates, used = parse_dates(raw[date_col], date_col, label, date_format)
    sales = _parse_sales(raw[sales_col], dates, sales_col, label)
    series = series_names(raw, series_cols)
    tidy = pd.DataFrame({"date": dates, "series": series, "sales": sales})
    tidy = tidy.groupby(["series", "date"], sort=True, as_index=False)["sales"].sum()
    if tidy["series"].nunique() > 1 and not (tidy["series"] == TOTAL).any():
        total = tidy.groupby("date", as_index=False)["sales"].sum().assign(series=TOTAL)
        tidy = pd.concat([tidy, total[["series", "date", "sales"]]], ignore_index=True)
    tidy["series"] = tidy["series"].astype(str)
    tidy = tidy[["date", "series", "sales"]].sort_values(["series", "date"], ignore_index=True)
    tidy.attrs["date_format"] = used
    return tidy


def _require_column(raw: pd.DataFrame, col: str, option: str, label: str) -> None:
    if col not in raw.columns:
        raise InvalidInput(f"{label} has no column {col!r}; columns are {list(map(str, raw.columns))}: pass {option}")


_DATE_SAMPLE = 10_000
_DATE_FORMATS = (
    "ISO8601",
    "%d/%m/%Y",
    "%m/%d/%Y",
    "%d.%m.%Y",
    "%d-%m-%Y",
    "%m-%d-%Y",
    "%Y%m%d",
    "%d/%m/%y",
    "%m/%d/%y",
    "%d.%m.%y",
)


def parse_dates(
    col: pd.Series, name: str = "date", label: str = "history", date_format: str | None = None
) -> tuple[pd.Series, str | None]:
    """The column as datetime64[ns] and the format it was read with: `date_format` (a strftime format such as
    `%d/%m/%Y`, or `ISO8601`) when given, else the one `detect_date_format` finds; None for a column that
    already holds datetimes. A value that does not match is refused in one line naming the format."""
    used, how = _given_or_detected(col, name, label, date_format)
    parsed = to_dates(col, used, name, label)
    bad = parsed.isna().to_numpy()
    if bad.any():
        raise InvalidInput(_not_dates(col, bad, name, label, used, how))
    return parsed, used


def settle_date_format(
    col: pd.Series, name: str = "date", label: str = "history", date_format: str | None = None
) -> str | None:
    """The format to read every chunk of a history with, from its first chunk: `date_format` or the detected
    one. For readers that make a bad value a reject: refused only when most values do not read with it."""
    used, how = _given_or_detected(col, name, label, date_format)
    bad = to_dates(col, used, name, label).isna().to_numpy()
    if bad.mean() > 0.5:
        raise InvalidInput(_not_dates(col, bad, name, label, used, how))
    return used


def _given_or_detected(col: pd.Series, name: str, label: str, date_format: str | None) -> tuple[str | None, str]:
    if date_format is not None:
        return date_format, "given by --date-format"
    return detect_date_format(col, name, label), "detected from the column"


def _not_dates(col: pd.Series, bad: np.ndarray, name: str, label: str, used: str | None, how: str) -> str:
    rows = np.flatnonzero(bad)
    first = f"(first: row {col.index[rows[0]]}, {col.iloc[rows[0]]!r})"
    if used is None:
        return f"{label}: {len(rows)} value(s) of column {name!r} are not dates {first}; fix them"
    hint = "fix them or pass --date-format"
    if bad.mean() > 0.5:  # most values: the wrong format, or no dates at all (the wrong column)
        hint = _format_hint(col, used)
    return f"{label}: {len(rows)} value(s) of column {name!r} are not dates {first} in format {used} ({how}); {hint}"


def _format_hint(col: pd.Series, used: str) -> str:
    fits = [f for f in _best_formats(_date_sample(col))[0] if f != used]
    if fits:
        return f"they read as {' or '.join(fits)}: pass --date-format {' or '.join(fits)}"
    return "is it the date column? pass --date-col, or --date-format"


def to_dates(col: pd.Series, date_format: str | None, name: str = "date", label: str = "history") -> pd.Series:
    """The column as naive datetime64[ns], NaT where a value does not match `date_format` (None: values that
    are datetimes already, else pandas' own guess). Integers such as 20160131 are read as text."""
    values = col.astype(str) if col.dtype.kind in "iu" else col
    if values.dtype.kind == "M":
        return _naive(values).astype("datetime64[ns]")
    # Each distinct value is parsed once (a history repeats every date once per series): 50x faster than
    # parsing every row with a format, which pandas' own cache does not speed up.
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    try:
        parsed = pd.to_datetime(pd.Series(uniques, dtype=object), format=date_format, errors="coerce")
    except ValueError as exc:  # mixed time zones, an invalid format: not a per-value problem
        raise InvalidInput(f"{label}: cannot read column {name!r} as dates: {first_line(exc)}") from None
    known = _naive(parsed).to_numpy(dtype="datetime64[ns]")
    dates = np.full(len(codes), np.datetime64("NaT"), dtype="datetime64[ns]")
    found = codes >= 0
    dates[found] = known[codes[found]]
    return pd.Series(dates, index=col.index, name=col.name)


def _naive(dates: pd.Series) -> pd.Series:
    return dates.dt.tz_localize(None) if dates.dt.tz is not None else dates


def detect_date_format(col: pd.Series, name: str = "date", label: str = "history") -> str | None:
    """The one format a date column is read with, settled once from a sample of its distinct values.

    ISO 8601 first; else the candidate formats that read the most values (day-first, month-first, dotted,
    compact...). When day-first and month-first both fit (every day <= 12), the reading whose dates fill a
    regular daily/weekly/monthly grid wins; if neither clearly does, the user is asked for --date-format.
    Returns None for a column that already holds datetimes.
    """
    if col.dtype.kind == "M":
        return None
    sample = _date_sample(col)
    if sample.empty:
        return "ISO8601"  # no values at all: parse_dates names the first missing one
    formats, readings = _best_formats(sample)
    if not formats:
        raise InvalidInput(
            f"{label}: column {name!r} holds no dates (first: row {sample.index[0]}, {sample.iloc[0]!r}): "
            "pass --date-col to name the date column, or --date-format"
        )
    if len(formats) == 1:
        return formats[0]
    first, second = (readings[f] for f in formats[:2])
    i = int(np.flatnonzero((first != second).to_numpy())[0])
    raise InvalidInput(
        f"{label}: the dates of column {name!r} read as {formats[0]} or {formats[1]} ({sample.iloc[i]!r} is "
        f"{first.iloc[i]:%Y-%m-%d} or {second.iloc[i]:%Y-%m-%d}): pass --date-format {formats[0]} or {formats[1]}"
    )


def _date_sample(col: pd.Series) -> pd.Series:
    """Up to _DATE_SAMPLE distinct non-null values, as text for integers (20160131), with their row labels."""
    values = col.dropna()
    if values.dtype.kind in "iu":
        values = values.astype(str)
    return values.drop_duplicates().head(_DATE_SAMPLE)


def _best_formats(sample: pd.Series) -> tuple[list[str], dict[str, pd.Series]]:
    """The format that reads the sample, or the two best readings when it is ambiguous (none: no dates), and
    what each format read."""
    if sample.empty:
        return [], {}
    read = {}
    for fmt in _date_candidates(sample):
        parsed = to_dates(sample, fmt)
        if fmt == "ISO8601" and parsed.notna().all():
            return [fmt], {fmt: parsed}
        read[fmt] = parsed
    best = max(int(p.notna().sum()) for p in read.values())
    if best == 0:
        return [], read
    readings: dict[str, pd.Series] = {}  # formats that read the most values, one per distinct result
    for fmt, parsed in read.items():
        if parsed.notna().sum() == best and not any(parsed.equals(p) for p in readings.values()):
            readings[fmt] = parsed
    if len(readings) == 1 or "ISO8601" in readings:  # ISO 8601 is year-month-day, never ambiguous
        return [next(iter(readings))], read
    density = {fmt: _grid_density(parsed) for fmt, parsed in readings.items()}
    ranked = sorted(density, key=density.get, reverse=True)
    if density[ranked[0]] >= 2 * density[ranked[1]]:
        return ranked[:1], read
    return ranked[:2], read


def _date_candidates(sample: pd.Series) -> list[str]:
    """The fixed candidates, then pandas' guesses (month- and day-first) from the first value, for the rest."""
    from pandas.tseries.api import guess_datetime_format

    candidates = list(_DATE_FORMATS)
    first = sample.iloc[0]
    if isinstance(first, str):
        for dayfirst in (False, True):
            with warnings.catch_warnings():  # "Parsing dates in %Y%m%d format when dayfirst=True..."
                warnings.simplefilter("ignore", UserWarning)
                guess = guess_datetime_format(first, dayfirst=dayfirst)
            if guess and guess not in candidates:
                candidates.append(guess)
    return candidates


def _grid_density(parsed: pd.Series) -> float:
    """How fully the distinct dates fill the regular grid they lie on: 1.0 for evenly spaced days, weeks or
    months; near 0 for dates bunched into a few stretches (day-first dates read month-first)."""
    dates = pd.DatetimeIndex(parsed.dropna().unique()).sort_values()
    if len(dates) < 2:
        return 1.0
    offsets = (dates - dates[0]).days.to_numpy()
    daily = len(dates) / (offsets[-1] // max(int(np.gcd.reduce(np.diff(offsets))), 1) + 1)
    if dates.day.nunique() > 1:
        return daily
    months = dates.year.to_numpy() * 12 + dates.month.to_numpy()
    step = max(int(np.gcd.reduce(np.diff(months))), 1)
    return max(daily, len(dates) / ((months[-1] - months[0]) // step + 1))


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
