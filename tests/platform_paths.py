"""The default pipeline's pieces whose code differs by platform, run in one process.

``python tests/platform_paths.py OUT.npz`` writes what :func:`run` returns; a process started
with ``MSDE_JAX_PATHS=accelerator`` (:mod:`msde_jax._platform`) computes it with the forms
written for an accelerator, on any machine. ``tests/test_accelerator_paths.py`` compares the two.
"""

import sys

import numpy as np

IMAGE_SIZE = 64  # small images: the native grouped convolution is slow on a CPU
N_TRAIN, N_TEST = 40, 8


def images() -> np.ndarray:
    """Smooth random 'scans' with a bright blob on the last ``N_TEST // 2`` of them."""
    rng = np.random.default_rng(0)
    n = N_TRAIN + N_TEST
    yy, xx = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE] / IMAGE_SIZE
    base = 0.5 + 0.2 * np.sin(6 * xx[None] + rng.uniform(0, 1, (n, 1, 1))) * np.cos(4 * yy[None])
    out = base + 0.05 * rng.standard_normal((n, IMAGE_SIZE, IMAGE_SIZE))
    blob = np.exp(-((xx - 0.6) ** 2 + (yy - 0.4) ** 2) / 0.01)
    out[-(N_TEST // 2) :] += 0.6 * blob
    return (255 * np.clip(out, 0, 1)).astype(np.uint8)


def run() -> dict[str, np.ndarray]:
    """What differs by platform in the default pipeline, and the choices that show which forms
    ran: EfficientNet-Lite0 patch features (the default embedder) and pooled embeddings of
    :func:`images`; a patch bank (the default but for 300 rows, so that each cross-fit fold's
    first-stage search runs) fitted and scoring on fixed patch features, since a coreset's
    greedy picks can flip on the embedder's float32 rounding; an ``MSDEDetector()`` fit on
    1,100 rows (past the 1,024 below which a CPU too pads its folds)."""
    import jax
    from testing import clustered

    from msde_jax import Embedder, MSDEDetector, PatchBankDetector, recommended
    from msde_jax._platform import cpu_paths
    from msde_jax.detectors import msde
    from msde_jax.detectors.config import auto_batch, score_chunk

    x = images()
    default_batch = recommended(image_size=IMAGE_SIZE).embedder.batch_size
    # batches of 8 both ways: an accelerator's default (256 images per device) would pad 48
    # images to 512, slow with XLA's grouped convolutions on a CPU
    patches = recommended(image_size=IMAGE_SIZE, batch_size=8).embedder
    pooled = Embedder("efficientnet_lite0", image_size=IMAGE_SIZE, batch_size=8)
    f = clustered(0, N_TRAIN + N_TEST, n_abnormal=N_TEST // 2, p=14 * 14, c=152)
    f = f.reshape(-1, 14, 14, 152)
    bank = PatchBankDetector(size=300).fit(f[:N_TRAIN])
    rows = np.random.default_rng(1).standard_normal((1200, 16)).astype(np.float32)
    det = MSDEDetector().fit(rows[:1100])
    return {
        "cpu_paths": np.array(cpu_paths()),
        "platform": np.array(jax.devices()[0].platform),
        "embed_batch": np.array(default_batch),
        "auto_batch": np.array(auto_batch(None, 50_000) or 0),
        "score_chunk": np.array(score_chunk(196)),
        "fold_rows": np.array(msde._fold_rows(det.config(), 1500)),
        "patches": np.asarray(patches.embed(x)),
        "pooled": np.asarray(pooled.embed(x[:8])),
        "bank_scores": bank.score_samples(f[N_TRAIN:]),
        "bank_train": bank.decision_scores_,
        "bank_threshold": np.array(bank.threshold_),
        "msde_scores": det.score_samples(rows[1100:]),
        "msde_train": det.decision_scores_,
        "msde_threshold": np.array(det.threshold_),
    }


if __name__ == "__main__":
    np.savez(sys.argv[1], **run())
