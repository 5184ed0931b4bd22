"""Damaged files and bad input end in one clear error that names the file and the fault."""

import json
import re
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
        (_flipped, "Bad CRC-32"),
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
        (np.ones((60, 3)) + 1j, r"X must hold real numbers, got dtype complex128"),
        (np.full((60, 3), 1e300), r"X has values up to 1e\+300, beyond float32's range"),
    ],
    ids=["no-rows", "no-columns", "complex", "beyond-float32"],
)
def test_empty_or_unusable_input_says_what_to_pass(x, message):
    with pytest.raises(ValueError, match=message):
        MSDEDetector().fit(x)


def _edit(fn):
    """A damage that edits the metadata or arrays and re-saves with a fresh checksum: a
    deliberate edit, which the checksum cannot see, must still be refused by its content."""

    def damage(model, tmp_path):
        from msde_jax.detectors.persistence import arrays_checksum, read_npz

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
    "threshold-str": (lambda m, a: m.update(threshold_="x"), "'threshold_' must be a finite"),
    "threshold-nan": (lambda m, a: m.update(threshold_=float("nan")), "must be a finite number"),
    "nan-array": (
        lambda m, a: a.update({"state.center": a["state.center"] * np.nan}),
        "'state.center' holds NaN or infinite values",
    ),
    "float16-array": (
        lambda m, a: a.update({"state.train": a["state.train"].astype(np.float16)}),
        "'state.train' is float16; saved detectors hold float32 or float64",
    ),
    "negative-dim": (lambda m, a: m.update(n_features_in_=-3), "must be a positive integer"),
    "metadata-str": (lambda m, a: m.update(metadata="x"), "'metadata' is not an object"),
    "missing-scalar": (lambda m, a: m.pop("n_iter_"), r"KeyError\('n_iter_'\)"),
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
    "zero-scale": (  # loaded, then every score NaN and predict all normal
        lambda m, a: a.update({"state.scale": a["state.scale"] * 0}),
        "'state.scale' holds values ≤ 0",
    ),
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


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m, a: a.pop("state.train_keys"), "the array 'state.train_keys' is missing"),
        (
            lambda m, a: a.update({"state.train_keys": a["state.train_keys"][:, :1].copy()}),
            "'state.train_keys' has shape \\(40, 1\\), which disagrees",
        ),
        (
            lambda m, a: a.update({"state.train_keys": a["state.train_keys"].astype(np.uint8)}),
            "'state.train_keys' is uint8",
        ),
    ],
    ids=["missing", "one-column", "uint8"],
)
def test_edited_content_keys_of_a_transductive_model(tmp_path, capsys, edit, message):
    """The joint shift orders its blocks by the training rows' keys: a file without them, or
    with keys of another shape or width, loaded and then failed while scoring, with a
    TypeError (a traceback from `msde-jax score`) or a bare NumPy error."""
    model = tmp_path / "transductive.npz"
    x = np.random.default_rng(0).normal(size=(40, 6))
    MSDEDetector(mode="transductive", k=5, n_neighbors=5, n_components=4).fit(x).save(model)
    path = _edit(edit)(model, tmp_path)
    with pytest.raises(ValueError, match=message) as err:
        load_detector(path)
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
        "NaN in the bank": (
            lambda m, a: a["state.bank.bank"].__setitem__((0, 0), np.nan),
            "'state.bank.bank' holds NaN or infinite values",
        ),
        "float16 bank": (
            lambda m, a: a.update({"state.bank.bank": a["state.bank.bank"].astype(np.float16)}),
            "'state.bank.bank' is float16",
        ),
        "empty bank": (
            lambda m, a: a.update(
                {
                    k: a[k][:0]
                    for k in a
                    if k.startswith(("state.bank.", "state.position.bank")) and a[k].ndim
                }  # fmt: skip
            ),
            "a bank of 0 rows",
        ),
        "places of another size": (
            lambda m, a: a.update({"state.position.bank": a["state.position.bank"][:5]}),
            "'state.position.bank' has shape \\(5, 2\\)",
        ),
        "indices past the training patches": (
            lambda m, a: a.update({"state.bank.indices": a["state.bank.indices"] + 10**6}),
            "indices in \\[.*\\], where the training images had 180 patches",
        ),
        "no patches": (lambda m, a: m.update(n_patches_=0), "'n_patches_' must be a positive"),
        "infinite threshold": (lambda m, a: m.update(threshold_=float("inf")), "finite number"),
    }
    for what, (edit, message) in cases.items():
        edited = _edit(edit)(path, tmp_path)
        with pytest.raises(ValueError, match=message) as err:
            load_detector(edited)
        assert str(edited) in str(err.value), what


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
from hypothesis import example, given, settings  # noqa: E402
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


