"""Every example runs, at small sizes (each in its own interpreter, as a user would run it)."""

import os
import re
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


# What each example's output must hold (its last lines name these numbers).
PRINTS = {
    "00_quickstart.py": [r"PatchBankDetector\(.*\) on \d+ normals: AUROC \d\.\d{3}, AP \d\.\d{3}; "
                         r"\d+ of \d+ test images flagged"],
    "01_functional_core.py": [r"MSDE on 200 training normals: \d+ iterations",
                              r"fit_detector \+ jit\(score_detector\): AUROC \d\.\d{3}"],
    "02_brain_mri.py": [r"training normals; AUROC by test mix:",
                        r"\| inductive \(default\) \| \d\.\d{3} \| \d\.\d{3} \|"],
    "03_custom_backbone_and_embeddings.py": [r"embeddings: \(\d+, 512\)",
                                             r"reloaded model from resnet18 features",
                                             r"scores of 5 pneumonia images: \["],
    "04_tabular_displacement.py": [r"displacement \(tabular MSDE\) +AUROC",
                                   r"plain Gaussian +AUROC"],
    "05_adapt_backbone.py": [r"step +\d+  loss \d", r"weights: paper-preset AUROC \d\.\d{3}"],
}  # fmt: skip


def test_every_example_is_covered():
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == set(CASES) == set(PRINTS)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(CASES)]
)
def test_example_runs(name):
    if name == "02_brain_mri.py":
        shared_data("brain_tumor_mri")  # its default --data is the real set beside the checkout
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = run_python(ROOT / "examples" / name, *CASES[name], env=env)
    for pattern in PRINTS[name]:  # what it promises to show, not only that it printed
        assert re.search(pattern, result.stdout), (pattern, result.stdout)
    # Every AUROC an example prints is one: in [0, 1] (the synthetic sets' well above chance).
    aurocs = [float(a) for a in re.findall(r"AUROC (\d+\.\d+)", result.stdout)]
    assert all(0.0 <= a <= 1.0 for a in aurocs), aurocs
    if name in ("01_functional_core.py", "04_tabular_displacement.py"):
        assert min(aurocs) > 0.55, aurocs
