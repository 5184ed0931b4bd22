"""Read ``torch.save`` checkpoints without torch, refusing every pickle that could run code.

PyTorch checkpoints are pickles, and unpickling runs whatever callables the file names. The
reader here never imports torch and never trusts the file: its unpickler resolves only the
handful of globals a state dict needs (tensor rebuild functions, storage types, dtypes,
``collections.OrderedDict``), each mapped to a harmless stand-in defined in this module, and
refuses every other global with :class:`UnsafeCheckpointError` before anything is called.

Both on-disk layouts written by ``torch.save`` are read:

* the zip format (torch >= 1.6): ``<archive>/data.pkl`` holds the pickle, each storage is the
  raw bytes of ``<archive>/data/<key>``, and ``<archive>/byteorder`` gives the byte order;
* the legacy format (``_use_new_zipfile_serialization=False``, torch < 1.6): the pickles of
  the magic number ``0x1950a86a20f9469cfc6c``, the protocol version and a ``sys_info`` dict,
  then the main pickle, then a pickled list of storage keys, then each storage as an 8-byte
  element count followed by its raw bytes.

Tensors come back as numpy arrays with their dtype, shape, strides and storage offset honoured
(mirroring ``torch._utils._rebuild_tensor_v2``); ``bfloat16`` and float8 are widened to
``float32`` because numpy has no native arithmetic for them.
"""

import collections
import io
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import ml_dtypes
import numpy as np

__all__ = [
    "SeveralStateDictsWarning",
    "UnsafeCheckpointError",
    "load_torch_state_dict",
]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_WIDEN_TO_FLOAT32 = (
    "bfloat16",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
)


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A checkpoint's pickle names a global outside the state-dict allowlist (a
    ``ValueError`` too, as every other fault of a weights file)."""


class SeveralStateDictsWarning(UserWarning):
    """A checkpoint holds several state dicts equally near its top (a student and a teacher,
    a model and its moving average): the first was read, the warning names the others."""


# --------------------------------------------------------------------------------------------
# Harmless stand-ins for the torch globals a state dict pickle references.
#
# Besides calling globals (REDUCE), a pickle can mutate objects it holds (BUILD calls
# ``__setstate__`` or sets attributes). Every stand-in therefore refuses ``__setstate__``, so a
# crafted file cannot patch the shared stand-ins or the functions behind them.


class _StandIn:
    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise UnsafeCheckpointError(f"refusing to set the state of {self!r} (pickle BUILD)")


class _StorageType(_StandIn):
    """Stand-in for ``torch.FloatStorage`` & co.: carries the element dtype; not callable."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: np.dtype):
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<storage type {self.name}>"


