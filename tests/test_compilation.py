"""No needless recompilation: same-shaped data reuses compiled code; ragged batches are padded."""

import logging

import jax
import numpy as np
import pytest

from msde_jax import MSDEDetector
from msde_jax.core.blocks import bucket_rows


class _Compiles(logging.Handler):
    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record):
        self.count += record.getMessage().startswith("Compiling")


@pytest.fixture
def compiles():
    handler = _Compiles()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            yield handler
    finally:
        logger.removeHandler(handler)


def _normals(seed, n=120, d=6):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_bucket_rows():
    assert [bucket_rows(m) for m in (1, 8, 9, 1000, 4096, 4097)] == [8, 8, 16, 1024, 4096, 8192]


def test_refitting_and_rescoring_same_shapes_compile_nothing(compiles):
    det = MSDEDetector(k=10)
    det.fit(_normals(0))
    det.score_samples(_normals(1, 30))
    before = compiles.count
    assert before > 0  # the first fit and score compiled
    det.fit(_normals(2))  # new data, same shape
    det.score_samples(_normals(3, 30))
    assert compiles.count == before


def test_ragged_batches_share_a_padded_program(compiles):
    det = MSDEDetector(k=10, threshold="chi2").fit(_normals(4))
    queries = _normals(5, 40)
    full = det.score_samples(queries[:32])
    before = compiles.count
    for m in (17, 20, 25, 31):  # all padded to 32 rows
        np.testing.assert_array_equal(det.score_samples(queries[:m]), full[:m])
    assert compiles.count == before
