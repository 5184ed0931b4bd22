"""ResNet and DINOv2 ViT backbones against small torch references with the same key names.

The torch modules below copy the structure of ``torchvision.models.resnet`` and of
``transformers``' ``Dinov2Model`` (same parameter names, same forward pass), so their
``state_dict()`` is what the converters read from real checkpoints. torch is a test-only oracle.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # noqa: E402  (the test extra pins the local CPU build)

from msde_jax.backbones._convert import WeightMappingError
from msde_jax.backbones.resnet import (
    ResNet,
    convert_resnet,
    resnet18,
    resnet34,
    resnet50,
)
from msde_jax.backbones.vit import (
    ViT,
    bicubic_matrix,
    convert_dinov2,
    convert_vit,
    dinov2_vitb14,
    dinov2_vits14,
)

tnn = torch.nn
F = torch.nn.functional


# --------------------------------------------------------------------------- torch references


class TorchBasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + identity)


class TorchBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + identity)


class TorchResNet(tnn.Module):
    """torchvision's ResNet, returning (pooled, stages, logits)."""

    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.fc = tnn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, tnn.Conv2d):
                tnn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = tnn.Sequential(
                tnn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                tnn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return tnn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(x)
        pooled = x.mean(dim=(2, 3))
        return pooled, stages, self.fc(pooled)


_TORCH_RESNETS = {
    18: (TorchBasicBlock, (2, 2, 2, 2)),
    34: (TorchBasicBlock, (3, 4, 6, 3)),
    50: (TorchBottleneck, (3, 4, 6, 3)),
}


class TorchSelfAttention(tnn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.query = tnn.Linear(dim, dim)
        self.key = tnn.Linear(dim, dim)
        self.value = tnn.Linear(dim, dim)

    def forward(self, x):
        n, t, d = x.shape

        def split(y):
            return y.view(n, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        attn = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
        return (attn @ v).transpose(1, 2).reshape(n, t, d)


class TorchSelfOutput(tnn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dense = tnn.Linear(dim, dim)


class TorchAttention(tnn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.attention = TorchSelfAttention(dim, heads)
        self.output = TorchSelfOutput(dim)

    def forward(self, x):
        return self.output.dense(self.attention(x))


class TorchLayerScale(tnn.Module):
    def __init__(self, dim):
        super().__init__()
        self.lambda1 = tnn.Parameter(torch.ones(dim))


class TorchMLP(tnn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = tnn.Linear(dim, hidden)
        self.fc2 = tnn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class TorchLayer(tnn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = tnn.LayerNorm(dim, eps=1e-6)
        self.attention = TorchAttention(dim, heads)
        self.layer_scale1 = TorchLayerScale(dim)
        self.norm2 = tnn.LayerNorm(dim, eps=1e-6)
        self.mlp = TorchMLP(dim, 4 * dim)
        self.layer_scale2 = TorchLayerScale(dim)

    def forward(self, x):
        x = x + self.attention(self.norm1(x)) * self.layer_scale1.lambda1
        return x + self.mlp(self.norm2(x)) * self.layer_scale2.lambda1


class TorchPatchEmbeddings(tnn.Module):
    def __init__(self, dim, patch):
        super().__init__()
        self.projection = tnn.Conv2d(3, dim, patch, patch)


class TorchEmbeddings(tnn.Module):
    def __init__(self, dim, patch, grid):
        super().__init__()
        self.patch = patch
        self.cls_token = tnn.Parameter(torch.randn(1, 1, dim))
        self.mask_token = tnn.Parameter(torch.zeros(1, dim))
        self.patch_embeddings = TorchPatchEmbeddings(dim, patch)
        self.position_embeddings = tnn.Parameter(torch.randn(1, 1 + grid * grid, dim))

    def forward(self, pixels):
        n, _, height, width = pixels.shape
        x = self.patch_embeddings.projection(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        pos = self.position_embeddings
        if x.shape[1] != pos.shape[1] or height != width:  # transformers' interpolate_pos_encoding
            d, g = pos.shape[-1], int((pos.shape[1] - 1) ** 0.5)
            grid = pos[:, 1:].reshape(1, g, g, d).permute(0, 3, 1, 2)
            size = (height // self.patch, width // self.patch)
            grid = F.interpolate(grid, size=size, mode="bicubic", align_corners=False)
            pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, d)], dim=1)
        return x + pos


class TorchEncoder(tnn.Module):
    def __init__(self, dim, depth, heads):
        super().__init__()
        self.layer = tnn.ModuleList(TorchLayer(dim, heads) for _ in range(depth))


class TorchDinov2(tnn.Module):
    """``transformers``' Dinov2Model: returns (normed CLS, normed patch tokens per block)."""

    def __init__(self, dim, depth, heads, patch=14, grid=37):
        super().__init__()
        self.patch = patch
        self.embeddings = TorchEmbeddings(dim, patch, grid)
        self.encoder = TorchEncoder(dim, depth, heads)
        self.layernorm = tnn.LayerNorm(dim, eps=1e-6)

    def forward(self, pixels):
        h, w = pixels.shape[2] // self.patch, pixels.shape[3] // self.patch
        x = self.embeddings(pixels)
        per_block = []
        for layer in self.encoder.layer:
            x = layer(x)
            normed = self.layernorm(x)
            per_block.append(normed[:, 1:].reshape(x.shape[0], h, w, -1))
        return normed[:, 0], per_block


def _randomise(model):
    """Random parameters everywhere, including BatchNorm running statistics (eval mode)."""
    gen = torch.Generator().manual_seed(0)

    def uniform(t):
        t.copy_(0.5 + torch.rand(t.shape, generator=gen))

    def normal(t):
        t.copy_(0.1 * torch.randn(t.shape, generator=gen))

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, tnn.BatchNorm2d | tnn.LayerNorm):
                uniform(m.weight)
                normal(m.bias)
            if isinstance(m, tnn.BatchNorm2d):
                normal(m.running_mean)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=gen))
            elif isinstance(m, tnn.Linear | tnn.Conv2d) and m.bias is not None:
                normal(m.bias)
            elif isinstance(m, TorchLayerScale):
                uniform(m.lambda1)
            elif isinstance(m, TorchEmbeddings):
                normal(m.cls_token)
                normal(m.position_embeddings)
    return model.eval()


def _numpy_state_dict(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _zeros_state_dict(model):
    """Right names and shapes, no memory: built on the meta device, filled by broadcasting."""
    return {
        k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in model.state_dict().items()
    }


def _assert_close(ours, ref, rtol=1e-4):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


def _shapes(tree):
    return jax.tree.map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype)), tree)


# --------------------------------------------------------------------------- structure


@pytest.mark.parametrize(
    ("depth", "constructor", "num_classes"),
    [(18, resnet18, 1000), (34, resnet34, 0), (50, resnet50, 1000)],
)
def test_resnet_converted_tree_matches_init(depth, constructor, num_classes):
    block, layers = _TORCH_RESNETS[depth]
    with torch.device("meta"):
        state_dict = _zeros_state_dict(TorchResNet(block, layers))  # fc always present
    variables = convert_resnet(state_dict, depth=depth, num_classes=num_classes)

    model = constructor(num_classes=num_classes)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    init = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.tree.structure(variables) == jax.tree.structure(init)
    assert _shapes(variables) == _shapes(init)

    out = jax.eval_shape(model.apply, init, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
    e = 4 if depth == 50 else 1
    assert out.pooled.shape == (2, 512 * e)
    assert [s.shape for s in out.stages] == [
        (2, 56, 56, 64 * e),
        (2, 28, 28, 128 * e),
        (2, 14, 14, 256 * e),
        (2, 7, 7, 512 * e),
    ]
    assert (out.logits is None) == (num_classes == 0)


@pytest.mark.parametrize(
    ("size", "constructor", "dim"), [("small", dinov2_vits14, 384), ("base", dinov2_vitb14, 768)]
)
def test_dinov2_converted_tree_matches_init(size, constructor, dim):
    heads = dim // 64
    with torch.device("meta"):
        state_dict = _zeros_state_dict(TorchDinov2(dim, 12, heads))
    assert state_dict["embeddings.position_embeddings"].shape == (1, 1 + 37 * 37, dim)
    assert "embeddings.mask_token" in state_dict
    variables = convert_dinov2(state_dict, size=size)

    model = constructor()
    init = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 518, 518, 3), jnp.float32)
    )
    assert jax.tree.structure(variables) == jax.tree.structure(init)
    assert _shapes(variables) == _shapes(init)

    # 224 px: a 16×16 grid, position embeddings interpolated from 37×37.
    out = jax.eval_shape(model.apply, init, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
    assert out.pooled.shape == (2, dim)
    assert [s.shape for s in out.stages] == [(2, 16, 16, dim)] * 4
    assert out.logits is None

    with_head = constructor(num_classes=5)
    out = jax.eval_shape(
        lambda x: with_head.apply(with_head.init(jax.random.key(0), x), x),
        jax.ShapeDtypeStruct((2, 56, 56, 3), jnp.float32),
    )
    assert out.logits.shape == (2, 5)


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_matches_torch(depth):
    torch.manual_seed(depth)
    block, layers = _TORCH_RESNETS[depth]
    reference = _randomise(TorchResNet(block, layers, num_classes=10))
    x = np.random.default_rng(depth).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        pooled, stages, logits = reference(torch.from_numpy(x))

    variables = convert_resnet(_numpy_state_dict(reference), depth=depth, num_classes=10)
    model = ResNet("bottleneck" if depth == 50 else "basic", layers, num_classes=10)
    out = jax.jit(model.apply)(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))

    _assert_close(out.pooled, pooled)
    _assert_close(out.logits, logits)
    assert len(out.stages) == 4
    for ours, ref in zip(out.stages, stages, strict=True):
        _assert_close(ours, ref.permute(0, 2, 3, 1))


