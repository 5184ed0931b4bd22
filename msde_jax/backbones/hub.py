"""Download weights once and keep them: torch hub and Hugging Face hub URLs, a local cache.

:func:`download` caches files in ``$MSDE_JAX_CACHE`` (default ``~/.cache/msde_jax``) and checks
the sha256 prefix that torchvision file names carry, like ``torch.hub.load_state_dict_from_url``;
:func:`hf_hub_download` lays Hugging Face files out under ``<cache>/huggingface``. Any
``file://`` URL works too (local mirrors, tests).
"""

import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from msde_jax._files import atomic_write, default_cache_dir
from msde_jax.backbones.weight_files import load_state_dict

__all__ = [
    "DownloadError",
    "default_cache_dir",
    "download",
    "hf_hub_download",
    "hf_hub_url",
    "load_state_dict_from_url",
    "torch_hub_url",
]

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.")


class DownloadError(OSError):
    """A file could not be downloaded, or its content failed the hash check."""


def torch_hub_url(filename: str) -> str:
    """URL of a torchvision weights file, e.g. ``torch_hub_url("resnet18-f37072fd.pth")``."""
    return "https://download.pytorch.org/models/" + filename


def hf_hub_url(repo_id: str, filename: str, revision: str = "main") -> str:
    """URL of a file in a Hugging Face hub repository.

    The endpoint is ``$MSDE_JAX_HF_ENDPOINT`` when set (for mirrors), else
    ``https://huggingface.co``.
    """
    endpoint = os.environ.get("MSDE_JAX_HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"{endpoint}/{repo_id}/resolve/{revision}/{filename}"


def _chunks(response: Any, size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := response.read(size):
        yield chunk


def download(
    url: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    filename: str | None = None,
    sha256_prefix: str | None = None,
    check_hash: bool = True,
    progress: bool = True,
) -> Path:
    """Download ``url`` into a cache directory once; later calls return the cached file.

    The file is streamed to a temporary name in the cache directory and renamed into place
    only after it arrived whole and passed the hash check, so the cache never holds partial
    files.

    Args:
        url: ``https://``, ``http://`` or ``file://`` URL.
        cache_dir: Where files are kept; default :func:`default_cache_dir`.
        filename: Name in the cache; default the last component of the URL path, after the
            first 8 hex digits of the URL's sha256 (``1a2b3c4d_model.bin``: two URLs of the
            same file name are two files) unless that name carries its own hash
            (``resnet18-f37072fd.pth``).
        sha256_prefix: Expected leading hex digits of the file's sha256.
        check_hash: When ``sha256_prefix`` is not given, check the hash that torchvision file
            names embed (``resnet18-f37072fd.pth`` → ``f37072fd``), like
            ``torch.hub.load_state_dict_from_url(check_hash=True)``.
        progress: Show a progress line on stderr.

    Returns:
        Path of the cached file.

    Raises:
        DownloadError: The URL could not be fetched (e.g. no network), or the hash differs.
        ValueError: no file name can be derived from the URL and ``filename`` is not given.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if filename is None:
        filename = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
        if filename not in ("", ".", "..") and not _HASH_IN_NAME.search(filename):
            filename = f"{hashlib.sha256(url.encode()).hexdigest()[:8]}_{filename}"
    if not filename or "/" in filename or filename in (".", ".."):
        raise ValueError(f"cannot derive a cache file name from {url!r}; pass filename=")
    target = cache / filename
    if target.is_file():
        return target
    from_name = sha256_prefix is None and check_hash
    if from_name:
        match = _HASH_IN_NAME.search(filename)
        sha256_prefix = match.group(1) if match else None

    request = urllib.request.Request(url, headers={"User-Agent": "msde_jax"})

    def fetch(f: BinaryIO) -> None:
        # Raising here (network error, wrong hash) makes atomic_write drop the partial file.
        digest = hashlib.sha256()
        shown = False
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0)
                done = 0
                for chunk in _chunks(response):
                    f.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        _show_progress(filename, done, total)
                        shown = True
        except urllib.error.HTTPError as err:
            raise DownloadError(
                f"could not download {url} (HTTP {err.code}: {err.reason}); download it "
                "elsewhere and pass the local path"
            ) from err
        except (
            urllib.error.URLError,
            TimeoutError,
            ConnectionError,
            http.client.HTTPException,
        ) as err:
            reason = getattr(err, "reason", err)
            raise DownloadError(
                f"could not download {url} (no network? {reason}); download it elsewhere and "
                "pass the local path"
            ) from err
        finally:
            if shown:
                sys.stderr.write("\n")
        if sha256_prefix is not None and not digest.hexdigest().startswith(sha256_prefix.lower()):
            raise DownloadError(
                f"{url}: sha256 {digest.hexdigest()[: len(sha256_prefix)]}... does not match the "
                f"expected prefix {sha256_prefix}; the download is corrupt or the file changed"
                + (
                    f" (the prefix is the hex digits in the file name {filename!r}, as "
                    "torchvision names carry their hash; if this name does not, pass "
                    "check_hash=False)"
                    if from_name
                    else ""
                )
            )

    cache.mkdir(parents=True, exist_ok=True)
    return atomic_write(target, fetch, suffix=".part")


def _show_progress(name: str, done: int, total: int) -> None:
    mb = 1 << 20
    if total:
        line = f"\rdownloading {name}: {done / mb:.1f}/{total / mb:.1f} MiB ({done / total:.0%})"
    else:
        line = f"\rdownloading {name}: {done / mb:.1f} MiB"
    sys.stderr.write(line)
    sys.stderr.flush()


def hf_hub_download(
    repo_id: str,
    filename: str,
    *,
    revision: str = "main",
    cache_dir: str | os.PathLike | None = None,
    cache_name: str | None = None,
    progress: bool = True,
) -> Path:
    """Download a file from the Hugging Face hub into ``<cache>/huggingface/<repo>/<revision>``.

    Args:
        repo_id: e.g. ``"timm/resnet18.a1_in1k"``.
        filename: Path of the file in the repository, e.g. ``"model.safetensors"``.
        revision: Branch, tag or commit.
        cache_dir: Cache root; default :func:`default_cache_dir`.
        cache_name: Path of the cached file under ``cache_dir`` instead of the default
            ``huggingface/<org>--<name>/<revision>/<filename>``.
        progress: Show a progress line on stderr.

    Returns:
        Path of the cached file.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if cache_name is None:
        sub = Path("huggingface", repo_id.replace("/", "--"), revision.replace("/", "--"), filename)
    else:
        sub = Path(cache_name)
    return download(
        hf_hub_url(repo_id, filename, revision),
        cache_dir=root.joinpath(*sub.parts[:-1]),
        filename=sub.name,
        check_hash=False,  # hub names carry no hash; a hex run in one is not a checksum
        progress=progress,
    )


def load_state_dict_from_url(
    url: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    check_hash: bool = True,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """:func:`download` then :func:`load_state_dict`, like ``torch.hub.load_state_dict_from_url``.

    Args:
        url: e.g. ``torch_hub_url("resnet18-f37072fd.pth")``.
        cache_dir: Cache directory; default :func:`default_cache_dir`.
        check_hash: Check the sha256 prefix embedded in the file name (default ``True``,
            where torch's defaults to ``False``; a name whose hex digits are not a hash, such
            as a date, needs ``False``).
        progress: Show a progress line on stderr.

    Returns:
        ``{name: array}``.
    """
    path = download(url, cache_dir=cache_dir, check_hash=check_hash, progress=progress)
    return load_state_dict(path)
