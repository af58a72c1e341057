"""The pipeline's steps as plain functions: Airflow tasks call them, tests and other schedulers can too.

Each step reads what the one before wrote (a snapshot URI, a model reference) and returns a small JSON
dict: data moves through the artifacts location and the model store, never through XCom.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

import pandas as pd

from conveyor.errors import ConveyorError
from conveyor.io import filesystem
from conveyor.sales_data import DEMO_SERIES_COLS, is_sql_url, read_raw
from conveyor.store import ModelStore, Ref
from conveyor.workflow.settings import SalesPipeline


def run_folder(settings: SalesPipeline, run_id: str) -> str:
    """This run's artifacts folder (run ids hold ':' and '+', kept out of object names)."""
    return f"{settings.artifacts_uri}/{settings.dag_id}/{re.sub(r'[^A-Za-z0-9._-]+', '_', run_id)}"


def _write(frame: pd.DataFrame, uri: str) -> None:
    fs, path = filesystem(uri)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        frame.to_parquet(f, index=False)


def _read(uri: str) -> pd.DataFrame:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return pd.read_parquet(f)


def _series_cols(settings: SalesPipeline, data: str | None) -> list[str] | None:
    if settings.series_cols is not None:
        return list(settings.series_cols)
    return list(DEMO_SERIES_COLS) if data is None else None


def extract(settings: SalesPipeline, run_id: str, data: str | None = None, query: str | None = None) -> dict[str, Any]:
    """Pin down the run's history. A database is a moving target, so a query's rows are landed in the run's
    folder; a file is already landed, so it is checked, described and read in place by `validate_data`
    (a file fixed after a failed check is what a `rerun --failed` reads)."""
    data = data if data is not None else settings.data
    query = query if query is not None else settings.query
    raw, label = read_raw(data, query=query)
    out: dict[str, Any] = {"source": label, "data": data, "rows": len(raw), "columns": [str(c) for c in raw.columns]}
    if data is not None and is_sql_url(str(data)):
        raw.columns = out["columns"]
        out["snapshot"] = f"{run_folder(settings, run_id)}/extract.parquet"
        _write(raw, out["snapshot"])
    else:
        out["fingerprint"] = _fingerprint(data)
    return out


def _fingerprint(data: str | None) -> str | None:
    """Size and modification time of a file source: enough to tell that it changed since `extract`."""
    if data is None:
        return None
    fs, path = filesystem(data)
    info = fs.info(path)
    return f"{info.get('size')}:{info.get('mtime') or info.get('updated') or info.get('LastModified')}"


def validate_data(settings: SalesPipeline, extracted: dict[str, Any], run_id: str, now: dt.datetime | None = None):
    """The checks of `settings.checks`; passing, the tidy history the forecaster trains on, in the run's folder."""
    from conveyor.workflow.checks import check_history

    if "snapshot" in extracted:
        raw, changed = _read(extracted["snapshot"]), False
    else:
        raw, _ = read_raw(extracted["data"])
        changed = _fingerprint(extracted["data"]) != extracted.get("fingerprint")
    tidy, report = check_history(
        raw,
        settings.checks,
        date_col=settings.date_col,
        sales_col=settings.sales_col,
        series_cols=_series_cols(settings, extracted.get("data")),
        now=now,
        label=extracted["source"],
    )
    uri = f"{run_folder(settings, run_id)}/history.parquet"
    _write(tidy, uri)
    return {"history": uri, "changed_since_extract": changed, **report.to_dict()}


