"""A model's input and output columns, used to validate and coerce input at every entry point.

Validation is columnar: records are turned into one list per column and each column is checked with
numpy at once, so a request of one row and a file of a million rows go through the same code.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from conveyor.errors import InvalidInput

TYPES = ("int", "float", "str", "bool", "datetime", "object")
_MISSING = object()
_MAX_CHOICES_SHOWN = 8


@dataclass(frozen=True)
class Field:
    """One column: its type, whether it may be omitted (`default`), and its bounds or allowed values."""

    name: str
    type: str = "float"
    default: Any = None
    required: bool = True
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None  # allowed values: strings, or the numbers/bools of a coded column
    description: str = ""
    # an output whose value per row is a list of this type: a path, such as a forecast's dates or values
    items: str | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"field {self.name!r}: unknown type {self.type!r}, expected one of {TYPES}")
        if self.items is not None and self.items not in TYPES:
            raise ValueError(f"field {self.name!r}: unknown items type {self.items!r}, expected one of {TYPES}")
        object.__setattr__(self, "allowed", frozenset(self.choices) if self.choices is not None else None)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if v not in (None, "")}
        if self.choices is not None:
            d["choices"] = list(self.choices)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Field:
        d = dict(d)
        if d.get("choices") is not None:
            d["choices"] = tuple(d["choices"])
        return cls(**d)

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + _show_choices(self.choices)
        kind = {
            "int": "an integer",
            "float": "a finite number",
            "str": "a string",
            "bool": "true or false",
            "datetime": "a date",
            "object": "a value",
        }[self.type]
        if self.min is not None and self.max is not None:
            return f"{kind} between {_num(self.min)} and {_num(self.max)}"
        if self.min is not None:
            return f"{kind} >= {_num(self.min)}"
        if self.max is not None:
            return f"{kind} <= {_num(self.max)}"
        return kind


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _show_choices(choices: Sequence[Any]) -> str:
    shown = ", ".join(repr(c) for c in choices[:_MAX_CHOICES_SHOWN])
    more = len(choices) - _MAX_CHOICES_SHOWN
    return shown + (f" (and {more} more)" if more > 0 else "")


def _where(rows: np.ndarray, n: int) -> str:
    if n == 1:
        return ""
    first = int(rows[0])
    extra = len(rows) - 1
    return f" (row {first}" + (f" and {extra} more)" if extra else ")")


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Field, ...]
    outputs: tuple[Field, ...] = ()
    _index: dict[str, Field] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({f.name: f for f in self.inputs})

    @property
    def input_names(self) -> list[str]:
        return [f.name for f in self.inputs]

    @functools.cached_property
    def plain_floats(self) -> bool:
        """Every input a float without choices or bounds: finite float64 values are valid as they stand."""
        return all(f.type == "float" and f.choices is None and f.min is None and f.max is None for f in self.inputs)

    @property
    def output_names(self) -> list[str]:
        return [f.name for f in self.outputs]

    def field(self, name: str) -> Field:
        return self._index[name]

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [f.to_dict() for f in self.inputs], "outputs": [f.to_dict() for f in self.outputs]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Signature:
        return cls(
            inputs=tuple(Field.from_dict(f) for f in d.get("inputs", [])),
            outputs=tuple(Field.from_dict(f) for f in d.get("outputs", [])),
        )

    @classmethod
    def infer(cls, example: pd.DataFrame, output: pd.DataFrame | None = None) -> Signature:
        """Infer a signature from example input rows (and the model's output on them)."""
        return cls(
            inputs=tuple(Field(str(c), column_type(example[c])) for c in example.columns),
            outputs=tuple(Field(str(c), column_type(output[c])) for c in output.columns) if output is not None else (),
        )

    # --- validation ----------------------------------------------------------------------------
    def validate_records(self, records: Sequence[Mapping[str, Any]], allow_extra: bool = False) -> pd.DataFrame:
        """Validate JSON-like rows (HTTP, messages); unknown keys are refused unless `allow_extra`."""
        return pd.DataFrame(self.check_records(records, allow_extra), copy=False)

    def check_records(self, records: Sequence[Mapping[str, Any]], allow_extra: bool = False) -> dict[str, np.ndarray]:
        """`validate_records` without building a DataFrame: the service merges many requests' columns first."""
        if not isinstance(records, Sequence) or isinstance(records, str | bytes):
            raise InvalidInput("expected a list of objects, one per row")
        if not records:
            raise InvalidInput("no rows: send at least one row")
        names = self.input_names
        known = set(names)
        columns: dict[str, list[Any]] = {n: [] for n in names}
        for i, rec in enumerate(records):
            if not isinstance(rec, Mapping):
                raise InvalidInput(f"row {i}: expected an object with fields {names}, got {type(rec).__name__}")
            if not allow_extra and not known.issuperset(rec):
                unknown = sorted(set(rec) - known)
                raise InvalidInput(f"row {i}: unknown field(s) {unknown}; this model takes {names}")
            for n in names:
                columns[n].append(rec.get(n, _MISSING))
        return self.check_columns(columns, len(records))

    def validate_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Validate a whole DataFrame (files, batch); extra columns are dropped from the model's input."""
        if len(frame) == 0:
            raise InvalidInput("no rows: the input is empty")
        columns = {n: frame[n] if n in frame.columns else _MISSING for n in self.input_names}
        return self.validate_columns(columns, len(frame))

    def validate_columns(self, columns: Mapping[str, Any], n: int) -> pd.DataFrame:
        return pd.DataFrame(self.check_columns(columns, n), copy=False)

    def check_columns(self, columns: Mapping[str, Any], n: int) -> dict[str, np.ndarray]:
        """Check and coerce one column at a time; `columns[name]` may be a list, a Series or missing."""
        return {f.name: _validate_column(f, columns.get(f.name, _MISSING), n) for f in self.inputs}


def column_type(s: pd.Series) -> str:
    """The signature type of a column of values (how example rows and model outputs are described)."""
    kind = s.dtype.kind
    if kind == "b":
        return "bool"
    if kind in "iu":
        return "int"
    if kind == "f":
        return "float"
    if kind == "M":
        return "datetime"
    if kind in "OUS" or isinstance(s.dtype, pd.StringDtype):
        sample = s.dropna()
        if len(sample) and all(isinstance(v, str) for v in sample.iloc[:100]):
            return "str"
        return "object"
    return "object"


def _fill_missing(f: Field, col: Any, n: int) -> list[Any] | np.ndarray | pd.Series:
    if col is _MISSING:
        if f.required and f.default is None:
            raise InvalidInput(f"missing field {f.name!r}: {f.describe()} is required")
        return [f.default] * n
    if isinstance(col, list):
        holes = [i for i, v in enumerate(col) if v is _MISSING or v is None]
        if holes:
            if f.required and f.default is None:
                raise InvalidInput(f"missing field {f.name!r}: {f.describe()} is required{_where(np.array(holes), n)}")
            col = [f.default if (v is _MISSING or v is None) else v for v in col]
        return col
    # numbers decoded from tensors: only a float NaN can be missing, and a pandas Series costs ~50x the check
    numeric = isinstance(col, np.ndarray) and col.dtype.kind in "iubf" and col.ndim == 1
    if numeric and (col.dtype.kind != "f" or not np.isnan(col).any()):
        return col
    series = col if isinstance(col, pd.Series) else pd.Series(col)
    nulls = series.isna().to_numpy()
    if nulls.any():
        if f.required and f.default is None:
            rows = np.flatnonzero(nulls)
            raise InvalidInput(f"missing value for {f.name!r}: {f.describe()} is required{_where(rows, n)}")
        series = series.where(~nulls, f.default)
    return series


def _validate_column(f: Field, col: Any, n: int) -> np.ndarray:
    # a decoded float tensor has nothing to fill, coerce or refuse: taken as it is after one scan
    arr = col if f.type == "float" and _finite_floats(col) else _coerce(f, _fill_missing(f, col, n), n)
    if f.choices is not None and f.type in ("int", "float", "bool"):
        unknown = np.flatnonzero(~np.isin(arr, np.asarray(f.choices)))
        if len(unknown):
            raise InvalidInput(
                f"unknown {f.name} {_show(arr[unknown[0]])}{_where(unknown, n)}; known: {_show_choices(f.choices)}"
            )
    if f.min is not None or f.max is not None:
        bad = np.zeros(len(arr), dtype=bool)
        if f.min is not None:
            bad |= arr < f.min
        if f.max is not None:
            bad |= arr > f.max
        if bad.any():
            rows = np.flatnonzero(bad)
            raise InvalidInput(f"{f.name!r} must be {f.describe()}, got {_show(arr[rows[0]])}{_where(rows, n)}")
    return arr


def _coerce(f: Field, values: Any, n: int) -> np.ndarray:
    """`values` as the field's type, or a precise refusal."""
    if f.type == "float":
        return _to_float(f, values, n)
    if f.type == "int":
        return _to_int(f, values, n)
    if f.type == "bool":
        return _to_bool(f, values, n)
    if f.type == "datetime":
        return _to_datetime(f, values, n)
    if f.type == "str":
        return _to_str(f, values, n)
    return np.asarray(values, dtype=object)


def _finite_floats(col: Any) -> bool:
    """A 1-D float64 array without NaN or infinity: a float column as it stands, in one scan."""
    return type(col) is np.ndarray and col.dtype == np.float64 and col.ndim == 1 and bool(np.isfinite(col).all())


def _show(v: Any) -> str:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        v = int(v)
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _bad_elements(values: Iterable[Any], ok) -> np.ndarray:
    return np.array([i for i, v in enumerate(values) if not ok(v)], dtype=int)


def _numeric_ok(v: Any) -> bool:
    if isinstance(v, bool | np.bool_):
        return False
    if isinstance(v, int | float | np.integer | np.floating):
        try:
            return math.isfinite(v)
        except OverflowError:  # an integer past any float
            return False
    if isinstance(v, str):
        try:
            return math.isfinite(float(v))
        except ValueError:
            return False
    return False


def _fail(f: Field, values: Any, bad: np.ndarray, n: int) -> InvalidInput:
    seq = values.tolist() if hasattr(values, "tolist") else list(values)
    return InvalidInput(f"{f.name!r} must be {f.describe()}, got {_show(seq[int(bad[0])])}{_where(bad, n)}")


def _to_float(f: Field, values: Any, n: int) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is not None and _has_bool(values):
        arr = None
    if arr is None:
        bad = _bad_elements(_as_list(values), _numeric_ok)
        raise _fail(f, values, bad, n)
    if arr.ndim != 1:
        raise InvalidInput(f"{f.name!r} must be {f.describe()}: got nested values")
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InvalidInput(f"{f.name!r} must be {f.describe()}, got {_show(arr[bad[0]])}{_where(bad, n)}")
    return arr


def _to_datetime(f: Field, values: Any, n: int) -> np.ndarray:
    series = pd.Series(values)
    try:
        arr = pd.to_datetime(series, errors="raise").to_numpy()
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"{f.name!r}: expected {f.describe()}: {exc}") from None
    # pandas reads "", "NaT", NaN and floats past its range as NaT: no date, which must not pass for one. Only an
    # optional field without a default may stay empty, where no value was given.
    nat = pd.isna(arr)
    if not f.required and f.default is None:
        nat &= ~series.isna().to_numpy()
    bad = np.flatnonzero(nat)
    if len(bad):
        raise InvalidInput(
            f"{f.name!r}: expected {f.describe()}, got {_show(_as_list(values)[bad[0]])}{_where(bad, n)}"
        )
    return arr


