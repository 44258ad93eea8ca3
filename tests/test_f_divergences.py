"""Tests for jaxdiv._f_divergences and jaxdiv.generators: the discrete divergence family.

Order: known values, float64 oracles (scipy and numpy formulas, a 50-digit decimal oracle
for Rényi / alpha near their limits), laws as property tests (explicit seeds), generators
against the named functions, input contracts (logits, where, axis, vmap, dtypes),
gradients (check_grads inside, finiteness on the edge grid), and errors.
"""

import decimal
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from scipy.spatial.distance import jensenshannon

import jaxdiv
from jaxdiv import generators

INF = np.inf
N, V = 6, 5


def _jit(fn):
  """Jitted once per function (eager dispatch of every op would dominate the run time)."""
  return jax.jit(fn, static_argnames=("axis",))


jsd = _jit(jaxdiv.jensen_shannon_divergence)
jsdist = _jit(jaxdiv.jensen_shannon_distance)
jeffreys = _jit(jaxdiv.jeffreys_divergence)
skew = _jit(jaxdiv.skew_kl_divergence)
tv = _jit(jaxdiv.total_variation_distance)
h2 = _jit(jaxdiv.squared_hellinger_distance)
hel = _jit(jaxdiv.hellinger_distance)
bc = _jit(jaxdiv.bhattacharyya_coefficient)
bd = _jit(jaxdiv.bhattacharyya_distance)
chi2 = _jit(jaxdiv.chi_squared_divergence)
renyi = _jit(jaxdiv.renyi_divergence)
amari = _jit(jaxdiv.alpha_divergence)
fdiv = jaxdiv.f_divergence
kl = _jit(jaxdiv.kl_divergence)


def _fixed(fn, **params):
  """``fn`` with concrete parameters, jitted (the parameters stay Python numbers)."""
  return _jit(functools.partial(fn, **params))


def _probs(seed, shape=(N, V), zero_frac=0.3):
  """Random float64 distributions over the last axis with exact zeros (no zero row)."""
  rng = np.random.default_rng(seed)
  x = rng.gamma(1.0, size=shape) + 0.05
  x = np.where(rng.random(shape) < zero_frac, 0.0, x)
  x[..., 0] = np.where(x.sum(-1) == 0, 1.0, x[..., 0])
  return x / x.sum(-1, keepdims=True)


def _kl_np(p, q):
  return scipy.special.rel_entr(p, q).sum(-1)


def _sqrt_np(p):
  return np.sqrt(p)


def _renyi_np(p, q, a):
  with np.errstate(divide="ignore", invalid="ignore"):
    if a == 1:
      return _kl_np(p, q)
    if a == 0:
      return -np.log(np.where(p > 0, q, 0).sum(-1))
    if a == INF:
      return np.log(np.max(np.where(p > 0, p / q, 0), axis=-1))
    s = np.where(p > 0, p**a * q ** (1 - a), 0).sum(-1)
    return np.log(s) / (a - 1)


def _amari_np(p, q, a):
  with np.errstate(divide="ignore", invalid="ignore"):
    if a == 1:
      return _kl_np(p, q)
    if a == 0:
      return _kl_np(q, p)
    s = np.where((p > 0) & (q > 0), p**a * q ** (1 - a), 0.0)
    s = np.where((p > 0) & (q == 0), 0.0 if a < 1 else INF, s)
    s = np.where((p == 0) & (q > 0), 0.0 if a > 0 else INF, s)
    return (1 - s.sum(-1)) / (a * (1 - a))


def _dec_sum(p, q, a):
  """sum_i p_i^a q_i^(1-a) with 50 digits (p, q > 0 as given in float64)."""
  with decimal.localcontext() as ctx:
    ctx.prec = 50
    a = decimal.Decimal(a)
    return sum(
      decimal.Decimal(x) ** a * decimal.Decimal(y) ** (1 - a) for x, y in zip(p, q, strict=True)
    )


def _mix_np(w, p, q):
  m = w * p + (1 - w) * q
  return w * _kl_np(p, m) + (1 - w) * _kl_np(q, m)


def _h2_np(p, q):
  return 0.5 * ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(-1)


def _chi2_np(p, q):
  with np.errstate(divide="ignore", invalid="ignore"):
    t = np.where(q > 0, (p - q) ** 2 / np.where(q > 0, q, 1), np.where(p > 0, INF, 0.0))
  return t.sum(-1)


P, Q = _probs(1), _probs(2)
P[0], Q[0] = [0.5, 0.5, 0, 0, 0], [0, 0.5, 0.5, 0, 0]  # q_i = 0 < p_i and p_i = 0 < q_i
P[1], Q[1] = [1, 0, 0, 0, 0], [0, 0, 0, 0.5, 0.5]  # disjoint supports


