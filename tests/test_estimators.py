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
