"""Small helpers shared by several test files (importable through pytest's ``pythonpath``)."""

import builtins

import numpy as np


def labelled_scores(rng, n=120, rate=0.4, ties=False):
    """Random 0/1 labels and scores where abnormal rows score higher on average."""
    labels = rng.random(n) < rate
    labels[:2] = [True, False]
    scores = rng.gamma(2.0, 1.0, n) + 1.5 * labels
    if ties:
        scores = np.round(scores * 2) / 2  # many tied scores, across both classes
    return labels, scores


def hide_matplotlib(monkeypatch):
    """Make every ``import matplotlib...`` fail, as on an install without it."""
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
