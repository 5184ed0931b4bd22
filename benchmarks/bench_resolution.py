"""Finer patch grids and larger inputs for the default detector, judged by the label-free rule.

Issue 22, item 3. The default rule (:func:`msde_jax.pipeline.presets.recommended`:
EfficientNet-Lite0 ImageNet patch features of the backbone's patch layers, 3 × 3 aggregation,
and ``PatchBankDetector()``) under several feature settings ``image_size:grid`` (``--settings``;
``224:14`` is today's default, ``224:28`` a 4× finer patch grid, ``320:20`` a larger input whose
grid keeps the stride-16 layer's footprint; a ``:mirror`` suffix, e.g. ``224:14:mirror``, a
mirror-augmented bank: issue 22, item 2; ``:score.calib=1|2``, patch scores calibrated per grid
position, :func:`calibration`; ``:feat.scale=1|2``, channels or layers rescaled,
:func:`scaler`). For each dataset and setting this script

1. builds the library's validation set (:func:`msde_jax.pipeline.selection.validation_set`, as
   ``benchmarks/bench_ensemble.py`` and ``msde-jax evaluate`` do) once per ``--seeds`` seed: the
   training normals split by content into a fitting part (80 %), clean held-out normals and
   sources of synthetic anomalies. The split and the anomalies are the same for every setting
   (made at the images' own resolution, or at the largest setting's side as
   :func:`~msde_jax.pipeline.selection.select` would for candidates of mixed sizes);
2. embeds every image through the cache (``--cache-dir``) and measures the embedder's rate
   separately: ``--rate-images`` training images embedded without the cache, after one warm-up
   batch (so compilation is not counted);
3. fits the default detector on the fitting part (validation) and on all training normals
   (test), timing the latter's ``fit`` (its first call in the process, after the validation
   fit has compiled most of its programs, and ``--fit-repeats`` − 1 warm repeats) and its
   scoring of the test set. A ``:mirror`` setting fits both banks on those images **plus their
   left–right mirrors** (embedded by ``embedder.flipped()``, new cache entries; each image and
   its mirror share a cross-fit fold of the threshold, ``fit(..., groups=...)``), and scores the
   un-mirrored held-out and test images exactly as the plain setting does;
4. measures (a) the **synthetic-validation AUROC per family** (:data:`bench_ensemble.FAMILIES`,
   mean over seeds), (b) the **label-free rule** (:func:`bench_ensemble.label_free_rule`: each
   setting's rank among the settings in every family × dataset, averaged; the lowest mean rank
   wins) and (c), reported only, the **real test AUROC / AP**, the **FPR of the threshold**
   (``contamination`` 0.05) on the test normals, the fit and scoring times and the embedding
   rate. Nothing here chooses by a test label, and nothing changes the library's default.

Writes ``--out`` (JSON) and ``--markdown``. Times are wall times on whatever machine runs it.

Usage::

    PYTHONPATH=. python benchmarks/bench_resolution.py --cache-dir .bench_cache_res \
        --out resolution.json --markdown resolution.md
    PYTHONPATH=. python benchmarks/bench_resolution.py --datasets pneumoniamnist \
        --settings 64:8 64:4 --limit 60 --seeds 0 --fit-repeats 1   # a smoke run

``--limit`` keeps the first N images per class of every dataset; ``--limit-for 224:28 1000``
limits one setting only (on every dataset), should one setting's fits not fit the time budget.
``--large`` also scores lesion-sized opacities (:func:`large_opacities`), a diagnostic family
reported beside the rule's (``large_opacity_auroc``) and never ranked by it.
"""

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
from sklearn.metrics import average_precision_score

