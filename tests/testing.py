"""Small helpers shared by several test files (importable through pytest's ``pythonpath``)."""

import builtins
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

# Two host devices: the data-parallel code paths run on CPU too.
TWO_DEVICES = "--xla_force_host_platform_device_count=2"
# The suite is mostly XLA compiling small programs, and XLA:CPU's earlier emitters compile
# them faster: 14 % off the tests' summed time, with the same results (the whole suite passes
# both ways, and `msde-jax evaluate` writes the same metrics: benchmarks/RESULTS.md, twenty-
# first session). MSDE_JAX_TEST_XLA_DEFAULTS=1 tests under XLA's defaults instead.
FAST_COMPILE = "--xla_cpu_use_fusion_emitters=false"


def xla_takes(flag: str) -> bool:
    """Whether this jaxlib knows the XLA ``flag``: XLA ends a process that names an unknown
    one, so a subprocess tries it."""
    env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
    code = "import jax; jax.numpy.zeros(1).block_until_ready()"
    return (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0
    )


def xla_flags() -> str:
    """``XLA_FLAGS`` with the suite's flags added (each once: the xdist workers find the
    controller's already there, so only the controller tries :data:`FAST_COMPILE`)."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    if TWO_DEVICES not in flags:
        flags.append(TWO_DEVICES)
    named = any(f.startswith(FAST_COMPILE.split("=")[0]) for f in flags)
    if os.environ.get("MSDE_JAX_TEST_XLA_DEFAULTS", "") != "1" and not named:
        if xla_takes(FAST_COMPILE):
            flags.append(FAST_COMPILE)
        else:
            print(
                f"tests: this jaxlib does not take {FAST_COMPILE}; XLA's defaults", file=sys.stderr
            )
    return " ".join(flags)


def run_python(*args, env, timeout=300):
    """Run ``python *args`` in a fresh process with ``env``; assert it succeeded (its last
    3,000 characters of stderr as the message) and return the ``CompletedProcess``."""
    result = subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


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


def clustered(seed, n_images, n_abnormal=0, n_odd=2, p=16, c=8):
    """Images whose patches lie on 3 tight clusters; abnormal ones have ``n_odd`` patches far
    from all of them."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, c) * 5.0
    x = centres[rng.integers(0, 3, (n_images, p))] + rng.normal(scale=0.3, size=(n_images, p, c))
    odd = rng.normal(size=(n_abnormal, n_odd, c))
    odd = 4.0 * odd / np.linalg.norm(odd, axis=-1, keepdims=True) - 2.5  # away from the centres
    x[n_images - n_abnormal :, :n_odd] = odd
    return x.astype(np.float32)


# The real datasets live beside the checkout (../shared/data), as in the project's own CI.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# Set by .ci/run: there the real data must be present, so its absence fails instead of skipping.
REQUIRE_DATA = "MSDE_JAX_REQUIRE_DATA"


def shared_data(name: str):
    """The path of a real dataset's ``.npz`` beside the checkout, or skip the test with why.

    A fresh clone has no ``../shared``: its tests that need the real data are skipped with this
    reason. CI sets ``MSDE_JAX_REQUIRE_DATA=1`` (``.ci/run``), where a missing file fails.
    """
    import pytest

    path = SHARED_DATA / name / f"{name}.npz"
    if not path.exists():
        message = f"real test data not found at {path} (the dataset lives in ../shared/data)"
        if os.environ.get(REQUIRE_DATA):
            pytest.fail(f"{message}; {REQUIRE_DATA} is set, so it must be there")
        pytest.skip(message)
    return path


def tissue(rng, shape, *, lesion=False):
    """A (slices, H, W) int16 volume in CT-like units: a textured disc of tissue on a zero
    background in every slice; with ``lesion``, a bright square in the middle slices."""
    n, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.4 * min(h, w)) ** 2
    data = np.where(disc, rng.integers(300, 500, size=shape), 0).astype(np.int16)
    if lesion:
        s = slice(h // 2 - 4, h // 2 + 4)
        data[n // 3 : n - n // 3, s, s] = 1500
    return data


def write_nifti(path, volume):
    """Save a (slices, H, W) volume as NIfTI so that its axial slices are ``volume``'s slices
    (RAS+ identity affine: voxel (i, j, k) = (column reversed, row reversed, slice))."""
    import nibabel as nib

    data = np.ascontiguousarray(volume[:, ::-1, ::-1].transpose(2, 1, 0))
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def write_dicom_series(
    folder, volume, *, uid="1.2.826.0.1.3680043.8.498.7", spacing=2.5, coronal=False
):
    """Save a (slices, H, W) volume as an axial CT series: one file per slice, stored values
    HU + 1024 (rescale intercept −1024), ImagePositionPatient z = spacing · slice; with
    ``coronal``, as coronal slices (rows along x, columns down z, stacked along y)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, pixels in enumerate(volume):
        write_dicom_slice(
            folder / f"slice{n:03d}.dcm",
            np.asarray(pixels, np.int64) + 1024,
            series=uid,
            position=(0, spacing * n, 0) if coronal else (0, 0, spacing * n),
            orientation=(1, 0, 0, 0, 0, -1) if coronal else (1, 0, 0, 0, 1, 0),
            instance=n + 1,
            pixel_spacing=("0.8", "0.8"),
        )
    return folder


def write_dicom(path: Path, pixels: np.ndarray, *, sop_class: str | None = None, **attrs) -> Path:
    """Save a 2-D uint16 MONOCHROME2 image as a DICOM file (Secondary Capture unless
    ``sop_class`` is given), with the data elements ``attrs`` set by keyword; float32
    ``pixels`` are stored as FloatPixelData."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    sop_class = sop_class or SecondaryCaptureImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if pixels.dtype == np.float32:
        ds.BitsAllocated = 32
        ds.FloatPixelData = pixels.tobytes()
    else:
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    series: str | None = "1.2.826.0.1.3680043.8.498.1",
    position: tuple[float, float, float] | None = None,
    orientation: tuple[float, ...] | None = (1, 0, 0, 0, 1, 0),
    instance: int | None = None,
    pixel_spacing: tuple[str, str] = ("0.8", "0.7"),
    **attrs,
) -> Path:
    """Save one CT slice (stored uint16 values, rescale intercept −1024) as DICOM
    (:func:`write_dicom`); ``series``, ``position``, ``orientation`` or ``instance`` ``None``
    leave that tag out."""
    from pydicom.uid import CTImageStorage

    tags = {"Modality": "CT", "PixelSpacing": list(pixel_spacing)}
    tags["RescaleSlope"], tags["RescaleIntercept"] = 1, -1024
    if series is not None:
        tags["SeriesInstanceUID"] = series
    if position is not None:
        tags["ImagePositionPatient"] = [f"{v:.6g}" for v in position]
    if orientation is not None and position is not None:
        tags["ImageOrientationPatient"] = [f"{v:.6g}" for v in orientation]
    if instance is not None:
        tags["InstanceNumber"] = instance
    return write_dicom(path, pixels, sop_class=CTImageStorage, **{**tags, **attrs})


# ---------------------------------------------------------------------- protobuf (ONNX) encoder
def protobuf_varint(v: int) -> bytes:
    """A protobuf varint (for the ONNX files the backbone tests write)."""
    v &= (1 << 64) - 1  # negative int64 as protobuf writes it (ten bytes)
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def protobuf_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return protobuf_varint(number << 3 | 2) + protobuf_varint(len(payload)) + payload
