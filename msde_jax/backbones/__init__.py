"""Pretrained vision backbones in Flax, torch-free weight loading, and the batched Embedder."""

from msde_jax.backbones._base import BackboneOutput
from msde_jax.backbones._convert import WeightMappingError
from msde_jax.backbones.embedder import BACKBONES, Embedder, backbone_spec
from msde_jax.backbones.images import ImageReadError
from msde_jax.backbones.weights_io import (
    UnsafeCheckpointError,
    download,
    load_safetensors,
    load_state_dict,
    load_torch_state_dict,
)

__all__ = [
    "BACKBONES",
    "BackboneOutput",
    "Embedder",
    "ImageReadError",
    "UnsafeCheckpointError",
    "WeightMappingError",
    "backbone_spec",
    "download",
    "load_safetensors",
    "load_state_dict",
    "load_torch_state_dict",
]
