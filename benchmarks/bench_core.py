"""Functional core vs scikit-learn / NumPy doing the same work, in the same process.

    python benchmarks/bench_core.py            # n = 10,000, d = 512 (the issue's size)
    python benchmarks/bench_core.py --n 2000   # quicker

Each JAX function is compiled first (``jit(...).lower(...).compile()``, timed on its own); the
run times are the best of ``--repeat`` calls, ended with ``block_until_ready``. The baselines:

* knn — ``sklearn.neighbors.NearestNeighbors(algorithm="brute")``, k = 50, points onto themselves;
* pca_fit — ``sklearn.decomposition.PCA(256, svd_solver="full")``;
* gaussian_fit + mahalanobis — NumPy: unbiased covariance + 1e-4·I, Cholesky, triangular solve
  (``scipy.linalg.solve_triangular``), the distance of every training row;
* mean_shift — the published algorithm in NumPy + scikit-learn: 8 iterations of a kNN rebuild
  (``NearestNeighbors``) and a weighted kNN mean (k = 50, η = 0.33), no early stop in either
  (tol = 0) so both do exactly 8 iterations.
"""

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

import msde_jax as mj


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def compiled(fn, *args, **static):
    """AOT-compile ``fn`` for these arguments; return (callable, compile seconds)."""
    start = time.perf_counter()
    exe = jax.jit(fn, static_argnames=tuple(static)).lower(*args, **static).compile()
    return (lambda: exe(*args)), time.perf_counter() - start


def numpy_mean_shift(x, w, k, step_size, max_iter):
    y = x.copy()
    for _ in range(max_iter):
        idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(y).kneighbors(y)[1]
        ww = w[idx]
        m = np.einsum("nk,nkd->nd", ww, y[idx]) / np.maximum(ww.sum(1), 1e-6)[:, None]
        y = y + step_size * (m - y)
    return y


def numpy_gaussian(x, ridge):
    mean = x.mean(0)
    cov = np.cov(x, rowvar=False) + ridge * np.eye(x.shape[1], dtype=x.dtype)
    chol = np.linalg.cholesky(cov)
    z = scipy.linalg.solve_triangular(chol, (x - mean).T, lower=True)
    return np.sqrt((z * z).sum(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="row block for knn and mean_shift (memory O(batch · n))",
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, d, k, bs = args.n, args.d, args.k, args.batch_size

    rng = np.random.default_rng(0)
    centers = rng.normal(scale=2.0, size=(20, d))
    x = (centers[rng.integers(0, 20, n)] + rng.normal(size=(n, d))).astype(np.float32)
    w = rng.uniform(0.5, 2.0, n).astype(np.float32)
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    n_comp = min(256, d, n - 1)

    rows = []

    def bench(name, jax_fn, jax_args, static, baseline):
        fn, compile_s = compiled(jax_fn, *jax_args, **static)
        ours = best_of(fn, args.repeat)
        base = best_of(baseline, args.repeat)
        rows.append((name, compile_s, ours, base))
        print(f"  {name:<28} done", flush=True)

    print(
        f"n={n} d={d} k={k} batch_size={bs} float32; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, {os.cpu_count()} CPU cores ({platform.processor()})"
    )
    bench(
        "knn (k=50, self)",
        lambda a, k, batch_size: mj.core.knn(a, k=k, batch_size=batch_size),
        (xj,),
        {"k": k, "batch_size": bs},
        lambda: NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors(x),
    )
    bench(
        f"pca_fit ({n_comp})",
        lambda a, c: mj.core.pca_fit(a, c),
        (xj,),
        {"c": n_comp},
        lambda: PCA(n_comp, svd_solver="full").fit(x),
    )
    bench(
        "gaussian_fit + mahalanobis",
        lambda a: mj.core.mahalanobis(mj.core.gaussian_fit(a, covariance="ridge", ridge=1e-4), a),
        (xj,),
        {},
        lambda: numpy_gaussian(x, 1e-4),
    )
    bench(
        "mean_shift (8 iterations)",
        lambda a, b, k, batch_size: mj.core.mean_shift(  # exact: the baseline's search
            a, b, k=k, max_iter=8, tol=0.0, batch_size=batch_size, neighbors="exact"
        ),
        (xj, wj),
        {"k": k, "batch_size": bs},
        lambda: numpy_mean_shift(x, w, k, 0.33, 8),
    )
    fn, compile_s = compiled(lambda a: mj.core.density_weights(a), xj)
    rows.append(("density_weights (msde)", compile_s, best_of(fn, args.repeat), float("nan")))

    print()
    print("| step | compile (s) | msde_jax (s) | sklearn/NumPy (s) | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name, c, ours, base in rows:
        ratio = "—" if np.isnan(base) else f"{base / ours:.1f}×"
        base_s = "—" if np.isnan(base) else f"{base:.3f}"
        print(f"| {name} | {c:.2f} | {ours:.3f} | {base_s} | {ratio} |")


if __name__ == "__main__":
    main()
