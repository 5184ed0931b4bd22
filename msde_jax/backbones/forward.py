"""The jitted forward pass of a backbone and its read-out, shared by every
:class:`~msde_jax.embedder.Embedder` that runs the same one."""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from msde_jax._exported import Exported
from msde_jax.backbones import taps as _taps
from msde_jax.backbones.registry import backbone_spec
from msde_jax.backbones.variables import variables_dtype

__all__ = ["compiled_forward"]


@functools.lru_cache(maxsize=8)
def compiled_forward(
    backbone: str,
    features: str,
    layers: tuple[str, ...] | None,
    grid: int,
    aggregate: int,
    devices: tuple[jax.Device, ...],
) -> tuple[Callable, Callable, Callable]:
    """``(network, readout, forward)``: the ``backbone``'s network, the read-out of the
    embedder's ``features`` from its output, and ``forward(variables, x)``, the two jitted as
    one program with its output sharded over ``devices`` along the batch, its trace kept on
    disk (:class:`~msde_jax._exported.Exported`).

    These are all the traced pass depends on besides its arguments (the weights are one; the
    backbones are the fixed ``BACKBONES``, so a name stands for one network), so
    embedders that agree on them share the jitted ``forward`` and every executable it
    compiled: a second embedder of a configuration in a process (a model loaded twice, a
    notebook cell run again) compiles nothing. The last 8 are kept.
    """
    spec = backbone_spec(backbone)
    mesh = Mesh(np.array(devices), ("data",))
    normalize, module = spec.normalize, spec.build(0)
    multiscale = features == "multiscale"

    def network(variables, x):
        return module.apply(variables, normalize(x).astype(variables_dtype(variables)))

    def readout(out):
        if layers is not None:
            maps = [out.taps[name] for name in layers]
            if features == "patches":
                return _taps.patch_features(maps, grid=grid, aggregate=aggregate)
            return _taps.pooled_layers(maps)
        if multiscale:
            feats = jnp.concatenate([jnp.mean(s, axis=(1, 2)) for s in out.stages], axis=-1)
        else:
            feats = out.pooled
        return feats.astype(jnp.float32)

    forward = Exported(
        jax.jit(
            lambda variables, x: readout(network(variables, x)),
            out_shardings=NamedSharding(mesh, PartitionSpec("data")),
        ),
        f"forward-{backbone}",
        static=(features, layers, grid, aggregate, tuple(d.id for d in devices)),
    )
    return network, readout, forward
