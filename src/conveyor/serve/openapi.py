"""The OpenAPI 3.1 description of the service, built from the served model's signature."""

from __future__ import annotations

from typing import Any

from conveyor.model import Model
from conveyor.settings import ServeSettings
from conveyor.signature import Field

_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string", "datetime": "string"}


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


def _error() -> dict[str, Any]:
    return {
        "description": "a precise error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def openapi_spec(model: Model | None, settings: ServeSettings) -> dict[str, Any]:
    from conveyor import __version__

    inputs = model.signature.inputs if model else ()
    row = {
        "type": "object",
        "properties": {f.name: field_schema(f) for f in inputs},
        "required": [f.name for f in inputs if f.required and f.default is None],
        "additionalProperties": False,
    }
    title = f"{model.name} v{model.version}" if model else settings.model
    errors = {str(code): _error() for code in (400, 404, 413, 415, 422, 503, 504)}
    params = [
        {
            "name": f.name,
            "in": "query",
            "required": f.required and f.default is None,
            "schema": field_schema(f),
            "description": (f.description or f.describe())
            + ("; `*` for every series" if f.name == "series" and f.choices else ""),
        }
        for f in inputs
    ]
    return {
        "openapi": "3.1.0",
        "info": {"title": f"Conveyor: {title}", "version": __version__},
        "paths": {
            "/predict": {
                "get": {
                    "summary": "Predict one row given as query parameters (a forecaster: ?range=N&series=S)",
                    "parameters": params,
                    "responses": {"200": _ok("predictions"), **errors},
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
                                        },
                                        {"type": "object", "properties": {"dataframe_split": {"type": "object"}}},
                                        {"type": "object", "properties": {"dataframe_records": {"type": "array"}}},
                                    ]
                                },
                                "example": {
                                    "instances": [{f.name: f.default for f in inputs if f.default is not None}]
                                },
                            },
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    "responses": {"200": _ok("one prediction per row, in order"), **errors},
                },
            },
            "/v2/models/{name}/infer": {
                "post": {
                    "summary": "Open Inference Protocol (KServe V2) inference: one named input per column",
                    "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                    "responses": {"200": _ok("named outputs"), **errors},
                }
            },
            "/v2/models/{name}": {"get": {"summary": "Model metadata (V2)", "responses": {"200": _ok("metadata")}}},
            "/v2/models/{name}/ready": {"get": {"summary": "Model readiness (V2)", "responses": {"200": _ok("ready")}}},
            "/v2/health/live": {"get": {"summary": "Liveness (V2)", "responses": {"200": _ok("live")}}},
            "/v2/health/ready": {"get": {"summary": "Readiness (V2)", "responses": {"200": _ok("ready")}}},
            "/predictions/{key}": {
                "get": {
                    "summary": "Stored predictions (written by batch or stream jobs) by key",
                    "parameters": [{"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": _ok("stored rows"), **errors},
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _ok("live")}}},
            "/readyz": {
                "get": {"summary": "Readiness: 200 once a model is loaded", "responses": {"200": _ok("ready")}}
            },
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
            "/": {
                "get": {"summary": "The served model: version, signature, metrics", "responses": {"200": _ok("info")}}
            },
        },
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
