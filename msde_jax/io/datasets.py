"""Dataset readers: the built-in PneumoniaMNIST split, npz stacks, image folders, MedIAnomaly.

A :class:`Dataset` holds the training normals and the labelled test images of a one-class
problem. Its items are file paths (``str``) or NumPy image arrays: anything
:meth:`msde_jax.Embedder.embed` accepts. :func:`load_dataset` accepts four layouts:

- ``"pneumoniamnist"`` (or ``"builtin:pneumoniamnist"``): the MedMNIST v2 PneumoniaMNIST copy
  shipped with the package (28×28; CC BY 4.0, see ``msde_jax/data/PNEUMONIAMNIST_LICENSE.md``);
- an ``.npz`` file with ``train_normal``, ``test_normal`` and ``test_abnormal`` image stacks;
- a folder with ``train/normal``, ``test/normal`` and ``test/abnormal`` sub-folders of images
  or volumes (NIfTI files, DICOM-series folders; :mod:`msde_jax.io.inputs`): a volume's items
  are its kept slices, and ``Dataset.groups`` records which volume each slice came from;
- a MedIAnomaly benchmark folder: ``images/`` plus ``data.json`` whose ``train["0"]``,
  ``test["0"]`` and ``test["1"]`` list file names relative to ``images/``.
"""

import contextlib
import dataclasses
import errno
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from msde_jax._arrays_file import MemberHeader, load_npz, member_headers
from msde_jax._files import read_json
from msde_jax.io.images import IMAGE_SUFFIXES
from msde_jax.io.inputs import BUILTIN, SliceGroups, concat_groups, list_inputs, read_inputs
from msde_jax.io.volumes import VOLUME_SUFFIXES

__all__ = [
    "BUILTIN",
    "SPLIT_KEYS",
    "Dataset",
    "NpzArrays",
    "list_images",
    "load_dataset",
    "load_images_npz",
    "open_npz",
]

SPLIT_KEYS = ("train_normal", "test_normal", "test_abnormal")

_LAYOUTS = (
    "accepted datasets: 'pneumoniamnist' (built in); an .npz file with arrays "
    "'train_normal', 'test_normal' and 'test_abnormal'; a folder with sub-folders "
    "train/normal, test/normal and test/abnormal; or a MedIAnomaly folder with images/ and "
    "data.json"
)


@dataclass
class Dataset:
    """A one-class anomaly detection dataset.

    Attributes:
        name: a short name (the built-in name, or the file / folder name).
        train_normal: training images, all normal (paths or arrays).
        test_normal: normal test images (label 0).
        test_abnormal: abnormal test images (label 1).
        source: where it was read from.
        groups: for each split holding slices of volumes (``"train_normal"``, ``"test_normal"``,
            ``"test_abnormal"``), the :class:`~msde_jax.io.inputs.SliceGroups` of its items;
            splits of 2-D images only are absent.
        skipped: volumes left out as unreadable (``load_dataset(..., skip_unreadable=True)``),
            one message each.
        repeated: files and folders of a folder dataset reached twice (a link beside its
            target) or listed twice in a MedIAnomaly ``data.json``, read once.
    """

    name: str
    train_normal: list
    test_normal: list
    test_abnormal: list
    source: str
    groups: dict[str, SliceGroups] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    repeated: tuple[str, ...] = ()

    @property
    def has_volumes(self) -> bool:
        """Whether any split holds slices of volumes."""
        return any(g.has_volumes for g in self.groups.values())

    def split_groups(self, split: str) -> SliceGroups:
        """The :class:`~msde_jax.io.inputs.SliceGroups` of a split (all 2-D images when it
        holds no volume)."""
        if split not in SPLIT_KEYS:
            raise ValueError(f"unknown split {split!r}; one of {', '.join(SPLIT_KEYS)}.")
        groups = self.groups.get(split)
        return SliceGroups.images(len(getattr(self, split))) if groups is None else groups

    def test_groups(self) -> SliceGroups:
        """The :class:`~msde_jax.io.inputs.SliceGroups` of :meth:`test_items`."""
        return concat_groups(self.split_groups("test_normal"), self.split_groups("test_abnormal"))

    def test_names(self) -> list[str]:
        """Display names of :meth:`test_items` (:meth:`SliceGroups.item_names`)."""
        return self.test_groups().item_names(self.test_items())

    def subset(self, keep: Mapping[str, Sequence[int]]) -> "Dataset":
        """The dataset with only the items ``keep[split]`` of each split named (the others
        whole); the volume groups follow."""
        fields: dict[str, Any] = {}
        groups = dict(self.groups)
        for split, indices in keep.items():
            items = getattr(self, split)
            fields[split] = [items[int(i)] for i in indices]
            if split in groups:
                groups[split] = groups[split].take(indices)
        return dataclasses.replace(self, **fields, groups=groups)

    def test_items(self) -> list:
        """The test images: the normals, then the abnormals."""
        return list(self.test_normal) + list(self.test_abnormal)

    def test_labels(self) -> np.ndarray:
        """Labels of :meth:`test_items`: 0 for normal, 1 for abnormal (int64)."""
        return np.concatenate(
            [np.zeros(len(self.test_normal), np.int64), np.ones(len(self.test_abnormal), np.int64)]
        )

    def __repr__(self) -> str:
        volumes = "".join(
            f", {split}_volumes={len(g.volumes)}" for split, g in self.groups.items() if g.volumes
        )
        return (
            f"Dataset({self.name!r}, train_normal={len(self.train_normal)}, "
            f"test_normal={len(self.test_normal)}, test_abnormal={len(self.test_abnormal)}"
            f"{volumes}, source={self.source!r})"
        )