# Every function with fixed parameters: name -> (callable, numpy oracle).
FUNCTIONS = {
  "jsd": (jsd, lambda p, q: _mix_np(0.5, p, q)),
  "jsd_w0.3": (
    _fixed(jaxdiv.jensen_shannon_divergence, weight=0.3),
    lambda p, q: _mix_np(0.3, p, q),
  ),
  "js_distance": (jsdist, lambda p, q: np.sqrt(_mix_np(0.5, p, q))),
  "jeffreys": (jeffreys, lambda p, q: _kl_np(p, q) + _kl_np(q, p)),
  "skew_0.1": (
    _fixed(jaxdiv.skew_kl_divergence, alpha=0.1),
    lambda p, q: _kl_np(p, 0.1 * p + 0.9 * q),
  ),
  "skew_0": (_fixed(jaxdiv.skew_kl_divergence, alpha=0.0), _kl_np),
  "tv": (tv, lambda p, q: 0.5 * np.abs(p - q).sum(-1)),
  "h2": (h2, _h2_np),
  "hellinger": (hel, lambda p, q: np.sqrt(_h2_np(p, q))),
  "bc": (bc, lambda p, q: np.sqrt(p * q).sum(-1)),
  "bd": (bd, lambda p, q: -np.log(np.sqrt(p * q).sum(-1))),
  "chi2": (chi2, _chi2_np),
  **{
    f"renyi_{a}": (_fixed(jaxdiv.renyi_divergence, alpha=a), functools.partial(_renyi_np, a=a))
    for a in (0.0, 0.5, 0.999, 1.0, 2.0, 7.0, INF)
  },
  **{
    f"alpha_{a}": (_fixed(jaxdiv.alpha_divergence, alpha=a), functools.partial(_amari_np, a=a))
    for a in (-1.0, 0.0, 0.3, 0.5, 1.0, 2.0)
  },
}


# ---------------------------------------------------------------------------
# Known values and float64 oracles
# ---------------------------------------------------------------------------


def test_known_values():
  p, q = np.array([1.0, 0.0]), np.array([0.0, 1.0])
  assert float(jsd(p, q)) == pytest.approx(math.log(2), rel=1e-15)
  assert float(jsd(p, q, base=2)) == pytest.approx(1.0, rel=1e-15)
  assert float(jsdist(p, q, base=2)) == pytest.approx(1.0, rel=1e-15)
  assert float(tv(p, q)) == 1.0 and float(h2(p, q)) == 1.0 and float(bc(p, q)) == 0.0
  assert float(bd(p, q)) == INF and float(jeffreys(p, q)) == INF and float(chi2(p, q)) == INF
  assert float(skew(p, q, alpha=0.1)) == pytest.approx(-math.log(0.1), rel=1e-15)
  p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
  assert float(renyi(p, q, alpha=INF)) == pytest.approx(math.log(5), rel=1e-15)
  assert float(chi2(p, q)) == pytest.approx(16 / 9, rel=1e-15)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_matches_float64_oracle_including_inf(name):
  fn, oracle = FUNCTIONS[name]
  got = np.asarray(fn(P, Q))
  want = oracle(P, Q)
  assert got.dtype == np.float64
  np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("base", [None, 2.0, 10.0])
def test_js_distance_matches_scipy_jensenshannon(base):
  want = jensenshannon(P, Q, base=base, axis=-1)
  np.testing.assert_allclose(jsdist(P, Q, base=base), want, rtol=1e-12, atol=1e-15)


def test_jsd_equals_tfp_convention_over_two():
  # TFP's jensen_shannon generator gives KL(p||m) + KL(q||m), twice the 1/2-weighted JSD.
  m = 0.5 * (P + Q)
  np.testing.assert_allclose(2 * jsd(P, Q), _kl_np(P, m) + _kl_np(Q, m), rtol=1e-12)


# Sums exactly 1 in binary: the as-given formula and the normalised one coincide (otherwise
# the rounding of sum(p) alone moves D_alpha by (sum(p) - 1)/(alpha - 1) near alpha = 1).
EXACT_P = np.array([0.5, 0.25, 0.125, 0.0625, 0.0625])
EXACT_Q = np.array([0.0625, 0.125, 0.3125, 0.25, 0.25])


@pytest.mark.parametrize("a", [1 - 1e-3, 1 - 1e-6, 1 - 1e-9, 1 + 1e-9, 1 + 1e-6, 1 + 1e-3, 1.3])
def test_renyi_and_alpha_near_one_match_a_50_digit_oracle(a):
  p, q = EXACT_P, EXACT_Q
  s = _dec_sum(p, q, a)
  with decimal.localcontext() as ctx:
    ctx.prec = 50
    da = decimal.Decimal(a)
    want_r = float(s.ln() / (da - 1))
    want_a = float((1 - s) / (da * (1 - da)))
  assert float(renyi(p, q, alpha=a)) == pytest.approx(want_r, rel=1e-12)
  assert float(amari(p, q, alpha=a)) == pytest.approx(want_a, rel=1e-12)


@pytest.mark.parametrize("a", [1e-9, 1e-6, 1e-3, -1e-6])
def test_alpha_near_zero_matches_a_50_digit_oracle(a):
  p, q = EXACT_P, EXACT_Q
  s = _dec_sum(p, q, a)
  with decimal.localcontext() as ctx:
    ctx.prec = 50
    da = decimal.Decimal(a)
    want = float((1 - s) / (da * (1 - da)))
  assert float(amari(p, q, alpha=a)) == pytest.approx(want, rel=1e-12)


def test_renyi_large_order_uses_logsumexp_without_overflow():
  p = np.array([1.0 - 1e-300, 1e-300])
  q = np.array([1e-300, 1.0 - 1e-300])
  # D_alpha = log(p1^a q1^(1-a) + ...)/(a - 1) ~ (a log p1 + (1 - a) log q1)/(a - 1) = 690.8
  got = float(renyi(p, q, alpha=100.0))
  assert got == pytest.approx(-math.log(1e-300), rel=1e-12)
  assert float(renyi(p, q, alpha=INF)) == pytest.approx(-math.log(1e-300), rel=1e-12)


