"""The configuration of a self-supervised adaptation run: :class:`TrainConfig`, whether
it fits in memory (:func:`check_training_memory`), and the training set as it is held there
(:func:`prepare_images`)."""

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from msde_jax._memory import Lower, check_memory
from msde_jax._progress import Progress
from msde_jax.backbones.registry import BACKBONES, backbone_spec
from msde_jax.io import images as _images
from msde_jax.ssl.augment import ANATOMY, TASKS

__all__ = ["OPTIMIZERS", "SCHEDULES", "TrainConfig", "check_training_memory", "prepare_images"]

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (stored in checkpoints and the exported file).

    The defaults suit hundreds to thousands of normal images on one accelerator: fine-tune the
    ImageNet weights with AdamW at a small learning rate, linear warm-up then cosine decay.

    Attributes:
        backbone: one of ``msde_jax.backbones.BACKBONES``.
        task: proxy task, ``"anatpaste"`` (clean vs anatomy-masked paste from another image) or
            ``"cutpaste"`` (clean vs patch vs scar).
        anatomy: where AnatPaste pastes: ``"bright"`` (above the Otsu threshold: tissue on a
            dark background, e.g. brain MRI) or ``"dark"`` (below it: the lung fields of chest
            radiographs, as the AnatPaste reference code does).
        init: ``"imagenet"`` (the backbone's pretrained weights), ``"scratch"`` (seeded He
            initialisation), or a path to weights :class:`~msde_jax.Embedder` can read (kept
            as a string).
        image_size: training resolution (images are resized to image_size²).
        batch_size: clean images per step (each step sees ``batch_size × classes`` views);
            must be a multiple of the number of devices.
        steps: optimisation steps.
        learning_rate: peak learning rate.
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum 0.9, as CutPaste trained).
        weight_decay: decoupled weight decay (AdamW) or L2 (SGD).
        warmup_steps: linear warm-up from 0 to ``learning_rate`` (half of ``steps`` where
            it is not below ``steps``).
        schedule: ``"cosine"`` (decay to 0 at ``steps``) or ``"constant"``.
        head_hidden: width of the head's hidden layer (0: a linear head).
        seed: seeds the head, the augmentations and the image order.
        checkpoint_every: write a checkpoint every this many steps (and at the end).
        log_every: record loss and accuracy every this many steps.
    """

    backbone: str = "resnet18"
    task: str = "anatpaste"
    anatomy: str = "bright"
    init: str = "imagenet"
    image_size: int = 224
    batch_size: int = 32
    steps: int = 1000
    learning_rate: float = 1e-4
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    schedule: str = "cosine"
    head_hidden: int = 512
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10

    def __post_init__(self):
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        # Plain Python values, as the checkpoints' JSON holds them (a NumPy integer or a Path
        # would fail there, at the first checkpoint, after the steps before it were trained).
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type is int:
                ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
                check(ok, f"{field.name} must be an integer, got {value!r}.")
                value = int(value)
            elif field.type is float:
                ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
                check(ok, f"{field.name} must be a number, got {value!r}.")
                value = float(value)
            elif field.name == "init" and isinstance(value, os.PathLike):
                value = os.fspath(value)
            else:
                check(isinstance(value, str), f"{field.name} must be a string, got {value!r}.")
            object.__setattr__(self, field.name, value)

        check(self.backbone in BACKBONES, f"backbone must be one of {', '.join(BACKBONES)}.")
        check(self.task in TASKS, f"task must be one of {', '.join(TASKS)}, got {self.task!r}.")
        check(self.anatomy in ANATOMY, f"anatomy must be one of {', '.join(ANATOMY)}.")
        check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}.")
        check(self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}.")
        patch = backbone_spec(self.backbone).patch
        check(
            self.image_size >= 16 and self.image_size % patch == 0,
            f"image_size={self.image_size} does not fit {self.backbone}: use at least 16"
            + (f" and a multiple of {patch}." if patch > 1 else "."),
        )
        for name in ("batch_size", "steps", "checkpoint_every", "log_every"):
            check(getattr(self, name) >= 1, f"{name} must be at least 1.")
        for name in ("warmup_steps", "head_hidden"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)!r}.")
        check(
            0 < self.learning_rate < math.inf,
            f"learning_rate must be a finite number > 0, got {self.learning_rate!r}.",
        )
        check(
            0 <= self.weight_decay < math.inf,
            f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}.",
        )
        check(  # jax.random.key keeps a seed's low 32 bits only
            0 <= self.seed < 2**32, f"seed must be an integer in [0, 2**32), got {self.seed!r}."
        )

    @property
    def num_classes(self) -> int:
        return TASKS[self.task]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls(**json.loads(text))


def check_training_memory(n_images: int, config: TrainConfig) -> None:
    """Refuse, before any image is read, a run whose host buffers exceed the memory free
    (``msde_jax._memory.check_memory``): the (n, S, S, 3) uint8 training images, three float
    copies of the image being resized and, as a lower bound of what a step holds, its views of
    the batch in float32, two per image for AnatPaste and three for CutPaste (the network's own
    buffers come on top; running out of them ends in one error naming the step,
    :func:`msde_jax._memory.out_of_memory`).

    Raises:
        MemoryLimitError: a ``ValueError`` saying how far to lower ``image_size``, the number
            of images (``--limit``) or ``batch_size``.
    """
    image = config.image_size**2 * 3
    needs = {
        "training images (uint8)": n_images * image,
        "image being resized": 3 * image * 4,
        "views of a batch": config.num_classes * config.batch_size * image * 4,
    }
    patch = backbone_spec(config.backbone).patch  # a ViT's sizes are multiples of its patch
    lower = [  # each with the parts it sizes
        Lower("image_size (--image-size)", config.image_size, 2, -(-16 // patch) * patch,
              None, patch),
        Lower("the number of images (--limit)", n_images, 1, 2, ("training images (uint8)",)),
        Lower("batch_size (--batch-size)", config.batch_size, scales=("views of a batch",)),
    ]  # fmt: skip
    step = f"training on {n_images} images at {config.image_size} px"
    check_memory(step, needs, lower=lower)


def prepare_images(
    images: Iterable[Any] | np.ndarray, image_size: int, *, progress: bool = True
) -> np.ndarray:
    """Read and resize images (paths, PIL images or arrays) to (n, S, S, 3) uint8 RGB, the
    compact form a training set is held in memory."""
    items = list(images)
    out = np.empty((len(items), image_size, image_size, 3), np.uint8)
    bar = Progress(len(items), "reading images", enabled=progress and len(items) > 256)
    for i, item in enumerate(items):
        name = os.fspath(item) if isinstance(item, str | os.PathLike) else f"image {i}"
        x = _images.prepare(item, image_size, name=name)
        out[i] = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        bar.update(1)
    bar.close()
    return out