def load_dataset(
    spec: str | os.PathLike, *, axis: str = "axial", skip_unreadable: bool = False
) -> Dataset:
    """Read a dataset from a built-in name, an ``.npz`` file or a folder.

    Args:
        spec: ``"pneumoniamnist"`` / ``"builtin:pneumoniamnist"``, a path to an ``.npz`` file,
            a folder with ``train/normal``, ``test/normal`` and ``test/abnormal``, or a
            MedIAnomaly folder (``images/`` and ``data.json``).
        axis: the slicing plane of NIfTI volumes in a folder dataset
            (:func:`~msde_jax.io.inputs.expand_volumes`).
        skip_unreadable: leave out volumes that cannot be read (listed in
            ``Dataset.skipped``) instead of raising; unreadable image files are found when
            they are read, not here.

    Returns:
        The :class:`Dataset`; folder layouts give sorted lists of file paths (and, for volumes,
        their slices as arrays, read now, with ``groups``), npz files give lists of arrays.

    Raises:
        FileNotFoundError: ``spec`` is neither a built-in name nor an existing path, or a
            MedIAnomaly ``data.json`` lists files that ``images/`` does not hold.
        ValueError: the layout is not recognised, a split is missing or empty, an .npz file is
            damaged or holds something else than image stacks (:func:`open_npz`).
    """
    if isinstance(spec, str):
        name = spec.removeprefix("builtin:")
        if name.lower() in BUILTIN and (spec.startswith("builtin:") or not os.path.exists(spec)):
            return _builtin(name.lower())
        if spec.startswith("builtin:"):
            raise ValueError(f"unknown built-in dataset {name!r}; built in: {', '.join(BUILTIN)}.")
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder ({_LAYOUTS}).")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise ValueError(f"{path}: not an .npz file or a dataset folder; {_LAYOUTS}.")
        return _from_npz(path, name=path.stem, source=str(path))
    if (path / "data.json").is_file():
        return _both_labels_refused(_from_medianomaly(path))
    if (path / "train").is_dir() or (path / "test").is_dir():
        return _both_labels_refused(_from_folders(path, axis=axis, skip_unreadable=skip_unreadable))
    raise ValueError(f"{path}: no train/ and test/ sub-folders and no data.json; {_LAYOUTS}.")


def _both_labels_refused(dataset: Dataset) -> Dataset:
    """``dataset``, unless a file is among both its normal and its abnormal test images (a
    name in both lists, or a link in one class folder to a file of the other): its label
    would be both, and the metrics would count it twice."""

    def files(items: Sequence[Any]) -> dict[str, str]:
        paths = (item for item in items if isinstance(item, str | os.PathLike))
        return {os.path.realpath(path): str(path) for path in paths}

    normal, abnormal = files(dataset.test_normal), files(dataset.test_abnormal)
    both = [abnormal[real] for real in abnormal if real in normal]
    if both:
        raise ValueError(
            f"{dataset.source}: {len(both)} file(s) are both normal and abnormal test images, "
            f"e.g. {both[0]} (the same file as {normal[os.path.realpath(both[0])]}); give each "
            "test image one label."
        )
    return dataset


def _builtin(name: str) -> Dataset:
    ref = resources.files("msde_jax") / "data" / f"{name}.npz"
    with resources.as_file(ref) as file:
        return _from_npz(Path(file), name=name, source=f"builtin:{name}")


