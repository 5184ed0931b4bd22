"""A content-addressed on-disk cache of image embeddings, so repeated experiments skip the backbone.

Each embedding (any shape: a (d,) vector, or (grid, grid, c) patch features) is stored as one
``.npy`` file at ``cache_dir/<config-hash>/<image-hash>.npy``:

- the *config hash* is the first 32 hex digits of the SHA-256 of the embedder's
  :meth:`~msde_jax.embedder.Embedder.config` (backbone, weights, image size, resize mode,
  features and their layers, dtype) and the readers' version
  (:data:`~msde_jax.io.images.READER_VERSION`, ``"reader"``) as canonical JSON, so that a
  package whose readers read a file otherwise does not reuse the embeddings of the earlier
  reading; each config folder also holds a human-readable ``config.json``;
- the *image hash* is the SHA-256 of the config JSON and the image content: a file's bytes for
  a path (so renaming or moving a file keeps its cache entry, editing it does not), or the dtype,
  shape and bytes of an array.

Writes are atomic (a temporary file renamed into place), so concurrent runs sharing a cache
never see a half-written entry. A cache that cannot be written (read-only, another user's, a
full disk) is read as far as it goes and warned about once; the embeddings are still returned.
"""

import hashlib
import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from msde_jax._arrays_file import ArrayFileError, load_npy
from msde_jax._files import atomic_write
from msde_jax.io.errors import ImageReadError
from msde_jax.io.images import READER_VERSION, refuse_one_image
from msde_jax.io.inputs import expand_volumes

__all__ = [
    "SupportsEmbed",
    "config_key",
    "embed_cached",
    "image_hash",
]

_CHUNK = 1 << 20


class SupportsEmbed(Protocol):
    """What :func:`embed_cached` needs from an embedder."""

    def config(self) -> dict[str, Any]: ...

    def embed(self, images: Sequence[Any]) -> np.ndarray: ...


