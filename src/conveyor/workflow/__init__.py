"""Batch model pipelines on Apache Airflow: a DAG factory, its steps, data checks, the promotion gate, alerts.

A DAG file (written by `conveyor pipeline init`) calls `sales_pipeline(...)`; Airflow runs it in-process
(`conveyor pipeline run`), in `airflow standalone` or on Cloud Composer. Airflow itself is imported only
when a DAG is built: `pip install 'conveyor-ml[airflow]'`.
"""

from conveyor.workflow.dag import build, sales_pipeline
from conveyor.workflow.settings import Alerts, DataChecks, Gate, SalesPipeline

__all__ = ["Alerts", "DataChecks", "Gate", "SalesPipeline", "build", "sales_pipeline"]
