"""MSDE fit, the published stack (umap-learn + pynndescent + NumPy/numba) vs msde_jax, one run.

    python benchmarks/bench_published.py                        # n = 1,000 … 50,000, d = 512
    python benchmarks/bench_published.py --n 1000 2000          # quicker
    python benchmarks/bench_published.py --repeat-published 1   # one published run at n ≥ 20,000
    python benchmarks/bench_published.py --stacks ours --neighbors approximate --no-cold

Both stacks fit MSDE with the medical defaults on the same data: the density weights (q = 15,
blocks of b = min(1000, max(3q, 100)) = 100 consecutive rows, τ = 70, 30 %, 4 radii), then the
blurring weighted mean shift (k = 50, η = 0.33, at most T = 8 iterations, stop once
mean(δ) < θ = 0.01). The data is bench_core.py's mixture (20 Gaussian centres of scale 2, unit
noise, seed 0), standardised per feature, float32.

* **published** — the method built the way the authors' code builds it, written to be fast:
  per block, the exact q-nearest-neighbour lists (NumPy; faster than the NNDescent that
  ``fuzzy_simplicial_set`` would start for 100 rows, and exact) go to
  ``umap.umap_.fuzzy_simplicial_set`` for the block's fuzzy union, taken as a dense b × b
  matrix; the row distances, the ε bisection (counting the qualifying rows, not the published
  index-sum quirk) and the 4-radius average are vectorised NumPy. Each mean-shift iteration
  rebuilds the kNN graph with ``pynndescent.NNDescent(y, n_neighbors=k).neighbor_graph`` (the
  point itself first) and moves the points with a ``numba.njit(parallel=True)`` kernel.
* **msde_jax** — :func:`ours`: ``density_weights(x, n_neighbors=15)`` then ``mean_shift``, with
  ``batch_size=None`` for n ≤ 1024 and 256 above (``--batch-size`` overrides it) and
  ``neighbors=…`` when ``--neighbors`` is given.

*warm* is the best of ``--repeat`` fits in this process after one untimed warm-up fit (the JAX
one at the same shape, since every shape compiles anew; the published one on at most 2,000 rows
at n ≥ 20,000, since numba compiles per type, not per size). *cold* is the wall time of a fresh
``python benchmarks/bench_published.py --worker STACK --n N`` process measured by this one:
imports, data, JIT / numba compilation (umap's and pynndescent's numba caches on disk are used
as they are) and one fit. msde_jax's compilation cache in that process follows
``--cold-cache``: ``off`` (everything compiled; the default), this process's environment
(``inherit``: with the default cache on, this process has just written the programs the
worker needs, so that worker is not cold), or ``warm`` (a fresh cache folder filled by one
untimed worker first: a second process, as a user's second run is). The second table splits the
published fit into density weights and shift and gives the share of the fit spent rebuilding the
kNN graph (the NNDescent calls, timed on their own). The agreement check compares the two stacks'
density weights at the smallest n, and the shifted points at n = 300 (``--check-n``), where
NNDescent is close to exact.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

# The stacks import their libraries on first use, so that a cold worker of one stack never
# pays for the other's imports.
_LAZY: dict = {}

MSDE = {"k": 50, "step_size": 0.33, "max_iter": 8, "tol": 0.01}
Q = 15
LARGE = 20_000  # from here on the published stack may run once (--repeat-published)
_MIN_MOVE = 1e-6  # no move where δ ≤ this
_MIN_WEIGHT = 1e-6  # floor of a window's total weight


def make_data(n: int, d: int, seed: int = 0) -> np.ndarray:
    """bench_core.py's Gaussian mixture, standardised per feature, float32."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(20, d))
    x = centers[rng.integers(0, 20, n)] + rng.normal(size=(n, d))
    return ((x - x.mean(0)) / x.std(0)).astype(np.float32)


