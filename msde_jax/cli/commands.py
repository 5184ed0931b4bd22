"""The ``msde-jax`` commands: each turns parsed arguments into library calls.

``evaluate`` / ``demo`` run :func:`msde_jax.pipeline.selection.synthetic_validation` (or
:func:`~msde_jax.pipeline.selection.select` with ``--select``),
:func:`msde_jax.pipeline.evaluation.evaluate` and
:func:`msde_jax.pipeline.report.write_report`. A user mistake raises :class:`UserError` (or the
library's ``ValueError``), which :func:`msde_jax.cli.main` prints as one line.
"""

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msde_jax._files import read_json
from msde_jax._memory import MemoryLimitError
from msde_jax.cli.configuration import (
    CONFIGURATION_OPTIONS,
    args_detector,
    args_embedder,
    backbone_name,
    build_embedders,
    check_detector_options,
    check_training_count,
    configured,
    embedder_configs,
    embedder_metadata,
    given,
    selected,
    volume_ids,
)
from msde_jax.cli.inputs import (
    UserError,
    command_inputs,
    input_files,
    item_name,
    normal_images,
    print_repeated,
    readable,
    usable,
)
from msde_jax.cli.volumes import (
    VOLUME_ARRAYS,
    fit_note,
    fit_summary,
    groups_arrays,
    groups_from_arrays,
    metrics_summary,
    print_volume_notes,
    volume_csv_path,
    volume_warnings,
    write_csv,
    write_volume_montages,
    write_volume_scores,
)

__all__ = ["COMMANDS", "UserError"]


# ---------------------------------------------------------------------------- helpers
def _check_out(
    path: str, *, option: str = "--out", folder: bool = False, inputs: Sequence[Any] = ()
) -> None:
    """Refuse, before any work, an output that cannot be written: a file in a missing or
    read-only folder, a folder where a file goes (or the reverse), one of the inputs (writing
    it would replace the input), or a folder inside an input folder (a later run would read
    what was written there)."""
    import tempfile

    out = Path(path)
    if folder:
        if out.exists() and not out.is_dir():
            raise UserError(f"{option} {path} is a file; give a folder (it is created).")
        where = next((p for p in (out, *out.absolute().parents) if p.exists()), Path("/"))
        if not where.is_dir():
            raise UserError(f"{option} {path}: {where} is a file, not a folder.")
    else:
        if out.is_dir():
            raise UserError(f"{option} {path} is a folder; give a file name inside it.")
        where = out.absolute().parent
        if where.exists() and not where.is_dir():
            raise UserError(f"{option} {path}: {where} is a file, not a folder.")
        if not where.is_dir():
            raise UserError(f"{option} {path}: no folder {where}; create it first.")
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as err:
        raise UserError(
            f"{option} {path}: cannot write in {where} ({err.strerror or err})."
        ) from err
    target = out.resolve()
    for item in inputs:
        if not isinstance(item, str | Path):
            continue
        source = Path(item).resolve()
        if not folder and source == target:
            raise UserError(
                f"{option} {path} is also an input: writing it would replace it; choose "
                "another file."
            )
        if folder and source.is_dir() and (source == target or source in target.parents):
            raise UserError(  # the next run would read the PNGs written there as inputs
                f"{option} {path} is inside the input folder {item}: choose a folder outside it."
            )


# ---------------------------------------------------------------------------- commands
def cmd_embed(args: argparse.Namespace) -> None:
    from msde_jax._files import atomic_write
    from msde_jax.pipeline.evaluation import embed
    from msde_jax.pipeline.volumes import slice_plane

    out = args.out if args.out.endswith(".npz") else f"{args.out}.npz"  # as np.savez names it
    embedder = args_embedder(args)  # bad options refused before the inputs are read
    inputs = command_inputs(args.sources, args, training=True)
    _check_out(out, inputs=[*args.sources, *input_files(inputs)])
    inputs = inputs.take(usable(inputs, args))
    items, names = inputs.items, inputs.names
    emb = embed(embedder, items, cache_dir=args.cache_dir, what="input")
    arrays = {"embeddings": emb, "names": np.array(names)}
    arrays |= {"config": np.array(json.dumps(embedder.config()))}
    # fit --embeddings: folds of volumes, and their plane (a DICOM series' own)
    arrays |= groups_arrays(inputs.groups, slice_plane(inputs.groups, args.axis))
    atomic_write(out, lambda f: np.savez(f, **arrays), suffix=".npz")
    print(f"wrote {emb.shape[0]} × {' × '.join(map(str, emb.shape[1:]))} embeddings to {out}")


