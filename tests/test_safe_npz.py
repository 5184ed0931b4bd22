"""The safe .npz / .npy reader: every claim a file makes is checked before memory is taken.

Crafted files are written by hand (zipfile, NumPy's header writer) and patched byte by byte
where the zip directory has to lie. Allocation is measured with tracemalloc (NumPy reports its
buffers to it) and, in one test, bounded by RLIMIT_AS in a subprocess without JAX.
"""

import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from msde_jax import _arrays_file as af
from msde_jax import _host_memory as hm

MODULE = Path(af.__file__)
MiB = 1 << 20
GiB = 1 << 30
NOT_ZIP = r"is not a readable .npz file \(a zip archive: File is not a zip file\)"


def arrays():
    """Arrays of every kind np.savez writes, C and Fortran order, 0-d and empty included."""
    return {
        "float": np.arange(12.0).reshape(3, 4),
        "fortran": np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3)),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 3), np.uint8),
        "text": np.array(["héllo", "x"]),
        "bytes": np.array([b"ab", b"c"]),
        "bool": np.array([True, False]),
        "complex": np.array([1 + 2j]),
        "date": np.array(["2020-01-01"], "datetime64[D]"),
        "record": np.zeros(3, [("x", "<f4"), ("y", "U2")]),
        "meta": np.array(json.dumps({"a": 1})),
    }


def npy_bytes(header: dict, data: bytes = b"", version=(2, 0)) -> bytes:
    """A .npy file: NumPy's header writer with any claims, then ``data``."""
    buf = io.BytesIO()
    writer = {(1, 0): np.lib.format.write_array_header_1_0}.get(
        version, np.lib.format.write_array_header_2_0
    )
    writer(buf, header)
    return buf.getvalue() + data


def claim(shape, descr="<f8"):
    return {"descr": descr, "fortran_order": False, "shape": shape}


def write_zip(path, members, *, compressed=False):
    """A zip of ``{name: bytes}`` written by zipfile."""
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def patch_sizes(path, *, file_size=None, compress_size=None, crc=None):
    """Rewrite the (single) member's sizes and CRC in its local header and the directory."""
    raw = bytearray(Path(path).read_bytes())
    for signature, at_crc in ((b"PK\x03\x04", 14), (b"PK\x01\x02", 16)):
        i = raw.index(signature)
        for offset, value in ((0, crc), (4, compress_size), (8, file_size)):
            if value is not None:
                raw[i + at_crc + offset : i + at_crc + offset + 4] = struct.pack("<I", value)
    Path(path).write_bytes(bytes(raw))


def peak_allocation(fn, *args, **kwargs):
    """(fn's exception or result, the peak bytes Python and NumPy allocated meanwhile)."""
    tracemalloc.start()
    try:
        outcome = fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - returned to the test to check
        outcome = err
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return outcome, peak


def assert_same(got, want):
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert got.tobytes("A") == want.tobytes("A")
    assert got.flags.f_contiguous == want.flags.f_contiguous
    assert got.flags.c_contiguous == want.flags.c_contiguous


# --------------------------------------------------------------------------- valid files


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_round_trips_exactly_as_np_load(tmp_path, save):
    path = tmp_path / "a.npz"
    save(path, **arrays())
    got = af.load_npz(path)
    with np.load(path) as want:
        assert list(got) == list(want.files)
        for name in want.files:
            assert_same(got[name], want[name])
            assert got[name].flags.writeable


def test_npz_allow_reads_only_those_and_skips_absent_names(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, a=np.ones(3), b=np.zeros(2))
    got = af.load_npz(path, allow=["b", "absent"])
    assert list(got) == ["b"]
    assert_same(got["b"], np.zeros(2))


def test_member_headers_without_reading_data(tmp_path):
    path = tmp_path / "a.npz"
    np.savez_compressed(path, big=np.zeros((2000, 1000)), f=np.asfortranarray(np.ones((2, 3))))
    headers = af.member_headers(path)
    assert list(headers) == ["big", "f"]
    big = headers["big"]
    assert (big.shape, big.dtype, big.fortran_order) == ((2000, 1000), np.float64, False)
    assert big.nbytes == 16_000_000 == big.file_size - big.offset
    assert big.compress_size < big.file_size
    assert headers["f"].fortran_order
    _, peak = peak_allocation(af.member_headers, path)
    assert peak < MiB


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_round_trips_every_header_version(tmp_path, version):
    array = np.arange(6, dtype="<u2").reshape(2, 3)
    path = tmp_path / "a.npy"
    header = np.lib.format.header_data_from_array_1_0(array)
    if version == (3, 0):  # NumPy writes 3.0 (UTF-8) only for such field names
        array = np.zeros(2, [("λ", "<i2")])
        with pytest.warns(UserWarning, match="format 3.0"):
            np.save(path, array)
        assert path.read_bytes()[6:8] == b"\x03\x00"
    else:
        path.write_bytes(npy_bytes(header, array.tobytes(), version))
    assert_same(af.load_npy(path), np.load(path))


