"""Quickstart: normal chest X-rays in, an anomaly detector out, in a dozen lines.

Uses the PneumoniaMNIST split that ships with the package (MedMNIST v2, CC BY 4.0): the default
configuration (``msde_jax.recommended``: patch features of the pretrained
EfficientNet-Lite0, ImageNet weights running in JAX, and a patch memory bank) is fitted on the
normal training images and scores the official test set, one image independently of the others.

    python examples/00_quickstart.py [--limit 200] [--image-size 224]
"""

import argparse

import numpy as np

from msde_jax import recommended
from msde_jax.core import average_precision, roc_auc
from msde_jax.io.datasets import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="images per class (quick runs)")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    data = load_dataset("pneumoniamnist")
    n = args.limit
    train, normal, abnormal = data.train_normal[:n], data.test_normal[:n], data.test_abnormal[:n]

    embedder, detector = recommended(image_size=args.image_size)
    detector.fit(embedder.embed(train))  # (n, 14, 14, 152) patch features of normals only
    scores = detector.score_samples(embedder.embed(normal + abnormal))  # one score per image

    labels = np.r_[np.zeros(len(normal)), np.ones(len(abnormal))]
    print(
        f"{detector!r} on {len(train)} normals: AUROC {float(roc_auc(labels, scores)):.3f}, "
        f"AP {float(average_precision(labels, scores)):.3f}; "
        f"{int((scores > detector.threshold_).sum())} of {len(scores)} test images flagged"
    )


if __name__ == "__main__":
    main()
