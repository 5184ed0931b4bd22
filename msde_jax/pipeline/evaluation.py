"""The evaluation pipeline, written once: embed a labelled dataset, fit, score, compute metrics.

``msde-jax evaluate`` / ``msde-jax demo`` and ``benchmarks/bench_ssl.py`` all run it::

    from msde_jax import Embedder, MSDEDetector
    from msde_jax.pipeline.evaluation import evaluate
    from msde_jax.io.datasets import load_dataset

    result = evaluate(load_dataset("pneumoniamnist"), Embedder(), MSDEDetector(), limit=100)
    result.metrics["auroc"], result.metrics["f1"]

The detector is fitted on the embedded ``train_normal`` images and scores the test images
(normals first, then abnormals) as one batch, which matters for the transductive mode. To
compare several detectors on one set of embeddings, embed once with :func:`embed_dataset` and
call :func:`evaluate_embeddings` per detector; :func:`evaluate` is the two in a row. Writing a
report from the result is the caller's choice (:func:`msde_jax.pipeline.report.write_report`).

Fused scores: give a mapping ``{name: embedder}`` and a
:class:`~msde_jax.detectors.fused.FusedDetector`
whose components have the same names; each split is embedded by each embedder and component
``name`` sees the features of embedder ``name``::

    embedders = {"pooled": Embedder(features="multiscale"), "patches": Embedder(features="patches")}
    detector = FusedDetector({"pooled": MSDEDetector(mode="none"), "patches": PatchBankDetector()})
    result = evaluate(dataset, embedders, detector)

Heatmaps: :func:`heatmaps` maps images through the embedder and a detector that scores patches
(images in, maps out).

Volumes: a folder dataset of NIfTI files or DICOM series
(:func:`~msde_jax.io.datasets.load_dataset`) holds their slices with ``Dataset.groups``; the
slices are fitted and scored like images (the slice-level metrics), and the result's
``volumes`` adds volume-level metrics: each test volume scored by
:func:`~msde_jax.pipeline.volumes.aggregate` of its slice scores, abnormal when it comes from
``test/abnormal``, thresholded at the training volumes' threshold
(:func:`~msde_jax.pipeline.volumes.volume_threshold`).
"""

import dataclasses
import numbers
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from msde_jax._memory import Lower, check_memory
from msde_jax._platform import environment
from msde_jax.core.anomaly_maps import maps_bytes
from msde_jax.core.metrics import evaluation_metrics
from msde_jax.detectors.base import no_maps_message
from msde_jax.detectors.fused import FusedDetector, SupportsDetect
from msde_jax.embedder import share_network
from msde_jax.io.cache import SupportsEmbed, embed_cached, image_hash
from msde_jax.io.datasets import Dataset
from msde_jax.io.inputs import expand_volumes
from msde_jax.pipeline.volumes import (
    VolumeScores,
    cross_fit_folds,
    fit_groups,
    volume_metrics,
    volume_scores,
    volume_threshold,
)

__all__ = [
    "EmbeddedDataset",
    "EvaluationResult",
    "TrainingCopiesWarning",
    "VolumeEvaluation",
    "check_heatmaps",
    "embed",
    "embed_dataset",
    "evaluate",
    "evaluate_embeddings",
    "heatmaps",
    "limit_dataset",
    "maps_embedder",
    "maps_threshold",
    "training_copies",
    "threshold_promise",
]

_SPLITS = (
    ("train normal", "train_normal"),
    ("test normal", "test_normal"),
    ("test abnormal", "test_abnormal"),
)


