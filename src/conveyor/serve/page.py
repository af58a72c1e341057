"""The forecast page at `/` and the JSON it draws from: one series' detail, and a search among the series.

Only a browser's navigation gets the page (its `Accept` prefers text/html); curl, httpx and fetch() send `*/*`
and keep the JSON `/` always answered. None of this is on the prediction path.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conveyor.errors import InvalidInput, NotFound
from conveyor.serve import codecs

PAGE = Path(__file__).with_name("forecast.html")
FORECASTER_PATHS = ("/forecast", "/series")  # answered for a forecaster only (404 otherwise)
SEARCH_LIMIT = 20
MAX_SEARCH_LIMIT = 1000


def prefers_html(accept: str) -> bool:
    """Whether an `Accept` header ranks text/html strictly above JSON (a tie, `*/*` or none: JSON)."""
    html = json = 0.0
    json_specificity = -1
    for part in accept.lower().split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media == "text/html":
            html = max(html, q)
        specificity = {"application/json": 2, "application/*": 1, "*/*": 0}.get(media, -1)
        if specificity > json_specificity:  # the most specific range that matches JSON sets its quality
            json, json_specificity = q, specificity
    return html > json


@functools.cache
def page_html() -> str:
    return PAGE.read_text(encoding="utf-8")


def has_page(model: Any) -> bool:
    """A forecaster that can tell one series' history, bands and scores (`SalesForecaster.detail`)."""
    return callable(getattr(model.predictor, "detail", None)) and codecs.is_forecaster(model.signature)


def detail_of(model: Any) -> Any:
    """The served forecaster's `detail` method; a 404 that says why for any other model."""
    if not has_page(model):
        raise NotFound(f"model {model.name!r} is not a forecaster: /forecast and /series answer forecasters only")
    return model.predictor.detail


def forecast(model: Any, params: Mapping[str, str], max_steps: int) -> dict[str, Any]:
    """`GET /forecast?series=S&range=N`: checked exactly as `GET /predict` checks the same query."""
    detail = detail_of(model)
    if params.get("series") == codecs.ALL_SERIES:
        raise InvalidInput("/forecast answers one series at a time: name it, or use GET /predict?series=* for all")
    columns, rows = codecs.decode_query(params, model.signature)
    codecs.check_forecast_steps(columns, rows, max_steps)
    series, steps = str(columns["series"][0]), int(columns["range"][0])
    body = {
        "model": model.name,
        "version": model.version,
        "range": steps,
        "range_max": model.signature.field("range").max,
    }
    body.update(detail(series, steps))
    return body


@functools.lru_cache(maxsize=4)
def _search_index(names: tuple[str, ...], default: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names with the default series first, and their case-folded forms (built once per model)."""
    ordered = (default, *(n for n in names if n != default)) if default in names else names
    return ordered, tuple(n.casefold() for n in ordered)


def search_series(model: Any, params: Mapping[str, str]) -> dict[str, Any]:
    """`GET /series?q=text&limit=20`: the first series whose name holds `q` (any case), the default first."""
    detail_of(model)
    field = model.signature.field("series")
    params = codecs.query_values(params)
    query = params.get("q", "")
    limit = _limit(params.get("limit"))
    names, folded = _search_index(tuple(field.choices or ()), str(field.default))
    needle = query.casefold()
    found = [name for name, low in zip(names, folded, strict=True) if needle in low]
    return {"query": query, "series": found[:limit], "matches": len(found)}


def _limit(value: str | None) -> int:
    if value is None:
        return SEARCH_LIMIT
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()) or not 1 <= int(digits) <= MAX_SEARCH_LIMIT:  # not "²"
        raise InvalidInput(f"'limit' must be an integer between 1 and {MAX_SEARCH_LIMIT}, got {value!r}")
    return int(value)
