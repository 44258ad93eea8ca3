"""Tests for jaxdiv._kernels (the logits kernels and their rules) and jaxdiv._cpu.

The portable ``*_rows`` formulas are the oracle for the CPU strategy: row blocks and
the fast formulas must give the same statistics (the derivative rules read nothing
else), at every edge. Values and gradients are also checked against float64 through
the public API, including under ``vmap``, at large logit offsets, and with label
smoothing.
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

import jaxdiv
from jaxdiv import _cpu, _kernels

INF = np.inf

PUBLIC = {
  "kl": lambda t, z, w=None: jaxdiv.kl_divergence(p_logits=t, q_logits=z, where=w),
  "ce": lambda t, z, w=None: jaxdiv.cross_entropy(p_logits=t, q_logits=z, where=w),
  "soft_ce": lambda t, z, w=None: jaxdiv.cross_entropy(t, q_logits=z, where=w),
  "soft_kl": lambda t, z, w=None: jaxdiv.kl_divergence(t, q_logits=z, where=w),
  "labels": lambda t, z, w=None: jaxdiv.cross_entropy(labels=t, q_logits=z, where=w),
}
ROWS = {n: f"{n}_rows" for n in PUBLIC}
STATS = {
  "kl": _kernels._kl_stats,
  "ce": _kernels._ce_stats,
  "soft_ce": _kernels._soft_ce_stats,
  "soft_kl": _kernels._soft_kl_stats,
  "labels": functools.partial(_kernels._labels_stats, 0.0),
}


def _inputs(name, shape, dtype=jnp.float32, seed=0, scale=3.0):
  rng = np.random.default_rng(seed)
  z = jnp.asarray(scale * rng.standard_normal(shape), dtype)
  if name in ("kl", "ce"):
    t = jnp.asarray(scale * rng.standard_normal(shape), dtype)
  elif name == "labels":
    t = jnp.asarray(rng.integers(0, shape[-1], shape[:-1]))
  else:
    t = jnp.asarray(scipy.special.softmax(scale * rng.standard_normal(shape), -1), dtype)
  return t, z


def _portable(name):
  return jax.jit(lambda t, z, w=None: getattr(_kernels, ROWS[name])(t, z, w))


def _chosen(name):
  return jax.jit(lambda t, z, w=None: STATS[name](t, z, w))


def _up64(name, t, z):
  t64 = t if name == "labels" else jnp.asarray(t, jnp.float64)
  return t64, jnp.asarray(z, jnp.float64)


def _close(a, b, rtol):
  jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol), a, b)


# ---------------------------------------------------------------------------
# The CPU strategy computes the portable statistics
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PUBLIC))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_cpu_strategy_gives_the_portable_statistics(name, dtype, offset):
  # [300, 2048] float32 is 19 row blocks; labels and bfloat16 take the fast formulas,
  # unshifted around 0 and shifted by a sample at +100 (where e^z overflows).
  t, z = _inputs(name, (300, 2048), jnp.float32, seed=1)
  if name in ("kl", "ce"):
    t = t + offset
  t = t if name == "labels" else t.astype(dtype)
  z = (z + offset).astype(dtype)
  assert _cpu.strategy(getattr(_kernels, ROWS[name]), t, z, None) is not None
  got, want = _chosen(name)(t, z), _portable(name)(t, z)
  np.testing.assert_allclose(got[0], want[0], rtol=3e-6, atol=3e-6)
  # The shift may differ (a sample's maximum); what the rules use is m + log-sum.
  for m, ls, m_, ls_ in zip(got[1::2], got[2::2], want[1::2], want[2::2], strict=True):
    np.testing.assert_allclose(np.asarray(m, np.float64) + ls, np.asarray(m_, np.float64) + ls_)


def _edge_rows(name, v=8):
  """Rows that each hit one edge: -inf logits (alone, against a zero probability, a
  whole row), +inf, NaN, logits of +-1e4 and +-1e30, zero and negative probabilities."""
  rng = np.random.default_rng(6)
  z = rng.standard_normal((10, v))
  z[0, 1] = -INF
  z[1, :] = -INF
  z[2, 3] = INF
  z[3, 2] = np.nan
  z[4] = [1e4, -1e4, 0, 3, -2e3, 1, 2, 5]
  z[5] = [1e30, -1e30, 0, 1e29, -5, 1, 2, 3]
  z[6, 0] = -INF  # against target 0 (soft) or the label (labels)
  if name in ("kl", "ce"):
    t = rng.standard_normal((10, v))
    t[6, 0] = 2.0
    t[7, 4] = -INF  # p = 0 where q > 0: valid
    t[8, 5], z[8, 5] = -INF, -INF  # both zero: valid
  elif name == "labels":
    t = np.array([0, 1, 2, 3, 4, 5, 0, 7, 6, 2])
  else:
    t = scipy.special.softmax(rng.standard_normal((10, v)), -1)
    t[6, 0] = 0.3
    t[7, :] = 0
    t[7, 2] = 1.0  # one-hot: zeros against finite logits, valid
    t[8, 5] = -0.1  # negative probability
    t[9, 1], z[9, 1] = 0.0, -INF  # zero probability at a -inf logit: valid
  return jnp.asarray(t), jnp.asarray(z)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_row_blocks_give_the_portable_rows_at_every_edge(name):
  t8, z8 = _edge_rows(name)
  reps = (40, 512) if name != "labels" else (40, 1)
  z = jnp.tile(z8, (40, 512)).astype(jnp.float32)  # [400, 4096]: 7 row blocks
  t = jnp.tile(t8, reps) if name != "labels" else jnp.tile(t8, 40)
  t = t if name == "labels" else t.astype(jnp.float32)
  blocked = _cpu._exact(getattr(_kernels, ROWS[name]), z)
  assert blocked is not None
  got = jax.jit(lambda t, z: blocked(t, z, None))(t, z)
  want = _portable(name)(t, z)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(PUBLIC))
@pytest.mark.parametrize("shift", [False, True])
def test_fast_formula_is_finite_only_where_it_equals_the_exact_one(name, shift):
  # The fast formula is kept only where all its results are finite, so at every edge it
  # must either be non-finite or already right: never a finite wrong number.
  t, z = _edge_rows(name)
  z = z.astype(jnp.float32)
  t = t if name == "labels" else t.astype(jnp.float32)
  fast = jax.jit(lambda t, z: _cpu._tier(_cpu._FAST[ROWS[name]], t, z, shift, ()))(t, z)
  exact = _portable(name)(t, z)
  finite = np.ones(z.shape[0], bool)
  for f in fast:
    finite &= np.isfinite(np.asarray(f))
  bad = [1, 2, 3] if name == "labels" else [0, 1, 2, 3, 6]
  assert not finite[bad].any()
  assert finite.any()

  def lse(out):
    return [np.asarray(m, np.float64) + ls for m, ls in zip(out[1::2], out[2::2], strict=True)]

  for f, e in zip([fast[0], *lse(fast)], [exact[0], *lse(exact)], strict=True):
    np.testing.assert_allclose(np.asarray(f)[finite], np.asarray(e)[finite], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_unshifted_rows_whose_exponentials_underflow_take_the_exact_rows(name):
  # Logits spread over [-104, -84] are finite unshifted, but e^z is flushed to 0 below
  # -87 (the loss would be off by about 1 %, silently); the tier marks the row NaN.
  t, z = _inputs(name, (3, 4096), jnp.bfloat16, seed=8, scale=1.0)
  z = z.at[1].set(jnp.linspace(-104.0, -84.0, 4096, dtype=jnp.bfloat16))
  if name in ("kl", "ce"):
    t = t.at[1].set(jnp.linspace(-84.0, -104.0, 4096, dtype=jnp.bfloat16))
  tier = jax.jit(lambda t, z: _cpu._tier(_cpu._FAST[ROWS[name]], t, z, False, ()))(t, z)
  assert all(bool(jnp.isnan(o[1])) for o in tier)
  got = jax.jit(PUBLIC[name])(t, z)
  np.testing.assert_allclose(got, PUBLIC[name](*_up64(name, t, z)), rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_logits_spanning_more_than_exp_range_above_the_sample_take_the_exact_rows(name):
  # One logit 200 above the rest at a position the sample skips: exp overflows in both
  # fast tiers, so the kernel must give the exact value.
  t, z = _inputs(name, (3, 4096), jnp.bfloat16, seed=2, scale=1.0)
  z = z.at[:, 4096 // _cpu._SAMPLES + 1].add(200.0)
  if name in ("kl", "ce"):
    t = t.at[:, 7].add(150.0)
  for shift in (False, True):
    out = jax.jit(lambda t, z, s=shift: _cpu._tier(_cpu._FAST[ROWS[name]], t, z, s, ()))(t, z)
    assert not all(bool(jnp.all(jnp.isfinite(o))) for o in out)
  got = jax.jit(PUBLIC[name])(t, z)
  assert bool(jnp.all(jnp.isfinite(got)))
  np.testing.assert_allclose(got, PUBLIC[name](*_up64(name, t, z)), rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["soft_ce", "soft_kl"])
def test_a_negative_probability_is_nan_value_and_gradient_on_every_path(name):
  for dtype in (jnp.float32, jnp.bfloat16):
    t, z = _inputs(name, (3, 2000), dtype, seed=3)
    t = t.at[1, 4].set(-1e-3)
    value, grad = jax.jit(jax.value_and_grad(lambda z, t: jnp.sum(PUBLIC[name](t, z)[1])))(z, t)
    assert bool(jnp.isnan(value)) and bool(jnp.all(jnp.isnan(grad[1])))
    assert bool(jnp.all(jnp.isfinite(PUBLIC[name](t, z)[jnp.array([0, 2])])))


@pytest.mark.parametrize("name", ["kl", "ce"])
@pytest.mark.parametrize("v", [10, 4096])
@pytest.mark.parametrize("masked", [False, True])
def test_p_positive_where_q_is_zero_is_inf_even_where_exp_of_p_underflows(name, v, masked):
  # Row 0: p_1 = e^-200 / Z underflows after the shift, but p_1 > 0 = q_1: +inf.
  # Rows 1-3 add a NaN or +inf logit, which must keep the row NaN.
  a = np.zeros((4, v), np.float32)
  b = np.zeros((4, v), np.float32)
  a[:, 0] = 200.0
  b[:, 1] = -INF
  a[1, 3] = np.nan
  a[2, 3] = INF
  b[3, 3] = INF
  where = jnp.ones((4, v), bool).at[:, -1].set(False) if masked else None
  out = np.asarray(jax.jit(PUBLIC[name])(a, b, where))
  assert out[0] == INF
  assert np.isnan(out[1:]).all()


# ---------------------------------------------------------------------------
# Exact at any logit offset
# ---------------------------------------------------------------------------


def _representable(name, shape, dtype, seed):
  """Inputs whose logits are multiples of 1/16 in [-8, 8]: ``z + c`` is exact in
  float32 for ``|c| <= 1e6`` (its spacing there is 1/16)."""
  t, z = _inputs(name, shape, jnp.float32, seed=seed, scale=2.0)
  z = jnp.round(z * 16) / 16
  if name in ("kl", "ce"):
    t = jnp.round(t * 16) / 16
  return t, z.astype(dtype)


@pytest.mark.parametrize("name", sorted(PUBLIC))
@pytest.mark.parametrize("shape", [(4, 10), (64, 4096)], ids=["small", "strategy"])
@pytest.mark.parametrize("offset", [-1e4, 1e6])  # the grid covers +-1e4 and +-1e6 per function
def test_adding_a_constant_to_the_logits_changes_neither_value_nor_gradient(name, shape, offset):
  t, z = _representable(name, shape, jnp.float32, seed=12)

  def shifted(c):
    tc = t + c if name in ("kl", "ce") else t
    return jax.jit(jax.value_and_grad(lambda z, tc: jnp.sum(PUBLIC[name](tc, z + c))))(z, tc)

  (v0, g0), (v1, g1) = shifted(0.0), shifted(offset)
  np.testing.assert_allclose(v1, v0, rtol=2e-6)
  np.testing.assert_allclose(g1, g0, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["kl", "ce", "labels", "soft_ce", "soft_kl"])
@pytest.mark.parametrize("c", [1e8, -1e8, 1e30, -1e30])
def test_equal_logits_at_huge_magnitudes_give_the_uniform_distribution(name, c):
  z = jnp.full((2, 3), c, jnp.float32)
  t = {
    "kl": z,
    "ce": z,
    "labels": jnp.array([0, 2]),
    "soft_ce": jnp.full((2, 3), 1 / 3, jnp.float32),
    "soft_kl": jnp.full((2, 3), 1 / 3, jnp.float32),
  }[name]
  want = 0.0 if name in ("kl", "soft_kl") else np.log(3)
  np.testing.assert_allclose(PUBLIC[name](t, z), [want, want], rtol=1e-6, atol=1e-6)


def test_minus_inf_between_two_huge_equal_logits_gives_log_2():
  z = jnp.array([1e8, -INF, 1e8], jnp.float32)
  np.testing.assert_allclose(jaxdiv.cross_entropy(labels=jnp.array(0), q_logits=z), np.log(2))
  np.testing.assert_allclose(jaxdiv.cross_entropy(p_logits=z, q_logits=z), np.log(2))
  np.testing.assert_allclose(jaxdiv.entropy(logits=z), np.log(2), rtol=1e-6)


# ---------------------------------------------------------------------------
# Transforms: vmap, eager calls, 16-bit inputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PUBLIC))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_vmap_equals_the_batched_call_with_one_slice_on_the_exact_rows(name, dtype):
  t, z = _inputs(name, (4, 300, 64), dtype, seed=4)
  z = z.at[2, 1, 5].set(-INF)
  batched = jax.jit(PUBLIC[name])(t, z)
  mapped = jax.jit(jax.vmap(PUBLIC[name]))(t, z)
  np.testing.assert_allclose(batched, mapped, rtol=1e-6)
  g = jax.grad(lambda z: jnp.sum(PUBLIC[name](t, z)))
  gm = jax.grad(lambda z: jnp.sum(jax.vmap(PUBLIC[name])(t, z)))
  np.testing.assert_allclose(jax.jit(gm)(z).astype(float), jax.jit(g)(z).astype(float), atol=1e-6)


def _hlo_ops(fn, *args):
  text = jax.jit(fn).lower(*args).as_text()
  return {op: text.count(op) for op in ("stablehlo.while", "stablehlo.case", "stablehlo.select")}


@pytest.mark.parametrize("name", ["kl", "labels"])
def test_vmap_folds_into_the_batch_instead_of_batching_the_strategy(name):
  # Under vmap the strategy runs once on the batched input: the same loops and
  # conditionals as the batched call, not a conditional turned into a select of both.
  t, z = _inputs(name, (4, 256, 1024), jnp.float32, seed=5)
  flat = (t.reshape(-1) if name == "labels" else t.reshape(-1, 1024)), z.reshape(-1, 1024)
  assert _hlo_ops(jax.vmap(PUBLIC[name]), t, z) == _hlo_ops(PUBLIC[name], *flat)


def test_an_eager_call_compiles_nothing_after_the_first(caplog):
  t, z = _inputs("kl", (8, 10), jnp.float32)
  y = jnp.array([0, 1, 2, 3, 4, 5, 6, 7])
  calls = [
    lambda: jaxdiv.kl_divergence(p_logits=t, q_logits=z),
    lambda: jaxdiv.cross_entropy(labels=y, q_logits=z),
    lambda: jaxdiv.cross_entropy(jax.nn.softmax(t), q_logits=z),
  ]
  for call in calls:
    call()
  with jax.log_compiles(), caplog.at_level(logging.DEBUG):
    caplog.clear()
    for call in calls:
      jax.block_until_ready(call())
  compiles = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
  assert compiles == []


@pytest.mark.parametrize("name", sorted(PUBLIC))
@pytest.mark.parametrize(
  "dtype, case",
  [(jnp.bfloat16, "unshifted"), (jnp.bfloat16, "shifted"), (jnp.bfloat16, "exact")]
  + [(jnp.float16, "unshifted")],
)
def test_16_bit_inputs_give_the_values_and_gradients_of_their_float32_upcast(name, dtype, case):
  t, z = _inputs(name, (4, 2048), jnp.float32, seed=10, scale=2.0)
  if case == "shifted":
    z = z + 100.0
    t = t + 100.0 if name in ("kl", "ce") else t
  if case == "exact":
    z = z.at[1, 5].set(-INF)
  t = t if name == "labels" else t.astype(dtype)
  z = z.astype(dtype)
  up = t if name == "labels" else t.astype(jnp.float32)
  got = jax.jit(jax.value_and_grad(lambda z: jnp.sum(PUBLIC[name](t, z))))(z)
  want = jax.jit(jax.value_and_grad(lambda z: jnp.sum(PUBLIC[name](up, z))))(z.astype(jnp.float32))
  assert got[0].dtype == jnp.float32 and got[1].dtype == dtype
  np.testing.assert_allclose(got[0], want[0], rtol=2e-6)
  np.testing.assert_allclose(
    got[1].astype(jnp.float32), want[1].astype(dtype).astype(jnp.float32), atol=1e-3
  )


def _temp_bytes(f, *args):
  return jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_kernels_keep_no_n_by_v_temporaries(name):
  # A [512, 8192] float32 array is 16 MiB: forward and value-and-gradient keep
  # block-sized temporaries, far below it.
  t, z = _inputs(name, (512, 8192), jnp.float32, seed=5)
  bound = 4 * _cpu._BLOCK_BYTES
  assert _temp_bytes(PUBLIC[name], t, z) <= bound < 512 * 8192 * 4 / 2
  assert _temp_bytes(jax.value_and_grad(lambda z, t: jnp.sum(PUBLIC[name](t, z))), z, t) <= bound


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_16_bit_fast_formulas_keep_no_converted_copy(name):
  # Each fast pass converts its own reads: no float32 copy of a bfloat16 input (16 MiB
  # here) is written out, in either tier.
  t, z = _inputs(name, (512, 8192), jnp.float32, seed=5)
  t = t if name == "labels" else t.astype(jnp.bfloat16)
  z = z.astype(jnp.bfloat16)
  for shift in (False, True):
    tier = functools.partial(_cpu._tier, _cpu._FAST[ROWS[name]], shift=shift, static=())
    assert _temp_bytes(lambda t, z, tier=tier: tier(t, z), t, z) <= _cpu._BLOCK_BYTES


def test_16_bit_probabilities_below_float32_normal_count_as_zero_on_every_path():
  # A bfloat16 probability of 1e-39 is a float32 subnormal: the fast formula (unmasked)
  # and the exact rows (where=all-True) must both treat it as the 0 it is flushed to.
  t, z = _inputs("soft_kl", (4, 2048), jnp.float32, seed=11)
  t = t.at[2, 7].set(1e-39).astype(jnp.bfloat16)
  zeroed = t.at[2, 7].set(0)
  z = z.astype(jnp.bfloat16)
  everywhere = jnp.ones(z.shape, bool)
  for name in ("soft_ce", "soft_kl"):
    for where in (None, everywhere):
      got = jax.jit(PUBLIC[name])(t, z, where)
      np.testing.assert_allclose(got, jax.jit(PUBLIC[name])(zeroed, z, where), rtol=1e-6)
      grad = jax.grad(lambda t, z, w, f=PUBLIC[name]: jnp.sum(f(t, z, w)), (0, 1))
      assert all(bool(jnp.all(jnp.isfinite(g))) for g in grad(t, z, where))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("edge", ["none", "target -inf", "both -inf"])
def test_ce_and_kl_from_logits_take_bitwise_identical_steps(dtype, edge):
  # H(p, q) = H(p) + KL(p || q) with p fixed: the q-gradients are one rule, fed the same
  # statistics -- also where a -inf target logit sends KL's fast formula to the exact
  # rows (CE's goes with it).
  t, z = _inputs("kl", (8, 1000), dtype, seed=9)
  if edge != "none":
    t = t.at[2, 3].set(-INF)
  if edge == "both -inf":
    z = z.at[2, 3].set(-INF)

  def step(name):
    return jax.jit(jax.value_and_grad(lambda z: jnp.sum(PUBLIC[name](t, z))))(z)

  (ce, g_ce), (kl, g_kl) = step("ce"), step("kl")
  assert bool(jnp.isfinite(ce)) and bool(jnp.isfinite(kl))
  np.testing.assert_array_equal(g_ce, g_kl)


# ---------------------------------------------------------------------------
# Label smoothing
# ---------------------------------------------------------------------------


def _smoothed_target(labels, v, eps, where):
  onehot = jax.nn.one_hot(jnp.maximum(labels, 0), v)
  included = jnp.ones(v) if where is None else where.astype(float)
  return (1 - eps) * onehot + eps * included / jnp.sum(included)


@pytest.mark.parametrize("eps", [0.1, 1.0])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_label_smoothing_is_the_cross_entropy_against_the_smoothed_target(eps, masked, dtype):
  t, z = _inputs("labels", (6, 4097), dtype, seed=13)
  labels = t.at[1].set(-1)  # ignored: exactly 0, zero gradient
  where = jnp.arange(4097) % 5 != 3 if masked else None
  labels = jnp.where((labels % 5 == 3) & masked, labels + 1, labels)
  target = _smoothed_target(labels, 4097, eps, where)

  def smoothed(z):
    return jaxdiv.cross_entropy(labels=labels, q_logits=z, label_smoothing=eps, where=where)

  def dense(z):
    return jaxdiv.cross_entropy(target, q_logits=z, where=where).at[1].set(0.0)

  z32 = z.astype(jnp.float32)
  np.testing.assert_allclose(jax.jit(smoothed)(z), jax.jit(dense)(z32), rtol=2e-6)
  g = jax.jit(jax.grad(lambda z: jnp.sum(smoothed(z))))(z).astype(jnp.float32)
  g_dense = jax.jit(jax.grad(lambda z: jnp.sum(dense(z))))(z32)
  np.testing.assert_allclose(g, g_dense.astype(dtype).astype(jnp.float32), atol=2e-3)
  assert bool(jnp.all(g[1] == 0))
  probs = jax.nn.softmax(_numerics_mask(z32, where))
  got = jaxdiv.cross_entropy(labels=labels, q=probs, label_smoothing=eps, where=where)
  np.testing.assert_allclose(got, jax.jit(dense)(z32), rtol=2e-5)


def _numerics_mask(z, where):
  return z if where is None else jnp.where(where, z, -INF)


def test_label_smoothing_puts_no_mass_on_excluded_categories():
  # optax.smooth_labels spreads mass onto every class, so an excluded (-inf) one costs
  # +inf; jaxdiv spreads it over the included ones only.
  z = jnp.array([2.0, 0.0, -INF, 1.0])
  where = jnp.array([True, True, False, True])
  loss = jaxdiv.cross_entropy(labels=jnp.array(0), q_logits=z, label_smoothing=0.3, where=where)
  assert bool(jnp.isfinite(loss))
  unmasked = jaxdiv.cross_entropy(labels=jnp.array(0), q_logits=z, label_smoothing=0.3)
  assert unmasked == INF


@pytest.mark.parametrize(
  "kwargs, error, match",
  [
    ({"label_smoothing": 1.5}, ValueError, r"label_smoothing.*\[0, 1\]"),
    ({"label_smoothing": "a"}, TypeError, "label_smoothing"),
    ({"label_smoothing": 0.1, "p": jnp.ones(3) / 3}, ValueError, "labels"),
  ],
)
def test_bad_label_smoothing_is_a_clear_error(kwargs, error, match):
  kwargs = {"labels": jnp.array(0), **kwargs}
  if "p" in kwargs:
    kwargs.pop("labels")
  with pytest.raises(error, match=match):
    jaxdiv.cross_entropy(q_logits=jnp.zeros(3), **kwargs)
