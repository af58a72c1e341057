"""Open Inference Protocol (KServe V2) tensors, whatever carries them: REST JSON, REST binary or gRPC.

The transports only frame. JSON `data`, raw little-endian blobs (REST's binary extension, gRPC's
`raw_input_contents`) and gRPC's typed contents all become `InputTensor`s with flat row-major data; those become
the signature's validated columns here, once. The result's columns go back as `OutputTensor`s, typed as the
model's metadata declares them, for each transport to write as JSON values or raw bytes.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from conveyor.errors import InvalidInput, MalformedInput, PayloadTooLarge
from conveyor.signature import Field, Signature

Columns = dict[str, np.ndarray]

# Fixed-size datatypes as numpy reads them off the wire (the protocol's raw data is little-endian).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
INTEGERS = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
FLOATS = frozenset({"FP16", "FP32", "FP64", "BF16"})  # BF16: the top half of an FP32, which numpy lacks
DATATYPES = frozenset({*DTYPES, "BF16", "BYTES"})

# What a signature field's type is declared as (metadata, answers), and every datatype it accepts.
V2_DATATYPES = {"int": "INT64", "float": "FP64", "bool": "BOOL", "str": "BYTES", "datetime": "BYTES", "object": "BYTES"}
ACCEPTED: dict[str, frozenset[str]] = {
    "int": INTEGERS,
    "float": INTEGERS | FLOATS,
    "bool": frozenset({"BOOL"}),
    "str": frozenset({"BYTES"}),
    "datetime": frozenset({"BYTES"}),
    "object": DATATYPES,
}
_EXPECTED = {
    "int": "an integer datatype (INT64, INT32, ..., UINT8)",
    "float": "a number datatype (FP64, FP32, FP16, BF16 or an integer type)",
    "bool": "BOOL",
    "str": "BYTES (UTF-8 strings)",
    "datetime": "BYTES (dates as UTF-8 strings)",
}
_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix


def rows_ok(n: int, limit: int) -> int:
    """Refuse a request of more rows than the service answers at once (every body shape shares this)."""
    if n > limit:
        raise PayloadTooLarge(f"{n} rows in one request; at most {limit} are accepted: split the request")
    return n


# --- requests ------------------------------------------------------------------------------------
@dataclass
class InputTensor:
    """One input, whatever the transport: `data` is flat and row-major (decoded raw data, JSON or typed lists)."""

    name: str
    datatype: str
    shape: list[int]
    data: Sequence[Any] | np.ndarray


def _is_shape(shape: Any) -> bool:
    return type(shape) is list or isinstance(shape, Sequence)  # a list first: the ABC check is slow


def element_count(shape: Sequence[int], name: str) -> int:
    sizes = shape if _is_shape(shape) else None
    if not sizes or not all(type(s) is int and s >= 0 for s in sizes):
        raise MalformedInput(f"input {name!r}: shape must be a non-empty list of sizes >= 0, got {shape!r}")
    return math.prod(shape)


def from_raw(datatype: str, shape: Sequence[int], raw: bytes | memoryview, name: str) -> np.ndarray | list[bytes]:
    """A tensor's raw bytes as its values: fixed-size types little-endian, BYTES length-prefixed elements.

    Numbers are one numpy view of the buffer (no copy, no per-element Python); BYTES are split one element at a
    time, as their lengths are only known in turn.
    """
    count = element_count(shape, name)
    if datatype == "BYTES":
        return _split_bytes(memoryview(raw), count, shape, name)
    if datatype == "BF16":
        halves = np.frombuffer(_sized(raw, count, 2, datatype, shape, name), dtype="<u2")
        return (halves.astype(np.uint32) << 16).view(np.float32)
    check_datatype(name, datatype)
    dtype = DTYPES[datatype]
    return np.frombuffer(_sized(raw, count, dtype.itemsize, datatype, shape, name), dtype=dtype)


def _sized(raw: bytes | memoryview, count: int, size: int, datatype: str, shape: Sequence[int], name: str) -> Any:
    if len(raw) != count * size:
        raise InvalidInput(
            f"input {name!r}: a {datatype} tensor of shape {list(shape)} is {count * size} bytes "
            f"({count} x {size}), but its raw data is {len(raw)} bytes"
        )
    return raw


def _split_bytes(raw: memoryview, count: int, shape: Sequence[int], name: str) -> list[bytes]:
    out: list[bytes] = []
    pos, end = 0, len(raw)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidInput(
                f"input {name!r}: BYTES tensor of shape {list(shape)} has {count} elements, but its raw data "
                f"({end} bytes) holds only {i}: each element is a 4-byte little-endian length and its bytes"
            )
        (length,) = _LENGTH.unpack_from(raw, pos)
        pos += 4
        if pos + length > end:
            raise InvalidInput(
                f"input {name!r}: BYTES element {i} declares {length} bytes but only {end - pos} remain "
                f"in its raw data ({end} bytes)"
            )
        out.append(raw[pos : pos + length].tobytes())
        pos += length
    if pos != end:
        raise InvalidInput(
            f"input {name!r}: {end - pos} bytes left over after the {count} BYTES elements of shape {list(shape)}"
        )
    return out


def columns_from_tensors(inputs: Sequence[InputTensor], signature: Signature, max_rows: int) -> tuple[Columns, int]:
    """The request's tensors as the signature's validated columns: one named input per column, [n] or [n, 1]."""
    if not inputs:
        raise MalformedInput('no inputs: send one tensor per input, {"name", "shape", "datatype", "data"}')
    if len(inputs) == 1 and meant_as_matrix(signature, inputs[0].name, inputs[0].shape):
        if not is_matrix(signature, inputs[0].name, inputs[0].shape):
            _not_a_matrix(inputs[0], signature)
        plain = _plain_matrix(inputs[0], signature, max_rows)
        if plain is not None:
            return plain
        columns, n = _matrix_columns(inputs[0], signature)
        inputs = []
    else:
        columns, n = {}, None
    for tensor in inputs:
        name = tensor.name
        field = input_field(signature, name, tensor.datatype)
        if name in columns:
            raise InvalidInput(f"input {name!r} is sent twice")
        count = element_count(tensor.shape, name)
        shape = list(tensor.shape)
        if count != len(tensor.data) or (len(shape) > 1 and math.prod(shape[1:]) != 1):
            raise InvalidInput(
                f"input {name!r}: shape {shape} does not match {len(tensor.data)} values (one column: [n] or [n, 1])"
            )
        if n is None:
            n = shape[0]
        elif shape[0] != n:
            raise InvalidInput(f"input {name!r} has {shape[0]} rows but input {next(iter(columns))!r} has {n}")
        columns[name] = _values(tensor, field)
    rows = rows_ok(n or 0, max_rows)
    if rows == 0:
        raise InvalidInput("no rows: the inputs are empty")
    return signature.check_columns(columns, rows), rows


def meant_as_matrix(signature: Signature, name: str, shape: Sequence[Any]) -> bool:
    """A tensor of two or more dimensions under a name a model of several inputs does not take: sent as all of
    them in one, as KServe's and MLServer's scikit-learn servers expect (`input-0`)."""
    return len(signature.inputs) > 1 and name not in signature.input_names and _is_shape(shape) and len(shape) >= 2


def is_matrix(signature: Signature, name: str, shape: Sequence[Any]) -> bool:
    """Such a tensor of the right shape, [rows, inputs]: its columns are the inputs in the signature's order."""
    return meant_as_matrix(signature, name, shape) and len(shape) == 2 and shape[1] == len(signature.inputs)


