"""The msde-jax commands on volumes: NIfTI files and DICOM series, end to end (tiny volumes of
6 × 32 × 32, random backbone weights at 32 px, as tests/cli/test_cli.py)."""

import csv
import json

import numpy as np
import pytest
from testing import tissue, write_dicom_series, write_nifti

from msde_jax.cli import main

EMBED = ["--weights", "random", "--image-size", "32", "--batch-size", "16"]  # as test_cli.py
BANK = [*EMBED, "--bank-size", "200"]
SHAPE = (6, 32, 32)


def _rows(path):
    return list(csv.DictReader(path.read_text().splitlines()))


def _dataset(root, write, suffix=""):
    """train/normal: 3 normal volumes (t0, t1, t2); test/normal: 2 (n0, n1); test/abnormal: 2
    with a bright lesion (a0, a1)."""
    rng = np.random.default_rng(0)
    splits = (("train/normal", "t", 3, False), ("test/normal", "n", 2, False))
    for split, prefix, n, lesion in (*splits, ("test/abnormal", "a", 2, True)):
        folder = root / split
        folder.mkdir(parents=True)
        for i in range(n):
            write(folder / f"{prefix}{i}{suffix}", tissue(rng, SHAPE, lesion=lesion))
    return root


def _nifti(path, volume):
    return write_nifti(path, volume)


def _series(folder, volume):
    uid = f"1.2.826.0.1.3680043.8.498.{ord(folder.name[0])}{folder.name[1:]}"
    return write_dicom_series(folder, volume, uid=uid)


