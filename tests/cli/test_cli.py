"""The msde-jax command line, end to end on small real data (random backbone weights, 32 px)."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image
from testing import hide_matplotlib, write_dicom, write_dicom_series

from msde_jax.cli import build_parser, main

EMBED = ["--weights", "random", "--image-size", "32", "--batch-size", "16"]
FAST = [*EMBED, "--k", "10"]  # --k: the MSDE detector
BANK = [*EMBED, "--bank-size", "200"]  # the default detector, a small bank
SAVED = __import__("pathlib").Path(__file__).parents[1] / "fixtures" / "saved_models"


@pytest.fixture(scope="module")
def pneumonia():
    with np.load(
        __import__("importlib.resources").resources.files("msde_jax") / "data/pneumoniamnist.npz"
    ) as z:
        return {k: z[k][:30] for k in ("train_normal", "test_normal", "test_abnormal")}


@pytest.fixture
def folder(tmp_path, pneumonia):
    for split, cls, key in (
        ("train", "normal", "train_normal"),
        ("test", "normal", "test_normal"),
        ("test", "abnormal", "test_abnormal"),
    ):
        d = tmp_path / "ds" / split / cls
        d.mkdir(parents=True)
        for i, img in enumerate(pneumonia[key]):
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return tmp_path / "ds"


def test_help_has_examples(capsys):
    for command in ("demo", "embed", "fit", "score", "evaluate", "train-backbone"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_demo_writes_a_report(tmp_path, capsys, monkeypatch):
    # The default configuration: the patch bank, validated on synthetic anomalies first; --seed
    # reaches both the bank's coreset and the synthetic anomalies, and the report records it.
    from msde_jax.pipeline import selection

    seeds = []
    validate = selection.synthetic_validation

    def recorded(*args, **kwargs):
        seeds.append(kwargs.get("seed"))
        return validate(*args, **kwargs)

    monkeypatch.setattr(selection, "synthetic_validation", recorded)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--limit", "40", *BANK, "--seed", "1"]) == 0
    assert seeds == [1]
    printed = capsys.readouterr().out
    assert "pneumoniamnist: AUROC" in printed
    assert "configuration: as given: PatchBankDetector(size=200, seed=1)" in printed
    assert "features='patches'" in printed
    assert "synthetic-validation AUROC" in printed
    assert "4 held-out normals vs 8 synthetic anomalies" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["metrics"]["auroc"] <= 1
    assert metrics["config"]["detector"]["size"] == 200
    assert (metrics["config"]["detector"]["seed"], metrics["config"]["seed"]) == (1, 1)
    assert metrics["config"]["embedder"]["features"] == "patches"
    (validated,) = metrics["config"]["synthetic_validation"]["auroc"].values()
    assert 0 <= validated <= 1
    assert metrics["timings"]["validation_s"] > 0
    assert metrics["config"]["environment"]["versions"]["msde-jax"]  # where it ran
    for name in ("roc.png", "pr.png", "histogram.png", "grid.png", "overlays.png", "report.md"):
        assert (out / name).exists(), name
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_default_configuration_is_the_recommended_rule():
    from msde_jax import recommended
    from msde_jax.cli.configuration import args_detector, args_embedder

    args = build_parser().parse_args(["evaluate", "pneumoniamnist", "--out", "r"])
    rule = recommended()
    assert args_embedder(args).config() == rule.embedder.config()
    assert type(args_detector(args)) is type(rule.detector)
    assert args_detector(args).get_params() == rule.detector.get_params()


def _assert_rows_are_the_detectors(model, rows):
    """Each CSV row's score is the saved detector's score of the file in that row, and its
    label is whether the score passes the threshold."""
    from msde_jax import Embedder, load_detector

    detector = load_detector(model)
    embedder = Embedder.from_config(detector.metadata_["embedder"], progress=False)
    want = detector.score_samples(embedder.embed([r["path"] for r in rows]))
    np.testing.assert_allclose([float(r["score"]) for r in rows], want, rtol=1e-5)
    assert [int(r["label"]) for r in rows] == (want > detector.threshold_).astype(int).tolist()


def test_score_with_a_model_without_threshold_leaves_the_labels_empty(tmp_path, folder, capsys):
    """A model fitted with threshold="none" ranks only: every label was 0 ("0 above the
    threshold nan"), and the heatmaps said "below nan"."""
    from msde_jax import Embedder, PatchBankDetector
    from msde_jax.cli.configuration import embedder_metadata

    embedder = Embedder(weights="random", image_size=32, features="patches", progress=False)
    train = sorted(str(p) for p in (folder / "train" / "normal").glob("*.png"))[:12]
    detector = PatchBankDetector(threshold="none", size=200).fit(embedder.embed(train))
    model = tmp_path / "ranks.npz"
    detector.save(model, metadata=embedder_metadata(embedder))
    out, heat = tmp_path / "s.csv", tmp_path / "heat"
    test = str(folder / "test" / "abnormal")
    assert main(["score", str(model), test, "--out", str(out), "--heatmaps", str(heat)]) == 0
    captured = capsys.readouterr()
    assert "(no threshold)" in captured.out
    assert "the label column is left empty" in captured.err
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == 30
    assert {r["label"] for r in rows} == {""}
    assert len(list(heat.glob("*.png"))) == 30


def test_fit_then_score_folders(tmp_path, folder, capsys):
    from msde_jax import PatchBankDetector, load_detector

    model = tmp_path / "model.npz"
    assert main(["fit", str(folder / "train" / "normal"), "--out", str(model), *BANK]) == 0
    assert "(14 × 14 × 152 features)" in capsys.readouterr().out
    scores = tmp_path / "scores.csv"
    assert main(["score", str(model), str(folder / "test"), "--out", str(scores)]) == 0
    rows = list(csv.DictReader(scores.read_text().splitlines()))
    assert len(rows) == 60
    assert rows[0]["path"].endswith(".png")
    _assert_rows_are_the_detectors(model, rows)
    heat = tmp_path / "heat"
    assert (
        main(["score", str(model), str(folder / "test" / "abnormal"), "--heatmaps", str(heat)]) == 0
    )
    pngs = sorted(p.name for p in heat.glob("*.png"))
    assert len(pngs) == 30  # one overlay per input, named after it
    assert pngs[0] == "0000_000.png"
    with np.load(heat / "maps.npz") as z:
        assert z["maps"].shape == (30, 32, 32)  # the embedder's input side
        assert z["names"][0].endswith("000.png")
        assert z["files"].tolist() == pngs
        assert z["maps_threshold"] == z["threshold"]  # a bank's maps are in its score's units
    # DICOM files go through the same reader: one overlay each, named after the file.
    import pydicom

    dicoms = [
        pydicom.data.get_testdata_file(n, download=False) for n in ("CT_small.dcm", "MR_small.dcm")
    ]
    heat_dcm = tmp_path / "heat_dcm"
    assert main(["score", str(model), *dicoms, "--heatmaps", str(heat_dcm)]) == 0
    assert sorted(p.name for p in heat_dcm.glob("*.png")) == [
        "0000_CT_small.png",
        "0001_MR_small.png",
    ]
    detector = load_detector(model)
    assert isinstance(detector, PatchBankDetector)
    assert detector.metadata_["embedder"]["backbone"] == "efficientnet_lite0"
    assert detector.metadata_["embedder"]["features"] == "patches"
    capsys.readouterr()


def test_fit_then_score_with_the_msde_detector(tmp_path, folder, capsys):
    from msde_jax import MSDEDetector

    model = tmp_path / "model.npz"
    fit = ["fit", str(folder / "train" / "normal"), "--out", str(model), *FAST]
    assert main(fit) == 0
    assert MSDEDetector.load(model).metadata_["embedder"]["features"] == "pooled"
    heat = tmp_path / "heat"
    assert main(["score", str(model), str(folder / "test"), "--heatmaps", str(heat)]) == 2
    assert "no spatial resolution, so there are no heatmaps" in capsys.readouterr().err
    assert not heat.exists()
    assert main(["score", str(model), str(folder / "test")]) == 0
    assert "transductive" not in capsys.readouterr().err
    # The paper preset's scores depend on the batch: score said nothing of it.
    paper = tmp_path / "paper.npz"
    assert (
        main(["fit", str(folder / "train" / "normal"), "--out", str(paper), "--paper", *FAST]) == 0
    )
    assert main(["score", str(paper), str(folder / "test")]) == 0
    assert "note: the model is transductive (the paper's preset)" in capsys.readouterr().err
    _check_skip_unreadable(tmp_path, folder, model, capsys)


def _check_skip_unreadable(tmp_path, folder, model, capsys):
    """--skip-unreadable lists every skipped file; without it the first one stops `score`."""
    import shutil

    scans = tmp_path / "scans"
    shutil.copytree(folder / "test" / "normal", scans)
    (scans / "broken.png").write_bytes(b"not a png")
    (scans / "empty.png").write_bytes(b"")
    out = tmp_path / "s.csv"
    assert main(["score", str(model), str(scans), "--out", str(out)]) == 2  # stops by default
    assert "broken.png: not a readable image" in capsys.readouterr().err
    assert main(["score", str(model), str(scans), "--out", str(out), "--skip-unreadable"]) == 0
    err = capsys.readouterr().err
    assert err.count("skipped: ") == 2
    assert "broken.png" in err
    assert "empty.png" in err
    assert "skipped 2 unreadable file(s) of 32" in err
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == 30
    _assert_rows_are_the_detectors(model, rows)
    (tmp_path / "bad_only").mkdir()
    (tmp_path / "bad_only" / "x.png").write_bytes(b"nope")
    args = ["score", str(model), str(tmp_path / "bad_only"), "--skip-unreadable"]
    assert main(args) == 2
    assert "none of the 1 files could be read" in capsys.readouterr().err
    scores = tmp_path / "scores.csv"
    assert main(["score", str(model), str(folder / "test"), "--out", str(scores)]) == 0
    assert len(list(csv.DictReader(scores.read_text().splitlines()))) == 60
    capsys.readouterr()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--detector", "bank", "--k", "10"], "--k is an MSDE option: add --detector msde"),
        (["--detector", "msde", "--bank-size", "9"], "--bank-size is a memory-bank option"),
        (["--paper", "--reduce", "max"], "--reduce is a memory-bank option"),
        (
            ["--detector", "msde", "--reduce", "max", "--bank-size", "9"],
            "--bank-size, --reduce are memory-bank options",
        ),
        (["--features", "pooled", "--detector", "bank"], "scores patch features"),
        (["--features", "patches", "--k", "10"], "--detector bank, or --features pooled"),
        (["--select", "--paper"], "--select chooses the detector and features itself: drop"),
        (["--select", "--no-validation"], "drop --no-validation"),
        (["--detector", "bank", "--threshold", "chi2"], "--threshold: threshold='chi2' does not"),
        (["--paper", "--bank-size", "10"], "--bank-size is a memory-bank option: a detector is"),
        (["--features", "pooled", "--bank-size", "9"], "drop --bank-size, or --features."),
        (["--mode", "none", "--k", "5"], "--mode none fits no mean shift, which --k sets"),
        (["--bank-size", "0"], "--bank-size: size must be a positive int"),
        (["--detector", "ensemble", "--k", "10"], "ensemble sets its components' features"),
        (["--detector", "ensemble", "--features", "pooled"], "drop --features"),
        (["--detector", "ensemble", "--threshold", "chi2"], "does not apply to --detector ens"),
    ],
    ids=[
        "bank-k",
        "msde-size",
        "paper-reduce",
        "msde-two",
        "bank-pooled",
        "msde-patches",
        "select-paper",
        "select-novalidation",
        "bank-chi2",
        "paper-size",
        "pooled-size",
        "none-k",
        "size-0",
        "ensemble-k",
        "ensemble-features",
        "ensemble-chi2",
    ],
)
def test_conflicting_detector_options_are_one_line_errors(tmp_path, capsys, options, message):
    out = tmp_path / "r"
    assert (
        main(["evaluate", "pneumoniamnist", "--out", str(out), "--limit", "12", *EMBED, *options])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error:")
    assert err.count("\n") == 1  # one line
    assert message in err
    assert not out.exists()


def _select_demo(tmp_path, capsys, n_candidates):
    out = tmp_path / "r"
    assert main(["demo", "--out", str(out), "--limit", "20", *EMBED, "--select"]) == 0
    printed = capsys.readouterr().out
    config = json.loads((out / "metrics.json").read_text())["config"]
    validated = config["synthetic_validation"]["auroc"]
    assert list(validated)[0] == "bank:top"
    assert len(validated) == n_candidates
    assert validated["msde:head"] is None  # k=50 neighbours, 16 fitting normals: not fitted
    measured = {n: v for n, v in validated.items() if v is not None}
    best = max(measured, key=measured.get)  # the first of equals, as select()
    assert config["configuration"] == f"{best} (selected)"
    assert f"configuration: {best} (selected)" in printed
    # its own AUROC, looked up by name (a prefix matched knn:head for knn:head-cosine)
    assert f"synthetic-validation AUROC {measured[best]:.3f} (" in printed
    assert f"{n_candidates} configuration(s); msde:head not fitted)" in printed


def test_select_picks_by_synthetic_validation(tmp_path, capsys, monkeypatch):
    """The CLI's --select on three of the candidates (the full pool: the slow test below)."""
    from msde_jax.pipeline import presets

    every = presets.candidates

    def three(backbone, **options):
        pool = every(backbone, **options)
        return {name: pool[name] for name in ("bank:top", "knn:head", "msde:head")}

    monkeypatch.setattr(presets, "candidates", three)
    _select_demo(tmp_path, capsys, 3)


@pytest.mark.slow
def test_select_validates_every_candidate(tmp_path, capsys):
    _select_demo(tmp_path, capsys, 10)


def test_select_prints_the_chosen_candidates_own_validation_auroc(tmp_path, capsys, monkeypatch):
    """When knn:head-cosine is chosen, its AUROC is printed, not knn:head's (a name prefix
    matched the first)."""
    from msde_jax.pipeline import selection

    _only(monkeypatch, "knn:head", "knn:head-cosine")
    real = selection.select

    def cosine(normals, candidates, **options):
        chosen = real(normals, candidates, **options)
        name = "knn:head-cosine"
        auroc = chosen.validation.scores[name].auroc
        return selection.Selection(name, candidates[name], auroc, chosen.validation)

    monkeypatch.setattr(selection, "select", cosine)
    out = tmp_path / "r"
    assert main(["demo", "--out", str(out), "--limit", "40", *EMBED, "--select"]) == 0
    validated = json.loads((out / "metrics.json").read_text())["config"]["synthetic_validation"]
    own, other = validated["auroc"]["knn:head-cosine"], validated["auroc"]["knn:head"]
    assert round(own, 3) != round(other, 3)  # else this test could not tell them apart
    assert f"synthetic-validation AUROC {own:.3f} (" in capsys.readouterr().out


def _only(monkeypatch, *names):
    """presets.candidates() cut to ``names`` (the full pool: the slow test above)."""
    from msde_jax.pipeline import presets

    every = presets.candidates
    monkeypatch.setattr(
        presets, "candidates", lambda backbone, **o: {n: every(backbone, **o)[n] for n in names}
    )


def test_the_ensemble_is_configured_from_the_options():
    from msde_jax import FusedDetector
    from msde_jax.cli.commands import UserError
    from msde_jax.cli.configuration import configured
    from msde_jax.pipeline.presets import ensemble

    args = ["fit", "x", "--out", "m.npz", "--detector", "ensemble", *EMBED, "--seed", "3"]
    embedders, detector = configured(build_parser().parse_args([*args, "--contamination", "0.1"]))
    want = ensemble(weights="random", image_size=32, batch_size=16)
    assert {n: e.config() for n, e in embedders.items()} == {
        n: e.config() for n, e in want.embedder.items()
    }
    assert isinstance(detector, FusedDetector)
    assert (detector.contamination, detector.get_params()["patches__seed"]) == (0.1, 3)
    with pytest.raises(UserError, match="contamination must be in"):  # before any embedding
        configured(build_parser().parse_args([*args, "--contamination", "0.9"]))


def test_n_folds_sets_the_folds_of_every_detector():
    """--n-folds: the folds of the cross-fit threshold (the errors about too few images said
    "lower n_folds", which the command line had no option for)."""
    from msde_jax.cli.commands import UserError
    from msde_jax.cli.configuration import configured

    def folds(*options):
        args = build_parser().parse_args(["fit", "x", "--out", "m.npz", *EMBED, *options])
        return configured(args)[1].get_params()

    assert folds()["n_folds"] == 5  # the detectors' default
    assert folds("--n-folds", "3")["n_folds"] == 3
    assert folds("--n-folds", "3", "--detector", "msde")["n_folds"] == 3
    fused = folds("--n-folds", "3", "--detector", "ensemble")
    assert {fused[f"{n}__n_folds"] for n in ("layers", "head", "patches")} == {3}
    with pytest.raises(UserError, match="n_folds must be an int >= 2, got 1"):
        folds("--n-folds", "1")
    with pytest.raises(UserError, match="--threshold chi2 has none: drop one"):
        folds("--n-folds", "3", "--detector", "msde", "--threshold", "chi2")


def test_too_few_training_images_are_refused_before_the_embedding(tmp_path, folder, capsys):
    """fit and evaluate refused 4 normal images for 5 folds only after embedding them."""
    normal = folder / "train" / "normal"
    for extra in sorted(normal.glob("*.png"))[4:]:
        extra.unlink()
    model = str(tmp_path / "m.npz")
    for options in (BANK, [*EMBED, "--detector", "msde"], [*EMBED, "--detector", "ensemble"]):
        assert main(["fit", str(normal), "--out", model, *options]) == 2
        err = capsys.readouterr().err
        assert "embed" not in err  # neither "embedding" progress nor "embedded N images"
    assert "component 'layers': threshold='cross_fit' needs at least n_folds=5" in err
    assert err.rstrip().endswith("lower n_folds. (--n-folds)")
    assert main(["evaluate", str(folder), "--out", str(tmp_path / "r"), *BANK]) == 2
    assert "needs at least n_folds=5 training images (one fold each), got 4" in (
        capsys.readouterr().err
    )
    assert main(["fit", str(normal), "--out", model, *BANK, "--n-folds", "2"]) == 0
    assert "fitted PatchBankDetector(size=200, n_folds=2) on 4 normal images" in (
        capsys.readouterr().out
    )


def test_the_ensemble_end_to_end(tmp_path, folder, capsys):
    """`--detector ensemble` (a fused configuration, which --select may also choose):
    `evaluate` reports it (it used to fail at its report's title), `fit` saves it with one
    embedder per component, and `score` scores images and draws heatmaps from its bank."""
    from msde_jax import Embedder, FusedDetector, load_detector
    from msde_jax.pipeline.evaluation import embed

    ensemble = [*EMBED, "--detector", "ensemble"]
    out = tmp_path / "r"
    # 30 training normals, as the fit below: the two share their compiled programs.
    assert main(["demo", "--out", str(out), "--limit", "30", *ensemble, "--no-validation"]) == 0
    assert "configuration: as given: FusedDetector(" in capsys.readouterr().out
    assert (out / "overlays.png").exists()  # the bank component's heatmaps
    assert "efficientnet_lite0, fused (" in (out / "report.md").read_text()

    model = tmp_path / "model.npz"
    fit = ["fit", str(folder / "train" / "normal"), "--out", str(model), *ensemble]
    assert main([*fit, "--contamination", "0.1"]) == 0
    assert "(layers: 152; head: 1280; patches: 14 × 14 × 152 features)" in capsys.readouterr().out
    detector = load_detector(model)
    assert isinstance(detector, FusedDetector)
    assert detector.contamination == 0.1
    configs = detector.metadata_["embedders"]
    assert set(configs) == {"layers", "head", "patches"}

    scores, heat = tmp_path / "scores.csv", tmp_path / "heat"
    test = [str(p) for p in sorted((folder / "test" / "abnormal").glob("*.png"))[:8]]
    assert main(["score", str(model), *test, "--out", str(scores), "--heatmaps", str(heat)]) == 0
    rows = list(csv.DictReader(scores.read_text().splitlines()))
    assert [r["path"] for r in rows] == test
    embedders = {n: Embedder.from_config(c, progress=False) for n, c in configs.items()}
    want = detector.score_samples(embed(embedders, test, progress=False))
    np.testing.assert_allclose([float(r["score"]) for r in rows], want, rtol=1e-5)
    assert [int(r["label"]) for r in rows] == (want > detector.threshold_).astype(int).tolist()
    with np.load(heat / "maps.npz") as z:
        assert z["maps"].shape == (8, 32, 32)
        # The scores are the fused detector's; the maps and the colour bar its bank's.
        assert z["threshold"] == detector.threshold_
        assert z["maps_threshold"] == detector.components["patches"].threshold_ != z["threshold"]


def test_fit_select_saves_the_chosen_configuration(tmp_path, folder, capsys, monkeypatch):
    from msde_jax import MSDEDetector

    # any of them is saved the same way (the ensemble: above); msde:head's k = 50 neighbours
    # are more than the 27 fitting normals, so it is not fitted (fit said nothing of it)
    _only(monkeypatch, "knn:head", "msde:head")
    model = tmp_path / "model.npz"
    fit = ["fit", str(folder / "train" / "normal"), "--out", str(model), *EMBED, "--select"]
    assert main(fit) == 0
    out = capsys.readouterr().out
    assert "configuration: knn:head (selected): synthetic-validation AUROC" in out
    assert (
        "3 held-out normals vs 6 synthetic anomalies, few: a rough AUROC; 2 configurations; "
        "msde:head not fitted)" in out
    )
    detector = MSDEDetector.load(model)
    assert detector.get_params()["score"] == "knn"
    assert detector.metadata_["embedder"]["features"] == "pooled"
    assert main([*fit, "--embeddings"]) == 2
    assert "--select embeds the images with each candidate" in capsys.readouterr().err
    assert main([*fit, "--contamination", "0.9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --contamination: contamination must be in (0, 0.5]")
    assert "embedded" not in err  # refused before the selection embeds anything
    assert main([*fit, "--k", "10"]) == 2
    assert "--select chooses the detector and features itself: drop --k" in (
        capsys.readouterr().err
    )


def test_options_that_would_be_ignored_or_wrap_around_are_refused(tmp_path, capsys):
    """The embedder's options with --embeddings (the file's embedder made the features), and
    a seed beyond JAX's 32 bits (it repeated a smaller seed's draws)."""
    fit = ["fit", str(tmp_path / "e.npz"), "--embeddings", "--out", str(tmp_path / "m.npz")]
    assert main([*fit, "--backbone", "resnet18", "--image-size", "64"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: --backbone, --image-size: the features of --embeddings were made by the embedder"
    )
    for seed in ("4294967296", "-1"):
        with pytest.raises(SystemExit) as exit_:
            main(["demo", "--out", str(tmp_path / "r"), "--seed", seed])
        assert exit_.value.code == 2
        assert "expected an integer in [0, 2**32)" in capsys.readouterr().err
    assert build_parser().parse_args(["demo", "--seed", "4294967295"]).seed == 2**32 - 1
    # 0-d embeddings: one line, not a traceback
    np.savez(tmp_path / "e.npz", embeddings=np.array(1.0, np.float32))
    assert main(fit) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_embedding_a_dataset_file_says_which_images(tmp_path, pneumonia, capsys):
    np.savez(tmp_path / "d.npz", **pneumonia)
    emb = tmp_path / "e.npz"
    assert main(["embed", str(tmp_path / "d.npz"), "--out", str(emb), *EMBED]) == 0
    assert "d.npz: a dataset; reading its train_normal images" in capsys.readouterr().err
    with np.load(emb) as z:
        assert len(z["embeddings"]) == len(pneumonia["train_normal"])


def test_evaluate_npz_dataset(tmp_path, pneumonia, capsys):
    path = tmp_path / "d.npz"
    np.savez(path, **pneumonia)
    out = tmp_path / "report"
    assert (
        main(["evaluate", str(path), "--out", str(out), "--paper", "--threshold", "chi2", *FAST])
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["mode"].startswith("paper preset (transductive)")
    assert "AUROC" in capsys.readouterr().out
    # The preset with --mode inductive is what it says (it was labelled transductive).
    again = ["evaluate", str(path), "--out", str(tmp_path / "i"), "--paper", "--mode", "inductive"]
    assert main([*again, *FAST, "--no-validation"]) == 0
    metrics = json.loads((tmp_path / "i" / "metrics.json").read_text())
    assert metrics["config"]["mode"].startswith("paper preset (inductive)")
    assert "synthetic validation: skipped (--no-validation)" in capsys.readouterr().out


def test_a_transductive_mode_skips_the_synthetic_validation(monkeypatch):
    """Without --paper too: transductive scores depend on the batch the validation makes."""
    from msde_jax.cli import commands
    from msde_jax.io.inputs import SliceGroups
    from msde_jax.pipeline import selection

    class Data:
        train_normal = [np.zeros((8, 8), np.float32)] * 80  # enough for k = 50 and 5 folds

        def split_groups(self, split):
            return SliceGroups.images(80)

    def never(*args, **kwargs):
        raise AssertionError("the synthetic validation ran")

    monkeypatch.setattr(selection, "synthetic_validation", never)
    for extra in (["--mode", "transductive"], ["--paper"]):
        args = build_parser().parse_args(["evaluate", "d.npz", "--out", "r", *extra])
        *_, validation, why = commands._configuration(Data(), args, "cache")
        assert validation is None
        assert why == "transductive scores depend on the batch"


def test_embed_cache_and_fit_on_embeddings(tmp_path, folder, capsys, monkeypatch):
    from msde_jax import Embedder, MSDEDetector, PatchBankDetector

    emb = tmp_path / "emb.npz"
    cache = tmp_path / "cache"
    args = ["embed", str(folder / "train"), "--out", str(emb), "--cache-dir", str(cache), *EMBED]
    assert main(args) == 0
    with np.load(emb) as z:
        first = z["embeddings"]
    assert first.shape == (30, 1280)
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]  # one embedder configuration
    assert len(list(entry.glob("*.npy"))) == 30  # one entry per image
    # A second run reads every image from the cache: nothing is embedded.
    embedded = []
    real_embed = Embedder.embed

    def counted(self, items):
        embedded.append(len(items))
        return real_embed(self, items)

    monkeypatch.setattr(Embedder, "embed", counted)
    assert main(args) == 0
    assert embedded == []
    with np.load(emb) as z:
        np.testing.assert_array_equal(z["embeddings"], first)
    monkeypatch.undo()
    # Pooled embeddings go to the MSDE detector, patch features to the bank, by their shape.
    model = tmp_path / "m.npz"
    assert main(["fit", str(emb), "--embeddings", "--out", str(model), "--k", "10"]) == 0
    assert isinstance(MSDEDetector.load(model), MSDEDetector)
    from msde_jax.cli.configuration import args_detector

    args_2d = build_parser().parse_args(["fit", str(emb), "--embeddings", "--out", "m.npz"])
    assert isinstance(args_detector(args_2d, ndim=2), MSDEDetector)
    assert isinstance(args_detector(args_2d, ndim=4), PatchBankDetector)
    assert main([*args, "--features", "patches"]) == 0
    args = ["fit", str(emb), "--embeddings", "--out", str(model), "--bank-size", "50"]
    assert main([*args, "--coreset", "greedy"]) == 0
    params = PatchBankDetector.load(model).get_params()
    assert (params["size"], params["coreset"]) == (50, "greedy")
    capsys.readouterr()


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (
            lambda t, f: ["fit", str(t / "nope"), "--out", str(t / "m.npz"), *FAST],
            "no such file or folder",
        ),
        (lambda t, f: ["score", str(t / "garbage.npz"), str(f / "test")], "not a saved"),
        (  # a FusedDetector saved from Python: no embedders to embed images with
            lambda t, f: ["score", str(SAVED / "fused.npz"), str(f / "test")],
            "without an embedder for each in its metadata 'embedders'",
        ),
        (
            lambda t, f: ["evaluate", str(t / "bare_ds"), "--out", str(t / "r"), *FAST],
            "test/normal: no images",
        ),
        (
            lambda t, f: ["fit", str(t / "bad"), "--out", str(t / "m.npz"), *FAST],
            "not a readable image",
        ),
    ],
    ids=[
        "missing-path",
        "incompatible-model",
        "fused-from-python",
        "empty-class",
        "unreadable-image",
    ],
)
def test_errors_are_one_line_messages(tmp_path, folder, capsys, make_args, message):
    (tmp_path / "garbage.npz").write_bytes(b"garbage")
    for split, cls in (("train", "normal"), ("test", "normal"), ("test", "abnormal")):
        (tmp_path / "bare_ds" / split / cls).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "bare_ds/train/normal/a.png")
    (tmp_path / "bad").mkdir()
    for i in range(15):  # enough for --k 10 and 5 folds: the count is checked before reading
        (tmp_path / "bad" / f"x{i:02d}.png").write_bytes(b"not a png")
    assert main(make_args(tmp_path, folder)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:")
    assert err.count("\n") == 1  # one line
    assert message in err


def test_parser_defaults():
    args = build_parser().parse_args(["fit", "x", "--out", "m.npz"])
    assert args.backbone == "efficientnet_lite0"
    assert args.image_size == 224


def test_parser_options_come_from_the_library():
    from msde_jax.backbones.registry import BACKBONES
    from msde_jax.core.density import METHODS
    from msde_jax.detectors.msde import MODES, THRESHOLDS, MSDEDetector

    parser = build_parser()
    fit = next(a for a in parser._actions if a.dest == "command").choices["fit"]
    options = {a.dest: a for a in fit._actions}
    assert tuple(options["mode"].choices) == MODES
    assert tuple(options["threshold"].choices) == tuple(t for t in THRESHOLDS if t != "none")
    assert tuple(options["density"].choices) == METHODS
    assert tuple(options["backbone"].choices) == BACKBONES
    defaults = MSDEDetector().get_params()
    assert options["threshold"].default == defaults["threshold"]
    assert options["contamination"].default == defaults["contamination"]
    assert f"default {defaults['k']}" in options["k"].help
    args = parser.parse_args(["fit", "x", "--out", "m.npz", "--density", "uniform", "--k", "7"])
    assert (args.density, args.k) == ("uniform", 7)
    assert "weights_method" not in vars(args)
    from msde_jax import PatchBankDetector
    from msde_jax.core.memory_bank import REDUCTIONS

    assert tuple(options["reduce"].choices) == REDUCTIONS
    assert f"default {PatchBankDetector().get_params()['size']})" in options["bank_size"].help


def test_report_commands_check_matplotlib_before_embedding(tmp_path, capsys, monkeypatch):
    import functools

    from msde_jax.embedder import Embedder
    from msde_jax.pipeline.report import MATPLOTLIB_MISSING

    for method in ("__init__", "embed"):

        @functools.wraps(getattr(Embedder, method))  # keeps the signature the parser reads
        def no_backbone(*args, **kwargs):
            raise AssertionError("a backbone was loaded before the matplotlib check")

        monkeypatch.setattr(Embedder, method, no_backbone)
    hide_matplotlib(monkeypatch)
    out = tmp_path / "r"
    for command in (["demo"], ["evaluate", "pneumoniamnist"]):
        assert main([*command, "--out", str(out), "--limit", "40", *FAST]) == 2
        err = capsys.readouterr().err
        assert err.endswith(f"error: {MATPLOTLIB_MISSING}\n")
        assert "Traceback" not in err
    assert not out.exists()


def test_features_and_layers_options(tmp_path, folder, capsys):
    from msde_jax.cli.configuration import args_embedder
    from msde_jax.embedder import FEATURES

    parser = build_parser()
    for command in ("embed", "fit", "evaluate", "demo"):
        sub = next(a for a in parser._actions if a.dest == "command").choices[command]
        options = {a.dest: a for a in sub._actions}
        assert tuple(options["features"].choices) == FEATURES
        assert options["features"].default is None  # resolved by the command and detector
    with pytest.raises(SystemExit):
        parser.parse_args(["embed", "x", "--out", "e.npz", "--multiscale"])
    capsys.readouterr()
    args = parser.parse_args(
        ["embed", "x", "--out", "e.npz", "--backbone", "mobilenet_v2", *EMBED]
        + ["--layers", "features.13, features.16", "--layers", "features.6"]
    )
    assert args_embedder(args).layers == ("features.13", "features.16", "features.6")
    assert args_embedder(args).features == "pooled"  # embed's default
    # Patch features are (grid, grid, c) per image: only `embed` writes them.
    emb = tmp_path / "patches.npz"
    args = ["embed", str(folder / "train"), "--out", str(emb), *EMBED, "--features", "patches"]
    assert main([*args, "--layers", "_blocks.4"]) == 0
    with np.load(emb) as z:
        assert z["embeddings"].shape == (30, 14, 14, 40)
        config = json.loads(str(z["config"]))
    assert (config["layers"], config["grid"], config["aggregate"]) == (["_blocks.4"], 14, 3)
    fit = ["fit", str(folder / "train"), "--out", str(tmp_path / "m.npz"), *FAST]
    assert main([*fit, "--features", "patches"]) == 2
    assert "the MSDE detector cannot use" in capsys.readouterr().err
    assert main([*fit, "--layers", "layer2"]) == 2
    err = capsys.readouterr().err
    assert "unknown layers ['layer2'] for efficientnet_lite0" in err
    assert "_blocks.4" in err


def test_evaluate_skip_unreadable_dataset_files(tmp_path, folder, capsys):
    import shutil

    (folder / "test" / "abnormal" / "zz_broken.png").write_bytes(b"not a png")
    # a copy of a training image among the test normals: warned about
    shutil.copy(folder / "train" / "normal" / "000.png", folder / "test" / "normal" / "zz.png")
    out = tmp_path / "r"
    args = ["evaluate", str(folder), "--out", str(out), *FAST, "--no-validation"]
    assert main(args) == 2
    assert "zz_broken.png: not a readable image" in capsys.readouterr().err
    assert main([*args, "--skip-unreadable"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable file(s) of 31" in err
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert (config["test_abnormal"], config["test_copies_of_training"]) == (30, 1)
    assert "warning: 1 of the 61 test images are copies of training images" in err


def test_limit_counts_readable_inputs(tmp_path, capsys):
    """`--limit N --skip-unreadable`: the first N images that decode, not N files of which the
    unreadable ones are then dropped (which left fewer than N)."""
    import argparse

    from msde_jax.cli.inputs import readable

    items = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        if i in (0, 1, 2, 5):
            path.write_bytes(b"not a png")
        else:
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
        items.append(str(path))
    args = argparse.Namespace(skip_unreadable=True)
    assert readable(items, items, args, limit=3) == [3, 4, 6]  # 7.png is not read
    assert "skipped 4 unreadable file(s) of 7" in capsys.readouterr().err
    assert readable(items, items, args) == [3, 4, 6, 7]
    # Without --skip-unreadable: the first N inputs, whatever they hold.
    assert readable(items, items, argparse.Namespace(), limit=3) == [0, 1, 2]
    # A volume's slices (arrays) count as one input, kept whole.
    slices = [np.zeros((8, 8), np.float32)] * 3
    ordinals = np.array([0, 1, 1, 1, 2])
    mixed = [items[0], *slices, items[3]]
    assert readable(mixed, ["n"] * 5, args, limit=1, ordinals=ordinals) == [1, 2, 3]


def test_an_input_given_twice_is_read_once_with_a_note(tmp_path, capsys):
    import argparse

    from msde_jax.cli.inputs import command_inputs

    for i in range(2):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / f"{i}.png")
    one = str(tmp_path / "0.png")
    inputs = command_inputs([str(tmp_path), one], argparse.Namespace())
    assert inputs.items == [one, str(tmp_path / "1.png")]
    assert f"note: 1 input(s) given more than once were read once: {one}" in (
        capsys.readouterr().err
    )


def test_the_volume_threshold_note_says_when_too_few_volumes_keep_the_promise():
    from msde_jax.cli.volumes import fit_note
    from msde_jax.detectors.fitting import quantile_threshold

    def note(n, contamination):
        return fit_note({"n_volumes": n, "contamination": contamination, "threshold": 1.0})

    for n, c in ((1, 0.05), (18, 0.05), (1, 0.4), (2, 0.3)):
        # fewer than 1 / c − 1 volumes: the threshold is the highest score, said
        scores = np.arange(n, dtype=float)
        assert quantile_threshold(scores, c) == scores[-1]
        assert f"comes from {n} training volume(s): it is the highest" in note(n, c)
    assert note(19, 0.05) is None  # rank ⌈20 · 0.95⌉ = 19: exceeded with 1 / 20, as promised
    assert note(2, 0.4) is None  # rank 2 of 2: exceeded with 1 / 3 < 0.4
    assert "1 / contamination − 1 = 19 volumes" in note(5, 0.05)
    assert fit_note({"n_volumes": 1, "contamination": 0.05, "threshold": None}) is None


def test_a_dicom_slice_given_alone_is_read_as_an_image_with_a_note(tmp_path, capsys):
    import argparse

    from msde_jax.cli.inputs import command_inputs

    series = write_dicom_series(tmp_path / "ct", np.full((3, 8, 8), 40))
    radiograph = write_dicom(tmp_path / "dx.dcm", np.full((8, 8), 100))
    one = str(series / "slice001.dcm")
    inputs = command_inputs([one, str(radiograph)], argparse.Namespace())
    assert inputs.items == [one, str(radiograph)]
    assert "note: 1 DICOM slice(s) of a series given as file(s), read as 2-D images" in (
        capsys.readouterr().err
    )
    command_inputs([str(radiograph)], argparse.Namespace())
    assert "DICOM slice" not in capsys.readouterr().err


def test_seed_option():
    from msde_jax.cli.configuration import args_detector
    from msde_jax.pipeline.presets import candidates, seeded

    def detector(*extra):
        return args_detector(build_parser().parse_args(["fit", "x", "--out", "m.npz", *extra]))

    assert detector().get_params()["seed"] == 0
    assert detector("--seed", "7").get_params()["seed"] == 7
    # Not a bank-only option: MSDE fits are deterministic, and evaluate's validation is seeded.
    assert "seed" not in detector("--detector", "msde", "--seed", "7").get_params()
    for bad in ("-1", "x"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["fit", "x", "--out", "m.npz", "--seed", bad])
    # --select seeds every candidate's bank, a fused candidate's component included.
    pool = candidates("efficientnet_lite0", weights="random")
    params = {n: seeded(c.detector, 5).get_params() for n, c in pool.items()}
    assert params["bank:max"]["seed"] == 5
    assert params["ensemble:rank"]["patches__seed"] == 5
    assert not any("seed" in p for p in params["knn:head"])


def test_foreground_option_makes_a_masked_bank():
    from msde_jax.cli.commands import UserError
    from msde_jax.cli.configuration import args_detector

    args = build_parser().parse_args(["fit", "x", "--out", "m.npz", "--foreground", "pca"])
    assert args_detector(args).get_params()["foreground"] == "pca"
    default = build_parser().parse_args(["fit", "x", "--out", "m.npz"])
    assert args_detector(default).get_params()["foreground"] is None
    msde = ["fit", "x", "--out", "m.npz", "--foreground", "pca", "--detector", "msde"]
    with pytest.raises(UserError, match="--foreground is a memory-bank option"):
        args_detector(build_parser().parse_args(msde))


def test_position_option_reaches_the_bank():
    from msde_jax.cli.commands import UserError
    from msde_jax.cli.configuration import args_detector

    fit = ["fit", "x", "--out", "m.npz"]
    assert args_detector(build_parser().parse_args(fit)).get_params()["position"] == 1.0
    anywhere = args_detector(build_parser().parse_args([*fit, "--position", "0"]))
    assert anywhere.get_params()["position"] == 0.0
    with pytest.raises(UserError, match="position must be a finite number >= 0, got -2.0"):
        args_detector(build_parser().parse_args([*fit, "--position", "-2"]))
    with pytest.raises(
        UserError, match=r"position must be at most 10000 .*got 1e\+20"
    ):  # float32 overflowed
        args_detector(build_parser().parse_args([*fit, "--position", "1e20"]))
    with pytest.raises(UserError, match="--position is a memory-bank option"):
        args_detector(build_parser().parse_args([*fit, "--position", "2", "--detector", "msde"]))


def test_train_backbone_reads_only_the_training_normals_of_a_dataset_folder(folder, capsys):
    """A dataset folder without its test/normal split (training needs none) gives its
    train/normal images, never every image below it (test/abnormal included); a folder that
    is no dataset gives all its images."""
    import shutil

    from msde_jax.cli.inputs import normal_images

    train = sorted(str(p) for p in (folder / "train" / "normal").glob("*.png"))
    assert normal_images([str(folder)]) == train  # the whole dataset
    shutil.rmtree(folder / "test" / "normal")
    assert normal_images([str(folder)]) == train
    assert "using its train/normal folder" in capsys.readouterr().err
    shutil.rmtree(folder / "train")  # a dataset layout (test/) without training normals
    with pytest.raises(ValueError, match="train/normal"):
        normal_images([str(folder)])
    assert len(normal_images([str(folder / "test")])) == 30  # a plain folder of images


def test_a_dataset_folder_among_other_sources_gives_its_training_normals_only(tmp_path, capsys):
    """`train-backbone ds extra` (and `fit` / `embed`) read every image below ds, its
    abnormal test images included, when ds was not the only source."""
    import argparse

    from msde_jax.cli.inputs import command_inputs, normal_images

    def pngs(folder, n):
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")
        return [str(folder / f"{i}.png") for i in range(n)]

    train = pngs(tmp_path / "ds" / "train" / "normal", 2)
    pngs(tmp_path / "ds" / "test" / "normal", 2)
    pngs(tmp_path / "ds" / "test" / "abnormal", 2)
    extra = pngs(tmp_path / "extra", 2)
    sources = [str(tmp_path / "ds"), str(tmp_path / "extra")]
    assert sorted(normal_images(sources)) == sorted(train + extra)
    assert "a dataset; reading its normal training images" in capsys.readouterr().err
    items = command_inputs(sources[::-1], argparse.Namespace(), training=True).items
    assert sorted(items) == sorted(train + extra)
    assert len(command_inputs(sources, argparse.Namespace()).items) == 8  # score: every image


def test_npz_inputs_the_command_line_cannot_read_say_what_it_can(tmp_path, capsys):
    """Advice the user can follow on the command line (not "say which one to read", nor a
    Python function to call)."""
    images = np.zeros((3, 8, 8), np.uint8)
    np.savez(tmp_path / "two.npz", images=images, labels=np.zeros(3))
    np.savez(tmp_path / "emb.npz", embeddings=np.zeros((3, 4)), names=np.array(["a", "b", "c"]))
    np.savez(tmp_path / "one.npz", images=images)
    out = ["--out", str(tmp_path / "e.npz"), *EMBED]
    assert main(["embed", str(tmp_path / "two.npz"), *out]) == 2
    assert "one image stack" in capsys.readouterr().err
    fit = ["fit", str(tmp_path / "emb.npz"), "--out", str(tmp_path / "m.npz"), *EMBED]
    assert main(fit) == 2
    assert "--embeddings" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "one.npz"), str(tmp_path / "one.npz"), *out]) == 2
    assert "must be the command's only input" in capsys.readouterr().err


