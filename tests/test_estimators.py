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


# --- kl_estimate clamps, as verl and OpenRLHF apply them ------------------------------------
#
# verl: kl_penalty_forward / kl_penalty in verl/trainer/ppo/core_algos.py (volcengine/verl at
# b178a3cd, January 2026); OpenRLHF: compute_approx_kl in openrlhf/models/utils.py. Both are
# restated in float64 numpy; torch.clamp passes the gradient inside its bounds, 0 outside.

VERL = dict(estimator="k3", log_ratio_clip=(-20, 20), clip=(-10, 10))


def verl_low_var_kl(logprob, ref_logprob):
  """verl's "low_var_kl"/"k3": its value and its gradients in (logprob, ref_logprob)."""
  raw = ref_logprob - logprob
  kl = np.clip(raw, -20, 20)
  kld = np.exp(kl) - kl - 1
  inside = (np.abs(raw) < 20) & (kld > -10) & (kld < 10)
  d_kl = np.where(inside, np.exp(kl) - 1, 0.0)  # d kld / d (ref_logprob - logprob)
  return np.clip(kld, -10, 10), -d_kl, d_kl


def openrlhf_approx_kl(log_probs, log_probs_base, kl_estimator):
  """OpenRLHF's compute_approx_kl: every estimator clamped to (-10, 10)."""
  log_ratio = log_probs - log_probs_base
  if kl_estimator == "k2":
    log_ratio = log_ratio**2 / 2.0
  elif kl_estimator == "k3":
    log_ratio = np.exp(-log_ratio) - 1 + log_ratio
  return np.clip(log_ratio, -10, 10)


def _clamp_points():
  """log r from -30 to 30, clear of the bounds (where torch and jax differ only in the
  subgradient they pick), split into a policy and a reference log-probability."""
  log_r = np.concatenate([np.linspace(-30, 30, 61) + 0.37, [-11.2, -10.8, 2.5, 2.7, 19.6, 20.4]])
  logprob = -np.abs(np.random.default_rng(20).normal(size=log_r.shape)) - 1.0
  return logprob, logprob + log_r


def test_kl_estimate_clamps_match_verl_low_var_kl_values_and_gradients():
  logprob, ref = _clamp_points()
  want, d_logprob, d_ref = verl_low_var_kl(logprob, ref)

  def f(lp, lq):
    return jaxdiv.kl_estimate(lp, lq, **VERL)

  got = f(ref, logprob)
  g_ref, g_logprob = jax.vmap(jax.grad(f, argnums=(0, 1)))(ref, logprob)
  np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
  np.testing.assert_allclose(g_logprob, d_logprob, rtol=1e-13, atol=0)
  np.testing.assert_allclose(g_ref, d_ref, rtol=1e-13, atol=0)
  assert np.sum(want == 10) >= 20 and np.sum(np.abs(ref - logprob) > 20) >= 18  # both bind


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_kl_estimate_clip_matches_openrlhf_compute_approx_kl(estimator):
  logprob, ref = _clamp_points()
  got = jaxdiv.kl_estimate(ref, logprob, estimator=estimator, clip=(-10, 10))
  want = openrlhf_approx_kl(logprob, ref, estimator)
  np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
  assert np.any(np.abs(want) == 10)


def test_kl_estimate_clamps_zero_gradient_outside_the_bounds():
  log_r = jnp.array([-25.0, 25.0, 3.0, 1.0, 12.0])

  def grads(estimator, **kw):
    f = lambda lp: jnp.sum(jaxdiv.kl_estimate(lp, 0.0, estimator=estimator, **kw))  # noqa: E731
    return jax.grad(f)(log_r)

  # Beyond the log-ratio clip k3 is held at k3(+-20), with derivative 0.
  v = jaxdiv.kl_estimate(log_r[:2], 0.0, log_ratio_clip=(-20, 20))
  np.testing.assert_allclose(v, [exact_g(-20.0), exact_g(20.0)], rtol=1e-14)
  np.testing.assert_allclose(
    grads("k3", log_ratio_clip=(-20, 20)), [0, 0, math.e**3 - 1, math.e - 1, math.e**12 - 1]
  )
  # Beyond the estimate's clip, 0 (k3 is 24 at log r = -25 and 16.9 at 3; k1 is -12 at 12);
  # inside it, the estimator's own derivative. None is unbounded.
  np.testing.assert_allclose(grads("k3", clip=(None, 10)), [0, 0, 0, math.e - 1, 0], rtol=1e-15)
  np.testing.assert_array_equal(grads("k1", clip=(-10, 10)), [0, 0, -1, -1, 0])
  np.testing.assert_array_equal(
    jaxdiv.kl_estimate(log_r, 0.0, estimator="k1", clip=(None, 10)), [10, -25, -3, -1, -12]
  )


