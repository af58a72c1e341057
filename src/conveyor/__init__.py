"""Conveyor: take a trained model to production along every path a data team needs, from one model store."""

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    """`__version__` is looked up when asked for: importlib.metadata costs ~80 ms, a function's cold start pays it."""
    if name != "__version__":
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    from importlib import metadata

    try:
        return metadata.version("conveyor-ml")
    except metadata.PackageNotFoundError:  # running from a source tree without an install
        return "0.0.0"