@pytest.mark.parametrize(
    ("write", "suffix"), [(_nifti, ".nii.gz"), (_series, "")], ids=["nifti", "dicom"]
)
def test_fit_score_evaluate_volumes(tmp_path, capsys, write, suffix):
    from msde_jax import load_detector

    data = _dataset(tmp_path / "ds", write, suffix)
    if write is _nifti:  # a volume whose slices are all empty by the rule: all kept, noted
        sparse = np.zeros(SHAPE, np.int16)
        sparse[:, 3, 3] = 1000
        write_nifti(data / "test" / "normal" / "z_sparse.nii", sparse)
    model = tmp_path / "model.npz"
    assert main(["fit", str(data / "train" / "normal"), "--out", str(model), *BANK]) == 0
    printed = capsys.readouterr().out
    assert "on 18 normal images" in printed  # 3 volumes × 6 slices
    assert "volume threshold " in printed
    record = load_detector(model).metadata_["volumes"]
    assert (record["axis"], record["n_volumes"]) == ("axial", 3)
    assert np.isfinite(record["threshold"])

    scores, heat = tmp_path / "scores.csv", tmp_path / "heat"
    args = ["score", str(model), str(data / "test"), "--out", str(scores), "--heatmaps", str(heat)]
    assert main(args) == 0
    captured = capsys.readouterr()
    n_volumes = 5 if write is _nifti else 4
    rows = _rows(scores)
    assert len(rows) == 6 * n_volumes
    names = [r["path"] for r in rows]
    assert names[0].endswith(":0000")
    assert names[5].endswith(":0005")
    volumes = _rows(tmp_path / "scores_volumes.csv")
    assert len(volumes) == n_volumes
    assert list(volumes[0]) == ["volume", "source", "slices_scored", "slices", "score", "label"]
    for v in volumes:
        mine = sorted(
            (float(r["score"]) for r in rows if r["path"].rpartition(":")[0] == v["volume"]),
            reverse=True,
        )
        assert int(v["slices_scored"]) == len(mine) == 6 == int(v["slices"])
        assert float(v["score"]) == pytest.approx(mine[0], rel=1e-5)  # top ⌈0.6⌉ = 1 slice
        assert int(v["label"]) == (float(v["score"]) > record["threshold"])
    assert "scores_volumes.csv" in captured.out
    pngs = sorted(p.name for p in heat.glob("*.png"))
    montages = [p for p in pngs if p.startswith("volume_")]
    assert len(montages) == n_volumes
    assert len(pngs) == 6 * n_volumes + n_volumes
    if write is _nifti:
        assert montages[0] == "volume_0000_a0.png"
        assert "0000_a0_0000.png" in pngs
        assert "every slice is empty by the empty-slice rule: all kept" in captured.err
        assert volumes[-1]["volume"] == "z_sparse"
        # Another plane than the model's: scored, with a note that its thresholds are not
        # for these slices.
        one = str(data / "test" / "normal" / "z_sparse.nii")
        assert main(["score", str(model), one, "--axis", "coronal"]) == 0
        assert "note: the model was fitted on axial slices and scores coronal ones" in (
            capsys.readouterr().err
        )
        # A 2-D image, into the CSV of the volumes above: their volume CSV is not left to
        # contradict it, and the image is scored with a note (it was silent).
        from PIL import Image

        png = tmp_path / "image.png"
        image = tissue(np.random.default_rng(1), (1, 32, 32))[0] // 2
        Image.fromarray(image.astype(np.uint8)).save(png)
        assert main(["score", str(model), str(png), "--out", str(scores)]) == 0
        err = capsys.readouterr().err
        assert "note: the model was fitted on volumes' slices; 1 input(s) are 2-D images" in err
        assert "note: removed " in err
        assert not (tmp_path / "scores_volumes.csv").exists()
        assert [r["path"] for r in _rows(scores)] == [str(png)]

    report = tmp_path / "report"
    args = ["evaluate", str(data), "--out", str(report), *BANK, "--no-validation"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "slices: AUROC" in printed
    assert "volumes: AUROC" in printed
    metrics = json.loads((report / "metrics.json").read_text())
    assert 0 <= metrics["metrics"]["auroc"] <= 1
    volume = metrics["volume_metrics"]
    assert 0 <= volume["auroc"] <= 1
    assert 0 <= volume["average_precision"] <= 1
    assert (volume["n_normal"], volume["n_abnormal"]) == (n_volumes - 2, 2)
    assert np.isfinite(volume["threshold"])
    assert metrics["config"]["volumes"] == {
        "train_normal": 3,
        "test_normal": n_volumes - 2,
        "test_abnormal": 2,
    }
    assert "## Volume-level metrics" in (report / "report.md").read_text()
    if write is _series:
        _check_a_model_fitted_on_images(tmp_path, model, data, capsys)


def _check_a_model_fitted_on_images(tmp_path, model, data, capsys):
    """A model without a volume threshold (fitted on 2-D images) scores volumes, with an empty
    volume label and the reason on stderr."""
    from msde_jax import load_detector

    detector = load_detector(model)
    images_model = tmp_path / "images_model.npz"
    detector.save(images_model, metadata={"embedder": detector.metadata_["embedder"]})
    assert main(["score", str(images_model), str(data / "test" / "abnormal" / "a0")]) == 0
    captured = capsys.readouterr()
    slices, _, volumes = captured.out.partition("\n\n")  # no --out: both tables on stdout
    assert len(_rows_text(slices)) == 6
    (row,) = _rows_text(volumes)
    assert row["volume"].startswith("a0-")
    assert row["label"] == ""
    assert "volume labels: not available" in captured.err
    assert "fitted on 2-D images" in captured.err


def _rows_text(text):
    return list(csv.DictReader(text.strip().splitlines()))


def test_fit_on_embeddings_of_volumes_keeps_their_folds(tmp_path, capsys):
    """`embed` records which volume each row is a slice of, and `fit --embeddings` fits with
    folds of volumes and stores the volume threshold, as `fit` on the volumes does (its rows
    were fitted as separate images: a volume's slices in several folds, the threshold low)."""
    from msde_jax import load_detector

    rng = np.random.default_rng(1)
    folder = tmp_path / "normal"
    folder.mkdir()
    for i in range(5):
        write_nifti(folder / f"v{i}.nii.gz", tissue(rng, SHAPE))
    emb, direct = tmp_path / "emb.npz", tmp_path / "direct.npz"
    assert main(["embed", str(folder), "--out", str(emb), *EMBED, "--features", "patches"]) == 0
    with np.load(emb) as z:
        assert z["volume"].tolist() == np.repeat(np.arange(5), 6).tolist()
        assert z["slice_index"].tolist() == list(range(6)) * 5
        assert z["volume_names"].tolist() == [f"v{i}" for i in range(5)]
        assert z["volume_slices"].tolist() == [6] * 5
        assert str(z["axis"]) == "axial"
        arrays = dict(z)
    assert main(["fit", str(folder), "--out", str(direct), *BANK]) == 0

    def fit(source, out):
        return main(["fit", str(source), "--embeddings", "--bank-size", "200", "--out", str(out)])

    assert fit(emb, tmp_path / "m.npz") == 0
    captured = capsys.readouterr()
    assert "volume threshold " in captured.out
    # 5 volumes < 1 / contamination − 1 = 19: the highest score, flagging 1 / 6, said
    assert "comes from 5 training volume(s): it is the highest of their scores" in captured.err
    want, got = (load_detector(p) for p in (direct, tmp_path / "m.npz"))
    assert got.threshold_ == pytest.approx(want.threshold_, rel=1e-6)
    record = {k: v for k, v in got.metadata_["volumes"].items() if k != "threshold"}
    assert record == {k: v for k, v in want.metadata_["volumes"].items() if k != "threshold"}
    assert got.metadata_["volumes"]["threshold"] == pytest.approx(
        want.metadata_["volumes"]["threshold"], rel=1e-6
    )
    # A file written before the volume arrays: fitted as images, and said.
    old = tmp_path / "old.npz"
    np.savez(old, **{k: arrays[k] for k in ("embeddings", "names", "config")})
    assert fit(old, tmp_path / "m_old.npz") == 0
    err = capsys.readouterr().err
    assert "records no volumes (an older msde-jax embed wrote it)" in err
    # Arrays that disagree are refused.
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{**arrays, "volume": arrays["volume"][::-1] + 5})
    assert fit(bad, tmp_path / "m_bad.npz") == 2
    assert "not the ones `msde-jax embed` writes" in capsys.readouterr().err