def test_kl_estimate_clip_finite_in_float32_where_k3_overflows():
  lp, lq = jnp.float32(100.0), jnp.float32(0.0)
  assert float(jaxdiv.kl_estimate(lp, lq)) == np.inf  # e^100 > the largest float32

  def f(lp, lq):
    return jaxdiv.kl_estimate(lp, lq, clip=(-10, 10))

  value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(lp, lq)
  assert value.dtype == jnp.float32 and float(value) == 10.0
  assert [float(g) for g in grads] == [0.0, 0.0]  # not NaN: no 0 * inf from the overflow
  assert float(jax.jacfwd(f)(lp, lq)) == 0.0


def test_kl_estimate_straight_through_with_clamps_is_verls_k3_plus():
  """verl's "k3+": backward_score - backward_score.detach() + forward_score.detach(), with
  backward_score = 0.5 * (logprob - ref_logprob)^2: the clamped value, the unclamped k2
  gradient (also where the clamps bind)."""
  logprob, ref = _clamp_points()

  def f(lp, lq):
    return jaxdiv.kl_estimate(lp, lq, straight_through=True, **VERL)

  g_ref, g_logprob = jax.vmap(jax.grad(f, argnums=(0, 1)))(ref, logprob)
  np.testing.assert_allclose(f(ref, logprob), verl_low_var_kl(logprob, ref)[0], rtol=1e-13)
  np.testing.assert_allclose(g_logprob, logprob - ref, rtol=1e-14)
  np.testing.assert_allclose(g_ref, ref - logprob, rtol=1e-14)
  g_fwd = jax.vmap(jax.jacfwd(f, argnums=1))(ref, logprob)
  np.testing.assert_allclose(g_fwd, logprob - ref, rtol=1e-14)


@pytest.mark.parametrize(
  ("kwargs", "error", "message"),
  [
    ({"clip": 10}, TypeError, r"`clip` must be a pair \(lo, hi\), got 10"),
    ({"log_ratio_clip": (1, 2, 3)}, TypeError, r"`log_ratio_clip` must be a pair"),
    ({"clip": ("a", 1)}, TypeError, r"`clip` must be a pair of numbers"),
    ({"clip": (True, 1)}, TypeError, r"`clip` must be a pair of numbers"),
    ({"log_ratio_clip": (1.0, -1.0)}, ValueError, r"`log_ratio_clip` must have lo <= hi"),
    ({"clip": (float("nan"), 1.0)}, ValueError, r"`clip` must not hold NaN"),
  ],
)
def test_kl_estimate_clamp_errors_name_the_argument(kwargs, error, message):
  with pytest.raises(error, match=rf"kl_estimate: {message}"):
    jaxdiv.kl_estimate(0.1, 0.0, **kwargs)


# --- aggregate_tokens: the RL trainers' loss_agg_mode -----------------------------------------

MODES = (
  "token-mean",
  "token-sum",
  "seq-mean-token-sum",
  "seq-mean-token-mean",
  "seq-mean-token-sum-norm",
)


def ref_aggregate(values, mask, mode, normalizer=None):
  """The modes in float64, sequence by sequence; fully masked sequences left out."""
  values, mask = np.asarray(values, np.float64), np.asarray(mask, bool)
  rows = [(v[m], m.sum()) for v, m in zip(values, mask, strict=True)]
  kept = [(v, n) for v, n in rows if n > 0]
  if not kept:
    return 0.0
  if mode == "token-sum":
    return sum(v.sum() for v, _ in kept)
  if mode == "token-mean":
    return sum(v.sum() for v, _ in kept) / sum(n for _, n in kept)
  if mode == "seq-mean-token-mean":
    return np.mean([v.sum() / n for v, n in kept])
  total = np.mean([v.sum() for v, _ in kept])
  if mode == "seq-mean-token-sum-norm":
    return total / (values.shape[-1] if normalizer is None else normalizer)
  return total


