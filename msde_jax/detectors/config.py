"""What every detector's configuration shares, and the checks at the detectors' boundary.

:class:`BaseConfig` holds the parameters of every detector with an MSDE shift and a cross-fit
threshold; :class:`~msde_jax.detectors.msde_config.DetectorConfig` and
:class:`~msde_jax.detectors.bank_config.BankConfig` extend it. Each parameter is written once, as
a field with its default and its documentation (:func:`param`): the facades' constructors,
``get_params`` and the ``Args`` of their docstrings are made from the fields
(:mod:`msde_jax.detectors.base`). :func:`check_features` is the one check of user features.
"""

import dataclasses
import math
import numbers
import textwrap
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Self

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from msde_jax._memory import device_free_memory
from msde_jax._platform import cpu_paths
from msde_jax.core.density import METHODS

__all__ = [
    "UNEVEN",
    "BaseConfig",
    "auto_batch",
    "score_chunk",
    "check_choice",
    "check_features",
    "check_int",
    "ordered_fields",
    "param",
    "parameter_docs",
]

# Why a cross-fit fold may hold out more than ⌈n / n_folds⌉ samples (the size checks' words).
UNEVEN = (
    "copies of one sample, and with groups a volume's slices, share a fold: the folds are uneven"
)
# On a CPU, above this many rows the kNN searches run in blocks of 256 rows (memory
# O(block · n); a block that stays in cache is faster there).
_AUTO_BATCH_ROWS = 1024
_AUTO_BATCH = 256
# On an accelerator, a block's (rows × n) float32 distances and the top-k's work space (about
# four such buffers) may take this share of the device's free memory: whole problems run as one
# block where they fit, since a 256-row block starves a GPU.
_DEVICE_SHARE = 4
_DEVICE_BUFFERS = 4
_DEVICE_FALLBACK_FREE = 4 << 30
# Rows (pooled vectors or patches) one scoring program takes: small enough on a CPU that a
# padded last chunk wastes little, large on an accelerator, where a program should fill it.
_CHUNK_ROWS_CPU = 8192
_CHUNK_ROWS_DEVICE = 1 << 17


def param(default: Any, doc: str) -> Any:
    """A configuration field: its default and the one sentence that documents it."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def ordered_fields(config_class: type) -> list[dataclasses.Field]:
    """A config's fields, its own first, then those it shares with :class:`BaseConfig`: the
    order of the facade's parameters."""
    shared = {f.name for f in dataclasses.fields(BaseConfig)}
    fields = dataclasses.fields(config_class)
    return [f for f in fields if f.name not in shared] + [f for f in fields if f.name in shared]


def parameter_docs(config_class: type) -> str:
    """The ``Args:`` section of a facade's docstring, from its config's field documentation."""
    lines = ["", "    Args:"]
    for field in ordered_fields(config_class):
        text = f"{field.name}: {field.metadata.get('doc', '')}"
        lines += textwrap.wrap(
            text, 100, initial_indent=" " * 8, subsequent_indent=" " * 12, break_on_hyphens=False
        )
    return "\n".join(lines) + "\n"


def check_choice(name: str, value: Any, options: tuple) -> None:
    """Refuse ``value`` unless it is one of ``options``, naming them."""
    if value not in options:
        raise ValueError(
            f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, options))}."
        )


