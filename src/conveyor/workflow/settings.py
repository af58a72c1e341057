"""What a team writes in its DAG file: the pipeline's data, store, checks, gate, alerts and schedule."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from conveyor.errors import InvalidSetting

TASKS = ("extract", "validate_data", "train", "evaluate", "promote", "forecast", "report")


@dataclass(frozen=True)
class DataChecks:
    """What `validate_data` refuses. Duplicates and values that are not dates or sales are always refused."""

    max_age: dt.timedelta | None = None
    """Freshness: the newest sales must be at most this old when the run starts (None: not checked)."""
    min_periods: int | None = None
    """Periods of history every series needs [default: two seasons, e.g. 14 days]."""
    closed_days: tuple[str, ...] = ()
    """Dates with no sales by design: "12-25" (every year) or "2016-01-01"; they are not gaps."""
    max_missing: int = 0
    """Dates a series may lack between its first and last sale, besides closed days."""


@dataclass(frozen=True)
class Gate:
    """`evaluate` promotes a new version only if it beats seasonal naive and is not worse than the current
    `alias` version by more than `margin` (0.05 = 5% higher MASE) on the same backtest window."""

    margin: float = 0.05
    beat_naive: bool = True
    alias: str = "production"


@dataclass(frozen=True)
class Alerts:
    """Who hears of a failed task or a refused model: e-mail through an Airflow SMTP connection and/or a
    Slack-compatible incoming webhook (an Airflow connection of type `slackwebhook`)."""

    email: tuple[str, ...] = ()
    smtp_conn_id: str = "smtp_default"
    from_email: str = "conveyor@localhost"
    webhook_conn_id: str | None = None
    on_gate: bool = True


@dataclass(frozen=True)
class SalesPipeline:
    """Everything the sales DAG needs; `sales_pipeline(...)` builds one from its keyword arguments."""

    dag_id: str = "sales"
    data: str | None = None
    query: str | None = None
    series_cols: tuple[str, ...] | None = None
    date_col: str = "date"
    sales_col: str = "sales"
    store: str = "./models"
    model: str | None = None
    predictions: str = "sqlite:///predictions.db"
    table: str = "predictions"
    range: int = 90
    range_max: int | None = None
    holdout: int | None = None
    artifacts: str | None = None
    checks: DataChecks = field(default_factory=DataChecks)
    gate: Gate = field(default_factory=Gate)
    alerts: Alerts = field(default_factory=Alerts)
    schedule: str | None = "@daily"
    start_date: dt.datetime = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    owner: str = "data-team"
    retries: int = 2
    retry_delay: dt.timedelta = dt.timedelta(minutes=2)
    max_retry_delay: dt.timedelta = dt.timedelta(minutes=30)
    execution_timeout: dt.timedelta = dt.timedelta(hours=1)
    catchup: bool = False
    tags: Sequence[str] = ("conveyor", "forecast")

    def __post_init__(self) -> None:
        if not 1 <= self.range <= 3660:
            raise InvalidSetting(f"range must be between 1 and 3660 periods, got {self.range}")
        if self.range_max is not None and self.range > self.range_max:
            raise InvalidSetting(f"range ({self.range}) cannot exceed range_max ({self.range_max})")
        if self.gate.margin < 0:
            raise InvalidSetting(f"gate margin must be >= 0 (0.05 = 5% worse allowed), got {self.gate.margin}")
        if self.retries < 0:
            raise InvalidSetting(f"retries must be >= 0, got {self.retries}")

    @property
    def model_name(self) -> str:
        return self.model or self.dag_id

    @property
    def artifacts_uri(self) -> str:
        """Where a run's snapshots go (tasks pass these references, never the data, through XCom)."""
        return (self.artifacts or f"{self.store.rstrip('/')}/_pipeline_runs").rstrip("/")
