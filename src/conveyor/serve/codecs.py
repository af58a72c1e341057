"""Request bodies in, response bodies out: the wire shapes clients already speak.

Accepted: query strings (`GET /predict?range=3`), `{"instances": [...]}` (TF Serving, Vertex, KServe V1),
MLflow's `{"dataframe_split": ...}` / `{"dataframe_records": ...}` / `{"inputs": ...}`, CSV bodies, and the
Open Inference Protocol (KServe V2) tensors. Each decoder returns validated columns, never a DataFrame:
the batcher merges many requests into one frame.
"""

from __future__ import annotations

import io
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from conveyor.errors import InvalidInput, MalformedInput, PayloadTooLarge, UnsupportedMediaType
from conveyor.io import read_csv
from conveyor.serve.tensors import (  # noqa: F401  v2_inputs, v2_metadata: re-exported for their old callers
    InputTensor,
    check_outputs,
    columns_from_tensors,
    from_raw,
    input_field,
    meant_as_matrix,
    output_tensors,
    rows_ok,
    to_raw,
    v2_inputs,
    v2_metadata,
)
from conveyor.signature import Signature

Columns = dict[str, np.ndarray]
ALL_SERIES = "*"
MODEL_PARAM = "model"  # `/predict?model=NAME`: which of the served models answers
JSON_SHAPES = '{"instances": [{...}, ...]}, {"dataframe_split": {"columns": [...], "data": [[...]]}}'


