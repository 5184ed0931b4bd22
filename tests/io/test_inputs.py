"""Inputs: image files and volumes (NIfTI, DICOM series) listed as named 2-D items with groups."""

import shutil

import numpy as np
import pytest
from PIL import Image
from testing import tissue, write_dicom_series, write_nifti

from msde_jax.io.datasets import list_images, load_dataset
from msde_jax.io.images import ImageReadError, to_float
from msde_jax.io.inputs import (
    SliceGroups,
    concat_groups,
    expand_volumes,
    list_inputs,
    read_inputs,
)

RNG = np.random.default_rng(0)


def _png(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)
    return path


def _tree(root):
    """b.png, c/ct (a DICOM series, with a PNG and a sub-folder beside its slices), c/d.nii.gz,
    xray/ (a 2-D DICOM image, not a series)."""
    _png(root / "b.png")
    write_dicom_series(root / "c" / "ct", tissue(RNG, (3, 16, 16)))
    _png(root / "c" / "ct" / "screenshot.png")
    _png(root / "c" / "ct" / "more" / "e.png")
    write_nifti(root / "c" / "d.nii.gz", tissue(RNG, (4, 16, 16)))
    xray = write_dicom_series(root / "xray", tissue(RNG, (1, 16, 16)))
    import pydicom

    (file,) = xray.glob("*.dcm")
    ds = pydicom.dcmread(file)
    del ds.ImagePositionPatient, ds.ImageOrientationPatient  # a radiograph: no geometry
    ds.save_as(file, enforce_file_format=True)
    return root


def test_list_inputs_finds_images_nifti_files_and_series_folders(tmp_path):
    root = _tree(tmp_path / "data")
    listed = [p.removeprefix(str(root) + "/") for p in list_inputs(root)]
    assert listed == [
        "b.png",
        "c/ct",  # the series, once; its .dcm files are not listed again
        "c/ct/more/e.png",
        "c/ct/screenshot.png",
        "c/d.nii.gz",
        "xray/slice000.dcm",  # a 2-D DICOM file stays an image
    ]
    assert list_inputs(root / "c" / "ct")[0] == str(root / "c" / "ct")  # given directly
    assert list_inputs([root / "b.png", root / "c" / "d.nii.gz"]) == [
        str(root / "b.png"),
        str(root / "c" / "d.nii.gz"),
    ]
    # Folders of images only are listed as list_images lists them.
    only_images = tmp_path / "pngs"
    for name in ("b.png", "a.png", "sub/c.png", "a-c/x.png"):
        _png(only_images / name)
    assert list_inputs(only_images) == list_images(only_images)
    # Hidden files and folders (macOS's ._ copies, checkpoints) are no images of the dataset.
    (only_images / "._b.png").write_bytes(b"\0\5\26\7 AppleDouble")
    _png(only_images / ".ipynb_checkpoints" / "a.png")
    _png(root / ".cache" / "z.png")
    assert list_inputs(only_images) == list_images(only_images)
    assert not any("/." in p for p in list_images(only_images) + list_inputs(root))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list_inputs(tmp_path / "absent")
    (tmp_path / "x.npz").touch()
    with pytest.raises(ValueError, match="array stack"):
        list_inputs(tmp_path / "x.npz")


def test_symbolic_links_to_folders_are_followed_once(tmp_path):
    """Datasets are often assembled from links: a linked folder's images are listed, a second
    link to the same folder and a link back up the tree are not walked again."""
    elsewhere = tmp_path / "elsewhere"
    _png(elsewhere / "x.png")
    root = tmp_path / "data"
    _png(root / "a.png")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "linked-again").symlink_to(elsewhere, target_is_directory=True)
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)  # a loop
    _png(root / "z_real" / "c.png")
    (root / "a_alias").symlink_to(root / "z_real", target_is_directory=True)  # walked first
    # above root: its siblings (a dataset's other splits) were walked as root's
    _png(tmp_path / "sibling" / "s.png")
    (root / "sub" / "top").symlink_to(tmp_path, target_is_directory=True)
    # a link to a file that is gone: listed, and unreadable by name (it was left out silently)
    (root / "broken.png").symlink_to(tmp_path / "nowhere.png")
    paths = ("a.png", "broken.png", "linked/x.png", "z_real/c.png")
    expected = [str(root / p) for p in paths]
    assert list_images(root) == expected
    assert list_inputs(root) == expected
    with pytest.raises(ImageReadError, match="broken.png: no such file"):
        to_float(expected[1])