def verl_agg_loss(loss_mat, loss_mask, loss_agg_mode):
  """verl's agg_loss (verl/trainer/ppo/core_algos.py at b178a3cd, dp_size=1, no global
  batch size or scale factor given), restated in float64."""
  loss_mask = np.asarray(loss_mask, np.float64)
  if loss_agg_mode == "token-mean":
    return np.sum(loss_mat * loss_mask) / loss_mask.sum()
  if loss_agg_mode == "seq-mean-token-sum":
    seq_losses = np.sum(loss_mat * loss_mask, -1)
    seq_mask = (np.sum(loss_mask, -1) > 0).astype(np.float64)
    return np.sum(seq_losses * seq_mask) / seq_mask.sum()
  if loss_agg_mode == "seq-mean-token-mean":
    counts = np.sum(loss_mask, -1)
    seq_losses = np.sum(loss_mat * loss_mask, -1) / (counts + 1e-8)
    seq_mask = (counts > 0).astype(np.float64)
    return np.sum(seq_losses * seq_mask) / seq_mask.sum()
  assert loss_agg_mode == "seq-mean-token-sum-norm"
  return np.sum(np.sum(loss_mat * loss_mask, -1)) / loss_mask.shape[-1]


def _batch(seed=30, shape=(5, 7)):
  rng = np.random.default_rng(seed)
  values = rng.normal(size=shape)
  mask = np.arange(shape[-1]) < rng.integers(1, shape[-1] + 1, size=shape[:-1])[..., None]
  mask[1] = False  # a fully masked sequence
  mask[3, 0] = False  # a masked prompt token
  return values, mask


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_tokens_matches_float64_restatement(mode):
  values, mask = _batch()
  got = jaxdiv.aggregate_tokens(values, mask, mode)
  assert got.shape == ()
  np.testing.assert_allclose(got, ref_aggregate(values, mask, mode), rtol=1e-13)
  batched = jaxdiv.aggregate_tokens(values.reshape(5, 1, 7), mask.reshape(5, 1, 7), mode)
  np.testing.assert_allclose(batched, got, rtol=1e-14)  # leading axes are all sequences
  if mode == "seq-mean-token-sum-norm":
    got = jaxdiv.aggregate_tokens(values, mask, mode, normalizer=4096)
    np.testing.assert_allclose(got, ref_aggregate(values, mask, mode, 4096), rtol=1e-13)


@pytest.mark.parametrize("mode", [m for m in MODES if m != "token-sum"])  # verl's four
def test_aggregate_tokens_matches_verl_agg_loss(mode):
  values, mask = _batch()
  got = float(jaxdiv.aggregate_tokens(values, mask, mode))
  want = verl_agg_loss(values, mask, mode)
  if mode == "seq-mean-token-sum-norm":  # verl sums the sequences, this mode averages them
    want /= np.sum(mask.any(-1))
  # verl divides each sequence by its count + 1e-8: off by at most 1e-8 of each |term|.
  atol = 1e-8 * np.abs(values).sum() if mode == "seq-mean-token-mean" else 0.0
  np.testing.assert_allclose(got, want, rtol=1e-13, atol=atol)


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_tokens_leaves_out_fully_masked_sequences(mode):
  values, mask = _batch()
  kept = mask.any(-1)
  got = jaxdiv.aggregate_tokens(values, mask, mode)
  np.testing.assert_allclose(got, jaxdiv.aggregate_tokens(values[kept], mask[kept], mode))
  g = jax.grad(jaxdiv.aggregate_tokens)(jnp.asarray(values), mask, mode)
  np.testing.assert_array_equal(g[~mask], 0.0)


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_tokens_empty_batch_is_zero_with_zero_gradient(mode):
  values, mask = jnp.ones((3, 4)), jnp.zeros((3, 4), bool)
  value, grad = jax.jit(jax.value_and_grad(jaxdiv.aggregate_tokens), static_argnums=2)(
    values, mask, mode
  )
  assert float(value) == 0.0
  np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_tokens_nan_at_masked_positions_is_harmless(mode):
  values, mask = _batch()
  poisoned = np.where(mask, values, np.nan)
  f = jax.value_and_grad(jaxdiv.aggregate_tokens)
  (v, g), (v0, g0) = f(jnp.asarray(poisoned), mask, mode), f(jnp.asarray(values), mask, mode)
  np.testing.assert_array_equal(v, v0)
  np.testing.assert_array_equal(g, g0)
  assert bool(jnp.all(jnp.isfinite(g)))


