"""The sales pipeline as an Airflow DAG (TaskFlow): the same file runs in-process, in `airflow standalone` and
on Cloud Composer.

extract -> validate_data -> train -> evaluate -> promote -> forecast -> report

Bad data and refused models fail at once (retrying cannot fix them); reading the source, the store or the
prediction store is retried with exponential backoff. A model the gate refuses stays registered, is not
promoted, and the run says why; `report` runs either way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import wraps
from typing import Any

from conveyor.errors import InvalidInput, MissingExtra, NotFound
from conveyor.sales_data import is_sql_url
from conveyor.workflow import alerts, steps
from conveyor.workflow.settings import Alerts, DataChecks, Gate, SalesPipeline

__all__ = ["Alerts", "DataChecks", "Gate", "build", "sales_pipeline"]


def sales_pipeline(dag_id: str = "sales", **settings: Any):
    """The sales forecast DAG; keyword arguments are the fields of `SalesPipeline` (data, store, predictions,
    range, checks, gate, alerts, schedule, owner, retries...)."""
    return build(SalesPipeline(dag_id=dag_id, **settings))


def _fail_fast(func: Callable[..., Any]) -> Callable[..., Any]:
    """Data and model problems fail the task at once: a retry would read the same rows and fail the same way."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        try:
            return func(*args, **kwargs)
        except InvalidInput as exc:
            raise AirflowFailException(str(exc)) from None

    return wrapper


def build(settings: SalesPipeline):
    try:
        from airflow.sdk import DAG, Param, TriggerRule, get_current_context, task
        from airflow.sdk.exceptions import AirflowSkipException
    except ImportError:
        raise MissingExtra("apache-airflow", "airflow") from None

    notify = settings.alerts.email or settings.alerts.webhook_conn_id
    default_args: dict[str, Any] = {
        "owner": settings.owner,
        "retries": settings.retries,
        "retry_delay": settings.retry_delay,
        "retry_exponential_backoff": True,
        "max_retry_delay": settings.max_retry_delay,
        "execution_timeout": settings.execution_timeout,
    }
    if notify:
        default_args["on_failure_callback"] = alerts.on_failure(settings.alerts)

    with DAG(
        dag_id=settings.dag_id,
        schedule=settings.schedule,
        start_date=settings.start_date,
        catchup=settings.catchup,
        max_active_runs=1,
        default_args=default_args,
        tags=list(settings.tags),
        doc_md=__doc__,
        params={
            "data": Param(
                settings.data, type=["null", "string"], description="History: a file, glob or SQL URL (null: demo)"
            ),
            "query": Param(settings.query, type=["null", "string"], description="SQL query when data is a SQL URL"),
        },
    ) as dag:

        @task
        def extract(params: dict[str, Any] | None = None, run_id: str | None = None) -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowFailException

            params = params or {}
            data = params.get("data") if params.get("data") is not None else settings.data
            try:
                return steps.extract(settings, str(run_id), data, params.get("query"))
            except (InvalidInput, NotFound) as exc:
                if data is not None and is_sql_url(str(data)):
                    raise  # a database that does not answer may answer the next try
                raise AirflowFailException(str(exc)) from None  # a missing or unreadable file stays so

        @task
        @_fail_fast
        def validate_data(extracted: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
            context = get_current_context()
            now = context.get("data_interval_end") or context.get("run_after") or dt.datetime.now(dt.UTC)
            return steps.validate_data(settings, extracted, str(run_id), now=now)

        @task
        @_fail_fast
        def train(validated: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
            return steps.train(settings, validated, str(run_id))

        @task
        @_fail_fast
        def evaluate(trained: dict[str, Any], validated: dict[str, Any]) -> dict[str, Any]:
            verdict = steps.evaluate(settings, trained, validated)
            if not verdict["passed"] and notify and settings.alerts.on_gate:
                context = get_current_context()
                alerts.send(settings.alerts, alerts.gate_alert(context, verdict["reason"]), context)
            return verdict

        @task
        def promote(verdict: dict[str, Any]) -> dict[str, Any]:
            if not verdict["passed"]:
                raise AirflowSkipException(f"not promoted: {verdict['reason']}")
            return steps.promote(settings, verdict)

        @task
        def forecast(promoted: dict[str, Any], validated: dict[str, Any], run_id: str | None = None):
            return steps.forecast(settings, promoted, validated, str(run_id))

        @task(trigger_rule=TriggerRule.NONE_FAILED)
        def report(validated, trained, verdict, promoted, forecasted) -> dict[str, Any]:
            summary = steps.report(settings, validated, trained, verdict, promoted, forecasted)
            print(summary["text"])
            return summary

        extracted = extract()
        validated = validate_data(extracted)
        trained = train(validated)
        verdict = evaluate(trained, validated)
        promoted = promote(verdict)
        forecasted = forecast(promoted, validated)
        report(validated, trained, verdict, promoted, forecasted)
    return dag
