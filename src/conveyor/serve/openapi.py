"""The OpenAPI 3.1 description of the service, built from the served model's signature.

It describes every route `app.py` answers (a test walks the routes), and every parameter and body has an
example that works as it is: /docs prefills its forms with them.
"""

from __future__ import annotations

from typing import Any

from conveyor.model import Model
from conveyor.serve import page
from conveyor.serve.codecs import v2_inputs
from conveyor.settings import ServeSettings
from conveyor.signature import Field

_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string", "datetime": "string"}
_EXAMPLES = {"int": 0, "float": 0.0, "bool": False, "str": "a", "datetime": "2024-01-01", "object": "a"}
_V2_TENSOR = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string", "enum": ["BOOL", "INT64", "FP64", "BYTES"]},
        "data": {"type": "array"},
    },
    "required": ["name", "shape", "datatype", "data"],
}


def field_schema(f: Field) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    if f.type in _JSON_TYPES:
        schema["type"] = _JSON_TYPES[f.type]
    if f.type == "datetime":
        schema["format"] = "date-time"
    if f.min is not None:
        schema["minimum"] = f.min
    if f.max is not None:
        schema["maximum"] = f.max
    if f.choices is not None:
        schema["enum"] = list(f.choices)
    if f.default is not None:
        schema["default"] = f.default
    if f.description:
        schema["description"] = f.description
    return schema


def example(f: Field) -> Any:
    """A value the signature accepts: the default, else the first choice, else the lower bound, else a zero."""
    if f.default is not None:
        return f.default
    if f.choices:
        return f.choices[0]
    if f.min is not None:
        return int(f.min) if f.type == "int" else f.min
    return _EXAMPLES[f.type]


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def _errors(*codes: int) -> dict[str, Any]:
    error = {"$ref": "#/components/schemas/Error"}
    return {str(code): _json(_ERROR_TEXT[code], error) for code in codes}


_ERROR_TEXT = {
    400: "the body could not be parsed",
    404: "no such model, version or key",
    413: "the request or its answer is too large: split it",
    415: "neither JSON nor CSV",
    422: "the rows do not fit the model's signature",
    500: "an internal error: the message names a request id to find in the server log",
    503: "not ready, or the prediction store did not answer",
    504: "no prediction in time",
}


def _path(name: str, description: str, value: Any) -> dict[str, Any]:
    schema = {"type": "string", "default": str(value)}
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def _get(summary: str, ok: dict[str, Any], *errors: int, parameters: list | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": ok, **_errors(*errors)}}
    if parameters:
        op["parameters"] = parameters
    return {"get": op}


def _infer(parameters: list[dict[str, Any]], body_example: dict[str, Any]) -> dict[str, Any]:
    body = {
        "type": "object",
        "properties": {"id": {"type": "string"}, "inputs": {"type": "array", "items": _V2_TENSOR}},
        "required": ["inputs"],
    }
    return {
        "post": {
            "summary": "Open Inference Protocol (KServe V2) inference: one named input per column",
            "parameters": parameters,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": body, "example": body_example}},
            },
            "responses": {
                "200": _json("named output tensors, as GET /v2/models/{name} declares them"),
                **_errors(400, 404, 413, 422, 500, 503, 504),
            },
        }
    }


