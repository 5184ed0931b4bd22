"""The code written for accelerators runs, and gives the CPU code's numbers, on any machine.

Where msde_jax has a CPU form and an accelerator form of one computation (convolutions, block
and chunk sizes, padded folds, coreset searches in step: :mod:`msde_jax._platform`), only one of
them runs on the machine at hand, and the machines these tests usually run on have no GPU. So a
subprocess started with ``MSDE_JAX_PATHS`` set to the other platform's forms runs the default
pipeline's pieces (``tests/platform_paths.py``) and this process compares them with its own.
"""

import os
from pathlib import Path

import jax
import numpy as np
import pytest
from platform_paths import run
from testing import run_python

from msde_jax._platform import PATHS_ENV, cpu_paths, environment
from msde_jax.embedder import cpu_batch

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """(this process's results, the other forms' results from a subprocess)."""
    out = tmp_path_factory.mktemp("paths") / "other.npz"
    other = "accelerator" if cpu_paths() else "cpu"
    env = {
        **os.environ,
        PATHS_ENV: other,
        "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]),
    }
    run_python(TESTS / "platform_paths.py", out, env=env)
    with np.load(out) as theirs:
        return run(), dict(theirs)


def _by_paths(both):
    here, there = both
    return (here, there) if here["cpu_paths"] else (there, here)


def test_each_process_took_its_forms(both):
    """The documented choices of each: images per embedding batch (per device), images of 196
    patches per scoring chunk, a 1,500-row fit's cross-fit folds padded to its 1,536 rows or
    not (0), and rows per kNN block against 50,000 rows (0: all in one block)."""
    cpu, accelerator = _by_paths(both)
    assert cpu["cpu_paths"]
    assert not accelerator["cpu_paths"]
    choices = ("embed_batch", "score_chunk", "fold_rows", "auto_batch")
    assert {c: int(cpu[c]) for c in choices} == dict(
        embed_batch=cpu_batch(64), score_chunk=32, fold_rows=0, auto_batch=256
    )
    assert {c: int(accelerator[c]) for c in choices[:3]} == dict(
        embed_batch=256 * jax.local_device_count(), score_chunk=512, fold_rows=1536
    )
    blocks = int(accelerator["auto_batch"])  # from a quarter of the free device memory:
    if str(accelerator["platform"]) == "cpu":  # none reported on a CPU, so 4 GiB assumed
        assert blocks == 1280
    else:  # what a real accelerator reports: all rows (0) or a multiple of 256
        assert blocks % 256 == 0


def test_embeddings_agree_to_float32_rounding(both):
    """Depthwise and 1×1 convolutions as XLA's convolutions or as products: the same sums
    in another order (largest difference seen 1.6e-5 on features up to 17)."""
    cpu, accelerator = _by_paths(both)
    for name in ("patches", "pooled"):
        np.testing.assert_allclose(accelerator[name], cpu[name], rtol=1e-4, atol=1e-4)


def test_detectors_agree(both):
    """The patch bank (coreset searches in step, large blocks and chunks) on the same features,
    and MSDE (one block, folds padded to the whole fit's rows): the same scores and threshold."""
    cpu, accelerator = _by_paths(both)
    for name in ("bank_scores", "bank_train", "bank_threshold"):
        np.testing.assert_allclose(accelerator[name], cpu[name], rtol=1e-5)
    for name in ("msde_scores", "msde_train", "msde_threshold"):
        np.testing.assert_allclose(accelerator[name], cpu[name], rtol=1e-5, atol=1e-6)


def test_a_bad_paths_value_says_what_to_do(monkeypatch):
    monkeypatch.setenv(PATHS_ENV, "gpu")
    with pytest.raises(ValueError, match=r"MSDE_JAX_PATHS must be one of .*'accelerator'.*unset"):
        cpu_paths()
    monkeypatch.setenv(PATHS_ENV, "accelerator")
    assert not cpu_paths()
    assert environment()["code_paths"] == "accelerator"  # what a report records
    monkeypatch.delenv(PATHS_ENV)
    assert cpu_paths() == (jax.devices()[0].platform == "cpu")
