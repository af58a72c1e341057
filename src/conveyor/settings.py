"""Service configuration: flags override `CONVEYOR_*` environment variables, which override defaults.

Every value is validated here, whatever its source: a bad one is refused in one line that names the flag or the
variable it came from and what it allows (`InvalidSetting`), never a validation traceback.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from conveyor import limits
from conveyor.cpus import usable_cpus
from conveyor.errors import InvalidSetting

ENV_PREFIX = "CONVEYOR_"


class ServeSettings(BaseSettings):
    """What `conveyor serve` needs; every field can be set as CONVEYOR_<FIELD> (e.g. CONVEYOR_PORT)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", env_ignore_empty=True)

    # several models: `a b@production c:3` (spaces or commas); the first answers the seed's `GET /predict`
    model: str = Field("sales", description="model reference(s): NAME, NAME:VERSION or NAME@ALIAS")
    all_models: bool = Field(False, description="serve every model of the store")
    store: str = Field("./models", description="model store URI")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # Prometheus scrapes pods directly; a port of its own keeps /metrics off whatever exposes the service's port
    metrics_port: int | None = Field(None, ge=1, le=65535, description="serve /metrics here only, not on port")
    # the Open Inference Protocol over gRPC (KServe's GRPCInferenceService), beside HTTP in every worker
    grpc_port: int | None = Field(None, ge=1, le=65535, description="serve the Open Inference Protocol over gRPC here")
    # grpc.aio accepts one call at a time per server: several per worker accept calls from several connections
    grpc_listeners: int = Field(8, ge=1, le=64, description="gRPC servers per worker sharing --grpc-port")
    # one per CPU this process may use: its affinity and its cgroup's quota (a container's --cpus), not the node's
    workers: int = Field(default_factory=lambda: min(usable_cpus(), 64), ge=1, le=64)
    max_batch_rows: int = Field(256, ge=1, description="most rows merged into one predict call")
    max_wait_ms: float = Field(0.0, ge=0, le=1000, description="extra wait for a batch to fill; 0 = adaptive only")
    max_body_bytes: int = Field(limits.MAX_BODY_BYTES, ge=1024)
    max_rows_per_request: int = Field(limits.MAX_ROWS_PER_REQUEST, ge=1)
    max_forecast_steps: int = Field(
        limits.MAX_FORECAST_STEPS, ge=1, description="most forecast steps (range summed over rows)"
    )
    request_timeout: float = Field(30.0, gt=0, description="seconds before a prediction answers 504")
    poll_interval: float = Field(5.0, ge=0, description="seconds between alias checks; 0 disables hot reload")
    graceful_timeout: float = Field(30.0, ge=0)
    predictions: str | None = Field(None, description="SQLAlchemy URL or redis:// URL of stored predictions")
    predictions_table: str = "predictions"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    gc_thresholds: Annotated[tuple[int, int, int], NoDecode] = Field(
        (50_000, 50, 1000), description="gc.set_threshold in workers", json_schema_extra={"allowed": "three integers"}
    )

    @property
    def requested_refs(self) -> list[str]:
        """Every reference asked for, in order, as given (a name may come twice)."""
        return [ref for ref in re.split(r"[\s,]+", self.model.strip()) if ref]

    @property
    def model_refs(self) -> list[str]:
        """The references asked for, in order, each name once (the first is the default model)."""
        refs: dict[str, str] = {}
        for ref in self.requested_refs:
            refs.setdefault(ref_name(ref), ref)
        return list(refs.values())


def ref_name(ref: str) -> str:
    """The model name of a reference: `sales`, `sales:3` and `sales@production` all name `sales`."""
    return ref.split("@")[0].split(":")[0]

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("gc_thresholds", mode="before")
    @classmethod
    def _three_integers(cls, value: Any) -> Any:
        """`50000,50,1000` (as a variable) or `[50000, 50, 1000]`."""
        if isinstance(value, str):
            parts = value.strip().strip("[]()").split(",")
            if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
                raise ValueError("three integers")
            return tuple(int(p) for p in parts)
        return value


def load_serve_settings(given: Mapping[str, Any]) -> ServeSettings:
    """Settings from flags (`given`, by field name; None = not given), then CONVEYOR_* variables, then defaults."""
    flags = {k: v for k, v in given.items() if v is not None}
    try:
        settings = ServeSettings(**flags)
    except ValidationError as exc:
        problems = [_problem(ServeSettings, err, flags) for err in exc.errors()]
        raise InvalidSetting("; ".join(problems)) from None
    if settings.metrics_port == settings.port:
        raise InvalidSetting(f"the metrics port must differ from the service's port ({settings.port} both)")
    if settings.grpc_port is not None and settings.grpc_port in (settings.port, settings.metrics_port):
        raise InvalidSetting(f"the gRPC port must differ from the HTTP and metrics ports ({settings.grpc_port})")
    return settings


def _problem(settings: type[BaseSettings], err: Mapping[str, Any], flags: Mapping[str, Any]) -> str:
    name = str(err["loc"][0]) if err["loc"] else ""
    field = settings.model_fields.get(name)
    value = err.get("input")
    source = "--" + name.replace("_", "-") + " " if name in flags else f"{ENV_PREFIX}{name.upper()}="
    return f"{source}{str(value)!r}: must be {allowed(field) if field else err['msg']}"


def allowed(field: FieldInfo) -> str:
    """What a setting accepts, in words: `an integer from 1 to 64`, `a number > 0`, `one of debug, info`."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "allowed" in extra:
        return str(extra["allowed"])
    annotation = field.annotation
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # `int | None`: an optional integer
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    kind = {int: "an integer", float: "a number"}.get(annotation, "text")  # type: ignore[call-overload]
    bounds = {type(m): m for m in field.metadata}
    low = bounds.get(annotated_types.Ge) or bounds.get(annotated_types.Gt)
    high = bounds.get(annotated_types.Le)
    if isinstance(low, annotated_types.Ge) and high is not None:
        return f"{kind} from {low.ge:g} to {high.le:g}"
    if isinstance(low, annotated_types.Ge):
        return f"{kind} >= {low.ge:g}"
    if isinstance(low, annotated_types.Gt):
        return f"{kind} > {low.gt:g}"
    return kind