# --------------------------------------------------------------------------- lying claims


@pytest.mark.parametrize("compressed", [False, True])
def test_lying_header_refused_before_any_large_allocation(tmp_path, compressed):
    # The 381 GiB / 15.3 TiB tracebacks of issue 24: a header claiming far more than is stored.
    data = npy_bytes(claim((10**6, 10**6)), b"\0" * 8)
    path = write_zip(tmp_path / "model.npz", {"meta.npy": data}, compressed=compressed)
    err, peak = peak_allocation(af.load_npz, path)
    assert isinstance(err, af.ArrayFileError), err
    assert (err.member, err.claimed_bytes) == ("meta", 8 * 10**12)
    assert str(err).startswith(f"{path}: member 'meta' claims shape (1000000, 1000000)")
    assert "(7.28 TiB), but the member holds 8 bytes of data" in str(err)
    assert "restore it from a copy" in str(err)
    assert peak < MiB
    with pytest.raises(af.ArrayFileError, match="7.28 TiB"):
        af.member_headers(path)


def test_lying_npy_header_refused(tmp_path):
    path = tmp_path / "entry.npy"
    path.write_bytes(npy_bytes(claim((10**6, 10**6)), b"\0" * 8))
    err, peak = peak_allocation(af.load_npy, path)
    assert isinstance(err, af.ArrayFileError)
    assert err.member is None
    assert err.claimed_bytes == 8 * 10**12
    assert "the file holds 8 bytes" in str(err)
    assert peak < MiB
    path.write_bytes(npy_bytes(claim((2,)), b"\0" * 24))  # more data than claimed
    with pytest.raises(af.ArrayFileError, match="holds 24 bytes"):
        af.load_npy(path)


def test_directory_claiming_more_than_deflate_can_inflate(tmp_path):
    # Header and directory agree on 500 MB, from a member deflated to a few bytes.
    n = 500_000_000
    data = npy_bytes(claim((n,), "|u1"))
    path = write_zip(tmp_path / "a.npz", {"x.npy": data}, compressed=True)
    patch_sizes(path, file_size=len(data) + n)
    err, peak = peak_allocation(af.load_npz, path, max_bytes=10**12)
    assert isinstance(err, af.ArrayFileError), err
    assert "member 'x' is declared as 477 MiB uncompressed" in str(err)
    assert re.search(r"deflated from \d+ bytes, more than deflate can inflate \(1032:1\)", str(err))
    assert peak < MiB


def test_directory_claiming_more_than_the_stream_holds(tmp_path):
    # Within the ratio: the claimed 8,000 bytes are allocated, the short stream is refused.
    data = npy_bytes(claim((1000,)), b"\0" * 8)
    path = write_zip(tmp_path / "a.npz", {"x.npy": data}, compressed=True)
    patch_sizes(path, file_size=len(data) - 8 + 8000)
    with pytest.raises(af.ArrayFileError, match=r"member 'x' .* cannot be read") as info:
        af.load_npz(path)
    assert info.value.claimed_bytes == 8000


def test_stored_member_sizes_must_agree_and_fit_the_archive(tmp_path):
    # Header and directory agree on 1 GB, in a 200-byte archive.
    head = npy_bytes(claim((10**9,), "|u1"))
    path = write_zip(tmp_path / "a.npz", {"x.npy": head + bytes(4)})
    patch_sizes(path, compress_size=len(head) + 10**9, file_size=len(head) + 10**9)
    with pytest.raises(af.ArrayFileError, match="past the end of the"):
        af.load_npz(path)
    data = npy_bytes(claim((4,)), bytes(32))
    path = write_zip(tmp_path / "b.npz", {"x.npy": data})
    patch_sizes(path, compress_size=len(data) - 1)
    with pytest.raises(af.ArrayFileError, match="stored uncompressed in"):
        af.load_npz(path)


