"""The ``msde-jax`` command line: images → embeddings → MSDE detector → scores and reports.

Every command prints a one-line ``error: …`` and exits with status 2 for a user mistake (a
missing path, an unreadable image, an empty class, an incompatible model file) instead of a
traceback.

Only argparse and the commands live here: option lists and defaults come from the library
(:mod:`msde_jax.detector`, :mod:`msde_jax.density`, :mod:`msde_jax.backbones.registry`), and
``evaluate`` / ``demo`` run :func:`msde_jax.evaluation.evaluate` and
:func:`msde_jax.report.write_report`.
"""

import argparse
import csv
import inspect
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["build_parser", "main"]

EXAMPLES = {
    "demo": """examples:
  msde-jax demo                         # built-in PneumoniaMNIST, default backbone
  msde-jax demo --backbone mobilenet_v2 --out demo_mobilenet""",
    "embed": """examples:
  msde-jax embed scans/ --out embeddings.npz
  msde-jax embed a.png b.png --backbone resnet18 --weights resnet18-f37072fd.pth --out e.npz""",
    "fit": """examples:
  msde-jax fit normals/ --out model.npz
  msde-jax fit train_normal.npz --out model.npz --paper
  msde-jax fit embeddings.npz --embeddings --out model.npz   # features already computed""",
    "score": """examples:
  msde-jax score model.npz new_scans/ --out scores.csv
  msde-jax score model.npz scan.dcm""",
    "evaluate": """examples:
  msde-jax evaluate ../shared/data/brain_tumor_mri/brain_tumor_mri.npz --out report_brain
  msde-jax evaluate my_dataset/ --backbone mobilenet_v2 --paper --out report
  (a dataset is an .npz with train_normal/test_normal/test_abnormal image stacks, a folder
   with train/normal, test/normal, test/abnormal, a MedIAnomaly folder with data.json, or
   'pneumoniamnist' for the built-in copy)""",
    "train-backbone": """examples:
  msde-jax train-backbone pneumoniamnist --backbone mobilenet_v2 --out adapted
  msde-jax evaluate pneumoniamnist --backbone mobilenet_v2 \\
      --weights adapted/backbone.safetensors --out report_adapted
  msde-jax train-backbone normals/ --backbone resnet18 --init scratch --task cutpaste \\
      --steps 5000 --out run1            # add --resume to continue an interrupted run
  (a dataset spec uses its train/normal images only; folders and .npz stacks are read as
   normal images)""",
}


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


