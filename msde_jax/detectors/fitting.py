"""The fit every detector shares: the fitted state, out-of-fold scores and the threshold.

A detector's pure fit is ``fit_state(x, keys, config) -> (state, n_iter)`` (or one call for
several subsets of the samples, ``joint=True``) on checked features ``x`` with their content
keys (:func:`~msde_jax.core.blocks.sample_keys`, computed once per fit) and its pure score
``score(state, x)``; :func:`cross_fit` turns the two into a :class:`DetectorFit` whose
threshold needs no abnormal sample: each training sample is scored by a model fitted on the
other folds, and the threshold is the ``1 − contamination`` quantile of those out-of-fold
scores (:func:`quantile_threshold`; with ``threshold="none"``, the fitted state alone)."""

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.typing import ArrayLike

from msde_jax.core.blocks import chunked_rows
from msde_jax.detectors.config import score_chunk

__all__ = [
    "DetectorFit",
    "check_groups",
    "chunked_scores",
    "cross_fit",
    "folds",
    "largest_fold",
    "merged_groups",
    "one_class_splits",
    "out_of_fold_scores",
    "quantile_threshold",
    "threshold_rank",
]


class DetectorFit(NamedTuple):
    """Outcome of a detector's pure fit (``fit_detector``, ``fit_bank_detector``).

    Attributes:
        state: the fitted state (a pytree that holds its config).
        decision_scores: (n,) scores of the training samples: out-of-fold with
            ``threshold="cross_fit"``, in-sample with MSDE's ``"chi2"``; empty (0,) with
            ``"none"``.
        threshold: the anomaly threshold on the score (a Python float; NaN with
            ``threshold="none"``).
        n_iter: MSDE iterations run on the training samples (0 without a shift).
    """

    state: Any
    decision_scores: np.ndarray
    threshold: float
    n_iter: int


@functools.cache
def _jitted(score: Callable[..., Any]) -> Callable[..., Any]:
    return jax.jit(score)


# A small call is padded to at least this many items (images or pooled vectors), but a single
# image of at least as many patches runs a program of its own: a scan scored on its own (the
# default detector, one brain MRI image on 2 CPU cores: 7.4 ms, against 31.8 ms padded to 8
# images). Calls of 2 to 7 images share the 8-image program, as the cross-fit's small folds do.
_LEAST_ITEMS = 8


def chunked_scores(score: Callable[[Any, Any], ArrayLike], state: Any, x: Any) -> np.ndarray:
    """``score(state, x)`` for a batch-independent ``score``, as one jitted program per chunk.

    The rows of ``x`` (images, or pooled vectors) go through ``jax.jit(score)`` in chunks of
    :func:`~msde_jax.detectors.config.score_chunk` rows (the last padded,
    :func:`~msde_jax.core.blocks.chunked_rows`; a smaller call padded to a power of two of
    at least 8 items, except one image of 8 or more patches, which runs alone): held-out
    folds, validation sets and test batches of any size share one compiled program per
    fitted state's shapes.

    The program is keyed by ``state.for_scoring()`` where the state has it (the detectors'
    states: their config's unread parameters at their defaults, ``BaseConfig.scoring``, and
    arrays no score reads dropped), so detectors that differ only in those share it.

    Returns:
        (m,) NumPy scores.
    """
    if hasattr(state, "for_scoring"):
        state = state.for_scoring()
    rows_per_item = math.prod(x.shape[1:-1]) if x.ndim > 2 else 1
    chunk = score_chunk(rows_per_item)
    alone = x.shape[0] == 1 and rows_per_item >= _LEAST_ITEMS
    least = 1 if alone else _LEAST_ITEMS
    return chunked_rows(functools.partial(_jitted(score), state), x, chunk, least=least)


def folds(keys: np.ndarray, n_folds: int, groups: ArrayLike | None = None) -> list[np.ndarray]:
    """The cross-fit folds of n samples, as sorted index arrays.

    Without ``groups``, the samples sorted by their content ``keys`` are dealt out in turn,
    fold f the f-th, (f + n_folds)-th, …, so the folds do not depend on the row order; the
    same content (a scan stored twice) counts as one sample, so its copies share a fold (a
    copy in the fitting part would score its twin about 0 and pull the threshold down), unless
    fewer distinct samples than folds leave no other way. With ``groups`` (one id per sample,
    e.g. the volume each slice comes from), whole groups are dealt out the same way, ordered
    by their smallest key, groups holding the same content merged: no sample shares a fold's
    model with its group or its copies.

    Raises:
        ValueError: ``groups`` is not one id per sample, or there are fewer groups than folds.
    """
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    distinct = np.cumsum(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) - 1
    if groups is None:
        if distinct[-1] + 1 < n_folds:  # fewer distinct samples than folds: one by one
            return [np.sort(order[f::n_folds]) for f in range(n_folds)]
        return [np.sort(order[distinct % n_folds == f]) for f in range(n_folds)]
    ids = check_groups(groups, keys.size)
    names, index = np.unique(ids, return_inverse=True)
    if distinct[-1] + 1 < keys.size:  # copies of one content: their groups merged
        content = np.empty_like(distinct)
        content[order] = distinct
        names, index = np.unique(merged_groups(index, content), return_inverse=True)
    if names.size < n_folds:
        raise ValueError(
            f"the cross-fit threshold deals whole groups into n_folds={n_folds} folds, but "
            f"there are {names.size} groups (those holding the same content counted as one); "
            "pass more groups or lower n_folds."
        )
    first = np.full(names.size, order.size)
    np.minimum.at(first, index[order], np.arange(order.size))  # each group's first in order
    group_order = np.argsort(first, kind="stable")
    return [np.flatnonzero(np.isin(index, group_order[f::n_folds])) for f in range(n_folds)]