_PIXELS = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)  # every file below holds these


def _image_file(suffix: str) -> bytes:
    """A valid 8 × 8 grey image of ``_PIXELS`` in the format of ``suffix``."""
    import io

    if suffix == ".dcm":
        import tempfile
        from pathlib import Path

        from testing import write_dicom

        with tempfile.TemporaryDirectory() as tmp:
            path = write_dicom(Path(tmp) / "x.dcm", _PIXELS.astype(np.uint16) * 257)
            return path.read_bytes()
    buffer = io.BytesIO()
    options = {"quality": 100} if suffix == ".jpg" else {}
    file_format = {".png": "PNG", ".jpg": "JPEG", ".tif": "TIFF"}[suffix]
    Image.fromarray(_PIXELS).save(buffer, format=file_format, **options)
    return buffer.getvalue()


_IMAGE_FILES = {suffix: _image_file(suffix) for suffix in (".png", ".jpg", ".tif", ".dcm")}


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow's notes on corrupt metadata
@settings(max_examples=40)
@given(
    suffix=st.sampled_from(sorted(_IMAGE_FILES)),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=4),
    keep=st.one_of(st.none(), st.floats(0, 1)),
)
@example(suffix=".png", edits=[], keep=None)
@example(suffix=".jpg", edits=[], keep=None)
@example(suffix=".tif", edits=[], keep=None)
@example(suffix=".dcm", edits=[], keep=None)
def test_fuzzed_image_files_read_or_raise_image_read_error(tmp_path_factory, suffix, edits, keep):
    """Valid files with a few bytes changed or cut short: an image in [0, 1], or an
    ImageReadError naming the file; the untouched files read as their pixels."""
    raw = bytearray(_IMAGE_FILES[suffix])
    for where, value in edits:
        raw[int(where * len(raw))] = value
    if keep is not None:
        raw = raw[: int(keep * len(raw))]
    path = tmp_path_factory.mktemp("img") / f"x{suffix}"
    path.write_bytes(bytes(raw))
    try:
        image, error = to_float(path), ""
    except ImageReadError as err:
        image, error = None, str(err)
    if image is None:
        assert str(path) in error
        return
    assert image.ndim == 3
    assert image.shape[-1] in (1, 3)
    assert image.dtype == np.float32
    assert np.isfinite(image).all()
    assert image.min() >= 0
    assert image.max() <= 1
    if not edits and keep is None:
        assert image.shape[:2] == _PIXELS.shape
        # a DICOM without a window is scaled by its minimum and maximum; JPEG is lossy
        want = _PIXELS / (_PIXELS.max() if suffix == ".dcm" else 255)
        atol = 3 / 255 if suffix == ".jpg" else 1e-6
        np.testing.assert_allclose(image.mean(axis=-1), want, atol=atol)


@settings(max_examples=30)
@given(
    rows=st.integers(0, 4),
    cols=st.integers(0, 4),
    dtype=st.sampled_from([np.float32, np.float64, np.int32, np.uint8, bool, object, "U1"]),
    special=st.sampled_from([None, np.nan, np.inf, -np.inf]),
)
@example(rows=3, cols=4, dtype=np.float32, special=None)
@example(rows=2, cols=4, dtype=np.uint8, special=None)
@example(rows=1, cols=4, dtype=bool, special=np.nan)  # nothing to inject into booleans
def test_fuzzed_estimator_input_scores_or_raises_value_error(rows, cols, dtype, special):
    """A fitted detector (4 features) fed anything: finite scores of the right length where
    the rows are numbers of its 4 features, as their float64 copy scores; else a ValueError."""
    fitted = _fitted_for_fuzzing()
    x = np.zeros((rows, cols)).astype(dtype) if dtype != "U1" else np.full((rows, cols), "a")
    injected = special is not None and rows > 0 and cols > 0 and x.dtype.kind == "f"
    if injected:
        x[0, 0] = special
    if not (rows > 0 and cols == 4 and x.dtype.kind in "fiub" and not injected):
        what = "no samples|no features|must hold numbers|features but the detector|NaN or inf"
        with pytest.raises(ValueError, match=what):
            fitted.score_samples(x)
        return
    scores = fitted.score_samples(x)
    assert scores.shape == (rows,)
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores, fitted.score_samples(x.astype(np.float64)), rtol=1e-6)


_FITTED = []


def _fitted_for_fuzzing():
    if not _FITTED:
        x = np.random.default_rng(5).normal(size=(40, 4))
        _FITTED.append(MSDEDetector(mode="none", n_components=3).fit(x))
    return _FITTED[0]


