"""Run by test_grpc_outputs.py in its own process (conveyor's generated protobuf code cannot share a process with
tritonclient.grpc): the direct output writer answers byte for byte what the general path answers, or declines."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from conveyor.errors import InvalidInput
from conveyor.serve import tensors
from conveyor.signature import Field, Signature

# conveyor.serve.grpc_service (and the generated code it imports) only in main(): the test imports CASES

LR = Signature(
    inputs=(Field("x0"), Field("x1")),
    outputs=(Field("prediction", "int"), Field("proba_0"), Field("proba_1")),
)
FORECAST = Signature(inputs=(Field("range", "int"),), outputs=(Field("forecast", "object", items="float"),))
LABELS = Signature(inputs=(Field("x0"),), outputs=(Field("label", "str"),))


@dataclass
class Model:
    name: str = "m"
    version: int = 3


ROWS = {"prediction": [1, 0], "proba_0": [0.2, 0.7], "proba_1": [0.8, 0.3]}
# (case, signature, result, outputs asked, written directly as typed contents, written directly raw)
CASES: list[tuple[str, Signature, dict[str, list[Any]], list[str], bool, bool]] = [
    ("all outputs", LR, ROWS, [], True, True),
    ("one output asked", LR, ROWS, ["proba_1"], True, True),
    ("outputs asked out of order", LR, ROWS, ["proba_1", "prediction"], True, True),
    ("an int column with a bool in it", LR, {**ROWS, "prediction": [1, True]}, [], True, True),
    ("a float column with an int in it", LR, {**ROWS, "proba_0": [0.2, 1]}, [], True, True),
    ("a NaN", LR, {**ROWS, "proba_0": [float("nan"), 0.5]}, [], True, True),
    ("an int past int64", LR, {**ROWS, "prediction": [2**63, 1]}, [], False, False),
    ("ints answered as floats", LR, {**ROWS, "prediction": [1.0, 0.0]}, [], False, False),
    ("a float with an int-typed first row", LR, {**ROWS, "prediction": [1, 2.5]}, [], False, False),
    ("a string among floats", LR, {**ROWS, "proba_0": [0.2, "x"]}, [], False, False),
    ("a None among floats", LR, {**ROWS, "proba_0": [0.2, None]}, [], False, True),
    ("no rows", LR, {"prediction": [], "proba_0": [], "proba_1": []}, [], False, False),
    ("a column the signature lacks", LR, {**ROWS, "extra": [1.0, 2.0]}, [], False, False),
    ("an unknown output asked", LR, ROWS, ["nope"], False, False),
    ("a path output", FORECAST, {"forecast": [[1.0, 2.0], [3.0, 4.0]]}, [], False, False),
    ("a string output", LABELS, {"label": ["a", "b"]}, [], False, False),
]


def general(signature: Signature, result: dict[str, list[Any]], wanted: list[str], raw: bool) -> bytes | str:
    from conveyor.serve import grpc_service as g
    from conveyor.serve.oip import inference_pb2 as pb

    try:
        outputs = g.pick_outputs(tensors.output_tensors(result, signature), wanted)
    except InvalidInput as exc:
        return f"InvalidInput: {exc}"
    response = pb.ModelInferResponse(model_name=Model.name, model_version=str(Model.version), id="id-1")
    g.write_outputs(response, outputs, raw)
    return response.SerializeToString(deterministic=True)


def main() -> None:
    from conveyor.serve import grpc_service as g
    from conveyor.serve.oip import inference_pb2 as pb

    report = []
    for name, signature, result, wanted, _, _ in CASES:
        for raw in (False, True):
            response = pb.ModelInferResponse(model_name="m", model_version="3", id="id-1")
            written = g.write_declared_outputs(response, result, signature, wanted, raw)
            same = None
            if written:
                same = response.SerializeToString(deterministic=True) == general(signature, result, wanted, raw)
            else:
                same = not response.outputs and not response.raw_output_contents  # left empty for the general path
            report.append({"case": name, "raw": raw, "written": written, "same": same})
    print(json.dumps(report))


if __name__ == "__main__":
    main()