def test_a_state_dict_of_torch_tensors_in_bfloat16_converts():
    # NumPy has no bfloat16 of its own: np.asarray(tensor) raised a bare TypeError.
    torch.manual_seed(0)
    block, layers = _TORCH_RESNETS[18]
    reference = _randomise(TorchResNet(block, layers, num_classes=10))
    half = {k: v.to(torch.bfloat16) for k, v in reference.state_dict().items()}
    expected = {k: v.float().numpy() for k, v in half.items()}
    got = jax.tree.leaves(convert_resnet(half, depth=18, num_classes=10))
    want = jax.tree.leaves(convert_resnet(expected, depth=18, num_classes=10))
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def _vit_pair(grid, seed=0):
    torch.manual_seed(seed)
    reference = _randomise(TorchDinov2(dim=32, depth=2, heads=2, grid=grid))
    model = ViT(32, 2, 2, pos_grid=grid, stage_blocks=(1, 2))
    variables = convert_vit(_numpy_state_dict(reference), model=model, network="tiny-dinov2")
    return reference, model, variables


@pytest.mark.parametrize(
    ("grid", "hw"),
    [(4, (56, 56)), (6, (56, 70))],  # stored grid == input grid; 6×6 → 4×5 interpolated
)
def test_vit_matches_torch(grid, hw):
    reference, model, variables = _vit_pair(grid)
    x = np.random.default_rng(1).normal(size=(2, 3, *hw)).astype(np.float32)
    with torch.no_grad():
        pooled, per_block = reference(torch.from_numpy(x))

    out = jax.jit(model.apply)(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    _assert_close(out.pooled, pooled)
    assert out.logits is None
    assert len(out.stages) == 2
    for ours, ref in zip(out.stages, per_block, strict=True):
        assert ours.shape == (2, hw[0] // 14, hw[1] // 14, 32)
        _assert_close(ours, ref)


@pytest.mark.parametrize(("n_in", "n_out"), [(37, 16), (6, 4), (6, 5), (4, 9), (37, 37), (3, 1)])
def test_bicubic_matrix_matches_torch_interpolate(n_in, n_out):
    grid = np.random.default_rng(2).normal(size=(1, 3, n_in, n_in)).astype(np.float32)
    ref = F.interpolate(
        torch.from_numpy(grid), size=(n_out, n_out), mode="bicubic", align_corners=False
    ).numpy()
    m = bicubic_matrix(n_in, n_out)
    ours = np.einsum("ia,jb,ncab->ncij", m, m, grid)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_vit_rejects_sizes_not_multiple_of_patch():
    model = ViT(32, 2, 2, pos_grid=4)
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        jax.eval_shape(
            model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 50, 56, 3), jnp.float32)
        )


