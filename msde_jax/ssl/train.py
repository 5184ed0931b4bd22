"""Adapt a backbone to a dataset's normal images with a self-supervised proxy task, in JAX.

The paper's strongest chest X-ray and skin-lesion backbones were ResNet-18s trained on the
dataset's own normal images to tell clean images from the same images with synthetic,
anatomy-like anomalies pasted in (AnatPaste; Sato et al., iScience 2023, as used by the
MedIAnomaly benchmark) — CutPaste (Li et al., CVPR 2021) is the anatomy-agnostic original.
This module trains such a backbone:

* the proxy task's views are made on the device inside the jitted step
  (:func:`msde_jax.ssl.augment.make_views`), so the accelerator is never starved by Python;
* a small MLP head on the pooled embedding classifies the views (cross-entropy); the head is
  dropped afterwards, only the backbone is kept;
* batch-norm statistics are updated from each training batch (``train=True``) and frozen when
  the adapted backbone embeds images (the :class:`~msde_jax.Embedder` always uses them);
* the step is data-parallel: the batch is sharded over a device mesh and the state replicated,
  so XLA all-reduces the gradients, and batch norm sees the whole global batch;
* everything random is a function of ``(seed, step)`` — the augmentation key is split from
  ``fold_in(key(seed), step)``, the image order a per-epoch permutation seeded by ``(seed,
  epoch)``, AnatPaste's source images drawn by ``(seed, step)`` — so a resumed run takes
  exactly the steps an uninterrupted run would have taken;
* checkpoints and the exported backbone are ``.safetensors`` files (no pickle), written
  atomically.

The functional pieces (:func:`init_state`, :func:`make_train_step`, :func:`save_checkpoint`,
:func:`load_checkpoint`) compose into :func:`train_backbone`, which also reads the images,
shows progress, logs the loss and exports the result.
"""

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from msde_jax._memory import out_of_memory
from msde_jax._progress import Progress
from msde_jax.backbones import weight_files
from msde_jax.backbones.registry import backbone_spec
from msde_jax.backbones.variables import abstract_variables, load_backbone_variables
from msde_jax.ssl.augment import make_views
from msde_jax.ssl.config import TrainConfig, check_training_memory, prepare_images

__all__ = [
    "BACKBONE",
    "CHECKPOINT",
    "LOG",
    "ProxyHead",
    "StepMetrics",
    "TrainResult",
    "TrainState",
    "TrainStep",
    "abstract_state",
    "backbone_variables",
    "batch_indices",
    "init_state",
    "learning_rate_schedule",
    "load_checkpoint",
    "make_optimizer",
    "make_train_step",
    "other_indices",
    "prepare_images",
    "save_backbone",
    "save_checkpoint",
    "train_backbone",
]

CHECKPOINT = "checkpoint.safetensors"
BACKBONE = "backbone.safetensors"
LOG = "train_log.jsonl"
# Fields that may change when a run is resumed: they do not affect the steps taken.
_RESUMABLE = ("checkpoint_every", "log_every")


class TrainState(NamedTuple):
    """Everything a step updates; a pytree, replicated over the devices.

    Attributes:
        step: () int32, steps taken.
        params: ``{"backbone": ..., "head": ...}`` trainable parameters.
        batch_stats: the backbone's batch-norm running statistics (``{}`` for ViTs).
        opt_state: the optax optimizer state.
    """

    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: Any


class StepMetrics(NamedTuple):
    """Proxy-task cross-entropy and accuracy on one step's views (before its update)."""

    loss: jax.Array
    accuracy: jax.Array


class TrainResult(NamedTuple):
    """What :func:`train_backbone` returns.

    Attributes:
        variables: the adapted backbone's ``{"params", "batch_stats"}`` (NumPy), ready for
            ``Embedder(config.backbone, weights=variables)``.
        state: the final :class:`TrainState`.
        history: one ``{"step", "loss", "accuracy", "learning_rate", "seconds"}`` per log;
            ``seconds`` of training since the run began (a resumed run's go on from its
            last record's).
        config: the :class:`TrainConfig` trained with.
    """

    variables: dict
    state: TrainState
    history: list[dict]
    config: TrainConfig


