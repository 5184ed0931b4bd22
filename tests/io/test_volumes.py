"""3-D volumes: NIfTI (nibabel, extra ``nifti``) and DICOM series (pydicom, extra ``dicom``).

Every fixture is written by the tests themselves (tiny volumes, a few slices of 16 × 16).
"""

import gzip
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from testing import write_dicom_slice as _write_slice

import msde_jax
from msde_jax.io.dicom_series import SeriesGapWarning, is_dicom_series, read_dicom_series
from msde_jax.io.images import ImageReadError, prepare, to_float
from msde_jax.io.nifti import read_nifti
from msde_jax.io.volume_readers import is_volume, read_volumes
from msde_jax.io.volumes import (
    Volume,
    empty_slices,
    is_nifti,
    make_volume,
    slice_names,
    volume_images,
    window_volume,
)

RNG = np.random.default_rng(0)


def _body(shape: tuple[int, ...], *, dtype=np.int16) -> np.ndarray:
    """Tissue-like values in every voxel (nothing is empty), CT-ish units."""
    return (RNG.integers(0, 400, size=shape) + 100).astype(dtype)


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def _canonical_axial(data: np.ndarray) -> np.ndarray:
    """What the axial stack of a RAS+ array (i, j, k) must be: (k, j, i), rows and cols reversed."""
    return data.transpose(2, 1, 0)[:, ::-1, ::-1]


# ----------------------------------------------------------------------------- windowing