# ---------------------------------------------------------------------------
# Laws (property tests; every input from an explicit seed)
# ---------------------------------------------------------------------------

seeds = st.integers(0, 2**31 - 1)
law_settings = settings(max_examples=12, deadline=None, derandomize=True)


def _pair(seed):
  return _probs(seed, (N, V), 0.3), _probs(seed + 1, (N, V), 0.3)


@law_settings
@given(seeds)
def test_law_nonnegative(seed):
  p, q = _pair(seed)
  for name, (fn, _) in FUNCTIONS.items():
    if name != "bc":
      assert np.all(np.asarray(fn(p, q)) >= -1e-15), name


@law_settings
@given(seeds)
def test_law_exactly_zero_at_equality_and_positive_otherwise(seed):
  p, q = _pair(seed)
  for name, (fn, _) in FUNCTIONS.items():
    if name == "bc":
      np.testing.assert_allclose(fn(p, p), 1.0, rtol=1e-14)
      continue
    np.testing.assert_array_equal(fn(p, p), 0.0, err_msg=name)
    if name != "renyi_0.0":  # D_0 = -log q(supp p) is 0 whenever supp q is inside supp p
      assert np.all(np.asarray(fn(p, q)) > 0), name


@law_settings
@given(seeds)
def test_law_symmetry(seed):
  p, q = _pair(seed)
  for fn in (jsd, jsdist, jeffreys, tv, h2, hel, bc, bd):
    np.testing.assert_allclose(fn(p, q), fn(q, p), rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(jsd(p, q, weight=0.2), jsd(q, p, weight=0.8), rtol=1e-12)
  for a in (-0.5, 0.2, 0.7, 1.5):
    np.testing.assert_allclose(amari(p, q, alpha=a), amari(q, p, alpha=1 - a), rtol=1e-12)
  for a in (0.2, 0.7):  # Renyi skew symmetry on (0, 1)
    np.testing.assert_allclose(
      (1 - a) * renyi(p, q, alpha=a), a * renyi(q, p, alpha=1 - a), rtol=1e-12
    )


@law_settings
@given(seeds, st.sampled_from([0.5, 0.1, 0.3, 0.9]))
def test_law_jsd_bounded_by_binary_entropy_of_weight(seed, w):
  p, q = _pair(seed)
  bound = -w * math.log(w) - (1 - w) * math.log(1 - w)
  assert np.all(np.asarray(jsd(p, q, weight=w)) <= bound * (1 + 1e-15))
  assert np.all(np.asarray(jsd(p, q, weight=w, base=2)) <= bound / math.log(2) * (1 + 1e-15))
  assert np.all(np.asarray(skew(p, q, alpha=w)) <= -math.log(w) * (1 + 1e-15))


@law_settings
@given(seeds)
def test_law_pinsker_and_hellinger_tv_sandwich(seed):
  p, q = _pair(seed)
  t = np.asarray(tv(p, q))
  assert np.all(t <= np.sqrt(np.asarray(kl(p, q)) / 2) * (1 + 1e-14))
  assert np.all(np.asarray(h2(p, q)) <= t * (1 + 1e-14))
  assert np.all(t <= math.sqrt(2) * np.asarray(hel(p, q)) * (1 + 1e-14))


ORDERS = (0.0, 0.25, 0.5, 0.9, 0.999, 1.0, 1.001, 1.5, 2.0, 5.0, 20.0, 100.0, INF)


@law_settings
@given(seeds)
def test_law_renyi_nondecreasing_in_order(seed):
  p, q = _pair(seed)
  q = 0.9 * q + 0.1 / V  # full support, so every order is finite
  values = np.stack([np.asarray(renyi(p, q, alpha=a)) for a in ORDERS])
  assert np.all(np.diff(values, axis=0) >= -1e-13 * np.abs(values[1:]))


@law_settings
@given(seeds)
def test_law_renyi_identities(seed):
  p, q = _pair(seed)
  np.testing.assert_array_equal(renyi(p, q, alpha=1.0), kl(p, q))
  np.testing.assert_allclose(renyi(p, q, alpha=2.0), np.log1p(chi2(p, q)), rtol=1e-12)
  np.testing.assert_allclose(renyi(p, q, alpha=0.5), 2 * bd(p, q), rtol=1e-12)
  for a in (0.3, 2.5):  # Renyi from Amari: log(1 + a(a-1) D^A)/(a - 1)
    with np.errstate(invalid="ignore"):
      r = np.log1p(a * (a - 1) * np.asarray(amari(p, q, alpha=a))) / (a - 1)
    got = np.asarray(renyi(p, q, alpha=a))
    fin = np.isfinite(got)
    assert np.all(np.isinf(got[~fin]))
    np.testing.assert_allclose(got[fin], r[fin], rtol=1e-10)


@law_settings
@given(seeds)
def test_law_renyi_continuous_through_one(seed):
  p, q = _pair(seed)
  q = 0.9 * q + 0.1 / V
  k = np.asarray(kl(p, q))
  for e in (1e-12, 1e-9, 1e-7):
    for a in (1 - e, 1 + e):
      assert np.all(np.abs(np.asarray(renyi(p, q, alpha=a)) - k) <= 1e3 * e * (1 + k))


@law_settings
@given(seeds)
def test_law_alpha_divergence_limits_and_special_orders(seed):
  p, q = _pair(seed)
  q = 0.9 * q + 0.1 / V
  p = 0.9 * p + 0.1 / V
  np.testing.assert_allclose(amari(p, q, alpha=1 - 1e-9), kl(p, q), rtol=1e-7)
  np.testing.assert_allclose(amari(p, q, alpha=1e-9), kl(q, p), rtol=1e-7)
  np.testing.assert_array_equal(amari(p, q, alpha=1.0), kl(p, q))
  np.testing.assert_array_equal(amari(p, q, alpha=0.0), kl(q, p))
  np.testing.assert_allclose(amari(p, q, alpha=0.5), 4 * np.asarray(h2(p, q)), rtol=1e-12)
  np.testing.assert_allclose(amari(p, q, alpha=2.0), 0.5 * np.asarray(chi2(p, q)), rtol=1e-12)


@law_settings
@given(seeds)
def test_law_bhattacharyya_and_hellinger(seed):
  p, q = _pair(seed)
  np.testing.assert_allclose(bc(p, q), 1 - np.asarray(h2(p, q)), rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(bd(p, q), -np.log(bc(p, q)), rtol=1e-12)
  np.testing.assert_allclose(jeffreys(p, q), kl(p, q) + kl(q, p), rtol=1e-14)
  np.testing.assert_allclose(skew(p, q, alpha=0.0), kl(p, q), rtol=1e-14)
  np.testing.assert_allclose(skew(p, q, alpha=1.0), 0.0, atol=1e-15)


# ---------------------------------------------------------------------------
# Generators: f_divergence reproduces every named function
# ---------------------------------------------------------------------------

GENERATORS = {
  "kl": (generators.kl, kl),
  "reverse_kl": (
    generators.reverse_kl,
    lambda p=None, q=None, **k: kl(q, p, p_logits=k.get("q_logits"), q_logits=k.get("p_logits")),
  ),
  "jeffreys": (generators.jeffreys, jeffreys),
  "jensen_shannon": (generators.jensen_shannon(), jsd),
  "jensen_shannon_0.3": (generators.jensen_shannon(0.3), FUNCTIONS["jsd_w0.3"][0]),
  "skew_kl_0.1": (generators.skew_kl(0.1), FUNCTIONS["skew_0.1"][0]),
  "skew_kl_0": (generators.skew_kl(0.0), FUNCTIONS["skew_0"][0]),
  "total_variation": (generators.total_variation, tv),
  "squared_hellinger": (generators.squared_hellinger, h2),
  "chi_squared": (generators.chi_squared, chi2),
  "neyman_chi_squared": (generators.neyman_chi_squared, lambda p, q: chi2(q, p)),
  **{
    f"alpha_{a}": (generators.alpha(a), _fixed(jaxdiv.alpha_divergence, alpha=a))
    for a in (-1.5, 0.0, 0.3, 0.5, 1.0, 2.0)
  },
}


@pytest.mark.parametrize("name", list(GENERATORS))
def test_f_divergence_with_named_generator_equals_named_function(name):
  g, named = GENERATORS[name]
  p, q = np.concatenate([P, _probs(7)]), np.concatenate([Q, _probs(8)])
  got, want = np.asarray(fdiv(p, q, g)), np.asarray(named(p, q))
  np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "jensen_shannon", "total_variation"])
