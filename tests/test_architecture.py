"""The package layout: layers import downward only, every public module declares ``__all__``.

Layers (README "Architecture"): private helpers → functional core → detector → io | backbones
→ embedder | ssl → evaluation → report → cli. A module may import its own layer and the ones
below; io and backbones never import each other (reading files is io's job, networks are
backbones' job), nor do embedder and ssl.
"""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import msde_jax

PACKAGE = Path(msde_jax.__file__).parent

CORE = (
    "neighbors",
    "fuzzy",
    "density",
    "mean_shift",
    "coreset",
    "memory_bank",
    "pca",
    "gaussian",
    "metrics",
)


def layer(module: str) -> tuple[int, str]:
    """(rank, group) of a module given as a dotted name inside ``msde_jax``."""
    top = module.split(".")[0]
    if top in ("_rows", "_progress", "_files"):
        return 0, "private"
    if top in CORE:
        return 1, "core"
    if top == "detector" or top.startswith("_detector") or top == "fusion":
        return 2, "detector"
    if top in ("bank_detector", "_estimator"):
        return 2, "detector"
    if top in ("io", "backbones"):
        return 3, top
    if top in ("embedder", "ssl"):
        return 4, top
    if top == "evaluation":
        return 5, top
    if top == "report":
        return 6, top
    if top == "cli":
        return 7, top
    raise AssertionError(f"msde_jax.{module} has no layer: add it to tests/test_architecture.py")


def modules() -> list[str]:
    infos = pkgutil.walk_packages(msde_jax.__path__, prefix="msde_jax.")
    return sorted(info.name.removeprefix("msde_jax.") for info in infos)


def imports_of(module: str) -> set[str]:
    """Every ``msde_jax.*`` module imported anywhere in a module (function bodies included)."""
    path = PACKAGE.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("msde_jax.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "msde_jax":
                found |= {f"msde_jax.{a.name}" for a in node.names}
            elif node.module.startswith("msde_jax."):
                found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"msde_jax.{module}: use absolute imports (line {node.lineno})")
    return {name.removeprefix("msde_jax.") for name in found}


@pytest.mark.parametrize("module", modules())
def test_imports_go_downward(module):
    rank, group = layer(module)
    for target in imports_of(module):
        t_rank, t_group = layer(target)
        assert t_rank < rank or (t_rank == rank and t_group == group), (
            f"msde_jax.{module} (layer {rank}, {group}) imports msde_jax.{target} "
            f"(layer {t_rank}, {t_group}): layers import downward only"
        )


@pytest.mark.parametrize(
    "module", [m for m in modules() if not any(p.startswith("_") for p in m.split("."))]
)
def test_public_modules_declare_all(module):
    mod = importlib.import_module(f"msde_jax.{module}")
    assert hasattr(mod, "__all__"), f"msde_jax.{module} has no __all__"
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert not missing, f"msde_jax.{module}.__all__ names missing attributes: {missing}"


def test_top_level_all_resolves():
    missing = [name for name in msde_jax.__all__ if not hasattr(msde_jax, name)]
    assert not missing


def test_modules_stay_short():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 650
    }
    assert not long, f"modules over 650 lines (split them by concern): {long}"


def test_backbones_do_not_read_images():
    for path in (PACKAGE / "backbones").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(("PIL", "pydicom", "msde_jax.io")), (
                    f"{path.name} imports {name}: image reading lives in msde_jax.io"
                )
