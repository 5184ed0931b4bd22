"""What every backbone network returns."""

from typing import NamedTuple

import jax


class BackboneOutput(NamedTuple):
    """One forward pass of a backbone on a batch of NHWC images.

    Attributes:
        pooled: (n, d) the embedding: global-average-pooled features of the last stage for the
            CNNs (the paper's), the final layer-normed CLS token for the ViTs (DINOv2's).
        stages: feature maps (n, h_i, w_i, c_i) at the end of each stage, shallow to deep, for
            multi-scale embeddings; ``stages[-1]`` is the map that ``pooled`` averages.
        logits: (n, num_classes) classifier output, or ``None`` when the network was built with
            ``num_classes=0``.
        taps: ``{name: (n, h, w, c)}`` the feature maps of the network's named layers, named as
            in the torch checkpoint the weights come from (``"features.13"``, ``"layer2"``,
            ``"blocks.11"``; each network's docstring and ``BackboneSpec.layers`` list them).
            They are the intermediate arrays the forward pass computes anyway (the ViTs add
            one LayerNorm per block); under ``jit`` the ones a caller does not use are dropped.
    """

    pooled: jax.Array
    stages: tuple[jax.Array, ...]
    logits: jax.Array | None
    taps: dict[str, jax.Array]