# ---------------------------------------------------------------------- fused detector files
@pytest.fixture(scope="module")
def fused_model(tmp_path_factory):
    from msde_jax import FusedDetector

    rng = np.random.default_rng(2)
    params = {"mode": "none", "n_folds": 3, "n_components": 2}
    components = {"a": MSDEDetector(**params), "b": MSDEDetector(**params)}
    x = {"a": rng.normal(size=(30, 4)), "b": rng.normal(size=(30, 3))}
    path = tmp_path_factory.mktemp("fused") / "fused.npz"
    FusedDetector(components).fit(x).save(path)
    return path


def _components_meta(fn):
    return lambda m, a: fn(m["components"])


FUSED_EDITS = {
    "mean-of-other-length": (
        lambda m, a: a.update({"fusion.mean": a["fusion.mean"][:1]}),
        "'fusion.mean' is float64 of shape \\(1,\\), expected float of shape \\(2,\\), one value",
    ),
    "mean-as-text": (
        lambda m, a: a.update({"fusion.mean": np.array(["x", "y"])}),
        "'fusion.mean' is <U1",
    ),
    "nan-mean": (
        lambda m, a: a.update({"fusion.mean": a["fusion.mean"] * np.nan}),
        "'fusion.mean' holds NaN or infinite values",
    ),
    "zero-std": (
        lambda m, a: a.update({"fusion.std": a["fusion.std"] * 0}),
        "'fusion.std' must be positive",
    ),
    "negative-std": (
        lambda m, a: a.update({"fusion.std": -a["fusion.std"]}),
        "'fusion.std' must be positive",
    ),
    "component-not-listed": (
        _components_meta(lambda c: c.pop()),
        "arrays of components \\['b'\\], which its metadata does not list",
    ),
    "component-arrays-missing": (
        lambda m, a: [a.pop(k) for k in list(a) if k.startswith("b/")],
        "component 'b' of the saved FusedDetector: not a saved MSDEDetector",
    ),
    "component-listed-twice": (
        _components_meta(lambda c: c.append(c[0])),
        "components \\['a'\\] listed twice",
    ),
    "no-components": (_components_meta(lambda c: c.clear()), "no list of \\{name, meta\\}"),
    "name-with-slash": (
        _components_meta(lambda c: c[0].update(name="a/x")),
        "component name 'a/x'",
    ),
    "extra-array": (lambda m, a: a.update(extra=np.zeros(2)), "unexpected arrays \\['extra'\\]"),
    "decision-scores-as-text": (
        lambda m, a: a.update(decision_scores_=np.array(["x"] * 30)),
        "'decision_scores_' is <U1",
    ),
    "decision-scores-of-other-length": (
        lambda m, a: a.update(decision_scores_=a["decision_scores_"][:3]),
        "different shapes \\[\\(3,\\), \\(30,\\)\\]",
    ),
    "nan-threshold": (lambda m, a: m.update(threshold_=float("nan")), "must be a finite number"),
    "contamination": (
        lambda m, a: m["params"].update(contamination=5),
        "contamination must be in \\(0, 0.5\\], got 5",
    ),
    "component-nan-array": (
        lambda m, a: a.update({"b/state.center": a["b/state.center"] * np.nan}),
        "component 'b' .*'state.center' holds NaN",
    ),
}


@pytest.mark.parametrize("case", sorted(FUSED_EDITS))
def test_edited_fused_detector_files(fused_model, tmp_path, case):
    from msde_jax import FusedDetector

    edit, message = FUSED_EDITS[case]
    path = _edit(edit)(fused_model, tmp_path)
    for loader in (FusedDetector.load, load_detector):
        with pytest.raises(ValueError, match=message) as err:
            loader(path)
        assert str(path) in str(err.value)


def test_truncated_fused_detector_file(fused_model, tmp_path):
    from msde_jax import FusedDetector

    path = _truncated(fused_model, tmp_path)
    with pytest.raises(ValueError, match="is not a saved FusedDetector or is damaged"):
        FusedDetector.load(path)


