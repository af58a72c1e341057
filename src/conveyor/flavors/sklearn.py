"""scikit-learn estimators and pipelines, stored as joblib, pickle or skops files.

skops files are loaded without running arbitrary code: only classes from scikit-learn, numpy, scipy and the
standard builtins/collections are trusted, and a file that needs anything else is refused before it is loaded.
"""

from __future__ import annotations

import pickle
import pydoc
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import sklearn

from conveyor.errors import ConveyorError, IntegrityError, ModelLoadError, NotFound, require
from conveyor.model import Flavor, to_frame
from conveyor.signature import Field, Signature, column_type

FORMATS = {".joblib": "joblib", ".pkl": "pickle", ".pickle": "pickle", ".skops": "skops"}
FILES = {"joblib": "model.joblib", "pickle": "model.pkl", "skops": "model.skops"}
TRUSTED_PACKAGES = frozenset({"sklearn", "numpy", "scipy", "builtins", "collections"})


class SklearnPredictor:
    """Calls the estimator once per batch and shapes its answer as one output row per input row.

    Everything that can be decided once (input form, output columns) is decided here, so `predict` on the
    HTTP hot path does one library call and builds one DataFrame.
    """

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        names = getattr(estimator, "feature_names_in_", None)
        self.feature_names: list[str] | None = [str(n) for n in names] if names is not None else None
        classes = getattr(estimator, "classes_", None)
        self.classes: np.ndarray | None = classes if isinstance(classes, np.ndarray) and classes.ndim == 1 else None
        self.proba = self.classes is not None and hasattr(estimator, "predict_proba")
        self._proba_columns = pd.Index([f"proba_{c}" for c in self.classes] if self.proba else [], dtype=object)
        self._prediction_column = pd.Index(["prediction"], dtype=object)
        # sklearn's checks of a pandas input cost ~600 us a call; a float array in the fitted column order is
        # the same input to any estimator that does not select or transform columns by name
        self.as_array = self.feature_names is None or not _selects_by_name(estimator)

    @property
    def output_columns(self) -> list[str]:
        return ["prediction", *self._proba_columns]

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        X = self._input(frame)
        # The signature has already refused NaN and infinity, so sklearn's own finiteness scan is wasted work.
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True), warnings.catch_warnings():
            if self.as_array:  # "X does not have valid feature names": it has, in the fitted order
                warnings.simplefilter("ignore", UserWarning)
            if not self.proba:
                return self._predictions(self.estimator.predict(X))
            proba = self.estimator.predict_proba(X)
        columns = {"prediction": self.classes[proba.argmax(axis=1)]}
        columns.update(zip(self._proba_columns, proba.T, strict=True))
        return pd.DataFrame(columns, copy=False)

    def _input(self, frame: pd.DataFrame) -> pd.DataFrame | np.ndarray:
        if self.feature_names is None:
            return frame.to_numpy(dtype=float)
        if self.as_array:
            return np.stack([frame[n].to_numpy(dtype=float, copy=False) for n in self.feature_names], axis=1)
        if list(frame.columns) == self.feature_names:
            return frame
        return frame[self.feature_names]

    def _predictions(self, result: Any) -> pd.DataFrame:
        if isinstance(result, np.ndarray) and result.ndim == 1:
            return pd.DataFrame(result.reshape(-1, 1), columns=self._prediction_column, copy=False)
        return to_frame(result)