def _not_a_matrix(tensor: InputTensor, signature: Signature) -> None:
    """A lone tensor the model has no input of: refused as the matrix it was likely meant to be, saying its shape."""
    names, shape = signature.input_names, list(tensor.shape)
    raise InvalidInput(
        f"input {tensor.name!r} is not one of this model's inputs {names}, and as one matrix of them its shape "
        f"must be [rows, {len(names)}] (a column per input, in that order), not {shape}"
    )


def _plain_matrix(tensor: InputTensor, signature: Signature, max_rows: int) -> tuple[Columns, int] | None:
    """A matrix of finite float64 numbers for a model of plain float inputs, what KServe's and MLServer's clients
    send: valid as it stands after one scan, its columns views of it. None: the general path decides (and says
    what is wrong)."""
    data = tensor.data
    if not (signature.plain_floats and isinstance(data, np.ndarray) and data.dtype == np.float64):
        return None
    if tensor.datatype not in ("FP64", "FP32"):
        return None
    width = len(signature.inputs)
    rows = element_count(tensor.shape, tensor.name) // width
    if rows == 0 or rows * width != data.size or not np.isfinite(data).all():
        return None
    matrix = data.reshape(rows_ok(rows, max_rows), width)
    return {f.name: matrix[:, j] for j, f in enumerate(signature.inputs)}, rows


