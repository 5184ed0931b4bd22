"""ResNet-18/34/50 in torchvision's layout, as Flax linen modules, with a state-dict converter.

The networks mirror ``torchvision.models.resnet`` (v1.5: the stride of a bottleneck block sits on
its 3×3 convolution) so that ImageNet weights exported from torchvision load without
re-training, and give the same numbers: every padding is explicit and symmetric like torch's
(``SAME`` padding would pad stride-2 layers asymmetrically), the max-pool pads with −inf, and
batch norm uses torch's ε = 1e-5 and running statistics outside training.

Why linen rather than NNX: a linen module is a pure description; its variables are a plain
nested ``dict`` of arrays (``{"params": …, "batch_stats": …}``), which is exactly what a converted
state dict becomes, with no object graph to build or mutate. ``model.apply(variables, x)`` is a
pure function of its arguments, so it composes with ``jax.jit``, ``jax.vmap`` and ``jax.pmap``
and the variables can be ``device_put``, sharded or saved as flat arrays like any other pytree.

Inputs are NHWC float images, normalised as torchvision expects (ImageNet mean
(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) on [0, 1] pixels).
"""

from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from msde_jax.backbones._base import BackboneOutput
from msde_jax.backbones._convert import StateDict, batch_norm, classifier_head, conv_kernel
from msde_jax.backbones._layers import batch_norm_layer

__all__ = [
    "BlockKind",
    "ResNet",
    "convert_resnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "tap_layers",
]

_BN_EPS = 1e-5
_BN_MOMENTUM = 0.9  # Flax's momentum is PyTorch's 1 − 0.1

BlockKind = Literal["basic", "bottleneck"]

_EXPANSION = {"basic": 1, "bottleneck": 4}
_DEPTHS: dict[int, tuple[BlockKind, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}
_STEM = 64

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out", nonlinearity="relu").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class _BlockSpec(NamedTuple):
    stage: int  # 0..3 for layer1..layer4
    name: str  # Flax module name, e.g. "layer2_0" for torch's "layer2.0"
    torch: str  # torch prefix, e.g. "layer2.0"
    in_channels: int
    planes: int
    stride: int
    downsample: bool


def _block_specs(block: BlockKind, layers: tuple[int, ...]) -> Iterator[_BlockSpec]:
    """The residual blocks of a ResNet in order, as torchvision's ``_make_layer`` builds them."""
    if block not in _EXPANSION:
        raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}.")
    expansion = _EXPANSION[block]
    in_channels = _STEM
    for i, n_blocks in enumerate(layers):
        planes = _STEM * 2**i
        for j in range(n_blocks):
            stride = 2 if i > 0 and j == 0 else 1
            downsample = j == 0 and (stride != 1 or in_channels != planes * expansion)
            yield _BlockSpec(
                i, f"layer{i + 1}_{j}", f"layer{i + 1}.{j}", in_channels, planes, stride, downsample
            )
            in_channels = planes * expansion


