"""Inputs: image files, NIfTI volumes and DICOM series, as one list of named 2-D items.

The commands and the pipeline work on 2-D items (an image path or an array) with a display name
each. A volume — a NIfTI file (``.nii`` / ``.nii.gz``) or a folder holding a DICOM series
(:func:`~msde_jax.io.volume_readers.is_volume`) — becomes its kept slices
(:func:`~msde_jax.io.volumes.volume_images`, (H, W) float32 arrays in [0, 1]) named
``"{volume}:{index:04d}"`` (:func:`~msde_jax.io.volumes.slice_names`), and a
:class:`SliceGroups` remembers which volume each item is a slice of, so that slice scores can
be gathered per volume.

- :func:`list_inputs` walks files and folders: image files, NIfTI files and DICOM-series
  folders, sorted by path.
- :func:`expand_volumes` reads the volumes among a list of items into their slices.
- :func:`read_inputs` is the two in a row: what the commands call.
"""

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from msde_jax.io.dicom import is_dicom
from msde_jax.io.images import IMAGE_SUFFIXES, ImageReadError
from msde_jax.io.volume_readers import is_volume, read_volumes
from msde_jax.io.volumes import DEFAULT_WINDOW, Volume, is_nifti

__all__ = [
    "Inputs",
    "SliceGroups",
    "concat_groups",
    "expand_volumes",
    "list_inputs",
    "read_inputs",
]

# The built-in datasets' names (:mod:`msde_jax.io.datasets` reads them; here, a hint).
BUILTIN = ("pneumoniamnist",)


class SliceGroups(NamedTuple):
    """Which volume each of n items is a slice of.

    Attributes:
        volume: (n,) int64, the index in ``volumes`` of each item's volume; -1 for a 2-D image.
        position: (n,) int64, the item's row in ``volumes[volume].slices``; -1 for a 2-D image.
        volumes: the volumes, in input order (their ``slices`` are the items themselves).
    """

    volume: np.ndarray
    position: np.ndarray
    volumes: tuple[Volume, ...]

    @classmethod
    def images(cls, n: int) -> "SliceGroups":
        """n items that are all 2-D images."""
        none = np.full(n, -1, np.int64)
        return cls(none, none.copy(), ())

    @property
    def has_volumes(self) -> bool:
        """Whether any item is a slice of a volume."""
        return bool(self.volumes)

    def fold_groups(self) -> np.ndarray:
        """One group id per item for a detector's cross-fit folds (``fit(..., groups=)``): a
        volume's slices share its index, each 2-D image has an id of its own."""
        own = len(self.volumes) + np.arange(self.volume.size)
        return np.where(self.volume >= 0, self.volume, own)

    def members(self) -> list[np.ndarray]:
        """For each volume, the indices of its items (increasing)."""
        return [np.flatnonzero(self.volume == v) for v in range(len(self.volumes))]

    def take(self, keep: Sequence[int] | np.ndarray) -> "SliceGroups":
        """The groups of ``items[keep]``: volumes left without items are dropped, the others
        renumbered in their order."""
        keep = np.asarray(keep, np.int64).reshape(-1)
        volume, position = self.volume[keep], self.position[keep]
        used = np.unique(volume[volume >= 0])
        renumber = np.full(len(self.volumes) + 1, -1, np.int64)  # [-1] stays -1
        renumber[used] = np.arange(used.size)
        return SliceGroups(renumber[volume], position, tuple(self.volumes[v] for v in used))

    def input_ordinals(self) -> np.ndarray:
        """(n,) int64: which input each item belongs to, counting from 0 in input order, a
        volume or a 2-D image each counting as one input."""
        new = np.ones(self.volume.size, bool)
        new[1:] = (self.volume[1:] < 0) | (self.volume[1:] != self.volume[:-1])
        return np.cumsum(new, dtype=np.int64) - 1

    def first_inputs(self, limit: int) -> np.ndarray:
        """Indices of the items of the first ``limit`` inputs, a volume or a 2-D image each
        counting as one input (a volume is kept whole)."""
        return np.flatnonzero(self.input_ordinals() < limit)

    def item_names(self, items: Sequence[Any]) -> list[str]:
        """A display name per item: ``"{volume}:{index:04d}"`` for a slice, the path of a file,
        ``"image {i}"`` otherwise."""
        names = []
        for i, (v, p) in enumerate(zip(self.volume.tolist(), self.position.tolist(), strict=True)):
            if v >= 0:
                vol = self.volumes[v]
                names.append(f"{vol.name}:{int(vol.indices[p]):04d}")
            elif isinstance(items[i], str | os.PathLike):
                names.append(os.fspath(items[i]))
            else:
                names.append(f"image {i}")
        return names