@contextlib.contextmanager
def open_npz(path: str | os.PathLike) -> Iterator["NpzArrays"]:
    """An ``.npz`` file's arrays by name (read on access), never unpickling anything.

    The file is read by :mod:`msde_jax._arrays_file`: every array's header is checked against
    the bytes the file stores when it is opened, before any data is read (``headers`` gives
    them: shapes and dtypes without reading), and the arrays read are bounded by the memory
    bound (half of the available memory, or ``MSDE_JAX_MAX_ARRAY_BYTES``). Every way the file
    can fail ends in one ``ValueError`` that names it (and the array, where one is at fault):
    not an .npz (another file renamed, an empty or truncated one), a header or zip directory
    that claims more than the file holds, a damaged member (the zip CRC), an array of Python
    objects (which would need pickle, refused) or arrays larger than the bound.

    Raises:
        FileNotFoundError: no such file.
        ValueError: as above (:class:`~msde_jax._arrays_file.ArrayFileError`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
    yield NpzArrays(path, member_headers(path))


class NpzArrays(Mapping):
    """The arrays of an ``.npz`` whose headers were checked, each read on access.

    ``data[name]`` reads one array; :meth:`read` reads several at once, so that they count
    against the memory bound together; ``headers`` has every array's shape and dtype.
    """

    def __init__(self, path: Path, headers: dict[str, MemberHeader]):
        self.path, self.headers = path, headers

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.headers:
            raise KeyError(key)
        return self.read([key])[key]

    def read(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The arrays ``keys`` (those the file has), read together within the memory bound."""
        return load_npz(self.path, allow=[k for k in keys if k in self.headers])

    def __contains__(self, key: object) -> bool:
        return key in self.headers

    def __iter__(self) -> Iterator[str]:
        return iter(self.headers)

    def __len__(self) -> int:
        return len(self.headers)


def _check_stack(path: Path, key: str, header: MemberHeader) -> None:
    """Refuse an array that is not a stack of images the readers accept, from its header."""
    shape, dtype = header.shape, header.dtype
    if len(shape) not in (3, 4):
        raise ValueError(
            f"{path}: array {key!r} has shape {shape}; expected an image stack "
            "(n, H, W) or (n, H, W, C)."
        )
    if shape[0] == 0:
        raise ValueError(f"{path}: array {key!r} holds no images.")
    if len(shape) == 3 and shape[2] in (1, 3, 4) and min(shape[:2]) > 4:
        raise ValueError(  # it would be read as shape[0] images of one row of pixels each
            f"{path}: array {key!r} of shape {shape} looks like one (H, W, C) image, not a "
            "stack (n, H, W) of grayscale images; store a stack as (n, H, W, C), e.g. "
            "image[None] for one image."
        )
    if len(shape) == 4 and shape[3] not in (1, 3, 4):
        raise ValueError(
            f"{path}: array {key!r} of shape {shape} has {shape[3]} channels; a stack of "
            "images is (n, H, W) or (n, H, W, C) with C = 1, 3 or 4."
        )
    if 0 in shape[1:3]:
        raise ValueError(f"{path}: array {key!r} holds images of no pixels (shape {shape}).")
    native = dtype.newbyteorder("=")  # a big-endian stack is read in the machine's order
    if not (native in (np.uint8, np.uint16, np.bool_) or dtype.kind == "f"):
        raise ValueError(
            f"{path}: array {key!r} is {dtype}; images are uint8, uint16, bool or float in [0, 1]."
        )


def _check_pixels(path: Path, key: str, arr: np.ndarray) -> np.ndarray:
    """``arr`` in the machine's byte order (swapped in place, no copy), once read; float
    pixels outside [0, 1] (or NaN) refused."""
    if not arr.dtype.isnative:
        arr = arr.byteswap(inplace=True).view(arr.dtype.newbyteorder("="))
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and 0 <= arr.min() <= arr.max() <= 1):
        raise ValueError(
            f"{path}: array {key!r} holds float pixels outside [0, 1] (or NaN); scale the images "
            "to [0, 1] or store them as uint8 / uint16."
        )
    return arr


def _from_npz(path: Path, *, name: str, source: str) -> Dataset:
    with open_npz(path) as data:
        keys = list(data)
        missing = [k for k in SPLIT_KEYS if k not in keys]
        if missing:
            raise ValueError(
                f"{path}: missing array(s) {', '.join(missing)}; a dataset .npz needs "
                f"{', '.join(SPLIT_KEYS)}; found {', '.join(keys) or 'no arrays'}."
            )
        for key in SPLIT_KEYS:  # shapes and dtypes from the headers, before any pixel is read
            _check_stack(path, key, data.headers[key])
        splits = data.read(SPLIT_KEYS)  # the three splits count against the bound together
    splits = {key: _check_pixels(path, key, arr) for key, arr in splits.items()}
    return Dataset(name, *(list(splits[k]) for k in SPLIT_KEYS), source=source)


