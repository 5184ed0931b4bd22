"""The evaluation pipeline, written once: embed a labelled dataset, fit, score, compute metrics.

``msde-jax evaluate`` / ``msde-jax demo`` and ``benchmarks/bench_ssl.py`` all run it::

    from msde_jax import Embedder, MSDEDetector
    from msde_jax.evaluation import evaluate
    from msde_jax.io.datasets import load_dataset

    result = evaluate(load_dataset("pneumoniamnist"), Embedder(), MSDEDetector(), limit=100)
    result.metrics["auroc"], result.metrics["f1"]

The detector is fitted on the embedded ``train_normal`` images and scores the test images
(normals first, then abnormals) as one batch, which matters for the transductive mode. To
compare several detectors on one set of embeddings, embed once with :func:`embed_dataset` and
call :func:`evaluate_embeddings` per detector; :func:`evaluate` is the two in a row. Writing a
report from the result is the caller's choice (:func:`msde_jax.report.write_report`).
"""

import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from msde_jax.detector import MSDEDetector
from msde_jax.io.cache import SupportsEmbed, embed_cached
from msde_jax.io.datasets import Dataset
from msde_jax.metrics import evaluation_metrics

__all__ = [
    "EmbeddedDataset",
    "EvaluationResult",
    "embed",
    "embed_dataset",
    "evaluate",
    "evaluate_embeddings",
    "limit_dataset",
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
        embedder: the embedder that embedded them.
        train: (n, d) embeddings of ``dataset.train_normal``.
        test: (m, d) embeddings of ``dataset.test_items()``: the normals, then the abnormals.
        embed_s: wall time of both embedding calls, in seconds.
    """

    dataset: Dataset
    embedder: SupportsEmbed
    train: np.ndarray
    test: np.ndarray
    embed_s: float

    @property
    def labels(self) -> np.ndarray:
        """(m,) labels of ``test``: 0 normal, 1 abnormal."""
        return self.dataset.test_labels()


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """What one evaluation measured: scores, metrics, timings and the settings behind them.

    Attributes:
        dataset: the splits evaluated (after ``limit``); ``dataset.test_items()`` are the test
            images in the order of ``scores`` (e.g. for the report's image grid).
        detector: the fitted detector.
        labels: (m,) test labels, 0 normal, 1 abnormal.
        scores: (m,) anomaly scores of the test images, higher = more anomalous.
        threshold: the detector's threshold; ``score > threshold`` is predicted abnormal.
        metrics: :func:`msde_jax.metrics.evaluation_metrics` of labels, scores and threshold.
        timings: ``{"embed_s", "fit_s", "score_s"}`` wall times in seconds.
        config: what was run, JSON-friendly: dataset source, the three class sizes, the
            embedder's ``config()``, the detector's ``get_params()``, ``mode`` and
            ``test_mix`` (the share of abnormal test images, scored as one batch).
    """

    dataset: Dataset
    detector: MSDEDetector
    labels: np.ndarray
    scores: np.ndarray
    threshold: float
    metrics: dict[str, Any]
    timings: dict[str, float]
    config: dict[str, Any]


def limit_dataset(dataset: Dataset, *, limit: int | None = None) -> Dataset:
    """The dataset with at most ``limit`` images per class, each class checked to be non-empty.

    Args:
        dataset: a :class:`~msde_jax.io.datasets.Dataset`.
        limit: keep the first ``limit`` images of ``train_normal``, ``test_normal`` and
            ``test_abnormal`` each (``None``: all).

    Raises:
        ValueError: a class is empty (``"<name>: the test abnormal class is empty."``).
    """
    if limit is not None:
        dataset = dataclasses.replace(
            dataset, **{field: getattr(dataset, field)[:limit] for _, field in _SPLITS}
        )
    for what, field in _SPLITS:
        if not getattr(dataset, field):
            raise ValueError(f"{dataset.name}: the {what} class is empty.")
    return dataset


def embed(
    embedder: SupportsEmbed,
    items: Sequence[Any],
    *,
    cache_dir: str | os.PathLike | None = None,
    what: str = "input",
    progress: bool = True,
) -> np.ndarray:
    """Embeddings of ``items`` ((n, d), or (n, grid, grid, c) patch features), through the on-disk cache when ``cache_dir`` is given.

    Args:
        embedder: an :class:`~msde_jax.embedder.Embedder` or any object with ``config()`` and
            ``embed(items)`` (:class:`~msde_jax.io.cache.SupportsEmbed`).
        items: images (paths, PIL images or arrays).
        cache_dir: an embedding cache folder (:func:`msde_jax.io.cache.embed_cached`).
        what: what the images are, for messages (``"train normal"``).
        progress: print the cache summary and the embedding time on stderr.

    Raises:
        ValueError: ``items`` is empty (``"no images in <what>."``).
    """
    if len(items) == 0:
        raise ValueError(f"no images in {what}.")
    start = time.perf_counter()
    if cache_dir:
        out = embed_cached(embedder, items, cache_dir, progress=progress)
    else:
        out = embedder.embed(items)
    if progress:
        print(
            f"embedded {len(items)} {what} images in {time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )
    return out


def embed_dataset(
    dataset: Dataset,
    embedder: SupportsEmbed,
    *,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> EmbeddedDataset:
    """Embed a dataset's training normals and its test images (normals, then abnormals).

    Args:
        dataset: a :class:`~msde_jax.io.datasets.Dataset`.
        embedder: see :func:`embed`.
        limit: at most this many images per class (:func:`limit_dataset`).
        cache_dir: an embedding cache folder.
        progress: print what is embedded and how long it took on stderr.

    Raises:
        ValueError: a class is empty (checked before anything is embedded).
    """
    dataset = limit_dataset(dataset, limit=limit)
    start = time.perf_counter()
    train = embed(
        embedder, dataset.train_normal, cache_dir=cache_dir, what="train normal", progress=progress
    )
    test = embed(
        embedder, dataset.test_items(), cache_dir=cache_dir, what="test", progress=progress
    )
    return EmbeddedDataset(dataset, embedder, train, test, time.perf_counter() - start)


def evaluate_embeddings(
    embedded: EmbeddedDataset, detector: MSDEDetector, *, mode_label: str | None = None
) -> EvaluationResult:
    """Fit ``detector`` on the embedded training normals, score the test set, compute metrics.

    Args:
        embedded: from :func:`embed_dataset`.
        detector: an :class:`~msde_jax.detector.MSDEDetector` (fitted in place).
        mode_label: how ``config["mode"]`` names the detector's mode (default:
            ``detector.mode``), e.g. ``"paper preset (transductive)"``.
    """
    dataset = embedded.dataset
    timings = {"embed_s": embedded.embed_s}
    start = time.perf_counter()
    detector.fit(embedded.train)
    timings["fit_s"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = detector.score_samples(embedded.test)
    timings["score_s"] = time.perf_counter() - start

    labels = embedded.labels
    n_abnormal = len(dataset.test_abnormal)
    config = {
        "dataset": dataset.source,
        "train_normal": len(dataset.train_normal),
        "test_normal": len(dataset.test_normal),
        "test_abnormal": n_abnormal,
        "embedder": embedded.embedder.config(),
        "detector": detector.get_params(),
        "mode": f"{detector.mode}" if mode_label is None else mode_label,
        "test_mix": f"{n_abnormal / len(labels):.0%} abnormal, scored as one batch",
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
    )


def evaluate(
    dataset: Dataset,
    embedder: SupportsEmbed,
    detector: MSDEDetector,
    *,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    mode_label: str | None = None,
) -> EvaluationResult:
    """Embed, fit on the normal training images, score the test images, compute the metrics.

    :func:`embed_dataset` followed by :func:`evaluate_embeddings`; see those for the arguments.

    Raises:
        ValueError: a class is empty (checked before anything is embedded), or the detector
            rejects its parameters or the data.
    """
    embedded = embed_dataset(dataset, embedder, limit=limit, cache_dir=cache_dir, progress=progress)
    return evaluate_embeddings(embedded, detector, mode_label=mode_label)
