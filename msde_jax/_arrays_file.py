"""Reading ``.npz`` / ``.npy`` arrays without trusting the sizes the file claims.

``np.load`` allocates what an array's header claims before it reads a byte of data, so a
damaged or crafted file whose header says ``(10**6, 10**6)`` float64 ends in an attempt to
allocate terabytes, and a deflated member can inflate to ~1000 times its size. This reader
checks every claim against what the file holds before anything is allocated:

- each member's ``.npy`` header (shape × itemsize + header bytes) must equal the member's size
  in the zip directory exactly (a lying header);
- the zip directory itself must be possible: a stored member's two sizes agree, a deflated one
  declares at most :data:`DEFLATE_MAX_RATIO` × its compressed size, no member reaches past the
  end of the archive, and the data read never exceeds what was declared (zipfile's own cap,
  then its CRC); the directory, which zipfile reads whole, is at most 16 MiB and holds as many
  entries as its end record counts (zipfile ignores the count: a damaged length hides members);
- arrays of Python objects (pickle) are refused;
- the arrays read at once stay within :func:`max_array_bytes`, by default half the memory
  available (:func:`available_memory`).

Every failure is one :class:`ArrayFileError` (a ``ValueError``) naming the file, and the member
and the claimed size where they are known, and saying what to do. Only NumPy and the standard
library are used (a private helper below every layer, importable without JAX).
"""

import ast
import contextlib
import io
import math
import operator
import os
import re
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Collection, Iterator
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from msde_jax._host_memory import available_memory, human_bytes

__all__ = [
    "DEFLATE_MAX_RATIO",
    "MAX_ARRAY_BYTES_ENV",
    "ArrayFileError",
    "MemberHeader",
    "available_memory",
    "human_bytes",
    "load_npy",
    "load_npz",
    "max_array_bytes",
    "member_headers",
]

#: Environment variable that overrides the default bound on the bytes read at once
#: (an integer, optionally with a K, M, G or T suffix, binary: ``"2G"`` is 2 GiB).
MAX_ARRAY_BYTES_ENV = "MSDE_JAX_MAX_ARRAY_BYTES"

#: Deflate's limit: a 258-byte match costs at least 2 bits, so no deflate stream inflates to
#: more than 1032 times its size (zeros reach ~1029:1). A directory that declares more lies.
DEFLATE_MAX_RATIO = 1032

# Fraction of the available memory one read may take by default: the caller usually makes at
# least one more copy of what it read (a cast, a stack, jnp.asarray), which must still fit.
_DEFAULT_FRACTION = 0.5
# NumPy's own limit on a header without allow_pickle; checked before the header is read.
_MAX_HEADER_BYTES = 10_000
# zipfile reads the whole central directory and makes a ZipInfo (~10x its bytes) per entry; an
# .npz entry takes ~100 bytes, so this is ~160,000 arrays.
_MAX_DIRECTORY_BYTES = 16 << 20
# Data is read in blocks of this size, so a read never holds a second copy of a large array.
_CHUNK = 16 << 20
_LENGTH_FORMAT = {(1, 0): "<H", (2, 0): "<I", (3, 0): "<I"}
_RESTORE = "the file is damaged or was crafted; restore it from a copy or re-create it"
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    struct.error,
    ValueError,
    NotImplementedError,  # what zipfile says of a version or method it lacks
)


class ArrayFileError(ValueError):
    """An array file that cannot be read safely: damaged, crafted, or too large for memory.

    Attributes:
        path: the file.
        member: the array's name in an ``.npz`` (``None`` for the file as a whole).
        claimed_bytes: the bytes the file claims the array (or arrays) take, where known.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        reason: str,
        member: str | None = None,
        claimed_bytes: int | None = None,
    ):
        self.path, self.reason, self.member = path, reason, member
        self.claimed_bytes = claimed_bytes
        where = f"{path}: member {member!r}" if member is not None else f"{path}:"
        super().__init__(f"{where} {reason}")

    def __reduce__(self):  # positional arguments, so that the error pickles (process pools)
        return type(self), (self.path, self.reason, self.member, self.claimed_bytes)


class MemberHeader(NamedTuple):
    """What one array's ``.npy`` header and its zip directory entry claim, before any data.

    Attributes:
        shape: the array's shape.
        dtype: its dtype.
        fortran_order: whether the data is stored column-major.
        offset: bytes of the ``.npy`` header (magic, length, dictionary) before the data.
        file_size: the member's bytes, uncompressed (the file's size for an ``.npy``).
        compress_size: the member's bytes as stored (``file_size`` unless deflated).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int
    file_size: int
    compress_size: int

    @property
    def nbytes(self) -> int:
        """Bytes of the array's data: ``prod(shape) × itemsize``."""
        return math.prod(self.shape) * self.dtype.itemsize