def openapi_spec(model: Model | None, settings: ServeSettings) -> dict[str, Any]:
    from conveyor import __version__

    inputs = model.signature.inputs if model else ()
    name = model.name if model else settings.model_refs[0].split("@")[0].split(":")[0]
    version = model.version if model else 1
    row = {
        "type": "object",
        "properties": {f.name: field_schema(f) for f in inputs},
        "required": [f.name for f in inputs if f.required and f.default is None],
        "additionalProperties": False,
    }
    title = f"{model.name} v{model.version}" if model else settings.model_refs[0]
    predict_errors = (400, 413, 415, 422, 500, 503, 504)
    query = [
        {
            "name": f.name,
            "in": "query",
            "required": f.required and f.default is None,
            "schema": field_schema(f),
            "example": example(f),
            "description": (f.description or f.describe())
            + ("; `*` for every series" if f.name == "series" and f.choices else ""),
        }
        for f in inputs
    ]
    series = next((f for f in inputs if f.name == "series"), None)
    model_name = _path("name", "the served model's name", name)
    model_version = _path("version", "the served version", version)
    v2_model = [model_name]
    v2_version = [model_name, model_version]
    infer_example = {
        "inputs": [
            {"name": t.name, "shape": [1], "datatype": t.datatype, "data": [example(f)]}
            for f, t in zip(inputs, v2_inputs(model.signature), strict=True)
        ]
        if model
        else []
    }
    metadata = _json("the model's inputs and outputs as tensors: name, datatype, shape (-1: any size)")
    ready = _json("ready", {"type": "object", "properties": {"ready": {"type": "boolean"}}})
    paths: dict[str, Any] = {
        "/predict": {
            "get": {
                "summary": "Predict one row given as query parameters (a forecaster: ?range=N&series=S)",
                "parameters": query,
                "responses": {"200": _json("predictions"), **_errors(*predict_errors)},
            },
            "post": {
                "summary": "Predict many rows",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {
                                        "type": "object",
                                        "properties": {"instances": {"type": "array", "items": row}},
                                        "required": ["instances"],
                                    },
                                    {
                                        "type": "object",
                                        "properties": {"dataframe_split": {"type": "object"}},
                                        "required": ["dataframe_split"],
                                    },
                                    {
                                        "type": "object",
                                        "properties": {"dataframe_records": {"type": "array"}},
                                        "required": ["dataframe_records"],
                                    },
                                    {
                                        "type": "object",
                                        "properties": {"inputs": {"type": ["object", "array"]}},
                                        "required": ["inputs"],
                                    },
                                ]
                            },
                            "example": {"instances": [{f.name: example(f) for f in inputs}]},
                        },
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
                "responses": {"200": _json("one prediction per row, in order"), **_errors(*predict_errors)},
            },
        },
        "/predictions/{key}": _get(
            "Stored predictions (written by batch or stream jobs) by key",
            _json("stored rows"),
            404,
            500,
            503,
            parameters=[_path("key", "the stored rows' key", series.default if series else "example")],
        ),
        "/v2": _get("Server metadata (V2)", _json("name, version, extensions")),
        "/v2/health/live": _get("Liveness (V2)", _json("live")),
        "/v2/health/ready": _get("Readiness (V2)", ready, 503),
        "/v2/models/{name}": _get("Model metadata (V2)", metadata, 404, 503, parameters=v2_model),
        "/v2/models/{name}/ready": _get("Model readiness (V2)", ready, 404, 503, parameters=v2_model),
        "/v2/models/{name}/infer": _infer(v2_model, infer_example),
        "/v2/models/{name}/versions/{version}": _get(
            "Model metadata of one version (V2)", metadata, 404, 503, parameters=v2_version
        ),
        "/v2/models/{name}/versions/{version}/ready": _get(
            "Model readiness of one version (V2)", ready, 404, 503, parameters=v2_version
        ),
        "/v2/models/{name}/versions/{version}/infer": _infer(v2_version, infer_example),
        "/healthz": _get("Liveness", _json("live")),
        "/readyz": _get("Readiness: 200 once a model is loaded", ready, 503),
        "/metrics": _get(
            "Prometheus metrics, summed over the workers",
            {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
        ),
        "/": _get(
            "The served model: version, signature, metrics (a forecaster's page to a browser: Accept prefers text/html)",
            {
                "description": "the model as JSON; a forecaster's chart page when Accept ranks text/html above JSON",
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "text/html": {"schema": {"type": "string"}},
                },
            },
            503,
        ),
        "/openapi.json": _get("This description", _json("OpenAPI 3.1")),
        "/docs": _get(
            "A page to try every route",
            {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}},
        ),
    }
    if model is not None and page.has_page(model):
        paths |= _forecast_paths(query, series)
    return {
        "openapi": "3.1.0",
        "info": {"title": f"Conveyor: {title}", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                    "required": ["error", "message"],
                }
            }
        },
    }


def _forecast_paths(query: list[dict[str, Any]], series: Field | None) -> dict[str, Any]:
    """The forecast page's JSON routes, for a forecaster only: one series' detail, and a search among the series."""
    one_series = [{**p, "description": p["description"].removesuffix("; `*` for every series")} for p in query]
    found = _json(
        "the first series whose name holds q, in any case (the default series first), and how many match",
        {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "series": {"type": "array", "items": {"type": "string"}},
                "matches": {"type": "integer"},
            },
        },
    )
    search = [
        {
            "name": "q",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "default": ""},
            "example": str(series.default)[:3] if series and series.default else "",
            "description": "text the series' name holds (any case); empty: every series",
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": page.MAX_SEARCH_LIMIT, "default": page.SEARCH_LIMIT},
            "example": page.SEARCH_LIMIT,
            "description": "most names answered",
        },
    ]
    detail = _json(
        "one series: history (recent periods; null where no sales row), forecast with its 80% and 95% bands, "
        "the chosen method and its scores (MASE against seasonal naive and each candidate)",
        {
            "type": "object",
            "properties": {
                "series": {"type": "string"},
                "range": {"type": "integer"},
                "range_max": {"type": "integer"},
                "method": {"type": "string"},
                "history": {"type": ["object", "null"]},
                "forecast": {"type": "object"},
                "metrics": {"type": "object"},
            },
        },
    )
    return {
        "/forecast": _get(
            "One series for the forecast page: recent history, forecast, 80/95% bands, method and scores",
            detail,
            413,
            422,
            503,
            parameters=one_series,
        ),
        "/series": _get("Search the forecaster's series by name", found, 422, 503, parameters=search),
    }
