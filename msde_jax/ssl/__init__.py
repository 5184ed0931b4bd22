"""Self-supervised adaptation of a backbone on normal images (AnatPaste, CutPaste), in JAX.

``train_backbone(normal_images, TrainConfig(backbone="resnet18"), out_dir="run")`` trains the
backbone to tell clean normal images from ones with synthetic anomalies pasted in, and writes
``run/backbone.safetensors`` for ``Embedder("resnet18", weights="run/backbone.safetensors")``.

``synthesize(key, held_out_normals, n)`` makes validation anomalies (local pastes and global
intensity, texture, blur, shape and mixture changes) with masks, for choosing a detector's
configuration without abnormal labels (``msde_jax.ssl.synthetic``).
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
from msde_jax.ssl.synthetic import (
    GLOBAL_KINDS,
    KINDS,
    LOCAL_KINDS,
    SyntheticSet,
    body_mask,
    elastic_deform,
    gamma_contrast,
    gaussian_blur,
    mix_normals,
    opacity,
    synthesize,
    synthesize_one,
    texture_noise,
)
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
    "GLOBAL_KINDS",
    "KINDS",
    "LOCAL_KINDS",
    "TASKS",
    "Augmented",
    "SyntheticSet",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainStep",
    "anatomy_mask",
    "anatpaste",
    "body_mask",
    "cutpaste",
    "cutpaste_scar",
    "elastic_deform",
    "gamma_contrast",
    "gaussian_blur",
    "load_checkpoint",
    "make_train_step",
    "make_views",
    "mix_normals",
    "opacity",
    "save_backbone",
    "save_checkpoint",
    "synthesize",
    "synthesize_one",
    "texture_noise",
    "train_backbone",
]
