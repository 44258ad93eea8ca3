"""Shared test set-up: float64 available for oracles, deterministic seeds."""

import os

# The suite is dominated by XLA compile time (thousands of small programs: the grid,
# check_grads, hessians), not by running them; skipping LLVM's backend optimisation cuts
# its CPU time by about a third. Set before jax starts its backend. Results are checked
# with tolerances, and every bitwise comparison is between runs of the same process.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
  ).strip()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)


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
