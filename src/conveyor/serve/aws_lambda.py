"""AWS Lambda: API Gateway HTTP API (payload 2.0), Function URL and REST API (1.0) events, and direct invocations.

An HTTP event is answered as the service answers that request, status and JSON body included. A direct
invocation (`aws lambda invoke --payload '{"range": 3}'`, Step Functions) carries the inputs themselves: one
row as an object (`{"range": 3, "series": "total"}`, like `GET /predict`'s query), or a body the service
takes (`{"instances": [...]}`, `{"dataframe_split": ...}`); it returns the answer, and a refused one fails the
invocation with the service's message (errorType `RequestRefused`), as Lambda callers expect.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

import orjson

from conveyor.errors import ConveyorError
from conveyor.serve.function import Function, Reply

BODY_KEYS = ("instances", "dataframe_split", "dataframe_records", "inputs")


class RequestRefused(ConveyorError):
    """A direct invocation the function refused: its message is the service's 4xx/5xx answer."""


def lambda_handler(function: Function) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        if not isinstance(event, dict):
            raise RequestRefused(f"expected a JSON object as the event, got {type(event).__name__}")
        if "requestContext" in event or "httpMethod" in event:
            return _http_response(_http(function, event))
        return _direct(function, event)

    return handler


def _http(function: Function, event: dict[str, Any]) -> Reply:
    headers = {str(k): str(v) for k, v in (event.get("headers") or {}).items()}
    body = event.get("body") or ""
    raw = base64.b64decode(body) if event.get("isBase64Encoded") else body.encode()
    if event.get("version") == "2.0":
        context = event.get("requestContext") or {}
        method = (context.get("http") or {}).get("method", "GET")
        path = _without_stage(event.get("rawPath") or "/", context.get("stage"))
        query: Iterable[tuple[str, str]] = parse_qsl(event.get("rawQueryString") or "", keep_blank_values=True)
    else:  # payload 1.0: REST APIs, and HTTP APIs set to 1.0
        method, path = event.get("httpMethod", "GET"), event.get("path") or "/"
        multi = event.get("multiValueQueryStringParameters") or {}
        single = event.get("queryStringParameters") or {}
        query = [(k, v) for k, values in multi.items() for v in values] if multi else list(single.items())
    return function.handle(method, path, query, headers, raw)


def _without_stage(path: str, stage: str | None) -> str:
    """A named stage prefixes the path (`/prod/predict`); the `$default` stage does not."""
    if stage and stage != "$default" and (path == f"/{stage}" or path.startswith(f"/{stage}/")):
        return path[len(stage) + 1 :] or "/"
    return path


def _http_response(reply: Reply) -> dict[str, Any]:
    """Lambda's answer carries text: raw tensors (the V2 binary extension) travel base64-encoded."""
    if reply.headers.get("content-type") == "application/octet-stream":
        body, encoded = base64.b64encode(reply.body).decode(), True
    else:
        body, encoded = reply.body.decode(), False
    return {"statusCode": reply.status, "headers": reply.headers, "body": body, "isBase64Encoded": encoded}


def _direct(function: Function, event: dict[str, Any]) -> dict[str, Any]:
    if any(key in event for key in BODY_KEYS):
        reply = function.handle("POST", "/predict", (), {"content-type": "application/json"}, orjson.dumps(event))
    else:
        query = [(str(k), v if isinstance(v, str) else orjson.dumps(v).decode()) for k, v in event.items()]
        reply = function.handle("GET", "/predict", query)
    answer = orjson.loads(reply.body)
    if reply.status >= 400:
        raise RequestRefused(f"{reply.status} {answer['error']}: {answer['message']}")
    return answer
