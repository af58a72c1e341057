"""Signature validation: coercion, defaults, bounds and the exact messages a user reads."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from conveyor.errors import InvalidInput
from conveyor.signature import Field, Signature

FORECAST = Signature(
    (
        Field("series", "str", default="total", required=False, choices=("total", "1/BEVERAGES")),
        Field("range", "int", default=1, required=False, min=1, max=365),
    )
)
TABULAR = Signature((Field("x0", "float"), Field("x1", "float"), Field("flag", "bool", default=False, required=False)))


def test_defaults_and_string_coercion():
    out = FORECAST.validate_records([{"range": "7"}, {"series": "1/BEVERAGES"}])
    assert out["series"].tolist() == ["total", "1/BEVERAGES"]
    assert out["range"].tolist() == [7, 1]
    assert out["range"].dtype == np.int64


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"range": 0}, "'range' must be an integer between 1 and 365, got 0"),
        ({"range": -1}, "got -1"),
        ({"range": 10**9}, "got 1000000000"),
        ({"range": "abc"}, "got 'abc'"),
        ({"range": 2.5}, "got 2.5"),
        ({"range": True}, "got True"),
        ({"range": float("nan")}, "got nan"),
        ({"range": float("inf")}, "got inf"),
        ({"series": "nope"}, "unknown series 'nope'; known: 'total', '1/BEVERAGES'"),
        ({"series": ["a"]}, "'series' must be one of"),
        ({"ragne": 3}, "unknown field(s) ['ragne']"),
    ],
)
def test_bad_values_have_precise_messages(record, message):
    with pytest.raises(InvalidInput) as err:
        FORECAST.validate_records([record])
    assert message in str(err.value)


def test_missing_required_and_row_numbers():
    with pytest.raises(InvalidInput, match="missing field 'x1'"):
        TABULAR.validate_records([{"x0": 1}])
    with pytest.raises(InvalidInput, match=r"'x0' must be a finite number, got 'bad' \(row 2\)"):
        TABULAR.validate_records([{"x0": 1, "x1": 2}, {"x0": 1, "x1": 2}, {"x0": "bad", "x1": 2}])


def test_frame_validation_is_vectorised_and_reports_rows():
    n = 200_000
    frame = pd.DataFrame({"x0": np.arange(n, dtype=float), "x1": np.ones(n), "extra": "kept out"})
    out = TABULAR.validate_frame(frame)
    assert list(out.columns) == ["x0", "x1", "flag"] and len(out) == n and not out["flag"].any()
    frame.loc[[7, 9], "x1"] = np.nan
    with pytest.raises(InvalidInput, match=r"missing value for 'x1'.*\(row 7 and 1 more\)"):
        TABULAR.validate_frame(frame)
    with pytest.raises(InvalidInput, match="no rows"):
        TABULAR.validate_frame(frame.iloc[:0])


def test_bools_and_round_trip():
    out = TABULAR.validate_records([{"x0": 1, "x1": 2, "flag": "true"}, {"x0": 1, "x1": 2, "flag": 0}])
    assert out["flag"].tolist() == [True, False]
    assert Signature.from_dict(FORECAST.to_dict()) == FORECAST


def test_infer_from_example():
    example = pd.DataFrame({"a": [1, 2], "b": [0.5, 1.0], "c": ["x", "y"], "d": [True, False]})
    sig = Signature.infer(example, pd.DataFrame({"prediction": [1.0, 2.0]}))
    assert [(f.name, f.type) for f in sig.inputs] == [("a", "int"), ("b", "float"), ("c", "str"), ("d", "bool")]
    assert sig.output_names == ["prediction"]


def test_not_a_list_of_objects():
    with pytest.raises(InvalidInput, match="expected a list"):
        TABULAR.validate_records("x0=1")
    with pytest.raises(InvalidInput, match="row 0: expected an object"):
        TABULAR.validate_records([[1, 2]])


def test_choices_of_numbers_and_bools():
    """An encoder's integer categories, say: an unknown one is refused here, not by the model (a 500)."""
    from conveyor.validation import split

    sig = Signature((Field("seats", "int", choices=(1, 5, 20)), Field("trial", "bool", choices=(False,))))
    assert sig.validate_records([{"seats": "5", "trial": "no"}])["seats"].tolist() == [5]
    with pytest.raises(InvalidInput) as err:
        sig.validate_records([{"seats": 5, "trial": False}, {"seats": 7, "trial": False}])
    assert str(err.value) == "unknown seats 7 (row 1); known: 1, 5, 20"
    with pytest.raises(InvalidInput, match="unknown trial True; known: False"):
        sig.validate_frame(pd.DataFrame({"seats": [1], "trial": [True]}))
    result = split(sig, pd.DataFrame({"seats": [1, 7, 20, 2], "trial": [False] * 4}))
    assert result.rows.index.tolist() == [0, 2] and [i for i, _ in result.rejects] == [1, 3]
    assert dict(result.rejects)[3] == "'seats' must be one of 1, 5, 20, got 2"
    assert Signature.from_dict(sig.to_dict()) == sig


