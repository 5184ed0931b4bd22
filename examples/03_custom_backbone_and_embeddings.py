"""Bring your own features: a different backbone, your own weights file, or embeddings you
computed elsewhere (any (n, d) float array works with the detector).

    python examples/03_custom_backbone_and_embeddings.py [--weights resnet18-f37072fd.pth]
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np

from msde_jax import Embedder, MSDEDetector
from msde_jax.io.datasets import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights",
        default="random",
        help="a torchvision resnet18 .pth (the paper's backbone); 'random' "
        "only shows the mechanics",
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    data = load_dataset("pneumoniamnist")

    # 1. The paper's backbone: ResNet-18, global average pooling, 512-d.
    resnet = Embedder("resnet18", weights=args.weights, image_size=args.image_size)
    features = resnet.embed(data.train_normal[: args.limit])
    print(f"ResNet-18 ({args.weights}) embeddings: {features.shape}")

    # 2. Precomputed embeddings from anywhere: save, reload, fit; the model file keeps a note
    #    of what produced them.
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "features.npy", features)
        loaded = np.load(Path(tmp) / "features.npy")
        detector = MSDEDetector(k=min(50, len(loaded) // 2)).fit(loaded)
        detector.save(Path(tmp) / "model.npz", metadata={"embedder": resnet.config()})
        again = MSDEDetector.load(Path(tmp) / "model.npz")
        print(
            f"reloaded model from {again.metadata_['embedder']['backbone']} features; "
            f"threshold {again.threshold_:.3f}"
        )
        test = resnet.embed(data.test_abnormal[:5])
        print("scores of 5 pneumonia images:", np.round(again.score_samples(test), 2))


if __name__ == "__main__":
    main()