def test_directory_understating_a_bomb_stops_at_the_declared_size(tmp_path):
    # The header and directory claim 10 bytes; the stream would inflate to 20 MiB.
    head = npy_bytes(claim((10,), "|u1"))
    path = write_zip(tmp_path / "a.npz", {"x.npy": head + bytes(20 * MiB)}, compressed=True)
    declared = len(head) + 10
    patch_sizes(path, file_size=declared)
    err, peak = peak_allocation(af.load_npz, path)
    assert isinstance(err, af.ArrayFileError)
    assert "Bad CRC-32" in str(err)
    assert peak < MiB
    # Even with the CRC forged to match, no more than the declared bytes come out.
    patch_sizes(path, crc=zlib.crc32(head + bytes(10)))
    got, peak = peak_allocation(af.load_npz, path)
    assert_same(got["x"], np.zeros(10, np.uint8))
    assert peak < MiB


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """200 MiB of zeros deflated to ~200 KB, with honest header and directory."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("x.npy", "w") as w:
        w.write(npy_bytes(claim((200 * MiB,), "|u1")))
        block = bytes(MiB)
        for _ in range(200):
            w.write(block)
    return path


def test_decompression_bomb_refused_before_inflating(bomb):
    assert bomb.stat().st_size < 300_000
    err, peak = peak_allocation(af.load_npz, bomb, max_bytes=10 * MiB)
    assert isinstance(err, af.ArrayFileError), err
    assert "(200 MiB): more than the 10 MiB one read may take (max_bytes)" in str(err)
    assert err.claimed_bytes == 200 * MiB
    assert peak < MiB


def test_arrays_of_objects_refused(tmp_path):
    objects = np.array([1, "x", None], dtype=object)
    np.savez(tmp_path / "a.npz", ok=np.ones(2), obj=objects)
    with pytest.raises(af.ArrayFileError, match=r"member 'obj' holds Python objects.*pickle"):
        af.load_npz(tmp_path / "a.npz", allow=["ok"])  # refused even when not asked for
    np.save(tmp_path / "a.npy", objects, allow_pickle=True)
    with pytest.raises(af.ArrayFileError, match="holds Python objects"):
        af.load_npy(tmp_path / "a.npy")


def test_negative_and_sub_array_claims_refused(tmp_path):
    path = tmp_path / "a.npy"
    path.write_bytes(npy_bytes(claim((-1, 8))))
    with pytest.raises(af.ArrayFileError, match="negative shape"):
        af.load_npy(path)
    path.write_bytes(npy_bytes(claim((2,), ("<f8", (3,))), bytes(48)))
    with pytest.raises(af.ArrayFileError, match="sub-array"):
        af.load_npy(path)
    # No bytes claimed, and a shape NumPy cannot hold: the file's error (NumPy's, before).
    for shape in [(0, 2**64), (0,) * 65]:
        path.write_bytes(npy_bytes(claim(shape)))
        with pytest.raises(af.ArrayFileError, match="which NumPy cannot hold"):
            af.load_npy(path)
        write_zip(tmp_path / "a.npz", {"x.npy": npy_bytes(claim(shape))})
        with pytest.raises(af.ArrayFileError, match="member 'x' claims the shape"):
            af.load_npz(tmp_path / "a.npz")


def test_bool_shapes_and_zero_byte_elements_refused(tmp_path):
    """NumPy's header reader takes (True, 2) for a shape (bool is an int), and the reshape
    then raised a bare TypeError; 2**62 elements of a 0-byte dtype loaded, as 0 bytes."""
    path = tmp_path / "a.npy"
    for version in ((1, 0), (2, 0)):
        path.write_bytes(npy_bytes(claim((True, 2)), bytes(16), version=version))
        with pytest.raises(af.ArrayFileError, match="unreadable .npy header"):
            af.load_npy(path)
    for descr, shape in (("|V0", (2**62,)), ("|S0", (2**40,))):
        path.write_bytes(npy_bytes(claim(shape, descr)))
        with pytest.raises(af.ArrayFileError, match="0-byte dtype"):
            af.load_npy(path)
    path.write_bytes(npy_bytes(claim((0,), "|V0")))  # no element: nothing claimed
    assert af.load_npy(path).shape == (0,)


# --------------------------------------------------------------------------- damaged files


def test_every_truncation_is_an_array_file_error(tmp_path):
    whole = tmp_path / "a.npz"
    np.savez_compressed(whole, a=np.arange(50.0), b=np.ones((3, 3), np.uint8))
    raw = whole.read_bytes()
    cut = tmp_path / "cut.npz"
    for n in range(0, len(raw), 7):
        cut.write_bytes(raw[:n])
        with pytest.raises(af.ArrayFileError):
            af.load_npz(cut)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_every_flipped_byte_is_refused_or_harmless(tmp_path, save):
    whole = tmp_path / "a.npz"
    save(whole, a=np.arange(20.0), b=np.ones((2, 3), np.uint8))
    raw = whole.read_bytes()
    flipped = tmp_path / "flip.npz"
    for i in range(len(raw)):
        flipped.write_bytes(raw[:i] + bytes([raw[i] ^ 0x5A]) + raw[i + 1 :])
        try:
            got = af.load_npz(flipped)
        except af.ArrayFileError:
            continue
        # A byte the reader does not use (a timestamp, an attribute): the arrays are intact.
        assert_same(got["a"], np.arange(20.0))
        assert_same(got["b"], np.ones((2, 3), np.uint8))


def test_bad_crc(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, a=np.arange(16.0))
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"PK\x01\x02") - 20] ^= 0xFF  # a data byte of the only (stored) member
    path.write_bytes(bytes(raw))
    with pytest.raises(af.ArrayFileError, match=r"member 'a' .*Bad CRC-32"):
        af.load_npz(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", NOT_ZIP),
        (b"not a zip at all, some text\n" * 10, NOT_ZIP),
        (bytes(range(256)) * 4, NOT_ZIP),
        (npy_bytes(claim((1,)), bytes(8)), "single .npy array"),
    ],
)
def test_not_an_npz(tmp_path, content, match):
    path = tmp_path / "a.npz"
    path.write_bytes(content)
    with pytest.raises(af.ArrayFileError, match=match):
        af.load_npz(path)


def test_not_an_npy(tmp_path):
    np.savez(tmp_path / "a.npz", a=np.ones(2))
    with pytest.raises(af.ArrayFileError, match="an .npz archive, not a single .npy"):
        af.load_npy(tmp_path / "a.npz")
    (tmp_path / "b.npy").write_bytes(b"hello")
    with pytest.raises(af.ArrayFileError, match="does not start with the .npy magic"):
        af.load_npy(tmp_path / "b.npy")
    (tmp_path / "c.npy").write_bytes(npy_bytes(claim((1,)))[:20])
    with pytest.raises(af.ArrayFileError, match="truncated .npy header"):
        af.load_npy(tmp_path / "c.npy")
    with pytest.raises(FileNotFoundError):
        af.load_npy(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError):
        af.load_npz(tmp_path / "missing.npz")


def test_member_that_is_not_npy_and_oversized_header(tmp_path):
    path = write_zip(tmp_path / "a.npz", {"readme.txt": b"hello"})
    with pytest.raises(af.ArrayFileError, match="member 'readme.txt' is not a NumPy array"):
        af.load_npz(path)
    big_header = b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 31)
    path = write_zip(tmp_path / "b.npz", {"x.npy": big_header + b" " * 100})
    with pytest.raises(af.ArrayFileError, match=r"2 GiB .npy header"):
        af.load_npz(path)


def test_duplicate_member_names(tmp_path):
    path = tmp_path / "a.npz"
    data = npy_bytes(claim((1,)), bytes(8))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.npy", data)
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("a.npy", data)
    with pytest.raises(af.ArrayFileError, match="member 'a' appears twice"):
        af.load_npz(path)
    write_zip(path, {"a.npy": data, "a": data})  # the same name once .npy is dropped
    with pytest.raises(af.ArrayFileError, match="appears twice"):
        af.load_npz(path)


def test_huge_central_directory_refused(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, a=np.ones(2))
    raw = bytearray(path.read_bytes())
    end = raw.rindex(b"PK\x05\x06")
    raw[end + 12 : end + 16] = struct.pack("<I", 1 << 30)
    path.write_bytes(bytes(raw))
    with pytest.raises(af.ArrayFileError, match="zip directory of 1 GiB"):
        af.load_npz(path)


def test_zip64_directory_read_where_zipfile_reads_it(tmp_path):
    # A decoy zip64 end record at the offset the locator gives, claiming a small directory,
    # passed the size checks while zipfile read the real one, just before the locator.
    buffer = io.BytesIO()
    np.savez(buffer, a=np.ones(2), b=np.zeros(3))
    raw = buffer.getvalue()
    end = raw.rindex(b"PK\x05\x06")
    count, size, offset = struct.unpack("<HII", raw[end + 10 : end + 20])

    def record(members, directory, at):
        fields = (b"PK\x06\x06", 44, 45, 45, 0, 0, members, members, directory, at)
        return struct.pack("<4sQHHIIQQQQ", *fields)

    decoy = record(count, 1, 0)
    real = record(count, size, offset + len(decoy))
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, offset, 1)  # points at the decoy
    ones = (b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    data = raw[:offset] + decoy + raw[offset : offset + size] + real + locator
    data += struct.pack("<4sHHHHIIH", *ones)
    path = tmp_path / "a.npz"
    path.write_bytes(data)
    assert len(zipfile.ZipFile(path).infolist()) == count == 2
    with open(path, "rb") as f:
        assert af._directory_record(f, len(data)) == (count, size)  # the real one's
    assert sorted(af.load_npz(path)) == ["a", "b"]


def test_error_is_a_value_error_and_pickles():
    err = af.ArrayFileError("f.npz", "claims shape (2,) of float64 (16 bytes), but …", "a", 16)
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.member, again.claimed_bytes) == (str(err), "a", 16)


# --------------------------------------------------------------------------- the bound


def test_bound_from_argument_environment_and_memory(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    np.savez(path, a=np.ones(100))  # 800 bytes
    monkeypatch.setattr(af, "available_memory", lambda: 1000)
    monkeypatch.delenv(af.MAX_ARRAY_BYTES_ENV, raising=False)
    assert af.max_array_bytes() == 500
    with pytest.raises(af.ArrayFileError, match=r"500 bytes .*\(half of the 1000 bytes available"):
        af.load_npz(path)
    assert af.load_npz(path, max_bytes=800)["a"].shape == (100,)
    monkeypatch.setattr(af, "available_memory", lambda: 2000)
    assert af.load_npz(path)["a"].shape == (100,)

    for value, bound in [("799", 799), ("1K", 1024), ("2 GiB", 2 << 30), ("3mb", 3 << 20)]:
        monkeypatch.setenv(af.MAX_ARRAY_BYTES_ENV, value)
        assert af.max_array_bytes() == bound
    monkeypatch.setenv(af.MAX_ARRAY_BYTES_ENV, "799")
    with pytest.raises(af.ArrayFileError, match=f"799 bytes .*\\({af.MAX_ARRAY_BYTES_ENV}\\)"):
        af.load_npz(path)
    assert af.max_array_bytes(800) == 800  # the argument wins
    assert af.load_npz(path, max_bytes=800)["a"].shape == (100,)
    monkeypatch.setenv(af.MAX_ARRAY_BYTES_ENV, "lots")
    with pytest.raises(ValueError, match=f"{af.MAX_ARRAY_BYTES_ENV}='lots' is not a size"):
        af.max_array_bytes()
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="max_bytes must be"):
            af.max_array_bytes(bad)


def test_bound_counts_the_arrays_read_together(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, a=np.ones(100), b=np.ones(100))
    with pytest.raises(af.ArrayFileError, match="1.56 KiB with the other arrays"):
        af.load_npz(path, max_bytes=1000)
    assert list(af.load_npz(path, allow=["b"], max_bytes=1000)) == ["b"]


def test_available_memory_is_measured():
    available = hm.available_memory()
    assert isinstance(available, int)
    assert available > 0
    if Path("/proc/meminfo").exists():
        meminfo = Path("/proc/meminfo").read_text().split()
        assert available <= int(meminfo[meminfo.index("MemAvailable:") + 1]) * 1024


def test_container_limit(tmp_path):
    none = tmp_path / "no-proc-cgroup"  # the process's own cgroup unknown: the root alone
    (tmp_path / "memory.max").write_text("1073741824\n")
    (tmp_path / "memory.current").write_text(f"{600 * MiB}\n")
    (tmp_path / "memory.stat").write_text(f"anon 1\ninactive_file {100 * MiB}\n")
    assert hm._cgroup_available(tmp_path, none) == (1024 - 500) * MiB
    (tmp_path / "memory.max").write_text("max\n")
    assert hm._cgroup_available(tmp_path, none) is None
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text("5\n")
    assert hm._cgroup_available(v1, none) is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{MiB}\n")
    assert hm._cgroup_available(v1, none) == MiB - 5
    assert hm._cgroup_available(tmp_path / "none", none) is None


def test_a_job_limit_below_an_unlimited_root(tmp_path):
    """A SLURM job or systemd unit without its own cgroup namespace: the root is unlimited, the
    process's own cgroup (/proc/self/cgroup) or one above it holds the limit."""
    membership = tmp_path / "cgroup"
    root = tmp_path / "fs"

    def limit(folder, max_bytes, used):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "memory.max").write_text(f"{max_bytes}\n")
        (folder / "memory.current").write_text(f"{used}\n")

    limit(root, "max", 50 * GiB)
    limit(root / "slurm" / "job_7", 4 * GiB, 3 * GiB)
    limit(root / "slurm" / "job_7" / "step_0", "max", 3 * GiB)
    membership.write_text("0::/slurm/job_7/step_0\n")
    assert hm._cgroup_available(root, membership) == 1 * GiB  # the job's, one level up
    limit(root / "slurm", 3 * GiB + 512 * MiB, 3 * GiB)  # a tighter slice above it
    assert hm._cgroup_available(root, membership) == 512 * MiB
    # cgroup v1 (a hybrid tree: v2's root has no limit files), the memory controller's line.
    v1 = tmp_path / "v1"
    job = v1 / "memory" / "process_api" / "abc"
    job.mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text(f"{GiB}\n")
    (job / "memory.limit_in_bytes").write_text(f"{2 * GiB}\n")
    (job / "memory.usage_in_bytes").write_text(f"{GiB}\n")
    membership.write_text("5:devices:/\n4:memory:/process_api/abc\n0::/\n")
    assert hm._cgroup_available(v1, membership) == GiB
    # Inside a container the process's cgroup is "/" of its own tree: the root alone.
    membership.write_text("0::/\n")
    assert hm._cgroup_available(root / "slurm" / "job_7", membership) == 1 * GiB


