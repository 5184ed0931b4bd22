"""Atomic file writes, shared by everything that saves a file (models, caches, weights, reports),
and the checksum of named arrays that saved models and weight files carry."""

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["arrays_checksum", "atomic_write", "default_cache_dir", "read_json", "shown"]


def shown(text: Any) -> str:
    """``str(text)`` with the bytes of a file name that are not UTF-8 (which Python decodes to
    lone surrogates, e.g. a Latin-1 ``caf\xe9.png``) as U+FFFD, so it can be drawn, printed
    or written as UTF-8 text."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def default_cache_dir() -> Path:
    """``$MSDE_JAX_CACHE``, or ``~/.cache/msde_jax`` when it is unset: where downloaded
    weights and compiled programs are kept."""
    env = os.environ.get("MSDE_JAX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "msde_jax"


def atomic_write(
    path: str | os.PathLike,
    data: bytes | Callable[[BinaryIO], object],
    *,
    suffix: str = ".tmp",
    fsync: bool = True,
) -> Path:
    """Write a file so that readers see either the old file or the whole new one, never half.

    The content goes to a temporary file in the same folder, is flushed to disk (``fsync``) and
    renamed over ``path`` (``os.replace``, atomic on POSIX and Windows); on POSIX the folder is
    then flushed too, so that the rename itself survives a power loss. On any error, Ctrl-C
    included, the temporary file is removed and ``path`` is left as it was.

    Without ``fsync`` the rename is still atomic for other processes, but a power loss may
    leave an empty, short or zero-filled file: fit for files that are recomputed when found
    damaged (the embedding cache) or written again by the next run (reports, score tables),
    not for models, checkpoints or weights.

    Args:
        path: the file to write; its folder must exist (else ``FileNotFoundError`` naming the
            folder; ``IsADirectoryError`` when ``path`` is a folder).
        data: the bytes to write, or a function that writes into the open binary file
            (e.g. ``lambda f: np.save(f, array)``).
        suffix: suffix of the temporary file (some writers, like ``np.save``, look at it).
        fsync: flush the file to disk before the rename, and its folder after it (default).

    A new file gets the permissions the umask gives (as ``open`` would), a file written over
    keeps its own, and a symbolic link is written through (its target is replaced, the link
    stays).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    given = Path(path)
    # A symbolic link is written through: its target gets the new content, the link stays.
    path = Path(os.path.realpath(given)) if given.is_symlink() else given
    # Said before the temporary file is made, so that the error names the path, not it.
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such folder to write into", str(path.parent))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder is there, not a file", str(path))
    fd, tmp = _temporary(path, suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes | bytearray | memoryview):
                f.write(data)
            else:
                data(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if path.exists():  # the file keeps its permissions, where the file system has them
            with contextlib.suppress(OSError):
                os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_folder(path.parent)
    return given


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the system allows it: POSIX
    opens folders read-only for this; Windows cannot open them, and some file systems refuse
    to flush one (the file itself is on disk already either way)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _temporary(path: Path, suffix: str) -> tuple[int, str]:
    """A new file beside ``path``, open for writing, named ``.{name}.{random}{suffix}`` (the
    name cut short so that any valid ``path`` gives a valid one), with the permissions a new
    file gets from the umask (``tempfile.mkstemp`` would make it private to its owner, and a
    model saved into a shared folder unreadable to the others)."""
    short = os.fsencode(path.name)[:64].decode(errors="ignore")  # 64 bytes at most
    for _ in range(100):
        tmp = path.parent / f".{short}.{secrets.token_hex(6)}{suffix}"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name beside", str(path))


def arrays_checksum(arrays: Mapping[str, Any]) -> str:
    """SHA-256 of named arrays (names, dtypes, shapes and bytes, in name order; a 0-d array
    hashes as its (1,) copy, so the saved shapes are checked apart from the checksum)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def read_json(text: str) -> Any:
    """``json.loads(text)``, every fault a ``ValueError``: a file's JSON nested deeper than
    Python's recursion limit (damaged or crafted) raises ``RecursionError`` there."""
    try:
        return json.loads(text)
    except RecursionError as err:
        raise ValueError("JSON nested too deeply to read") from err