def check_int(name: str, value: Any, *, low: int = 1, high: int | None = None) -> None:
    """Refuse anything but an int (not a bool) of at least ``low`` (and at most ``high``)."""
    if (
        not isinstance(value, int | np.integer)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        kind = "a positive int" if low == 1 else f"an int >= {low}"
        kind += "" if high is None else f" and <= {high}"
        raise ValueError(f"{name} must be {kind}, got {value!r}.")


def check_bool(name: str, value: Any) -> None:
    """Refuse anything but True or False (a string such as ``"False"`` is truthy)."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {value!r}.")


def check_real(name: str, value: Any, within: str, ok: Callable[[float], bool]) -> None:
    """Refuse anything but a real number (not a bool; NumPy scalars are) for which ``ok``
    holds, saying where it must be (``within``, e.g. ``"in (0, 1]"``)."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
    if not (real and ok(float(value))):
        raise ValueError(f"{name} must be {within}, got {value!r}.")


def auto_batch(batch_size: int | None, n_rows: int, *, device: Any = None) -> int | None:
    """Rows per kNN block against ``n_rows`` rows; ``None`` is all rows in one block.

    ``batch_size`` if given. Else, on a CPU (the default device's, or ``device``'s:
    :func:`msde_jax._platform.cpu_paths`), all rows up to 1024 and blocks of 256 beyond; on an
    accelerator, as many rows as keep the block's distances and top-k work space (four
    (rows × n_rows) float32 buffers) within a quarter of the device's free memory (4 GiB
    assumed where JAX reports none), in multiples of 256, all rows where they fit. The block
    size changes how a score is computed, not its value.
    """
    if batch_size is not None:
        return int(batch_size)
    device = device if device is not None else jax.devices()[0]
    if cpu_paths(device):
        return None if n_rows <= _AUTO_BATCH_ROWS else _AUTO_BATCH
    free = device_free_memory(device)
    if free is None:  # not reported (0 bytes free is a full device, not an unknown one)
        free = _DEVICE_FALLBACK_FREE
    rows = free // _DEVICE_SHARE // (_DEVICE_BUFFERS * 4 * max(n_rows, 1))
    if rows >= n_rows:
        return None
    return max(_AUTO_BATCH, rows // _AUTO_BATCH * _AUTO_BATCH)


def score_chunk(rows_per_item: int, *, device: Any = None) -> int:
    """Items (images, or pooled vectors) per scoring program, a power of two.

    About 8,192 rows (``rows_per_item`` each: an image's patches, or 1) on a CPU and 131,072
    on an accelerator. Batch-independent scoring runs every batch as chunks of this many
    items (:func:`~msde_jax.core.blocks.chunked_rows`), so any number of images reuses one
    compiled program (plus a power-of-two size for a call of fewer items).
    """
    device = device if device is not None else jax.devices()[0]
    rows = _CHUNK_ROWS_CPU if cpu_paths(device) else _CHUNK_ROWS_DEVICE
    items = max(1, rows // max(int(rows_per_item), 1))
    return 1 << (items.bit_length() - 1)


# A static pytree node (every subclass registers itself too): under ``jax.jit`` a config is
# part of the state's tree structure (hashed, compared, never traced), so the mode, k and the
# batch size stay Python values.
@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, kw_only=True)
class BaseConfig:
    """The parameters every detector with an MSDE shift and a cross-fit threshold shares,
    validated on construction. Frozen and hashable.

    ``score_params`` names the score-time parameters: read when scoring, so they may change
    after ``fit`` (the others take effect at the next fit). ``fit_only`` names those no score
    function reads (:meth:`scoring`).
    """

    score_params: ClassVar[tuple[str, ...]] = ()
    fit_only: ClassVar[tuple[str, ...]] = ("contamination", "threshold", "n_folds")

    k: int = param(50, "neighbours in the mean-shift window (50 in the MSDE paper).")
    step_size: float = param(
        0.33, "η, the fraction of the mean-shift vector applied per iteration (0.33)."
    )
    max_iter: int = param(8, "T, at most this many mean-shift iterations (8).")
    tol: float = param(0.01, "θ, stop once the mean shift length falls below it (0.01).")
    density: str = param(
        "msde",
        'the density-weight scheme (:func:`~msde_jax.core.density_weights`): ``"msde"`` (the '
        'paper\'s block-wise fuzzy-graph weights), ``"fuzzy_degree"`` or ``"uniform"``.',
    )
    score_neighbors: int = param(
        1, "nearest neighbours (bank patches, training rows) a distance score averages (1: one)."
    )
    contamination: float = param(
        0.05,
        "expected share of anomalies among normals-like data, in (0, 0.5]; the threshold is "
        "the ``1 − contamination`` quantile of the out-of-fold scores of the training normals.",
    )
    threshold: str = param("cross_fit", 'how the threshold is set: ``"cross_fit"``.')
    n_folds: int = param(5, "folds of the cross-fit threshold (at least 2).")
    batch_size: int | None = param(
        None,
        "rows per kNN block; ``None`` picks one for the backend (:func:`auto_batch`: on a CPU "
        "all rows at once up to 1024, else blocks of 256; on an accelerator as many as its "
        "free memory allows). Changes how a score is computed, never its value.",
    )
    dtype: str = param(
        "float32",
        'floating dtype of the computation (``"float64"`` needs '
        '``jax.config.update("jax_enable_x64", True)``).',
    )

    def __post_init__(self) -> None:
        check_choice("density", self.density, METHODS)
        check_choice("dtype", self.dtype, ("float32", "float64"))
        for name in ("k", "max_iter", "score_neighbors"):
            check_int(name, getattr(self, name))
        if self.batch_size is not None:
            try:
                check_int("batch_size", self.batch_size)
            except ValueError:
                raise ValueError(
                    f"batch_size must be a positive int or None, got {self.batch_size!r}."
                ) from None
        check_real("step_size", self.step_size, "in (0, 1]", lambda v: 0 < v <= 1)
        check_real("tol", self.tol, ">= 0", lambda v: v >= 0)
        check_real("contamination", self.contamination, "in (0, 0.5]", lambda v: 0 < v <= 0.5)

    def batch(self, n_rows: int) -> int | None:
        """Rows per kNN block against ``n_rows`` rows: ``batch_size``, else chosen for the
        backend and its free memory (:func:`auto_batch`)."""
        return auto_batch(self.batch_size, n_rows)

    def unread_by_score(self) -> tuple[str, ...]:
        """The parameters this config's score program never reads: ``fit_only``, and those a
        subclass's score does not read with this config's other values (its arrays carry
        them, or its mode skips them)."""
        return self.fit_only

    def scoring(self) -> Self:
        """This config with the parameters no score reads (:meth:`unread_by_score`) at their
        defaults.

        The config is a static part of a fitted state, so it keys compiled score programs:
        scoring under ``state._replace(config=config.scoring())`` gives the same scores and
        lets detectors that differ only in parameters their score does not read (a threshold
        or folds: the validation's copy with ``threshold="none"`` and the main detector; the
        covariance estimator or the density weights of an inductive MSDE detector) share one
        program.
        """
        return self.with_defaults(self.unread_by_score())

    def with_defaults(self, names: Iterable[str]) -> Self:
        """This config with the parameters ``names`` at their defaults."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{name: fields[name].default for name in names})


# ---------------------------------------------------------------------- boundary checks
# How the two kinds of features are named in messages.
_KINDS = {
    "samples": dict(
        ndim=(2,),
        unit="row",
        channel="features",
        fix="embed with the same backbone",
        not_array="must be a 2-D array of numbers",
    ),
    "patches": dict(
        ndim=(3, 4),
        unit="image",
        channel="channels per patch",
        fix="embed with the same backbone and layers",
        not_array="must be an array of patch features",
    ),
}


def _shape_message(kind: str, arr: np.ndarray, what: str) -> str:
    if kind == "samples":
        hint = " (one sample: reshape it to (1, d))" if arr.ndim == 1 else ""
        return f"{what} must be a 2-D array (n_samples, n_features), got shape {arr.shape}{hint}."
    hint = ""
    if arr.ndim == 2:
        hint = (
            "; pooled embeddings (n, d) go to MSDEDetector, and one image's patches "
            "(n_patches, c) need a leading axis: X[None]"
        )
    return (
        f"{what} must be patch features of shape (n_images, n_patches, channels) or "
        "(n_images, grid, grid, channels), as Embedder(features='patches') gives, got "
        f"shape {arr.shape}{hint}."
    )


@jax.jit
def _summary(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Which rows hold NaN or infinite values, and the largest finite magnitude: floats in
    their own dtype (a float64 value beyond float32's range stays what it is), integers and
    booleans as JAX's default float."""
    finite = jnp.isfinite(x)
    bad = ~finite.reshape(x.shape[0], -1).all(axis=1)
    values = x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))
    return bad, jnp.max(jnp.where(finite, jnp.abs(values), 0))


