"""Shared test set-up: float64 available for oracles, deterministic seeds."""

import atexit
import os
import shutil
import sys
import tempfile

# Compile less (see tests/_compiler.py); set before jax starts its backend. Results are
# checked with tolerances, and every bitwise comparison is between programs of the same
# process, or runs in a subprocess with XLA's default flags.
sys.path.insert(0, os.path.dirname(__file__))
from _compiler import with_fast_compile  # noqa: E402

os.environ["XLA_FLAGS"] = with_fast_compile(os.environ.get("XLA_FLAGS", ""))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

# Tests build fresh closures that compile to the same small programs again and again (the
# grid's cells, check_grads, the per-form stacks); JAX's persistent compilation cache, one
# folder per test process (set in-process, so subprocesses do not share it), gives each
# such program one compile.
_CACHE = tempfile.mkdtemp(prefix="jaxdiv-test-xla-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_terminal_summary(terminalreporter):
  """Print the size of the adversarial grid (its cells run inside one xdist worker)."""
  import sys
  from pathlib import Path

  reports = [r for v in terminalreporter.stats.values() for r in v if hasattr(r, "nodeid")]
  if not any("test_grid.py::test_grid" in r.nodeid for r in reports):
    return

  sys.path.insert(0, str(Path(__file__).parent))
  import test_grid

  mode = "full" if test_grid.FULL_GRID else "deterministic sample; JAXDIV_FULL_GRID=1 for all"
  terminalreporter.write_line(f"adversarial grid: {test_grid.planned_cells()} cells ({mode})")