def concat_groups(*groups: SliceGroups) -> SliceGroups:
    """The groups of the concatenated items of several lists (volumes renumbered, and named
    apart where two lists hold volumes of one name: ``p3/t1``, ``p4/t1``)."""
    volume, position, volumes = [], [], []
    for g in groups:
        volume.append(np.where(g.volume >= 0, g.volume + len(volumes), -1))
        position.append(g.position)
        volumes.extend(g.volumes)
    if not groups:
        return SliceGroups.images(0)
    return SliceGroups(
        np.concatenate(volume).astype(np.int64), np.concatenate(position), _named_apart(volumes)
    )


class Inputs(NamedTuple):
    """Named 2-D items, with the volume each slice came from.

    Attributes:
        items: what :meth:`msde_jax.Embedder.embed` takes: image paths (``str``), the
            (H, W) float32 slices of volumes, or the arrays given.
        names: a display name per item (:meth:`SliceGroups.item_names`).
        groups: the :class:`SliceGroups` of the items.
        skipped: with ``skip_unreadable``, the error message of each volume that could not be
            read (and was left out).
        repeated: the files and folders reached more than once (given twice, or given and
            found in a folder given), read once (:func:`read_inputs`).
    """

    items: list
    names: list[str]
    groups: SliceGroups
    skipped: tuple[str, ...] = ()
    repeated: tuple[str, ...] = ()

    def take(self, keep: Sequence[int] | np.ndarray) -> "Inputs":
        """The inputs ``items[keep]`` (names and groups alike)."""
        keep = [int(i) for i in keep]
        return Inputs(
            [self.items[i] for i in keep],
            [self.names[i] for i in keep],
            self.groups.take(keep),
            self.skipped,
            self.repeated,
        )


def list_inputs(
    sources: str | os.PathLike | Sequence[str | os.PathLike], *, volumes: bool = True
) -> list[str]:
    """Image files, NIfTI files and DICOM-series folders from files and folders.

    A folder is searched recursively (hidden files and folders, whose names start with ``.``,
    left out; symbolic links to folders followed, each real folder once): every file with an
    image suffix or DICOM's magic under another name (as
    :func:`~msde_jax.io.datasets.list_images`) or a NIfTI suffix, and every folder that is a
    DICOM series (:func:`~msde_jax.io.dicom_series.is_dicom_series`) as one entry — its DICOM
    files (``.dcm`` or any other name) are not listed again as images; its sub-folders are
    searched. The entries of one folder are sorted by path. A file or folder given directly is
    taken as it is (a folder given directly is searched, even when it is itself a DICOM series:
    then it is one entry). A file or folder reached again (given twice, or given and found in a
    folder given, by the same real path; a file of a DICOM-series folder listed) is listed once,
    at its first place.

    Args:
        sources: a file, a folder, or a sequence of them (concatenated in the given order).
        volumes: ``False`` lists image files only (every file with an image suffix below a
            folder, sorted; :func:`~msde_jax.io.datasets.list_images`).

    Returns:
        The paths as strings.

    Raises:
        FileNotFoundError: a source does not exist.
        ValueError: a source is an ``.npz`` file (an array stack, not an image file).
    """
    return _listed(sources, volumes=volumes)[0]


