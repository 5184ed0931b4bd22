"""Layers shared by the backbones."""

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from msde_jax._platform import cpu_paths


def depthwise_conv(
    x: jax.Array, kernel: jax.Array, stride: int, padding: tuple[tuple[int, int], ...]
) -> jax.Array:
    """Depthwise 2-D convolution of NHWC ``x`` with an HWIO kernel (k, k, 1, C).

    On CPUs XLA's grouped convolution (``feature_group_count = C``) is about 9× slower than the
    same sum written out as k² shifted, fused multiply-adds, so the CPU path uses the latter;
    accelerators keep the native grouped convolution. Both compute the same numbers.
    """
    if not cpu_paths():
        return lax.conv_general_dilated(
            x,
            kernel,
            (stride, stride),
            padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=x.shape[-1],
        )
    k = kernel.shape[0]
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    h_out = (xp.shape[1] - k) // stride + 1
    w_out = (xp.shape[2] - k) // stride + 1
    out = jnp.zeros((x.shape[0], h_out, w_out, x.shape[3]), x.dtype)
    for dy in range(k):
        for dx in range(k):
            window = xp[
                :,
                dy : dy + stride * (h_out - 1) + 1 : stride,
                dx : dx + stride * (w_out - 1) + 1 : stride,
                :,
            ]
            out = out + window * kernel[dy, dx, 0][None, None, None, :]
    return out


def batch_norm_layer(train: bool, *, momentum: float, epsilon: float, dtype: Any) -> Any:
    """``nn.BatchNorm`` with running statistics unless training (Flax's momentum is
    1 − PyTorch's). In training the batch variance is computed in two passes, as PyTorch does:
    the one-pass E[x²] − E[x]² cancels catastrophically in float32 for channels whose mean is
    large next to their spread, and then depends on how the batch is split over devices."""
    return partial(
        nn.BatchNorm,
        use_running_average=not train,
        use_fast_variance=False,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
    )


def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """1×1 convolution of NHWC ``x`` with an HWIO kernel (1, 1, C, D).

    On CPUs XLA's convolution is 1.4–2× slower than the same sum written as a product over
    the channels (EfficientNet-Lite0's 1×1 layers at batch 2, 2 cores), so the CPU path uses
    the latter; accelerators keep the native convolution. Both compute the same sums, up to
    float32 rounding (the order of the channel sum).
    """
    if not cpu_paths():
        return lax.conv_general_dilated(
            x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    return jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0])


class PointwiseConv(nn.Module):
    """A bias-free 1×1 convolution with the same parameter (``kernel`` (1, 1, C, D)) as
    ``nn.Conv(D, (1, 1), use_bias=False)``, so converters need not care which one a network
    uses (:func:`pointwise_conv`)."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (1, 1, x.shape[-1], self.features),
            jnp.float32,
        )
        return pointwise_conv(x.astype(self.dtype), kernel.astype(self.dtype))


class DepthwiseConv(nn.Module):
    """A bias-free depthwise convolution with the same parameter (``kernel`` (k, k, 1, C)) as
    ``nn.Conv(C, (k, k), feature_group_count=C, use_bias=False)``, so converters need not
    care which one a network uses."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, k, 1, self.features), jnp.float32
        )
        return depthwise_conv(
            x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding
        )


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF ``'SAME'`` padding (before, after) of one spatial axis: output size ⌈size/stride⌉
    (a stride-2 convolution on an even size pads one pixel more after than before)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class InvertedResidual(nn.Module):
    """The mobile inverted bottleneck of MobileNetV2 and EfficientNet-Lite (no squeeze-excite):
    [1×1 expand → batch norm → ReLU6] (when ``expand`` > 1) → k×k depthwise → batch norm →
    ReLU6 → 1×1 linear projection → batch norm, plus the input when the stride is 1 and the
    channels are kept.

    ``tf_padding`` pads the depthwise convolution TF-style ``'SAME'`` from the input's size
    (:func:`same_padding`; weights trained in TensorFlow), otherwise symmetrically by k // 2
    (PyTorch). The batch norms take ``bn_momentum`` (Flax's: 1 − PyTorch's) and
    ``bn_epsilon``. Its parameters are named ``expand_conv``/``expand_bn``,
    ``dw_conv``/``dw_bn`` and ``project_conv``/``project_bn``, whichever network it is in.
    """

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    expand: int
    bn_momentum: float
    bn_epsilon: float
    tf_padding: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = batch_norm_layer(
            train, momentum=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype
        )
        hidden = self.in_channels * self.expand
        y = x
        if self.expand != 1:
            y = PointwiseConv(hidden, dtype=self.dtype, name="expand_conv")(y)
            y = jax.nn.relu6(bn(name="expand_bn")(y))
        if self.tf_padding:
            pad = tuple(same_padding(s, self.kernel, self.stride) for s in y.shape[1:3])
        else:
            pad = ((self.kernel // 2,) * 2,) * 2
        y = DepthwiseConv(
            hidden, self.kernel, stride=self.stride, padding=pad, dtype=self.dtype, name="dw_conv"
        )(y)
        y = jax.nn.relu6(bn(name="dw_bn")(y))
        y = PointwiseConv(self.out_channels, dtype=self.dtype, name="project_conv")(y)
        y = bn(name="project_bn")(y)
        if self.stride == 1 and self.in_channels == self.out_channels:
            y = y + x
        return y
