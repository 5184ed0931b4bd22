"""The ensemble preset and its members, and the label-free rule that would choose among them.

Issue 22, item 5. For each dataset and backbone this script

1. builds the library's validation set (:func:`msde_jax.pipeline.selection.validation_set`,
   what ``msde-jax evaluate`` runs) once per ``--seeds`` seed: the training normals split by
   content into a fitting part (80 %), clean held-out normals and sources of synthetic anomalies
   (every :data:`~msde_jax.ssl.synthetic.KINDS` kind equally often, half bright, half dark);
2. embeds every image once per feature source, through the cache (``--cache-dir``): the patch
   features (``Embedder(features="patches")``), the pooled patch layers
   (``Embedder(layers=patch_layers)``; one level is a slice of it, the global average of that
   layer, exactly what ``Embedder(layers=(layer,))`` gives) and the pooled head;
3. fits every member once on the fitting part and once on all training normals:
   ``bank:top`` (today's default, :func:`~msde_jax.pipeline.presets.recommended`),
   ``lw:patch-layers`` (Ledoit-Wolf Gaussian on the concatenated levels), ``lw:level-<i>``
   (one per level, 1 = the backbone's shallowest patch layer) and ``knn:head-cosine`` (cosine
   kNN, k = ``--neighbors``), each as the preset builds it (:mod:`msde_jax.pipeline.presets`);
4. fuses them as :func:`~msde_jax.pipeline.presets.ensemble` does, ``ensemble:rank`` /
   ``ensemble:zscore`` (levels joint) and ``ensemble:rank-levels`` / ``ensemble:zscore-levels``
   (one Gaussian per level), from the members' fitted scores with the library's pure functions
   (:mod:`msde_jax.detectors.calibration`: the same computation as ``FusedDetector.fit``,
   without refitting the members; ``--verify-fusion`` fits one real ``FusedDetector`` and
   checks its scores and threshold are these);
5. measures (a) the **synthetic-validation AUROC per family** of synthetic anomalies,
   :data:`FAMILIES` (mean over seeds), (b) the **label-free rule**: each candidate's rank among
   the candidates in every family × dataset × backbone (1 = best; ties share the mean rank),
   averaged, the candidate with the lowest mean rank chosen, and (c) the **real test AUROC /
   AP** and the **FPR of the threshold** (``contamination`` 0.05) on the test normals,
   reported only: nothing here chooses by a test label.

Writes ``--out`` (JSON) and ``--markdown``. Times are wall times, compilation included.

Usage::

    python benchmarks/bench_ensemble.py --cache-dir .bench_cache --out ensemble.json \
        --markdown ensemble.md
    python benchmarks/bench_ensemble.py --datasets pneumoniamnist --backbones mobilenet_v2 \
        --limit 60 --image-size 64 --seeds 0 --bank-size 500 --verify-fusion   # a smoke run
"""

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from msde_jax import Embedder, FusedDetector
from msde_jax.backbones.registry import backbone_spec
from msde_jax.detectors.calibration import (
    fuse_scores,
    fusion_stats,
    loo_tail_scores,
    rank_calibration,
)
from msde_jax.detectors.fitting import quantile_threshold
from msde_jax.io.datasets import load_dataset
from msde_jax.pipeline import presets
from msde_jax.pipeline.evaluation import embed, limit_dataset
from msde_jax.pipeline.selection import validation_set
from msde_jax.ssl.synthetic import KINDS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

FAMILIES = {
    "local": ("anatpaste", "cutpaste", "scar"),
    "diffuse": ("opacity", "texture"),
    "global": ("gamma", "blur", "elastic", "mixture"),
}
assert sorted(k for f in FAMILIES.values() for k in f) == sorted(KINDS), "a kind is missing"
CONTAMINATION = 0.05


def load(name: str):
    path = DATA / name / f"{name}.npz"
    return load_dataset(path if path.exists() else name)


def auroc(labels, scores) -> float:
    return float(roc_auc_score(labels, np.asarray(scores, np.float64)))


