"""Open Inference Protocol tensors come from the signature: a path output (a list per row) is [rows, steps]."""

from __future__ import annotations

import pytest

from conveyor.errors import InvalidInput
from conveyor.serve.codecs import encode_v2, is_forecaster, v2_outputs
from conveyor.signature import Field, Signature


def test_outputs_named_like_a_forecast_are_plain_columns_unless_declared_paths():
    """A model with scalar outputs `date, forecast, lower, upper` was taken for a forecaster by its names:
    metadata said [-1, -1] and infer failed with a 500 (`object of type 'float' has no len()`)."""
    sig = Signature(
        inputs=(Field("x", "float"),),
        outputs=(Field("date", "str"), Field("forecast", "float"), Field("lower", "float"), Field("upper", "float")),
    )
    assert not is_forecaster(sig)
    assert [t.shape for t in v2_outputs(sig)] == [(-1,)] * 4
    out = encode_v2({"date": ["2017-01-01"], "forecast": [1.5], "lower": [1.0], "upper": [2.0]}, sig)
    assert [(o["name"], o["shape"], o["datatype"]) for o in out] == [
        ("date", [1], "BYTES"),
        ("forecast", [1], "FP64"),
        ("lower", [1], "FP64"),
        ("upper", [1], "FP64"),
    ]


def test_a_path_output_is_a_rows_by_steps_tensor_of_its_items():
    sig = Signature(inputs=(Field("range", "int"),), outputs=(Field("forecast", "object", items="float"),))
    (tensor,) = v2_outputs(sig)
    assert (tensor.datatype, tensor.shape) == ("FP64", (-1, -1))
    (out,) = encode_v2({"forecast": [[1, 2.5], [3.0, 4.0]]}, sig)
    assert out["shape"] == [2, 2] and out["data"] == [1.0, 2.5, 3.0, 4.0]
    with pytest.raises(InvalidInput, match="paths of 2 lengths"):
        encode_v2({"forecast": [[1.0], [1.0, 2.0]]}, sig)


def test_a_signature_round_trips_its_path_outputs():
    sig = Signature(inputs=(), outputs=(Field("date", "object", items="str"),))
    assert Signature.from_dict(sig.to_dict()) == sig and sig.to_dict()["outputs"][0]["items"] == "str"
    with pytest.raises(ValueError, match="unknown items type"):
        Field("x", "object", items="list")
