"""Where in the image: pixel-level AUROC and AUPRO of the default detector's heatmaps.

    python benchmarks/bench_heatmaps.py --cache-dir .bench_cache --figure docs/heatmaps.png
    python benchmarks/bench_heatmaps.py --datasets pneumoniamnist --limit 40   # quick

Real findings come without outlines here, so localisation is measured where the truth is
known: as many local synthetic anomalies as test *normals* (never fitted on), each with its
mask and made from a test normal drawn at random with replacement (some give none, some
several) (:data:`msde_jax.ssl.synthetic.LOCAL_KINDS`: AnatPaste, CutPaste, scar, opacity, in
turn; half ``anatomy="bright"``, half ``"dark"``; made at the images' own resolution, the masks then
resized to the maps' 224 px by nearest neighbour), and the default
configuration (:func:`msde_jax.recommended`, fitted on all training normals)
maps the
clean test normals and the synthetic anomalies through
:func:`msde_jax.pipeline.evaluation.heatmaps`.
Reported per dataset: pixel AUROC over every pixel of both sets (a clean normal's pixels are
all normal), AUPRO up to FPR 0.3 (:func:`msde_jax.core.metrics.aupro`), the same per kind, and the
image AUROC of anomalies vs clean normals. ``--figure`` draws the overlay grid of the README:
synthetic anomalies with their mask outlined, and real abnormal test images.
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

from msde_jax import recommended
from msde_jax.core import roc_auc
from msde_jax.core.metrics import aupro
from msde_jax.io.datasets import load_dataset
from msde_jax.io.images import to_float
from msde_jax.pipeline.evaluation import embed, heatmaps
from msde_jax.ssl.synthetic import KINDS, LOCAL_KINDS, synthesize

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load(name: str):
    if name == "pneumoniamnist":
        return load_dataset("pneumoniamnist")
    return load_dataset(DATA / name / f"{name}.npz")


def local_anomalies(embedder, normals, seed=0):
    """As many local anomalies as normals, each from a normal drawn at random (kinds in turn,
    half bright, half dark), made at the images' own resolution as msde_jax.pipeline.selection
    does; uint8 images and, at the embedder's side (nearest neighbour), their masks."""
    images = np.stack([to_float(item) for item in normals])  # the datasets' images share a size
    half = len(images) // 2
    parts = []
    for i, (anatomy, idx) in enumerate((("bright", slice(0, half)), ("dark", slice(half, None)))):
        part = images[idx]
        made = synthesize(
            jax.random.fold_in(jax.random.key(seed), i),
            part,
            len(part),
            kinds=LOCAL_KINDS,
            anatomy=anatomy,
        )
        parts.append(made)
    anomalies = np.concatenate([np.asarray(p.images) for p in parts])
    masks = np.concatenate([np.asarray(p.masks) for p in parts]) > 0
    side = embedder.image_size
    masks = np.asarray(jax.image.resize(masks, (len(masks), side, side), "nearest"))
    kinds = np.concatenate([np.asarray(KINDS)[np.asarray(p.kinds)] for p in parts])
    return np.round(anomalies * 255).astype(np.uint8), masks, kinds


