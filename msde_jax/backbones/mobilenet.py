"""torchvision's MobileNetV2 (Sandler et al., 2018) in Flax linen, with a converter from
torchvision state dicts (``mobilenet_v2-b0353104.pth``, width multiplier 1.0).

It mirrors ``torchvision.models.mobilenet_v2``: a 3×3 stride-2 stem, seventeen inverted
residual blocks, a 1×1 head to 1280 channels, ReLU6 throughout (none after the linear
bottleneck projections), PyTorch's symmetric ``k // 2`` padding and batch norm with
epsilon 1e-5 and PyTorch momentum 0.1 (Flax 0.9). Inputs are RGB in [0, 1] normalised with the
ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).

Why linen: a network's variables are plain nested dicts, so a converted state dict *is* the
variables (no object to build and mutate), and ``module.apply(variables, x)`` is a pure
function that goes through ``jit``, ``vmap`` and ``pmap``/sharding with no state objects.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from msde_jax.backbones._base import BackboneOutput
from msde_jax.backbones._convert import (
    StateDict,
    batch_norm,
    classifier_head,
    conv_param,
)
from msde_jax.backbones._layers import InvertedResidual, PointwiseConv, batch_norm_layer

__all__ = ["MobileNetV2", "convert_mobilenet_v2", "tap_layers"]

# (expansion t, output channels c, repeats n, stride of the first repeat s): torchvision's
# inverted_residual_setting.
_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM = 32
_HEAD = 1280
_BN_EPS = 1e-5
_BN_MOMENTUM = 0.9  # Flax's momentum is PyTorch's 1 − 0.1
_DROPOUT = 0.2


def _block_configs() -> list[tuple[int, int, int, int]]:
    """The 17 blocks as (in_channels, out_channels, stride, expansion)."""
    configs, c_in = [], _STEM
    for expand, c_out, repeats, stride in _SETTING:
        for r in range(repeats):
            configs.append((c_in, c_out, stride if r == 0 else 1, expand))
            c_in = c_out
    return configs


def tap_layers() -> dict[str, tuple[int, int]]:
    """``{name: (stride, channels)}`` of :class:`MobileNetV2`'s taps, named as torchvision's
    ``features`` children: ``features.0`` the stem, ``features.{i}`` (1–17) the inverted
    residual blocks, ``features.18`` the 1×1 head (after batch norm and ReLU6)."""
    table, stride = {"features.0": (2, _STEM)}, 2
    for i, (_, c_out, s, _) in enumerate(_block_configs()):
        stride *= s
        table[f"features.{i + 1}"] = (stride, c_out)
    table[f"features.{len(table)}"] = (stride, _HEAD)
    return table


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width 1.0) on NHWC images.

    Args:
        num_classes: size of the ImageNet classifier (1000 for the released weights); 0 drops
            the classifier (``logits`` is then ``None``).
        dtype: computation dtype (parameters stay float32).

    Call ``module.apply(variables, x, train=False)`` with ``x`` of shape (n, h, w, 3), RGB in
    [0, 1] normalised with the ImageNet mean/std; 224×224 is the training resolution.
    ``train=True`` uses batch statistics (pass ``mutable=["batch_stats"]``) and dropout before
    the classifier (pass ``rngs={"dropout": key}``).

    Returns:
        :class:`BackboneOutput` with ``pooled`` (n, 1280), the global average of the head's
        ReLU6 output; ``stages`` five maps at strides 2, 4, 8, 16, 32 — the outputs of
        torchvision's ``features[1]``, ``[3]``, ``[6]``, ``[13]`` (16, 24, 32 and 96 channels)
        and ``[18]`` (the 1×1 head, 1280 channels, the map ``pooled`` averages); and ``logits``
        (n, num_classes) or ``None``; ``taps`` every child of torchvision's ``features`` by its
        name (:func:`tap_layers`), each (n, h/stride, w/stride, channels):

        ============================  ======  ========
        tap                           stride  channels
        ============================  ======  ========
        ``features.0`` (stem)         2       32
        ``features.1``                2       16
        ``features.2``–``.3``         4       24
        ``features.4``–``.6``         8       32
        ``features.7``–``.10``        16      64
        ``features.11``–``.13``       16      96
        ``features.14``–``.16``       32      160
        ``features.17``               32      320
        ``features.18`` (1×1 head)    32      1280
        ============================  ======  ========
    """

    num_classes: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> BackboneOutput:
        bn = batch_norm_layer(train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, dtype=self.dtype)
        x = nn.Conv(
            _STEM,
            (3, 3),
            strides=2,
            padding=((1, 1), (1, 1)),
            use_bias=False,
            dtype=self.dtype,
            name="stem_conv",
        )(x)
        x = jax.nn.relu6(bn(name="stem_bn")(x))
        taps = {"features.0": x}

        configs = _block_configs()
        stages = []
        for i, (c_in, c_out, stride, expand) in enumerate(configs):
            x = InvertedResidual(
                c_in,
                c_out,
                3,
                stride,
                expand,
                bn_momentum=_BN_MOMENTUM,
                bn_epsilon=_BN_EPS,
                dtype=self.dtype,
                name=f"block_{i}",
            )(x, train)
            taps[f"features.{i + 1}"] = x
            if i + 1 < len(configs) and configs[i + 1][2] != 1:
                stages.append(x)  # the last map before the next downsampling

        x = PointwiseConv(_HEAD, dtype=self.dtype, name="head_conv")(x)
        x = jax.nn.relu6(bn(name="head_bn")(x))
        taps[f"features.{len(configs) + 1}"] = x
        stages.append(x)
        pooled = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)  # summed in float32

        logits = None
        if self.num_classes > 0:
            h = nn.Dropout(_DROPOUT, deterministic=not train)(pooled)
            logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(h)
        return BackboneOutput(pooled=pooled, stages=tuple(stages), logits=logits, taps=taps)


