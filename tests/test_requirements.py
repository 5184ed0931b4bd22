"""The declared dependency floors: pyproject.toml, .ci/minimum-versions.txt and the import check
name the same versions, and a jax below the floor is refused at import with the fix."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from msde_jax import _requirements

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    lines = (ROOT / ".ci" / "minimum-versions.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {name.strip().lower(): version.strip() for name, version in pins}


def _floors() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in ("dicom", "nifti", "test"):
        declared += project["optional-dependencies"][extra]
    floors = {}
    for requirement in declared:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement)
        if match:
            floors[match[1].lower()] = match[2]
    return floors


def test_every_floor_is_the_pinned_minimum():
    # A floor without a pin was never tested; a pin other than the floor tests another version.
    floors, pins = _floors(), _pins()
    # The pins may add transitive ones (pyparsing) but never miss a declared floor.
    assert set(floors) <= set(pins), set(floors) - set(pins)
    assert floors == {name: pins[name] for name in floors}, "pyproject.toml vs minimum-versions"


def test_the_import_check_names_the_same_jax_floor():
    assert _floors()["jax"] == _floors()["jaxlib"] == ".".join(map(str, _requirements.MIN_JAX))


@pytest.mark.parametrize("found", ["0.9.2", "0.8.1", "0.4.38"])
def test_an_old_jax_is_refused_with_the_command_that_fixes_it(found):
    with pytest.raises(ImportError, match=rf"jax >= 0\.10\.0, found jax {re.escape(found)}.*pip"):
        _requirements.require_jax(found)


@pytest.mark.parametrize("found", ["0.10.0", "0.10.2", "0.11.0.dev20261201", "1.0"])
def test_the_floor_and_newer_pass(found):
    _requirements.require_jax(found)
    assert _requirements.version_tuple(found) >= _requirements.MIN_JAX


def test_import_msde_jax_under_an_old_jax_fails_with_the_message():
    # The real import path, with jax.__version__ faked before msde_jax is imported.
    code = "import jax; jax.__version__ = '0.8.1'\nimport msde_jax"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "msde_jax needs jax >= 0.10.0, found jax 0.8.1" in result.stderr