def test_f_divergence_from_extreme_logits_float32_equals_named_function(name):
  g, named = GENERATORS[name]
  zp = np.array([[1e4, -1e4, 0.0, 1.0], [-1e4, 1e4, 1e4, 0.0]], np.float32)
  zq = np.array([[-1e4, 1e4, 0.0, 0.0], [1e4, -1e4, 1e4, 1.0]], np.float32)
  got = np.asarray(fdiv(p_logits=zp, q_logits=zq, f=g))
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, named(p_logits=zp, q_logits=zq), rtol=1e-5)


def test_custom_generator_and_generator_errors():
  g = generators.Generator(lambda t: jnp.expm1(t) ** 2, 1.0, INF)  # Pearson, no fn_over_u
  np.testing.assert_allclose(fdiv(P, Q, g), chi2(P, Q), rtol=1e-12)
  with pytest.raises(TypeError, match=r"f_divergence: `f` is generators.jensen_shannon.*call"):
    fdiv(P, Q, generators.jensen_shannon)
  with pytest.raises(TypeError, match="f_divergence: `f` must be"):
    fdiv(P, Q)
  with pytest.raises(TypeError, match="f_divergence: `f` must be .* function of log u, got str"):
    fdiv(P, Q, "kl")
  with pytest.raises(TypeError, match="elementwise; a scalar argument gave shape \\(2,\\)"):
    fdiv(P, Q, lambda t: jnp.stack([t, t]))
  with pytest.raises(ValueError, match=r"generators.jensen_shannon: `weight` .*\[0, 1\].*1.5"):
    generators.jensen_shannon(1.5)
  with pytest.raises(ValueError, match=r"generators.skew_kl: `alpha` .*got -0.1"):
    generators.skew_kl(-0.1)
  with pytest.raises(ValueError, match=r"generators.alpha: `alpha` must be a finite"):
    generators.alpha(math.inf)
  with pytest.raises(TypeError, match="concrete"):
    jax.jit(generators.skew_kl)(0.5)