def merged_groups(group: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Group ids (0..g-1, one per sample) with the groups that share a content id merged
    (connected components of groups linked by identical samples), as the smallest id of
    each merged group."""
    parent = np.arange(group.max() + 1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = {}
    for g, c in zip(group.tolist(), content.tolist(), strict=True):
        other = first.setdefault(c, g)
        if other != g:
            a, b = root(other), root(g)
            parent[max(a, b)] = min(a, b)
    return np.array([root(g) for g in range(parent.size)])[group]


def check_groups(groups: ArrayLike, n: int) -> np.ndarray:
    """``groups`` as an array, refused unless it holds one id per sample of the ``n``."""
    ids = np.asarray(groups)
    if ids.shape != (n,):
        raise ValueError(f"groups must hold one id per sample ({n}), got {ids.shape}.")
    return ids


def largest_fold(keys: np.ndarray, n_folds: int, groups: ArrayLike | None) -> int:
    """The most samples one of the cross-fit :func:`folds` holds out."""
    return max(held.size for held in folds(keys, n_folds, groups))


def out_of_fold_scores(
    held_out: list[np.ndarray], fit_score: Callable[[np.ndarray, np.ndarray], ArrayLike]
) -> np.ndarray:
    """Out-of-fold scores: each fold (:func:`folds`) scored by a model fitted on the others.

    Args:
        held_out: the folds, sorted index arrays that partition ``range(n)``.
        fit_score: ``fit_score(train_indices, held_indices)`` fits on the first and returns the
            scores of the second (the training indices keep the given row order).

    Returns:
        (n,) float64 scores.
    """
    n = sum(held.size for held in held_out)
    scores = np.empty(n, np.float64)
    for held in held_out:
        rest = np.setdiff1d(np.arange(n), held)
        scores[held] = np.asarray(fit_score(rest, held))
    return scores


def threshold_rank(n: int, contamination: float) -> int:
    """The rank (1-based, ascending) of :func:`quantile_threshold` among ``n`` scores:
    ⌈(n + 1)(1 − contamination)⌉, at most ``n``."""
    # The tolerance: an integer (n + 1)(1 − c) may come out above it in floats (100 · (1 −
    # 0.45) is 55.00000000000001, whose ceiling would be 56, not 55).
    return max(1, min(n, math.ceil((n + 1) * (1.0 - contamination) - 1e-9)))


def quantile_threshold(scores: np.ndarray, contamination: float) -> float:
    """The ``1 − contamination`` quantile of n (out-of-fold) scores of normals, taken as their
    ⌈(n + 1)(1 − contamination)⌉-th smallest (:func:`threshold_rank`): the conformal quantile,
    which a new normal exchangeable with them exceeds with probability at most
    ``contamination`` (NumPy's default, linear one is exceeded with probability about
    (1 + (n − 1) · contamination) / (n + 1): 0.091 for 20 normals at 0.05). With fewer than
    1 / contamination − 1 normals (19 at 0.05) no rank keeps that promise: the threshold is the
    largest score, which a new normal exceeds with probability 1 / (n + 1).

    Raises:
        ValueError: no scores, or non-finite ones (a NaN threshold would flag nothing, an
            infinite one nothing or everything).
    """
    scores = np.asarray(scores)
    if scores.size == 0:
        raise ValueError("no scores of normals to take the threshold from.")
    bad = ~np.isfinite(scores)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of the {scores.size} out-of-fold scores of the training normals "
            "are NaN or infinite, so no threshold can be set; look for training samples the "
            "detector cannot score (constant or extreme features)."
        )
    k = threshold_rank(scores.size, contamination)
    return float(np.partition(scores.ravel(), k - 1)[k - 1])


def cross_fit(
    x: np.ndarray,
    keys: np.ndarray,
    config: Any,
    fit: Callable[..., Any],
    score: Callable[[Any, np.ndarray], ArrayLike],
    *,
    batch_independent: bool = True,
    groups: ArrayLike | None = None,
    joint: bool = False,
) -> DetectorFit:
    """Fit on all of ``x`` and threshold on out-of-fold scores (folds by content order).

    With ``config.threshold == "none"`` only the model on all of ``x`` is fitted: no fold
    is scored, ``decision_scores`` is empty and the threshold NaN (what ranking needs, e.g.
    synthetic validation). A ``joint`` fit still gets every subset, since the folds may shape
    the model (the two-stage coreset's chunks), and is asked for the first state only.

    Args:
        x: (n, ...) checked features of normal samples.
        keys: (n,) their content keys; the folds follow their order, so they do not depend
            on the order of the samples.
        config: the detector's config (``n_folds``, ``contamination``).
        fit: ``fit(x, keys, config) -> (state, n_iter)``, called for all of ``x`` and then
            for each fold's training part in turn; with ``joint=True``, ``fit(x, keys, config,
            subsets, n_states) -> [(state, n_iter), …]`` fits on each of the first
            ``n_states`` subsets (sorted indices: all of ``x``, then each fold's training
            part) in one call, so a detector can share work between them (the memory bank's
            coreset searches); every subset may shape those states.
        score: ``score(state, x) -> (m,) scores``.
        batch_independent: each row's score depends on that row only. Then the held-out
            folds are scored by :func:`chunked_scores` (one compiled program for all folds,
            shared with later scoring); otherwise each fold is scored as one batch.
        groups: one group id per sample (:func:`folds`): a group's samples share a fold.
        joint: ``fit`` takes the subsets (see ``fit``).

    Returns:
        :class:`DetectorFit` with the out-of-fold scores as ``decision_scores``.
    """
    bare = config.threshold == "none"  # the model only
    held_out = folds(keys, config.n_folds, groups) if joint or not bare else []
    if joint:
        everything = np.arange(x.shape[0])
        subsets = [everything] + [np.setdiff1d(everything, h) for h in held_out]
        fitted = fit(x, keys, config, subsets, 1 if bare else len(subsets))
    else:
        fitted = [fit(x, keys, config)]
    state, n_iter = fitted[0]
    if bare:
        return DetectorFit(state, np.empty(0), math.nan, n_iter)
    # the folds partition the samples, so a fold's first index names it (joint: fitted already)
    by_fold = {int(h[0]): f[0] for h, f in zip(held_out, fitted[1:], strict=True)} if joint else {}

    def fit_score(rest: np.ndarray, held: np.ndarray) -> ArrayLike:
        fold_state = by_fold[int(held[0])] if joint else fit(x[rest], keys[rest], config)[0]
        if batch_independent:
            return chunked_scores(score, fold_state, x[held])
        return np.asarray(score(fold_state, x[held]))

    scores = out_of_fold_scores(held_out, fit_score)
    return DetectorFit(state, scores, quantile_threshold(scores, config.contamination), n_iter)


def one_class_splits(
    y: ArrayLike, n_splits: int = 5, *, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds for a one-class detector on labelled data, as scikit-learn's
    ``cv=`` takes them: ``GridSearchCV(detector, grid, scoring=..., cv=one_class_splits(y))``.

    The normals (label 0) and the anomalies (any other label) are each shuffled (``seed``) and
    dealt into ``n_splits`` folds; split f trains on the normals outside fold f only and tests
    on all of fold f, normals and anomalies, so every test fold has both classes (when there
    are at least ``n_splits`` of each) and no anomaly is ever fitted.

    Args:
        y: (n,) labels, 0 for normal.
        n_splits: folds, at least 2.
        seed: shuffling seed.

    Returns:
        ``[(train_indices, test_indices), …]``, ``n_splits`` pairs of sorted index arrays.

    Raises:
        ValueError: ``y`` is not 1-D, ``n_splits`` < 2, or there are fewer normals than folds.
    """
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise ValueError(f"y must be 1-D labels, got shape {labels.shape}.")
    if isinstance(n_splits, bool) or not isinstance(n_splits, numbers.Integral) or n_splits < 2:
        raise ValueError(f"n_splits must be an int >= 2, got {n_splits!r}.")
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(labels == 0))
    abnormal = rng.permutation(np.flatnonzero(labels != 0))
    if normal.size < n_splits:
        raise ValueError(
            f"one_class_splits needs at least n_splits={n_splits} normals (label 0), got "
            f"{normal.size}."
        )
    splits = []
    for fold in range(n_splits):
        held = np.sort(np.concatenate([normal[fold::n_splits], abnormal[fold::n_splits]]))
        train = np.sort(np.setdiff1d(normal, held))
        splits.append((train, held))
    return splits
