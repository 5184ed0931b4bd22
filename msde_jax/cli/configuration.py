"""What the command-line options configure: an embedder (or one per component) and a detector.

:func:`configured` turns ``--detector`` and its options into a pair ready to fit:

* ``bank``: one :class:`~msde_jax.Embedder` of patch features and a
  :class:`~msde_jax.PatchBankDetector` (the default rule);
* ``msde``: one embedder of pooled features and an :class:`~msde_jax.MSDEDetector`;
* ``ensemble``: :func:`msde_jax.pipeline.presets.ensemble`, a mapping ``{component name:
  embedder}`` and a :class:`~msde_jax.FusedDetector` of the same names.

:func:`selected` runs ``--select`` instead: the label-free choice among
:func:`~msde_jax.pipeline.presets.candidates`, any of whose configurations may be fused.
:func:`embedder_metadata` is what a saved model keeps of its embedders, which ``score`` reads
back (:func:`embedder_configs`, checked before any other work) and rebuilds
(:func:`build_embedders`). Bad options raise :class:`UserError` before any image is embedded.
"""

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from msde_jax.cli.inputs import UserError
from msde_jax.cli.parser import BANK_OPTIONS, MSDE_OPTIONS

__all__ = [
    "CONFIGURATION_OPTIONS",
    "args_detector",
    "args_embedder",
    "backbone_name",
    "build_embedders",
    "check_detector_options",
    "check_training_count",
    "configured",
    "detector_kind",
    "embedder_configs",
    "embedder_metadata",
    "fit_options",
    "given",
    "selected",
]

# The options that choose the detector and its features (given: not the default rule).
CONFIGURATION_OPTIONS = ("detector", "features", "layers", *MSDE_OPTIONS, *BANK_OPTIONS)

# What a saved model's embedder configuration must hold to rebuild its embedder.
_EMBEDDER_KEYS = ("backbone", "weights", "image_size", "resize", "features", "dtype")


def given(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    """The options among ``names`` given on the command line, as ``--option`` strings."""
    # By identity: ``0 in (None, False)`` is true, and --k 0 is given (and refused later).
    found = [
        n for n in names if getattr(args, n, None) is not None and getattr(args, n) is not False
    ]
    return ["--" + n.replace("_", "-") for n in found]


def _are(options: list[str], what: str) -> str:
    """``"--k is an MSDE option"`` / ``"--k, --mode are MSDE options"``."""
    if len(options) == 1:
        return f"{options[0]} is {what}"
    return f"{', '.join(options)} are {what.split(' ', 1)[1]}s"


def detector_kind(args: argparse.Namespace, ndim: int | None = None) -> str:
    """``"bank"``, ``"msde"`` or ``"ensemble"``: ``--detector``, else msde when an MSDE-only
    option (``--threshold chi2`` included) is given or the precomputed features (of ``ndim``
    dimensions) are pooled, else the bank."""
    msde, bank = given(args, MSDE_OPTIONS), given(args, BANK_OPTIONS)
    if msde and bank:  # each alone would send the user to the other detector, and back
        raise UserError(
            f"{_are(msde, 'an MSDE option')} and {_are(bank, 'a memory-bank option')}: a "
            "detector is one or the other; drop one set."
        )
    kind = args.detector
    pooled = ndim == 2 or args.features in ("pooled", "multiscale")
    if kind is None:
        chi2 = getattr(args, "threshold", None) == "chi2"  # the χ² law: MSDE's Gaussian only
        kind = "msde" if msde or pooled or chi2 else "bank"
    if kind == "bank" and msde:
        raise UserError(f"{_are(msde, 'an MSDE option')}: add --detector msde.")
    if kind == "msde" and bank:
        if args.detector is None and pooled:  # the features chose MSDE: the bank cannot use them
            what = "these embeddings are pooled" if ndim == 2 else f"--features {args.features}"
            raise UserError(
                f"{_are(bank, 'a memory-bank option')}, and the bank scores patch features, "
                f"not pooled ones ({what}): drop {', '.join(bank)}"
                + ("." if ndim == 2 else ", or --features.")
            )
        raise UserError(f"{_are(bank, 'a memory-bank option')}: use --detector bank.")
    if kind == "ensemble":
        own = given(args, (*MSDE_OPTIONS, *BANK_OPTIONS, "features", "layers"))
        if own:
            raise UserError(
                f"--detector ensemble sets its components' features and options itself: drop "
                f"{', '.join(own)}."
            )
        if args.threshold != "cross_fit":
            raise UserError(
                f"--threshold {args.threshold} does not apply to --detector ensemble: its "
                "threshold is a quantile of the fused out-of-fold scores (cross_fit)."
            )
    return kind


def check_detector_options(args: argparse.Namespace) -> None:
    """Refuse bad detector options before any input is read or any weights load: the
    detector alone is built (``--select`` chooses its own)."""
    if not getattr(args, "select", False) and detector_kind(args) != "ensemble":
        args_detector(args)


def args_embedder(args: argparse.Namespace):
    """The one :class:`~msde_jax.Embedder` the options give (``bank`` and ``msde``; ``embed``)."""
    from msde_jax.embedder import Embedder

    features = args.features
    if args.command != "embed":
        kind = detector_kind(args)
        if kind == "ensemble":
            raise UserError("--detector ensemble has one embedder per component: see configured().")
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
        weights=_weights(args),
        image_size=args.image_size,
        batch_size=args.batch_size,
        features=features or "pooled",
        layers=layers or None,
    )


