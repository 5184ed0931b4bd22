"""The density weights and the mean shift stay finite on everything in their domain.

Hypothesis draws data of one fixed shape (so nothing recompiles) from well-spread, duplicated,
constant, clustered and collinear generators at scales from 1e-6 to 1e6, the range the
detector's standardised features and raw embeddings live in.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from msde_jax.core import density_weights, mean_shift

N, D = 40, 3


def _data(kind: str, seed: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = {
        "gaussian": lambda: rng.normal(size=(N, D)),
        "duplicates": lambda: np.repeat(rng.normal(size=(4, D)), N // 4, axis=0),
        "constant": lambda: np.full((N, D), rng.normal()),
        "clusters": lambda: (
            rng.normal(size=(2, D))[rng.integers(0, 2, N)] * 10
            + rng.normal(scale=1e-3, size=(N, D))
        ),
        "collinear": lambda: np.outer(rng.normal(size=N), rng.normal(size=D)),
    }[kind]()
    return (x * scale).astype(np.float32)


@settings(max_examples=30)
@given(
    kind=st.sampled_from(["gaussian", "duplicates", "constant", "clusters", "collinear"]),
    seed=st.integers(0, 2**16),
    exponent=st.integers(-6, 6),
    method=st.sampled_from(["msde", "fuzzy_degree", "uniform"]),
)
def test_weights_and_shift_stay_finite(kind, seed, exponent, method):
    x = _data(kind, seed, 10.0**exponent)
    w = np.asarray(density_weights(x, method=method, n_neighbors=5))
    assert w.shape == (N,)
    assert np.isfinite(w).all()
    assert (w >= 0).all()
    result = mean_shift(x, w, k=5, max_iter=3)
    assert np.isfinite(np.asarray(result.points)).all()
    assert np.isfinite(np.asarray(result.displacement)).all()
