"""The statsmodels flavor: a user's fitted statsmodels time-series results, served as one forecast series.

Versions saved before the `forecaster` flavor existed hold Conveyor's sales forecaster under this flavor
(`kind: sales_forecaster`); they still load, through the forecaster flavor.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import joblib

from conveyor.errors import ConveyorError
from conveyor.flavors.forecaster import KIND, ForecasterFlavor, load_pickle, pickle_mentions
from conveyor.forecast import DEFAULT_RANGE_MAX, TOTAL, SalesForecaster, wrap_results
from conveyor.model import Flavor, Predictor
from conveyor.signature import Signature

FILE = "model.joblib"
RESULTS = "statsmodels_results"


def is_results(obj: Any) -> bool:
    """Fitted statsmodels results (or their wrapper) that can forecast, told apart without importing statsmodels."""
    return type(obj).__module__.startswith("statsmodels.") and callable(getattr(obj, "forecast", None))


class StatsmodelsFlavor(Flavor):
    name = "statsmodels"

    def save(self, source: Any, directory: Path) -> dict[str, Any]:
        obj = load_pickle(source) if isinstance(source, str | Path) else source
        if isinstance(obj, SalesForecaster):
            raise ConveyorError("a SalesForecaster is saved with the 'forecaster' flavor, not 'statsmodels'")
        if not is_results(obj):
            raise ConveyorError(
                f"the statsmodels flavor takes fitted statsmodels time-series results, not {type(obj).__name__}"
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        joblib.dump(obj, directory / FILE)
        return {"file": FILE, "kind": RESULTS, "series": TOTAL, "range_max": DEFAULT_RANGE_MAX}

    def load(self, directory: Path, meta: Mapping[str, Any]) -> Predictor:
        if meta.get("kind") == KIND:
            return ForecasterFlavor().load(directory, meta)
        obj = joblib.load(Path(directory) / meta.get("file", FILE))
        return wrap_results(
            obj, name=meta.get("series", TOTAL), range_max=int(meta.get("range_max", DEFAULT_RANGE_MAX))
        )

    def signature(self, predictor: Predictor, meta: Mapping[str, Any], example: Any = None) -> Signature | None:
        return predictor.signature() if isinstance(predictor, SalesForecaster) else None

    def accepts(self, source: Any) -> bool:
        if is_results(source):
            return True
        return isinstance(source, str | Path) and pickle_mentions(Path(source), (b"statsmodels.",))