class ProxyHead(nn.Module):
    """Classifies pooled embeddings into the proxy task's classes (an MLP, as CutPaste's
    projection head; dropped after training)."""

    hidden: int
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.hidden:
            x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.num_classes)(x)


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warm-up to ``learning_rate``, then cosine decay to 0 at ``steps`` (or constant).
    A warm-up of ``steps`` or more (the default 50 in a short run) takes half the steps
    instead, so that the run still decays (it ended at the peak learning rate)."""
    warmup = config.warmup_steps if config.warmup_steps < config.steps else config.steps // 2
    if config.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(config.learning_rate)
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, config.learning_rate, warmup),
                optax.constant_schedule(config.learning_rate),
            ],
            [warmup],
        )
    return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup, max(config.steps, warmup + 1), end_value=0.0
    )


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optimizer of ``config``: gradient clipping at global norm 1, then AdamW or SGD."""
    lr = learning_rate_schedule(config)
    if config.optimizer == "adamw":
        opt = optax.adamw(lr, weight_decay=config.weight_decay)
    else:
        opt = optax.chain(
            optax.add_decayed_weights(config.weight_decay), optax.sgd(lr, momentum=0.9)
        )
    return optax.chain(optax.clip_by_global_norm(1.0), opt)


def init_state(config: TrainConfig, backbone_variables: dict) -> TrainState:
    """A fresh :class:`TrainState` from the backbone's variables and a seeded head."""
    dim = backbone_spec(config.backbone).dim
    head = ProxyHead(config.head_hidden, config.num_classes)
    head_params = head.init(jax.random.key(config.seed), jnp.zeros((1, dim), jnp.float32))
    params = {
        "backbone": jax.tree.map(jnp.asarray, backbone_variables["params"]),
        "head": head_params["params"],
    }
    batch_stats = jax.tree.map(jnp.asarray, dict(backbone_variables.get("batch_stats", {})))
    opt_state = make_optimizer(config).init(params)
    return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, opt_state)


def _loss_fn(config: TrainConfig, module: Any, normalize: Callable):
    head = ProxyHead(config.head_hidden, config.num_classes)

    def loss_fn(params, batch_stats, views, labels, dropout_key):
        variables = {"params": params["backbone"]}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        out, mutated = module.apply(
            variables,
            normalize(views),
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": dropout_key},
        )
        logits = head.apply({"params": params["head"]}, out.pooled)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
        return loss, (accuracy, mutated.get("batch_stats", {}))

    return loss_fn