def test_fused_detector_input_errors_name_the_component(fused_model):
    from msde_jax import FusedDetector

    fused = load_detector(fused_model)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="component 'b': X has 2 features but .* fitted on 3"):
        fused.score_samples({"a": rng.normal(size=(2, 4)), "b": rng.normal(size=(2, 2))})
    with pytest.raises(ValueError, match="exactly one component that scores patches"):
        fused.score_maps({"a": rng.normal(size=(2, 4)), "b": rng.normal(size=(2, 3))})
    params = {"mode": "none", "n_folds": 3, "n_components": 2}
    with pytest.raises(ValueError, match="component 'a': Fitting needs at least 2"):
        FusedDetector({"a": MSDEDetector(**params)}).fit({"a": rng.normal(size=(1, 4))})
    with pytest.raises(TypeError, match="components must be a mapping"):
        FusedDetector([MSDEDetector(**params)]).fit({"a": rng.normal(size=(9, 4))})
    with pytest.raises(TypeError, match="component 'a' \\(int\\) is not a detector"):
        FusedDetector({"a": 3}).fit({"a": rng.normal(size=(9, 4))})

    class Facade:  # fit and score_samples, but no state_ for fusion to read, nor save
        threshold = "cross_fit"

        def fit(self, X, y=None):
            return self

        def score_samples(self, X):
            return np.zeros(len(X))

    with pytest.raises(TypeError, match="component 'a' \\(Facade\\) is not a detector"):
        FusedDetector({"a": Facade()}).fit({"a": rng.normal(size=(9, 4))})
    # one sample as a vector, ragged lists: named, not read as rows of features
    with pytest.raises(ValueError, match=r"component 'a': .* got shape \(4,\) \(one sample"):
        fused.score_samples({"a": rng.normal(size=4), "b": rng.normal(size=3)})
    with pytest.raises(ValueError, match="component 'a': features must be an array"):
        fused.score_samples({"a": [[1.0, 2.0], [3.0]], "b": rng.normal(size=(2, 3))})
    with pytest.raises(ValueError, match="contamination must be in"):
        FusedDetector({"a": MSDEDetector(**params)}, contamination="x").fit({"a": np.zeros((9, 4))})


# ---------------------------------------------------------------------- single samples, dtypes
def test_too_few_samples_for_every_detector_say_what_to_pass():
    from msde_jax import FusedDetector, PatchBankDetector

    x = np.random.default_rng(0).normal(size=(1, 4))
    with pytest.raises(ValueError, match="at least 2 training samples"):
        MSDEDetector(mode="none", n_components=2).fit(x)
    with pytest.raises(ValueError, match="needs at least n_folds=2 training images"):
        PatchBankDetector(size=4, n_folds=2).fit(x[:, None])
    with pytest.raises(ValueError, match="component 'a': .*at least 2 training samples"):
        FusedDetector({"a": MSDEDetector(mode="none", n_components=2)}).fit({"a": x})


def test_patch_features_of_any_real_dtype_and_out_of_range_float64():
    from msde_jax import PatchBankDetector

    x = np.random.default_rng(4).normal(size=(8, 4, 3))
    for cast in (np.float64, lambda a: (a * 10).astype(np.int64), lambda a: a > 0):
        patches = cast(x)
        fitted = PatchBankDetector(size=20, n_folds=2).fit(patches)
        assert np.isfinite(fitted.score_samples(patches[:2])).all()
        assert np.isfinite(fitted.threshold_)
    # Finite float64 values beyond float32's range: "too large", not "NaN or infinite".
    with pytest.raises(ValueError, match="too large for float32 patch distances"):
        PatchBankDetector(size=20, n_folds=2).fit(x * 1e300)
    with pytest.raises(ValueError, match="must hold real numbers, got dtype complex128"):
        PatchBankDetector(size=20, n_folds=2).fit(x + 1j)


def test_bfloat16_features_are_numbers_on_the_host_and_on_the_device():
    """NumPy's issubdtype does not know ml_dtypes' bfloat16 as a number: a bfloat16 NumPy
    array was refused ("must hold numbers") by fit and scoring, and a jax.Array by fit, while
    scoring the jax.Array worked (helper review). Both now score as their float32 values."""
    import jax.numpy as jnp
    import ml_dtypes

    from msde_jax import PatchBankDetector

    rng = np.random.default_rng(5)
    samples = rng.normal(size=(30, 4)).astype(ml_dtypes.bfloat16)
    patches = rng.normal(size=(8, 4, 3)).astype(ml_dtypes.bfloat16)
    for detector, x in (
        (MSDEDetector(mode="none", k=5, n_folds=2), samples),
        (PatchBankDetector(size=20, n_folds=2), patches),
    ):
        want = detector.fit(x.astype(np.float32)).score_samples(x[:3].astype(np.float32))
        for passed in (x, jnp.asarray(x)):
            np.testing.assert_array_equal(detector.fit(passed).score_samples(passed[:3]), want)


