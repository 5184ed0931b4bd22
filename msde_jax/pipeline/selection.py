"""Configurations chosen without abnormal labels: synthetic anomalies made from held-out normals.

A *candidate* is an embedder and an unfitted detector
(:class:`~msde_jax.pipeline.presets.Candidate`). To compare
candidates on a new dataset without abnormal images, :func:`synthetic_validation` splits the
training normals by content into a fitting part (80 %) and two held-out tenths, fits each
candidate on the fitting part, and scores the first held-out tenth (clean normals) against
anomalies synthesised from the second at the images' own resolution
(:func:`msde_jax.ssl.synthetic.synthesize`: the kinds in turn, local and global, half
with ``anatomy="bright"`` and half ``"dark"``, so the set does not depend on the modality).
Its AUROC is the *synthetic-validation AUROC*; :func:`select` picks the candidate with the
highest one.

Measured on four dataset × backbone runs (``benchmarks/bench_inductive.py``, README "Which
mode"), per-dataset selection by synthetic AUROC did **not** beat the best fixed rule, so the
default is the fixed rule, :func:`~msde_jax.pipeline.presets.recommended`: PatchCore's patch memory
bank on the backbone's
patch layers, scoring an image by the mean of its top 10 % patch distances. ``msde-jax
evaluate`` reports the synthetic-validation AUROC of the configuration it runs, and
``--select`` runs :func:`select` over :func:`~msde_jax.pipeline.presets.candidates`
instead::

    from msde_jax.pipeline.presets import candidates, recommended
    from msde_jax.pipeline.selection import select, synthetic_validation

    rule = recommended()                       # Candidate(embedder, detector)
    check = synthetic_validation(normals, {"bank:top": rule})
    check.scores["bank:top"].auroc             # its synthetic-validation AUROC

    chosen = select(normals, candidates())     # label-free choice among the fixed list
    chosen.name, chosen.auroc

The held-out normals must not be among the images the compared detectors are fitted on; they
are not (the fitting part is disjoint from both tenths). The detector a caller finally deploys
is fitted on *all* normals, so the synthetic AUROC is measured on a detector fitted on 80 % of
them.
"""

import copy
import dataclasses
import itertools
import json
import math
import numbers
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from msde_jax.core.blocks import row_keys
from msde_jax.core.metrics import roc_auc
from msde_jax.detectors.fitting import check_groups, merged_groups
from msde_jax.detectors.fused import SupportsDetect
from msde_jax.io.cache import SupportsEmbed
from msde_jax.io.images import prepare, resize, to_float
from msde_jax.pipeline.evaluation import embed
from msde_jax.pipeline.presets import Candidate
from msde_jax.ssl.synthetic import GLOBAL_KINDS, KINDS, LOCAL_KINDS, synthesize

__all__ = [
    "CandidateScore",
    "Selection",
    "ValidationResult",
    "ValidationSet",
    "select",
    "synthetic_validation",
    "validation_set",
]


# ------------------------------------------------------------------------ the validation set
class ValidationSet(NamedTuple):
    """Training normals split for validation, and the synthetic anomalies.

    Attributes:
        fit: sorted indices (into the normals) of the fitting part.
        normals: sorted indices of the clean held-out normals.
        sources: indices of the normals the anomalies were made from, in content order (so the
            anomalies do not depend on the order of the normals).
        anomalies: (n_anomalies, H, W, C) uint8 synthetic anomalies (see
            :func:`validation_set` for their size).
        kinds: (n_anomalies,) the :data:`~msde_jax.ssl.synthetic.KINDS` name of each.
    """

    fit: np.ndarray
    normals: np.ndarray
    sources: np.ndarray
    anomalies: np.ndarray
    kinds: np.ndarray


