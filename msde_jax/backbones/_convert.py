"""Shared pieces for mapping PyTorch state dicts onto Flax variables.

Every converter reads keys through a :class:`StateDict`, which remembers what it handed out,
so a mismatch is reported once, with the missing and the unexpected keys named.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np

# ml_dtypes' floats (numpy kind "V"), which a state dict given in memory may hold.
_LOW_PRECISION = ("bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")


class WeightMappingError(KeyError, ValueError):
    """A state dict does not match the network: names the missing and unexpected keys, or a
    tensor of the wrong shape or with values no trained network has (a ``ValueError`` too, as
    every other fault of a weights file)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def _host_array(value: Any) -> np.ndarray:
    """A state dict's value as a NumPy array; a torch tensor's detached, and widened to float32
    where NumPy has no dtype of its own (bfloat16, float8)."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu()
        try:
            return value.numpy()
        except TypeError:
            return value.float().numpy()
    return np.asarray(value)


class StateDict:
    """Read-once view of a ``{name: array}`` state dict that reports what did not match."""

    def __init__(self, arrays: Mapping[str, Any], *, network: str):
        self._arrays = {k: _host_array(v) for k, v in arrays.items()}
        self._used: set[str] = set()
        self._missing: list[str] = []
        self.network = network

    def __contains__(self, key: str) -> bool:
        return key in self._arrays

    def take(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The array stored under ``key`` (float32), checked against ``shape`` when given."""
        if key not in self._arrays:
            self._missing.append(key)
            return np.zeros(shape or (), np.float32)
        self._used.add(key)
        value = self._arrays[key]
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise WeightMappingError(
                f"{self.network}: {key} has shape {tuple(value.shape)}, expected {tuple(shape)}."
            )
        if value.dtype.kind not in "biuf" and value.dtype.name not in _LOW_PRECISION:
            raise WeightMappingError(
                f"{self.network}: {key} is {value.dtype}, not real numbers; is this a weights file?"
            )
        value = value.astype(np.float32)
        if not np.isfinite(value).all():
            raise WeightMappingError(
                f"{self.network}: {key} holds NaN or infinite values (float32): the weights are "
                "damaged or diverged; use another weights file."
            )
        return value

    def skip(self, *keys: str) -> None:
        """Mark keys as deliberately unused (e.g. ``num_batches_tracked``)."""
        self._used.update(k for k in keys if k in self._arrays)

    def finish(self, *, ignore_suffixes: tuple[str, ...] = ("num_batches_tracked",)) -> None:
        """Raise :class:`WeightMappingError` unless every key matched exactly once."""
        unexpected = sorted(
            k for k in self._arrays if k not in self._used and not k.endswith(ignore_suffixes)
        )
        if self._missing or unexpected:
            parts = []
            if self._missing:
                parts.append(f"missing keys ({len(self._missing)}): {_short(self._missing)}")
            if unexpected:
                parts.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
            raise WeightMappingError(
                f"{self.network}: the state dict does not match the network; "
                + "; ".join(parts)
                + ". Is this the right architecture and layout for these weights?"
            )


def _short(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … (+{len(keys) - limit} more)" if len(keys) > limit else "")


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """torch Conv2d weight (O, I/groups, kH, kW) → Flax ``nn.Conv`` kernel (kH, kW, I/groups, O)."""
    return np.transpose(weight, (2, 3, 1, 0))


def linear_kernel(weight: np.ndarray) -> np.ndarray:
    """torch Linear weight (out, in) → Flax ``nn.Dense`` kernel (in, out)."""
    return np.transpose(weight)


def batch_norm(
    sd: StateDict, prefix: str, channels: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """torch BatchNorm2d ``prefix.{weight,bias,running_mean,running_var}`` → Flax
    ``nn.BatchNorm`` (params ``scale``/``bias``, batch_stats ``mean``/``var``), each checked to
    be ``(channels,)`` when given."""
    shape = None if channels is None else (channels,)

    def take(name: str) -> np.ndarray:
        return sd.take(f"{prefix}.{name}", shape)

    params = {"scale": take("weight"), "bias": take("bias")}
    stats = {"mean": take("running_mean"), "var": take("running_var")}
    sd.skip(f"{prefix}.num_batches_tracked")
    return params, stats


def conv_param(sd: StateDict, key: str, c_out: int, c_in: int, k: int) -> dict[str, np.ndarray]:
    """A bias-free torch Conv2d weight (checked to be (c_out, c_in, k, k)) as Flax params."""
    return {"kernel": conv_kernel(sd.take(key, (c_out, c_in, k, k)))}


def linear_param(sd: StateDict, prefix: str, n_out: int, n_in: int) -> dict[str, np.ndarray]:
    """A torch Linear ``prefix.{weight,bias}`` (checked to be (n_out, n_in)) as Flax params."""
    return {
        "kernel": linear_kernel(sd.take(f"{prefix}.weight", (n_out, n_in))),
        "bias": sd.take(f"{prefix}.bias", (n_out,)),
    }


def classifier_head(
    sd: StateDict, prefix: str, num_classes: int, n_in: int
) -> dict[str, np.ndarray] | None:
    """The ImageNet head ``prefix`` as Flax params, or ``None`` (its keys skipped) when the
    network is built without one (``num_classes=0``)."""
    if num_classes > 0:
        return linear_param(sd, prefix, num_classes, n_in)
    sd.skip(f"{prefix}.weight", f"{prefix}.bias")
    return None