def _describe(header: MemberHeader) -> str:
    return f"claims shape {header.shape} of {header.dtype} ({human_bytes(header.nbytes)})"


# --------------------------------------------------------------------------- memory bound


def max_array_bytes(max_bytes: int | None = None) -> int:
    """The most bytes of arrays one read may allocate.

    ``max_bytes`` when given, else the environment variable ``MSDE_JAX_MAX_ARRAY_BYTES``
    (bytes, or with a K/M/G/T suffix), else half of :func:`available_memory`.

    Raises:
        ValueError: ``max_bytes`` or the environment variable is not a size in bytes.
    """
    return _bound(max_bytes)[0]


def _bound(max_bytes: int | None) -> tuple[int, str]:
    """(the bound, where it comes from, for messages)."""
    if max_bytes is not None:
        try:
            bound = operator.index(max_bytes)
        except TypeError:
            bound = -1
        if isinstance(max_bytes, bool) or bound < 0:
            raise ValueError(f"max_bytes must be a number of bytes >= 0, got {max_bytes!r}.")
        return bound, "max_bytes"
    value = os.environ.get(MAX_ARRAY_BYTES_ENV, "").strip()
    if value:
        match = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:i?B)?", value, flags=re.IGNORECASE)
        if match is None:
            raise ValueError(
                f"{MAX_ARRAY_BYTES_ENV}={value!r} is not a size; give bytes, e.g. 2000000000 or 2G."
            )
        shift = 10 * " KMGT".index(match[2].upper() or " ")
        return int(match[1]) << shift, MAX_ARRAY_BYTES_ENV
    available = available_memory()
    return int(available * _DEFAULT_FRACTION), f"half of the {human_bytes(available)} available"


# --------------------------------------------------------------------------- headers


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError(f"the data ends after {len(data)} of {n} bytes")
    return data


def _read_header(stream: BinaryIO, path: Any, member: str | None) -> tuple[Any, ...]:
    """(shape, dtype, fortran_order, header bytes) of the ``.npy`` at the stream's start.

    The header's length is checked before the header is read (NumPy reads it first).
    """

    def fail(reason: str) -> ArrayFileError:
        return ArrayFileError(path, f"{reason}; {_RESTORE}.", member)

    try:
        magic = stream.read(np.lib.format.MAGIC_LEN)
    except _ZIP_ERRORS as err:
        raise fail(f"cannot be read ({_reason(err)})") from err
    if magic[:-2] != np.lib.format.MAGIC_PREFIX or len(magic) != np.lib.format.MAGIC_LEN:
        raise fail("is not a NumPy array (.npy): it does not start with the .npy magic string")
    version = (magic[-2], magic[-1])
    if version not in _LENGTH_FORMAT:
        raise fail(f"is a .npy of format version {version}, which NumPy does not write")
    length_format = _LENGTH_FORMAT[version]
    try:
        length_bytes = _read_exact(stream, struct.calcsize(length_format))
        (length,) = struct.unpack(length_format, length_bytes)
        if length > _MAX_HEADER_BYTES:
            raise fail(
                f"has a {human_bytes(length)} .npy header; NumPy writes under "
                f"{human_bytes(_MAX_HEADER_BYTES)}"
            )
        text = _read_exact(stream, length)
    except ArrayFileError:
        raise
    except _ZIP_ERRORS as err:
        raise fail(f"has a truncated .npy header ({_reason(err)})") from err
    try:
        if version == (3, 0):  # 2.0 with a UTF-8 header; NumPy has no public reader of it
            shape, fortran_order, dtype = _parse_utf8_header(text.decode("utf-8"))
        else:
            reader = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = reader(
                io.BytesIO(length_bytes + text), max_header_size=_MAX_HEADER_BYTES
            )
            if not all(type(s) is int for s in shape):  # NumPy's reader lets (True, 2) by
                raise ValueError(f"shape is not valid: {shape!r}")
    # TokenError: NumPy's second try, for headers Python 2 wrote, tokenizes the text.
    except (ValueError, TypeError, SyntaxError, RecursionError, tokenize.TokenError) as err:
        raise fail(f"has an unreadable .npy header ({_reason(err)})") from err
    return shape, dtype, fortran_order, len(magic) + len(length_bytes) + length