from msde_jax._compilation import CompileCounter
from msde_jax.backbones.registry import backbone_spec
from msde_jax.core import image_scores, with_positions
from msde_jax.core.blocks import sample_keys
from msde_jax.detectors.bank_coreset import position_channels
from msde_jax.detectors.fitting import folds
from msde_jax.io.images import to_float
from msde_jax.pipeline import presets
from msde_jax.pipeline.evaluation import embed, limit_dataset
from msde_jax.pipeline.selection import validation_set
from msde_jax.ssl.synthetic import opacity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ensemble import (  # noqa: E402
    CONTAMINATION,
    FAMILIES,
    auroc,
    label_free_rule,
    load,
    write_choice,
)

DEFAULT_SETTINGS = ("224:14", "224:28", "320:20", "320:14")


class Setting(NamedTuple):
    size: int
    grid: int
    mirror: bool = False  # fit the banks on the images plus their left–right mirrors
    two_stage: bool = False  # PatchBankDetector(coreset="two_stage"), the default since 2026-12-05
    cosine: str | None = None  # unit patch vectors: "cosine" whole, "cosine_layers" per layer
    # PatchBankDetector parameters, name=value; embed.name=value: an Embedder option;
    # feat.position=w: patch positions appended (with_position, position_weight of the fit);
    # feat.scale=1|2: channels standardised (1) or the layers' variances equalised (2), scaler()
    # score.calib=1|2: each grid position's patch scores calibrated (calibration(), 1 ratio, 2 z)
    params: tuple[tuple[str, int | float], ...] = ()

    @property
    def name(self) -> str:
        flags = ":mirror" * self.mirror + ":two_stage" * self.two_stage
        flags += f":{self.cosine}" if self.cosine else ""
        return f"{self.size}:{self.grid}{flags}" + "".join(f":{k}={v}" for k, v in self.params)


FLAGS = ("mirror", "two_stage", "cosine", "cosine_layers")


def setting(text: str) -> Setting:
    """``"image_size:grid"``, optionally followed by ``:mirror``, ``:two_stage`` and one of
    ``:cosine`` / ``:cosine_layers`` → :class:`Setting`."""
    parts = text.split(":")
    flags = [f for f in parts[2:] if "=" not in f]
    try:
        params = tuple((k, _number(v)) for k, v in (f.split("=", 1) for f in parts[2:] if "=" in f))
        if len(parts) < 2 or len(set(flags)) != len(flags):
            raise ValueError
        if not set(flags) <= set(FLAGS) or {"cosine", "cosine_layers"} <= set(flags):
            raise ValueError
        size, grid = (int(v) for v in parts[:2])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a setting is image_size:grid[:mirror][:two_stage][:cosine|:cosine_layers]"
            f"[:param=value...], got {text!r}"
        ) from None
    cosine = next((f for f in flags if f.startswith("cosine")), None)
    return Setting(size, grid, "mirror" in flags, "two_stage" in flags, cosine, params)


def _number(text: str) -> int | float | tuple[str, ...]:
    """A setting's value: an int, a float, or a comma-separated list (``embed.layers``)."""
    if "," in text:
        return tuple(text.split(","))
    return int(text) if text.lstrip("-").isdigit() else float(text)


def unit_patches(x: np.ndarray, widths: list[int] | None) -> np.ndarray:
    """Each patch vector (the last axis) scaled to unit length, so that the bank's Euclidean
    distance is √(2 − 2 cos); with ``widths`` (the layers' channel counts, in order) each
    layer's slice separately, then ÷ √(layers), so that every layer weighs the same."""
    parts = np.split(x, np.cumsum(widths)[:-1], axis=-1) if widths else [x]
    unit = [p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-12) for p in parts]
    return (np.concatenate(unit, axis=-1) / np.sqrt(len(parts))).astype(x.dtype)


def position_weight(x: np.ndarray, position: float) -> float:
    """The library's weight for ``position`` on the fitting patches ``x``
    (:func:`~msde_jax.detectors.bank_coreset.position_channels`: ``position`` × their spread
    √(Σ_c var_c)); 0 for ``position`` 0."""
    found = position_channels(x, position)
    return 0.0 if found is None else float(found[0])


