"""Traced programs kept on disk beside the compiled ones, so a new process skips tracing.

JAX's persistent compilation cache (:mod:`msde_jax._compilation`) keeps the compiled
executables, but finds one only by its key, a hash of the *lowered* program: every process
still runs the Python function to trace it, and lowers the result, before it can look the
executable up. For a backbone or the synthetic-anomaly generator that is most of a second per
process, on a GPU as on a CPU. :class:`Exported` wraps a jitted function whose trace depends
only on its arguments' shapes and on a stated ``static`` key: on its first call with a new
signature it reads the program serialized by ``jax.export`` from a file (or traces, exports
and writes it), then calls it through ``jax.jit``, whose executable the compilation cache
serves.

A file is used only under its exact key, a hash of everything the trace depends on: the
function's name and ``static`` key, the arguments' tree, shapes, dtypes and shardings, the
devices and the code paths taken for them (:mod:`msde_jax._platform`), JAX's trace-time
configuration, the versions of jax, jaxlib, flax and numpy, and the source of msde_jax itself
(any edit to the package makes new keys). A file whose checksum does not match is traced again
and rewritten; a function that cannot be exported is traced and called as usual (and without
``flatbuffers``, the file format of ``jax.export``, every function is, with one warning per
process). The files live in ``exported/`` of the compilation cache folder and only while
msde_jax manages that cache (``MSDE_JAX_COMPILATION_CACHE=off`` or a cache folder of the user's
own turns this off too). Like the compilation cache, a valid program stored under another
program's key would be run: keep the folder as private as your code.
"""

import hashlib
import re
import warnings
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import jax
from jax import export

from msde_jax._compilation import managed_cache_dir
from msde_jax._files import atomic_write
from msde_jax._platform import TRACED_BY, cpu_paths, package_versions

try:
    from jax.core import Tracer as _Tracer
except ImportError:  # a JAX that no longer makes it public
    from jax._src.core import Tracer as _Tracer

__all__ = ["Exported", "exported_dir"]

_SOURCE_HASH: str | None = None
_WARNED = False  # that jax.export cannot write its files here


def _no_file_format(err: ImportError) -> None:
    """Warn, once per process, that no program can be kept on disk here."""
    global _WARNED
    if not _WARNED:
        _WARNED = True
        warnings.warn(
            f"msde_jax cannot keep traced programs on disk ({err}), so every new process "
            "traces them again: install flatbuffers (a dependency of msde_jax).",
            RuntimeWarning,
            stacklevel=4,
        )


def exported_dir() -> Path | None:
    """The folder of the exported programs, or ``None`` when msde_jax does not manage the
    compilation cache (turned off, or the user's own)."""
    folder = managed_cache_dir()
    return None if folder is None else folder / "exported"


def _source_hash() -> str:
    """sha256 of every module of msde_jax, by path and content (computed once per process)."""
    global _SOURCE_HASH
    if _SOURCE_HASH is None:
        root = Path(__file__).parent
        digest = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
        _SOURCE_HASH = digest.hexdigest()
    return _SOURCE_HASH


def _versions() -> tuple[str, ...]:
    return tuple(
        f"{name}=={version}" if version else f"{name} absent"
        for name, version in package_versions(*TRACED_BY).items()
    )


def _trace_context() -> str | None:
    """JAX's configuration that changes traces (x64, matmul precision, PRNG implementation,
    …), as ``jax.jit`` keys its own trace cache on it; ``None`` where this JAX does not say."""
    try:  # private: no public API names the trace-time settings
        from jax._src.config import trace_context

        context = repr(trace_context())
    except (ImportError, AttributeError, TypeError):
        return None
    # without the addresses of objects in it (the axis environment, empty outside a trace)
    return re.sub(r" at 0x[0-9a-fA-F]+", "", context)


def _setting() -> tuple[Any, ...]:
    """What a program found in memory depends on besides its arguments: JAX's trace-time
    settings (:func:`_trace_context`: x64 mode, default matmul precision, …), the forms traced
    and the folder of programs. Changed in a process, they find (or make) another program."""
    return _trace_context(), cpu_paths(), exported_dir()