# Rows checked per block by _bad_rows_and_peak: its temporaries stay about this size.
_CHECK_BLOCK_BYTES = 16 << 20


def _bad_rows_and_peak(arr: np.ndarray) -> tuple[np.ndarray, float]:
    """Which rows hold a NaN or ±inf, and max |x| (meaningful when none does), a block of
    about 16 MiB of rows at a time, so an archive's features are never copied whole. Floats:
    |x| in their own dtype (float32 cannot exceed its range); integers in float64, where
    |int64 min| does not overflow."""
    step = max(1, _CHECK_BLOCK_BYTES // max(arr[0].nbytes, 1))
    bad = np.empty(arr.shape[0], bool)
    peak = 0.0
    for i in range(0, arr.shape[0], step):
        block = arr[i : i + step]
        bad[i : i + step] = ~np.isfinite(block).reshape(block.shape[0], -1).all(axis=1)
        values = block if block.dtype.kind == "f" else block.astype(np.float64)
        peak = max(peak, float(np.max(np.abs(values))))
    return bad, peak


def check_features(
    x: ArrayLike,
    *,
    kind: str = "samples",
    dtype: str = "float32",
    n_features: int | None = None,
    n_patches: int | None = None,
    what: str = "X",
    on_device: bool = False,
    copy: bool = True,
) -> np.ndarray:
    """Check user features and return them as a NumPy array of ``dtype`` (shape kept).

    ``kind="samples"``: pooled embeddings, (n, d). ``kind="patches"``: patch features,
    (n_images, n_patches, c) or (n_images, grid, grid, c). Refuses, with a message naming the
    fix: non-numeric, ragged or complex input, another number of axes, no rows or no features,
    NaN or infinite values, values too large for ``dtype`` (for patches: so large that
    squared distances would overflow), and (when given) another feature or channel count or
    number of patches per image, and ``dtype="float64"`` while JAX's 64-bit mode is off.
    Values are checked before the cast, so finite float64 values beyond float32's range are
    reported as such, not as infinities.

    With ``on_device=True`` a ``jax.Array`` stays where it is: the checks run on its device
    (one scalar summary comes back to the host, explicitly) and it is returned as a
    ``jax.Array`` of ``dtype``; anything else is checked and returned as NumPy, a copy unless
    ``copy=False`` and it already has ``dtype`` (for a caller that neither keeps nor writes it:
    the checks read it a block at a time, so an archive's features are then never copied).
    """
    words = _KINDS[kind]
    if np.dtype(dtype) == np.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "dtype='float64' needs JAX's 64-bit mode, which is off: everything would run in "
            'float32. Call jax.config.update("jax_enable_x64", True) before fitting (or set '
            "JAX_ENABLE_X64=1), or use dtype='float32'."
        )
    if on_device and isinstance(x, jax.Array):
        return _check_device_features(x, words, kind, dtype, n_features, n_patches, what)
    if callable(getattr(x, "toarray", None)):  # scipy.sparse matrices and arrays
        raise ValueError(
            f"{what} is a sparse matrix: sparse input is not supported; pass a dense array "
            f"({what}.toarray())."
        )
    try:
        arr = np.asarray(x)
    except Exception as err:  # ragged lists and the like
        raise ValueError(f"{what} {words['not_array']}: {err}") from err
    # jax's issubdtype knows ml_dtypes' floats (bfloat16) as numbers; NumPy's does not
    numeric = jax.dtypes.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
    if arr.dtype == object or not numeric:
        raise ValueError(f"{what} must hold numbers, got dtype {arr.dtype}.")
    if np.iscomplexobj(arr):
        raise ValueError(
            f"{what} must hold real numbers, got dtype {arr.dtype}. Complex data not supported: "
            "pass its real part or its magnitude."
        )
    if arr.ndim not in words["ndim"]:
        raise ValueError(_shape_message(kind, arr, what))
    if arr.shape[0] == 0:
        if kind == "patches":
            raise ValueError(f"{what} has no images.")
        raise ValueError(
            f"{what} has no samples (shape {arr.shape}): pass at least one row of features "
            "(fitting needs more: as many normals as the cross-fit folds and k need)."
        )
    if 0 in arr.shape[1:]:
        if kind == "patches":
            raise ValueError(f"{what} has no patches or no channels: shape {arr.shape}.")
        raise ValueError(f"{what} has no features (shape {arr.shape}).")
    bad, peak = _bad_rows_and_peak(arr)
    if bad.any():
        rows = np.nonzero(bad)[0]
        raise ValueError(
            f"{what} contains NaN or infinite values in {rows.size} {words['unit']}(s) "
            f"(first: {rows[:5].tolist()}); remove or impute them first."
        )
    _check_peak(peak, kind, dtype, arr.shape[-1], what)
    _check_counts(arr.shape, words, n_features, n_patches, what)
    return arr.astype(dtype, copy=copy)