@pytest.mark.parametrize(
    ("values", "kind", "dtype"),
    [
        (np.full((4, 3), 1e39), "samples", "float32"),  # beyond float32: refused
        (np.full((4, 3), 1e300), "samples", "float64"),  # within float64: kept
        (np.full((4, 2, 2, 3), 1e300), "patches", "float32"),  # squared distances overflow
        (np.array([[np.iinfo(np.int64).min, 1]]), "samples", "float64"),  # |int64 min|
        (np.ones((2, 3), bool), "samples", "float32"),
    ],
)
def test_a_device_array_is_checked_as_its_host_copy(x64, values, kind, dtype):
    """The checks of a ``jax.Array`` run on its device and end as those of the same values on
    the host: the largest magnitude in float64, not cast to float32 first."""
    import jax

    from msde_jax.detectors.config import check_features

    def outcome(x):
        try:
            return np.asarray(check_features(x, kind=kind, dtype=dtype, on_device=True))
        except ValueError as err:
            return str(err)

    host, device = outcome(values), outcome(jax.device_put(values))
    if isinstance(host, str):
        assert device == host
    else:
        np.testing.assert_array_equal(device, host)


# ---------------------------------------------------------------------- maps
def test_maps_of_absurd_sizes_are_refused_and_huge_blurs_stay_finite():
    from msde_jax import PatchBankDetector
    from msde_jax.core.anomaly_maps import gaussian_blur

    x = np.random.default_rng(5).normal(size=(6, 3, 3, 2)).astype(np.float32)
    bank = PatchBankDetector(size=20, n_folds=2).fit(x)
    # The side is bounded by the memory free, not by a fixed number (issue 24): 10⁷ px maps
    # would take 1.6 PB; refused before anything is allocated, saying how far to lower it.
    absurd = r"anomaly maps of 1 image at 10000000 × 10000000 needs about .* PiB .* lower size"
    with pytest.raises(ValueError, match=absurd):
        bank.score_maps(x[:1], size=10**7)
    with pytest.raises(ValueError, match="size must be a positive int, got 0"):
        bank.score_maps(x[:1], size=0)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        bank.score_maps(x[:1], size=8, sigma="wide")
    wrong_shapes = {  # (positions: the grid's places count, so the grid is checked first)
        "fitted with position=1.0 on a 3 × 3 patch grid.*1 × 9": x[:1].reshape(1, 1, 9, 2),
        "must be patch features of shape": x[0, 0],
        "has 1 channels per patch but the detector was fitted on 2": x[:1, ..., :1],
        "has 4 patches per image but the detector was fitted on 9": x[:1, :2, :2],
    }
    for message, patches in wrong_shapes.items():
        with pytest.raises(ValueError, match=message):
            bank.score_maps(patches, size=8)
    flat = PatchBankDetector(size=20, n_folds=2, position=0).fit(x.reshape(6, 9, 2)[:, :6])
    with pytest.raises(ValueError, match="6 patches per image is not g × g"):
        flat.score_maps(x.reshape(6, 9, 2)[:1, :6], size=8)
    with pytest.raises(ValueError, match="square patch grid, got 2 × 3"):
        flat.score_maps(x.reshape(6, 9, 2)[:1, :6].reshape(1, 2, 3, 2), size=8)
    # A blur wider than the map (which used to abort the process) is cut at the map's side.
    maps = bank.score_maps(x[:2], size=8, sigma=1e9)
    assert maps.shape == (2, 8, 8)
    assert np.isfinite(maps).all()
    flat = np.asarray(gaussian_blur(np.arange(16.0).reshape(1, 4, 4), 1e12))
    assert np.isfinite(flat).all()


# ---------------------------------------------------------------------- weights files
def _torch_file(obj):
    def write(tmp_path):
        import torch

        path = tmp_path / "weights.pth"
        torch.save(obj() if callable(obj) else obj, path)
        return path

    return write


def _safetensors_file(arrays):
    def write(tmp_path):
        from safetensors.numpy import save_file

        path = tmp_path / "weights.safetensors"
        save_file(arrays, str(path))
        return path

    return write


def _complex_safetensors_file(shape):
    # Written by hand (an 8-byte little-endian header length, the JSON header, the raw bytes):
    # safetensors < 0.7 cannot write complex64, and a reader of any version must refuse it.
    def write(tmp_path):
        data = np.zeros(shape, np.complex64).tobytes()
        header = json.dumps(
            {"conv1.weight": {"dtype": "C64", "shape": list(shape), "data_offsets": [0, len(data)]}}
        ).encode()
        path = tmp_path / "weights.safetensors"
        path.write_bytes(len(header).to_bytes(8, "little") + header + data)
        return path

    return write


def _torch_tensor(shape, fill=0.0, dtype=None):
    def make():
        import torch

        return {"conv1.weight": torch.full(shape, fill, dtype=dtype or torch.float32)}

    return make