# --------------------------------------------------------------------------- mismatches


@pytest.fixture(scope="module")
def resnet18_state_dict():
    with torch.device("meta"):
        return _zeros_state_dict(TorchResNet(TorchBasicBlock, (2, 2, 2, 2)))


def test_resnet_missing_key_is_named(resnet18_state_dict):
    state_dict = dict(resnet18_state_dict)
    del state_dict["layer2.0.downsample.1.running_var"]
    with pytest.raises(WeightMappingError, match=r"missing keys \(1\): layer2\.0\.downsample"):
        convert_resnet(state_dict, depth=18)


def test_resnet_extra_key_is_named(resnet18_state_dict):
    state_dict = dict(resnet18_state_dict, **{"layer5.0.conv1.weight": np.zeros((1,))})
    with pytest.raises(WeightMappingError, match=r"unexpected keys \(1\): layer5\.0\.conv1"):
        convert_resnet(state_dict, depth=18)


@pytest.mark.parametrize(
    ("key", "shape"), [("layer3.1.conv2.weight", (256, 256, 1, 1)), ("layer1.0.bn2.bias", (32,))]
)
def test_resnet_wrong_shape_is_named(resnet18_state_dict, key, shape):
    state_dict = dict(resnet18_state_dict, **{key: np.zeros(shape, np.float32)})
    with pytest.raises(WeightMappingError, match=re.escape(key) + " has shape"):
        convert_resnet(state_dict, depth=18)


