"""Which code paths msde_jax takes: the forms written for a CPU, or those for an accelerator.

A few computations have two forms that give the same numbers (up to float32 rounding) and
differ only in speed: depthwise and 1×1 convolutions written out as products on a CPU, XLA's
convolutions on an accelerator; neighbour searches in blocks sized for a CPU cache or for a
device's free memory; scoring chunks and default embedding batches of either size; cross-fit
folds padded to the whole fit's program on an accelerator; coreset searches one after another
or in step. :func:`cpu_paths` makes every such choice, from the platform of the device that
runs the work.

``MSDE_JAX_PATHS=accelerator`` (or ``cpu``) in the environment overrides that platform for
these choices only (memory is still budgeted where the arrays really live), read when a
program is traced: set it before the process starts. Its use is to run, and test, the
accelerator forms on a machine without one (``tests/test_accelerator_paths.py``), and the CPU
forms on an accelerator.

:func:`environment` records where a result was computed, since the forms and the machine's own
float rounding move the default detector's bank (README, "CPU forms and accelerator forms").
"""

import importlib.metadata
import os
import platform
from typing import Any

import jax

__all__ = ["PATHS", "PATHS_ENV", "TRACED_BY", "cpu_paths", "environment", "package_versions"]

PATHS_ENV = "MSDE_JAX_PATHS"
PATHS = ("cpu", "accelerator")


def cpu_paths(device: Any = None) -> bool:
    """Whether work on ``device`` (a ``jax.Device``; ``None``: the default device) takes the
    CPU forms: the device is a CPU, unless ``MSDE_JAX_PATHS`` says otherwise."""
    forced = os.environ.get(PATHS_ENV, "")
    if forced:
        if forced not in PATHS:
            raise ValueError(
                f"{PATHS_ENV} must be one of {PATHS} or unset, got {forced!r}: unset it to "
                "choose the code paths from the device."
            )
        return forced == "cpu"
    device = device if device is not None else jax.devices()[0]
    return device.platform == "cpu"


# The packages whose versions can change a traced program (beside msde_jax's own source).
TRACED_BY = ("jax", "jaxlib", "flax", "numpy")


def package_versions(*names: str) -> dict[str, str | None]:
    """``{name: installed version}`` of each distribution, ``None`` where it is not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cpu() -> dict[str, Any]:
    """The host CPU's model name and its widest vector extension (what XLA's CPU code uses, so
    its float rounding can differ between CPUs), from Linux's ``/proc/cpuinfo``; elsewhere
    ``platform.processor()`` and ``None``."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set((info.get("flags") or info.get("Features") or "").split())
    widest = next((x for x in ("avx512f", "avx2", "avx", "sve", "asimd") if x in flags), None)
    return {"cpu": info.get("model name") or platform.processor() or None, "vector": widest}


def environment() -> dict[str, Any]:
    """Where results are computed: the versions of Python, msde_jax, jax, jaxlib, flax and
    NumPy, the default device and how many there are, the code paths taken (``"cpu"`` or
    ``"accelerator"``) and the host's CPU model, widest vector extension and usable cores.
    JSON-friendly."""
    versions = {"python": platform.python_version(), **package_versions("msde-jax", *TRACED_BY)}
    device = jax.devices()[0]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count()
    return {
        "versions": versions,
        "device": f"{device.platform} ({device.device_kind})",
        "devices": jax.device_count(),
        "code_paths": "cpu" if cpu_paths() else "accelerator",
        "host": {"machine": platform.machine(), **_cpu(), "cores": cores},
    }
