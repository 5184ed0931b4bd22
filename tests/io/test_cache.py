"""The on-disk embedding cache: hits skip the backbone, changes re-embed only what changed."""

import json

import numpy as np
import pytest
from PIL import Image

from msde_jax.io.cache import embed_cached, image_hash
from msde_jax.io.images import READER_VERSION


class StubEmbedder:
    """Embeds an image as [mean, max, n_pixels] and records every call."""

    def __init__(self, tag: str = "stub"):
        self.tag = tag
        self.calls: list[int] = []

    def config(self):
        return {"backbone": self.tag, "weights": "none"}

    def embed(self, items):
        items = list(items)
        self.calls.append(len(items))
        out = []
        for item in items:
            arr = np.asarray(Image.open(item)) if isinstance(item, str) else np.asarray(item)
            arr = arr.astype(np.float32)
            out.append([arr.mean(), arr.max(), arr.size])
        return np.asarray(out, np.float32)


@pytest.fixture
def arrays(rng):
    return [rng.integers(0, 255, (6, 6), dtype=np.uint8) for _ in range(5)]


def test_second_call_embeds_nothing(tmp_path, arrays):
    stub = StubEmbedder()
    first = embed_cached(stub, arrays, tmp_path / "cache", progress=False)
    assert first.shape == (5, 3)
    assert first.dtype == np.float32
    assert stub.calls == [5]
    second = embed_cached(stub, arrays, tmp_path / "cache", progress=False)
    assert stub.calls == [5]
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, StubEmbedder().embed(arrays))
    (folder,) = (tmp_path / "cache").iterdir()
    assert json.loads((folder / "config.json").read_text()) == {
        **stub.config(),
        "reader": READER_VERSION,
    }
    assert len(list(folder.glob("*.npy"))) == 5
    assert not list(folder.glob(".tmp-*"))


def test_changed_image_and_order(tmp_path, arrays, capsys):
    stub = StubEmbedder()
    embed_cached(stub, arrays[:3], tmp_path, progress=False)
    changed = [arrays[4], arrays[0].copy(), arrays[1], arrays[2]]
    changed[1][0, 0] ^= 1  # one pixel differs: a new cache entry
    out = embed_cached(stub, changed, tmp_path, progress=True)
    assert stub.calls == [3, 2]  # only arrays[4] and the edited image
    np.testing.assert_array_equal(out, StubEmbedder().embed(changed))
    assert "2/4 cached, 2 to embed" in capsys.readouterr().err


def test_config_change_reembeds(tmp_path, arrays):
    a, b = StubEmbedder("a"), StubEmbedder("b")
    embed_cached(a, arrays, tmp_path, progress=False)
    embed_cached(b, arrays, tmp_path, progress=False)
    embed_cached(a, arrays, tmp_path, progress=False)
    assert a.calls == [5]
    assert b.calls == [5]
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


def test_a_new_reader_version_embeds_files_again(tmp_path, monkeypatch):
    """Entries cached when the readers read a file otherwise are not reused."""
    import msde_jax.io.cache as cache

    stub = StubEmbedder()
    path = tmp_path / "img.png"
    Image.fromarray(np.full((4, 4), 10, np.uint8)).save(path)
    embed_cached(stub, [str(path)], tmp_path / "cache", progress=False)
    embed_cached(stub, [str(path)], tmp_path / "cache", progress=False)
    assert stub.calls == [1]
    monkeypatch.setattr(cache, "READER_VERSION", cache.READER_VERSION + 1)
    embed_cached(stub, [str(path)], tmp_path / "cache", progress=False)
    assert stub.calls == [1, 1]
    configs = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/config.json")]
    assert sorted(c["reader"] for c in configs) == [READER_VERSION, READER_VERSION + 1]


def test_files_keyed_by_content(tmp_path):
    stub = StubEmbedder()
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((4, 4), 10 * i, np.uint8)).save(p)
        paths.append(str(p))
    embed_cached(stub, paths, tmp_path / "cache", progress=False)
    moved = tmp_path / "renamed.png"
    (tmp_path / "img0.png").rename(moved)
    paths[0] = str(moved)
    embed_cached(stub, paths, tmp_path / "cache", progress=False)
    assert stub.calls == [3]  # renaming keeps the entry
    Image.fromarray(np.full((4, 4), 99, np.uint8)).save(paths[2])
    out = embed_cached(stub, paths, tmp_path / "cache", progress=False)
    assert stub.calls == [3, 1]
    assert out[2, 0] == pytest.approx(99.0)


