"""Monte-Carlo KL estimators k1, k2, k3 (Schulman, 2020) and the straight-through gradient."""

import math
from decimal import Decimal, getcontext

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxdiv

ESTIMATORS = ("k1", "k2", "k3")

kl_jit = jax.jit(jaxdiv.kl_estimate, static_argnames=("estimator", "straight_through", "base"))


def ref_estimates(log_p, log_q):
  lr = np.asarray(log_p, np.float64) - np.asarray(log_q, np.float64)
  return {"k1": -lr, "k2": 0.5 * lr**2, "k3": np.expm1(lr) - lr}


def exact_g(y: float) -> float:
  """e^y - 1 - y to ~50 digits."""
  getcontext().prec = 60
  d = Decimal(y)
  return float(d.exp() - 1 - d)


def test_known_values_match_numpy():
  rng = np.random.default_rng(0)
  log_p, log_q = rng.normal(size=(2, 64)) * 2
  ref = ref_estimates(log_p, log_q)
  for e in ESTIMATORS:
    np.testing.assert_allclose(
      jaxdiv.kl_estimate(log_p, log_q, estimator=e), ref[e], rtol=1e-12, atol=1e-15
    )


def test_default_is_k3():
  np.testing.assert_array_equal(
    jaxdiv.kl_estimate(0.3, -0.2), jaxdiv.kl_estimate(0.3, -0.2, estimator="k3")
  )


@pytest.mark.parametrize("mu", [0.1, 1.0])
def test_k1_k3_unbiased_and_k2_bias_by_monte_carlo(mu):
  # q = N(0, 1), p = N(mu, 1): KL(q||p) = mu^2 / 2. Tolerance: 5 standard errors.
  n = 1_000_000
  x = jax.random.normal(jax.random.key(0), (n,), jnp.float64)
  log_q = -0.5 * x**2
  log_p = -0.5 * (x - mu) ** 2
  true = mu**2 / 2
  for e, expected in [("k1", true), ("k3", true), ("k2", true + mu**4 / 8)]:
    k = np.asarray(kl_jit(log_p, log_q, estimator=e))
    se = k.std(ddof=1) / math.sqrt(n)
    assert abs(k.mean() - expected) < 5 * se, (e, k.mean(), expected, se)
  # and k2's bias is real: mu^4/8 is many standard errors away from 0 at mu = 1
  if mu == 1.0:
    k2 = np.asarray(kl_jit(log_p, log_q, estimator="k2"))
    assert abs(k2.mean() - true) > 20 * k2.std(ddof=1) / math.sqrt(n)


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e4, 700.0, allow_nan=False), st.floats(-50.0, 50.0))
def test_k2_k3_non_negative(log_p, log_q):
  for e in ("k2", "k3"):
    assert float(kl_jit(log_p, log_q, estimator=e)) >= 0.0


def test_stable_at_large_log_ratio():
  # log r = -1e3: k3 = e^{-1000} - 1 + 1000 = 999 (finite), in float64 and float32.
  for dt in (jnp.float64, jnp.float32):
    lp, lq = jnp.asarray(-1e3, dt), jnp.asarray(0.0, dt)
    assert float(jaxdiv.kl_estimate(lp, lq)) == 999.0
    assert float(jaxdiv.kl_estimate(lp, lq, estimator="k1")) == 1e3
    assert float(jaxdiv.kl_estimate(lp, lq, estimator="k2")) == 5e5
    g = jax.grad(jaxdiv.kl_estimate, argnums=(0, 1))(lp, lq)
    assert [float(v) for v in g] == [-1.0, 1.0]  # d k3 / d log p = r - 1
  # log r = +1e3: the true k3 ~ e^1000 exceeds every float: inf is the right answer.
  assert float(jaxdiv.kl_estimate(1e3, 0.0)) == np.inf
  # k2 is finite whenever (log r)^2 / 2 is, even where (log r)^2 overflows.
  assert np.isfinite(float(jaxdiv.kl_estimate(1.5e154, 0.0, estimator="k2")))
  k2_32 = jaxdiv.kl_estimate(jnp.float32(2e19), jnp.float32(0), estimator="k2")
  assert np.isfinite(float(k2_32))