class SklearnFlavor(Flavor):
    name = "sklearn"

    def save(self, source: Any, directory: Path) -> dict[str, Any]:
        """Write `source` (an estimator, or a .joblib/.pkl/.pickle/.skops file) into `directory`."""
        directory = Path(directory)
        if _is_estimator(source):
            fmt = "joblib"
            _check_estimator(source, source)
            joblib.dump(source, directory / FILES[fmt])
            estimator = source
        else:
            path = Path(source)
            fmt = _format_of(path)
            estimator = _read(path, fmt)
            _check_estimator(estimator, source)
            shutil.copyfile(path, directory / FILES[fmt])
        cls = type(estimator)
        return {
            "file": FILES[fmt],
            "format": fmt,
            "estimator": f"{cls.__module__}.{cls.__qualname__}",
            "sklearn_version": sklearn.__version__,
        }

    def load(self, directory: Path, meta: Mapping[str, Any]) -> SklearnPredictor:
        fmt = meta.get("format", "joblib")
        estimator = _read(Path(directory) / meta.get("file", FILES[fmt]), fmt, ModelLoadError)
        return SklearnPredictor(estimator)

    def signature(self, predictor: Any, meta: Mapping[str, Any]) -> Signature | None:
        estimator = predictor.estimator
        if predictor.feature_names is not None:
            names = predictor.feature_names
        elif hasattr(estimator, "n_features_in_"):
            names = [f"f{i}" for i in range(int(estimator.n_features_in_))]
        else:
            return None
        outputs = [Field("prediction", _label_type(predictor.classes))]
        outputs += [Field(c, "float") for c in predictor.output_columns[1:]]
        return Signature(inputs=tuple(Field(n, "float") for n in names), outputs=tuple(outputs))

    def accepts(self, source: Any) -> bool:
        if _is_estimator(source):
            return True
        return isinstance(source, str | Path) and Path(source).suffix.lower() in FORMATS


def _selects_by_name(estimator: Any) -> bool:
    """Whether any part of the estimator picks or transforms columns by name (so it needs a DataFrame)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import FunctionTransformer

    parts = [estimator]
    if hasattr(estimator, "get_params"):
        parts += list(estimator.get_params(deep=True).values())
    return any(isinstance(p, ColumnTransformer | FunctionTransformer) for p in parts) or any(
        getattr(p, "_sklearn_output_config", {}).get("transform") == "pandas" for p in parts
    )


def _is_estimator(obj: Any) -> bool:
    return not isinstance(obj, str | Path) and hasattr(obj, "fit") and hasattr(obj, "predict")


def _format_of(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ConveyorError(f"{path}: not a scikit-learn model file; expected one of {', '.join(FORMATS)}") from None


def _read(path: Path, fmt: str, error: type[ConveyorError] = ConveyorError) -> Any:
    if not path.is_file():
        raise NotFound(f"no scikit-learn model file at {path}")
    if fmt == "skops":
        return _read_skops(path, error)
    try:
        if fmt == "joblib":
            return joblib.load(path)
        with path.open("rb") as fh:
            return pickle.load(fh)
    except Exception as exc:
        raise error(f"{path}: not a readable {fmt} file ({type(exc).__name__}: {exc})") from exc


def _read_skops(path: Path, error: type[ConveyorError]) -> Any:
    sio = require("skops.io", "skops")
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise error(f"{path}: not a readable skops file ({type(exc).__name__}: {exc})") from exc
    refused = [t for t in untrusted if not _trusted(t)]
    if refused:
        raise IntegrityError(f"{path}: refusing to load untrusted types {refused} from a skops file")
    try:
        return sio.load(path, trusted=untrusted)
    except Exception as exc:
        raise error(f"{path}: cannot load skops file ({type(exc).__name__}: {exc})") from exc


def _trusted(type_name: str) -> bool:
    """Classes from trusted packages only: skops may call a trusted name on file data, and functions such as
    `builtins.eval` or `numpy.load(..., allow_pickle=True)` would turn that into running code."""
    if type_name.partition(".")[0] not in TRUSTED_PACKAGES:
        return False
    return isinstance(pydoc.locate(type_name), type)


def _check_estimator(estimator: Any, source: Any) -> None:
    if not callable(getattr(estimator, "predict", None)):
        shown = source if isinstance(source, str | Path) else type(source).__name__
        raise ConveyorError(f"{shown}: holds a {type(estimator).__name__}, not a model with predict()")
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except NotFittedError:
        raise ConveyorError(f"{type(estimator).__name__} is not fitted: fit it before saving") from None
    except TypeError:
        pass


def _label_type(classes: np.ndarray | None) -> str:
    return "float" if classes is None else column_type(pd.Series(classes))