def test_a_file_rewritten_while_embedding_is_not_cached_under_its_old_content(tmp_path):
    """A file rewritten between its hashing and its reading was cached under the old bytes'
    key: every later run given the old bytes got the new bytes' embedding."""
    path = tmp_path / "a.png"
    Image.fromarray(np.full((4, 4), 79, np.uint8)).save(path)

    class Rewriting(StubEmbedder):
        def embed(self, items):
            Image.fromarray(np.full((4, 4), 78, np.uint8)).save(path)  # a sync, mid-run
            return super().embed(items)

    out = embed_cached(Rewriting(), [str(path)], tmp_path / "cache", progress=False)
    assert out[0, 0] == pytest.approx(78.0)  # what was read
    Image.fromarray(np.full((4, 4), 79, np.uint8)).save(path)  # the old bytes again
    stub = StubEmbedder()
    out = embed_cached(stub, [str(path)], tmp_path / "cache", progress=False)
    assert stub.calls == [1]  # not served the other bytes' embedding
    assert out[0, 0] == pytest.approx(79.0)


def test_hash_depends_on_dtype_and_shape():
    x = np.zeros((4, 4), np.uint8)
    assert image_hash(x) != image_hash(x.astype(np.uint16))
    assert image_hash(x) != image_hash(x.reshape(2, 8))
    assert image_hash(x, "cfg1") != image_hash(x, "cfg2")
    assert image_hash(x) == image_hash(np.zeros((4, 4), np.uint8))


def test_hash_of_a_palette_image_depends_on_its_palette():
    """A palette image's pixel bytes are indices: two images with the same indices and other
    palettes (or transparency) are other images and must not share a cache entry."""
    from PIL import Image

    def paletted(rgb, transparency=None):
        img = Image.new("P", (4, 4), 0)
        img.putpalette(list(rgb) * 256)
        if transparency is not None:
            img.info["transparency"] = transparency
        return img

    black, white = paletted((0, 0, 0)), paletted((255, 255, 255))
    assert black.tobytes() == white.tobytes()
    assert image_hash(black) != image_hash(white)
    assert image_hash(black) != image_hash(paletted((0, 0, 0), transparency=0))
    assert image_hash(black) == image_hash(paletted((0, 0, 0)))


def test_empty_and_duplicates(tmp_path, arrays):
    stub = StubEmbedder()
    assert embed_cached(stub, [], tmp_path, progress=False).shape[0] == 0
    out = embed_cached(stub, [arrays[0], arrays[0]], tmp_path, progress=False)
    np.testing.assert_array_equal(out[0], out[1])


def test_real_embedder(tmp_path, arrays):
    from msde_jax.embedder import Embedder

    emb = Embedder("resnet18", weights="random", image_size=32, batch_size=4, progress=False)
    direct = emb.embed(arrays[:3])
    cached = embed_cached(emb, arrays[:3], tmp_path, progress=False)
    np.testing.assert_allclose(cached, direct, rtol=1e-5, atol=1e-6)
    calls = []
    original = emb.embed
    emb.embed = lambda items: calls.append(len(items)) or original(items)
    again = embed_cached(emb, arrays[:3] + arrays[3:4], tmp_path, progress=False)
    assert calls == [1]
    np.testing.assert_array_equal(again[:3], cached)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert json.loads((folder / "config.json").read_text())["backbone"] == "resnet18"


class PatchStub:
    """Embeds an image as a (g, g, c) map (patch features) and records every call."""

    def __init__(self, grid: int = 3, channels: int = 2, tag: str = "patches"):
        self.grid, self.channels, self.tag = grid, channels, tag
        self.calls: list[int] = []

    @property
    def output_shape(self):
        return (self.grid, self.grid, self.channels)

    def config(self):
        return {"backbone": self.tag, "grid": self.grid}

    def embed(self, items):
        items = list(items)
        self.calls.append(len(items))
        out = [
            np.full(self.output_shape, np.asarray(item, np.float32).mean(), np.float32)
            + np.arange(self.channels, dtype=np.float32)
            for item in items
        ]
        return np.stack(out) if out else np.zeros((0, *self.output_shape), np.float32)