@pytest.mark.parametrize("y", [1e-12, -3e-9, 1e-6, 0.01, -0.3, 0.49, 0.51, -2.0, 5.0, -40.0])
def test_k3_full_relative_precision(y):
  # expm1(y) - y would lose ~|log10 y| digits near 0; the series keeps them.
  got = float(jaxdiv.kl_estimate(y, 0.0))
  np.testing.assert_allclose(got, exact_g(y), rtol=2e-15)


def test_k3_float32_small_log_ratio():
  y = np.float32(1e-3)
  got = jaxdiv.kl_estimate(y, np.float32(0))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(float(got), exact_g(float(y)), rtol=3e-7)


def test_impossible_sample_gives_inf():
  for e in ESTIMATORS:
    assert float(jaxdiv.kl_estimate(-jnp.inf, -1.0, estimator=e)) == np.inf


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_straight_through_value_bitwise_and_k2_gradient(estimator):
  rng = np.random.default_rng(1)
  log_p, log_q = rng.normal(size=(2, 16)) * 3

  def st_sum(lp, lq):
    return jnp.sum(jaxdiv.kl_estimate(lp, lq, estimator=estimator, straight_through=True))

  plain = jaxdiv.kl_estimate(log_p, log_q, estimator=estimator)
  st_val = jaxdiv.kl_estimate(log_p, log_q, estimator=estimator, straight_through=True)
  np.testing.assert_array_equal(st_val, plain)
  gp, gq = jax.grad(st_sum, argnums=(0, 1))(log_p, log_q)
  np.testing.assert_allclose(gq, log_q - log_p, rtol=1e-14)  # = k1's value
  np.testing.assert_allclose(gp, log_p - log_q, rtol=1e-14)
  # forward mode agrees, and so does the gradient of plain k2
  jf = jax.jacfwd(st_sum, argnums=1)(log_p, log_q)
  np.testing.assert_allclose(jf, gq, rtol=1e-14)
  g2 = jax.grad(lambda lq: jnp.sum(jaxdiv.kl_estimate(log_p, lq, estimator="k2")))(log_q)
  np.testing.assert_allclose(gq, g2, rtol=1e-14)


def test_straight_through_gives_unbiased_reverse_kl_gradient():
  # q_theta = N(theta, 1), p = N(0, 0.8^2). Samples held fixed (score-function estimator).
  # d/dtheta KL(q||p) = theta / 0.64; d/dtheta KL(p||q) = theta. Tolerance: 5 standard
  # errors (sigma_p < 1 keeps r = p/q bounded, so every per-sample gradient has a variance).
  theta, sigma_p, n = 1.0, 0.8, 400_000
  x = theta + jax.random.normal(jax.random.key(2), (n,), jnp.float64)

  def per_sample_grads(estimator, straight_through):
    def loss(th, xi):
      log_q = -0.5 * (xi - th) ** 2 - 0.5 * math.log(2 * math.pi)
      log_p = -0.5 * (xi / sigma_p) ** 2 - math.log(sigma_p) - 0.5 * math.log(2 * math.pi)
      return jaxdiv.kl_estimate(
        log_p, log_q, estimator=estimator, straight_through=straight_through
      )

    return np.asarray(jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(theta, x))

  def check(g, expected):
    se = g.std(ddof=1) / math.sqrt(n)
    assert abs(g.mean() - expected) < 5 * se, (g.mean(), expected, se)

  check(per_sample_grads("k3", True), theta / sigma_p**2)  # straight-through: reverse KL
  check(per_sample_grads("k1", True), theta / sigma_p**2)
  check(per_sample_grads("k3", False), theta)  # plain k3: the gradient of KL(p||q)
  check(per_sample_grads("k1", False), 0.0)  # plain k1: zero in expectation
  g = per_sample_grads("k3", False)
  assert abs(g.mean() - theta / sigma_p**2) > 20 * g.std(ddof=1) / math.sqrt(n)


