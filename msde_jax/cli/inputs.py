"""What the commands read: their image inputs (files, folders, volumes, one .npz stack), which
of them are readable, and the training normals of ``train-backbone``; :class:`UserError` for
input the user must change."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msde_jax.cli.volumes import print_volume_notes, volume_warnings

__all__ = [
    "UserError",
    "command_inputs",
    "input_files",
    "item_name",
    "normal_images",
    "print_repeated",
    "readable",
    "usable",
]


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def command_inputs(
    sources: Sequence[str],
    args: argparse.Namespace,
    axis: str | None = None,
    *,
    training: bool = False,
):
    """The named 2-D items of the command's inputs (:class:`msde_jax.io.inputs.Inputs`):
    image files (as paths) and the slices of volumes (NIfTI files, DICOM-series folders) from
    files/folders, or the images of one .npz stack. ``training`` (``fit``, ``embed``,
    ``train-backbone``): each folder laid out as a dataset (``train/``, ``test/`` or
    ``data.json``), alone or among other sources, gives its normal training images only
    (:func:`_training_sources`)."""
    from msde_jax.io.inputs import Inputs, SliceGroups, read_inputs

    if training:
        sources = [path for source in sources for path in _training_sources(source)]

    stacks = [source for source in sources if source.lower().endswith(".npz")]
    if stacks and len(sources) > 1:
        raise UserError(
            f"{stacks[0]}: an .npz image stack must be the command's only input; give it "
            "alone, or give image files and folders."
        )
    if stacks:
        from msde_jax.io.datasets import load_images_npz, open_npz

        if not Path(sources[0]).exists():
            raise FileNotFoundError(sources[0])
        with open_npz(sources[0]) as data:
            keys = list(data)
        if "embeddings" in keys:
            raise UserError(
                f"{sources[0]} holds embeddings (msde-jax embed's output): fit on it with "
                "--embeddings, or give the images."
            )
        if len(keys) > 1 and "train_normal" not in keys:
            raise UserError(
                f"{sources[0]} holds several arrays ({', '.join(keys)}): the commands read an "
                ".npz holding one image stack, or a dataset's train_normal; save the images "
                "alone (numpy.savez(path, images=...))."
            )
        images = load_images_npz(sources[0])
        if len(keys) > 1:  # a dataset: said, since its test images are there too
            print(
                f"{sources[0]}: a dataset; reading its train_normal images (its test images: "
                "msde-jax evaluate)",
                file=sys.stderr,
            )
        names = [f"{sources[0]}[{i}]" for i in range(len(images))]
        return Inputs(list(images), names, SliceGroups.images(len(images)))
    skip = getattr(args, "skip_unreadable", False)
    axis = axis or getattr(args, "axis", None) or "axial"
    with volume_warnings():
        inputs = read_inputs(list(sources), axis=axis, skip_unreadable=skip)
    print_volume_notes(inputs.groups.volumes)
    print_repeated(inputs.repeated)
    _note_lone_slices(sources, inputs.items)
    if not inputs.items and not inputs.skipped:
        from msde_jax.io.images import IMAGE_SUFFIXES
        from msde_jax.io.volumes import VOLUME_SUFFIXES

        raise UserError(
            f"no image files in {', '.join(sources)} (looked for {', '.join(IMAGE_SUFFIXES)}, "
            f"volumes {', '.join(VOLUME_SUFFIXES)} and DICOM-series folders, in folders and "
            "their sub-folders)."
        )
    return inputs


def _note_lone_slices(sources: Sequence[str], items: Sequence[Any]) -> None:
    """A ``note:`` on DICOM files given one by one that are slices of a series: read as 2-D
    images, each is scaled alone (its display window, or its own minimum and maximum), not as
    its series' slices are (one window for the volume) — so not as a model fitted on the
    series saw them."""
    from msde_jax.io.dicom import is_dicom
    from msde_jax.io.dicom_series import is_slice_file
    from msde_jax.io.errors import first_few

    kept = {str(item) for item in items if isinstance(item, str | Path)}
    dicom = [s for s in sources if s in kept and (s.lower().endswith(".dcm") or is_dicom(s))]
    lone = [s for s in dicom if is_slice_file(s)]
    if lone:
        print(
            f"note: {len(lone)} DICOM slice(s) of a series given as file(s), read as 2-D images "
            f"each scaled alone ({first_few(lone)}); give the series' folder to read them as its "
            "slices, as a model fitted on series reads them.",
            file=sys.stderr,
        )


def print_repeated(repeated: Sequence[str]) -> None:
    """The ``note:`` on inputs reached more than once, which were read once."""
    from msde_jax.io.errors import first_few

    if repeated:
        print(
            f"note: {len(repeated)} input(s) given more than once were read once: "
            f"{first_few(repeated)}",
            file=sys.stderr,
        )


def _training_sources(source: str) -> list[str]:
    """``[source]``, or where it is a folder laid out as a dataset its normal training images
    (``train/normal``, or a MedIAnomaly folder's list), with a note; such a folder without
    them is refused: its test images include abnormal ones, which a model of normal images
    must not learn."""
    root = Path(source)
    if not _dataset_folder(root):
        return [source]
    if (root / "data.json").is_file():  # MedIAnomaly: its list of normal training images
        from msde_jax.io.datasets import load_dataset

        dataset = load_dataset(root)
        sources = [str(item) for item in dataset.train_normal]
        print_repeated([path for path in dataset.repeated if path in set(sources)])
    elif (root / "train" / "normal").is_dir():
        sources = [str(root / "train" / "normal")]
    else:
        raise UserError(
            f"{root} is laid out as a dataset (train/ or test/), and its test images include "
            "abnormal ones: give the folder of its normal training images, or run msde-jax "
            "evaluate on the dataset."
        )
    print(
        f"{root}: a dataset; reading its normal training images (its test images: "
        "msde-jax evaluate)",
        file=sys.stderr,
    )
    return sources


def _dataset_folder(path: Path) -> bool:
    """A folder laid out as a dataset: ``train/`` or ``test/`` sub-folders, or ``data.json``."""
    return path.is_dir() and any((path / part).exists() for part in ("train", "test", "data.json"))


def input_files(inputs) -> list[str]:
    """The files and folders the items come from (image paths and volume sources)."""
    paths = [item for item in inputs.items if isinstance(item, str | Path)]
    return [*paths, *(v.source for v in inputs.groups.volumes)]


def item_name(item: Any) -> str:
    return str(item) if isinstance(item, str | Path) else "(array)"


def readable(
    items: list,
    names: list[str],
    args: argparse.Namespace,
    *,
    skipped: Sequence[str] = (),
    volume_files: int = 0,
    limit: int | None = None,
    ordinals: np.ndarray | None = None,
) -> list[int]:
    """The indices of the items to use. With ``--skip-unreadable``, those whose files decode
    as images (each skipped file — and each unreadable volume in ``skipped``, already left out
    — and the count printed on stderr); without it, all of them (the first unreadable file then
    stops the command, named in its error). ``volume_files``: how many volumes were read (for
    the count of files). ``limit``: the first ``limit`` (readable) inputs only (with
    ``--skip-unreadable`` the files after them are not read), an input being an item, or the
    items of one ``ordinals`` value (a volume's slices:
    :meth:`~msde_jax.io.inputs.SliceGroups.input_ordinals`)."""
    ordinals = np.arange(len(items)) if ordinals is None else np.asarray(ordinals)
    if not getattr(args, "skip_unreadable", False):
        return [int(i) for i in np.flatnonzero(ordinals < (len(items) if limit is None else limit))]
    import os

    from msde_jax.io.images import ImageReadError, to_float

    keep, skipped = [], list(skipped)
    n_files = len(skipped) + volume_files
    taken: set[int] = set()
    for i, (item, name) in enumerate(zip(items, names, strict=True)):
        if limit is not None and ordinals[i] not in taken and len(taken) == limit:
            break
        if isinstance(item, str | os.PathLike):
            n_files += 1
            try:
                to_float(item, name=name)
            except ImageReadError as err:
                skipped.append(str(err))
                continue
        keep.append(i)
        taken.add(int(ordinals[i]))
    for why in skipped:
        print(f"skipped: {why}", file=sys.stderr)
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s) of {n_files}", file=sys.stderr)
    if not keep:
        raise UserError(f"none of the {n_files} files could be read as an image.")
    return keep


def usable(inputs, args: argparse.Namespace) -> list[int]:
    """:func:`readable` of :class:`~msde_jax.io.inputs.Inputs`."""
    n_volume_files = len({v.source for v in inputs.groups.volumes})
    return readable(
        inputs.items,
        inputs.names,
        args,
        skipped=inputs.skipped,
        volume_files=n_volume_files,
    )


def normal_images(sources: Sequence[str]) -> list:
    """A dataset's train/normal split when given one dataset spec, else the images named.

    A folder laid out as a dataset (``train/`` or ``test/`` sub-folders, or ``data.json``) is
    never read whole: its test images include abnormal ones. Alone, without its test splits
    (all that training needs is ``train/normal``) its ``train/normal`` folder is read, and
    otherwise the dataset's error is raised; among other sources it gives its normal training
    images (:func:`command_inputs` with ``training``)."""
    from msde_jax.io.datasets import load_dataset

    if len(sources) == 1:
        path = Path(sources[0])
        layout = _dataset_folder(path)
        try:
            dataset = load_dataset(sources[0])
        except (ValueError, FileNotFoundError):
            if layout and (path / "train" / "normal").is_dir():
                print(f"{path}: using its train/normal folder", file=sys.stderr)
                return command_inputs([str(path / "train" / "normal")], argparse.Namespace()).items
            if layout:
                raise
        else:
            print(f"{dataset.name}: using its train/normal split", file=sys.stderr)
            return list(dataset.train_normal)
    return command_inputs(sources, argparse.Namespace(), training=True).items
