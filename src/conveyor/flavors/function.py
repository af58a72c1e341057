"""Plain Python callables: a `.py` file whose function takes a DataFrame and returns predictions.

The file is copied into the store as `model.py`, so it must be self-contained (it may import installed
packages, not sibling files). A module-level `SIGNATURE` dict, in `Signature.to_dict()` form, declares its
columns; without one the store needs example rows.
"""

from __future__ import annotations

import importlib.util
import inspect
import shutil
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from conveyor.errors import ConveyorError, NotFound
from conveyor.model import Flavor, to_frame
from conveyor.signature import Signature

FILE = "model.py"
DEFAULT_CALLABLE = "predict"


class FunctionPredictor:
    """Calls the user's function on the validated batch and normalises whatever it returns."""

    def __init__(self, module: ModuleType, func: Callable[[pd.DataFrame], Any]) -> None:
        self.module = module
        self.func = func

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        return to_frame(self.func(frame))


class FunctionFlavor(Flavor):
    name = "function"

    def save(self, source: Any, directory: Path) -> dict[str, Any]:
        """Copy `path/to/file.py[:func]` into `directory` after checking it imports and `func` is callable."""
        path, attr = _parse(source)
        if not path.is_file():
            raise NotFound(f"no Python file at {path}")
        module = _import(path, keep=False)
        _callable(module, attr, path)
        _declared_signature(module, path)
        shutil.copyfile(path, Path(directory) / FILE)
        return {"file": FILE, "callable": attr}

    def load(self, directory: Path, meta: Mapping[str, Any]) -> FunctionPredictor:
        path = Path(directory) / meta.get("file", FILE)
        module = _import(path, keep=True)
        return FunctionPredictor(module, _callable(module, meta.get("callable", DEFAULT_CALLABLE), path))

    def signature(self, predictor: Any, meta: Mapping[str, Any], example: Any = None) -> Signature | None:
        return _declared_signature(predictor.module, meta.get("file", FILE))

    def accepts(self, source: Any) -> bool:
        if isinstance(source, str | Path):
            text = str(source)
            return text.endswith(".py") or ".py:" in text
        return callable(source)


def _parse(source: Any) -> tuple[Path, str]:
    if isinstance(source, Path):
        return source, DEFAULT_CALLABLE
    if isinstance(source, str):
        head, sep, tail = source.rpartition(":")
        if sep and head.endswith(".py"):
            return Path(head), tail
        return Path(source), DEFAULT_CALLABLE
    if callable(source):
        raise ConveyorError(
            f"a function model is saved from its source file: pass {_hint(source)} instead of the object"
        )
    raise ConveyorError(f"expected path/to/file.py[:function], got {type(source).__name__}")


def _hint(obj: Any) -> str:
    try:
        return f"'{inspect.getsourcefile(obj)}:{obj.__name__}'"
    except (TypeError, AttributeError):
        return "'path/to/file.py:function'"


def _import(path: Path, keep: bool) -> ModuleType:
    # A unique name per import, so two models whose files are both called model.py never share a module.
    name = f"conveyor_function_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConveyorError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs because dataclasses, pickle and typing look the module up by name.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ConveyorError(f"{path}: importing it failed: {type(exc).__name__}: {exc}") from exc
    if not keep:
        sys.modules.pop(name, None)
    return module


def _callable(module: ModuleType, attr: str, path: Path) -> Callable[[pd.DataFrame], Any]:
    func = getattr(module, attr, None)
    if func is None:
        raise ConveyorError(f"{path}: defines no {attr!r}; name the function as {path}:<function>")
    if not callable(func):
        raise ConveyorError(f"{path}: {attr!r} is a {type(func).__name__}, not a function")
    return func


def _declared_signature(module: ModuleType, where: Any) -> Signature | None:
    declared = getattr(module, "SIGNATURE", None)
    if declared is None or isinstance(declared, Signature):
        return declared
    try:
        return Signature.from_dict(declared)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConveyorError(f"{where}: SIGNATURE is not a valid signature dict: {exc}") from exc
