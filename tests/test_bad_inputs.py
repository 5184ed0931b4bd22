"""Damaged files and bad input end in one clear error that names the file and the fault."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from msde_jax import MSDEDetector, load_detector
from msde_jax.cli import main
from msde_jax.io.images import ImageReadError, to_float


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    x = np.random.default_rng(0).normal(size=(40, 6))
    MSDEDetector(mode="none", n_components=4).fit(x).save(path)
    return path


def _truncated(model, tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    return path


def _flipped(model, tmp_path):
    data = bytearray(model.read_bytes())
    with zipfile.ZipFile(model) as z:  # the last byte of the largest array's data
        info = max(z.infolist(), key=lambda i: i.file_size)
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.compress_size - 1] ^= 0xFF
    path = tmp_path / "model.npz"
    path.write_bytes(bytes(data))
    return path


def _renamed_png(model, tmp_path):
    path = tmp_path / "model.npz"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path, format="PNG")
    return path


def _edited_array(model, tmp_path):
    # A valid zip whose array no longer matches the checksum saved beside it.
    with np.load(model) as z:
        files = {name: z[name] for name in z.files}
    name = next(n for n in files if n.startswith("state."))
    files[name] = files[name] + 1e-3
    path = tmp_path / "model.npz"
    np.savez(path, **files)
    return path


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncated, "is not a saved MSDEDetector or is damaged"),
        (_flipped, "damaged"),
        (_renamed_png, "is not a saved MSDEDetector or is damaged"),
        (_edited_array, "do not match the checksum"),
    ],
    ids=["truncated", "flipped-byte", "renamed-png", "edited-array"],
)
def test_damaged_model_files(model, tmp_path, capsys, damage, message):
    path = damage(model, tmp_path)
    with pytest.raises(ValueError, match=message) as err:
        MSDEDetector.load(path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="damaged|not a saved"):
        load_detector(path)
    assert main(["score", str(path), str(path)]) == 2
    out = capsys.readouterr().err
    assert out.startswith("error: ")
    assert "Traceback" not in out


def test_the_checksum_is_saved_and_not_part_of_the_loaded_metadata(model):
    with zipfile.ZipFile(model) as z:
        meta = json.loads(str(np.load(z.open("meta.npy"))))
    assert len(meta["checksum"]) == 64
    assert "checksum" not in load_detector(model).to_arrays()[0]


def test_decompression_bomb_is_refused_with_the_file_name(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    # Pillow refuses images over twice MAX_IMAGE_PIXELS before decoding them.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageReadError, match=r"huge\.png: refused, too many pixels"):
        to_float(path)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros((0, 5)), r"X has no samples \(shape \(0, 5\)\): pass at least one row"),
        (np.zeros((5, 0)), r"X has no features \(shape \(5, 0\)\)"),
    ],
    ids=["no-rows", "no-columns"],
)
def test_empty_input_says_what_to_pass(x, message):
    with pytest.raises(ValueError, match=message):
        MSDEDetector().fit(x)


def _edit(fn):
    """A damage that edits the metadata or arrays and re-saves with a fresh checksum: a
    deliberate edit, which the checksum cannot see, must still be refused by its content."""

    def damage(model, tmp_path):
        from msde_jax._detector_io import arrays_checksum, read_npz

        meta, arrays = read_npz(model)  # meta keeps its format version, less the checksum
        fn(meta, arrays)
        path = tmp_path / "edited.npz"
        meta = {**meta, "checksum": arrays_checksum(arrays)}
        np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
        return path

    return damage


EDITS = {
    "unknown-param": (lambda m, a: m["params"].update(foo=1), "unknown parameters \\['foo'\\]"),
    "no-params": (lambda m, a: m.pop("params"), "'params' is not a JSON object"),
    "threshold-str": (lambda m, a: m.update(threshold_="x"), "'threshold_' must be a number"),
    "negative-dim": (lambda m, a: m.update(n_features_in_=-3), "must be a positive integer"),
    "metadata-str": (lambda m, a: m.update(metadata="x"), "'metadata' is not an object"),
    "missing-scalar": (lambda m, a: m.pop("n_iter_"), "KeyError"),
    "extra-array": (lambda m, a: a.update(extra=np.zeros(3)), "unexpected arrays \\['extra'\\]"),
    "int-array": (
        lambda m, a: a.update({"state.center": a["state.center"].astype(np.int64)}),
        "'state.center' is int64",
    ),
    "text-array": (
        lambda m, a: a.update({"state.center": np.array(["a"] * 6)}),
        "'state.center' is <U1",
    ),
    "wrong-shape": (
        lambda m, a: a.update({"state.train": a["state.train"][:, :2]}),
        "'state.train' has shape \\(40, 2\\), which disagrees",
    ),
    "newer-version": (lambda m, a: m.update(format_version=99), "format version 99"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_edited_model_files(model, tmp_path, capsys, case):
    edit, message = EDITS[case]
    path = _edit(edit)(model, tmp_path)
    for loader in (MSDEDetector.load, load_detector):
        with pytest.raises(ValueError, match=message) as err:
            loader(path)
        assert str(path) in str(err.value)
    assert main(["score", str(path), str(path)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_edited_bank_files(tmp_path):
    from msde_jax import PatchBankDetector

    x = np.random.default_rng(1).normal(size=(20, 3, 3, 4)).astype(np.float32)
    path = tmp_path / "bank.npz"
    PatchBankDetector(size=30, n_folds=2).fit(x).save(path)
    cases = {
        "indices as floats": (
            lambda m, a: a.update({"state.bank.indices": a["state.bank.indices"] * 1.0}),
            "'state.bank.indices' is float64",
        ),
        "bank of other width": (
            lambda m, a: a.update({"state.bank.bank": a["state.bank.bank"][:, :2]}),
            "disagrees with the other arrays \\(c = 4\\)",
        ),
        "density of other size": (
            lambda m, a: a.update({"state.bank.density": a["state.bank.density"][:5]}),
            "'state.bank.density' has shape \\(5,\\)",
        ),
    }
    for what, (edit, message) in cases.items():
        edited = _edit(edit)(path, tmp_path)
        with pytest.raises(ValueError, match=message):
            load_detector(edited)
        assert what


def test_patch_features_that_would_overflow_are_refused():
    from msde_jax import PatchBankDetector

    x = np.random.default_rng(0).normal(size=(20, 4, 5)).astype(np.float32)
    with pytest.raises(ValueError, match="too large for float32 patch distances"):
        PatchBankDetector(size=40, n_folds=2).fit(x * 1e30)
    fitted = PatchBankDetector(size=40, n_folds=2).fit(x * 1e15)  # large but in range
    assert np.isfinite(fitted.score_samples(x[:3] * 1e15)).all()
    assert np.isfinite(fitted.threshold_)


_RNG = np.random.default_rng(3)
DEGENERATE = {
    "constant-feature": np.c_[_RNG.normal(size=(60, 4)), np.ones(60)],
    "identical-rows": np.repeat(_RNG.normal(size=(1, 5)), 60, 0),
    "huge-values": _RNG.normal(size=(60, 5)) * 1e30,
    "integers": _RNG.integers(0, 5, size=(60, 5)),
}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_degenerate_features_give_finite_scores(case):
    # The documented recoveries (a constant feature's scale set to 1, as StandardScaler; the
    # default covariance's ridge of 1e-4·I) keep every score and the threshold finite.
    from msde_jax import PatchBankDetector

    x = DEGENERATE[case]
    msde = MSDEDetector(k=10).fit(x)
    assert np.isfinite(msde.score_samples(x[:5])).all()
    assert np.isfinite(msde.threshold_)
    if case != "huge-values":  # refused for the bank: see the overflow test
        patches = np.repeat(np.asarray(x, np.float32)[:, None], 4, axis=1)
        bank = PatchBankDetector(size=100, n_folds=2).fit(patches)
        assert np.isfinite(bank.score_samples(patches[:5])).all()


_DETERMINISM = """
import hashlib, sys
import numpy as np
from msde_jax import MSDEDetector, PatchBankDetector
x = np.random.default_rng(7).normal(size=(60, 5)).astype(np.float32)
s = MSDEDetector(k=10).fit(x).score_samples(x[:9])
p = np.repeat(x[:, None], 4, axis=1)
b = PatchBankDetector(size=50, n_folds=2).fit(p).score_samples(p[:9])
sys.stdout.write(hashlib.sha256(s.tobytes() + b.tobytes()).hexdigest())
"""


def test_scores_are_bit_identical_across_processes(capsys):
    import subprocess
    import sys

    fresh = subprocess.run(
        [sys.executable, "-c", _DETERMINISM], check=True, capture_output=True, text=True
    ).stdout
    exec(compile(_DETERMINISM, "<determinism>", "exec"), {})  # the same code in this process
    here = capsys.readouterr().out
    assert len(fresh) == 64
    assert fresh == here


# ---------------------------------------------------------------------- fuzzing
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40)
@given(data=st.data())
def test_fuzzed_model_files_load_identically_or_raise_value_error(model, tmp_path_factory, data):
    raw = bytearray(model.read_bytes())
    n_edits = data.draw(st.integers(1, 4))
    for _ in range(n_edits):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    path = tmp_path_factory.mktemp("fuzz") / "m.npz"
    path.write_bytes(bytes(raw))
    x = np.random.default_rng(0).normal(size=(5, 6))
    try:
        loaded, error = load_detector(path), ""
    except ValueError as err:
        loaded, error = None, str(err)
    if loaded is None:
        assert str(path) in error
        return
    # Whatever survives (an edit in a part nothing reads) scores as the original.
    expected = MSDEDetector.load(model).score_samples(x)
    np.testing.assert_array_equal(loaded.score_samples(x), expected)


@settings(max_examples=40)
@given(payload=st.binary(max_size=300), suffix=st.sampled_from([".png", ".jpg", ".tif", ".dcm"]))
def test_fuzzed_image_files_read_or_raise_image_read_error(tmp_path_factory, payload, suffix):
    path = tmp_path_factory.mktemp("img") / f"x{suffix}"
    path.write_bytes(payload)
    try:
        image, error = to_float(path), ""
    except ImageReadError as err:
        image, error = None, str(err)
    if image is None:
        assert str(path) in error
        return
    assert image.ndim == 3
    assert np.isfinite(image).all()


@settings(max_examples=30)
@given(
    rows=st.integers(0, 4),
    cols=st.integers(0, 4),
    dtype=st.sampled_from([np.float32, np.float64, np.int32, np.uint8, bool, object, "U1"]),
    special=st.sampled_from([None, np.nan, np.inf, -np.inf]),
)
def test_fuzzed_estimator_input_scores_or_raises_value_error(rows, cols, dtype, special):
    # A fitted detector fed anything: finite scores of the right length, or a ValueError.
    fitted = _fitted_for_fuzzing()
    x = np.zeros((rows, cols)).astype(dtype) if dtype != "U1" else np.full((rows, cols), "a")
    if special is not None and rows and cols and np.dtype(x.dtype).kind == "f":
        x[0, 0] = special
    try:
        scores = fitted.score_samples(x)
    except ValueError:
        return
    assert scores.shape == (rows,)
    assert np.isfinite(scores).all()


_FITTED = []


def _fitted_for_fuzzing():
    if not _FITTED:
        x = np.random.default_rng(5).normal(size=(40, 4))
        _FITTED.append(MSDEDetector(mode="none", n_components=3).fit(x))
    return _FITTED[0]
