"""Open Inference Protocol tensors: raw bytes both ways, the datatypes a signature field takes, and the answers.

Tensors come from the signature: a path output (a list per row) is [rows, steps]. The wire format is checked
against tritonclient's own (de)serialisers, the client the protocol's users run.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from conveyor.errors import InvalidInput, MalformedInput, PayloadTooLarge
from conveyor.serve.codecs import is_forecaster
from conveyor.serve.tensors import (
    DTYPES,
    InputTensor,
    OutputTensor,
    columns_from_tensors,
    from_raw,
    output_tensors,
    to_raw,
    v2_outputs,
)
from conveyor.signature import Field, Signature

ANY = Signature(
    inputs=(
        Field("i", "int"),
        Field("f", "float"),
        Field("b", "bool"),
        Field("s", "str"),
        Field("d", "datetime"),
    )
)


def _values(datatype: str) -> np.ndarray:
    if datatype == "BOOL":
        return np.array([True, False, True])
    dtype = DTYPES[datatype]
    if dtype.kind == "f":
        return np.array([-1.5, 0.0, 2.25], dtype=dtype)
    info = np.iinfo(dtype)
    return np.array([info.min, 0, info.max], dtype=dtype)


@pytest.mark.parametrize("datatype", sorted(DTYPES))
def test_every_fixed_size_datatype_round_trips_its_raw_bytes(datatype):
    values = _values(datatype)
    raw = to_raw(OutputTensor("x", datatype, [3], values))
    assert raw == values.astype(values.dtype.newbyteorder("<")).tobytes()  # little-endian, as the protocol says
    back = from_raw(datatype, [3], raw, "x")
    assert back.dtype == DTYPES[datatype] and back.tolist() == values.tolist()
    assert from_raw(datatype, [3, 1], memoryview(raw), "x").tolist() == values.tolist()  # gRPC gives memoryviews


@pytest.mark.parametrize(
    ("datatype", "field"),
    [(t, "int") for t in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32")]
    + [(t, "float") for t in sorted(DTYPES) if t != "BOOL"]
    + [("BOOL", "bool")],
)
def test_each_numeric_datatype_a_field_accepts_becomes_its_column(datatype, field):
    values = _values(datatype)
    sig = Signature(inputs=(Field("x", field),))
    tensor = InputTensor("x", datatype, [3], from_raw(datatype, [3], values.tobytes(), "x"))
    columns, rows = columns_from_tensors([tensor], sig, 100)
    want = {"int": np.int64, "float": np.float64, "bool": np.bool_}[field]
    assert rows == 3 and columns["x"].dtype == want
    assert columns["x"].tolist() == values.astype(want).tolist()


def test_bf16_is_the_top_half_of_an_fp32():
    fp32 = np.array([1.0, -2.5, 3.140625], dtype="<f4")
    raw = (fp32.view("<u4") >> 16).astype("<u2").tobytes()
    assert from_raw("BF16", [3], raw, "x").tolist() == fp32.tolist()
    columns, _ = columns_from_tensors(
        [InputTensor("f", "BF16", [3], from_raw("BF16", [3], raw, "f"))], _one("float"), 9
    )
    assert columns["f"].tolist() == [1.0, -2.5, 3.140625]


def test_uint64_past_int64_is_refused_for_an_integer_column_not_wrapped():
    raw = np.array([1, 2**64 - 1], dtype="<u8").tobytes()
    with pytest.raises(InvalidInput, match=r"UINT64 element 1 is 18446744073709551615, larger than"):
        columns_from_tensors([InputTensor("i", "UINT64", [2], from_raw("UINT64", [2], raw, "i"))], _one("int"), 9)
    ok = from_raw("UINT64", [1], np.array([7], dtype="<u8").tobytes(), "i")
    assert columns_from_tensors([InputTensor("i", "UINT64", [1], ok)], _one("int"), 9)[0]["i"].tolist() == [7]


STRINGS = ["total", "", "1/BEVERAGES", "Größe €", "日本語", "a\x00b"]


def test_bytes_round_trip_with_empty_and_non_ascii_strings_as_tritonclient_writes_them():
    raw = to_raw(OutputTensor("s", "BYTES", [len(STRINGS)], STRINGS))
    client = serialize_byte_tensor(np.array([s.encode() for s in STRINGS], dtype=object)).item()
    assert raw == client
    assert [b.decode() for b in deserialize_bytes_tensor(raw)] == STRINGS
    assert from_raw("BYTES", [len(STRINGS)], raw, "s") == [s.encode() for s in STRINGS]
    assert to_raw(OutputTensor("s", "BYTES", [0], [])) == b"" and from_raw("BYTES", [0], b"", "s") == []
    tensor = InputTensor("s", "BYTES", [len(STRINGS)], from_raw("BYTES", [len(STRINGS)], raw, "s"))
    columns, rows = columns_from_tensors([tensor], _one("str"), 100)
    assert rows == len(STRINGS) and columns["s"].tolist() == STRINGS


def test_bytes_that_are_not_utf8_name_the_input_and_element():
    raw = serialize_byte_tensor(np.array([b"ok", b"\xff\xfe"], dtype=object)).item()
    tensor = InputTensor("s", "BYTES", [2], from_raw("BYTES", [2], raw, "s"))
    with pytest.raises(InvalidInput, match=r"input 's': BYTES element 1 is not UTF-8 text \(invalid start byte"):
        columns_from_tensors([tensor], _one("str"), 9)


def test_dates_travel_as_bytes():
    raw = to_raw(OutputTensor("d", "BYTES", [2], ["2017-01-01", "2017-02-03"]))
    columns, _ = columns_from_tensors(
        [InputTensor("d", "BYTES", [2], from_raw("BYTES", [2], raw, "d"))], _one("datetime"), 9
    )
    assert columns["d"].astype("datetime64[D]").astype(str).tolist() == ["2017-01-01", "2017-02-03"]


@pytest.mark.parametrize(
    ("datatype", "shape", "raw", "message"),
    [
        (
            "FP64",
            [2],
            b"\0" * 15,
            r"input 'x': a FP64 tensor of shape \[2\] is 16 bytes \(2 x 8\), but its raw data is 15",
        ),
        ("INT32", [2, 1], b"\0" * 12, r"a INT32 tensor of shape \[2, 1\] is 8 bytes \(2 x 4\), but its raw data is 12"),
        ("BOOL", [3], b"\1\0", r"a BOOL tensor of shape \[3\] is 3 bytes \(3 x 1\), but its raw data is 2"),
        ("BF16", [1], b"\0", r"a BF16 tensor of shape \[1\] is 2 bytes"),
        ("BYTES", [2], b"\2\0\0\0ab\3\0", r"has 2 elements, but its raw data \(8 bytes\) holds only 1"),
        (
            "BYTES",
            [1],
            b"\5\0\0\0ab",
            r"BYTES element 0 declares 5 bytes but only 2 remain in its raw data \(6 bytes\)",
        ),
        ("BYTES", [1], b"\1\0\0\0abc", r"2 bytes left over after the 1 BYTES elements of shape \[1\]"),
        ("FP128", [1], b"\0" * 16, r"input 'x': unknown datatype 'FP128'; known: BF16, BOOL, BYTES, FP16"),
    ],
)
def test_raw_data_that_does_not_match_its_shape_is_refused_precisely(datatype, shape, raw, message):
    with pytest.raises(InvalidInput, match=message):
        from_raw(datatype, shape, raw, "x")


@pytest.mark.parametrize("shape", [[], [-1], [2.0], "2", [True], None, {"n": 1}])
def test_a_shape_that_is_not_sizes_is_malformed(shape):
    with pytest.raises(MalformedInput, match=r"input 'x': shape must be a non-empty list of sizes >= 0"):
        from_raw("FP64", shape, b"", "x")
    with pytest.raises(MalformedInput, match=r"input 'x': shape must be a non-empty list of sizes >= 0"):
        columns_from_tensors([InputTensor("x", "FP64", shape, [1.0])], Signature(inputs=(Field("x", "float"),)), 9)


@pytest.mark.parametrize(
    ("name", "datatype", "message"),
    [
        ("f", "BYTES", r"input 'f' is BYTES, but this model takes it as float \(a finite number\): send a number"),
        ("f", "BOOL", r"input 'f' is BOOL, but this model takes it as float"),
        ("i", "FP64", r"input 'i' is FP64, but this model takes it as int \(an integer\): send an integer datatype"),
        ("s", "FP64", r"input 's' is FP64, but this model takes it as str \(a string\): send BYTES \(UTF-8 strings\)"),
        ("s", "INT64", r"input 's' is INT64, but this model takes it as str"),
        ("b", "INT8", r"input 'b' is INT8, but this model takes it as bool \(true or false\): send BOOL"),
        ("d", "INT64", r"input 'd' is INT64, but this model takes it as datetime \(a date\): send BYTES \(dates"),
        ("f", "float64", r"input 'f': unknown datatype 'float64'; known: BF16, BOOL, BYTES"),
        ("f", ["FP64"], r"input 'f': unknown datatype \['FP64'\]; known: BF16, BOOL, BYTES"),
        ("f", None, r"input 'f': unknown datatype None"),
    ],
)
def test_a_datatype_the_field_cannot_be_is_refused_naming_input_and_expectation(name, datatype, message):
    with pytest.raises(InvalidInput, match=message):
        columns_from_tensors([InputTensor(name, datatype, [1], [1])], ANY, 9)


def test_names_shapes_and_rows_are_checked_across_inputs():
    sig = Signature(inputs=(Field("a", "float"), Field("b", "float", default=0.0, required=False)))
    columns, rows = columns_from_tensors([InputTensor("a", "FP64", [2, 1], [1.0, 2.0])], sig, 9)
    assert rows == 2 and columns["b"].tolist() == [0.0, 0.0]  # a left-out input takes its default
    refused = [
        ([InputTensor("z", "FP64", [1], [1.0])], InvalidInput, r"unknown input 'z'; this model takes \['a', 'b'\]"),
        ([InputTensor("a", "FP64", [2], [1.0])] * 1, InvalidInput, r"input 'a': shape \[2\] does not match 1 values"),
        ([InputTensor("a", "FP64", [1, 2], [1.0, 2.0])], InvalidInput, r"one column: \[n\] or \[n, 1\]"),
        ([InputTensor("a", "FP64", [1], [1.0])] * 2, InvalidInput, r"input 'a' is sent twice"),
        (
            [InputTensor("a", "FP64", [1], [1.0]), InputTensor("b", "FP64", [2], [1.0, 2.0])],
            InvalidInput,
            r"input 'b' has 2 rows but input 'a' has 1",
        ),
        ([InputTensor("a", "FP64", [0], [])], InvalidInput, r"no rows: the inputs are empty"),
        ([], MalformedInput, r"no inputs"),
        ([InputTensor("a", "FP64", [10], [1.0] * 10)], PayloadTooLarge, r"10 rows in one request; at most 9"),
    ]
    for inputs, error, message in refused:
        with pytest.raises(error, match=message):
            columns_from_tensors(inputs, sig, 9)


def test_outputs_are_typed_as_declared_and_write_raw_like_numpy():
    sig = Signature(
        inputs=(Field("x", "float"),),
        outputs=(Field("label", "str"), Field("p", "float"), Field("n", "int"), Field("ok", "bool")),
    )
    result = {"label": ["yes", "né"], "p": [0.25, 1], "n": [3, 4], "ok": [True, False], "extra": [1.5, 2.5]}
    out = {t.name: t for t in output_tensors(result, sig)}
    assert [(t.name, t.datatype, t.shape) for t in out.values()] == [
        ("label", "BYTES", [2]),
        ("p", "FP64", [2]),
        ("n", "INT64", [2]),
        ("ok", "BOOL", [2]),
        ("extra", "FP64", [2]),  # a column the signature lacks: its type is inferred
    ]
    assert to_raw(out["p"]) == np.array([0.25, 1.0]).tobytes() and to_raw(out["n"]) == np.array([3, 4]).tobytes()
    assert to_raw(out["ok"]) == b"\1\0"
    assert deserialize_bytes_tensor(to_raw(out["label"])).tolist() == [b"yes", "né".encode()]
    assert out["p"].json()["data"].tolist() == [0.25, 1.0]


def test_an_output_off_its_declared_type_says_what_it_is():
    sig = Signature(inputs=(Field("x", "float"),), outputs=(Field("n", "int"), Field("p", "float")))
    out = output_tensors({"n": [1.5, 2.0], "p": ["a", "b"]}, sig)
    assert [(t.datatype, list(t.data)) for t in out] == [("FP64", [1.5, 2.0]), ("BYTES", ["a", "b"])]


def test_outputs_named_like_a_forecast_are_plain_columns_unless_declared_paths():
    """A model with scalar outputs `date, forecast, lower, upper` was taken for a forecaster by its names:
    metadata said [-1, -1] and infer failed with a 500 (`object of type 'float' has no len()`)."""
    sig = Signature(
        inputs=(Field("x", "float"),),
        outputs=(Field("date", "str"), Field("forecast", "float"), Field("lower", "float"), Field("upper", "float")),
    )
    assert not is_forecaster(sig)
    assert [t.shape for t in v2_outputs(sig)] == [(-1,)] * 4
    out = output_tensors({"date": ["2017-01-01"], "forecast": [1.5], "lower": [1.0], "upper": [2.0]}, sig)
    assert [(o.name, o.shape, o.datatype) for o in out] == [
        ("date", [1], "BYTES"),
        ("forecast", [1], "FP64"),
        ("lower", [1], "FP64"),
        ("upper", [1], "FP64"),
    ]


def test_a_path_output_is_a_rows_by_steps_tensor_of_its_items():
    sig = Signature(
        inputs=(Field("range", "int"),),
        outputs=(Field("forecast", "object", items="float"), Field("date", "object", items="str")),
    )
    tensor = v2_outputs(sig)[0]
    assert (tensor.datatype, tensor.shape) == ("FP64", (-1, -1))
    out, dates = output_tensors({"forecast": [[1, 2.5], [3.0, 4.0]], "date": [["a", "b"], ["c", "d"]]}, sig)
    assert out.shape == [2, 2] and out.data.tolist() == [1.0, 2.5, 3.0, 4.0]
    assert to_raw(out) == np.array([1.0, 2.5, 3.0, 4.0]).tobytes()
    assert dates.shape == [2, 2] and dates.data == ["a", "b", "c", "d"]
    with pytest.raises(InvalidInput, match="paths of 2 lengths"):
        output_tensors({"forecast": [[1.0], [1.0, 2.0]]}, sig)


def test_a_signature_round_trips_its_path_outputs():
    sig = Signature(inputs=(), outputs=(Field("date", "object", items="str"),))
    assert Signature.from_dict(sig.to_dict()) == sig and sig.to_dict()["outputs"][0]["items"] == "str"
    with pytest.raises(ValueError, match="unknown items type"):
        Field("x", "object", items="list")


def _one(kind: str) -> Signature:
    return Signature(inputs=(Field(ANY_NAMES[kind], kind),))


ANY_NAMES = {f.type: f.name for f in ANY.inputs}


def test_one_matrix_tensor_is_the_columns_in_signature_order():
    signature = Signature(inputs=(Field("a", "float"), Field("b", "int"), Field("c", "float")))
    flat = np.arange(6, dtype=np.float64)  # rows [0, 1, 2] and [3, 4, 5]
    columns, rows = columns_from_tensors([InputTensor("input-0", "FP64", [2, 3], flat)], signature, 10)
    assert rows == 2 and columns["a"].tolist() == [0.0, 3.0] and columns["b"].tolist() == [1, 4]
    listed, _ = columns_from_tensors([InputTensor("input-0", "INT64", [2, 3], list(range(6)))], signature, 10)
    assert listed["c"].tolist() == [2.0, 5.0]
    halves = flat + 0.5
    with pytest.raises(InvalidInput, match=r"column 1 \('b'\) takes integers, got 1.5 in row 0"):
        columns_from_tensors([InputTensor("input-0", "FP64", [2, 3], halves)], signature, 10)
    with pytest.raises(InvalidInput, match="'a' is BYTES"):  # a column that cannot come as this datatype is named
        columns_from_tensors([InputTensor("input-0", "BYTES", [2, 3], ["x"] * 6)], signature, 10)
    with pytest.raises(InvalidInput, match="shape"):  # named like an input: one column, not a matrix
        columns_from_tensors([InputTensor("a", "FP64", [2, 3], flat)], signature, 10)


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        # a matrix of the wrong width, or not two-dimensional: its shape is what is wrong, not its name
        (InputTensor("input-0", "FP64", [1, 5], [1.0] * 5), r"as one matrix of them its shape must be \[rows, 3\]"),
        (
            InputTensor("input-0", "FP64", [1, 1, 3], [1.0] * 3),
            r"\(a column per input, in that order\), not \[1, 1, 3\]",
        ),
        # a datatype no one knows, its values unread (gRPC has no typed field for it): the datatype is named
        (InputTensor("input-0", "FP128", [1, 3], []), r"input 'input-0': unknown datatype 'FP128'; known: BF16"),
        (InputTensor("input-0", "", [1, 3], []), r"input 'input-0': unknown datatype ''"),
    ],
)
def test_a_lone_tensor_that_is_no_input_and_no_matrix_says_why(tensor, message):
    signature = Signature(inputs=(Field("a", "float"), Field("b", "int"), Field("c", "float")))
    with pytest.raises(InvalidInput, match=message):
        columns_from_tensors([tensor], signature, 10)
    one = Signature(inputs=(Field("a", "float"),))  # a one-input model takes no matrix: the name is what is wrong
    with pytest.raises(InvalidInput, match=r"unknown input 'input-0'; this model takes \['a'\]"):
        columns_from_tensors([InputTensor("input-0", "FP64", [1, 5], [1.0] * 5)], one, 10)


def test_a_plain_float_matrix_is_read_in_one_scan_with_the_general_paths_answers_and_refusals():
    """The matrix KServe's and MLServer's clients send, for a model of plain float inputs: its columns are views of
    the one array (no per-column walk), equal to what the general path makes; anything it cannot vouch for (NaN,
    infinity, a bound, a choice, too many rows) goes the general way and is refused with the general message."""
    plain = Signature(inputs=(Field("a", "float"), Field("b", "float")))
    flat = np.array([0.5, 1.5, 2.5, 3.5])
    columns, rows = columns_from_tensors([InputTensor("input-0", "FP64", [2, 2], flat)], plain, 10)
    assert rows == 2 and columns["a"].tolist() == [0.5, 2.5] and columns["b"].tolist() == [1.5, 3.5]
    assert all(np.shares_memory(c, flat) for c in columns.values())  # views of the request's array, no copy
    as_list, _ = columns_from_tensors([InputTensor("input-0", "FP64", [2, 2], flat.tolist())], plain, 10)
    assert {k: v.tolist() for k, v in as_list.items()} == {k: v.tolist() for k, v in columns.items()}
    with pytest.raises(InvalidInput, match=re.escape("missing value for 'b'")):
        columns_from_tensors([InputTensor("input-0", "FP64", [2, 2], np.array([0.5, np.nan, 1, 2]))], plain, 10)
    with pytest.raises(InvalidInput, match=re.escape("got inf")):
        columns_from_tensors([InputTensor("input-0", "FP64", [2, 2], np.array([0.5, 1, np.inf, 2]))], plain, 10)
    with pytest.raises(PayloadTooLarge, match="2 rows in one request; at most 1"):
        columns_from_tensors([InputTensor("input-0", "FP64", [2, 2], flat)], plain, 1)
    bounded = Signature(inputs=(Field("a", "float", max=1.0), Field("b", "float")))
    with pytest.raises(InvalidInput, match=re.escape("'a' must be a finite number <= 1, got 2.5 (row 1)")):
        columns_from_tensors([InputTensor("input-0", "FP64", [2, 2], flat)], bounded, 10)