def _parse_utf8_header(text: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """What NumPy's reader of version-2.0 headers checks, for a version-3.0 (UTF-8) one."""
    d = ast.literal_eval(text)
    if not isinstance(d, dict) or d.keys() != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"the header is not a dictionary of descr, fortran_order, shape: {d!r}")
    shape, fortran_order = d["shape"], d["fortran_order"]
    if not isinstance(shape, tuple) or not all(type(s) is int for s in shape):
        raise ValueError(f"shape is not valid: {shape!r}")
    if not isinstance(fortran_order, bool):
        raise ValueError(f"fortran_order is not a valid bool: {fortran_order!r}")
    return shape, fortran_order, np.lib.format.descr_to_dtype(d["descr"])


def _check_header(path: Any, member: str | None, header: MemberHeader) -> None:
    """Refuse a header whose claims the stored bytes cannot hold (before any allocation)."""
    if header.dtype.hasobject:
        raise ArrayFileError(
            path,
            f"holds Python objects ({header.dtype}), which only pickle can read; pickle is "
            "refused (it can run any code). Store arrays of numbers or strings.",
            member,
        )
    if any(s < 0 for s in header.shape):
        raise ArrayFileError(path, f"claims the negative shape {header.shape}; {_RESTORE}.", member)
    most = np.iinfo(np.intp).max  # of 0-byte elements, or beside a 0, a shape NumPy cannot hold
    if (
        len(header.shape) > 64
        or max(header.shape, default=0) > most
        or math.prod(header.shape) > most
    ):
        raise ArrayFileError(
            path, f"claims the shape {header.shape}, which NumPy cannot hold; {_RESTORE}.", member
        )
    if header.dtype.subdtype is not None:
        raise ArrayFileError(
            path, f"claims a sub-array dtype {header.dtype} NumPy never writes; {_RESTORE}.", member
        )
    if header.dtype.itemsize == 0 and math.prod(header.shape) > 0:  # any count, in 0 bytes
        raise ArrayFileError(
            path,
            f"claims {math.prod(header.shape)} elements of the 0-byte dtype {header.dtype}, "
            f"which NumPy never writes; {_RESTORE}.",
            member,
        )
    stored = header.file_size - header.offset
    if header.nbytes != stored:
        kind = "member" if member is not None else "file"
        raise ArrayFileError(
            path,
            f"{_describe(header)}, but the {kind} holds {human_bytes(max(stored, 0))} of data "
            f"after its header; {_RESTORE}.",
            member,
            header.nbytes,
        )


def _directory_record(f: BinaryIO, size: int) -> tuple[int, int] | None:
    """(members, bytes) of the central directory as the end record gives them (zip64's when
    present), found as zipfile finds it; ``None`` without one (zipfile then refuses the file)."""
    tail_start = max(size - (22 + 65535), 0)
    f.seek(tail_start)
    tail = f.read()
    at = len(tail) - 22  # no archive comment: the record ends the file
    if at < 0 or tail[at : at + 4] != b"PK\x05\x06" or tail[-2:] != b"\0\0":
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
    members, directory = struct.unpack("<HI", tail[at + 10 : at + 16])
    locator = tail_start + at - 20
    if locator >= 0:
        f.seek(locator)
        record = f.read(20)
        if record[:4] == b"PK\x06\x07" and locator >= 56:
            # Just before the locator, where zipfile reads it (not at the offset the locator
            # gives: a decoy record there would pass the checks for another directory).
            f.seek(locator - 56)
            end64 = f.read(56)
            if end64[:4] == b"PK\x06\x06" and len(end64) == 56:
                members, directory = struct.unpack("<QQ", end64[32:48])
    return members, directory


def _open_zip(f: BinaryIO, path: Any, size: int) -> zipfile.ZipFile:
    start = f.read(len(np.lib.format.MAGIC_PREFIX))
    if start == np.lib.format.MAGIC_PREFIX:
        raise ArrayFileError(path, "is a single .npy array, not an .npz archive of named arrays.")
    try:
        record = _directory_record(f, size)
        if record is not None and record[1] > _MAX_DIRECTORY_BYTES:
            raise ArrayFileError(
                path,
                f"claims a zip directory of {human_bytes(record[1])} (over "
                f"{human_bytes(_MAX_DIRECTORY_BYTES)}, some 160,000 arrays); {_RESTORE}.",
            )
        f.seek(0)
        zf = zipfile.ZipFile(f)
    except ArrayFileError:
        raise
    except _ZIP_ERRORS as err:
        raise ArrayFileError(
            path, f"is not a readable .npz file (a zip archive: {_reason(err)}); {_RESTORE}."
        ) from err
    # zipfile reads entries until the directory's bytes run out and ignores the count, so a
    # damaged length field can hide members; the count in the end record tells.
    if record is not None and record[0] != len(zf.infolist()):
        zf.close()
        raise ArrayFileError(
            path,
            f"has a zip directory of {len(zf.infolist())} entries where its end record counts "
            f"{record[0]}; {_RESTORE}.",
        )
    return zf