# ---------------------------------------------------------------------------- arguments
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
        default=None,
        help="a .pth / .safetensors file instead of the default ImageNet weights",
    )
    g.add_argument(
        "--image-size", type=int, default=d["image_size"], help="resize side (default: %(default)s)"
    )
    g.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    g.add_argument(
        "--features",
        default=d["features"],
        choices=FEATURES,
        help="pooled: the last stage's (or each --layers map's) global average; multiscale: "
        "every stage's, concatenated; patches: PatchCore's (grid, grid, c) patch features of "
        "--layers, for `embed` (default: %(default)s)",
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
        default=None,
        help="cache embeddings here, keyed by backbone, weights and image content",
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
    p.add_argument("--out", required=True, help="run folder: checkpoint, log, backbone")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    g = p.add_argument_group("training")
    g.add_argument("--backbone", default=d.backbone, choices=BACKBONES, help="(%(default)s)")
    g.add_argument("--task", default=d.task, choices=tuple(TASKS), help="(%(default)s)")
    g.add_argument(
        "--anatomy",
        default=d.anatomy,
        choices=ANATOMY,
        help="where AnatPaste pastes: bright tissue (MRI) or dark lung fields (chest X-ray) "
        "(%(default)s)",
    )
    g.add_argument(
        "--init", default=d.init, help="imagenet, scratch, or a weights file (%(default)s)"
    )
    for name, type_, help_ in (
        ("image-size", int, "training resolution"),
        ("batch-size", int, "clean images per step"),
        ("steps", int, "optimisation steps"),
        ("lr", float, "peak learning rate"),
        ("weight-decay", float, "weight decay"),
        ("warmup-steps", int, "linear warm-up steps"),
        ("head-hidden", int, "hidden width of the proxy head (0: linear)"),
        ("seed", int, "seed of head, augmentations and image order"),
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
    from msde_jax.density import METHODS
    from msde_jax.detector import MODES, THRESHOLDS, MSDEDetector

    # --mode, --k and --density default to None so that --paper can tell them apart from
    # values given on the command line; the help shows the detector's own defaults.
    d = MSDEDetector().get_params()
    g = p.add_argument_group("detector")
    g.add_argument(
        "--paper",
        action="store_true",
        help="the published transductive pipeline (scores depend on the test batch)",
    )
    g.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help=f"MSDE mode (default: {d['mode']}; --paper implies transductive)",
    )
    g.add_argument("--k", type=int, default=None, help=f"mean-shift neighbours (default {d['k']})")
    g.add_argument(
        "--density",
        choices=METHODS,
        default=None,
        help=f"density weights (default {d['density']})",
    )
    g.add_argument(
        "--contamination",
        type=float,
        default=d["contamination"],
        help="share of normals above the threshold (default: %(default)s)",
    )
    g.add_argument("--threshold", choices=THRESHOLDS, default=d["threshold"])


def _add_evaluation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use at most this many images per class (quick runs)",
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
    p.add_argument("--out", default="msde_demo_report", help="report folder")
    _add_evaluation_args(p)

    p = command("embed", "Compute (and cache) embeddings of images.")
    p.add_argument("sources", nargs="+", help="image files, folders, or an .npz image stack")
    p.add_argument("--out", required=True, help="output .npz (embeddings, paths, config)")
    _add_embedder_args(p)

    p = command(
        "fit",
        "Fit a detector on normal images and save it (with its backbone "
        "configuration) for `score`.",
    )
    p.add_argument("sources", nargs="+", help="normal images: files, folders or an .npz")
    p.add_argument("--out", required=True, help="model file to write (.npz)")
    p.add_argument(
        "--embeddings",
        action="store_true",
        help="the .npz holds (n, d) embeddings (key 'embeddings'), not images",
    )
    _add_embedder_args(p)
    _add_detector_args(p)

    p = command("score", "Score images with a saved model; write path, score, label as CSV.")
    p.add_argument("model", help="a model written by `msde-jax fit`")
    p.add_argument("sources", nargs="+", help="images: files, folders or an .npz")
    p.add_argument("--out", default=None, help="CSV file (default: print to stdout)")
    p.add_argument("--cache-dir", default=None, help="embedding cache folder")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")

    p = command(
        "evaluate",
        "Fit on a labelled dataset's normal training images, score its "
        "test images, report AUROC, AP and F1 with plots.",
    )
    p.add_argument("dataset", help="dataset: .npz, folder, MedIAnomaly folder, or 'pneumoniamnist'")
    p.add_argument("--out", required=True, help="report folder")
    _add_evaluation_args(p)

    p = command(
        "train-backbone",
        "Adapt a backbone to normal images with a self-supervised proxy task (AnatPaste or "
        "CutPaste) and save it for --weights.",
    )
    _add_training_args(p)
    return parser


# ---------------------------------------------------------------------------- helpers
def _embedder(args: argparse.Namespace):
    from msde_jax.embedder import Embedder

    if args.features == "patches" and args.command != "embed":
        raise UserError(
            f"--features patches gives (grid, grid, c) features per image, which `{args.command}`"
            " cannot use: write them with `msde-jax embed`, or use --features pooled."
        )
    layers = [n.strip() for value in args.layers or () for n in value.split(",") if n.strip()]
    return Embedder(
        args.backbone,
        weights=args.weights,
        image_size=args.image_size,
        batch_size=args.batch_size,
        features=args.features,
        layers=layers or None,
    )


def _detector(args: argparse.Namespace):
    from msde_jax.detector import MSDEDetector

    params: dict[str, Any] = {"contamination": args.contamination, "threshold": args.threshold}
    if args.mode is not None:
        params["mode"] = args.mode
    if args.k is not None:
        params["k"] = args.k
    if args.density is not None:
        params["density"] = args.density
    return MSDEDetector.paper(**params) if args.paper else MSDEDetector(**params)


def _items(sources: Sequence[str]) -> tuple[list, list[str]]:
    """Images from files/folders (as paths) or from one .npz stack; with display names."""
    from msde_jax.io.datasets import list_images, load_images_npz

    if len(sources) == 1 and sources[0].lower().endswith(".npz"):
        if not Path(sources[0]).exists():
            raise FileNotFoundError(sources[0])
        images = load_images_npz(sources[0])
        return list(images), [f"{sources[0]}[{i}]" for i in range(len(images))]
    paths = list_images(list(sources))
    return paths, [str(p) for p in paths]


# ---------------------------------------------------------------------------- commands
def cmd_embed(args: argparse.Namespace) -> None:
    from msde_jax.evaluation import embed

    items, names = _items(args.sources)
    embedder = _embedder(args)
    emb = embed(embedder, items, cache_dir=args.cache_dir, what="input")
    np.savez(
        args.out,
        embeddings=emb,
        names=np.array(names),
        config=np.array(json.dumps(embedder.config())),
    )
    print(f"wrote {emb.shape[0]} × {' × '.join(map(str, emb.shape[1:]))} embeddings to {args.out}")


def cmd_fit(args: argparse.Namespace) -> None:
    if args.embeddings:
        if len(args.sources) != 1 or not args.sources[0].endswith(".npz"):
            raise UserError("--embeddings expects one .npz file with an 'embeddings' array.")
        with np.load(args.sources[0], allow_pickle=False) as z:
            if "embeddings" not in z.files:
                raise UserError(f"{args.sources[0]} has no 'embeddings' array ({z.files}).")
            features = z["embeddings"]
            config = json.loads(str(z["config"])) if "config" in z.files else None
    else:
        from msde_jax.evaluation import embed

        items, _ = _items(args.sources)
        embedder = _embedder(args)
        features = embed(embedder, items, cache_dir=args.cache_dir, what="normal")
        config = embedder.config()
    detector = _detector(args).fit(features)
    detector.save(args.out, metadata={"embedder": config})
    print(
        f"fitted {detector!r} on {features.shape[0]} normal images "
        f"({features.shape[1]} features); threshold {detector.threshold_:.4g}; "
        f"saved to {args.out}"
    )


def _load_model(path: str):
    from msde_jax.detector import MSDEDetector

    if not Path(path).exists():
        raise FileNotFoundError(path)
    detector = MSDEDetector.load(path)
    config = detector.metadata_.get("embedder")
    if not config:
        raise UserError(
            f"{path} was fitted on precomputed embeddings: it has no backbone to "
            "embed images with. Score embeddings from Python instead."
        )
    return detector, config


def cmd_score(args: argparse.Namespace) -> None:
    from msde_jax.embedder import Embedder
    from msde_jax.evaluation import embed

    detector, config = _load_model(args.model)
    embedder = Embedder.from_config(config, batch_size=args.batch_size)
    items, names = _items(args.sources)
    scores = detector.score_samples(embed(embedder, items, cache_dir=args.cache_dir, what="input"))
    labels = (scores > detector.threshold_).astype(int)
    out = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115
    try:
        writer = csv.writer(out)
        writer.writerow(["path", "score", "label"])
        for name, s, lab in zip(names, scores, labels, strict=True):
            writer.writerow([name, f"{float(s):.6g}", int(lab)])
    finally:
        if args.out:
            out.close()
    if args.out:
        print(
            f"scored {len(names)} images ({labels.sum()} above the threshold "
            f"{detector.threshold_:.4g}); wrote {args.out}"
        )


def _evaluate(spec: str, args: argparse.Namespace) -> None:
    """``evaluate`` and ``demo``: the library's evaluation pipeline, then the report folder."""
    from msde_jax.evaluation import evaluate, limit_dataset
    from msde_jax.io.datasets import load_dataset
    from msde_jax.report import require_matplotlib, write_report

    require_matplotlib()  # a broken install refuses before minutes of embedding
    # An empty class is reported before the backbone loads.
    dataset = limit_dataset(load_dataset(spec), limit=args.limit)
    embedder = _embedder(args)
    result = evaluate(
        dataset,
        embedder,
        _detector(args),
        cache_dir=args.cache_dir,
        mode_label="paper preset (transductive)" if args.paper else None,
    )
    metrics, timings, mode = result.metrics, result.timings, result.config["mode"]
    write_report(
        args.out,
        labels=result.labels,
        scores=result.scores,
        threshold=result.threshold,
        images=result.dataset.test_items(),
        title=f"MSDE evaluation — {dataset.name}, {embedder.backbone}, {mode}",
        config=result.config,
        timings=timings,
    )
    print(
        f"{dataset.name}: AUROC {metrics['auroc']:.3f}  AP {metrics['average_precision']:.3f}"
        f"  F1 {metrics['f1']:.3f} at threshold {result.threshold:.4g}  "
        f"[{mode}; {result.config['test_mix']}]"
    )
    print(
        f"report written to {args.out}/report.md  "
        f"(embed {timings['embed_s']:.1f} s, fit {timings['fit_s']:.1f} s, "
        f"score {timings['score_s']:.1f} s)"
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    _evaluate(args.dataset, args)


def cmd_demo(args: argparse.Namespace) -> None:
    print(
        "msde-jax demo: built-in PneumoniaMNIST (MedMNIST v2, CC BY 4.0), normal chest X-rays "
        "vs pneumonia",
        file=sys.stderr,
    )
    _evaluate("pneumoniamnist", args)


def cmd_train_backbone(args: argparse.Namespace) -> None:
    import dataclasses

    from msde_jax.ssl.config import TrainConfig
    from msde_jax.ssl.train import BACKBONE, train_backbone

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    items = _normal_images(args.sources)[: args.limit]
    print(f"training on {len(items)} normal images: {config}", file=sys.stderr)
    start = time.perf_counter()
    result = train_backbone(items, config, out_dir=args.out, resume=args.resume)
    last = result.history[-1] if result.history else {}
    out = Path(args.out)
    if int(result.state.step) < config.steps:
        print(f"stopped at step {int(result.state.step)}; continue with --resume")
        return
    print(
        f"trained {config.backbone} for {config.steps} steps in "
        f"{time.perf_counter() - start:.0f} s; final loss {last.get('loss', float('nan')):.4f},"
        f" proxy accuracy {last.get('accuracy', float('nan')):.3f}\n"
        f"adapted backbone: {out / BACKBONE}\n"
        f"use it with: --backbone {config.backbone} --weights {out / BACKBONE} "
        f"--image-size {config.image_size}"
    )


def _normal_images(sources: Sequence[str]) -> list:
    """A dataset's train/normal split when given one dataset spec, else the images named."""
    from msde_jax.io.datasets import load_dataset

    if len(sources) == 1:
        try:
            dataset = load_dataset(sources[0])
        except (ValueError, FileNotFoundError):
            pass
        else:
            print(f"{dataset.name}: using its train/normal split", file=sys.stderr)
            return list(dataset.train_normal)
    items, _ = _items(sources)
    return items


COMMANDS = {
    "demo": cmd_demo,
    "embed": cmd_embed,
    "fit": cmd_fit,
    "score": cmd_score,
    "evaluate": cmd_evaluate,
    "train-backbone": cmd_train_backbone,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``msde-jax`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    import os
    import pickle

    from msde_jax.backbones._convert import WeightMappingError

    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except FileNotFoundError as err:
        if os.environ.get("MSDE_JAX_DEBUG"):
            raise
        print(f"error: no such file or folder: {err.filename or err}", file=sys.stderr)
        return 2
    except (
        UserError,
        ValueError,
        ImportError,
        WeightMappingError,
        pickle.UnpicklingError,
        OSError,
    ) as err:
        # ImageReadError is a ValueError; download failures are OSErrors. MSDE_JAX_DEBUG=1
        # shows the traceback instead.
        if os.environ.get("MSDE_JAX_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
