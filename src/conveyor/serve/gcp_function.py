"""Cloud Run functions (functions-framework): a Flask request in, the function's reply out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conveyor.serve.function import Function


def http_entry_point(function: Function) -> Callable[[Any], Any]:
    """The `@functions_framework.http` target: every path and method of the function's URL reaches it."""
    from flask import Response  # functions-framework serves with Flask: it is there whenever this runs

    def predict(request: Any) -> Any:
        reply = function.handle(
            request.method,
            request.path,
            request.args.items(multi=True),
            request.headers,
            request.get_data(cache=False),
        )
        return Response(reply.body, status=reply.status, headers=reply.headers)

    return predict