def test_patch_shaped_embeddings_round_trip(tmp_path, arrays):
    stub = PatchStub()
    first = embed_cached(stub, arrays[:3], tmp_path, progress=False)
    assert first.shape == (3, 3, 3, 2)
    assert first.dtype == np.float32
    out = embed_cached(stub, arrays[::-1], tmp_path, progress=False)
    assert stub.calls == [3, 2]  # only the two new images
    assert out.shape == (5, 3, 3, 2)
    np.testing.assert_array_equal(out, PatchStub().embed(arrays[::-1]))
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert {np.load(p).shape for p in folder.glob("*.npy")} == {(3, 3, 2)}
    assert embed_cached(stub, [], tmp_path, progress=False).shape == (0, 3, 3, 2)


def test_entries_of_another_shape_than_the_embedder_gives_are_embedded_again(tmp_path, arrays):
    stub = PatchStub()
    embed_cached(stub, arrays[:2], tmp_path, progress=False)
    stub.grid = 4  # same config, another output_shape: the cached entries are stale
    stub.config = lambda: {"backbone": "patches", "grid": 3}
    out = embed_cached(stub, arrays[:3], tmp_path, progress=False)
    assert stub.calls == [2, 3]
    assert out.shape == (3, 4, 4, 2)


def test_embeddings_of_different_shapes_raise(tmp_path, arrays):
    class ShapeOfTheCall(StubEmbedder):
        """No output_shape, and each call's embeddings are as long as the call: broken."""

        def embed(self, items):
            self.calls.append(len(items))
            return np.zeros((len(items), len(items)), np.float32)

    stub = ShapeOfTheCall()
    embed_cached(stub, arrays[:2], tmp_path, progress=False)
    with pytest.raises(ValueError, match="different shapes"):
        embed_cached(stub, arrays[:3], tmp_path, progress=False)
    assert stub.calls == [2, 1, 2]  # the cached ones disagreed with the new one: embedded again


def test_embedder_returning_too_few_rows_raises(tmp_path, arrays):
    class Short(PatchStub):
        def embed(self, items):
            return super().embed(items)[:-1]

    with pytest.raises(ValueError, match="one embedding per image"):
        embed_cached(Short(), arrays[:3], tmp_path, progress=False)


class ShapedStub(StubEmbedder):
    output_shape = (3,)


def _save_npz(path):
    with open(path, "wb") as f:
        np.savez(f, x=np.zeros(3, np.float32))


def _lying_header(path):
    # An .npy whose header claims 3.6 TiB over 12 bytes of data (issue 24).
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)}
        )
        f.write(np.zeros(3, np.float32).tobytes())


def _larger_than_the_embedder_writes(path):
    # An honest header, but 1000 times the entry this embedder writes: refused by its size.
    np.save(path, np.zeros(3000, np.float32))


