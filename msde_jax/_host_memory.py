"""How much memory this process can still allocate (:func:`available_memory`), and byte counts
as people read them (:func:`human_bytes`). Only the standard library (a private helper below
every layer, importable without JAX or NumPy)."""

import math
import os
from pathlib import Path

__all__ = ["available_memory", "human_bytes"]

# Where the available memory cannot be measured (no /proc, no sysconf: Windows).
_FALLBACK_MEMORY = 4 << 30


def human_bytes(n: int) -> str:
    """``n`` bytes in binary units, three significant digits (``"381 GiB"``)."""
    if n < 1024:
        return f"{n} bytes"
    exponent = min(int(math.log(n, 1024)), 6)
    if exponent < 6 and n / 1024**exponent >= 999.5:  # 1,048,575 bytes: "1 MiB", not 1.02e+03
        exponent += 1
    return f"{n / 1024**exponent:.3g} {'KMGTPE'[exponent - 1]}iB"


def available_memory() -> int:
    """Bytes this process can still allocate, as well as the system lets one tell.

    The least of: the system's available memory (``MemAvailable`` in ``/proc/meminfo`` on
    Linux; else ``SC_AVPHYS_PAGES`` × ``SC_PAGE_SIZE``; else the physical memory,
    ``SC_PHYS_PAGES``, on macOS), the memory limit less usage of the process's cgroup or any
    above it (a container's, a SLURM job's; cgroup v2 or v1, reclaimable page cache not
    counted as used), and the address-space limit
    (``RLIMIT_AS``) less the process's size. 4 GiB where none of these can be read (Windows).
    """
    known = [
        m
        for m in (_system_available(), _cgroup_available(), _address_space_left())
        if m is not None
    ]
    return max(min(known), 0) if known else _FALLBACK_MEMORY


def _system_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf(pages)
        except (AttributeError, ValueError, OSError):
            continue
    return None


def _cgroup_available(
    root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> int | None:
    """The memory the process's cgroup limits leave (cgroup v2, else v1), ``None`` if none.

    The smallest limit less usage over the process's own cgroup (named in ``membership``: a
    SLURM job's, a systemd unit's) and every cgroup above it up to ``root``, the tree as the
    process sees it (a container's own, in a container, where the process's cgroup is ``/``).
    """
    own = _own_cgroups(membership)
    for version, limit_file, usage_file, stat_file, inactive in (
        ("v2", "memory.max", "memory.current", "memory.stat", "inactive_file"),
        (
            "v1",
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            "memory.stat",
            "total_inactive_file",
        ),
    ):
        base = root if version == "v2" else root / "memory"
        parts = [part for part in own.get(version, "/").split("/") if part]
        levels = [base.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]
        found, left = False, None
        for folder in levels:
            try:
                limit_text = (folder / limit_file).read_text().strip()
                usage = int((folder / usage_file).read_text())
                limit = None if limit_text == "max" else int(limit_text)
            except (OSError, ValueError):
                continue  # not this version's files, or not visible from here
            found = True
            if limit is None or limit >= 1 << 60:  # v1 writes ~2**63 for none
                continue
            try:  # page cache the kernel reclaims before it fails an allocation
                stats = dict(line.split() for line in (folder / stat_file).read_text().splitlines())
                usage -= min(int(stats.get(inactive, 0)), usage)
            except (OSError, ValueError):
                pass
            left = limit - usage if left is None else min(left, limit - usage)
        if found:
            return left
    return None


def _own_cgroups(membership: Path) -> dict[str, str]:
    """The process's cgroup paths from ``/proc/self/cgroup``: ``"v2"`` (the ``0::`` line) and
    ``"v1"`` (the memory controller's line), where present."""
    own: dict[str, str] = {}
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return own
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        if fields[0] == "0" and fields[1] == "":
            own["v2"] = fields[2]
        elif "memory" in fields[1].split(","):
            own["v1"] = fields[2]
    return own


def _address_space_left() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    size = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    size = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return soft - size
