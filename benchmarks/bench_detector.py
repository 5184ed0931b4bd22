"""MSDEDetector on the real datasets: accuracy, speed, threshold and batch dependence.

    python benchmarks/bench_detector.py            # both datasets, ~6-7 min on 2 CPU cores
    python benchmarks/bench_detector.py --quick    # smoke run: 2 seeds, 40 single images
    python benchmarks/bench_detector.py --features emb/brain_tumor_mri.npz  # embeddings

Run from the repository root after ``pip install -e .`` (or with ``PYTHONPATH=.``).

Data: ``../shared/data`` next to the repository (or ``--data-dir``):
``brain_tumor_mri/brain_tumor_mri.npz`` (476 / 300 / 300 images, 224×224) and
``pneumoniamnist/pneumoniamnist.npz`` (1214 / 234 / 390, 28×28), arrays ``train_normal``,
``test_normal``, ``test_abnormal``. By default the features are pixels, so the benchmark needs
no backbone: each image average-pooled (brain: 14×14 blocks → 16×16 = 256 features; PneumoniaMNIST:
2×2 blocks → 14×14 = 196 features), scaled to [0, 1], float32. ``--features [NAME=]FILE.npz``
(repeatable) benchmarks precomputed embeddings under the same three keys instead (e.g. from
``Embedder(...).embed`` of each split; ``msde-jax evaluate`` reports the backbone-feature
numbers end to end).

What it measures, per dataset (test rows: all test normals, then all test abnormals, as the
paper; the detector is fitted on ``train_normal`` only):

1. AUROC / AP (``msde_jax.core.roc_auc`` / ``average_precision``) on the official test set for the
   paper preset (transductive, MSDE weights), the paper preset with uniform weights, the
   inductive default, the inductive displacement score and the plain Gaussian
   (``mode="none"``), all with ``threshold="chi2"`` (no cross-fitting). Fit and score times are
   wall-clock seconds after a warm-up fit + score on the same shapes; the warm-up (mostly XLA
   compilation) is reported on its own.
2. The default cross-fit threshold of the inductive detector: ``threshold_`` and the share of
   test normals (false-positive rate) and test abnormals (recall) above it, next to the χ²
   threshold.
3. Batch dependence: AUROC of each test image scored (a) inside the official test set, (b) in
   batches of all test normals plus random abnormal images making 10 % / 5 % of the batch
   (mean ± sd over ``--seeds``), (c) one image at a time, on a random subset of ``--single-n``
   images (half normal, half abnormal). The inductive and plain-Gaussian rows must not depend on
   the batch; the largest score difference against (a) is printed as a check.

Only markdown tables go to stdout; progress goes to stderr. Nothing is written to disk.

Timings on a shared machine: JAX's CPU SVD / Cholesky call scipy's OpenBLAS, whose threads
stall when other processes hold the cores (a 476×256 SVD then takes seconds instead of
~20 ms). ``OPENBLAS_NUM_THREADS=1`` avoids that; the header line shows its value.
"""

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

import msde_jax as mj
from msde_jax.detectors.msde import MSDEDetector

DATASETS = {
    # name: (file relative to the data dir, pooling block size)
    "brain_tumor_mri": ("brain_tumor_mri/brain_tumor_mri.npz", 14),
    "pneumoniamnist": ("pneumoniamnist/pneumoniamnist.npz", 2),
}
KEYS = ("train_normal", "test_normal", "test_abnormal")
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- data
def pool_pixels(images: np.ndarray, block: int) -> np.ndarray:
    """(n, h, w) uint8 images → (n, (h/block)·(w/block)) float32 block means in [0, 1]."""
    n, h, w = images.shape
    if h % block or w % block:
        raise ValueError(f"image size {h}×{w} is not a multiple of the pooling block {block}.")
    x = images.reshape(n, h // block, block, w // block, block).astype(np.float32)
    return (x.mean(axis=(2, 4)) / 255.0).reshape(n, -1).astype(np.float32)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in KEYS if k not in data.files]
        if missing:
            raise SystemExit(f"{path}: missing array(s) {missing}; expected keys {KEYS}.")
        return {k: data[k] for k in KEYS}


