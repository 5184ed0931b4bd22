"""The ``msde-jax`` command line: images → embeddings → MSDE detector → scores and reports.

Every command prints a one-line ``error: …`` and exits with status 2 for a user mistake (a
missing path, an unreadable image, an empty class, an incompatible model file) instead of a
traceback.

The parser (:mod:`msde_jax.cli.parser`) takes its option lists and defaults from the library;
the commands (:mod:`msde_jax.cli.commands`) call it.
"""

import sys
from collections.abc import Sequence

from msde_jax.cli.commands import COMMANDS, UserError
from msde_jax.cli.parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``msde-jax`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    import os
    import pickle

    from msde_jax.backbones._convert import WeightMappingError

    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except FileNotFoundError as err:
        if os.environ.get("MSDE_JAX_DEBUG"):
            raise
        said = err.filename is None and "no such file" in str(err)  # a message of ours
        text = str(err) if said else f"no such file or folder: {err.filename or err}"
        print(f"error: {text}", file=sys.stderr)
        return 2
    except (
        UserError,
        ValueError,
        ImportError,
        WeightMappingError,
        pickle.UnpicklingError,
        OSError,
        FloatingPointError,
        OverflowError,
    ) as err:
        # ImageReadError is a ValueError; download failures are OSErrors; a training run whose
        # loss diverged raises FloatingPointError; a number too large for an array, an
        # OverflowError. MSDE_JAX_DEBUG=1
        # shows the traceback instead.
        if os.environ.get("MSDE_JAX_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