DAMAGES = {
    "lying-header": _lying_header,
    "larger": _larger_than_the_embedder_writes,
    "empty": b"",
    "garbage": b"garbage, not an array",
    "truncated": lambda data: data[: len(data) // 2],
    "wrong-shape": lambda path: np.save(path, np.zeros(5, np.float32)),
    "float64": lambda path: np.save(path, np.zeros(3, np.float64)),
    "int": lambda path: np.save(path, np.zeros(3, np.int64)),
    "text": lambda path: np.save(path, np.array(["a", "b", "c"])),
    "nan": lambda path: np.save(path, np.full(3, np.nan, np.float32)),
    "object": lambda path: np.save(path, np.array([{}], dtype=object), allow_pickle=True),
    "npz": _save_npz,
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_entry_is_recomputed_not_trusted(tmp_path, arrays, damage):
    stub = ShapedStub()
    first = embed_cached(stub, arrays, tmp_path / "cache", progress=False)
    (folder,) = (tmp_path / "cache").iterdir()
    entry = sorted(folder.glob("*.npy"))[0]
    how = DAMAGES[damage]
    if isinstance(how, bytes):
        entry.write_bytes(how)
    elif damage == "truncated":
        entry.write_bytes(how(entry.read_bytes()))
    else:
        how(entry)
    again = embed_cached(stub, arrays, tmp_path / "cache", progress=False)
    assert stub.calls == [5, 1]  # only the damaged one is embedded again
    np.testing.assert_array_equal(again, first)
    assert again.dtype == np.float32
    rewritten = np.load(entry)
    assert rewritten.shape == (3,)
    assert rewritten.dtype == np.float32


def test_a_lying_entry_is_recomputed_without_an_output_shape(tmp_path, arrays):
    stub = StubEmbedder()  # no output_shape: only the file's own claims and the bound apply
    first = embed_cached(stub, arrays, tmp_path / "cache", progress=False)
    (folder,) = (tmp_path / "cache").iterdir()
    _lying_header(sorted(folder.glob("*.npy"))[0])
    again = embed_cached(stub, arrays, tmp_path / "cache", progress=False)
    assert stub.calls == [5, 1]
    np.testing.assert_array_equal(again, first)


def test_a_cache_that_cannot_be_written_still_returns_the_embeddings(tmp_path, arrays, monkeypatch):
    """A read-only or full cache is an optimisation lost, not the embeddings: it is read as far
    as it goes, warned about once, and every embedding is returned."""
    from msde_jax.io import cache

    stub = StubEmbedder()
    embed_cached(stub, arrays[:2], tmp_path, progress=False)
    tries = []

    def refused(path, data, **kwargs):
        tries.append(path)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache, "atomic_write", refused)
    with pytest.warns(
        RuntimeWarning, match="cannot be written .*Permission denied.*not cached"
    ) as w:
        out = embed_cached(stub, arrays, tmp_path, progress=False)
    assert w[0].filename == __file__  # said where embed_cached was called
    np.testing.assert_array_equal(out, StubEmbedder().embed(arrays))
    assert stub.calls == [2, 3]  # the two cached images were read, not embedded again
    assert len(tries) == 1  # after the first refusal nothing more is tried
    # A cache folder that cannot be made (a file in the way) is no error either.
    (tmp_path / "file").write_text("x")
    monkeypatch.undo()
    with pytest.warns(RuntimeWarning, match="cannot be written") as w:
        out = embed_cached(stub, arrays, tmp_path / "file" / "cache", progress=False)
    assert w[0].filename == __file__
    np.testing.assert_array_equal(out, StubEmbedder().embed(arrays))


def test_the_key_follows_the_weights_fingerprint_not_their_path():
    """The same weights by another path (relative, absolute, the file moved) embed the same,
    and the command line now records an absolute path: one cache folder for both."""
    from msde_jax.io.cache import config_key

    config = {"backbone": "resnet18", "weights": "w.safetensors", "weights_sha256": "ab12"}
    moved = {**config, "weights": "/elsewhere/w.safetensors"}
    assert config_key(moved) == config_key(config)
    assert config_key({**config, "weights_sha256": "cd34"}) != config_key(config)
    unknown = {"backbone": "resnet18", "weights": "a"}  # no fingerprint: the path decides
    assert config_key(unknown) != config_key({**unknown, "weights": "b"})


def test_a_missing_file_or_a_folder_is_an_image_read_error_with_or_without_the_cache(tmp_path):
    """With a cache, hashing the input raised a bare FileNotFoundError / IsADirectoryError
    where reading it without one raises ImageReadError (helper review): the same error now."""
    from msde_jax.io.images import ImageReadError

    (tmp_path / "folder").mkdir()
    for item, message in ((tmp_path / "missing.png", "no such file"), (tmp_path / "folder", "")):
        with pytest.raises(ImageReadError, match=f"{item.name}: {message}"):
            image_hash(str(item))
        with pytest.raises(ImageReadError, match=f"{item.name}: {message}"):
            embed_cached(StubEmbedder(), [str(item)], cache_dir=tmp_path / "cache")