def test_read_inputs_names_slices_and_groups_them(tmp_path):
    root = _tree(tmp_path / "data")
    inputs = read_inputs(root)
    uid = "ct-1.2.826.0.1.3680043.8.498.7"
    assert inputs.names == [
        str(root / "b.png"),
        *(f"{uid}:{i:04d}" for i in range(3)),
        str(root / "c" / "ct" / "more" / "e.png"),
        str(root / "c" / "ct" / "screenshot.png"),
        *(f"d:{i:04d}" for i in range(4)),
        str(root / "xray" / "slice000.dcm"),
    ]
    groups = inputs.groups
    assert groups.volume.tolist() == [-1, 0, 0, 0, -1, -1, 1, 1, 1, 1, -1]
    assert groups.position.tolist() == [-1, 0, 1, 2, -1, -1, 0, 1, 2, 3, -1]
    assert [v.name for v in groups.volumes] == [uid, "d"]
    assert [v.source for v in groups.volumes] == [str(root / "c" / "ct"), str(root / "c/d.nii.gz")]
    slices = [inputs.items[i] for i in (6, 7, 8, 9)]
    for item, expected in zip(slices, groups.volumes[1].slices, strict=True):
        assert item.shape == (16, 16)
        assert item.dtype == np.float32
        np.testing.assert_array_equal(item, expected)
    assert isinstance(inputs.items[0], str)
    assert [m.tolist() for m in groups.members()] == [[1, 2, 3], [6, 7, 8, 9]]
    coronal = read_inputs(root / "c" / "d.nii.gz", axis="coronal")
    (vol,) = coronal.groups.volumes
    assert (vol.axis, vol.n_slices) == ("coronal", 16)  # of the 4 × 16 × 16 volume
    assert len(coronal.items) == len(vol.indices) < 16  # the disc's edges are empty slices
    assert coronal.items[0].shape == (4, 16)


def test_dicom_files_without_a_suffix_are_images_or_series_slices(tmp_path):
    """PACS and CD exports name files IM0001, …: a radiograph so named is an image, and a
    series so named stays one entry (its slices are not listed again)."""
    from testing import write_dicom

    xrays = tmp_path / "xrays"
    xrays.mkdir()
    for i in range(2):
        write_dicom(xrays / f"IM{i:04d}", np.full((8, 8), 100 * i, np.uint16))
    _png(xrays / "extra.png")
    (xrays / "notes").write_text("not an image")
    want = [str(xrays / "IM0000"), str(xrays / "IM0001"), str(xrays / "extra.png")]
    assert list_inputs(xrays) == list_images(xrays) == want
    series = write_dicom_series(tmp_path / "ct", tissue(RNG, (3, 16, 16)))
    for file in series.glob("*.dcm"):
        file.rename(file.with_suffix(""))
    assert list_inputs(tmp_path / "ct") == [str(series)]
    (vol,) = read_inputs(tmp_path / "ct").groups.volumes
    assert vol.n_slices == 3


def test_volumes_that_share_a_file_name_are_named_apart_by_their_folders(tmp_path):
    """One folder per patient, each with t1.nii.gz: slice names must still tell the volumes
    apart (they were all "t1:0000", … — the score table could not be read back)."""
    for folder, name in (("a/p1", "t1"), ("a/p2", "t1"), ("b/p1", "t1"), ("a/p1", "flair")):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        write_nifti(tmp_path / folder / f"{name}.nii.gz", tissue(RNG, (2, 16, 16)))
    inputs = read_inputs(tmp_path)
    names = [v.name for v in inputs.groups.volumes]
    # the fewest folders that tell all of them apart (p1 alone is in a/ and in b/)
    assert names == ["flair", "a/p1/t1", "a/p2/t1", "b/p1/t1"]
    assert len(set(inputs.names)) == len(inputs.names)
    assert inputs.names[:3] == ["flair:0000", "flair:0001", "a/p1/t1:0000"]
    one = tmp_path / "a" / "p2" / "t1.nii.gz"
    twice = expand_volumes([one, one])  # one file read twice
    assert [v.name for v in twice.groups.volumes] == ["t1#1", "t1#2"]
    # Given twice, or given and in a folder given: listed and read once, and said.
    once = read_inputs([one, tmp_path / "a", one])
    assert [v.name for v in once.groups.volumes] == ["p2/t1", "flair", "p1/t1"]
    assert once.repeated == (str(one), str(one))
    assert list_inputs([one, one]) == [str(one)]


def test_a_file_of_a_series_given_beside_its_folder_is_read_once(tmp_path):
    rng = np.random.default_rng(0)
    series = write_dicom_series(tmp_path / "exam" / "ct", np.round(rng.normal(60, 20, (5, 16, 16))))
    one = series / "slice002.dcm"
    for sources in ([tmp_path / "exam", one], [one, series]):
        inputs = read_inputs(sources)
        assert len(inputs.items) == 5
        assert len(inputs.groups.volumes) == 1
        assert inputs.repeated == (str(one),)
    assert len(read_inputs([one]).items) == 1  # alone: a 2-D image


