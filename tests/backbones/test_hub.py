"""Downloads over file:// URLs: the cache, hash checks, no partial files, hub URLs and layouts.

torch is a test-only reference here: it writes the checkpoints that are downloaded.
"""

import hashlib

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from msde_jax.backbones.hub import (
    DownloadError,
    default_cache_dir,
    download,
    hf_hub_download,
    hf_hub_url,
    load_state_dict_from_url,
    torch_hub_url,
)
from msde_jax.backbones.weight_files import load_state_dict

# ------------------------------------------------------------------------------ downloads


def _torchvision_style_file(directory, sd):
    """Save ``sd`` as ``tiny-<sha256[:8]>.pth``, like torchvision's hub file names."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "tiny.pth"
    torch.save(sd, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return tmp.rename(directory / f"tiny-{digest[:8]}.pth")


def test_download_file_url_and_cache(tmp_path, capsys):
    source = _torchvision_style_file(tmp_path / "src", {"w": torch.ones(3)})
    cache = tmp_path / "cache"
    first = download(source.as_uri(), cache_dir=cache)
    assert first == cache / source.name
    assert first.read_bytes() == source.read_bytes()
    assert "downloading" in capsys.readouterr().err
    source.unlink()  # a second download would now fail: the cache must answer
    assert download(source.as_uri(), cache_dir=cache, progress=False) == first
    assert sorted(p.name for p in cache.iterdir()) == [source.name]  # no temp files left


def test_download_hash_mismatch_leaves_nothing(tmp_path):
    source = tmp_path / "src" / "tiny-deadbeef.pth"
    source.parent.mkdir()
    torch.save({"w": torch.ones(3)}, source)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="prefix deadbeef.*if this name does not, pass check_"):
        download(source.as_uri(), cache_dir=cache, progress=False)
    assert list(cache.iterdir()) == []
    with pytest.raises(DownloadError, match="sha256"):
        download(source.as_uri(), cache_dir=cache, sha256_prefix="0000", progress=False)
    # Opting out of the name check, like torch.hub's check_hash=False.
    path = download(source.as_uri(), cache_dir=cache, check_hash=False, progress=False)
    assert path.read_bytes() == source.read_bytes()


def test_two_urls_of_one_file_name_are_two_cached_files(tmp_path):
    urls = []
    for org, value in (("org1", 1.0), ("org2", 2.0)):
        (tmp_path / org).mkdir()
        save_file({"w": np.full(2, value, np.float32)}, str(tmp_path / org / "model.safetensors"))
        urls.append((tmp_path / org / "model.safetensors").as_uri())
    cache = tmp_path / "cache"
    first, second = (download(url, cache_dir=cache, progress=False) for url in urls)
    assert first != second
    assert first.name.endswith("_model.safetensors")
    assert load_state_dict(second)["w"].tolist() == [2.0, 2.0]  # not the first URL's file
    assert download(urls[0], cache_dir=cache, progress=False) == first


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/resnet18-f37072fd.pth", "file:///nonexistent/dir/x.pth"]
)
def test_download_unreachable(tmp_path, url):
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="could not download .*pass the local path"):
        download(url, cache_dir=cache, progress=False)
    assert list(cache.iterdir()) == []


def test_load_state_dict_from_url(tmp_path, monkeypatch):
    source = _torchvision_style_file(tmp_path / "src", {"w": torch.arange(4.0)})
    monkeypatch.setenv("MSDE_JAX_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    loaded = load_state_dict_from_url(source.as_uri(), progress=False)
    np.testing.assert_array_equal(loaded["w"], np.arange(4.0, dtype=np.float32))
    assert (tmp_path / "env-cache" / source.name).is_file()


def test_hub_urls(monkeypatch):
    monkeypatch.delenv("MSDE_JAX_HF_ENDPOINT", raising=False)
    assert torch_hub_url("resnet18-f37072fd.pth") == (
        "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    )
    assert hf_hub_url("timm/resnet18.a1_in1k", "model.safetensors") == (
        "https://huggingface.co/timm/resnet18.a1_in1k/resolve/main/model.safetensors"
    )
    monkeypatch.setenv("MSDE_JAX_HF_ENDPOINT", "https://mirror.example/")
    assert (
        hf_hub_url("a/b", "f.bin", revision="v1") == "https://mirror.example/a/b/resolve/v1/f.bin"
    )


def test_hf_hub_download_from_local_mirror(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    target = mirror / "org" / "net" / "resolve" / "main" / "weights" / "model.safetensors"
    target.parent.mkdir(parents=True)
    save_file({"w": np.ones((2, 2), np.float32)}, str(target))
    monkeypatch.setenv("MSDE_JAX_HF_ENDPOINT", mirror.as_uri())
    path = hf_hub_download(
        "org/net", "weights/model.safetensors", cache_dir=tmp_path / "cache", progress=False
    )
    assert path == tmp_path / "cache" / "huggingface" / "org--net" / "main" / "weights" / (
        "model.safetensors"
    )
    np.testing.assert_array_equal(load_state_dict(path)["w"], np.ones((2, 2), np.float32))


def test_hf_hub_download_cache_name(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    target = mirror / "org" / "net" / "resolve" / "main" / "model.safetensors"
    target.parent.mkdir(parents=True)
    save_file({"w": np.ones(3, np.float32)}, str(target))
    monkeypatch.setenv("MSDE_JAX_HF_ENDPOINT", mirror.as_uri())
    cache = tmp_path / "cache"
    path = hf_hub_download(
        "org/net", "model.safetensors", cache_dir=cache, cache_name="org--net--model.safetensors"
    )
    assert path == cache / "org--net--model.safetensors"
    assert path.read_bytes() == target.read_bytes()


def test_dinov2_default_weights_keep_their_cache_name(tmp_path, monkeypatch):
    """The Embedder's DINOv2 weights are cached as <cache>/<org>--<name>--<file>."""
    from msde_jax.backbones.registry import backbone_spec

    mirror = tmp_path / "mirror"
    target = mirror / "facebook" / "dinov2-small" / "resolve" / "main" / "model.safetensors"
    target.parent.mkdir(parents=True)
    save_file({"w": np.ones(3, np.float32)}, str(target))
    monkeypatch.setenv("MSDE_JAX_HF_ENDPOINT", mirror.as_uri())
    cache = tmp_path / "cache"
    path = backbone_spec("dinov2_vits14").default_weights(str(cache))
    assert path == str(cache / "facebook--dinov2-small--model.safetensors")
    target.unlink()  # the cache answers from now on
    assert backbone_spec("dinov2_vits14").default_weights(str(cache)) == path
