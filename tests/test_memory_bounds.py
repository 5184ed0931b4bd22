"""No input can exhaust memory (issue 24): sizes are checked against the data and the machine
before anything is allocated, and running out of memory anyway ends in one clear error.

- Crafted model and dataset files whose headers claim far more than they store end, through
  the command line, in one ``error:`` line naming the file and the array, with exit status 2,
  in a subprocess whose address space is limited (``RLIMIT_AS``, 3 GiB: measured, the
  ``score`` and ``evaluate`` paths peak at ~0.5 GiB of address space and ``fit``, with XLA's
  CPU client up, at ~1.6 GiB), so that trying to allocate a claim would fail there.
- Options that size work (image size, batch size, grid, bank size, map side, number of
  images) are checked against the memory free, with advice on how far to lower them.
- An XLA ``RESOURCE_EXHAUSTED`` or a ``MemoryError`` inside embedding, fitting, scoring or a
  training step becomes one error naming the step and the options to lower (simulated: CI
  cannot run out of device memory on purpose).
- Garbage in JAX's persistent compilation cache does not make a jitted function fail.
"""

import functools
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import types
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import msde_jax
from msde_jax import MSDEDetector, PatchBankDetector
from msde_jax import _memory as mem
from msde_jax.cli import main

GiB = 1 << 30
# Address space of the subprocesses; see the module docstring for what they were measured to use.
ADDRESS_SPACE = 3 * GiB
EXHAUSTED = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 34359738368 bytes."


