"""Patch memory bank: greedy k-center coreset and patch scores, vs NumPy / scikit-learn.

    python benchmarks/bench_bank.py                      # 10,000 of 200,000 (a few minutes)
    python benchmarks/bench_bank.py --n 20000 --select 1000 --images 10

* kcenter_greedy — choose ``--select`` of ``--n`` points (d = ``--d``), in the full space and
  on a ``--projection-dim`` random projection; baseline: the same greedy loop in NumPy
  (one matrix-vector product per step, float32).
* the cross-fit banks' searches — ``--select`` of ``--subset-rows`` rows in ``--subsets``
  subsets (all rows, then ``--subsets`` − 1 folds each leaving out its share), three ways: one
  program whose step is one (S, d) × (d, n) product (the accelerator form of
  :func:`msde_jax.core.kcenter_greedy_subsets`), one program whose step is S matrix-vector
  products (its CPU form), and each subset searched on its own rows padded to
  :func:`msde_jax.core.blocks.bucket_fit_rows` (what the patch bank does on a CPU), each on
  a 128-dimensional projection, as the bank's searches;
  ``--subsets 0`` skips it.
* patch_scores — ``--images`` × ``--patches`` test patches against the first ``--bank`` rows
  of the coreset, k = 1; baseline: ``sklearn.neighbors.NearestNeighbors(n_neighbors=1)`` fit
  + kneighbors, brute force and scikit-learn's default algorithm choice.

Each JAX function is compiled ahead of time first (``.lower(...).compile()``, timed on its
own); run times end with ``block_until_ready`` and are the best of ``--repeat`` calls (one call
for the coreset, which is long).
"""

import argparse
import os
import platform
import time

# The compile column compiles: no persistent cache unless the environment names one.
os.environ.setdefault("MSDE_JAX_COMPILATION_CACHE", "off")

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.neighbors import NearestNeighbors

import msde_jax as mj


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times), out


def aot(jitted, *args, **static):
    """Compile ``jitted`` for arrays ``args`` and static options: (callable, compile seconds)."""
    start = time.perf_counter()
    exe = jitted.lower(*args, **static).compile()
    return (lambda: exe(*args)), time.perf_counter() - start


def numpy_greedy(x, n_select):
    """The same farthest-point loop in NumPy: one float32 matrix-vector product per step."""
    sq = np.einsum("nd,nd->n", x, x)
    dist = np.full(len(x), np.inf, x.dtype)
    chosen = np.zeros(n_select, np.int64)
    for t in range(1, n_select):
        c = x[chosen[t - 1]]
        np.minimum(dist, np.maximum(sq + c @ c - 2 * (x @ c), 0.0), out=dist)
        dist[chosen[t - 1]] = -np.inf
        chosen[t] = np.argmax(dist)
    return chosen


