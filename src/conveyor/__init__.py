"""Conveyor: take a trained model to production along every path a data team needs, from one model store."""

from importlib import metadata

try:
    __version__ = metadata.version("conveyor-ml")
except metadata.PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
