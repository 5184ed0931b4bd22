"""DICOM reading through pydicom (the optional ``dicom`` extra)."""

import sys
from pathlib import Path

import nibabel as nib  # the test extra installs msde-jax[nifti]
import numpy as np
import pydicom  # noqa: E402  (the test extra installs msde-jax[dicom])
import pytest
from testing import write_dicom, write_dicom_slice

from msde_jax.io.datasets import list_images  # noqa: E402
from msde_jax.io.dicom import read_dicom  # noqa: E402
from msde_jax.io.dicom_series import read_dicom_series  # noqa: E402
from msde_jax.io.images import ImageReadError, prepare, to_float  # noqa: E402
from msde_jax.io.nifti import read_nifti  # noqa: E402


def _bundled(name: str) -> str:
    """A test file that ships inside the pydicom wheel (never downloaded)."""
    path = pydicom.data.get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not bundled with pydicom {pydicom.__version__}"
    assert Path(path).is_relative_to(Path(pydicom.__file__).parent)
    return path


def test_bundled_ct():
    path = _bundled("CT_small.dcm")
    img = read_dicom(path)
    assert img.shape == (128, 128)
    assert img.dtype == np.float32
    assert img.min() == 0.0
    assert img.max() == 1.0
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = (hu - hu.min()) / (hu.max() - hu.min())  # no window in this file: min-max
    np.testing.assert_allclose(img, expected, atol=1e-6)


