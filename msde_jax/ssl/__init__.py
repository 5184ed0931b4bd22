"""Self-supervised adaptation of a backbone on normal images (AnatPaste, CutPaste), in JAX.

``train_backbone(normal_images, TrainConfig(backbone="resnet18"), out_dir="run")`` trains the
backbone to tell clean normal images from ones with synthetic anomalies pasted in, and writes
``run/backbone.safetensors`` for ``Embedder("resnet18", weights="run/backbone.safetensors")``.
"""

from msde_jax.ssl.augment import (
    TASKS,
    Augmented,
    anatomy_mask,
    anatpaste,
    cutpaste,
    cutpaste_scar,
    make_views,
)
from msde_jax.ssl.config import TrainConfig
from msde_jax.ssl.train import (
    TrainResult,
    TrainState,
    TrainStep,
    load_checkpoint,
    make_train_step,
    save_backbone,
    save_checkpoint,
    train_backbone,
)

__all__ = [
    "TASKS",
    "Augmented",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainStep",
    "anatomy_mask",
    "anatpaste",
    "cutpaste",
    "cutpaste_scar",
    "load_checkpoint",
    "make_train_step",
    "make_views",
    "save_backbone",
    "save_checkpoint",
    "train_backbone",
]
