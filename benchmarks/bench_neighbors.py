"""The approximate neighbour search against the exact one: recall, and the paper preset's AUROC.

    python benchmarks/bench_neighbors.py --cache-dir .bench_cache       # ~10 min on 2 CPU cores
    python benchmarks/bench_neighbors.py --recall-n 10000 --no-auroc    # recall only

1. **Recall** at k = 50 of :func:`msde_jax.core.approximate_knn.approximate_knn` (the tree behind
   ``mean_shift(neighbors="approximate")``) against :func:`msde_jax.core.knn`: the share of each
   point's exact 50 nearest found, averaged over the points, for several ``leaf_size × probes``
   settings, on (a) bench_core.py's synthetic mixture (20 Gaussian centres, d = 512,
   standardised) and (b) real features: EfficientNet-Lite0 patch features (the default
   embedder's, 152 channels) of the brain-MRI training normals, a random subset of n rows,
   standardised. Also the recall of the neighbour windows the approximate blurring shift uses
   at its last iteration, measured against the exact kNN of the points it ends at. Recall
   alone overstates what a miss costs where many neighbours are nearly equidistant, so two
   more columns say how near the found neighbours are: the *distance excess* (their summed
   distances over the exact ones', − 1) and the *window-mean error* (‖m̂ − m‖ summed over the
   points, over ‖m − x‖ summed: how far the mean of the found window is from the exact
   window's mean, relative to the shift vector it defines; unweighted).
2. **AUROC** of the paper preset (``MSDEDetector.paper()``, MobileNetV2 pooled features,
   official test sets scored as one balanced batch, as the paper) with ``neighbors="exact"``
   and ``neighbors="approximate"`` (default tree settings; at these sizes, 1,076 and 1,838 rows
   in the joint shift, "auto" would pick the exact search), and the largest score difference.

Embeddings come from :class:`msde_jax.Embedder`, cached with ``--cache-dir``. Data:
``../shared/data`` (``--data-dir``). Markdown tables on stdout, progress on stderr.
"""

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import msde_jax as mj
from msde_jax.core.approximate_knn import DEFAULT_LEAF_SIZE, DEFAULT_PROBES, approximate_knn
from msde_jax.io.cache import embed_cached
from msde_jax.io.datasets import load_dataset

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
BRAIN = "brain_tumor_mri/brain_tumor_mri.npz"
SETTINGS = [(256, 4), (256, 8), (128, 8), (64, 16)]
K = 50


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def mixture(n: int, d: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(20, d))
    x = (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, d))).astype(np.float32)
    return standardise(x)