def test_unknown_estimator_lists_valid_names():
  with pytest.raises(ValueError, match=r"kl_estimate: unknown `estimator`='k4'.*'k1', 'k2', 'k3'"):
    jaxdiv.kl_estimate(0.0, 0.0, estimator="k4")


def test_broadcasting_shape_errors_dtypes_and_base():
  out = jaxdiv.kl_estimate(jnp.zeros((3, 1)), jnp.ones(4))
  assert out.shape == (3, 4)
  with pytest.raises(ValueError, match=r"kl_estimate.*`log_p` with shape \(3,\).*\(4,\)"):
    jaxdiv.kl_estimate(jnp.zeros(3), jnp.zeros(4))
  with pytest.raises(TypeError, match="`log_q` must be real numeric"):
    jaxdiv.kl_estimate(0.0, jnp.array([1j]))
  lp = jnp.asarray([-0.5, 0.25], jnp.bfloat16)
  lq = jnp.asarray([0.0, 0.0], jnp.bfloat16)
  assert jaxdiv.kl_estimate(lp, lq).dtype == jnp.float32
  np.testing.assert_allclose(
    jaxdiv.kl_estimate(0.3, -0.1, base=2), jaxdiv.kl_estimate(0.3, -0.1) / math.log(2)
  )


def test_jit_vmap_and_gradient_finite():
  rng = np.random.default_rng(3)
  log_p, log_q = rng.normal(size=(2, 5, 7))
  batched = kl_jit(log_p, log_q)
  vm = jax.vmap(lambda a, b: jaxdiv.kl_estimate(a, b))(log_p, log_q)
  np.testing.assert_allclose(batched, vm, rtol=1e-15)
  ys = jnp.array([0.0, 1e-8, -0.5, 0.5, -700.0, 300.0, -1e4])
  for e in ESTIMATORS:
    f = lambda a, e=e: jaxdiv.kl_estimate(a, 0.0, estimator=e)  # noqa: E731
    g = jax.jit(jax.vmap(jax.grad(f)))(ys)
    h = jax.jit(jax.vmap(jax.hessian(f)))(ys)
    assert bool(jnp.all(jnp.isfinite(g)) & jnp.all(jnp.isfinite(h))), (e, g, h)


# --- sequence_kl_penalty: per-token KL with the sequence-level gradient ------------------


def _tables(rng, num_tokens, horizon, scale=1.0):
  """Tabular autoregressive logits: one [K^t, K] table per position t (prefixes in base K)."""
  return [scale * rng.normal(size=(num_tokens**t, num_tokens)) for t in range(horizon)]


