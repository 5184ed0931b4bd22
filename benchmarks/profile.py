"""A ``jax.profiler`` trace of the whole pipeline, one named span per stage.

    python benchmarks/profile.py                          # 64 train + 32 test images, 224 px
    python benchmarks/profile.py --out /tmp/msde_trace --train 128 --test 64

Two pipelines on the built-in PneumoniaMNIST split, inside one ``jax.profiler.trace``:

1. the default configuration, ``msde_jax.recommended()`` (EfficientNet-Lite0
patch
   features and a ``PatchBankDetector``): embed the training normals, fit, embed the test
   images (normals then abnormals), score;
2. ``MSDEDetector()`` (inductive MSDE → PCA → Gaussian) on the same backbone's pooled
   embeddings: embed, fit, score.

Each stage runs under ``jax.profiler.TraceAnnotation`` (a span on the host timeline) and
``jax.named_scope`` (a prefix on the names of the operations traced inside it, i.e. those
compiled in that stage), and its wall time is printed. The first call of every jitted function
compiles it, so the spans include compilation; the trace shows it as its own events. The
Python tracer (every Python call as an event, jax's default) is off unless ``--python-tracer``
is given: with it the default run's ``.xplane.pb`` grows to ~160 MB and its export takes ~30 s.

Writing the trace needs nothing beyond jax / jaxlib: ``DIR/plugins/profile/<run>/`` gets
``<host>.xplane.pb`` (the profiler's native format), ``<host>.trace.json.gz`` (Chrome trace
events) and, as asked for here, ``perfetto_trace.json.gz`` (the same events without the
metadata Perfetto rejects). *Viewing* needs one of:

* Perfetto, nothing to install: open https://ui.perfetto.dev and load
  ``perfetto_trace.json.gz`` ("Open trace file"); or ``chrome://tracing`` for the
  ``.trace.json.gz``;
* TensorBoard's profile plugin (not a dependency of msde_jax): ``pip install tensorboard
  tensorboard-plugin-profile``, then ``tensorboard --logdir DIR`` and the "Profile" tab; or the
  stand-alone XProf (``pip install xprof``, then ``xprof --logdir DIR``), which reads the
  ``.xplane.pb`` and adds the op-level views (trace viewer, op profile, memory).
"""

import argparse
import contextlib
import os
import time

# The spans include compilation: no persistent cache unless the environment names one.
os.environ.setdefault("MSDE_JAX_COMPILATION_CACHE", "off")

import jax
import numpy as np

from msde_jax import MSDEDetector, recommended
from msde_jax.core import roc_auc
from msde_jax.embedder import Embedder
from msde_jax.io.datasets import load_dataset

_TIMES: list[tuple[str, float]] = []


@contextlib.contextmanager
def stage(name: str):
    """One span in the trace (host annotation + op-name scope), and its wall time."""
    start = time.perf_counter()
    with jax.profiler.TraceAnnotation(name), jax.named_scope(name):
        yield
    _TIMES.append((name, time.perf_counter() - start))
    print(f"  {name:<34} {_TIMES[-1][1]:7.2f} s", flush=True)


def run(args) -> None:
    with stage("load pneumoniamnist"):
        data = load_dataset("pneumoniamnist")
        train = data.train_normal[: args.train]
        half = args.test // 2
        test = data.test_normal[:half] + data.test_abnormal[: args.test - half]
        labels = np.r_[np.zeros(half), np.ones(args.test - half)]

    options = {"image_size": args.image_size, "progress": False}
    embedder, detector = recommended(**options)
    with stage("patches/embed train"):
        feats = jax.block_until_ready(embedder.embed(train))
    with stage("patches/fit PatchBankDetector"):
        detector.fit(feats)
    with stage("patches/embed test"):
        test_feats = jax.block_until_ready(embedder.embed(test))
    with stage("patches/score"):
        scores = np.asarray(detector.score_samples(test_feats))
    print(f"    patch bank AUROC {float(roc_auc(labels, scores)):.3f} (a {args.test}-image check)")

    pooled = Embedder(embedder.backbone, **options)
    with stage("pooled/embed train + test"):
        x = jax.block_until_ready(pooled.embed(train + test))
    msde = MSDEDetector()
    with stage("pooled/fit MSDEDetector"):
        msde.fit(x[: len(train)])
    with stage("pooled/score"):
        scores = np.asarray(msde.score_samples(x[len(train) :]))
    print(f"    MSDE AUROC {float(roc_auc(labels, scores)):.3f} (a {args.test}-image check)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="profile_trace", help="trace directory")
    parser.add_argument("--train", type=int, default=64, help="training normals (≥ 64 for k=50)")
    parser.add_argument("--test", type=int, default=32, help="test images, half abnormal")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--python-tracer",
        action="store_true",
        help="also record every Python call (jax's default; ~10× the trace size and slower)",
    )
    args = parser.parse_args()

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; tracing into {args.out}/")
    start = time.perf_counter()
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = int(args.python_tracer)
    with jax.profiler.trace(args.out, create_perfetto_trace=True, profiler_options=options):
        run(args)
    print(f"  {'total (trace written)':<34} {time.perf_counter() - start:7.2f} s")

    print("\nfiles:")
    for root, _, files in sorted(os.walk(args.out)):
        for name in sorted(files):
            path = os.path.join(root, name)
            print(f"  {path}  ({os.path.getsize(path) / 1e6:.1f} MB)")
    print(
        "\nto view it:\n"
        "  Perfetto: open https://ui.perfetto.dev and load the perfetto_trace.json.gz above\n"
        "  TensorBoard: pip install tensorboard tensorboard-plugin-profile; "
        f"tensorboard --logdir {args.out}  (the Profile tab)\n"
        f"  XProf: pip install xprof; xprof --logdir {args.out}"
    )


if __name__ == "__main__":
    main()