def _listed(
    sources: str | os.PathLike | Sequence[str | os.PathLike], *, volumes: bool = True
) -> tuple[list[str], list[str]]:
    """:func:`list_inputs`, and the entries it left out as repeats."""
    if isinstance(sources, str | os.PathLike):
        sources = [sources]
    out: list[str] = []
    for src in sources:
        path = Path(src)
        if not path.exists():
            builtin = str(src).removeprefix("builtin:") in BUILTIN
            hint = (
                " ('pneumoniamnist' names the built-in dataset, which evaluate, demo and "
                "train-backbone read; this command takes image files and folders)"
                if builtin
                else ""
            )
            raise FileNotFoundError(f"{path}: no such file or folder{hint}.")
        if path.is_dir() and volumes:
            out.extend(_walk(path))
        elif path.is_dir():
            found = (here / name for here, files in _folders(path) for name in files)
            out.extend(str(p) for p in sorted(found) if _listed_file(p, _image_file(p)))
        elif path.suffix.lower() == ".npz":
            raise ValueError(
                f"{path}: an .npz file is an array stack, not an image file; read it with "
                "msde_jax.io.datasets.load_images_npz (or load_dataset for a train/test split)."
            )
        else:
            out.append(str(path))
    # A DICOM-series folder reads the files it holds: one of them given too is a repeat.
    folders = [entry for entry in out if os.path.isdir(entry)]
    files = {os.path.realpath(entry) for entry in out if not os.path.isdir(entry)}
    in_series = {
        os.path.realpath(file)
        for entry in (folders if files else ())
        for file in Path(entry).iterdir()
        if os.path.realpath(file) in files and (file.suffix.lower() == ".dcm" or is_dicom(file))
    }
    first, repeated = {}, []
    for entry in out:
        real = os.path.realpath(entry)
        if real in first or real in in_series:
            repeated.append(entry)
        else:
            first[real] = entry
    return list(first.values()), repeated


def _image_file(path: Path) -> bool:
    """An image suffix, or a DICOM file under another name (``IM0001``, ``.IMA``), known by
    its DICM magic."""
    return path.suffix.lower() in IMAGE_SUFFIXES or is_dicom(path)


def _listed_file(path: Path, named: bool) -> bool:
    """Whether a folder's entry ``path`` whose name is an input's (``named``) is listed: a
    file, or a link to a file that is gone (then unreadable by name, not silently left out)."""
    return named and (path.is_file() or (path.is_symlink() and not path.exists()))


def _folders(root: Path) -> Iterator[tuple[Path, list[str]]]:
    """``root`` and every folder below it, each with the names of its files.

    Hidden files and folders (named ``.*``: macOS's ``._scan.png`` copies of metadata,
    ``.ipynb_checkpoints``) are never images of the dataset and are left out. Symbolic links
    to folders are followed (datasets are often assembled from links), each real folder once,
    under its own path where it lies below ``root``: a second link to it, or a link back up
    the tree (to ``root`` or a folder above it, which holds ``root``'s siblings: a dataset's
    other splits), is not walked.
    """
    base, seen = os.path.realpath(root), set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        through_link = real != os.path.normpath(os.path.join(base, os.path.relpath(folder, root)))
        # a real folder below root and outside hidden ones is walked where it lies: a link to
        # it is skipped (no part of its path from root is hidden, nor "..", nor a link)
        lies_below = not any(
            part.startswith(".") for part in Path(os.path.relpath(real, base)).parts
        )
        above = real != base and os.path.commonpath([real, base]) == real
        if real in seen or (through_link and (lies_below or above)):
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield Path(folder), [name for name in files if not name.startswith(".")]


def _walk(root: Path) -> list[str]:
    found: list[Path] = []
    for here, files in _folders(root):
        series = is_volume(here)  # a DICOM-series folder
        if series:
            found.append(here)
        for name in files:
            path = here / name
            if series and (name.upper() == "DICOMDIR" or path.suffix.lower() == ".dcm"):
                continue  # the series' index, or one of its files
            if series and is_dicom(path):
                continue  # one of its files under another name
            if _listed_file(path, is_nifti(path) or _image_file(path)):
                found.append(path)
    return [str(p) for p in sorted(found)]


