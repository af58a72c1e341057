"""The forecaster flavor: Conveyor's own sales forecaster (`conveyor train sales`), served from precomputed arrays."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import joblib

from conveyor.errors import ConveyorError
from conveyor.forecast import SalesForecaster
from conveyor.model import Flavor, Predictor
from conveyor.signature import Signature

FILE = "model.joblib"
KIND = "sales_forecaster"
_PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
# A pickle names its top-level class before its state, so the module's name sits near the start of the file.
_MARKER = b"conveyor.forecast"
_PEEK_BYTES = 4096


class ForecasterFlavor(Flavor):
    name = "forecaster"

    def save(self, source: Any, directory: Path) -> dict[str, Any]:
        obj = load_pickle(source) if isinstance(source, str | Path) else source
        if not isinstance(obj, SalesForecaster):
            raise ConveyorError(
                f"the forecaster flavor takes a SalesForecaster (conveyor train sales), not {type(obj).__name__}"
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(obj, directory / FILE)
        return {"file": FILE, "kind": KIND}

    def load(self, directory: Path, meta: Mapping[str, Any]) -> Predictor:
        obj = joblib.load(Path(directory) / meta.get("file", FILE))
        if not isinstance(obj, SalesForecaster):
            raise ConveyorError(f"{directory} holds a {type(obj).__name__}, not a SalesForecaster")
        return obj

    def signature(self, predictor: Predictor, meta: Mapping[str, Any], example: Any = None) -> Signature | None:
        return predictor.signature() if isinstance(predictor, SalesForecaster) else None

    def accepts(self, source: Any) -> bool:
        if isinstance(source, SalesForecaster):
            return True
        return isinstance(source, str | Path) and pickle_mentions(Path(source), (_MARKER,))


def load_pickle(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConveyorError(f"model file {str(path)!r} does not exist")
    return joblib.load(path)


def pickle_mentions(path: Path, markers: tuple[bytes, ...]) -> bool:
    """Peek at an uncompressed pickle's first bytes for class names; never unpickles."""
    if path.suffix.lower() not in _PICKLE_SUFFIXES or not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(_PEEK_BYTES)
    except OSError:
        return False
    return any(marker in head for marker in markers)
