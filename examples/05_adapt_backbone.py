"""Adapt a backbone to normal images with a self-supervised proxy task, then detect with it.

    python examples/05_adapt_backbone.py                    # MobileNetV2, 64 px, 300 steps
    python examples/05_adapt_backbone.py --steps 3 --limit 40 --backbone resnet18 --init scratch

Trains on the built-in PneumoniaMNIST normals only (the anomalies are synthetic: AnatPaste),
resumably into --out, then compares the detector with the starting weights (ImageNet, or
random ones with --init scratch) and the adapted weights.
"""

import argparse

from msde_jax import Embedder, MSDEDetector
from msde_jax.io.datasets import load_dataset
from msde_jax.pipeline.evaluation import evaluate
from msde_jax.ssl import TrainConfig, train_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--init", default="imagenet", help="imagenet or scratch")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--limit", type=int, default=None, help="images per class (quick runs)")
    parser.add_argument("--out", default=None, help="run folder (checkpoints; resumable)")
    args = parser.parse_args()

    data = load_dataset("pneumoniamnist")
    train = data.train_normal[: args.limit]

    config = TrainConfig(
        backbone=args.backbone,
        init=args.init,
        task="anatpaste",
        image_size=args.image_size,
        batch_size=16,
        steps=args.steps,
        warmup_steps=min(20, args.steps // 10),
        log_every=max(1, args.steps // 10),
    )
    result = train_backbone(train, config, out_dir=args.out, resume=args.out is not None)
    for record in result.history:
        print(f"step {record['step']:5d}  loss {record['loss']:.4f}  acc {record['accuracy']:.3f}")

    before = args.init if args.init != "imagenet" else None
    if before == "scratch":
        before = "random"
    for name, weights in (("before", before), ("adapted", result.variables)):
        embedder = Embedder(args.backbone, weights=weights, image_size=args.image_size)
        k = min(50, len(train) // 2)  # the paper's k, or fewer for quick runs on few images
        evaluation = evaluate(
            data, embedder, MSDEDetector.paper(k=k), limit=args.limit, progress=False
        )
        print(f"{name:8s} weights: paper-preset AUROC {evaluation.metrics['auroc']:.3f}")


if __name__ == "__main__":
    main()
