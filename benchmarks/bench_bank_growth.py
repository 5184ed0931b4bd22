"""How the default detector's fit and score costs grow with the number of training images.

    python benchmarks/bench_bank_growth.py --cache-dir .bench_cache
    python benchmarks/bench_bank_growth.py --images 50 100 --limit-test 50   # quick

The features are the default configuration's (:func:`msde_jax.recommended`:
EfficientNet-Lite0 patch features, 14 × 14 × 152 per image) of the built-in PneumoniaMNIST
training normals, embedded once (cached). For each training-set size, a fresh Python process
fits ``PatchBankDetector()`` (the defaults: a 2,000-patch coreset, 5 cross-fit folds) on the
first ``n`` normals and scores the test images; it reports wall times (the first fit compiles,
so a second fit is timed too), the fitted bank's bytes and the process's peak resident memory
(``ru_maxrss``, whole process, features included). The bank is bounded by ``size`` whatever
``n`` is; the fit's transient memory (the n × 196 training patches and their projection) is
not.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def child(args) -> None:
    from msde_jax import PatchBankDetector

    with np.load(args.features) as z:
        train, test = z["train"][: args.n], z["test"]
    start = time.perf_counter()
    detector = PatchBankDetector().fit(train)
    first = time.perf_counter() - start
    start = time.perf_counter()
    detector = PatchBankDetector().fit(train)
    warm = time.perf_counter() - start
    detector.score_samples(test[:8])  # compile for the block shape
    start = time.perf_counter()
    detector.score_samples(test)
    score = time.perf_counter() - start
    bank = sum(np.asarray(a).nbytes for a in detector.to_arrays()[1].values())
    print(
        json.dumps(
            {
                "n_images": int(train.shape[0]),
                "n_patches": int(train.shape[0] * train.shape[1] * train.shape[2]),
                "fit_s_first": first,
                "fit_s": warm,
                "score_ms_per_image": 1000 * score / len(test),
                "saved_arrays_mb": bank / 2**20,
                "features_mb": train.nbytes / 2**20,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, nargs="+", default=[150, 300, 600, 1214])
    p.add_argument("--limit-test", type=int, default=None, help="score at most this many")
    p.add_argument("--cache-dir", default=".bench_cache")
    p.add_argument("--features", default="bank_growth_features.npz")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    from msde_jax import recommended
    from msde_jax.io.datasets import load_dataset
    from msde_jax.pipeline.evaluation import embed

    dataset = load_dataset("pneumoniamnist")
    embedder = recommended().embedder
    train_items = dataset.train_normal[: max(args.images)]
    train = embed(embedder, train_items, cache_dir=args.cache_dir, what="train normal")
    test_items = dataset.test_items()[: args.limit_test]
    test = embed(embedder, test_items, cache_dir=args.cache_dir, what="test")
    np.savez(args.features, train=train, test=test)
    print(
        "| training images | patches | fit, first (s) | fit (s) | score (ms/image) | saved "
        "detector (MiB) | training features (MiB) | peak RSS (MiB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.images:
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--n", str(n), "--features", args.features],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {r['n_images']} | {r['n_patches']} | {r['fit_s_first']:.1f} | {r['fit_s']:.1f} "
            f"| {r['score_ms_per_image']:.2f} | {r['saved_arrays_mb']:.1f} | "
            f"{r['features_mb']:.0f} | {r['peak_rss_mb']:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