class _Dtype(_StandIn):
    """Stand-in for ``torch.float32`` & co.; not callable."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: np.dtype):
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<dtype torch.{self.name}>"


class _Function(_StandIn):
    """Stand-in for an allowed torch function: calls our own harmless implementation."""

    __slots__ = ("_fn", "_name")

    def __init__(self, name: str, fn: Callable[..., Any]):
        self._name = name
        self._fn = fn

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __repr__(self) -> str:
        return f"<stand-in for {self._name}>"


class _Storage(_StandIn):
    """A storage named by a persistent id; its raw bytes are filled in once they are read."""

    __slots__ = ("big_endian", "data", "dtype", "key", "numel")

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None  # uint8, numel * dtype.itemsize bytes
        self.big_endian = False

    def __repr__(self) -> str:
        return f"<storage {self.key}>"


class _Tensor(_StandIn):
    """A tensor as the pickle describes it; turned into a numpy array after the storages load."""

    __slots__ = ("dtype", "offset", "shape", "storage", "strides")

    def __init__(self, storage: Any, offset: Any, shape: Any, strides: Any, dtype: Any = None):
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError(f"tensor storage is {type(storage).__name__}")
        if dtype is None:
            dtype = storage.dtype
        elif isinstance(dtype, _Dtype):
            dtype = dtype.dtype
        else:
            raise pickle.UnpicklingError(f"tensor dtype is {type(dtype).__name__}")
        if not isinstance(shape, tuple | list) or not isinstance(strides, tuple | list):
            raise pickle.UnpicklingError("tensor size and stride must be tuples")
        self.storage = storage
        self.dtype = dtype
        self.offset = _int(offset, "storage offset")
        self.shape = tuple(_int(s, "size") for s in shape)
        self.strides = tuple(_int(s, "stride") for s in strides)
        if len(self.shape) != len(self.strides):
            raise pickle.UnpicklingError("tensor size and stride have different lengths")

    def __repr__(self) -> str:
        return f"<tensor {self.shape} {self.dtype}>"


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise pickle.UnpicklingError(f"tensor {what} must be a non-negative int, got {value!r}")
    return value


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    del requires_grad, backward_hooks, metadata  # autograd/conj bits: irrelevant to the values
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage,
    storage_offset,
    size,
    stride,
    requires_grad,
    backward_hooks,
    dtype,
    metadata=None,
):
    del requires_grad, backward_hooks, metadata
    return _Tensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    del requires_grad, backward_hooks, state
    if not isinstance(data, _Tensor):
        raise pickle.UnpicklingError(f"parameter data is {type(data).__name__}")
    return data


def _size(sizes=()):
    return tuple(_int(s, "size") for s in sizes)


_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    # Untyped storages (torch >= 1.13, with ``_rebuild_tensor_v3``) are bytes.
    "UntypedStorage": np.dtype(np.uint8),
}

_TORCH_DTYPES = {
    "float32": np.float32,
    "float": np.float32,
    "float64": np.float64,
    "double": np.float64,
    "float16": np.float16,
    "half": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64,
    "long": np.int64,
    "int32": np.int32,
    "int": np.int32,
    "int16": np.int16,
    "short": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
    "complex64": np.complex64,
    "complex128": np.complex128,
}
_TORCH_DTYPES.update(
    {name: getattr(ml_dtypes, name) for name in _WIDEN_TO_FLOAT32 if hasattr(ml_dtypes, name)}
)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    functions = {
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch", "Size"): _size,
    }
    allowed: dict[tuple[str, str], Any] = {
        (module, name): _Function(f"{module}.{name}", fn)
        for (module, name), fn in functions.items()
    }
    # The C type is immutable, so BUILD cannot patch it; its instances are plain containers.
    allowed["collections", "OrderedDict"] = collections.OrderedDict
    for name, dtype in _STORAGE_DTYPES.items():
        stand_in = _StorageType(name, dtype)
        # Legacy checkpoints saved from a GPU name ``torch.cuda.FloatStorage``; newer torch
        # may spell untyped storages through ``torch.storage``.
        for module in ("torch", "torch.cuda", "torch.storage"):
            allowed[module, name] = stand_in
    for name, dtype in _TORCH_DTYPES.items():
        allowed["torch", name] = _Dtype(name, np.dtype(dtype))
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allowlisted globals, to stand-ins; refuses the rest."""

    def __init__(
        self,
        file: IO[bytes],
        *,
        source: str,
        persistent_load: Callable[[Any], Any] | None = None,
    ):
        super().__init__(file, encoding="utf-8")
        self._source = source
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[module, name]
        except (KeyError, TypeError):
            raise UnsafeCheckpointError(
                f"{self._source}: refusing to load global '{module}.{name}': a weights file "
                "may hold only tensors, numbers, strings and plain containers, since loading "
                "any other object runs its code. A checkpoint that keeps other objects beside "
                "the weights (training arguments, NumPy metrics, a whole pickled model) needs "
                "its weights saved alone, where torch is installed: torch.save(checkpoint"
                "['state_dict'], 'weights.pth') or torch.save(model.state_dict(), "
                "'weights.pth')"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise pickle.UnpicklingError(f"{self._source}: unexpected persistent id")
        return self._persistent(pid)


def _parse_storage_pid(pid: Any) -> tuple[_StorageType, str, int, Any]:
    """Split a ``('storage', type, key, location, numel[, view])`` persistent id."""
    if not isinstance(pid, tuple) or len(pid) not in (5, 6):
        raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
    typename, storage_type, key, _location, numel, *view = pid
    if isinstance(typename, bytes):
        typename = typename.decode("ascii")
    if isinstance(key, bytes):
        key = key.decode("ascii")
    if typename != "storage" or not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
    if not isinstance(key, str):
        raise pickle.UnpicklingError(f"storage key must be a string, got {key!r:.80}")
    return storage_type, key, _int(numel, "storage numel"), view[0] if view else None


class _Storages:
    """Registry of the storages a pickle references, keyed like torch's ``deserialized_objects``."""

    def __init__(self) -> None:
        self.roots: dict[str, _Storage] = {}
        self.views: list[tuple[_Storage, _Storage, int]] = []

    def __call__(self, pid: Any) -> _Storage:
        storage_type, key, numel, view = _parse_storage_pid(pid)
        root = self.roots.get(key)
        if root is None:
            root = self.roots[key] = _Storage(key, storage_type.dtype, numel)
        if view is None:
            return root
        # Pre-1.0 legacy files could pickle storage views: (view_key, offset, size) in elements.
        if not isinstance(view, tuple) or len(view) != 3:
            raise pickle.UnpicklingError(f"unsupported storage view {view!r:.80}")
        view_key, offset, size = view
        view_storage = _Storage(str(view_key), root.dtype, _int(size, "view size"))
        self.views.append((view_storage, root, _int(offset, "view offset")))
        return view_storage

    def resolve_views(self) -> None:
        for view, root, offset in self.views:
            start, stop = offset * root.dtype.itemsize, (offset + view.numel) * root.dtype.itemsize
            if root.data is None or stop > root.data.size:
                raise ValueError(f"storage view {view.key} lies outside storage {root.key}")
            view.data = root.data[start:stop]
            view.big_endian = root.big_endian


def _fill(storage: _Storage, raw: bytes, numel: int, *, big_endian: bool, what: str) -> None:
    nbytes = numel * storage.dtype.itemsize
    if len(raw) < nbytes:
        raise ValueError(f"{what}: storage holds {len(raw)} bytes, expected {nbytes}")
    storage.data = np.frombuffer(raw, dtype=np.uint8, count=nbytes)
    storage.big_endian = big_endian


def _to_numpy(tensor: _Tensor, what: str) -> np.ndarray:
    raw = tensor.storage.data
    if raw is None:
        raise ValueError(f"{what}: storage {tensor.storage.key} has no data")
    # The tensor's dtype, not the storage's: _rebuild_tensor_v3 reads untyped (byte) storages.
    itemsize = tensor.dtype.itemsize
    # ml_dtypes' types (bfloat16, float8) are gathered as their bits: as_strided does not
    # know all of them (float8_e5m2's type string, "<f1", is numpy's to parse).
    carrier = np.dtype(f"u{itemsize}") if tensor.dtype.name in _WIDEN_TO_FLOAT32 else tensor.dtype
    data = raw[: raw.size - raw.size % itemsize].view(
        carrier.newbyteorder(">" if tensor.storage.big_endian else "<")
    )
    shape, strides = tensor.shape, tensor.strides
    if 0 in shape:
        out = np.empty(shape, tensor.dtype)
    else:
        # Bounds check before as_strided, which would otherwise read arbitrary memory.
        last = tensor.offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
        if last >= data.size:
            raise ValueError(
                f"{what}: tensor of size {shape}, stride {strides}, offset {tensor.offset} "
                f"reads past its storage of {data.size} elements"
            )
        base = data[tensor.offset :]
        out = np.lib.stride_tricks.as_strided(
            base, shape=shape, strides=tuple(s * base.itemsize for s in strides), writeable=False
        ).astype(carrier, order="C")  # a C-contiguous copy in native byte order
        out = out.view(tensor.dtype)
    if out.dtype.name in _WIDEN_TO_FLOAT32:
        out = out.astype(np.float32)
    return out


def _materialize(obj: Any, what: str) -> Any:
    """Replace every :class:`_Tensor` in nested containers by its numpy array."""
    if isinstance(obj, _Tensor):
        return _to_numpy(obj, what)
    if isinstance(obj, Mapping):
        return {k: _materialize(v, what) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_materialize(v, what) for v in obj)
    return obj


def _find_state_dict(obj: Any, source: str) -> dict[str, np.ndarray]:
    """The first mapping (breadth first) whose values are all arrays; a
    :class:`SeveralStateDictsWarning` where others lie as near the top (``{"student": …,
    "teacher": …}``, ``{"model": …, "model_ema": …}``)."""
    queue: collections.deque[tuple[Any, str, int]] = collections.deque([(obj, "", 0)])
    nearest: Mapping | None = None  # the mapping with the most tensors, for the message
    most = 0
    found: list[tuple[int, str, Mapping]] = []
    while queue:
        node, where, depth = queue.popleft()
        if found and depth > found[0][0]:
            break  # every mapping as near the top as the first has been seen
        if isinstance(node, Mapping):
            values = list(node.values())
            tensors = sum(isinstance(v, np.ndarray) for v in values)
            if values and tensors == len(values):
                found.append((depth, where, node))
                continue
            if tensors > most:
                nearest, most = node, tensors
            queue.extend((v, f"{where}[{k!r}]", depth + 1) for k, v in node.items())
        elif isinstance(node, list | tuple):
            queue.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(node))
    if found:
        _, where, node = found[0]
        if len(found) > 1:
            others = ", ".join(w for _, w, _ in found[1:4]) + (" …" if len(found) > 4 else "")
            warnings.warn(
                f"{source}: holds {len(found)} state dicts as near the top; the weights are "
                f"read from the first, checkpoint{where}, not from {others}. To use another, "
                "save it on its own (in torch: torch.save(checkpoint[...], 'weights.pth')) or "
                "convert it with msde_jax.backbones.weight_files.save_variables.",
                SeveralStateDictsWarning,
                stacklevel=3,
            )
        return {str(k): v for k, v in node.items()}
    if nearest is not None:
        odd = [f"{k!r} ({type(v).__name__})" for k, v in nearest.items()]
        odd = [
            o for o, v in zip(odd, nearest.values(), strict=True) if not isinstance(v, np.ndarray)
        ]
        raise ValueError(
            f"{source}: no state dict: the mapping with the most tensors ({most}) also holds "
            f"values that are not tensors: {', '.join(odd[:5])}"
            + (f" (+{len(odd) - 5} more)" if len(odd) > 5 else "")
        )
    top = f" (top-level keys: {list(obj)[:10]})" if isinstance(obj, Mapping) else ""
    raise ValueError(f"{source}: no state dict (a mapping of names to tensors) found{top}")


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path}: zip file without a single data.pkl; not a torch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        big_endian = False
        if prefix + "byteorder" in names:
            order = archive.read(prefix + "byteorder").strip()
            if order not in (b"little", b"big"):
                raise ValueError(f"{path}: unknown byte order {order!r}")
            big_endian = order == b"big"
        storages = _Storages()
        unpickler = _RestrictedUnpickler(
            io.BytesIO(archive.read(pickles[0])), source=str(path), persistent_load=storages
        )
        result = unpickler.load()
        for key, storage in storages.roots.items():
            record = f"{prefix}data/{key}"
            if record not in names:
                raise ValueError(f"{path}: storage record {record} is missing")
            with archive.open(record) as fh:  # read no more than the storage needs
                raw = fh.read(storage.numel * storage.dtype.itemsize)
            _fill(
                storage,
                raw,
                storage.numel,
                big_endian=big_endian,
                what=f"{path}:{record}",
            )
    storages.resolve_views()
    return result