def args_detector(args: argparse.Namespace, ndim: int | None = None):
    """The one detector ``--detector bank`` / ``msde`` and their options give, validated."""
    from msde_jax.detectors.msde import MSDEDetector
    from msde_jax.detectors.patch_bank import PatchBankDetector

    params: dict[str, Any] = {"contamination": args.contamination, "threshold": args.threshold}
    if args.n_folds is not None:
        if args.threshold != "cross_fit":
            raise UserError(
                f"--n-folds sets the folds of the cross-fit threshold; --threshold "
                f"{args.threshold} has none: drop one of them."
            )
        params["n_folds"] = args.n_folds
    kind = detector_kind(args, ndim)
    if kind == "ensemble":
        raise UserError(
            "--detector ensemble fuses the features of several embedders: fit it on images, "
            "not on one --embeddings array."
        )
    if kind == "bank":
        names = {option: option for option in BANK_OPTIONS} | {"bank_size": "size"}
        params |= {p: getattr(args, o) for o, p in names.items() if getattr(args, o) is not None}
        return _validated(PatchBankDetector(**params, seed=args.seed))
    shift = given(args, ("k", "density"))
    if args.mode == "none" and shift:
        raise UserError(
            f"--mode none fits no mean shift, which {', '.join(shift)} set"
            f"{'s' * (len(shift) == 1)}: drop {', '.join(shift)}, or pick another --mode."
        )
    for name in ("mode", "k", "density"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    detector = MSDEDetector.paper(**params) if args.paper else MSDEDetector(**params)
    return _validated(detector)


def _validated(detector):
    """``detector``, once its options are known to be valid (its config builds), so that a bad
    option is refused before any image is embedded; the message names the option (``size``
    is ``--bank-size``)."""
    try:
        detector.config()
    except ValueError as err:
        text = str(err)
        name = text.split(" ", 1)[0].split("=", 1)[0]
        flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
        known = name in _FLAGS or name in (*MSDE_OPTIONS, *BANK_OPTIONS, "contamination")
        raise UserError(f"{flag}: {text}" if known else text) from err
    return detector


# A detector parameter's option where the names differ.
_FLAGS = {"size": "--bank-size", "n_folds": "--n-folds", "threshold": "--threshold"}


def _weights(args: argparse.Namespace) -> str | None:
    """``--weights``, a file's path made absolute: a model saved with it scores from anywhere."""
    weights = args.weights
    if weights is not None and os.path.isfile(weights):
        weights = os.path.abspath(weights)
    return weights


def _embedder_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"weights": _weights(args), "image_size": args.image_size, "batch_size": args.batch_size}