def train(settings: SalesPipeline, validated: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Fit and register the next version (not promoted: the gate decides)."""
    from conveyor.training import default_horizon, train_and_register

    history = _read(validated["history"])
    trained = train_and_register(
        history,
        ModelStore(settings.store),
        settings.model_name,
        range_max=settings.range_max or max(default_horizon(history), settings.range),
        holdout=settings.holdout,
        extra={"pipeline": {"dag_id": settings.dag_id, "run_id": run_id, "history": validated["history"]}},
    )
    overall = trained.summary["overall"]
    return {
        "ref": str(trained.ref),
        "mase": overall["mase"],
        "naive_mase": overall["naive_mase"],
        "methods": trained.summary["methods"],
        "seconds": round(trained.seconds, 2),
        "line": trained.line(),
    }


def evaluate(settings: SalesPipeline, trained: dict[str, Any], validated: dict[str, Any]) -> dict[str, Any]:
    """The gate's verdict on the new version (see `conveyor.workflow.gate`)."""
    from conveyor.errors import NotFound
    from conveyor.workflow.gate import evaluate as judge

    store = ModelStore(settings.store)
    candidate = store.load(trained["ref"])
    name = settings.model_name
    current, current_ref = None, None
    try:
        ref = store.resolve(Ref(name, alias=settings.gate.alias))
    except NotFound:
        ref = None
    if ref is not None and str(ref) != trained["ref"]:
        current, current_ref = store.load(ref).predictor, str(ref)
    verdict = judge(
        _read(validated["history"]), candidate.predictor, trained["ref"], current, current_ref, settings.gate
    )
    return verdict.to_dict()


def promote(settings: SalesPipeline, verdict: dict[str, Any]) -> dict[str, Any]:
    """Point the gate's alias at the new version: a `conveyor serve` following the alias reloads it."""
    store = ModelStore(settings.store)
    alias = settings.gate.alias
    previous = store.aliases(settings.model_name).get(alias)
    ref = store.promote(verdict["candidate"], alias)
    return {"ref": str(ref), "alias": alias, "previous": previous}


def forecast(settings: SalesPipeline, promoted: dict[str, Any], validated: dict[str, Any], run_id: str):
    """Forecast `settings.range` periods of every series with the promoted version into the prediction store."""
    from conveyor.batch.forecast import ForecastJob
    from conveyor.batch.forecast import forecast as run_forecast
    from conveyor.batch.forecasting import HistorySpec
    from conveyor.batch.jobs import Output

    job = ForecastJob(
        name=promoted["ref"],
        history=validated["history"],
        steps=settings.range,
        output=Output(settings.predictions, ("series", "date"), settings.table),
        spec=HistorySpec("date", "sales", ()),
        run_id=re.sub(r"[^A-Za-z0-9._-]+", "_", run_id),
        store=settings.store,
    )
    report = run_forecast(job)
    if report.rejected:
        raise ConveyorError(f"the forecast refused {report.rejected} rows: see {report.rejects}")
    return {
        "rows": report.rows_out,
        "series": report.extra.get("series", 0),
        "series_failed": report.extra.get("series_failed", 0),
        "output": report.output,
        "model": report.model,
        "seconds": round(report.seconds, 2),
    }


def report(
    settings: SalesPipeline,
    validated: dict[str, Any],
    trained: dict[str, Any],
    verdict: dict[str, Any],
    promoted: dict[str, Any] | None,
    forecasted: dict[str, Any] | None,
) -> dict[str, Any]:
    """One summary of the run: data, version, scores, gate, promotion and forecast counts."""
    lines = [
        f"data: {validated['rows']:,} rows, {validated['series']} series, {validated['first']}..{validated['last']}",
        trained["line"],
        f"gate: {'passed' if verdict['passed'] else 'refused'}: {verdict['reason']}",
    ]
    if promoted:
        was = f" (was {promoted['previous']})" if promoted.get("previous") else ""
        lines.append(f"promoted: {settings.model_name}@{promoted['alias']} -> {promoted['ref']}{was}")
    else:
        lines.append(f"not promoted: {settings.model_name}@{settings.gate.alias} is unchanged")
    if forecasted:
        lines.append(
            f"forecast: {forecasted['rows']:,} rows for {forecasted['series']} series by {forecasted['model']} "
            f"to {forecasted['output']}"
        )
    return {
        "text": "\n".join(lines),
        "version": trained["ref"],
        "promoted": bool(promoted),
        "gate": verdict,
        "rows": validated["rows"],
        "series": validated["series"],
        "forecast_rows": (forecasted or {}).get("rows", 0),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
