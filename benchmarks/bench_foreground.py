"""The bank's label-free foreground mask on the real datasets (issue 22, item 2).

For each dataset, the default embedder (``Embedder("efficientnet_lite0", features="patches")``)
and ``PatchBankDetector()`` against ``PatchBankDetector(foreground="pca")`` with
``q`` = 0.01, 0.05, 0.1: the **synthetic-validation AUROC**
(:func:`msde_jax.pipeline.selection.synthetic_validation`, label-free) and, descriptive only,
the **real test AUROC** of each configuration refitted on all training normals. Nothing here
chooses by the test labels. Embeddings go through the cache (``--cache-dir``), so a second run
only fits and scores.

Usage::

    python benchmarks/bench_foreground.py --cache-dir /work/.bench_cache_fg
    python benchmarks/bench_foreground.py --embed-only      # fill the cache first
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from msde_jax import PatchBankDetector
from msde_jax.core.metrics import roc_auc
from msde_jax.embedder import Embedder
from msde_jax.io.datasets import load_dataset
from msde_jax.pipeline.evaluation import embed
from msde_jax.pipeline.presets import Candidate
from msde_jax.pipeline.selection import synthetic_validation, validation_set

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def candidates() -> dict[str, PatchBankDetector]:
    out = {f"bank q={q}": PatchBankDetector(q=q) for q in (0.1,)}
    out.update({f"bank+fg q={q}": PatchBankDetector(foreground="pca", q=q) for q in (0.01, 0.05, 0.1)})
    return out


def run(name: str, args) -> dict:
    dataset = load_dataset(DATA / name / f"{name}.npz")
    train, test, labels = list(dataset.train_normal), dataset.test_items(), dataset.test_labels()
    embedder = Embedder("efficientnet_lite0", features="patches")
    kw = {"cache_dir": args.cache_dir}
    if args.embed_only:
        vset = validation_set(train, fallback_size=embedder.image_size)
        embed(embedder, train, what="train normal (validation)", **kw)
        embed(embedder, list(vset.anomalies), what="synthetic anomaly", **kw)
        embed(embedder, test, what="test", **kw)
        return {}
    dets = candidates()
    t = time.perf_counter()
    check = synthetic_validation(
        train, {n: Candidate(embedder, d) for n, d in dets.items()}, **kw
    )
    out = {"synthetic_s": time.perf_counter() - t, "synthetic": {}, "test": {}}
    for n, s in check.scores.items():
        out["synthetic"][n] = s.auroc
    x_train = embed(embedder, train, what="train", **kw)
    x_test = embed(embedder, test, what="test", **kw)
    fitted = {}
    for n, det in dets.items():
        fit_key = (det.foreground,)
        if fit_key not in fitted:
            fitted[fit_key] = PatchBankDetector(foreground=det.foreground).fit(x_train)
        model = fitted[fit_key].set_params(q=det.q)
        scores = model.score_samples(x_test)
        out["test"][n] = float(roc_auc(np.asarray(labels), scores))
        print(f"{name}: {n}: synthetic {out['synthetic'][n]:.4f}  test {out['test'][n]:.4f}",
              file=sys.stderr)
    fg = fitted[("pca",)]
    mask = np.asarray(fg.foreground_patches(x_test))
    out["foreground_share_test"] = float(mask.mean())
    out["foreground_share_border"] = float(
        np.concatenate([mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1]], axis=1).mean()
    )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["brain_tumor_mri", "pneumoniamnist"])
    p.add_argument("--cache-dir", default="/work/.bench_cache_fg")
    p.add_argument("--embed-only", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    results = {name: run(name, args) for name in args.datasets}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