def config_key(config: dict[str, Any]) -> str:
    """The canonical JSON of an embedder config (sorted keys, compact separators), without
    the weights' path where their fingerprint (``weights_sha256``) is there: the same weights
    by another path (relative, absolute, moved) are the same embeddings."""
    if config.get("weights_sha256") is not None:
        config = {k: v for k, v in config.items() if k != "weights"}
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def image_hash(item: Any, config_json: str = "") -> str:
    """SHA-256 hex digest of ``config_json`` and an image's content.

    Args:
        item: a file path (its bytes are hashed), a ``PIL.Image.Image`` (mode, size and pixel
            bytes; for palette images the palette and transparency too) or anything
            :func:`numpy.asarray` turns into an array (dtype, shape, bytes).
        config_json: the embedder config as canonical JSON (see :func:`config_key`).
    """
    h = hashlib.sha256()
    h.update(config_json.encode())
    h.update(b"\0")
    if isinstance(item, str | os.PathLike):
        h.update(b"file\0")
        try:
            with open(item, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except FileNotFoundError as err:  # as reading the image would say it, cache or none
            raise ImageReadError(f"{item}: no such file.") from err
        except OSError as err:  # a folder, a file that cannot be read
            raise ImageReadError(f"{item}: not a readable image ({err}).") from err
        return h.hexdigest()
    try:
        from PIL import Image

        if isinstance(item, Image.Image):
            orientation = item.getexif().get(0x0112, 1)  # EXIF rotation: read as shown
            h.update(f"pil\0{item.mode}\0{item.size}\0{orientation}\0".encode())
            h.update(item.tobytes())
            palette = item.getpalette()  # palette modes: the bytes are indices into it
            if palette is not None:
                h.update(b"\0palette\0" + bytes(palette))
                h.update(repr(item.info.get("transparency")).encode())
            return h.hexdigest()
    except ImportError:  # pragma: no cover - pillow is a dependency
        pass
    arr = np.ascontiguousarray(np.asarray(item))
    h.update(f"array\0{arr.dtype.str}\0{arr.shape}\0".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def embed_cached(
    embedder: SupportsEmbed,
    items: Iterable[Any] | np.ndarray,
    cache_dir: str | os.PathLike,
    *,
    axis: str = "axial",
    progress: bool = True,
) -> np.ndarray:
    """Embed images, reusing embeddings cached on disk and caching the new ones.

    Only images without a cache entry are embedded, in one ``embedder.embed`` call and in their
    input order. Each image's embedding may have any shape ((d,), or (grid, grid, c) patch
    features), the same for every image of a call.

    A cache entry is trusted only as this cache writes it: a float32 ``.npy`` of finite values
    of the embedder's ``output_shape`` (when it has one). A damaged, truncated or edited entry
    (another shape, dtype or kind of file, NaN or infinite values) is embedded again and
    rewritten, as are cached entries whose shapes disagree with the fresh ones.

    Args:
        embedder: an :class:`~msde_jax.embedder.Embedder` (or any object with ``config()`` and
            ``embed(items)``).
        items: file paths, PIL images or arrays; or one stacked (n, H, W[, C]) array. A path
            to a volume (a NIfTI file, a DICOM-series folder) stands for its kept slices, as in
            :meth:`~msde_jax.embedder.Embedder.embed`; each slice is cached by its content.
        cache_dir: the cache root (created if needed; one that cannot be written is read as
            far as it goes, with a ``RuntimeWarning``).
        axis: the slicing plane of NIfTI volumes (:func:`~msde_jax.io.inputs.expand_volumes`).
        progress: print a one-line summary (cached / to embed) on stderr.

    Returns:
        (n, ...) float32 embeddings in the input order, e.g. (n, d) or (n, grid, grid, c); n
        counts a volume's kept slices.

    Raises:
        ValueError: the embedder returned no row per image, or embeddings of different shapes.
    """
    refuse_one_image(items)
    items = list(items)
    if any(isinstance(item, str | os.PathLike) for item in items):
        items = expand_volumes(items, axis=axis).items
    config = {**embedder.config(), "reader": READER_VERSION}
    cfg_json = config_key(config)
    folder = Path(cache_dir) / hashlib.sha256(cfg_json.encode()).hexdigest()[:32]
    write = _Writer(folder)
    if not (folder / "config.json").exists():
        text = json.dumps(config, indent=2, sort_keys=True, default=str) + "\n"
        write(folder / "config.json", text.encode(), stacklevel=3)

    if not items:
        shape = getattr(embedder, "output_shape", None) or (int(getattr(embedder, "dim", 0)),)
        return np.zeros((0, *shape), np.float32)
    expected = getattr(embedder, "output_shape", None)
    expected = None if expected is None else tuple(int(s) for s in expected)
    # A file changed between its hashing and its reading would be cached under the old
    # content's key: its state before hashing is compared after embedding.
    before = {
        i: _state(item) for i, item in enumerate(items) if isinstance(item, str | os.PathLike)
    }
    paths = [folder / f"{image_hash(item, cfg_json)}.npy" for item in items]
    found = {
        i: entry for i, path in enumerate(paths) if (entry := _entry(path, expected)) is not None
    }
    missing = [i for i in range(len(items)) if i not in found]
    if progress:
        print(
            f"embedding cache {folder}: {len(found)}/{len(items)} cached, {len(missing)} to embed",
            file=sys.stderr,
        )
    _embed_into(embedder, items, missing, paths, found, write, before)
    shapes = {found[i].shape for i in range(len(items))}
    if len(shapes) > 1:
        # Entries that disagree (an embedder without output_shape to check them against):
        # the ones unlike the fresh embeddings, or all cached ones, are embedded again.
        fresh = {found[i].shape for i in missing}
        stale = [
            i for i in found if i not in missing and (not fresh or found[i].shape not in fresh)
        ]
        if progress:
            print(
                f"embedding cache {folder}: {len(stale)} entries of another shape, embedded again",
                file=sys.stderr,
            )
        _embed_into(embedder, items, stale, paths, found, write, before)
        shapes = {found[i].shape for i in range(len(items))}
        if len(shapes) > 1:
            raise ValueError(
                f"the embedder returned embeddings of different shapes {sorted(shapes)}."
            )
    return np.stack([found[i] for i in range(len(items))]).astype(np.float32, copy=False)


def _entry(path: Path, expected: tuple[int, ...] | None) -> np.ndarray | None:
    """A cache entry if it is one this cache wrote: a float32 .npy of finite values, of the
    embedder's ``output_shape`` when it has one; else ``None`` (embedded again).

    Read by :func:`msde_jax._arrays_file.load_npy`: a header that claims more than the file
    holds, or more than the entry this embedder writes (``expected``) or the memory bound, is
    refused before anything is allocated, like any other damaged entry.
    """
    if not path.exists():
        return None
    max_bytes = None if expected is None else math.prod(expected) * 4  # float32
    try:
        entry = load_npy(path, max_bytes=max_bytes)
    except (ArrayFileError, OSError):  # damaged, crafted, another kind of file, too large
        return None
    if entry.dtype != np.float32:
        return None
    if expected is not None and entry.shape != expected:
        return None
    return entry if np.isfinite(entry).all() else None


def _embed_into(
    embedder: SupportsEmbed,
    items: list[Any],
    indices: list[int],
    paths: list[Path],
    found: dict[int, np.ndarray],
    write: "_Writer",
    before: dict[int, tuple[int, ...] | None],
) -> None:
    """Embed ``items[indices]`` in one call, store them in ``found`` and cache them, but for
    files whose state (:func:`_state`) is no longer ``before``'s: changed since they were
    hashed, their embeddings may be of other bytes than their keys'."""
    if not indices:
        return
    new = np.asarray(embedder.embed([items[i] for i in indices]), np.float32)
    if new.ndim < 1 or len(new) != len(indices):
        raise ValueError(
            f"embedder returned shape {new.shape} for {len(indices)} images; expected one "
            "embedding per image, (n, ...)."
        )
    written: set[Path] = set()
    for row, i in zip(new, indices, strict=True):
        found[i] = row
        if i in before and _state(items[i]) != before[i]:
            continue
        if paths[i] not in written:  # the same image twice in one call
            row32 = np.ascontiguousarray(row, np.float32)
            write(paths[i], lambda f, r=row32: np.save(f, r, allow_pickle=False))
            written.add(paths[i])


def _state(path: Any) -> tuple[int, ...] | None:
    """A file's inode, size and modification time (``None`` if it cannot be read)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class _Writer:
    """Writes the files of one cache folder (made at the first write) until one write fails:
    that is warned about once, and nothing more is written. No fsync per file: an empty or
    short entry is detected on load and embedded again; one whose data a power loss left
    zero-filled at its full size is not (no checksum is kept): after a power loss, delete the
    cache folder."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.failed, self.made = folder, False, False

    def __call__(self, path: Path, data: Any, *, stacklevel: int = 4) -> None:
        """Write ``data`` to ``path``; ``stacklevel`` is the warning's, from here to the caller
        of :func:`embed_cached`."""
        if self.failed:
            return
        try:
            if not self.made:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.made = True
            atomic_write(path, data, fsync=False)
        except OSError as err:
            self.failed = True
            warnings.warn(
                f"the embedding cache {self.folder} cannot be written ({err}); the embeddings "
                "are returned but not cached (pass another cache folder to keep them).",
                RuntimeWarning,
                stacklevel=stacklevel,
            )
