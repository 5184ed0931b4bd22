"""Dataset readers: built-in PneumoniaMNIST, npz stacks, image folders, MedIAnomaly layout."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msde_jax.io.datasets import (
    SPLIT_KEYS,
    Dataset,
    list_images,
    load_dataset,
    load_images_npz,
    open_npz,
)
from msde_jax.io.images import to_float


def _png(path: Path, value: int = 100, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def _jpeg(path: Path, value: int = 150) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path, quality=95)
    return path


def _png16(path: Path, value: int = 40000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint16)).save(path)
    return path


def _folder_dataset(root: Path) -> Path:
    _png(root / "train/normal/b.png")
    _png(root / "train/normal/a.png")
    _jpeg(root / "train/normal/c.JPG")
    _png16(root / "test/normal/n1.png")
    _png(root / "test/abnormal/x1.png", 200)
    _jpeg(root / "test/abnormal/x2.jpeg")
    (root / "train/normal/notes.txt").write_text("not an image")
    return root


def test_builtin_pneumoniamnist():
    ds = load_dataset("pneumoniamnist")
    assert ds.name == "pneumoniamnist"
    assert ds.source == "builtin:pneumoniamnist"
    assert (len(ds.train_normal), len(ds.test_normal), len(ds.test_abnormal)) == (1214, 234, 390)
    assert all(x.shape == (28, 28) and x.dtype == np.uint8 for x in ds.train_normal[:5])
    labels = ds.test_labels()
    assert labels.dtype.kind == "i"
    assert labels.tolist() == [0] * 234 + [1] * 390
    assert len(ds.test_items()) == 624
    assert load_dataset("builtin:pneumoniamnist").test_abnormal[0].shape == (28, 28)


def test_builtin_license_shipped():
    from importlib import resources

    text = (resources.files("msde_jax") / "data" / "PNEUMONIAMNIST_LICENSE.md").read_text()
    assert "CC BY 4.0" in text
    assert "Kermany" in text
    assert "Yang" in text


def test_unknown_builtin():
    with pytest.raises(ValueError, match="unknown built-in dataset"):
        load_dataset("builtin:nosuch")


def test_npz_layout(tmp_path):
    path = tmp_path / "tiny.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        train_normal=rng.integers(0, 255, (4, 6, 6), dtype=np.uint8),
        test_normal=rng.integers(0, 255, (2, 6, 6), dtype=np.uint8),
        test_abnormal=rng.random((3, 6, 6, 3)).astype(np.float32),
    )
    ds = load_dataset(path)
    assert isinstance(ds, Dataset)
    assert ds.name == "tiny"
    assert (len(ds.train_normal), len(ds.test_normal), len(ds.test_abnormal)) == (4, 2, 3)
    assert ds.test_abnormal[0].shape == (6, 6, 3)
    assert ds.test_labels().tolist() == [0, 0, 1, 1, 1]
    items = ds.test_items()
    assert np.array_equal(items[0], ds.test_normal[0])
    assert np.array_equal(items[2], ds.test_abnormal[0])


def test_npz_missing_key(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, train_normal=np.zeros((2, 4, 4)), images=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="test_normal, test_abnormal") as err:
        load_dataset(path)
    assert "found train_normal, images" in str(err.value)


def test_npz_of_one_color_image_or_odd_channels_is_refused(tmp_path):
    # One (H, W, 3) image was read as H images of one row of W pixels each, and embedded.
    path = tmp_path / "one.npz"
    np.savez(path, images=np.zeros((64, 48, 3), np.uint8))
    with pytest.raises(ValueError, match=r"looks like one \(H, W, C\) image.*image\[None\]"):
        load_images_npz(path)
    np.savez(path, images=np.zeros((2, 16, 16, 5), np.uint8))
    with pytest.raises(ValueError, match="has 5 channels"):
        load_images_npz(path)
    np.savez(path, images=np.zeros((1, 64, 48, 3), np.uint8))
    assert len(load_images_npz(path)) == 1
    np.savez(path, images=np.zeros((28, 28, 1), np.uint8))  # one gray image, channel kept
    with pytest.raises(ValueError, match=r"looks like one \(H, W, C\) image"):
        load_images_npz(path)


def test_npz_of_big_endian_pixels_is_read_in_the_machines_order(tmp_path):
    """'>u2' was refused as "is >u2; images are uint8, uint16, …"."""
    stack = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8) * 500
    path = tmp_path / "be.npz"
    np.savez(path, images=stack.astype(">u2"))
    read = load_images_npz(path)
    assert all(image.dtype == np.uint16 and image.dtype.isnative for image in read)
    np.testing.assert_array_equal(np.stack(read), stack)
    splits = {k: stack.astype(">u2") for k in ("train_normal", "test_normal", "test_abnormal")}
    np.savez(tmp_path / "ds.npz", **splits)
    dataset = load_dataset(tmp_path / "ds.npz")
    np.testing.assert_array_equal(np.stack(dataset.test_abnormal), stack)
    assert dataset.test_abnormal[0].dtype.isnative


def test_npz_empty_split(tmp_path):
    path = tmp_path / "empty.npz"
    z = np.zeros((2, 4, 4), np.uint8)
    np.savez(path, train_normal=z, test_normal=z, test_abnormal=np.zeros((0, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="'test_abnormal' holds no images"):
        load_dataset(path)


def test_npz_splits_count_against_the_memory_bound_together(tmp_path, monkeypatch):
    path = tmp_path / "data.npz"
    np.savez(path, **{k: np.zeros((4, 16, 16), np.uint8) for k in SPLIT_KEYS})  # 1 KiB each
    monkeypatch.setenv("MSDE_JAX_MAX_ARRAY_BYTES", "2K")  # any two splits, not three
    with pytest.raises(ValueError, match=r"3 KiB with the other arrays read: more than the 2 KiB"):
        load_dataset(path)
    assert len(load_images_npz(path, "test_normal")) == 4  # one alone fits


def test_open_npz_gives_headers_without_reading(tmp_path, monkeypatch):
    path = tmp_path / "data.npz"
    np.savez(path, a=np.zeros((3, 5, 7), np.uint16), b=np.ones(2))
    monkeypatch.setenv("MSDE_JAX_MAX_ARRAY_BYTES", "0")  # nothing may be read
    with open_npz(path) as data:
        assert list(data) == ["a", "b"]
        assert "a" in data
        assert "c" not in data
        assert data.headers["a"].shape == (3, 5, 7)
        assert data.headers["a"].dtype == np.uint16
        with pytest.raises(ValueError, match="member 'a' claims shape"):
            data["a"]
    monkeypatch.delenv("MSDE_JAX_MAX_ARRAY_BYTES")
    with open_npz(path) as data:
        np.testing.assert_array_equal(data["b"], np.ones(2))
        assert sorted(data.read(["a", "c"])) == ["a"]  # names the file lacks are skipped


def test_folder_layout(tmp_path):
    root = _folder_dataset(tmp_path / "folders")
    ds = load_dataset(root)
    assert ds.name == "folders"
    assert [Path(p).name for p in ds.train_normal] == ["a.png", "b.png", "c.JPG"]
    assert [Path(p).name for p in ds.test_normal] == ["n1.png"]
    assert [Path(p).name for p in ds.test_abnormal] == ["x1.png", "x2.jpeg"]
    assert ds.test_labels().tolist() == [0, 1, 1]
    # Every item is readable, including the 16-bit PNG (40000 / 65535) and the RGB JPEG.
    assert to_float(ds.test_normal[0])[0, 0, 0] == pytest.approx(40000 / 65535, abs=1e-6)
    assert to_float(ds.train_normal[2]).shape == (8, 8, 3)
    assert to_float(ds.test_abnormal[0])[0, 0, 0] == pytest.approx(200 / 255)


def test_folder_empty_class(tmp_path):
    root = _folder_dataset(tmp_path / "folders")
    for p in (root / "test/abnormal").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match=r"test/abnormal: no images"):
        load_dataset(root)


def test_folder_missing_class(tmp_path):
    root = tmp_path / "folders"
    _png(root / "train/normal/a.png")
    _png(root / "test/normal/a.png")
    with pytest.raises(ValueError, match="missing sub-folder test/abnormal"):
        load_dataset(root)


def test_medianomaly_layout(tmp_path):
    root = tmp_path / "RSNA"
    for name in ("t0.png", "t1.png", "n0.png", "a0.png", "a1.png"):
        _png(root / "images" / name)
    meta = {
        "train": {"0": ["t1.png", "t0.png"]},
        "test": {"0": ["n0.png"], "1": ["a0.png", "a1.png"]},
    }
    (root / "data.json").write_text(json.dumps(meta))
    ds = load_dataset(str(root))
    assert ds.name == "RSNA"
    assert ds.train_normal == [str(root / "images/t1.png"), str(root / "images/t0.png")]
    assert ds.test_normal == [str(root / "images/n0.png")]
    assert [Path(p).name for p in ds.test_abnormal] == ["a0.png", "a1.png"]


def test_medianomaly_errors(tmp_path):
    root = tmp_path / "bench"
    _png(root / "images/t0.png")
    (root / "data.json").write_text(json.dumps({"train": {"0": ["t0.png"]}, "test": {"0": []}}))
    with pytest.raises(ValueError, match=r"test\['0'\] is empty"):
        load_dataset(root)
    (root / "data.json").write_text(
        json.dumps({"train": {"0": ["t0.png"]}, "test": {"0": ["t0.png"]}})
    )
    with pytest.raises(ValueError, match=r"no test\['1'\] list"):
        load_dataset(root)
    (root / "data.json").write_text(
        json.dumps({"train": {"0": ["t0.png"]}, "test": {"0": ["t0.png"], "1": ["gone.png"]}})
    )
    with pytest.raises(FileNotFoundError, match="gone.png"):
        load_dataset(root)


def test_missing_path_and_unknown_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="train/normal, test/normal and test/abnormal"):
        load_dataset(tmp_path / "plain")
    img = _png(tmp_path / "one.png")
    with pytest.raises(ValueError, match="accepted datasets"):
        load_dataset(img)


def test_list_images(tmp_path):
    root = _folder_dataset(tmp_path / "folders")
    _png(root / "extra/deep/z.PNG")
    (root / "extra/deep/scan.DCM").write_bytes(b"")
    (root / "extra/deep/skip.npy").write_bytes(b"")
    found = list_images(root)
    names = [Path(p).relative_to(root).as_posix() for p in found]
    assert names == sorted(names)
    assert "extra/deep/z.PNG" in names
    assert "extra/deep/scan.DCM" in names
    assert not any(n.endswith((".txt", ".npy")) for n in names)
    assert len(names) == 8
    single = list_images(str(root / "test/normal/n1.png"))
    assert single == [str(root / "test/normal/n1.png")]
    mixed = list_images([root / "test/abnormal", root / "test/normal/n1.png"])
    assert [Path(p).name for p in mixed] == ["x1.png", "x2.jpeg", "n1.png"]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        list_images([root / "missing.png"])


def test_list_images_npz_and_load_images_npz(tmp_path):
    one = tmp_path / "one.npz"
    np.savez(one, x=np.zeros((3, 5, 5), np.uint8))
    with pytest.raises(ValueError, match="load_images_npz"):
        list_images(one)
    assert [a.shape for a in load_images_npz(one)] == [(5, 5)] * 3
    many = tmp_path / "many.npz"
    np.savez(many, train_normal=np.ones((2, 4, 4)), test_normal=np.zeros((1, 4, 4)))
    assert len(load_images_npz(many)) == 2
    assert len(load_images_npz(many, "test_normal")) == 1
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros((1, 4, 4)), b=np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match=r"several arrays \(a, b\)"):
        load_images_npz(other)
    with pytest.raises(ValueError, match="no array 'c'; found a, b"):
        load_images_npz(other, "c")


def test_repeats_in_a_dataset_are_read_once_and_recorded(tmp_path):
    """A link beside its target in a split folder, or a name listed twice in data.json."""
    for sub in ("train/normal", "test/normal", "test/abnormal"):
        (tmp_path / "ds" / sub).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), i, np.uint8)).save(tmp_path / "ds" / sub / f"{i}.png")
    link = tmp_path / "ds" / "train" / "normal" / "z_link.png"
    link.symlink_to(tmp_path / "ds" / "train" / "normal" / "0.png")
    dataset = load_dataset(tmp_path / "ds")
    assert len(dataset.train_normal) == 2
    assert dataset.repeated == (str(link),)
    med = tmp_path / "med"
    (med / "images").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(med / "images" / name)
    splits = {"train": {"0": ["a.png", "a.png"]}, "test": {"0": ["b.png"], "1": ["c.png"]}}
    (med / "data.json").write_text(json.dumps(splits))
    dataset = load_dataset(med)
    assert dataset.train_normal == [str(med / "images" / "a.png")]
    assert dataset.repeated == (str(med / "images" / "a.png"),)


def test_a_file_that_is_both_a_normal_and_an_abnormal_test_image_is_refused(tmp_path):
    """Both labels, no note: a name in both test lists of data.json, or a link in
    test/abnormal to a file of test/normal (repeats were read once within a list only)."""
    root = _folder_dataset(tmp_path / "ds")
    (root / "test/abnormal/n1_link.png").symlink_to(root / "test/normal/n1.png")
    with pytest.raises(
        ValueError, match=r"1 file\(s\) are both normal and abnormal test .*n1_link"
    ):
        load_dataset(root)
    med = tmp_path / "med"
    for name in ("t.png", "b.png", "c.png"):
        _png(med / "images" / name)
    splits = {"train": {"0": ["t.png"]}, "test": {"0": ["b.png", "c.png"], "1": ["c.png"]}}
    (med / "data.json").write_text(json.dumps(splits))
    with pytest.raises(ValueError, match="give each test image one label"):
        load_dataset(med)
