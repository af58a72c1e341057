"""Merged requests answer exactly what each request alone answers through the DataFrame path."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd

from conveyor.flavors.forecaster import ForecasterFlavor
from conveyor.flavors.sklearn import SklearnFlavor
from conveyor.model import Model
from conveyor.serve.batching import AdaptiveBatcher


def _model(flavor, predictor_source, example: pd.DataFrame | None, tmp_path, name: str) -> Model:
    directory = tmp_path / name
    directory.mkdir()
    meta = flavor.save(predictor_source, directory)
    predictor = flavor.load(directory, meta)
    return Model(name, 1, flavor.name, flavor.signature(predictor, meta, example), predictor)


def _merged(model: Model, requests: list[pd.DataFrame]) -> list[dict]:
    """Send every request in one loop turn: the batcher merges them into one predict call."""
    seen: list[tuple[int, int]] = []
    batcher = AdaptiveBatcher(on_batch=lambda n, rows, s: seen.append((n, rows)))

    async def go():
        calls = []
        for frame in requests:
            columns = model.signature.check_columns({c: frame[c].tolist() for c in frame.columns}, len(frame))
            calls.append(batcher.predict(model, columns, len(frame)))
        return await asyncio.gather(*calls)

    answers = asyncio.run(go())
    batcher.close()
    assert seen[0] == (len(requests), sum(len(f) for f in requests))  # one merged predict
    return [result for _, result in answers]


def test_merged_sklearn_requests_match_the_dataframe_path(iris_model, tmp_path):
    est, X = iris_model
    model = _model(SklearnFlavor(), est, X.head(), tmp_path, "iris")
    requests = [X.iloc[[0]], X.iloc[1:4], X.iloc[[7]]]
    for frame, got in zip(requests, _merged(model, requests), strict=True):
        want = model.predict(model.signature.validate_frame(frame))
        assert list(got) == list(want.columns)
        for name in want.columns:
            np.testing.assert_array_equal(np.asarray(got[name]), want[name].to_numpy())


def test_merged_forecast_requests_match_the_dataframe_path(sales_forecaster, tmp_path):
    model = _model(ForecasterFlavor(), sales_forecaster, None, tmp_path, "sales")
    series = model.signature.field("series").choices
    requests = [
        pd.DataFrame({"series": [series[0]], "range": [3]}),
        pd.DataFrame({"series": [series[1], series[2]], "range": [2, 5]}),
    ]
    for frame, got in zip(requests, _merged(model, requests), strict=True):
        want = model.predict(model.signature.validate_frame(frame))
        assert got == {c: want[c].tolist() for c in want.columns}