def validation_set(
    normals: Sequence[Any],
    *,
    image_size: int | None = None,
    fallback_size: int = 224,
    held_out: float = 0.2,
    anomalies_per_normal: int = 2,
    seed: int = 0,
    groups: Any = None,
) -> ValidationSet:
    """Split normals by content and make synthetic anomalies from one held-out half.

    The images are ordered by a hash of their content (not their position, so the split does
    not depend on how a folder is listed); all but the last ``max(4, round(held_out · n))``
    are the fitting part, those are halved into clean held-out normals and anomaly sources.
    From the sources, ``anomalies_per_normal × (number of held-out normals)`` anomalies are
    made, each half cycling through the kinds (a half shorter than the cycle takes local and
    global kinds in turn: anatpaste, gamma, cutpaste, blur, …), the first half with
    ``anatomy="bright"``, the second ``"dark"``.

    They are made at the images' own resolution when all normals share one size (a defect
    then has the resolution a finding in such an image has: a 28-pixel chest X-ray gets
    28-pixel defects, not sharp ones drawn after upsampling), else after resizing to
    ``fallback_size`` (the embedders' input side); ``image_size`` forces a side.

    Args:
        normals: the training normals (paths, PIL images or arrays), at least 10.
        image_size: side to resize the sources to before synthesis; ``None``: see above.
        fallback_size: the side for normals of different sizes when ``image_size`` is None.
        held_out: the share of normals held out, in (0, 0.5].
        anomalies_per_normal: synthetic anomalies per clean held-out normal.
        seed: seed of the synthesis (the split depends on content only).
        groups: one group id per normal (the volume each slice comes from,
            :meth:`~msde_jax.io.inputs.SliceGroups.fold_groups`): a group's normals stay in
            one part, so no held-out slice has a neighbour slice in the fitting part. Groups
            holding a copy of one image are merged (as are copies without groups), so no
            held-out normal has its copy in the fitting part; groups are ordered by their least
            content key. With fewer than 3 groups, or groups too large to hold out two halves
            of at least 2, the normals are split one by one.

    With fewer than 3 groups (or distinct images), held-out normals share theirs with the
    fitting part; a ``note:`` on stderr says so (the AUROC is then optimistic).

    Raises:
        ValueError: fewer than 10 normals, ``held_out`` outside (0, 0.5],
            ``anomalies_per_normal`` below 1, or ``groups`` not one id per normal.
    """
    n = len(normals)
    if not 0 < held_out <= 0.5:
        raise ValueError(f"held_out must be in (0, 0.5], got {held_out!r}.")
    if not isinstance(anomalies_per_normal, numbers.Integral) or anomalies_per_normal < 1:
        raise ValueError(
            f"anomalies_per_normal must be an integer of at least 1, got {anomalies_per_normal!r}."
        )
    if groups is not None:
        groups = check_groups(groups, n)
    if n < 10:
        raise ValueError(
            f"synthetic validation needs at least 10 training normals (a fitting part and two "
            f"held-out halves of at least 2 each), got {n}."
        )

    def read(i: int) -> np.ndarray:
        image = to_float(normals[i], name=f"normal {i}")
        return image if image_size is None else resize(image, image_size)

    # One image in memory at a time for the content keys (8 bits per value, as stored) and
    # the shapes; only the sources are kept for the synthesis.
    keys, shapes = [], set()
    for i in range(n):
        image = read(i)
        keys.append(_content_key(image))
        shapes.add(image.shape)
    n_out = max(4, round(held_out * n))
    keys = np.concatenate(keys)
    fit, val, sources = _split(keys, n_out, groups)
    _note_shared(keys, groups, fit, np.concatenate([val, sources]))
    # The sources in content order: the anomalies do not depend on the order of the normals.
    sources = sources[np.argsort(keys[sources], kind="stable")]
    if len(shapes) == 1:
        images = np.stack([read(i) for i in sources])
    else:  # different sizes or channel counts: one RGB side for all
        images = np.stack([prepare(normals[i], image_size or fallback_size) for i in sources])
    count = anomalies_per_normal * len(val)
    half = count // 2
    # Each half cycles through the kinds from the first: a half shorter than the cycle takes
    # local and global kinds in turn, so a small set holds both.
    order = KINDS if half >= len(KINDS) else _LOCAL_AND_GLOBAL
    parts, kinds = [], []
    for i, (anatomy, m) in enumerate((("bright", half), ("dark", count - half))):
        if m == 0:
            continue
        key = jax.random.fold_in(jax.random.key(seed), i)  # distinct streams for every seed
        made = synthesize(key, images, m, anatomy=anatomy, kinds=order)
        parts.append(np.asarray(made.images))
        kinds.append(np.asarray(KINDS)[np.asarray(made.kinds)])
    anomalies = np.round(np.clip(np.concatenate(parts), 0, 1) * 255).astype(np.uint8)
    return ValidationSet(fit, val, sources, anomalies, np.concatenate(kinds))