def expand_volumes(
    items: Sequence[Any],
    *,
    axis: str = "axial",
    window: tuple[float, float] | None = DEFAULT_WINDOW,
    skip_unreadable: bool = False,
) -> Inputs:
    """Read the volumes among ``items`` into their kept slices; other items stay as they are.

    A path (``str`` or ``os.PathLike``) that :func:`~msde_jax.io.volume_readers.is_volume` accepts
    (a NIfTI file or a DICOM-series folder) is read with
    :func:`~msde_jax.io.volume_readers.read_volumes` (a folder may hold several series: one volume
    each) and replaced by its slices, in slice order. Volumes that share a name (``t1.nii.gz``
    in one folder per patient) are named with as many of their parent folders as tell them
    apart (``patient001/t1``, ``patient002/t1``), so every slice name is distinct.

    Args:
        items: image paths, arrays, PIL images, and volume paths.
        axis: the slicing plane of NIfTI volumes (``"axial"``, ``"coronal"``, ``"sagittal"``);
            a DICOM series is read along its own slice normal and refuses another plane.
        window: intensity window percentiles (:func:`~msde_jax.io.volumes.window_volume`).
        skip_unreadable: leave out a volume that cannot be read
            (:class:`~msde_jax.io.images.ImageReadError`) and record its message in
            ``skipped``, instead of raising.

    Returns:
        The :class:`Inputs`.

    Raises:
        ImageReadError: a volume cannot be read (the message names the file or series).
        ImportError: nibabel or pydicom, which the volume needs, is not installed.
        ValueError: a DICOM series with ``axis`` other than ``"axial"``.
    """
    out_items: list = []
    volume: list[int] = []
    position: list[int] = []
    volumes: list[Volume] = []
    skipped: list[str] = []
    for item in items:
        if isinstance(item, str | os.PathLike) and is_volume(item):
            try:
                read = read_volumes(item, axis=axis, window=window)
            except ImageReadError as err:
                if not skip_unreadable:
                    raise
                skipped.append(str(err))
                continue
            for vol in read:
                out_items.extend(vol.slices)
                volume.extend([len(volumes)] * len(vol.slices))
                position.extend(range(len(vol.slices)))
                volumes.append(vol)
        else:
            out_items.append(item)
            volume.append(-1)
            position.append(-1)
    groups = SliceGroups(
        np.asarray(volume, np.int64), np.asarray(position, np.int64), _named_apart(volumes)
    )
    return Inputs(out_items, groups.item_names(out_items), groups, tuple(skipped))


def _named_apart(volumes: Sequence[Volume]) -> tuple[Volume, ...]:
    """The volumes with distinct names: a name several share (``t1.nii.gz`` in one folder per
    patient) is prefixed with as few of each one's parent folders as tell them apart
    (``patient001/t1``), so that slice names identify their volume."""
    out = list(volumes)
    shared = [name for name, count in Counter(v.name for v in volumes).items() if count > 1]
    for name in shared:
        members = [i for i, v in enumerate(volumes) if v.name == name]
        parents = [Path(volumes[i].source).absolute().parent.parts[1:] for i in members]
        for depth in range(1, max(map(len, parents)) + 1):
            names = ["/".join((*p[-depth:], name)) for p in parents]
            if len(set(names)) == len(names):
                break
        else:  # one source read twice
            names = [f"{name}#{k + 1}" for k in range(len(members))]
        for i, new in zip(members, names, strict=True):
            out[i] = out[i]._replace(name=new)
    return tuple(out)


def read_inputs(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    axis: str = "axial",
    window: tuple[float, float] | None = DEFAULT_WINDOW,
    skip_unreadable: bool = False,
) -> Inputs:
    """:func:`list_inputs` then :func:`expand_volumes`: files and folders → named 2-D items
    (each file and folder once: those reached again are in ``repeated``).

    Image files stay paths (read when embedded); volumes are read now, into memory. See those
    two functions for the arguments and errors.
    """
    paths, repeated = _listed(sources)
    inputs = expand_volumes(paths, axis=axis, window=window, skip_unreadable=skip_unreadable)
    return inputs._replace(repeated=tuple(repeated))
