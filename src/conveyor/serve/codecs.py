"""Request bodies in, response bodies out: the wire shapes clients already speak.

Accepted: query strings (`GET /predict?range=3`), `{"instances": [...]}` (TF Serving, Vertex, KServe V1),
MLflow's `{"dataframe_split": ...}` / `{"dataframe_records": ...}` / `{"inputs": ...}`, CSV bodies, and the
Open Inference Protocol (KServe V2) tensors. Each decoder returns validated columns, never a DataFrame:
the batcher merges many requests into one frame.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from conveyor.errors import InvalidInput, MalformedInput, PayloadTooLarge, UnsupportedMediaType
from conveyor.io import read_csv
from conveyor.serve.tensors import (  # noqa: F401  v2_inputs, v2_metadata: re-exported for their old callers
    InputTensor,
    columns_from_tensors,
    output_tensors,
    rows_ok,
    v2_inputs,
    v2_metadata,
)
from conveyor.signature import Signature

Columns = dict[str, np.ndarray]
ALL_SERIES = "*"
JSON_SHAPES = '{"instances": [{...}, ...]}, {"dataframe_split": {"columns": [...], "data": [[...]]}}'


def decode_query(params: Mapping[str, str], signature: Signature) -> tuple[Columns, int]:
    """`GET /predict?range=3&series=1/BEVERAGES`: one row, or every series with `series=*`."""
    record: dict[str, Any] = dict(params)
    if record.get("series") == ALL_SERIES and "series" in signature.input_names:
        choices = signature.field("series").choices or ()
        records = [{**record, "series": s} for s in choices]
        return signature.check_records(records), len(records)
    return signature.check_records([record]), 1


def decode_json(body: bytes, signature: Signature, max_rows: int) -> tuple[Columns, int]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedInput(f"malformed JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedInput(f"expected a JSON object such as {JSON_SHAPES}")
    if "instances" in doc:
        return _records(doc["instances"], signature, max_rows, "instances")
    if "dataframe_records" in doc:
        return _records(doc["dataframe_records"], signature, max_rows, "dataframe_records")
    if "dataframe_split" in doc:
        return _split(doc["dataframe_split"], signature, max_rows)
    if "inputs" in doc:
        inputs = doc["inputs"]
        if isinstance(inputs, dict):
            return _columnar(inputs, signature, max_rows)
        return _records(inputs, signature, max_rows, "inputs")
    raise MalformedInput(f"unknown body shape with keys {sorted(doc)[:5]}; send {JSON_SHAPES}")


def _records(rows: Any, signature: Signature, max_rows: int, key: str) -> tuple[Columns, int]:
    if not isinstance(rows, list):
        raise MalformedInput(f'"{key}" must be a list of rows')
    rows_ok(len(rows), max_rows)
    if rows and isinstance(rows[0], list):  # positional rows, in the signature's column order
        names = signature.input_names
        if any(not isinstance(r, list) or len(r) != len(names) for r in rows):
            raise InvalidInput(f"positional rows must each have {len(names)} values: {names}")
        rows = [dict(zip(names, r, strict=True)) for r in rows]
    return signature.check_records(rows), len(rows)


def _split(split: Any, signature: Signature, max_rows: int) -> tuple[Columns, int]:
    if (
        not isinstance(split, dict)
        or not isinstance(split.get("columns"), list)
        or not isinstance(split.get("data"), list)
    ):
        raise MalformedInput('"dataframe_split" must be {"columns": [...], "data": [[...], ...]}')
    columns, data = split["columns"], split["data"]
    rows_ok(len(data), max_rows)
    if any(not isinstance(r, list) or len(r) != len(columns) for r in data):
        raise MalformedInput(f'every row of "dataframe_split.data" must have {len(columns)} values')
    return signature.check_records([dict(zip(columns, r, strict=True)) for r in data]), len(data)


def _columnar(inputs: dict[str, Any], signature: Signature, max_rows: int) -> tuple[Columns, int]:
    lengths = {len(v) if isinstance(v, list) else 1 for v in inputs.values()}
    if len(lengths) != 1:
        raise InvalidInput('all columns of "inputs" must have the same length')
    n = rows_ok(lengths.pop(), max_rows)
    _unknown(inputs, signature)
    return signature.check_columns({k: v if isinstance(v, list) else [v] for k, v in inputs.items()}, n), n


def decode_csv(body: bytes, signature: Signature, max_rows: int) -> tuple[Columns, int]:
    """A CSV body with a header row, read by the parser every path shares (a bad line is named, never shifted)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedInput(f"malformed CSV: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    frame = read_csv(io.StringIO(text, newline=""), "CSV body")
    n = rows_ok(len(frame), max_rows)
    if n == 0:
        raise InvalidInput("the CSV has a header but no rows")
    _unknown(frame.columns, signature)
    return signature.check_columns({c: frame[c] for c in frame.columns}, n), n


def _unknown(names: Any, signature: Signature) -> None:
    extra = [str(c) for c in names if c not in signature.input_names]
    if extra:
        raise InvalidInput(f"unknown column(s) {extra}; this model takes {signature.input_names}")


def decode_body(body: bytes, content_type: str, signature: Signature, max_rows: int) -> tuple[Columns, int]:
    if not body.strip():
        raise MalformedInput(f"empty body: send JSON {JSON_SHAPES} or a CSV with a header row")
    kind = content_type.split(";", 1)[0].strip().lower()
    # `curl -d '{...}'` sends form-urlencoded: a body that is plainly JSON is read as JSON
    if (
        kind in ("", "application/json")
        or kind.endswith("+json")
        or (kind == "application/x-www-form-urlencoded" and body.lstrip()[:1] in (b"{", b"["))
    ):
        return decode_json(body, signature, max_rows)
    if kind in ("text/csv", "application/csv"):
        return decode_csv(body, signature, max_rows)
    raise UnsupportedMediaType(f"unsupported content type {kind!r}: use application/json or text/csv")


def records(result: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Columns to rows: the `predictions` list of a response."""
    keys = list(result)
    return [dict(zip(keys, values, strict=True)) for values in zip(*result.values(), strict=True)]


def forecast_steps(result: Mapping[str, Sequence[Any]], row: int) -> list[dict[str, Any]]:
    """One forecaster output row as steps: `[{"date", "forecast", "lower", "upper"}, ...]`."""
    dates, point = result["date"][row], result["forecast"][row]
    lower, upper = result["lower"][row], result["upper"][row]
    return [
        {"date": d, "forecast": f, "lower": lo, "upper": hi}
        for d, f, lo, hi in zip(dates, point, lower, upper, strict=True)
    ]


def check_forecast_steps(columns: Columns, rows: int, limit: int) -> None:
    """Refuse, before any work, a forecast whose answer would be too large (each row answers `range` steps)."""
    horizons = columns.get("range")  # filled with its default when a request leaves it out
    # one row is the common request: indexing it is ~10x cheaper than numpy's sum
    steps = rows if horizons is None else int(horizons[0]) if rows == 1 else int(horizons.sum())
    if steps > limit:
        raise PayloadTooLarge(
            f"this request asks for {steps:,} forecast steps (the sum of range over {rows:,} "
            f"row{'s' if rows != 1 else ''}); at most {limit:,} are answered per request (--max-forecast-steps): "
            "split it, or forecast in bulk with `conveyor batch forecast`"
        )


def query_answer(
    model: Any, result: Mapping[str, Sequence[Any]], columns: Columns, rows: int, series: str | None, forecaster: bool
) -> dict[str, Any]:
    """The body of `GET /predict`: a forecaster's steps for one series (or each, with `series=*`), else rows."""
    body: dict[str, Any] = {"model": model.name, "version": model.version}
    if forecaster:
        body["range"] = int(columns["range"][0]) if "range" in columns else None
        if series == ALL_SERIES:
            body["forecasts"] = [
                {"series": result["series"][i], "predictions": forecast_steps(result, i)} for i in range(rows)
            ]
        else:
            body["series"] = result["series"][0]
            body["predictions"] = forecast_steps(result, 0)
    else:
        body["predictions"] = records(result)
    return body


def model_info(model: Any, serving: str) -> dict[str, Any]:
    """The body of `GET /`: what is served, how it was asked for, and its training metrics."""
    m = model.manifest
    return {
        "model": model.name,
        "version": model.version,
        "flavor": model.flavor,
        "created": m.get("created"),
        "signature": model.signature.to_dict(),
        "metrics": m.get("metrics", {}).get("overall", m.get("metrics", {})),
        "serving": serving,
    }


def rows_answer(model: Any, result: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """The body of `POST /predict`: one prediction per row sent."""
    return {"model": model.name, "version": model.version, "predictions": records(result)}


# --- Open Inference Protocol (KServe V2) over REST: serve/tensors.py holds what every transport shares ----------
FORECAST_OUTPUTS = frozenset({"date", "forecast", "lower", "upper"})


def is_forecaster(signature: Signature) -> bool:
    """A forecaster answers `GET /predict?range=N` with steps: paths of dates, forecasts and bounds per row."""
    return set(signature.output_names) >= FORECAST_OUTPUTS and "range" in signature.input_names


def decode_v2(body: bytes, signature: Signature, max_rows: int) -> tuple[Columns, int, Any]:
    """`{"inputs": [{"name", "shape", "datatype", "data"}, ...]}`, one named input per column."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedInput(f"malformed JSON: {exc}") from None
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise MalformedInput('expected {"inputs": [{"name": ..., "shape": [n], "datatype": ..., "data": [...]}]}')
    tensors = []
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not {"name", "shape", "datatype", "data"} <= tensor.keys():
            raise MalformedInput(f"inputs[{i}] must have name, shape, datatype and data")
        data = tensor["data"]
        if not isinstance(data, list):
            data = [data]
        if data and isinstance(data[0], list):  # nested (row-major) data is allowed: flatten it
            data = [v for row in data for v in (row if isinstance(row, list) else [row])]
        tensors.append(InputTensor(str(tensor["name"]), tensor["datatype"], tensor["shape"], data))
    columns, n = columns_from_tensors(tensors, signature, max_rows)
    return columns, n, doc.get("id")


def check_v2_range(columns: Columns, forecaster: bool) -> None:
    if forecaster and columns["range"].min() != columns["range"].max():
        raise InvalidInput(
            "every row of one V2 request must ask for the same range: a forecast answers [rows, range] tensors; "
            "send one request per range, or POST /predict"
        )


def v2_answer(model: Any, result: Mapping[str, Sequence[Any]], infer_id: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model_name": model.name,
        "model_version": str(model.version),
        "outputs": [t.json() for t in output_tensors(result, model.signature)],
    }
    if infer_id is not None:
        out["id"] = infer_id
    return out
