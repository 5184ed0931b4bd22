"""JAX's persistent compilation cache, on by default in a per-user folder.

Compiling dominates a short run (a fit, an evaluation): kept on disk, the compiled programs of
one process serve the next, and on a GPU XLA's autotuning results with them. At import,
:func:`enable_compilation_cache` points JAX's cache at ``$MSDE_JAX_CACHE/xla`` (default
``~/.cache/msde_jax/xla``) and caches every program, however short its compilation:

* ``MSDE_JAX_COMPILATION_CACHE=/some/folder`` moves it (a relative folder is taken from the
  working folder at import); ``MSDE_JAX_COMPILATION_CACHE=off`` (or ``0``, ``false``, ``no``,
  empty) leaves JAX's cache alone, and ``on`` (``1``, ``true``, ``yes``) is the default;
* a cache the user set up (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config.update("jax_compilation_cache_dir", ...)`` before importing msde_jax), or
  turned off (``JAX_ENABLE_COMPILATION_CACHE=false``), is kept as it is.

JAX reads an entry only under its key (a hash of the program, the backend, JAX's version and
flags), and an entry it cannot read is recompiled with a warning
(``tests/test_memory_bounds.py`` fills the folder with garbage). A valid program that someone
stored under another program's key would be run: keep the folder as private as your code.
Delete it to reclaim its space. The traced programs of the largest functions are kept beside
the compiled ones, in ``exported/`` (:mod:`msde_jax._exported`), under the same switch.
"""

import os
from pathlib import Path

import jax

from msde_jax._files import default_cache_dir

__all__ = [
    "COMPILATION_CACHE_ENV",
    "CompileCounter",
    "compilation_cache_dir",
    "enable_compilation_cache",
    "managed_cache_dir",
]

COMPILATION_CACHE_ENV = "MSDE_JAX_COMPILATION_CACHE"
_OFF = {"", "0", "off", "false", "no", "none"}
_ON = {"1", "on", "true", "yes"}  # the default folder, not a folder named "1"
_enabled: Path | None = None  # the folder enable_compilation_cache gave JAX


def compilation_cache_dir() -> Path | None:
    """The folder msde_jax would use for compiled programs, or ``None`` when turned off."""
    value = os.environ.get(COMPILATION_CACHE_ENV)
    if value is None or value.strip().lower() in _ON:
        return default_cache_dir() / "xla"
    if value.strip().lower() in _OFF:
        return None
    return Path(value.strip()).expanduser()  # a stray space is not a folder name


def enable_compilation_cache() -> Path | None:
    """Turn JAX's persistent compilation cache on in :func:`compilation_cache_dir`, unless it
    is turned off or the user configured one; returns the folder in use by msde_jax, or
    ``None`` when it left JAX's settings alone."""
    if (
        jax.config.jax_compilation_cache_dir is not None
        or os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or not jax.config.jax_enable_compilation_cache
    ):
        return None  # the user's own cache, or the user turned JAX's cache off
    folder = compilation_cache_dir()
    if folder is None:
        return None
    folder = folder.absolute()  # a relative folder: the one at import, whatever the cwd later
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # Every program: a run compiles dozens of sub-second programs that add up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    # With it, XLA's own caches (on a GPU: the autotuning results and compiled kernels).
    jax.config.update("jax_persistent_cache_enable_xla_caches", "all")
    global _enabled
    _enabled = folder
    return folder


def managed_cache_dir() -> Path | None:
    """The compilation cache folder when it is msde_jax's (:func:`enable_compilation_cache`
    set it up, and JAX still uses it and has not been turned off since), else ``None``."""
    if (
        _enabled is None
        or not jax.config.jax_enable_compilation_cache
        or jax.config.jax_compilation_cache_dir != str(_enabled)
    ):
        return None
    return _enabled


# jax.monitoring's events: every request to compile (a cache hit included), and the hits.
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


class CompileCounter:
    """Counts the XLA programs a block of code needs, and how many were really compiled.

    ``with CompileCounter() as count: ...`` then ``count.requested`` (programs built for this
    process, loaded from the persistent cache or not) and ``count.compiled`` (those XLA
    compiled: not found in the persistent cache). Programs already in the process's own
    in-memory caches are neither.
    """

    def __init__(self) -> None:
        self.requested = 0
        self.cache_hits = 0

    @property
    def compiled(self) -> int:
        return self.requested - self.cache_hits

    def _on_duration(self, event: str, duration: float, **kwargs: object) -> None:
        del duration, kwargs
        self.requested += event == _COMPILE_EVENT

    def _on_event(self, event: str, **kwargs: object) -> None:
        del kwargs
        self.cache_hits += event == _CACHE_HIT_EVENT

    def __enter__(self) -> "CompileCounter":
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)
        return self

    def __exit__(self, *exc: object) -> None:
        jax.monitoring.unregister_event_duration_listener(self._on_duration)
        jax.monitoring.unregister_event_listener(self._on_event)