def convert_mobilenet_v2(
    state_dict: Mapping[str, np.ndarray], *, num_classes: int = 1000
) -> dict[str, dict]:
    """Flax variables of :class:`MobileNetV2` from a torchvision ``mobilenet_v2`` state dict.

    Mapping (torch → flax): ``features.0.{0,1}`` → ``stem_conv``/``stem_bn``;
    ``features.{i+1}.conv`` → ``block_{i}``: with expansion ``conv.0.{0,1}`` →
    ``expand_conv``/``expand_bn``, ``conv.1.{0,1}`` → ``dw_conv``/``dw_bn``, ``conv.2``/``conv.3``
    → ``project_conv``/``project_bn``; without (block 0) ``conv.0.{0,1}`` → ``dw_*`` and
    ``conv.1``/``conv.2`` → ``project_*``; ``features.18.{0,1}`` → ``head_conv``/``head_bn``;
    ``classifier.1`` → ``classifier``.

    Args:
        state_dict: ``{name: array}`` as read from ``mobilenet_v2-b0353104.pth`` (e.g. by
            :func:`msde_jax.backbones.torch_pickle.load_torch_state_dict`).
        num_classes: as given to :class:`MobileNetV2`; 0 skips ``classifier.1.*``.

    Returns:
        ``{"params": ..., "batch_stats": ...}`` with the tree and shapes of
        ``MobileNetV2(num_classes).init(...)``, as float32 NumPy arrays.

    Raises:
        WeightMappingError: a key is missing, left over, or has the wrong shape.
    """
    sd = StateDict(state_dict, network="mobilenet_v2")
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}

    def conv(key: str, c_out: int, c_in: int, k: int) -> dict:
        return conv_param(sd, key, c_out, c_in, k)

    params["stem_conv"] = conv("features.0.0.weight", _STEM, 3, 3)
    params["stem_bn"], stats["stem_bn"] = batch_norm(sd, "features.0.1", _STEM)
    configs = _block_configs()
    for i, (c_in, c_out, _, expand) in enumerate(configs):
        t = f"features.{i + 1}.conv"
        hidden = c_in * expand
        p: dict[str, Any] = {}
        s: dict[str, Any] = {}
        j = 0
        if expand != 1:
            p["expand_conv"] = conv(f"{t}.0.0.weight", hidden, c_in, 1)
            p["expand_bn"], s["expand_bn"] = batch_norm(sd, f"{t}.0.1", hidden)
            j = 1
        p["dw_conv"] = conv(f"{t}.{j}.0.weight", hidden, 1, 3)
        p["dw_bn"], s["dw_bn"] = batch_norm(sd, f"{t}.{j}.1", hidden)
        p["project_conv"] = conv(f"{t}.{j + 1}.weight", c_out, hidden, 1)
        p["project_bn"], s["project_bn"] = batch_norm(sd, f"{t}.{j + 2}", c_out)
        params[f"block_{i}"], stats[f"block_{i}"] = p, s
    head = f"features.{len(configs) + 1}"
    params["head_conv"] = conv(f"{head}.0.weight", _HEAD, configs[-1][1], 1)
    params["head_bn"], stats["head_bn"] = batch_norm(sd, f"{head}.1", _HEAD)
    head = classifier_head(sd, "classifier.1", num_classes, _HEAD)
    if head is not None:
        params["classifier"] = head
    sd.finish()
    return {"params": params, "batch_stats": stats}
