"""Service configuration: flags override `CONVEYOR_*` environment variables, which override defaults."""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    """What `conveyor serve` needs; every field can be set as CONVEYOR_<FIELD> (e.g. CONVEYOR_PORT)."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore")

    model: str = Field("sales", description="model reference: NAME, NAME:VERSION or NAME@ALIAS")
    store: str = Field("./models", description="model store URI")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=64)
    max_batch_rows: int = Field(256, ge=1, description="most rows merged into one predict call")
    max_wait_ms: float = Field(0.0, ge=0, le=1000, description="extra wait for a batch to fill; 0 = adaptive only")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_rows_per_request: int = Field(100_000, ge=1)
    request_timeout: float = Field(30.0, gt=0, description="seconds before a prediction answers 504")
    poll_interval: float = Field(5.0, ge=0, description="seconds between alias checks; 0 disables hot reload")
    graceful_timeout: float = Field(30.0, ge=0)
    predictions: str | None = Field(None, description="SQLAlchemy URL or redis:// URL of stored predictions")
    predictions_table: str = "predictions"
    log_level: str = "info"
    gc_thresholds: tuple[int, int, int] = Field((50_000, 50, 1000), description="gc.set_threshold in workers")
