"""Split a batch into rows the model accepts and rejects with their reasons, without failing the batch.

Each input field is checked for the whole column at once (nulls, numbers, bounds, choices); the rows that
pass go through `Signature.validate_frame`, which stays the one authority on coercion. Should it still
refuse a row the column checks let through, the batch is bisected to isolate that row, so one odd value
costs a few extra validations, not a row-by-row pass.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from conveyor.errors import InvalidInput
from conveyor.signature import Field, Signature

_TRUE = {"true", "1", "yes", "t", "y"}
_TRUE_FALSE = _TRUE | {"false", "0", "no", "f", "n"}


@dataclass
class Split:
    """`rows` are the accepted input rows (original values, original index); `inputs` the validated model input."""

    rows: pd.DataFrame
    inputs: pd.DataFrame | None
    rejects: list[tuple[int, str]]


def check_columns(signature: Signature, names: list[str]) -> None:
    """Refuse an input that lacks a required column: every row would be rejected, so it is an error instead."""
    missing = [f.name for f in signature.inputs if f.name not in names and f.required and f.default is None]
    if missing:
        raise InvalidInput(f"input lacks required column(s) {missing}; it has {names}")


def split(signature: Signature, frame: pd.DataFrame) -> Split:
    if not _suspect(signature, frame):
        try:  # the common case, a clean batch: one validation (~15x cheaper than finding reasons per row)
            return Split(frame, signature.validate_frame(frame), [])
        except InvalidInput:
            pass
    reasons = pd.Series(None, index=frame.index, dtype=object)
    for f in signature.inputs:
        if f.name in frame.columns:
            bad, why = _bad_values(f, frame[f.name])
            fresh = bad & reasons.isna().to_numpy()
            if fresh.any():
                reasons[fresh] = why[fresh]
    ok = reasons.isna().to_numpy()
    rejects = [(int(i), str(r)) for i, r in reasons[~ok].items()]
    good = frame[ok]
    parts, late = _validate(signature, good)
    if late:
        bad_index = {i for i, _ in late}
        rejects += late
        good = good[~good.index.isin(bad_index)]
    inputs = pd.concat(parts, ignore_index=True) if parts else None
    return Split(good, inputs, sorted(rejects))


def _suspect(signature: Signature, frame: pd.DataFrame) -> bool:
    """Object columns where numbers are expected may hold booleans, which coercion would let through."""
    return any(
        f.type in ("int", "float") and f.name in frame.columns and frame[f.name].dtype.kind == "O"
        for f in signature.inputs
    )


def _validate(signature: Signature, frame: pd.DataFrame) -> tuple[list[pd.DataFrame], list[tuple[int, str]]]:
    if len(frame) == 0:
        return [], []
    try:
        return [signature.validate_frame(frame)], []
    except InvalidInput as exc:
        if len(frame) == 1:
            return [], [(int(frame.index[0]), str(exc))]
    mid = len(frame) // 2
    left, bad_left = _validate(signature, frame.iloc[:mid])
    right, bad_right = _validate(signature, frame.iloc[mid:])
    return left + right, bad_left + bad_right


def _bad_values(f: Field, col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A mask of the column's bad values and, where bad, the reason."""
    null = col.isna().to_numpy()
    reason = np.full(len(col), None, dtype=object)
    if null.any() and f.required and f.default is None:
        reason[null] = f"missing value for {f.name!r}: {f.describe()} is required"
    present = ~null
    values = col[present]
    bad = np.zeros(len(values), dtype=bool)
    if f.type in ("int", "float"):
        if values.dtype.kind == "b":
            numbers = pd.Series(np.nan, index=values.index)
        else:
            numbers = pd.to_numeric(values, errors="coerce")
            if values.dtype.kind == "O":
                numbers[values.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(dtype=bool)] = np.nan
        arr = numbers.to_numpy(dtype=float)
        bad = ~np.isfinite(arr)
        if f.type == "int":
            bad |= np.where(np.isfinite(arr), arr != np.floor(arr), False)
        if f.min is not None:
            bad |= arr < f.min
        if f.max is not None:
            bad |= arr > f.max
        if f.choices is not None:
            bad |= ~np.isin(arr, np.asarray(f.choices, dtype=float))
    elif f.type == "str":
        if values.dtype.kind == "O":
            bad = ~values.map(lambda v: isinstance(v, str | int | np.integer) and not isinstance(v, bool)).to_numpy(
                dtype=bool
            )
        elif values.dtype.kind not in "iuU" and not isinstance(values.dtype, pd.StringDtype):
            bad = np.ones(len(values), dtype=bool)
        if f.choices is not None:
            bad |= ~values.astype(str).isin(f.allowed).to_numpy()
    elif f.type == "bool":
        flags = values.to_numpy()
        if values.dtype.kind != "b":
            text = values.astype(str).str.lower()
            bad = ~text.isin(_TRUE_FALSE).to_numpy()
            flags = text.isin(_TRUE).to_numpy()
        if f.choices is not None:
            bad |= ~np.isin(flags, np.asarray(f.choices, dtype=bool))
    elif f.type == "datetime":
        bad = pd.to_datetime(values, errors="coerce").isna().to_numpy()
    if bad.any():
        shown = values[bad].map(_show).to_numpy(dtype=object)
        where = np.flatnonzero(present)[bad]
        reason[where] = [f"{f.name!r} must be {f.describe()}, got {s}" for s in shown]
    return reason != None, reason  # noqa: E711 - elementwise on an object array


def _show(v: object) -> str:
    if isinstance(v, np.generic):
        v = v.item()
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def reject_records(frame: pd.DataFrame, rejects: Sequence[tuple[int, str]], source: str) -> list[dict]:
    """Reject rows as `source, row, reason, record` (the raw values as JSON)."""
    if not rejects:
        return []
    raw = frame.loc[[i for i, _ in rejects]]
    records = raw.astype(object).where(raw.notna(), None).to_dict("records")
    return [
        {"source": source, "row": i, "reason": reason, "record": json.dumps(rec, default=str)}
        for (i, reason), rec in zip(rejects, records, strict=True)
    ]