# ------------------------------------------------------------------------ msde_jax
def ours(x, **options):
    """msde_jax's MSDE fit: density weights, then the blurring shift with ``**options``.

    Returns ``(weights, MeanShiftResult)``, ready (``jax.block_until_ready``).
    """
    import jax

    import msde_jax as mj

    w = mj.core.density_weights(x, n_neighbors=Q)
    result = mj.core.mean_shift(x, w, **{**MSDE, **options})
    return jax.block_until_ready((w, result))


def ours_options(n: int, args) -> dict:
    from msde_jax.detectors.config import auto_batch

    # "auto": the detectors' own rule for this backend (256-row blocks on a CPU above 1,024
    # rows; on an accelerator whole or large blocks as its memory allows)
    batch = args.batch_size if args.batch_size != "auto" else auto_batch(None, n)
    options = {"batch_size": batch}
    if args.neighbors is not None:
        options["neighbors"] = args.neighbors
    return options


# ------------------------------------------------------------------------ published stack
def _shift_kernel():
    """The weighted-mean step, compiled by numba on first use (as the published code does)."""
    if "kernel" not in _LAZY:
        import numba

        @numba.njit(parallel=True)
        def shift(y, w, idx, step_size):
            n, d = y.shape
            k = idx.shape[1]
            out = np.empty_like(y)
            delta = np.empty(n)
            for i in numba.prange(n):
                m = np.zeros(d)
                total = 0.0
                for jj in range(k):
                    j = idx[i, jj]
                    total += w[j]
                    for c in range(d):
                        m[c] += w[j] * y[j, c]
                total = max(total, _MIN_WEIGHT)
                s = 0.0
                for c in range(d):
                    m[c] = m[c] / total - y[i, c]  # now the mean-shift vector m - y
                    s += m[c] * m[c]
                delta[i] = np.sqrt(s)
                move = step_size if delta[i] > _MIN_MOVE else 0.0
                for c in range(d):
                    out[i, c] = y[i, c] + move * m[c]
            return out, delta

        _LAZY["kernel"] = shift
    return _LAZY["kernel"]


def _fuzzy_simplicial_set():
    if "fss" not in _LAZY:
        from umap.umap_ import fuzzy_simplicial_set

        _LAZY["fss"] = fuzzy_simplicial_set
    return _LAZY["fss"]


