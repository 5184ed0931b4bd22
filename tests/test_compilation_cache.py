"""Compiled programs are kept between processes by default (msde_jax._compilation)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from testing import run_python

from msde_jax._compilation import COMPILATION_CACHE_ENV, compilation_cache_dir
from msde_jax._platform import PATHS_ENV, cpu_paths

ROOT = Path(__file__).resolve().parents[1]

EVALUATE = """
import sys
from jax import monitoring
from msde_jax._compilation import CompileCounter
from msde_jax.cli import main

traced = set()
def on_duration(event, duration, **kwargs):
    if event.endswith("jaxpr_trace_duration"):
        traced.add(kwargs.get("fun_name", "?"))
monitoring.register_event_duration_secs_listener(on_duration)
with CompileCounter() as count:
    rc = main(["evaluate", "pneumoniamnist", "--out", sys.argv[1], "--limit", "12",
               "--weights", "random", "--image-size", "32", "--batch-size", "16",
               "--bank-size", "200"])
print("PROGRAMS", count.requested, count.compiled, rc)
print("TRACED", *sorted(traced))
"""
# The functions whose traces are kept on disk (msde_jax._exported): the backbone's forward pass
# (a lambda in msde_jax.backbones.forward), the synthetic anomalies and the coreset's first stage.
EXPORTED = {"<lambda>", "_synthesize", "search"}


def _evaluate(cache: Path, out: Path, **env: str) -> tuple[int, int, set[str]]:
    environ = {**os.environ, COMPILATION_CACHE_ENV: str(cache), "PYTHONPATH": str(ROOT), **env}
    environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    result = run_python("-c", EVALUATE, out, env=environ)
    line = next(s for s in result.stdout.splitlines() if s.startswith("PROGRAMS"))
    requested, compiled, rc = map(int, line.split()[1:])
    assert rc == 0
    traced = next(s for s in result.stdout.splitlines() if s.startswith("TRACED"))
    return requested, compiled, set(traced.split()[1:])


# What a default `msde-jax evaluate` may compile (README "Compilation"): the two-stage coreset's
# first stage for the full set's chunks and for the validation's (two programs) and its second
# stage, for the final bank and the folds' and for the validation's final bank alone (two, on
# an accelerator, on the same number of picks: five chunks of `size`; on a CPU each bank
# searches its own picks, padded: here the two final banks share one program, the folds'
# banks another); one scoring program
# per chunk size; AUROCs by bucketed length; the embedder, the synthetic anomalies and the maps;
# and the random key of the coreset's projection and its matrix (drawn once, so that no search
# program compiles a random-number generator). Host arrays reach the device by copies, which
# compile nothing (jnp.asarray of a NumPy array compiles a staging program per shape).
MAX_PROGRAMS = 17


@pytest.mark.parametrize("forms", ["own", "other"])
def test_a_second_evaluate_in_a_fresh_process_compiles_nothing(tmp_path, forms):
    """... and traces neither the backbone nor the synthetic anomalies: their programs are
    read from the exported files the first process wrote, unchanged, with the same results.
    Both with this machine's code paths and with the other platform's (``MSDE_JAX_PATHS``:
    on a CPU, the code a GPU runs, whose compilations cost most)."""
    cache = tmp_path / "xla"
    env = {} if forms == "own" else {PATHS_ENV: "accelerator" if cpu_paths() else "cpu"}
    requested, compiled, traced = _evaluate(cache, tmp_path / "r1", **env)
    assert compiled == requested > 0
    assert requested <= MAX_PROGRAMS
    assert any(cache.iterdir())
    assert EXPORTED <= traced
    files = {p.name: p.stat().st_mtime_ns for p in (cache / "exported").iterdir()}
    assert {name.split("-")[0] for name in files} == {"forward", "kcenter", "synthesize"}
    again, compiled_again, traced_again = _evaluate(cache, tmp_path / "r2", **env)
    assert again == requested  # the same programs, all from the cache
    assert compiled_again == 0
    assert not EXPORTED & traced_again
    assert {p.name: p.stat().st_mtime_ns for p in (cache / "exported").iterdir()} == files
    first, second = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("r1", "r2"))
    assert first["metrics"] == second["metrics"]


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(COMPILATION_CACHE_ENV, raising=False)
    monkeypatch.setenv("MSDE_JAX_CACHE", str(tmp_path / "home"))
    assert compilation_cache_dir() == tmp_path / "home" / "xla"
    monkeypatch.setenv(COMPILATION_CACHE_ENV, str(tmp_path / "elsewhere"))
    assert compilation_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.setenv(COMPILATION_CACHE_ENV, f" {tmp_path / 'elsewhere'}\n")  # not ' /…'
    assert compilation_cache_dir() == tmp_path / "elsewhere"
    for off in ("off", "0", "false", "", "No"):
        monkeypatch.setenv(COMPILATION_CACHE_ENV, off)
        assert compilation_cache_dir() is None


def test_on_is_the_default_folder_a_relative_one_is_kept_and_jax_off_turns_exports_off(
    tmp_path,
):
    """MSDE_JAX_COMPILATION_CACHE=1 made a folder named "1" in the working folder, which a
    chdir then moved; turning JAX's cache off after import left exported programs on."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MSDE_JAX_CACHE": str(tmp_path / "home")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    code = (
        "import os, jax, msde_jax; from msde_jax._compilation import managed_cache_dir as m; "
        "os.chdir('/'); a = m(); jax.config.update('jax_enable_compilation_cache', False); "
        "print(a, m(), jax.config.jax_compilation_cache_dir)"
    )
    for value, expected in (("1", tmp_path / "home" / "xla"), ("Yes", tmp_path / "home" / "xla"),
                            ("rel", tmp_path / "rel")):  # fmt: skip
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True,
            env={**env, COMPILATION_CACHE_ENV: value}, cwd=tmp_path, check=True,
        ).stdout.split()  # fmt: skip
        assert out == [str(expected), "None", str(expected)]
    assert not (tmp_path / "1").exists()


@pytest.mark.parametrize("setting", ["off", "jax_off", "user"])
def test_turned_off_or_the_users_own_cache_is_left_alone(tmp_path, setting):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MSDE_JAX_CACHE": str(tmp_path / "home")}
    env.pop(COMPILATION_CACHE_ENV, None)
    if setting == "off":
        env[COMPILATION_CACHE_ENV] = "off"
        expected = "None"
    elif setting == "jax_off":  # JAX's own switch: msde_jax wrote its folder all the same
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
        expected = "None"
    else:
        env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "mine")
        expected = str(tmp_path / "mine")
    code = "import jax, msde_jax; print(jax.config.jax_compilation_cache_dir)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split()[-1]
    assert out == expected
    assert not (tmp_path / "home" / "xla").exists()


def test_by_default_the_cache_is_the_users_cache_folder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MSDE_JAX_CACHE": str(tmp_path / "home")}
    env.pop(COMPILATION_CACHE_ENV, None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    code = "import jax, msde_jax; print(jax.config.jax_compilation_cache_dir)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split()[-1]
    assert out == str(tmp_path / "home" / "xla")