def _to_int(f: Field, values: Any, n: int) -> np.ndarray:
    if isinstance(values, pd.Series | np.ndarray) and values.dtype.kind in "iu":
        return np.asarray(values, dtype=np.int64)
    arr = _to_float(f, values, n)
    whole = arr == np.floor(arr)
    if not whole.all():
        bad = np.flatnonzero(~whole)
        raise InvalidInput(f"{f.name!r} must be {f.describe()}, got {_show(arr[bad[0]])}{_where(bad, n)}")
    if (np.abs(arr) > 2**62).any():
        bad = np.flatnonzero(np.abs(arr) > 2**62)
        raise InvalidInput(f"{f.name!r} must be {f.describe()}, got {_show(arr[bad[0]])}{_where(bad, n)}")
    return arr.astype(np.int64)


_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


def _to_bool(f: Field, values: Any, n: int) -> np.ndarray:
    if isinstance(values, pd.Series) and values.dtype.kind == "b":
        return values.to_numpy()
    out = np.empty(n, dtype=bool)
    for i, v in enumerate(_as_list(values)):
        if isinstance(v, bool | np.bool_) or (isinstance(v, int | np.integer) and v in (0, 1)):
            out[i] = bool(v)
        elif isinstance(v, str) and v.lower() in _TRUE | _FALSE:
            out[i] = v.lower() in _TRUE
        else:
            raise InvalidInput(f"{f.name!r} must be {f.describe()}, got {_show(v)}{_where(np.array([i]), n)}")
    return out


def _to_str(f: Field, values: Any, n: int) -> np.ndarray:
    lst = _as_list(values)
    bad = [i for i, v in enumerate(lst) if not isinstance(v, str | int | np.integer) or isinstance(v, bool)]
    if bad:
        raise _fail(f, lst, np.array(bad), n)
    arr = np.array([v if isinstance(v, str) else str(v) for v in lst], dtype=object)
    if f.choices is not None:
        allowed = f.allowed
        unknown = [i for i, v in enumerate(arr) if v not in allowed]
        if unknown:
            raise InvalidInput(
                f"unknown {f.name} {_show(arr[unknown[0]])}{_where(np.array(unknown), n)}; "
                f"known: {_show_choices(f.choices)}"
            )
    return arr


def _has_bool(values: Any) -> bool:
    if isinstance(values, pd.Series | np.ndarray):
        return values.dtype.kind == "b" or (
            values.dtype.kind == "O" and any(isinstance(v, bool | np.bool_) for v in values)
        )
    return any(isinstance(v, bool) for v in values)


def _as_list(values: Any) -> list[Any]:
    if isinstance(values, list):
        return values
    if hasattr(values, "tolist"):
        return values.tolist()
    return list(values)
