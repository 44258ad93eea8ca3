"""The XLA flags the test processes compile with, and the environment without them.

The suite is dominated by XLA compile time (thousands of small programs: the grid,
check_grads, hessians), not by running them. ``FAST_COMPILE`` makes XLA's CPU compiler
do less (about half the compile time of a hessian): no LLVM backend optimisation, the
elemental emitters instead of the newer fusion emitters, no XNNPACK rewrites and the
plain scheduler. A check of a claim that depends on how XLA compiles by default (the
CE-vs-KL experiment's bitwise-identical training runs) runs in a subprocess with
``default_env()``.
"""

import os

FAST_COMPILE = (
  "--xla_backend_optimization_level=0",
  "--xla_cpu_use_fusion_emitters=false",
  "--xla_cpu_use_xnnpack=false",
  "--xla_cpu_enable_concurrency_optimized_scheduler=false",
)


def with_fast_compile(flags: str) -> str:
  """``flags`` plus every ``FAST_COMPILE`` flag it does not set already."""
  given = flags.split()
  names = {f.split("=")[0] for f in given}
  return " ".join(given + [f for f in FAST_COMPILE if f.split("=")[0] not in names])


def default_env() -> dict:
  """This process's environment with the ``FAST_COMPILE`` flags taken out of XLA_FLAGS."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if f not in FAST_COMPILE)
  return env
