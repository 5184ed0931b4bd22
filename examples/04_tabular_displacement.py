"""The tabular MSDE paper's score: total mean-shift displacement, on scikit-learn's breast
cancer data with benign tumours as "normal" (needs scikit-learn: pip install scikit-learn).

    python examples/04_tabular_displacement.py
"""

import numpy as np
from sklearn.datasets import load_breast_cancer

from msde_jax import MSDEDetector
from msde_jax.core import average_precision, roc_auc


def main() -> None:
    x, y = load_breast_cancer(return_X_y=True)  # y: 0 malignant, 1 benign
    benign, malignant = x[y == 1], x[y == 0]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(benign))
    train, test_normal = benign[order[:250]], benign[order[250:]]
    test = np.concatenate([test_normal, malignant])
    labels = np.r_[np.zeros(len(test_normal)), np.ones(len(malignant))]

    # Tabular defaults of the MSDE paper: k=100, η=0.1, T=6, θ=0.003.
    tabular = dict(k=100, step_size=0.1, max_iter=6, tol=0.003)
    for name, det in [
        ("displacement (tabular MSDE)", MSDEDetector(score="displacement", **tabular)),
        ("Mahalanobis after MSDE", MSDEDetector(**tabular)),
        ("plain Gaussian", MSDEDetector(mode="none")),
    ]:
        scores = det.fit(train).score_samples(test)
        print(
            f"{name:<30} AUROC {float(roc_auc(labels, scores)):.3f}  "
            f"AP {float(average_precision(labels, scores)):.3f}"
        )


if __name__ == "__main__":
    main()
