"""The weights in an ONNX model file, read without ``onnx`` or ``onnxruntime``.

An ONNX file is one protocol-buffers message (``ModelProto``); its ``graph`` (field 7) holds
the weights as ``initializer`` tensors (field 5) and the computation as ``node`` s (field 1).
This module decodes just that much of the protobuf wire format (varints, fixed 32/64-bit
values, length-delimited fields; every other field skipped) and builds NumPy arrays from the
tensors. Nothing it allocates is sized by a number the file claims unless the bytes are there:
every length is checked against what remains of its enclosing message before it is used, a
tensor's ``dims`` must multiply to exactly the number of elements its data holds, and the file
itself must fit :func:`~msde_jax._arrays_file.max_array_bytes` before it is read (its arrays are
views of it, copied once each). Tensors stored outside the file (``external_data``) are refused
with a message saying so; so are sparse initializers.

A model exported from PyTorch keeps most parameter names (``backbone.layernorm.weight``) but
stores a ``torch.nn.Linear`` weight transposed, as the second input of a ``MatMul`` node, often
under an anonymous name (``onnx::MatMul_1966``); :func:`load_onnx_state_dict` names such a
tensor after the module its node belongs to (the node ``/backbone/encoder/layer.0/mlp/fc1/
MatMul`` → ``backbone.encoder.layer.0.mlp.fc1.weight``) and transposes it back to torch's
(out, in) layout, so a torch converter can read the result.

Specification: onnx/onnx ``onnx.proto`` (IR version ≥ 3); wire format: protobuf encoding docs.
"""

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from msde_jax._arrays_file import human_bytes, max_array_bytes

__all__ = [
    "OnnxFileError",
    "OnnxGraph",
    "OnnxNode",
    "load_onnx_state_dict",
    "read_onnx",
]

# TensorProto.DataType → NumPy dtype of raw_data (little-endian, as ONNX stores it).
_DTYPES = {
    1: np.dtype("<f4"),
    2: np.dtype("u1"),
    3: np.dtype("i1"),
    4: np.dtype("<u2"),
    5: np.dtype("<i2"),
    6: np.dtype("<i4"),
    7: np.dtype("<i8"),
    9: np.dtype("?"),
    10: np.dtype("<f2"),
    11: np.dtype("<f8"),
    12: np.dtype("<u4"),
    13: np.dtype("<u8"),
}
# Typed repeated fields of TensorProto: field number → (wire encoding, the data types it holds).
_FLOAT_DATA, _INT32_DATA, _INT64_DATA, _DOUBLE_DATA, _UINT64_DATA = 4, 5, 7, 10, 11
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10
_ANONYMOUS = re.compile(r"^onnx::")
_RESTORE = "the file is damaged or was not written by an ONNX exporter"


class OnnxFileError(ValueError):
    """An ONNX file that cannot be read: damaged, truncated, too large, or storing its weights
    in a way this reader does not support (external data, sparse tensors)."""


class OnnxNode(NamedTuple):
    """One node of the graph: its ``name`` (may be empty), ``op_type`` and the names of its
    ``inputs`` and ``outputs``, in order (an omitted optional input is ``""``)."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class OnnxGraph(NamedTuple):
    """What :func:`read_onnx` reads: the ``initializers`` as ``{name: array}`` and the
    ``nodes`` in the file's (topological) order."""

    initializers: dict[str, np.ndarray]
    nodes: tuple[OnnxNode, ...]


