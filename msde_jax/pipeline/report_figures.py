"""The figures of an evaluation report: ROC and precision-recall curves, score histograms, the
grid of the most and least anomalous test images and their heatmap overlays.

Each ``plot_*`` draws one PNG from test labels, scores and the metrics of
:func:`msde_jax.core.metrics.evaluation_metrics`, on a ``matplotlib.figure.Figure`` with the
Agg canvas (no pyplot, no global state); :mod:`msde_jax.pipeline.report` writes them with the
Markdown and HTML pages.
"""

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jax.typing import ArrayLike

from msde_jax._files import shown
from msde_jax.core.metrics import precision_recall_curve, roc_curve
from msde_jax.io.images import to_float

__all__ = [
    "GRID_PER_ROW",
    "MATPLOTLIB_MISSING",
    "OVERLAYS_PER_ROW",
    "fmt",
    "literal",
    "missing_heatmaps",
    "overlay_indices",
    "plot_grid",
    "plot_histogram",
    "plot_overlays",
    "plot_pr",
    "plot_roc",
    "ranked",
    "require_matplotlib",
]

MATPLOTLIB_MISSING = (
    "the report needs matplotlib, a dependency of msde-jax that is missing or broken here: "
    "pip install matplotlib"
)

OVERLAYS_PER_ROW = 4

# Shared colours: the histogram bars and the grid titles use the same ones for the two classes.
_NORMAL_COLOR = "tab:blue"
_ABNORMAL_COLOR = "tab:red"
_THRESHOLD_COLOR = "black"
_DPI = 120
GRID_PER_ROW = 8
# Grid tiles larger than this (pixels per side) are subsampled before drawing.
_GRID_MAX_SIDE = 512
# Image axes are drawn without their axis; made without ticks too, the layout does not measure
# them (pixel for pixel the same figures, drawn in about half the time).
_NO_TICKS = {"xticks": [], "yticks": []}


# --------------------------------------------------------------------------------------------
# Figures


