"""The ``msde-jax`` commands: each turns parsed arguments into library calls.

``evaluate`` / ``demo`` run :func:`msde_jax.pipeline.selection.synthetic_validation` (or
:func:`~msde_jax.pipeline.selection.select` with ``--select``),
:func:`msde_jax.pipeline.evaluation.evaluate` and
:func:`msde_jax.pipeline.report.write_report`. A user mistake raises :class:`UserError` (or the
library's ``ValueError``), which :func:`msde_jax.cli.main` prints as one line.
"""

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msde_jax._memory import MemoryLimitError
from msde_jax.cli.inputs import (
    UserError,
    command_inputs,
    input_files,
    item_name,
    normal_images,
    readable,
    usable,
)
from msde_jax.cli.parser import BANK_OPTIONS, MSDE_OPTIONS
from msde_jax.cli.volumes import (
    fit_summary,
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
def _given(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    """The options among ``names`` given on the command line, as ``--option`` strings."""
    # By identity: ``0 in (None, False)`` is true, and --k 0 is given (and refused later).
    given = [
        n for n in names if getattr(args, n, None) is not None and getattr(args, n) is not False
    ]
    return ["--" + n.replace("_", "-") for n in given]


def _detector_kind(args: argparse.Namespace, ndim: int | None = None) -> str:
    """``"bank"`` or ``"msde"``: ``--detector``, else msde when an MSDE-only option is given
    or the precomputed features (of ``ndim`` dimensions) are pooled, else the bank."""
    msde, bank = _given(args, MSDE_OPTIONS), _given(args, BANK_OPTIONS)
    kind = args.detector
    if kind is None:
        pooled = ndim == 2 or args.features in ("pooled", "multiscale")
        kind = "msde" if msde or pooled else "bank"
    if kind == "bank" and msde:
        raise UserError(f"{_are(msde, 'an MSDE option')}: add --detector msde.")
    if kind == "msde" and bank:
        raise UserError(f"{_are(bank, 'a memory-bank option')}: use --detector bank.")
    return kind


def _are(options: list[str], what: str) -> str:
    """``"--k is an MSDE option"`` / ``"--k, --mode are MSDE options"``."""
    if len(options) == 1:
        return f"{options[0]} is {what}"
    return f"{', '.join(options)} are {what.split(' ', 1)[1]}s"


def _embedder(args: argparse.Namespace):
    from msde_jax.embedder import Embedder

    features = args.features
    if args.command != "embed":
        kind = _detector_kind(args)
        if features is None:
            features = "patches" if kind == "bank" else "pooled"
        if kind == "bank" and features != "patches":
            raise UserError(
                f"--detector bank scores patch features, not --features {features}: drop "
                "--features, or use --detector msde for pooled features."
            )
        if kind == "msde" and features == "patches":
            raise UserError(
                "--features patches gives (grid, grid, c) features per image, which the MSDE "
                "detector cannot use: use --detector bank, or --features pooled."
            )
    layers = [n.strip() for value in args.layers or () for n in value.split(",") if n.strip()]
    return Embedder(
        args.backbone,
        weights=args.weights,
        image_size=args.image_size,
        batch_size=args.batch_size,
        features=features or "pooled",
        layers=layers or None,
    )


def _detector(args: argparse.Namespace, ndim: int | None = None):
    from msde_jax.detectors.msde import MSDEDetector
    from msde_jax.detectors.patch_bank import PatchBankDetector

    params: dict[str, Any] = {"contamination": args.contamination, "threshold": args.threshold}
    if _detector_kind(args, ndim) == "bank":
        names = {option: option for option in BANK_OPTIONS} | {"bank_size": "size"}
        params |= {p: getattr(args, o) for o, p in names.items() if getattr(args, o) is not None}
        return _validated(PatchBankDetector(**params, seed=args.seed))
    for name in ("mode", "k", "density"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    detector = MSDEDetector.paper(**params) if args.paper else MSDEDetector(**params)
    return _validated(detector)


def _validated(detector):
    """``detector``, once its options are known to be valid (its config builds), so that a bad
    option is refused before any image is embedded."""
    try:
        detector.config()
    except ValueError as err:
        raise UserError(str(err)) from err
    return detector


def _check_out(
    path: str, *, option: str = "--out", folder: bool = False, inputs: Sequence[Any] = ()
) -> None:
    """Refuse, before any work, an output that cannot be written: a file in a missing or
    read-only folder, a folder where a file goes (or the reverse), or one of the inputs
    (writing it would replace the input)."""
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
    if not folder:
        target = out.resolve()
        for item in inputs:
            if isinstance(item, str | Path) and Path(item).resolve() == target:
                raise UserError(
                    f"{option} {path} is also an input: writing it would replace it; choose "
                    "another file."
                )


# ---------------------------------------------------------------------------- commands
def cmd_embed(args: argparse.Namespace) -> None:
    from msde_jax._files import atomic_write
    from msde_jax.pipeline.evaluation import embed

    out = args.out if args.out.endswith(".npz") else f"{args.out}.npz"  # as np.savez names it
    inputs = command_inputs(args.sources, args)
    _check_out(out, inputs=[*args.sources, *input_files(inputs)])
    inputs = inputs.take(usable(inputs, args))
    items, names = inputs.items, inputs.names
    embedder = _embedder(args)
    emb = embed(embedder, items, cache_dir=args.cache_dir, what="input")
    config = json.dumps(embedder.config())
    atomic_write(
        out,
        lambda f: np.savez(f, embeddings=emb, names=np.array(names), config=np.array(config)),
        suffix=".npz",
    )
    print(f"wrote {emb.shape[0]} × {' × '.join(map(str, emb.shape[1:]))} embeddings to {out}")


def _read_embeddings(path: str) -> tuple[np.ndarray, dict | None]:
    """The ``embeddings`` array of an ``msde-jax embed`` file and its embedder config."""
    from msde_jax.io.datasets import open_npz

    with open_npz(path) as z:
        if "embeddings" not in z:
            raise UserError(f"{path} has no 'embeddings' array ({', '.join(z) or 'no arrays'}).")
        arrays = z.read(["embeddings", "config"])  # within the memory bound together
    features, config = arrays["embeddings"], arrays.get("config")
    if config is not None:
        try:
            config = json.loads(str(config)) if config.ndim == 0 else None
        except ValueError:
            config = None
        if not isinstance(config, dict):
            raise UserError(
                f"{path}: its 'config' is not the embedder configuration `msde-jax embed` writes "
                "(a JSON object); embed the images again."
            )
    return features, config


def cmd_fit(args: argparse.Namespace) -> None:
    if args.embeddings:
        if len(args.sources) != 1 or not args.sources[0].endswith(".npz"):
            raise UserError("--embeddings expects one .npz file with an 'embeddings' array.")
        _check_out(args.out, inputs=args.sources)
        features, config = _read_embeddings(args.sources[0])
        detector = _detector(args, features.ndim)
        try:
            detector.fit(features)
        except MemoryLimitError:
            raise  # about the machine and the options, not the file's contents
        except ValueError as err:
            raise UserError(f"{args.sources[0]}: 'embeddings': {err}") from err
    else:
        from msde_jax.pipeline.evaluation import embed

        inputs = command_inputs(args.sources, args)
        _check_out(args.out, inputs=[*args.sources, *input_files(inputs)])
        _detector(args)  # refuses bad detector options before the embedding
        inputs = inputs.take(usable(inputs, args))
        embedder = _embedder(args)
        features = embed(embedder, inputs.items, cache_dir=args.cache_dir, what="normal")
        config = embedder.config()
        from msde_jax.pipeline.volumes import fit_groups

        detector = _detector(args, features.ndim)
        detector.fit(features, groups=fit_groups(detector, inputs.groups))
    metadata: dict[str, Any] = {"embedder": config}
    volumes = None
    if not args.embeddings and inputs.groups.has_volumes:
        from msde_jax.pipeline.volumes import volume_record

        volumes = metadata["volumes"] = volume_record(detector, inputs.groups, axis=args.axis)
    detector.save(args.out, metadata=metadata)
    print(
        f"fitted {detector!r} on {features.shape[0]} normal images "
        f"({' × '.join(map(str, features.shape[1:]))} features); threshold "
        f"{detector.threshold_:.4g}; saved to {args.out}"
    )
    if volumes is not None:
        print(fit_summary(volumes))


def _load_model(path: str):
    from msde_jax.detectors.persistence import load_detector

    if not Path(path).exists():
        raise FileNotFoundError(path)
    detector = load_detector(path)
    if not hasattr(detector, "n_features_in_"):  # a FusedDetector: features per component
        raise UserError(
            f"{path} holds a {type(detector).__name__}, which scores a mapping of features "
            "(one per component): score it from Python (msde_jax.pipeline.evaluation.evaluate)."
        )
    config = detector.metadata_.get("embedder")
    if not config:
        raise UserError(
            f"{path} was fitted on precomputed embeddings: it has no backbone to "
            "embed images with. Score embeddings from Python instead."
        )
    needed = ("backbone", "weights", "image_size", "resize", "features", "dtype")
    if not isinstance(config, dict) or not all(k in config for k in needed):
        raise UserError(
            f"{path}: its metadata 'embedder' is not the embedder configuration `msde-jax fit` "
            f"saves (a JSON object with {', '.join(needed)}); refit the model."
        )
    return detector, config


def cmd_score(args: argparse.Namespace) -> None:
    from msde_jax.detectors.base import no_maps_message
    from msde_jax.embedder import Embedder
    from msde_jax.pipeline.evaluation import check_heatmaps, embed, heatmaps
    from msde_jax.pipeline.volumes import read_volume_record

    detector, config = _load_model(args.model)
    try:
        record = read_volume_record(detector.metadata_)
    except ValueError as err:
        raise UserError(f"{args.model}: {err}") from err
    if args.heatmaps and not detector.has_maps:
        raise UserError(no_maps_message(detector))
    axis = args.axis or (record or {}).get("axis") or "axial"
    inputs = command_inputs(args.sources, args, axis=axis)
    with_volumes = inputs.groups.has_volumes
    volume_out = volume_csv_path(args.out) if args.out and with_volumes else None
    if args.out:
        files = [args.model, *args.sources, *input_files(inputs)]
        _check_out(args.out, inputs=files)
        if volume_out is not None:
            _check_out(str(volume_out), option="--out (its volume CSV)", inputs=[*files, args.out])
    if args.heatmaps:
        _check_out(args.heatmaps, option="--heatmaps", folder=True)
    try:
        embedder = Embedder.from_config(config, batch_size=args.batch_size)
    except (KeyError, TypeError) as err:
        raise UserError(f"{args.model}: its embedder configuration is invalid ({err!r}).") from err
    dim = embedder.output_shape[-1]
    if dim != detector.n_features_in_:
        raise UserError(
            f"{args.model}: its detector was fitted on {detector.n_features_in_} features per "
            f"{'patch' if detector.has_maps else 'image'}, but its embedder ({embedder!r}) "
            f"gives {dim}: the file's metadata does not match its detector; refit the model."
        )
    inputs = inputs.take(usable(inputs, args))
    items, names, groups = inputs.items, inputs.names, inputs.groups
    if args.heatmaps:  # their memory, before any image is embedded
        check_heatmaps(embedder.image_size, len(items))
    features = embed(embedder, items, cache_dir=args.cache_dir, what="input")
    scores = detector.score_samples(features)
    labels = (scores > detector.threshold_).astype(int)
    rows = [
        [name, f"{float(s):.6g}", int(lab)]
        for name, s, lab in zip(names, scores, labels, strict=True)
    ]
    write_csv(args.out, ["path", "score", "label"], rows)
    if args.out:
        print(
            f"scored {len(names)} images ({labels.sum()} above the threshold "
            f"{detector.threshold_:.4g}); wrote {args.out}"
        )
    vscores, vthreshold = None, None
    if groups.has_volumes:
        vscores, vthreshold = write_volume_scores(args.model, record, scores, groups, volume_out)
    if args.heatmaps:
        from msde_jax.pipeline.heatmaps import write_heatmaps

        images, maps = heatmaps(embedder, detector, items, features=features)
        threshold = detector.threshold_
        write_heatmaps(args.heatmaps, images, maps, names=names, scores=scores, threshold=threshold)
        print(f"wrote {len(names)} heatmaps and maps.npz to {args.heatmaps}", file=sys.stderr)
        if vscores is not None:
            write_volume_montages(
                args.heatmaps,
                images,
                maps,
                groups=groups,
                names=names,
                scores=scores,
                threshold=threshold,
                vscores=vscores,
                volume_threshold=vthreshold,
            )


def _configuration(dataset, args: argparse.Namespace, cache_dir: str):
    """The embedder and detector ``evaluate`` runs, what to call them, and their synthetic
    validation (``None`` when skipped) with the reason it was skipped."""
    from msde_jax.pipeline.presets import RECOMMENDED, Candidate, candidates, seeded
    from msde_jax.pipeline.selection import select, synthetic_validation

    normals = dataset.train_normal
    if args.select:
        chosen = _given(args, ("detector", "features", "layers", *MSDE_OPTIONS, *BANK_OPTIONS)) + (
            ["--threshold"] if args.threshold != "cross_fit" else []
        )
        if chosen or args.no_validation:
            drop = ", ".join(chosen + (["--no-validation"] if args.no_validation else []))
            raise UserError(f"--select chooses the detector and features itself: drop {drop}.")
        options = {"weights": args.weights, "image_size": args.image_size}
        pool = candidates(args.backbone, batch_size=args.batch_size, **options)
        for candidate in pool.values():
            seeded(candidate.detector, args.seed)
        selection = select(normals, pool, cache_dir=cache_dir, seed=args.seed)
        embedder, detector = selection.candidate
        detector.set_params(contamination=args.contamination)
        return embedder, detector, f"{selection.name} (selected)", selection.validation, None
    embedder, detector = _embedder(args), _detector(args)
    custom = _given(args, ("detector", "features", "layers", *MSDE_OPTIONS, *BANK_OPTIONS))
    name = "as given" if custom else f"{RECOMMENDED} (the default rule)"
    if args.paper:
        return embedder, detector, name, None, "transductive scores depend on the batch"
    if args.no_validation:
        return embedder, detector, name, None, "--no-validation"
    if len(normals) < 10:
        return embedder, detector, name, None, "fewer than 10 training normals"
    validation = synthetic_validation(
        normals, {name: Candidate(embedder, detector)}, cache_dir=cache_dir, seed=args.seed
    )
    return embedder, detector, name, validation, None


def _evaluate(spec: str, args: argparse.Namespace) -> None:
    """``evaluate`` and ``demo``: the library's evaluation pipeline, then the report folder."""
    import tempfile

    from msde_jax.io.datasets import load_dataset
    from msde_jax.pipeline.evaluation import evaluate, heatmaps, limit_dataset
    from msde_jax.pipeline.report import overlay_indices, require_matplotlib, write_report

    require_matplotlib()  # a broken install refuses before minutes of embedding
    _check_out(args.out, folder=True)
    # An empty class is reported before the backbone loads.
    with volume_warnings():
        dataset = load_dataset(
            spec, axis=getattr(args, "axis", "axial"), skip_unreadable=args.skip_unreadable
        )
    for split in ("train_normal", "test_normal", "test_abnormal"):
        print_volume_notes(dataset.split_groups(split).volumes)
    if args.skip_unreadable:
        for why in dataset.skipped:
            print(f"skipped: {why}", file=sys.stderr)
    dataset = limit_dataset(dataset, limit=args.limit)
    if args.skip_unreadable:
        splits = ("train_normal", "test_normal", "test_abnormal")
        kept = {}
        for field in splits:
            items = list(getattr(dataset, field))
            kept[field] = readable(items, [f"{field}: {item_name(i)}" for i in items], args)
        dataset = limit_dataset(dataset.subset(kept))  # none left empty
    # Without --cache-dir, a cache for this run only: the validation and the evaluation then
    # embed the training normals once.
    with tempfile.TemporaryDirectory(prefix="msde-jax-") as tmp:
        cache_dir = args.cache_dir or tmp
        embedder, detector, name, validation, skipped = _configuration(dataset, args, cache_dir)
        result = evaluate(
            dataset,
            embedder,
            detector,
            cache_dir=cache_dir,
            mode_label="paper preset (transductive)" if args.paper else None,
        )
        maps = None
        if detector.has_maps:  # the report's overlays: embedded again from the cache
            shown = overlay_indices(result.scores)
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
        title=f"MSDE evaluation — {dataset.name}, {embedder.backbone}, {mode}",
        config=config,
        timings=timings,
        heatmaps=maps,
        volume_metrics=None if volumes is None else volumes.metrics,
    )
    print(f"configuration: {name}: {detector!r} on {embedder!r}")
    if validation is None:
        print(f"synthetic validation: skipped ({skipped})")
    else:
        own = next(v for n, v in validation.scores.items() if name.startswith(n))
        print(
            f"synthetic-validation AUROC {own.auroc:.3f} ({validation.summary()}; "
            f"{validation.seconds:.0f} s, {len(validation.scores)} configuration(s)"
            + "".join(f"; {n} not fitted" for n, v in validation.scores.items() if v.error)
            + ")"
        )
    slices = " slices" if result.dataset.has_volumes else ""
    print(
        f"{dataset.name}{slices}: AUROC {metrics['auroc']:.3f}  AP "
        f"{metrics['average_precision']:.3f}  F1 {metrics['f1']:.3f} at threshold "
        f"{result.threshold:.4g}  [{mode}; {result.config['test_mix']}]"
    )
    if volumes is not None:
        print(metrics_summary(dataset.name, volumes.metrics))
    elif result.dataset.has_volumes:
        print(
            f"{dataset.name} volumes: no volume-level metrics (test/normal and test/abnormal "
            "must both hold volumes)"
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

    _check_out(args.out, folder=True)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
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
