"""Torch-free reading of torch checkpoints: both layouts, every dtype, refusal of unsafe pickles.

torch is a test-only reference here: it writes the checkpoints the reader must understand.
"""

import builtins
import collections
import os
import pickle
import subprocess
import zipfile

import numpy as np
import pytest
import torch

from msde_jax.backbones.torch_pickle import (
    SeveralStateDictsWarning,
    UnsafeCheckpointError,
    load_torch_state_dict,
)
from msde_jax.backbones.weight_files import load_state_dict

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _reference_state_dict():
    """Tensors of every dtype a backbone uses, laid out in all the ways torch stores them."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen)
    shared = torch.arange(12, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    sd = collections.OrderedDict(
        f32=torch.randn(2, 3, generator=gen),
        f64=torch.randn(3, generator=gen, dtype=torch.float64),
        f16=torch.randn(4, 2, generator=gen).half(),
        bf16=torch.randn(3, 2, generator=gen).to(torch.bfloat16),
        f8_e5m2=torch.randn(3, 2, generator=gen).to(torch.float8_e5m2).t(),  # strided too
        f8_e4m3=torch.randn(4, generator=gen).to(torch.float8_e4m3fn),
        i64=torch.arange(-3, 4),
        i32=torch.arange(5, dtype=torch.int32),
        i8=torch.arange(-4, 4, dtype=torch.int8),
        u8=torch.arange(250, 256, dtype=torch.uint8),
        u16=torch.arange(60000, 60004).to(torch.uint16),  # untyped storage, _rebuild_v3
        boolean=torch.tensor([True, False, True]),
        scalar=torch.tensor(7),
        empty=torch.zeros(0, 3),
        transposed=base.t(),  # non-contiguous
        view_with_offset=base[2:, 1:4],  # storage offset 11, row stride 5
        shared_a=shared[:6],
        shared_b=shared.view(3, 4)[1:],  # same storage as shared_a
        param=torch.nn.Parameter(torch.randn(2, 2, generator=gen)),
    )
    sd.update({f"net.{k}": v for k, v in net.state_dict().items()})  # incl. _metadata users
    return sd


def _expected(tensor):
    tensor = tensor.detach()
    if tensor.dtype in (torch.bfloat16, torch.float8_e5m2, torch.float8_e4m3fn):
        return tensor.float().numpy()
    if tensor.dtype == torch.uint16:
        return tensor.to(torch.int32).numpy().astype(np.uint16)
    return tensor.numpy()


def _assert_same(loaded, reference):
    assert list(loaded) == list(reference)
    for key, tensor in reference.items():
        expected = _expected(tensor)
        assert loaded[key].dtype == expected.dtype, key
        assert loaded[key].shape == expected.shape, key
        np.testing.assert_array_equal(loaded[key], expected, err_msg=key)


@pytest.fixture(params=["zip", "legacy"])
def save(request):
    """``save(obj, path)`` in the zip format or the legacy (torch < 1.6) format."""

    def _save(obj, path):
        torch.save(obj, path, _use_new_zipfile_serialization=request.param == "zip")
        assert zipfile.is_zipfile(path) == (request.param == "zip")
        return path

    return _save


# ------------------------------------------------------------------------------ torch files


def test_round_trip(save, tmp_path):
    sd = _reference_state_dict()
    path = save(sd, tmp_path / "weights.pth")
    loaded = load_torch_state_dict(path)
    _assert_same(loaded, sd)
    assert type(loaded) is dict
    assert loaded["scalar"].shape == ()
    assert loaded["bf16"].dtype == np.float32
    assert all(v.flags.writeable and v.flags.c_contiguous for v in loaded.values())
    _assert_same(load_state_dict(path), sd)


def test_shared_storage_arrays_are_independent(save, tmp_path):
    shared = torch.arange(6, dtype=torch.float32)
    path = save({"a": shared[:4], "b": shared[2:]}, tmp_path / "w.pth")
    loaded = load_torch_state_dict(path)
    loaded["a"][2] = -1.0
    np.testing.assert_array_equal(loaded["b"], [2.0, 3.0, 4.0, 5.0])


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"lr": 0.1, "state": {}}},
        lambda sd: {"meta": {"epoch": 1}, "checkpoint": {"ema": sd}},
    ],
    ids=["state_dict", "model", "nested"],
)
def test_wrapped_state_dict(save, tmp_path, wrap):
    sd = collections.OrderedDict(w=torch.ones(2, 2), b=torch.zeros(2))
    loaded = load_torch_state_dict(save(wrap(sd), tmp_path / "ckpt.pth"))
    _assert_same(loaded, sd)


@pytest.mark.parametrize(
    ("wrap", "others"),
    [
        (lambda a, b: {"student": a, "teacher": b, "epoch": 9}, r"\['teacher'\]"),
        (lambda a, b: {"meta": {"step": 2}, "nets": [a, b]}, r"\['nets'\]\[1\]"),
    ],
    ids=["student-teacher", "list"],
)
def test_several_state_dicts_as_near_the_top_are_named(save, tmp_path, wrap, others):
    """The first is read, and the warning says which and names the others (a teacher's
    weights read as the student's without a word would be silently other features); a state
    dict nested deeper than the first is not one of them."""
    first = collections.OrderedDict(w=torch.ones(2))
    second = collections.OrderedDict(w=torch.zeros(2))
    path = save(wrap(first, second), tmp_path / "ckpt.pth")
    with pytest.warns(SeveralStateDictsWarning, match=f"holds 2 state dicts.* not from {others}"):
        loaded = load_torch_state_dict(path)
    _assert_same(loaded, first)
    deeper = save({"model": first, "extra": {"ema": second}}, tmp_path / "deeper.pth")
    _assert_same(load_torch_state_dict(deeper), first)  # no warning: the suite's are errors


def test_no_state_dict(save, tmp_path):
    path = save({"epoch": 3, "names": ["a", "b"]}, tmp_path / "ckpt.pth")
    with pytest.raises(ValueError, match="no state dict"):
        load_torch_state_dict(path)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool]
)
def test_big_endian_zip(tmp_path, dtype):
    # Not uint16 & co.: torch stores those as untyped byte storages and does not swap them.
    tensor = (torch.arange(6) * 37 - 50).to(dtype).reshape(2, 3)
    path = tmp_path / "big.pth"
    torch.save({"w": tensor.t()}, path)  # transposed: strides must survive the byte swap
    with zipfile.ZipFile(path) as archive:
        records = {n: archive.read(n) for n in archive.namelist()}
    (storage,) = [n for n in records if n.endswith("/data/0")]
    (byteorder,) = [n for n in records if n.endswith("/byteorder")]
    item = tensor.element_size()
    raw = np.frombuffer(records[storage], np.uint8)
    records[storage] = raw.reshape(-1, item)[:, ::-1].tobytes()
    records[byteorder] = b"big"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in records.items():
            archive.writestr(name, data)
    reference = torch.load(path, weights_only=True)  # torch reads it back: the file is valid
    assert torch.equal(reference["w"], tensor.t())
    _assert_same(load_torch_state_dict(path), reference)


def test_module_state_dict_matches_torch_load(save, tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    path = save(net.state_dict(), tmp_path / "net.pth")
    reference = torch.load(path, weights_only=True)
    _assert_same(load_state_dict(path), reference)


# ------------------------------------------------------------------------------ unsafe pickles


class _Payload:
    """Pickles as a call of ``fn(*args)``: what a malicious checkpoint does on load."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker):
    return {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "builtins.exec": _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": _Payload(subprocess.Popen, ["touch", str(marker)]),
    }


def _write_zip_checkpoint(path, payload):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")


def _write_legacy_checkpoint(path, payload, *, in_header=False):
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}
    parts = [_LEGACY_MAGIC, 1001, sys_info, payload, []]
    if in_header:
        parts = [payload]
    path.write_bytes(b"".join(pickle.dumps(p, protocol=2) for p in parts))