def configured(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(embedder, detector)`` as the options give them, unfitted; for ``--detector
    ensemble`` the embedder is a mapping ``{component name: embedder}`` and the detector a
    :class:`~msde_jax.FusedDetector` of those names (components seeded with ``--seed``)."""
    from msde_jax.pipeline.presets import ensemble, seeded

    if detector_kind(args) != "ensemble":
        return args_embedder(args), args_detector(args)
    embedders, detector = ensemble(args.backbone, **_embedder_options(args))
    return embedders, _validated(seeded(fit_options(detector, args), args.seed))


def fit_options(detector: Any, args: argparse.Namespace) -> Any:
    """``detector`` with ``--contamination`` and, where given, ``--n-folds`` set: a
    :class:`~msde_jax.FusedDetector`'s folds are its components' (each cross-fits its own
    out-of-fold scores)."""
    params: dict[str, Any] = {"contamination": args.contamination}
    if args.n_folds is not None:
        components = getattr(detector, "components", None)
        if isinstance(components, Mapping):
            params |= {f"{name}__n_folds": args.n_folds for name in components}
        else:
            params["n_folds"] = args.n_folds
    return detector.set_params(**params)


def check_training_count(embedder: Any, detector: Any, n_images: int) -> None:
    """Refuse ``n_images`` training images, before any is embedded, where the fit would refuse
    them after the embedding: too few for the folds of the cross-fit threshold, or for the
    neighbours of the smallest fold's model. With volumes the folds hold whole volumes, so
    uneven folds are checked again by the fit."""
    components = getattr(detector, "components", None)
    pairs = components.items() if isinstance(components, Mapping) else [(None, detector)]
    for name, component in pairs:
        config = component.config()
        try:
            if hasattr(config, "check_n_images"):  # a patch bank: its patches count
                shape = (embedder if name is None else embedder[name]).output_shape
                config.check_n_images(n_images, math.prod(shape[:-1]))
            else:
                config.check_n_samples(n_images)
        except ValueError as err:
            where = "" if name is None else f"component {name!r}: "
            option = " (--n-folds)" if "n_folds" in str(err) else ""
            raise UserError(f"{where}{err}{option}") from err


def volume_ids(groups: Any) -> Any:
    """The volume of each item of ``groups`` (:class:`~msde_jax.io.inputs.SliceGroups`) for
    the synthetic validation's split, ``None`` without volumes (images split one by one)."""
    return groups.fold_groups() if groups.has_volumes else None


def selected(normals: Sequence[Any], args: argparse.Namespace, cache_dir: str, groups: Any = None):
    """``--select``: the candidate of :func:`~msde_jax.pipeline.presets.candidates` with the
    highest synthetic-validation AUROC on ``normals`` (``groups``: their volumes, kept whole
    by the validation's split), as ``(embedder, detector, name, validation)``; the detector
    is the candidate's template, unfitted, with ``--contamination``."""
    from msde_jax.pipeline.presets import candidates, seeded
    from msde_jax.pipeline.selection import select

    chosen = given(args, CONFIGURATION_OPTIONS)
    if args.threshold != "cross_fit":
        chosen.append("--threshold")
    if getattr(args, "no_validation", False):  # evaluate's and demo's option
        chosen.append("--no-validation")
    if chosen:
        drop = ", ".join(chosen)
        raise UserError(f"--select chooses the detector and features itself: drop {drop}.")
    pool = candidates(args.backbone, **_embedder_options(args))
    for candidate in pool.values():  # a bad --contamination is refused before any embedding
        _validated(seeded(fit_options(candidate.detector, args), args.seed))
    selection = select(normals, pool, cache_dir=cache_dir, seed=args.seed, groups=groups)
    embedder, detector = selection.candidate
    return embedder, detector, selection.name, selection.validation


def backbone_name(embedder: Any) -> str:
    """The backbone of an embedder, or of a mapping's (joined when they differ)."""
    if isinstance(embedder, Mapping):
        names = dict.fromkeys(getattr(e, "backbone", "?") for e in embedder.values())
        return "+".join(names)
    return str(getattr(embedder, "backbone", "?"))


def embedder_metadata(embedder: Any) -> dict[str, Any]:
    """What a saved model keeps of its embedders: ``{"embedder": config}`` for one,
    ``{"embedders": {name: config}}`` for a fused detector's mapping."""
    if isinstance(embedder, Mapping):
        return {"embedders": {name: e.config() for name, e in embedder.items()}}
    return {"embedder": embedder.config()}


def _check_config(path: str, config: Any, what: str) -> dict[str, Any]:
    if not isinstance(config, dict) or not all(k in config for k in _EMBEDDER_KEYS):
        raise UserError(
            f"{path}: its metadata {what} is not the embedder configuration `msde-jax fit` "
            f"saves (a JSON object with {', '.join(_EMBEDDER_KEYS)}); refit the model."
        )
    return config


def embedder_configs(path: str, detector: Any) -> Any:
    """The embedder configuration a model saved by ``msde-jax fit`` keeps (for a fused
    detector, ``{component name: configuration}``), checked for its form; nothing is built."""
    meta = getattr(detector, "metadata_", {})
    if hasattr(detector, "n_features_in_"):
        config = meta.get("embedder")
        if not config:
            raise UserError(
                f"{path} holds no embedder configuration to embed images with: it was fitted "
                "on precomputed embeddings (`fit --embeddings`), or saved from Python without "
                "one (save it with metadata={'embedder': embedder.config()}); or score "
                "embeddings from Python."
            )
        return _check_config(path, config, "'embedder'")
    components = dict(detector.components)  # a FusedDetector: one embedder per component
    configs = meta.get("embedders")
    if not isinstance(configs, dict) or set(configs) != set(components):
        raise UserError(
            f"{path} holds a {type(detector).__name__} of components "
            f"{', '.join(map(repr, components))} without an embedder for each in its metadata "
            "'embedders' (`msde-jax fit` saves them): score it from Python "
            "(msde_jax.pipeline.evaluation.evaluate), or refit it with `msde-jax fit`."
        )
    return {n: _check_config(path, configs[n], f"'embedders' {n!r}") for n in components}


def _built(path: str, config: dict[str, Any], detector: Any, what: str, batch_size: int | None):
    """The embedder of ``config``, checked to give ``detector`` its number of features."""
    from msde_jax.embedder import Embedder

    try:
        embedder = Embedder.from_config(config, batch_size=batch_size)
    except (KeyError, TypeError) as err:
        raise UserError(f"{path}: its embedder configuration is invalid ({err!r}).") from err
    dim = embedder.output_shape[-1]
    if dim != detector.n_features_in_:
        raise UserError(
            f"{path}: {what} was fitted on {detector.n_features_in_} features per "
            f"{'patch' if detector.has_maps else 'image'}, but its embedder ({embedder!r}) "
            f"gives {dim}: the file's metadata does not match its detector; refit the model."
        )
    return embedder


def build_embedders(path: str, detector: Any, configs: Any, batch_size: int | None = None):
    """The embedder (for a fused detector, the mapping of embedders) of
    :func:`embedder_configs`, each checked against the features its detector was fitted on."""
    if hasattr(detector, "n_features_in_"):
        return _built(path, configs, detector, "its detector", batch_size)
    components = dict(detector.components)
    return {
        name: _built(path, config, components[name], f"its component {name!r}", batch_size)
        for name, config in configs.items()
    }
