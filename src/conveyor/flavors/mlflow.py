"""MLflow models, loaded through their `python_function` (pyfunc) flavor.

A source is a local MLflow model directory (one holding an `MLmodel` file) or a `models:/` or `runs:/` URI,
resolved against the tracking/registry server MLflow is configured for. The model directory is copied into
the store whole, so serving never needs the MLflow server.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from conveyor.errors import ConveyorError, NotFound, first_line, require
from conveyor.model import Flavor, to_frame
from conveyor.signature import Field, Signature

DIR = "mlflow_model"
URI_SCHEMES = ("models:/", "runs:/")
TYPES = {
    "long": "int",
    "integer": "int",
    "double": "float",
    "float": "float",
    "string": "str",
    "boolean": "bool",
    "datetime": "datetime",
}
# MLflow enforces its schema strictly and will not narrow int64/float64 on its own.
NARROW = {"integer": np.int32, "float": np.float32}


class MlflowPredictor:
    """Wraps a pyfunc model; casts columns MLflow declares as 32-bit, then normalises the result."""

    def __init__(self, pyfunc: Any) -> None:
        self.pyfunc = pyfunc
        schema = pyfunc.metadata.get_input_schema()
        self._casts: dict[str, Any] = {}
        if schema is not None and not schema.is_tensor_spec():
            for spec in schema.inputs:
                kind = getattr(spec.type, "name", None)
                if spec.name is not None and kind in NARROW:
                    self._casts[spec.name] = NARROW[kind]

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        casts = {n: t for n, t in self._casts.items() if n in frame.columns}
        return to_frame(self.pyfunc.predict(frame.astype(casts) if casts else frame))


class MlflowFlavor(Flavor):
    name = "mlflow"

    def save(self, source: Any, directory: Path) -> dict[str, Any]:
        """Copy the MLflow model at `source` (a directory or a models:/, runs:/ URI) into `directory`."""
        mlflow = require("mlflow", "mlflow")
        target = Path(directory) / DIR
        if _is_uri(source):
            with tempfile.TemporaryDirectory(prefix="conveyor-mlflow-") as tmp:
                shutil.copytree(_download(mlflow, str(source), tmp), target)
        else:
            path = Path(source)
            if not path.exists():
                raise NotFound(f"no MLflow model directory at {path}")
            if not (path / "MLmodel").is_file():
                raise ConveyorError(f"{path}: not an MLflow model directory (it has no MLmodel file)")
            shutil.copytree(path, target)
        model = require("mlflow.models", "mlflow").Model.load(str(target / "MLmodel"))
        pyfunc = model.flavors.get("python_function")
        if pyfunc is None:
            raise ConveyorError(
                f"{source}: has no python_function flavor (only {sorted(model.flavors)}); "
                "Conveyor serves MLflow models as pyfunc"
            )
        meta = {
            "dir": DIR,
            "loader_module": pyfunc.get("loader_module"),
            "flavors": sorted(model.flavors),
            "mlflow_version": model.mlflow_version or mlflow.__version__,
        }
        if _is_uri(source):
            meta["source"] = str(source)
        return meta

    def load(self, directory: Path, meta: Mapping[str, Any]) -> MlflowPredictor:
        pyfunc = require("mlflow.pyfunc", "mlflow")
        return MlflowPredictor(pyfunc.load_model(str(Path(directory) / meta.get("dir", DIR))))

    def signature(self, predictor: Any, meta: Mapping[str, Any], example: Any = None) -> Signature | None:
        metadata = predictor.pyfunc.metadata
        inputs = _fields(metadata.get_input_schema())
        if not inputs:
            return None
        return Signature(inputs=inputs, outputs=_fields(metadata.get_output_schema(), unnamed="prediction"))

    def accepts(self, source: Any) -> bool:
        if _is_uri(source):
            return True
        return isinstance(source, str | Path) and (Path(source) / "MLmodel").is_file()


def _is_uri(source: Any) -> bool:
    return isinstance(source, str) and source.startswith(URI_SCHEMES)


def _download(mlflow: Any, uri: str, into: str) -> Path:
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=into))
    except Exception as exc:
        # MLflow raises its own MlflowException (and OSError for bad paths); both mean the URI does not resolve.
        raise NotFound(f"cannot fetch {uri} from MLflow: {first_line(exc)}") from exc
    if not (local / "MLmodel").is_file():
        raise ConveyorError(f"{uri}: is not an MLflow model (no MLmodel file)")
    return local


def _fields(schema: Any, unnamed: str | None = None) -> tuple[Field, ...]:
    """Column specs as Conveyor fields; an unnamed output takes the column name `to_frame` gives it."""
    if schema is None:
        return ()
    specs = list(schema.inputs)
    if schema.is_tensor_spec():
        return _tensor_fields(specs, unnamed) if unnamed is not None else ()
    if any(s.name is None for s in specs) and unnamed is None:
        return ()
    names = [unnamed] if len(specs) == 1 else [f"{unnamed}_{i}" for i in range(len(specs))]
    return tuple(
        Field(s.name if s.name is not None else names[i], TYPES.get(getattr(s.type, "name", ""), "object"))
        for i, s in enumerate(specs)
    )


def _tensor_fields(specs: list[Any], unnamed: str) -> tuple[Field, ...]:
    """A single unnamed array output (what sklearn models return): one column, or one per trailing dim."""
    if len(specs) != 1 or specs[0].name is not None:
        return ()
    spec = specs[0]
    kind = _dtype_type(spec.type)
    if len(spec.shape) == 1:
        return (Field(unnamed, kind),)
    if len(spec.shape) == 2 and spec.shape[1] > 0:
        return tuple(Field(f"{unnamed}_{i}", kind) for i in range(spec.shape[1]))
    return ()


def _dtype_type(dtype: np.dtype) -> str:
    return {"b": "bool", "i": "int", "u": "int", "f": "float", "U": "str", "M": "datetime"}.get(dtype.kind, "object")