def _matrix_columns(tensor: InputTensor, signature: Signature) -> tuple[dict[str, Any], int]:
    """The matrix's columns by input name (views of one array where it is one), and its rows."""
    check_datatype(tensor.name, tensor.datatype)  # before its values: an unknown datatype's were not read
    width = len(signature.inputs)
    rows = element_count(tensor.shape, tensor.name) // width
    if rows * width != len(tensor.data):
        raise InvalidInput(
            f"input {tensor.name!r}: shape {list(tensor.shape)} does not match {len(tensor.data)} values"
        )
    data = tensor.data
    matrix = data.reshape(rows, width) if isinstance(data, np.ndarray) else None
    columns = {}
    for j, f in enumerate(signature.inputs):
        values = matrix[:, j] if matrix is not None else list(data[j::width])
        datatype = tensor.datatype
        if f.type == "int" and datatype in ("FP16", "BF16", "FP32", "FP64"):  # one datatype for every column
            numbers = np.asarray(values, dtype=np.float64)
            whole = numbers == np.floor(numbers)
            if not whole.all():
                bad = int(np.flatnonzero(~whole)[0])
                raise InvalidInput(
                    f"input {tensor.name!r}: column {j} ({f.name!r}) takes integers, got {float(numbers[bad])!r} in row {bad}"
                )
            values, datatype = numbers.astype(np.int64), "INT64"
        field = input_field(signature, f.name, datatype)
        columns[f.name] = _values(InputTensor(f.name, datatype, [rows], values), field)
    return columns, rows


def check_outputs(names: Iterable[str], signature: Signature) -> None:
    """Refuse outputs the model does not answer, before any work (a model without declared outputs takes any)."""
    known = signature.output_names
    unknown = [n for n in names if n not in known]
    if known and unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; this model answers {known}")


def input_field(signature: Signature, name: str, datatype: Any) -> Field:
    """The signature's field for input `name`, if it may come as `datatype` (a transport can ask before decoding)."""
    try:
        field = signature.field(name)
    except KeyError:
        raise InvalidInput(f"unknown input {name!r}; this model takes {signature.input_names}") from None
    check_datatype(field.name, datatype)
    if datatype not in ACCEPTED[field.type]:
        raise InvalidInput(
            f"input {field.name!r} is {datatype}, but this model takes it as {field.type} "
            f"({field.describe()}): send {_EXPECTED[field.type]}"
        )
    return field


def check_datatype(name: str, datatype: Any) -> None:
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}; known: {', '.join(sorted(DATATYPES))}")


def _values(tensor: InputTensor, field: Field) -> Any:
    data = tensor.data
    if tensor.datatype == "UINT64" and isinstance(data, np.ndarray) and field.type == "int":
        over = np.flatnonzero(data > np.iinfo(np.int64).max)  # would wrap to negatives as the model's int64
        if len(over):
            raise InvalidInput(
                f"input {field.name!r}: UINT64 element {int(over[0])} is {int(data[over[0]])}, "
                "larger than an integer column holds (2**63 - 1)"
            )
        return data.astype(np.int64)
    if tensor.datatype != "BYTES":
        return data
    if isinstance(data, np.ndarray):
        data = data.tolist()
    try:
        return [v.decode() if isinstance(v, bytes | bytearray) else v for v in data]
    except UnicodeDecodeError:
        pass
    for i, v in enumerate(data):  # the slow walk only to say which element is not text
        if isinstance(v, bytes | bytearray):
            try:
                v.decode()
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"input {field.name!r}: BYTES element {i} is not UTF-8 text ({exc.reason} at byte {exc.start}): "
                    f"{field.name} is {field.describe()}"
                ) from None
    raise AssertionError("unreachable")  # pragma: no cover


