"""One exception hierarchy, mapped in one place to HTTP statuses, CLI exit codes and dead-letter reasons."""

from __future__ import annotations


class ConveyorError(Exception):
    """Base of every error Conveyor reports to a user; `str(err)` is the one line they read."""

    http_status = 400
    exit_code = 1
    kind = "error"


class InvalidInput(ConveyorError):
    """The input does not satisfy the model's signature (wrong type, out of bounds, missing column...)."""

    http_status = 422
    exit_code = 2
    kind = "invalid_input"


class MalformedInput(ConveyorError):
    """The input could not even be parsed (bad JSON, bad CSV, unsupported content type)."""

    http_status = 400
    exit_code = 2
    kind = "malformed_input"


class PayloadTooLarge(ConveyorError):
    http_status = 413
    exit_code = 2
    kind = "payload_too_large"


class UnsupportedMediaType(ConveyorError):
    http_status = 415
    exit_code = 2
    kind = "unsupported_media_type"


class NotFound(ConveyorError):
    """An unknown model, version, alias or stored-prediction key."""

    http_status = 404
    exit_code = 3
    kind = "not_found"


class IntegrityError(ConveyorError):
    """An artifact's checksum or signature does not match its manifest: it must not be loaded."""

    http_status = 500
    exit_code = 4
    kind = "integrity"


class ModelLoadError(ConveyorError):
    """An artifact exists and verifies, but its flavor cannot load it."""

    http_status = 500
    exit_code = 4
    kind = "model_load"


class MissingExtra(ConveyorError):
    """An optional integration is used without its extra installed."""

    exit_code = 5
    kind = "missing_extra"

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"{module} is not installed: run  pip install 'conveyor-ml[{extra}]'")


class NotReady(ConveyorError):
    http_status = 503
    kind = "not_ready"


class NoSink(InvalidInput):
    """An event reached a stream worker that only answers requests (it has no --sink to store it in)."""

    kind = "no_sink"


class InvalidSetting(ConveyorError):
    """A flag or CONVEYOR_* variable with a value its setting does not allow."""

    exit_code = 2
    kind = "invalid_setting"


class StoreUnavailable(ConveyorError):
    """The prediction store did not answer: the message is safe for clients, the backend's error is the cause."""

    http_status = 503
    kind = "unavailable"


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (a database driver's own, not SQLAlchemy's wrapping), or its type."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def require(module: str, extra: str):
    """Import an optional dependency, or fail with the pip command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(module, extra) from exc
