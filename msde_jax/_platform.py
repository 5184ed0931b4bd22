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
"""

import os
from typing import Any

import jax

__all__ = ["PATHS", "PATHS_ENV", "cpu_paths"]

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
