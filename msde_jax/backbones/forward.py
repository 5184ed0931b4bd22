"""The jitted forward pass of a backbone and its read-out, shared by every
:class:`~msde_jax.embedder.Embedder` that runs the same one."""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from msde_jax._exported import Exported
from msde_jax.backbones import taps as _taps
from msde_jax.backbones.registry import backbone_spec

__all__ = ["COMPUTE_DTYPES", "check_dtype", "compiled_forward"]


@functools.lru_cache(maxsize=8)
def compiled_forward(
    backbone: str,
    features: str,
    layers: tuple[str, ...] | None,
    grid: int,
    aggregate: int,
    devices: tuple[jax.Device, ...],
    dtype: str = "float32",
) -> tuple[Callable, Callable, Callable]:
    """``(network, readout, forward)``: the ``backbone``'s network, the read-out of the
    embedder's ``features`` from its output, and ``forward(variables, x)``, the two jitted as
    one program with its output sharded over ``devices`` along the batch, its trace kept on
    disk (:class:`~msde_jax._exported.Exported`). The network computes in ``dtype`` (its
    convolutions, matrix products and activations; float32 variables are cast as they are
    used) and the read-out is float32.

    These are all the traced pass depends on besides its arguments (the weights are one; the
    backbones are the fixed ``BACKBONES``, so a name stands for one network), so
    embedders that agree on them share the jitted ``forward`` and every executable it
    compiled: a second embedder of a configuration in a process (a model loaded twice, a
    notebook cell run again) compiles nothing. The last 8 are kept.
    """
    spec = backbone_spec(backbone)
    mesh = Mesh(np.array(devices), ("data",))
    normalize, module = spec.normalize, spec.build(0).clone(dtype=jnp.dtype(dtype))
    multiscale = features == "multiscale"

    def network(variables, x):
        return module.apply(variables, normalize(x).astype(dtype))

    def readout(out):
        if layers is not None:
            maps = [out.taps[name] for name in layers]
            if features == "patches":
                return _taps.patch_features(maps, grid=grid, aggregate=aggregate)
            return _taps.pooled_layers(maps)
        if multiscale:
            means = [jnp.mean(s, axis=(1, 2), dtype=jnp.float32) for s in out.stages]
            feats = jnp.concatenate(means, axis=-1)
        else:
            feats = out.pooled
        return feats.astype(jnp.float32)

    forward = Exported(
        jax.jit(
            lambda variables, x: readout(network(variables, x)),
            out_shardings=NamedSharding(mesh, PartitionSpec("data")),
        ),
        f"forward-{backbone}",
        static=(features, layers, grid, aggregate, tuple(d.id for d in devices), dtype),
    )
    return network, readout, forward


COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def check_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a NumPy dtype, if it is one of :data:`COMPUTE_DTYPES`."""
    try:
        checked = jnp.dtype(dtype)
    except TypeError:
        checked = None
    if checked is None or checked.name not in COMPUTE_DTYPES:
        given = repr(dtype) if checked is None else checked.name
        raise ValueError(f"dtype must be one of {', '.join(COMPUTE_DTYPES)}; got {given}.")
    return checked
