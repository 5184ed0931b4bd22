"""The ``msde-jax`` argument parser: every command's options, with the library's defaults.

Option lists and defaults come from the library (:mod:`msde_jax.detectors.msde`,
:mod:`msde_jax.detectors.patch_bank`, :mod:`msde_jax.core.density`,
:mod:`msde_jax.backbones.registry`,
:class:`~msde_jax.ssl.config.TrainConfig`), never from copies here.
"""

import argparse
import inspect

__all__ = ["BANK_OPTIONS", "DETECTORS", "EXAMPLES", "MSDE_OPTIONS", "build_parser"]

EXAMPLES = {
    "demo": """examples:
  msde-jax demo                         # built-in PneumoniaMNIST, default backbone
  msde-jax demo --backbone mobilenet_v2 --out demo_mobilenet""",
    "embed": """examples:
  msde-jax embed scans/ --out embeddings.npz
  msde-jax embed a.png b.png --backbone resnet18 --weights resnet18-f37072fd.pth --out e.npz""",
    "fit": """examples:
  msde-jax fit normals/ --out model.npz
  msde-jax fit normal_scans/ --out model.npz   # NIfTI files, DICOM-series folders: their slices
  msde-jax fit train_normal.npz --out model.npz --paper
  msde-jax fit normals/ --select --out model.npz   # the label-free choice among candidates
  msde-jax fit embeddings.npz --embeddings --out model.npz   # features already computed""",
    "score": """examples:
  msde-jax score model.npz new_scans/ --out scores.csv
  msde-jax score model.npz scan.dcm --heatmaps maps/   # where in the image, as PNG + maps.npz
  msde-jax score model.npz ct.nii.gz --out s.csv   # per slice s.csv, per volume s_volumes.csv""",
    "evaluate": """examples:
  msde-jax evaluate ../shared/data/brain_tumor_mri/brain_tumor_mri.npz --out report_brain
  msde-jax evaluate my_dataset/ --backbone mobilenet_v2 --paper --out report
  (a dataset is an .npz with train_normal/test_normal/test_abnormal image stacks, a folder
   with train/normal, test/normal, test/abnormal (images, NIfTI files or DICOM-series
   folders: volumes also get volume-level metrics), a MedIAnomaly folder with data.json, or
   'pneumoniamnist' for the built-in copy)""",
    "train-backbone": """examples:
  msde-jax train-backbone pneumoniamnist --backbone mobilenet_v2 --anatomy dark --out adapted
  msde-jax evaluate pneumoniamnist --backbone mobilenet_v2 \\
      --weights adapted/backbone.safetensors --out report_adapted
  msde-jax train-backbone normals/ --backbone resnet18 --init scratch --task cutpaste \\
      --steps 5000 --out run1            # add --resume to continue an interrupted run
  (a dataset spec uses its train/normal images only; folders and .npz stacks are read as
   normal images)""",
}


DETECTORS = ("bank", "msde", "ensemble")
# Options that only the MSDE detector has (they imply --detector msde) and only the bank has.
MSDE_OPTIONS = ("paper", "mode", "k", "density")
BANK_OPTIONS = ("bank_size", "reduce", "foreground", "coreset", "position")


