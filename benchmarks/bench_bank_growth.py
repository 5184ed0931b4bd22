"""How the default detector's fit and score costs grow with the number of training images.

    python benchmarks/bench_bank_growth.py --cache-dir .bench_cache
    python benchmarks/bench_bank_growth.py --images 50 100 --limit-test 50   # quick
    python benchmarks/bench_bank_growth.py --synthetic --images 2000 10000 --repeats 1
    python benchmarks/bench_bank_growth.py --synthetic --images 2000 --coreset greedy

The features are the default configuration's (:func:`msde_jax.recommended`:
EfficientNet-Lite0 patch features, 14 × 14 × 152 per image) of the built-in PneumoniaMNIST
training normals, embedded once (cached); with ``--synthetic``, synthetic features of that
shape made in each worker (a hospital archive's size, beyond the built-in set: each patch a
mix of two of 64 random prototypes plus noise, float32, test images the same way with
another seed). For each training-set size, a fresh Python process fits ``PatchBankDetector()``
(the defaults: a 5,000-patch two-stage coreset — 2,000 before 2026-12-05, as the older tables in
RESULTS.md were measured — 5 cross-fit folds, threshold included;
``--coreset greedy`` for one greedy search over all patches) on the first ``n`` images and
scores the test images; it reports wall times (the first fit compiles, no persistent
compilation cache being used; with ``--repeats 2`` a second fit is timed too), the fitted bank's
bytes and the process's peak resident memory (``ru_maxrss``, whole process, features included)
beside the features' own size. The bank is bounded by ``size`` whatever ``n`` is; the two-stage
fit's transient memory by ``chunk_patches``, the greedy fit's grows with the n × 196 patches.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def synthetic(n: int, seed: int, shape=(14, 14, 152), block: int = 500) -> np.ndarray:
    """(n, *shape) float32 synthetic patch features: each patch the mean of two of 64 random
    prototypes plus N(0, 0.5²) noise; made in blocks of ``block`` images (the noise of one block
    reused with other prototypes), so it costs about a copy of the result."""
    rng = np.random.default_rng(seed)
    c = shape[-1]
    prototypes = rng.normal(size=(64, c)).astype(np.float32)
    noise = (0.5 * rng.normal(size=(block, *shape))).astype(np.float32)
    out = np.empty((n, *shape), np.float32)
    for start in range(0, n, block):
        m = min(block, n - start)
        pick = rng.integers(0, 64, size=(2, m, *shape[:-1]))
        out[start : start + m] = (prototypes[pick[0]] + prototypes[pick[1]]) / 2 + noise[:m]
    return out


def child(args) -> None:
    from msde_jax import PatchBankDetector

    if args.synthetic:
        train, test = synthetic(args.n, 0), synthetic(args.limit_test or 1000, 1)
    else:
        with np.load(args.features) as z:
            train, test = z["train"][: args.n], z["test"]
    fits = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        options = {"coreset": args.coreset}
        if args.chunk_patches:
            options["chunk_patches"] = args.chunk_patches
        detector = PatchBankDetector(**options).fit(train)
        fits.append(time.perf_counter() - start)
    detector.score_samples(test)  # compile the programs of the timed call (its chunks)
    start = time.perf_counter()
    detector.score_samples(test)
    score = time.perf_counter() - start
    bank = sum(np.asarray(a).nbytes for a in detector.to_arrays()[1].values())
    print(
        json.dumps(
            {
                "n_images": int(train.shape[0]),
                "n_patches": int(train.shape[0] * train.shape[1] * train.shape[2]),
                "fit_s_first": fits[0],
                "fit_s": min(fits[1:]) if len(fits) > 1 else None,
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
    p.add_argument("--synthetic", action="store_true", help="synthetic features (any n)")
    p.add_argument("--coreset", default="two_stage", choices=["two_stage", "greedy"])
    p.add_argument("--repeats", type=int, default=2, help="fits per size (the first compiles)")
    p.add_argument("--chunk-patches", type=int, default=None, help="the two-stage chunk bound")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if not args.synthetic:
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
    chunk = f", chunk_patches={args.chunk_patches}" if args.chunk_patches else ""
    print(f"coreset={args.coreset}{chunk}, {'synthetic' if args.synthetic else 'PneumoniaMNIST'}")
    print(
        "| training images | patches | fit, first (s) | fit (s) | score (ms/image) | saved "
        "detector (MiB) | training features (MiB) | peak RSS (MiB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.images:
        command = [sys.executable, __file__, "--child", "--n", str(n), "--features", args.features]
        command += ["--coreset", args.coreset, "--repeats", str(args.repeats)]
        if args.chunk_patches:
            command += ["--chunk-patches", str(args.chunk_patches)]
        if args.synthetic:
            command.append("--synthetic")
        if args.limit_test:
            command += ["--limit-test", str(args.limit_test)]
        # each worker compiles what it runs: the persistent cache would serve the programs of
        # an earlier worker, run or stage (the first fit would time cache reads, not compiles)
        env = {**os.environ, "MSDE_JAX_COMPILATION_CACHE": "off"}
        out = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
        if out.returncode:  # the worker's own error, not only its exit status
            sys.exit(f"worker {command} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        warm = "—" if r["fit_s"] is None else f"{r['fit_s']:.1f}"
        print(
            f"| {r['n_images']} | {r['n_patches']} | {r['fit_s_first']:.1f} | {warm} "
            f"| {r['score_ms_per_image']:.2f} | {r['saved_arrays_mb']:.1f} | "
            f"{r['features_mb']:.0f} | {r['peak_rss_mb']:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