def _load_legacy(path: Path) -> Any:
    source = str(path)
    with open(path, "rb") as f:

        def plain_pickle() -> Any:
            return _RestrictedUnpickler(f, source=source).load()

        try:
            magic = plain_pickle()
        except UnsafeCheckpointError:
            raise
        except Exception as err:
            raise ValueError(
                f"{path} is not a torch checkpoint or safetensors file ({err})"
            ) from err
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"{path} is not a torch checkpoint (bad magic number)")
        protocol = plain_pickle()
        if protocol != _LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported legacy protocol version {protocol!r}")
        sys_info = plain_pickle()
        big_endian = isinstance(sys_info, dict) and sys_info.get("little_endian") is False
        storages = _Storages()
        result = _RestrictedUnpickler(f, source=source, persistent_load=storages).load()
        keys = plain_pickle()
        if not isinstance(keys, list):
            raise ValueError(f"{path}: malformed storage key list")
        for key in keys:
            key = key.decode("ascii") if isinstance(key, bytes) else str(key)
            storage = storages.roots.get(key)
            if storage is None:
                raise ValueError(f"{path}: storage {key} is not referenced by the pickle")
            header = f.read(8)
            if len(header) != 8:
                raise ValueError(f"{path}: truncated storage {key}")
            numel = int.from_bytes(header, "big" if big_endian else "little")
            nbytes = numel * storage.dtype.itemsize
            left = os.fstat(f.fileno()).st_size - f.tell()
            if nbytes > left:  # checked first: read(n) allocates n bytes before reading
                raise ValueError(
                    f"{path}: storage {key} claims {numel} elements ({nbytes} bytes), but the "
                    f"file holds {left} bytes after it; the file is damaged or was crafted."
                )
            _fill(
                storage,
                f.read(nbytes),
                numel,
                big_endian=big_endian,
                what=f"{path}:{key}",
            )
    storages.resolve_views()
    return result


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``torch.save`` checkpoint into numpy arrays, without importing torch.

    Reads the zip format (torch >= 1.6) and the legacy format. The pickle is unpickled with an
    allowlist: tensor rebuild functions, storage types, dtypes and ``collections.OrderedDict``
    resolve to harmless stand-ins; any other global (``os.system``, a model class, ...) raises
    :class:`UnsafeCheckpointError` before it is called, so a malicious file runs nothing.

    Checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``, training
    state with epochs and optimizers) are accepted: the result is the first mapping, searched
    breadth first from the top, whose values are all tensors. Where other such mappings lie as
    near the top (``{"student": ..., "teacher": ...}``, ``{"model": ..., "model_ema": ...}``),
    a :class:`SeveralStateDictsWarning` names the one read and the others.

    Args:
        path: A ``.pth`` / ``.pt`` / ``.bin`` file written by ``torch.save``.

    Returns:
        ``{name: array}`` in the file's order. Arrays keep the tensor's dtype, shape and values
        (strides and storage offsets are resolved, shared storages copied per tensor); 0-d
        tensors become 0-d arrays; ``bfloat16`` and float8 are widened to ``float32``.

    Raises:
        UnsafeCheckpointError: The pickle names a global outside the allowlist.
        ValueError: The file is not a readable torch checkpoint or holds no state dict.
    """
    path = Path(path)
    source = str(path)
    try:
        if zipfile.is_zipfile(path):
            obj = _load_zip(path)
        else:
            obj = _load_legacy(path)
        obj = _materialize(obj, source)
    except UnsafeCheckpointError:
        raise
    except (ValueError, OSError) as err:  # ours name the file; pickle's and zipfile's do not
        if source in str(err):
            raise
        raise ValueError(f"{path}: could not read torch checkpoint ({err!r})") from err
    except Exception as err:  # malformed pickles raise anything from EOFError to TypeError
        raise ValueError(f"{path}: could not read torch checkpoint ({err!r})") from err
    return _find_state_dict(obj, source)