# ---------------------------------------------------------------------------- arguments
def _positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (a count of images)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _path(text: str) -> str:
    """An argparse type: a path, not empty (``--out ''`` wrote into the working folder,
    ``--heatmaps ''`` turned heatmaps off, ``--cache-dir ''`` used no cache, all silently)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return text


def _seed(text: str) -> int:
    """An argparse type: an integer in [0, 2**32) (a PRNG seed: JAX's keys hold 32 bits, so a
    larger one would repeat a smaller one's draws)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32), got {text!r}")
    return value


def _add_embedder_args(p: argparse.ArgumentParser) -> None:
    from msde_jax.backbones.registry import BACKBONES
    from msde_jax.embedder import FEATURES, Embedder

    d = {name: param.default for name, param in inspect.signature(Embedder).parameters.items()}
    g = p.add_argument_group("backbone")
    g.add_argument(
        "--backbone",
        default=d["backbone"],
        choices=BACKBONES,
        help="pretrained network that embeds the images (default: %(default)s)",
    )
    g.add_argument(
        "--weights",
        type=_path,
        default=None,
        help="a .pth / .safetensors / .onnx file instead of the default pretrained weights",
    )
    g.add_argument(
        "--image-size", type=int, default=d["image_size"], help="resize side (default: %(default)s)"
    )
    g.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help=(
            "images per forward pass (default: a 224-px image's pixels per CPU core, at most "
            "32; 256 per GPU/TPU)"
        ),
    )
    g.add_argument(
        "--features",
        default=None,
        choices=FEATURES,
        help="pooled: the last stage's (or each --layers map's) global average; multiscale: "
        "every stage's, concatenated; patches: PatchCore's (grid, grid, c) patch features of "
        "--layers (default: pooled for embed; for the other commands patches with the bank "
        "detector, their default, and pooled with --detector msde)",
    )
    g.add_argument(
        "--layers",
        action="append",
        default=None,
        metavar="NAMES",
        help="named backbone layers to read, comma-separated or repeated, e.g. "
        "features.13,features.16 (mobilenet_v2) or layer2,layer3 (resnet); "
        "see the README's backbone table",
    )
    g.add_argument(
        "--cache-dir",
        type=_path,
        default=None,
        help="cache embeddings here, keyed by backbone, weights, image content and the "
        "readers' version",
    )


def _add_training_args(p: argparse.ArgumentParser) -> None:
    from msde_jax.backbones.registry import BACKBONES
    from msde_jax.ssl.augment import ANATOMY, TASKS
    from msde_jax.ssl.config import OPTIMIZERS, SCHEDULES, TrainConfig

    d = TrainConfig()
    p.add_argument(
        "sources",
        nargs="+",
        help="normal images: a dataset ('pneumoniamnist', a dataset .npz or folder: its "
        "train/normal split), image files, folders, or an .npz image stack",
    )
    p.add_argument("--out", type=_path, required=True, help="run folder: checkpoint, log, backbone")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (without a checkpoint there: a note, and step 0)",
    )
    p.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        help="use only the first N images (a volume's slices count one each)",
    )
    g = p.add_argument_group("training")
    g.add_argument(
        "--backbone",
        default=d.backbone,
        choices=BACKBONES,
        help="(%(default)s; the other commands' default is efficientnet_lite0: fit the adapted "
        "weights with the same --backbone)",
    )
    g.add_argument("--task", default=d.task, choices=tuple(TASKS), help="(%(default)s)")
    g.add_argument(
        "--anatomy",
        default=None,
        choices=ANATOMY,
        help="where AnatPaste pastes: bright tissue (MRI) or dark lung fields (chest X-ray) "
        f"({d.anatomy}; not read by cutpaste)",
    )
    g.add_argument(
        "--init",
        type=_path,
        default=d.init,
        help="imagenet, scratch, or a weights file (%(default)s)",
    )
    for name, type_, help_ in (
        ("image-size", int, "training resolution"),
        ("batch-size", int, "clean images per step"),
        ("steps", int, "optimisation steps"),
        ("lr", float, "peak learning rate"),
        ("weight-decay", float, "weight decay"),
        ("warmup-steps", int, "linear warm-up steps (--steps or more: half the steps)"),
        ("head-hidden", int, "hidden width of the proxy head (0: linear)"),
        ("seed", _seed, "seed of head, augmentations and image order"),
        ("checkpoint-every", int, "steps between checkpoints"),
        ("log-every", int, "steps between log records"),
    ):
        field = "learning_rate" if name == "lr" else name.replace("-", "_")
        g.add_argument(
            f"--{name}",
            type=type_,
            default=getattr(d, field),
            help=f"{help_} (%(default)s)",
            dest=field,
        )
    g.add_argument("--optimizer", default=d.optimizer, choices=OPTIMIZERS, help="(%(default)s)")
    g.add_argument("--schedule", default=d.schedule, choices=SCHEDULES, help="(%(default)s)")