# A plain function of log u: the limits at 0 and infinity derived from it.
PLAIN = {
  "kl": (lambda t: jnp.exp(t) * t, generators.kl),
  "reverse_kl": (lambda t: -t, generators.reverse_kl),  # f(0) = inf: fn(-inf) itself
  "jeffreys": (lambda t: t * jnp.exp(t) - t, generators.jeffreys),  # NaN at -inf; grows
  "total_variation": (lambda t: 0.5 * jnp.abs(jnp.exp(t) - 1), generators.total_variation),
  "chi_squared": (lambda t: (jnp.exp(t) - 1) ** 2, generators.chi_squared),
  "squared_hellinger": (lambda t: 0.5 * (jnp.exp(t / 2) - 1) ** 2, generators.squared_hellinger),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(PLAIN))
def test_f_divergence_of_a_plain_function_equals_its_generator(name, dtype):
  fn, g = PLAIN[name]
  p, q = (np.concatenate([x, _probs(s)]).astype(dtype) for x, s in ((P, 7), (Q, 8)))
  got, want = np.asarray(fdiv(p, q, fn)), np.asarray(fdiv(p, q, g))
  assert got.dtype == dtype
  np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
  assert np.all(np.isfinite(got) | np.isinf(got)), "no NaN: every limit here is derived"
  rtol = 2e-6 if dtype == np.float32 else 1e-12
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("name", list(GENERATORS))
def test_limits_derived_from_every_named_generator_function(name):
  g, _ = GENERATORS[name]
  d = generators.from_function(g.fn)
  for got, want in ((d.at_zero, g.at_zero), (d.at_infinity, g.at_infinity)):
    assert isinstance(got, float)
    if math.isinf(want):
      assert got == want
    else:
      assert got == pytest.approx(want, rel=1e-12, abs=1e-300)
  # given limits are kept, not derived
  e = generators.from_function(g.fn, at_zero=7.0, at_infinity=-3.0, name="x")
  assert (e.at_zero, e.at_infinity, e.name, e.fn_over_u) == (7.0, -3.0, "x", None)


def test_exact_limits_at_zero_and_infinite_limits():
  # at u = 0 the function's own value: exact, no sampling
  assert generators.from_function(lambda t: 0.5 * jnp.abs(jnp.expm1(t))).at_zero == 0.5
  assert generators.from_function(lambda t: -t).at_zero == INF
  # NaN at u = 0 (-inf * 0), constant once e^t underflows: exact
  assert generators.from_function(lambda t: t * t * jnp.exp(t) - jnp.expm1(t)).at_zero == 1.0
  # growing linearly in log u: infinite limits on both sides
  g = generators.from_function(lambda t: t * jnp.exp(t) - t)
  assert (g.at_zero, g.at_infinity) == (INF, INF)
  # bounded f: slope 0 at infinity exactly
  assert generators.from_function(lambda t: -t).at_infinity == 0.0
  assert generators.from_function(lambda t: jnp.tanh(t) ** 2).at_infinity == 0.0


def test_a_limit_that_cannot_be_derived_makes_only_the_terms_needing_it_nan():
  # alpha = 0.9: f(u)/u converges like u^-0.1, too slowly to be read off at e^120.
  a = 0.9
  g = generators.from_function(generators.alpha(a).fn)
  assert g.at_zero == pytest.approx(1 / a, rel=1e-12) and math.isnan(g.at_infinity)
  got = np.asarray(fdiv(P, Q, g.fn))
  needs = np.any((P > 0) & (Q == 0), axis=-1)
  assert needs.any() and (~needs).any()
  np.testing.assert_array_equal(np.isnan(got), needs)
  want = np.asarray(amari(P, Q, alpha=a))
  np.testing.assert_allclose(got[~needs], want[~needs], rtol=1e-10)