def standardise(x: np.ndarray) -> np.ndarray:
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    return ((x - x.mean(axis=0)) / scale).astype(np.float32)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |found ∩ exact| / k."""
    found, exact = np.sort(np.asarray(found), axis=1), np.sort(np.asarray(exact), axis=1)
    hits = [
        np.intersect1d(a, b, assume_unique=True).size for a, b in zip(found, exact, strict=True)
    ]
    return float(np.mean(hits)) / exact.shape[1]


def closeness(x: np.ndarray, found: jax.Array, exact: jax.Array) -> tuple[float, float]:
    """How much the missed neighbours matter, in row blocks: the excess of the found
    neighbours' summed distances over the exact ones' (0 = as near), and the error of the
    unweighted window mean, Σᵢ‖m̂ᵢ − mᵢ‖ / Σᵢ‖mᵢ − xᵢ‖ (m̂, m: mean of the found, exact
    neighbours; 0 = the same shift vector)."""
    found_d, exact_d = np.asarray(found.distances), np.asarray(exact.distances)
    excess = float(found_d.sum() / max(exact_d.sum(), 1e-30) - 1)
    error = vector = 0.0
    found_i, exact_i = np.asarray(found.indices), np.asarray(exact.indices)
    for start in range(0, len(x), 1000):
        rows = slice(start, start + 1000)
        m_found, m_exact = x[found_i[rows]].mean(axis=1), x[exact_i[rows]].mean(axis=1)
        error += float(np.linalg.norm(m_found - m_exact, axis=1).sum())
        vector += float(np.linalg.norm(m_exact - x[rows], axis=1).sum())
    return excess, error / max(vector, 1e-30)


def embed(embedder, items, cache_dir):
    if cache_dir:
        return embed_cached(embedder, items, cache_dir)
    return embedder.embed(items)


def recall_table(name: str, x: np.ndarray) -> list[str]:
    n = x.shape[0]
    xj = jnp.asarray(x)
    jax.block_until_ready(mj.core.knn(xj, k=K, batch_size=256))  # compiled, as below
    start = time.perf_counter()
    exact = mj.core.knn(xj, k=K, batch_size=256)
    jax.block_until_ready(exact)
    t_exact = time.perf_counter() - start
    rows = []
    for leaf, probes in SETTINGS:
        approx = approximate_knn(xj, k=K, leaf_size=leaf, probes=probes, batch_size=256)
        jax.block_until_ready(approx)
        start = time.perf_counter()
        approx = approximate_knn(xj, k=K, leaf_size=leaf, probes=probes, batch_size=256)
        jax.block_until_ready(approx)
        t = time.perf_counter() - start
        r = recall(approx.indices, exact.indices)
        excess, error = closeness(x, approx, exact)
        rows.append(
            f"| {name} | {n:,} | {leaf} × {probes} | {r:.3f} | {excess:.2%} | {error:.2%} | "
            f"{t:.2f} | {t_exact:.2f} |"
        )
        log(rows[-1])
    # The windows the approximate shift uses at its last iteration: rerun its search on the
    # points it ends at with the tree it built on the unshifted points.
    w = mj.core.density_weights(xj, batch_size=256)
    shifted = mj.core.mean_shift(xj, w, neighbors="approximate", batch_size=256).points
    exact_end = mj.core.knn(shifted, k=K, batch_size=256)
    approx_end = approximate_knn(shifted, k=K, batch_size=256)
    excess, error = closeness(np.asarray(shifted), approx_end, exact_end)
    rows.append(
        f"| {name}, shifted (8 iterations) | {n:,} | {DEFAULT_LEAF_SIZE} × {DEFAULT_PROBES} | "
        f"{recall(approx_end.indices, exact_end.indices):.3f} | {excess:.2%} | {error:.2%} | "
        "— | — |"
    )
    log(rows[-1])
    return rows


def auroc_table(data_dir: Path, cache_dir: str | None) -> list[str]:
    embedder = mj.Embedder("mobilenet_v2", progress=False)
    rows = []
    for spec in (data_dir / BRAIN, "pneumoniamnist"):
        ds = load_dataset(spec)
        train = embed(embedder, ds.train_normal, cache_dir)
        test = embed(embedder, ds.test_items(), cache_dir)
        labels = ds.test_labels()
        scores = {}
        for search in ("exact", "approximate"):
            det = mj.MSDEDetector.paper(neighbors=search, threshold="chi2").fit(train)
            scores[search] = det.score_samples(test)
        auc = {s: mj.core.roc_auc(labels, v) for s, v in scores.items()}
        diff = float(np.max(np.abs(scores["exact"] - scores["approximate"])))
        rows.append(
            f"| {ds.name} | {len(train) + len(test):,} | {float(auc['exact']):.4f} | "
            f"{float(auc['approximate']):.4f} | {float(auc['approximate'] - auc['exact']):+.4f} | "
            f"{diff:.3g} |"
        )
        log(rows[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recall-n", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--no-auroc", action="store_true")
    parser.add_argument("--no-real", action="store_true", help="skip the patch-feature recall")
    args = parser.parse_args()

    print(
        f"{datetime.date.today()}; jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPU cores ({platform.machine()}); k = {K}"
    )
    print()
    print(
        "| data | n | leaf × probes | recall@50 | distance excess | window-mean error | "
        "approximate (s) | exact (s) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    patches = None
    if not args.no_real:
        ds = load_dataset(args.data_dir / BRAIN)
        emb = mj.Embedder(features="patches", progress=False)
        p = embed(emb, ds.train_normal, args.cache_dir)
        patches = p.reshape(-1, p.shape[-1])
    for n in args.recall_n:
        for line in recall_table("synthetic mixture, d = 512", mixture(n)):
            print(line, flush=True)
        if patches is not None:
            rng = np.random.default_rng(0)
            sub = standardise(patches[rng.choice(len(patches), min(n, len(patches)), False)])
            for line in recall_table("brain MRI patch features, d = 152", sub):
                print(line, flush=True)
    if not args.no_auroc:
        print()
        print(
            "| dataset (paper preset, MobileNetV2, balanced batch) | rows shifted | AUROC exact | "
            "AUROC approximate | difference | max score difference |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for line in auroc_table(args.data_dir, args.cache_dir):
            print(line, flush=True)


if __name__ == "__main__":
    main()