# anatpaste, gamma, cutpaste, blur, scar, texture, opacity, elastic, mixture
_LOCAL_AND_GLOBAL = tuple(
    kind for pair in itertools.zip_longest(LOCAL_KINDS, GLOBAL_KINDS) for kind in pair if kind
)
assert sorted(_LOCAL_AND_GLOBAL) == sorted(KINDS)


def _split(keys: np.ndarray, n_out: int, groups: Any) -> tuple[np.ndarray, ...]:
    """(fitting, held-out normal, source) indices: the last ``n_out`` in content order, halved;
    with ``groups`` or copies of an image, whole groups (groups that share an image's content
    merged, copies without groups grouped, so copies stay in one part), from the end of the
    content order (their least key) until ``n_out`` normals are held out and both held-out
    halves hold at least 2. With fewer than 3 such groups, or groups too large for that, the
    normals are split one by one in content order."""
    n = len(keys)
    ids = _group_ids(keys, groups)
    grouped = ids.max() >= 2 and ids.max() + 1 < n  # 3 groups or more, not one per normal
    for more in range(n - n_out + 1 if grouped else 0):
        parts = _split_groups(keys, n_out + more, ids)
        if min(map(len, parts)) >= 2:
            return parts
        if len(parts[1]) + len(parts[2]) < n_out + more:  # every group but one held out
            break
    order = np.argsort(keys, kind="stable")
    n_val = n_out // 2
    parts = (order[: n - n_out], order[n - n_out : n - n_out + n_val], order[n - n_out + n_val :])
    return tuple(np.sort(part) for part in parts)


def _group_ids(keys: np.ndarray, groups: Any) -> np.ndarray:
    """0 … g − 1 per normal: its group (``groups`` merged where they share an image's
    content), or without ``groups`` its content (copies of an image share one id)."""
    ids = np.unique(keys, return_inverse=True)[1].ravel()
    if groups is not None:
        ids = merged_groups(np.unique(np.asarray(groups), return_inverse=True)[1].ravel(), ids)
    return np.unique(ids, return_inverse=True)[1].ravel()


def _note_shared(keys: np.ndarray, groups: Any, fit: np.ndarray, held: np.ndarray) -> None:
    """A ``note:`` on stderr when held-out normals share a group or an image's content with
    the fitting part (:func:`_split` splits one by one when there are too few groups): their
    synthetic-validation scores are then optimistic."""
    ids = _group_ids(keys, groups)
    shared = np.isin(ids[held], ids[fit]).sum()
    if shared:
        what = "groups (volumes)" if groups is not None else "distinct images"
        print(
            f"note: synthetic validation: the {len(keys)} training normals hold "
            f"{ids.max() + 1} {what}, too few to hold out whole ones: {shared} of the "
            f"{held.size} held-out normals share theirs with the fitting part, so the "
            "synthetic-validation AUROC is optimistic.",
            file=sys.stderr,
        )


