"""Tests for jaxdiv._numerics: the elementwise helpers every family is built from.

The logits kernels and their CPU strategy are tested in test_kernels.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

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
# shift, logsumexp, prob_triple
# ---------------------------------------------------------------------------


def test_shift_is_exact_for_large_offsets_and_keeps_minus_inf_rows():
  z = jnp.array([[1e6, 1e6 + 0.5, -INF], [-INF, -INF, -INF]], jnp.float32)
  d, m = _numerics.shift(z)
  np.testing.assert_array_equal(d[0], [-0.5, 0.0, -INF])
  assert bool(jnp.all(d[1] == -INF)) and m[1] == jnp.finfo(jnp.float32).min


def test_shift_plus_inf_or_nan_makes_the_row_nan_downstream():
  d, _ = _numerics.shift(jnp.array([[0.0, INF], [0.0, np.nan]]))
  assert bool(jnp.isnan(d[0, 1])) and bool(jnp.all(jnp.isnan(d[1])))


def test_logsumexp_matches_scipy_with_mask_and_empty_rows():
  x = jnp.array([[1.0, 2.0, 3.0], [1e4, 1e4, -INF], [0.0, 1.0, 2.0]])
  where = jnp.array([[True, False, True], [True, True, True], [False, False, False]])
  got = _numerics.logsumexp(x, where)
  want = [scipy.special.logsumexp([1.0, 3.0]), 1e4 + np.log(2), -INF]
  np.testing.assert_allclose(got, want, rtol=1e-12)
  grads = (
    jax.jacfwd(lambda x: _numerics.logsumexp(x, where))(x),
    jax.grad(lambda x: jnp.sum(jnp.where(jnp.isfinite(_numerics.logsumexp(x, where)), 1.0, 0.0)))(
      x
    ),
  )
  assert _all_finite(grads)


def test_prob_triple_is_the_safe_triple():
  p, log_p, zero = _numerics.prob_triple(jnp.array([-INF, np.log(0.25), 0.0]))
  np.testing.assert_array_equal(p, [0.0, 0.25, 1.0])
  np.testing.assert_array_equal(log_p, [0.0, np.log(0.25), 0.0])
  np.testing.assert_array_equal(zero, [True, False, False])
  assert _all_finite(jax.jacfwd(lambda x: _numerics.prob_triple(x)[0])(jnp.array([-INF, 0.0])))