def _check_peak(peak: float, kind: str, dtype: str, channels: int, what: str) -> None:
    """Refuse finite values too large for ``dtype`` (for patches: whose squared distances
    would overflow it)."""
    if kind == "patches":
        # Squared distances are at most 4 · c · max|x|²: beyond the dtype's range they overflow.
        limit = math.sqrt(float(np.finfo(dtype).max) / (4 * channels)) / 2
        if peak > limit:
            raise ValueError(
                f"{what} has values up to {peak:.3g}, too large for {np.dtype(dtype)} patch "
                f"distances (squared distances overflow beyond about {limit:.3g}); divide the "
                "features by a constant (the scores scale with it) or use dtype='float64' "
                '(with jax.config.update("jax_enable_x64", True)).'
            )
    elif peak > (limit := float(np.finfo(dtype).max)):
        raise ValueError(
            f"{what} has values up to {peak:.3g}, beyond {dtype}'s range "
            f"({limit:.3g}); divide the features by a constant or use dtype='float64' "
            '(with jax.config.update("jax_enable_x64", True)).'
        )


def _check_counts(
    shape: tuple[int, ...],
    words: dict[str, Any],
    n_features: int | None,
    n_patches: int | None,
    what: str,
) -> None:
    """Refuse another feature (channel) count or number of patches per image than fitted."""
    if n_features is not None and shape[-1] != n_features:
        raise ValueError(
            f"{what} has {shape[-1]} {words['channel']} but the detector was fitted on "
            f"{n_features}; {words['fix']}."
        )
    patches = math.prod(shape[1:-1])
    if n_patches is not None and patches != n_patches:
        raise ValueError(
            f"{what} has {patches} patches per image but the detector was fitted on "
            f"{n_patches}; embed with the same grid."
        )


def _check_device_features(
    x: jax.Array,
    words: dict[str, Any],
    kind: str,
    dtype: str,
    n_features: int | None,
    n_patches: int | None,
    what: str,
) -> jax.Array:
    """:func:`check_features` for a ``jax.Array``, on its device: the same refusals."""
    if not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == jnp.bool_):
        raise ValueError(f"{what} must hold numbers, got dtype {x.dtype}.")
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise ValueError(f"{what} must hold real numbers, got dtype {x.dtype}.")
    if x.ndim not in words["ndim"] or x.shape[0] == 0 or 0 in x.shape[1:]:
        return check_features(  # the host path words these refusals (no values are read)
            np.zeros(x.shape, np.float32), kind=kind, what=what
        )
    bad, peak = jax.device_get(_summary(x))
    if bad.any():
        rows = np.nonzero(bad)[0]
        raise ValueError(
            f"{what} contains NaN or infinite values in {rows.size} {words['unit']}(s) "
            f"(first: {rows[:5].tolist()}); remove or impute them first."
        )
    _check_peak(float(peak), kind, dtype, x.shape[-1], what)
    _check_counts(x.shape, words, n_features, n_patches, what)
    return x.astype(dtype)
