"""Scale: peak memory of a fit at large n, inductive scoring throughput, device scaling, and
where the approximate neighbour search starts to pay.

    python benchmarks/bench_scale.py memory --n 100000        # one fit; run under /usr/bin/time -v
    python benchmarks/bench_scale.py scoring --reference 10000 --queries 20000
    python benchmarks/bench_scale.py devices --n 20000        # 1, 2, 4 simulated CPU devices
    python benchmarks/bench_scale.py crossover --n 2048 4096 8192 --d 64 512 2048

* ``memory`` — the MSDE fit at n × d (synthetic mixture of bench_core.py, standardised,
  float32): density weights, the blurring shift (``neighbors="auto"``: the approximate tree
  beyond 4,096 rows), PCA to 256, Gaussian — what ``MSDEDetector.fit`` computes before its
  threshold. (The threshold then scores training normals inductively, each against all n
  with the exact search: O(n² d T), about ten minutes at n = 100,000 on 2 CPU cores.) Prints
  the time; the peak memory is the process's maximum resident set (``ru_maxrss``, also what
  ``/usr/bin/time -v`` reports).
* ``scoring`` — scores per second of the inductive scorers against a fitted reference of
  ``--reference`` rows: ``MSDEDetector()`` (the inductive shift, then the Mahalanobis
  distance), ``MSDEDetector(score="knn", mode="none")`` and the Mahalanobis distance alone
  (``mode="none"``), on ``--queries`` new rows, after a warm-up call on the same shape; then
  the default detector, ``PatchBankDetector`` with its default bank size and with a
  10,000-patch bank, fitted on ``--bank-images`` images of synthetic 14 × 14 × 152 patch
  features and scoring ``--bank-queries`` more (``--bank-images 0`` skips it).
* ``devices`` — :func:`msde_jax.core.sharded.sharded_knn` and ``sharded_mean_shift`` on 1, 2 and
  4 devices (each a fresh process with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``),
  time relative to one device, and the largest difference from the one-device result. On a
  CPU the "devices" share the same cores, so this checks the overhead of the sharded code, not
  a speed-up; on GPUs or TPUs each device brings its own compute.
* ``crossover`` — the blurring shift (8 iterations, ``tol=0`` so that all 8 run, k = 50,
  ``batch_size=256``) with ``neighbors="exact"`` and ``"approximate"`` for every ``--n`` ×
  ``--d``, best of two timed runs after a warm-up; the time ratio exact / approximate, and
  which search ``neighbors="auto"`` picks there (``choose_neighbors``). This is the
  measurement behind the ``"auto"`` rule, for the backend it runs on.
"""

import argparse
import datetime
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np


def mixture(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(20, d))
    return (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, d))).astype(np.float32)


def header() -> str:
    import jax

    return (
        f"{datetime.date.today()}; jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({len(jax.devices())} device(s)), {os.cpu_count()} CPU cores ({platform.machine()})"
    )


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def memory(args) -> None:
    import jax

    import msde_jax as mj
    from msde_jax.detectors.config import auto_batch

    x = mixture(args.n, args.d)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    batch = auto_batch(None, args.n)  # the detectors' block rows on this backend
    print(f"batch_size {batch} (auto_batch on {jax.devices()[0].platform})", flush=True)
    start = time.perf_counter()
    w = mj.core.density_weights(z, batch_size=batch)
    shifted = mj.core.mean_shift(z, w, batch_size=batch, neighbors=args.neighbors)
    pca = mj.core.pca_fit(shifted.points, 256)
    gaussian = mj.core.gaussian_fit(mj.core.pca_transform(pca, shifted.points))
    jax.block_until_ready(gaussian)
    fit_s = time.perf_counter() - start
    print(header())
    print(
        f"| MSDE fit: density_weights + mean_shift(neighbors={args.neighbors!r}) + PCA + Gaussian "
        f"| n = {args.n:,} | d = {args.d} | {fit_s:.1f} s (compilation included) | "
        f"peak RSS {peak_rss_gib():.2f} GiB | {int(shifted.n_iter)} iterations |"
    )


