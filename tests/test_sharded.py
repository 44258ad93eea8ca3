"""Tests for jaxdiv._sharded: vocabulary-parallel losses on 4 simulated CPU devices.

The main test process has already initialised jax with one device, so the check runs in a
subprocess with ``--xla_force_host_platform_device_count=4``.
"""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
  """
  import os
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  import jax, jax.numpy as jnp, numpy as np
  jax.config.update("jax_enable_x64", True)
  import jaxdiv
  from jaxdiv._sharded import sharded_cross_entropy, sharded_kl_divergence
  assert jax.device_count() == 4
  mesh = jax.make_mesh((4,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
  kw = dict(mesh=mesh, axis_name="vocab")
  rng = np.random.default_rng(0)
  N, V = 6, 16
  zp = jnp.asarray(rng.normal(size=(N, V))); zq = jnp.asarray(rng.normal(size=(N, V)))
  lab = jnp.asarray([0, 5, -1, 15, 16, 9])
  wh = jnp.asarray(rng.random((N, V)) > 0.3)
  cases = [
    (lambda a, b: sharded_cross_entropy(labels=lab, q_logits=b, **kw),
     lambda a, b: jaxdiv.cross_entropy(labels=lab, q_logits=b)),
    (lambda a, b: sharded_cross_entropy(labels=lab, q_logits=b, where=wh, **kw),
     lambda a, b: jaxdiv.cross_entropy(labels=lab, q_logits=b, where=wh)),
    (lambda a, b: sharded_cross_entropy(p_logits=a, q_logits=b, **kw),
     lambda a, b: jaxdiv.cross_entropy(p_logits=a, q_logits=b)),
    (lambda a, b: sharded_cross_entropy(jax.nn.softmax(a), q_logits=b, where=wh, **kw),
     lambda a, b: jaxdiv.cross_entropy(jax.nn.softmax(a), q_logits=b, where=wh)),
    (lambda a, b: sharded_kl_divergence(p_logits=a, q_logits=b, where=wh, **kw),
     lambda a, b: jaxdiv.kl_divergence(p_logits=a, q_logits=b, where=wh)),
    (lambda a, b: sharded_kl_divergence(jax.nn.softmax(a), q_logits=b, **kw),
     lambda a, b: jaxdiv.kl_divergence(jax.nn.softmax(a), q_logits=b)),
  ]
  c = jnp.asarray(rng.normal(size=N))

  def value_and_grads(f):
    def loss(a, b):
      v = f(a, b)
      return jnp.nansum(v * c), v

    return jax.value_and_grad(loss, (0, 1), has_aux=True)(zp, zq)[::-1]  # (grads, (_, v))

  # One compiled function for every case, sharded and single-device: values and gradients.
  results = jax.jit(lambda: [[value_and_grads(f) for f in pair] for pair in cases])()
  for (g1, (_, v1)), (g2, (_, v2)) in results:
    assert np.array_equal(np.isnan(v1), np.isnan(v2)), (v1, v2)
    np.testing.assert_allclose(v1, v2, rtol=1e-12, atol=1e-12)
    for x, y in zip(g1, g2):
      np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)
  # Compiled HLO of value-and-gradient on sharded float32 logits (KL and CE in one
  # function): no all-gather at all, only all-reduces of per-row scalars.
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "vocab"))
  z32 = jax.device_put(jnp.asarray(rng.normal(size=(8, 64)), jnp.float32), sh)
  lab32 = jnp.asarray(rng.integers(0, 64, 8))

  def loss(b):
    kl = sharded_kl_divergence(p_logits=2 * b, q_logits=b, **kw)
    return (kl + sharded_cross_entropy(labels=lab32, q_logits=b, **kw)).sum()

  hlo = jax.jit(jax.value_and_grad(loss)).lower(z32).compile().as_text()
  assert "all-gather" not in hlo and "all-reduce" in hlo
  print("OK")
  """
)


def test_sharded_losses_equal_single_device_and_never_all_gather():
  out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