@contextlib.contextmanager
def _archive(
    path: str | os.PathLike,
) -> Iterator[tuple[zipfile.ZipFile, dict[str, tuple[zipfile.ZipInfo, MemberHeader]]]]:
    """The open archive and its members' checked headers by name."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        with _open_zip(f, path, size) as zf:
            yield zf, _zip_headers(zf, path, size)


def _zip_headers(
    zf: zipfile.ZipFile, path: Any, archive_size: int
) -> dict[str, tuple[zipfile.ZipInfo, MemberHeader]]:
    found: dict[str, tuple[zipfile.ZipInfo, MemberHeader]] = {}
    for info in zf.infolist():
        name = info.filename.removesuffix(".npy")  # np.savez's member names, like np.load
        if name in found:
            raise ArrayFileError(
                path, f"appears twice in the archive (which one is meant?); {_RESTORE}.", name
            )
        _check_directory(path, name, info, archive_size)
        try:
            with zf.open(info) as stream:
                shape, dtype, fortran_order, offset = _read_header(stream, path, name)
        except ArrayFileError:
            raise
        except (*_ZIP_ERRORS, RuntimeError) as err:
            raise ArrayFileError(
                path, f"cannot be opened ({_reason(err)}); {_RESTORE}.", name
            ) from err
        header = MemberHeader(
            tuple(shape), dtype, fortran_order, offset, info.file_size, info.compress_size
        )
        _check_header(path, name, header)
        found[name] = info, header
    return found


def _check_directory(path: Any, name: str, info: zipfile.ZipInfo, archive_size: int) -> None:
    """Refuse a directory entry no member NumPy writes can have (before the member is read)."""
    if info.flag_bits & 0x1:
        raise ArrayFileError(path, "is encrypted; NumPy never writes that.", name)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ArrayFileError(
            path,
            f"uses zip compression method {info.compress_type}; NumPy writes stored or "
            "deflated members only.",
            name,
        )
    stored = info.compress_size
    if info.header_offset + stored > archive_size:
        size = human_bytes(archive_size)
        why = f"it is stored in {human_bytes(stored)}, past the end of the {size} archive"
    elif info.compress_type == zipfile.ZIP_STORED and stored != info.file_size:
        why = f"it is stored uncompressed in {human_bytes(stored)}"
    elif info.file_size > DEFLATE_MAX_RATIO * stored:
        why = (
            f"it is deflated from {human_bytes(stored)}, more than deflate can inflate "
            f"({DEFLATE_MAX_RATIO}:1)"
        )
    else:
        return
    raise ArrayFileError(
        path,
        f"is declared as {human_bytes(info.file_size)} uncompressed, but the zip directory says "
        f"{why}; {_RESTORE}.",
        name,
        info.file_size,
    )


def member_headers(path: str | os.PathLike) -> dict[str, MemberHeader]:
    """Every array's header in an ``.npz``, read without reading (or allocating) its data.

    Names are NumPy's (``np.savez``'s member name without ``.npy``). Each header is checked
    against the zip directory, and the directory against itself, as :func:`load_npz` does; the
    memory bound is not applied (nothing is read).

    Raises:
        FileNotFoundError: no such file.
        ArrayFileError: not a readable zip, a member that is not a ``.npy``, a name given twice,
            arrays of Python objects, or a header or directory that claims more than is stored.
    """
    with _archive(path) as (_, members):
        return {name: header for name, (_, header) in members.items()}


# --------------------------------------------------------------------------- reading


def _check_total(path: Any, headers: dict[str, MemberHeader], max_bytes: int | None) -> None:
    bound, source = _bound(max_bytes)
    total = sum(h.nbytes for h in headers.values())
    if total <= bound:
        return
    largest = max(headers, key=lambda k: headers[k].nbytes)
    what = _describe(headers[largest])
    if len(headers) > 1:
        what += f", {human_bytes(total)} with the other arrays read"
    raise ArrayFileError(
        path,
        f"{what}: more than the {human_bytes(bound)} one read may take ({source}). If the file is "
        "trusted and the memory is there, raise the bound (max_bytes, or the environment "
        f"variable {MAX_ARRAY_BYTES_ENV}); else it is damaged or crafted: restore it from a copy.",
        largest or None,
        total,
    )


def _read_data(stream: BinaryIO, header: MemberHeader, path: Any, member: str | None) -> np.ndarray:
    """The array after its header, read in blocks into one allocation of ``header.nbytes``."""
    count = math.prod(header.shape)
    # np.ndarray, not np.empty: the latter mishandles zero-width string dtypes (as in NumPy).
    flat = np.ndarray(count, dtype=header.dtype)
    view = memoryview(flat.view(np.uint8)) if header.nbytes else memoryview(b"")
    done = 0
    try:
        while done < header.nbytes:
            got = stream.readinto(view[done : done + _CHUNK])
            if not got:
                raise EOFError(f"the data ends after {done} of {header.nbytes} bytes")
            done += got
        # Past the declared end: zipfile stops there and checks the CRC (a bomb or a
        # damaged member stops here); a plain file has no more bytes.
        if stream.read(1):
            raise ValueError("there is data after the array")
    except _ZIP_ERRORS as err:
        raise ArrayFileError(
            path,
            f"{_describe(header)} and cannot be read ({_reason(err)}); {_RESTORE}.",
            member,
            header.nbytes,
        ) from err
    if header.fortran_order:
        return flat.reshape(header.shape[::-1]).transpose()
    return flat.reshape(header.shape)


def load_npz(
    path: str | os.PathLike,
    *,
    allow: Collection[str] | None = None,
    max_bytes: int | None = None,
) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` by name, as ``np.load`` gives them, read only once every
    claim in the file is checked (see the module's docstring).

    All headers are checked, whether allowed or not; the memory bound applies to the arrays
    read. Arrays are read through zipfile, which stops at the size the directory declares
    and checks the CRC: a member that inflates to more, or to other bytes, is refused.

    Args:
        path: the ``.npz`` file.
        allow: names of the arrays to read (others are not read; names the file lacks are
            skipped: callers check what they need); ``None`` reads every array.
        max_bytes: the most bytes of arrays to allocate; default :func:`max_array_bytes`.

    Returns:
        ``{name: array}`` in the archive's order.

    Raises:
        FileNotFoundError: no such file.
        ArrayFileError: the file is damaged, crafted, holds objects or exceeds the bound.
        ValueError: ``max_bytes`` or ``MSDE_JAX_MAX_ARRAY_BYTES`` is not a size.
    """
    allow = {allow} if isinstance(allow, str) else None if allow is None else set(allow)
    with _archive(path) as (zf, members):
        wanted = {k: v for k, v in members.items() if allow is None or k in allow}
        _check_total(path, {k: h for k, (_, h) in wanted.items()}, max_bytes)
        arrays = {}
        for name, (info, header) in wanted.items():
            try:
                stream = zf.open(info)
            except (*_ZIP_ERRORS, RuntimeError) as err:
                raise ArrayFileError(
                    path, f"cannot be opened ({_reason(err)}); {_RESTORE}.", name
                ) from err
            with stream:
                try:
                    _read_exact(stream, header.offset)
                except _ZIP_ERRORS as err:
                    raise ArrayFileError(
                        path, f"cannot be read ({_reason(err)}); {_RESTORE}.", name
                    ) from err
                arrays[name] = _read_data(stream, header, path, name)
        return arrays


def load_npy(path: str | os.PathLike, *, max_bytes: int | None = None) -> np.ndarray:
    """The array of an ``.npy`` file, as ``np.load`` gives it, read only once its header's
    claim equals the file's size and fits the bound.

    Args:
        path: the ``.npy`` file.
        max_bytes: the most bytes to allocate; default :func:`max_array_bytes`.

    Raises:
        FileNotFoundError: no such file.
        ArrayFileError: not an ``.npy`` (an ``.npz`` included), damaged, crafted, an array of
            objects, or over the bound.
        ValueError: ``max_bytes`` or ``MSDE_JAX_MAX_ARRAY_BYTES`` is not a size.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(4) == b"PK\x03\x04":
            raise ArrayFileError(path, "is an .npz archive, not a single .npy array.")
        f.seek(0)
        shape, dtype, fortran_order, offset = _read_header(f, path, None)
        header = MemberHeader(tuple(shape), dtype, fortran_order, offset, size, size)
        _check_header(path, None, header)
        _check_total(path, {"": header}, max_bytes)  # "": no member name in messages
        return _read_data(f, header, path, None)


def _reason(err: BaseException) -> str:
    return str(err) or type(err).__name__