def _signature(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The arguments' tree and each leaf's (shape, dtype, sharding, weak type): what a trace
    sees (a weakly typed float32 times a bfloat16 array is bfloat16, a float32 one float32)."""
    leaves, tree = jax.tree.flatten(args)
    return tree, tuple(
        (
            getattr(leaf, "shape", ()),  # a Python scalar: traced as a weakly typed scalar
            getattr(leaf, "dtype", type(leaf).__name__),
            getattr(leaf, "sharding", None),
            bool(getattr(getattr(leaf, "aval", leaf), "weak_type", type(leaf) in _PYTHON)),
        )
        for leaf in leaves
    )


_PYTHON = (bool, int, float, complex)  # scalars that JAX traces as weakly typed


class Exported:
    """``fun`` (a ``jax.jit``-ed function) with its traced program kept on disk per signature.

    Call it as ``fun``; :meth:`out_info` and :meth:`lower` stand for ``fun.trace(...).out_info``
    and ``fun.lower(...)``, and :meth:`function` gives the jitted function for one signature
    (a call finds it by the arguments' tree and avals first). Outside a managed compilation
    cache every call goes to ``fun`` itself.

    Args:
        fun: the jitted function: its trace may depend only on its arguments' tree, shapes,
            dtypes and shardings, on ``static``, and on the code of msde_jax.
        name: a name for its files.
        static: whatever else the function closes over that changes its trace (a
            configuration); hashed by its ``repr``.
    """

    def __init__(self, fun: Callable[..., Any], name: str, static: Hashable = ()) -> None:
        self.fun, self.name, self.static = fun, name, static
        self._calls: dict[tuple[Any, ...], Callable[..., Any]] = {}
        self._programs: dict[tuple[Any, ...], export.Exported | None] = {}

    def __call__(self, *args: Any) -> Any:
        return self._call(args)(*args)

    def out_info(self, *args: Any) -> Any:
        """The output's shapes and dtypes (``jax.ShapeDtypeStruct`` pytree) for ``args``
        (arrays or ``jax.ShapeDtypeStruct``), without tracing where the program is on disk."""
        program = self._program(args)
        if program is None:
            return self.fun.trace(*args).out_info
        return jax.tree.unflatten(
            program.out_tree,
            [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in program.out_avals],
        )

    def lower(self, *args: Any) -> Any:
        """``jax.jit``'s ``Lowered`` of the call for ``args``."""
        return self.function(*args).lower(*args)

    def function(self, *args: Any) -> Callable[..., Any]:
        """The jitted function that calls with arguments like ``args`` (arrays or
        ``jax.ShapeDtypeStruct``): for a loop over batches of one shape, found once."""
        return self._call(args)

    def _call(self, args: tuple[Any, ...]) -> Callable[..., Any]:
        if any(isinstance(leaf, _Tracer) for leaf in jax.tree.leaves(args)):
            return self.fun  # inside another trace: it inlines the function as it is
        signature = _signature(args)
        found = (signature, *_setting())  # as jax.jit: a new x64 mode or precision retraces
        if found not in self._calls:
            program = self._program(args, signature)
            self._calls[found] = (
                self.fun if program is None else _Guarded(jax.jit(program.call), self.fun)
            )
        return self._calls[found]

    def _program(
        self, args: tuple[Any, ...], signature: tuple[Any, ...] | None = None
    ) -> export.Exported | None:
        folder = exported_dir()
        if folder is None or _trace_context() is None:
            return None
        signature = _signature(args) if signature is None else signature
        found = (signature, *_setting())
        if found not in self._programs:
            self._programs[found] = self._load_or_export(folder, signature, args)
        return self._programs[found]

    def _key(self, signature: tuple[Any, ...]) -> str:
        devices = tuple((d.platform, d.device_kind) for d in jax.devices())
        parts = (
            self.name,
            repr(self.static),
            str(signature[0]),
            [
                (tuple(shape), str(dtype), repr(sharding), weak)
                for shape, dtype, sharding, weak in signature[1]
            ],
            devices,
            cpu_paths(),  # the forms traced (msde_jax._platform)
            _trace_context(),
            _versions(),
            _source_hash(),
        )
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:40]

    def _load_or_export(
        self, folder: Path, signature: tuple[Any, ...], args: tuple[Any, ...]
    ) -> export.Exported | None:
        path = folder / f"{self.name}-{self._key(signature)}.jaxexport"
        try:
            blob = path.read_bytes()
        except OSError:
            blob = b""
        digest, payload = blob[:32], blob[32:]
        if payload and hashlib.sha256(payload).digest() == digest:
            try:
                return export.deserialize(bytearray(payload))
            except Exception:  # written by a JAX that reads it differently: export anew
                pass
        try:
            program = export.export(self.fun)(*args)
        except Exception:  # not exportable (a host callback, …): the function is traced as
            return None  # usual, and raises there if the arguments are at fault
        try:
            payload = bytes(program.serialize())
        except ImportError as err:  # jax.export's file format needs flatbuffers
            _no_file_format(err)
            return None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, hashlib.sha256(payload).digest() + payload, fsync=False)
        except OSError:  # a read-only cache: this process still uses the program
            pass
        return program


class _Guarded:
    """The exported program's jitted call, falling back to the function itself (traced as
    usual) when its first call fails: a JAX that cannot run a program it deserialized (on an
    untested backend) then costs a trace, not the run. An error of the arguments is raised
    again by the function itself."""

    def __init__(self, exported: Callable[..., Any], fun: Callable[..., Any]) -> None:
        self.active, self.fun, self.checked = exported, fun, False

    def __call__(self, *args: Any) -> Any:
        if self.checked:
            return self.active(*args)
        try:
            out = self.active(*args)
        except Exception:
            self.active = self.fun
            out = self.fun(*args)
        self.checked = True
        return out

    def lower(self, *args: Any) -> Any:
        return self.active.lower(*args)