def _all_sequences(num_tokens, horizon):
  """Every sequence (lexicographic), and the prefix index of each position: [N, T] each."""
  n = num_tokens**horizon
  idx = np.arange(n)
  tokens = np.stack(
    [(idx // num_tokens ** (horizon - 1 - t)) % num_tokens for t in range(horizon)], 1
  )
  prefix = np.stack([idx // num_tokens ** (horizon - t) for t in range(horizon)], 1)
  return jnp.asarray(tokens), jnp.asarray(prefix)


def _logits_at(tables, prefix):
  """[N, T, K] logits at each sequence's prefixes."""
  return jnp.stack([tab[prefix[:, t]] for t, tab in enumerate(tables)], 1)


def _joint_log_prob(tables, tokens, prefix):
  lp = jax.nn.log_softmax(_logits_at(tables, prefix), axis=-1)
  return jnp.sum(jnp.take_along_axis(lp, tokens[..., None], axis=-1)[..., 0], axis=-1)


def test_sequence_kl_penalty_value_is_the_per_token_kl():
  rng = np.random.default_rng(10)
  p, q = rng.normal(size=(2, 4, 5, 6))
  tokens = rng.integers(0, 6, size=(4, 5))
  mask = rng.random((4, 5)) < 0.7
  v = jaxdiv.sequence_kl_penalty(p, q, tokens, mask=mask)
  ref = jnp.where(mask, jaxdiv.kl_divergence(p_logits=p, q_logits=q), 0.0)
  np.testing.assert_array_equal(v, ref)
  np.testing.assert_allclose(
    jaxdiv.sequence_kl_penalty(p, q, tokens, base=2),
    jaxdiv.kl_divergence(p_logits=p, q_logits=q) / math.log(2),
    rtol=1e-14,
  )


def test_sequence_kl_penalty_expectation_is_the_sequence_kl_and_its_gradient():
  """Exact expectation over all K^T sequences (float64): value and gradient in p and q."""
  k, horizon = 3, 3
  rng = np.random.default_rng(11)
  p_tab, q_tab = _tables(rng, k, horizon), _tables(rng, k, horizon)
  tokens, prefix = _all_sequences(k, horizon)

  def expected(p_tab, q_tab, penalty):
    weight = jax.lax.stop_gradient(jnp.exp(_joint_log_prob(p_tab, tokens, prefix)))
    pl, ql = _logits_at(p_tab, prefix), _logits_at(q_tab, prefix)
    return jnp.sum(weight * jnp.sum(penalty(pl, ql), axis=-1))

  ours = lambda pl, ql: jaxdiv.sequence_kl_penalty(pl, ql, tokens)  # noqa: E731
  per_token = lambda pl, ql: jaxdiv.kl_divergence(p_logits=pl, q_logits=ql)  # noqa: E731

  def sequence_kl(p_tab, q_tab):
    return jaxdiv.kl_divergence(
      p_logits=_joint_log_prob(p_tab, tokens, prefix),
      q_logits=_joint_log_prob(q_tab, tokens, prefix),
    )

  @jax.jit
  def both(p_tab, q_tab):
    value_and_grad = jax.value_and_grad(expected, argnums=(0, 1))
    return (
      value_and_grad(p_tab, q_tab, ours),
      jax.value_and_grad(sequence_kl, argnums=(0, 1))(p_tab, q_tab),
      jax.grad(expected)(p_tab, q_tab, per_token),
    )

  (v_ours, g_ours), (v_true, g_true), g_part = both(p_tab, q_tab)
  np.testing.assert_allclose(v_ours, v_true, rtol=1e-12)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_true), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
  # Without the score term only the per-token part remains: a different vector in p.
  gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g_part, g_true[0], strict=True))
  assert gap > 1e-2


def test_sequence_kl_penalty_mask_equals_slicing():
  """Masked prompt positions and padding: the same values and gradient as the sliced arrays."""
  rng = np.random.default_rng(12)
  p, q = rng.normal(size=(2, 3, 7, 4))
  tokens = rng.integers(0, 4, size=(3, 7))
  mask = np.zeros((3, 7), bool)
  mask[:, 2:5] = True
  garbage = np.where(mask, tokens, 99)  # unread where masked

  def f(z):
    return jaxdiv.sequence_kl_penalty(z, q, garbage, mask=jnp.asarray(mask))

  def f_sliced(z):
    return jaxdiv.sequence_kl_penalty(z, q[:, 2:5], tokens[:, 2:5])

  @jax.jit
  def both(p):
    full = jax.value_and_grad(lambda z: f(z).sum(), has_aux=False)
    sliced = jax.value_and_grad(lambda z: f_sliced(z).sum())
    return f(p), f_sliced(p[:, 2:5]), full(p)[1], sliced(p[:, 2:5])[1]

  v, v_sliced, g, g_sliced = both(p)
  # Float64 round-off only: the masked and the sliced programs may reduce in other orders.
  np.testing.assert_allclose(v[:, 2:5], v_sliced, rtol=1e-14, atol=1e-16)
  np.testing.assert_array_equal(v[:, ~mask[0]], 0.0)
  np.testing.assert_allclose(g[:, 2:5], g_sliced, rtol=1e-14, atol=1e-16)
  np.testing.assert_array_equal(g[:, ~mask[0]], 0.0)


def test_sequence_kl_penalty_one_position_is_kl_divergence():
  rng = np.random.default_rng(13)
  p, q = rng.normal(size=(2, 5, 1, 3))
  tokens = rng.integers(0, 3, size=(5, 1))
  f = lambda z: jaxdiv.sequence_kl_penalty(z, q, tokens).sum()  # noqa: E731
  g = lambda z: jaxdiv.kl_divergence(p_logits=z, q_logits=q).sum()  # noqa: E731
  ours, ref = jax.jit(lambda z: (jax.grad(f)(z), jax.grad(g)(z)))(p)
  np.testing.assert_array_equal(ours, ref)


def test_sequence_kl_penalty_edges_infinite_later_term_and_ruled_out_categories():
  ninf = -jnp.inf
  p = jnp.array([[0.3, -0.2, 0.1], [0.5, 0.0, 1.0], [0.0, ninf, 0.4]])
  q = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, ninf], [0.1, 0.2, 0.3]])
  tokens = jnp.array([2, 0, 0])
  f = lambda z: jaxdiv.sequence_kl_penalty(z, q[2:], tokens[2:]).sum()  # noqa: E731

  @jax.jit
  def all_of_it(p):
    return (
      jaxdiv.sequence_kl_penalty(p, q, tokens),
      jaxdiv.kl_divergence(p_logits=p, q_logits=q),
      jax.value_and_grad(f)(p[2:]),
      jax.vmap(jaxdiv.sequence_kl_penalty)(p[None], q[None], tokens[None])[0],
    )

  v, kl, (f_value, f_grad), batched = all_of_it(p)
  # q rules out a token p allows at t = 1: inf there, the value elsewhere untouched.
  np.testing.assert_array_equal(v, kl)
  assert v[1] == jnp.inf and bool(jnp.all(jnp.isfinite(v[jnp.array([0, 2])])))
  # p rules out a category (a -inf logit): the value and gradient stay finite.
  assert bool(jnp.isfinite(f_value) & jnp.all(jnp.isfinite(f_grad)))
  np.testing.assert_array_equal(batched, v)


