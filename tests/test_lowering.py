"""GPU and TPU lowerings of the logits kernels, checked without a device.

``jax.export`` lowers for a platform this machine does not have. After MLIR's
``canonicalize`` pass (which folds the constant-index conditional that
``lax.platform_dependent`` leaves for a single platform), the module of every kernel must
be the one portable formula: no while loop (row blocks), no conditional (fast-or-exact
fallbacks, tiers) and no optimisation barrier -- each of those splits the program on a
GPU or TPU. The CPU lowering is checked to keep its strategy, so that the test cannot
pass by never choosing it.
"""

import re

import jax
import jax.numpy as jnp
import pytest
from jax import export
from jax._src.interpreters import mlir as jax_mlir
from jax._src.lib.mlir import ir, passmanager

import jaxdiv

SHAPE = (256, 8192)  # above the CPU strategy's block size, so it would be chosen


def _kernels():
  def probs(z):
    return jax.nn.softmax(z.astype(jnp.float32)).astype(z.dtype)

  return {
    "kl": lambda a, b, w: jaxdiv.kl_divergence(p_logits=a, q_logits=b, where=w),
    "ce_logits": lambda a, b, w: jaxdiv.cross_entropy(p_logits=a, q_logits=b, where=w),
    "ce_soft": lambda a, b, w: jaxdiv.cross_entropy(probs(a), q_logits=b, where=w),
    "kl_soft": lambda a, b, w: jaxdiv.kl_divergence(probs(a), q_logits=b, where=w),
    "ce_labels": lambda a, b, w: jaxdiv.cross_entropy(
      labels=jnp.argmax(a, axis=-1), q_logits=b, where=w
    ),
    "entropy": lambda a, b, w: jaxdiv.entropy(logits=b, where=w),
    "jensen_shannon": lambda a, b, w: jaxdiv.jensen_shannon_divergence(
      p_logits=a, q_logits=b, where=w
    ),
  }


_OPS = {
  "while": r"stablehlo\.while",
  "conditional": r"stablehlo\.(case|if)\b",
  "optimization_barrier": r"optimization_barrier",
}


def _op_counts(fn, args, platform: str) -> dict:
  exported = export.export(jax.jit(fn), platforms=[platform])(*args)
  with jax_mlir.make_ir_context():
    module = ir.Module.parse(exported.mlir_module())
    passmanager.PassManager.parse("builtin.module(canonicalize)").run(module.operation)
    text = str(module)
  return {name: len(re.findall(pattern, text)) for name, pattern in _OPS.items()}


def _args(dtype, masked: bool):
  spec = jax.ShapeDtypeStruct(SHAPE, dtype)
  where = jax.ShapeDtypeStruct(SHAPE[-1:], jnp.bool_) if masked else None
  return spec, spec, where


def _value_and_grad(f):
  def vg(a, b, w):
    return jax.value_and_grad(lambda b: jnp.sum(f(a, b, w)))(b)

  return vg


def _lowering_cells():
  """Every platform x mode x dtype x mask. The default suite runs three cells a platform, of
  the even-parity half of the options, so that each platform meets each value of each
  option; ``.ci/run`` (``-m slow``) runs the other ten."""
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  for p, platform in enumerate(("cuda", "tpu")):
    for m, mode in enumerate(("fwd", "vg")):
      for d, dtype in enumerate(dtypes):
        for k, masked in enumerate(("unmasked", "masked")):
          sampled = (m + d + k) % 2 == 0 and (m == p or d == p)
          yield pytest.param(platform, mode, dtypes[dtype], masked == "masked",
                             id=f"{masked}-{dtype}-{mode}-{platform}",
                             marks=() if sampled else pytest.mark.slow)  # fmt: skip


@pytest.mark.parametrize("platform, mode, dtype, masked", list(_lowering_cells()))
def test_accelerator_lowering_is_the_portable_formula(platform, mode, dtype, masked):
  for name, f in _kernels().items():
    fn = f if mode == "fwd" else _value_and_grad(f)
    a, b, w = _args(dtype, masked)
    counts = _op_counts(lambda a, b, w=None, fn=fn: fn(a, b, w), (a, b, w), platform)
    assert counts == {k: 0 for k in _OPS}, f"{name} {mode} on {platform}: {counts}"


@pytest.mark.parametrize(
  "name, dtype, op",
  [
    ("kl", jnp.float32, "while"),  # row blocks
    ("ce_labels", jnp.float32, "conditional"),  # fast formula, exact fallback
    ("kl", jnp.bfloat16, "optimization_barrier"),  # a copy per pass
  ],
)
def test_cpu_lowering_keeps_its_strategy(name, dtype, op):
  a, b, w = _args(dtype, masked=False)
  counts = _op_counts(lambda a, b, w=None: _kernels()[name](a, b, w), (a, b, w), "cpu")
  assert counts[op] >= 1, counts
