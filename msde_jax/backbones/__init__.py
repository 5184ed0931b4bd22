"""Pretrained vision backbones in Flax and torch-free weight loading (no image reading here)."""

from msde_jax.backbones._base import BackboneOutput
from msde_jax.backbones._convert import WeightMappingError
from msde_jax.backbones.weights_io import (
    UnsafeCheckpointError,
    download,
    load_safetensors,
    load_state_dict,
    load_torch_state_dict,
)

__all__ = [
    "BackboneOutput",
    "UnsafeCheckpointError",
    "WeightMappingError",
    "download",
    "load_safetensors",
    "load_state_dict",
    "load_torch_state_dict",
]