def query_values(params: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """A query's parameters, each given once: `?range=1&range=60` is ambiguous, so it is refused rather than one
    of its values silently picked. Starlette's QueryParams and (name, value) pairs keep every value; a plain
    mapping can hold one only."""
    if hasattr(params, "multi_items"):
        items = params.multi_items()
    else:
        items = list(params.items() if isinstance(params, Mapping) else params)
    values = dict(items)
    if len(values) != len(items):
        repeated = sorted(k for k, n in Counter(k for k, _ in items).items() if n > 1)
        raise InvalidInput(f"query parameter(s) {repeated} given more than once: give each one value")
    return values


def decode_query(params: Mapping[str, str], signature: Signature) -> tuple[Columns, int]:
    """`GET /predict?range=3&series=1/BEVERAGES`: one row, or every series with `series=*`; `model=` chose the
    model (unless the model has an input of that name)."""
    record: dict[str, Any] = query_values(params)
    if MODEL_PARAM not in signature.input_names:
        record.pop(MODEL_PARAM, None)
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
    if not all(isinstance(c, str) for c in columns):
        raise MalformedInput('"dataframe_split.columns" must be a list of column names (strings)')
    if len(set(columns)) != len(columns):  # two values for one column: which one is meant cannot be told
        twice = sorted({c for c in columns if columns.count(c) > 1})
        raise InvalidInput(f'"dataframe_split.columns" names {twice} more than once: name each column once')
    rows_ok(len(data), max_rows)
    if any(not isinstance(r, list) or len(r) != len(columns) for r in data):
        raise MalformedInput(f'every row of "dataframe_split.data" must have {len(columns)} values')
    return signature.check_records([dict(zip(columns, r, strict=True)) for r in data]), len(data)


def _columnar(inputs: dict[str, Any], signature: Signature, max_rows: int) -> tuple[Columns, int]:
    lengths = {len(v) if isinstance(v, list) else 1 for v in inputs.values()}
    if not lengths:
        raise InvalidInput(f'"inputs" has no columns; this model takes {signature.input_names}')
    if len(lengths) != 1:
        raise InvalidInput('all columns of "inputs" must have the same length')
    n = rows_ok(lengths.pop(), max_rows)
    if n == 0:
        raise InvalidInput('no rows: the columns of "inputs" are empty')
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


@dataclass
class V2Request:
    """An inference request read off REST: its validated columns and what the answer must hold."""

    columns: Columns
    rows: int
    id: Any = None
    outputs: dict[str, bool] | None = None  # the outputs asked for (None: all), each True to answer it raw
    binary: bool = False  # `parameters.binary_data_output`: outputs not asked for by name are answered raw


HEADER_LENGTH = "inference-header-content-length"  # the binary extension's header: the JSON header's size
V2_SHAPE = '{"inputs": [{"name": ..., "shape": [n], "datatype": ..., "data": [...]}]}'


def decode_v2(body: bytes, headers: Mapping[str, str], signature: Signature, max_rows: int, max_body: int) -> V2Request:
    """A JSON `{"inputs": [...]}`, optionally followed by the raw data of the inputs that declare
    `parameters.binary_data_size` (Triton's binary data extension, tritonclient.http's default: the JSON
    header's size is the `Inference-Header-Content-Length` header), optionally gzip or deflate encoded."""
    body = decompress(body, headers.get("content-encoding", ""), max_body)
    length = headers.get(HEADER_LENGTH)
    header, binary = memoryview(body), memoryview(b"")
    if length is not None:
        if not (length.strip().isascii() and length.strip().isdigit()):  # "²" is a digit to str.isdigit
            raise MalformedInput(
                f"Inference-Header-Content-Length must be the JSON header's size in bytes, got {length!r}"
            )
        size = int(length)
        if size > len(body):
            raise MalformedInput(
                f"Inference-Header-Content-Length is {size} bytes but the whole body is {len(body)}: "
                "the JSON header cannot be longer than the body"
            )
        header, binary = header[:size], header[size:]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise MalformedInput(f"malformed JSON: {exc}") from None
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise MalformedInput(f"expected {V2_SHAPE}")
    tensors, offset = [], 0
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not {"name", "shape", "datatype"} <= tensor.keys():
            raise MalformedInput(f"inputs[{i}] must have name, shape, datatype and data (or binary data)")
        name, datatype, shape = str(tensor["name"]), tensor["datatype"], tensor["shape"]
        size = _parameters(tensor, f"input {name!r}").get("binary_data_size")
        if size is None:
            data = _json_data(tensor, i, name)
        else:
            if type(size) is not int or size < 0 or "data" in tensor:
                raise MalformedInput(
                    f"input {name!r}: parameters.binary_data_size must be its raw data's size in bytes, "
                    "and the input has no data in the JSON"
                )
            if offset + size > len(binary):
                where = "" if length is not None else " (none without the Inference-Header-Content-Length header)"
                raise MalformedInput(
                    f"input {name!r}: binary_data_size is {size} bytes but only {len(binary) - offset} of the "
                    f"{len(binary)} bytes after the JSON header remain{where}: the body is cut short"
                )
            if not meant_as_matrix(signature, name, shape):
                input_field(signature, name, datatype)  # a wrong name or datatype, said before the bytes are read
            data = from_raw(datatype, shape, binary[offset : offset + size], name)
            offset += size
        tensors.append(InputTensor(name, datatype, shape, data))
    if offset != len(binary):
        raise MalformedInput(
            f"{len(binary) - offset} bytes after the JSON header belong to no input: the inputs' "
            f"binary_data_size add up to {offset} bytes"
        )
    columns, n = columns_from_tensors(tensors, signature, max_rows)
    binary_output = _parameters(doc, "the request").get("binary_data_output") is True
    infer_id = doc.get("id")
    if infer_id is not None and not isinstance(infer_id, str):
        raise MalformedInput(f'"id" must be a string (the protocol\'s request identifier), got {_kind(infer_id)}')
    return V2Request(columns, n, infer_id, _requested(doc.get("outputs"), signature, binary_output), binary_output)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _parameters(doc: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise MalformedInput(f"{what}: parameters must be an object")
    if "shared_memory_region" in parameters:
        raise InvalidInput(f"{what}: shared memory is not supported; send the data in the request")
    return parameters


def _json_data(tensor: dict[str, Any], i: int, name: str) -> list[Any]:
    if "data" not in tensor:
        raise MalformedInput(
            f"inputs[{i}] ({name}) has no data: send data, or parameters.binary_data_size and the raw bytes "
            "after the JSON header"
        )
    data = tensor["data"]
    if not isinstance(data, list):
        data = [data]
    if data and isinstance(data[0], list):  # nested (row-major) data is allowed: flatten it
        data = [v for row in data for v in (row if isinstance(row, list) else [row])]
    return data


def _requested(outputs: Any, signature: Signature, binary_output: bool) -> dict[str, bool] | None:
    """`outputs: [{"name", "parameters": {"binary_data": bool}}]`: which outputs, and which of them raw."""
    if not outputs:
        return None
    if not isinstance(outputs, list):
        raise MalformedInput('outputs must be a list of {"name": ...}')
    requested: dict[str, bool] = {}
    for i, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise MalformedInput(f'outputs[{i}] must be {{"name": ...}}')
        name = output["name"]
        parameters = _parameters(output, f"output {name!r}")
        if "classification" in parameters:
            raise InvalidInput(f"output {name!r}: classification is not supported; ask for the output itself")
        requested[name] = bool(parameters.get("binary_data", binary_output))
    check_outputs(requested, signature)
    return requested


def encode_v2(model: Any, result: Mapping[str, Sequence[Any]], request: V2Request) -> tuple[bytes, dict[str, str]]:
    """The answer's body and headers: JSON, or a JSON header and the raw data of the outputs asked for raw."""
    asked = request.outputs
    if asked is not None:
        unknown = [n for n in asked if n not in result]
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; this model answers {list(result)}")
        result = {n: result[n] for n in asked}
    head: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
    if request.id is not None:
        head["id"] = request.id
    outputs, blobs = [], []
    for tensor in output_tensors(result, model.signature):
        if asked.get(tensor.name, request.binary) if asked is not None else request.binary:
            raw = to_raw(tensor)
            blobs.append(raw)
            outputs.append(
                {
                    "name": tensor.name,
                    "shape": tensor.shape,
                    "datatype": tensor.datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            )
        else:
            outputs.append(tensor.json())
    head["outputs"] = outputs
    text = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return text, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(text))}
    return b"".join([text, *blobs]), headers


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A `Content-Encoding: gzip` or `deflate` body (tritonclient's request_compression_algorithm), inflated
    to at most `limit` bytes: a small body must not inflate into the worker's memory."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding!r}: send gzip, deflate or none")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise MalformedInput(f"the body is not {encoding} data: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"the {encoding} body inflates past {limit} bytes; at most {limit} are accepted")
    if not inflater.eof:
        raise MalformedInput(f"the {encoding} body is cut short")
    return out


def error_body(path: str, kind: str, message: str, status: int) -> tuple[int, dict[str, Any]]:
    """A refused request's status and body: `{"error": kind, "message": ...}`, except on /v2 routes, whose
    clients (tritonclient, KServe's) show `error` as the message and expect 400 for a request they sent wrong:
    there `error` is the message too, beside the same `message` and the `kind`."""
    if path == "/v2" or path.startswith("/v2/"):
        return (400 if status == 422 else status), {"error": message, "message": message, "kind": kind}
    return status, {"error": kind, "message": message}


def check_v2_range(columns: Columns, forecaster: bool) -> None:
    if forecaster and columns["range"].min() != columns["range"].max():
        raise InvalidInput(
            "every row of one V2 request must ask for the same range: a forecast answers [rows, range] tensors; "
            "send one request per range, or POST /predict"
        )