@pytest.mark.parametrize("number", [10**400, -(10**400)], ids=["1e400", "-1e400"])
@pytest.mark.parametrize("name", ["x0", "n"])
def test_a_number_beyond_any_float_is_refused_not_a_crash(name, number):
    """JSON read by Python's json (batch's JSONL, for one) keeps a 400-digit integer: numpy cannot hold it."""
    sig = Signature((Field("x0", "float"), Field("n", "int")))
    with pytest.raises(InvalidInput, match=f"'{name}' must be"):
        sig.validate_records([{"x0": 1.0, "n": 1, name: number}])
    with pytest.raises(InvalidInput, match=f"'{name}' must be"):
        sig.validate_frame(pd.DataFrame({"x0": [1.0], "n": [1], name: pd.Series([number], dtype=object)}))


@pytest.mark.parametrize("value", ["", "NaT", float("nan"), 1e300])
def test_a_date_that_reads_as_no_date_is_refused(value):
    """pandas reads these as NaT: a required date would pass as missing, or a defaulted one lose its default."""
    sig = Signature((Field("day", "datetime"), Field("since", "datetime", default="2020-01-01", required=False)))
    for record in ({"day": value}, {"day": "2024-01-02", "since": value}):
        with pytest.raises(InvalidInput, match="expected a date"):
            sig.validate_records([record])
    assert sig.validate_records([{"day": "2024-01-02", "since": None}])["since"].tolist() == [
        pd.Timestamp("2020-01-01")
    ]
    optional = Signature((Field("until", "datetime", required=False),))  # no default: may stay empty if not given
    assert optional.validate_records([{}, {"until": None}])["until"].isna().all()
    if isinstance(value, str):  # a string that is not a date is refused even there
        with pytest.raises(InvalidInput, match=r"expected a date, got '(NaT)?' \(row 1\)"):
            optional.validate_records([{}, {"until": value}])


BOUNDED = Signature((Field("p", "float", min=0.0, max=1.0), Field("q", "float", choices=(0.5, 1.5))))


def test_float_arrays_from_tensors_are_taken_as_they_are_and_still_checked():
    """A decoded float64 tensor skips the fill-and-coerce walk; NaN, infinity, bounds and choices are still refused
    with the messages the walk gives."""
    p, q = np.array([0.25, 1.0]), np.array([0.5, 1.5])
    out = BOUNDED.check_columns({"p": p, "q": q}, 2)
    assert out["p"] is p and out["q"] is q  # no copy
    cases = [
        ({"p": np.array([0.25, np.nan]), "q": q}, "missing value for 'p'"),
        ({"p": np.array([0.25, np.inf]), "q": q}, "got inf"),
        ({"p": np.array([0.25, 1.5]), "q": q}, "'p' must be a finite number between 0 and 1, got 1.5 (row 1)"),
        ({"p": p, "q": np.array([0.5, 2.5])}, "unknown q 2.5 (row 1)"),
    ]
    for columns, message in cases:
        with pytest.raises(InvalidInput, match=re.escape(message)):
            BOUNDED.check_columns(columns, 2)