def test_plain_function_under_jit_grad_and_with_a_traced_parameter():
  p, q = P[2:], Q[2:]
  finite = ~np.any((p > 0) & (q == 0), axis=-1)
  zp, zq = np.log(p[finite]), np.log(q[finite])
  want = np.asarray(kl(p, q))

  @jax.jit
  def every(a):
    # a function closing over a traced scale: its limits are derived under the trace
    scaled = lambda a: fdiv(p, q, lambda t: a * t * jnp.exp(t))  # noqa: E731
    total = lambda a: jnp.sum(jnp.where(finite, scaled(a), 0.0))  # noqa: E731
    grad_z = jax.grad(lambda z: jnp.sum(fdiv(p_logits=z, q_logits=zq, f=PLAIN["kl"][0])))
    return dict(
      plain=fdiv(p, q, lambda t: jnp.exp(t) * t),
      scaled=scaled(a),
      d_scale=jax.grad(total)(a),
      grad_z=grad_z(zp),
      grad_kl=jax.grad(lambda z: jnp.sum(kl(p_logits=z, q_logits=zq)))(zp),
    )

  out = every(2.0)
  np.testing.assert_allclose(out["plain"], want, rtol=1e-12)
  np.testing.assert_allclose(out["scaled"], 2 * want, rtol=1e-12)
  np.testing.assert_allclose(out["d_scale"], np.sum(want[finite]), rtol=1e-12)
  np.testing.assert_allclose(out["grad_z"], out["grad_kl"], rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------
# Input contracts: logits, where, axis, vmap/jit, traced parameters, dtypes
# ---------------------------------------------------------------------------

ALL_FNS = {name: fn for name, (fn, _) in FUNCTIONS.items()} | {
  f"f_{name}": _fixed(fdiv, f=g) for name, (g, _) in GENERATORS.items()
}


def _contract_inputs():
  """Logits with -inf entries and their softmax; masks with a fully excluded row."""
  rng = np.random.default_rng(11)
  zp, zq = 2 * rng.standard_normal((N, V)), 2 * rng.standard_normal((N, V))
  zp[0, 1] = zq[1, 2] = zp[2, 3] = zq[2, 3] = -INF
  sp, sq = scipy.special.softmax(zp, -1), scipy.special.softmax(zq, -1)
  p, q = _probs(12, (3, V), 0.0), _probs(13, (3, V), 0.0)
  p, q = np.concatenate([p, p[:1]]), np.concatenate([q, q[:1]])
  keep = np.array([True, False, True, True, False])
  where = np.stack([keep, keep, keep, np.zeros(V, bool)])  # last row fully excluded
  ps, qs = (x[:3, keep] / x[:3, keep].sum(-1, keepdims=True) for x in (p, q))
  pz, qz = np.where(where, p, 0.0), np.where(where, q, 0.0)
  sliced = np.concatenate([ps, pz[:3, keep]]), np.concatenate([qs, qz[:3, keep]])
  return dict(
    zp=zp,
    zq=zq,
    sp=sp,
    sq=sq,
    wzp=np.log(p),
    wzq=np.log(q),
    pz=pz,
    qz=qz,
    where=where,
    sliced=sliced,
  )


CONTRACT = _contract_inputs()


@functools.cache
def _contract_values():
  """Every function in every input form, in one compiled call (compiling each separately
  would dominate the run time)."""

  def every(x):
    out = {}
    for name, fn in ALL_FNS.items():
      zp, zq, sp, sq = x["zp"], x["zq"], x["sp"], x["sq"]
      w = x["where"]
      out[name] = dict(
        probs=fn(sp, sq),
        logits=fn(p_logits=zp, q_logits=zq),
        p_logits=fn(sp, q_logits=zq),
        q_logits=fn(p_logits=zp, q=sq),
        where_logits=fn(p_logits=x["wzp"], q_logits=x["wzq"], where=w),
        where_probs=fn(x["pz"], x["qz"], where=w),
        sliced=fn(*x["sliced"]),
      )
    return out

  return jax.tree.map(np.asarray, jax.jit(every)(CONTRACT))


@pytest.mark.parametrize("name", list(ALL_FNS))
def test_logits_equal_softmax_probabilities(name):
  got = _contract_values()[name]
  want = got["probs"]
  for form in ("logits", "p_logits", "q_logits"):
    np.testing.assert_array_equal(np.isinf(got[form]), np.isinf(want), err_msg=form)
    np.testing.assert_allclose(got[form], want, rtol=1e-10, atol=1e-14, err_msg=form)


@pytest.mark.parametrize("name", list(ALL_FNS))
def test_where_equals_slicing_and_a_fully_excluded_row_gives_zero(name):
  got = _contract_values()[name]
  normalised_slice, zero_padded_slice = got["sliced"][:3], got["sliced"][3:]
  # logits with `where` renormalise over the included categories: the normalised slice.
  np.testing.assert_allclose(got["where_logits"][:3], normalised_slice, rtol=1e-10, atol=1e-15)
  # probabilities with `where` are used as given: exactly the slice.
  np.testing.assert_allclose(got["where_probs"][:3], zero_padded_slice, rtol=1e-14, atol=1e-16)
  np.testing.assert_array_equal(got["where_logits"][3], 0.0)
  np.testing.assert_array_equal(got["where_probs"][3], 0.0)


def test_axis_equals_moveaxis():
  p, q = _probs(14, (3, 2, V), 0.2), _probs(15, (3, 2, V), 0.2)

  def both(p, q):
    return [
      (ALL_FNS[n](p, q), ALL_FNS[n](jnp.moveaxis(p, -1, 0), jnp.moveaxis(q, -1, 0), axis=0))
      for n in REPRESENTATIVE
    ]

  for name, (want, got) in zip(REPRESENTATIVE, jax.jit(both)(p, q), strict=True):
    np.testing.assert_array_equal(got, want, err_msg=name)


def test_vmap_and_jit_equal_batched():
  for name in REPRESENTATIVE:
    fn = ALL_FNS[name]
    batched = np.asarray(fn(P, Q))
    np.testing.assert_allclose(jax.vmap(fn)(P, Q), batched, rtol=1e-13, atol=1e-15, err_msg=name)
    np.testing.assert_allclose(jax.jit(fn)(P, Q), batched, rtol=1e-13, atol=1e-15, err_msg=name)


@jax.jit
def _js_at_weight(w):
  """Values, gradients and a hessian of both Jensen--Shannon functions at weight ``w``."""
  zp, zq = np.log(P[:3]), np.log(Q[:3])
  out = {}
  for name, fn in (("divergence", jsd), ("distance", jsdist)):
    for k, (a, b) in enumerate(((P, Q), (Q, P))):
      out[f"{name}/{k}"] = fn(a, b, weight=w)
      total = lambda x, y, fn=fn: jnp.sum(fn(x, y, weight=w))  # noqa: E731
      out[f"{name}/{k}/grad"] = jax.grad(total, (0, 1))(a, b)
    out[f"{name}/logits"] = fn(p_logits=zp, q_logits=zq, weight=w)
    total = lambda z, fn=fn: jnp.sum(fn(p_logits=z, q_logits=zq, weight=w))  # noqa: E731
    out[f"{name}/hessian"] = jax.hessian(total)(zp)
  return out


@pytest.mark.parametrize("w", [0.0, 1.0])
def test_jensen_shannon_weight_endpoints_give_zero_with_finite_gradients(w):
  # P, Q have disjoint supports and q_i = 0 < p_i: at w = 0 the p-term would be 0 * inf.
  out = _js_at_weight(w)
  for name in ("divergence", "distance"):
    for k in range(2):
      np.testing.assert_array_equal(out[f"{name}/{k}"], 0.0)
      # JS_w is constant (0) in each distribution: derivative 0, not NaN
      for g in out[f"{name}/{k}/grad"]:
        np.testing.assert_array_equal(g, 0.0)
    np.testing.assert_array_equal(out[f"{name}/logits"], 0.0)
    assert np.all(np.isfinite(out[f"{name}/hessian"]))
  # a concrete weight (checked, then the same formula) and the generator agree
  np.testing.assert_array_equal(jaxdiv.jensen_shannon_divergence(P, Q, weight=w), 0.0)
  np.testing.assert_array_equal(fdiv(P, Q, generators.jensen_shannon(w)), 0.0)
  # and the value is continuous into the endpoint
  near = abs(w - 1e-9)
  assert np.all(np.asarray(jsd(P, Q, weight=near)) < 1e-7)


def test_traced_parameters_vmap_and_nan_outside_domain():
  p, q = P[2:], Q[2:]
  orders = jnp.array([0.0, 0.5, 1.0, 2.0, jnp.inf])
  got = jax.vmap(lambda a: renyi(p, q, alpha=a))(orders)
  want = np.stack([np.asarray(renyi(p, q, alpha=float(a))) for a in orders])
  np.testing.assert_allclose(got, want, rtol=1e-13)
  per_row = jnp.array([0.1, 0.5, 0.9, 0.3])
  np.testing.assert_allclose(
    jsd(p, q, weight=per_row),
    [float(jsd(p[i], q[i], weight=float(w))) for i, w in enumerate(per_row)],
    rtol=1e-13,
  )
  assert np.all(np.isnan(jax.jit(lambda a: renyi(p, q, alpha=a))(-1.0)))
  assert np.all(np.isnan(jax.jit(lambda w: jsd(p, q, weight=w))(1.5)))
  assert np.all(np.isnan(jax.jit(lambda a: skew(p, q, alpha=a))(-0.5)))
  assert np.all(np.isnan(jax.jit(lambda a: amari(p, q, alpha=a))(jnp.inf)))


# One function per code path (the others share them), to keep compilation time down.
REPRESENTATIVE = [
  "jsd",
  "js_distance",
  "skew_0.1",
  "tv",
  "bd",
  "chi2",
  "renyi_2.0",
  "renyi_inf",
  "alpha_0.3",
  "f_kl",
  "f_jensen_shannon",
]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16_bit_inputs_accumulate_and_return_float32(dtype):
  p, q = jnp.asarray(P[2:], dtype), jnp.asarray(Q[2:], dtype)
  p64, q64 = np.asarray(p, np.float64), np.asarray(q, np.float64)
  for name in REPRESENTATIVE:
    fn = ALL_FNS[name]
    got = fn(p, q)
    assert got.dtype == jnp.float32, name
    np.testing.assert_allclose(got, fn(p64, q64), rtol=2e-5, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------

# check_grads of order 2 on one function per code path (JS mixture, Rényi near alpha = 1
# and its logsumexp form, alpha-divergence, f_divergence, Hellinger's square roots), of
# order 1 on the others; the functions of one order are checked together (one compile).
SECOND_ORDER = ["jsd_w0.3", "renyi_0.5", "renyi_7.0", "alpha_0.3", "f_jensen_shannon", "hellinger"]
FIRST_ORDER = ["js_distance", "jeffreys", "skew_0.1", "bd", "chi2", "renyi_1.0", "alpha_2.0"]


def _stacked(names, from_logits):
  fns = [ALL_FNS[n] for n in names]
  if from_logits:
    return lambda a, b: jnp.stack([fn(p_logits=a, q_logits=b) for fn in fns])
  return lambda a, b: jnp.stack([fn(a, b) for fn in fns])


@pytest.mark.parametrize(
  "names, order",
  [(FIRST_ORDER, 1), (SECOND_ORDER, 1), pytest.param(SECOND_ORDER, 2, marks=pytest.mark.slow)],
  ids=["first", "second-order-names", "second"],
)  # the second-order check (most of this test's compile time) runs in .ci/run (-m slow)
def test_check_grads_at_interior_points(names, order):
  p, q = _probs(21, (2, V), 0.0), _probs(22, (2, V), 0.0)
  zp, zq = np.log(p), np.log(q)
  check_grads(jax.jit(_stacked(names, False)), (p, q), order=1, modes=("fwd", "rev"))
  check_grads(jax.jit(_stacked(names, True)), (zp, zq), order=order, modes=("rev",))


def test_renyi_and_alpha_hessians_equal_the_direct_formula_on_both_paths():
  # Rows near alpha = 1 take the tilted-KL form, rows far from it the logsumexp form;
  # both must have the derivatives of log(sum p^a q^(1-a))/(a - 1) to every order.
  rng = np.random.default_rng(25)
  zp, zq = 2 * rng.standard_normal((6, V)), 2 * rng.standard_normal((6, V))
  orders = (0.0, 0.3, 0.5, 0.999, 1.001, 2.0, 7.0)

  def ours(a, b):
    r = [renyi(p_logits=a, q_logits=b, alpha=o) for o in orders]
    return jnp.stack(r + [amari(p_logits=a, q_logits=b, alpha=o) for o in (-1.0, 0.3, 2.0)])

  def direct(a, b):
    lp, lq = jax.nn.log_softmax(a), jax.nn.log_softmax(b)
    s = [jax.nn.logsumexp(o * lp + (1 - o) * lq, axis=-1) for o in orders]
    r = [x / (o - 1) for x, o in zip(s, orders, strict=True)]
    e = [jnp.sum(jnp.exp(o * lp + (1 - o) * lq), -1) for o in (-1.0, 0.3, 2.0)]
    return jnp.stack(
      r + [(1 - x) / (o * (1 - o)) for x, o in zip(e, (-1.0, 0.3, 2.0), strict=True)]
    )

  def hess(f):
    return jax.jit(jax.hessian(lambda a, b: jnp.sum(f(a, b), -1), (0, 1)))(zp, zq)

  got, want = hess(ours), hess(direct)
  for i in range(2):
    for j in range(2):
      np.testing.assert_allclose(got[i][j], want[i][j], rtol=1e-9, atol=1e-12)


def test_renyi_and_alpha_derivative_in_order_is_smooth_through_one():
  p, q = _probs(23, (V,), 0.0), _probs(24, (V,), 0.0)
  for fn in (renyi, amari):
    check_grads(lambda a, fn=fn: fn(p, q, alpha=a), (1.0,), order=2, modes=("rev",))
  check_grads(lambda a: amari(p, q, alpha=a), (0.0,), order=1, modes=("rev",))


# Values and first and second derivatives at the edges (zeros, -inf and +-1e4 logits,
# masks, fully masked rows, subnormals, every dtype) are checked for every function of
# this family against float64 oracles by the adversarial grid, tests/test_grid.py.


def test_gradient_conventions_at_zero_probability():
  p, q = np.array([0.0, 0.5, 0.5]), np.array([0.5, 0.25, 0.25])
  # chi^2 is smooth at p_i = 0: the true derivative 2 (p - q)/q = -2.
  np.testing.assert_allclose(jax.grad(lambda x: chi2(x, q))(p)[0], -2.0)
  # total variation: sign(p - q)/2.
  np.testing.assert_allclose(jax.grad(lambda x: tv(x, q))(p), [-0.5, 0.5, 0.5])
  # sqrt at 0 and the distances at p = q: 0 (finite conventions).
  assert float(jax.grad(lambda x: h2(x, q))(p)[0]) == 0.0
  np.testing.assert_array_equal(jax.grad(lambda x: jsdist(x, q))(q), 0.0)
  np.testing.assert_array_equal(jax.grad(lambda x: hel(x, q))(q), 0.0)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_parameter_errors_name_function_argument_and_value():
  p, q = P[2], Q[2]
  jsd, jsdist, skew = (
    jaxdiv.jensen_shannon_divergence,
    jaxdiv.jensen_shannon_distance,
    jaxdiv.skew_kl_divergence,
  )
  renyi, amari, bd, tv, chi2, hel = (
    jaxdiv.renyi_divergence,
    jaxdiv.alpha_divergence,
    jaxdiv.bhattacharyya_distance,
    jaxdiv.total_variation_distance,
    jaxdiv.chi_squared_divergence,
    jaxdiv.hellinger_distance,
  )
  cases = [
    (lambda: jsd(p, q, weight=1.5), r"jensen_shannon_divergence: `weight` .*\[0, 1\].*1\.5"),
    (lambda: jsd(p, q, weight=-0.0001), r"jensen_shannon_divergence: `weight`.*-0\.0001"),
    (lambda: jsdist(p, q, weight=-1), r"jensen_shannon_distance: `weight`.*-1"),
    (lambda: skew(p, q, alpha=1.2), r"skew_kl_divergence: `alpha` .*\[0, 1\].*1\.2"),
    (lambda: renyi(p, q, alpha=-0.5), r"renyi_divergence: `alpha` .*-0\.5"),
    (lambda: renyi(p, q, alpha=math.nan), r"renyi_divergence: `alpha` .*nan"),
    (lambda: amari(p, q, alpha=math.inf), r"alpha_divergence: `alpha` must be a finite.*inf"),
    (lambda: jsd(p, q, weight=np.array([0.5, 2.0])), r"jensen_shannon_divergence: `weight`.*2\.0"),
    (lambda: bd(p, q, base=1.0), r"bhattacharyya_distance: `base`"),
  ]
  for call, pattern in cases:
    with pytest.raises(ValueError, match=pattern):
      call()
  with pytest.raises(
    TypeError, match=r"renyi_divergence: the keyword argument `alpha` is required"
  ):
    renyi(p, q)
  with pytest.raises(ValueError, match=r"renyi_divergence: `alpha` with shape \(3,\) must "):
    renyi(P[:2], Q[:2], alpha=np.ones(3))
  with pytest.raises(ValueError, match=r"total_variation_distance: the distribution p is given 2"):
    tv(p, q, p_logits=p)
  with pytest.raises(ValueError, match=r"chi_squared_divergence: cannot broadcast"):
    chi2(np.ones(3) / 3, np.ones(4) / 4)
  with pytest.raises(TypeError, match="hellinger_distance"):
    hel(p, q, base=2)  # unit-free: no base


def test_negative_probability_gives_nan_not_a_finite_number():
  p, q = np.array([-0.1, 0.6, 0.5]), np.array([0.2, 0.3, 0.5])
  for name, fn in ALL_FNS.items():
    assert np.isnan(float(fn(p, q))), name