def _adapted_with_nan(tmp_path):
    from msde_jax.backbones.registry import backbone_spec
    from msde_jax.backbones.variables import random_variables
    from msde_jax.backbones.weight_files import save_variables

    variables = random_variables(backbone_spec("resnet18").build(0), 32)
    variables["params"]["conv1"]["kernel"] = variables["params"]["conv1"]["kernel"] * np.nan
    path = tmp_path / "adapted.safetensors"
    save_variables(path, variables, {"backbone": "resnet18"})
    return path


class _Evil:
    def __reduce__(self):
        return (print, ("this must never print",))


WEIGHTS = {
    "pth-non-tensor": (
        _torch_file(lambda: {**_torch_tensor((2,))(), "step": 3}),
        "also holds values that are not tensors: 'step' \\(int\\)",
    ),
    "pth-no-mapping": (_torch_file([1, 2]), "no state dict"),
    "pth-wrong-shape": (
        _torch_file(_torch_tensor((64, 3, 3, 3))),
        "conv1.weight has shape \\(64, 3, 3, 3\\), expected \\(64, 3, 7, 7\\)",
    ),
    "pth-nan": (
        _torch_file(_torch_tensor((64, 3, 7, 7), float("nan"))),
        "conv1.weight holds NaN or infinite values",
    ),
    "pth-code": (_torch_file({"x": _Evil()}), "refusing to load global"),
    "safetensors-wrong-shape": (
        _safetensors_file({"conv1.weight": np.zeros((64, 3, 3, 3), np.float32)}),
        "conv1.weight has shape",
    ),
    "safetensors-complex": (
        _complex_safetensors_file((64, 3, 7, 7)),
        "could not read safetensors|not real numbers",
    ),
    "adapted-nan": (_adapted_with_nan, "NaN or infinite values: params/conv1/kernel"),
    "safetensors-missing-keys": (
        _safetensors_file({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}),
        "missing keys",
    ),
}


@pytest.mark.parametrize("case", sorted(WEIGHTS))
def test_bad_weights_files_raise_one_value_error_naming_the_file(tmp_path, capsys, case):
    # One error type for every fault of a weights file, raised before any network runs.
    from msde_jax.backbones.variables import load_backbone_variables

    write, message = WEIGHTS[case]
    path = write(tmp_path)
    with pytest.raises(ValueError, match=message) as err:
        load_backbone_variables("resnet18", path, image_size=32)
    assert str(path) in str(err.value)
    assert "this must never print" not in capsys.readouterr().out


# ---------------------------------------------------------------------- dataset and stack files
def _stacks(**overrides):
    rng = np.random.default_rng(0)
    stacks = {k: rng.integers(0, 255, (3, 8, 8), dtype=np.uint8) for k in SPLITS}
    return {**stacks, **overrides}