def _read_embeddings(path: str) -> tuple[np.ndarray, dict | None, tuple[Any, str] | None]:
    """The ``embeddings`` array of an ``msde-jax embed`` file, its embedder config, and the
    volumes its rows are slices of with their axis (:func:`groups_from_arrays`; ``None`` for
    rows of 2-D images)."""
    from msde_jax.io.datasets import open_npz

    with open_npz(path) as z:
        if "embeddings" not in z:
            raise UserError(f"{path} has no 'embeddings' array ({', '.join(z) or 'no arrays'}).")
        # within the memory bound together
        arrays = z.read(["embeddings", "config", "names", *VOLUME_ARRAYS])
    features, config = arrays["embeddings"], arrays.get("config")
    try:
        volumes = groups_from_arrays(arrays, features.shape[0] if features.ndim else 0)
    except ValueError as err:
        raise UserError(f"{path}: {err}") from err
    names = arrays.get("names")
    if volumes is None and names is not None and names.dtype.kind == "U":
        if any(_SLICE_NAME.fullmatch(str(name)) for name in names.reshape(-1)):
            print(
                f"note: {path} names slices of volumes but records no volumes (an older "
                "msde-jax embed wrote it): its rows are fitted as separate images, so a "
                "volume's slices may fall into different cross-fit folds and the threshold "
                "errs low; embed the volumes again for folds of volumes.",
                file=sys.stderr,
            )
    if config is not None:
        try:
            config = read_json(str(config)) if config.ndim == 0 else None
        except ValueError:
            config = None
        if not isinstance(config, dict):
            raise UserError(
                f"{path}: its 'config' is not the embedder configuration `msde-jax embed` writes "
                "(a JSON object); embed the images again."
            )
    return features, config, volumes


_SLICE_NAME = re.compile(r".+:\d{4,}")  # slice_names: "{volume}:{index:04d}"


def _shape_text(features: Any) -> str:
    """``"14 × 14 × 152"``, or per component for a fused detector's dict of features."""
    if isinstance(features, dict):
        return "; ".join(f"{name}: {_shape_text(f)}" for name, f in features.items())
    return " × ".join(map(str, features.shape[1:]))


def _fit_embeddings(args: argparse.Namespace):
    """``fit --embeddings``: the detector fitted on the file's features, and those features."""
    if args.select:
        raise UserError("--select embeds the images with each candidate: drop --embeddings.")
    if len(args.sources) != 1 or not args.sources[0].endswith(".npz"):
        raise UserError("--embeddings expects one .npz file with an 'embeddings' array.")
    from msde_jax.cli.parser import build_parser
    from msde_jax.pipeline.volumes import fit_groups

    defaults = build_parser().parse_args(["fit", "x.npz", "--out", "y.npz"])
    embedding = ("backbone", "weights", "image_size", "batch_size", "features", "layers")
    embedding += ("cache_dir", "axis", "skip_unreadable")
    ignored = [n for n in embedding if getattr(args, n) != getattr(defaults, n)]
    if ignored:  # the file's embedder made the features: these would be dropped silently
        options = ", ".join("--" + n.replace("_", "-") for n in ignored)
        raise UserError(
            f"{options}: the features of --embeddings were made by the embedder the file "
            "records; drop them (or embed the images again with msde-jax embed)."
        )
    _check_out(args.out, inputs=args.sources)
    features, config, volumes = _read_embeddings(args.sources[0])
    detector = args_detector(args, features.ndim)
    groups = None if volumes is None else volumes[0]
    try:
        detector.fit(features, groups=None if groups is None else fit_groups(detector, groups))
    except MemoryLimitError:
        raise  # about the machine and the options, not the file's contents
    except ValueError as err:
        raise UserError(f"{args.sources[0]}: 'embeddings': {err}") from err
    return detector, features, {"embedder": config}, volumes