def tap_layers(depth: int) -> dict[str, tuple[int, int]]:
    """``{name: (stride, channels)}`` of ResNet-``depth``'s taps, torchvision's ``layer1`` …
    ``layer4``: strides 4, 8, 16, 32 and 64e, 128e, 256e, 512e channels (e = 1 for ResNet-18/34,
    4 for ResNet-50)."""
    if depth not in _DEPTHS:
        raise ValueError(f"depth must be one of {sorted(_DEPTHS)}, got {depth}.")
    e = _EXPANSION[_DEPTHS[depth][0]]
    return {f"layer{i + 1}": (4 * 2**i, _STEM * 2**i * e) for i in range(4)}


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((k // 2, k // 2), (k // 2, k // 2))


class _Block(nn.Module):
    """torchvision's ``BasicBlock`` (two 3×3 convs) or ``Bottleneck`` (1×1, 3×3 strided, 1×1)."""

    kind: BlockKind
    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=_conv_init)
        norm = batch_norm_layer(train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, dtype=self.dtype)
        s = (self.stride, self.stride)
        if self.kind == "basic":
            y = conv(self.planes, (3, 3), strides=s, padding=_pad(3), name="conv1")(x)
            y = nn.relu(norm(name="bn1")(y))
            y = conv(self.planes, (3, 3), padding=_pad(3), name="conv2")(y)
            y = norm(name="bn2")(y)
            out_channels = self.planes
        else:
            out_channels = self.planes * _EXPANSION["bottleneck"]
            y = conv(self.planes, (1, 1), padding="VALID", name="conv1")(x)
            y = nn.relu(norm(name="bn1")(y))
            y = conv(self.planes, (3, 3), strides=s, padding=_pad(3), name="conv2")(y)
            y = nn.relu(norm(name="bn2")(y))
            y = conv(out_channels, (1, 1), padding="VALID", name="conv3")(y)
            y = norm(name="bn3")(y)
        if self.downsample:
            x = conv(out_channels, (1, 1), strides=s, padding="VALID", name="downsample_conv")(x)
            x = norm(name="downsample_bn")(x)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """A torchvision-layout ResNet (He et al., 2016; torchvision's v1.5 bottleneck).

    Attributes:
        block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50 and deeper).
        layers: number of residual blocks in each of the four stages.
        num_classes: size of the ``fc`` classifier; 0 builds the network without one.
        dtype: computation dtype (parameters stay float32; ``pooled`` is returned in float32).

    Variables: ``params`` and ``batch_stats``. Flax names mirror torch's with ``.`` → ``_`` for
    blocks (``layer2.0.conv1`` → ``layer2_0/conv1``) and ``downsample.{0,1}`` →
    ``downsample_{conv,bn}``. Call with ``mutable=["batch_stats"]`` when ``train=True``;
    the running variance then moves towards the biased batch variance, where torch uses the
    unbiased one (a factor m/(m−1) over m pixels, which only matters when fine-tuning).
    """

    block: BlockKind
    layers: tuple[int, ...]
    num_classes: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: ArrayLike, train: bool = False) -> BackboneOutput:
        """Run the network on a batch of images.

        Args:
            x: (n, h, w, 3) float images, ImageNet-normalised.
            train: use batch statistics (and update ``batch_stats``) instead of running ones.

        Returns:
            ``BackboneOutput`` with ``stages`` the outputs of layer1..layer4, of shapes
            (n, h/4, w/4, 64e), (n, h/8, w/8, 128e), (n, h/16, w/16, 256e), (n, h/32, w/32, 512e)
            with e = 1 (basic) or 4 (bottleneck), up to torch's rounding of odd sizes;
            ``pooled`` (n, 512e) the global average of layer4; ``logits`` (n, num_classes) or
            ``None``; ``taps`` the same four maps by torchvision's names, ``{"layer1": …,
            "layer2": …, "layer3": …, "layer4": …}`` (strides 4, 8, 16, 32; see
            :func:`tap_layers`). PatchCore reads ``layer2`` and ``layer3``.
        """
        x = jnp.asarray(x)
        x = nn.Conv(
            _STEM,
            (7, 7),
            strides=(2, 2),
            padding=_pad(7),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=_conv_init,
            name="conv1",
        )(x)
        x = batch_norm_layer(train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, dtype=self.dtype)(
            name="bn1"
        )(x)
        x = nn.relu(x)
        # flax pools pad with the reduction's identity (−inf for max), like torch's MaxPool2d.
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))

        stages = []
        for spec in _block_specs(self.block, tuple(self.layers)):
            if spec.stage > len(stages):
                stages.append(x)
            x = _Block(
                self.block,
                spec.planes,
                spec.stride,
                spec.downsample,
                dtype=self.dtype,
                name=spec.name,
            )(x, train)
        stages.append(x)
        taps = {f"layer{i + 1}": stage for i, stage in enumerate(stages)}

        pooled = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
        logits = None
        if self.num_classes > 0:
            logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(pooled)
        return BackboneOutput(pooled=pooled, stages=tuple(stages), logits=logits, taps=taps)