def _add_detector_args(p: argparse.ArgumentParser) -> None:
    from msde_jax.core.density import METHODS
    from msde_jax.core.memory_bank import REDUCTIONS
    from msde_jax.detectors.bank_config import CORESETS
    from msde_jax.detectors.msde import MODES, THRESHOLDS, MSDEDetector
    from msde_jax.detectors.patch_bank import PatchBankDetector

    # The detector options default to None so that the commands can tell them apart from
    # values given on the command line; the help shows the detectors' own defaults.
    d = MSDEDetector().get_params()
    bank = PatchBankDetector().get_params()
    g = p.add_argument_group("detector")
    g.add_argument(
        "--detector",
        choices=DETECTORS,
        default=None,
        help="bank: PatchCore's patch memory bank on --features patches, an image scored by "
        "the mean of its top 10 %% patch distances (the default, README 'Which mode'); msde: "
        "MSDE → PCA → Gaussian on pooled features (implied by --paper, --mode, --k, --density, "
        "--features pooled/multiscale and by fitting (n, d) --embeddings); ensemble: "
        "msde_jax.pipeline.presets.ensemble(), a Gaussian on the pooled patch layers, cosine "
        "kNN on the pooled head and the bank, fused by rank calibration (its own features and "
        "options)",
    )
    g.add_argument(
        "--bank-size",
        type=int,
        default=None,
        help=f"patches kept in the memory bank (k-center coreset; default {bank['size']})",
    )
    g.add_argument(
        "--coreset",
        choices=CORESETS,
        default=None,
        help="bank: two_stage (the greedy search per chunk of images, then over their picks; "
        "faster, fit memory bounded) or greedy (one search over every patch, PatchCore's) "
        f"(default {bank['coreset']})",
    )
    g.add_argument(
        "--reduce",
        choices=REDUCTIONS,
        default=None,
        help=f"bank: image score from its patch scores (default {bank['reduce']})",
    )
    g.add_argument(
        "--position",
        type=float,
        default=None,
        help="bank: how much a patch's place on the image counts in its distance to the bank "
        "(crossing the whole image costs this many spreads of the training patches; 0: a patch "
        f"matches anywhere, as PatchCore) (default {bank['position']})",
    )
    g.add_argument(
        "--foreground",
        choices=("pca",),
        default=None,
        help="bank: score each image over its foreground patches only, by a label-free mask "
        "fitted on the training patches (off by itself where the body fills the frame)",
    )
    g.add_argument(
        "--paper",
        action="store_true",
        help="the published transductive pipeline (scores depend on the test batch)",
    )
    g.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help=f"MSDE mode (default: {d['mode']}; --paper implies transductive, unless --mode "
        "is given: then the paper preset in that mode)",
    )
    g.add_argument("--k", type=int, default=None, help=f"mean-shift neighbours (default {d['k']})")
    g.add_argument(
        "--density",
        choices=METHODS,
        default=None,
        help=f"density weights (default {d['density']})",
    )
    g.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of the run's randomness: the memory bank's coreset projection and, for "
        "evaluate, demo and --select, the synthetic anomalies of the label-free validation "
        "(MSDE fits are deterministic). A result quoted from one seed is one seed: run three "
        "and report the mean (default: %(default)s)",
    )
    g.add_argument(
        "--contamination",
        type=float,
        default=d["contamination"],
        help="share of normals above the threshold (default: %(default)s)",
    )
    g.add_argument(
        "--threshold",
        choices=[t for t in THRESHOLDS if t != "none"],  # a saved model predicts
        default=d["threshold"],
        help="cross_fit (default): a quantile of out-of-fold scores of the normals; chi2: "
        "msde only (chosen by it without --detector)",
    )
    g.add_argument(
        "--n-folds",
        type=int,
        default=None,
        help="folds of the cross-fit threshold: each training image is scored by a model "
        "fitted on the other folds; fewer suit a few normal images, more leave each fold's "
        f"model more of them (default {d['n_folds']}, at least 2)",
    )


def _add_skip_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="skip files that cannot be read as images or volumes (each one and the count are "
        "listed on stderr) instead of stopping at the first",
    )


def _add_axis_arg(p: argparse.ArgumentParser, *, model: bool = False) -> None:
    from msde_jax.io.volumes import AXES

    default = "the model's (the axis it was fitted on), else axial" if model else "axial"
    p.add_argument(
        "--axis",
        choices=AXES,
        default=None if model else "axial",
        help="the plane NIfTI volumes are sliced in, after reorientation to the closest RAS+ "
        f"axes (default: {default}); a DICOM series is always read along its own slice normal "
        "and refuses the other planes",
    )


def _add_select_arg(g: argparse._ActionsContainer) -> None:
    g.add_argument(
        "--select",
        action="store_true",
        help="choose the configuration among msde_jax.pipeline.presets.candidates() by its "
        "synthetic-validation AUROC on the training normals instead of running the default "
        "rule (measured not to beat it: README 'Which mode')",
    )


