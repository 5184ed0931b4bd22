"""Every example runs, at small sizes (each in its own interpreter, as a user would run it)."""

import os
from pathlib import Path

import pytest
from testing import run_python, shared_data

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "00_quickstart.py": ["--limit", "40", "--image-size", "64"],
    "01_functional_core.py": ["--n-train", "200", "--dim", "16"],
    "02_brain_mri.py": ["--limit", "40", "--image-size", "64"],
    "03_custom_backbone_and_embeddings.py": ["--limit", "30", "--image-size", "64"],
    "04_tabular_displacement.py": [],
    "05_adapt_backbone.py": ["--steps", "3", "--limit", "30", "--image-size", "32"]
    + ["--backbone", "resnet18", "--init", "scratch"],
}


# The longest two run with `pytest -m slow`: the real brain MRI set (the default run reads
# it in tests/detectors/test_msde.py) and an adaptation, whose training, checkpoints and
# adapted embedder tests/ssl/test_ssl_train.py checks in-process (37 s and 45 s on 2 cores).
SLOW = {"02_brain_mri.py", "05_adapt_backbone.py"}


def test_every_example_is_covered():
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == set(CASES)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(CASES)]
)
def test_example_runs(name):
    if name == "02_brain_mri.py":
        shared_data("brain_tumor_mri")  # its default --data is the real set beside the checkout
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = run_python(ROOT / "examples" / name, *CASES[name], env=env)
    assert result.stdout.strip()
