"""Tests for jaxdiv._kl: entropy, cross-entropy, KL divergence and their Bernoulli forms.

Order: the blog example, float64 oracles (scipy), identities, gradients, the ``where`` /
``axis`` / ``vmap`` / ``jit`` contracts, labels, and invalid values. Argument errors and
dtype rules are in test_inputs.py.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

import jaxdiv

INF = np.inf
N, V = 3, 4  # the standard batch and category sizes (shared shapes keep compilation cheap)

entropy = jaxdiv.entropy
cross_entropy = jaxdiv.cross_entropy
kl_divergence = jaxdiv.kl_divergence
binary_cross_entropy = jaxdiv.binary_cross_entropy
binary_kl_divergence = jaxdiv.binary_kl_divergence


# ---------------------------------------------------------------------------
# Inputs and helpers
# ---------------------------------------------------------------------------


def _probs(seed, shape=(N, V), zero_frac=0.3):
  """Random float64 distributions over the last axis, with exact zeros (never a zero row)."""
  rng = np.random.default_rng(seed)
  x = rng.gamma(1.0, size=shape) + 0.05
  x = np.where(rng.random(shape) < zero_frac, 0.0, x)
  x[..., 0] = np.where(x.sum(-1) == 0, 1.0, x[..., 0])
  return x / x.sum(-1, keepdims=True)


def _logits(seed, shape=(N, V), ninf_frac=0.0):
  """Random float64 logits, optionally with -inf entries (never a row without a finite one)."""
  rng = np.random.default_rng(seed)
  z = 2.0 * rng.standard_normal(shape)
  z = np.where(rng.random(shape) < ninf_frac, -INF, z)
  z[..., 0] = np.where(np.all(z == -INF, axis=-1), 0.0, z[..., 0])
  return z


def _labels(seed, shape=(N,), num=V):
  return np.random.default_rng(seed).integers(0, num, size=shape)


def _softmax(z):
  return scipy.special.softmax(z, axis=-1)


def _one_hot(labels, num=V):
  return np.eye(num)[labels]


def _all_finite(tree):
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


def _derivatives(f, *args):
  """grad and hessian of ``sum(f)`` and jacfwd of ``f`` in every argument, in one jit."""
  argnums = tuple(range(len(args)))

  def total(*a):
    return jnp.sum(f(*a))

  def all_derivatives(*a):
    return (
      jax.grad(total, argnums)(*a),
      jax.jacfwd(f, argnums)(*a),
      jax.hessian(total, argnums)(*a),
    )

  return jax.jit(all_derivatives)(*args)


# ---------------------------------------------------------------------------
# The blog example
# ---------------------------------------------------------------------------

BLOG_VALUE = 0.35667494393873245  # -ln 0.7 in float64


def test_blog_kl_is_minus_log_point_seven_to_the_last_digit():
  assert float(kl_divergence(np.array([1, 0]), np.array([0.7, 0.3]))) == BLOG_VALUE


def test_blog_cross_entropy_is_minus_log_point_seven_to_the_last_digit():
  assert float(cross_entropy(np.array([1, 0]), np.array([0.7, 0.3]))) == BLOG_VALUE


def test_blog_entropy_of_one_hot_is_exactly_positive_zero():
  h = float(entropy(np.array([1, 0])))
  assert h == 0.0 and math.copysign(1.0, h) == 1.0


def test_blog_value_equals_minus_log_point_seven():
  assert BLOG_VALUE == -math.log(0.7)


# ---------------------------------------------------------------------------
# float64 oracles
# ---------------------------------------------------------------------------


def test_entropy_matches_scipy_on_distributions_with_zeros():
  p = _probs(0)
  assert (p == 0).any()
  np.testing.assert_allclose(entropy(p), scipy.stats.entropy(p, axis=-1), rtol=1e-13)


def test_entropy_base_2_matches_scipy():
  p = _probs(1)
  expected = scipy.stats.entropy(p, base=2, axis=-1)
  np.testing.assert_allclose(entropy(p, base=2), expected, rtol=1e-13)


def test_kl_matches_scipy_rel_entr_including_plus_inf():
  p, q = _probs(2, (8, V)), _probs(3, (8, V))
  expected = scipy.special.rel_entr(p, q).sum(-1)
  assert np.isinf(expected).any() and np.isfinite(expected).any()
  np.testing.assert_allclose(kl_divergence(p, q), expected, rtol=1e-13)


def test_kl_matches_scipy_stats_entropy_of_two_arguments():
  p, q = _probs(2, (8, V)), _probs(3, (8, V))
  np.testing.assert_allclose(kl_divergence(p, q), scipy.stats.entropy(p, q, axis=-1), rtol=1e-12)


def test_kl_base_2_matches_scipy():
  p, q = _probs(4), _probs(5, zero_frac=0.0)
  expected = scipy.stats.entropy(p, q, base=2, axis=-1)
  np.testing.assert_allclose(kl_divergence(p, q, base=2), expected, rtol=1e-12)


def test_cross_entropy_matches_scipy_xlogy_including_plus_inf():
  p, q = _probs(2, (8, V)), _probs(3, (8, V))
  expected = -scipy.special.xlogy(p, q).sum(-1)
  assert np.isinf(expected).any() and np.isfinite(expected).any()
  np.testing.assert_allclose(cross_entropy(p, q), expected, rtol=1e-13)


def test_cross_entropy_any_base_is_nats_over_log_base():
  p, q = _probs(6), _probs(7, zero_frac=0.0)
  expected = -scipy.special.xlogy(p, q).sum(-1) / np.log(10.0)
  np.testing.assert_allclose(cross_entropy(p, q, base=10), expected, rtol=1e-13)


def test_entropy_from_logits_matches_scipy_of_softmax():
  z = _logits(8, ninf_frac=0.3)
  assert np.isneginf(z).any()
  np.testing.assert_allclose(
    entropy(logits=z), scipy.stats.entropy(_softmax(z), axis=-1), rtol=1e-12
  )


def test_kl_from_logits_matches_rel_entr_of_softmax_including_plus_inf():
  zp, zq = _logits(9, (8, V), 0.3), _logits(10, (8, V), 0.3)
  expected = scipy.special.rel_entr(_softmax(zp), _softmax(zq)).sum(-1)
  assert np.isinf(expected).any() and np.isfinite(expected).any()
  np.testing.assert_allclose(kl_divergence(p_logits=zp, q_logits=zq), expected, rtol=1e-12)


def test_cross_entropy_from_logits_matches_xlogy_of_softmax_including_plus_inf():
  zp, zq = _logits(9, (8, V), 0.3), _logits(10, (8, V), 0.3)
  expected = -scipy.special.xlogy(_softmax(zp), _softmax(zq)).sum(-1)
  np.testing.assert_allclose(cross_entropy(p_logits=zp, q_logits=zq), expected, rtol=1e-12)


def test_mixed_probs_and_logits_match_scipy():
  p, zq = _probs(11, (8, V)), _logits(12, (8, V), 0.3)
  zp, q = _logits(13, (8, V), 0.3), _probs(14, (8, V))
  np.testing.assert_allclose(
    cross_entropy(p, q_logits=zq), -scipy.special.xlogy(p, _softmax(zq)).sum(-1), rtol=1e-12
  )
  np.testing.assert_allclose(
    kl_divergence(p, q_logits=zq), scipy.special.rel_entr(p, _softmax(zq)).sum(-1), rtol=1e-12
  )
  np.testing.assert_allclose(
    cross_entropy(p_logits=zp, q=q), -scipy.special.xlogy(_softmax(zp), q).sum(-1), rtol=1e-12
  )
  np.testing.assert_allclose(
    kl_divergence(p_logits=zp, q=q), scipy.special.rel_entr(_softmax(zp), q).sum(-1), rtol=1e-12
  )


def test_labels_equal_minus_log_q_at_label_including_plus_inf():
  q, labels = _probs(15, (8, V)), _labels(16, (8,))
  expected = -np.log(q[np.arange(8), labels])
  assert np.isinf(expected).any() and np.isfinite(expected).any()
  np.testing.assert_array_equal(cross_entropy(labels=labels, q=q), expected)
  np.testing.assert_array_equal(kl_divergence(labels=labels, q=q), expected)


def test_labels_equal_one_hot_probabilities_exactly():
  q, labels = _probs(17, (8, V)), _labels(18, (8,))
  for f in (cross_entropy, kl_divergence):
    np.testing.assert_array_equal(f(labels=labels, q=q), f(_one_hot(labels), q))


def test_labels_with_logits_match_minus_log_softmax():
  zq, labels = _logits(19, (8, V), 0.3), _labels(20, (8,))
  expected = -np.log(_softmax(zq)[np.arange(8), labels])
  assert np.isinf(expected).any()
  np.testing.assert_allclose(cross_entropy(labels=labels, q_logits=zq), expected, rtol=1e-12)
  np.testing.assert_allclose(kl_divergence(labels=labels, q_logits=zq), expected, rtol=1e-12)


# Every combination of p, q in {0, interior, 1}: includes the 0 log 0 and +inf cases.
_BP, _BQ = (a.ravel() for a in np.meshgrid([0.0, 0.3, 1.0], [0.0, 0.8, 1.0]))


def test_binary_cross_entropy_matches_scipy_formula():
  expected = -scipy.special.xlogy(_BP, _BQ) - scipy.special.xlogy(1 - _BP, 1 - _BQ)
  assert np.isinf(expected).any() and (expected == 0).any()
  np.testing.assert_allclose(binary_cross_entropy(_BP, _BQ), expected, rtol=1e-14)


def test_binary_kl_matches_scipy_formula():
  expected = scipy.special.rel_entr(_BP, _BQ) + scipy.special.rel_entr(1 - _BP, 1 - _BQ)
  assert np.isinf(expected).any()
  np.testing.assert_allclose(binary_kl_divergence(_BP, _BQ), expected, rtol=1e-14)


def test_binary_from_logits_matches_scipy_formula_including_infinite_logits():
  zp = np.array([-INF, -2.0, 0.0, 3.0, INF, 1.0])
  zq = np.array([-1.0, INF, 0.5, -INF, INF, -INF])
  p, q = scipy.special.expit(zp), scipy.special.expit(zq)
  expected_ce = -scipy.special.xlogy(p, q) - scipy.special.xlogy(1 - p, 1 - q)
  expected_kl = scipy.special.rel_entr(p, q) + scipy.special.rel_entr(1 - p, 1 - q)
  np.testing.assert_allclose(
    binary_cross_entropy(p_logits=zp, q_logits=zq), expected_ce, rtol=1e-12
  )
  np.testing.assert_allclose(
    binary_kl_divergence(p_logits=zp, q_logits=zq), expected_kl, rtol=1e-12
  )


def test_binary_cross_entropy_at_infinite_logits_is_exact():
  # optax.sigmoid_binary_cross_entropy returns NaN here.
  out = binary_cross_entropy(np.array([1.0, 0.0, 0.0]), q_logits=np.array([INF, -INF, INF]))
  np.testing.assert_array_equal(out, [0.0, 0.0, INF])


def test_binary_base_2_is_bits():
  np.testing.assert_allclose(binary_cross_entropy(0.5, 0.5, base=2), 1.0, rtol=1e-15)
  np.testing.assert_allclose(binary_kl_divergence(1.0, 0.5, base=2), 1.0, rtol=1e-15)


# ---------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------


def _forms(seed):
  """(name, cross_entropy kwargs, kl kwargs, entropy of p) for every input form; finite."""
  p, q = _probs(seed), _probs(seed + 1, zero_frac=0.0)
  zp, zq = _logits(seed + 2, ninf_frac=0.3), _logits(seed + 3)
  labels = _labels(seed + 4)
  return [
    ("probs/probs", dict(p=p, q=q), entropy(p)),
    ("logits/logits", dict(p_logits=zp, q_logits=zq), entropy(logits=zp)),
    ("probs/logits", dict(p=p, q_logits=zq), entropy(p)),
    ("logits/probs", dict(p_logits=zp, q=q), entropy(logits=zp)),
    ("labels/probs", dict(labels=labels, q=q), jnp.zeros(N)),
    ("labels/logits", dict(labels=labels, q_logits=zq), jnp.zeros(N)),
  ]


_FORM_NAMES = [f[0] for f in _forms(0)]


@pytest.mark.parametrize("form", range(len(_FORM_NAMES)), ids=_FORM_NAMES)
def test_cross_entropy_equals_entropy_plus_kl(form):
  _, kwargs, h = _forms(30)[form]
  ce, kl = cross_entropy(**kwargs), kl_divergence(**kwargs)
  assert _all_finite(ce)
  np.testing.assert_allclose(ce, h + kl, rtol=1e-13)


def test_binary_cross_entropy_equals_binary_entropy_plus_kl():
  p, q = np.array([0.0, 0.2, 0.5, 1.0]), np.array([0.3, 0.9, 0.5, 0.6])
  h = -scipy.special.xlogy(p, p) - scipy.special.xlogy(1 - p, 1 - p)
  np.testing.assert_allclose(binary_cross_entropy(p, q), h + binary_kl_divergence(p, q), rtol=1e-14)
  zp, zq = np.array([-INF, -1.0, 0.0, 4.0]), np.array([0.5, 2.0, -3.0, 0.0])
  hz = binary_cross_entropy(p_logits=zp, q_logits=zp)
  np.testing.assert_allclose(
    binary_cross_entropy(p_logits=zp, q_logits=zq),
    hz + binary_kl_divergence(p_logits=zp, q_logits=zq),
    rtol=1e-13,
  )


def test_kl_of_a_distribution_with_itself_is_exactly_zero():
  p, z = _probs(40), _logits(41, ninf_frac=0.3)
  labels = _labels(42)
  np.testing.assert_array_equal(kl_divergence(p, p), 0.0)
  np.testing.assert_array_equal(kl_divergence(p_logits=z, q_logits=z), 0.0)
  np.testing.assert_array_equal(kl_divergence(labels=labels, q=_one_hot(labels)), 0.0)
  np.testing.assert_array_equal(binary_kl_divergence(_BP, _BP), 0.0)


def test_cross_entropy_of_a_distribution_with_itself_is_its_entropy():
  p = _probs(43)
  np.testing.assert_allclose(cross_entropy(p, p), entropy(p), rtol=1e-15)


_prob_rows = hnp.arrays(
  np.float64, (2, V), elements=st.floats(0.0, 1.0, allow_subnormal=False)
).filter(lambda x: bool(np.all(x.sum(-1) > 1e-3)))
_logit_rows = hnp.arrays(np.float64, (2, V), elements=st.floats(-50.0, 50.0))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(_prob_rows, _prob_rows)
def test_kl_is_nonnegative_for_probabilities(p, q):
  p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
  kl = np.asarray(_kl_jit(p, q))
  assert np.all(kl >= -1e-12), kl


@settings(max_examples=60, deadline=None, derandomize=True)
@given(_logit_rows, _logit_rows)
def test_kl_is_nonnegative_for_logits(zp, zq):
  kl = np.asarray(_kl_logits_jit(zp, zq))
  assert np.all(kl >= -1e-12), kl


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_binary_kl_is_nonnegative(p, q):
  assert float(_binary_kl_jit(p, q)) >= -1e-12


_kl_jit = jax.jit(kl_divergence)
_kl_logits_jit = jax.jit(lambda zp, zq: kl_divergence(p_logits=zp, q_logits=zq))
_binary_kl_jit = jax.jit(binary_kl_divergence)


def test_logits_results_are_invariant_to_a_constant_per_row():
  zp, zq = _logits(50, ninf_frac=0.3), _logits(51)
  p, labels = _probs(52), _labels(53)
  cp, cq = np.array([[3.0], [-7.0], [100.0]]), np.array([[-2.0], [0.5], [40.0]])
  pairs = [
    (entropy(logits=zp), entropy(logits=zp + cp)),
    (kl_divergence(p_logits=zp, q_logits=zq), kl_divergence(p_logits=zp + cp, q_logits=zq + cq)),
    (cross_entropy(p_logits=zp, q_logits=zq), cross_entropy(p_logits=zp + cp, q_logits=zq + cq)),
    (cross_entropy(p, q_logits=zq), cross_entropy(p, q_logits=zq + cq)),
    (kl_divergence(p_logits=zp, q=p), kl_divergence(p_logits=zp + cp, q=p)),
    (cross_entropy(labels=labels, q_logits=zq), cross_entropy(labels=labels, q_logits=zq + cq)),
  ]
  for a, b in pairs:
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_binary_equals_two_category_categorical_for_probabilities():
  p2 = np.stack([_BP, 1 - _BP], -1)
  q2 = np.stack([_BQ, 1 - _BQ], -1)
  np.testing.assert_allclose(binary_cross_entropy(_BP, _BQ), cross_entropy(p2, q2), rtol=1e-15)
  np.testing.assert_allclose(binary_kl_divergence(_BP, _BQ), kl_divergence(p2, q2), rtol=1e-15)


def test_binary_logits_equal_two_category_logits_z_and_zero():
  zp, zq = np.array([-3.0, 0.0, 1.5, 20.0]), np.array([2.0, -0.5, 0.0, -20.0])
  zp2 = np.stack([zp, np.zeros_like(zp)], -1)
  zq2 = np.stack([zq, np.zeros_like(zq)], -1)
  np.testing.assert_allclose(
    binary_cross_entropy(p_logits=zp, q_logits=zq),
    cross_entropy(p_logits=zp2, q_logits=zq2),
    rtol=1e-12,
  )
  np.testing.assert_allclose(
    binary_kl_divergence(p_logits=zp, q_logits=zq),
    kl_divergence(p_logits=zp2, q_logits=zq2),
    rtol=1e-12,
  )


# ---------------------------------------------------------------------------
# Gradients: check_grads at interior points (every function, every input form)
# ---------------------------------------------------------------------------

_P, _Q = _probs(60, zero_frac=0.0), _probs(61, zero_frac=0.0)
_ZP, _ZQ = _logits(62), _logits(63)
_L = _labels(64)
_W = np.array([True, False, True, True])


# First derivatives by default; the second-order checks (a few times the compile time)
# run in .ci/run (`-m slow`), beside the hessians the grid's edge patterns check by default.
ORDERS = pytest.mark.parametrize("order", [1, pytest.param(2, marks=pytest.mark.slow)])


def _check_grads(f, args, order):
  # Eager on purpose: the many small programs it compiles are shared between tests, which
  # is several times cheaper than compiling the transformed stacks under jit.
  check_grads(f, args, order=order, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


@ORDERS
def test_check_grads_entropy(order):
  def f(p, z):
    return jnp.stack([entropy(p), entropy(logits=z), entropy(logits=z, where=_W)])

  _check_grads(f, (_P, _ZP), order)


@ORDERS
@pytest.mark.parametrize("fn", [cross_entropy, kl_divergence], ids=["ce", "kl"])
def test_check_grads_two_distributions_every_form(fn, order):
  def f(p, q, zp, zq):
    return jnp.stack(
      [
        fn(p, q),
        fn(p_logits=zp, q_logits=zq),
        fn(p, q_logits=zq),
        fn(p_logits=zp, q=q),
        fn(labels=_L, q=q),
        fn(labels=_L, q_logits=zq),
        fn(p_logits=zp, q_logits=zq, where=_W),
      ]
    )

  _check_grads(f, (_P, _Q, _ZP, _ZQ), order)


@pytest.mark.parametrize(
  "fn", [binary_cross_entropy, binary_kl_divergence], ids=["binary_ce", "binary_kl"]
)
@ORDERS
def test_check_grads_binary_every_form(fn, order):
  p, q = np.array([0.2, 0.5, 0.9]), np.array([0.4, 0.7, 0.1])
  zp, zq = np.array([-1.0, 0.3, 2.0]), np.array([0.5, -2.0, 1.0])

  def f(p, q, zp, zq):
    return jnp.stack(
      [fn(p, q), fn(p_logits=zp, q_logits=zq), fn(p, q_logits=zq), fn(p_logits=zp, q=q)]
    )

  _check_grads(f, (p, q, zp, zq), order)


# ---------------------------------------------------------------------------
# Gradients: finite grad / jacfwd / hessian on the edge grid
# ---------------------------------------------------------------------------


def _all_forms(fn, p, q, zp, zq, labels, where=None):
  """fn over every input form of (p, q), stacked."""
  return jnp.stack(
    [
      fn(p, q, where=where),
      fn(p_logits=zp, q_logits=zq, where=where),
      fn(p, q_logits=zq, where=where),
      fn(p_logits=zp, q=q, where=where),
      fn(labels=labels, q=q, where=where),
      fn(labels=labels, q_logits=zq, where=where),
    ]
  )


def _every_function(p, q, zp, zq, labels, where=None):
  return jnp.concatenate(
    [
      entropy(p, where=where)[None],
      entropy(logits=zp, where=where)[None],
      _all_forms(cross_entropy, p, q, zp, zq, labels, where),
      _all_forms(kl_divergence, p, q, zp, zq, labels, where),
    ]
  ).astype(jnp.float32)


# p has zeros where q has zeros (p_i = 0 = q_i) and where q is positive (p_i = 0 < q_i);
# the logits are their logarithms, so -inf where the probability is 0.
_EDGE_P = np.array([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
_EDGE_Q = np.array([[0.25, 0.25, 0.5, 0.0], [0.5, 0.0, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4]])
_EDGE_L = np.array([1, 0, 3])
with np.errstate(divide="ignore"):
  _EDGE_ZP, _EDGE_ZQ = np.log(_EDGE_P), np.log(_EDGE_Q)

_EDGE_CASES = {
  # zeros and -inf (rows 0-2, no mask: all True); masked categories, one holding p > 0 = q,
  # a fully masked row and a label at an excluded category (rows 3-5)
  "float64_zeros_minus_inf_and_masks": (
    np.concatenate([_EDGE_P, _EDGE_P]),
    np.concatenate([_EDGE_Q, [[0.25, 0.25, 0.5, 0.0], [0.0, 1.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]]]),
    np.concatenate([_EDGE_ZP, _EDGE_ZP]),
    np.concatenate(
      [_EDGE_ZQ, np.log([[0.25, 0.25, 0.5, 1.0], [0.5, 0.5, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4]])]
    ),
    np.array([1, 0, 3, 0, 2, 1]),
    np.array(
      [[True] * V] * N
      + [[True, True, True, False], [False, False, False, False], [True, False, True, True]]
    ),
  ),
  "pm_1e4_float32": (
    np.array([[0.7, 0.1, 0.1, 0.1]] * N, np.float32),
    np.array([[0.1, 0.2, 0.3, 0.4]] * N, np.float32),
    np.array([[1e4, -1e4, 0.0, 1.0], [-1e4, 1e4, 1e4, 0.0], [1e4, 1e4, -1e4, -1e4]], np.float32),
    np.array([[-1e4, 1e4, 0.0, 0.0], [1e4, -1e4, 1e4, 1.0], [0.0, 1e4, -1e4, 1e4]], np.float32),
    np.array([1, 0, 3]),
    None,
  ),
  "bfloat16": tuple(jnp.asarray(x, jnp.bfloat16) for x in (_P, _Q, _ZP, _ZQ)) + (_L, None),
}


@pytest.mark.parametrize("case", list(_EDGE_CASES))
def test_values_and_derivatives_finite_on_edge_grid(case):
  p, q, zp, zq, labels, where = _EDGE_CASES[case]

  def f(p, q, zp, zq):
    return _every_function(p, q, zp, zq, labels, where)

  value = f(p, q, zp, zq)
  assert _all_finite(value), value
  assert _all_finite(_derivatives(f, p, q, zp, zq))


def test_binary_values_and_derivatives_finite_at_edges():
  # p in {0, 1} with interior q; logits at +-inf where the value is finite.
  p = np.array([0.0, 1.0, 0.0, 1.0, 0.0])
  q = np.array([0.3, 0.6, 0.0, 1.0, 0.5])
  zp = np.array([-INF, INF, -INF, INF, 0.0])
  zq = np.array([0.5, -1.0, -INF, INF, 3.0])

  def f(p, q, zp, zq):
    return jnp.concatenate(
      [
        fn(*a, **k)
        for fn in (binary_cross_entropy, binary_kl_divergence)
        for a, k in [
          ((p, q), {}),
          ((), dict(p_logits=zp, q_logits=zq)),
          ((p,), dict(q_logits=zq)),
          ((), dict(p_logits=zp, q=q)),
        ]
      ]
    )

  assert _all_finite(f(p, q, zp, zq))
  assert _all_finite(_derivatives(f, p, q, zp, zq))


def test_optax_nan_cases_are_finite():
  # optax 0.2.8: NaN for softmax_cross_entropy with a -inf logit whose label is 0 and NaN
  # gradients w.r.t. zero targets in kl_divergence.
  p, zq = np.array([1.0, 0.0]), np.array([0.0, -INF])

  def ce(zq):
    return cross_entropy(p, q_logits=zq)

  def kl(p):
    return kl_divergence(p, np.array([0.6, 0.4]))

  assert float(ce(zq)) == 0.0
  assert _all_finite(_derivatives(ce, zq))
  assert _all_finite(_derivatives(kl, p))


# ---------------------------------------------------------------------------
# Gradients: the documented conventions and closed forms
# ---------------------------------------------------------------------------


def test_cross_entropy_gradient_in_p_is_minus_log_q_also_where_p_is_zero():
  p, q = np.array([0.6, 0.4, 0.0, 0.0]), np.array([0.3, 0.3, 0.2, 0.2])
  expected = -np.log(q)
  np.testing.assert_allclose(jax.grad(cross_entropy)(p, q), expected, rtol=1e-14)
  g = jax.grad(lambda p: cross_entropy(p, q_logits=np.log(q)))(p)
  np.testing.assert_allclose(g, expected, rtol=1e-14)


def test_cross_entropy_gradient_in_p_where_p_and_q_are_zero_is_zero():
  p, q = np.array([1.0, 0.0]), np.array([1.0, 0.0])
  np.testing.assert_array_equal(jax.grad(cross_entropy)(p, q), [0.0, 0.0])
  g = jax.grad(lambda p: cross_entropy(p, q_logits=np.array([0.0, -INF])))(p)
  np.testing.assert_array_equal(g, [0.0, 0.0])


def test_entropy_gradient_is_minus_log_p_minus_one_and_zero_where_p_is_zero():
  p = np.array([0.5, 0.25, 0.25, 0.0])
  g = jax.grad(entropy)(p)
  np.testing.assert_allclose(g[:3], -(np.log(p[:3]) + 1), rtol=1e-14)
  assert float(g[3]) == 0.0


def test_kl_gradient_in_p_is_log_p_over_q_plus_one_and_minus_log_q_where_p_is_zero():
  p, q = np.array([0.5, 0.5, 0.0]), np.array([0.2, 0.3, 0.5])
  g = jax.grad(kl_divergence)(p, q)
  np.testing.assert_allclose(g[:2], np.log(p[:2] / q[:2]) + 1, rtol=1e-14)
  np.testing.assert_allclose(g[2], -np.log(q[2]), rtol=1e-14)


def test_kl_gradient_in_q_is_minus_p_over_q_and_zero_where_p_is_zero():
  p, q = np.array([0.5, 0.5, 0.0, 0.0]), np.array([0.2, 0.3, 0.5, 0.0])
  np.testing.assert_allclose(
    jax.grad(kl_divergence, argnums=1)(p, q), [-2.5, -0.5 / 0.3, 0.0, 0.0], rtol=1e-14
  )


@pytest.mark.parametrize("fn", [kl_divergence, cross_entropy], ids=["kl", "ce"])
def test_logits_gradient_in_q_is_softmax_q_minus_softmax_p(fn):
  zp, zq = _logits(70, ninf_frac=0.3), _logits(71)
  g = jax.grad(lambda zq: jnp.sum(fn(p_logits=zp, q_logits=zq)))(zq)
  np.testing.assert_allclose(g, _softmax(zq) - _softmax(zp), rtol=1e-12, atol=1e-15)


def test_logits_gradient_in_q_with_mask_is_over_included_categories():
  zp, zq = _logits(72), _logits(73)
  g = jax.grad(lambda zq: jnp.sum(kl_divergence(p_logits=zp, q_logits=zq, where=_W)))(zq)
  expected = np.zeros((N, V))
  expected[:, _W] = _softmax(zq[:, _W]) - _softmax(zp[:, _W])
  np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-15)


def test_kl_logits_gradient_in_p_is_p_times_log_ratio_minus_kl():
  zp, zq = _logits(74), _logits(75)
  p, q = _softmax(zp), _softmax(zq)
  kl = scipy.special.rel_entr(p, q).sum(-1, keepdims=True)
  g = jax.grad(lambda zp: jnp.sum(kl_divergence(p_logits=zp, q_logits=zq)))(zp)
  np.testing.assert_allclose(g, p * (np.log(p / q) - kl), rtol=1e-11, atol=1e-15)


def test_soft_cross_entropy_gradient_in_q_logits_is_q_sum_p_minus_p():
  p = _probs(76) * np.array([[1.0], [0.5], [2.0]])  # used as given, not renormalised
  zq = _logits(77)
  g = jax.grad(lambda zq: jnp.sum(cross_entropy(p, q_logits=zq)))(zq)
  expected = _softmax(zq) * p.sum(-1, keepdims=True) - p
  np.testing.assert_allclose(g, expected, rtol=1e-12, atol=1e-15)


def test_labels_logits_gradient_is_softmax_minus_one_hot():
  zq, labels = _logits(78), _labels(79)
  g = jax.grad(lambda zq: jnp.sum(cross_entropy(labels=labels, q_logits=zq)))(zq)
  np.testing.assert_allclose(g, _softmax(zq) - _one_hot(labels), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------
# where, axis, vmap, jit, retracing
# ---------------------------------------------------------------------------

_MASK = np.array([[True, False, True, True], [False, True, True, False], [True] * 4])


def _rows_sliced(fn, mask, **kwargs):
  """fn applied row by row to the included categories only."""
  out = []
  for i in range(mask.shape[0]):
    out.append(fn(**{k: v[i][mask[i]] for k, v in kwargs.items()}))
  return np.array(out)


@pytest.mark.parametrize(
  "fn, kwargs",
  [
    (entropy, dict(p=_probs(80))),
    (entropy, dict(logits=_logits(81, ninf_frac=0.2))),
    (cross_entropy, dict(p=_probs(82), q=_probs(83, zero_frac=0.0))),
    (kl_divergence, dict(p=_probs(82), q=_probs(83, zero_frac=0.0))),
    (cross_entropy, dict(p_logits=_logits(84), q_logits=_logits(85))),
    (kl_divergence, dict(p_logits=_logits(84), q_logits=_logits(85))),
    (cross_entropy, dict(p=_probs(86), q_logits=_logits(87))),
    (kl_divergence, dict(p_logits=_logits(88), q=_probs(89, zero_frac=0.0))),
  ],
  ids=[
    "H-probs",
    "H-logits",
    "CE-probs",
    "KL-probs",
    "CE-logits",
    "KL-logits",
    "CE-p-zq",
    "KL-zp-q",
  ],
)
def test_where_equals_slicing(fn, kwargs):
  expected = _rows_sliced(fn, _MASK, **kwargs)
  np.testing.assert_allclose(fn(**kwargs, where=_MASK), expected, rtol=1e-13)


def test_where_with_labels_equals_slicing_with_shifted_labels():
  zq, q = _logits(90), _probs(91, zero_frac=0.0)
  labels = np.array([2, 1, 3])  # each at an included category of _MASK
  sliced_labels = [int(np.cumsum(_MASK[i])[labels[i]] - 1) for i in range(N)]
  for kw, v in (("q_logits", zq), ("q", q)):
    expected = [
      float(cross_entropy(labels=np.array(sliced_labels[i]), **{kw: v[i][_MASK[i]]}))
      for i in range(N)
    ]
    np.testing.assert_allclose(
      cross_entropy(labels=labels, where=_MASK, **{kw: v}), expected, rtol=1e-13
    )


def test_excluded_categories_cannot_leak_invalid_values():
  p = np.array([0.5, np.nan, 0.5, -1.0])
  zq = np.array([0.0, INF, 1.0, np.nan])
  mask = np.array([True, False, True, False])
  assert _all_finite(entropy(p, where=mask))
  assert _all_finite(kl_divergence(p, q_logits=zq, where=mask))


def test_fully_masked_row_gives_exactly_zero_with_zero_gradient():
  p, q, zp, zq = _P, _Q, _ZP, _ZQ
  mask = np.zeros((N, V), bool)
  out = _every_function(p, q, zp, zq, _L, mask)
  np.testing.assert_array_equal(out, 0.0)
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(_every_function(*a, _L, mask)), (0, 1, 2, 3)))(
    p, q, zp, zq
  )
  for g in grads:
    np.testing.assert_array_equal(g, 0.0)


def test_label_at_excluded_category_gives_zero_with_zero_gradient():
  zq, q = _ZQ, _Q
  labels = np.array([1, 1, 1])
  mask = np.array([True, False, True, True])
  for kw, v in (("q_logits", zq), ("q", q)):
    for fn in (cross_entropy, kl_divergence):

      def f(v, fn=fn, kw=kw):
        return jnp.sum(fn(labels=labels, where=mask, **{kw: v}))

      assert float(f(v)) == 0.0
      np.testing.assert_array_equal(jax.grad(f)(v), 0.0)


@pytest.mark.parametrize("axis", [0, 1, -2])
def test_axis_equals_moveaxis(axis):
  shape = (2, 3, V)
  p, q = _probs(92, shape), _probs(93, shape, zero_frac=0.0)
  zp, zq = _logits(94, shape, 0.2), _logits(95, shape)
  labels = _labels(96, shape[:-1])
  where = np.random.default_rng(97).random(shape) < 0.8

  def mv(x):
    return np.moveaxis(x, -1, axis)

  pairs = [
    (entropy(mv(p), axis=axis), entropy(p)),
    (entropy(logits=mv(zp), axis=axis, where=mv(where)), entropy(logits=zp, where=where)),
    (kl_divergence(mv(p), mv(q), axis=axis), kl_divergence(p, q)),
    (
      cross_entropy(p_logits=mv(zp), q_logits=mv(zq), axis=axis, where=mv(where)),
      cross_entropy(p_logits=zp, q_logits=zq, where=where),
    ),
    (kl_divergence(mv(p), q_logits=mv(zq), axis=axis), kl_divergence(p, q_logits=zq)),
    (
      cross_entropy(labels=labels, q_logits=mv(zq), axis=axis, where=mv(where)),
      cross_entropy(labels=labels, q_logits=zq, where=where),
    ),
  ]
  for a, b in pairs:
    np.testing.assert_allclose(a, b, rtol=1e-14)


def test_vmap_equals_batching():
  p, q, zp, zq, labels = _P, _Q, _ZP, _ZQ, _L
  mask = _MASK

  def one(p, q, zp, zq, labels, mask):
    return _every_function(p, q, zp, zq, labels, mask)

  batched = jax.jit(jax.vmap(one, out_axes=1))(p, q, zp, zq, labels, mask)
  np.testing.assert_allclose(batched, one(p, q, zp, zq, labels, mask), rtol=1e-6)


def test_vmap_equals_batching_for_binary():
  p, q = np.array([0.0, 0.3, 1.0]), np.array([0.5, 0.2, 0.9])
  for fn in (binary_cross_entropy, binary_kl_divergence):
    np.testing.assert_allclose(jax.vmap(fn)(p, q), fn(p, q), rtol=1e-15)
    np.testing.assert_allclose(
      jax.vmap(lambda a, b, fn=fn: fn(p_logits=a, q_logits=b))(p, q),
      fn(p_logits=p, q_logits=q),
      rtol=1e-15,
    )


# One jitted program shared by the jit and retrace tests (compiled once for the module).
_every_function_jit = jax.jit(chex.assert_max_traces(_every_function, n=1))


def test_jit_equals_eager():
  args = (_EDGE_P, _EDGE_Q, _EDGE_ZP, _EDGE_ZQ, _EDGE_L, _MASK)
  np.testing.assert_array_equal(_every_function_jit(*args), _every_function(*args))


def test_no_retrace_for_repeated_shapes():
  _every_function_jit(_P, _Q, _ZP, _ZQ, _L, _MASK)
  _every_function_jit(_Q, _P, _ZQ, _ZP, (_L + 1) % V, ~_MASK)
  _every_function_jit(_EDGE_P, _EDGE_Q, _EDGE_ZP, _EDGE_ZQ, _EDGE_L, _MASK)


# ---------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [cross_entropy, kl_divergence], ids=["ce", "kl"])
def test_negative_labels_give_exactly_zero_and_zero_gradient(fn):
  labels = np.array([-1, 2, -100])
  for kw, v in (("q_logits", _ZQ), ("q", _Q)):

    def f(v, kw=kw):
      return fn(labels=labels, **{kw: v})

    out = f(v)
    assert float(out[0]) == 0.0 and float(out[2]) == 0.0 and float(out[1]) > 0
    g = jax.grad(lambda v, f=f: jnp.sum(f(v)))(v)
    np.testing.assert_array_equal(g[0], 0.0)
    np.testing.assert_array_equal(g[2], 0.0)
    assert np.any(np.asarray(g[1]) != 0)


@pytest.mark.parametrize("fn", [cross_entropy, kl_divergence], ids=["ce", "kl"])
def test_label_at_or_beyond_number_of_categories_gives_nan(fn):
  labels = np.array([V, V + 7, 0])
  for kw, v in (("q_logits", _ZQ), ("q", _Q)):
    out = fn(labels=labels, **{kw: v})
    assert bool(jnp.all(jnp.isnan(out[:2]))) and bool(jnp.isfinite(out[2]))
    masked = fn(labels=labels, where=_MASK, **{kw: v})
    assert bool(jnp.all(jnp.isnan(masked[:2])))


# ---------------------------------------------------------------------------
# Invalid values give NaN, never a finite number
# ---------------------------------------------------------------------------


def test_nan_probabilities_give_nan():
  p, q = np.array([0.5, np.nan, 0.5]), np.array([0.2, 0.3, 0.5])
  assert bool(jnp.isnan(entropy(p)))
  for fn in (cross_entropy, kl_divergence):
    assert bool(jnp.isnan(fn(p, q))) and bool(jnp.isnan(fn(q, p)))
    assert bool(jnp.isnan(fn(labels=np.array(0), q=p)))
    assert bool(jnp.isnan(fn(p, q_logits=np.log(q))))


def test_nan_logits_give_nan():
  z, zq = np.array([0.0, np.nan, 1.0]), np.array([0.0, 1.0, 2.0])
  assert bool(jnp.isnan(entropy(logits=z)))
  for fn in (cross_entropy, kl_divergence):
    assert bool(jnp.isnan(fn(p_logits=z, q_logits=zq)))
    assert bool(jnp.isnan(fn(p_logits=zq, q_logits=z)))
    assert bool(jnp.isnan(fn(labels=np.array(0), q_logits=z)))


def test_negative_probabilities_give_nan():
  p, q = np.array([0.7, -0.1, 0.4]), np.array([0.2, 0.3, 0.5])
  assert bool(jnp.isnan(entropy(p)))
  for fn in (cross_entropy, kl_divergence):
    assert bool(jnp.isnan(fn(p, q))), fn.__name__
    assert bool(jnp.isnan(fn(q, p))), fn.__name__
    assert bool(jnp.isnan(fn(p, q_logits=np.log(q)))), fn.__name__
    # even where the other distribution is 0 there, and for a label elsewhere
    assert bool(jnp.isnan(fn(np.array([0.5, 0.0, 0.5]), p))), fn.__name__
    assert bool(jnp.isnan(fn(labels=np.array(0), q=p))), fn.__name__


def test_binary_probabilities_outside_unit_interval_give_nan():
  for fn in (binary_cross_entropy, binary_kl_divergence):
    out = fn(np.array([-0.1, 1.1, 0.5, 0.5]), np.array([0.5, 0.5, -0.2, 1.5]))
    assert bool(jnp.all(jnp.isnan(out))), fn.__name__


def test_plus_inf_logits_give_nan():
  z, zq = np.array([0.0, INF, 1.0]), np.array([0.0, 1.0, 2.0])
  p = np.array([0.2, 0.3, 0.5])
  assert bool(jnp.isnan(entropy(logits=z)))
  for fn in (cross_entropy, kl_divergence):
    assert bool(jnp.isnan(fn(p_logits=z, q_logits=zq))), fn.__name__
    assert bool(jnp.isnan(fn(p_logits=zq, q_logits=z))), fn.__name__
    assert bool(jnp.isnan(fn(p, q_logits=z))), fn.__name__
    assert bool(jnp.isnan(fn(p_logits=z, q=p))), fn.__name__
    for label in (0, 1):  # at the +inf logit and elsewhere
      assert bool(jnp.isnan(fn(labels=np.array(label), q_logits=z))), (fn.__name__, label)


def test_ignored_label_stays_zero_even_when_q_is_invalid():
  for q in (np.array([0.5, -0.1, 0.6]), np.array([np.nan, 0.5, 0.5])):
    assert float(cross_entropy(labels=np.array(-1), q=q)) == 0.0