def run(name: str, args) -> dict:
    dataset = load(name)
    train = dataset.train_normal[: args.limit]
    normals = dataset.test_normal[: args.limit]
    embedder, detector = recommended()
    t = time.perf_counter()
    detector.fit(embed(embedder, train, cache_dir=args.cache_dir, what="train normal"))
    fit_s = time.perf_counter() - t
    anomalies, masks, kinds = local_anomalies(embedder, normals)
    items = list(normals) + list(anomalies)
    t = time.perf_counter()
    features = embed(embedder, items, cache_dir=args.cache_dir, what="test normal + synthetic")
    images, maps = heatmaps(embedder, detector, items, features=features)
    map_s = time.perf_counter() - t
    truth = np.concatenate([np.zeros((len(normals), *masks.shape[1:]), bool), masks])
    n = len(normals)
    result = {
        "dataset": name,
        "n_train": len(train),
        "n_clean": n,
        "n_synthetic": len(anomalies),
        "pixel_auroc": float(roc_auc(truth.ravel(), maps.ravel())),
        "aupro": aupro(truth, maps),
        "image_auroc": float(
            roc_auc(np.r_[np.zeros(n), np.ones(len(anomalies))], detector.score_samples(features))
        ),
        "by_kind": {},
        "fit_s": fit_s,
        "embed_and_map_s": map_s,
    }
    for kind in LOCAL_KINDS:
        sel = np.r_[np.ones(n, bool), kinds == kind]
        result["by_kind"][kind] = {
            "pixel_auroc": float(roc_auc(truth[sel].ravel(), maps[sel].ravel())),
            "aupro": aupro(truth[sel], maps[sel]),
        }
    if args.figure and name == args.figure_dataset:
        figure(args.figure, embedder, detector, dataset, images[n:], maps[n:], masks, kinds)
    return result


def figure(path, embedder, detector, dataset, synth_images, synth_maps, masks, kinds):
    """Top row: one synthetic anomaly of each local kind, its mask outlined in cyan; bottom
    row: four real abnormal test images (the first four by index)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from msde_jax.pipeline.heatmaps import color_range, draw_overlay

    picks = [int(np.flatnonzero(kinds == kind)[0]) for kind in LOCAL_KINDS]
    real = dataset.test_abnormal[:4]
    real_images, real_maps = heatmaps(embedder, detector, real, progress=False)
    scores = detector.score_samples(embed(embedder, real, progress=False))
    vmin, vmax = color_range(np.r_[synth_maps[picks], real_maps], detector.threshold_)
    fig = Figure(figsize=(10.5, 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 4)
    for ax, i in zip(axes[0], picks, strict=True):
        shown = draw_overlay(ax, synth_images[i], synth_maps[i], vmin, vmax)
        ax.contour(masks[i], levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_title(f"synthetic {kinds[i]}", fontsize=9)
    for ax, image, amap, score in zip(axes[1], real_images, real_maps, scores, strict=True):
        shown = draw_overlay(ax, image, amap, vmin, vmax)
        ax.set_title(f"real abnormal, score {score:.3g}", fontsize=9)
    bar = fig.colorbar(shown, ax=axes, fraction=0.025)
    bar.set_label("patch score", fontsize=8)
    bar.ax.axhline(detector.threshold_, color="cyan", linewidth=2)
    fig.suptitle(
        f"{dataset.name}: default detector heatmaps (threshold {detector.threshold_:.3g} in cyan)",
        fontsize=10,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, facecolor="white")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", nargs="+", default=["brain_tumor_mri", "pneumoniamnist"])
    p.add_argument("--limit", type=int, default=None, help="at most this many images per split")
    p.add_argument("--cache-dir", default=".bench_cache")
    p.add_argument("--figure", default=None, help="write the README's overlay grid here")
    p.add_argument("--figure-dataset", default="brain_tumor_mri")
    args = p.parse_args(argv)
    print(
        "| dataset | clean + synthetic test images | pixel AUROC | AUPRO (FPR ≤ 0.3) | "
        + " | ".join(f"{k} pixel AUROC / AUPRO" for k in LOCAL_KINDS)
        + " | image AUROC |"
    )
    print("|---|---|---:|---:|" + "---|" * len(LOCAL_KINDS) + "---:|")
    for name in args.datasets:
        r = run(name, args)
        kinds = " | ".join(
            f"{r['by_kind'][k]['pixel_auroc']:.3f} / {r['by_kind'][k]['aupro']:.3f}"
            for k in LOCAL_KINDS
        )
        print(
            f"| {name} | {r['n_clean']} + {r['n_synthetic']} | {r['pixel_auroc']:.3f} | "
            f"{r['aupro']:.3f} | {kinds} | {r['image_auroc']:.3f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