def _lying_copy(src, dst, member, shape, descr):
    """``src`` with ``member``'s header replaced by one claiming ``shape`` over 8 data bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == f"{member}.npy":
                header = io.BytesIO()
                claim = {"descr": descr, "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_2_0(header, claim)
                data = header.getvalue() + bytes(8)
            zout.writestr(info.filename, data)
    return dst


def _run_cli(argv, tmp_path):
    """``msde-jax argv`` in a subprocess limited to ADDRESS_SPACE; (status, stderr)."""
    script = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE}, {ADDRESS_SPACE}))
        from msde_jax.cli import main
        sys.exit(main({argv!r}))
        """
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MSDE_JAX_MAX_ARRAY_BYTES", None)
    # The msde_jax this test imported, wherever it is installed.
    package_root = str(Path(msde_jax.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    return run.returncode, run.stderr


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    for i in range(2):
        Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture
def budget(monkeypatch):
    """Pretend the machine has ``budget(n)`` bytes free (host and devices alike)."""

    def set_budget(n):
        monkeypatch.setattr(mem, "available_memory", lambda: n)

    return set_budget


# ---------------------------------------------------------------------- crafted files
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS is Linux's")
def test_lying_model_and_dataset_files_end_in_one_error_line(tmp_path, scans):
    model = tmp_path / "model.npz"
    rng = np.random.default_rng(0)
    MSDEDetector(mode="none", n_components=4, n_folds=2).fit(rng.normal(size=(20, 6))).save(model)
    # The 381 GiB of issue 24: a float64 (10⁶, 51200) claim over 8 bytes.
    lie = _lying_copy(model, tmp_path / "lie.npz", "state.pca.components", (10**6, 51200), "<f8")
    data = tmp_path / "data.npz"
    np.savez(data, **{k: np.zeros((3, 8, 8), np.uint8) for k in ("train_normal", "test_normal")})
    with zipfile.ZipFile(data, "a") as z:  # a third split claiming 4 GiB, within overcommit
        header = io.BytesIO()
        claim = {"descr": "|u1", "fortran_order": False, "shape": (4, 1024, 1024, 1024)}
        np.lib.format.write_array_header_2_0(header, claim)
        z.writestr("test_abnormal.npy", header.getvalue() + bytes(8))
    cases = {
        "score": (["score", str(lie), str(scans)], lie, "state.pca.components", "381 GiB"),
        "evaluate": (
            ["evaluate", str(data), "--out", str(tmp_path / "report")],
            data,
            "test_abnormal",
            "4 GiB",
        ),
    }
    for what, (argv, path, member, claimed) in cases.items():
        status, err = _run_cli(argv, tmp_path)
        assert status == 2, (what, err)
        assert err.count("\n") == 1, (what, err)
        assert err.startswith(f"error: {path}"), (what, err)
        assert f"member {member!r} claims shape" in err, (what, err)
        assert f"({claimed}), but the member holds 8 bytes" in err, (what, err)
    assert not (tmp_path / "report").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS is Linux's")
def test_fit_at_an_absurd_image_size_is_refused_before_allocating(tmp_path, scans):
    # Issue 24: (32, 100000, 100000, 3) float32 input batches, 3.49 TiB each.
    argv = ["fit", str(scans), "--weights", "random", "--backbone", "resnet18"]
    argv += ["--image-size", "100000", "--batch-size", "32", "--out", str(tmp_path / "m.npz")]
    argv += ["--n-folds", "2"]  # 2 images: enough folds
    status, err = _run_cli(argv, tmp_path)
    assert status == 2, err
    assert err.count("\n") == 1, err
    assert err.startswith("error: embedding 2 images (resnet18, 100000 px) needs about"), err
    assert "input batches 3.49 TiB" in err, err
    assert "lower image_size (--image-size) from 100000 to at most" in err, err
    assert not (tmp_path / "m.npz").exists()


# ---------------------------------------------------------------------- the estimate
def test_check_memory_says_how_far_to_lower_each_option(budget):
    budget(1000)
    mem.check_memory("a step", {"a": 600, "b": 400})  # exactly the budget: allowed
    lower = [mem.Lower("batch_size", 32), mem.Lower("image_size", 100, 2, 16)]
    with pytest.raises(mem.MemoryLimitError) as err:
        mem.check_memory("a step", {"a": 3000, "b": 1000, "c": 0}, lower=lower)
    message = str(err.value)
    assert message == (
        "a step needs about 3.91 KiB of host memory (a 2.93 KiB, b 1000 bytes), more than the "
        "1000 bytes available; lower batch_size from 32 to at most 8 or image_size from 100 "
        "to at most 50."
    )
    assert isinstance(err.value, ValueError)
    assert isinstance(err.value, MemoryError)
    assert (err.value.needed, err.value.available) == (4000, 1000)
    assert str(pickle.loads(pickle.dumps(err.value))) == message
    with pytest.raises(mem.MemoryLimitError, match="even the smallest image_size would not fit"):
        mem.check_memory("a step", {"a": 10**9}, lower=lower[1:])


def test_the_advice_fits_what_each_option_sizes_and_is_valid(budget):
    """The advice scaled the whole estimate by each option: lowering the batch size "to at
    most 7" left the embeddings as they were, and still did not fit; a ViT was told an image
    size that is no multiple of its patch, and 12 images on 8 devices became 16."""
    budget(1000)
    needs = {"embeddings": 600, "batches": 800}
    lower = [
        mem.Lower("batch_size", 8, 1, 2, ("batches",), 2),
        mem.Lower("the number of images", 100, scales=("embeddings",)),
        mem.Lower("image_size", 224, 2, 28, ("batches",), 14),
    ]
    with pytest.raises(mem.MemoryLimitError) as err:
        mem.check_memory("a step", needs, lower=lower)
    # batches may take 1000 − 600 = 400 of 800: batch 4 (a multiple of 2), image side
    # 224 · √0.5 = 158.4 → 154 (a multiple of 14); images: 1000 − 800 = 200 of 600 → 33
    assert str(err.value).endswith(
        "lower batch_size from 8 to at most 4 or the number of images from 100 to at most 33 "
        "or image_size from 224 to at most 154."
    )
    with pytest.raises(mem.MemoryLimitError) as err:  # the embeddings alone exceed the budget
        mem.check_memory("a step", {"embeddings": 1200, "batches": 800}, lower=lower)
    assert "the number of images from 100 to at most 16." in str(err.value)
    assert "batch_size" not in str(err.value)
    with pytest.raises(mem.MemoryLimitError, match="even the smallest batch_size or image_size"):
        mem.check_memory("a step", {"embeddings": 1200, "batches": 800}, lower=[lower[0], lower[2]])


class _Accelerator:
    platform, device_kind = "gpu", "a test GPU"

    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_device_memory_where_jax_reports_it(budget):
    budget(10**12)
    cpu = jax.devices("cpu")[0]  # a CPU device computes in host memory
    assert mem.is_host(cpu)
    assert mem.device_free_memory(cpu) is None
    assert mem.memory_budget(cpu) == (10**12, "available")
    gpu = _Accelerator({"bytes_limit": 16 * GiB, "bytes_in_use": 6 * GiB})
    assert mem.memory_budget(gpu) == (10 * GiB, "free on a test GPU")
    with pytest.raises(mem.MemoryLimitError, match="of device memory .* 10 GiB free on a test"):
        mem.check_memory("a step", {"buffers": 11 * GiB}, device=gpu)
    assert mem.device_free_memory(_Accelerator(None)) is None  # nothing reported: the host's
    assert mem.memory_budget(_Accelerator({})) == (10**12, "available")


def test_embedding_estimate_uses_the_compiled_program(budget):
    from msde_jax.embedder import Embedder

    emb = Embedder("resnet18", weights="random", image_size=64, batch_size=8, progress=False)
    exact = emb.memory_needed(20)
    rough = emb.memory_needed(20, exact=False)
    assert exact["host"] == rough["host"]
    n_dev = len(emb.devices)
    image = 64 * 64 * 3 * 4
    assert exact["host"] == {
        "input batches": 3 * 8 * image,
        "images being resized": 2 * 3 * image,
        "embeddings": 20 * 512 * 4,
    }
    assert exact["device"]["input batch"] == 8 // n_dev * image
    # XLA's own count of the forward pass's buffers (at 224 px ~8x the ResNet's input; at
    # 64 px its weights' working copies dominate), not the rough 16x of the input.
    assert exact["device"]["network activations"] > exact["device"]["input batch"]
    assert exact["device"] != rough["device"]
    total = sum(exact["host"].values()) + n_dev * sum(exact["device"].values())
    budget(total)
    emb.check_memory(20)  # fits exactly
    budget(total // 4)
    with pytest.raises(ValueError, match="network activations") as err:
        emb.check_memory(20)
    # Each option's advice scales the parts it sizes only: a batch of n_dev images (the
    # least) would still not fit here when n_dev = 2, and is then not offered.
    message = str(err.value)
    if "batch_size" in message:
        suggested = int(message.split("batch_size (--batch-size) from 8 to at most ")[1][0])
        assert 1 <= suggested < 8
    assert "image_size (--image-size) from 64 to at most" in message
    with pytest.raises(ValueError, match="embedding 20 images"):
        emb.embed(np.zeros((20, 8, 8), np.uint8))  # refused before any image is read


def test_embeddings_too_large_for_memory_say_to_embed_fewer_images(budget):
    from msde_jax.embedder import Embedder

    emb = Embedder("resnet18", weights="random", image_size=32, batch_size=2, progress=False)
    budget(10**6)
    with pytest.raises(ValueError, match="embeddings 1.95 MiB.* lower the number of images from"):
        emb.check_memory(1000)


def test_fit_and_score_estimates_refuse_before_running(budget):
    x = np.random.default_rng(0).normal(size=(20, 4, 4, 2)).astype(np.float32)
    bank = PatchBankDetector(size=300, n_folds=2).fit(x)
    budget(50_000)  # the (320 × 300) distance block of the fit does not fit
    message = r"fitting PatchBankDetector on 20×4×4×2 features needs about .* kNN distance blocks"
    with pytest.raises(ValueError, match=message) as err:
        PatchBankDetector(size=300, n_folds=2).fit(x)
    assert "lower the detector's batch_size from 320 to at most" in str(err.value)
    assert "or size (--bank-size) from 300 to at most" in str(err.value)
    budget(1000)
    with pytest.raises(ValueError, match="scoring with PatchBankDetector on 20×4×4×2 features"):
        bank.score_samples(x)
    pooled = np.random.default_rng(0).normal(size=(50, 4))
    msde = MSDEDetector(mode="none", n_components=2, n_folds=2)
    with pytest.raises(ValueError, match="fitting MSDEDetector .* lower the number of images"):
        msde.fit(pooled)


def test_heatmaps_of_many_images_are_refused_before_embedding(budget):
    from msde_jax.pipeline.evaluation import check_heatmaps

    budget(GiB)
    check_heatmaps(224, 100)
    with pytest.raises(ValueError, match="heatmaps of 100000 images at 224 × 224 needs about"):
        check_heatmaps(224, 100_000)


def test_training_at_an_absurd_image_size_is_refused_before_reading(tmp_path, scans, capsys):
    argv = ["train-backbone", str(scans), "--backbone", "resnet18", "--init", "scratch"]
    argv += ["--image-size", "100000", "--steps", "1", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the line naming the run
    assert err.startswith("error: training on 2 images at 100000 px needs about"), err
    assert "lower image_size (--image-size) from 100000 to at most" in err


# ---------------------------------------------------------------------- out of memory
# XLA runs out of the memory of the device it runs on: on a CPU, the host's.
WHERE = "host" if jax.default_backend() == "cpu" else "device"


def test_out_of_memory_becomes_one_error_naming_the_step():
    options = ["batch_size (--batch-size)"]
    with pytest.raises(mem.MemoryLimitError) as err, mem.out_of_memory("a step", options):
        raise jax.errors.JaxRuntimeError(EXHAUSTED + "\nthe allocator's state, pages of it")
    assert str(err.value) == (
        f"a step ran out of {WHERE} memory ({EXHAUSTED}); lower batch_size (--batch-size), or "
        "free memory."
    )
    with pytest.raises(mem.MemoryLimitError, match="ran out of host memory"):
        with mem.out_of_memory("a step", options):
            np.zeros((1 << 62,), np.uint8)  # NumPy's _ArrayMemoryError
    # Whose memory: that of the device the block computes on (a CPU's is the host's).
    gpu = types.SimpleNamespace(platform="gpu")
    for device, where in ((gpu, "device"), (jax.devices("cpu")[0], "host")):
        with pytest.raises(mem.MemoryLimitError, match=f"ran out of {where} memory"):
            with mem.out_of_memory("a step", options, device):
                raise jax.errors.JaxRuntimeError(EXHAUSTED)
    with pytest.raises(jax.errors.JaxRuntimeError, match="INVALID_ARGUMENT"):
        with mem.out_of_memory("a step", options):  # anything else passes unchanged
            raise jax.errors.JaxRuntimeError("INVALID_ARGUMENT: not about memory")


def _exhausted(*args, **kwargs):
    raise jax.errors.JaxRuntimeError(EXHAUSTED)


def test_out_of_memory_in_the_forward_pass_fit_and_score(tmp_path, scans, capsys, monkeypatch):
    from msde_jax.embedder import Embedder

    init = Embedder.__init__

    @functools.wraps(init)  # the parser reads the defaults from its signature
    def exhausted_forward(self, *args, **kwargs):
        init(self, *args, **kwargs)
        assert self.output_shape  # traced with the real network, then the forward fails
        self._forward = _exhausted

    embed = ["--weights", "random", "--backbone", "resnet18", "--image-size", "32"]
    embed += ["--n-folds", "2"]  # 2 images: enough folds
    with monkeypatch.context() as patch:
        patch.setattr(Embedder, "__init__", exhausted_forward)
        assert main(["fit", str(scans), *embed, "--out", str(tmp_path / "m.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: embedding (resnet18) ran out of {WHERE} memory"), err
    assert err.count("\n") == 1
    assert "lower batch_size (--batch-size) or image_size" in err

    features = tmp_path / "emb.npz"
    np.savez(features, embeddings=np.random.default_rng(0).normal(size=(8, 4, 4, 3)))
    with monkeypatch.context() as patch:
        patch.setattr(PatchBankDetector, "fit_function", staticmethod(_exhausted))
        fit = ["fit", str(features), "--embeddings", "--out", str(tmp_path / "m.npz")]
        assert main(fit) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: fitting PatchBankDetector on 8×4×4×3 features ran out of"), err
    assert err.count("\n") == 1
    assert "lower the detector's batch_size or size (--bank-size)" in err

    detector = MSDEDetector(mode="none", n_components=2, n_folds=2)
    detector.fit(np.random.default_rng(0).normal(size=(20, 3)))
    huge = staticmethod(lambda *a: np.zeros((1 << 62,), np.uint8))
    monkeypatch.setattr(MSDEDetector, "score_function", huge)
    with pytest.raises(mem.MemoryLimitError, match="scoring with MSDEDetector on 5×3 features ran"):
        detector.score_samples(np.zeros((5, 3)))


def test_out_of_memory_in_a_training_step(tmp_path, capsys, monkeypatch):
    from msde_jax.ssl.train import TrainStep

    monkeypatch.setattr(TrainStep, "__call__", _exhausted)  # nothing compiled, nothing trained
    stack = tmp_path / "normals.npz"
    np.savez(stack, images=np.zeros((4, 32, 32), np.uint8))
    train = ["train-backbone", str(stack), "--out", str(tmp_path / "run"), "--steps", "2"]
    train += ["--backbone", "resnet18", "--init", "scratch", "--image-size", "32"]
    assert main([*train, "--batch-size", "2"]) == 2
    err = capsys.readouterr().err.splitlines()  # the run, its progress, then one error line
    assert err[0].startswith("training on 4 normal images"), err
    assert [line for line in err if line.startswith("error:")] == err[-1:], err
    assert err[-1].startswith(f"error: training step 1 (resnet18) ran out of {WHERE} memory"), err
    assert "lower batch_size (--batch-size) or image_size (--image-size)" in err[-1], err


# ---------------------------------------------------------------------- compilation cache
def test_garbage_in_the_compilation_cache_does_not_fail_a_jitted_function(tmp_path):
    # msde_jax turns JAX's persistent cache on at import (msde_jax._compilation), here in a
    # folder of the test's; fresh processes keep this one's global config clean.
    cache = tmp_path / "xla_cache"
    script = textwrap.dedent(
        """
        import json, sys, warnings
        import numpy as np
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import jax, jax.numpy as jnp
            import msde_jax
            assert jax.config.jax_compilation_cache_dir == sys.argv[1]
            value = float(jax.jit(lambda x: jnp.sin(x) * 2 + x.sum())(jnp.arange(5.0)).sum())
            x = np.random.default_rng(0).normal(size=(30, 4))
            detector = msde_jax.MSDEDetector(mode="none", n_components=2, n_folds=2).fit(x)
            scores = detector.score_samples(x).tolist()
        print(json.dumps([value, scores, [str(w.message)[:60] for w in caught]]))
        """
    )
    env = {**os.environ, "MSDE_JAX_COMPILATION_CACHE": str(cache)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    package_root = str(Path(msde_jax.__file__).parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)

    def run():
        out = subprocess.run(
            [sys.executable, "-c", script, str(cache)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    value, scores, warned = run()  # fills the cache
    entries = sorted(p for p in cache.iterdir() if p.is_file())
    assert entries
    assert not warned
    # Every entry replaced by garbage (random bytes, compressed random bytes, nothing), and
    # files and folders that are no entry at all.
    import zlib

    rng = np.random.default_rng(0)
    for i, entry in enumerate(entries):
        noise = rng.bytes(3000)
        entry.write_bytes([noise, zlib.compress(noise), b""][i % 3])
    (cache / "sub").mkdir()
    (cache / "sub" / "x-cache").write_bytes(b"x")
    (cache / "not-an-entry").write_bytes(rng.bytes(100))
    again, scores_again, warned = run()
    assert again == value
    assert scores_again == scores
    assert warned  # JAX says which entries it could not read
    assert all(w.startswith("Error reading persistent compilation cache") for w in warned)
