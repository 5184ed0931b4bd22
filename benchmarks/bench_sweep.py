"""What a hyperparameter sweep compiles: programs per fitted detector, and the seconds spent.

A user choosing settings fits one detector per setting on the same features, as scikit-learn's
``GridSearchCV`` or ``msde-jax ... --select`` do. Settings that a program does not read need
not compile it again (``BaseConfig.unread_by_score``, ``DetectorConfig.fit_program``), nor
numbers it takes as data (the fit's step size, tolerance and ridge; the score's step size and
tolerance, ``DetectorState.for_scoring``). This
fits and scores each setting of a small grid in one process on random features and reports
the programs built (``msde_jax._compilation.CompileCounter``) and the seconds XLA spent
compiling them (jax.monitoring's backend compile events), per grid and in all::

    MSDE_JAX_COMPILATION_CACHE=off python benchmarks/bench_sweep.py
    MSDE_JAX_COMPILATION_CACHE=off python benchmarks/bench_sweep.py --n 476 --d 256

Run it from an older checkout (``PYTHONPATH`` set to it) for the counts before a change.
"""

import argparse
import collections
import itertools
import time

import numpy as np
from jax import monitoring

from msde_jax import MSDEDetector, PatchBankDetector
from msde_jax._compilation import CompileCounter

GRIDS = {
    "MSDE inductive: covariance × ridge": (
        MSDEDetector,
        dict(k=10),
        dict(covariance=["ridge", "empirical", "ledoit_wolf", "oas"], ridge=[1e-4, 1e-2]),
    ),
    "MSDE inductive/transductive × block order": (
        MSDEDetector,
        dict(k=10, threshold="chi2"),
        dict(mode=["inductive", "transductive"], block_order=["content", "given"]),
    ),
    "MSDE inductive: step size × tolerance": (
        MSDEDetector,
        dict(k=10),
        dict(step_size=[0.2, 0.33, 0.5], tol=[0.0, 0.01]),
    ),
    "MSDE no shift: density × k × covariance": (
        MSDEDetector,
        dict(mode="none"),
        dict(density=["msde", "uniform"], k=[10, 20], covariance=["ridge", "ledoit_wolf"]),
    ),
    "patch bank: seed × projection": (
        PatchBankDetector,
        dict(size=200),
        dict(seed=[0, 1], projection_dim=[8, 16]),
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="training samples (images)")
    parser.add_argument("--d", type=int, default=32, help="features (channels per patch)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    pooled = rng.normal(size=(args.n, args.d)).astype(np.float32)
    patches = rng.normal(size=(args.n // 4, 4, 4, args.d)).astype(np.float32)
    queries = {MSDEDetector: pooled[:40] * 1.5, PatchBankDetector: patches[:10] * 1.5}
    train = {MSDEDetector: pooled, PatchBankDetector: patches}

    seconds = collections.Counter()

    def on_duration(event: str, duration: float, **kwargs: object) -> None:
        if event.endswith("backend_compile_duration"):
            seconds["compile"] += duration

    monitoring.register_event_duration_secs_listener(on_duration)
    print(f"| grid | settings | programs | compile s | wall s |  (n = {args.n}, d = {args.d})")
    total = collections.Counter()
    for name, (cls, fixed, grid) in GRIDS.items():
        seconds.clear()
        start = time.perf_counter()
        settings = [dict(zip(grid, v, strict=True)) for v in itertools.product(*grid.values())]
        with CompileCounter() as count:
            for setting in settings:
                cls(**fixed, **setting).fit(train[cls]).score_samples(queries[cls])
        wall = time.perf_counter() - start
        print(
            f"| {name} | {len(settings)} | {count.requested} | {seconds['compile']:.1f} "
            f"| {wall:.1f} |"
        )
        total.update(programs=count.requested, compile=seconds["compile"], wall=wall)
    print(f"| all | | {total['programs']} | {total['compile']:.1f} | {total['wall']:.1f} |")


if __name__ == "__main__":
    main()