def test_window_percentiles_leave_out_the_fill_value():
    data = np.zeros((4, 10, 10))
    data[1:3] = np.arange(200, dtype=np.float64).reshape(2, 10, 10) + 1.0  # 1 … 200, rest 0
    out, (lo, hi) = window_volume(data, (5, 95))
    expected_lo, expected_hi = np.percentile(np.arange(1.0, 201.0), [5, 95])
    assert (lo, hi) == pytest.approx((expected_lo, expected_hi))
    np.testing.assert_allclose(out, np.clip((data - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert out.dtype == np.float32
    assert out[0].max() == 0.0  # the fill value is below the window
    out, (lo, hi) = window_volume(data, None)  # min-max
    assert (lo, hi) == (0.0, 200.0)
    np.testing.assert_allclose(out, data / 200.0, atol=1e-6)


def test_window_constant_binary_nonfinite_and_bad_percentiles():
    out, (lo, hi) = window_volume(np.full((3, 4, 4), 7.0))
    assert lo == hi == 7.0
    assert not out.any()
    mask = np.zeros((3, 4, 4), np.uint8)
    mask[1, :2] = 1  # percentiles of the voxels above the minimum coincide: min-max instead
    out, window = window_volume(mask)
    assert window == (0.0, 1.0)
    np.testing.assert_array_equal(out, mask)
    data = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
    out, _ = window_volume(data, None)
    assert np.isfinite(out).all()
    assert out[0, 0, 0] == out[1, 1, 1] == 0.0  # background
    out, window = window_volume(np.full((2, 2, 2), np.nan))
    assert not out.any()
    for bad in [(50, 50), (-1, 99), (1, 101), (99, 1)]:
        with pytest.raises(ValueError, match="percentiles"):
            window_volume(data, bad)


def test_empty_slices_dropped_at_both_ends_never_all():
    stack = np.zeros((8, 16, 16))
    stack[2:6, 4:12, 4:12] = 100.0 + RNG.random((4, 8, 8))
    stack[0] = 5.0 * RNG.random((16, 16))  # faint noise: below a tenth of the range
    stack[7, 0, :2] = 100.0  # 2 of 256 bright pixels (0.8 % < 1 %): still empty
    vol = make_volume(stack, name="v", window=None)
    np.testing.assert_array_equal(vol.indices, [2, 3, 4, 5])
    assert vol.n_slices == 8
    assert vol.slices.shape == (4, 16, 16)
    np.testing.assert_array_equal(
        empty_slices(window_volume(stack, None)[0]), [1, 1] + [0] * 4 + [1, 1]
    )
    kept = make_volume(stack, name="v", window=None, skip_empty=False)
    np.testing.assert_array_equal(kept.indices, np.arange(8))
    # Every slice sparse (one bright pixel each): all empty by the rule, so all are kept.
    sparse = np.zeros((5, 16, 16))
    sparse[:, 3, 3] = 1.0
    vol = make_volume(sparse, name="v")
    np.testing.assert_array_equal(vol.indices, np.arange(5))
    assert any("every slice is empty" in note for note in vol.notes)
    vol = make_volume(np.full((3, 16, 16), 42.0), name="a:b")
    assert vol.slices.shape == (3, 16, 16)
    assert not vol.slices.any()
    assert vol.name == "a_b"  # ':' separates the slice index in slice_names
    assert any("constant" in note for note in vol.notes)


def test_volume_images_and_names_feed_the_image_pipeline():
    stack = _body((3, 16, 16)).astype(np.float64)
    vol = make_volume(stack, name="scan", source="scan.nii")
    images = volume_images(vol)
    assert len(images) == 3
    assert all(im.shape == (16, 16) and im.dtype == np.float32 for im in images)
    assert slice_names(vol) == ["scan:0000", "scan:0001", "scan:0002"]
    assert to_float(images[0]).shape == (16, 16, 1)  # what the Embedder does with an array
    assert prepare(images[1], 32).shape == (32, 32, 3)
    assert "3 of 3 axial slices of 16×16" in repr(vol)
    with pytest.raises(ValueError, match="non-empty"):
        make_volume(np.zeros((0, 4, 4)), name="x")


# ----------------------------------------------------------------------------- NIfTI


def test_nifti_planes_orientation_and_affine(tmp_path):
    shape = (10, 12, 8)  # i → R, j → A, k → S
    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    affine[:3, 3] = (-5.0, 3.0, 7.0)
    data = _body(shape)
    data[7, 9, 6] = 3000  # a bright voxel: right, anterior, superior
    path = _write_nifti(tmp_path / "plain.nii", data, affine)
    expected = {  # (shape, blob (slice, row, column), spacing)
        "axial": ((8, 12, 10), (6, 12 - 1 - 9, 10 - 1 - 7), (2.0, 1.5, 1.0)),
        "coronal": ((12, 8, 10), (9, 8 - 1 - 6, 10 - 1 - 7), (1.5, 2.0, 1.0)),
        "sagittal": ((10, 8, 12), (7, 8 - 1 - 6, 12 - 1 - 9), (1.0, 2.0, 1.5)),
    }
    for axis, (vshape, blob, spacing) in expected.items():
        vol = read_nifti(path, axis=axis, window=None, skip_empty=False)
        assert isinstance(vol, Volume)
        assert (vol.axis, vol.name, vol.n_slices) == (axis, "plain", vshape[0])
        assert vol.slices.shape == vshape
        assert np.unravel_index(np.argmax(vol.slices), vshape) == blob
        assert vol.spacing == pytest.approx(spacing)
        world = vol.affine @ np.array([*blob, 1.0])
        np.testing.assert_allclose(world, affine @ np.array([7, 9, 6, 1.0]))
    np.testing.assert_allclose(
        read_nifti(path, window=None, skip_empty=False).slices,
        window_volume(_canonical_axial(data), None)[0],
    )
    with pytest.raises(ValueError, match="axis must be one of"):
        read_nifti(path, axis="transverse")


def test_oblique_permuted_storage_reads_like_the_plain_volume(tmp_path):
    shape = (10, 12, 8)
    plain_affine = np.diag([1.0, 1.5, 2.0, 1.0])
    data = _body(shape)
    data[7, 9, 6] = 3000
    # Stored as (S→I, R, P) with a 20° tilt: voxel (a, b, c) holds plain voxel (b, J-1-c, K-1-a).
    stored = data.transpose(2, 0, 1)[::-1, :, ::-1].copy()
    to_plain = np.array([[0, 1, 0, 0], [0, 0, -1, 11], [-1, 0, 0, 7], [0, 0, 0, 1]], np.float64)
    t = np.deg2rad(20.0)
    tilt = np.eye(4)
    tilt[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    oblique_affine = tilt @ plain_affine @ to_plain
    _write_nifti(tmp_path / "plain.nii", data, plain_affine)
    _write_nifti(tmp_path / "oblique.nii.gz", stored, oblique_affine)
    for axis in ("axial", "coronal", "sagittal"):
        plain = read_nifti(tmp_path / "plain.nii", axis=axis, window=None, skip_empty=False)
        oblique = read_nifti(tmp_path / "oblique.nii.gz", axis=axis, window=None, skip_empty=False)
        np.testing.assert_array_equal(oblique.slices, plain.slices)
        assert oblique.spacing == pytest.approx(plain.spacing)
        np.testing.assert_allclose(oblique.affine, tilt @ plain.affine, atol=1e-5)
    assert oblique.name == "oblique"
    # The bright voxel is still right-anterior-superior: upper left of a high axial slice.
    axial = read_nifti(tmp_path / "oblique.nii.gz", window=None, skip_empty=False)
    assert np.unravel_index(np.argmax(axial.slices), axial.slices.shape) == (6, 2, 2)


@pytest.mark.parametrize(
    ("dtype", "low", "high"),
    [
        (np.int16, -1024, 2000),
        (np.uint16, 0, 60000),
        (np.uint8, 0, 255),
        (np.float32, -3.0, 5.0),
        (np.float64, 0.0, 1e-3),
    ],
)
def test_nifti_voxel_types(tmp_path, dtype, low, high):
    data = RNG.uniform(low, high, size=(8, 16, 16)).astype(dtype)
    path = _write_nifti(tmp_path / "v.nii", data)
    vol = read_nifti(path, skip_empty=False)
    expected, window = window_volume(_canonical_axial(data).astype(np.float64))
    np.testing.assert_allclose(vol.slices, expected, atol=1e-6)
    assert vol.window == pytest.approx(window, rel=1e-6)
    assert vol.slices.dtype == np.float32
    assert vol.slices.min() == 0.0
    assert vol.slices.max() == 1.0


def test_nifti_scl_slope_and_intercept_are_applied(tmp_path):
    data = np.arange(8 * 16 * 16, dtype=np.int16).reshape(8, 16, 16)
    path = _write_nifti(tmp_path / "s.nii", data)
    raw = bytearray(path.read_bytes())
    raw[112:120] = struct.pack("<ff", -2.0, 100.0)  # scl_slope, scl_inter (little-endian file)
    path.write_bytes(bytes(raw))
    proxy = nib.load(path).dataobj  # nibabel moves the scaling from the header to the proxy
    assert (proxy.slope, proxy.inter) == (-2.0, 100.0)
    unscaled = read_nifti(_write_nifti(tmp_path / "u.nii", data), window=None, skip_empty=False)
    scaled = read_nifti(path, window=None, skip_empty=False)
    np.testing.assert_allclose(scaled.slices, 1.0 - unscaled.slices, atol=1e-6)  # negative slope
    assert scaled.window == pytest.approx((-2.0 * data.max() + 100.0, 100.0))


def test_nifti_gz_squeezed_4d_nan_and_one_slice(tmp_path):
    data = _body((8, 16, 16)).astype(np.float32)
    plain = read_nifti(_write_nifti(tmp_path / "v.nii", data))
    gz = read_nifti(_write_nifti(tmp_path / "v.nii.gz", data))
    np.testing.assert_array_equal(gz.slices, plain.slices)
    assert gz.name == plain.name == "v"
    squeezed = read_nifti(_write_nifti(tmp_path / "v4.nii", data[..., None]))
    np.testing.assert_array_equal(squeezed.slices, plain.slices)
    with pytest.raises(ImageReadError, match=r"t4\.nii: a 4-D volume of shape \(8, 16, 16, 2\)"):
        read_nifti(_write_nifti(tmp_path / "t4.nii", np.stack([data, data], axis=-1)))
    holes = data.copy()
    holes[0, 0, 0] = holes[3, 4, 5] = np.nan
    vol = read_nifti(_write_nifti(tmp_path / "nan.nii", holes), window=None)
    assert np.isfinite(vol.slices).all()
    assert vol.slices[5, 16 - 1 - 4, 8 - 1 - 3] == 0.0  # NaN at (3, 4, 5): background
    assert any("2 non-finite voxels" in note for note in vol.notes)
    one = read_nifti(_write_nifti(tmp_path / "one.nii", data[:, :, :1]))
    assert one.slices.shape == (1, 16, 8)
    assert one.n_slices == 1
    flat = read_nifti(_write_nifti(tmp_path / "flat.nii", data[:, :, 0]))  # a 2-D NIfTI
    np.testing.assert_array_equal(flat.slices, one.slices)


def test_one_slice_in_another_plane_is_read_in_its_plane(tmp_path):
    """A single sagittal or coronal image (a localizer, a 2-D export) is that one slice, not
    the requested axis's strips of one pixel stretched to full images."""
    data = _body((16, 12)).astype(np.float32)
    sagittal = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], float)
    vol = read_nifti(_write_nifti(tmp_path / "sag.nii", data, sagittal), skip_empty=False)
    assert (vol.axis, vol.slices.shape) == ("sagittal", (1, 12, 16))
    assert vol.notes == ("one sagittal slice: read in its plane, not as axial strips of one pixel",)
    own = read_nifti(tmp_path / "sag.nii", axis="sagittal", skip_empty=False)
    np.testing.assert_array_equal(own.slices, vol.slices)
    assert own.notes == ()
    coronal = read_nifti(_write_nifti(tmp_path / "cor.nii", data[:, None, :]), skip_empty=False)
    assert (coronal.axis, coronal.slices.shape) == ("coronal", (1, 12, 16))


def test_damaged_nifti_files_are_named(tmp_path):
    good = _write_nifti(tmp_path / "good.nii", _body((8, 16, 16)))
    raw = good.read_bytes()
    cases = {
        "bytes.nii": b"not a nifti file at all" * 20,
        "truncated.nii": raw[: len(raw) // 2],
        "garbage.nii.gz": b"\x1f\x8b not really gzip",
        "text.nii.gz": gzip.compress(b"hello" * 100),
        "cut.nii.gz": gzip.compress(raw)[:200],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageReadError, match=rf"{re.escape(name)}: not a readable"):
            read_nifti(tmp_path / name)
    with pytest.raises(ImageReadError, match=r"absent\.nii: no such file"):
        read_nifti(tmp_path / "absent.nii")


def test_missing_nibabel_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(ImportError, match=r"pip install 'msde-jax\[nifti\]'"):
        read_nifti(tmp_path / "x.nii")


def test_importing_io_imports_neither_nibabel_nor_pydicom():
    code = (
        "import sys, msde_jax.io\n"
        "assert msde_jax.io.__file__.startswith(sys.argv[1]), msde_jax.io.__file__\n"
        "assert 'nibabel' not in sys.modules and 'pydicom' not in sys.modules\n"
    )
    root = str(Path(msde_jax.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    subprocess.run([sys.executable, "-c", code, root], check=True, env=env, timeout=120)


# ----------------------------------------------------------------------------- DICOM series

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _write_series(folder: Path, stack: np.ndarray, *, z: list[float] | None = None, **attrs):
    """Axial slices at heights z (default 0, 2.5, 5, …), stored values HU + 1024."""
    folder.mkdir(exist_ok=True)
    z = [2.5 * n for n in range(len(stack))] if z is None else z
    for n, (pixels, height) in enumerate(zip(stack, z, strict=True)):
        _write_slice(
            folder / f"s{n:03d}.dcm", pixels + 1024, position=(-40.0, -30.0, height), **attrs
        )


def test_series_matches_the_same_volume_as_nifti(tmp_path):
    hu = _body((6, 16, 16))  # (slice ↑ superior, row → posterior, column → patient left)
    _write_series(tmp_path / "ct", hu)
    # The same volume as NIfTI: voxel (i, j, k) = (column, row, slice), LPS → RAS.
    affine = np.array(
        [[-0.7, 0, 0, 40.0], [0, -0.8, 0, 30.0], [0, 0, 2.5, 0.0], [0, 0, 0, 1.0]], np.float64
    )
    _write_nifti(tmp_path / "ct.nii", hu.transpose(2, 1, 0), affine)
    (series,) = read_dicom_series(tmp_path / "ct")
    nifti = read_nifti(tmp_path / "ct.nii")
    np.testing.assert_allclose(series.slices, nifti.slices, atol=1e-6)
    np.testing.assert_allclose(series.affine, nifti.affine, atol=1e-5)
    assert series.spacing == pytest.approx(nifti.spacing)
    assert series.window == pytest.approx(nifti.window)
    assert series.name == "ct-1.2.826.0.1.3680043.8.498.1"
    assert series.axis == "axial"
    assert series.source == str(tmp_path / "ct")
    assert series.gaps == ()
    assert series.notes == ()


def test_shuffled_files_ordered_by_position_along_an_oblique_normal(tmp_path):
    t = np.deg2rad(25.0)
    orientation = (1.0, 0.0, 0.0, 0.0, np.cos(t), -np.sin(t))
    normal = np.array([0.0, np.sin(t), np.cos(t)])  # row × column
    names = RNG.permutation(6)
    origin = np.array([10.0, -20.0, 30.0])
    for n in range(6):
        pixels = np.full((16, 16), 1024 + 100, np.int64)
        pixels[8, n] = 1024 + 900  # the slice's number, written as a bright column
        position = origin + 3.0 * n * normal + (0.4 * n, 0.0, 0.0)  # in-plane drift is ignored
        _write_slice(
            tmp_path / f"x{names[n]}.dcm",
            pixels,
            position=tuple(position),
            orientation=orientation,
            instance=6 - n,  # contradicts the positions, which win
        )
    (vol,) = read_dicom_series(tmp_path, skip_empty=False)
    assert [int(np.argmax(s[8])) for s in vol.slices] == list(range(6))
    assert vol.spacing == pytest.approx((3.0, 0.8, 0.7), abs=1e-4)
    assert vol.axis == "axial"  # 25° from axial
    assert vol.gaps == ()
    # The drift is a shear of the grid (a tilted gantry does this): the affine follows it.
    third = origin + 9.0 * normal + (1.2, 0.0, 0.0)
    np.testing.assert_allclose(vol.affine @ [3.0, 0, 0, 1], [*(third * [-1, -1, 1]), 1], atol=1e-4)


def test_series_affine_follows_the_dicom_geometry(tmp_path):
    t = np.deg2rad(25.0)
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(t), -np.sin(t)])
    normal = np.cross(row, col)
    origin = np.array([10.0, -20.0, 30.0])
    for n in RNG.permutation(5):
        _write_slice(
            tmp_path / f"x{n}.dcm",
            _body((16, 16)) + 1024,
            position=tuple(origin + 3.0 * n * normal),
            orientation=(*row, *col),
        )
    (vol,) = read_dicom_series(tmp_path, skip_empty=False)
    lps = origin + 3.0 * 2 * normal + 0.8 * 5 * col + 0.7 * 7 * row  # slice 2, row 5, column 7
    world = vol.affine @ np.array([2.0, 5.0, 7.0, 1.0])
    np.testing.assert_allclose(world[:3], lps * [-1, -1, 1], atol=1e-4)


def test_missing_slice_warns_and_is_recorded(tmp_path):
    _write_series(tmp_path / "gap", _body((6, 16, 16)), z=[0.0, 2.0, 4.0, 8.0, 10.0, 12.0])
    with pytest.warns(SeriesGapWarning, match=r"series gap-1\.2\.826.*~1 after slice 2"):
        (vol,) = read_dicom_series(tmp_path / "gap")
    assert vol.gaps == ((2, 1),)
    assert vol.n_slices == 6
    assert vol.spacing[0] == pytest.approx(2.0)
    assert vol.affine is None  # slices past the gap would be misplaced
    # Three missing slices in a row, found from the instance numbers alone (no positions).
    folder = tmp_path / "numbers"
    folder.mkdir()
    for k, number in enumerate([1, 2, 3, 7, 8]):
        _write_slice(folder / f"{k}.dcm", _body((16, 16)) + 1024, instance=number)
    with pytest.warns(SeriesGapWarning, match="~3 after slice 2"):
        (vol,) = read_dicom_series(folder)
    assert vol.gaps == ((2, 3),)


def test_instance_number_fallback_and_file_name_order(tmp_path):
    folder = tmp_path / "noposition"
    folder.mkdir()
    for k, number in enumerate([3, 1, 4, 2]):
        pixels = np.full((16, 16), 1124, np.int64)
        pixels[0, number] = 2000
        _write_slice(folder / f"{k}.dcm", pixels, instance=number)
    (vol,) = read_dicom_series(folder, skip_empty=False)
    assert [int(np.argmax(s[0])) for s in vol.slices] == [1, 2, 3, 4]
    assert vol.axis == "unknown"
    assert vol.affine is None
    assert np.isnan(vol.spacing[0])
    assert vol.notes == (
        "ordered by InstanceNumber (no ImagePositionPatient / ImageOrientationPatient)",
    )
    bare = tmp_path / "bare"
    bare.mkdir()
    for k in (2, 0, 1):
        _write_slice(bare / f"{k}.dcm", _body((16, 16)) + 1024)
    (vol,) = read_dicom_series(bare)
    assert vol.n_slices == 3
    assert "ordered by file name" in vol.notes[0]
    degenerate = tmp_path / "degenerate"
    degenerate.mkdir()
    for k, number in enumerate([2, 1]):  # zero direction cosines count as no orientation
        _write_slice(
            degenerate / f"{k}.dcm",
            _body((16, 16)) + 1024,
            position=(0, 0, 0),
            orientation=(0,) * 6,
            instance=number,
        )
    (vol,) = read_dicom_series(degenerate)
    assert vol.axis == "unknown"
    assert "ordered by InstanceNumber" in vol.notes[0]


def test_mixed_series_in_one_folder_give_two_volumes(tmp_path):
    for n in range(3):
        _write_slice(
            tmp_path / f"a{n}.dcm",
            _body((16, 16)) + 1024,
            series="1.2.3.9",
            SeriesNumber=2,
            position=(0.0, 0.0, 2.0 * n),
        )
    for n in range(2):
        _write_slice(
            tmp_path / f"b{n}.dcm",
            _body((12, 10)) + 1024,  # another shape is fine in another series
            series="1.2.3.10",
            SeriesNumber=1,
            position=(0.0, 0.0, 5.0 * n),
        )
    (tmp_path / "notes.txt").write_text("not DICOM, ignored")
    (tmp_path / "._a0.dcm").write_bytes(b"macOS resource fork, hidden: ignored")
    first, second = read_dicom_series(tmp_path)
    assert first.name == f"{tmp_path.name}-1.2.3.10"  # SeriesNumber 1 first
    assert (first.n_slices, first.slices.shape[1:]) == (2, (12, 10))
    assert second.name == f"{tmp_path.name}-1.2.3.9"
    assert (second.n_slices, second.slices.shape[1:]) == (3, (16, 16))
    assert slice_names(second)[0] == f"{tmp_path.name}-1.2.3.9:0000"
    assert len(read_volumes(tmp_path)) == 2


def test_objects_that_are_not_slices_are_left_out_with_a_note(tmp_path):
    """A report or dose sheet beside the slices (no pixels, no slice position), even first by
    name, neither hides the series nor stops it; a slice that cannot be read still does."""
    import pydicom
    from testing import write_dicom

    folder = tmp_path / "exam"
    _write_series(folder, _body((3, 16, 16)))
    report = write_dicom(folder / "0_report.dcm", np.zeros((4, 4)), SeriesInstanceUID="9.9.9")
    ds = pydicom.dcmread(report)
    del ds.PixelData
    ds.save_as(report, enforce_file_format=True)
    assert is_dicom_series(folder)
    (vol,) = read_volumes(folder)
    assert vol.n_slices == 3
    assert vol.notes[-1] == (
        "1 DICOM object(s) without a slice's place or image left out (0_report.dcm)"
    )
    ds = pydicom.dcmread(folder / "s001.dcm")
    del ds.PixelData
    ds.save_as(folder / "s001.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"s001\.dcm: DICOM file without pixel data"):
        read_dicom_series(folder)


def test_slices_without_places_are_ordered_by_the_numbers_in_their_names(tmp_path):
    for n in range(1, 12):  # IM1 … IM11, as an export names them: IM2 comes before IM10
        _write_slice(
            tmp_path / f"IM{n}",
            np.full((8, 8), 1024 + 10 * n),
            position=None,
            orientation=None,
            instance=None,
        )
    (vol,) = read_dicom_series(tmp_path, window=None, skip_empty=False)
    assert vol.notes == ("ordered by file name (no slice positions or instance numbers)",)
    np.testing.assert_array_equal(np.argsort(vol.slices.mean(axis=(1, 2))), np.arange(11))


def test_single_file_series_and_file_lists(tmp_path):
    path = _write_slice(
        tmp_path / "one.dcm", _body((16, 16)) + 1024, position=(0, 0, 0), SliceThickness="1.25"
    )
    for source in (tmp_path, path, [path]):
        (vol,) = read_dicom_series(source)
        assert vol.slices.shape == (1, 16, 16)
        np.testing.assert_array_equal(vol.indices, [0])
        assert vol.spacing == pytest.approx((1.25, 0.8, 0.7))
        assert vol.affine is not None


def test_rescale_and_monochrome1(tmp_path):
    stack = _body((4, 16, 16))
    _write_series(tmp_path / "m2", stack, RescaleSlope=2, RescaleIntercept=-100)
    _write_series(
        tmp_path / "m1",
        stack,
        RescaleSlope=2,
        RescaleIntercept=-100,
        PhotometricInterpretation="MONOCHROME1",
    )
    (m2,) = read_dicom_series(tmp_path / "m2", window=None, skip_empty=False)
    (m1,) = read_dicom_series(tmp_path / "m1", window=None, skip_empty=False)
    stored = stack + 1024
    assert m2.window == pytest.approx((2 * stored.min() - 100, 2 * stored.max() - 100))
    np.testing.assert_allclose(m1.slices, 1.0 - m2.slices, atol=1e-6)


def test_inconsistent_series_are_refused_naming_the_file(tmp_path):
    for n in range(3):
        _write_slice(tmp_path / f"s{n}.dcm", _body((16, 16)) + 1024, position=(0, 0, n))
    _write_slice(tmp_path / "odd.dcm", _body((16, 12)) + 1024, position=(0, 0, 3))
    with pytest.raises(ImageReadError, match=r"series .*-1\.2\.826.*odd\.dcm has slices of 16×12"):
        read_dicom_series(tmp_path)
    (tmp_path / "odd.dcm").unlink()
    _write_slice(tmp_path / "same.dcm", _body((16, 16)) + 1024, position=(0, 0, 1))
    with pytest.raises(ImageReadError, match="same position"):
        read_dicom_series(tmp_path)
    (tmp_path / "same.dcm").unlink()
    _write_slice(
        tmp_path / "scout.dcm",
        _body((16, 12)) + 1024,
        position=(0, 0, 9),
        orientation=(0, 1, 0, 0, 0, -1),
    )
    # A localizer saved in the series (another orientation, and here another shape): left
    # out with a note; the series is read.
    (volume,) = read_dicom_series(tmp_path)
    assert volume.n_slices == 3
    assert "1 slice(s) of another orientation left out (a localizer?): scout.dcm" in volume.notes
    # Two orientations of 2 slices each: no stray localizer, the series is refused.
    (tmp_path / "s2.dcm").unlink()
    _write_slice(
        tmp_path / "scout.dcm",
        _body((16, 16)) + 1024,
        position=(0, 0, 9),
        orientation=(0, 1, 0, 0, 0, -1),
    )
    _write_slice(
        tmp_path / "scout2.dcm",
        _body((16, 16)) + 1024,
        position=(0, 0, 8),
        orientation=(0, 1, 0, 0, 0, -1),
    )
    with pytest.raises(ImageReadError, match=r"has another ImageOrientationPatient"):
        read_dicom_series(tmp_path)


def test_damaged_dicom_and_empty_folders_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="no DICOM files"):
        read_dicom_series(tmp_path / "empty")
    with pytest.raises(ImageReadError, match="no such file or folder"):
        read_dicom_series(tmp_path / "absent")
    bad = tmp_path / "bad"
    bad.mkdir()
    _write_slice(bad / "good.dcm", _body((16, 16)) + 1024, position=(0, 0, 0))
    (bad / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 50)
    with pytest.raises(ImageReadError, match=r"broken\.dcm"):
        read_dicom_series(bad)
    path = _write_slice(tmp_path / "nopix.dcm", _body((16, 16)), position=(0, 0, 0))
    ds = __import__("pydicom").dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"nopix\.dcm: DICOM file without pixel data"):
        read_dicom_series([path])


def test_missing_pydicom_names_the_extra(monkeypatch, tmp_path):
    series = tmp_path / "ct"
    series.mkdir()
    for z in range(2):
        _write_slice(series / f"{z}.dcm", _body((16, 16)), position=(0, 0, 2.5 * z))
    assert is_dicom_series(series)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r"pip install 'msde-jax\[dicom\]'"):
        read_dicom_series(series)
    assert not is_dicom_series(series)  # without pydicom nothing is a series


# ----------------------------------------------------------------------------- recognising volumes


def test_is_volume_and_read_volumes(tmp_path):
    from PIL import Image

    nii = _write_nifti(tmp_path / "a.nii", _body((8, 16, 16)))
    niigz = _write_nifti(tmp_path / "b.NII.GZ", _body((8, 16, 16)))
    png = tmp_path / "c.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    _write_series(tmp_path / "ct", _body((3, 16, 16)))
    radiographs = tmp_path / "xray"
    radiographs.mkdir()
    _write_slice(radiographs / "cr.dcm", _body((16, 16)), orientation=None)  # no position
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(pngs / "x.png")
    assert is_nifti("x.nii")
    assert is_nifti("x.Nii.Gz")
    assert not is_nifti("x.gz")
    assert is_volume(nii)
    assert is_volume(niigz)
    assert is_volume(tmp_path / "ct")
    assert not is_volume(png)
    assert not is_volume(tmp_path / "absent.nii")
    assert not is_volume(radiographs)
    assert not is_volume(pngs)
    assert not is_volume(tmp_path / "empty_does_not_exist")
    (vol,) = read_volumes(niigz, axis="coronal")
    assert (vol.name, vol.axis) == ("b", "coronal")
    (vol,) = read_volumes(tmp_path / "ct")
    assert vol.n_slices == 3
    with pytest.raises(ValueError, match="own slice normal"):
        read_volumes(tmp_path / "ct", axis="sagittal")
    with pytest.raises(ImageReadError, match=r"c\.png"):
        read_volumes(png)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_header_claiming_more_than_the_file_holds_is_refused_before_decoding(
    tmp_path, suffix
):
    path = _write_nifti(tmp_path / "small.nii", _body((4, 4, 4)))
    raw = bytearray(path.read_bytes())
    raw[40:56] = struct.pack("<8h", 3, 30000, 30000, 30000, 1, 1, 1, 1)  # NIfTI-1 dim[0..7]
    lying = tmp_path / f"lying{suffix}"
    lying.write_bytes(gzip.compress(bytes(raw)) if suffix.endswith(".gz") else bytes(raw))
    with pytest.raises(ImageReadError, match=r"lying.*claims \(30000, 30000, 30000\).*damaged"):
        read_nifti(lying)


def test_nifti_beyond_the_memory_bound_is_refused(tmp_path, monkeypatch):
    path = _write_nifti(tmp_path / "vol.nii.gz", _body((8, 16, 16)))
    monkeypatch.setenv("MSDE_JAX_MAX_ARRAY_BYTES", "10K")
    with pytest.raises(
        ImageReadError, match=r"vol\.nii\.gz: reading its .* MSDE_JAX_MAX_ARRAY_BYTES"
    ):
        read_nifti(path)
    monkeypatch.delenv("MSDE_JAX_MAX_ARRAY_BYTES")
    assert read_nifti(path).n_slices > 0  # within the bound again