# --- metadata ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tensor:
    """How one column travels as an Open Inference Protocol tensor: what metadata declares and infer answers."""

    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size (rows; a forecast's range)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def v2_inputs(signature: Signature) -> list[Tensor]:
    return [Tensor(f.name, V2_DATATYPES[f.type], (-1,)) for f in signature.inputs]


def v2_outputs(signature: Signature) -> list[Tensor]:
    """A path output (a list per row, such as a forecast) is a [rows, steps] tensor of its items' type."""
    return [
        Tensor(f.name, V2_DATATYPES[f.items], (-1, -1)) if f.items else Tensor(f.name, V2_DATATYPES[f.type], (-1,))
        for f in signature.outputs
    ]


def v2_metadata(model: Any) -> dict[str, Any]:
    """`GET /v2/models/{name}` (and gRPC's ModelMetadata): the model's tensors."""
    return {
        "name": model.name,
        "versions": [str(model.version)],
        "platform": f"conveyor-{model.flavor}",
        "inputs": [t.metadata() for t in v2_inputs(model.signature)],
        "outputs": [t.metadata() for t in v2_outputs(model.signature)],
    }


# --- answers -------------------------------------------------------------------------------------
@dataclass
class OutputTensor:
    """One output: `data` flat and row-major, a numpy array for numbers and a list of str for BYTES."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list

    def json(self) -> dict[str, Any]:
        """As JSON's output object (numpy data is written by orjson's OPT_SERIALIZE_NUMPY)."""
        return {"name": self.name, "shape": self.shape, "datatype": self.datatype, "data": self.data}


def output_tensors(result: Mapping[str, Sequence[Any]], signature: Signature) -> list[OutputTensor]:
    """Named output tensors, exactly as `v2_outputs` declares them (a column the signature lacks is inferred)."""
    declared = declared_outputs(signature)
    return [_output(str(name), values, declared.get(name)) for name, values in result.items()]


_last: tuple[Any, dict[str, Tensor]] = (None, {})  # the signature last answered for, and its output tensors


def declared_outputs(signature: Signature) -> dict[str, Tensor]:
    """The signature's output tensors by name (`v2_outputs`), worked out once per model."""
    global _last
    last = _last  # read once: another thread may swap it meanwhile
    if last[0] is not signature:  # one model answers many requests in a row: worked out once for them
        last = _last = (signature, {t.name: t for t in v2_outputs(signature)})
    return last[1]


def _output(name: str, values: Sequence[Any], declared: Tensor | None) -> OutputTensor:
    rows = len(values)
    if declared is not None and len(declared.shape) == 2 and all(isinstance(v, list | tuple) for v in values):
        widths = {len(v) for v in values}  # one path per row, all of one length
        if len(widths) > 1:
            raise InvalidInput(
                f"output {name!r} has paths of {len(widths)} lengths: a V2 tensor is [rows, steps], so one "
                "request must ask for one length (one range); send one request per length, or POST /predict"
            )
        shape = [rows, widths.pop() if widths else 0]
        flat = list(itertools.chain.from_iterable(values))
    else:  # declared a path, answered otherwise: say what it is rather than fail
        if declared is not None and len(declared.shape) == 2:
            declared = None
        shape, flat = [rows], values
    if declared is not None:
        data = typed_data(flat, declared.datatype)
        if data is not None:
            return OutputTensor(name, declared.datatype, shape, data)
    for datatype in _guesses(flat):
        data = typed_data(flat, datatype)
        if data is not None:
            return OutputTensor(name, datatype, shape, data)
    return OutputTensor(name, "BYTES", shape, _texts(flat))


def _guesses(values: Sequence[Any]) -> tuple[str, ...]:
    first = values[0] if len(values) else None
    if isinstance(first, bool | np.bool_):
        return ("BOOL",)
    if isinstance(first, int | np.integer):
        return ("INT64", "FP64")
    if isinstance(first, float | np.floating):
        return ("FP64",)
    return ()


def typed_data(values: Sequence[Any], datatype: str) -> np.ndarray | list | None:
    """`values` as `datatype`'s data, or None when they are not of that type (a model answering off its signature)."""
    if datatype == "BYTES":
        return _texts(values)
    if datatype == "FP64":
        if any(isinstance(v, str) for v in values[:1]):
            return None
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            return None
        return arr if arr.ndim == 1 else None
    arr = np.asarray(values)
    if arr.ndim != 1:
        return None
    if arr.size == 0:
        return arr.astype(DTYPES[datatype])
    if datatype == "BOOL" and arr.dtype.kind == "b":
        return arr
    if datatype == "INT64" and arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    return None


def _texts(values: Sequence[Any]) -> list[str]:
    return [v if isinstance(v, str) else _text(v) for v in values]


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def to_raw(tensor: OutputTensor) -> bytes:
    """The tensor's raw bytes: what REST's binary extension and gRPC's `raw_output_contents` carry."""
    if tensor.datatype == "BYTES":
        parts = []
        for v in tensor.data:
            b = v.encode() if isinstance(v, str) else bytes(v)
            parts.append(_LENGTH.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(tensor.data, dtype=DTYPES[tensor.datatype]).tobytes()