def _from_folders(root: Path, *, axis: str, skip_unreadable: bool) -> Dataset:
    splits, groups, skipped, repeated = [], {}, [], []
    for sub, split in zip(
        ("train/normal", "test/normal", "test/abnormal"), SPLIT_KEYS, strict=True
    ):
        folder = root / sub
        if not folder.is_dir():
            raise ValueError(
                f"{root}: missing sub-folder {sub}; an image-folder dataset needs train/normal, "
                "test/normal and test/abnormal."
            )
        inputs = read_inputs(folder, axis=axis, skip_unreadable=skip_unreadable)
        skipped.extend(inputs.skipped)
        repeated.extend(inputs.repeated)
        if not inputs.items and inputs.skipped:
            raise ValueError(
                f"{folder}: every volume was unreadable and skipped ({len(inputs.skipped)}: "
                f"{inputs.skipped[0]}); every class folder needs at least one readable image."
            )
        if not inputs.items:
            raise ValueError(
                f"{folder}: no images (looked for {', '.join(IMAGE_SUFFIXES)}, "
                f"{', '.join(VOLUME_SUFFIXES)} and DICOM-series folders); every class folder "
                "needs at least one."
            )
        splits.append(inputs.items)
        if inputs.groups.has_volumes:
            groups[split] = inputs.groups
    return Dataset(
        root.name,
        *splits,
        source=str(root),
        groups=groups,
        skipped=tuple(skipped),
        repeated=tuple(repeated),
    )


def _from_medianomaly(root: Path) -> Dataset:
    meta_path = root / "data.json"
    try:
        meta = read_json(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_path}: not valid JSON ({err}).") from err
    images = root / "images"
    if not images.is_dir():
        raise ValueError(f"{root}: a MedIAnomaly folder needs images/ next to data.json.")
    splits, repeated = [], []
    for split, label, what in (
        ("train", "0", "normal"),
        ("test", "0", "normal"),
        ("test", "1", "abnormal"),
    ):
        try:
            names = meta[split][label]
        except (KeyError, TypeError) as err:
            found = ", ".join(meta) if isinstance(meta, dict) else type(meta).__name__
            raise ValueError(
                f"{meta_path}: no {split}[{label!r}] list (the {split} {what} file names); "
                f"top-level keys: {found}."
            ) from err
        if not isinstance(names, list) or not names:
            raise ValueError(
                f"{meta_path}: {split}[{label!r}] is empty or not a list of file names."
            )
        paths = [images / str(n) for n in names]
        absent = [p for p in paths if not p.is_file()]
        if absent:
            raise FileNotFoundError(
                f"{meta_path}: {len(absent)} file(s) listed in {split}[{label!r}] are not under "
                f"{images}, e.g. {absent[0]}."
            )
        once: dict[str, None] = {}
        for path in map(str, paths):  # a name listed twice: read once
            if path in once:
                repeated.append(path)
            once[path] = None
        splits.append(list(once))
    return Dataset(root.name, *splits, source=str(root), repeated=tuple(repeated))


def list_images(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Image file paths from a folder (searched recursively), a file, or a list of them.

    Args:
        sources: a folder (every file with an image suffix — .png, .jpg, .jpeg, .tif, .tiff,
            .bmp, .dcm, any case — and every DICOM file under another name (``IM0001``),
            known by its magic, below it, sorted; hidden ones, named ``.*``, left out;
            symbolic links to folders followed, each real folder once), a
            single image file, or a sequence of
            files and folders (concatenated in the given order).

    Returns:
        The file paths as strings.

    Raises:
        FileNotFoundError: a source does not exist.
        ValueError: a source is an ``.npz`` file (use :func:`load_images_npz`).
    """
    return list_inputs(sources, volumes=False)


def load_images_npz(path: str | os.PathLike, key: str | None = None) -> list[np.ndarray]:
    """The images of one array in an ``.npz`` file, as a list of (H, W) or (H, W, C) arrays.

    Args:
        path: the ``.npz`` file.
        key: the array to read; ``None`` takes the only array, or ``train_normal`` if present.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the key is missing or ambiguous, or the array is not an image stack.
    """
    path = Path(path)
    with open_npz(path) as data:
        keys = list(data)
        if key is None:
            if len(keys) == 1:
                key = keys[0]
            elif "train_normal" in keys:
                key = "train_normal"
            else:
                raise ValueError(
                    f"{path}: holds several arrays ({', '.join(keys)}); say which one to read."
                )
        if key not in keys:
            raise ValueError(f"{path}: no array {key!r}; found {', '.join(keys) or 'none'}.")
        _check_stack(path, key, data.headers[key])
        arr = data[key]
    return list(_check_pixels(path, key, arr))