def with_position(x: np.ndarray, weight: float) -> np.ndarray:
    """(n, g, g, c) patch vectors with the library's two position channels appended
    (:func:`~msde_jax.core.with_positions`): the bank's Euclidean distance on them is the
    position-aware distance of ``PatchBankDetector(position=...)``."""
    return np.asarray(with_positions(x, np.float32(weight)))


CALIBRATIONS = {1: "ratio", 2: "z"}
SCALINGS = {1: "channels", 2: "layers"}


def scaler(x: np.ndarray, mode: int, widths: list[int]):
    """A channel scaling learned from the fitting patches ``x`` (n, ..., c), as a function of
    patch arrays: ``mode`` 1 divides each channel by its standard deviation over the patches
    (and subtracts its mean), so every channel weighs the same in the bank's distance; ``mode``
    2 scales each layer's slice (``widths``, the layers' channel counts in order) so that its
    total variance Σ_c var_c is the mean of the layers', so every layer weighs the same and the
    channels within a layer keep their proportions."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    mean, var = flat.mean(axis=0), flat.var(axis=0)
    if mode == 1:
        factor = 1 / np.sqrt(np.maximum(var, 1e-12))
        shift = mean
    else:
        totals = np.array([p.sum() for p in np.split(var, np.cumsum(widths)[:-1])])
        factor = np.repeat(np.sqrt(totals.mean() / totals), widths)
        shift = np.zeros_like(mean)
    return lambda a: ((a - shift) * factor).astype(a.dtype)


def calibration(template, x: np.ndarray, groups, det, mode: int, n_folds: int = 3):
    """Patch scores calibrated per grid position by out-of-fold normal patch scores.

    The patches ``x`` (n, g, g, c) of the fitted ``det`` (a fitted copy of ``template``) are
    dealt into ``n_folds`` folds by content (the library's cross-fit folds); each fold's patch
    scores come from a bank fitted on the other folds (``threshold="none"``). Per grid
    position p, μ_p and σ_p are the mean and standard deviation of those out-of-fold scores
    over the images; a patch score s at p becomes s / μ_p (``mode`` 1, "ratio") or
    (s − μ_p) / σ_p (``mode`` 2, "z"), and the image score is the detector's own reduction
    (``reduce``, ``q``) of the calibrated scores.

    Returns:
        ``(score, out_of_fold)``: ``score(x_query) -> (m,)`` calibrated image scores under
        ``det``, and the (n,) calibrated out-of-fold image scores of ``x`` (the threshold's
        sample, as the library's cross-fit threshold).
    """
    params = template.get_params()
    bare = {**params, "threshold": "none"}
    held = folds(sample_keys(x), n_folds, groups)
    oof = np.empty((len(x), int(np.prod(x.shape[1:-1]))), np.float64)
    for h in held:
        rest = np.setdiff1d(np.arange(len(x)), h)
        fold_det = type(template)(**bare).fit(x[rest])
        oof[h] = np.asarray(fold_det.score_patches(x[h]), np.float64).reshape(len(h), -1)
    mu, sd = oof.mean(axis=0), np.maximum(oof.std(axis=0), 1e-12)

    def image(patches: np.ndarray) -> np.ndarray:
        z = patches / mu if mode == 1 else (patches - mu) / sd
        return np.asarray(image_scores(z, reduce=params["reduce"], q=params["q"]), np.float64)

    def score(xq: np.ndarray) -> np.ndarray:
        return image(np.asarray(det.score_patches(xq), np.float64).reshape(len(xq), -1))

    return score, image(oof)


LARGE_RADIUS = (0.3, 0.5)  # opacity's default is (0.12, 0.3) of the short side


def large_opacities(train: list, sources: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` lesion-sized opacities, a diagnostic family beside the rule's (``--large``):
    :func:`~msde_jax.ssl.synthetic.opacity` with semi-axes ``LARGE_RADIUS`` of the short side,
    made from the validation set's anomaly sources (``sources``, indices into ``train``) in
    turn, half with ``anatomy="bright"`` and half ``"dark"`` as the validation set's kinds are;
    uint8 images at the normals' own resolution."""
    images = np.stack([to_float(train[i]) for i in sources])
    parts, half = [], count // 2
    for i, (anatomy, m) in enumerate((("bright", half), ("dark", count - half))):
        keys = jax.random.split(jax.random.fold_in(jax.random.key(10_000 + seed), i), m)
        sources_i = images[(np.arange(m) + i * half) % len(images)]
        parts.append(np.asarray(_large_opacities(keys, sources_i, anatomy=anatomy)))
    return np.round(np.clip(np.concatenate(parts), 0, 1) * 255).astype(np.uint8)


@functools.partial(jax.jit, static_argnames="anatomy")
def _large_opacities(keys: jax.Array, images: jax.Array, *, anatomy: str) -> jax.Array:
    def one(key, image):
        return opacity(key, image, radius=LARGE_RADIUS, anatomy=anatomy).image

    return jax.vmap(one)(keys, images)


def with_mirrors(x: np.ndarray, x_mirror: np.ndarray | None) -> tuple[np.ndarray, object]:
    """The bank's training features and ``groups``: ``x`` alone (no groups), or ``x`` plus
    its mirrors ``x_mirror``, each image and its mirror one group (one cross-fit fold)."""
    if x_mirror is None:
        return x, None
    ids = np.arange(len(x))
    return np.concatenate([x, x_mirror]), np.r_[ids, ids]


def family_aurocs(val_scores: dict[int, np.ndarray], vsets: dict, n_val: int) -> dict:
    """Synthetic AUROC per family (held-out normals vs that family's anomalies), mean over
    seeds; ``None`` for a family no seed made (tiny ``--limit`` runs only)."""
    out = {}
    for family, kinds in FAMILIES.items():
        per_seed = []
        for seed, v in vsets.items():
            made = np.flatnonzero(np.isin(v.kinds, kinds))
            if made.size:
                idx = np.r_[np.arange(n_val), n_val + made]
                y = np.r_[np.zeros(n_val), np.ones(made.size)]
                per_seed.append(auroc(y, val_scores[seed][idx]))
        out[family] = float(np.mean(per_seed)) if per_seed else None
    return out


def embed_rate(embedder, items: list, n: int) -> float:
    """Images per second of ``embedder.embed`` on ``n`` of ``items`` (no cache), after one
    warm-up batch of the same size (compilation excluded)."""
    n = min(n, len(items))
    batch = embedder.batch_size
    n -= n % batch if n >= batch else 0
    embedder.embed(items[:batch])
    t = time.perf_counter()
    embedder.embed(items[:n])
    return n / (time.perf_counter() - t)


def timed_fit(template, x: np.ndarray, repeats: int, groups=None) -> tuple[object, dict]:
    """A fitted copy of ``template`` and its fit times: the first call in this process
    (compiling what the validation fit before it has not: "fit programs compiled" counts it)
    and the fastest of ``repeats`` − 1 warm repeats."""
    params = template.get_params()
    with CompileCounter() as count:
        t = time.perf_counter()
        det = type(template)(**params).fit(x, groups=groups)
        first = time.perf_counter() - t
    warm = []
    for _ in range(repeats - 1):
        t = time.perf_counter()
        type(template)(**params).fit(x, groups=groups)
        warm.append(time.perf_counter() - t)
    return det, {
        "fit first s": first,
        "fit programs compiled": count.compiled,
        "fit warm s": min(warm) if warm else None,
    }


def run(dataset_name: str, settings: list[Setting], args) -> list[dict]:
    """One result per setting on one dataset (``bench_ensemble``'s run layout, with a single
    candidate each, so that :func:`label_free_rule` ranks the settings)."""
    dataset = limit_dataset(load(dataset_name), limit=args.limit)
    train_all, test_all = list(dataset.train_normal), dataset.test_items()
    labels_all = np.asarray(dataset.test_labels())
    fallback = max(s.size for s in settings)
    vsets = {s: validation_set(train_all, fallback_size=fallback, seed=s) for s in args.seeds}
    first = vsets[args.seeds[0]]
    fit_idx, val_idx = first.fit, first.normals
    for v in vsets.values():  # the split depends on content only
        assert np.array_equal(v.fit, fit_idx)
        assert np.array_equal(v.normals, val_idx)
    n_val = len(val_idx)
    large = {}  # --large: lesion-sized opacities per synthesis seed, the same for every setting
    if args.large:
        large = {
            seed: large_opacities(train_all, v.sources, len(first.anomalies), seed)
            for seed, v in vsets.items()
        }
    out = []
    for s in settings:
        size, grid, mirror, two_stage, name = s.size, s.grid, s.mirror, s.two_stage, s.name
        start = time.perf_counter()
        embed_options = {k[6:]: v for k, v in s.params if k.startswith("embed.")}
        cand = presets.recommended(args.backbone, image_size=size, grid=grid, **embed_options)
        embedder, template = cand.embedder, cand.detector
        if two_stage:
            template.set_params(coreset="two_stage")
        # e.g. size=5000, score_neighbors=3
        template.set_params(
            **{k: v for k, v in s.params if not k.startswith(("embed.", "feat.", "score."))}
        )
        position = dict(s.params).get("feat.position")
        if position is not None:  # the script's own channels replace the detector's
            template.set_params(position=0.0)
        calib = dict(s.params).get("score.calib")
        scale = dict(s.params).get("feat.scale")
        assert scale in (None, *SCALINGS), f"feat.scale is one of {list(SCALINGS)}"
        assert calib in (None, *CALIBRATIONS), f"score.calib is one of {list(CALIBRATIONS)}"
        train, test, labels = train_all, test_all, labels_all
        limit = dict(args.limit_for).get(name)
        if limit is not None:  # this setting only: the first ``limit`` of each class
            ds = limit_dataset(dataset, limit=limit)
            train, test, labels = (
                list(ds.train_normal),
                ds.test_items(),
                np.asarray(ds.test_labels()),
            )
        timings = {"embed rate img/s": embed_rate(embedder, train, args.rate_images)}
        t = time.perf_counter()
        opts = {"cache_dir": args.cache_dir, "progress": False}
        tr = embed(embedder, train_all, what="train", **opts)
        val = {
            s: np.concatenate([tr[val_idx], embed(embedder, list(v.anomalies), **opts)])
            for s, v in vsets.items()
        }
        n_large = len(first.anomalies) if args.large else 0
        for seed, images in large.items():  # after the rule's anomalies: its families skip them
            val[seed] = np.concatenate([val[seed], embed(embedder, list(images), **opts)])
        te = embed(embedder, test, **opts)
        tr_test = tr if limit is None else embed(embedder, train, what="train", **opts)
        tr_m = tr_test_m = None
        if mirror:  # the mirrors of the training normals: the bank's augmentation only
            tr_m = embed(embedder.flipped(), train_all, what="train mirror", **opts)
            tr_test_m = tr_m if limit is None else embed(embedder.flipped(), train, **opts)
        # the layers' channel counts, in order (:cosine_layers, feat.scale=2)
        widths = [backbone_spec(args.backbone).layers[layer][1] for layer in embedder.layers]
        assert sum(widths) == tr.shape[-1], (widths, tr.shape)
        if s.cosine:  # a transform of the cached features: the cache stays the plain one's
            per_layer = widths if s.cosine == "cosine_layers" else None
            tr, te, tr_test = (unit_patches(a, per_layer) for a in (tr, te, tr_test))
            val = {k: unit_patches(a, per_layer) for k, a in val.items()}
            tr_m, tr_test_m = (
                None if a is None else unit_patches(a, per_layer) for a in (tr_m, tr_test_m)
            )
        timings["embed (cache) s"] = time.perf_counter() - t
        print(f"{dataset_name} {name}: features {tr.shape[1:]}, embedded", flush=True)

        # (a) synthetic validation: fit on the fitting part, score held-out normals + anomalies.
        t = time.perf_counter()
        x, groups = with_mirrors(tr[fit_idx], None if tr_m is None else tr_m[fit_idx])
        if scale is not None:  # learned on the bank's training patches, applied to all
            f = scaler(x, scale, widths)
            x, val = f(x), {k: f(a) for k, a in val.items()}
        if position is not None:  # the weight in units of the fitting patches' spread
            w = position_weight(x, position)
            x, val = with_position(x, w), {k: with_position(a, w) for k, a in val.items()}
        det = type(template)(**template.get_params()).fit(x, groups=groups)
        score = det.score_samples
        if calib is not None:
            score = calibration(template, x, groups, det, calib)[0]
        val_scores = {s: np.asarray(score(x)) for s, x in val.items()}
        timings["validation fit+score s"] = time.perf_counter() - t
        del det
        print(
            f"{dataset_name} {name}: validation {timings['validation fit+score s']:.0f} s",
            flush=True,
        )

        # (c) real test, reported only: fit on all training normals, score the test set.
        x, groups = with_mirrors(tr_test, tr_test_m)
        te_x = te
        if scale is not None:
            f = scaler(x, scale, widths)
            x, te_x = f(x), f(te)
        if position is not None:
            w = position_weight(x, position)
            x, te_x = with_position(x, w), with_position(te_x, w)
        full, fit_times = timed_fit(template, x, args.fit_repeats, groups)
        timings.update(fit_times)
        score, threshold = full.score_samples, full.threshold_
        if calib is not None:  # the folds' fits, and the threshold from their calibrated scores
            t = time.perf_counter()
            score, out_of_fold = calibration(template, x, groups, full, calib)
            threshold = float(np.quantile(out_of_fold, 1 - full.contamination))
            timings["calibration folds s"] = time.perf_counter() - t
        t = time.perf_counter()
        scores = np.asarray(score(te_x), np.float64)
        timings["score test s"] = time.perf_counter() - t
        normal = labels == 0
        timings["total s"] = time.perf_counter() - start
        result = {
            "synthetic_auroc_by_family": family_aurocs(val_scores, vsets, n_val),
            "large_opacity_auroc": None
            if not n_large
            else float(
                np.mean(
                    [
                        auroc(
                            np.r_[np.zeros(n_val), np.ones(n_large)],
                            np.r_[v[:n_val], v[-n_large:]],
                        )
                        for v in val_scores.values()
                    ]
                )
            ),
            "auroc": auroc(labels, scores),
            "ap": float(average_precision_score(labels, scores)),
            "fpr_test_normals": float(np.mean(scores[normal] > threshold)),
            "threshold": float(threshold),
        }
        out.append(
            {
                "dataset": dataset_name,
                "setting": name,
                "image_size": size,
                "grid": grid,
                "mirror": mirror,
                # what the bank sees: two channels more with feat.position
                "feature_shape": [*tr.shape[1:-1], tr.shape[-1] + 2 * (position is not None)],
                "limit": limit,
                "sizes": {
                    "fit": len(fit_idx),
                    "val_normal": n_val,
                    "synthetic_per_seed": len(first.anomalies),
                    "train": len(train),
                    "test_normal": int(normal.sum()),
                    "test_abnormal": int((~normal).sum()),
                },
                "result": result,
                "timings": timings,
            }
        )
        fam = " / ".join(
            "—" if v is None else f"{v:.3f}" for v in result["synthetic_auroc_by_family"].values()
        )
        print(
            f"{dataset_name} {name}: synthetic {fam}"
            + (f" (large {result['large_opacity_auroc']:.3f})" if n_large else "")
            + f"; test AUROC {result['auroc']:.3f} "
            f"AP {result['ap']:.3f} FPR {result['fpr_test_normals']:.3f}; "
            + ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if v is not None),
            flush=True,
        )
    return out


def rule(results: list[dict], datasets: list[str]) -> dict[str, float]:
    """:func:`bench_ensemble.label_free_rule` with the settings as candidates: one ranking per
    family × dataset."""
    runs = [
        {"results": {r["setting"]: r["result"] for r in results if r["dataset"] == d}}
        for d in datasets
    ]
    return label_free_rule(runs)


def markdown(results: list[dict], mean_rank: dict[str, float], chosen: str) -> str:
    lines = [
        "| dataset | setting | features | synthetic AUROC local / diffuse / global (mean) "
        "| mean rank | **real AUROC** / AP | FPR test normals | embed img/s "
        "| fit s (first / warm) | score test s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        x, t = r["result"], r["timings"]
        by = [v for v in x["synthetic_auroc_by_family"].values() if v is not None]
        fam = " / ".join(
            "—" if v is None else f"{v:.3f}" for v in x["synthetic_auroc_by_family"].values()
        )
        warm = "—" if t["fit warm s"] is None else f"{t['fit warm s']:.1f}"
        mark = " (chosen)" if r["setting"] == chosen else ""
        limit = "" if r["limit"] is None else f", first {r['limit']} per class"
        shape = "×".join(map(str, r["feature_shape"]))
        lines.append(
            f"| {r['dataset']} | {r['setting']}{mark}{limit} | {shape} | {fam} "
            f"({np.mean(by):.3f}) | {mean_rank[r['setting']]:.2f} | **{x['auroc']:.3f}** / "
            f"{x['ap']:.3f} | {x['fpr_test_normals']:.3f} | {t['embed rate img/s']:.0f} | "
            f"{t['fit first s']:.1f} / {warm} | {t['score test s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", nargs="+", default=["brain_tumor_mri", "pneumoniamnist"])
    p.add_argument(
        "--settings",
        nargs="+",
        type=setting,
        default=[setting(s) for s in DEFAULT_SETTINGS],
        help="image_size:grid pairs, :mirror for a mirror-augmented bank, :two_stage for "
        "coreset='two_stage', :cosine / :cosine_layers for unit-length patch vectors, "
        ":name=value for a PatchBankDetector parameter, e.g. 224:14:size=5000, "
        ":embed.name=value for an Embedder option, e.g. 224:14:embed.aggregate=5, "
        ":feat.position=w for the patches' grid positions appended with weight w, "
        ":feat.scale=1|2 for channels standardised | layers' variances equalised, "
        ":score.calib=1|2 for patch scores calibrated per grid position (ratio | z) (default: "
        + " ".join(DEFAULT_SETTINGS)
        + ")",
    )
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="synthesis seeds")
    p.add_argument("--limit", type=int, default=None, help="at most this many images per class")
    p.add_argument(
        "--limit-for",
        nargs=2,
        action="append",
        default=[],
        metavar=("SETTING", "N"),
        type=str,
        help="the real-test fit of SETTING on the first N images per class only",
    )
    p.add_argument(
        "--large",
        action="store_true",
        help="also score lesion-sized opacities (large_opacities), reported beside the rule's "
        "families, not ranked by it",
    )
    p.add_argument("--rate-images", type=int, default=128, help="images timed for the rate")
    p.add_argument("--fit-repeats", type=int, default=2, help="timed fits on all normals")
    p.add_argument("--cache-dir", default=".bench_cache_res")
    p.add_argument("--out", default="resolution.json")
    p.add_argument("--markdown", default="resolution.md")
    args = p.parse_args(argv)
    args.limit_for = [(s, int(n)) for s, n in args.limit_for]
    names = [s.name for s in args.settings]
    if len(set(names)) != len(names):
        p.error(f"settings repeat: {names}")
    results = []
    for d in args.datasets:
        results += run(d, args.settings, args)
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    mean_rank = rule(results, args.datasets)
    write_choice(
        args,
        mean_rank,
        "lowest mean rank of synthetic AUROC over families x datasets",
        lambda chosen: markdown(results, mean_rank, chosen),
        contamination=CONTAMINATION,
        results=results,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
