"""The package layout: layers import downward only, every public module declares ``__all__``.

Layers (README "Architecture"): private helpers → functional core → detector → io | backbones
→ embedder | ssl → evaluation, selection → report, heatmaps → cli. A module may import its own
layer and the ones below; io and backbones never import each other (reading files is io's job,
networks are backbones' job), nor do embedder and ssl. The root ``msde_jax/__init__.py`` (which
``walk_packages`` does not yield) imports the core and detector layers eagerly and the embedder
lazily, and lists exactly what it re-exports in ``__all__``. No module imports by a computed
name (``importlib.import_module``, ``__import__``): such an edge hides from this test.
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
    "partition",
    "distributed",
    "fuzzy",
    "density",
    "mean_shift",
    "coreset",
    "memory_bank",
    "maps",
    "pca",
    "gaussian",
    "metrics",
)


def layer(module: str) -> tuple[int, str]:
    """(rank, group) of a module given as a dotted name inside ``msde_jax``."""
    top = module.split(".")[0]
    if top in ("_rows", "_progress", "_files", "_arrays_file"):
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
    if top in ("evaluation", "selection"):
        return 5, "evaluation"
    if top in ("report", "heatmaps"):
        return 6, "report"
    if top == "cli":
        return 7, top
    raise AssertionError(f"msde_jax.{module} has no layer: add it to tests/test_architecture.py")


def modules() -> list[str]:
    infos = pkgutil.walk_packages(msde_jax.__path__, prefix="msde_jax.")
    return sorted(info.name.removeprefix("msde_jax.") for info in infos)


def source_of(module: str) -> Path:
    """The file of a module given as a dotted name inside ``msde_jax`` (``""``: the root)."""
    path = PACKAGE.joinpath(*module.split(".")) if module else PACKAGE
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imports_of(module: str, nodes: list[ast.AST] | None = None) -> set[str]:
    """Every ``msde_jax.*`` module imported anywhere in a module (function bodies included).

    ``nodes``: only those statements (e.g. a module's top level), not the whole module.
    """
    tree = ast.parse(source_of(module).read_text())
    found = set()
    for node in ast.walk(tree) if nodes is None else nodes:
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


def test_root_imports_go_downward():
    tree = ast.parse(source_of("").read_text())
    # Importing any msde_jax module runs the root first: it must stay light (no io, backbones,
    # embedder, …) at import time; the Embedder is re-exported lazily (its __getattr__).
    for target in imports_of("", tree.body):
        assert layer(target)[0] <= 2, (
            f"msde_jax/__init__.py imports msde_jax.{target} (layer {layer(target)}) when "
            "imported: only the core and detector layers load eagerly"
        )
    for target in imports_of(""):
        assert layer(target)[0] <= 4, (
            f"msde_jax/__init__.py imports msde_jax.{target} (layer {layer(target)}): the root "
            "re-exports up to the embedder, never the pipeline (evaluation, report, cli)"
        )


def test_root_all_lists_exactly_the_re_exports():
    tree = ast.parse(source_of("").read_text())
    exported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("msde_jax")
        for alias in node.names
    }
    names = list(msde_jax.__all__)
    assert len(names) == len(set(names)), "msde_jax.__all__ lists a name twice"
    assert set(names) == exported | {"__version__"}, (
        f"not in __all__: {sorted(exported - set(names))}; "
        f"in __all__ but not imported: {sorted(set(names) - exported - {'__version__'})}"
    )
    assert not [n for n in names if n.startswith("_") and n != "__version__"]


# Legitimate imports by a computed name, with why: none today (saved detectors name their class,
# looked up in the detectors' registry, never a module to import).
DYNAMIC_IMPORTS_ALLOWED: dict[str, str] = {}


def test_no_imports_by_computed_name():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(path.read_text())):
            name = None
            if isinstance(node, ast.Call):
                func = node.func
                name = getattr(func, "attr", None) or getattr(func, "id", None)
            elif isinstance(node, ast.ImportFrom) and node.module in ("importlib", "builtins"):
                name = next(
                    (a.name for a in node.names if a.name in ("import_module", "__import__")),
                    None,
                )
            if name in ("import_module", "__import__") and where not in DYNAMIC_IMPORTS_ALLOWED:
                found.append(f"{where}:{node.lineno} {name}")
    assert not found, (
        f"imports by a computed name hide layering edges and let data pick a module: {found}"
    )


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
