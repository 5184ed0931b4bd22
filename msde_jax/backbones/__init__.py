"""Pretrained vision backbones in Flax and torch-free weight loading (no image reading here).

- :mod:`~msde_jax.backbones.registry`: the backbones by name (:data:`BACKBONES`,
  :func:`backbone_spec`) and where their ImageNet weights come from;
- :mod:`~msde_jax.backbones.taps`: features from a backbone's named layers (pooled per layer,
  PatchCore's aggregated patch features on a fixed grid);
- :mod:`~msde_jax.backbones.variables`: a backbone's Flax variables from any weights;
- :mod:`~msde_jax.backbones.torch_pickle`: ``torch.save`` files read without torch or pickle's
  arbitrary code;
- :mod:`~msde_jax.backbones.weight_files`: safetensors, any weights file, Flax variables files;
- :mod:`~msde_jax.backbones.hub`: downloads (torch hub, Hugging Face hub) and their cache;
- ``efficientnet``, ``mobilenet``, ``resnet``, ``vit``: the networks and their weight mappings.
"""

from msde_jax.backbones._base import BackboneOutput
from msde_jax.backbones._convert import WeightMappingError
from msde_jax.backbones.hub import (
    DownloadError,
    default_cache_dir,
    download,
    hf_hub_download,
    hf_hub_url,
    load_state_dict_from_url,
    torch_hub_url,
)
from msde_jax.backbones.registry import BACKBONES, BackboneSpec, backbone_spec
from msde_jax.backbones.torch_pickle import UnsafeCheckpointError, load_torch_state_dict
from msde_jax.backbones.variables import load_backbone_variables, random_variables
from msde_jax.backbones.weight_files import (
    load_safetensors,
    load_state_dict,
    load_variables,
    save_variables,
)

__all__ = [
    "BACKBONES",
    "BackboneOutput",
    "BackboneSpec",
    "DownloadError",
    "UnsafeCheckpointError",
    "WeightMappingError",
    "backbone_spec",
    "default_cache_dir",
    "download",
    "hf_hub_download",
    "hf_hub_url",
    "load_backbone_variables",
    "load_safetensors",
    "load_state_dict",
    "load_state_dict_from_url",
    "load_torch_state_dict",
    "load_variables",
    "random_variables",
    "save_variables",
    "torch_hub_url",
]