def test_bundled_mr_window_and_prepare():
    path = _bundled("MR_small.dcm")
    ds = pydicom.dcmread(path)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = np.clip((ds.pixel_array - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(read_dicom(path), expected, atol=1e-6)
    out = prepare(path, 32)
    assert out.shape == (32, 32, 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert list_images(Path(path).parent / "MR_small.dcm") == [
        str(Path(path).parent / "MR_small.dcm")
    ]


def test_written_monochrome1_with_rescale(tmp_path):
    stored = np.array([[0, 10], [20, 40]], np.uint16)
    path = write_dicom(
        tmp_path / "inv.dcm",
        stored,
        PhotometricInterpretation="MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-100,
    )
    # Rescaled: [[-100, -80], [-60, -20]] → min-max → [[0, .25], [.5, 1]] → inverted.
    np.testing.assert_allclose(read_dicom(path), [[1.0, 0.75], [0.5, 0.0]], atol=1e-6)
    # The same through the generic reader, with a file name that says nothing (DICM magic).
    renamed = path.rename(tmp_path / "image_without_suffix")
    np.testing.assert_allclose(to_float(renamed)[..., 0], [[1.0, 0.75], [0.5, 0.0]], atol=1e-6)
    assert prepare(str(renamed), 32).shape == (32, 32, 3)


def test_written_window(tmp_path):
    stored = np.array([[0, 100], [200, 300]], np.uint16)
    path = write_dicom(
        tmp_path / "win.dcm",
        stored,
        RescaleSlope=1,
        RescaleIntercept=-100,
        WindowCenter=50,
        WindowWidth=101,
    )
    # Values [-100, 0, 100, 200] with the linear window [0, 100]: clipped outside.
    np.testing.assert_allclose(read_dicom(path), [[0.0, 0.005], [1.0, 1.0]], atol=1e-6)


def test_rgb_bundled():
    path = _bundled("SC_rgb_small_odd.dcm")
    img = read_dicom(path)
    assert img.shape == (3, 3, 3)
    # 8-bit RGB: the stored values over 255
    np.testing.assert_allclose(img, pydicom.dcmread(path).pixel_array / 255, atol=1e-6)


@pytest.mark.parametrize("entry_bits", [8, 16])
def test_palette_color_is_scaled_by_its_lookup_tables_entry_size(tmp_path, entry_bits):
    """A palette maps each stored value to RGB entries of 8 or 16 bits: white is 1.0 either
    way (8-bit entries were once divided by 65535, giving near-black images)."""
    pixels = np.arange(256, dtype=np.uint16).reshape(16, 16)
    lut = np.arange(256) * (257 if entry_bits == 16 else 1)
    lut = lut.astype(np.uint16 if entry_bits == 16 else np.uint8).tobytes()
    tables = {}
    for colour in ("Red", "Green", "Blue"):
        tables[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, entry_bits]
        tables[f"{colour}PaletteColorLookupTableData"] = lut
    path = write_dicom(tmp_path / "palette.dcm", pixels, **tables)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.save_as(path)
    img = read_dicom(path)
    assert img.shape == (16, 16, 3)
    np.testing.assert_allclose(img, np.repeat(pixels[..., None] / 255, 3, axis=-1), atol=1e-6)


def test_multiframe_rejected():
    with pytest.raises(ImageReadError, match="multi-frame DICOM"):
        read_dicom(_bundled("examples_ybr_color.dcm"))


def test_not_dicom(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"definitely not dicom")
    with pytest.raises(ImageReadError, match="bad.dcm"):
        to_float(bad)


def test_missing_pydicom(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=r"pip install 'msde-jax\[dicom\]'"):
        read_dicom(tmp_path / "x.dcm")


def test_no_pixel_data_and_undecodable_transfer_syntax_name_the_file(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    path = write_dicom(tmp_path / "nopix.dcm", np.zeros((8, 8)))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"nopix\.dcm: DICOM file without pixel data"):
        to_float(path)
    path = write_dicom(tmp_path / "j2k.dcm", np.zeros((8, 8)))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\x00" * 10])  # not a JPEG 2000 stream
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"j2k\.dcm: not a readable DICOM image"):
        to_float(path)


def test_extreme_aspect_ratio_images_are_read_and_prepared(tmp_path):
    from PIL import Image

    path = tmp_path / "strip.png"
    Image.fromarray(np.arange(2000 * 3, dtype=np.uint32).reshape(3, 2000).astype(np.uint8)).save(
        path
    )
    assert to_float(path).shape == (3, 2000, 1)
    out = prepare(path, 32)
    assert out.shape == (32, 32, 3)
    assert np.isfinite(out).all()


# ------------------------------------------------------------------- DICOM series (the readers)
SERIES_RNG = np.random.default_rng(7)


def _ct(shape=(16, 16)) -> np.ndarray:
    """HU of a small CT slice: air in a ring around soft tissue, no empty slice."""
    hu = SERIES_RNG.normal(-1000, 10, shape)
    hu[3:-3, 3:-3] = SERIES_RNG.normal(60, 20, (shape[0] - 6, shape[1] - 6))
    return np.round(hu)


def _signed_slice(path, hu, *, z, intercept=0.0, **attrs):
    """A signed 16-bit CT slice storing ``hu − intercept`` (two's complement in the file)."""
    stored = np.round(np.asarray(hu) - intercept).astype(np.int16).view(np.uint16)
    return write_dicom_slice(
        path,
        stored,
        position=(0, 0, float(z)),
        PixelRepresentation=1,
        RescaleIntercept=intercept,
        **attrs,
    )


def _as_us(path, keyword, value):
    """Rewrite a tag with VR US (as some exporters do whatever PixelRepresentation says)."""
    ds = pydicom.dcmread(path)
    delattr(ds, keyword)
    ds.add_new(pydicom.datadict.tag_for_keyword(keyword), "US", value)
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("case", ["value", "range", "per_slice_intercept", "value_read_as_us"])
def test_series_padding_is_background_outside_the_window(tmp_path, case):
    """Padding outside the field of view is left out of the intensity window and reads as 0,
    without a note on non-finite voxels: a padding range, or one padding value that rescales to
    other values on slices with other intercepts, once entered the window (the rule that
    leaves out the volume's minimum catches a single value only)."""
    outside = np.zeros((16, 16), bool)
    outside[:, :2] = True
    for z in range(4):
        hu, intercept, tags = _ct(), 0.0, {"PixelPaddingValue": -2000}
        if case == "range":  # noisy padding from −2000 to −1500
            hu[outside] = SERIES_RNG.integers(-2000, -1499, outside.sum())
            tags["PixelPaddingRangeLimit"] = -1500
        else:
            if case != "value":  # stored padding −2000: −3024 or −2000 HU
                intercept = -1024.0 if z % 2 else 0.0
            hu[outside] = -2000 + intercept
        path = _signed_slice(tmp_path / f"s{z}.dcm", hu, z=z, intercept=intercept, **tags)
        if case == "value_read_as_us":  # −2000 stored as US 63536
            _as_us(path, "PixelPaddingValue", 63536)
    (vol,) = read_dicom_series(tmp_path, skip_empty=False)
    assert vol.window[0] > -1100  # the air inside the field of view, not the padding
    assert (vol.slices[:, outside] == 0).all()
    assert vol.notes == ()


def test_padding_of_a_2d_dicom_is_background_and_left_out_of_its_scaling(tmp_path):
    stored = np.array([[0, 100], [200, 300]], np.uint16)
    path = write_dicom(tmp_path / "pad.dcm", stored, PixelPaddingValue=0)
    # Min-max over 100 … 300; the padding pixel is 0 (MONOCHROME1 too: padding stays dark).
    np.testing.assert_allclose(read_dicom(path), [[0.0, 0.0], [0.5, 1.0]], atol=1e-6)
    path = write_dicom(
        tmp_path / "pad1.dcm", stored, PixelPaddingValue=0, PhotometricInterpretation="MONOCHROME1"
    )
    np.testing.assert_allclose(read_dicom(path), [[0.0, 1.0], [0.5, 0.0]], atol=1e-6)


def _patch(path, old: bytes, new: bytes):
    raw = path.read_bytes()
    assert raw.count(old) == 1
    assert len(old) == len(new)
    path.write_bytes(raw.replace(old, new))


def test_malformed_rescale_is_an_image_read_error_naming_the_file_and_tag(tmp_path):
    """Multi-valued or non-numeric RescaleSlope / RescaleIntercept once raised a raw TypeError or
    ValueError, which --skip-unreadable does not catch; values that agree are read."""
    agree = tmp_path / "agree"
    agree.mkdir()
    for z in range(3):
        write_dicom_slice(agree / f"{z}.dcm", np.full((8, 8), 1124), position=(0, 0, z))
        ds = pydicom.dcmread(agree / f"{z}.dcm")
        ds.RescaleSlope = [1, 1]  # 1\1, seen in broken exports
        ds.save_as(agree / f"{z}.dcm", enforce_file_format=True)
    (vol,) = read_dicom_series(agree, window=None, skip_empty=False)
    assert vol.window == (100.0, 100.0)
    bad = tmp_path / "bad"
    bad.mkdir()
    path = write_dicom_slice(bad / "two.dcm", np.full((8, 8), 1124), position=(0, 0, 0))
    ds = pydicom.dcmread(path)
    ds.RescaleSlope = [1, 2]
    ds.save_as(path, enforce_file_format=True)
    for read in (read_dicom_series, read_dicom):
        with pytest.raises(
            ImageReadError, match=r"two\.dcm: RescaleSlope is '1(\.0)?\\2(\.0)?', not one"
        ):
            read(path)
    path = write_dicom_slice(bad / "text.dcm", np.full((8, 8), 1124), RescaleIntercept="-1024.5")
    _patch(path, b"-1024.5", b"abcdefg")
    for read in (read_dicom_series, read_dicom):
        with pytest.raises(ImageReadError, match=r"text\.dcm: RescaleIntercept is 'abcdefg'"):
            read(path)


def _lut_file(path, z):
    """Stored 0 … 255 through a decreasing ModalityLUTSequence (no rescale tags)."""
    write_dicom_slice(path, np.arange(256).reshape(16, 16), position=(0, 0, z))
    ds = pydicom.dcmread(path)
    del ds.RescaleSlope, ds.RescaleIntercept
    item = pydicom.Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.ModalityLUTType = "HU"
    item.LUTData = np.array([3000 - 2 * i for i in range(256)], np.uint16).tobytes()
    ds.ModalityLUTSequence = [item]
    ds.save_as(path, enforce_file_format=True)
    return path


def test_modality_lut_sequence_is_applied(tmp_path):
    from pydicom.pixels import apply_modality_lut

    for z in range(3):
        _lut_file(tmp_path / f"{z}.dcm", z)
    ds = pydicom.dcmread(tmp_path / "0.dcm")
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)  # 3000 … 2490
    (vol,) = read_dicom_series(tmp_path, window=None, skip_empty=False)
    assert vol.window == (2490.0, 3000.0)
    np.testing.assert_allclose(vol.slices[0], (expected - 2490) / 510, atol=1e-6)
    np.testing.assert_allclose(read_dicom(tmp_path / "0.dcm"), (expected - 2490) / 510, atol=1e-6)


def _series(folder, n, *, uid, z0=0.0, orientation=(1, 0, 0, 0, 1, 0), name="s"):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        write_dicom_slice(
            folder / f"{name}{k}.dcm",
            _ct() + 1024,
            series=uid,
            position=(0, 0, z0 + 2.0 * k),
            orientation=orientation,
            instance=k + 1,
        )


def test_a_series_that_cannot_be_read_leaves_the_others_read_with_a_note(tmp_path):
    """A multi-echo series (two slices at each position), a series with a localizer of another
    orientation, or one with an undecodable slice once stopped the whole folder, its good
    series lost even with --skip-unreadable; a folder of one bad series still raises."""
    _series(tmp_path, 4, uid="1.1", name="ct")
    for echo in (1, 2):
        _series(tmp_path, 3, uid="2.2", name=f"echo{echo}_")
    _series(tmp_path, 2, uid="3.3", name="ax")  # two orientations, neither a stray localizer
    _series(tmp_path, 2, uid="3.3", orientation=(0, 1, 0, 0, 0, -1), name="scout")
    _series(tmp_path, 2, uid="4.4", name="nopix")
    ds = pydicom.dcmread(tmp_path / "nopix1.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "nopix1.dcm", enforce_file_format=True)
    (vol,) = read_dicom_series(tmp_path)
    assert vol.name == f"{tmp_path.name}-1.1"
    assert vol.n_slices == 4
    (no_pixels, echo, scout) = vol.notes
    assert no_pixels.startswith(f"DICOM series {tmp_path.name}-4.4 left out, it cannot be read: ")
    assert no_pixels.endswith("nopix1.dcm: DICOM file without pixel data")
    assert echo.startswith(f"DICOM series {tmp_path.name}-2.2 left out")
    assert "lie at the same position" in echo
    assert "multi-echo" in echo
    assert scout.startswith(f"DICOM series {tmp_path.name}-3.3 left out")
    assert "scout0.dcm has another ImageOrientationPatient" in scout
    for k in range(4):
        (tmp_path / f"ct{k}.dcm").unlink()
    with pytest.raises(ImageReadError, match=r"nopix1\.dcm: DICOM file without pixel data"):
        read_dicom_series(tmp_path)  # no series can be read: the first error


def _enhanced(path, frames, **tags):
    write_dicom(path, np.zeros((16, 16)), sop_class="1.2.840.10008.5.1.4.1.1.2.1", **tags)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = frames
    ds.SharedFunctionalGroupsSequence = [pydicom.Dataset()]
    ds.PixelData = np.zeros((frames, 16, 16), np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_multi_frame_objects_are_named_as_not_supported(tmp_path):
    _series(tmp_path, 3, uid="9.9")
    _enhanced(tmp_path / "enhanced.dcm", 5, SeriesInstanceUID="8.8")
    _enhanced(tmp_path / "one_frame.dcm", 1, SeriesInstanceUID="8.9")
    (vol,) = read_dicom_series(tmp_path)
    assert vol.notes == (
        "2 multi-frame (enhanced) DICOM object(s) left out (enhanced.dcm, one_frame.dcm): they "
        "are not supported; convert them to single-frame slices or to NIfTI (e.g. with "
        "dcm2niix) to read them",
    )
    with pytest.raises(ImageReadError, match=r"enhanced\.dcm: multi-frame .* not supported"):
        read_dicom_series(tmp_path / "enhanced.dcm")
    with pytest.raises(ImageReadError, match=r"one_frame\.dcm: an enhanced DICOM object"):
        read_dicom_series(tmp_path / "one_frame.dcm")


def test_images_without_a_slice_place_beside_slices_are_left_out(tmp_path):
    """A grayscale dose sheet (Secondary Capture, no ImagePositionPatient) once became a volume
    of one slice, axis "unknown", scored with the scan."""
    _series(tmp_path, 4, uid="1.1")
    write_dicom(
        tmp_path / "dose.dcm",
        np.where(SERIES_RNG.random((16, 16)) > 0.7, 255, 0),
        SeriesInstanceUID="1.999",
        SeriesNumber=999,
    )
    (vol,) = read_dicom_series(tmp_path)
    assert vol.name == f"{tmp_path.name}-1.1"
    assert vol.notes == (
        "1 DICOM image(s) without ImagePositionPatient / ImageOrientationPatient left out "
        "(dose.dcm): not slices of a volume (a secondary capture, a dose sheet?)",
    )


def test_one_slice_series_of_one_orientation_get_a_note(tmp_path):
    for k in range(4):  # an anonymiser gave each file its own SeriesInstanceUID
        _series(tmp_path, 1, uid=f"5.{k}", z0=2.0 * k, name=f"f{k}_")
    volumes = read_dicom_series(tmp_path)
    assert len(volumes) == 4
    for vol in volumes:
        assert vol.notes == (
            "4 series of one slice each with the same orientation in this folder: if they are "
            "one scan, their SeriesInstanceUIDs were changed file by file (an anonymiser can do "
            "this); give the files one SeriesInstanceUID to read them as one volume",
        )


# Standard orientations of each plane (ImageOrientationPatient, LPS direction cosines).
_PLANES = {
    "axial": (1, 0, 0, 0, 1, 0),  # rows → posterior, columns → patient left
    "coronal": (1, 0, 0, 0, 0, -1),  # rows → inferior, columns → patient left
    "sagittal": (0, 1, 0, 0, 0, -1),  # rows → inferior, columns → posterior
}


@pytest.mark.parametrize("stored", ["standard", "prone", "columns flipped", "transposed"])
@pytest.mark.parametrize("plane", list(_PLANES))
def test_dicom_series_and_nifti_of_one_anatomy_give_the_same_slices(tmp_path, plane, stored):
    """The same RAS+ volume as NIfTI (identity affine) and as a DICOM series in each plane:
    same slices in the same order, same affine (coronal DICOM series once ran anterior →
    posterior, the NIfTI reader's coronal slices posterior → anterior). Stored otherwise than
    the plane's usual orientation (prone: rows and columns reversed; feet first: columns; or
    rows along the columns' axis), a series was read as stored: rotated or mirrored."""
    ras = SERIES_RNG.integers(100, 1000, (7, 6, 5)).astype(np.float32)  # (R, A, S), 1 mm
    nib.save(nib.Nifti1Image(ras, np.eye(4)), tmp_path / "ras.nii")
    flip = np.array([-1.0, -1.0, 1.0])  # LPS ↔ RAS
    u, v = np.array(_PLANES[plane][:3], float), np.array(_PLANES[plane][3:], float)
    u, v = {"standard": (u, v), "prone": (-u, -v), "columns flipped": (-u, v)}.get(stored, (v, u))
    w = np.cross(u, v)
    sizes = [ras.shape[int(np.argmax(np.abs(d)))] for d in (u, v, w)]
    # The RAS voxel of pixel (0, 0) of slice 0: the low end of each axis that runs up in RAS.
    start = np.zeros(3)
    for d, n in zip((u, v, w), sizes, strict=True):
        k = int(np.argmax(np.abs(d)))
        start[k] = 0 if (flip * d)[k] > 0 else n - 1
    folder = tmp_path / "dicom"
    folder.mkdir()
    names = SERIES_RNG.permutation(sizes[2])
    for s in range(sizes[2]):
        origin = flip * start + s * w  # LPS mm
        pixels = np.empty(sizes[1::-1])
        for r in range(sizes[1]):
            for c in range(sizes[0]):
                pixels[r, c] = ras[tuple((flip * (origin + c * u + r * v)).astype(int))]
        write_dicom_slice(
            folder / f"x{names[s]}.dcm",
            pixels + 1024,
            position=tuple(origin),
            orientation=(*u, *v),
            instance=sizes[2] - s,  # contradicts the positions, which win
            pixel_spacing=("1", "1"),
        )
    (dicom,) = read_dicom_series(folder, window=None, skip_empty=False)
    nifti = read_nifti(tmp_path / "ras.nii", axis=plane, window=None, skip_empty=False)
    assert dicom.axis == plane
    np.testing.assert_allclose(dicom.slices, nifti.slices, atol=1e-6)
    np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-5)


def test_nan_voxels_of_float_slices_are_noted_not_taken_for_padding(tmp_path):
    """Only padding pixels are left out of the note on non-finite voxels: NaN in float pixel
    data (which has no padding) is damage, and said."""
    from pydicom.uid import MRImageStorage

    rng = np.random.default_rng(0)
    for z in range(4):
        pixels = rng.uniform(10, 100, (16, 16)).astype(np.float32)
        pixels[0, :3] = np.nan
        place = {"ImagePositionPatient": [0, 0, z], "ImageOrientationPatient": [1, 0, 0, 0, 1, 0]}
        write_dicom(
            tmp_path / f"s{z}.dcm",
            pixels,
            sop_class=MRImageStorage,
            SeriesInstanceUID="1.2.3.4",
            PixelSpacing=[1, 1],
            **place,
        )
    (volume,) = read_dicom_series(tmp_path, skip_empty=False)
    assert "12 non-finite voxels (NaN / inf) treated as background" in volume.notes
