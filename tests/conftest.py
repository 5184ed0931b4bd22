"""Strict test configuration: rank promotion raises, warnings are errors, fixed seeds."""

import os

from testing import xla_flags

# XLA reads its flags when jax starts its backend: they are set before anything imports jax
# (pytest-xdist's workers inherit them from the controller, which sets them first).
os.environ["XLA_FLAGS"] = xla_flags()

# The suite does not share compiled programs through the user's cache folder (xdist workers,
# compilation counts); tests/test_compilation_cache.py turns it on in fresh processes.
os.environ.setdefault("MSDE_JAX_COMPILATION_CACHE", "off")

import jax
import numpy as np
import pytest
from hypothesis import settings

jax.config.update("jax_numpy_rank_promotion", "raise")

# Shapes are kept small and bucketed in property tests: every new shape recompiles.
settings.register_profile("msde", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("msde")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def x64():
    """Run a test in float64 (restored afterwards)."""
    with jax.enable_x64(True):
        yield