def test_a_weights_file_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    """A model fitted with `--weights w/b.safetensors` scores from any folder."""
    import msde_jax.embedder
    from msde_jax.cli.configuration import _embedder_options, args_embedder

    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "b.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    cases = [
        ("w/b.safetensors", str(tmp_path / "w" / "b.safetensors")),
        ("random", "random"),  # not a file: a name
    ]
    parsed = [
        build_parser().parse_args(["fit", "x", "--out", "m", "--weights", w]) for w, _ in cases
    ]
    seen = {}
    monkeypatch.setattr(msde_jax.embedder, "Embedder", lambda backbone, **kw: seen.update(kw))
    for args, (_, recorded) in zip(parsed, cases, strict=True):
        args_embedder(args)
        assert seen["weights"] == recorded
        # ... and for the ensemble's and --select's embedders (they kept the relative path)
        assert _embedder_options(args)["weights"] == recorded


def test_fit_and_embed_read_a_dataset_folders_normal_training_images_only(tmp_path, capsys):
    """A dataset folder given to `fit` / `embed` was read whole: its abnormal test images
    went into the model of normal images."""
    import argparse

    from msde_jax.cli.commands import UserError
    from msde_jax.cli.inputs import command_inputs

    for split in ("train/normal", "test/normal", "test/abnormal"):
        (tmp_path / "ds" / split).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(
                tmp_path / "ds" / split / f"{i}.png"
            )
    args = argparse.Namespace()
    items = command_inputs([str(tmp_path / "ds")], args, training=True).items
    assert sorted(items) == [
        str(tmp_path / "ds" / "train" / "normal" / f"{i}.png") for i in range(2)
    ]
    assert "a dataset; reading its normal training images" in capsys.readouterr().err
    assert len(command_inputs([str(tmp_path / "ds")], args).items) == 6  # score: every image
    (tmp_path / "ds" / "train" / "normal" / "0.png").rename(tmp_path / "ds" / "0.png")
    (tmp_path / "ds" / "train" / "normal" / "1.png").unlink()
    (tmp_path / "ds" / "train" / "normal").rmdir()
    with pytest.raises(UserError, match="laid out as a dataset .* give the folder of its normal"):
        command_inputs([str(tmp_path / "ds")], args, training=True)
    # A MedIAnomaly folder: the normal training images its data.json lists.
    med = tmp_path / "med"
    (med / "images").mkdir(parents=True)
    for name in ("t0.png", "n0.png", "a0.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(med / "images" / name)
    splits = {"train": {"0": ["t0.png"]}, "test": {"0": ["n0.png"], "1": ["a0.png"]}}
    (med / "data.json").write_text(json.dumps(splits))
    capsys.readouterr()
    assert command_inputs([str(med)], args, training=True).items == [str(med / "images/t0.png")]
    assert "given more than once" not in capsys.readouterr().err
    # A training name listed twice is read once, with the note evaluate gives (a test name
    # listed twice is not fit's business).
    splits = {
        "train": {"0": ["t0.png", "t0.png"]},
        "test": {"0": ["n0.png", "n0.png"], "1": ["a0.png"]},
    }
    (med / "data.json").write_text(json.dumps(splits))
    assert command_inputs([str(med)], args, training=True).items == [str(med / "images/t0.png")]
    err = capsys.readouterr().err
    assert "note: 1 input(s) given more than once were read once" in err
    assert "t0.png" in err
    assert "n0.png" not in err


def test_evaluate_out_inside_a_split_folder_is_refused(tmp_path, capsys):
    """`evaluate ds --out ds/train/normal/report`: the next run trained on the report's PNGs."""
    for sub in ("train/normal", "test/normal", "test/abnormal"):
        (tmp_path / "ds" / sub).mkdir(parents=True)
    for sub in ("train/normal/report", "test/abnormal"):
        assert main(["evaluate", str(tmp_path / "ds"), "--out", str(tmp_path / "ds" / sub)]) == 2
        assert "inside the input folder" in capsys.readouterr().err
    assert not (tmp_path / "ds" / "train" / "normal" / "report").exists()


def test_heatmaps_folder_inside_an_input_folder_is_refused(tmp_path):
    """`score scans/ --heatmaps scans/maps`: the next run scored the last run's PNGs."""
    from msde_jax.cli.commands import UserError, _check_out

    (tmp_path / "scans").mkdir()
    for maps in ("scans/maps", "scans"):
        with pytest.raises(UserError, match="inside the input folder"):
            _check_out(
                str(tmp_path / maps),
                option="--heatmaps",
                folder=True,
                inputs=[str(tmp_path / "scans")],
            )
    _check_out(
        str(tmp_path / "maps"), option="--heatmaps", folder=True, inputs=[str(tmp_path / "scans")]
    )


def test_file_names_that_are_not_utf8_are_scored_and_reported(tmp_path, folder, capsys):
    """A Latin-1 name (caf\xe9.png, read as 'caf\udce9.png') stopped `score --out` after its
    header and `evaluate` at its grid; the CSV keeps the name's bytes, the report shows U+FFFD."""
    raw = os.fsencode(folder)
    for sub in (b"train/normal", b"test/normal", b"test/abnormal"):
        first = sorted(os.listdir(os.path.join(raw, sub)))[0]
        os.rename(os.path.join(raw, sub, first), os.path.join(raw, sub, b"caf\xe9.png"))
    out = tmp_path / "r"
    assert main(["evaluate", str(folder), "--out", str(out), *BANK, "--no-validation"]) == 0
    assert (out / "grid.png").exists()
    model, scores = tmp_path / "m.npz", tmp_path / "s.csv"
    assert main(["fit", str(folder / "train" / "normal"), "--out", str(model), *BANK]) == 0
    test = str(folder / "test" / "normal")
    assert main(["score", str(model), test, "--out", str(scores)]) == 0
    assert b"/caf\xe9.png," in scores.read_bytes()  # the file's name, as the disk has it
    capsys.readouterr()
    assert main(["score", str(model), test]) == 0
    assert "/caf\ufffd.png," in capsys.readouterr().out


def test_chi2_chooses_msde_and_empty_paths_are_refused(tmp_path, capsys):
    """--threshold chi2 (MSDE only) with no --detector was refused as a bank option; an empty
    --out wrote into the working folder and an empty --heatmaps turned heatmaps off."""
    from msde_jax.cli.configuration import args_detector
    from msde_jax.cli.parser import build_parser

    args = build_parser().parse_args(["fit", "x", "--out", "m.npz", "--threshold", "chi2"])
    assert type(args_detector(args)).__name__ == "MSDEDetector"
    for argv in (
        ["evaluate", "pneumoniamnist", "--out", ""],
        ["score", "m.npz", "x", "--heatmaps", " "],
        ["fit", "x", "--out", "m.npz", "--cache-dir", ""],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert "expected a path, got" in capsys.readouterr().err


def test_a_builtin_name_where_files_are_read_says_so(tmp_path, capsys):
    assert main(["fit", "pneumoniamnist", "--out", str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("no such file or folder") == 1
    assert "names the built-in dataset, which evaluate, demo and train-backbone read" in err


def test_bad_options_are_refused_before_any_input_is_read(tmp_path, capsys):
    """The inputs (volumes: minutes) were read before a bad option was refused."""
    missing = str(tmp_path / "not_read")
    for argv, message in (
        (["fit", missing, "--out", str(tmp_path / "m.npz"), "--bank-size", "0"], "--bank-size:"),
        (["evaluate", missing, "--out", str(tmp_path / "r"), "--k", "0"], "--k: k must be"),
        (["embed", missing, "--out", str(tmp_path / "e"), "--image-size", "15"], "image_size=15"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert "no such file" not in err


def test_a_model_saved_without_its_embedder_says_how_to_save_it(tmp_path, capsys):
    """A model saved from Python without metadata was said to be "fitted on precomputed
    embeddings", though fitted on images through an Embedder."""
    from msde_jax import PatchBankDetector

    x = np.random.default_rng(0).normal(size=(10, 2, 2, 4)).astype(np.float32)
    PatchBankDetector(size=20, n_folds=2).fit(x).save(tmp_path / "m.npz")
    assert main(["score", str(tmp_path / "m.npz"), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds no embedder configuration" in err
    assert "metadata={'embedder': embedder.config()}" in err


def test_evaluate_prints_sensitivity_and_warns_of_a_promise_not_kept(tmp_path, folder, capsys):
    """F1 0 at a good AUROC hid a threshold that flagged nothing; a missed false-positive
    promise was said only inside report.md."""
    import shutil

    shifted = tmp_path / "shifted"  # test normals that are not like the training normals
    shutil.copytree(folder, shifted)
    shutil.rmtree(shifted / "test" / "normal")
    shutil.copytree(folder / "test" / "abnormal", shifted / "test" / "normal")
    out = tmp_path / "r"
    argv = ["evaluate", str(shifted), "--out", str(out), "--no-validation", *FAST]
    assert main([*argv, "--n-folds", "2"]) == 0
    captured = capsys.readouterr()
    assert "(sensitivity " in captured.out
    assert ", false-positive rate " in captured.out
    assert f"report written to {out / 'report.md'}" in captured.out
    record = json.loads((out / "metrics.json").read_text())["threshold_promise"]
    assert ("warning: the threshold flagged" in captured.err) == (not record["kept"])
    assert not record["kept"]  # the "normals" are pneumonia images: far above 5 %