class TrainStep:
    """The jit-compiled, data-parallel training step of a :class:`TrainConfig`.

    ``step(state, images, others=None) -> (state, metrics)`` with ``images`` (batch_size, S, S,
    3) uint8 clean normal images (and for AnatPaste ``others``, the images each one takes its
    patch from, :func:`other_indices`; ``None``: its neighbour in the batch): makes the proxy
    task's views with a key derived from ``(seed, state.step)``, runs the backbone in training
    mode (batch-norm statistics from the global batch, running averages updated), classifies
    with the head, and applies one optax update. The batch is sharded over the devices and the
    state replicated (see :meth:`replicate`); the input state is donated. Build it with
    :func:`make_train_step`.
    """

    def __init__(self, config: TrainConfig, devices: tuple[jax.Device, ...]):
        if config.batch_size % len(devices):
            raise ValueError(
                f"batch_size={config.batch_size} must be a multiple of the {len(devices)} "
                "devices it is sharded over."
            )
        spec = backbone_spec(config.backbone)
        loss_fn = _loss_fn(config, spec.build(0), spec.normalize)
        optimizer = make_optimizer(config)
        base_key = jax.random.key(config.seed)

        def step(
            state: TrainState, images: jax.Array, others: jax.Array | None
        ) -> tuple[TrainState, StepMetrics]:
            view_key, dropout_key = jax.random.split(jax.random.fold_in(base_key, state.step))
            others = None if others is None else others.astype(jnp.float32) / 255.0
            views, labels = make_views(
                view_key,
                images.astype(jnp.float32) / 255.0,
                config.task,
                anatomy=config.anatomy,
                others=others,
            )
            (loss, (accuracy, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params, state.batch_stats, views, labels, dropout_key
            )
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            new = TrainState(state.step + 1, params, batch_stats, opt_state)
            return new, StepMetrics(loss, accuracy)

        self.devices = devices
        mesh = Mesh(np.array(devices), ("data",))
        self._replicated = NamedSharding(mesh, PartitionSpec())
        self._sharded = NamedSharding(mesh, PartitionSpec("data"))
        self._step = jax.jit(
            step,
            in_shardings=(self._replicated, self._sharded, self._sharded),
            out_shardings=(self._replicated, self._replicated),
            donate_argnums=0,
        )

    def __call__(
        self, state: TrainState, images: Any, others: Any = None
    ) -> tuple[TrainState, StepMetrics]:
        if others is not None:
            others = jax.device_put(others, self._sharded)
        return self._step(state, jax.device_put(images, self._sharded), others)

    def replicate(self, state: TrainState) -> TrainState:
        """Place a state on every device of the mesh (a copy: the step donates its input)."""
        return jax.device_put(jax.tree.map(jnp.array, state), self._replicated)


def make_train_step(
    config: TrainConfig, *, devices: Sequence[jax.Device] | None = None
) -> TrainStep:
    """The :class:`TrainStep` of ``config`` sharded over ``devices`` (default: all local
    devices). Steps are cached: configurations that take the same steps share one compiled
    function (the checkpoint/log cadence, and ``steps`` under a constant schedule, do not
    change a step)."""
    devices = tuple(devices) if devices is not None else tuple(jax.local_devices())
    key = dataclasses.replace(
        config,
        checkpoint_every=1,
        log_every=1,
        steps=config.steps if config.schedule == "cosine" or config.warmup_steps else 1,
    )
    return _cached_step(key, devices)


@lru_cache(maxsize=8)
def _cached_step(config: TrainConfig, devices: tuple[jax.Device, ...]) -> TrainStep:
    return TrainStep(config, devices)


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch_size: int, *, seed: int, step: int) -> np.ndarray:
    """Indices of step ``step``'s images: consecutive slices of per-epoch permutations seeded
    by ``(seed, epoch)``, so any step's batch is known without replaying the ones before."""
    pos = step * batch_size + np.arange(batch_size)
    epochs, offsets = np.divmod(pos, n)
    return np.array(
        [_permutation(n, seed, int(e))[o] for e, o in zip(epochs, offsets, strict=True)]
    )


def other_indices(indices: np.ndarray, n: int, *, seed: int, step: int) -> np.ndarray:
    """For each of a batch's image ``indices`` (of ``n`` ≥ 2 images), another image to take
    AnatPaste's patch from: never the image itself, whatever the batch size and however often
    an image repeats in a batch (fewer images than ``batch_size``), seeded by
    ``(seed, step)``."""
    shift = np.random.default_rng([seed, step, 1]).integers(1, n, size=len(indices))
    return (indices + shift) % n


# ------------------------------------------------------------------------------ checkpoints
def _flat_state(state: TrainState) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    # safetensors has no 0-d tensors: scalars (the step count, optax's counters) go as (1,).
    return {jax.tree_util.keystr(path): np.atleast_1d(np.asarray(leaf)) for path, leaf in leaves}


def save_checkpoint(
    path: str | os.PathLike,
    state: TrainState,
    config: TrainConfig,
    *,
    data: str = "",
    pending: Sequence[tuple[float, float]] = (),
) -> Path:
    """Write ``state`` and ``config`` to a ``.safetensors`` checkpoint (atomically); ``data``
    fingerprints the training images, so a resume on other images is refused; ``pending``
    holds the (loss, accuracy) of the steps since the last log record, so that the record after
    a resume averages the same steps as without the interruption."""
    meta = {
        "kind": "checkpoint",
        "backbone": config.backbone,
        "config": config.to_json(),
        "data": data,
        "pending": json.dumps([[float(a), float(b)] for a, b in pending]),
        "sampling": _SAMPLING,
    }
    return weight_files.save_variables(path, _flat_state(state), meta)