def cmd_fit(args: argparse.Namespace) -> None:
    import tempfile

    from msde_jax.pipeline.evaluation import embed
    from msde_jax.pipeline.volumes import fit_groups, slice_plane, volume_record

    volumes = None
    if args.embeddings:
        detector, features, metadata, read = _fit_embeddings(args)
        if read is not None:  # the rows are slices of volumes (msde-jax embed recorded them)
            volumes = metadata["volumes"] = volume_record(detector, read[0], axis=read[1])
    else:
        check_detector_options(args)  # before the inputs (volumes) are read
        inputs = command_inputs(args.sources, args, training=True)
        _check_out(args.out, inputs=[*args.sources, *input_files(inputs)])
        if not args.select:  # bad detector options are refused before the embedding
            embedder, detector = configured(args)
        inputs = inputs.take(usable(inputs, args))
        if not args.select:
            check_training_count(embedder, detector, len(inputs.items))
        # --select embeds the normals with every candidate's embedders, then fits the chosen
        # one on all of them: a cache for this run only embeds them once.
        with tempfile.TemporaryDirectory(prefix="msde-jax-") as tmp:
            cache_dir = args.cache_dir or (tmp if args.select else None)
            if args.select:
                embedder, detector, name, validation = selected(
                    inputs.items, args, cache_dir, volume_ids(inputs.groups)
                )
                print(
                    f"configuration: {name} (selected): synthetic-validation AUROC "
                    f"{validation.scores[name].auroc:.3f} ({validation.summary()}; "
                    f"{len(validation.scores)} configurations{_unmeasured(validation)})"
                )
            features = embed(embedder, inputs.items, cache_dir=cache_dir, what="normal")
            detector.fit(features, groups=fit_groups(detector, inputs.groups))
        metadata = embedder_metadata(embedder)
        if inputs.groups.has_volumes:
            plane = slice_plane(inputs.groups, args.axis)  # a DICOM series' own
            volumes = metadata["volumes"] = volume_record(detector, inputs.groups, axis=plane)
    detector.save(args.out, metadata=metadata)
    print(
        f"fitted {detector!r} on {len(detector.decision_scores_)} normal images "
        f"({_shape_text(features)} features); threshold {detector.threshold_:.4g}; saved to "
        f"{args.out}"
    )
    if volumes is not None:
        print(fit_summary(volumes))
        if note := fit_note(volumes):
            print(note, file=sys.stderr)


def _note_images_for_volumes(record: dict | None, groups: Any) -> None:
    """A ``note:`` on 2-D images scored by a model fitted on volumes' slices: each is scaled
    alone, not windowed as its volume's slices are, so the model's thresholds may not fit."""
    n_images = int(np.sum(groups.volume < 0))
    if record is not None and n_images:
        print(
            f"note: the model was fitted on volumes' slices; {n_images} input(s) are 2-D "
            "images, scored as slices but each scaled alone (not windowed as a volume's slices "
            "are): its thresholds were set on slices",
            file=sys.stderr,
        )


def _unmeasured(validation: Any) -> str:
    """``"; msde:head not fitted"`` for each candidate the synthetic validation could not fit
    (or ``not measured``: fitted, its scores not finite); the reasons were printed as each
    failed."""
    return "".join(
        f"; {name} not {'fitted' if score.score_s == 0 else 'measured'}"  # never scored
        for name, score in validation.scores.items()
        if score.error
    )


def _load_model(path: str):
    """A model file of ``msde-jax fit``: its detector and its embedder configuration (a fused
    detector's: one per component), checked for its form (:func:`build_embedders` builds it)."""
    from msde_jax.detectors.persistence import load_detector

    if not Path(path).exists():
        raise FileNotFoundError(path)
    detector = load_detector(path)
    return detector, embedder_configs(path, detector)