def subset_searches(x, n, n_subsets, n_select, dim):
    """Rows of the table for the three forms of the cross-fit banks' searches (module doc)."""
    from msde_jax._platform import PATHS_ENV
    from msde_jax.core.blocks import bucket_fit_rows
    from msde_jax.core.coreset import _greedy

    x = x[:n]
    valid = np.ones((n_subsets, n), bool)
    for s in range(1, n_subsets):  # fold s leaves out every (n_subsets - 1)-th block of rows
        valid[s, (np.arange(n) // 196) % (n_subsets - 1) == s - 1] = False
    starts = jnp.asarray(np.argmax(valid, axis=1), jnp.int32)
    label = f"{n_subsets} searches, {n_select} of {n} rows and of its folds, projection_dim={dim}"
    out, found = [], {}
    for form, paths in (("one product per step", "accelerator"), ("S products", "cpu")):
        os.environ[PATHS_ENV] = paths  # read when the program is traced
        search = jax.jit(lambda a, v, s: _greedy(a, n_select, v, s, dim, None, None))
        fn, compile_s = aot(search, jnp.asarray(x), jnp.asarray(valid), starts)
        run_s, found[form] = best_of(fn, 1)
        out.append((f"{label}: one program, {form}", compile_s, run_s, n_select))
        print(f"  {out[-1][0]}: done", flush=True)
    os.environ.pop(PATHS_ENV)
    compile_s, run_s, alone = 0.0, 0.0, []
    search = jax.jit(
        lambda a, m: mj.core.kcenter_greedy(a, n_select, projection_dim=dim, n_valid=m)
    )
    for mask in valid:
        own = x[mask]
        count = own.shape[0]
        padded = np.zeros((bucket_fit_rows(count), x.shape[1]), x.dtype)
        padded[:count] = own
        fn, c = aot(search, jnp.asarray(padded), jnp.asarray(count, jnp.int32))
        r, chosen = best_of(fn, 1)
        compile_s, run_s = compile_s + c, run_s + r
        alone.append(np.flatnonzero(mask)[np.asarray(chosen)])
    out.append((f"{label}: each on its own rows", compile_s, run_s, n_select))
    same = [np.mean(np.asarray(found[f]) == np.stack(alone)) for f in found]
    print(f"  {out[-1][0]}: done; the same picks as the programs' at {min(same):.1%}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--select", type=int, default=10_000)
    parser.add_argument("--projection-dim", type=int, default=64)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--patches", type=int, default=196)
    parser.add_argument("--bank", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=2048, help="query rows per block")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--subsets", type=int, default=6, help="final fit + folds (0 skips)")
    parser.add_argument("--subset-rows", type=int, default=25_000)
    parser.add_argument(
        "--numpy-select",
        type=int,
        default=1000,
        help="steps of the (slow) NumPy greedy loop; compare per step (0 skips it)",
    )
    args = parser.parse_args()
    if args.bank > args.select:
        parser.error("--bank must not exceed --select (the bank is the first coreset rows)")

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=2.0, size=(50, args.d))
    x = (centres[rng.integers(0, 50, args.n)] + rng.normal(size=(args.n, args.d))).astype(
        np.float32
    )
    test = centres[rng.integers(0, 50, (args.images, args.patches))]
    test = (test + rng.normal(size=test.shape)).astype(np.float32)
    xj, testj = jnp.asarray(x), jnp.asarray(test)
    print(
        f"n={args.n} d={args.d} select={args.select} float32; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, {os.cpu_count()} CPU cores ({platform.processor()})",
        flush=True,
    )
    rows = []

    fn, compile_s = aot(mj.core.kcenter_greedy, xj, n_select=args.select)
    run_s, exact = best_of(fn, 1)
    rows.append(
        (f"kcenter_greedy {args.select} of {args.n}, d={args.d}", compile_s, run_s, args.select)
    )
    print(f"  {rows[-1][0]}: done", flush=True)
    p = args.projection_dim
    fn, compile_s = aot(mj.core.kcenter_greedy, xj, n_select=args.select, projection_dim=p)
    run_s, projected = best_of(fn, 1)
    rows.append((f"kcenter_greedy, projection_dim={p}", compile_s, run_s, args.select))
    print(f"  {rows[-1][0]}: done", flush=True)
    exact, projected = np.asarray(exact), np.asarray(projected)
    steps = min(args.numpy_select, args.select)
    if steps:
        start = time.perf_counter()
        ref = numpy_greedy(x, steps)
        rows.append(
            (
                f"NumPy greedy loop, first {steps} steps",
                float("nan"),
                time.perf_counter() - start,
                steps,
            )
        )
        same = np.mean(ref == exact[:steps])
        print(f"  NumPy loop: done; same indices as kcenter_greedy at {same:.1%} of its steps")

    def covering_radius(chosen):
        centres_ = xj[chosen[: args.select]]
        return float(jnp.max(mj.core.knn(xj, centres_, k=1, batch_size=4096).distances))

    print(
        f"  covering radius (full d): exact {covering_radius(exact):.3f}, "
        f"projected {covering_radius(projected):.3f}",
        flush=True,
    )

    if args.subsets:
        rows += subset_searches(x, args.subset_rows, args.subsets, args.select, 128)

    bank = mj.core.MemoryBank(
        xj[exact[: args.bank]], jnp.ones(args.bank), jnp.asarray(exact[: args.bank], jnp.int32)
    )
    n_q = args.images * args.patches
    fn, compile_s = aot(mj.core.patch_scores, bank, testj, k=1, batch_size=args.batch_size)
    run_s, ours = best_of(fn, args.repeat)
    rows.append(
        (
            f"patch_scores {args.images}×{args.patches} vs {args.bank} (bs={args.batch_size})",
            compile_s,
            run_s,
            None,
        )
    )
    bank_np, queries = np.asarray(bank.bank), test.reshape(n_q, args.d)
    for algorithm in ("brute", "auto"):
        run_s, (dist, _) = best_of(
            lambda a=algorithm: (
                NearestNeighbors(n_neighbors=1, algorithm=a).fit(bank_np).kneighbors(queries)
            ),
            args.repeat,
        )
        rows.append(
            (
                f"sklearn NearestNeighbors({algorithm!r}), fit + kneighbors",
                float("nan"),
                run_s,
                None,
            )
        )
        gap = np.max(np.abs(dist[:, 0] - np.asarray(ours).reshape(-1)))
        print(f"  sklearn {algorithm}: done; max |Δ score| = {gap:.2e}", flush=True)

    print()
    print("| step | compile (s) | run (s) | ms per greedy step |")
    print("|---|---:|---:|---:|")
    for name, c, r, steps in rows:
        compile_col = "—" if np.isnan(c) else f"{c:.2f}"
        step_col = "—" if steps is None else f"{1e3 * r / steps:.2f}"
        print(f"| {name} | {compile_col} | {r:.3f} | {step_col} |")


if __name__ == "__main__":
    main()