def _sq_distances(a: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of ``a``, float64, clamped at 0."""
    a = a.astype(np.float64)
    sq = np.einsum("ij,ij->i", a, a)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * (a @ a.T), 0.0)


def published_block(xb, *, q=Q, tau=70.0, fraction=0.3, n_radii=4):
    """The density weights of one block of r rows (DESIGN.md, "MSDE, precisely")."""
    r = xb.shape[0]
    if r == 1:
        return np.zeros(1)
    q_eff = min(q, r)
    d2 = _sq_distances(xb)
    np.fill_diagonal(d2, -1.0)  # the point itself first, as UMAP's kNN lists have it
    idx = np.argsort(d2, axis=1, kind="stable")[:, :q_eff]
    dist = np.sqrt(np.maximum(np.take_along_axis(d2, idx, axis=1), 0.0))
    graph = _fuzzy_simplicial_set()(
        xb,
        q_eff,
        None,
        "euclidean",
        knn_indices=idx.astype(np.int32),
        knn_dists=dist.astype(np.float32),
    )[0]
    s = graph.toarray()
    d = np.sqrt(_sq_distances(s))
    pair = ~np.eye(r, dtype=bool)
    lo, hi = d[pair].min(), d[pair].max()

    def counts(radius):
        return np.count_nonzero(pair & (d <= radius), axis=1)

    def qualifies(radius, t, required):
        return np.count_nonzero(counts(radius) > t) >= required

    t = min(tau, r - 1)
    required = np.floor(fraction * r)
    if not qualifies(hi, t, required):
        t, required = t / 2, required / 2
    if qualifies(hi, t, required):
        a, eps, steps = lo, hi, 0
        while eps - a > 1e-4 and steps < 50:
            mid = (a + eps) / 2
            a, eps = (a, mid) if qualifies(mid, t, required) else (mid, eps)
            steps += 1
    else:
        eps = hi
    delta = (eps - 1e-6) / n_radii
    return np.mean([counts(eps - m * delta) for m in range(n_radii)], axis=0)


def published_density(x, *, q=Q):
    """Block-wise weights: consecutive blocks of b = min(1000, max(3q, 100)) rows."""
    n = x.shape[0]
    b = n if n <= 3 * q else min(1000, max(3 * q, 100))
    return np.concatenate([published_block(x[s : s + b], q=q) for s in range(0, n, b)])


def nndescent_graph(y, k):
    """kNN indices (n, k) of the rows of y among themselves, the point itself first."""
    if "nnd" not in _LAZY:
        from pynndescent import NNDescent

        _LAZY["nnd"] = NNDescent
    return _LAZY["nnd"](y, n_neighbors=k).neighbor_graph[0]


def exact_graph(y, k):
    """Exact kNN indices (n, k), the point itself first (for the agreement check)."""
    d2 = _sq_distances(y)
    np.fill_diagonal(d2, -1.0)
    return np.argsort(d2, axis=1, kind="stable")[:, :k].astype(np.int32)


def published_shift(x, w, *, k, step_size, max_iter, tol, graph=nndescent_graph, timing=None):
    """Blurring weighted mean shift: a kNN rebuild, then the numba step, per iteration."""
    kernel = _shift_kernel()
    y = np.array(x, dtype=np.float32)
    w = np.asarray(w, dtype=np.float64)
    k = min(k, y.shape[0])
    disp = np.zeros(y.shape[0])
    n_iter = 0
    for _ in range(max_iter):
        start = time.perf_counter()
        idx = graph(y, k)
        if timing is not None:
            timing["knn_s"] += time.perf_counter() - start
        y, delta = kernel(y, w, idx, step_size)
        disp += delta
        n_iter += 1
        if delta.mean() < tol:
            break
    return y, disp, n_iter


def published(x, timing=None):
    """The published stack's MSDE fit: (weights, shifted points, displacement, iterations)."""
    start = time.perf_counter()
    w = published_density(x)
    if timing is not None:
        timing["density_s"] = time.perf_counter() - start
        timing["knn_s"] = 0.0
    y, disp, n_iter = published_shift(x, w, **MSDE, timing=timing)
    return w, y, disp, n_iter


# ------------------------------------------------------------------------ timing
def worker(args) -> None:
    """One cold fit in this (fresh) process; prints a JSON line with its times."""
    x = make_data(args.n[0], args.d)
    start = time.perf_counter()
    if args.worker == "published":
        published(x)
    else:
        ours(x, **ours_options(args.n[0], args))
    fit_s = time.perf_counter() - start
    since = time.time() - args.started_at if args.started_at else float("nan")
    print(json.dumps({"fit_s": fit_s, "since_start_s": since}))


def cold(stack: str, n: int, args) -> tuple[float, float]:
    """Wall time of a whole fresh worker process (imports, compilation, data, one fit), and
    the time of its fit alone (compilation included), as the worker reports it."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", stack, "--n", str(n)]
    cmd += ["--d", str(args.d), "--batch-size", str(args.batch_size).lower()]
    if args.neighbors is not None:
        cmd += ["--neighbors", args.neighbors]
    env = dict(os.environ)
    if stack == "ours" and args.cold_cache != "inherit":
        env["MSDE_JAX_COMPILATION_CACHE"] = "off"
        if args.cold_cache == "warm":  # a folder of its own, filled by one untimed worker
            env["MSDE_JAX_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="bench_published_xla_")
            fill = [*cmd, "--started-at", repr(time.time())]
            subprocess.run(fill, capture_output=True, text=True, check=False, env=env)
    started = time.time()
    start = time.perf_counter()
    done = subprocess.run(
        [*cmd, "--started-at", repr(started)], capture_output=True, text=True, check=False, env=env
    )
    wall = time.perf_counter() - start
    if stack == "ours" and args.cold_cache == "warm":
        shutil.rmtree(env["MSDE_JAX_COMPILATION_CACHE"], ignore_errors=True)
    if done.returncode != 0:
        print(f"  cold {stack} n={n} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return float("nan"), float("nan")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])["fit_s"]


def best(fn, repeat: int):
    """(best seconds, the output of that run) over ``repeat`` runs."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        runs.append((time.perf_counter() - start, out))
    return min(runs, key=lambda r: r[0])


def time_published(x, repeat: int) -> dict:
    warm = x if x.shape[0] < LARGE else x[:2000]
    published(warm)

    def run():
        timing = {}
        _, _, _, n_iter = published(x, timing)
        return {**timing, "n_iter": n_iter}

    seconds, detail = best(run, repeat)
    return {"warm_s": seconds, **detail}


def time_ours(x, options: dict, repeat: int) -> dict:
    import jax.numpy as jnp

    xj = jnp.asarray(x)
    start = time.perf_counter()
    ours(xj, **options)  # compiles for this shape
    first = time.perf_counter() - start
    seconds, (_, result) = best(lambda: ours(xj, **options), repeat)
    return {"warm_s": seconds, "first_s": first, "n_iter": int(result.n_iter)}


# ------------------------------------------------------------------------ agreement
def agreement(n: int, check_n: int, d: int, args) -> None:
    from scipy.stats import spearmanr

    x = make_data(n, d)
    w_pub = published_density(x)
    w_ours, _ = ours(x, **ours_options(n, args))
    w_ours = np.asarray(w_ours, dtype=np.float64)
    diff = np.abs(w_pub - w_ours)
    rho = spearmanr(w_pub, w_ours).statistic
    print(
        f"density weights, n={n}: max |Δw| = {diff.max():.3g} (weights range "
        f"{w_pub.min():.2f}–{w_pub.max():.2f}), equal in {np.mean(diff < 1e-9):.1%} of rows, "
        f"Spearman ρ = {rho:.6f}"
    )

    x = make_data(check_n, d)
    w, result = ours(x, **ours_options(check_n, args))
    w = np.asarray(w, dtype=np.float64)
    y_ours = np.asarray(result.points, dtype=np.float64)
    k = min(MSDE["k"], check_n)
    approx, exact = nndescent_graph(x, k), exact_graph(x, k)
    recall = np.mean([np.intersect1d(approx[i], exact[i]).size / k for i in range(check_n)])
    for name, graph in (("NNDescent", nndescent_graph), ("exact kNN", exact_graph)):
        y, disp, n_iter = published_shift(x, w, **MSDE, graph=graph)
        print(
            f"shifted points, n={check_n}, same weights, published shift with {name}: "
            f"max |Δy| = {np.abs(y - y_ours).max():.3g}, max |ΔD| = "
            f"{np.abs(disp - np.asarray(result.displacement)).max():.3g} "
            f"(|y| ≤ {np.abs(y_ours).max():.2f}); iterations {n_iter} vs {int(result.n_iter)}"
        )
    print(f"NNDescent recall of the exact {k}-NN lists at iteration 0: {recall:.4f}")


# ------------------------------------------------------------------------ main
def _batch_size(value: str):
    if value in ("auto", "none"):
        return None if value == "none" else "auto"
    return int(value)


def _seconds(s) -> str:
    return "—" if s is None or np.isnan(s) else f"{s:.2f}"


def _ratio(a, b) -> str:
    if a is None or b is None or np.isnan(a) or np.isnan(b):
        return "—"
    return f"{a / b:.1f}×"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 2000, 5000, 10000, 20000, 50000])
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--repeat-published",
        type=int,
        default=None,
        help=f"runs of the published stack at n ≥ {LARGE:,} (default: --repeat)",
    )
    parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default="auto",
        help="msde_jax's mean_shift batch_size: an int, 'none', or 'auto' "
        "(None for n ≤ 1024, else 256)",
    )
    parser.add_argument(
        "--neighbors", default=None, help="passed to mean_shift as neighbors=… when given"
    )
    parser.add_argument("--stacks", default="published,ours", help="published, ours or both")
    parser.add_argument("--no-cold", action="store_true", help="skip the fresh-process timings")
    parser.add_argument(
        "--cold-cache",
        choices=("inherit", "off", "warm"),
        default="off",
        help="msde_jax's compilation cache in its cold process: off (default: everything "
        "compiled), as this process's environment says (inherit), or warm (a fresh folder "
        "filled by one untimed cold process first)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the agreement check")
    parser.add_argument("--check-n", type=int, default=300, help="n of the shift agreement check")
    parser.add_argument("--worker", choices=("published", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--started-at", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    if not stacks or set(stacks) - {"published", "ours"}:
        parser.error(f"--stacks takes published, ours or both, got {args.stacks!r}")

    import jax

    if "published" in stacks:
        import numba
        import pynndescent
        import umap

        versions = (
            f"umap-learn {umap.__version__}, pynndescent {pynndescent.__version__}, "
            f"numba {numba.__version__} ({numba.config.NUMBA_NUM_THREADS} threads); "
        )
    else:  # msde_jax only (benchmarks/gpu.sh): the published stack need not be installed
        versions = ""
    print(
        f"d={args.d} float32; jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"{versions}{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}); "
        f"{datetime.date.today().isoformat()}",
        flush=True,
    )
    rows = []
    for n in args.n:
        x = make_data(n, args.d)
        row = {"n": n, "published": {}, "ours": {}}
        if "published" in stacks:
            repeat = args.repeat_published if n >= LARGE and args.repeat_published else args.repeat
            row["published"] = time_published(x, repeat)
        if "ours" in stacks:
            options = ours_options(n, args)
            row["ours"] = {
                **time_ours(x, options, args.repeat),
                "batch_size": options["batch_size"],
            }
            # the warm figure before the cold process: a stage that times out keeps it
            print(f"  n={n} warm: {json.dumps(row['ours'], default=float)}", flush=True)
        for stack in stacks if not args.no_cold else ():
            row[stack]["cold_s"], row[stack]["cold_fit_s"] = cold(stack, n, args)
        rows.append(row)
        # each n as it is measured: a stage that times out (benchmarks/gpu.sh) keeps them
        print(f"  n={n} done: {json.dumps(row, default=float)}", flush=True)

    print()
    print(
        "| n | published warm (s) | msde_jax warm (s) | ratio "
        "| published cold (s) | msde_jax cold (s) | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        p, o = row["published"], row["ours"]
        pw, ow, pc, oc = (s.get(key) for key in ("warm_s", "cold_s") for s in (p, o))
        print(
            f"| {row['n']:,} | {_seconds(pw)} | {_seconds(ow)} | {_ratio(pw, ow)} "
            f"| {_seconds(pc)} | {_seconds(oc)} | {_ratio(pc, oc)} |"
        )

    print()
    print(
        "| n | published density (s) | published shift (s) | NNDescent rebuilds (s) "
        "| kNN share of fit | iterations (published / msde_jax) | msde_jax first call (s) "
        "| cold fit, published / msde_jax (s) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        p, o = row["published"], row["ours"]
        shift = p["warm_s"] - p["density_s"] if p else None
        share = f"{p['knn_s'] / p['warm_s']:.0%}" if p else "—"
        iters = f"{p.get('n_iter', '—')} / {o.get('n_iter', '—')}"
        print(
            f"| {row['n']:,} | {_seconds(p.get('density_s'))} | {_seconds(shift)} "
            f"| {_seconds(p.get('knn_s'))} | {share} | {iters} | {_seconds(o.get('first_s'))} "
            f"| {_seconds(p.get('cold_fit_s'))} / {_seconds(o.get('cold_fit_s'))} |"
        )

    if not args.no_check and set(stacks) == {"published", "ours"}:
        print()
        agreement(min(args.n), args.check_n, args.d, args)


if __name__ == "__main__":
    main()
