"""Volume scores (the top-10 % mean of slice scores), the volume threshold, and evaluate's
volume-level metrics, with a fake embedder on tiny arrays."""

import numpy as np
import pytest

from msde_jax import MSDEDetector
from msde_jax.core.metrics import evaluation_metrics
from msde_jax.detectors.fitting import quantile_threshold
from msde_jax.io.datasets import Dataset
from msde_jax.io.inputs import SliceGroups, concat_groups
from msde_jax.io.volumes import Volume
from msde_jax.pipeline.evaluation import evaluate
from msde_jax.pipeline.volumes import (
    aggregate,
    read_volume_record,
    top_k,
    volume_record,
    volume_scores,
    volume_threshold,
)

DIM = 6
PARAMS = {"k": 5, "n_neighbors": 5}


class FakeEmbedder:
    """Embeds a (2, 3) slice as its 6 pixels."""

    backbone = "fake"

    def config(self) -> dict:
        return {"backbone": self.backbone}

    def embed(self, items) -> np.ndarray:
        return np.stack([np.asarray(item, np.float32).reshape(DIM) for item in items])


def _volume(name, slices):
    k = len(slices)
    return Volume(
        name=name,
        source=f"{name}.nii",
        slices=np.asarray(slices, np.float32),
        indices=np.arange(k, dtype=np.int64) + 1,  # slice 0 was empty
        n_slices=k + 1,
        axis="axial",
        spacing=(1.0, 1.0, 1.0),
        affine=None,
        window=(0.0, 1.0),
    )


