"""The model contract every path relies on, and the registry of flavors that fill it in.

A model's `predict(frame) -> frame` returns exactly one output row per input row, in order, which is what
lets the service, Beam and the stream worker batch freely.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from conveyor.errors import ConveyorError, InvalidInput, ModelLoadError
from conveyor.signature import Signature


class Predictor(Protocol):
    def predict(self, frame: pd.DataFrame) -> pd.DataFrame: ...


@dataclass
class Model:
    """A loaded, verified model: what the store hands to every serving path."""

    name: str
    version: int
    flavor: str
    signature: Signature
    predictor: Predictor
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Predict on rows already validated by `self.signature`."""
        out = to_frame(self.predictor.predict(frame))
        if len(out) != len(frame):
            raise ConveyorError(
                f"model {self.ref} returned {len(out)} rows for {len(frame)} input rows; "
                "a model must return exactly one row per input row"
            )
        return out

    def predict_columns(self, columns: Mapping[str, Any], rows: int) -> Mapping[str, Any]:
        """`predict` on validated columns; a predictor with a DataFrame-free path of its own (identical
        answers) takes it, which is most of a one-row request's cost saved."""
        fast = getattr(self.predictor, "predict_columns", None)
        out = fast(columns, rows) if fast is not None else None
        if out is None:
            return self.predict(pd.DataFrame(columns, copy=False))
        for name, values in out.items():
            if len(values) != rows:
                raise ConveyorError(
                    f"model {self.ref} returned {len(values)} values of {name!r} for {rows} input rows; "
                    "a model must return exactly one row per input row"
                )
        return out

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
        return self.predict(self.signature.validate_records(records))

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self.predict(self.signature.validate_frame(frame))


def to_frame(result: Any, name: str = "prediction") -> pd.DataFrame:
    """Normalise what a library returns (array, Series, list, DataFrame) to a DataFrame."""
    if isinstance(result, pd.DataFrame):
        index = result.index
        if isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1:
            return result
        return result.reset_index(drop=True)
    if isinstance(result, pd.Series):
        return result.reset_index(drop=True).to_frame(result.name if isinstance(result.name, str) else name)
    if isinstance(result, Mapping):
        return pd.DataFrame(result)
    arr = np.asarray(result)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim == 1:
        return pd.DataFrame({name: arr})
    if arr.ndim == 2:
        return pd.DataFrame({f"{name}_{i}": arr[:, i] for i in range(arr.shape[1])})
    return pd.DataFrame({name: list(arr)})


class Flavor(ABC):
    """One library's way to save, load and describe a model (cf. Beam's ModelHandler)."""

    name: str = ""

    @abstractmethod
    def save(self, source: Any, directory: Path) -> dict[str, Any]:
        """Write the artifact files for `source` (a path or an object) into `directory`; return flavor metadata."""

    @abstractmethod
    def load(self, directory: Path, meta: Mapping[str, Any]) -> Predictor:
        """Load the predictor from verified files in `directory`."""

    def signature(
        self, predictor: Predictor, meta: Mapping[str, Any], example: pd.DataFrame | None = None
    ) -> Signature | None:
        """The signature the artifact itself declares, if it declares one; `example` input rows, when given,
        may settle what the artifact leaves open (the store checks them against the result)."""
        return None

    def accepts(self, source: Any) -> bool:
        """Whether `source` looks like this flavor's artifact (used to guess `--flavor`)."""
        return False


FLAVORS: dict[str, str] = {
    "sklearn": "conveyor.flavors.sklearn:SklearnFlavor",
    "forecaster": "conveyor.flavors.forecaster:ForecasterFlavor",
    "statsmodels": "conveyor.flavors.statsmodels:StatsmodelsFlavor",
    "mlflow": "conveyor.flavors.mlflow:MlflowFlavor",
    "function": "conveyor.flavors.function:FunctionFlavor",
}


def get_flavor(name: str) -> Flavor:
    try:
        target = FLAVORS[name]
    except KeyError:
        raise ConveyorError(f"unknown flavor {name!r}; choose one of {sorted(FLAVORS)}") from None
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)()


def guess_flavor(source: Any) -> str:
    for name in ("mlflow", "function", "forecaster", "statsmodels", "sklearn"):
        if get_flavor(name).accepts(source):
            return name
    raise ConveyorError(f"cannot tell the flavor of {source!r}: pass --flavor ({', '.join(FLAVORS)})")


def load_predictor(flavor: str, directory: Path, meta: Mapping[str, Any]) -> Predictor:
    try:
        return get_flavor(flavor).load(directory, meta)
    except ConveyorError:
        raise
    except Exception as exc:  # a library's own error while unpickling/loading
        raise ModelLoadError(f"cannot load {flavor} model from {directory}: {type(exc).__name__}: {exc}") from exc


def check_example(signature: Signature, example: pd.DataFrame) -> None:
    missing = [n for n in signature.input_names if n not in example.columns]
    if missing:
        raise InvalidInput(f"example rows lack the model's input columns {missing}")