def load_datasets(args) -> list[tuple[str, str, dict[str, np.ndarray]]]:
    """[(name, description of the features, {key: (n, d) float32})]."""
    out = []
    if args.features:
        for spec in args.features:
            name, sep, file = spec.partition("=")
            if not sep:
                name, file = Path(spec).stem, spec
            arrays = load_npz(Path(file))
            feats = {}
            for k, v in arrays.items():
                if v.ndim != 2:
                    raise SystemExit(f"{file}: {k} must be (n, d) embeddings, got {v.shape}.")
                feats[k] = np.ascontiguousarray(v, dtype=np.float32)
            d = feats["train_normal"].shape[1]
            out.append((name, f"precomputed embeddings from {file}, d = {d}", feats))
        return out
    data_dir = Path(args.data_dir)
    for name in args.datasets:
        rel, block = DATASETS[name]
        path = data_dir / rel
        if not path.exists():
            raise SystemExit(f"{path} not found; pass --data-dir.")
        arrays = load_npz(path)
        feats = {k: pool_pixels(v, block) for k, v in arrays.items()}
        h, w = arrays["train_normal"].shape[1:]
        d = feats["train_normal"].shape[1]
        desc = (
            f"pixels: {h}×{w} average-pooled in {block}×{block} blocks to "
            f"{h // block}×{w // block}, scaled to [0, 1], d = {d} (no backbone)"
        )
        out.append((name, desc, feats))
    return out


# ---------------------------------------------------------------------------------- scorers
def scorers():
    """(label, detector factory, score to set after fitting or None)."""
    return [
        (
            "paper preset (transductive, MSDE weights)",
            lambda: MSDEDetector.paper(threshold="chi2"),
            None,
        ),
        (
            "paper preset, uniform weights",
            lambda: MSDEDetector.paper(density="uniform", threshold="chi2"),
            None,
        ),
        ("inductive (default)", lambda: MSDEDetector(threshold="chi2"), None),
        # threshold="chi2" is refused for score="displacement"; fitting does not depend on
        # `score`, so fit the Mahalanobis detector and switch the score afterwards.
        ("inductive, displacement score †", lambda: MSDEDetector(threshold="chi2"), "displacement"),
        ("plain Gaussian (mode='none')", lambda: MSDEDetector(mode="none", threshold="chi2"), None),
    ]


def fit_score(factory, score, x_train, x_test):
    det = factory()
    start = time.perf_counter()
    det.fit(x_train)
    jax.block_until_ready(det.state_)
    fit_s = time.perf_counter() - start
    if score is not None:
        det.set_params(score=score)
    start = time.perf_counter()
    s = det.score_samples(x_test)
    score_s = time.perf_counter() - start
    return det, s, fit_s, score_s


def metrics(labels, scores) -> tuple[float, float]:
    return float(mj.core.roc_auc(labels, scores)), float(mj.core.average_precision(labels, scores))


def mean_sd(values) -> str:
    v = np.asarray(values, np.float64)
    sd = v.std(ddof=1) if v.size > 1 else 0.0
    return f"{v.mean():.3f} ± {sd:.3f}"


