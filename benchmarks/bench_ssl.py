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
"""

import argparse
import json
import os
import platform
import time

import jax

from msde_jax import MSDEDetector
from msde_jax.embedder import Embedder
from msde_jax.io.datasets import load_dataset
from msde_jax.pipeline.evaluation import embed_dataset, evaluate_embeddings
from msde_jax.ssl import TrainConfig, train_backbone

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--task", default="anatpaste")
    parser.add_argument("--anatomy", default="bright", choices=("bright", "dark"))
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_ssl.json")
    args = parser.parse_args()

    here = os.path.dirname(os.path.abspath(__file__))
    results = {
        "device": f"{jax.devices()[0].device_kind} × {jax.device_count()} ({platform.machine()})",
        "args": vars(args),
        "runs": {},
    }
    for name in args.datasets:
        spec = DATASETS[name]
        path = os.path.join(here, "..", spec) if spec.endswith(".npz") else spec
        dataset = load_dataset(path)
        embed = dict(image_size=args.image_size, batch_size=64, progress=False)
        imagenet = measure(Embedder(args.backbone, **embed), dataset)
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
        trained = train_backbone(dataset.train_normal, config)
        train_s = time.perf_counter() - start
        adapted = measure(Embedder(args.backbone, weights=trained.variables, **embed), dataset)
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
