r"""The discrete divergence family around KL: Jensen--Shannon, Jeffreys, skew KL, total
variation, Hellinger, Bhattacharyya, :math:`\chi^2`, Rényi, Amari :math:`\alpha` and
general f-divergences.

Every function takes the core API's inputs (probabilities ``p, q`` positionally, or
``p_logits=`` / ``q_logits=``; ``axis``; ``where``) and its edge conventions: exact at
zero probabilities, ``+inf`` where the divergence is infinite, a fully excluded row
gives 0, values and gradients finite wherever the value is finite. ``base`` is offered
exactly by the functions whose value is a logarithm (measured in nats): Jensen--Shannon
(divergence and distance), Jeffreys, skew KL, Bhattacharyya distance and Rényi. The
others (total variation, Hellinger, Bhattacharyya coefficient, :math:`\chi^2`,
:math:`\alpha`, general f) are unit-free and take no ``base``.

Two groups of formulas:

* **log space** (Jensen--Shannon, Jeffreys, skew KL, Rényi, :math:`\alpha`, f): built
  from the log-probabilities, mixtures by ``logaddexp``, so that logits of ``±1e4`` (whose
  probabilities underflow) still give the right finite value;
* **probability space** (total variation, Hellinger, Bhattacharyya, :math:`\chi^2`):
  built from the probabilities, with square roots and divisions guarded by the "double
  where" (a probability that underflows to 0 counts as 0).

Gradient convention at a zero probability (probability inputs): derivatives of
:math:`\log p_i` and :math:`\sqrt{p_i}` at :math:`p_i = 0` are taken as 0 (the core API's
convention for :math:`\log`), so a divergence whose true one-sided derivative there is
infinite returns a finite one; from logits every derivative is the true one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxdiv import _api, _checks, _inputs, _numerics, generators
from jaxdiv.generators import Generator

Array = jax.Array


# ---------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------

_HEAD = dict(temperature="unchecked", soft_cap="unchecked")


class _Pair:
  """Both distributions resolved by :mod:`jaxdiv._inputs` (category axis last).

  ``stored`` (the four ``p_indices`` ... ``q_log_probs`` arguments) and ``tail`` give one
  side as stored categories: both sides are then the cells of ``tail``, and ``finish``
  applies the stored form's edge rules to a result; ``head`` transforms the logits.
  """

  def __init__(self, fn, p, q, p_logits, q_logits, axis, where, base=None, *, stored=(None,) * 4,
               tail="residual", head=None):  # fmt: skip
    _inputs.check_base(fn, base)
    _inputs.check_tail(fn, tail)
    head = head or _inputs.Head(None, None)
    self.finish = lambda x: x
    st = _inputs.stored_side(fn, *stored, p=p, p_logits=p_logits, q=q, q_logits=q_logits)
    if st is not None:
      role = "q" if st.role == "p" else "p"
      ds = _inputs.source(fn, role, q if role == "q" else p, q_logits if role == "q" else p_logits)
      (ds,) = _inputs.transform_logits(fn, head, ds)
      self.p, self.q, self.finish = _inputs.sparse_pair(fn, st, ds, tail, axis, where)
      self.dtype, self.batch = self.p.prob.dtype, self.p.prob.shape[:-1]
      return
    ps = _inputs.source(fn, "p", p, p_logits)
    qs = _inputs.source(fn, "q", q, q_logits)
    ps, qs = _inputs.transform_logits(fn, head, ps, qs)
    self.aligned = _inputs.align(fn, ps, qs, axis=axis, where=where)
    self.p = _inputs.dist(self.aligned.sources[0], self.aligned.where)
    self.q = _inputs.dist(self.aligned.sources[1], self.aligned.where)
    self.dtype = self.aligned.dtype
    self.batch = self.aligned.shape[:-1]


def _param(fn: str, name: str, value, pair: _Pair, ok, domain: str) -> Array:
  """A scalar or per-row parameter (``alpha``, ``weight``), shape ``batch + (1,)``.

  Concrete values (Python numbers, numpy or unTraced jax arrays) are checked here;
  traced values outside the domain make the caller return NaN.
  """
  if value is None:
    raise TypeError(f"{fn}: the keyword argument `{name}` is required.")
  if not isinstance(value, jax.core.Tracer):
    v = np.asarray(value)
    if not np.issubdtype(v.dtype, np.number) or np.iscomplexobj(v):
      raise TypeError(f"{fn}: `{name}` must be a real number, got {value!r}.")
    bad = ~ok(v.astype(np.float64))
    if np.any(bad):
      shown = value if v.ndim == 0 else v[bad].ravel()[0]
      raise ValueError(f"{fn}: `{name}` must be {domain}, got {shown!r}.")
  x = jnp.asarray(value)
  try:
    out = np.broadcast_shapes(x.shape, pair.batch)
  except ValueError:
    out = None
  if out != tuple(pair.batch):
    raise ValueError(
      f"{fn}: `{name}` with shape {x.shape} must broadcast to the result shape "
      f"{tuple(pair.batch)} (the inputs' shape without the category axis)."
    )
  return jnp.broadcast_to(x.astype(pair.dtype), pair.batch)[..., None]


def _minus_one(value, alpha: Array, pair: _Pair) -> Array:
  """``alpha - 1`` (shape ``batch + (1,)``), taken in float64 when ``value`` is concrete.

  An order given as a Python number keeps its distance from 1 when the computation is in
  float32 (``float32(0.999) - 1`` is off by 1.3e-5 relative, which the Rényi divergence,
  a quotient by :math:`\alpha - 1`, would inherit).
  """
  if isinstance(value, jax.core.Tracer):
    return alpha - 1
  eps = (np.asarray(value, np.float64) - 1).astype(pair.dtype)
  return jnp.broadcast_to(jnp.asarray(eps), pair.batch)[..., None]


def _sqrt(x: Array) -> Array:
  """``sqrt(x)`` with derivative 0 (not inf) at ``x == 0``; NaN stays NaN."""
  zero = x == 0
  return jnp.where(zero, jnp.zeros_like(x), jnp.sqrt(jnp.where(zero, jnp.ones_like(x), x)))


def _exprel(x: Array) -> Array:
  """``expm1(x) / x``, 1 at 0, accurate and smooth through 0."""
  small = jnp.abs(x) < 1e-3
  xs = jnp.where(small, x, jnp.zeros_like(x))
  xl = jnp.where(small, jnp.ones_like(x), x)
  series = 1 + xs / 2 * (1 + xs / 3 * (1 + xs / 4 * (1 + xs / 5)))
  return jnp.where(small, series, jnp.expm1(xl) / xl)


def _log1prel(y: Array) -> Array:
  """``log1p(y) / y``, 1 at 0, accurate and smooth through 0."""
  small = jnp.abs(y) < 1e-3
  ys = jnp.where(small, y, jnp.zeros_like(y))
  yl = jnp.where(small, jnp.ones_like(y), y)
  series = 1 - ys * (1 / 2 - ys * (1 / 3 - ys * (1 / 4 - ys / 5)))
  return jnp.where(small, series, jnp.log1p(yl) / yl)


def _log_mixture(w: Array, dp: _inputs.Dist, dq: _inputs.Dist) -> tuple[Array, Array]:
  r"""``(log m, m == 0)`` for :math:`m = w p + (1 - w) q`, mixed in log space.

  Around the larger operand: :math:`\log m = \log p + \log(w + (1-w) e^{\delta})` where
  :math:`\delta = \log q - \log p \le 0` (and symmetrically), the second term by
  ``log1p(expm1)`` for small :math:`|\delta|` (so :math:`m = p` exactly where :math:`p = q`)
  and by ``logaddexp`` otherwise; anchoring at the larger one keeps float32 exact when the
  two differ by ``1e4`` in log space. ``log m`` is returned safe (0
  where ``m == 0``).
  """
  lw, l1w = jnp.log(w), jnp.log1p(-w)
  pz, qz = dp.zero, dq.zero
  both = ~pz & ~qz
  delta = jnp.where(both, dq.log_prob - dp.log_prob, jnp.zeros_like(dp.log_prob))
  # Anchor at the larger of log p, log q: lm = anchor + log(c_a + c_b e^{-|delta|}).
  p_hi = delta <= 0
  anchor = jnp.where(p_hi, dp.log_prob, dq.log_prob)
  gap = jnp.where(p_hi, delta, -delta)  # -|delta|, derivative +-1 on each side
  c_b = jnp.where(p_hi, 1 - w, w)
  log_ca = jnp.where(p_hi, lw, l1w)
  log_cb = jnp.where(p_hi, l1w, lw)
  small = gap >= -0.5
  gs = jnp.where(small, gap, jnp.zeros_like(gap))
  gl = jnp.where(small, -jnp.ones_like(gap), gap)
  # Operands that are -inf only because a weight is 0 are constants (zero tangent).
  far_b = jnp.where(jnp.isneginf(log_cb), jnp.full_like(gl, -jnp.inf), log_cb + gl)
  mix = jnp.where(small, jnp.log1p(c_b * jnp.expm1(gs)), jnp.logaddexp(log_ca, far_b))
  only_q = jnp.where(jnp.isneginf(l1w), jnp.full_like(dq.log_prob, -jnp.inf), l1w + dq.log_prob)
  only_p = jnp.where(jnp.isneginf(lw), jnp.full_like(dp.log_prob, -jnp.inf), lw + dp.log_prob)
  lm = jnp.where(pz, only_q, jnp.where(qz, only_p, anchor + mix))
  # At a weight of 0 or 1 the mixture is one of the two, exactly (JS_w is then 0 exactly).
  lm = jnp.where(w == 0, dq.log_prob, jnp.where(w == 1, dp.log_prob, lm))
  m_zero = (pz | (w == 0)) & (qz | (w == 1))
  return jnp.where(m_zero, jnp.zeros_like(lm), lm), m_zero


def _rel_entr_sum(x: _inputs.Dist, log_y: Array, y_zero: Array) -> Array:
  return jnp.sum(_numerics.rel_entr(x.prob, x.zero, x.log_prob, log_y, y_zero), axis=-1)


def _tilt(dp: _inputs.Dist, dq: _inputs.Dist, eps: Array) -> Array:
  r""":math:`A = \sum_i (p_i e^{\varepsilon d_i} - p_i)/\varepsilon`, :math:`d = \log p - \log q`.

  Summed over :math:`p_i > 0`. Where :math:`\varepsilon d_i \le 1` a term is written as
  :math:`p_i d_i\,\mathrm{exprel}(\varepsilon d_i)`, so :math:`A = \mathrm{KL}(p\|q)` exactly
  at :math:`\varepsilon = 0` and smooth through it; where :math:`\varepsilon d_i > 1` (no
  cancellation, and :math:`e^{\varepsilon d_i}` may overflow while :math:`p_i` underflows,
  e.g. at ``±1e4`` logits) as :math:`(e^{(1+\varepsilon)\log p_i - \varepsilon \log q_i} -
  p_i)/\varepsilon`, the power :math:`p_i^{1+\varepsilon} q_i^{-\varepsilon}` taken in log
  space (it overflows only where the true term does). Each branch sees a safe operand
  (double ``where``). Categories with :math:`q_i = 0 < p_i` contribute
  :math:`-p_i/\varepsilon` for :math:`\varepsilon < 0` and nothing otherwise (the caller
  returns ``+inf`` for :math:`\varepsilon \ge 0`). ``eps`` has shape ``batch + (1,)``.
  """
  finite = ~dp.zero & ~dq.zero
  only_p = ~dp.zero & dq.zero
  zeros = jnp.zeros_like(dp.log_prob)
  d = jnp.where(finite, dp.log_prob - dq.log_prob, zeros)
  x = eps * d
  big = finite & (x > 1)
  near = dp.prob * d * _exprel(jnp.where(big, zeros, x))
  eps_b = jnp.where(big, eps, jnp.ones_like(x))
  log_pow = jnp.where(big, (1 + eps) * dp.log_prob - eps * dq.log_prob, zeros)
  far = (jnp.exp(log_pow) - dp.prob) / eps_b
  terms = jnp.where(finite, jnp.where(big, far, near), zeros)
  neg = eps < 0
  eps_neg = jnp.where(neg, eps, -jnp.ones_like(eps))
  zterms = jnp.where(only_p & neg, dp.prob / -eps_neg, zeros)
  return jnp.sum(terms + zterms, axis=-1)


def _support_mismatch(dp: _inputs.Dist, dq: _inputs.Dist) -> Array:
  """Rows with some :math:`q_i = 0 < p_i`."""
  return jnp.any(~dp.zero & dq.zero, axis=-1)


# ---------------------------------------------------------------------------
# Jensen--Shannon, Jeffreys, skew KL
# ---------------------------------------------------------------------------


def _jensen_shannon(fn, p, q, weight, p_logits, q_logits, axis, where, base, **pair) -> Array:
  r""":math:`\mathrm{JS}_w(p\|q)` in ``base``, for both public Jensen--Shannon functions.

  A term with weight 0 counts as 0, never ``0 * inf``: at :math:`w = 0` the mixture is
  :math:`q`, and :math:`p_i (\log p_i - \log m_i)` is ``+inf`` where
  :math:`q_i = 0 < p_i`; those terms are replaced by 0 before the product (likewise for
  :math:`q` at :math:`w = 1`), so :math:`w \in \{0, 1\}` gives 0 with finite
  derivatives in the inputs (the derivative in ``w`` itself is NaN there: the one-sided
  derivative may be infinite).
  """
  pr = _Pair(fn, p, q, p_logits, q_logits, axis, where, base, **pair)
  in_01 = lambda v: (v >= 0) & (v <= 1)  # noqa: E731
  w = _param(fn, "weight", weight, pr, in_01, "in the closed interval [0, 1]")
  js = pr.finish(jensen_shannon_of(pr.p, pr.q, w))
  w0 = w[..., 0]
  js = jnp.where((w0 >= 0) & (w0 <= 1), js, jnp.full_like(js, jnp.nan))
  return _inputs.apply_base(js, base)


def jensen_shannon_of(dp: _inputs.Dist, dq: _inputs.Dist, w: Array) -> Array:
  r""":math:`\mathrm{JS}_w` of two resolved distributions (``w`` broadcasts against them)."""
  lm, mz = _log_mixture(w, dp, dq)
  terms_p = _numerics.rel_entr(dp.prob, dp.zero, dp.log_prob, lm, mz)
  terms_q = _numerics.rel_entr(dq.prob, dq.zero, dq.log_prob, lm, mz)
  zeros = jnp.zeros_like(terms_p)
  terms_p = jnp.where(mz & ~dp.zero, zeros, terms_p)  # +inf only where w = 0
  terms_q = jnp.where(mz & ~dq.zero, zeros, terms_q)  # +inf only where w = 1
  return jnp.sum(w * terms_p + (1 - w) * terms_q, axis=-1)


def skew_kl_of(dp: _inputs.Dist, dq: _inputs.Dist, a: Array) -> Array:
  r""":math:`\mathrm{KL}(p \| a p + (1 - a) q)` of two resolved distributions."""
  lm, mz = _log_mixture(a, dp, dq)
  return _rel_entr_sum(dp, lm, mz)


def total_variation_of(dp: _inputs.Dist, dq: _inputs.Dist) -> Array:
  r""":math:`\tfrac12 \sum_i |p_i - q_i|` of two resolved distributions."""
  return 0.5 * jnp.sum(jnp.abs(dp.prob - dq.prob), axis=-1)


@_api.public
@_checks.roles(**_checks.PAIR, **_checks.STORED, **_HEAD, weight="unchecked", base="unchecked")
@_api.fill_doc(_inputs.DOC)
def jensen_shannon_divergence(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  *,
  weight: ArrayLike = 0.5,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  p_indices: ArrayLike | None = None,
  p_log_probs: ArrayLike | None = None,
  q_indices: ArrayLike | None = None,
  q_log_probs: ArrayLike | None = None,
  tail: str = "residual",
  temperature: ArrayLike = 1.0,
  soft_cap: ArrayLike | None = None,
  axis: int = -1,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r"""Generalised Jensen--Shannon divergence :math:`\mathrm{JS}_w(p \| q)` over ``axis``.

  .. math::
    \mathrm{JS}_w(p\|q) = w\,\mathrm{KL}(p\|m) + (1-w)\,\mathrm{KL}(q\|m),
    \qquad m = w p + (1-w) q

  Bounds: :math:`0 \le \mathrm{JS}_w \le h(w) = -w\log w - (1-w)\log(1-w)` (:math:`\ln 2`
  at :math:`w = \tfrac12`), so it is finite for any supports; symmetric at
  :math:`w = \tfrac12` (and :math:`\mathrm{JS}_w(p\|q) = \mathrm{JS}_{1-w}(q\|p)`).
  The ``weight`` form is the generalised JSD of on-policy distillation (GKD, with
  :math:`\beta = w`). ``weight`` lies in the closed interval :math:`[0, 1]`, as for
  :func:`jaxdiv.linear_jensen_shannon_divergence`: at :math:`w \in \{0, 1\}` the mixture
  equals one of the two distributions and the value is 0 (a term with weight 0 counts
  as 0, never :math:`0 \cdot \infty`, also for disjoint supports), with finite gradients.
  TRL's ``generalized_jsd_loss`` switches to plain KL at :math:`\beta \in \{0, 1\}`
  instead.

  Other conventions: scipy's ``jensenshannon`` returns the *square root*
  (:func:`jensen_shannon_distance`); TFP's ``tfp.vi.jensen_shannon`` generator gives
  :math:`\mathrm{KL}(p\|m) + \mathrm{KL}(q\|m)`, twice the ½-weighted value; dit reports
  bits (``base=2`` here).

  Edge conventions: categories with :math:`p_i = q_i = 0` (or excluded by ``where``)
  contribute 0; a fully excluded row gives 0; :math:`m` is formed in log space
  (``logaddexp``), equal to :math:`p` exactly where :math:`p = q`, so
  :math:`\mathrm{JS}_w(p\|p) = 0` exactly. Gradients are finite everywhere (from
  probabilities, the infinite one-sided derivative at :math:`p_i = 0` is returned as
  :math:`w \log(1/m_i)`-free: only the finite parts are kept, see the module notes).

  Either distribution may be stored (indices with their log-probabilities), compared
  on the cells of ``tail`` as in :func:`kl_divergence`.

  Args:
    p: first distribution (probabilities), categories along ``axis``.
    q: second distribution.
    weight: :math:`w \in [0, 1]`, a scalar or an array broadcastable to the result shape.
      A concrete value outside the domain raises ``ValueError``; a traced one gives NaN.
      The derivative in ``weight`` is defined on :math:`(0, 1)` (NaN at the endpoints).
    p_logits: ``p`` as logits.
    q_logits: ``q`` as logits.
    {stored_args}
    {head_args}
    axis: the category axis.
    where: boolean mask over categories, broadcastable to the inputs.
    base: logarithm base (``None``: nats; 2: bits, where the bound is 1).

  Returns:
    :math:`\mathrm{JS}_w(p\|q)` with ``axis`` reduced (float32 for 16-bit inputs).

  Example:
    >>> p, q = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
    >>> round(float(jensen_shannon_divergence(p, q)), 6)  # ln 2: disjoint supports
    0.693147
    >>> float(jensen_shannon_divergence(p, q, base=2))
    1.0
    >>> float(jensen_shannon_divergence(p, q, weight=0.0))  # the mixture is q
    0.0

  References:
    Lin, "Divergence measures based on the Shannon entropy", IEEE Trans. Inf. Theory
    (1991); Agarwal et al., "On-policy distillation of language models" (GKD), ICLR 2024.

  See also:
    :func:`jensen_shannon_distance`, :func:`skew_kl_divergence`,
    :func:`jaxdiv.kl_divergence`, :func:`jaxdiv.generators.jensen_shannon`.
  """
  fn = "jensen_shannon_divergence"
  stored, head = (
    (p_indices, p_log_probs, q_indices, q_log_probs),
    _inputs.head_options(fn, temperature, soft_cap),
  )
  return _jensen_shannon(fn, p, q, weight, p_logits, q_logits, axis, where, base,
                         stored=stored, tail=tail, head=head)  # fmt: skip


@_api.public
@_checks.roles(**_checks.PAIR, weight="unchecked", base="unchecked")
def jensen_shannon_distance(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  *,
  weight: ArrayLike = 0.5,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  axis: int = -1,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r"""Jensen--Shannon distance :math:`\sqrt{\mathrm{JS}_w(p\|q)}` (scipy's ``jensenshannon``).

  .. math:: d_{\mathrm{JS}}(p, q) = \sqrt{\mathrm{JS}_w(p\|q) / \ln b}

  At :math:`w = \tfrac12` a metric on distributions (Endres & Schindelin, 2003), bounded
  by :math:`\sqrt{\ln 2}` in nats and 1 in bits. Equals
  ``scipy.spatial.distance.jensenshannon(p, q, base=b)`` for normalised inputs (scipy
  renormalises its inputs; jaxdiv uses them as given).

  Gradient convention: at :math:`p = q` the square root has an infinite derivative along
  the divergence's zero; jaxdiv returns 0 there (a subgradient of the distance, whose
  directional derivatives are finite), via a double ``where``.

  Args:
    p, q, weight, p_logits, q_logits, axis, where, base: as in
      :func:`jensen_shannon_divergence`; ``base`` is applied before the square root.

  Returns:
    The distance with ``axis`` reduced.

  Example:
    >>> p, q = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
    >>> float(jensen_shannon_distance(p, q, base=2))
    1.0

  References:
    Endres & Schindelin, "A new metric for probability distributions", IEEE Trans. Inf.
    Theory (2003).

  See also:
    :func:`jensen_shannon_divergence`.
  """
  fn = "jensen_shannon_distance"
  js = _jensen_shannon(fn, p, q, weight, p_logits, q_logits, axis, where, base)
  # Rounding can leave a tiny negative sum for nearly equal inputs: the distance is 0.
  return _sqrt(jnp.maximum(js, 0.0))


@_api.public
@_checks.roles(**_checks.PAIR, base="unchecked")
def jeffreys_divergence(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  axis: int = -1,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r"""Jeffreys divergence (symmetrised KL) :math:`J(p, q) = \mathrm{KL}(p\|q) + \mathrm{KL}(q\|p)`.

  .. math:: J(p, q) = \sum_i (p_i - q_i)(\log p_i - \log q_i)

  Symmetric, :math:`\ge 0`, ``+inf`` unless :math:`p` and :math:`q` have the same support.
  Some texts (and ``tfp.vi.symmetrized_csiszar_function``) call half of it the
  symmetrised KL. Edge conventions and gradients as in :func:`jaxdiv.kl_divergence`,
  applied to each direction.

  Args:
    p, q: probabilities, categories along ``axis``.
    p_logits, q_logits: the distributions as logits.
    axis: the category axis.
    where: boolean mask over categories.
    base: logarithm base (``None``: nats).

  Returns:
    :math:`J(p, q)` with ``axis`` reduced.

  Example:
    >>> p, q = jnp.array([0.5, 0.5]), jnp.array([0.9, 0.1])
    >>> round(float(jeffreys_divergence(p, q)), 6)  # 0.4 ln 9
    0.87889

  References:
    Jeffreys, "An invariant form for the prior probability in estimation problems",
    Proc. R. Soc. A (1946).

  See also:
    :func:`jaxdiv.kl_divergence`, :func:`jaxdiv.generators.jeffreys`.
  """
  fn = "jeffreys_divergence"
  pr = _Pair(fn, p, q, p_logits, q_logits, axis, where, base)
  j = _rel_entr_sum(pr.p, pr.q.log_prob, pr.q.zero) + _rel_entr_sum(pr.q, pr.p.log_prob, pr.p.zero)
  return _inputs.apply_base(j, base)


@_api.public
@_checks.roles(**_checks.PAIR, **_checks.STORED, **_HEAD, alpha="unchecked", base="unchecked")
@_api.fill_doc(_inputs.DOC)
def skew_kl_divergence(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  *,
  alpha: ArrayLike | None = None,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  p_indices: ArrayLike | None = None,
  p_log_probs: ArrayLike | None = None,
  q_indices: ArrayLike | None = None,
  q_log_probs: ArrayLike | None = None,
  tail: str = "residual",
  temperature: ArrayLike = 1.0,
  soft_cap: ArrayLike | None = None,
  axis: int = -1,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r"""Skew KL divergence :math:`\mathrm{KL}(p \| \alpha p + (1-\alpha) q)` over ``axis``.

  .. math:: \mathrm{SKL}_\alpha(p\|q) = \sum_i p_i \log\frac{p_i}{\alpha p_i + (1-\alpha) q_i}

  The skew divergence of Lee (1999), used as a distillation loss by DistiLLM (which
  takes :math:`\alpha = 0.1`). :math:`\alpha = 0` gives :math:`\mathrm{KL}(p\|q)`,
  :math:`\alpha = 1` gives 0; for :math:`\alpha > 0` it is finite,
  :math:`\le -\log\alpha`. The mixture is formed in log space (``logaddexp``).
  DistiLLM's "skew reverse KL" is ``skew_kl_divergence(q, p, alpha=...)``.

  Edge conventions as in :func:`jaxdiv.kl_divergence`; the derivative in ``alpha`` is
  not defined at :math:`\alpha \in \{0, 1\}` (a log of 0 is involved there).

  Either distribution may be stored (indices with their log-probabilities), compared
  on the cells of ``tail`` as in :func:`kl_divergence`.

  Args:
    p, q: probabilities, categories along ``axis``.
    alpha: :math:`\alpha \in [0, 1]` (required), a scalar or an array broadcastable to the
      result shape; a concrete value outside raises ``ValueError``, a traced one gives NaN.
    p_logits, q_logits: the distributions as logits.
    {stored_args}
    {head_args}
    axis: the category axis.
    where: boolean mask over categories.
    base: logarithm base (``None``: nats).

  Returns:
    The skew KL divergence with ``axis`` reduced.

  Example:
    >>> p, q = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
    >>> round(float(skew_kl_divergence(p, q, alpha=0.1)), 6)  # -ln 0.1
    2.302585

  References:
    Lee, "Measures of distributional similarity", ACL (1999); Ko et al., "DistiLLM:
    towards streamlined distillation for large language models", ICML 2024.

  See also:
    :func:`jensen_shannon_divergence`, :func:`jaxdiv.generators.skew_kl`.
  """
  fn = "skew_kl_divergence"
  pr = _Pair(fn, p, q, p_logits, q_logits, axis, where, base,
             stored=(p_indices, p_log_probs, q_indices, q_log_probs), tail=tail,
             head=_inputs.head_options(fn, temperature, soft_cap))  # fmt: skip
  a = _param(fn, "alpha", alpha, pr, lambda v: (v >= 0) & (v <= 1), "in the closed interval [0, 1]")
  d = pr.finish(skew_kl_of(pr.p, pr.q, a))
  a0 = a[..., 0]
  d = jnp.where((a0 >= 0) & (a0 <= 1), d, jnp.full_like(d, jnp.nan))
  return _inputs.apply_base(d, base)


# ---------------------------------------------------------------------------
# Total variation, Hellinger, Bhattacharyya, chi-squared (probability space)
# ---------------------------------------------------------------------------


@_api.public
@_checks.roles(**_checks.PAIR, **_checks.STORED, **_HEAD)
@_api.fill_doc(_inputs.DOC)
def total_variation_distance(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  p_indices: ArrayLike | None = None,
  p_log_probs: ArrayLike | None = None,
  q_indices: ArrayLike | None = None,
  q_log_probs: ArrayLike | None = None,
  tail: str = "residual",
  temperature: ArrayLike = 1.0,
  soft_cap: ArrayLike | None = None,
  axis: int = -1,
  where: ArrayLike | None = None,
) -> Array:
  r"""Total variation distance :math:`\delta(p, q) = \tfrac12 \sum_i |p_i - q_i|`.

  A metric with values in :math:`[0, 1]` (normalised inputs), the largest difference
  :math:`\sup_A |p(A) - q(A)|`. Some libraries report the :math:`L_1` distance
  :math:`\sum_i |p_i - q_i|`, twice this value. Related bounds: Pinsker
  :math:`\delta \le \sqrt{\mathrm{KL}/2}` and :math:`H^2 \le \delta \le \sqrt2\,H`.
  Unit-free, so no ``base``. The derivative of :math:`|x|` at 0 is taken as 0.

  Either distribution may be stored (indices with their log-probabilities), compared
  on the cells of ``tail`` as in :func:`kl_divergence`.

  Args:
    p, q: probabilities, categories along ``axis``.
    p_logits, q_logits: the distributions as logits.
    {stored_args}
    {head_args}
    axis: the category axis.
    where: boolean mask over categories.

  Returns:
    :math:`\delta(p, q)` with ``axis`` reduced.

  Example:
    >>> round(float(total_variation_distance(jnp.array([0.5, 0.5]), jnp.array([0.9, 0.1]))), 6)
    0.4

  References:
    Tsybakov, *Introduction to Nonparametric Estimation* (2009), section 2.4.

  See also:
    :func:`hellinger_distance`, :func:`jaxdiv.generators.total_variation`.
  """
  fn = "total_variation_distance"
  pr = _Pair(fn, p, q, p_logits, q_logits, axis, where,
             stored=(p_indices, p_log_probs, q_indices, q_log_probs), tail=tail,
             head=_inputs.head_options(fn, temperature, soft_cap))  # fmt: skip
  return pr.finish(total_variation_of(pr.p, pr.q))


def _squared_hellinger(pr: _Pair) -> Array:
  diff = _sqrt(pr.p.prob) - _sqrt(pr.q.prob)
  return 0.5 * jnp.sum(diff * diff, axis=-1)


def _bhattacharyya(pr: _Pair) -> Array:
  return jnp.sum(_sqrt(pr.p.prob) * _sqrt(pr.q.prob), axis=-1)


@_api.public
@_checks.roles(**_checks.PAIR)
def squared_hellinger_distance(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  axis: int = -1,
  where: ArrayLike | None = None,
) -> Array:
  r"""Squared Hellinger distance :math:`H^2(p, q) = \tfrac12\sum_i (\sqrt{p_i} - \sqrt{q_i})^2`.

  Equals :math:`1 - \mathrm{BC}(p, q)` for normalised inputs; values in :math:`[0, 1]`,
  symmetric, and :math:`H^2 \le \delta \le \sqrt2\,H` with the total variation
  :math:`\delta`. Convention: with the ½ (Le Cam; Wikipedia); TFP's
  ``tfp.vi.squared_hellinger`` and some texts omit it (twice this value). Computed as the
  sum of squares (not :math:`1 - \mathrm{BC}`), so it is exactly 0 at :math:`p = q` and
  keeps relative precision for nearby inputs.

  Gradients: the derivative of :math:`\sqrt{p_i}` at :math:`p_i = 0` is taken as 0 (the
  true one-sided derivative of :math:`H^2` there is :math:`-\infty` when
  :math:`q_i > 0`); from logits, derivatives are exact.

  Args:
    p, q: probabilities, categories along ``axis``.
    p_logits, q_logits: the distributions as logits.
    axis: the category axis.
    where: boolean mask over categories.

  Returns:
    :math:`H^2(p, q)` with ``axis`` reduced.

  Example:
    >>> float(squared_hellinger_distance(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])))
    1.0

  References:
    Le Cam & Yang, *Asymptotics in Statistics* (2000); Hellinger (1909).

  See also:
    :func:`hellinger_distance`, :func:`bhattacharyya_coefficient`,
    :func:`jaxdiv.generators.squared_hellinger`.
  """
  fn = "squared_hellinger_distance"
  return _squared_hellinger(_Pair(fn, p, q, p_logits, q_logits, axis, where))


@_api.public
@_checks.roles(**_checks.PAIR)
def hellinger_distance(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  axis: int = -1,
  where: ArrayLike | None = None,
) -> Array:
  r"""Hellinger distance :math:`H(p, q) = \sqrt{\tfrac12\sum_i(\sqrt{p_i} - \sqrt{q_i})^2}`.

  A metric with values in :math:`[0, 1]` (with the ½; without it, as in some texts, the
  range is :math:`[0, \sqrt2]`). At :math:`p = q` the square root's derivative is
  infinite; jaxdiv returns 0 (a subgradient). Other conventions as in
  :func:`squared_hellinger_distance`.

  Args:
    p, q: probabilities, categories along ``axis``.
    p_logits, q_logits: the distributions as logits.
    axis: the category axis.
    where: boolean mask over categories.

  Returns:
    :math:`H(p, q)` with ``axis`` reduced.

  Example:
    >>> float(hellinger_distance(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])))
    1.0

  See also:
    :func:`squared_hellinger_distance`.
  """
  fn = "hellinger_distance"
  return _sqrt(_squared_hellinger(_Pair(fn, p, q, p_logits, q_logits, axis, where)))


@_api.public
@_checks.roles(**_checks.PAIR)
def bhattacharyya_coefficient(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  axis: int = -1,
  where: ArrayLike | None = None,
) -> Array:
  r"""Bhattacharyya coefficient :math:`\mathrm{BC}(p, q) = \sum_i \sqrt{p_i q_i}`.

  A similarity (not a divergence): 1 iff :math:`p = q`, 0 iff the supports are
  disjoint; :math:`\mathrm{BC} = 1 - H^2` for normalised inputs. A fully excluded row gives
  0 (an empty sum), whereas every divergence gives 0 there. Gradient convention for
  :math:`\sqrt{p_i}` at 0 as in :func:`squared_hellinger_distance`.

  Args:
    p, q: probabilities, categories along ``axis``.
    p_logits, q_logits: the distributions as logits.
    axis: the category axis.
    where: boolean mask over categories.

  Returns:
    :math:`\mathrm{BC}(p, q) \in [0, 1]` with ``axis`` reduced.

  Example:
    >>> p, q = jnp.array([0.5, 0.5]), jnp.array([0.9, 0.1])
    >>> round(float(bhattacharyya_coefficient(p, q)), 6)  # sqrt(0.45) + sqrt(0.05)
    0.894427

  References:
    Bhattacharyya, "On a measure of divergence between two statistical populations
    defined by their probability distributions", Bull. Calcutta Math. Soc. (1943).

  See also:
    :func:`bhattacharyya_distance`, :func:`squared_hellinger_distance`.
  """
  fn = "bhattacharyya_coefficient"
  return _bhattacharyya(_Pair(fn, p, q, p_logits, q_logits, axis, where))


@_api.public
@_checks.roles(**_checks.PAIR, base="unchecked")
def bhattacharyya_distance(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  axis: int = -1,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r"""Bhattacharyya distance :math:`D_B(p, q) = -\log \mathrm{BC}(p, q)`.

  Symmetric, :math:`\ge 0`, ``+inf`` for disjoint supports, not a metric (no triangle
  inequality); :math:`D_B = \tfrac12 D_{1/2}` (Rényi of order ½). Computed as
  :math:`-\log(1 - H^2)` (``log1p``) where :math:`H^2 \le \tfrac12`, so it is exactly 0 at
  :math:`p = q` and accurate for nearby inputs, and otherwise as
  :math:`-\operatorname{logsumexp}_i \tfrac12(\log p_i + \log q_i)` (log space: finite
  where BC underflows, e.g. at ``±1e4`` logits); the two agree for normalised inputs. A
  fully excluded row gives 0.

  Args:
    p, q: probabilities, categories along ``axis``.
    p_logits, q_logits: the distributions as logits.
    axis: the category axis.
    where: boolean mask over categories.
    base: logarithm base (``None``: nats).

  Returns:
    :math:`D_B(p, q)` with ``axis`` reduced.

  Example:
    >>> float(bhattacharyya_distance(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])))
    inf

  See also:
    :func:`bhattacharyya_coefficient`, :func:`renyi_divergence`.
  """
  fn = "bhattacharyya_distance"
  pr = _Pair(fn, p, q, p_logits, q_logits, axis, where, base)
  h2 = _squared_hellinger(pr)
  near = h2 <= 0.5
  h2s = jnp.where(near, h2, jnp.zeros_like(h2))
  # -log BC in log space (finite where BC underflows, e.g. at ±1e4 logits; +inf for
  # disjoint supports).
  both = ~pr.p.zero & ~pr.q.zero
  far = -_numerics.logsumexp(0.5 * (pr.p.log_prob + pr.q.log_prob), both & ~near[..., None])
  d = jnp.where(near, -jnp.log1p(-h2s), far)
  d = jnp.where(jnp.isnan(h2), h2, d)  # a negative probability: NaN, not +inf
  return _inputs.apply_base(d, base)


@_api.public
@_checks.roles(**_checks.PAIR)
def chi_squared_divergence(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  axis: int = -1,
  where: ArrayLike | None = None,
) -> Array:
  r"""Pearson :math:`\chi^2` divergence :math:`\chi^2(p\|q) = \sum_i (p_i - q_i)^2 / q_i`.

  Equals :math:`\sum_i p_i^2/q_i - 1` for normalised inputs; :math:`\ge 0`, unbounded,
  ``+inf`` where :math:`q_i = 0 < p_i`; :math:`\log(1 + \chi^2) = D_2` (Rényi of order
  2) :math:`\ge \mathrm{KL}`. Neyman's :math:`\chi^2` is ``chi_squared_divergence(q, p)``.
  Some texts put a ½ in front or symmetrise; this is the plain Pearson form
  (``tfp.vi.pearson``).

  Edge conventions: :math:`p_i = 0 < q_i` contributes :math:`q_i` (with the true
  derivative :math:`-2` in :math:`p_i`); a :math:`q_i` that underflows to 0 (logits far
  below the maximum) counts as 0.

  Args:
    p, q: probabilities, categories along ``axis``.
    p_logits, q_logits: the distributions as logits.
    axis: the category axis.
    where: boolean mask over categories.

  Returns:
    :math:`\chi^2(p\|q)` with ``axis`` reduced.

  Example:
    >>> round(float(chi_squared_divergence(jnp.array([0.5, 0.5]), jnp.array([0.9, 0.1]))), 6)
    1.777778

  References:
    Pearson (1900); Neyman (1949); Tsybakov (2009), section 2.4.

  See also:
    :func:`renyi_divergence`, :func:`jaxdiv.generators.chi_squared`.
  """
  fn = "chi_squared_divergence"
  pr = _Pair(fn, p, q, p_logits, q_logits, axis, where)
  pp, qq = pr.p.prob, pr.q.prob
  qz = qq == 0
  diff = pp - qq
  terms = diff * diff / jnp.where(qz, jnp.ones_like(qq), qq)
  terms = jnp.where(qz & (pp != 0), jnp.inf + 0 * pp, jnp.where(qz, jnp.zeros_like(pp), terms))
  return jnp.sum(terms, axis=-1)


# ---------------------------------------------------------------------------
# Renyi and Amari alpha
# ---------------------------------------------------------------------------


@_api.public
@_checks.roles(**_checks.PAIR, alpha="unchecked", base="unchecked")
def renyi_divergence(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  *,
  alpha: ArrayLike | None = None,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  axis: int = -1,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r"""Rényi divergence of order :math:`\alpha`, :math:`D_\alpha(p \| q)`, over ``axis``.

  .. math::
    D_\alpha(p\|q) = \frac{1}{\alpha - 1}\log\sum_i p_i^\alpha q_i^{1-\alpha}

  with the limits :math:`D_1 = \mathrm{KL}(p\|q)`, :math:`D_0 = -\log q(\{p_i > 0\})` and
  :math:`D_\infty = \log\max_{p_i > 0} p_i/q_i`, all exact (not NaN). Non-decreasing in
  :math:`\alpha`; :math:`D_{1/2} = -2\log\mathrm{BC}`, :math:`D_2 = \log(1+\chi^2)`;
  skew symmetry :math:`(1-\alpha) D_\alpha(p\|q) = \alpha D_{1-\alpha}(q\|p)` on
  :math:`(0, 1)`. Infinite for :math:`\alpha \ge 1` when some :math:`q_i = 0 < p_i`,
  finite for :math:`\alpha < 1` unless the supports are disjoint.

  Computation: with :math:`d_i = \log p_i - \log q_i` and
  :math:`\varepsilon = \alpha - 1`, :math:`D_\alpha = \frac1\varepsilon\log\sum_i p_i
  e^{\varepsilon d_i}`. Near :math:`\alpha = 1` (:math:`|\varepsilon A| \le \tfrac12`,
  :math:`A = \sum_i p_i d_i\,(e^{\varepsilon d_i}-1)/(\varepsilon d_i)`) it is
  :math:`A \cdot \mathrm{log1p}(\varepsilon A)/(\varepsilon A)`, continuous (and smooth)
  through :math:`\alpha = 1`, where it is KL exactly; elsewhere a masked ``logsumexp``
  divided by :math:`\varepsilon`. Assumes normalised ``p`` (the two forms differ by
  :math:`\log\sum_i p_i` otherwise). ``alpha`` is traceable (``vmap`` over orders works).

  Other conventions: some authors (and some libraries) define the order-:math:`\alpha`
  divergence with :math:`\log_2`; use ``base=2``.

  Args:
    p, q: probabilities, categories along ``axis``.
    alpha: the order, :math:`\alpha \in [0, \infty]` (``jnp.inf`` allowed; required), a
      scalar or an array broadcastable to the result shape. A concrete negative or NaN
      value raises ``ValueError``; a traced one gives NaN.
    p_logits, q_logits: the distributions as logits.
    axis: the category axis.
    where: boolean mask over categories.
    base: logarithm base (``None``: nats).

  Returns:
    :math:`D_\alpha(p\|q)` with ``axis`` reduced.

  Example:
    >>> p, q = jnp.array([0.5, 0.5]), jnp.array([0.9, 0.1])
    >>> round(float(renyi_divergence(p, q, alpha=2.0)), 6)  # log(1 + chi^2)
    1.021651
    >>> round(float(renyi_divergence(p, q, alpha=jnp.inf)), 6)  # log 5
    1.609438

  References:
    Rényi, "On measures of entropy and information", Proc. 4th Berkeley Symp. (1961);
    van Erven & Harremoës, "Rényi divergence and Kullback-Leibler divergence", IEEE
    Trans. Inf. Theory (2014).

  See also:
    :func:`alpha_divergence`, :func:`jaxdiv.kl_divergence`,
    :func:`bhattacharyya_distance`, :func:`chi_squared_divergence`.
  """
  fn = "renyi_divergence"
  pr = _Pair(fn, p, q, p_logits, q_logits, axis, where, base)
  order = alpha
  alpha = _param(fn, "alpha", alpha, pr, lambda v: v >= 0, "in [0, inf] (not NaN)")
  dp, dq = pr.p, pr.q
  finite = ~dp.zero & ~dq.zero
  only_p = ~dp.zero & dq.zero
  d = jnp.where(finite, dp.log_prob - dq.log_prob, jnp.zeros_like(dp.log_prob))

  def order_infinity():  # log max_{p > 0} p/q
    support = ~dp.zero
    ratio = jnp.where(only_p, jnp.inf, jnp.where(support, d, -jnp.inf))
    d_max = jnp.max(ratio, axis=-1)
    return jnp.where(jnp.any(support, axis=-1), d_max, jnp.zeros_like(d_max))

  if not isinstance(order, jax.core.Tracer) and np.all(np.isposinf(np.asarray(order))):
    # A concrete alpha = inf: only this branch, so the unused ones (evaluated with
    # eps = 1 on possibly huge d) cannot leak NaN into the gradient.
    return _inputs.apply_base(order_infinity(), base)
  a_inf = jnp.isposinf(alpha)
  eps = jnp.where(a_inf, jnp.ones_like(alpha), _minus_one(order, alpha, pr))

  # Near alpha = 1: A log1p(eps A) / (eps A), with exp(eps d) kept from overflowing.
  top = jnp.max(jnp.where(finite, eps * d, -jnp.inf), axis=-1, keepdims=True)
  no_overflow = top <= 20
  eps_n = jnp.where(no_overflow, eps, jnp.zeros_like(eps))
  a_sum = _tilt(dp, dq, eps_n)
  y = eps_n[..., 0] * a_sum
  near = no_overflow[..., 0] & (jnp.abs(y) <= 0.5)
  near_val = a_sum * _log1prel(jnp.where(near, y, jnp.zeros_like(y)))

  # Elsewhere: logsumexp(alpha log p + (1 - alpha) log q) / eps (eps != 0 there), the
  # exponent as log p + eps d for alpha >= 1/2 (exact coefficient near 1) and in the
  # convex form below (exact at alpha = 0: log q, not log p - (log p - log q)).
  eps_l = jnp.where(near[..., None], jnp.ones_like(eps), eps)
  a_l = jnp.where(near[..., None], jnp.ones_like(alpha), alpha)
  expo = jnp.where(
    eps_l >= -0.5, dp.log_prob + eps_l * d, a_l * dp.log_prob + (1 - a_l) * dq.log_prob
  )
  lse = _numerics.logsumexp(expo, finite)
  far_val = lse / eps_l[..., 0]

  out = jnp.where(near, near_val, far_val)
  alpha0 = alpha[..., 0]
  out = jnp.where(_support_mismatch(dp, dq) & (alpha0 >= 1), jnp.inf, out)

  out = jnp.where(a_inf[..., 0], order_infinity(), out)
  out = jnp.where(alpha0 >= 0, out, jnp.full_like(out, jnp.nan))
  return _inputs.apply_base(out, base)


@_api.public
@_checks.roles(**_checks.PAIR, alpha="unchecked")
def alpha_divergence(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  *,
  alpha: ArrayLike | None = None,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  axis: int = -1,
  where: ArrayLike | None = None,
) -> Array:
  r"""Amari :math:`\alpha`-divergence (Cichocki--Amari parametrisation) over ``axis``.

  .. math::
    D_\alpha(p\|q) = \frac{1 - \sum_i p_i^\alpha q_i^{1-\alpha}}{\alpha(1-\alpha)}

  with the limits :math:`D_1 = \mathrm{KL}(p\|q)` and :math:`D_0 = \mathrm{KL}(q\|p)`,
  exact and continuous through them; :math:`D_{1/2} = 4 H^2` (squared Hellinger) and
  :math:`D_2 = \tfrac12\chi^2(p\|q)`; :math:`D_\alpha(p\|q) = D_{1-\alpha}(q\|p)`.
  Finite on :math:`(0, 1)`, infinite for :math:`\alpha \ge 1` when some
  :math:`q_i = 0 < p_i` and for :math:`\alpha \le 0` when some :math:`p_i = 0 < q_i`.
  Related to Rényi by :math:`D^R_\alpha = \log(1 + \alpha(\alpha-1) D_\alpha)/(\alpha-1)`.

  Other parametrisations: Amari's original :math:`\alpha' = 1 - 2\alpha` (so
  :math:`\alpha' = \pm 1` are the two KLs and :math:`\alpha' = 0` is :math:`4H^2`), and
  ``tfp.vi.amari_alpha``, which is this generator (self-normalised).

  Computation: for :math:`\alpha \ge \tfrac12`, :math:`D_\alpha = A/\alpha` with
  :math:`A = \sum_i p_i d_i (e^{\varepsilon d_i} - 1)/(\varepsilon d_i)`,
  :math:`\varepsilon = \alpha - 1`, :math:`d = \log p - \log q` (KL at
  :math:`\alpha = 1` with no 0/0); for :math:`\alpha < \tfrac12` the mirrored form
  :math:`D_{1-\alpha}(q\|p)`. Assumes normalised inputs (the formula does too). Unit-free
  (no ``base``).

  Args:
    p, q: probabilities, categories along ``axis``.
    alpha: any finite real (required), a scalar or an array broadcastable to the result
      shape; a concrete non-finite value raises ``ValueError``, a traced one gives NaN.
    p_logits, q_logits: the distributions as logits.
    axis: the category axis.
    where: boolean mask over categories.

  Returns:
    :math:`D_\alpha(p\|q)` with ``axis`` reduced.

  Example:
    >>> p, q = jnp.array([0.5, 0.5]), jnp.array([0.9, 0.1])
    >>> round(float(alpha_divergence(p, q, alpha=2.0)), 6)  # chi^2 / 2
    0.888889

  References:
    Amari, *Differential-Geometrical Methods in Statistics* (1985); Cichocki & Amari,
    "Families of alpha- beta- and gamma-divergences", Entropy (2010).

  See also:
    :func:`renyi_divergence`, :func:`jaxdiv.generators.alpha`.
  """
  fn = "alpha_divergence"
  pr = _Pair(fn, p, q, p_logits, q_logits, axis, where)
  alpha = _param(fn, "alpha", alpha, pr, np.isfinite, "a finite real number")
  dp, dq = pr.p, pr.q
  upper = alpha >= 0.5
  a_hi = jnp.where(upper, alpha, jnp.ones_like(alpha))
  a_lo = jnp.where(upper, jnp.zeros_like(alpha), alpha)
  val_hi = _tilt(dp, dq, a_hi - 1) / a_hi[..., 0]
  val_lo = _tilt(dq, dp, -a_lo) / (1 - a_lo[..., 0])
  alpha0 = alpha[..., 0]
  val_hi = jnp.where(_support_mismatch(dp, dq) & (alpha0 >= 1), jnp.inf, val_hi)
  val_lo = jnp.where(_support_mismatch(dq, dp) & (alpha0 <= 0), jnp.inf, val_lo)
  out = jnp.where(upper[..., 0], val_hi, val_lo)
  return jnp.where(jnp.isfinite(alpha0), out, jnp.full_like(out, jnp.nan))


# ---------------------------------------------------------------------------
# General f-divergence
# ---------------------------------------------------------------------------


def _times_limit(x: Array, c) -> Array:
  """``x * c`` for ``x >= 0`` and a limit ``c`` that may be ``inf`` or NaN (then that
  where ``x > 0`` and 0 where ``x == 0``, with no ``0 * inf`` in value or derivative)."""
  c = jnp.asarray(c, x.dtype)
  c_odd = ~jnp.isfinite(c)
  prod = x * jnp.where(c_odd, jnp.zeros_like(c), c)
  return jnp.where(c_odd & (x > 0), c + 0 * prod, prod)


@_api.public
@_checks.roles(**_checks.PAIR, f="unchecked")
def f_divergence(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  f: Generator | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  axis: int = -1,
  where: ArrayLike | None = None,
) -> Array:
  r"""Csiszár f-divergence :math:`D_f(p\|q) = \sum_i q_i f(p_i/q_i)` for a generator ``f``.

  ``f`` is :math:`f` as a function of :math:`t = \log u` (so no ratio is formed:
  :math:`t = \log p_i - \log q_i` from the log-probabilities): either a
  :class:`jaxdiv.generators.Generator`, which carries its limits :math:`f(0)` and
  :math:`f'(\infty) = \lim f(u)/u`, or a plain function such as
  ``lambda t: t * jnp.exp(t)`` (:math:`u \log u`, KL), whose limits are derived from it
  by :func:`jaxdiv.generators.from_function` (exactly where the function can be
  evaluated at :math:`u = 0`, or reaches its limit once :math:`e^t` underflows; see
  there). A limit that cannot be derived is NaN, and so are the terms that need it
  (:math:`p_i = 0 < q_i` for :math:`f(0)`, :math:`q_i = 0 < p_i` for :math:`f'(\infty)`);
  every other term is :math:`q_i f(p_i/q_i)` as the function computes it. The named
  generators in :mod:`jaxdiv.generators` reproduce the named functions
  (``f_divergence(p, q, generators.kl) == kl_divergence(p, q)``, and so on).

  Edge conventions (Csiszár's): :math:`p_i = q_i = 0` (or excluded) contributes 0;
  :math:`p_i = 0 < q_i` contributes :math:`q_i f(0)`; :math:`q_i = 0 < p_i` contributes
  :math:`p_i f'(\infty)` (``+inf`` for KL). Where :math:`p_i > q_i` and the generator
  provides ``fn_over_u``, the term is computed as :math:`p_i \cdot f(u)/u`, so that a
  huge ratio next to an underflowing :math:`q_i` (``±1e4`` logits) stays exact; a plain
  function has no such form, and its term is ``inf`` or NaN (never a finite wrong
  number) where the function overflows (:math:`u \log u` beyond :math:`u \approx e^{84}`
  in float32). The
  derivative of a term with :math:`p_i = 0` in :math:`p_i` is returned as 0
  (probability inputs); the named functions may return the true finite one instead.

  Other libraries: TFP's ``tfp.vi`` generators take ``logu`` as here but are used in
  Monte-Carlo estimates and give NaN at a zero probability.

  Args:
    p, q: probabilities, categories along ``axis``.
    f: the generator (required): a ``Generator`` or a function of :math:`\log u`.
    p_logits, q_logits: the distributions as logits.
    axis: the category axis.
    where: boolean mask over categories.

  Returns:
    :math:`D_f(p\|q)` with ``axis`` reduced (unit-free; no ``base``).

  Example:
    >>> from jaxdiv import generators
    >>> p, q = jnp.array([0.5, 0.5]), jnp.array([0.9, 0.1])
    >>> round(float(f_divergence(p, q, generators.total_variation)), 6)
    0.4
    >>> kl = f_divergence(p, q, lambda t: t * jnp.exp(t))  # u log u, limits derived
    >>> round(float(kl), 6), round(float(jaxdiv.kl_divergence(p, q)), 6)
    (0.510826, 0.510826)

  References:
    Csiszár (1967); Ali & Silvey (1966); Liese & Vajda, "On divergences and
    informations in statistics and information theory", IEEE Trans. Inf. Theory (2006).

  See also:
    :mod:`jaxdiv.generators`, :func:`jaxdiv.kl_divergence`.
  """
  fn = "f_divergence"
  if any(f is c for c in generators.CONSTRUCTORS):
    raise TypeError(
      f"{fn}: `f` is generators.{f.__name__}, which builds a generator: call it first "
      f"(e.g. `generators.jensen_shannon(0.5)`)."
    )
  if not (isinstance(f, Generator) or callable(f)):
    raise TypeError(
      f"{fn}: `f` must be a jaxdiv.generators.Generator or a function of log u, "
      f"got {type(f).__name__}."
    )
  pr = _Pair(fn, p, q, p_logits, q_logits, axis, where)
  if not isinstance(f, Generator):
    f = generators._from_callable(f, pr.dtype)
  dp, dq = pr.p, pr.q
  both = ~dp.zero & ~dq.zero
  t = jnp.where(both, dp.log_prob - dq.log_prob, jnp.zeros_like(dp.log_prob))
  f_of = lambda g, x: jnp.asarray(g(x), x.dtype)  # noqa: E731  a user's fn may promote
  if f.fn_over_u is None:
    main = dq.prob * f_of(f.fn, t)
  else:
    low = t <= 0
    t_lo = jnp.where(low, t, jnp.zeros_like(t))
    t_hi = jnp.where(low, jnp.zeros_like(t), t)
    main = jnp.where(low, dq.prob * f_of(f.fn, t_lo), dp.prob * f_of(f.fn_over_u, t_hi))
  at_zero = _times_limit(jnp.where(dp.zero & ~dq.zero, dq.prob, jnp.zeros_like(t)), f.at_zero)
  at_inf = _times_limit(jnp.where(dq.zero & ~dp.zero, dp.prob, jnp.zeros_like(t)), f.at_infinity)
  terms = jnp.where(both, main, at_zero + at_inf)
  return jnp.sum(terms, axis=-1)