# How a step's images are drawn; "2": AnatPaste's source images by other_indices (2026-12-06;
# before, the batch neighbour).
_SAMPLING = "2"


def _data_fingerprint(data: np.ndarray) -> str:
    return f"{len(data)} images, sha256 {hashlib.sha256(data.tobytes()).hexdigest()[:16]}"


def abstract_state(config: TrainConfig) -> TrainState:
    """Shapes and dtypes of ``config``'s :class:`TrainState` (nothing computed)."""
    module = backbone_spec(config.backbone).build(0)
    variables = abstract_variables(module, config.image_size)
    return jax.eval_shape(lambda v: init_state(config, v), variables)


def load_checkpoint(path: str | os.PathLike) -> tuple[TrainState, TrainConfig]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        ValueError: not a checkpoint, or its arrays do not match its configuration.
    """
    flat, meta = weight_files.load_variables(path)
    if meta.get("kind") != "checkpoint":
        raise ValueError(f"{path}: not a training checkpoint (kind={meta.get('kind')!r}).")
    config = TrainConfig.from_json(meta["config"])
    template = abstract_state(config)
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for key_path, spec in paths:
        name = jax.tree_util.keystr(key_path)
        if name not in flat or flat[name].size != np.prod(spec.shape, dtype=int):
            raise ValueError(f"{path}: checkpoint entry {name} is missing or has a wrong shape.")
        leaves.append(jnp.asarray(flat[name].reshape(spec.shape), spec.dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves), config


def backbone_variables(state: TrainState) -> dict:
    """The adapted backbone's ``{"params", "batch_stats"}`` as NumPy arrays (head dropped)."""
    variables = {"params": state.params["backbone"]}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    return jax.tree.map(np.asarray, variables)


def save_backbone(
    path: str | os.PathLike, state: TrainState, config: TrainConfig, **info: Any
) -> Path:
    """Export the adapted backbone for :class:`~msde_jax.Embedder` (``weights=path``) and
    ``msde-jax ... --backbone <backbone> --weights path``; ``info`` goes into the metadata."""
    meta = {
        "kind": "backbone",
        "backbone": config.backbone,
        "image_size": str(config.image_size),
        "training": json.dumps({"config": dataclasses.asdict(config), **info}, sort_keys=True),
    }
    return weight_files.save_variables(path, backbone_variables(state), meta)


# ------------------------------------------------------------------------------- the loop
_OPTIONS = ["batch_size (--batch-size)", "image_size (--image-size)"]


def _check_resume(saved: TrainConfig, config: TrainConfig, path: Path) -> None:
    a, b = dataclasses.asdict(saved), dataclasses.asdict(config)
    unread = ("anatomy",) if config.task == "cutpaste" else ()  # CutPaste pastes anywhere
    differ = [k for k in a if a[k] != b[k] and k not in (*_RESUMABLE, *unread)]
    if differ:
        raise ValueError(
            f"{path} was written with a different configuration ("
            + ", ".join(f"{k}: {a[k]!r} there, {b[k]!r} now" for k in differ)
            + "); resume with the same settings or train into a new folder."
        )


