"""Batch-independent scorers on the real datasets, and their selection without abnormal labels.

For each dataset and backbone this script

1. splits the training normals by content into a fitting part (80 %) and two held-out halves:
   clean validation normals, and sources for synthetic anomalies
   (:func:`msde_jax.ssl.synthetic.synthesize`, every kind equally often, half of them with
   ``anatomy="bright"`` and half ``"dark"``, so the set does not depend on the modality);
2. embeds everything once per feature kind (pooled layer vectors, patch features), cached;
3. fits every candidate configuration (the same list for every dataset, written down below
   before any test label was looked at) on the fitting part and scores held-out normals
   against the synthetic anomalies: the **synthetic AUROC**, the only number selection uses;
4. refits each candidate on all training normals and scores the official test set: the
   **real AUROC / AP** under (a) the test set as one batch, (b) batches of all test normals
   with 5 % abnormal images (20 draws; the scores of inductive scorers do not depend on the
   batch, checked by scoring images alone), (c) one image at a time;
5. reports the paper preset under the same (a)–(c), the Spearman rank correlation of synthetic
   vs real AUROC over the candidates, the candidate each dataset's synthetic AUROC selects, and
   the fixed rule: the candidate with the best mean synthetic AUROC over every dataset and
   backbone run (one configuration for all).

The test labels are used for measuring only; nothing here chooses by them.

Usage::

    python benchmarks/bench_inductive.py --cache-dir .bench_cache --out inductive.json
    python benchmarks/bench_inductive.py --datasets pneumoniamnist --backbones mobilenet_v2 \
        --limit 200 --image-size 64      # a quick smoke run
"""

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from msde_jax import FusedDetector, MSDEDetector, PatchBankDetector
from msde_jax._rows import content_order
from msde_jax.backbones.registry import backbone_spec
from msde_jax.embedder import Embedder
from msde_jax.evaluation import embed, limit_dataset
from msde_jax.io.datasets import load_dataset
from msde_jax.io.images import to_float
from msde_jax.metrics import average_precision, roc_auc
from msde_jax.ssl.synthetic import KINDS, synthesize

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Layer roles per backbone: the last block at stride 8, at stride 16, a stride-32 block before
# the 320-channel projection, and the 1×1 head (the paper's pooled embedding).
ROLES = {
    "mobilenet_v2": {
        "s8": "features.6",
        "s16": "features.13",
        "s32": "features.16",
        "head": "features.18",
    },
    "efficientnet_lite0": {
        "s8": "_blocks.4",
        "s16": "_blocks.10",
        "s32": "_blocks.14",
        "head": "_conv_head",
    },
}
# Full-rank Gaussians: min(n_components, d, n - 1) components are kept.
FULL_RANK = 1 << 16

# name -> (features, layer roles, scorer, options). Written before looking at any test label.
CANDIDATES = {
    "msde-gaussian:head (today's default)": ("pooled", ("head",), "msde", {}),
    "lw:head": ("pooled", ("head",), "lw", {}),
    "lw:s16+s32": ("pooled", ("s16", "s32"), "lw", {}),
    "knn:head": ("pooled", ("head",), "knn", {}),
    "knn:s16+s32": ("pooled", ("s16", "s32"), "knn", {}),
    "msde-knn:head": ("pooled", ("head",), "msde-knn", {}),
    "msde-knn:s16+s32": ("pooled", ("s16", "s32"), "msde-knn", {}),
    "bank:top": ("patches", None, "bank", {"shift": False, "reduce": "top"}),
    "bank:max": ("patches", None, "bank", {"shift": False, "reduce": "max"}),
    "bank:mean": ("patches", None, "bank", {"shift": False, "reduce": "mean"}),
    "msde-bank:top": ("patches", None, "bank", {"shift": True, "reduce": "top"}),
}
FUSIONS = {
    "fused lw:s16+s32 + knn:head": ("lw:s16+s32", "knn:head"),
    "fused lw:s16+s32 + bank:top": ("lw:s16+s32", "bank:top"),
    "fused lw:head + lw:s16+s32": ("lw:head", "lw:s16+s32"),
}


