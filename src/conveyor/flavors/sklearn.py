"""scikit-learn estimators and pipelines, stored as joblib, pickle or skops files.

A file is told by its content, not its name: a skops file is a zip archive, anything else is a pickle stream
(pickle's own or joblib's, compressed or not) that `joblib.load` reads. skops files are loaded without running
arbitrary code: only classes from scikit-learn, numpy, scipy and the standard builtins/collections are
trusted, and a file that needs anything else is refused before it is loaded.

The input signature is what the estimator declares: its column names (`feature_names_in_`) and, through its
ColumnTransformer, which columns are categories (an encoder's `categories_`: their type, and the allowed values
when an unknown one would fail the model), text, or dropped. A column it says nothing more about takes the
type of the example rows, with integers widened to float (scikit-learn computes in floats, and an example
whose values happen to be whole must not refuse 12.5 later), and is a float without an example.
"""

from __future__ import annotations

import pydoc
import re
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

FILES = {"joblib": "model.joblib", "pickle": "model.pkl", "skops": "model.skops"}
_SUFFIXES = (".joblib", ".pkl", ".pickle", ".skops")
_OLD_PICKLE = re.compile(rb"\(?c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n")
_ZIP = b"PK\x03\x04"
# The first bytes of joblib's compressed files: zlib (at any level), gzip, bz2, xz, lzma, lz4.
_COMPRESSED = (
    *(b"\x78" + level for level in (b"\x01", b"\x5e", b"\x9c", b"\xda")),
    b"\x1f\x8b",
    b"BZh",
    b"\xfd7zXZ",
    b"\x5d\x00\x00",
    b"\x04\x22\x4d\x18",
)
_DROPPED = "dropped by the model's ColumnTransformer: optional, ignored"
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
        # sklearn's checks of a pandas input cost ~600 us a call; a float array in the fitted column order is
        # the same input to any estimator that does not select or transform columns by name
        self.as_array = self.feature_names is None or not _selects_by_name(estimator)

    @property
    def output_columns(self) -> list[str]:
        return ["prediction", *self._proba_columns]

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        out = self._call(self._input(frame))
        return pd.DataFrame(out, copy=False) if isinstance(out, dict) else to_frame(out)

    def predict_columns(self, columns: Mapping[str, Any], rows: int) -> dict[str, np.ndarray] | None:
        """`predict` without a DataFrame on either side, for an estimator fed a float array (None otherwise):
        the same array, the same estimator call, the same answer."""
        if not self.as_array:
            return None
        names = self.feature_names or list(columns)
        X = np.stack([np.asarray(columns[n], dtype=float) for n in names], axis=1).reshape(rows, len(names))
        out = self._call(X)
        return out if isinstance(out, dict) else None

    def _call(self, X: pd.DataFrame | np.ndarray) -> dict[str, np.ndarray] | Any:
        """The estimator's answer as output columns, or as it came when it is not one value per row."""
        # The signature has already refused NaN and infinity, so sklearn's own finiteness scan is wasted work.
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True), warnings.catch_warnings():
            if self.as_array:  # "X does not have valid feature names": it has, in the fitted order
                warnings.simplefilter("ignore", UserWarning)
            if not self.proba:
                result = self.estimator.predict(X)
                return {"prediction": result} if isinstance(result, np.ndarray) and result.ndim == 1 else result
            proba = self.estimator.predict_proba(X)
        columns = {"prediction": self.classes[proba.argmax(axis=1)]}
        columns.update(zip(self._proba_columns, proba.T, strict=True))
        return columns

    def _input(self, frame: pd.DataFrame) -> pd.DataFrame | np.ndarray:
        if self.feature_names is None:
            return frame.to_numpy(dtype=float)
        if self.as_array:
            return np.stack([frame[n].to_numpy(dtype=float, copy=False) for n in self.feature_names], axis=1)
        if list(frame.columns) == self.feature_names:
            return frame
        return frame[self.feature_names]


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

    def signature(
        self, predictor: Any, meta: Mapping[str, Any], example: pd.DataFrame | None = None
    ) -> Signature | None:
        estimator = predictor.estimator
        if predictor.feature_names is not None:
            names = predictor.feature_names
            declared = _declared_fields(estimator)
        elif hasattr(estimator, "n_features_in_"):
            names = [f"f{i}" for i in range(int(estimator.n_features_in_))]
            declared = {}
        else:
            return None
        inputs = tuple(declared.get(n) or _field_from_example(n, example) for n in names)
        outputs = [Field("prediction", _label_type(predictor.classes))]
        outputs += [Field(c, "float") for c in predictor.output_columns[1:]]
        return Signature(inputs=inputs, outputs=tuple(outputs))

    def accepts(self, source: Any) -> bool:
        if _is_estimator(source):
            return True
        if not isinstance(source, str | Path):
            return False
        path = Path(source)  # its content says so, or its name does (then `save` says what the content is)
        return path.suffix.lower() in _SUFFIXES or (path.is_file() and _sniff(path) is not None)


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
    """`skops` for a zip archive; `joblib` or `pickle` for a pickle stream, by its content, whatever its name."""
    if not path.is_file():
        raise NotFound(f"no scikit-learn model file at {path}")
    fmt = _sniff(path)
    if fmt is None:
        with path.open("rb") as f:
            head = f.read(12)
        raise ConveyorError(
            f"{path} is not a model file: neither a pickle (joblib.dump, pickle.dump) nor a skops file "
            f"(skops.io.dump); it starts with {head!r}"
        )
    return fmt


