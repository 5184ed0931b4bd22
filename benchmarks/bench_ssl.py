"""Does self-supervised adaptation help? Detector AUROC/AP with an adapted vs an ImageNet backbone.

    python benchmarks/bench_ssl.py                                   # CPU-sized defaults
    python benchmarks/bench_ssl.py --datasets pneumoniamnist --steps 300 --image-size 112
    python benchmarks/bench_ssl.py --image-size 224 --steps 2000 --batch-size 64   # GPU recipe

For each dataset: embed the training normals and the official test split with the backbone's
ImageNet weights, fit the detector (inductive, and the paper preset scoring the test set as one
batch) and record AUROC/AP; then adapt the same backbone to the training normals with the proxy
task (:func:`msde_jax.ssl.train_backbone`, starting from the same ImageNet weights) and repeat
with the adapted weights. Both arms use the same resolution. Writes a JSON file with every
number, the training log and the wall times.

``--scorer bank`` measures the default detector instead (:func:`presets.recommended`: patch
features on a grid of ``image_size / 16``, ``PatchBankDetector()``), and for each arm also its
synthetic-validation AUROC per family (seeds ``--seeds``, as ``bench_resolution.py``): the
label-free signal. The proxy task pastes local defects, so the ``local`` family measures what
the backbone was trained on; ``diffuse`` and ``global`` are the families it never saw.

    python benchmarks/bench_ssl.py --scorer bank --backbone efficientnet_lite0 \
        --datasets brain_tumor_mri --image-size 112 --steps 200
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
from sklearn.metrics import average_precision_score

from msde_jax import MSDEDetector
from msde_jax.embedder import Embedder
from msde_jax.io.datasets import load_dataset
from msde_jax.pipeline import presets
from msde_jax.pipeline.evaluation import embed_dataset, evaluate_embeddings
from msde_jax.pipeline.selection import validation_set
from msde_jax.ssl import TrainConfig, train_backbone

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ensemble import auroc  # noqa: E402
from bench_resolution import family_aurocs  # noqa: E402

DATASETS = {
    "brain_tumor_mri": "../shared/data/brain_tumor_mri/brain_tumor_mri.npz",
    "pneumoniamnist": "pneumoniamnist",
}


def measure(embedder: Embedder, dataset) -> dict:
    """AUROC / AP of both detectors on one embedding of the dataset (the library's pipeline)."""
    embedded = embed_dataset(dataset, embedder, progress=False)
    out = {"embed_s": round(embedded.embed_s, 1)}
    for name, detector in (("inductive", MSDEDetector()), ("paper", MSDEDetector.paper())):
        metrics = evaluate_embeddings(embedded, detector).metrics
        out[name] = {
            "auroc": round(metrics["auroc"], 4),
            "ap": round(metrics["average_precision"], 4),
        }
    return out


def measure_bank(candidate: presets.Candidate, dataset, vsets: dict) -> dict:
    """The default candidate (patch features, its detector): synthetic-validation AUROC per
    family (fit on the validation's fitting part, mean over ``vsets``' seeds) and, reported
    only, test AUROC / AP (fit on all training normals, the test set scored)."""
    start = time.perf_counter()
    embedder, template = candidate.embedder, candidate.detector
    train = embedder.embed(list(dataset.train_normal))
    first = next(iter(vsets.values()))
    fit_idx, val_idx = first.fit, first.normals
    det = type(template)(**template.get_params()).fit(train[fit_idx])
    val_scores = {
        seed: np.asarray(
            det.score_samples(np.concatenate([train[val_idx], embedder.embed(list(v.anomalies))]))
        )
        for seed, v in vsets.items()
    }
    families = family_aurocs(val_scores, vsets, len(val_idx))
    full = type(template)(**template.get_params()).fit(train)
    labels = np.asarray(dataset.test_labels())
    scores = np.asarray(full.score_samples(embedder.embed(dataset.test_items())), np.float64)
    return {
        "synthetic_auroc_by_family": families,
        "bank": {"auroc": auroc(labels, scores), "ap": average_precision_score(labels, scores)},
        "wall_s": round(time.perf_counter() - start, 1),
    }


def measure_arm(args, dataset, vsets: dict | None, weights=None) -> dict:
    """One arm (ImageNet weights, or ``weights``) with ``args.scorer``'s detectors."""
    embed = dict(image_size=args.image_size, batch_size=64, progress=False, weights=weights)
    if args.scorer == "bank":  # the stride-16 layer's footprint, as at 224 px with grid 14
        grid = max(1, args.image_size // 16)
        return measure_bank(presets.recommended(args.backbone, grid=grid, **embed), dataset, vsets)
    return measure(Embedder(args.backbone, **embed), dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=list(DATASETS),
        help=f"names ({', '.join(DATASETS)}) or paths to dataset .npz files",
    )
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--task", default="anatpaste")
    parser.add_argument("--anatomy", default="bright", choices=("bright", "dark"))
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scorer", default="msde", choices=("msde", "bank"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="bench_ssl.json")
    args = parser.parse_args()

    here = os.path.dirname(os.path.abspath(__file__))
    results = {
        "device": f"{jax.devices()[0].device_kind} × {jax.device_count()} ({platform.machine()})",
        "args": vars(args),
        "runs": {},
    }
    for spec in args.datasets:
        if spec in DATASETS:
            name, spec = spec, DATASETS[spec]
            path = os.path.join(here, "..", spec) if spec.endswith(".npz") else spec
        else:  # a path, e.g. a copy of brain_tumor_mri.npz on a machine without ../shared
            name, path = Path(spec).stem, spec
        dataset = load_dataset(path)
        vsets = None
        if args.scorer == "bank":
            normals = list(dataset.train_normal)
            vsets = {seed: validation_set(normals, seed=seed) for seed in args.seeds}
        imagenet = measure_arm(args, dataset, vsets)
        # as it is measured: a run stopped by its time limit (benchmarks/gpu.sh) keeps it
        print(f"{name}: ImageNet arm {json.dumps(imagenet, default=float)}", flush=True)
        config = TrainConfig(
            backbone=args.backbone,
            task=args.task,
            anatomy=args.anatomy,
            image_size=args.image_size,
            batch_size=args.batch_size,
            steps=args.steps,
            learning_rate=args.lr,
            warmup_steps=min(50, args.steps // 10),
            seed=args.seed,
            log_every=max(1, args.steps // 20),
        )
        start = time.perf_counter()
        # With the bank scorer the backbone adapts to the validation's fitting part only, so
        # that its held-out normals and anomaly sources stay unseen (the synthetic AUROC would
        # flatter the adapted arm otherwise); the test arm uses the same backbone.
        normals = dataset.train_normal
        if vsets is not None:
            normals = np.asarray(normals)[next(iter(vsets.values())).fit]
        trained = train_backbone(normals, config)
        train_s = time.perf_counter() - start
        adapted = measure_arm(args, dataset, vsets, trained.variables)
        results["runs"][name] = {
            "imagenet": imagenet,
            "adapted": adapted,
            "train_s": round(train_s, 1),
            "history": trained.history,
        }
        print(
            f"\n{name} ({args.backbone}, {args.image_size} px, {args.steps} steps × "
            f"{args.batch_size}, {args.task}/{args.anatomy}; training {train_s:.0f} s)"
        )
        if args.scorer == "bank":
            print("| weights | synthetic AUROC local / diffuse / global | test AUROC / AP |")
            print("|---|---|---|")
            for arm, r in (("ImageNet", imagenet), ("adapted", adapted)):
                fam = " / ".join(f"{v:.3f}" for v in r["synthetic_auroc_by_family"].values())
                print(f"| {arm} | {fam} | {r['bank']['auroc']:.3f} / {r['bank']['ap']:.3f} |")
        else:
            print("| weights | inductive AUROC / AP | paper preset AUROC / AP |")
            print("|---|---|---|")
            for arm, r in (("ImageNet", imagenet), ("adapted", adapted)):
                print(
                    f"| {arm} | {r['inductive']['auroc']:.3f} / {r['inductive']['ap']:.3f} "
                    f"| {r['paper']['auroc']:.3f} / {r['paper']['ap']:.3f} |"
                )
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