def test_bad_volume_files_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.nii.gz").write_bytes(b"not a nifti file")
    model = tmp_path / "m.npz"
    assert main(["fit", str(tmp_path / "bad"), "--out", str(model), *BANK]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:")
    assert err.count("\n") == 1
    assert "broken.nii.gz" in err
    assert not model.exists()
    # A DICOM series with a damaged slice: the slice is named.
    series = write_dicom_series(
        tmp_path / "ds" / "train" / "normal" / "ct", tissue(np.random.default_rng(0), SHAPE)
    )
    (series / "slice002.dcm").write_bytes((series / "slice002.dcm").read_bytes()[:300])
    assert main(["evaluate", str(tmp_path / "ds"), "--out", str(tmp_path / "r"), *BANK]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:")
    assert "slice002.dcm" in err
    assert "Traceback" not in err
    # --skip-unreadable leaves the volume out and says so; nothing else is left here.
    args = ["fit", str(tmp_path / "bad"), "--out", str(model), "--skip-unreadable", *BANK]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "skipped: " in err
    assert "broken.nii.gz" in err
    assert "none of the 1 files could be read" in err
    # A DICOM series is read along its own normal: another plane is refused, by name.
    series = write_dicom_series(tmp_path / "good", tissue(np.random.default_rng(0), SHAPE))
    assert main(["fit", str(series), "--out", str(model), "--axis", "coronal", *BANK]) == 2
    assert "(axial slices here); reslicing it to 'coronal' is not supported" in (
        capsys.readouterr().err
    )


def test_a_model_records_the_plane_its_slices_lie_in(tmp_path, capsys):
    """Fitted on coronal DICOM series, a model recorded --axis's default 'axial' and then cut
    NIfTI volumes axially without a word; a model fitted on coronal NIfTI refused a coronal
    series."""
    from msde_jax import load_detector

    rng = np.random.default_rng(0)
    for i in range(3):
        uid = f"1.2.826.0.1.3680043.8.498.9{i}"
        write_dicom_series(tmp_path / "cor" / f"s{i}", tissue(rng, SHAPE), uid=uid, coronal=True)
    nifti = write_nifti(tmp_path / "v.nii.gz", tissue(rng, SHAPE))
    model = tmp_path / "m.npz"
    fit = ["fit", "--out", str(model), "--n-folds", "3", *BANK]
    assert main([*fit[:1], str(tmp_path / "cor"), *fit[1:]]) == 0
    assert load_detector(model).metadata_["volumes"]["axis"] == "coronal"
    assert main(["score", str(model), str(tmp_path / "cor" / "s0"), str(nifti)]) == 0
    err = capsys.readouterr().err
    assert "note: the model was fitted on" not in err  # both read as coronal slices
    # fit --embeddings reads the plane `embed` recorded
    emb, from_emb = str(tmp_path / "e.npz"), tmp_path / "n.npz"
    assert (
        main(["embed", str(tmp_path / "cor"), "--out", emb, *EMBED, "--features", "patches"]) == 0
    )
    assert main(["fit", emb, "--embeddings", "--out", str(from_emb), *fit[3:5], *BANK[-2:]]) == 0
    assert load_detector(from_emb).metadata_["volumes"]["axis"] == "coronal"
    assert main(["score", str(model), str(tmp_path / "cor" / "s1"), "--axis", "axial"]) == 0
    assert "note: the model was fitted on" not in capsys.readouterr().err  # its own plane
    axial = write_dicom_series(tmp_path / "ax", tissue(rng, SHAPE))
    assert main(["score", str(model), str(axial), "--axis", "axial"]) == 0
    assert "fitted on coronal slices and scores axial ones" in capsys.readouterr().err


def test_the_volume_threshold_lines_name_the_quantile_unrounded():
    """--contamination 0.025 printed "the 98% quantile" (and 0.001 "100%")."""
    from msde_jax.cli.volumes import fit_note, fit_summary

    record = {"threshold": 3.2, "contamination": 0.025, "n_volumes": 12}
    assert "the 97.5 % quantile of the 12 training volumes' scores" in fit_summary(record)
    assert "more than the 2.5 % contamination promises" in fit_note(record)
    assert "the 99.9 % quantile" in fit_summary({**record, "contamination": 0.001})