SPLITS = ("train_normal", "test_normal", "test_abnormal")
DATASET_FILES = {
    "truncated": (lambda raw: raw[: len(raw) // 2], "not a readable .npz file"),
    "empty": (lambda raw: b"", "not a readable .npz file"),
    "garbage": (lambda raw: b"garbage", "not a readable .npz file \\(a zip archive"),
    "object-array": (
        {"train_normal": np.array([1, "a"], dtype=object)},
        "member 'train_normal' holds Python objects",
    ),
    "text-pixels": ({"test_normal": np.full((3, 8, 8), "a")}, "'test_normal' is <U1; images are"),
    "float-pixels-out-of-range": (
        {"test_abnormal": np.full((3, 8, 8), 7.0)},
        "'test_abnormal' holds float pixels outside \\[0, 1\\]",
    ),
    "no-pixels": ({"train_normal": np.zeros((3, 0, 8), np.uint8)}, "images of no pixels"),
}


@pytest.mark.parametrize("case", sorted(DATASET_FILES))
def test_bad_dataset_files_name_the_file(tmp_path, capsys, case):
    from msde_jax.io.datasets import load_dataset, load_images_npz

    how, message = DATASET_FILES[case]
    path = tmp_path / "data.npz"
    if callable(how):
        np.savez(path, **_stacks())
        path.write_bytes(how(path.read_bytes()))
    else:
        np.savez(path, **_stacks(**how))
    with pytest.raises(ValueError, match=message) as err:
        load_dataset(path)
    assert str(path) in str(err.value)
    if callable(how):
        with pytest.raises(ValueError, match=message):
            load_images_npz(path)
    out = tmp_path / "report"
    assert main(["evaluate", str(path), "--out", str(out)]) == 2  # before any backbone loads
    printed = capsys.readouterr().err
    assert printed.startswith("error: ")
    assert "Traceback" not in printed
    assert not out.exists()


# ---------------------------------------------------------------------- command line
@pytest.fixture
def scans(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


_EMBEDDER = {
    "backbone": "resnet18",
    "weights": "random",
    "image_size": 32,
    "resize": "direct",
    "features": "pooled",
    "dtype": "float32",
}


def _cli_cases(t, scans, model, bank):
    """``{case: (argv, message)}``; every one fails before an image is embedded."""
    (t / "a_file").write_text("x")
    np.savez(t / "emb.npz", embeddings=np.zeros((5, 4)))
    np.savez(t / "obj.npz", embeddings=np.array([{}], dtype=object))
    np.savez(t / "cfg.npz", embeddings=np.zeros((5, 4)), config=np.array('"not a dict"'))
    (t / "garbage.npz").write_bytes(b"garbage")
    (t / "empty_dir").mkdir()
    (t / "empty_dir" / "notes.txt").write_text("no images here")
    fit = ["fit", str(scans), "--weights", "random", "--image-size", "32", "--k", "2", "--out"]
    return {
        "out-in-missing-folder": (
            [*fit, str(t / "nope" / "m.npz")],
            re.escape(f"--out {t / 'nope' / 'm.npz'}: no folder {t / 'nope'}; create it first"),
        ),
        "out-is-a-folder": ([*fit, str(scans)], re.escape(f"--out {scans} is a folder")),
        "out-under-a-file": ([*fit, str(t / "a_file" / "m.npz")], "a_file is a file, not a folder"),
        "out-is-an-input-image": ([*fit, str(scans / "0.png")], "is also an input"),
        "embed-out-missing-folder": (
            ["embed", str(scans), "--out", str(t / "nope" / "e")],
            "no folder",
        ),
        "embeddings-out-is-the-input": (
            ["fit", str(t / "emb.npz"), "--embeddings", "--out", str(t / "emb.npz")],
            "is also an input: writing it would replace it",
        ),
        "embeddings-garbage": (
            ["fit", str(t / "garbage.npz"), "--embeddings", "--out", str(t / "m.npz")],
            "garbage.npz: is not a readable .npz file",
        ),
        "embeddings-objects": (
            ["fit", str(t / "obj.npz"), "--embeddings", "--out", str(t / "m.npz")],
            "obj.npz: member 'embeddings' holds Python objects",
        ),
        "embeddings-config-not-an-object": (
            ["fit", str(t / "cfg.npz"), "--embeddings", "--out", str(t / "m.npz")],
            "cfg.npz: its 'config' is not the embedder configuration",
        ),
        "no-images-in-folder": (
            [*fit[:1], str(t / "empty_dir"), *fit[2:], str(t / "m.npz")],
            "no image files in .*empty_dir \\(looked for .png",
        ),
        "score-out-is-the-model": (
            ["score", str(model), str(scans), "--out", str(model)],
            "is also an input",
        ),
        "score-heatmaps-is-a-file": (
            ["score", str(bank), str(scans), "--heatmaps", str(t / "a_file")],
            re.escape(f"--heatmaps {t / 'a_file'} is a file; give a folder"),
        ),
        "score-model-is-a-folder": (["score", str(scans), str(scans)], "is not a saved detector"),
        "evaluate-out-is-a-file": (
            ["evaluate", "pneumoniamnist", "--out", str(t / "a_file")],
            "is a file; give a folder",
        ),
        # Detector options are checked before the images are embedded (--k 0 was once taken
        # for "not given" and silently dropped).
        "fit-k-zero": (
            [*fit[:6], "--k", "0", "--out", str(t / "m.npz")],
            "k must be a positive int, got 0",
        ),
        "fit-bank-size-zero": (
            [*fit[:6], "--bank-size", "0", "--out", str(t / "m.npz")],
            "size must be a positive int, got 0",
        ),
    }


def _model_with(tmp_path, metadata, detector=None):
    path = tmp_path / "model.npz"
    if detector is None:
        x = np.random.default_rng(0).normal(size=(20, 6))
        detector = MSDEDetector(mode="none", n_components=2, n_folds=2).fit(x)
    detector.save(path, metadata=metadata)
    return path


@pytest.mark.parametrize(
    "case",
    [
        "out-in-missing-folder",
        "out-is-a-folder",
        "out-under-a-file",
        "out-is-an-input-image",
        "embed-out-missing-folder",
        "embeddings-out-is-the-input",
        "embeddings-garbage",
        "embeddings-objects",
        "embeddings-config-not-an-object",
        "no-images-in-folder",
        "score-out-is-the-model",
        "score-heatmaps-is-a-file",
        "score-model-is-a-folder",
        "evaluate-out-is-a-file",
        "fit-k-zero",
        "fit-bank-size-zero",
    ],
)
def test_command_line_refuses_bad_paths_before_any_work(tmp_path, scans, capsys, case):
    model = _model_with(tmp_path, {"embedder": _EMBEDDER})
    before = model.read_bytes()
    bank = tmp_path / "bank.npz"
    if case == "score-heatmaps-is-a-file":  # a model with maps, so that --heatmaps is read
        from msde_jax import PatchBankDetector

        x = np.random.default_rng(0).normal(size=(4, 4, 3)).astype(np.float32)
        fitted = PatchBankDetector(size=8, n_folds=2).fit(x)
        fitted.save(bank, metadata={"embedder": {**_EMBEDDER, "features": "patches"}})
    argv, message = _cli_cases(tmp_path, scans, model, bank)[case]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert re.search(message, err), err
    assert "embedded" not in err  # refused before any image was embedded
    assert "Traceback" not in err
    assert model.read_bytes() == before  # nothing was overwritten
    with np.load(tmp_path / "emb.npz") as z:  # the embeddings were not replaced by a model
        assert z.files == ["embeddings"]


def test_score_refuses_models_whose_metadata_does_not_fit(tmp_path, scans, capsys):
    from msde_jax import FusedDetector

    rng = np.random.default_rng(0)
    params = {"mode": "none", "n_folds": 2, "n_components": 2}
    fused = FusedDetector({"a": MSDEDetector(**params)}).fit({"a": rng.normal(size=(10, 4))})
    cases = {
        "a string": ({"embedder": "resnet18"}, None, "its metadata 'embedder' is not"),
        "missing keys": ({"embedder": {"backbone": "resnet18"}}, None, "a JSON object with"),
        "fused": ({"embedder": _EMBEDDER}, fused, "holds a FusedDetector of components 'a' with"),
        "fused, other dimension": (
            {"embedders": {"a": _EMBEDDER}},
            fused,
            "its component 'a' was fitted on 4 features per image, but its embedder .* gives 512",
        ),
        "other dimension": (
            {"embedder": _EMBEDDER},
            None,
            "fitted on 6 features per image, but its embedder .* gives 512",
        ),
    }
    for what, (metadata, detector, message) in cases.items():
        model = _model_with(tmp_path, metadata, detector)
        assert main(["score", str(model), str(scans)]) == 2, what
        err = capsys.readouterr().err
        assert re.search(message, err), (what, err)
        assert "Traceback" not in err
        assert "embedded" not in err


def test_counts_of_images_must_be_positive(capsys):
    # A negative batch size used to embed nothing and fit on uninitialised memory; a negative
    # --limit dropped the last image of each class.
    from msde_jax.embedder import Embedder
    from msde_jax.io.datasets import load_dataset
    from msde_jax.pipeline.evaluation import limit_dataset

    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            Embedder("resnet18", weights="random", image_size=32, batch_size=bad)
    with pytest.raises(ValueError, match="limit must be a positive number of images, got -1"):
        limit_dataset(load_dataset("pneumoniamnist"), limit=-1)
    for option in (["--limit", "-1"], ["--batch-size", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(["evaluate", "pneumoniamnist", "--out", "r", *option])
        assert exit_.value.code == 2
        assert "expected a positive integer" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_written_is_refused_first(tmp_path, scans, capsys):
    # As root a chmod'ed folder stays writable, so the refusal is simulated where it happens.
    import tempfile

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    model = _model_with(tmp_path, {"embedder": _EMBEDDER})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "TemporaryFile", read_only)
        for argv in (
            ["score", str(model), str(scans), "--out", str(tmp_path / "s.csv")],
            ["evaluate", "pneumoniamnist", "--out", str(tmp_path / "report")],
        ):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert f"cannot write in {tmp_path} (Permission denied)" in err
            assert "embedded" not in err


@pytest.mark.parametrize("block_bytes", [1, 100, 16 << 20])
def test_features_are_checked_block_by_block(monkeypatch, block_bytes):
    """The finiteness and range checks read the features a block of rows at a time (no copy
    of the whole array); a bad row or a huge value is found in any block."""
    from msde_jax.detectors import config

    monkeypatch.setattr(config, "_CHECK_BLOCK_BYTES", block_bytes)
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    nan = x.copy()
    nan[[17, 41], 1] = np.nan
    with pytest.raises(ValueError, match=r"in 2 row\(s\) \(first: \[17, 41\]\)"):
        config.check_features(nan)
    huge = x.astype(np.float64)
    huge[44, 2] = -1e300
    with pytest.raises(ValueError, match=r"values up to 1e\+300, beyond float32's range"):
        config.check_features(huge)
    np.testing.assert_array_equal(config.check_features(x), x)