def make_detector(scorer: str, options: dict, args):
    if scorer == "msde":
        return MSDEDetector()
    if scorer == "lw":
        return MSDEDetector(mode="none", covariance="ledoit_wolf", n_components=FULL_RANK)
    if scorer == "knn":
        return MSDEDetector(mode="none", score="knn")
    if scorer == "msde-knn":
        return MSDEDetector(mode="inductive", score="knn")
    if scorer == "bank":
        return PatchBankDetector(size=args.bank_size, n_folds=args.bank_folds, **options)
    raise ValueError(scorer)


def load(name: str):
    if name == "pneumoniamnist":
        return load_dataset("pneumoniamnist")
    return load_dataset(DATA / name / f"{name}.npz")


def images_as_float(items) -> np.ndarray:
    """(N, H, W, C) float32 in [0, 1] of a list of arrays (all one size)."""
    return np.stack([to_float(item) for item in items])


def split_normals(train: list) -> tuple[list, list, list]:
    """Fitting part (80 %), clean validation normals, synthetic-anomaly sources (10 % each)."""
    order = content_order(np.stack([np.asarray(t) for t in train]).reshape(len(train), -1))
    n_fit = int(round(0.8 * len(train)))
    n_val = (len(train) - n_fit) // 2
    pick = lambda idx: [train[i] for i in sorted(idx)]  # noqa: E731
    return (
        pick(order[:n_fit]),
        pick(order[n_fit : n_fit + n_val]),
        pick(order[n_fit + n_val :]),
    )


def synthetic_set(sources: list, n: int, seed: int = 0):
    """``n`` synthetic anomalies (half ``bright``, half ``dark`` anatomy) as uint8 images."""
    normals = images_as_float(sources)
    half = n // 2
    parts, kinds = [], []
    for i, (anatomy, count) in enumerate((("bright", half), ("dark", n - half))):
        made = synthesize(jax.random.key(seed + i), normals, count, anatomy=anatomy)
        parts.append(np.asarray(made.images))
        kinds += list(np.asarray(made.kinds))
    images = np.concatenate(parts)
    return [np.round(im * 255).astype(np.uint8) for im in images], np.array(kinds)


def report(dataset, backbone, name, r) -> None:
    print(
        f"{dataset} {backbone} {name:42s} synthetic {r['synthetic_auroc']:.3f}  "
        f"real {r['auroc']:.3f} / {r['ap']:.3f}  fit {r['fit_s']:.0f} s",
        flush=True,
    )


def auroc(labels, scores) -> float:
    return float(roc_auc(np.asarray(labels, bool), np.asarray(scores, np.float32)))


def ap(labels, scores) -> float:
    return float(average_precision(np.asarray(labels, bool), np.asarray(scores, np.float32)))


def five_percent_batches(labels, score_fn, rng, draws=20):
    """AUROC over batches of every test normal plus 5 % abnormal images; ``score_fn(idx)``."""
    normal, abnormal = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    n_ab = max(1, round(0.05 * len(normal) / 0.95))
    out = []
    for _ in range(draws):
        idx = np.r_[normal, rng.choice(abnormal, n_ab, replace=False)]
        out.append(auroc(labels[idx], score_fn(idx)))
    return float(np.mean(out)), float(np.std(out))