def scoring(args) -> None:
    import jax

    import msde_jax as mj

    x = mixture(args.reference + args.queries, args.d)
    ref, queries = x[: args.reference], x[args.reference :]
    print(header())
    from msde_jax.detectors.config import auto_batch

    block = auto_batch(None, args.reference)
    print(f"kNN block rows against the reference (auto_batch): {block or 'all rows, one block'}")
    # The queries on the device before timing (issue 21: "queries already on the device");
    # what copying them from host NumPy costs, apart.
    start = time.perf_counter()
    queries = jax.block_until_ready(jax.device_put(queries))
    copy_s = time.perf_counter() - start
    print(f"copying the {args.queries:,} queries from host NumPy to the device: {copy_s:.3f} s")
    print()
    print(f"| scorer (reference {args.reference:,} × {args.d}) | queries | seconds | per second |")
    print("|---|---:|---:|---:|")
    for name, det in [
        ("MSDEDetector() — inductive shift + Mahalanobis", mj.MSDEDetector(threshold="chi2")),
        ("MSDEDetector(mode='none') — Mahalanobis", mj.MSDEDetector(mode="none", threshold="chi2")),
        (
            "MSDEDetector(mode='none', score='knn') — nearest normal",
            mj.MSDEDetector(mode="none", score="knn"),
        ),
    ]:
        det.fit(ref)
        det.score_samples(queries)  # warm-up: compiles for this shape
        s = math.inf
        for _ in range(3):  # the best of 3
            start = time.perf_counter()
            jax.block_until_ready(det.score_samples(queries))
            s = min(s, time.perf_counter() - start)
        print(f"| {name} | {args.queries:,} | {s:.2f} | {args.queries / s:,.0f} |", flush=True)
    if args.bank_images:
        bank_scoring(args)


