"""The oldest jax msde_jax runs on, checked at import with the command that fixes it.

pip enforces ``pyproject.toml``'s bound at install; an environment built otherwise (conda,
``--no-deps``, a source tree on ``PYTHONPATH``) meets this check instead of an
``AttributeError`` deep inside a fit. ``.ci/minimum-versions.txt`` pins the lowest versions
the whole test suite passed with and says what fails below each.
"""

import re

import jax

__all__ = ["MIN_JAX", "require_jax", "version_tuple"]

MIN_JAX = (0, 10, 0)


def version_tuple(text: str) -> tuple[int, ...]:
    """``"0.10.2"`` → ``(0, 10, 2)``; ``"0.11.0.dev20261201"`` → ``(0, 11, 0)``."""
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def require_jax(found: str = jax.__version__) -> None:
    """Raise ``ImportError`` if ``found`` is older than :data:`MIN_JAX`."""
    if version_tuple(found) < MIN_JAX:
        floor = ".".join(map(str, MIN_JAX))
        raise ImportError(
            f"msde_jax needs jax >= {floor}, found jax {found}: run "
            f'`pip install -U "jax>={floor}" "jaxlib>={floor}"` '
            '(on an NVIDIA GPU `pip install -U "jax[cuda13]"`).'
        )


require_jax()