def resnet18(*, num_classes: int = 1000, dtype: Any = jnp.float32) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2), 512-d pooled features; taps ``layer1`` …
    ``layer4`` at strides 4, 8, 16, 32 with 64, 128, 256, 512 channels."""
    return ResNet("basic", _DEPTHS[18][1], num_classes=num_classes, dtype=dtype)


def resnet34(*, num_classes: int = 1000, dtype: Any = jnp.float32) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3), 512-d pooled features; taps ``layer1`` …
    ``layer4`` at strides 4, 8, 16, 32 with 64, 128, 256, 512 channels."""
    return ResNet("basic", _DEPTHS[34][1], num_classes=num_classes, dtype=dtype)


def resnet50(*, num_classes: int = 1000, dtype: Any = jnp.float32) -> ResNet:
    """ResNet-50 (v1.5): bottleneck blocks (3, 4, 6, 3), 2048-d pooled features; taps
    ``layer1`` … ``layer4`` at strides 4, 8, 16, 32 with 256, 512, 1024, 2048 channels."""
    return ResNet("bottleneck", _DEPTHS[50][1], num_classes=num_classes, dtype=dtype)


def _conv(sd: StateDict, key: str, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    return {"kernel": conv_kernel(sd.take(key, shape))}


def convert_resnet(
    state_dict: Mapping[str, Any], *, depth: int, num_classes: int = 1000
) -> dict[str, dict]:
    """Map a torchvision ResNet ``state_dict`` onto the variables of :class:`ResNet`.

    Conv weights (O, I, kH, kW) become kernels (kH, kW, I, O), linear weights are transposed,
    and BatchNorm ``weight/bias/running_mean/running_var`` become ``scale/bias`` params and
    ``mean/var`` batch stats; ``num_batches_tracked`` is ignored.

    Args:
        state_dict: ``{name: array}`` as ``torchvision.models.resnet{depth}().state_dict()``
            (numpy arrays, e.g. read from a ``.safetensors`` file; torch tensors also work).
        depth: 18, 34 or 50.
        num_classes: classifier size of the target network; with 0, ``fc.*`` is skipped.

    Returns:
        ``{"params": …, "batch_stats": …}`` with the tree of
        ``resnet{depth}(num_classes=num_classes).init(…)``, as arrays on the default device.

    Raises:
        WeightMappingError: a key is missing, unexpected, or has the wrong shape.
    """
    if depth not in _DEPTHS:
        raise ValueError(f"depth must be one of {sorted(_DEPTHS)}, got {depth}.")
    kind, layers = _DEPTHS[depth]
    expansion = _EXPANSION[kind]
    sd = StateDict(state_dict, network=f"resnet{depth}")
    params: dict[str, Any] = {"conv1": _conv(sd, "conv1.weight", (_STEM, 3, 7, 7))}
    stats: dict[str, Any] = {}
    params["bn1"], stats["bn1"] = batch_norm(sd, "bn1", _STEM)

    for spec in _block_specs(kind, layers):
        p, s, t = {}, {}, spec.torch
        if kind == "basic":
            convs = [(spec.planes, spec.in_channels, 3), (spec.planes, spec.planes, 3)]
        else:
            convs = [
                (spec.planes, spec.in_channels, 1),
                (spec.planes, spec.planes, 3),
                (spec.planes * expansion, spec.planes, 1),
            ]
        for k, (out_c, in_c, size) in enumerate(convs, start=1):
            p[f"conv{k}"] = _conv(sd, f"{t}.conv{k}.weight", (out_c, in_c, size, size))
            p[f"bn{k}"], s[f"bn{k}"] = batch_norm(sd, f"{t}.bn{k}", out_c)
        if spec.downsample:
            out_c = spec.planes * expansion
            p["downsample_conv"] = _conv(
                sd, f"{t}.downsample.0.weight", (out_c, spec.in_channels, 1, 1)
            )
            p["downsample_bn"], s["downsample_bn"] = batch_norm(sd, f"{t}.downsample.1", out_c)
        params[spec.name], stats[spec.name] = p, s

    features = _STEM * 2 ** (len(layers) - 1) * expansion
    head = classifier_head(sd, "fc", num_classes, features)
    if head is not None:
        params["fc"] = head
    sd.finish()
    return jax.device_put({"params": params, "batch_stats": stats})
