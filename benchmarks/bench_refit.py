"""What a refit of ``MSDEDetector`` on a nearby number of images costs, and what padding costs.

A fit pads its rows to a bucket (``msde_jax.detectors.msde.fit_rows``: at most 1/8 padding),
so that refits on a few more or fewer images (a ``GridSearchCV`` split, a model refitted on
this week's scans) and the cross-fit's folds reuse the compiled programs. For each size n and
detector this prints, in one process with the persistent compilation cache off:

* the first fit + score at n: seconds and programs compiled;
* a refit + score at ``--refit`` (default n − 10, usually the same bucket): seconds and
  programs compiled;
* the warm fit time with padding against the same fit with padding switched off (``_pads``
  patched to False: the code as it was before fits were padded), best of ``--repeat``, as a
  ratio: what the padding rows cost once everything is compiled;
* the warm fit time with the cross-fit folds each in their own bucket (``_fold_rows``
  patched to 0: on a CPU what fits past 1,024 rows do, and every fit before 2026-12-06)
  against the default, where the folds up to 1,024 rows (on an accelerator: always) are padded
  to the whole fit's rows to share its program.

    python benchmarks/bench_refit.py                       # n = 500 and 2,049, d = 64
    python benchmarks/bench_refit.py --n 1000 --d 512 --repeat 5
    python benchmarks/bench_refit.py --n 200 476 1000 2000 --d 512 --detectors "MSDEDetector()"

Features are Gaussian noise (timings do not depend on the values; the stopping rule may stop
earlier on real data). Progress goes to stderr, one markdown table to stdout.
"""

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("MSDE_JAX_COMPILATION_CACHE", "off")  # compile counts of this process

import jax  # noqa: E402
import numpy as np  # noqa: E402

from msde_jax import MSDEDetector  # noqa: E402
from msde_jax._compilation import CompileCounter  # noqa: E402
from msde_jax.detectors import msde  # noqa: E402

DETECTORS = {
    "MSDEDetector()": lambda: MSDEDetector(),
    "MSDEDetector(mode='none')": lambda: MSDEDetector(mode="none"),
    "MSDEDetector.paper()": lambda: MSDEDetector.paper(),
}


def fit_score(make, x, queries):
    start = time.perf_counter()
    with CompileCounter() as count:
        det = make().fit(x)
        np.asarray(det.score_samples(queries))
    return time.perf_counter() - start, count.compiled


def warm_fit(make, x, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(make().fit(x).state_)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[500, 2049])
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--refit", type=int, default=-10, help="refit size minus n")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__}, {jax.devices()[0].platform}",
        file=sys.stderr,
    )
    rng = np.random.default_rng(0)
    print(
        "| detector | n → refit (padded rows) | first fit + score s (programs) "
        "| refit + score s (programs) | warm fit s padded / unpadded | ratio "
        "| warm fit s, folds in own bucket | ratio (default / own) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.detectors:
        make = DETECTORS[name]
        for n in args.n:
            m = n + args.refit
            x = rng.normal(size=(n, args.d)).astype(np.float32)
            x2 = rng.normal(size=(m, args.d)).astype(np.float32)
            queries = rng.normal(size=(100, args.d)).astype(np.float32)
            print(f"{name} n={n}", file=sys.stderr)
            first, first_programs = fit_score(make, x, queries)
            again, again_programs = fit_score(make, x2, queries)
            padded = warm_fit(make, x, args.repeat)
            pads = msde._pads
            msde._pads = lambda config, rows: False
            try:
                warm_fit(make, x, 1)  # compiles the unpadded programs
                plain = warm_fit(make, x, args.repeat)
            finally:
                msde._pads = pads
            fold_rows = msde._fold_rows
            msde._fold_rows = lambda config, rows: 0
            try:
                warm_fit(make, x, 1)  # compiles the folds' own-bucket programs
                own = warm_fit(make, x, args.repeat)
            finally:
                msde._fold_rows = fold_rows
            rows = f"{msde.fit_rows(make().config(), n)} / {msde.fit_rows(make().config(), m)}"
            print(
                f"| {name} | {n} → {m} ({rows}) | {first:.2f} ({first_programs}) "
                f"| {again:.2f} ({again_programs}) | {padded:.3f} / {plain:.3f} "
                f"| {padded / plain:.2f} | {own:.3f} | {padded / own:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
