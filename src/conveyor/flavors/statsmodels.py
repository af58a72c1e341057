"""The statsmodels flavor: Conveyor's sales forecaster, or a user's fitted statsmodels time-series results."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import joblib

from conveyor.errors import ConveyorError
from conveyor.forecast import DEFAULT_RANGE_MAX, TOTAL, SalesForecaster, wrap_results
from conveyor.model import Flavor, Predictor
from conveyor.signature import Signature

FILE = "model.joblib"
_PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
# A pickle names its top-level class before its state, so these bytes sit near the start of the file.
_MARKERS = (b"conveyor.forecast", b"statsmodels.")
_PEEK_BYTES = 4096


def is_results(obj: Any) -> bool:
    """Fitted statsmodels results (or their wrapper) that can forecast, told apart without importing statsmodels."""
    return type(obj).__module__.startswith("statsmodels.") and callable(getattr(obj, "forecast", None))


class StatsmodelsFlavor(Flavor):
    name = "statsmodels"

    def save(self, source: Any, directory: Path) -> dict[str, Any]:
        obj = _load_source(source) if isinstance(source, str | Path) else source
        if isinstance(obj, SalesForecaster):
            kind = "sales_forecaster"
        elif is_results(obj):
            kind = "statsmodels_results"
        else:
            raise ConveyorError(
                f"the statsmodels flavor takes a SalesForecaster or fitted statsmodels results, "
                f"not {type(obj).__name__}"
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(obj, directory / FILE)
        meta: dict[str, Any] = {"file": FILE, "kind": kind}
        if kind == "statsmodels_results":
            meta.update(series=TOTAL, range_max=DEFAULT_RANGE_MAX)
        return meta

    def load(self, directory: Path, meta: Mapping[str, Any]) -> Predictor:
        obj = joblib.load(Path(directory) / meta.get("file", FILE))
        if meta.get("kind") == "statsmodels_results":
            return wrap_results(
                obj, name=meta.get("series", TOTAL), range_max=int(meta.get("range_max", DEFAULT_RANGE_MAX))
            )
        if not isinstance(obj, SalesForecaster):
            raise ConveyorError(f"{directory} holds a {type(obj).__name__}, not a SalesForecaster")
        return obj

    def signature(self, predictor: Predictor, meta: Mapping[str, Any], example: Any = None) -> Signature | None:
        return predictor.signature() if isinstance(predictor, SalesForecaster) else None

    def accepts(self, source: Any) -> bool:
        if isinstance(source, SalesForecaster) or is_results(source):
            return True
        if isinstance(source, str | Path):
            return _looks_like_ours(Path(source))
        return False


def _load_source(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConveyorError(f"model file {str(path)!r} does not exist")
    return joblib.load(path)


def _looks_like_ours(path: Path) -> bool:
    """Peek at an uncompressed pickle's first bytes for our class names; never unpickles."""
    if path.suffix.lower() not in _PICKLE_SUFFIXES or not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(_PEEK_BYTES)
    except OSError:
        return False
    return any(marker in head for marker in _MARKERS)