def require_matplotlib():
    """``(Figure, FigureCanvasAgg)``, or an ImportError that says how to install matplotlib.

    Callers that compute for a while before writing a report (``msde-jax evaluate``) call it
    first, so that a broken install refuses up front.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(MATPLOTLIB_MISSING) from err
    return Figure, FigureCanvasAgg


def _new_figure(size: tuple[float, float]):
    """A matplotlib Figure on an Agg canvas (no pyplot, no global state)."""
    Figure, FigureCanvasAgg = require_matplotlib()
    fig = Figure(figsize=size, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    # zlib level 3 instead of Pillow's 6: as small for these figures, encoded 2-3x faster.
    fig.savefig(path, dpi=_DPI, facecolor="white", pil_kwargs={"compress_level": 3})
    fig.clear()


def fmt(x: float) -> str:
    return f"{x:.4g}"


def plot_roc(path: Path, labels, scores, metrics, title: str) -> None:
    fpr, tpr, _ = roc_curve(labels, scores)
    fig = _new_figure((5.2, 5.0))
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, color="tab:purple", lw=2, label=f"ROC (AUROC = {metrics['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="chance (AUROC = 0.5)")
    ax.plot(
        metrics["false_positive_rate"],
        metrics["recall"],
        "o",
        color=_THRESHOLD_COLOR,
        ms=8,
        label=(
            f"threshold {fmt(metrics['threshold'])}: "
            f"FPR {metrics['false_positive_rate']:.2f}, TPR {metrics['recall']:.2f}"
        ),
    )
    ax.set(
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
        xlabel="false positive rate (1 - specificity)",
        ylabel="true positive rate (sensitivity)",
        title=textwrap.fill(f"{title}: ROC curve", 55),
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    _save(fig, path)


def plot_pr(path: Path, labels, scores, metrics, title: str) -> None:
    precision, recall, _ = precision_recall_curve(labels, scores)
    prevalence = metrics["n_abnormal"] / (metrics["n_abnormal"] + metrics["n_normal"])
    fig = _new_figure((5.2, 5.0))
    ax = fig.add_subplot()
    ax.plot(
        recall,
        precision,
        drawstyle="steps-post",
        color="tab:green",
        lw=2,
        label=f"PR (AP = {metrics['average_precision']:.3f})",
    )
    ax.axhline(
        prevalence, color="gray", ls="--", lw=1, label=f"prevalence baseline = {prevalence:.2f}"
    )
    ax.plot(
        metrics["recall"],
        metrics["precision"],
        "o",
        color=_THRESHOLD_COLOR,
        ms=8,
        label=(
            f"threshold {fmt(metrics['threshold'])}: "
            f"recall {metrics['recall']:.2f}, precision {metrics['precision']:.2f}"
        ),
    )
    ax.set(
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.05),
        xlabel="recall (sensitivity)",
        ylabel="precision",
        title=textwrap.fill(f"{title}: precision-recall curve", 55),
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    _save(fig, path)


def plot_histogram(path: Path, labels, scores, metrics, title: str) -> None:
    threshold = metrics["threshold"]
    span = np.r_[scores, threshold] if np.isfinite(threshold) else scores
    # Distances are often heavy-tailed: a few far outliers would squeeze every other image into
    # one or two linear bins, so such scores get logarithmic bins and axis.
    log_axis = bool(span.min() > 0 and span.max() > 20 * np.median(span))
    if log_axis:
        bins = np.geomspace(span.min(), span.max(), 41)
    else:
        bins = np.histogram_bin_edges(span, bins="auto")
        if bins.size > 61:  # "auto" can give hundreds of bins for large sets
            bins = np.histogram_bin_edges(span, bins=60)
    fig = _new_figure((7.0, 4.2))
    ax = fig.add_subplot()
    if log_axis:
        ax.set_xscale("log")
    for mask, name, color in (
        (~labels, "normal", _NORMAL_COLOR),
        (labels, "abnormal", _ABNORMAL_COLOR),
    ):
        ax.hist(
            scores[mask], bins=bins, color=color, alpha=0.45, label=f"{name} (n = {mask.sum()})"
        )
        ax.hist(scores[mask], bins=bins, color=color, histtype="step", lw=1.5)
    if np.isfinite(threshold):
        ax.axvline(
            threshold,
            color=_THRESHOLD_COLOR,
            ls="--",
            lw=1.8,
            label=f"threshold = {fmt(threshold)} (score > threshold: abnormal)",
        )
    xlabel = "anomaly score (log scale)" if log_axis else "anomaly score"
    ax.set(
        xlabel=xlabel, ylabel="number of test images", title=textwrap.fill(f"{title}: scores", 75)
    )
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="best", fontsize=9)
    _save(fig, path)


def literal(text: Any) -> str:
    """``text`` as matplotlib draws it literally: a ``$`` in a file or dataset name would
    otherwise start math notation (a wrong drawing, or an error when the figure is saved);
    a name's bytes that are not UTF-8 as U+FFFD (:func:`~msde_jax._files.shown`)."""
    return shown(text).replace("$", r"\$")


def _display_name(item: Any, index: int, names: Sequence[str] | None) -> str:
    if names is not None:
        name = str(names[index])
    elif isinstance(item, str | os.PathLike):
        name = Path(item).name
    else:
        name = f"#{index}"
    width = 22  # characters per title line at the tile's width
    if len(name) > 2 * width:
        name = name[: width - 2] + "..." + name[-(width - 1) :]
    return "\n".join(literal(name[i : i + width]) for i in range(0, len(name), width))


def plot_grid(path: Path, labels, scores, images, names, metrics, title: str) -> None:
    most, least = ranked(scores, labels, GRID_PER_ROW)
    rows = (("most anomalous (highest scores)", most), ("least anomalous (lowest scores)", least))
    fig = _new_figure((1.7 * GRID_PER_ROW, 2 * 2.45 + 0.5))
    fig.suptitle(
        f"{title}: test images by score (threshold {fmt(metrics['threshold'])}; title colour = "
        "true label, blue normal, red abnormal)",
        fontsize=11,
    )
    subfigs = fig.subfigures(2, 1)
    for subfig, (row_title, indices) in zip(subfigs, rows, strict=True):
        subfig.suptitle(row_title, fontsize=11, fontweight="bold")
        axes = subfig.subplots(1, GRID_PER_ROW, subplot_kw=_NO_TICKS)
        for ax in axes:
            ax.set_axis_off()
        for ax, i in zip(axes, indices, strict=False):
            name = _display_name(images[i], int(i), names)
            img = to_float(images[i], name=f"image {i}" if names is None else str(names[i]))
            step = max(1, math.ceil(max(img.shape[:2]) / _GRID_MAX_SIDE))
            img = img[::step, ::step]
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            truth = "abnormal" if labels[i] else "normal"
            predicted = scores[i] > metrics["threshold"]
            flag = " (missed)" if labels[i] and not predicted else ""
            flag = " (false alarm)" if predicted and not labels[i] else flag
            ax.set_title(
                f"{name}\nscore {fmt(scores[i])}\n{truth}{flag}",
                fontsize=8,
                color=_ABNORMAL_COLOR if labels[i] else _NORMAL_COLOR,
            )
    _save(fig, path)