def _split_groups(keys: np.ndarray, n_out: int, ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """:func:`_split` of whole groups (``ids``: 0 … g − 1, g ≥ 3)."""
    least = np.full(ids.max() + 1, np.iinfo(keys.dtype).max, keys.dtype)
    np.minimum.at(least, ids, keys)
    sizes = np.bincount(ids)
    out: list[int] = []  # held-out groups, from the end of the content order
    for g in np.argsort(least, kind="stable")[::-1]:
        if len(out) >= 2 and sizes[out].sum() >= n_out:
            break
        out.append(int(g))
    out = out[: len(sizes) - 1]  # a group at least is fitted on
    val_groups: list[int] = []  # the first groups to half the held-out normals, at least one
    for g in out[:-1]:
        val_groups.append(g)
        if sizes[val_groups].sum() >= sizes[out].sum() / 2:
            break
    source_groups = [g for g in out if g not in val_groups]
    member = lambda chosen: np.flatnonzero(np.isin(ids, chosen))  # noqa: E731
    return (
        member([g for g in range(len(sizes)) if g not in out]),
        member(val_groups),
        member(source_groups),
    )


def _content_key(image: np.ndarray) -> np.ndarray:
    """(1,) 64-bit hash of an image's values rounded to 8 bits (:func:`row_keys`)."""
    return row_keys(np.round(image * 255).astype(np.uint8).reshape(1, -1))


# ------------------------------------------------------------------------ scoring candidates
class CandidateScore(NamedTuple):
    """One candidate's synthetic validation.

    Attributes:
        auroc: AUROC of the clean held-out normals against every synthetic anomaly.
        auroc_by_kind: the same against each kind's anomalies only.
        fit_s: wall time of fitting it (0.0 when it shared the fit of an earlier candidate
            that differs only in score-time parameters, such as ``reduce``).
        score_s: wall time of scoring the validation images.
        error: why the candidate could not be fitted on these normals (e.g. fewer normals
            than its ``k``) or measured (non-finite scores), with ``auroc`` NaN; ``None`` when
            it was measured.
    """

    auroc: float
    auroc_by_kind: dict[str, float]
    fit_s: float
    score_s: float
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class ValidationResult:
    """What :func:`synthetic_validation` measured.

    Attributes:
        scores: ``{candidate name: CandidateScore}`` in the order given.
        validation: the :class:`ValidationSet` used.
        seconds: wall time of the whole validation, embedding included.
    """

    scores: dict[str, CandidateScore]
    validation: ValidationSet
    seconds: float

    def summary(self) -> str:
        """Its sizes in words: ``"47 held-out normals vs 94 synthetic anomalies"``, and
        ``", few: a rough AUROC"`` beside fewer than 20 normals."""
        v = self.validation
        rough = ", few: a rough AUROC" if len(v.normals) < 20 else ""
        return f"{len(v.normals)} held-out normals vs {len(v.anomalies)} synthetic anomalies{rough}"


def _key(embedder: SupportsEmbed | Mapping[str, SupportsEmbed]) -> str:
    if isinstance(embedder, Mapping):
        return json.dumps({name: _key(e) for name, e in embedder.items()}, sort_keys=True)
    return json.dumps(embedder.config(), sort_keys=True, default=str)


def _take(features: Any, rows: np.ndarray) -> Any:
    """Rows of features, or of each entry of a mapping of features (a fused detector's)."""
    if isinstance(features, Mapping):
        return {name: f[rows] for name, f in features.items()}
    return features[rows]


def _stack(a: Any, b: Any) -> Any:
    if isinstance(a, Mapping):
        return {name: np.concatenate([a[name], b[name]]) for name in a}
    return np.concatenate([a, b])


def _fit_key(embedder: SupportsEmbed, detector: SupportsDetect) -> str:
    """Candidates with equal keys share one fit: same features, same class, same parameters
    but for those read at scoring time."""
    score_params = getattr(detector, "score_params", ())
    params = {k: v for k, v in detector.get_params().items() if k not in score_params}
    return f"{_key(embedder)}|{type(detector).__name__}|{params!r}"


def _quick_copy(template: SupportsDetect) -> SupportsDetect:
    """An unfitted copy that fits its model and no threshold (``threshold="none"``): the
    validation reads scores, which come from the model fitted on all the given normals,
    never the folds' out-of-fold scores. Its folds stay as they are (they may shape the
    model: the two-stage coreset's chunks), and a fused detector stays whole: its scores
    are calibrated on its components' out-of-fold scores."""
    detector = copy.deepcopy(template)
    if "threshold" in detector.get_params():
        detector.set_params(threshold="none")
    return detector


def _image_size(candidates: Mapping[str, Candidate]) -> int:
    embedders = [
        e
        for c in candidates.values()
        for e in (c.embedder.values() if isinstance(c.embedder, Mapping) else [c.embedder])
    ]
    return max(int(getattr(e, "image_size", 224)) for e in embedders)


def synthetic_validation(
    normals: Sequence[Any],
    candidates: Mapping[str, Candidate],
    *,
    held_out: float = 0.2,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    groups: Any = None,
) -> ValidationResult:
    """The synthetic-validation AUROC of each candidate on these normals (no abnormal images).

    See the module docstring for the protocol. Candidates with the same embedder config share
    its embeddings (a fused candidate's mapping of embedders shares each entry's with the
    others); candidates that differ only in score-time parameters (the bank's ``reduce``)
    share one fit. The copies fitted here have ``threshold="none"`` (only scores are read,
    so no fold is scored; a fused detector is fitted whole). The templates are not modified.

    Args:
        normals: the training normals (paths, PIL images or arrays), at least 10.
        candidates: ``{name: Candidate}``, at least one.
        held_out: share of the normals held out (:func:`validation_set`).
        seed: seed of the synthetic anomalies.
        cache_dir: embedding cache folder (:func:`~msde_jax.pipeline.evaluation.embed`).
        progress: print each candidate's AUROC on stderr as it is measured.
        groups: one group id per normal (volumes): kept whole (:func:`validation_set`).

    Raises:
        ValueError: no candidates, or too few normals. A candidate that refuses to fit (its
            ``ValueError``) is recorded in its :class:`CandidateScore` instead.
    """
    if not candidates:
        raise ValueError("no candidates to validate: pass {name: Candidate(embedder, detector)}.")
    start = time.perf_counter()
    vset = validation_set(
        normals,
        fallback_size=_image_size(candidates),
        held_out=held_out,
        seed=seed,
        groups=groups,
    )
    labels = np.r_[np.zeros(len(vset.normals)), np.ones(len(vset.anomalies))].astype(np.int32)
    kw = {"cache_dir": cache_dir, "progress": progress}
    features: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fits: dict[str, SupportsDetect] = {}
    scores: dict[str, CandidateScore] = {}

    def embedded(embedder: SupportsEmbed) -> tuple[np.ndarray, np.ndarray]:
        key = _key(embedder)
        if key not in features:
            train = embed(embedder, normals, what="train normal (validation)", **kw)
            synthetic = embed(embedder, list(vset.anomalies), what="synthetic anomaly", **kw)
            features[key] = (train, synthetic)
        return features[key]

    def embedded_parts(embedders: Mapping[str, SupportsEmbed]) -> dict[str, Any]:
        # The parts not embedded yet, in one call: those of one network share its forward pass.
        missing = {part: e for part, e in embedders.items() if _key(e) not in features}
        if missing:
            train = embed(missing, normals, what="train normal (validation)", **kw)
            synthetic = embed(missing, list(vset.anomalies), what="synthetic anomaly", **kw)
            for part, e in missing.items():
                features[_key(e)] = (train[part], synthetic[part])
        return {part: features[_key(e)] for part, e in embedders.items()}

    for name, (embedder, template) in candidates.items():
        if isinstance(embedder, Mapping):  # a fused detector: features per component
            pairs = embedded_parts(embedder)
            train = {part: pair[0] for part, pair in pairs.items()}
            synthetic = {part: pair[1] for part, pair in pairs.items()}
        else:
            train, synthetic = embedded(embedder)
        fit_key = _fit_key(embedder, template)
        fit_s = 0.0
        if fit_key not in fits:
            if progress:  # a fit can take a minute
                print(f"synthetic validation: fitting {name}", file=sys.stderr)
            t = time.perf_counter()
            try:
                fits[fit_key] = _quick_copy(template).fit(_take(train, vset.fit))
            except ValueError as err:  # a configuration these normals cannot fit
                fits[fit_key] = err
            fit_s = time.perf_counter() - t
        detector = fits[fit_key]
        if isinstance(detector, ValueError):
            scores[name] = CandidateScore(math.nan, {}, fit_s, 0.0, str(detector))
            if progress:
                print(f"synthetic validation: {name}: not fitted: {detector}", file=sys.stderr)
            continue
        score_params = getattr(template, "score_params", ())
        detector.set_params(**{p: v for p, v in template.get_params().items() if p in score_params})
        t = time.perf_counter()
        s = np.asarray(detector.score_samples(_stack(_take(train, vset.normals), synthetic)))
        score_s = time.perf_counter() - t
        if not np.isfinite(s).all():  # ranked, NaN would pass for the best candidate
            why = f"{s.size - int(np.isfinite(s).sum())} of its {s.size} scores are not finite"
            scores[name] = CandidateScore(math.nan, {}, fit_s, score_s, why)
            if progress:
                print(f"synthetic validation: {name}: not measured: {why}", file=sys.stderr)
            continue
        scores[name] = _score(labels, s, vset, fit_s, score_s)
        if progress:
            print(
                f"synthetic validation: {name}: AUROC {scores[name].auroc:.3f} (fit {fit_s:.1f} s)",
                file=sys.stderr,
            )
    return ValidationResult(scores, vset, time.perf_counter() - start)


def _score(labels, s, vset: ValidationSet, fit_s: float, score_s: float) -> CandidateScore:
    n_val = len(vset.normals)
    auc: Callable[[np.ndarray], float] = lambda idx: float(roc_auc(labels[idx], s[idx]))  # noqa: E731
    by_kind = {
        kind: auc(np.r_[np.arange(n_val), n_val + np.flatnonzero(vset.kinds == kind)])
        for kind in dict.fromkeys(vset.kinds.tolist())
    }
    return CandidateScore(auc(np.arange(len(labels))), by_kind, fit_s, score_s)


# ------------------------------------------------------------------------ selection
@dataclasses.dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select`.

    Attributes:
        name: the chosen candidate's name.
        candidate: the chosen :class:`Candidate` (its detector still an unfitted template).
        auroc: its synthetic-validation AUROC.
        validation: the :class:`ValidationResult` that holds every candidate's score.
    """

    name: str
    candidate: Candidate
    auroc: float
    validation: ValidationResult


def select(
    normals: Sequence[Any],
    candidates: Mapping[str, Candidate],
    **options: Any,
) -> Selection:
    """The candidate with the highest synthetic-validation AUROC (the first of equals).

    Candidates that cannot be fitted on these normals (:attr:`CandidateScore.error`) are not
    chosen.

    Args:
        normals: the training normals.
        candidates: ``{name: Candidate}``, e.g. :func:`~msde_jax.pipeline.presets.candidates`.
        options: passed to :func:`synthetic_validation` (``seed``, ``cache_dir``, …).

    Raises:
        ValueError: no candidate could be fitted (each one's reason in the message).
    """
    result = synthetic_validation(normals, candidates, **options)
    measured = [n for n, score in result.scores.items() if score.error is None]
    if not measured:
        reasons = "; ".join(f"{n}: {s.error}" for n, s in result.scores.items())
        raise ValueError(f"no candidate could be fitted on these normals ({reasons}).")
    name = max(measured, key=lambda n: result.scores[n].auroc)
    return Selection(name, candidates[name], result.scores[name].auroc, result)