def cmd_score(args: argparse.Namespace) -> None:
    from msde_jax.detectors.base import no_maps_message
    from msde_jax.pipeline.evaluation import (
        check_heatmaps,
        embed,
        heatmaps,
        maps_embedder,
        maps_threshold,
    )
    from msde_jax.pipeline.volumes import read_volume_record

    detector, configs = _load_model(args.model)
    try:
        record = read_volume_record(detector.metadata_)
    except ValueError as err:
        raise UserError(f"{args.model}: {err}") from err
    if args.heatmaps and not detector.has_maps:
        raise UserError(no_maps_message(detector))
    if getattr(detector, "mode", None) == "transductive":  # --paper: not one image at a time
        print(
            "note: the model is transductive (the paper's preset): an image's score depends on "
            "the other images of this call, and the threshold was set on batches of normals; "
            "for images scored alone, fit without --paper",
            file=sys.stderr,
        )
    axis = args.axis or (record or {}).get("axis") or "axial"
    inputs = command_inputs(args.sources, args, axis=axis)
    with_volumes = inputs.groups.has_volumes
    fitted_axis = (record or {}).get("axis")
    planes = {v.axis for v in inputs.groups.volumes} - {fitted_axis, "unknown"}
    if with_volumes and fitted_axis and planes:  # the planes read, a DICOM series' own
        print(
            f"note: the model was fitted on {fitted_axis} slices and scores "
            f"{', '.join(sorted(planes))} ones: its thresholds were set on the other plane's "
            "slice scores",
            file=sys.stderr,
        )
    volume_out = volume_csv_path(args.out) if args.out and with_volumes else None
    if args.out:
        files = [args.model, *args.sources, *input_files(inputs)]
        _check_out(args.out, inputs=files)
        if volume_out is not None:
            _check_out(str(volume_out), option="--out (its volume CSV)", inputs=[*files, args.out])
    if args.heatmaps:
        _check_out(args.heatmaps, option="--heatmaps", folder=True, inputs=args.sources)
    embedder = build_embedders(args.model, detector, configs, args.batch_size)
    inputs = inputs.take(usable(inputs, args))
    items, names, groups = inputs.items, inputs.names, inputs.groups
    _note_images_for_volumes(record, groups)
    if args.heatmaps:  # their memory, before any image is embedded
        check_heatmaps(maps_embedder(embedder, detector).image_size, len(items))
    features = embed(embedder, items, cache_dir=args.cache_dir, what="input")
    scores = detector.score_samples(features)
    thresholded = not math.isnan(detector.threshold_)  # threshold="none": ranking only
    labels = (scores > detector.threshold_).astype(int)
    rows = [
        [name, f"{float(s):.6g}", int(lab) if thresholded else ""]
        for name, s, lab in zip(names, scores, labels, strict=True)
    ]
    write_csv(args.out, ["path", "score", "label"], rows)
    if not thresholded:
        print(
            "note: the model has no threshold (fitted with threshold='none'): the label column "
            "is left empty; the scores rank the images",
            file=sys.stderr,
        )
    if args.out:
        counted = f"{labels.sum()} above the threshold {detector.threshold_:.4g}"
        print(
            f"scored {len(names)} images ({counted if thresholded else 'no threshold'}); "
            f"wrote {args.out}"
        )
    vscores, vthreshold = None, None
    if groups.has_volumes:
        vscores, vthreshold = write_volume_scores(args.model, record, scores, groups, volume_out)
    elif args.out and (stale := volume_csv_path(args.out)).is_file():  # would contradict it
        stale.unlink()
        print(
            f"note: removed {stale}, an earlier run's volume scores (these inputs hold no volume)",
            file=sys.stderr,
        )
    if args.heatmaps:
        from msde_jax.pipeline.heatmaps import write_heatmaps

        images, maps = heatmaps(embedder, detector, items, features=features)
        threshold = detector.threshold_
        line = {"threshold": threshold, "maps_threshold": maps_threshold(detector)}
        write_heatmaps(args.heatmaps, images, maps, names=names, scores=scores, **line)
        print(f"wrote {len(names)} heatmaps and maps.npz to {args.heatmaps}", file=sys.stderr)
        if vscores is not None:
            write_volume_montages(
                args.heatmaps,
                images,
                maps,
                groups=groups,
                names=names,
                scores=scores,
                vscores=vscores,
                volume_threshold=vthreshold,
                **line,
            )