@pytest.mark.parametrize("name", ["os.system", "builtins.exec", "subprocess.Popen"])
@pytest.mark.parametrize("layout", ["zip", "legacy", "legacy-header", "inside-state-dict"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, name, layout):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[name]
    path = tmp_path / "evil.pth"
    if layout == "zip":
        _write_zip_checkpoint(path, payload)
    elif layout == "inside-state-dict":
        _write_zip_checkpoint(path, collections.OrderedDict(w=[1.0], evil=payload))
    else:
        _write_legacy_checkpoint(path, payload, in_header=layout == "legacy-header")
    # Protocol 2 (torch's) spells builtins as __builtin__ and subprocess as commands.
    refused = rf"refusing to load global '\w+\.{name.split('.')[1]}'"
    with pytest.raises(pickle.UnpicklingError, match=refused):
        load_state_dict(path)
    assert not marker.exists()


def test_restricted_unpickler_sanity_plain_pickle_would_run(tmp_path):
    """The payloads above are live: an unrestricted unpickler executes them."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_payloads(marker)["builtins.exec"], protocol=2))
    assert marker.exists()


@pytest.mark.parametrize(
    "data",
    [
        # BUILD on an allowed stand-in would let a file patch the loader's own functions.
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x04\x00\x00\x00evilK\x01sb.",
        # An allowlisted module with a name outside the allowlist.
        b"\x80\x02ctorch\nload\nX\x01\x00\x00\x00x\x85R.",
        # INST/OBJ opcodes go through the same allowlist.
        b"(X\x04\x00\x00\x00trueios\nsystem\n.",
    ],
    ids=["build", "torch.load", "inst"],
)
def test_raw_unsafe_opcodes_are_refused(tmp_path, data):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data)
    with pytest.raises(UnsafeCheckpointError, match="refusing"):
        load_torch_state_dict(path)


def test_out_of_bounds_strides_are_rejected(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(4)}, path)
    with zipfile.ZipFile(path) as archive:
        records = {n: archive.read(n) for n in archive.namelist()}
    pkl = next(n for n in records if n.endswith("data.pkl"))
    records[pkl] = records[pkl].replace(b"K\x04\x85", b"K\x09\x85")  # size (4,) -> (9,)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in records.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match="reads past its storage"):
        load_torch_state_dict(path)


# ------------------------------------------------------------------------------ bad files


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"this is not a checkpoint\n",
        bytes(range(256)) * 4,
        # after a legacy file's magic number: a flipped protocol byte (pickle's "unsupported
        # pickle protocol: 253"), a string that is not UTF-8 (UnicodeDecodeError)
        pickle.dumps(_LEGACY_MAGIC, protocol=2) + b"\x80\xfd",
        pickle.dumps(_LEGACY_MAGIC, protocol=2) + b"\x80\x02X\x02\x00\x00\x00\xe9\xe9.",
    ],
    ids=str,
)
def test_garbage_file_raises_value_error(tmp_path, content):
    """Every unreadable file is a ValueError naming it (pickle's own ValueErrors, and
    UnicodeDecodeError, escaped without the path)."""
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="garbage.pth"):
        load_state_dict(path)


def test_zip_without_pickle(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        load_state_dict(path)


def test_legacy_storage_claiming_more_than_the_file_holds(tmp_path):
    # Issue 24: the legacy format gives each storage's size in 8 bytes before its data, and
    # reading that many bytes allocates them first; a crafted size is refused before.
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.arange(4.0)}, path, _use_new_zipfile_serialization=False)
    raw = bytearray(path.read_bytes())
    assert int.from_bytes(raw[-24:-16], "little") == 4  # the numel before 16 bytes of data
    raw[-24:-16] = (10**12).to_bytes(8, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"legacy.pth: storage .* claims 1000000000000 elements"):
        load_torch_state_dict(path)


def test_a_training_checkpoint_with_other_objects_says_how_to_save_the_weights(tmp_path):
    import argparse

    path = tmp_path / "checkpoint.pth"
    torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(pickle.UnpicklingError, match="'argparse.Namespace'") as info:
        load_state_dict(path)
    assert "torch.save(checkpoint['state_dict'], 'weights.pth')" in str(info.value)