def ranked(
    scores: ArrayLike, labels: ArrayLike | None, per_row: int
) -> tuple[np.ndarray, np.ndarray]:
    """(most, least): the test indices of the ``per_row`` highest scores and of the ``per_row``
    lowest, fewer when there are fewer than ``2 · per_row`` images, never one image in both.

    Ties are broken against the detector where ``labels`` are given: normal images first among
    the highest scores, abnormal first among the lowest, so that a detector giving many images
    one score does not look as if it separated them (by position, the test normals that come
    first would fill the bottom row)."""
    scores = np.asarray(scores, np.float64)
    k = min(per_row, scores.size // 2)
    abnormal = np.zeros(scores.size) if labels is None else (np.asarray(labels) != 0) * 1.0
    most = np.lexsort((abnormal, -scores))[:k]
    rest = np.lexsort((-abnormal, scores))
    least = rest[~np.isin(rest, most)][:k]
    return most.astype(int), least.astype(int)


def overlay_indices(
    scores: ArrayLike, per_row: int = OVERLAYS_PER_ROW, *, labels: ArrayLike | None = None
) -> np.ndarray:
    """Test indices the overlay figure shows: the ``per_row`` highest scores, then the
    ``per_row`` lowest (fewer when there are fewer than ``2 · per_row`` images), ties broken
    as :func:`ranked` does with ``labels`` (give the same ``labels`` as the report)."""
    return np.concatenate(ranked(scores, labels, per_row))


def missing_heatmaps(indices: np.ndarray, heatmaps: Mapping[int, Any]) -> None:
    """Refuse ``heatmaps`` without one of the test ``indices`` the overlays show."""
    missing = [int(i) for i in indices if int(i) not in heatmaps]
    if missing:
        raise ValueError(
            "heatmaps must hold the test images overlay_indices(scores, labels=labels) picks; "
            f"missing {missing[:8]}."
        )


def plot_overlays(
    path: Path, labels, scores, heatmaps, metrics, title: str, maps_threshold: float | None
) -> None:
    from msde_jax.pipeline.heatmaps import color_bar_line, color_range, draw_overlay

    idx = overlay_indices(scores, labels=labels)
    missing_heatmaps(idx, heatmaps)
    k = idx.size // 2
    maps = np.stack([heatmaps[int(i)][1] for i in idx])
    line, units = color_bar_line(metrics["threshold"], maps_threshold)
    vmin, vmax = color_range(maps, line)
    fig = _new_figure((2.6 * k + 1.2, 2 * 2.9 + 0.6))
    fig.suptitle(
        f"{title}: where the score comes from (patch scores, one colour scale; threshold "
        f"{fmt(line)}, {units})",
        fontsize=10,
    )
    axes = fig.subplots(2, k, squeeze=False, subplot_kw=_NO_TICKS)
    shown = None
    for row, (row_title, row_idx) in enumerate((("most anomalous", idx[:k]), ("least", idx[k:]))):
        for ax, i in zip(axes[row], row_idx, strict=True):
            image, amap = heatmaps[int(i)]
            shown = draw_overlay(ax, np.asarray(image), np.asarray(amap), vmin, vmax)
            truth = "abnormal" if labels[i] else "normal"
            ax.set_title(
                f"{row_title}: #{int(i)}\nscore {fmt(scores[i])}, {truth}",
                fontsize=8,
                color=_ABNORMAL_COLOR if labels[i] else _NORMAL_COLOR,
            )
    bar = fig.colorbar(shown, ax=axes, fraction=0.03, pad=0.02)
    bar.set_label(f"patch score ({units})", fontsize=8)
    bar.ax.axhline(line, color="cyan", linewidth=2)
    _save(fig, path)
