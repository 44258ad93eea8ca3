"""Closed forms: normal, multivariate normal (Cholesky) and Dirichlet."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import integrate, stats

import jaxdiv

# ---------------------------------------------------------------------------
# float64 references
# ---------------------------------------------------------------------------


def normal_kl_ref(mp, sp, mq, sq):
  return np.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / (2 * sq**2) - 0.5


def normal_kl_quad(mp, sp, mq, sq):
  """KL by numerical integration of p log(p/q) (an oracle independent of the formula)."""
  p, q = stats.norm(mp, sp), stats.norm(mq, sq)
  f = lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x))  # noqa: E731
  val, _ = integrate.quad(f, mp - 40 * sp, mp + 40 * sp, limit=200, epsabs=1e-13, epsrel=1e-12)
  return val


def mvn_kl_ref(mp, lp, mq, lq):
  """The textbook formula with explicit inverse and slogdet, in float64."""
  sp, sq = lp @ lp.T, lq @ lq.T
  sq_inv = np.linalg.inv(sq)
  d = mp - mq
  return 0.5 * (
    np.trace(sq_inv @ sp)
    - len(mp)
    + np.linalg.slogdet(sq)[1]
    - np.linalg.slogdet(sp)[1]
    + d @ sq_inv @ d
  )


def random_tril(rng, d, batch=(), off=0.3):
  diag = np.exp(rng.normal(0, 0.3, batch + (d,)))
  low = np.tril(rng.normal(0, off / math.sqrt(d), batch + (d, d)), k=-1)
  return low + diag[..., None] * np.eye(d)


NORMAL_CASES = [
  (0.0, 1.0, 0.0, 1.0),
  (0.0, 1.0, 1.0, 1.0),
  (0.3, 0.5, -1.2, 2.0),
  (2.0, 3.0, 0.0, 0.1),
  (-5.0, 1e-2, 5.0, 1e2),
]


# ---------------------------------------------------------------------------
# Univariate normal
# ---------------------------------------------------------------------------


def test_normal_kl_known_value():
  assert float(jaxdiv.normal_kl_divergence(0.0, 1.0, 1.0, 1.0)) == 0.5


@pytest.mark.parametrize("args", NORMAL_CASES)
def test_normal_kl_matches_quadrature_and_formula(args):
  got = float(jaxdiv.normal_kl_divergence(*args))
  np.testing.assert_allclose(got, normal_kl_ref(*args), rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(got, normal_kl_quad(*args), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("args", NORMAL_CASES)
def test_normal_cross_entropy_matches_quadrature(args):
  mp, sp, mq, sq = args
  p, q = stats.norm(mp, sp), stats.norm(mq, sq)
  ref, _ = integrate.quad(
    lambda x: -p.pdf(x) * q.logpdf(x), mp - 40 * sp, mp + 40 * sp, limit=200, epsabs=1e-12
  )
  np.testing.assert_allclose(float(jaxdiv.normal_cross_entropy(*args)), ref, rtol=1e-8)


def test_normal_entropy_matches_scipy():
  s = np.array([1e-3, 0.2, 1.0, 7.5])
  np.testing.assert_allclose(jaxdiv.normal_entropy(s), stats.norm(0, s).entropy(), rtol=1e-13)


def test_normal_kl_monte_carlo():
  # KL(p||q) = E_p[log p - log q]; tolerance: 5 standard errors of the sample mean.
  mp, sp, mq, sq = 0.4, 1.3, -0.2, 0.8
  x = np.random.default_rng(0).normal(mp, sp, 400_000)
  terms = stats.norm(mp, sp).logpdf(x) - stats.norm(mq, sq).logpdf(x)
  se = terms.std(ddof=1) / math.sqrt(len(x))
  got = float(jaxdiv.normal_kl_divergence(mp, sp, mq, sq))
  assert abs(terms.mean() - got) < 5 * se


def test_normal_kl_self_is_exactly_zero():
  rng = np.random.default_rng(1)
  m, s = rng.normal(size=50), np.exp(rng.normal(size=50))
  assert np.all(np.asarray(jaxdiv.normal_kl_divergence(m, s, m, s)) == 0.0)


def test_normal_cross_entropy_is_entropy_plus_kl():
  rng = np.random.default_rng(2)
  mp, mq = rng.normal(size=(2, 100))
  sp, sq = np.exp(rng.normal(size=(2, 100)))
  h = jaxdiv.normal_entropy(sp)
  kl = jaxdiv.normal_kl_divergence(mp, sp, mq, sq)
  ce = jaxdiv.normal_cross_entropy(mp, sp, mq, sq)
  np.testing.assert_allclose(ce, h + kl, rtol=1e-13, atol=1e-13)


def test_normal_kl_nearby_keeps_relative_precision_in_float32():
  # The textbook form log(sq/sp) + (sp^2 + dm^2)/(2 sq^2) - 1/2 cancels three O(1) terms;
  # the g(y) form keeps float32's relative precision for nearby distributions.
  sp = np.array([1.0 + 1e-3, 1.0 - 1e-3, 1.0 + 3e-3, 1.0])
  dm = np.array([0.0, 1e-3, 0.0, 2e-3])
  ref = normal_kl_ref(dm, sp, 0.0, 1.0)  # float64: accurate enough at these sizes
  got = jaxdiv.normal_kl_divergence(
    dm.astype(np.float32), sp.astype(np.float32), np.float32(0), np.float32(1)
  )
  assert got.dtype == jnp.float32
  # Relative error budget: the float32 rounding of sp itself moves KL by ~eps/|sp - 1|.
  np.testing.assert_allclose(np.asarray(got), ref, rtol=5e-4)
  naive = normal_kl_ref(dm.astype(np.float32), sp.astype(np.float32), np.float32(0), np.float32(1))
  assert np.max(np.abs(naive / ref - 1)) > 5e-4  # the test can tell the forms apart


def test_normal_edges():
  assert float(jaxdiv.normal_kl_divergence(0.0, 0.0, 0.0, 1.0)) == np.inf
  assert float(jaxdiv.normal_kl_divergence(0.0, 1.0, 0.0, 0.0)) == np.inf
  assert np.isnan(float(jaxdiv.normal_kl_divergence(0.0, 0.0, 0.0, 0.0)))
  assert np.isnan(float(jaxdiv.normal_kl_divergence(0.0, -1.0, 0.0, 1.0)))
  assert np.isnan(float(jaxdiv.normal_entropy(-1.0)))
  assert float(jaxdiv.normal_entropy(0.0)) == -np.inf


def test_normal_broadcasting_and_shape_error():
  out = jaxdiv.normal_kl_divergence(jnp.zeros((3, 1)), 1.0, jnp.ones(4), jnp.full(4, 2.0))
  assert out.shape == (3, 4)
  with pytest.raises(ValueError, match=r"normal_kl_divergence.*`loc_p` with shape \(3,\)"):
    jaxdiv.normal_kl_divergence(jnp.zeros(3), 1.0, jnp.zeros(4), 1.0)
  with pytest.raises(TypeError, match="normal_entropy: `scale` must be real numeric"):
    jaxdiv.normal_entropy(jnp.array([1 + 1j]))


def test_normal_base_and_low_precision():
  nats = jaxdiv.normal_kl_divergence(0.0, 1.0, 1.0, 2.0)
  bits = jaxdiv.normal_kl_divergence(0.0, 1.0, 1.0, 2.0, base=2)
  np.testing.assert_allclose(bits, nats / math.log(2), rtol=1e-14)
  bf = [jnp.asarray(v, jnp.bfloat16) for v in (0.0, 1.0, 1.0, 2.0)]
  out = jaxdiv.normal_kl_divergence(*bf)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(float(out), float(nats), rtol=1e-6)
  with pytest.raises(ValueError, match="base"):
    jaxdiv.normal_entropy(1.0, base=1)


@pytest.mark.parametrize(
  "fn", [jaxdiv.normal_kl_divergence, jaxdiv.normal_cross_entropy], ids=["kl", "ce"]
)
def test_normal_check_grads(fn):
  args = (0.3, 0.7, -0.4, 1.6)
  check_grads(jax.jit(fn), args, order=1, modes=("fwd", "rev"))
  check_grads(jax.jit(jaxdiv.normal_entropy), (0.7,), order=1, modes=("fwd", "rev"))


def test_normal_gradients_finite_at_equality_and_extremes():
  args = jnp.array([[0.0, 1.0, 0.0, 1.0], [0.0, 1e-30, 0.0, 1e30], [1e10, 1.0, -1e10, 1.0]])
  f = lambda a: jaxdiv.normal_kl_divergence(*a)  # noqa: E731
  g = jax.jit(jax.vmap(jax.grad(f)))(args)
  h = jax.jit(jax.vmap(jax.hessian(f)))(args)
  assert bool(jnp.all(jnp.isfinite(g)) & jnp.all(jnp.isfinite(h))), (g, h)
  # At equality the gradient is exactly 0 (a minimum).
  g0 = jax.jit(jax.grad(f))(jnp.array([0.5, 2.0, 0.5, 2.0]))
  assert np.all(np.asarray(g0) == 0.0)


# ---------------------------------------------------------------------------
# Multivariate normal
# ---------------------------------------------------------------------------


def test_mvn_kl_known_value():
  eye = jnp.eye(2)
  assert float(jaxdiv.mvn_kl_divergence(jnp.zeros(2), eye, jnp.ones(2), eye)) == 1.0


def test_mvn_kl_matches_textbook_formula_float64():
  rng = np.random.default_rng(3)
  d, batch = 5, (4,)
  mp, mq = rng.normal(size=(2,) + batch + (d,))
  lp, lq = random_tril(rng, d, batch), random_tril(rng, d, batch)
  got = jaxdiv.mvn_kl_divergence(mp, lp, mq, lq)
  ref = [mvn_kl_ref(mp[i], lp[i], mq[i], lq[i]) for i in range(batch[0])]
  np.testing.assert_allclose(got, ref, rtol=1e-11)


def test_mvn_entropy_and_cross_entropy_match_scipy():
  rng = np.random.default_rng(4)
  d = 4
  mp, mq = rng.normal(size=(2, d))
  lp, lq = random_tril(rng, d), random_tril(rng, d)
  ref_h = stats.multivariate_normal(mp, lp @ lp.T).entropy()
  np.testing.assert_allclose(float(jaxdiv.mvn_entropy(lp)), ref_h, rtol=1e-12)
  ce = float(jaxdiv.mvn_cross_entropy(mp, lp, mq, lq))
  np.testing.assert_allclose(ce, ref_h + mvn_kl_ref(mp, lp, mq, lq), rtol=1e-11)
  # Monte Carlo: H(p, q) = -E_p[log q], 5 standard errors.
  x = stats.multivariate_normal(mp, lp @ lp.T).rvs(200_000, random_state=5)
  terms = -stats.multivariate_normal(mq, lq @ lq.T).logpdf(x)
  assert abs(terms.mean() - ce) < 5 * terms.std(ddof=1) / math.sqrt(len(x))


def test_mvn_identities():
  rng = np.random.default_rng(6)
  d = 6
  mp, mq = rng.normal(size=(2, 3, d))
  lp, lq = random_tril(rng, d, (3,)), random_tril(rng, d, (3,))
  # Zero up to the rounding of L^{-1} L (off-diagonal residues ~1e-17, squared).
  np.testing.assert_array_less(np.asarray(jaxdiv.mvn_kl_divergence(mp, lp, mp, lp)), 1e-28)
  assert np.all(
    np.asarray(jaxdiv.mvn_kl_divergence(mp, np.diag(np.diag(lp[0])), mp, np.diag(np.diag(lp[0]))))
    == 0.0
  )
  h = jaxdiv.mvn_entropy(lp)
  kl = jaxdiv.mvn_kl_divergence(mp, lp, mq, lq)
  ce = jaxdiv.mvn_cross_entropy(mp, lp, mq, lq)
  np.testing.assert_allclose(ce, h + kl, rtol=1e-12)


def test_diagonal_mvn_is_sum_of_univariate():
  rng = np.random.default_rng(7)
  mp, mq = rng.normal(size=(2, 8))
  sp, sq = np.exp(rng.normal(size=(2, 8)))
  got = jaxdiv.mvn_kl_divergence(mp, np.diag(sp), mq, np.diag(sq))
  ref = jnp.sum(jaxdiv.normal_kl_divergence(mp, sp, mq, sq))
  np.testing.assert_allclose(got, ref, rtol=1e-13)
  np.testing.assert_allclose(
    jaxdiv.mvn_entropy(np.diag(sp)), jnp.sum(jaxdiv.normal_entropy(sp)), rtol=1e-13
  )


def test_mvn_upper_triangle_ignored_and_diagonal_sign_irrelevant():
  rng = np.random.default_rng(8)
  d = 4
  mp, mq = rng.normal(size=(2, d))
  lp, lq = random_tril(rng, d), random_tril(rng, d)
  base_val = jaxdiv.mvn_kl_divergence(mp, lp, mq, lq)
  junk = np.triu(rng.normal(size=(d, d)), k=1)
  np.testing.assert_array_equal(jaxdiv.mvn_kl_divergence(mp, lp + junk, mq, lq - junk), base_val)
  flip = np.diag([1.0, -1.0, 1.0, -1.0])  # L D has the same L L^T
  np.testing.assert_allclose(jaxdiv.mvn_kl_divergence(mp, lp @ flip, mq, lq @ flip), base_val)


def test_mvn_batch_broadcasting_and_vmap():
  rng = np.random.default_rng(9)
  d = 3
  mp = rng.normal(size=(2, 1, d))
  mq = rng.normal(size=(5, d))
  lp = random_tril(rng, d, (2, 5))
  lq = random_tril(rng, d)
  out = jax.jit(jaxdiv.mvn_kl_divergence)(mp, lp, mq, lq)
  assert out.shape == (2, 5)
  ref = np.array([[mvn_kl_ref(mp[i, 0], lp[i, j], mq[j], lq) for j in range(5)] for i in range(2)])
  np.testing.assert_allclose(out, ref, rtol=1e-11)
  vm = jax.jit(jax.vmap(jaxdiv.mvn_kl_divergence, in_axes=(None, 0, 0, None)))(
    mp[0, 0], lp[0], mq, lq
  )
  np.testing.assert_allclose(vm, out[0], rtol=1e-14)


def test_mvn_shape_errors_name_shapes():
  with pytest.raises(ValueError, match=r"mvn_kl_divergence.*`scale_tril_p`.*\(3, 2\)"):
    jaxdiv.mvn_kl_divergence(jnp.zeros(2), jnp.zeros((3, 2)), jnp.zeros(2), jnp.eye(2))
  with pytest.raises(ValueError, match=r"event dimension.*`loc_q` with shape \(3,\)"):
    jaxdiv.mvn_kl_divergence(jnp.zeros(2), jnp.eye(2), jnp.zeros(3), jnp.eye(2))
  with pytest.raises(ValueError, match=r"batch shapes do not broadcast.*\(4, 2\)"):
    jaxdiv.mvn_kl_divergence(jnp.zeros((4, 2)), jnp.eye(2), jnp.zeros((3, 2)), jnp.eye(2))
  with pytest.raises(ValueError, match="mvn_entropy"):
    jaxdiv.mvn_entropy(jnp.ones(3))


def test_mvn_d512_float32_matches_float64():
  # At d = 512, trace and log-determinants are O(d) each while KL is O(1): the textbook
  # form would cancel them; the sum-of-non-negative-terms form keeps float32 precision.
  rng = np.random.default_rng(10)
  d = 512
  lp = random_tril(rng, d, off=0.5)
  lq = lp + np.diag(rng.normal(0, 0.02, d)) + np.tril(rng.normal(0, 0.002, (d, d)), k=-1)
  mp = rng.normal(size=d)
  mq = mp + rng.normal(0, 0.01, d)
  kl = jax.jit(jaxdiv.mvn_kl_divergence)
  ref = float(kl(mp, lp, mq, lq))  # float64
  np.testing.assert_allclose(ref, mvn_kl_ref(mp, lp, mq, lq), rtol=1e-7)
  f32 = [np.asarray(a, np.float32) for a in (mp, lp, mq, lq)]
  got = kl(*f32)
  assert got.dtype == jnp.float32 and np.isfinite(float(got))
  np.testing.assert_allclose(float(got), ref, rtol=1e-5)
  h32 = jaxdiv.mvn_entropy(f32[1])
  np.testing.assert_allclose(float(h32), float(jaxdiv.mvn_entropy(lp)), rtol=1e-5)
  g = jax.jit(jax.grad(jaxdiv.mvn_kl_divergence, argnums=(0, 1, 2, 3)))(*f32)
  assert all(bool(jnp.all(jnp.isfinite(v))) for v in g)


def test_mvn_check_grads():
  rng = np.random.default_rng(11)
  d = 3
  mp, mq = rng.normal(size=(2, d))
  lp, lq = random_tril(rng, d), random_tril(rng, d)
  check_grads(jax.jit(jaxdiv.mvn_kl_divergence), (mp, lp, mq, lq), order=1, modes=("rev",))
  check_grads(jax.jit(jaxdiv.mvn_cross_entropy), (mp, lp, mq, lq), order=1, modes=("rev",))
  check_grads(jax.jit(jaxdiv.mvn_entropy), (lp,), order=1, modes=("rev",))


def test_mvn_jit_does_not_retrace():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(mp, lp, mq, lq):
    return jaxdiv.mvn_kl_divergence(mp, lp, mq, lq)

  eye = jnp.eye(3)
  f(jnp.zeros(3), eye, jnp.ones(3), eye)
  f(jnp.ones(3), 2 * eye, jnp.zeros(3), eye)


# ---------------------------------------------------------------------------
# Dirichlet
# ---------------------------------------------------------------------------


def test_dirichlet_kl_monte_carlo_and_self():
  a, b = np.array([2.0, 3.0, 0.7]), np.array([1.0, 1.5, 4.0])
  x = stats.dirichlet(a).rvs(200_000, random_state=12)
  terms = stats.dirichlet(a).logpdf(x.T) - stats.dirichlet(b).logpdf(x.T)
  got = float(jaxdiv.dirichlet_kl_divergence(a, b))
  assert abs(terms.mean() - got) < 5 * terms.std(ddof=1) / math.sqrt(len(terms))
  assert float(jaxdiv.dirichlet_kl_divergence(a, a)) == 0.0


def test_dirichlet_kl_beta_case_matches_quadrature():
  # Dir(a1, a2) on the simplex is Beta(a1, a2) for the first coordinate.
  a, b = (2.5, 1.5), (0.8, 3.0)
  pa, pb = stats.beta(*a), stats.beta(*b)
  ref, _ = integrate.quad(lambda t: pa.pdf(t) * (pa.logpdf(t) - pb.logpdf(t)), 0, 1)
  np.testing.assert_allclose(
    float(jaxdiv.dirichlet_kl_divergence(jnp.array(a), jnp.array(b))), ref, rtol=1e-9
  )


def test_dirichlet_axis_invalid_and_grads():
  a = np.array([[2.0, 1.0], [3.0, 0.5], [1.0, 1.0]])  # categories along axis 0
  b = np.ones((3, 2))
  np.testing.assert_allclose(
    jaxdiv.dirichlet_kl_divergence(a, b, axis=0), jaxdiv.dirichlet_kl_divergence(a.T, b.T)
  )
  assert np.isnan(float(jaxdiv.dirichlet_kl_divergence(jnp.array([-0.5, 1.0]), jnp.ones(2))))
  check_grads(
    jax.jit(jaxdiv.dirichlet_kl_divergence),
    (jnp.array([2.0, 3.0]), jnp.array([1.2, 0.9])),
    order=1,
    modes=("rev",),
  )


def test_normal_cross_entropy_edges():
  assert float(jaxdiv.normal_cross_entropy(0.0, 1.0, 0.0, 0.0)) == np.inf
  assert float(jaxdiv.normal_cross_entropy(1.0, 0.0, 0.0, 0.0)) == np.inf
  assert np.isnan(float(jaxdiv.normal_cross_entropy(0.0, 0.0, 0.0, 0.0)))
  assert np.isnan(float(jaxdiv.normal_cross_entropy(0.0, -1.0, 0.0, 1.0)))
  # A point mass p: -log q(mu_p), finite.
  np.testing.assert_allclose(
    float(jaxdiv.normal_cross_entropy(0.5, 0.0, 0.0, 2.0)), -stats.norm(0, 2).logpdf(0.5)
  )


# ---------------------------------------------------------------------------
# Log-scales (a VAE's 0.5 * logvar): computed in log space
# ---------------------------------------------------------------------------


def _normal_kl_oracle(mu_p, log_sp, mu_q, log_sq):
  """KL(N(mu_p, e^(2 log_sp)) || N(mu_q, e^(2 log_sq))) in float64 from the log-scales."""
  y = 2.0 * (np.float64(log_sp) - np.float64(log_sq))
  gap = (np.float64(mu_p) - np.float64(mu_q)) * np.exp(-np.float64(log_sq))
  return 0.5 * (np.expm1(y) - y + gap * gap)


LOGVARS = [-300.0, -180.0, -100.0, -20.0, -1e-3, 0.0, 3.0, 80.0]


@pytest.mark.parametrize("mu", [0.0, 1.5])
def test_normal_kl_from_log_scales_is_exact_where_exp_over_or_underflows(mu):
  logvar, zero = jnp.asarray(LOGVARS, jnp.float32), jnp.float32(0)
  kl = jaxdiv.normal_kl_divergence(
    jnp.float32(mu), log_scale_p=0.5 * logvar, loc_q=zero, log_scale_q=zero
  )
  expected = [_normal_kl_oracle(mu, 0.5 * v, 0.0, 0.0) for v in np.asarray(logvar, np.float64)]
  assert kl.dtype == jnp.float32
  np.testing.assert_allclose(kl, expected, rtol=2e-6)
  np.testing.assert_allclose(kl[1], 89.5 + 0.5 * mu**2, rtol=1e-6)  # logvar = -180


def test_normal_kl_log_scale_gradients_are_finite_and_exact():
  def kl(logvar, mu):
    return jaxdiv.normal_kl_divergence(mu, log_scale_p=0.5 * logvar, loc_q=0.0, log_scale_q=0.0)

  logvar = jnp.asarray(LOGVARS, jnp.float32)
  mu = jnp.full_like(logvar, 0.5)
  g_lv, g_mu = jax.vmap(jax.grad(kl, argnums=(0, 1)))(logvar, mu)
  assert np.isfinite(g_lv).all() and np.isfinite(g_mu).all()
  # d/dlogvar = (e^logvar - 1) / 2, d/dmu = mu (q = N(0, 1))
  np.testing.assert_allclose(g_lv, 0.5 * np.expm1(np.asarray(logvar, np.float64)), rtol=1e-5)
  np.testing.assert_allclose(g_mu, 0.5, rtol=1e-6)


def test_normal_log_scale_q_tiny_keeps_the_mean_gap_exact():
  # exp(100) overflows float32; the standardised gap 1e-30 * e^100 = 2.7e13 does not.
  kl = jaxdiv.normal_kl_divergence(
    jnp.float32(1e-30), log_scale_p=-100.0, loc_q=0.0, log_scale_q=jnp.float32(-100.0)
  )
  np.testing.assert_allclose(kl, _normal_kl_oracle(1e-30, -100, 0, -100), rtol=1e-5)
  ce = jaxdiv.normal_cross_entropy(
    jnp.float32(1e-30), log_scale_p=-100.0, loc_q=0.0, log_scale_q=jnp.float32(-100.0)
  )
  h = jaxdiv.normal_entropy(log_scale=jnp.float32(-100.0))
  np.testing.assert_allclose(ce, h + kl, rtol=1e-6)


def test_normal_cross_entropy_and_entropy_from_log_scales_match_float64():
  log_sp, log_sq, mp, mq = -90.0, 0.3, 0.2, -0.4
  ce = jaxdiv.normal_cross_entropy(
    jnp.float32(mp), log_scale_p=jnp.float32(log_sp), loc_q=mq, log_scale_q=log_sq
  )
  h_p = 0.5 * (1 + math.log(2 * math.pi)) + log_sp
  np.testing.assert_allclose(ce, h_p + _normal_kl_oracle(mp, log_sp, mq, log_sq), rtol=1e-6)
  np.testing.assert_allclose(jaxdiv.normal_entropy(log_scale=jnp.float32(log_sp)), h_p, rtol=1e-7)
  g = jax.grad(lambda s: jaxdiv.normal_cross_entropy(0.0, log_scale_p=s, loc_q=0.0, scale_q=1.0))
  assert np.isfinite(g(jnp.float32(-90.0)))


def test_normal_log_scale_and_scale_forms_agree_and_mix():
  x64 = np.array([0.3, 1.0, 2.5])
  for fn in (jaxdiv.normal_kl_divergence, jaxdiv.normal_cross_entropy):
    scale_form = fn(0.1, x64, -0.2, 1.7)
    np.testing.assert_allclose(
      fn(0.1, log_scale_p=np.log(x64), loc_q=-0.2, log_scale_q=np.log(1.7)), scale_form, rtol=1e-13
    )
    np.testing.assert_allclose(fn(0.1, x64, -0.2, log_scale_q=np.log(1.7)), scale_form, rtol=1e-13)
  np.testing.assert_allclose(
    jaxdiv.normal_entropy(log_scale=np.log(x64)), jaxdiv.normal_entropy(x64), rtol=1e-14
  )


@pytest.mark.parametrize("fn", [jaxdiv.normal_kl_divergence, jaxdiv.normal_cross_entropy])
def test_normal_exactly_one_scale_form_per_side(fn):
  with pytest.raises(
    TypeError, match=rf"{fn.__name__}: .*exactly one of `scale_p` and `log_scale_p`"
  ):
    fn(0.0, 1.0, 0.0, 1.0, log_scale_p=0.0)
  with pytest.raises(
    TypeError, match=r"exactly one of `scale_q` and `log_scale_q` \(got neither\)"
  ):
    fn(0.0, 1.0, 0.0)
  with pytest.raises(TypeError, match=r"`loc_q` is required"):
    fn(0.0, 1.0, scale_q=1.0)
  with pytest.raises(TypeError, match=r"normal_entropy: .*exactly one of `scale` and `log_scale`"):
    jaxdiv.normal_entropy()