@dataclasses.dataclass(frozen=True)
class EmbeddedDataset:
    """A dataset's splits and their embeddings, as :func:`embed_dataset` returns them.

    Attributes:
        dataset: the splits that were embedded (after ``limit``).
        embedder: the embedder that embedded them, or the mapping ``{name: embedder}``.
        train: (n, d) embeddings of ``dataset.train_normal`` (or (n, grid, grid, c) patch
            features); with a mapping of embedders, ``{name: embeddings}`` keyed like it.
        test: (m, d) embeddings of ``dataset.test_items()``: the normals, then the abnormals;
            with a mapping of embedders, ``{name: embeddings}``.
        embed_s: wall time of all embedding calls, in seconds.
    """

    dataset: Dataset
    embedder: SupportsEmbed | Mapping[str, SupportsEmbed]
    train: np.ndarray | dict[str, np.ndarray]
    test: np.ndarray | dict[str, np.ndarray]
    embed_s: float

    @property
    def labels(self) -> np.ndarray:
        """(m,) labels of ``test``: 0 normal, 1 abnormal."""
        return self.dataset.test_labels()


class VolumeEvaluation(NamedTuple):
    """Volume-level results of an evaluation on volumes.

    Attributes:
        scores: the test volumes' scores (normal volumes, then abnormal ones).
        labels: (v,) 0 for a volume of ``test_normal``, 1 of ``test_abnormal``.
        threshold: the training volumes' threshold
            (:func:`~msde_jax.pipeline.volumes.volume_threshold`), or ``None`` when the training
            normals hold no volume or the detector's training scores are not out of fold.
        metrics: :func:`~msde_jax.pipeline.volumes.volume_metrics` of labels, scores, threshold.
    """

    scores: VolumeScores
    labels: np.ndarray
    threshold: float | None
    metrics: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """What one evaluation measured: scores, metrics, timings and the settings behind them.

    Attributes:
        dataset: the splits evaluated (after ``limit``); ``dataset.test_items()`` are the test
            images in the order of ``scores`` (e.g. for the report's image grid).
        detector: the fitted detector (a :class:`~msde_jax.detectors.fused.FusedDetector` with a
            mapping of embedders).
        labels: (m,) test labels, 0 normal, 1 abnormal.
        scores: (m,) anomaly scores of the test images, higher = more anomalous.
        threshold: the detector's threshold; ``score > threshold`` is predicted abnormal.
        metrics: :func:`msde_jax.core.metrics.evaluation_metrics` of labels, scores and threshold.
        timings: ``{"embed_s", "fit_s", "score_s"}`` wall times in seconds.
        config: what was run, JSON-friendly: dataset source, the three class sizes, the
            embedder's ``config()`` (``{name: config()}`` for a mapping of embedders), the
            detector's ``get_params()`` (for a fused detector its ``contamination``,
            ``calibration`` and ``{"components": {name: {"class", **get_params()}}}``),
            ``volumes`` (volumes per split) for a dataset of volumes, ``mode``, ``test_mix``
            (the share of abnormal test images, scored as one batch),
            ``test_copies_of_training`` (how many test images are copies of training images:
            :func:`training_copies`, with a :class:`TrainingCopiesWarning`) and ``environment``
            (versions, device, code paths and CPU: :func:`msde_jax._platform.environment`).
        volumes: the volume-level results (:class:`VolumeEvaluation`) when both test classes
            hold volumes, else ``None``.
    """

    dataset: Dataset
    detector: SupportsDetect
    labels: np.ndarray
    scores: np.ndarray
    threshold: float
    metrics: dict[str, Any]
    timings: dict[str, float]
    config: dict[str, Any]
    volumes: VolumeEvaluation | None = None


def limit_dataset(dataset: Dataset, *, limit: int | None = None) -> Dataset:
    """The dataset with at most ``limit`` inputs per class, each class checked to be non-empty.

    Args:
        dataset: a :class:`~msde_jax.io.datasets.Dataset`.
        limit: keep the first ``limit`` inputs of ``train_normal``, ``test_normal`` and
            ``test_abnormal`` each (``None``: all); an input is an image, or a volume with all
            its slices.

    Raises:
        ValueError: ``limit`` is not a positive integer, or a class is empty
            (``"<name>: the test abnormal class is empty."``).
    """
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1:
            raise ValueError(f"limit must be a positive number of images, got {limit!r}.")
        limit = int(limit)
        dataset = dataset.subset(
            {field: dataset.split_groups(field).first_inputs(limit) for _, field in _SPLITS}
        )
    for what, field in _SPLITS:
        if not getattr(dataset, field):
            raise ValueError(f"{dataset.name}: the {what} class is empty.")
    return dataset