def bank_scoring(args) -> None:
    """The default detector (patch bank) on synthetic patch features, per image and patch."""
    import jax

    import msde_jax as mj

    grid, channels = 196, 152  # the default embedder's 14 × 14 grid of 152-channel patches
    n_train, n_test = args.bank_images, args.bank_queries
    x = mixture((n_train + n_test) * grid, channels, seed=1).reshape(-1, grid, channels)
    train, test = x[:n_train], x[n_train:]
    print()
    print(
        f"| PatchBankDetector (fitted on {n_train} images × {grid} patches × {channels}) | "
        "bank rows | fit (s) | query images | seconds | images per second | patches per second |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    default = mj.PatchBankDetector().size
    for size in (default, 10_000):
        start = time.perf_counter()
        det = mj.PatchBankDetector(size=size).fit(train)
        fit_s = time.perf_counter() - start
        det.score_samples(test)  # warm-up: compiles for this shape
        start = time.perf_counter()
        jax.block_until_ready(det.score_samples(test))
        s = time.perf_counter() - start
        print(
            f"| `PatchBankDetector(size={size})`{' (the default)' if size == default else ''} | "
            f"{det.state_.bank.bank.shape[0]:,} | {fit_s:.1f} | {n_test:,} | {s:.2f} | "
            f"{n_test / s:,.0f} | {n_test * grid / s:,.0f} |",
            flush=True,
        )


_DEVICE_WORKER = """
import json, sys, time
import jax, numpy as np
from msde_jax.core import knn, mean_shift
from msde_jax.core.sharded import row_mesh, sharded_knn, sharded_mean_shift
n, d = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
c = rng.normal(scale=2.0, size=(20, d))
x = (c[rng.integers(0, 20, n)] + rng.normal(size=(n, d))).astype(np.float32)
mesh = row_mesh()
out = {}
for name, fn in [
    ("knn", lambda: sharded_knn(x, k=50, mesh=mesh, batch_size=256).indices),
    ("mean_shift", lambda: sharded_mean_shift(x, mesh=mesh, k=50, batch_size=256).points),
]:
    jax.block_until_ready(fn())
    start = time.perf_counter()
    result = np.asarray(jax.block_until_ready(fn()))
    out[name] = time.perf_counter() - start
    np.save(f"{sys.argv[3]}_{name}.npy", result)
print(json.dumps(out))
"""


def devices(args) -> None:
    import tempfile

    print(header())
    print()
    print(
        "| devices | knn (s) | mean_shift (s) | vs 1 device (knn / shift) | max diff vs 1 device |"
    )
    print("|---:|---:|---:|---|---|")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for count in (1, 2, 4):
            env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}
            prefix = os.path.join(tmp, str(count))
            out = subprocess.run(
                [sys.executable, "-c", _DEVICE_WORKER, str(args.n), str(args.d), prefix],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            times = json.loads(out.stdout.strip().splitlines()[-1])
            knn_idx = np.load(f"{prefix}_knn.npy")
            points = np.load(f"{prefix}_mean_shift.npy")
            if base is None:
                base = (times, knn_idx, points)
            same = float(np.mean(knn_idx == base[1]))
            diff = float(np.max(np.abs(points - base[2])))
            print(
                f"| {count} | {times['knn']:.2f} | {times['mean_shift']:.2f} | "
                f"{times['knn'] / base[0]['knn']:.2f}× / "
                f"{times['mean_shift'] / base[0]['mean_shift']:.2f}× | "
                f"indices equal {same:.4f}, points {diff:.2g} |",
                flush=True,
            )


def crossover(args) -> None:
    import jax

    import msde_jax as mj
    from msde_jax.core.mean_shift import choose_neighbors

    def best(fn) -> float:
        jax.block_until_ready(fn())
        times = []
        for _ in range(2):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - start)
        return min(times)

    print(header())
    print()
    print("| d | n | exact (s) | approximate (s) | exact / approximate | auto picks |")
    print("|---:|---:|---:|---:|---:|---|")
    from msde_jax.detectors.config import auto_batch

    for d in args.d:
        for n in args.n:
            x = jax.device_put(mixture(n, d))
            w = jax.numpy.ones(n)
            batch = auto_batch(None, n)  # the detectors' block rows on this backend
            print(f"n={n}: batch_size {batch}", flush=True)
            seconds = {
                search: best(
                    lambda search=search, x=x, w=w, batch=batch: (
                        mj.core.mean_shift(
                            x, w, k=50, tol=0.0, batch_size=batch, neighbors=search
                        ).points
                    )
                )
                for search in ("exact", "approximate")
            }
            ratio = seconds["exact"] / seconds["approximate"]
            print(
                f"| {d} | {n:,} | {seconds['exact']:.2f} | {seconds['approximate']:.2f} | "
                f"{ratio:.2f} | {choose_neighbors('auto', n)} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--n", type=int, default=100_000)
    m.add_argument("--d", type=int, default=512)
    m.add_argument("--neighbors", default="auto")
    s = sub.add_parser("scoring")
    s.add_argument("--reference", type=int, default=10_000)
    s.add_argument("--queries", type=int, default=20_000)
    s.add_argument("--d", type=int, default=512)
    s.add_argument("--bank-images", type=int, default=100, help="0: skip the patch bank")
    s.add_argument("--bank-queries", type=int, default=1000, help="query images for the bank")
    dv = sub.add_parser("devices")
    dv.add_argument("--n", type=int, default=20_000)
    dv.add_argument("--d", type=int, default=512)
    c = sub.add_parser("crossover")
    c.add_argument("--n", type=int, nargs="+", default=[2048, 4096, 8192])
    c.add_argument("--d", type=int, nargs="+", default=[64, 512, 2048])
    args = parser.parse_args()
    commands = {"memory": memory, "scoring": scoring, "devices": devices, "crossover": crossover}
    commands[args.what](args)


if __name__ == "__main__":
    main()