def test_resnet50_weights_do_not_load_as_resnet18():
    with torch.device("meta"):
        state_dict = _zeros_state_dict(TorchResNet(TorchBottleneck, (3, 4, 6, 3)))
    with pytest.raises(WeightMappingError, match="resnet18"):
        convert_resnet(state_dict, depth=18)


def test_vit_mismatches_are_named():
    with torch.device("meta"):
        state_dict = _zeros_state_dict(TorchDinov2(dim=32, depth=2, heads=2, grid=4))
    model = ViT(32, 2, 2, pos_grid=4)

    missing = {k: v for k, v in state_dict.items() if k != "encoder.layer.1.mlp.fc2.bias"}
    with pytest.raises(WeightMappingError, match=r"missing keys \(1\): encoder\.layer\.1\.mlp"):
        convert_vit(missing, model=model)

    extra = dict(state_dict, **{"encoder.layer.2.norm1.weight": np.zeros(32, np.float32)})
    with pytest.raises(WeightMappingError, match=r"unexpected keys \(1\): encoder\.layer\.2"):
        convert_vit(extra, model=model)

    with pytest.raises(WeightMappingError, match=r"embeddings\.position_embeddings has shape"):
        convert_vit(state_dict, model=ViT(32, 2, 2, pos_grid=5))

    with pytest.raises(WeightMappingError, match="dinov2-small"):
        convert_dinov2(state_dict, size="small")