def test_groups_take_first_inputs_concat_and_names(tmp_path):
    root = _tree(tmp_path / "data")
    inputs = read_inputs(root)
    groups = inputs.groups
    first = groups.first_inputs(3)  # b.png, the series (whole), e.png
    assert first.tolist() == [0, 1, 2, 3, 4]
    kept = inputs.take([0, 6, 8])  # an image and two slices of d
    assert kept.names == [str(root / "b.png"), "d:0000", "d:0002"]
    assert kept.groups.volume.tolist() == [-1, 0, 0]
    assert [v.name for v in kept.groups.volumes] == ["d"]
    assert kept.groups.item_names(kept.items) == kept.names
    both = concat_groups(groups, kept.groups, SliceGroups.images(2))
    assert both.volume.tolist() == [*groups.volume.tolist(), -1, 2, 2, -1, -1]
    assert len(both.volumes) == 3
    assert not SliceGroups.images(4).has_volumes
    assert SliceGroups.images(4).first_inputs(2).tolist() == [0, 1]
    assert concat_groups().volume.size == 0


def test_expand_volumes_keeps_other_items_and_skips_unreadable_volumes(tmp_path):
    nii = write_nifti(tmp_path / "v.nii", tissue(RNG, (3, 16, 16)))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file")
    array = np.zeros((8, 8), np.float32)
    inputs = expand_volumes([array, nii, "x.png"])
    assert inputs.names == ["image 0", "v:0000", "v:0001", "v:0002", "x.png"]
    assert inputs.items[0] is array
    with pytest.raises(ImageReadError, match=r"broken\.nii\.gz"):
        expand_volumes([nii, broken])
    inputs = expand_volumes([broken, nii], skip_unreadable=True)
    assert len(inputs.items) == 3
    (why,) = inputs.skipped
    assert "broken.nii.gz" in why


def test_embed_cached_reads_volumes_into_slices(tmp_path):
    from msde_jax.io.cache import embed_cached

    class Fake:
        def config(self):
            return {"backbone": "fake"}

        def embed(self, items):
            return np.stack([[float(np.mean(np.asarray(i, np.float32)))] for i in items])

    nii = write_nifti(tmp_path / "v.nii", tissue(RNG, (3, 16, 16)))
    out = embed_cached(Fake(), [nii], tmp_path / "cache", progress=False)
    (vol,) = read_inputs(nii).groups.volumes
    np.testing.assert_allclose(out[:, 0], vol.slices.mean(axis=(1, 2)), rtol=1e-6)


def test_load_dataset_of_volumes_keeps_the_groups(tmp_path):
    from msde_jax.pipeline.evaluation import limit_dataset

    root = tmp_path / "ds"
    for split, n in (("train/normal", 3), ("test/normal", 1), ("test/abnormal", 2)):
        for i in range(n):
            (root / split).mkdir(parents=True, exist_ok=True)
            write_nifti(
                root / split / f"{split.replace('/', '_')}{i}.nii.gz", tissue(RNG, (4, 16, 16))
            )
    _png(root / "test" / "abnormal" / "z.png")  # a 2-D image beside the volumes
    ds = load_dataset(root)
    assert (len(ds.train_normal), len(ds.test_normal), len(ds.test_abnormal)) == (12, 4, 9)
    assert ds.has_volumes
    assert len(ds.split_groups("train_normal").volumes) == 3
    assert ds.test_groups().volume.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [-1]
    assert ds.test_names()[-1].endswith("z.png")
    assert ds.test_names()[0] == "test_normal0:0000"
    assert "train_normal_volumes=3" in repr(ds)
    # one name in both test classes (one folder per patient): named apart in the test set,
    # as within one folder (both were "t1:0000" in the report)
    for split, patient in (("test/normal", "p3"), ("test/abnormal", "p4")):
        (root / split / patient).mkdir()
        write_nifti(root / split / patient / "t1.nii.gz", tissue(RNG, (4, 16, 16)))
    names = load_dataset(root).test_names()
    assert "p3/t1:0000" in names
    assert "p4/t1:0000" in names
    assert len(set(names)) == len(names)
    limited = limit_dataset(ds, limit=2)  # two inputs per class, volumes kept whole
    assert (len(limited.train_normal), len(limited.test_normal)) == (8, 4)
    assert len(limited.test_abnormal) == 8
    assert len(limited.split_groups("train_normal").volumes) == 2
    from msde_jax.pipeline.evaluation import limit_dataset  # the pipeline's --limit

    limited = limit_dataset(ds, limit=2)  # two inputs per class, volumes kept whole
    assert (len(limited.train_normal), len(limited.test_normal)) == (8, 4)
    assert len(limited.test_abnormal) == 8
    assert len(limited.split_groups("train_normal").volumes) == 2
    (root / "train" / "normal" / "broken.nii").write_bytes(b"\0" * 10)
    with pytest.raises(ImageReadError, match=r"broken\.nii"):
        load_dataset(root)
    skipped = load_dataset(root, skip_unreadable=True)
    assert len(skipped.train_normal) == 12
    assert len(skipped.skipped) == 1
    shutil.rmtree(root / "test" / "abnormal")  # a class left with unreadable volumes only
    (root / "test" / "abnormal").mkdir()
    (root / "test" / "abnormal" / "only.nii").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match="every volume was unreadable and skipped"):
        load_dataset(root, skip_unreadable=True)  # an empty class, as without skipping