def members(backbone: str, args) -> dict[str, tuple[str, object]]:
    """name -> (feature source, unfitted detector): the components of the presets."""
    kw = {"neighbors": args.neighbors, "image_size": args.image_size}
    joint = presets.ensemble(backbone, **kw).detector.components
    each = presets.ensemble(backbone, levels="each", **kw).detector.components
    bank = joint["patches"].set_params(size=args.bank_size)
    default = presets.recommended(backbone, image_size=args.image_size).detector
    assert {**default.get_params(), "size": args.bank_size} == bank.get_params()
    out = {
        "bank:top": ("patches", bank),
        "lw:patch-layers": ("layers", joint["layers"]),
        "knn:head-cosine": ("head", joint["head"]),
    }
    # Levels by position (1 = the shallowest patch layer), so every backbone has the same names.
    for i, layer in enumerate(backbone_spec(backbone).patch_layers, 1):
        out[f"lw:level-{i}"] = (f"level:{layer}", each[f"layer:{layer}"])
    return out


def ensembles(backbone: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (calibration, member names), the components of presets.ensemble."""
    n_levels = len(backbone_spec(backbone).patch_layers)
    levels = tuple(f"lw:level-{i}" for i in range(1, n_levels + 1))
    out = {}
    for calibration in ("rank", "zscore"):
        out[f"ensemble:{calibration}"] = (
            calibration,
            ("lw:patch-layers", "knn:head-cosine", "bank:top"),
        )
        out[f"ensemble:{calibration}-levels"] = (
            calibration,
            (*levels, "knn:head-cosine", "bank:top"),
        )
    return out


def fuse(fitted: dict, calibration: str, scores: dict[str, np.ndarray]) -> tuple:
    """FusedDetector.fit's computation on fitted members: (scores of ``scores``, the fused
    out-of-fold training scores, the threshold)."""
    oof = {name: np.asarray(det.decision_scores_) for name, det in fitted.items()}
    if calibration == "rank":
        state = rank_calibration(oof)
        train = np.mean([np.asarray(v) for v in loo_tail_scores(oof).values()], axis=0)
    else:
        state = fusion_stats(oof)
        train = np.asarray(fuse_scores(oof, state))
    return np.asarray(fuse_scores(scores, state)), train, quantile_threshold(train, CONTAMINATION)


def run(dataset_name: str, backbone: str, args) -> dict:
    start = time.perf_counter()
    dataset = limit_dataset(load(dataset_name), limit=args.limit)
    train, test = list(dataset.train_normal), dataset.test_items()
    labels = np.asarray(dataset.test_labels())
    vsets = [validation_set(train, fallback_size=args.image_size, seed=s) for s in args.seeds]
    fit_idx, val_idx = vsets[0].fit, vsets[0].normals
    n_val = len(val_idx)

    # 2. Features: one embedding per source, each level a slice of the pooled layers.
    spec = backbone_spec(backbone)
    kw = {"image_size": args.image_size}
    sources = {
        "patches": Embedder(backbone, features="patches", **kw),
        "layers": Embedder(backbone, layers=spec.patch_layers, **kw),
        "head": Embedder(backbone, **kw),
    }
    feats, timings = {}, {}
    for source, embedder in sources.items():
        t = time.perf_counter()
        opts = {"cache_dir": args.cache_dir, "progress": False}
        tr = embed(embedder, train, what="train", **opts)
        feats[source] = {"train": tr, "fit": tr[fit_idx], "test": embed(embedder, test, **opts)}
        for seed, v in zip(args.seeds, vsets, strict=True):
            syn = embed(embedder, list(v.anomalies), **opts)
            feats[source][f"val{seed}"] = np.concatenate([tr[val_idx], syn])
        timings[f"embed {source} s"] = time.perf_counter() - t
    offset = 0
    for layer in spec.patch_layers:
        width = spec.layers[layer][1]
        feats[f"level:{layer}"] = {
            k: v[:, offset : offset + width] for k, v in feats["layers"].items()
        }
        offset += width

    # 3. Members, fitted on the fitting part (validation) and on all normals (test).
    fitted_fit, fitted_all, scores = {}, {}, {}
    for name, (source, template) in members(backbone, args).items():
        t = time.perf_counter()
        params = template.get_params()
        det = type(template)(**params).fit(feats[source]["fit"])
        full = type(template)(**params).fit(feats[source]["train"])
        fitted_fit[name], fitted_all[name] = det, full
        scores[name] = {
            **{f"val{s}": det.score_samples(feats[source][f"val{s}"]) for s in args.seeds},
            "test": full.score_samples(feats[source]["test"]),
            "threshold": full.threshold_,
        }
        timings[f"fit+score {name} s"] = time.perf_counter() - t
        print(f"{dataset_name} {backbone} {name}: {time.perf_counter() - t:.0f} s", flush=True)

    # 4. The ensembles, from the fitted members.
    for name, (calibration, parts) in ensembles(backbone).items():
        out = {}
        for s in args.seeds:
            split = {p: scores[p][f"val{s}"] for p in parts}
            out[f"val{s}"] = fuse({p: fitted_fit[p] for p in parts}, calibration, split)[0]
        split = {p: scores[p]["test"] for p in parts}
        out["test"], _, out["threshold"] = fuse(
            {p: fitted_all[p] for p in parts}, calibration, split
        )
        scores[name] = out
    if args.verify_fusion:
        timings["verify fusion s"] = verify(backbone, args, feats, scores)

    # 5. Metrics.
    results = {}
    for name, s in scores.items():
        fam = {}
        for family, kinds in FAMILIES.items():
            per_seed = []
            for seed, v in zip(args.seeds, vsets, strict=True):
                made = np.flatnonzero(np.isin(v.kinds, kinds))
                if made.size:  # a tiny --limit run may make no anomaly of a family
                    idx = np.r_[np.arange(n_val), n_val + made]
                    y = np.r_[np.zeros(n_val), np.ones(made.size)]
                    per_seed.append(auroc(y, s[f"val{seed}"][idx]))
            fam[family] = float(np.mean(per_seed)) if per_seed else None
        normal = labels == 0
        results[name] = {
            "synthetic_auroc_by_family": fam,
            "auroc": auroc(labels, s["test"]),
            "ap": float(average_precision_score(labels, np.asarray(s["test"], np.float64))),
            "fpr_test_normals": float(np.mean(np.asarray(s["test"])[normal] > s["threshold"])),
        }
    timings["total s"] = time.perf_counter() - start
    return {
        "dataset": dataset_name,
        "backbone": backbone,
        "sizes": {
            "fit": len(fit_idx),
            "val_normal": n_val,
            "synthetic_per_seed": len(vsets[0].anomalies),
            "train": len(train),
            "test_normal": int((labels == 0).sum()),
            "test_abnormal": int((labels == 1).sum()),
        },
        "results": results,
        "timings": timings,
    }


def verify(backbone, args, feats, scores) -> float:
    """One real FusedDetector (ensemble:rank on all training normals): its test scores and
    threshold are the ones computed from the fitted members."""
    t = time.perf_counter()
    spec = members(backbone, args)
    parts = ensembles(backbone)["ensemble:rank"][1]
    det = FusedDetector(
        {p: type(spec[p][1])(**spec[p][1].get_params()) for p in parts}, calibration="rank"
    ).fit({p: feats[spec[p][0]]["train"] for p in parts})
    got = det.score_samples({p: feats[spec[p][0]]["test"] for p in parts})
    np.testing.assert_allclose(got, scores["ensemble:rank"]["test"], rtol=1e-5, atol=1e-6)
    assert abs(det.threshold_ - scores["ensemble:rank"]["threshold"]) <= 1e-5 * max(
        1.0, abs(det.threshold_)
    )
    print("verified: FusedDetector(calibration='rank') gives the benchmark's fusion", flush=True)
    return time.perf_counter() - t


def label_free_rule(runs: list[dict]) -> dict[str, float]:
    """Each candidate's mean rank over families × runs (1 = the best synthetic AUROC); a
    family without anomalies in a run (only in tiny runs) is left out."""
    names = list(runs[0]["results"])
    ranks = {n: [] for n in names}
    for r in runs:
        for family in FAMILIES:
            values = [r["results"][n]["synthetic_auroc_by_family"][family] for n in names]
            if None in values:
                continue
            values = np.array(values)
            order = (-values).argsort(kind="stable")
            rank = np.empty(len(names))
            rank[order] = np.arange(1, len(names) + 1)
            for v in np.unique(values):  # ties share their mean rank
                rank[values == v] = rank[values == v].mean()
            for n, k in zip(names, rank, strict=True):
                ranks[n].append(float(k))
    return {n: float(np.mean(k)) for n, k in ranks.items()}


def markdown(runs: list[dict], mean_rank: dict[str, float], chosen: str) -> str:
    heads = [f"{r['dataset']} {r['backbone']}" for r in runs]
    lines = [
        "Each run: synthetic AUROC local / diffuse / global → **real AUROC** / AP / FPR of the "
        f"threshold on test normals (contamination {CONTAMINATION}).",
        "",
        "| candidate | mean rank | " + " | ".join(heads) + " |",
        "|---|---|" + "---|" * len(runs),
    ]
    for n in sorted(mean_rank, key=mean_rank.get):
        cells = []
        for r in runs:
            x = r["results"][n]
            by = x["synthetic_auroc_by_family"]
            fam = " / ".join("—" if by[f] is None else f"{by[f]:.3f}" for f in FAMILIES)
            cells.append(
                f"{fam} → **{x['auroc']:.3f}** / {x['ap']:.3f} / {x['fpr_test_normals']:.3f}"
            )
        mark = " (chosen)" if n == chosen else ""
        lines.append(f"| {n}{mark} | {mean_rank[n]:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", nargs="+", default=["brain_tumor_mri", "pneumoniamnist"])
    p.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "mobilenet_v2"])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--limit", type=int, default=None, help="at most this many images per class")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="synthesis seeds")
    p.add_argument(
        "--bank-size",
        type=int,
        default=2000,
        help="patch bank coreset size (2,000: the tables in RESULTS.md; the library default is "
        "5,000 since 2026-12-05)",
    )
    p.add_argument("--neighbors", type=int, default=5, help="k of the cosine kNN")
    p.add_argument("--verify-fusion", action="store_true", help="check one real FusedDetector")
    p.add_argument("--cache-dir", default=".bench_cache")
    p.add_argument("--out", default="ensemble.json")
    p.add_argument("--markdown", default="ensemble.md")
    args = p.parse_args(argv)
    runs = []
    for d in args.datasets:
        for b in args.backbones:
            runs.append(run(d, b, args))
            Path(args.out).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
    mean_rank = label_free_rule(runs)
    write_choice(
        args,
        mean_rank,
        "lowest mean rank of synthetic AUROC over families x runs",
        lambda chosen: markdown(runs, mean_rank, chosen),
        runs=runs,
    )
    return 0


def write_choice(
    args: argparse.Namespace,
    mean_rank: dict[str, float],
    rule_text: str,
    table: Callable[[str], str],
    **results: Any,
) -> str:
    """The rule's choice (lowest mean rank) with the runs to ``args.out`` (JSON) and its table
    to ``args.markdown`` and stdout; returns the choice."""
    chosen = min(mean_rank, key=mean_rank.get)
    summary = {
        "families": FAMILIES,
        "label_free_rule": rule_text,
        "chosen": chosen,
        "mean_rank": mean_rank,
        "args": vars(args),
        **results,
    }
    Path(args.out).write_text(json.dumps(summary, indent=2))
    text = table(chosen)
    Path(args.markdown).write_text(text)
    print(text)
    print(f"label-free choice (lowest mean rank): {chosen}")
    return chosen


if __name__ == "__main__":
    sys.exit(main())