# ---------------------------------------------------------------------------------- benchmark
def bench_dataset(name, desc, feats, args):
    x_train = feats["train_normal"]
    x_tn, x_ta = feats["test_normal"], feats["test_abnormal"]
    n_tn, n_ta = len(x_tn), len(x_ta)
    x_test = np.concatenate([x_tn, x_ta])
    labels = np.concatenate([np.zeros(n_tn, np.int32), np.ones(n_ta, np.int32)])
    mix = f"{n_tn} normal + {n_ta} abnormal ({100 * n_ta / (n_tn + n_ta):.0f} % abnormal)"

    print(f"\n## {name}\n")
    print(f"- features: {desc}")
    print(f"- fit on {len(x_train)} train normals; official test set: {mix}, normals first\n")

    # ---------------------------------------------------------------- table 1
    rows, fitted, test_scores = [], {}, {}
    for label, factory, score in scorers():
        log(f"[{name}] {label}")
        start = time.perf_counter()
        fit_score(factory, score, x_train, x_test)  # warm-up: compiles for these shapes
        warm_s = time.perf_counter() - start
        fit_times, score_times = [], []
        for _ in range(args.repeat):
            det, s, fit_s, score_s = fit_score(factory, score, x_train, x_test)
            fit_times.append(fit_s)
            score_times.append(score_s)
        fit_s, score_s = min(fit_times), min(score_times)
        auc, ap = metrics(labels, s)
        fitted[label], test_scores[label] = det, s
        iters = "—" if det.mode == "none" else str(det.n_iter_)
        rows.append((label, auc, ap, iters, warm_s, fit_s, score_s))

    print(f"### Table 1 — {name}: official test set ({mix}), threshold='chi2'\n")
    print(
        f"Times: wall clock, best of {args.repeat} after one warm-up fit + score (the "
        "warm-up column: mostly XLA compilation; scorers that share shapes compile less).\n"
    )
    print(
        "| scorer | AUROC | AP | MSDE iters (fit) | warm-up fit+score (s) | fit (s) | score (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, auc, ap, iters, warm_s, fit_s, score_s in rows:
        print(
            f"| {label} | {auc:.3f} | {ap:.3f} | {iters} | {warm_s:.2f} | {fit_s:.2f} "
            f"| {score_s:.2f} |"
        )
    print(
        "\n† fitted as the inductive default (threshold='chi2' is refused for "
        "score='displacement'), then `set_params(score='displacement')`; same fit."
    )

    # ---------------------------------------------------------------- threshold table
    log(f"[{name}] cross-fit threshold")
    start = time.perf_counter()
    det_cf = MSDEDetector().fit(x_train)  # threshold="cross_fit", 5 folds, contamination 0.05
    cf_first_s = time.perf_counter() - start
    start = time.perf_counter()
    det_cf = MSDEDetector().fit(x_train)  # again, now compiled
    cf_s = time.perf_counter() - start
    s_cf = det_cf.score_samples(x_test)
    det_chi = fitted["inductive (default)"]
    fit_chi_s = next(r[5] for r in rows if r[0] == "inductive (default)")
    s_chi = test_scores["inductive (default)"]
    print(f"\n### Threshold — {name}: inductive default, contamination = {det_cf.contamination}\n")
    print(
        "| threshold | threshold_ | train normals above (cross_fit: out-of-fold; chi2: "
        "in-sample) "
        "| test normals above (FPR) | test abnormals above (recall) | fit (s): first / warm |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for what, det, s, fit_s in (
        (f"cross_fit ({det_cf.n_folds} folds)", det_cf, s_cf, f"{cf_first_s:.2f} / {cf_s:.2f}"),
        ("chi2", det_chi, s_chi, f"— / {fit_chi_s:.2f}"),
    ):
        thr = det.threshold_
        print(
            f"| {what} | {thr:.3f} | {np.mean(det.labels_):.3f} "
            f"| {np.mean(s[:n_tn] > thr):.3f} | {np.mean(s[n_tn:] > thr):.3f} | {fit_s} |"
        )
    print(
        "\nThe cross-fit fit is the full fit plus one per fold; its first run compiles for "
        "the fold sizes, which differ from the full fit's."
    )

    # ---------------------------------------------------------------- table 2
    batch_rows = [
        "paper preset (transductive, MSDE weights)",
        "inductive (default)",
        "plain Gaussian (mode='none')",
    ]
    fracs = (0.10, 0.05)
    n_abn = {f: max(1, round(f * n_tn / (1 - f))) for f in fracs}
    rng = np.random.default_rng(args.seed)
    subsets = {
        f: [rng.choice(n_ta, n_abn[f], replace=False) for _ in range(args.seeds)] for f in fracs
    }
    half = args.single_n // 2
    single_idx = np.concatenate(
        [
            rng.choice(n_tn, min(half, n_tn), replace=False),
            n_tn + rng.choice(n_ta, min(args.single_n - half, n_ta), replace=False),
        ]
    )
    single_labels = labels[single_idx]

    table2, checks = [], []
    for label in batch_rows:
        det, s_full = fitted[label], test_scores[label]
        batch_auc, batch_diff = {}, 0.0
        for f in fracs:
            log(f"[{name}] {label}: batches with {100 * f:.0f} % abnormal")
            aucs = []
            for idx in subsets[f]:
                xb = np.concatenate([x_tn, x_ta[idx]])
                yb = np.concatenate([np.zeros(n_tn, np.int32), np.ones(len(idx), np.int32)])
                sb = det.score_samples(xb)
                aucs.append(float(mj.core.roc_auc(yb, sb)))
                ref = np.concatenate([s_full[:n_tn], s_full[n_tn + idx]])
                batch_diff = max(batch_diff, float(np.max(np.abs(sb - ref))))
            batch_auc[f] = aucs
        log(f"[{name}] {label}: {len(single_idx)} images one at a time")
        start = time.perf_counter()
        s_single = np.array(
            [det.score_samples(x_test[i : i + 1])[0] for i in single_idx], np.float64
        )
        single_s = time.perf_counter() - start
        single_diff = float(np.max(np.abs(s_single - s_full[single_idx])))
        table2.append(
            (
                label,
                metrics(labels, s_full)[0],
                mean_sd(batch_auc[0.10]),
                mean_sd(batch_auc[0.05]),
                float(mj.core.roc_auc(single_labels, s_single)),
                float(mj.core.roc_auc(single_labels, s_full[single_idx])),
                single_s,
            )
        )
        checks.append((label, batch_diff, single_diff))

    n_s0 = int(np.sum(single_labels == 0))
    n_s1 = len(single_idx) - n_s0
    print(f"\n### Table 2 — {name}: batch dependence (AUROC)\n")
    print(
        f"(b): all {n_tn} test normals + {n_abn[0.10]} (10 %) or {n_abn[0.05]} (5 %) random "
        f"abnormal images per batch, mean ± sd over {args.seeds} seeds. (c): a random subset of "
        f"{len(single_idx)} test images ({n_s0} normal + {n_s1} abnormal), each scored alone "
        "(`score_samples(x[i:i+1])`; the paper preset then shifts it together with the "
        "training normals only); (a) on the same subset for comparison.\n"
    )
    print(
        "| scorer | (a) official test set | (b) 10 % abnormal | (b) 5 % abnormal "
        "| (c) one at a time | (a) on the (c) subset | (c) time (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, a, b10, b5, c, a_sub, single_s in table2:
        print(f"| {label} | {a:.3f} | {b10} | {b5} | {c:.3f} | {a_sub:.3f} | {single_s:.1f} |")
    print(
        "\nLargest |score difference| against (a) for the same image (batch independence "
        "check; should be ~0 except for the transductive preset):\n"
    )
    print("| scorer | (b) vs (a) | (c) vs (a) |")
    print("|---|---:|---:|")
    for label, bd, sd in checks:
        print(f"| {label} | {bd:.3g} | {sd:.3g} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="See the module docstring for what each table measures.",
    )
    parser.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        help="folder holding the dataset folders (default: %(default)s)",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=tuple(DATASETS),
        default=list(DATASETS),
        help="pixel datasets to run (ignored with --features)",
    )
    parser.add_argument(
        "--features",
        action="append",
        metavar="[NAME=]FILE.npz",
        help="precomputed (n, d) embeddings under train_normal / test_normal / "
        "test_abnormal, benchmarked instead of pixels (repeatable)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=5,
        help="random abnormal subsets per batch mix in table 2 (default 5)",
    )
    parser.add_argument(
        "--single-n",
        type=int,
        default=200,
        help="test images scored one at a time, half normal (default 200)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random subsets")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="timed fit + score runs per scorer after the warm-up; the best "
        "is reported (default 3)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: --seeds 2 --single-n 40 --repeat 1"
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.single_n, args.repeat = 2, 40, 1
    if args.seeds < 1 or args.single_n < 2 or args.repeat < 1:
        parser.error("--seeds and --repeat must be >= 1, --single-n >= 2.")

    start = time.perf_counter()
    print(
        f"# bench_detector — {datetime.datetime.now():%Y-%m-%d %H:%M}; msde_jax "
        f"{mj.__version__}, jax {jax.__version__} on {jax.default_backend()} "
        f"({jax.devices()[0].device_kind}); {platform.platform()}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPU cores, OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}; float32"
        f"{'; --quick' if args.quick else ''}"
    )
    for name, desc, feats in load_datasets(args):
        bench_dataset(name, desc, feats, args)
    print(f"\nTotal wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
