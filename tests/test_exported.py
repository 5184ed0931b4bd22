"""Traced programs kept on disk (msde_jax._exported): read back instead of traced, keyed by
everything the trace depends on, and never trusted when damaged."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msde_jax import _exported
from msde_jax._exported import Exported


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A managed cache folder for this test (the suite runs with the cache turned off)."""
    monkeypatch.setattr(_exported, "managed_cache_dir", lambda: tmp_path)
    return tmp_path / "exported"


def _counted(scale: float = 2.0):
    """A jitted function and the number of times it was traced, as a fresh process has it."""
    traces = []

    def fun(x, y):
        traces.append(1)
        return {"sum": jnp.sin(x) * scale + y, "max": jnp.max(x)}

    return jax.jit(fun), traces


def test_a_new_process_reads_the_program_instead_of_tracing(folder):
    x, y = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), np.float32(0.5)
    fun, traces = _counted()
    want = fun(x, y)
    first = Exported(_counted()[0], "f", static=2.0)
    np.testing.assert_array_equal(first(x, y)["sum"], want["sum"])
    (path,) = folder.iterdir()
    written = path.stat().st_mtime_ns
    fresh, traces = _counted()  # another process: nothing in memory
    again = Exported(fresh, "f", static=2.0)
    out = again(x, y)
    assert traces == []  # read from the file, not traced
    np.testing.assert_array_equal(out["sum"], want["sum"])
    np.testing.assert_array_equal(out["max"], want["max"])
    assert again.out_info(x, y)["sum"].shape == (3, 4)
    assert again.lower(x, y).compile() is not None
    assert traces == []
    assert path.stat().st_mtime_ns == written


def test_the_key_holds_the_static_part_and_the_signature(folder):
    x = np.ones((3, 4), np.float32)
    for static, shape, dtype in [(2.0, (3, 4), np.float32), (3.0, (3, 4), np.float32)] + [
        (2.0, (5, 4), np.float32),
        (2.0, (3, 4), np.int32),
    ]:
        fun = Exported(_counted(static)[0], "f", static=static)
        arg = np.ones(shape, dtype)
        np.testing.assert_allclose(fun(arg, np.float32(0))["sum"], np.sin(arg) * static, 1e-6)
    assert len(list(folder.iterdir())) == 4
    scaled = Exported(_counted(3.0)[0], "f", static=3.0)(x, np.float32(0))["sum"]
    np.testing.assert_allclose(scaled, np.sin(x) * 3.0, rtol=1e-6)  # not the 2.0 program


def test_a_setting_changed_in_the_process_finds_another_program(folder):
    # As jax.jit retraces: a program found in memory under x64 off served x64 on (float32).
    fun = Exported(jax.jit(lambda x: x.astype(float) / 3), "g", static=())
    x = np.arange(3, dtype=np.int32)
    assert fun(x).dtype == np.float32
    with jax.enable_x64(True):
        assert fun(x).dtype == np.float64
        assert fun.out_info(x).dtype == np.float64
    assert fun(x).dtype == np.float32
    assert len(list(folder.iterdir())) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_file_is_traced_again_and_rewritten(folder, damage):
    x = np.arange(6, dtype=np.float32)
    Exported(_counted()[0], "f")(x, np.float32(1))
    (path,) = folder.iterdir()
    blob = path.read_bytes()
    path.write_bytes(
        {"garbage": np.random.default_rng(0).bytes(len(blob)), "truncated": blob[:-100]}.get(
            damage, b""
        )
    )
    fresh, traces = _counted()
    out = Exported(fresh, "f")(x, np.float32(1))
    assert traces == [1]
    np.testing.assert_allclose(out["sum"], np.sin(x) * 2 + 1, rtol=1e-6)
    assert path.stat().st_size > 32  # written again, and read by the next process:
    fresh, traces = _counted()
    np.testing.assert_array_equal(Exported(fresh, "f")(x, np.float32(1))["sum"], out["sum"])
    assert traces == []


def test_inside_a_trace_the_function_is_inlined(folder):
    exported = Exported(_counted()[0], "f")
    out = jax.jit(lambda x: exported(x, 1.0)["sum"])(np.zeros(3, np.float32))
    np.testing.assert_array_equal(out, np.ones(3))
    assert not folder.exists()


def test_without_a_managed_cache_it_is_the_function(monkeypatch, tmp_path):
    monkeypatch.setattr(_exported, "managed_cache_dir", lambda: None)
    fun, traces = _counted()
    exported = Exported(fun, "f")
    assert exported.function(np.zeros(2, np.float32), np.float32(0)) is fun
    exported(np.zeros(2, np.float32), np.float32(0))
    assert traces == [1]
    assert _exported.exported_dir() is None


