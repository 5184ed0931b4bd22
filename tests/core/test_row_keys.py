"""The content hash of rows and samples (msde_jax.core.blocks.row_keys / sample_keys): the
published formula, whatever the block size, the layout or the dtype."""

import ml_dtypes
import numpy as np
import pytest

from msde_jax.core import blocks
from msde_jax.core.blocks import row_keys, sample_keys

MASK = (1 << 64) - 1


def reference_key(row: np.ndarray) -> int:
    """Σⱼ bⱼ pʲ⁺¹ mod 2⁶⁴ over the row's bytes (p the 64-bit FNV prime), then the avalanche
    mix, in Python integers."""
    key, power = 0, 1
    for b in np.ascontiguousarray(row).view(np.uint8).reshape(-1).tolist():
        power = power * 0x100000001B3 & MASK
        key = key + b * power & MASK
    key ^= key >> 33
    key = key * 0xFF51AFD7ED558CCD & MASK
    return key ^ key >> 33


@pytest.mark.parametrize(
    "x",
    [
        np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32),
        np.random.default_rng(1).normal(size=(3, 2, 2, 3)),  # float64, a sample per image
        np.random.default_rng(2).integers(0, 256, (4, 9), dtype=np.uint8),
        np.zeros((3, 0), np.float32),  # no bytes: every key the hash of nothing
    ],
    ids=["float32", "float64-grid", "uint8", "empty-rows"],
)
def test_keys_follow_the_formula(x):
    want = [reference_key(sample) for sample in x]
    assert sample_keys(x).tolist() == want
    assert row_keys(x).tolist() == want
    assert sample_keys(x).dtype == np.uint64


@pytest.mark.parametrize("block_bytes", [1, 40, 1 << 20])
def test_keys_do_not_depend_on_the_block_or_the_layout(monkeypatch, block_bytes):
    x = np.random.default_rng(3).normal(size=(37, 6, 5)).astype(np.float32)
    want = sample_keys(x)
    monkeypatch.setattr(blocks, "_HASH_BLOCK_BYTES", block_bytes)
    np.testing.assert_array_equal(sample_keys(x), want)
    strided = np.asfortranarray(x)  # the same values in another memory layout
    np.testing.assert_array_equal(sample_keys(strided), want)
    np.testing.assert_array_equal(row_keys(x.reshape(37, -1)), want)
    assert len(set(want.tolist())) == 37  # distinct rows, distinct keys


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, ml_dtypes.bfloat16])
def test_negative_zero_is_zero(dtype):
    """−0.0 equals 0.0, so a sample whose zeros carry a sign is a copy (one cross-fit fold, one
    training copy) of the sample without; no other value is changed."""
    x = np.array([[0.0, 1.5, 0.0], [-0.0, 1.5, -0.0], [0.0, -1.5, 0.0]], dtype)
    keys = row_keys(x)
    assert keys[0] == keys[1] != keys[2]
    assert keys.tolist() == [reference_key(np.abs(x[0]))] * 2 + [reference_key(x[2])]