def _split(rng, names, shift, k=5):
    """Volumes of k (2, 3) slices; ``shift`` moves one slice of each (a lesion on one slice)."""
    volumes = []
    for name in names:
        slices = rng.normal(size=(k, 2, 3))
        slices[k // 2] += shift
        volumes.append(_volume(name, slices))
    items = [s for v in volumes for s in v.slices]
    volume = np.repeat(np.arange(len(volumes)), k)
    position = np.tile(np.arange(k), len(volumes))
    return items, SliceGroups(volume, position, tuple(volumes))


def test_top_k_and_aggregate():
    assert [top_k(n) for n in (1, 9, 10, 11, 20, 30, 31, 300)] == [1, 1, 1, 2, 2, 3, 4, 30]
    assert aggregate([3.0]) == 3.0
    assert aggregate(np.arange(10.0)) == 9.0  # k = 1: the maximum
    assert aggregate(np.arange(11.0)) == 9.5  # k = 2: mean of 10 and 9
    assert aggregate(np.arange(30.0)[::-1]) == 28.0  # k = 3, in any order
    with pytest.raises(ValueError, match="no score"):
        aggregate([])


def test_volume_scores_gather_slices_and_leave_images_out():
    vol_a, vol_b = _volume("a", np.zeros((3, 2, 3))), _volume("b", np.zeros((2, 2, 3)))
    groups = concat_groups(
        SliceGroups(np.zeros(3, np.int64), np.arange(3), (vol_a,)),
        SliceGroups.images(1),
        SliceGroups(np.zeros(2, np.int64), np.arange(2), (vol_b,)),
    )
    vs = volume_scores([1.0, 5.0, 2.0, 100.0, 4.0, 3.0], groups)
    assert vs.names == ("a", "b")
    assert vs.sources == ("a.nii", "b.nii")
    assert vs.n_scored.tolist() == [3, 2]
    assert vs.n_slices.tolist() == [4, 3]
    assert vs.scores.tolist() == [5.0, 4.0]  # the image's 100 belongs to no volume
    with pytest.raises(ValueError, match="got 2 scores for 6 items"):
        volume_scores([1.0, 2.0], groups)
    # two volumes at contamination 0.5: rank ⌈3 · 0.5⌉ = 2, the higher (linear: 4.5)
    assert volume_threshold([1.0, 5.0, 2.0, 100.0, 4.0, 3.0], groups, 0.5) == 5.0
    with pytest.raises(ValueError, match="no volumes"):
        volume_threshold([1.0], SliceGroups.images(1), 0.1)


def test_evaluate_reports_volume_level_metrics(rng):
    train, train_groups = _split(rng, [f"t{i}" for i in range(8)], 0.0)
    normal, normal_groups = _split(rng, ["n0", "n1", "n2"], 0.0)
    abnormal, abnormal_groups = _split(rng, ["a0", "a1"], 6.0)
    dataset = Dataset(
        "vols",
        train,
        normal,
        abnormal,
        source="memory",
        groups={
            "train_normal": train_groups,
            "test_normal": normal_groups,
            "test_abnormal": abnormal_groups,
        },
    )
    result = evaluate(dataset, FakeEmbedder(), MSDEDetector(**PARAMS), progress=False)
    assert result.scores.shape == (25,)  # slice-level, as for images
    vols = result.volumes
    assert vols.scores.names == ("n0", "n1", "n2", "a0", "a1")
    assert vols.labels.tolist() == [0, 0, 0, 1, 1]
    expected = [aggregate(result.scores[5 * v : 5 * v + 5]) for v in range(5)]
    np.testing.assert_allclose(vols.scores.scores, expected)
    oof = result.detector.decision_scores_
    train_scores = [aggregate(oof[5 * v : 5 * v + 5]) for v in range(8)]
    assert vols.threshold == pytest.approx(quantile_threshold(train_scores, 0.05))
    assert vols.metrics == {
        **evaluation_metrics(vols.labels, vols.scores.scores, vols.threshold),
        "aggregate": "mean of the top max(1, ceil(0.1 n)) slice scores, n = slices scored",
    }
    assert vols.metrics["auroc"] == 1.0  # one slice shifted by 6σ in each abnormal volume
    assert result.config["volumes"] == {"train_normal": 8, "test_normal": 3, "test_abnormal": 2}
    # Without volumes among the training normals: AUROC and AP, no threshold.
    images = Dataset(
        "vols",
        [s for s in train],
        normal,
        abnormal,
        source="memory",
        groups={"test_normal": normal_groups, "test_abnormal": abnormal_groups},
    )
    result = evaluate(images, FakeEmbedder(), MSDEDetector(**PARAMS), progress=False)
    assert result.volumes.threshold is None
    assert set(result.volumes.metrics) == {
        "auroc",
        "average_precision",
        "n_normal",
        "n_abnormal",
        "threshold",
        "aggregate",
    }
    # Volumes in one test class only: no volume-level metrics.
    one_class = Dataset("vols", train, normal, abnormal, "memory", {"test_normal": normal_groups})
    assert (
        evaluate(one_class, FakeEmbedder(), MSDEDetector(**PARAMS), progress=False).volumes is None
    )


def test_volume_record_and_its_check(rng):
    train, groups = _split(rng, [f"t{i}" for i in range(8)], 0.0)
    x = FakeEmbedder().embed(train)
    detector = MSDEDetector(**PARAMS).fit(x)
    record = volume_record(detector, groups, axis="coronal")
    assert record["threshold"] == volume_threshold(detector.decision_scores_, groups, 0.05)
    assert (record["axis"], record["n_volumes"], record["why"]) == ("coronal", 8, None)
    assert read_volume_record({"volumes": record}) == record
    assert read_volume_record({"embedder": {}}) is None
    chi2 = volume_record(MSDEDetector(threshold="chi2", **PARAMS).fit(x), groups, axis="axial")
    assert chi2["threshold"] is None
    assert "threshold='chi2'" in chi2["why"]
    assert read_volume_record({"volumes": chi2})["threshold"] is None
    for bad in (
        [],
        {"threshold": 1.0},
        {**record, "threshold": "1"},
        {**record, "threshold": None} | {"axis": 3},
        {**record, "threshold": float("inf")},
    ):
        with pytest.raises(ValueError, match="not the record"):
            read_volume_record({"volumes": bad})


def test_montages_one_png_per_volume(tmp_path):
    from PIL import Image

    from msde_jax.pipeline.heatmaps import heatmap_file_names, write_montages

    rng = np.random.default_rng(0)
    images = rng.random((5, 16, 16, 3)).astype(np.float32)
    maps = rng.random((5, 16, 16)).astype(np.float32)
    names = ["a:0001", "a:0002", "a:0003", "b.x:0004", "b.x:0005"]
    paths = write_montages(
        tmp_path / "m",
        images,
        maps,
        members=[np.arange(3), np.array([3, 4])],
        volume_names=["a", "b.x"],
        volume_scores=[0.5, 0.7],
        names=names,
        scores=np.array([0.1, 0.9, 0.2, 0.3, 0.4]),
        threshold=0.5,
        volume_threshold=0.6,
    )
    assert [p.name for p in paths] == ["volume_0000_a.png", "volume_0001_b.x.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.size[0] > 100
    # Slice names keep their index in the per-slice PNG names.
    assert heatmap_file_names([*names, "dir/scan.png"]) == [
        "0000_a_0001.png",
        "0001_a_0002.png",
        "0002_a_0003.png",
        "0003_b.x_0004.png",
        "0004_b.x_0005.png",
        "0005_scan.png",
    ]
    # A volume named with its parent folders keeps its whole name and its slice index.
    assert heatmap_file_names(["p1/t1.v2:0003", "a/ct-1.2.840:0012"]) == [
        "0000_t1.v2_0003.png",
        "0001_ct-1.2.840_0012.png",
    ]


def test_heatmaps_in_a_folder_used_again_and_names_drawn_as_written(tmp_path):
    from msde_jax.pipeline.heatmaps import write_heatmaps, write_montages

    rng = np.random.default_rng(0)
    images = rng.random((3, 16, 16, 3)).astype(np.float32)
    maps = rng.random((3, 16, 16)).astype(np.float32)
    # "$" would start matplotlib's math notation: an error when the figure is saved.
    names = ["scan_0$^$.png", "v$_{1:0001", "v$_{1:0002"]
    scores = np.array([0.1, 0.9, 0.2])
    out = tmp_path / "maps"
    write_heatmaps(out, images, maps, names=names, scores=scores, threshold=0.5)
    write_montages(
        out,
        images,
        maps,
        members=[np.array([1, 2])],
        volume_names=["v$_{1"],
        volume_scores=[0.9],
        names=names,
        scores=scores,
        threshold=0.5,
    )
    (out / "notes.txt").write_text("the user's")
    first = {p.name for p in out.iterdir()}
    assert first == {
        "0000_scan_0.png", "0001_v___1_0001.png", "0002_v___1_0002.png",
        "volume_0000_v___1.png", "maps.npz", "notes.txt",
    }  # fmt: skip
    # A second, smaller run: none of the first run's PNGs stays beside its own.
    write_heatmaps(out, images[:1], maps[:1], names=["z.png"], scores=scores[:1], threshold=0.5)
    assert {p.name for p in out.iterdir()} == {"0000_z.png", "maps.npz", "notes.txt"}


def test_fit_groups_are_volumes_when_there_are_enough(capsys):
    from msde_jax import MSDEDetector
    from msde_jax.io.inputs import SliceGroups
    from msde_jax.pipeline.volumes import fit_groups

    volume = np.array([0, 0, 1, 1, 2, 2, -1, 3, 3, 4, 5, -1])
    groups = SliceGroups(volume, np.zeros_like(volume), (None,) * 6)
    ids = fit_groups(MSDEDetector(), groups)
    np.testing.assert_array_equal(ids[:6], [0, 0, 1, 1, 2, 2])
    assert ids[6] != ids[11]  # each 2-D image a group of its own
    assert len(set(ids)) == 8
    assert capsys.readouterr().err == ""
    assert fit_groups(MSDEDetector(n_folds=9), groups) is None  # 8 groups < 9 folds
    assert "folds of slices" in capsys.readouterr().err
    assert fit_groups(MSDEDetector(threshold="chi2"), groups) is None
    assert fit_groups(MSDEDetector(), SliceGroups.images(4)) is None
    # A fused detector's components get the groups: folds of volumes when all cross-fit
    # (its own parameters name no n_folds; its slices' folds made the volume threshold err).
    from msde_jax import FusedDetector

    fused = FusedDetector({"a": MSDEDetector(n_folds=3), "b": MSDEDetector(n_folds=4)})
    np.testing.assert_array_equal(fit_groups(fused, groups), ids)
    fused.components["b"].set_params(n_folds=9)
    assert fit_groups(fused, groups) is None  # 8 groups < 9 folds of one component
    fused.components["b"].set_params(n_folds=4, threshold="chi2")  # in-sample scores
    assert fit_groups(fused, groups) is None


def test_a_model_without_training_scores_is_said_to_have_none(rng):
    """threshold='none' was said to give "in-sample training scores": it gives none."""
    train, groups = _split(rng, [f"t{i}" for i in range(8)], 0.0)
    x = FakeEmbedder().embed(train)
    record = volume_record(MSDEDetector(threshold="none", **PARAMS).fit(x), groups, axis="axial")
    assert record["threshold"] is None
    assert "threshold='none' gives no training scores" in record["why"]