class _Reader:
    """Fields of one message: ``buf[start:end]`` of the file's bytes."""

    def __init__(self, buf: memoryview, start: int, end: int, what: str):
        self.buf, self.pos, self.end, self.what = buf, start, end, what

    def fail(self, reason: str) -> OnnxFileError:
        return OnnxFileError(f"{self.what}: {reason}; {_RESTORE}.")

    def varint(self) -> int:
        value, shift = 0, 0
        for _ in range(_MAX_VARINT_BYTES):
            if self.pos >= self.end:
                raise self.fail(f"a number runs past the end of its message (byte {self.pos})")
            byte = self.buf[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
        raise self.fail(f"a number longer than {_MAX_VARINT_BYTES} bytes (byte {self.pos})")

    def fields(self):
        """Yield ``(field number, wire type, value)``: an int for varints and fixed values, the
        ``(start, end)`` of the bytes for length-delimited fields."""
        while self.pos < self.end:
            key = self.varint()
            number, wire = key >> 3, key & 7
            if number == 0:
                raise self.fail(f"field number 0 at byte {self.pos}")
            if wire == _VARINT:
                yield number, wire, self.varint()
            elif wire in (_FIXED64, _FIXED32):
                size = 8 if wire == _FIXED64 else 4
                if self.end - self.pos < size:
                    raise self.fail(f"field {number} runs past the end of its message")
                value = int.from_bytes(self.buf[self.pos : self.pos + size], "little")
                self.pos += size
                yield number, wire, value
            elif wire == _LENGTH:
                length = self.varint()
                if length > self.end - self.pos:
                    raise self.fail(
                        f"field {number} claims {human_bytes(length)}, but only "
                        f"{human_bytes(self.end - self.pos)} of its message remain (truncated?)"
                    )
                start, self.pos = self.pos, self.pos + length
                yield number, wire, (start, self.pos)
            else:  # 3, 4: groups (proto2, unused by ONNX); 6, 7: invalid
                raise self.fail(f"field {number} has wire type {wire}, which ONNX never uses")

    def sub(self, span: tuple[int, int], what: str) -> "_Reader":
        return _Reader(self.buf, span[0], span[1], what)

    def text(self, span: tuple[int, int]) -> str:
        try:
            return str(self.buf[span[0] : span[1]], "utf-8")
        except UnicodeDecodeError as err:
            raise self.fail("a name is not UTF-8") from err


def _expect(reader: _Reader, number: int, wire: int, expected: int) -> None:
    if wire != expected:
        raise reader.fail(f"field {number} has wire type {wire}, expected {expected}")


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _read_node(reader: _Reader) -> OnnxNode:
    # NodeProto: input = 1, output = 2 (repeated), name = 3, op_type = 4.
    strings: dict[int, list[str]] = {1: [], 2: [], 3: [""], 4: [""]}
    for number, wire, value in reader.fields():
        if number in strings:
            _expect(reader, number, wire, _LENGTH)
            strings[number].append(reader.text(value))
    return OnnxNode(strings[3][-1], strings[4][-1], tuple(strings[1]), tuple(strings[2]))


def _read_tensor(reader: _Reader, index: int) -> tuple[str, np.ndarray]:
    dims: list[int] = []
    data_type, name = 0, f"<initializer {index}>"
    raw: tuple[int, int] | None = None
    typed: dict[int, list] = {}  # field → packed spans (start, end) and unpacked values
    for number, wire, value in reader.fields():
        if number == 1:  # dims: repeated int64, packed or not
            if wire == _LENGTH:
                packed = reader.sub(value, reader.what)
                while packed.pos < packed.end:
                    dims.append(_int64(packed.varint()))
            else:
                _expect(reader, number, wire, _VARINT)
                dims.append(_int64(value))
        elif number == 2:
            _expect(reader, number, wire, _VARINT)
            data_type = value
        elif number == 8:
            _expect(reader, number, wire, _LENGTH)
            name = reader.text(value)
            reader.what = f"{reader.what} ({name!r})"
        elif number == 9:
            _expect(reader, number, wire, _LENGTH)
            raw = value
        elif number in (_FLOAT_DATA, _INT32_DATA, _INT64_DATA, _DOUBLE_DATA, _UINT64_DATA):
            unpacked = {_FLOAT_DATA: _FIXED32, _DOUBLE_DATA: _FIXED64}.get(number, _VARINT)
            if wire != _LENGTH:
                _expect(reader, number, wire, unpacked)
            typed.setdefault(number, []).append(value)
        elif number == 13 or (number == 14 and value == 1):  # external_data, EXTERNAL
            raise OnnxFileError(
                f"{reader.what}: its data is stored in a separate file (ONNX external data), "
                "which this reader does not follow; re-export the model with the weights inside "
                "the .onnx file (onnx.save(model, path, save_as_external_data=False))."
            )
    if data_type not in _DTYPES:
        raise OnnxFileError(
            f"{reader.what}: data type {data_type} is not supported (float, float16, float64 "
            "and integer tensors are)."
        )
    if any(d < 0 for d in dims):
        raise reader.fail(f"tensor {name!r} has negative dims {dims}")
    dtype, count = _DTYPES[data_type], math.prod(dims)
    if raw is not None:
        nbytes = raw[1] - raw[0]
        if nbytes != count * dtype.itemsize:
            raise reader.fail(
                f"tensor {name!r} claims shape {tuple(dims)} of {dtype} "
                f"({human_bytes(count * dtype.itemsize)}) but holds {human_bytes(nbytes)}"
            )
        array = np.frombuffer(reader.buf[raw[0] : raw[1]], dtype=dtype).copy()
    else:
        array = _typed_data(reader, name, typed, data_type, dtype, count)
    return name, array.astype(dtype.newbyteorder("="), copy=False).reshape(dims)


def _typed_data(reader, name, typed, data_type, dtype, count) -> np.ndarray:
    """A tensor stored in ``float_data`` / ``int32_data`` / ``int64_data`` / ``double_data``
    / ``uint64_data`` (uint32 and uint64 tensors; each entry a packed span, or one unpacked
    value as its wire integer)."""
    fields = {1: _FLOAT_DATA, 11: _DOUBLE_DATA, 7: _INT64_DATA, 12: _UINT64_DATA}
    field = fields.get(data_type, _UINT64_DATA if data_type == 13 else _INT32_DATA)
    unsigned = field == _UINT64_DATA  # varints as they are, not as two's complement
    as_int = (lambda v: v) if unsigned else _int64
    int_dtype = np.uint64 if unsigned else np.int64
    if set(typed) - {field}:
        raise reader.fail(f"tensor {name!r} stores its values in an unexpected field")
    width = {_FLOAT_DATA: 4, _DOUBLE_DATA: 8}.get(field)
    chunks: list[np.ndarray] = []
    for entry in typed.get(field, []):
        if isinstance(entry, int) and width:  # a fixed-width float as its bit pattern
            chunks.append(np.array([entry], f"<u{width}").view(f"<f{width}"))
        elif isinstance(entry, int):
            chunks.append(np.array([as_int(entry)], int_dtype))
        elif width:
            start, end = entry
            if (end - start) % width:
                raise reader.fail(f"tensor {name!r}: packed values of {end - start} bytes")
            chunks.append(np.frombuffer(reader.buf[start:end], f"<f{width}"))
        else:  # packed varints, at least one byte each: bounded by the bytes there
            packed = reader.sub(entry, reader.what)
            values = []
            while packed.pos < packed.end:
                values.append(as_int(packed.varint()))
            chunks.append(np.array(values, int_dtype))
    n = sum(len(c) for c in chunks)
    if n != count:
        raise reader.fail(f"tensor {name!r} claims {count} values but holds {n}")
    values = np.concatenate(chunks) if chunks else np.zeros(0, dtype)
    if data_type == 10:  # float16 travels as its bit pattern in int32_data
        return values.astype("<u2").view("<f2")
    return values.astype(dtype)


def read_onnx(path: str | os.PathLike, *, max_bytes: int | None = None) -> OnnxGraph:
    """Read the initializers and nodes of an ONNX model file.

    Args:
        path: a ``.onnx`` file (a serialised ``ModelProto``).
        max_bytes: the most bytes the file may have (it is read whole); default
            :func:`~msde_jax._arrays_file.max_array_bytes` (half the available memory, or
            ``$MSDE_JAX_MAX_ARRAY_BYTES``).

    Returns:
        :class:`OnnxGraph` with ``{name: array}`` (NumPy, native byte order, shaped by
        ``dims``) and the nodes.

    Raises:
        FileNotFoundError: no such file.
        OnnxFileError: the file is larger than ``max_bytes``, truncated or otherwise not a valid
            ONNX model, stores a tensor outside itself (external data) or sparsely, or holds
            two initializers of one name.
    """
    path = Path(path)
    size = path.stat().st_size
    bound = max_array_bytes(max_bytes)
    if size > bound:
        raise OnnxFileError(
            f"{path}: {human_bytes(size)} is more than the {human_bytes(bound)} one read may take "
            "(half the available memory, or $MSDE_JAX_MAX_ARRAY_BYTES); free memory or raise it."
        )
    buf = memoryview(path.read_bytes())
    model = _Reader(buf, 0, len(buf), str(path))
    graphs = [value for number, wire, value in model.fields() if number == 7 and wire == _LENGTH]
    if not graphs:
        raise model.fail("no graph (ModelProto field 7)")
    initializers: dict[str, np.ndarray] = {}
    nodes: list[OnnxNode] = []
    for span in graphs:  # protobuf merges repeated occurrences of a message field
        graph = model.sub(span, f"{path}: graph")
        for number, wire, value in graph.fields():
            if wire != _LENGTH:
                continue
            if number == 1:
                nodes.append(_read_node(graph.sub(value, f"{path}: node {len(nodes)}")))
            elif number == 5:
                tensor = graph.sub(value, f"{path}: initializer {len(initializers)}")
                name, array = _read_tensor(tensor, len(initializers))
                if name in initializers:
                    raise graph.fail(f"two initializers are named {name!r}")
                initializers[name] = array
            elif number == 15:
                raise OnnxFileError(
                    f"{path}: the graph has sparse initializers, which this reader does not "
                    "support; export the model with dense weights."
                )
    return OnnxGraph(initializers, tuple(nodes))


def load_onnx_state_dict(
    path: str | os.PathLike, *, max_bytes: int | None = None
) -> dict[str, np.ndarray]:
    """The initializers of a model exported from PyTorch, as a torch ``state_dict``.

    Initializers keep their names, except an anonymous one (``onnx::…``) that is the second
    input of a ``MatMul`` node named ``/<module path>/MatMul`` (how ``torch.onnx.export``
    writes a ``Linear`` layer): it becomes ``<module.path>.weight``, transposed to torch's
    (out, in) layout. Other anonymous tensors (constants the exporter folded, such as a slice
    of a parameter) keep their ``onnx::`` names for a model-specific converter to place.

    Raises:
        OnnxFileError: as :func:`read_onnx`, or two ``MatMul`` nodes claim one module.
    """
    graph = read_onnx(path, max_bytes=max_bytes)
    return torch_state_dict(graph, source=str(path))


def torch_state_dict(graph: OnnxGraph, *, source: str = "ONNX graph") -> dict[str, np.ndarray]:
    """:func:`load_onnx_state_dict` of an already read :class:`OnnxGraph`."""
    arrays: Mapping[str, np.ndarray] = graph.initializers
    state = {k: v for k, v in arrays.items() if not _ANONYMOUS.match(k)}
    renamed: set[str] = set()
    for node in graph.nodes:
        if node.op_type != "MatMul" or len(node.inputs) != 2 or node.inputs[1] not in arrays:
            continue
        weight = node.inputs[1]
        module = node.name.rsplit("/", 1)[0].strip("/").replace("/", ".")
        if not _ANONYMOUS.match(weight) or not module or arrays[weight].ndim != 2:
            continue
        key = f"{module}.weight"
        if key in state:
            raise OnnxFileError(f"{source}: two tensors would be named {key!r}")
        state[key] = np.ascontiguousarray(arrays[weight].T)
        renamed.add(weight)
    state.update({k: v for k, v in arrays.items() if _ANONYMOUS.match(k) and k not in renamed})
    return state