def embed(
    embedder: SupportsEmbed | Mapping[str, SupportsEmbed],
    items: Sequence[Any],
    *,
    cache_dir: str | os.PathLike | None = None,
    what: str = "input",
    progress: bool = True,
) -> np.ndarray | dict[str, np.ndarray]:
    """Embeddings of ``items``: (n, d), or (n, grid, grid, c) patch features.

    They go through the on-disk cache when ``cache_dir`` is given.

    Args:
        embedder: an :class:`~msde_jax.embedder.Embedder` or any object with ``config()`` and
            ``embed(items)`` (:class:`~msde_jax.io.cache.SupportsEmbed`); or a mapping
            ``{name: embedder}`` (a :class:`~msde_jax.FusedDetector`'s), whose embedders of
            one network share its forward pass (:func:`~msde_jax.embedder.share_network`):
            the embeddings are then a dict keyed like it.
        items: images (paths, PIL images or arrays).
        cache_dir: an embedding cache folder (:func:`msde_jax.io.cache.embed_cached`); each
            embedder caches under its own config hash.
        what: what the images are, for messages (``"train normal"``).
        progress: print the cache summary and the embedding time on stderr.

    Raises:
        ValueError: ``items`` is empty (``"no images in <what>."``), or the mapping is empty.
    """
    if len(items) == 0:
        raise ValueError(f"no images in {what}.")
    if isinstance(embedder, Mapping):
        _check_embedders(embedder)
        kw = {"cache_dir": cache_dir, "progress": progress}
        shared = share_network(embedder)
        if cache_dir and any(isinstance(item, str | os.PathLike) for item in items):
            # The volumes read once: a shared forward pass is reused for the same slices only.
            items = expand_volumes(items).items
        return {name: embed(e, items, what=f"{what} ({name})", **kw) for name, e in shared.items()}
    start = time.perf_counter()
    if cache_dir:
        out = embed_cached(embedder, items, cache_dir, progress=progress)
    else:
        out = embedder.embed(items)
    if progress:
        print(
            f"embedded {len(out)} {what} images in {time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )
    return out


def _check_embedders(embedder: SupportsEmbed | Mapping[str, SupportsEmbed]) -> None:
    if isinstance(embedder, Mapping):
        if not embedder:
            raise ValueError("no embedders: the mapping of embedders is empty.")
        bad = [name for name in embedder if not isinstance(name, str)]
        if bad:
            raise ValueError(f"embedder names must be strings, got {bad!r}.")


def _check_pairing(
    embedder: SupportsEmbed | Mapping[str, SupportsEmbed], detector: SupportsDetect
) -> None:
    """A mapping of embedders goes with a FusedDetector of the same names, one embedder
    without; the detector fits a threshold (checked before any image is embedded)."""
    fused = isinstance(detector, FusedDetector)
    if not isinstance(embedder, Mapping):
        if fused:
            raise ValueError(
                "a FusedDetector needs one embedder per component: pass a mapping "
                f"{{name: embedder}} with the names {', '.join(map(repr, detector.components))}."
            )
    elif not fused:
        raise ValueError(
            "a mapping of embedders needs a FusedDetector with the same names, got "
            f"{type(detector).__name__}."
        )
    elif set(embedder) != set(detector.components):  # the order may differ: passed by name
        raise ValueError(
            f"the embedders are named {', '.join(map(repr, embedder))} but the FusedDetector's "
            f"components {', '.join(map(repr, detector.components))}: use the same names."
        )
    if getattr(detector, "threshold", None) == "none":
        raise ValueError(
            "an evaluation reports metrics at the detector's threshold, and threshold='none' "
            "fits none: use threshold='cross_fit' (the default) or 'chi2'. For the ranking "
            "alone, fit the detector, score the test images and use msde_jax.core.metrics."
            "roc_auc."
        )


class TrainingCopiesWarning(UserWarning):
    """Test images of an evaluation are copies of training images (:func:`training_copies`)."""


def training_copies(dataset: Dataset) -> np.ndarray:
    """Indices into ``dataset.test_items()`` of the test images whose content equals a
    training image's (the same file bytes, or the same array: :func:`~msde_jax.io.cache.
    image_hash`). A detector has seen those: their scores are low, and flatter the metrics of
    the normal class (or hide an abnormal one) — a split made from a folder with copies."""
    train = {image_hash(item) for item in dataset.train_normal}
    test = dataset.test_items()
    return np.array([i for i, item in enumerate(test) if image_hash(item) in train], np.int64)


def _detector_params(detector: SupportsDetect) -> dict[str, Any]:
    """The detector's parameters, JSON-friendly (a fused one's components by name)."""
    if isinstance(detector, FusedDetector):
        return {
            "contamination": detector.contamination,
            "calibration": detector.calibration,
            "components": {
                name: {"class": type(c).__name__, **_detector_params(c)}
                for name, c in dict(detector.components).items()
            },
        }
    return detector.get_params()


def _mode(detector: SupportsDetect) -> str:
    if isinstance(detector, FusedDetector):
        parts = (f"{name}: {_mode(c)}" for name, c in dict(detector.components).items())
        return f"fused ({', '.join(parts)})"
    return str(getattr(detector, "mode", type(detector).__name__))


def embed_dataset(
    dataset: Dataset,
    embedder: SupportsEmbed | Mapping[str, SupportsEmbed],
    *,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> EmbeddedDataset:
    """Embed a dataset's training normals and its test images (normals, then abnormals).

    Args:
        dataset: a :class:`~msde_jax.io.datasets.Dataset`.
        embedder: see :func:`embed`; or a mapping ``{name: embedder}``, each of which embeds
            both splits (``train`` and ``test`` are then dicts keyed like it).
        limit: at most this many images per class (:func:`limit_dataset`).
        cache_dir: an embedding cache folder; each embedder caches under its own config hash.
        progress: print what is embedded and how long it took on stderr.

    Raises:
        ValueError: a class is empty, or the mapping of embedders is empty (checked before
            anything is embedded).
    """
    _check_embedders(embedder)
    dataset = limit_dataset(dataset, limit=limit)
    start = time.perf_counter()

    test_items = dataset.test_items()

    # Embedders of one network (an ensemble's patch features, pooled layers and head) run its
    # forward pass once for all of them.
    kw = {"cache_dir": cache_dir, "progress": progress}
    train = embed(embedder, dataset.train_normal, what="train normal", **kw)
    test = embed(embedder, test_items, what="test", **kw)
    return EmbeddedDataset(dataset, embedder, train, test, time.perf_counter() - start)


def evaluate_embeddings(
    embedded: EmbeddedDataset, detector: SupportsDetect, *, mode_label: str | None = None
) -> EvaluationResult:
    """Fit ``detector`` on the embedded training normals, score the test set, compute metrics.

    Args:
        embedded: from :func:`embed_dataset`.
        detector: an :class:`~msde_jax.detectors.msde.MSDEDetector` or another detector facade
            (fitted in place); a :class:`~msde_jax.detectors.fused.FusedDetector` with the
            embedders' names when ``embedded`` comes from a mapping of embedders.
        mode_label: how ``config["mode"]`` names the detector's mode (default:
            ``detector.mode``; ``"fused (<name>: <mode>, …)"`` for a fused detector), e.g.
            ``"paper preset (transductive)"``.

    Raises:
        ValueError: a mapping of embedders without a FusedDetector of the same names, or the
            other way round; a detector with ``threshold="none"``.
    """
    _check_pairing(embedded.embedder, detector)
    dataset = embedded.dataset
    timings = {"embed_s": embedded.embed_s}
    start = time.perf_counter()
    # A volume's slices share a cross-fit fold, so the volume threshold is out of fold too.
    detector.fit(embedded.train, groups=fit_groups(detector, dataset.split_groups("train_normal")))
    timings["fit_s"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = detector.score_samples(embedded.test)
    timings["score_s"] = time.perf_counter() - start

    labels = embedded.labels
    n_abnormal = len(dataset.test_abnormal)
    if isinstance(embedded.embedder, Mapping):
        embedder_config = {name: e.config() for name, e in embedded.embedder.items()}
    else:
        embedder_config = embedded.embedder.config()
    config = {
        "dataset": dataset.source,
        "train_normal": len(dataset.train_normal),
        "test_normal": len(dataset.test_normal),
        "test_abnormal": n_abnormal,
        "embedder": embedder_config,
        "detector": _detector_params(detector),
        "mode": _mode(detector) if mode_label is None else mode_label,
        "test_mix": f"{n_abnormal / len(labels):.0%} abnormal, scored as one batch",
        "test_copies_of_training": int(training_copies(dataset).size),
        "environment": environment(),
    }
    if config["test_copies_of_training"]:
        warnings.warn(
            f"{config['test_copies_of_training']} of the {len(labels)} test images are copies "
            "of training images, which the detector has seen: the metrics count them (see "
            "msde_jax.pipeline.evaluation.training_copies); take them out of the test split "
            "for an honest measure.",
            TrainingCopiesWarning,
            stacklevel=2,
        )
    volumes = _volume_evaluation(dataset, detector, scores)
    if dataset.has_volumes:
        config["volumes"] = {
            split: len(dataset.split_groups(split).volumes) for _, split in _SPLITS
        }
    return EvaluationResult(
        dataset=dataset,
        detector=detector,
        labels=labels,
        scores=scores,
        threshold=detector.threshold_,
        metrics=evaluation_metrics(labels, scores, detector.threshold_),
        timings=timings,
        config=config,
        volumes=volumes,
    )


def _volume_evaluation(
    dataset: Dataset, detector: SupportsDetect, scores: np.ndarray
) -> VolumeEvaluation | None:
    """Volume scores, labels, threshold and metrics, when both test classes hold volumes."""
    normal = dataset.split_groups("test_normal")
    abnormal = dataset.split_groups("test_abnormal")
    if not (normal.has_volumes and abnormal.has_volumes):
        return None
    test = dataset.test_groups()
    vs = volume_scores(scores, test)
    labels = np.r_[
        np.zeros(len(normal.volumes), np.int64), np.ones(len(abnormal.volumes), np.int64)
    ]
    train = dataset.split_groups("train_normal")
    threshold = None
    if train.has_volumes and cross_fit_folds(detector) is not None:  # out-of-fold scores
        threshold = volume_threshold(detector.decision_scores_, train, detector.contamination)
    return VolumeEvaluation(vs, labels, threshold, volume_metrics(labels, vs.scores, threshold))


def evaluate(
    dataset: Dataset,
    embedder: SupportsEmbed | Mapping[str, SupportsEmbed],
    detector: SupportsDetect,
    *,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    mode_label: str | None = None,
) -> EvaluationResult:
    """Embed, fit on the normal training images, score the test images, compute the metrics.

    :func:`embed_dataset` followed by :func:`evaluate_embeddings`; see those for the arguments.

    Raises:
        ValueError: a class is empty or the embedders and the detector do not pair up (both
            checked before anything is embedded), or the detector rejects its parameters or
            the data.
    """
    _check_embedders(embedder)
    _check_pairing(embedder, detector)
    embedded = embed_dataset(dataset, embedder, limit=limit, cache_dir=cache_dir, progress=progress)
    if progress:  # a fit with its cross-fit folds can take a minute
        print(f"fitting and scoring {detector!r}", file=sys.stderr)
    return evaluate_embeddings(embedded, detector, mode_label=mode_label)


def heatmaps(
    embedder: Any,
    detector: SupportsDetect,
    items: Sequence[Any],
    *,
    cache_dir: str | os.PathLike | None = None,
    features: np.ndarray | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Images in, maps out: the images as the embedder sees them and the detector's maps.

    The items go through the embedder's one preprocessing path (``Embedder.preprocess``: read,
    resize to ``image_size``, RGB in [0, 1]) for the pictures and through :func:`embed` (or
    the ``features`` already computed from them) for the maps, so map and picture line up.

    Args:
        embedder: the :class:`~msde_jax.Embedder` the detector's features come from
            (``features="patches"``); for a :class:`~msde_jax.FusedDetector`, its mapping of
            embedders (the patch component's is used).
        detector: a fitted detector with maps (``has_maps``: :class:`~msde_jax.PatchBankDetector`,
            or a ``FusedDetector`` with one such component, whose maps these are).
        items: the images (paths, PIL images or arrays); a volume's path stands for its kept
            axial slices, as in :func:`embed` (their names: ``expand_volumes(items).names``,
            :func:`~msde_jax.io.inputs.expand_volumes`).
        cache_dir: embedding cache folder.
        features: the items' features, when already embedded.
        progress: print the embedding progress on stderr.

    Returns:
        ``(images, maps)``: (n, S, S, 3) float32 in [0, 1] and (n, S, S) maps in score units,
        S the embedder's ``image_size``.

    Raises:
        ValueError: the detector has no maps, or ``features`` are not one row per item (before
            anything is embedded).
    """
    if not getattr(detector, "has_maps", False):
        raise ValueError(no_maps_message(detector))
    if isinstance(features, Mapping):  # a FusedDetector's: its patch component's features
        features = features[detector.maps_component]
    if any(isinstance(item, str | os.PathLike) for item in items):  # read once, as embed does
        items = expand_volumes(list(items)).items
    if features is not None and len(features) != len(items):
        raise ValueError(f"features hold {len(features)} rows for {len(items)} items.")
    embedder = maps_embedder(embedder, detector)
    check_heatmaps(embedder.image_size, len(items))
    if features is None:
        features = embed(embedder, items, cache_dir=cache_dir, what="input", progress=progress)
    maps = detector.score_maps(features, size=embedder.image_size)
    images = np.stack(
        [embedder.preprocess(item, name=f"image {i}") for i, item in enumerate(items)]
    )
    return images.astype(np.float32, copy=False), maps


def maps_embedder(embedder: Any, detector: SupportsDetect) -> Any:
    """The embedder whose features give ``detector``'s maps: ``embedder`` itself, or from a
    :class:`~msde_jax.FusedDetector`'s mapping of embedders its patch component's."""
    return embedder[detector.maps_component] if isinstance(embedder, Mapping) else embedder


def maps_threshold(detector: SupportsDetect) -> float | None:
    """The threshold in the units of ``detector``'s maps where they are not its scores': a
    :class:`~msde_jax.FusedDetector`'s maps are its patch component's
    (``maps_component``), in that component's units, so its ``threshold_``; ``None`` for a
    detector whose maps are in its own image-score units (the patch bank)."""
    name = getattr(detector, "maps_component", None)
    if name is None:
        return None
    return float(dict(detector.components)[name].threshold_)


def check_heatmaps(size: int, n_images: int) -> None:
    """Refuse :func:`heatmaps` of ``n_images`` images of side ``size`` before anything is
    embedded or read, when what it holds at once exceeds the memory free: the pictures (the
    preprocessed images and their stack, two (n, size, size, 3) float32 copies), the maps
    returned ((n, size, size) float32) and the maps being drawn
    (:func:`~msde_jax.core.anomaly_maps.maps_bytes`).

    Raises:
        MemoryLimitError: a ``ValueError`` saying how far to lower the number of images or
            the embedder's ``image_size``.
    """
    pixels = n_images * size * size
    needs = {
        "pictures": 2 * pixels * 3 * 4,
        "maps": pixels * 4,
        "maps being drawn": maps_bytes(n_images, size),
    }
    step = f"heatmaps of {n_images} image{'s' * (n_images != 1)} at {size} × {size}"
    lower = [Lower("the number of images", n_images), Lower("image_size", size, 2, 16)]
    check_memory(step, needs, lower=lower)


def _binomial_quantile(q: float, n: int, p: float) -> float:
    """The ``q`` quantile (0 < q < 1) of Binomial(n, p): the smallest k with P(X ≤ k) ≥ q
    (``scipy.stats.binom.ppf``, but from ``scipy.special``, which imports in a fraction of
    ``scipy.stats``' time)."""
    from scipy.special import bdtr  # scipy ships with jax

    return float(np.argmax(bdtr(np.arange(n + 1), n, p) >= q))  # P(X ≤ n) = 1 ≥ q


def threshold_promise(
    fp: int, n_normal: int, contamination: float, rule: str = "cross_fit"
) -> dict[str, Any]:
    """Whether the false-positive rate on the test normals is what the threshold promised.

    A threshold fitted as the ``1 − contamination`` quantile of the training normals'
    out-of-fold scores (``rule="cross_fit"``), or of the χ² law of squared Mahalanobis
    distances under their Gaussian (``"chi2"``), promises that about ``contamination`` of *new
    normals from the same source* score above it. With ``n_normal`` test normals the number
    flagged is then about Binomial(n_normal, contamination): the promise holds when ``fp`` lies
    inside that law's central 95 % interval. Outside it, the test normals are not scored like
    the training normals (another site, scanner, protocol or preprocessing, or a differently
    curated split), which no threshold fitted on training normals alone can see.

    Returns:
        ``{"contamination", "false_positive_rate", "expected_interval": [lo, hi] (rates),
        "kept": bool, "text": one paragraph for the report}``.

    Raises:
        ValueError: ``rule`` is not ``"cross_fit"`` or ``"chi2"``, or ``n_normal`` < 1.
    """
    if rule not in ("cross_fit", "chi2"):
        raise ValueError(f"rule must be 'cross_fit' or 'chi2', got {rule!r}.")
    if n_normal < 1:
        raise ValueError(f"n_normal must be at least 1 (test normals), got {n_normal}.")
    lo, hi = (_binomial_quantile(q, n_normal, contamination) for q in (0.025, 0.975))
    rate = fp / n_normal
    kept = lo <= fp <= hi
    quantile = (
        "quantile of the training normals' out-of-fold scores"
        if rule == "cross_fit"
        else "quantile of the χ² law of squared Mahalanobis distances under the training "
        "normals' Gaussian (its square root)"
    )
    text = (
        f"The threshold is the {100 * (1 - contamination):.4g} % {quantile}, so about "
        f"{100 * contamination:.4g} % of new normals from the same source should score above "
        f"it. On these {n_normal} test normals {fp} did ({rate:.1%}); with {n_normal} normals, "
        f"{lo / n_normal:.1%}–{hi / n_normal:.1%} is expected 95 % of the time. "
    )
    if kept:
        text += "**Kept.**"
    else:
        direction = "higher" if fp > hi else "lower"
        text += (
            f"**Not kept**: the test normals score {direction} than the training normals do "
            "out of fold, so they are not scored like new normals from the training source "
            "(a different site, scanner, protocol or preprocessing, or a differently curated "
            "split). A threshold fitted on the training normals alone cannot see this; fit on "
            "normals from the test images' source, or set the threshold on a labelled sample of "
            "them."
        )
        if rule == "chi2":
            text += (
                " With threshold='chi2' it also happens when the Gaussian does not describe "
                "the normals' scores (the default, 'cross_fit', needs no such assumption)."
            )
    return {
        "contamination": contamination,
        "false_positive_rate": rate,
        "expected_interval": [lo / n_normal, hi / n_normal],
        "kept": bool(kept),
        "text": text,
    }
