"""Memory a step needs, checked against the machine before anything is allocated; and a
step that runs out of memory anyway, ended in one error that says what to lower.

Each step that sizes its work from options (embedding: ``batch_size``, ``image_size``,
``grid`` and the number of images; fitting and scoring a detector: the number of images and
patches, the bank ``size``, ``batch_size``; anomaly maps: their side and number) estimates the
bytes it will allocate from those options, and :func:`check_memory` compares the estimate with
what the machine has free (:func:`memory_budget`):

- host memory: :func:`msde_jax._host_memory.available_memory` — the least of the system's
  available memory (``MemAvailable``), the limit of the process's cgroup (a container's, a
  job's) less its usage and the address-space limit (``RLIMIT_AS``) less the process's size;
- an accelerator's memory: ``bytes_limit − bytes_in_use`` of ``Device.memory_stats()``, where
  JAX reports it (a CPU device reports nothing: its memory is the host's).

The whole free memory is the budget (not a fraction, as for reading a file): the estimate
already counts every buffer the step allocates at once, so a refusal means the step cannot
fit. A refusal is a :class:`MemoryLimitError` that names the step, the estimate, its parts and
the budget, and says how far to lower each option (the estimate grows as a known power of
each: batch and image count linearly, image and map sides quadratically).

:func:`out_of_memory` covers what estimates cannot see: a NumPy or Python ``MemoryError``, or
an XLA ``RESOURCE_EXHAUSTED`` (a ``jax.errors.JaxRuntimeError``, jaxlib's
``XlaRuntimeError``), inside a step becomes a :class:`MemoryLimitError` naming the step and
the options to lower. A layer-0 helper: it imports no JAX (a caller passes its device).
"""

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from msde_jax._host_memory import available_memory, human_bytes

__all__ = [
    "Lower",
    "MemoryLimitError",
    "check_memory",
    "device_free_memory",
    "is_host",
    "memory_budget",
    "out_of_memory",
]

# XLA's status code for an allocation that failed (device or host buffers).
_EXHAUSTED = "RESOURCE_EXHAUSTED"
# An XLA message can run to pages (its allocator's state); the error keeps its first line.
_MAX_REASON = 200


class MemoryLimitError(ValueError, MemoryError):
    """A step that needs more memory than the machine has free, refused before it runs, or
    that ran out of memory while it ran.

    A ``ValueError`` (the options asked for too much: the command line prints it as one
    ``error:`` line) and a ``MemoryError`` (code that catches running out of memory still
    does).

    Attributes:
        step: what was refused or failed (``"embedding (resnet18)"``).
        needed: the estimated bytes, where known.
        available: the budget it was compared with, where known.
    """

    def __init__(
        self, message: str, *, step: str, needed: int | None = None, available: int | None = None
    ):
        super().__init__(message)
        self.step, self.needed, self.available = step, needed, available

    def __reduce__(self):  # keyword arguments, so that the error pickles (process pools)
        return _rebuild, (str(self), self.step, self.needed, self.available)


def _rebuild(message: str, step: str, needed: int | None, available: int | None):
    return MemoryLimitError(message, step=step, needed=needed, available=available)


class Lower(NamedTuple):
    """An option that sizes a step, for the advice of a refusal.

    Attributes:
        name: how a user sets it, e.g. ``"batch_size (--batch-size)"``.
        value: its value now.
        power: the parts it sizes grow as ``value ** power`` (1: a count; 2: a side).
        minimum: its smallest valid value (no advice to go below it).
        scales: the parts of the estimate (keys of :func:`check_memory`'s ``needs``, or of its
            ``advise_from``) that it sizes; the others stay as they are whatever its value.
            ``None``: every part.
        multiple: its valid values are multiples of this (a ViT's patch side; the devices a
            batch is split over); the advice is rounded down to one.
    """

    name: str
    value: int
    power: float = 1.0
    minimum: int = 1
    scales: tuple[str, ...] | None = None
    multiple: int = 1


def is_host(device: Any) -> bool:
    """Whether ``device`` (a ``jax.Device`` or ``None``) computes in host memory (a CPU)."""
    return device is None or getattr(device, "platform", "cpu") == "cpu"


def device_free_memory(device: Any) -> int | None:
    """Free bytes of an accelerator as JAX reports them (``bytes_limit − bytes_in_use`` of
    ``device.memory_stats()``); ``None`` for a CPU device or where nothing is reported."""
    if is_host(device):
        return None
    try:
        stats = device.memory_stats()
    except (AttributeError, NotImplementedError, RuntimeError, TypeError):
        return None
    if not stats or "bytes_limit" not in stats:
        return None
    return max(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), 0)