def test_sequence_kl_penalty_bad_input_names_the_problem():
  z = jnp.zeros((2, 3, 4))
  with pytest.raises(TypeError, match="`tokens` must be integers"):
    jaxdiv.sequence_kl_penalty(z, z, jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"`tokens` with shape \(2, 4\) must match .*\(2, 3\)"):
    jaxdiv.sequence_kl_penalty(z, z, jnp.zeros((2, 4), int))
  with pytest.raises(ValueError, match=r"position and a category axis.*shape \(4,\)"):
    jaxdiv.sequence_kl_penalty(jnp.zeros(4), jnp.zeros(4), jnp.zeros((), int))
  with pytest.raises(TypeError, match="`mask` must be bool"):
    jaxdiv.sequence_kl_penalty(z, z, jnp.zeros((2, 3), int), mask=jnp.ones((2, 3)))
  with pytest.raises(ValueError, match=r"`mask` with shape \(3, 3\)"):
    jaxdiv.sequence_kl_penalty(z, z, jnp.zeros((2, 3), int), mask=jnp.ones((3, 3), bool))
  with pytest.raises(ValueError, match=r"cannot broadcast `p_logits`"):
    jaxdiv.sequence_kl_penalty(z, jnp.zeros((2, 3, 5)), jnp.zeros((2, 3), int))