def _sniff(path: Path) -> str | None:
    """The format a file's content says it has, or None: read at `models add`, never while serving."""
    with path.open("rb") as f:
        head = f.read(4)
        if head.startswith(_ZIP):
            return "skops"
        if head.startswith(_COMPRESSED):
            return "joblib"
        if head.startswith(b"\x80"):  # PROTO: every pickle since protocol 2; joblib's own arrays mark its files
            return "joblib" if b"NumpyArrayWrapper" in head + f.read() else "pickle"
        # protocols 0 and 1 open with GLOBAL: `c`, a module and a name, each on its line (a CSV's `customer_id,...`
        # does not)
        if _OLD_PICKLE.match(head + f.read(256)):
            return "pickle"
    return None


def _read(path: Path, fmt: str, error: type[ConveyorError] = ConveyorError) -> Any:
    if not path.is_file():
        raise NotFound(f"no scikit-learn model file at {path}")
    if fmt == "skops":
        return _read_skops(path, error)
    try:
        return joblib.load(path)  # reads pickle's streams and joblib's own, compressed or not
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


# --- what an estimator declares of its input columns ----------------------------------------------


def _field_from_example(name: str, example: pd.DataFrame | None) -> Field:
    """A column the estimator says nothing of: the example's type (integers widened to float), else float."""
    kind = column_type(example[name]) if example is not None and name in example.columns else "float"
    return Field(name, "float" if kind in ("int", "datetime", "object") else kind)


def _declared_fields(estimator: Any) -> dict[str, Field]:
    """Fields for the columns a ColumnTransformer (the estimator, or a pipeline's first step) knows about."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    while isinstance(estimator, Pipeline):
        estimator = estimator.steps[0][1]
    if not isinstance(estimator, ColumnTransformer) or not hasattr(estimator, "feature_names_in_"):
        return {}
    names = [str(n) for n in estimator.feature_names_in_]
    fields: dict[str, Field] = {}
    used: set[str] = set()
    for label, transformer, columns in estimator.transformers_:
        selected = _selected(estimator, label, columns, names)
        if selected is None:  # a selection we cannot resolve: claim nothing about dropped columns
            used.update(names)
            continue
        if isinstance(transformer, str) and transformer == "drop":
            continue
        used.update(selected)
        fields.update(_transformer_fields(transformer, selected, one_column=isinstance(columns, str)))
    for name in names:
        if name not in used:
            fields[name] = Field(name, "object", required=False, description=_DROPPED)
    return fields


def _selected(ct: Any, label: str, columns: Any, names: list[str]) -> list[str] | None:
    """The input column names a ColumnTransformer entry selects."""
    indices = getattr(ct, "_transformer_to_input_indices", {}).get(label)
    if indices is not None:
        return [names[i] for i in indices]
    if isinstance(columns, str):
        return [columns]
    if isinstance(columns, int | np.integer):
        return [names[int(columns)]]
    values = list(columns) if isinstance(columns, list | tuple | np.ndarray | pd.Index) else None
    if values is None:
        return None
    if all(isinstance(v, bool | np.bool_) for v in values):
        return [n for n, keep in zip(names, values, strict=True) if keep]
    if all(isinstance(v, int | np.integer) for v in values):
        return [names[int(v)] for v in values]
    return [str(v) for v in values]


def _transformer_fields(transformer: Any, columns: list[str], one_column: bool) -> dict[str, Field]:
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline

    step = transformer
    if isinstance(step, Pipeline):  # imputers keep the columns in place: look at what follows them
        steps = [s for _, s in step.steps if not isinstance(s, SimpleImputer) and s not in (None, "passthrough")]
        step = steps[0] if steps else None
    if one_column and hasattr(step, "build_analyzer"):  # CountVectorizer, TfidfVectorizer, HashingVectorizer
        return {columns[0]: Field(columns[0], "str")}
    categories = getattr(step, "categories_", None)
    if categories is None or len(categories) != len(columns):
        return {}
    closed = getattr(step, "handle_unknown", None) == "error"
    return {name: _category_field(name, cats, closed) for name, cats in zip(columns, categories, strict=True)}


def _category_field(name: str, categories: np.ndarray, closed: bool) -> Field:
    """An encoded column: the type of its categories; with `closed` (an unknown one fails the model), its values."""
    values = [c for c in categories.tolist() if not (isinstance(c, float) and np.isnan(c)) and c is not None]
    kind = column_type(pd.Series(values)) if values else "object"
    listed = closed and kind in ("str", "int", "float", "bool")
    return Field(name, kind, choices=tuple(values) if listed else None)
