"""Safetensors files, format sniffing in load_state_dict, and the Flax variables file format."""

import os

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from msde_jax.backbones.weight_files import (
    VARIABLES_FORMAT,
    flatten_variables,
    load_safetensors,
    load_state_dict,
    load_variables,
    read_safetensors_metadata,
    save_variables,
)

# ------------------------------------------------------------------------------ safetensors


def test_safetensors_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f16": rng.standard_normal(5).astype(np.float16),
        "i64": np.arange(-2, 3, dtype=np.int64),
        "flag": np.array([True, False]),
        "bf16": rng.standard_normal((2, 2)).astype(ml_dtypes.bfloat16),
    }
    path = tmp_path / "model.safetensors"
    save_file(arrays, str(path))
    for loaded in (load_safetensors(path), load_state_dict(path)):
        assert set(loaded) == set(arrays)
        for key, value in arrays.items():
            expected = value.astype(np.float32) if key == "bf16" else value
            assert loaded[key].dtype == expected.dtype, key
            np.testing.assert_array_equal(loaded[key], expected)
    # Recognised by content too, whatever the suffix.
    os.replace(path, tmp_path / "model.bin")
    assert set(load_state_dict(tmp_path / "model.bin")) == set(arrays)


# ------------------------------------------------------------------------------ bad files


def test_garbage_safetensors_raises_value_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match="broken.safetensors"):
        load_state_dict(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_state_dict(tmp_path / "nope.pth")


# ------------------------------------------------------------------------------ variables files


def test_variables_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    variables = {
        "params": {"conv": {"kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32)}},
        "batch_stats": {"bn": {"mean": np.zeros(4, np.float32), "var": np.ones(4, np.float32)}},
    }
    path = save_variables(tmp_path / "sub" / "v.safetensors", variables, {"backbone": "x", "n": 3})
    assert path == tmp_path / "sub" / "v.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == ["v.safetensors"]  # no temp file
    header = read_safetensors_metadata(path)
    assert len(header.pop("sha256")) == 64  # of the tensors, verified on load
    assert header == {"backbone": "x", "n": "3", "format": VARIABLES_FORMAT}
    tree, meta = load_variables(path)
    assert meta["backbone"] == "x"
    flat, expected = flatten_variables(tree), flatten_variables(variables)
    assert (
        sorted(flat)
        == sorted(expected)
        == ["batch_stats/bn/mean", "batch_stats/bn/var"] + ["params/conv/kernel"]
    )
    for name, value in expected.items():
        np.testing.assert_array_equal(flat[name], value, err_msg=name)
    # Half-precision variables load again: bfloat16 widened to float32 after the checksum.
    half = {"params": {"a": variables["params"]["conv"]["kernel"].astype(ml_dtypes.bfloat16)}}
    half["params"]["b"] = np.ones(3, np.float16)
    tree, _ = load_variables(save_variables(tmp_path / "half.safetensors", half, {}))
    assert tree["params"]["a"].dtype == np.float32
    np.testing.assert_array_equal(tree["params"]["a"], half["params"]["a"].astype(np.float32))
    assert tree["params"]["b"].dtype == np.float16


def test_float8_safetensors_say_what_to_do(tmp_path):
    import json
    import struct

    data = np.arange(4, dtype=np.float32).astype(ml_dtypes.float8_e4m3fn).tobytes()
    header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}})
    header = header.encode() + b" " * (-len(header) % 8)
    path = tmp_path / "f8.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    with pytest.raises(ValueError, match=r"f8.safetensors.*float8 tensors cannot be read: save"):
        load_safetensors(path)


def test_variables_file_errors(tmp_path):
    with pytest.raises(ValueError, match="contains '/'"):
        flatten_variables({"params": {"a/b": np.zeros(1)}})
    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(plain))
    with pytest.raises(ValueError, match="not a msde_jax variables file"):
        load_variables(plain)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_variables(tmp_path / "nope.safetensors")
    assert read_safetensors_metadata(tmp_path / "nope.safetensors") == {}


@pytest.mark.parametrize("damage", ["flipped-byte", "truncated"])
def test_damaged_variables_file_is_refused_with_its_name(tmp_path, damage):
    kernel = np.random.default_rng(0).standard_normal((3, 3, 2, 4)).astype(np.float32)
    path = save_variables(tmp_path / "v.safetensors", {"params": {"k": kernel}}, {"b": "x"})
    data = bytearray(path.read_bytes())
    if damage == "flipped-byte":
        data[-5] ^= 0xFF  # inside the tensor data: safetensors itself would not notice
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"v\.safetensors"):
        load_variables(path)