def _finite(
    pending: list[StepMetrics], done: int, state: TrainState | None = None
) -> list[StepMetrics]:
    """The metrics of the steps since the last record, fetched as floats, or an error if the
    loss is no longer finite (before it is logged or checkpointed); with ``state``, also if
    its parameters or statistics are not (a loss is computed before its step's update, so
    the last update is seen only there: before a checkpoint or the backbone is saved)."""
    fetched = [StepMetrics(float(m.loss), float(m.accuracy)) for m in pending]
    bad = None
    if fetched and not all(math.isfinite(m.loss) for m in fetched):
        bad = f"the loss became {fetched[-1].loss}"
    elif state is not None and not _all_finite((state.params, state.batch_stats)):
        bad = "the weights became NaN or infinite"
    if bad is not None:
        raise FloatingPointError(
            f"{bad} by step {done}: lower the learning rate and train into a new output folder."
        )
    return fetched


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _log_records(path: Path) -> list[dict]:
    """The records of a training log; a line that does not parse (cut short when the run was
    killed) is left out."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
    return records


def train_backbone(
    images: Iterable[Any] | np.ndarray,
    config: TrainConfig = TrainConfig(),
    *,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    cache_dir: str | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
    callback: Callable[[int, dict], bool | None] | None = None,
) -> TrainResult:
    """Adapt ``config.backbone`` to normal ``images`` with the proxy task ``config.task``.

    Args:
        images: the normal training images (paths, PIL images, arrays, or an (n, H, W[, C])
            stack); only normal images: the anomalies are synthetic.
        config: the run's :class:`TrainConfig`.
        out_dir: folder for ``checkpoint.safetensors`` (every ``checkpoint_every`` steps),
            ``train_log.jsonl`` and, at the end, ``backbone.safetensors``. ``None`` keeps
            everything in memory.
        resume: continue from ``out_dir``'s checkpoint (same configuration required; without
            one, a note says that training starts at step 0) — the
            remaining steps, and the log records, are exactly those of an uninterrupted run.
            Without it an existing checkpoint is an error, and so, without a checkpoint to
            continue from, is an earlier run's ``backbone.safetensors`` or
            ``train_log.jsonl``: nothing is overwritten by accident.
        cache_dir: where downloaded ImageNet weights are kept.
        devices: devices to shard the batch over (default: all local devices).
        progress: show a progress line with the running loss on stderr.
        callback: called as ``callback(step, record)`` at every log record; returning
            ``False`` stops training early (a checkpoint is written first).

    Returns:
        A :class:`TrainResult`.
    """
    out = Path(out_dir) if out_dir is not None else None
    ckpt = out / CHECKPOINT if out is not None else None
    if resume and ckpt is None:
        raise ValueError("resume=True continues the checkpoint in out_dir: give out_dir.")
    if resume and not ckpt.exists():  # a restart script may always pass it: not an error
        note = f"note: {out} holds no checkpoint to resume: training starts at step 0."
        print(note, file=sys.stderr)
    if ckpt is not None and ckpt.exists() and not resume:
        raise FileExistsError(
            f"{ckpt} exists: pass resume=True (command line: --resume) to continue that run, "
            "or choose a new output folder."
        )
    if out is not None and not ckpt.exists():  # a fresh run: nothing of an earlier one here
        earlier = [name for name in (BACKBONE, LOG) if (out / name).exists()]
        if earlier:
            raise FileExistsError(
                f"{out} holds {' and '.join(earlier)} of an earlier run, and no checkpoint to "
                "continue from: choose a new output folder (or delete them to start over)."
            )
    images = images if isinstance(images, np.ndarray) else list(images)
    check_training_memory(len(images), config)
    data = prepare_images(images, config.image_size, progress=progress)
    if len(data) < 2:
        raise ValueError(f"need at least 2 normal images to train on, got {len(data)}.")

    train_step = make_train_step(config, devices=devices)
    history: list[dict] = []
    fingerprint = _data_fingerprint(data)
    if ckpt is not None and resume and ckpt.exists():
        meta = weight_files.read_safetensors_metadata(ckpt)
        if config.task == "anatpaste" and meta.get("sampling") != _SAMPLING:
            raise ValueError(
                f"{ckpt} was written before AnatPaste drew its source images apart from the "
                "image itself: resuming would mix two ways of sampling; train into a new folder."
            )
        state, saved = load_checkpoint(ckpt)
        _check_resume(saved, config, ckpt)
        trained_on = meta.get("data", "")
        if trained_on and trained_on != fingerprint:
            raise ValueError(
                f"{ckpt} was trained on other images ({trained_on}; now {fingerprint}): "
                "resume with the same images, or train into a new folder."
            )
        pending_sums = json.loads(meta.get("pending", "[]"))
        if (out / LOG).exists():
            # Records after the checkpoint belong to steps that will be taken again, and so
            # does a line cut short by the interruption.
            history = [h for h in _log_records(out / LOG) if h["step"] <= int(state.step)]
            with open(out / LOG, "w") as f:
                f.writelines(json.dumps(h) + "\n" for h in history)
    else:
        variables, _ = load_backbone_variables(
            config.backbone,
            {"imagenet": None, "scratch": "random"}.get(config.init, config.init),
            image_size=config.image_size,
            cache_dir=cache_dir,
            seed=config.seed,
        )
        state = init_state(config, variables)
        pending_sums = []
    state = train_step.replicate(state)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    lr = learning_rate_schedule(config)
    start_step = int(state.step)
    label = f"training {config.backbone} ({config.task})"
    bar = Progress(config.steps, label, unit="steps", enabled=progress, done=start_step)
    # fetched from the device only when logged or checkpointed
    pending = [StepMetrics(loss, accuracy) for loss, accuracy in pending_sums]
    # A record's seconds count the whole run's training: a resumed run's go on from its last.
    resumed_s = history[-1].get("seconds", 0.0) if history else 0.0
    started = time.perf_counter() - (resumed_s if isinstance(resumed_s, int | float) else 0.0)
    stop = False
    saved_step = start_step
    try:
        for step in range(start_step, config.steps):
            indices = batch_indices(len(data), config.batch_size, seed=config.seed, step=step)
            others = None
            if config.task == "anatpaste":  # never an image pasted into itself
                others = data[other_indices(indices, len(data), seed=config.seed, step=step)]
            where = train_step.devices[0]
            with out_of_memory(f"training step {step + 1} ({config.backbone})", _OPTIONS, where):
                state, metrics = train_step(state, data[indices], others)
            pending.append(metrics)
            done, status = step + 1, None
            checkpoint = ckpt is not None and done % config.checkpoint_every == 0
            if checkpoint or done % config.log_every == 0 or done == config.steps:
                pending = _finite(pending, done)  # before any of it is logged or saved
            if done % config.log_every == 0 or done == config.steps:
                losses = np.array([m.loss for m in pending])
                accs = np.array([m.accuracy for m in pending])
                record = {
                    "step": done,
                    "loss": float(losses.mean()),
                    "accuracy": float(accs.mean()),
                    "learning_rate": float(lr(done - 1)),
                    "seconds": round(time.perf_counter() - started, 3),
                }
                pending.clear()
                history.append(record)
                if out is not None:
                    with open(out / LOG, "a") as f:
                        f.write(json.dumps(record) + "\n")
                status = f"loss {record['loss']:.4f}, acc {record['accuracy']:.3f}"
                if callback is not None and callback(done, record) is False:
                    stop = True
            bar.update(1, status)
            if checkpoint or (ckpt is not None and stop):
                pending = _finite(pending, done, state)
                save_checkpoint(ckpt, state, config, data=fingerprint, pending=pending)
                saved_step = done
            if stop:
                break
    except BaseException as err:  # Ctrl-C, out of memory, a diverged loss, ...
        bar.close()
        if ckpt is not None and not ckpt.exists():  # nothing to resume: its log would block
            (out / LOG).unlink(missing_ok=True)  # a rerun in this folder
        if isinstance(err, KeyboardInterrupt) and ckpt is not None:
            print(
                f"interrupted: {ckpt} holds step {saved_step}; continue with resume=True "
                "(command line: --resume)."
                if ckpt.exists()
                else "interrupted before the first checkpoint: nothing to resume; run again "
                "to start over.",
                file=sys.stderr,
            )
        raise
    bar.close()
    if ckpt is not None:
        pending = _finite(pending, int(state.step), state)
        save_checkpoint(ckpt, state, config, data=fingerprint, pending=pending)
        if int(state.step) == config.steps:
            final = history[-1] if history else {}
            save_backbone(out / BACKBONE, state, config, final=final)
    return TrainResult(backbone_variables(state), state, history, config)