# --------------------------------------------------------------------------- under a real limit


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS and /proc are Linux's")
def test_crafted_files_under_an_address_space_limit(tmp_path, bomb):
    """With 2 GiB of address space: ArrayFileError for each crafted file, MemoryError in np.load."""
    lie = write_zip(tmp_path / "lie.npz", {"x.npy": npy_bytes(claim((10**6, 10**6)), bytes(8))})
    sparse = tmp_path / "sparse.npy"  # honest header, 3 GiB of (sparse) data on disk
    head = npy_bytes(claim((3 << 30,), "|u1"))
    with open(sparse, "wb") as f:
        f.write(head)
        f.truncate(len(head) + (3 << 30))
    script = textwrap.dedent(
        f"""
        import json, resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        import importlib, types
        import numpy as np
        package = types.ModuleType("msde_jax")  # its private helpers alone, not its __init__
        package.__path__ = [{str(MODULE.parent)!r}]
        sys.modules["msde_jax"] = package
        af = importlib.import_module("msde_jax._arrays_file")
        assert "jax" not in sys.modules
        calls = {{
            "lie": lambda: af.load_npz({str(lie)!r}),
            "sparse": lambda: af.load_npy({str(sparse)!r}),
            "bomb": lambda: af.load_npz({str(bomb)!r}, max_bytes=10 << 20),
            "np.load sparse": lambda: np.load({str(sparse)!r}),
        }}
        out = {{}}
        for name, call in calls.items():
            try:
                call()
                out[name] = ["read", ""]
            except Exception as err:
                out[name] = [type(err).__name__, str(err)]
        out["bound"] = af.max_array_bytes()
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop(af.MAX_ARRAY_BYTES_ENV, None)
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["bound"] < 1 << 30  # half of what the address-space limit leaves
    assert out["lie"][0] == "ArrayFileError"
    assert "7.28 TiB" in out["lie"][1]
    assert out["sparse"][0] == "ArrayFileError"
    assert "(3 GiB): more than the" in out["sparse"][1]
    assert "(half of the" in out["sparse"][1]
    assert out["bomb"][0] == "ArrayFileError"
    # The harness catches a regression: NumPy's reader tries to allocate and fails.
    assert out["np.load sparse"][0] in ("MemoryError", "_ArrayMemoryError")


def test_human_bytes_rounds_into_the_next_unit():
    from msde_jax._host_memory import human_bytes

    assert [human_bytes(n) for n in (1023, 1024, 1536, 1048575, 3 << 30)] == [
        "1023 bytes",
        "1 KiB",
        "1.5 KiB",
        "1 MiB",
        "3 GiB",
    ]
