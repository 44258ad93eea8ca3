"""Tests for jaxdiv._numerics: the elementwise helpers every family is built from.

The fused logits kernels (kl_from_logits, ce_from_logits, soft_ce_from_logits) are tested
through the public API in test_kl.py (values, identities and the closed-form gradients).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

import jaxdiv
from jaxdiv import _numerics

INF = np.inf


def _all_finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


def _derivatives(f, *args):
  """grad, jacfwd and hessian of a scalar ``f`` in all its arguments, in one jit."""
  argnums = tuple(range(len(args)))
  return jax.jit(
    lambda *a: tuple(d(f, argnums=argnums)(*a) for d in (jax.grad, jax.jacfwd, jax.hessian))
  )(*args)


# ---------------------------------------------------------------------------
# compute_dtype and neg_sum
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "dtype, expected",
  [
    (jnp.bfloat16, jnp.float32),
    (jnp.float16, jnp.float32),
    (jnp.float32, jnp.float32),
    (jnp.float64, jnp.float64),
    (jnp.int32, jnp.float64),  # ints: the default float, float64 under x64 (conftest)
    (jnp.int8, jnp.float64),
    (jnp.bool_, jnp.float64),
  ],
)
def test_compute_dtype(dtype, expected):
  assert _numerics.compute_dtype(dtype) == jnp.dtype(expected)


def test_neg_sum_of_zero_row_is_positive_zero():
  out = _numerics.neg_sum(jnp.zeros((2, 3)))
  assert all(v == 0.0 and math.copysign(1.0, v) == 1.0 for v in np.asarray(out).tolist())


def test_neg_sum_reduces_last_axis():
  x = jnp.arange(6.0).reshape(2, 3)
  np.testing.assert_array_equal(_numerics.neg_sum(x), [-3.0, -12.0])


# ---------------------------------------------------------------------------
# safe_log
# ---------------------------------------------------------------------------


def test_safe_log_values_and_zero_mask():
  x = jnp.array([0.0, 0.5, 1.0, 2.0])
  log_x, zero = _numerics.safe_log(x)
  np.testing.assert_array_equal(log_x, [0.0, np.log(0.5), 0.0, np.log(2.0)])
  np.testing.assert_array_equal(zero, [True, False, False, False])


def test_safe_log_negative_and_nan_give_nan():
  log_x, _ = _numerics.safe_log(jnp.array([-0.1, np.nan]))
  assert bool(jnp.all(jnp.isnan(log_x)))


def test_safe_log_derivative_is_zero_at_zero_and_one_over_x_elsewhere():
  g = jax.grad(lambda x: jnp.sum(_numerics.safe_log(x)[0]))(jnp.array([0.0, 0.25]))
  np.testing.assert_array_equal(g, [0.0, 4.0])


def test_x_times_safe_log_x_is_exactly_zero_with_finite_derivatives_at_zero():
  def f(x):
    return jnp.sum(x * _numerics.safe_log(x)[0])

  x = jnp.array([0.0, 0.5])
  assert float(f(x)) == 0.5 * np.log(0.5)
  assert float(jax.grad(f)(x)[0]) == 0.0
  assert _all_finite(_derivatives(f, x))


# ---------------------------------------------------------------------------
# xlogy and rel_entr
# ---------------------------------------------------------------------------

# Every combination of zero / positive x and y, including the +inf cases.
_X = np.array([0.0, 0.0, 0.3, 0.3, 1.0, 0.7])
_Y = np.array([0.0, 0.4, 0.0, 0.4, 1.0, 0.2])


def _xlogy(x, y):
  x, y = jnp.asarray(x), jnp.asarray(y)
  x_zero = x == 0
  log_y, y_zero = _numerics.safe_log(y)
  return _numerics.xlogy(x, x_zero, log_y, y_zero)


def _rel_entr(x, y):
  x, y = jnp.asarray(x), jnp.asarray(y)
  log_x, x_zero = _numerics.safe_log(x)
  log_y, y_zero = _numerics.safe_log(y)
  return _numerics.rel_entr(x, x_zero, log_x, log_y, y_zero)


def test_xlogy_matches_scipy_including_minus_inf():
  expected = scipy.special.xlogy(_X, _Y)
  assert np.isneginf(expected).any()
  np.testing.assert_allclose(_xlogy(_X, _Y), expected, rtol=1e-15)


def test_rel_entr_matches_scipy_including_plus_inf():
  expected = scipy.special.rel_entr(_X, _Y)
  assert np.isposinf(expected).any()
  np.testing.assert_allclose(_rel_entr(_X, _Y), expected, rtol=1e-15)


def test_xlogy_derivative_in_x_is_log_y_also_at_x_zero():
  y = jnp.array([0.4, 0.9])
  g = jax.grad(lambda x: jnp.sum(_xlogy(x, y)))(jnp.array([0.0, 0.0]))
  np.testing.assert_allclose(g, np.log([0.4, 0.9]), rtol=1e-15)


def test_xlogy_derivative_in_x_at_x_and_y_zero_is_zero():
  g = jax.grad(lambda x: jnp.sum(_xlogy(x, jnp.array([0.0]))))(jnp.array([0.0]))
  np.testing.assert_array_equal(g, [0.0])


def test_xlogy_and_rel_entr_derivatives_finite_where_terms_finite():
  x, y = jnp.array([0.0, 0.0, 0.3]), jnp.array([0.0, 0.4, 0.4])
  for f in (_xlogy, _rel_entr):

    def total(x, y, f=f):
      return jnp.sum(f(x, y))

    assert bool(jnp.isfinite(total(x, y)))
    assert _all_finite(_derivatives(total, x, y)), f.__name__


def test_rel_entr_derivative_in_x_at_x_zero_is_minus_log_y():
  g = jax.grad(lambda x: jnp.sum(_rel_entr(x, jnp.array([0.25]))))(jnp.array([0.0]))
  np.testing.assert_allclose(g, [-np.log(0.25)], rtol=1e-15)


def test_xlogy_and_rel_entr_propagate_nan():
  assert bool(jnp.isnan(_xlogy(jnp.array(np.nan), jnp.array(0.0))))
  assert bool(jnp.isnan(_xlogy(jnp.array(0.0), jnp.array(np.nan))))
  assert bool(jnp.isnan(_rel_entr(jnp.array(np.nan), jnp.array(0.0))))
  assert bool(jnp.isnan(_rel_entr(jnp.array(0.0), jnp.array(np.nan))))


# ---------------------------------------------------------------------------
# log_softmax
# ---------------------------------------------------------------------------


def test_log_softmax_matches_jax_nn_without_mask():
  z = jax.random.normal(jax.random.key(0), (4, 5), jnp.float64) * 3
  np.testing.assert_allclose(_numerics.log_softmax(z), jax.nn.log_softmax(z), rtol=1e-14)


def test_log_softmax_is_stable_for_huge_logits_in_float32():
  z = jnp.array([1e4, -1e4, 0.0], jnp.float32)
  out = _numerics.log_softmax(z)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, [0.0, -2e4, -1e4], rtol=1e-6)


def test_log_softmax_minus_inf_logit_gives_minus_inf():
  out = _numerics.log_softmax(jnp.array([0.0, -INF, 0.0]))
  np.testing.assert_allclose(out, [-np.log(2), -INF, -np.log(2)], rtol=1e-15)


def test_log_softmax_mask_equals_slicing_and_excluded_get_minus_inf():
  z = jnp.array([0.3, 2.0, -1.0, 0.5])
  mask = jnp.array([True, False, True, True])
  out = _numerics.log_softmax(z, mask)
  np.testing.assert_allclose(out[mask], jax.nn.log_softmax(z[mask]), rtol=1e-15)
  assert float(out[1]) == -INF


def test_log_softmax_fully_masked_row_is_all_minus_inf():
  out = _numerics.log_softmax(jnp.zeros((2, 3)), jnp.array([[False] * 3, [True] * 3]))
  assert bool(jnp.all(out[0] == -INF))
  np.testing.assert_allclose(out[1], -np.log(3.0), rtol=1e-15)


def test_log_softmax_all_minus_inf_row_without_mask_is_nan():
  assert bool(jnp.all(jnp.isnan(_numerics.log_softmax(jnp.full((3,), -INF)))))


def test_log_softmax_plus_inf_logit_gives_nan_entry():
  out = _numerics.log_softmax(jnp.array([0.0, INF]))
  assert bool(jnp.isnan(out[1]))


def test_log_softmax_derivatives_finite_at_minus_inf_and_masked_rows():
  z = jnp.array([[0.0, -INF, 1.0], [2.0, 1.0, 0.0]])
  mask = jnp.array([[True, True, True], [False, False, False]])

  def f(z):
    log_p = _numerics.log_softmax(z, mask)
    p = jnp.exp(log_p)
    return jnp.sum(p * jnp.where(p == 0, 0.0, log_p)) + jnp.sum(p**2)

  assert _all_finite(_derivatives(f, z))


# ---------------------------------------------------------------------------
# The fused logits kernels: fast path and exact path
#
# Without a mask each kernel first evaluates a where-free formula -- unshifted when a
# strided sample of the logits is at most _UNSHIFTED_MAX, else shifted by sampled row
# maxima -- and keeps it where every result is finite; otherwise (and always with a
# mask) it takes the exact path. A mask of all True selects the exact path for the same
# values, which makes it an oracle for the fast one.
# ---------------------------------------------------------------------------

_PUBLIC = {
  "kl": _numerics.kl_from_logits,
  "ce": _numerics.ce_from_logits,
  "soft_ce": _numerics.soft_ce_from_logits,
  "soft_kl": _numerics.soft_kl_from_logits,
  "labels": _numerics.labels_ce_from_logits,
}
# name: (fast path, exact path, the kernel taking (target, logits, where))
_KERNELS = {
  name: (getattr(_numerics, f"_{name}_fast"), getattr(_numerics, f"_{name}_exact"), call)
  for name, call in _PUBLIC.items()
}


def _kernel_inputs(name, shape, dtype, seed=0, scale=3.0):
  rng = np.random.default_rng(seed)
  z = jnp.asarray(scale * rng.standard_normal(shape), dtype)
  if name in ("kl", "ce"):
    target = jnp.asarray(scale * rng.standard_normal(shape), dtype)
  elif name == "labels":
    target = jnp.asarray(rng.integers(0, shape[-1], shape[:-1]))
  else:
    target = jnp.asarray(scipy.special.softmax(scale * rng.standard_normal(shape), -1), dtype)
  return target, z


def _tier(name, shift):
  """The fast path of kernel ``name`` as ``_fast_or_exact`` runs it: shifted or not."""
  fast = _KERNELS[name][0]
  return lambda t, z: _numerics._fast_tier(fast, (t, z), shift)


def _shift_logits(name, target, z, c):
  """The same distributions with every logit raised by ``c``."""
  return (target + c if name in ("kl", "ce") else target), z + c


@pytest.mark.parametrize("name", sorted(_KERNELS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_kernel_takes_the_fast_path_on_finite_inputs_and_it_agrees_with_the_exact_one(
  name, dtype, offset
):
  # Logits around 0 take the unshifted formula; raised by 100 (above _UNSHIFTED_MAX,
  # where e^z overflows in float32) the shifted one. Both give the exact path's values.
  _, exact, _ = _KERNELS[name]
  target, z = _shift_logits(name, *_kernel_inputs(name, (6, 1000), dtype), offset)
  stats = getattr(_numerics, f"_{name}_stats")
  chosen = jax.jit(lambda t, z: stats(t, z, None))(target, z)
  from_fast = jax.jit(_tier(name, shift=offset > _numerics._UNSHIFTED_MAX))(target, z)
  from_exact = jax.jit(lambda t, z: exact(t, z, None))(target, z)
  for c, f, e in zip(chosen, from_fast, from_exact, strict=True):
    np.testing.assert_array_equal(c, f)  # that fast path was taken
    rtol = 2e-6 if dtype == jnp.float32 else 1e-13
    np.testing.assert_allclose(f, e, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("name", sorted(_KERNELS))
def test_both_fast_formulas_agree_with_float64_on_shifted_logits(name):
  # Softmax is shift-invariant; each fast formula, in float32, must keep that to float32
  # accuracy for offsets on both sides of the unshifted tier's range.
  target, z = _kernel_inputs(name, (4, 5000), jnp.float32, seed=7)
  t64 = target if name == "labels" else jnp.asarray(target, jnp.float64)
  oracle = np.asarray(_KERNELS[name][2](t64, jnp.asarray(z, jnp.float64), None))
  for offset, shift in [(-15.0, False), (0.0, False), (40.0, False), (0.0, True), (300.0, True)]:
    got = jax.jit(_tier(name, shift))(*_shift_logits(name, target, z, offset))[0]
    np.testing.assert_allclose(got, oracle, rtol=2e-5, atol=2e-5, err_msg=f"{offset}, {shift}")


@pytest.mark.parametrize("offset", [0.0, 100.0])
@pytest.mark.parametrize("edge", ["none", "target -inf", "both -inf"])
def test_ce_and_kl_from_logits_take_bitwise_identical_steps(offset, edge):
  # H(p, q) = H(p) + KL(p || q) with p fixed: the q-gradients are the same rule, and the
  # two kernels must take the same path (fast tier or exact) so that the rule sees
  # bitwise-equal log-normalisers -- also where a -inf target logit makes KL's fast
  # formula non-finite but would leave CE's finite.
  target, z = _shift_logits("kl", *_kernel_inputs("kl", (8, 1000), jnp.float32, seed=9), offset)
  if edge != "none":
    target = target.at[2, 3].set(-INF)
  if edge == "both -inf":
    z = z.at[2, 3].set(-INF)

  def steps(f):
    return jax.jit(jax.value_and_grad(lambda z: jnp.sum(f(target, z, None))))(z)

  (ce, g_ce), (kl, g_kl) = steps(_numerics.ce_from_logits), steps(_numerics.kl_from_logits)
  assert bool(jnp.isfinite(ce)) and bool(jnp.isfinite(kl))
  np.testing.assert_array_equal(g_ce, g_kl)
  lse = [
    jax.jit(lambda t, z, f=f: f(t, z, None)[1:])(target, z)
    for f in (_numerics._ce_stats, _numerics._kl_stats)
  ]
  jax.tree_util.tree_map(np.testing.assert_array_equal, *lse)


@pytest.mark.parametrize("name", sorted(_KERNELS))
def test_unshifted_rows_whose_exponentials_underflow_go_to_the_exact_path(name):
  # A row of logits spread over [-104, -84] is finite unshifted but e^z is flushed to 0
  # below -87 (without the guard the loss is off by about 1 %, silently); its
  # log-normaliser (about -80) is below _UNSHIFTED_MIN_LSE, so the tier marks the row NaN
  # and the kernel takes the exact path.
  _, exact, call = _KERNELS[name]
  target, z = _kernel_inputs(name, (3, 4096), jnp.float32, seed=8, scale=1.0)
  z = z.at[1].set(jnp.linspace(-104.0, -84.0, 4096, dtype=jnp.float32))
  if name in ("kl", "ce"):
    target = target.at[1].set(jnp.linspace(-84.0, -104.0, 4096, dtype=jnp.float32))
  tier = jax.jit(_tier(name, shift=False))(target, z)
  assert all(bool(jnp.isnan(o[1])) for o in tier)
  assert all(bool(jnp.all(jnp.isfinite(o[jnp.array([0, 2])]))) for o in tier)
  got = jax.jit(lambda t, z: call(t, z, None))(target, z)
  np.testing.assert_array_equal(got, jax.jit(lambda t, z: exact(t, z, None)[0])(target, z))
  t64 = target if name == "labels" else jnp.asarray(target, jnp.float64)
  oracle = call(t64, jnp.asarray(z, jnp.float64), None)
  np.testing.assert_allclose(got, oracle, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(_KERNELS))
def test_fast_and_exact_paths_give_the_same_values_and_gradients(name, monkeypatch):
  # where=all-True forces the exact path for the same function; the size threshold is
  # lowered so that the unmasked call takes the fast path at a shape jacfwd can afford.
  monkeypatch.setattr(_numerics, "_FAST_MIN_SIZE", 0)
  _, _, call = _KERNELS[name]
  target, z = _kernel_inputs(name, (5, 300), jnp.float64, seed=1)
  everywhere = jnp.ones(z.shape, bool)

  def loss(t, z, w):
    return jnp.sum(call(t, z, w) * jnp.arange(1.0, 6.0))

  argnums = (1,) if name == "labels" else (0, 1)
  for d in (jax.value_and_grad, jax.jacfwd):
    got = jax.jit(lambda t, z, d=d: d(loss, argnums)(t, z, None))(target, z)
    want = jax.jit(lambda t, z, d=d: d(loss, argnums)(t, z, everywhere))(target, z)
    chex_close = functools.partial(np.testing.assert_allclose, rtol=1e-12, atol=1e-12)
    jax.tree_util.tree_map(chex_close, got, want)


@pytest.mark.parametrize("name", sorted(_KERNELS))
def test_logits_spanning_more_than_exp_range_above_the_sample_fall_back_to_exact(name):
  # One logit 200 above the rest at a position the sample skips: exp overflows on the
  # fast path (float32), so the kernel must give the exact path's finite value.
  # Both fast formulas overflow there (the whole-array sample misses it too).
  _, exact, call = _KERNELS[name]
  target, z = _kernel_inputs(name, (3, 4096), jnp.float32, seed=2, scale=1.0)
  z = z.at[:, 4096 // _numerics._SAMPLES + 1].add(200.0)
  if name in ("kl", "ce"):
    target = target.at[:, 7].add(150.0)
  for shift in (False, True):
    out = jax.jit(_tier(name, shift))(target, z)
    assert not all(bool(jnp.all(jnp.isfinite(o))) for o in out)
  got = jax.jit(lambda t, z: call(t, z, None))(target, z)
  want = jax.jit(lambda t, z: exact(t, z, None)[0])(target, z)
  assert bool(jnp.all(jnp.isfinite(got)))
  np.testing.assert_array_equal(got, want)
  t64 = target if name == "labels" else jnp.asarray(target, jnp.float64)
  oracle = call(t64, jnp.asarray(z, jnp.float64), None)
  np.testing.assert_allclose(got, oracle, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["soft_ce", "soft_kl"])
def test_a_negative_probability_is_nan_on_the_fast_path_value_and_gradient(name):
  _, _, call = _KERNELS[name]
  target, z = _kernel_inputs(name, (3, 2000), jnp.float32, seed=3)
  target = target.at[1, 4].set(-1e-3)
  for shift in (False, True):
    assert bool(jnp.isnan(jax.jit(_tier(name, shift))(target, z)[0][1]))
  value, grad = jax.jit(jax.value_and_grad(lambda z: jnp.sum(call(target, z, None)[1])))(z)
  assert bool(jnp.isnan(value)) and bool(jnp.all(jnp.isnan(grad[1])))
  assert bool(jnp.all(jnp.isfinite(call(target, z, None)[jnp.array([0, 2])])))


@pytest.mark.parametrize("name", sorted(_KERNELS))
def test_kernels_under_vmap_equal_the_batched_call(name):
  _, _, call = _KERNELS[name]
  # Slices of 3 x 2000 are above _FAST_MIN_SIZE, so vmap runs the fast path per slice.
  target, z = _kernel_inputs(name, (4, 3, 2000), jnp.float32, seed=4)
  z = z.at[2, 1, 5].set(-INF)  # one vmapped slice needs the exact path
  batched = jax.jit(lambda t, z: call(t, z, None))(target, z)
  mapped = jax.jit(jax.vmap(lambda t, z: call(t, z, None)))(target, z)
  # The batched call takes the exact path (one -inf), the valid slices the fast one.
  np.testing.assert_allclose(batched, mapped, rtol=1e-6)


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
    t[9, 1], z[9, 1] = 0.0, -INF  # zero probability at a -inf logit: valid, exact path
  return jnp.asarray(t), jnp.asarray(z)


@pytest.mark.parametrize("name", sorted(_KERNELS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("shift", [False, True])
def test_fast_formula_is_finite_only_where_it_equals_the_exact_one(name, dtype, shift):
  # The fast path is kept only where all its results are finite, so at every edge it
  # must either be non-finite or already right: never a finite wrong number.
  _, exact, _ = _KERNELS[name]
  t, z = _edge_rows(name)
  z = z.astype(dtype)
  t = t if name == "labels" else t.astype(dtype)
  from_fast = jax.jit(_tier(name, shift))(t, z)
  from_exact = jax.jit(lambda t, z: exact(t, z, None))(t, z)
  finite = np.ones(z.shape[0], bool)
  for f in from_fast:
    finite &= np.isfinite(np.asarray(f))
  assert not finite[[0, 1, 2, 3, 6]].any() if name != "labels" else not finite[[1, 2, 3]].any()
  for f, e in zip(from_fast, from_exact, strict=True):
    f, e = np.asarray(f)[finite], np.asarray(e)[finite]
    np.testing.assert_allclose(f, e, rtol=1e-5 if dtype == jnp.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("name", ["kl", "ce", "soft_ce", "soft_kl"])
@pytest.mark.parametrize("masked", [False, True])
def test_tiny_and_larger_exact_rows_agree_at_every_edge(name, masked):
  # Up to _TINY_SIZE elements the exact KL and CE rows take their sums in one variadic
  # reduction, above it in separate ones: the edge rows (80 elements), alone and tiled
  # to 320, must give the same values, infinities and NaNs row by row.
  _, exact, _ = _KERNELS[name]
  t, z = _edge_rows(name)
  assert z.size <= _numerics._TINY_SIZE < 4 * z.size
  where = jnp.ones(z.shape, bool).at[:, -1].set(False) if masked else None
  tiny = jax.jit(lambda t, z, w: exact(t, z, w))(t, z, where)
  tile = functools.partial(jnp.tile, reps=(4, 1))
  larger = jax.jit(lambda t, z, w: exact(t, z, w))(
    tile(t), tile(z), None if where is None else tile(where)
  )
  for a, b in zip(tiny, larger, strict=True):
    for k in range(4):
      np.testing.assert_allclose(a, b[10 * k : 10 * (k + 1)], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["kl", "ce"])
@pytest.mark.parametrize("v", [10, 4096])
@pytest.mark.parametrize("masked", [False, True])
def test_p_positive_where_q_is_zero_is_inf_even_where_exp_of_p_underflows(name, v, masked):
  # Row 0: p_1 = e^-200 / Z (exp underflows after the shift by the maximum, 200) is > 0
  # while q_1 = 0, so KL = CE = +inf; the exact rows get it from NaN = 0 * inf.
  # Rows 1-3 add a NaN or +inf logit, which must keep the row NaN.
  a = np.zeros((4, v), np.float32)
  b = np.zeros((4, v), np.float32)
  a[:, 0] = 200.0
  b[:, 1] = -INF
  a[1, 3] = np.nan
  a[2, 3] = INF
  b[3, 3] = INF
  where = jnp.ones((4, v), bool).at[:, -1].set(False) if masked else None
  fn = jaxdiv.kl_divergence if name == "kl" else jaxdiv.cross_entropy
  out = np.asarray(jax.jit(lambda a, b, w: fn(p_logits=a, q_logits=b, where=w))(a, b, where))
  assert out[0] == INF
  assert np.isnan(out[1:]).all()


@pytest.mark.parametrize(
  "call", [_PUBLIC["kl"], _PUBLIC["soft_ce"]], ids=["kl_from_logits", "soft_ce_from_logits"]
)
def test_forward_at_8_by_10_stays_under_xlas_inline_execution_estimate(call):
  # XLA's CPU client runs a call on the calling thread only when its cost analysis
  # estimates under 1000 flops; any other is handed to a worker thread, which at
  # [8, 10] takes longer than the computation (the call-overhead target).
  # A deterministic count, not a timing: one select per category and one reduction
  # for the exact rows' sums keep KL at 896 flops (it was 1152).
  target, z = _kernel_inputs("kl" if call is _PUBLIC["kl"] else "soft_ce", (8, 10), jnp.float32)
  compiled = jax.jit(lambda t, z: call(t, z, None)).lower(target, z).compile()
  assert compiled.cost_analysis()["flops"] < 1000


def _temp_bytes(f, *args):
  return jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("name", sorted(_KERNELS))
def test_kernels_keep_no_n_by_v_temporaries(name):
  # Forward: O(rows) temporaries plus, on the exact path, a few cache-sized blocks of rows
  # (the block of each input and its exponentials).
  # Value-and-gradient in the logits: the gradient itself is the output; temporaries stay
  # that same block-sized bound, far below one N x V array (the bound: 1.1 N V 4).
  _, _, call = _KERNELS[name]
  n, v = 512, 8192
  target, z = _kernel_inputs(name, (n, v), jnp.float32, seed=5)
  array_bytes = n * v * 4
  fwd = _temp_bytes(lambda t, z: call(t, z, None), target, z)
  vg = _temp_bytes(jax.value_and_grad(lambda z, t: jnp.sum(call(t, z, None))), z, target)
  assert fwd <= 4 * _numerics._BLOCK_BYTES < array_bytes / 2
  assert vg <= 4 * _numerics._BLOCK_BYTES


# ---------------------------------------------------------------------------
# 16-bit inputs: the kernels take them as they are and convert them inside each pass.
# ---------------------------------------------------------------------------

_PUBLIC_CALLS = {
  "kl": lambda t, z: jaxdiv.kl_divergence(p_logits=t, q_logits=z),
  "ce": lambda t, z: jaxdiv.cross_entropy(p_logits=t, q_logits=z),
  "soft_ce": lambda t, z: jaxdiv.cross_entropy(t, q_logits=z),
  "soft_kl": lambda t, z: jaxdiv.kl_divergence(t, q_logits=z),
  "labels": lambda t, z: jaxdiv.cross_entropy(labels=t, q_logits=z),
}


@pytest.mark.parametrize("name", sorted(_KERNELS))
@pytest.mark.parametrize(
  ("dtype", "case"),
  [(jnp.bfloat16, "unshifted"), (jnp.bfloat16, "shifted"), (jnp.bfloat16, "exact")]
  + [(jnp.float16, "unshifted")],
)
def test_16_bit_inputs_give_the_values_and_gradients_of_their_float32_upcast(name, dtype, case):
  # Converting inside the kernel must be the same computation as converting first:
  # the unshifted and shifted fast tiers and the exact path (a -inf logit) alike.
  target, z = _kernel_inputs(name, (4, 2048), jnp.float32, seed=10, scale=2.0)
  if case == "shifted":
    target, z = _shift_logits(name, target, z, 100.0)
  if case == "exact":
    z = z.at[1, 5].set(-INF)
  target = target if name == "labels" else target.astype(dtype)
  z = z.astype(dtype)
  up = target if name == "labels" else target.astype(jnp.float32)
  call = _PUBLIC_CALLS[name]
  got = jax.jit(jax.value_and_grad(lambda z: jnp.sum(call(target, z))))(z)
  want = jax.jit(jax.value_and_grad(lambda z: jnp.sum(call(up, z))))(z.astype(jnp.float32))
  assert got[0].dtype == jnp.float32 and got[1].dtype == dtype
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  np.testing.assert_array_equal(got[1], want[1].astype(dtype))
  rows = jax.jit(call)(target, z)
  np.testing.assert_allclose(rows, jax.jit(call)(up, z.astype(jnp.float32)), rtol=1e-6)
  if case != "exact":
    assert bool(jnp.all(jnp.isfinite(rows)))


@pytest.mark.parametrize("name", sorted(_KERNELS))
def test_16_bit_fast_paths_keep_no_converted_copy(name):
  # Each fast pass converts its own reads: no float32 N x V copy of a bfloat16 input is
  # written out (it would be 16 MiB here), in either tier.
  target, z = _kernel_inputs(name, (512, 8192), jnp.float32, seed=5)
  target = target if name == "labels" else target.astype(jnp.bfloat16)
  z = z.astype(jnp.bfloat16)
  for shift in (False, True):
    assert _temp_bytes(_tier(name, shift), target, z) <= _numerics._BLOCK_BYTES


def test_16_bit_probabilities_below_float32_normal_count_as_zero_on_every_path():
  # A bfloat16 probability of 1e-39 is a float32 subnormal: the fast path (unmasked)
  # and the exact path (where=all-True) must both treat it as the 0 it is flushed to.
  target, z = _kernel_inputs("soft_kl", (4, 2048), jnp.float32, seed=11)
  target = target.at[2, 7].set(1e-39).astype(jnp.bfloat16)
  zeroed = target.at[2, 7].set(0)
  z = z.astype(jnp.bfloat16)
  everywhere = jnp.ones(z.shape, bool)
  for f in (jaxdiv.cross_entropy, jaxdiv.kl_divergence):
    for where in (None, everywhere):
      got = jax.jit(lambda t, z, w, f=f: f(t, q_logits=z, where=w))(target, z, where)
      want = jax.jit(lambda t, z, w, f=f: f(t, q_logits=z, where=w))(zeroed, z, where)
      np.testing.assert_allclose(got, want, rtol=1e-6)
      grad = jax.grad(lambda t, z, w, f=f: jnp.sum(f(t, q_logits=z, where=w)), (0, 1))
      assert all(bool(jnp.all(jnp.isfinite(g))) for g in grad(target, z, where))
