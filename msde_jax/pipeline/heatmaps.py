"""Heatmap pictures: anomaly maps drawn over the images they score, and files for programs.

:func:`write_heatmaps` writes, for ``msde-jax score --heatmaps DIR``, one PNG per image (the
image as the embedder saw it, the map over it in colour, a colour bar in score units with the
threshold marked) and ``maps.npz`` with every raw map; :func:`write_montages` one PNG per
volume, the overlays of its scored slices in a grid; :func:`draw_overlay` draws one overlay
on a matplotlib axis (the evaluation report's overlay grid uses it). Figures are drawn on
``matplotlib.figure.Figure`` objects with the Agg canvas, as in :mod:`msde_jax.pipeline.report`.

One colour scale serves every image of a call, from the lowest to the highest map value (and
at least up to the threshold), so the same colour means the same score in every picture.
"""

import math
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from msde_jax._files import atomic_write
from msde_jax.pipeline.report_figures import literal

__all__ = [
    "CMAP",
    "color_bar_line",
    "color_range",
    "draw_overlay",
    "heatmap_file_names",
    "overlay_inputs",
    "write_heatmaps",
    "write_montages",
]

CMAP = "inferno"
_ALPHA = 0.45
_DPI = 110


def color_bar_line(threshold: float, maps_threshold: float | None) -> tuple[float, str]:
    """Where the colour bar marks the threshold, and the maps' units: ``threshold`` in
    image-score units, or ``maps_threshold`` where the maps are a component's (a fused
    detector's patch component: its image-score units, not the fused score's)."""
    if maps_threshold is None:
        return float(threshold), "image-score units"
    return float(maps_threshold), "the patch component's units"


def color_range(maps: np.ndarray, threshold: float | None = None) -> tuple[float, float]:
    """The shared colour scale: the maps' minimum to their maximum, stretched to the threshold."""
    lo, hi = float(np.min(maps)), float(np.max(maps))
    if threshold is not None and np.isfinite(threshold):
        lo, hi = min(lo, float(threshold)), max(hi, float(threshold))
    return lo, hi if hi > lo else lo + 1.0


