"""Doctest namespace for `pytest --doctest-modules jaxdiv` (docstring examples are tests).

Lives at the repository root, outside the package, so it is never part of the wheel.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiv


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
  """`jax`, `jnp`, `np` and `jaxdiv` in every docstring example, as the docs assume."""
  doctest_namespace.update(jax=jax, jnp=jnp, np=np, jaxdiv=jaxdiv)


@pytest.fixture(autouse=True)
def _doctests_in_float32(request):
  """Run docstring examples with jax's defaults (tests/conftest.py turns on x64 globally)."""
  if isinstance(request.node, pytest.DoctestItem):
    with jax.enable_x64(False):
      yield
  else:
    yield