def _configuration(dataset, args: argparse.Namespace, cache_dir: str):
    """The embedder and detector ``evaluate`` runs, what to call them, and their synthetic
    validation (``None`` when skipped) with the reason it was skipped."""
    from msde_jax.pipeline.presets import RECOMMENDED, Candidate
    from msde_jax.pipeline.selection import synthetic_validation

    normals, groups = dataset.train_normal, volume_ids(dataset.split_groups("train_normal"))
    if args.select:
        embedder, detector, name, validation = selected(normals, args, cache_dir, groups)
        return embedder, detector, f"{name} (selected)", validation, None
    embedder, detector = configured(args)
    check_training_count(embedder, detector, len(normals))
    custom = given(args, CONFIGURATION_OPTIONS)
    name = "as given" if custom else f"{RECOMMENDED} (the default rule)"
    if getattr(detector, "mode", None) == "transductive":  # --paper's, or --mode's
        return embedder, detector, name, None, "transductive scores depend on the batch"
    if args.no_validation:
        return embedder, detector, name, None, "--no-validation"
    if len(normals) < 10:
        return embedder, detector, name, None, "fewer than 10 training normals"
    validation = synthetic_validation(
        normals,
        {name: Candidate(embedder, detector)},
        cache_dir=cache_dir,
        seed=args.seed,
        groups=groups,
    )
    return embedder, detector, name, validation, None