def memory_budget(device: Any = None) -> tuple[int, str]:
    """``(bytes, what they are)`` a step may allocate: an accelerator's free memory where JAX
    reports it, else the host's available memory (``available_memory()``)."""
    free = device_free_memory(device)
    if free is not None:
        return free, f"free on {getattr(device, 'device_kind', None) or device}"
    return available_memory(), "available"


def check_memory(
    step: str,
    needs: Mapping[str, int],
    *,
    lower: Sequence[Lower] = (),
    device: Any = None,
    advise_from: Mapping[str, int] | None = None,
) -> None:
    """Refuse a step whose estimated memory exceeds the budget, before it allocates anything.

    Args:
        step: what is checked, for the message (``"embedding (resnet18)"``).
        needs: the estimate's parts, ``{what: bytes}`` (zero parts are left out of messages).
        lower: the options that size the step; the message says how far to lower each alone
            for the estimate to fit: the largest valid value ``v`` (at least ``minimum``, a
            ``multiple``) with ``fixed + scaled · (v / value) ** power ≤ budget``, ``scaled``
            the parts the option ``scales`` and ``fixed`` the others; an option that cannot
            make it fit is left out (none: the message says so).
        device: the ``jax.Device`` whose memory the parts take (``None`` or a CPU: the host's).
        advise_from: the parts to size the advice from, when the step will need more than
            ``needs`` (a first check of the parts known before compiling); default ``needs``.

    Raises:
        MemoryLimitError: the estimate exceeds :func:`memory_budget`.
    """
    needed = sum(int(v) for v in needs.values())
    budget, what = memory_budget(device)
    if needed <= budget:
        return
    parts = ", ".join(f"{k} {human_bytes(int(v))}" for k, v in needs.items() if v)
    where = "host" if is_host(device) else "device"
    advice = _advice(lower, needs if advise_from is None else advise_from, budget)
    raise MemoryLimitError(
        f"{step} needs about {human_bytes(needed)} of {where} memory ({parts}), more than the "
        f"{human_bytes(budget)} {what}; {advice}.",
        step=step,
        needed=needed,
        available=budget,
    )


def _advice(lower: Sequence[Lower], parts: Mapping[str, int], budget: int) -> str:
    fits, too_small = [], []
    total = sum(int(v) for v in parts.values())
    for option in lower:
        names = parts if option.scales is None else option.scales
        scaled = sum(int(parts.get(name, 0)) for name in names)
        room = budget - (total - scaled)  # what the parts it sizes may take
        value = 0
        if scaled > 0 and room > 0:
            value = math.floor(option.value * (room / scaled) ** (1 / option.power) + 1e-9)
            value = min(value, option.value - 1) // option.multiple * option.multiple
        if value >= option.minimum:
            fits.append(f"{option.name} from {option.value} to at most {value}")
        else:
            too_small.append(option.name)
    advice = "lower " + " or ".join(fits) if fits else ""
    if too_small and not fits:
        names = " or ".join(too_small)
        advice = f"even the smallest {names} would not fit: free memory or use a larger machine"
    return advice or "free memory or use a larger machine"


@contextlib.contextmanager
def out_of_memory(step: str, lower: Sequence[str], device: Any = "default") -> Iterator[None]:
    """Turn running out of memory inside the block into a :class:`MemoryLimitError`.

    A ``MemoryError`` (NumPy's ``_ArrayMemoryError`` included) or an XLA error whose message
    holds ``RESOURCE_EXHAUSTED`` (``jax.errors.JaxRuntimeError``) becomes one error that
    names ``step``, whose memory ran out (the host's, or that of ``device``, the device the
    block computes on: JAX's default device unless given; a CPU's is the host's) and the
    options to lower (``lower``: ``["batch_size (--batch-size)"]``); anything else passes
    unchanged.
    """
    try:
        yield
    except MemoryLimitError:
        raise
    except (MemoryError, RuntimeError) as err:
        if not isinstance(err, MemoryError) and _EXHAUSTED not in str(err):
            raise
        if device == "default":  # XLA allocates on the device it runs on
            import jax  # loaded by whatever raised a JaxRuntimeError

            device = jax.devices()[0]
        where = "host" if isinstance(err, MemoryError) or is_host(device) else "device"
        reason = (str(err) or type(err).__name__).strip().splitlines()[0][:_MAX_REASON]
        options = " or ".join(lower) or "the size of the work"
        raise MemoryLimitError(
            f"{step} ran out of {where} memory ({reason}); lower {options}, or free memory.",
            step=step,
        ) from err