def overlay_inputs(images: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(images, maps)`` as (n, H, W, 3) float32 in [0, 1] and (n, H, W) float32 maps, checked:
    grey (n, H, W) or (n, H, W, 1) images repeated to RGB, integer ones scaled by their
    type's maximum (uint8 by 255).

    Raises:
        ValueError: no image; images of another shape, or floats outside [0, 1]; maps not of
            the images' height and width (``score_maps(features, size=image side)``), or not
            finite.
    """
    images, maps = np.asarray(images), np.asarray(maps, np.float32)
    images = images[..., None] if images.ndim == 3 else images
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(
            f"images of shape {images.shape}: pass (n, H, W, 3), (n, H, W, 1) or (n, H, W) "
            "images, n ≥ 1 (as Embedder.preprocess gives them)."
        )
    if np.issubdtype(images.dtype, np.integer):
        images = images / np.float32(np.iinfo(images.dtype).max)
    images = np.broadcast_to(images, (*images.shape[:3], 3)).astype(np.float32, copy=False)
    if not (images.min() >= 0 and images.max() <= 1):  # NaN fails too
        raise ValueError("float images must lie in [0, 1] (as Embedder.preprocess gives them).")
    if maps.shape != images.shape[:3]:
        raise ValueError(
            f"maps of shape {maps.shape} for images of shape {images.shape}: pass one map of "
            "the image's height and width per image (score_maps(features, size=image side))."
        )
    if not np.isfinite(maps).all():
        raise ValueError("the maps hold NaN or infinite values.")
    return images, maps


def draw_overlay(ax: Any, image: np.ndarray, amap: np.ndarray, vmin: float, vmax: float) -> Any:
    """Draw ``image`` (H, W, 3) in [0, 1] in grey scale or colour and ``amap`` (H, W) over it
    (checked as :func:`overlay_inputs` checks them); returns the map's ``AxesImage`` (for a
    colour bar)."""
    (image,), (amap,) = overlay_inputs(np.asarray(image)[None], np.asarray(amap)[None])
    gray = np.allclose(image[..., 0], image[..., 1]) and np.allclose(image[..., 0], image[..., 2])
    if gray:
        ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
    shown = ax.imshow(amap, cmap=CMAP, vmin=vmin, vmax=vmax, alpha=_ALPHA, interpolation="bilinear")
    ax.set_axis_off()
    return shown


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80].strip("._")


def heatmap_file_names(names: Sequence[str]) -> list[str]:
    """One PNG name per input: ``<index>_<file stem>.png``, safe characters only; the index
    keeps inputs with the same stem (``a/x.png``, ``b/x.png``) apart and the order visible. A
    volume's slice (``"{volume}:{index:04d}"``) keeps its volume's name and slice index:
    ``<i>_<volume>_<index>`` (of a volume named with its parent folders, to tell same-named
    volumes apart, only the last part: the index keeps them apart)."""
    width = max(4, len(str(len(names) - 1)))
    out = []
    for i, name in enumerate(names):
        name = str(name)
        volume_slice = re.fullmatch(r"(.+):(\d{4,})", name)
        if volume_slice is not None:
            stem = _safe(f"{PurePath(volume_slice[1]).name}_{volume_slice[2]}")
        else:
            stem = _safe(Path(name).stem)
        stem = stem or "image"
        out.append(f"{i:0{width}d}_{stem}.png")
    return out


_MONTAGE = re.compile(r"volume_\d{4,}_.*\.png")  # write_montages's file names


def _remove_earlier_run(out: Path) -> None:
    """In a folder used again, the PNGs of the run whose ``maps.npz`` is there (the overlays
    it lists and the volume montages beside them): none may stay beside the new ones."""
    try:
        with np.load(out / "maps.npz", allow_pickle=False) as earlier:
            listed = [str(f) for f in earlier["files"]] if "files" in earlier else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # none here, or not ours
        return
    if listed is None:  # another program's maps.npz: its folder's files are not ours
        return
    for name in listed:
        if name == Path(name).name and name.endswith(".png"):  # a file of this folder
            (out / name).unlink(missing_ok=True)
    for path in out.glob("volume_*.png"):
        if _MONTAGE.fullmatch(path.name):
            path.unlink(missing_ok=True)


def write_heatmaps(
    out_dir: str | os.PathLike,
    images: np.ndarray,
    maps: np.ndarray,
    *,
    names: Sequence[str],
    scores: np.ndarray,
    threshold: float,
    maps_threshold: float | None = None,
) -> list[Path]:
    """Write one overlay PNG per image and ``maps.npz`` into ``out_dir`` (created).

    A folder used again: the earlier run's PNGs (those its ``maps.npz`` lists, and the volume
    montages of :func:`write_montages`) are removed first, so none is left beside the new
    ones; other files are left.

    Args:
        out_dir: the folder.
        images: (n, H, W, 3) images in [0, 1] as the embedder saw them (or as
            :func:`overlay_inputs` reads them: grey, integer).
        maps: (n, H, W) anomaly maps in score units (``detector.score_maps``).
        names: n input names (paths or ``file.npz[i]``), for titles and file names.
        scores: (n,) image scores.
        threshold: the detector's threshold, which the scores are compared with (and which
            the colour bar marks, unless ``maps_threshold`` is given).
        maps_threshold: the threshold in the maps' units where they are not the scores' (a
            fused detector's maps are its patch component's:
            :func:`~msde_jax.pipeline.evaluation.maps_threshold`), marked on the colour bar.

    Returns:
        The PNG paths, in input order. ``maps.npz`` holds ``maps`` (n, H, W) float32,
        ``names``, ``files`` (the PNG names), ``scores``, ``threshold`` and
        ``maps_threshold`` (the colour bar's line).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not (len(images) == len(maps) == len(names) == len(scores)):
        raise ValueError(
            f"got {len(images)} images, {len(maps)} maps, {len(names)} names and "
            f"{len(scores)} scores; pass one of each per image."
        )
    images, maps = overlay_inputs(images, maps)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_earlier_run(out)
    line, units = color_bar_line(threshold, maps_threshold)
    vmin, vmax = color_range(maps, line)
    files = heatmap_file_names(names)
    paths = []
    for image, amap, name, score, file in zip(images, maps, names, scores, files, strict=True):
        fig = Figure(figsize=(5.2, 4.4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        shown = draw_overlay(ax, image, amap, vmin, vmax)
        flag = "above" if score > threshold else "below"
        verdict = f"{flag} {threshold:.4g}" if np.isfinite(threshold) else "no threshold"
        ax.set_title(f"{literal(Path(str(name)).name)}\nscore {score:.4g} ({verdict})", fontsize=9)
        bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        if np.isfinite(line):  # named in the bar's label: text by the line hid the ticks
            bar.set_label(f"patch score ({units}); cyan line: threshold", fontsize=8)
            bar.ax.axhline(line, color="cyan", linewidth=2)
        else:
            bar.set_label(f"patch score ({units})", fontsize=8)
        fig.savefig(out / file, dpi=_DPI, bbox_inches="tight")
        paths.append(out / file)

    def save(f):
        np.savez(
            f,
            maps=np.asarray(maps, np.float32),
            names=np.array([str(n) for n in names]),
            files=np.array(files),
            scores=np.asarray(scores, np.float64),
            threshold=np.float64(threshold),
            maps_threshold=np.float64(line),
        )

    atomic_write(out / "maps.npz", save, suffix=".npz")
    return paths


def write_montages(
    out_dir: str | os.PathLike,
    images: np.ndarray,
    maps: np.ndarray,
    *,
    members: Sequence[np.ndarray],
    volume_names: Sequence[str],
    volume_scores: Sequence[float],
    names: Sequence[str],
    scores: np.ndarray,
    threshold: float,
    volume_threshold: float | None = None,
    maps_threshold: float | None = None,
) -> list[Path]:
    """Write one montage PNG per volume: the overlays of its slices in a grid.

    Each tile is :func:`draw_overlay` of one slice, titled with its name's slice index and its
    score (red above ``threshold``); every tile of every montage shares the colour scale of
    :func:`color_range` ``(maps, threshold)`` (``maps_threshold`` where given), as
    :func:`write_heatmaps` of the same call.

    Args:
        out_dir: the folder (created).
        images: (n, H, W, 3) images in [0, 1] as the embedder saw them.
        maps: (n, H, W) anomaly maps in score units.
        members: for each volume, the indices of its slices among the n.
        volume_names: a name per volume, for the title and the file name.
        volume_scores: a score per volume (:func:`msde_jax.pipeline.volumes.aggregate`).
        names: n slice names (``"{volume}:{index:04d}"``).
        scores: (n,) slice scores.
        threshold: the slice threshold, marked on the colour bar (unless ``maps_threshold``).
        volume_threshold: the volume threshold, or ``None`` when the model has none.
        maps_threshold: as :func:`write_heatmaps`'s.

    Returns:
        The PNG paths, ``volume_<i>_<name>.png`` in volume order.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not (len(members) == len(volume_names) == len(volume_scores)):
        raise ValueError("pass one member list, name and score per volume.")
    images, maps = overlay_inputs(images, maps)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    line, units = color_bar_line(threshold, maps_threshold)
    vmin, vmax = color_range(maps, line)
    width = max(4, len(str(len(members) - 1)))
    paths = []
    for v, (idx, vname, vscore) in enumerate(
        zip(members, volume_names, volume_scores, strict=True)
    ):
        idx = np.asarray(idx, np.int64)
        cols = max(1, math.ceil(math.sqrt(idx.size)))
        rows = max(1, math.ceil(idx.size / cols))
        fig = Figure(figsize=(1.6 * cols + 1.0, 1.75 * rows + 0.9))
        FigureCanvasAgg(fig)
        no_ticks = {"xticks": [], "yticks": []}  # hidden anyway; not laid out for nothing
        axes = fig.subplots(rows, cols, squeeze=False, subplot_kw=no_ticks).reshape(-1)
        shown = None
        for ax in axes:
            ax.set_axis_off()
        for ax, i in zip(axes, idx.tolist(), strict=False):
            shown = draw_overlay(ax, images[i], maps[i], vmin, vmax)
            label = literal(str(names[i]).rpartition(":")[2])
            above = scores[i] > threshold
            ax.set_title(
                f"{label}: {scores[i]:.3g}", fontsize=7, color="tab:red" if above else "black"
            )
        if volume_threshold is None:
            verdict = "no volume threshold in the model"
        else:
            flag = "above" if vscore > volume_threshold else "below"
            verdict = f"{flag} the volume threshold {volume_threshold:.4g}"
        red = (
            f"red above the slice threshold {threshold:.4g}"
            if np.isfinite(threshold)
            else "no slice threshold"
        )
        fig.suptitle(
            f"{literal(vname)}: volume score {vscore:.4g} ({verdict})\n{idx.size} slices; tile "
            f"titles: slice index: score ({red})",
            fontsize=9,
        )
        if shown is not None:
            bar = fig.colorbar(shown, ax=axes.tolist(), fraction=0.03, pad=0.02)
            bar.set_label(f"patch score ({units})", fontsize=8)
            if np.isfinite(line):
                bar.ax.axhline(line, color="cyan", linewidth=2)
        file = out / f"volume_{v:0{width}d}_{_safe(str(vname)) or 'volume'}.png"
        fig.savefig(file, dpi=_DPI)
        paths.append(file)
    return paths
