"""The OpenAPI 3.1 description of the service, built from the served model's signature.

It describes every route `app.py` answers (a test walks the routes), and every parameter and body has an
example that works as it is: /docs prefills its forms with them. Bodies and answers are typed from the
signature as the service reads and writes them: schemathesis fuzzes the real server from this document and
checks each answer against it (tests/integration/test_fuzz.py).
"""

from __future__ import annotations

from typing import Any

from conveyor.model import Model
from conveyor.serve import codecs, page, tensors
from conveyor.settings import ServeSettings, ref_name
from conveyor.signature import Field, Signature

_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string", "datetime": "string"}
_EXAMPLES = {"int": 0, "float": 0.0, "bool": False, "str": "a", "datetime": "2024-01-01", "object": "a"}
_STRING = {"type": "string"}
_DATATYPE = {"type": "string", "enum": sorted(tensors.DATATYPES)}
_BINARY = {"type": "string", "format": "binary"}


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


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON value that may also be null: a field left to its default, or a number the model answered as NaN."""
    if "type" not in schema:
        return schema
    schema = {**schema, "type": [schema["type"], "null"]}
    if "enum" in schema:
        schema["enum"] = [*schema["enum"], None]
    return schema


def _required(inputs: tuple[Field, ...]) -> list[str]:
    return [f.name for f in inputs if f.required and f.default is None]


def _cell(f: Field) -> dict[str, Any]:
    """One value of a body's row or column: null, like leaving it out, stands for the field's default."""
    return field_schema(f) if f.default is None else _nullable(field_schema(f))


def _row(inputs: tuple[Field, ...]) -> dict[str, Any]:
    """One row as a JSON object."""
    return {
        "type": "object",
        "properties": {f.name: _cell(f) for f in inputs},
        "required": _required(inputs),
        "additionalProperties": False,
    }


def _output_value(f: Field) -> dict[str, Any]:
    """How one output is written per row: its type (a path output: a list of its items' type), or null."""
    kind = _JSON_TYPES.get(f.items or f.type)
    value = _nullable({"type": kind}) if kind else {}
    return {"type": "array", "items": value} if f.items else value


def _answer_rows(signature: Signature | None) -> dict[str, Any]:
    """The `predictions` of POST /predict (and of GET /predict for a model that is no forecaster)."""
    row = {"type": "object"}
    if signature is not None and signature.outputs:
        row["properties"] = {f.name: _output_value(f) for f in signature.outputs}
    return {"type": "array", "items": row}


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


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


def _errors(*codes: int) -> dict[str, Any]:
    error = {"$ref": "#/components/schemas/Error"}
    return {str(code): _json(_ERROR_TEXT[code], error) for code in codes}


_ERROR_TEXT = {
    400: "the request could not be read; on /v2 routes, also one that does not fit the model (the protocol's 400)",
    404: "no such model, version or key (or the model was unloaded)",
    413: "the request or its answer is too large: split it",
    415: "neither JSON nor CSV (V2: a Content-Encoding other than gzip or deflate)",
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


def _names(names: list[str]) -> dict[str, Any]:
    return {"type": "string", "enum": names} if names else _STRING


def _v2_request(signature: Signature | None) -> dict[str, Any]:
    """`{"id", "inputs": [tensor, ...], "outputs": [{"name"}, ...], "parameters"}`: one named input per column,
    its data in JSON or (`parameters.binary_data_size`) raw after the JSON header."""
    inputs = signature.input_names if signature else []
    outputs = signature.output_names if signature else []
    name = _names(inputs)
    if len(inputs) > 1:  # KServe's and MLServer's scikit-learn shape: one [rows, columns] tensor, any other name
        name = {"anyOf": [name, {**_STRING, "description": "one [rows, columns] tensor of every input, in order"}]}
    tensor = _object(
        ["name", "shape", "datatype"],
        name=name,
        shape={"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
        datatype=_DATATYPE,
        data={"type": "array"},
        parameters={"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
    )
    output = _object(
        ["name"],
        name=_names(outputs),
        parameters={"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
    )
    return _object(
        ["inputs"],
        id=_STRING,
        inputs={"type": "array", "items": tensor, "minItems": 1},
        outputs={"type": "array", "items": output},
        parameters={"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
    )


_V2_ANSWER = _object(
    ["model_name", "model_version", "outputs"],
    model_name=_STRING,
    model_version=_STRING,
    id=_STRING,
    outputs={
        "type": "array",
        "items": _object(
            ["name", "shape", "datatype"],
            name=_STRING,
            shape={"type": "array", "items": {"type": "integer", "minimum": 0}},
            datatype=_DATATYPE,
            data={"type": "array"},
            parameters={"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
        ),
    },
)
_V2_BINARY = (
    "the binary tensor extension: a JSON header of Inference-Header-Content-Length bytes (that header names its "
    "size), then the raw little-endian data of each tensor with parameters.binary_data_size, in order"
)


def _infer(parameters: list[dict[str, Any]], signature: Signature | None, body_example: dict[str, Any]) -> dict:
    return {
        "post": {
            "summary": "Open Inference Protocol (KServe V2) inference: one named input per column",
            "description": f"JSON, or {_V2_BINARY}; the body may be gzip or deflate (Content-Encoding).",
            "parameters": parameters,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _v2_request(signature), "example": body_example},
                    "application/octet-stream": {"schema": {**_BINARY, "description": _V2_BINARY}},
                },
            },
            "responses": {
                "200": {
                    "description": "named output tensors, as GET /v2/models/{name} declares them: JSON, or the "
                    "binary extension when outputs are asked for with binary_data",
                    "content": {
                        "application/json": {"schema": _V2_ANSWER},
                        "application/octet-stream": {"schema": {**_BINARY, "description": _V2_BINARY}},
                    },
                },
                **_errors(400, 404, 413, 415, 500, 503, 504),
            },
        }
    }


def _query(inputs: tuple[Field, ...], every_series: bool) -> list[dict[str, Any]]:
    """One query parameter per input; GET /predict's `series` also takes `*`, every series at once."""
    params = []
    for f in inputs:
        schema, description = field_schema(f), f.description or f.describe()
        if every_series and f.name == "series" and f.choices:
            schema["enum"] = [*schema["enum"], codecs.ALL_SERIES]
            description += "; `*` for every series"
        required = f.required and f.default is None
        params.append(
            {
                "name": f.name,
                "in": "query",
                "required": required,
                "schema": schema,
                "example": example(f),
                "description": description,
            }
        )
    return params


_STEP = _object(
    ["date", "forecast", "lower", "upper"],
    date=_STRING,
    forecast=_nullable({"type": "number"}),
    lower=_nullable({"type": "number"}),
    upper=_nullable({"type": "number"}),
)


def _query_answer(signature: Signature | None, forecaster: bool) -> dict[str, Any]:
    """GET /predict's answer: a forecaster's steps for one series (or `forecasts`, one per series, with `*`)."""
    head = {"model": _STRING, "version": {"type": "integer"}}
    if signature is None:
        return _object(["model", "version"], **head)
    if not forecaster:
        return _object(["model", "version", "predictions"], **head, predictions=_answer_rows(signature))
    steps = {"type": "array", "items": _STEP}
    one = _object(
        ["model", "version", "range", "series", "predictions"],
        **head,
        range={"type": "integer"},
        series=_STRING,
        predictions=steps,
    )
    every = _object(
        ["model", "version", "range", "forecasts"],
        **head,
        range={"type": "integer"},
        forecasts={"type": "array", "items": _object(["series", "predictions"], series=_STRING, predictions=steps)},
    )
    return {"oneOf": [one, every]}


def _rows_body(inputs: tuple[Field, ...]) -> dict[str, Any]:
    """POST /predict's JSON shapes: TF Serving's instances (objects, or lists in the signature's column order) and
    MLflow's dataframe_split, dataframe_records and inputs (columns, or rows)."""
    if not inputs:  # no model loaded: nothing to describe a row with
        return {"type": "object"}
    row = _row(inputs)
    names = [f.name for f in inputs]
    positional = {
        "type": "array",
        "prefixItems": [_cell(f) for f in inputs],
        "minItems": len(inputs),
        "maxItems": len(inputs),
    }
    rows = {"type": "array", "items": row, "minItems": 1}
    columns = {
        "type": "object",
        "properties": {
            f.name: {"anyOf": [{"type": "array", "items": _cell(f), "minItems": 1}, _cell(f)]} for f in inputs
        },
        "required": _required(inputs),
        "additionalProperties": False,
        "minProperties": 1,
    }
    split = _object(
        ["columns", "data"],
        columns={"type": "array", "items": _names(names), "uniqueItems": True},
        data={"type": "array", "items": {"type": "array"}, "minItems": 1},
    )
    return {
        "anyOf": [
            _object(["instances"], instances={"anyOf": [rows, {"type": "array", "items": positional, "minItems": 1}]}),
            _object(["dataframe_split"], dataframe_split=split),
            _object(["dataframe_records"], dataframe_records=rows),
            _object(["inputs"], inputs={"anyOf": [columns, rows]}),
        ]
    }


# No example: /docs leaves it out, and the first model named answers.
_MODEL = {
    "name": "model",
    "in": "query",
    "required": False,
    "schema": _STRING,
    "description": "which of the served models answers (default: the first one named)",
}


def _repository_paths(name: str) -> dict[str, Any]:
    """Triton's and MLServer's repository API: every model of the store with its state; load and unload one."""
    entry = _object(
        ["name", "version", "state", "reason"],
        name=_STRING,
        version=_STRING,
        state={"type": "string", "enum": ["READY", "LOADING", "UNAVAILABLE"]},
        reason=_STRING,
    )
    model = [_path("name", "a model of the store", name)]

    def post(summary: str, ok: dict[str, Any], *errors: int, **op: Any) -> dict[str, Any]:
        return {"post": {"summary": summary, **op, "responses": {"200": ok, **_errors(*errors)}}}

    def parameters(accepted: str) -> dict[str, Any]:
        """Triton's optional `{"parameters": {...}}` body of load and unload."""
        schema = {"type": "object", "properties": {"parameters": {"type": "object", "description": accepted}}}
        return {"required": False, "content": {"application/json": {"schema": schema, "example": {}}}}

    return {
        "/v2/repository/index": post(
            "Every model of the store, and each one asked for, with its state (V2 repository)",
            _json("the models and their states", {"type": "array", "items": entry}),
            400,
            413,
            requestBody={
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
                        "example": {"ready": False},
                    }
                },
            },
        ),
        "/v2/repository/models/{name}/unload": post(
            "Unload a served model, in every worker (V2 repository)",
            _json("unloaded", {"type": "object"}),
            400,
            404,
            413,
            parameters=model,
            requestBody=parameters("unload_dependents: accepted, and moot (Conveyor has no ensembles)"),
        ),
        "/v2/repository/models/{name}/load": post(
            "Load (or reload) a model of the store, in every worker (V2 repository)",
            _json("loaded", {"type": "object"}),
            400,
            404,
            413,
            parameters=model,
            requestBody=parameters("none: models load from the store as saved (Triton's config and file: are refused)"),
        ),
    }


def _readiness(summary: str) -> dict[str, Any]:
    ready = _object(
        ["ready"],
        ready={"const": True},
        model=_STRING,
        version={"type": "integer"},
        models={"type": "object"},
        refused={"type": "object"},
    )
    waiting = _object(["ready", "reason"], ready={"const": False}, reason=_STRING)
    return {
        "get": {
            "summary": summary,
            "responses": {
                "200": _json("ready: the default model and version (with many models, each one's version)", ready),
                "503": _json("not ready: the models are still loading, or none could be loaded", waiting),
            },
        }
    }


def openapi_spec(model: Model | None, settings: ServeSettings) -> dict[str, Any]:
    from conveyor import __version__

    signature = model.signature if model else None
    inputs = signature.inputs if signature else ()
    name = model.name if model else ref_name(settings.model_refs[0])
    version = model.version if model else 1
    title = f"{model.name} v{model.version}" if model else settings.model_refs[0]
    forecaster = signature is not None and codecs.is_forecaster(signature)
    predict_errors = (400, 404, 413, 415, 422, 500, 503, 504)  # 404: ?model= names no served model
    series = next((f for f in inputs if f.name == "series"), None)
    model_name = _path("name", "the served model's name", name)
    model_version = _path("version", "the served version", version)
    v2_model = [model_name]
    v2_version = [model_name, model_version]
    infer_example = {
        "inputs": [
            {"name": t.name, "shape": [1], "datatype": t.datatype, "data": [example(f)]}
            for f, t in zip(inputs, tensors.v2_inputs(signature), strict=True)
        ]
        if signature
        else []
    }
    tensor = _object(
        ["name", "datatype", "shape"],
        name=_STRING,
        datatype=_DATATYPE,
        shape={"type": "array", "items": {"type": "integer"}},
    )
    metadata = _json(
        "the model's inputs and outputs as tensors: name, datatype, shape (-1: any size)",
        _object(
            ["name", "versions", "platform", "inputs", "outputs"],
            name=_STRING,
            versions={"type": "array", "items": _STRING},
            platform=_STRING,
            inputs={"type": "array", "items": tensor},
            outputs={"type": "array", "items": tensor},
        ),
    )
    model_ready = _json("the model is ready", _object(["name", "ready"], name=_STRING, ready={"const": True}))
    live = _json("live", _object(["live"], live={"const": True}))
    paths: dict[str, Any] = {
        "/predict": {
            "get": {
                "summary": "Predict one row given as query parameters (a forecaster: ?range=N&series=S)",
                "parameters": [*_query(inputs, every_series=True), _MODEL],
                "responses": {
                    "200": _json("predictions", _query_answer(signature, forecaster)),
                    **_errors(*predict_errors),
                },
            },
            "post": {
                "summary": "Predict many rows",
                "parameters": [_MODEL],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _rows_body(inputs),
                            "example": {"instances": [{f.name: example(f) for f in inputs}]},
                        },
                        "text/csv": {
                            "schema": {**_STRING, "description": "a header row naming the columns, then rows"}
                        },
                    },
                },
                "responses": {
                    "200": _json(
                        "one prediction per row, in order",
                        _object(
                            ["model", "version", "predictions"],
                            model=_STRING,
                            version={"type": "integer"},
                            predictions=_answer_rows(signature),
                        ),
                    ),
                    **_errors(*predict_errors),
                },
            },
        },
        "/predictions/{key}": _get(
            "Stored predictions (written by batch or stream jobs) by key",
            _json("stored rows", _object(["key", "predictions"], key=_STRING, predictions={"type": "array"})),
            404,
            500,
            503,
            parameters=[_path("key", "the stored rows' key", series.default if series else "example")],
        ),
        "/v2": _get(
            "Server metadata (V2)",
            _json(
                "name, version, extensions",
                _object(
                    ["name", "version", "extensions"],
                    name=_STRING,
                    version=_STRING,
                    extensions={"type": "array", "items": _STRING},
                ),
            ),
        ),
        "/v2/health/live": _get("Liveness (V2)", live),
        "/v2/health/ready": _readiness("Readiness (V2)"),
        "/v2/models/{name}": _get("Model metadata (V2)", metadata, 404, 503, parameters=v2_model),
        "/v2/models/{name}/ready": _get("Model readiness (V2)", model_ready, 404, 503, parameters=v2_model),
        "/v2/models/{name}/infer": _infer(v2_model, signature, infer_example),
        "/v2/models/{name}/versions/{version}": _get(
            "Model metadata of one version (V2)", metadata, 404, 503, parameters=v2_version
        ),
        "/v2/models/{name}/versions/{version}/ready": _get(
            "Model readiness of one version (V2)", model_ready, 404, 503, parameters=v2_version
        ),
        "/v2/models/{name}/versions/{version}/infer": _infer(v2_version, signature, infer_example),
        "/healthz": _get("Liveness", live),
        "/readyz": _readiness("Readiness: 200 once a model is loaded"),
        "/metrics": _get(
            "Prometheus metrics, summed over the workers",
            {"description": "Prometheus text format", "content": {"text/plain": {"schema": _STRING}}},
        ),
        "/": _get(
            "The served model: version, signature, metrics (a forecaster's page to a browser: Accept prefers text/html)",
            {
                "description": "the model as JSON; a forecaster's chart page when Accept ranks text/html above JSON",
                "content": {
                    "application/json": {
                        "schema": _object(
                            ["model", "version", "flavor", "signature", "serving"],
                            model=_STRING,
                            version={"type": "integer"},
                            flavor=_STRING,
                            created={"type": ["string", "null"]},
                            signature=_object(
                                ["inputs", "outputs"], inputs={"type": "array"}, outputs={"type": "array"}
                            ),
                            metrics={"type": "object"},
                            serving=_STRING,
                        )
                    },
                    "text/html": {"schema": _STRING},
                },
            },
            404,
            503,
        ),
        "/openapi.json": _get(
            "This description",
            _json(
                "OpenAPI 3.1",
                _object(
                    ["openapi", "info", "paths"], openapi=_STRING, info={"type": "object"}, paths={"type": "object"}
                ),
            ),
        ),
        "/docs": _get(
            "A page to try every route",
            {"description": "HTML", "content": {"text/html": {"schema": _STRING}}},
        ),
    }
    if model is not None and page.has_page(model):
        paths |= _forecast_paths(_query(inputs, every_series=False), series)
    # Last, unload before load: /docs sends its forms in this order, prefilled with the served model, which the
    # last form loads again.
    paths |= _repository_paths(name)
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
            404,
            413,
            422,
            503,
            parameters=query,
        ),
        "/series": _get("Search the forecaster's series by name", found, 404, 422, 503, parameters=search),
    }