def _evaluate(spec: str, args: argparse.Namespace) -> None:
    """``evaluate`` and ``demo``: the library's evaluation pipeline, then the report folder."""
    import tempfile

    from msde_jax.io.datasets import load_dataset
    from msde_jax.pipeline.evaluation import (
        TrainingCopiesWarning,
        evaluate,
        heatmaps,
        limit_dataset,
        maps_threshold,
    )
    from msde_jax.pipeline.report import overlay_indices, require_matplotlib, write_report

    require_matplotlib()  # a broken install refuses before minutes of embedding
    check_detector_options(args)  # and bad options before the dataset is read
    splits = [
        Path(spec, *sub.split("/")) for sub in ("train/normal", "test/normal", "test/abnormal")
    ]
    _check_out(args.out, folder=True, inputs=[s for s in splits if s.is_dir()])
    # An empty class is reported before the backbone loads.
    with volume_warnings():
        dataset = load_dataset(
            spec, axis=getattr(args, "axis", "axial"), skip_unreadable=args.skip_unreadable
        )
    for split in ("train_normal", "test_normal", "test_abnormal"):
        print_volume_notes(dataset.split_groups(split).volumes)
    print_repeated(dataset.repeated)
    if args.skip_unreadable:  # --limit counts readable images: the first N that decode
        for why in dataset.skipped:
            print(f"skipped: {why}", file=sys.stderr)
        kept = {}
        for field in ("train_normal", "test_normal", "test_abnormal"):
            items = list(getattr(dataset, field))
            names = [f"{field}: {item_name(i)}" for i in items]
            ordinals = dataset.split_groups(field).input_ordinals()
            kept[field] = readable(items, names, args, limit=args.limit, ordinals=ordinals)
        dataset = dataset.subset(kept)
    dataset = limit_dataset(dataset, limit=args.limit)  # and none left empty
    # Without --cache-dir, a cache for this run only: the validation and the evaluation then
    # embed the training normals once.
    with tempfile.TemporaryDirectory(prefix="msde-jax-") as tmp:
        cache_dir = args.cache_dir or tmp
        embedder, detector, name, validation, skipped = _configuration(dataset, args, cache_dir)
        with volume_warnings(TrainingCopiesWarning):  # test images that are training images
            result = evaluate(
                dataset,
                embedder,
                detector,
                cache_dir=cache_dir,
                mode_label=f"paper preset ({detector.mode})" if args.paper else None,
            )
        maps = None
        if detector.has_maps:  # the report's overlays: embedded again from the cache
            shown = overlay_indices(result.scores, labels=result.labels)
            items = [result.dataset.test_items()[i] for i in shown]
            images, heat = heatmaps(embedder, detector, items, cache_dir=cache_dir)
            maps = {int(i): (images[j], heat[j]) for j, i in enumerate(shown)}
    metrics, timings, mode = result.metrics, result.timings, result.config["mode"]
    config = {**result.config, "configuration": name, "seed": args.seed}
    if validation is not None:
        scores = validation.scores
        config["synthetic_validation"] = {
            "auroc": {n: None if v.error else round(v.auroc, 4) for n, v in scores.items()},
            "set": validation.summary(),
        }
        timings = {**timings, "validation_s": validation.seconds}
    volumes = result.volumes
    write_report(
        args.out,
        labels=result.labels,
        scores=result.scores,
        threshold=result.threshold,
        images=result.dataset.test_items(),
        names=result.dataset.test_names() if result.dataset.has_volumes else None,
        title=f"MSDE evaluation — {dataset.name}, {backbone_name(embedder)}, {mode}",
        config=config,
        timings=timings,
        heatmaps=maps,
        volume_metrics=None if volumes is None else volumes.metrics,
        maps_threshold=maps_threshold(result.detector),
        normals_from_volumes=result.dataset.split_groups("test_normal").has_volumes,
    )
    print(f"configuration: {name}: {detector!r} on {embedder!r}")
    if validation is None:
        print(f"synthetic validation: skipped ({skipped})")
    else:
        own = validation.scores[name.removesuffix(" (selected)")]  # not a prefix: knn:head
        print(
            f"synthetic-validation AUROC {own.auroc:.3f} ({validation.summary()}; "
            f"{validation.seconds:.0f} s, {len(validation.scores)} configuration(s)"
            f"{_unmeasured(validation)})"
        )
    slices = " slices" if result.dataset.has_volumes else ""
    print(
        f"{dataset.name}{slices}: AUROC {metrics['auroc']:.3f}  AP "
        f"{metrics['average_precision']:.3f}  F1 {metrics['f1']:.3f} (sensitivity "
        f"{metrics['recall']:.3f}, false-positive rate {metrics['false_positive_rate']:.3f}) at "
        f"threshold {result.threshold:.4g}  [{mode}; {result.config['test_mix']}]"
    )
    promise = json.loads((Path(args.out) / "metrics.json").read_text()).get("threshold_promise")
    if promise is not None and not promise["kept"]:  # said in the report: said here too
        low, high = promise["expected_interval"]
        print(
            f"warning: the threshold flagged {promise['false_positive_rate']:.1%} of the test "
            f"normals, outside the {low:.1%}–{high:.1%} expected at contamination "
            f"{promise['contamination']:g} (see {Path(args.out) / 'report.md'})",
            file=sys.stderr,
        )
    if volumes is not None:
        print(metrics_summary(dataset.name, volumes.metrics))
    elif result.dataset.has_volumes:
        print(
            f"{dataset.name} volumes: no volume-level metrics (test/normal and test/abnormal "
            "must both hold volumes)"
        )
    print(
        f"report written to {Path(args.out) / 'report.md'}  "
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

    _check_out(args.out, folder=True)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if args.anatomy is not None and args.task == "cutpaste":
        print("note: --anatomy is AnatPaste's; CutPaste pastes anywhere: ignored", file=sys.stderr)
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    config = TrainConfig(**given)
    items = normal_images(args.sources)[: args.limit]
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


COMMANDS = {
    "demo": cmd_demo,
    "embed": cmd_embed,
    "fit": cmd_fit,
    "score": cmd_score,
    "evaluate": cmd_evaluate,
    "train-backbone": cmd_train_backbone,
}