def _add_evaluation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        help="use at most this many images per class (quick runs; a volume counts as one, "
        "kept whole; with --skip-unreadable, the first N readable ones)",
    )
    _add_skip_arg(p)
    g = p.add_argument_group("label-free validation")
    _add_select_arg(g)
    g.add_argument(
        "--no-validation",
        action="store_true",
        help="skip the synthetic validation of the configuration (saves one fit on 80 %% of "
        "the normals)",
    )
    _add_embedder_args(p)
    _add_detector_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msde-jax",
        description="One-class anomaly detection for medical images with Mean Shift Density "
        "Enhancement (MSDE), in JAX. Learn 'normal' from normal images only, then rank new "
        "images by how abnormal they look.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = command(
        "demo", "Run the whole pipeline on the built-in PneumoniaMNIST split and write a report."
    )
    p.add_argument("--out", type=_path, default="msde_demo_report", help="report folder")
    _add_evaluation_args(p)

    p = command("embed", "Compute (and cache) embeddings of images.")
    p.add_argument(
        "sources",
        nargs="+",
        help="image files, volumes (NIfTI, DICOM-series folders: one row per slice), folders, "
        "or an .npz image stack",
    )
    _add_skip_arg(p)
    _add_axis_arg(p)
    p.add_argument(
        "--out",
        type=_path,
        required=True,
        help="output .npz (embeddings, names, config; for volumes' slices also which volume "
        "each row is a slice of, for fit --embeddings' folds and volume threshold)",
    )
    _add_embedder_args(p)

    p = command(
        "fit",
        "Fit a detector on normal images and save it (with its backbone "
        "configuration) for `score`.",
    )
    p.add_argument(
        "sources",
        nargs="+",
        help="normal images: files, volumes (NIfTI files, DICOM-series folders), folders or an "
        ".npz",
    )
    _add_skip_arg(p)
    _add_axis_arg(p)
    p.add_argument("--out", type=_path, required=True, help="model file to write (.npz)")
    p.add_argument(
        "--embeddings",
        action="store_true",
        help="the .npz holds features (key 'embeddings'), not images: (n, d) embeddings, or "
        "(n, g, g, c) patch features for the bank (msde-jax embed --features patches)",
    )
    _add_select_arg(p)
    _add_embedder_args(p)
    _add_detector_args(p)

    p = command("score", "Score images with a saved model; write path, score, label as CSV.")
    p.add_argument("model", help="a model written by `msde-jax fit`")
    p.add_argument(
        "sources",
        nargs="+",
        help="images: files, volumes (NIfTI files, DICOM-series folders), folders or an .npz",
    )
    _add_skip_arg(p)
    _add_axis_arg(p, model=True)
    p.add_argument(
        "--out",
        type=_path,
        default=None,
        help="CSV file of slice/image scores; with volumes also <name>_volumes.csv beside it "
        "(default: both to stdout, the volume table after a blank line)",
    )
    p.add_argument("--cache-dir", type=_path, default=None, help="embedding cache folder")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help=(
            "images per forward pass (default: a 224-px image's pixels per CPU core, at most "
            "32; 256 per GPU/TPU)"
        ),
    )
    p.add_argument(
        "--heatmaps",
        type=_path,
        default=None,
        metavar="DIR",
        help="also write one heatmap overlay PNG per image (score units, threshold on the "
        "colour bar) and maps.npz with the raw maps into DIR (patch-bank and ensemble "
        "models); with volumes also one montage PNG per volume (volume_*.png); a DIR used "
        "again loses the earlier run's PNGs",
    )

    p = command(
        "evaluate",
        "Fit on a labelled dataset's normal training images, score its "
        "test images, report AUROC, AP and F1 with plots.",
    )
    p.add_argument("dataset", help="dataset: .npz, folder, MedIAnomaly folder, or 'pneumoniamnist'")
    p.add_argument("--out", type=_path, required=True, help="report folder")
    _add_axis_arg(p)
    _add_evaluation_args(p)

    p = command(
        "train-backbone",
        "Adapt a backbone to normal images with a self-supervised proxy task (AnatPaste or "
        "CutPaste) and save it for --weights.",
    )
    _add_training_args(p)
    return parser