def test_aggregate_tokens_errors_name_the_argument():
  v, m = jnp.zeros((2, 3)), jnp.ones((2, 3), bool)
  with pytest.raises(ValueError, match=r"aggregate_tokens: unknown `mode`='mean'.*'token-mean'"):
    jaxdiv.aggregate_tokens(v, m, "mean")
  with pytest.raises(TypeError, match="aggregate_tokens: `mask` must be bool"):
    jaxdiv.aggregate_tokens(v, jnp.ones((2, 3)), "token-mean")
  with pytest.raises(
    ValueError, match=r"cannot broadcast `values` .* and `mask` with shape \(3, 3\)"
  ):
    jaxdiv.aggregate_tokens(v, jnp.ones((3, 3), bool), "token-mean")
  with pytest.raises(ValueError, match=r"`mask` with shape \(4, 2, 3\) must broadcast to the"):
    jaxdiv.aggregate_tokens(v, jnp.ones((4, 2, 3), bool), "token-mean")
  with pytest.raises(ValueError, match="`values` needs a token axis"):
    jaxdiv.aggregate_tokens(1.0, True, "token-mean")
  with pytest.raises(ValueError, match="`normalizer` applies to mode 'seq-mean-token-sum-norm'"):
    jaxdiv.aggregate_tokens(v, m, "token-sum", normalizer=2.0)
  with pytest.raises(ValueError, match="`normalizer` must be a positive finite number"):
    jaxdiv.aggregate_tokens(v, m, "seq-mean-token-sum-norm", normalizer=0.0)


# --- sequence_kl_penalty's where ----------------------------------------------------------


def test_sequence_kl_penalty_token_where_equals_mask():
  rng = np.random.default_rng(40)
  p, q = rng.normal(size=(2, 3, 6, 4))
  tokens = rng.integers(0, 4, size=(3, 6))
  mask = rng.random((3, 6)) < 0.6

  @jax.jit
  def both(p):
    def f(z, **kw):
      return jaxdiv.sequence_kl_penalty(z, q, tokens, **kw)

    by_mask = jax.value_and_grad(lambda z: f(z, mask=mask).sum())(p)
    by_where = jax.value_and_grad(lambda z: f(z, where=mask[..., None]).sum())(p)
    return f(p, mask=mask), f(p, where=mask[..., None]), by_mask, by_where

  v_mask, v_where, (s_mask, g_mask), (s_where, g_where) = both(p)
  np.testing.assert_array_equal(v_where, v_mask)
  np.testing.assert_array_equal(g_where, g_mask)
  np.testing.assert_array_equal(s_where, s_mask)


def test_sequence_kl_penalty_category_where_equals_masking_both_logits():
  rng = np.random.default_rng(41)
  p, q = rng.normal(size=(2, 3, 5, 6))
  cats = np.array([True, False, True, True, False, True])
  tokens = rng.choice(np.flatnonzero(cats), size=(3, 5))

  @jax.jit
  def both(p):
    def by_where(z):
      return jaxdiv.sequence_kl_penalty(z, q, tokens, where=cats)

    def by_logits(z):
      ninf = jnp.full_like(z, -jnp.inf)
      return jaxdiv.sequence_kl_penalty(jnp.where(cats, z, ninf), jnp.where(cats, q, ninf), tokens)

    grad = lambda f: jax.grad(lambda z: f(z).sum())(p)  # noqa: E731
    return by_where(p), by_logits(p), grad(by_where), grad(by_logits)

  v_where, v_logits, g_where, g_logits = both(p)
  np.testing.assert_allclose(v_where, v_logits, rtol=1e-13, atol=1e-15)
  np.testing.assert_allclose(g_where, g_logits, rtol=1e-12, atol=1e-15)
  np.testing.assert_array_equal(g_where[..., ~cats], 0.0)