def test_a_function_that_cannot_be_exported_is_called_as_it_is(folder, monkeypatch):
    def refuse(*args, **kwargs):
        raise NotImplementedError("not exportable")

    monkeypatch.setattr(_exported.export, "export", refuse)
    fun, traces = _counted()
    out = Exported(fun, "f")(np.zeros(2, np.float32), np.float32(1))
    np.testing.assert_array_equal(out["sum"], np.ones(2))
    assert traces == [1]
    assert not folder.exists()


def test_python_scalars_are_traced_not_baked_in(folder):
    first = Exported(jax.jit(lambda x, s: x * s), "scaled")
    np.testing.assert_array_equal(first(np.ones(3, np.float32), 2.0), np.full(3, 2.0))
    fresh = Exported(jax.jit(lambda x, s: x * s), "scaled")  # another process
    np.testing.assert_array_equal(fresh(np.ones(3, np.float32), 3.0), np.full(3, 3.0))
    assert len(list(folder.iterdir())) == 1


def test_the_key_holds_the_weak_type(folder):
    """A weakly typed float32 times bfloat16 is bfloat16, a strongly typed one float32: a
    program traced for one is not reused for the other, here or in another process."""
    y = jnp.ones(3, jnp.bfloat16)
    weak, strong = jnp.asarray(2.0), jnp.asarray(2.0, jnp.float32)
    assert Exported(jax.jit(jnp.multiply), "mul")(weak, y).dtype == jnp.bfloat16
    both = Exported(jax.jit(jnp.multiply), "mul")  # another process, after the first
    assert both(strong, y).dtype == jnp.float32
    assert both(weak, y).dtype == jnp.bfloat16
    assert len(list(folder.iterdir())) == 2


def test_a_program_that_fails_to_run_falls_back_to_tracing(folder, monkeypatch):
    x = np.arange(4, dtype=np.float32)
    Exported(_counted()[0], "f")(x, np.float32(0))  # writes the file

    def broken(self, *args, **kwargs):
        raise RuntimeError("this backend cannot run the deserialized program")

    monkeypatch.setattr(_exported.export.Exported, "call", broken)
    fresh, traces = _counted()
    exported = Exported(fresh, "f")
    np.testing.assert_allclose(exported(x, np.float32(0))["sum"], np.sin(x) * 2, rtol=1e-6)
    assert traces == [1]  # traced as usual, once
    exported(x, np.float32(1))
    assert traces == [1]


def test_without_the_file_format_it_warns_once_and_still_computes(folder, monkeypatch):
    # jax.export writes files with flatbuffers; where it is missing, say so (once per process)
    # and trace as usual instead of dropping the feature silently.
    def no_flatbuffers(self):
        raise ImportError("Please install 'flatbuffers' in order to use Exported serialization")

    monkeypatch.setattr(jax.export.Exported, "serialize", no_flatbuffers)
    monkeypatch.setattr(_exported, "_WARNED", False)
    x = np.ones((3, 4), np.float32)
    fun, traces = _counted()
    with pytest.warns(RuntimeWarning, match="install flatbuffers"):
        out = Exported(fun, "f")(x, np.float32(1))
    np.testing.assert_allclose(out["sum"], np.sin(x) * 2 + 1, 1e-6)
    assert not folder.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Exported(_counted()[0], "f")(np.ones((5, 4), np.float32), np.float32(0))


@pytest.mark.parametrize("change", ["source", "versions", "paths"])
def test_a_new_package_source_versions_or_code_paths_trace_anew(folder, monkeypatch, change):
    """The key holds the package's source, the versions that shape a trace and the code
    paths: a file written before an upgrade (or for the other paths) is never run after it."""
    x, y = np.ones((3, 4), np.float32), np.float32(0.5)
    Exported(_counted()[0], "f", static=2.0)(x, y)
    assert len(list(folder.iterdir())) == 1
    if change == "source":
        monkeypatch.setattr(_exported, "_SOURCE_HASH", "another source")
    elif change == "versions":
        monkeypatch.setattr(_exported, "_versions", lambda: ("jax==0.0.0",))
    else:
        monkeypatch.setenv("MSDE_JAX_PATHS", "accelerator" if _exported.cpu_paths() else "cpu")
    fresh, traces = _counted()
    Exported(fresh, "f", static=2.0)(x, y)
    assert traces == [1]  # traced, not read from the earlier file
    assert len(list(folder.iterdir())) == 2