def run(dataset_name: str, backbone: str, args) -> dict:
    dataset = limit_dataset(load(dataset_name), limit=args.limit)
    train, test, labels = list(dataset.train_normal), dataset.test_items(), dataset.test_labels()
    fit_part, val_normal, sources = split_normals(train)
    synth, synth_kinds = synthetic_set(sources, 2 * len(val_normal))
    val_items, val_labels = (
        val_normal + synth,
        np.r_[np.zeros(len(val_normal)), np.ones(len(synth))],
    )

    roles = ROLES[backbone]
    spec = backbone_spec(backbone)
    union = [roles[r] for r in ("s8", "s16", "s32", "head")]
    offsets, start = {}, 0
    for role in ("s8", "s16", "s32", "head"):
        c = spec.layers[roles[role]][1]
        offsets[role] = slice(start, start + c)
        start += c
    embedders = {
        "pooled": Embedder(backbone, layers=tuple(union), image_size=args.image_size),
        "patches": Embedder(backbone, features="patches", image_size=args.image_size),
    }
    timings = {}
    feats = {}
    for kind, embedder in embedders.items():
        t = time.perf_counter()
        feats[kind] = {
            name: embed(embedder, items, cache_dir=args.cache_dir, what=name)
            for name, items in (
                ("fit", fit_part),
                ("val", val_items),
                ("train", train),
                ("test", test),
            )
        }
        timings[f"embed_{kind}_s"] = time.perf_counter() - t

    def features(candidate, split):
        kind, layer_roles, _, _ = CANDIDATES[candidate]
        x = feats[kind][split]
        if kind == "pooled":
            x = np.concatenate([x[:, offsets[r]] for r in layer_roles], axis=1)
        return x

    rng = np.random.default_rng(0)
    results, fitted = {}, {}

    def fit_pair(name):
        """The candidate fitted on the fitting part and on all training normals (shared by
        the bank candidates that differ only in how patch scores are reduced)."""
        kind, layer_roles, scorer, options = CANDIDATES[name]
        key = (kind, layer_roles, scorer, options.get("shift"))
        if key not in fitted:
            t = time.perf_counter()
            fitted[key] = (
                make_detector(scorer, options, args).fit(features(name, "fit")),
                make_detector(scorer, options, args).fit(features(name, "train")),
                time.perf_counter() - t,
            )
        det, full, t_fit = fitted[key]
        if scorer == "bank":
            det.set_params(reduce=options["reduce"])
            full.set_params(reduce=options["reduce"])
        return det, full, t_fit

    for name in CANDIDATES:
        det, full, t_fit = fit_pair(name)
        val_scores = det.score_samples(features(name, "val"))
        test_x = features(name, "test")
        t = time.perf_counter()
        scores = full.score_samples(test_x)
        t_score = time.perf_counter() - t
        step = max(1, len(test_x) // 8)
        alone = np.concatenate(
            [full.score_samples(test_x[i : i + 1]) for i in range(0, len(test_x), step)]
        )
        results[name] = {
            "synthetic_auroc": auroc(val_labels, val_scores),
            "synthetic_auroc_by_kind": {
                KINDS[int(k)]: auroc(
                    np.r_[np.zeros(len(val_normal)), np.ones(int((synth_kinds == k).sum()))],
                    np.r_[
                        val_scores[: len(val_normal)],
                        val_scores[len(val_normal) :][synth_kinds == k],
                    ],
                )
                for k in sorted(set(synth_kinds.tolist()))
            },
            "auroc": auroc(labels, scores),
            "ap": ap(labels, scores),
            "auroc_5pct": five_percent_batches(labels, lambda idx, s=scores: s[idx], rng),
            "max_abs_diff_alone_vs_batch": float(np.max(np.abs(alone - scores[::step]))),
            "fit_s": t_fit,
            "score_s_per_image": t_score / len(test_x),
        }
        report(dataset_name, backbone, name, results[name])

    for name, parts in FUSIONS.items():

        def fused(split, parts=parts):
            return {p: features(p, split) for p in parts}

        def make(parts=parts):
            return FusedDetector({p: make_detector(*CANDIDATES[p][2:], args) for p in parts})

        t = time.perf_counter()
        det = make().fit(fused("fit"))
        val_scores = det.score_samples(fused("val"))
        full = make().fit(fused("train"))
        t_fit = time.perf_counter() - t
        scores = full.score_samples(fused("test"))
        results[name] = {
            "synthetic_auroc": auroc(val_labels, val_scores),
            "auroc": auroc(labels, scores),
            "ap": ap(labels, scores),
            "auroc_5pct": five_percent_batches(labels, lambda idx, s=scores: s[idx], rng),
            "fit_s": t_fit,
        }
        report(dataset_name, backbone, name, results[name])

    # The paper preset on the head features, under (a) one batch, (b) 5 % batches, (c) alone.
    head_train, head_test = features("lw:head", "train"), features("lw:head", "test")
    paper = MSDEDetector.paper().fit(head_train)
    paper_scores = paper.score_samples(head_test)
    subset = np.sort(rng.choice(len(head_test), min(args.alone, len(head_test)), replace=False))
    alone_scores = np.array([paper.score_samples(head_test[i : i + 1])[0] for i in subset])
    results["paper preset:head"] = {
        "auroc": auroc(labels, paper_scores),
        "ap": ap(labels, paper_scores),
        "auroc_5pct": five_percent_batches(
            labels, lambda idx: paper.score_samples(head_test[idx]), rng, draws=args.paper_draws
        ),
        "auroc_alone_subset": auroc(labels[subset], alone_scores),
        "alone_subset_size": int(len(subset)),
    }
    names = [n for n in results if "synthetic_auroc" in results[n]]
    synth = np.array([results[n]["synthetic_auroc"] for n in names])
    real = np.array([results[n]["auroc"] for n in names])
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    spearman = float(np.corrcoef(rank(synth), rank(real))[0, 1])
    selected = names[int(np.argmax(synth))]
    return {
        "dataset": dataset_name,
        "backbone": backbone,
        "image_size": args.image_size,
        "sizes": {
            "fit": len(fit_part),
            "val_normal": len(val_normal),
            "synthetic": len(synth_kinds),
            "train": len(train),
            "test": len(test),
        },
        "results": results,
        "spearman_synthetic_vs_real": spearman,
        "selected_by_synthetic": selected,
        "timings": timings,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", nargs="+", default=["brain_tumor_mri", "pneumoniamnist"])
    p.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "mobilenet_v2"])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--bank-size", type=int, default=10000, help="patch bank coreset size")
    p.add_argument("--bank-folds", type=int, default=5, help="patch bank cross-fit folds")
    p.add_argument("--limit", type=int, default=None, help="at most this many images per class")
    p.add_argument("--alone", type=int, default=60, help="paper preset: images scored alone")
    p.add_argument("--paper-draws", type=int, default=5, help="paper preset: 5 %% batches")
    p.add_argument("--cache-dir", default=".bench_cache")
    p.add_argument("--out", default="inductive.json")
    args = p.parse_args(argv)
    runs = [run(d, b, args) for d in args.datasets for b in args.backbones]
    # The fixed rule: one configuration for every dataset, by mean synthetic AUROC.
    names = [n for n in runs[0]["results"] if "synthetic_auroc" in runs[0]["results"][n]]
    mean_synth = {
        n: float(np.mean([r["results"][n]["synthetic_auroc"] for r in runs])) for n in names
    }
    fixed = max(mean_synth, key=mean_synth.get)
    summary = {"fixed_rule": fixed, "mean_synthetic_auroc": mean_synth, "runs": runs}
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(f"\nfixed rule (best mean synthetic AUROC): {fixed}")
    print(
        "| dataset | backbone | selected by synthetic | its AUROC | fixed rule AUROC | Spearman |"
    )
    print("|---|---|---|---|---|---|")
    for r in runs:
        sel = r["selected_by_synthetic"]
        print(
            f"| {r['dataset']} | {r['backbone']} | {sel} | {r['results'][sel]['auroc']:.3f} | "
            f"{r['results'][fixed]['auroc']:.3f} | {r['spearman_synthetic_vs_real']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
