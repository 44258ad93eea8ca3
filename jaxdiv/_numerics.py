r"""Numerical helpers shared by every family (never exported).

Everything that keeps jaxdiv exact at the edges lives here:

* :func:`log_softmax` -- a masked log-softmax that is finite to differentiate at
  ``-inf`` logits and returns an all-``-inf`` row (a zero distribution) for a fully
  masked row, instead of NaN.
* :func:`safe_log` -- ``log p`` with ``0`` substituted where ``p == 0`` *before* the
  log (the "double where" of the JAX FAQ), so that ``p * safe_log(p)`` is exactly 0 at
  ``p == 0`` with a zero derivative, and no NaN leaks into reverse or forward mode.
* :func:`xlogy` / :func:`rel_entr` -- the two elementwise terms ``p log q`` and
  ``p (log p - log q)`` that every information measure is built from, written on the
  triple (probability, safe log-probability, exact-zero mask) that
  :mod:`jaxdiv._inputs` produces.
* custom derivative rules for the fused logits kernels (:func:`kl_from_logits`,
  :func:`ce_from_logits`), whose gradients have closed forms
  (``softmax(q) - softmax(p)`` for KL), cheaper than differentiating the composition.

Conventions (Cover & Thomas, 2006, section 2.3): ``0 log 0 = 0``, ``0 log(0/0) = 0``,
``p log(p/0) = +inf`` for ``p > 0``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

Array = jax.Array


def compute_dtype(dtype) -> jnp.dtype:
  """The dtype jaxdiv accumulates in: float32 for 16-bit floats, else the float itself."""
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    return jnp.result_type(float)  # ints and bools: the default float (float64 under x64)
  if dtype.itemsize < 4:
    return jnp.dtype(jnp.float32)
  return dtype


def flush_subnormal_upcast(original: Array, upcast: Array) -> Array:
  """Probabilities upcast from 16 bits with float32-subnormal values set to exactly 0.

  A bfloat16 probability below float32's smallest normal (1.2e-38) becomes a float32
  subnormal. XLA on CPU runs with denormals-are-zero, but a comparison fused with the
  16-to-32-bit conversion can be done on the bits, so ``p == 0`` and ``log p`` could
  disagree about such a value inside one compiled function (seen as a Bhattacharyya
  coefficient of 1.5). Flushing it here makes every later operation see the same exact
  zero. Float16 values are never affected (all are float32-normal); wider inputs are
  returned unchanged.
  """
  if jnp.dtype(original.dtype).itemsize >= 4 or not jnp.issubdtype(original.dtype, jnp.floating):
    return upcast
  tiny = jnp.finfo(upcast.dtype).tiny
  return jnp.where(jnp.abs(upcast) < tiny, jnp.zeros_like(upcast), upcast)


def neg_sum(terms: Array) -> Array:
  """``-sum(terms)`` over the last axis, returning +0.0 (not -0.0) for an all-zero row."""
  return 0.0 - jnp.sum(terms, axis=-1)


def safe_log(x: Array) -> tuple[Array, Array]:
  """``(log x with 0 where x == 0, x == 0)``; derivative 0 (not inf) at ``x == 0``.

  Negative and NaN inputs give NaN, as ``log`` does.
  """
  is_zero = x == 0
  return jnp.log(jnp.where(is_zero, jnp.ones_like(x), x)), is_zero


def log_softmax(logits: Array, where: Array | None = None) -> Array:
  """Log-softmax over the last axis, restricted to ``where``.

  Excluded categories get ``-inf``; a row with no included category is all ``-inf``
  (the zero measure, which every divergence maps to 0). A row of only ``-inf`` logits
  without a mask is not a distribution and gives NaN. ``+inf`` logits give NaN.
  Derivatives are finite at ``-inf`` logits (they are those of the included ones).
  """
  if where is not None:
    logits = jnp.where(where, logits, -jnp.inf)
  m_raw = jnp.max(logits, axis=-1, keepdims=True)
  m = lax.stop_gradient(jnp.where(jnp.isfinite(m_raw), m_raw, jnp.zeros_like(m_raw)))
  shifted = logits - m
  s = jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True)
  if where is not None:
    empty = ~jnp.any(where, axis=-1, keepdims=True)
    s = jnp.where(empty, jnp.ones_like(s), s)
  # A +inf logit makes the whole row NaN (not NaN there and -inf, "probability 0",
  # elsewhere, which a divergence that looks only at part of the support would hide).
  return jnp.where(m_raw == jnp.inf, jnp.full_like(shifted, jnp.nan), shifted - jnp.log(s))


def xlogy(x: Array, x_zero: Array, log_y: Array, y_zero: Array) -> Array:
  """Elementwise ``x log y`` with ``0 log y = 0`` (also at ``y = 0``) and ``x log 0 = -inf``.

  ``log_y`` must already be safe (finite where ``y_zero``). The derivative in ``x`` is
  ``log y``, also at ``x = 0`` (the term is linear in ``x``); where ``x = y = 0`` it is
  returned as 0 (the true one-sided value is ``-inf``). NaN in ``x`` propagates.
  """
  out = x * log_y
  return jnp.where(y_zero & ~x_zero, -jnp.inf + 0 * x, out)


def rel_entr(x: Array, x_zero: Array, log_x: Array, log_y: Array, y_zero: Array) -> Array:
  """Elementwise ``x (log x - log y)``: 0 where ``x = 0``, ``+inf`` where ``x > 0 = y``."""
  out = x * (log_x - log_y)
  return jnp.where(y_zero & ~x_zero, jnp.inf + 0 * x, out)


# ---------------------------------------------------------------------------
# Fused kernels for logit arrays, with closed-form derivative rules.
#
# Speed: the forward pass reads each input once from memory. Rows are processed in
# blocks of about ``_BLOCK_BYTES`` per input (``lax.map`` over row blocks), so the max,
# the exponentials and the sums of one block stay in cache; per row the kernels keep
# only the maxima, the sums and the log-normalisers, with two exps per element pair.
# XLA on CPU does not fuse sibling reductions, which is why the blocking is done by hand.
# The one-exp kernels (soft targets, labels) are not blocked: their two plain reductions
# run faster as XLA's multi-threaded fusions than as a loop of blocks.
#
# Derivatives: custom_jvp (not custom_vjp) so that forward mode, jacfwd and hessian keep
# working. Each rule calls the kernel itself (a custom_jvp too, so higher orders
# recurse) for the per-row statistics and then forms the tangent as an elementwise
# expression in the inputs and those statistics, linear in the tangents; JAX transposes
# it for reverse mode, and XLA fuses the recomputation (softmax(q) - softmax(p)) into the
# gradient, so a value-and-gradient keeps O(rows) residuals and no N x V temporaries.
# Tangents of inputs that are not differentiated arrive as symbolic zeros and cost
# nothing.
# ---------------------------------------------------------------------------

_BLOCK_BYTES = 1 << 20  # per input and block of rows: the block's passes stay in cache


def _map_rows(body, arrays, num_categories: int, blocked: bool = True):
  """``body`` over blocks of rows of ``[..., V]`` arrays (``None`` entries passed through).

  With ``blocked=False`` the body sees all rows at once (for one-exp kernels, whose
  two plain reductions XLA already runs multi-threaded faster than a loop of blocks).

  ``body`` takes arrays with the categories last and any leading shape, and returns a
  tuple of per-row arrays (the category axis reduced). Batch dimensions are flattened
  to rows, processed in cache-sized blocks, and restored.
  """
  batch = next(x.shape[:-1] for x in arrays if x is not None)
  rows = math.prod(batch)
  flat = tuple(None if x is None else x.reshape((rows, x.shape[-1])) for x in arrays)
  block = max(1, _BLOCK_BYTES // (4 * max(num_categories, 1)))
  if not blocked or rows <= block:
    out = body(*flat)
  else:
    out = lax.map(lambda xs: body(*xs), flat, batch_size=block)
  return tuple(o.reshape(batch) for o in out)


def _mask(x: Array, where: Array | None) -> Array:
  return x if where is None else jnp.where(where, x, -jnp.inf)


def _shift(x: Array) -> Array:
  """``x - max(x)`` over the last axis; a row of only ``-inf`` is shifted by 0.

  A ``+inf`` or NaN in the row makes the whole row NaN (``inf - inf``), as it should.
  """
  m = jnp.max(x, axis=-1, keepdims=True)
  return x - jnp.where(m == -jnp.inf, jnp.zeros_like(m), m), m


def _empty_to_one(s: Array, where: Array | None) -> Array:
  """Sum of exps with 1 on fully excluded rows (log-normaliser 0: the zero measure)."""
  if where is None:
    return s
  return jnp.where(jnp.any(where, axis=-1), s, jnp.ones_like(s))


def _lse(m: Array, s: Array) -> Array:
  m = m[..., 0]
  return jnp.where(m == -jnp.inf, jnp.zeros_like(m), m) + jnp.log(s)


def _log_prob(x: Array, lse: Array):
  """``(prob, safe log-prob, zero mask)`` from masked logits and their log-normaliser.

  Elementwise, so that XLA fuses it into whatever consumes it; the log-prob is 0 (not
  ``-inf``) where the probability is 0, which keeps every derivative finite there.
  """
  zero = x == -jnp.inf
  log_p = jnp.where(zero, jnp.zeros_like(x), x - lse[..., None])
  return jnp.where(zero, jnp.zeros_like(x), jnp.exp(log_p)), log_p, zero


def _is_zero(t) -> bool:
  return t is None or isinstance(t, SymbolicZero)


def _dot(coef: Array, t) -> Array | None:
  return None if _is_zero(t) else jnp.sum(coef * t, axis=-1)


def _add(*terms) -> Array:
  terms = [t for t in terms if t is not None]
  return sum(terms[1:], terms[0])


def _kl_rows(a: Array, b: Array, where: Array | None):
  a, b = _mask(a, where), _mask(b, where)
  da, ma = _shift(a)
  db, mb = _shift(b)
  ea, eb = jnp.exp(da), jnp.exp(db)
  # p_i (log p_i - log q_i) up to the per-row constant: 0 where p_i = 0 (also where
  # q_i = 0), +inf where p_i > 0 = q_i (even where exp underflows).
  diff = jnp.where(b == -jnp.inf, jnp.full_like(ea, jnp.inf), ea * (da - db))
  diff = jnp.where(a == -jnp.inf, jnp.zeros_like(ea), diff)
  sa = _empty_to_one(jnp.sum(ea, axis=-1), where)
  sb = _empty_to_one(jnp.sum(eb, axis=-1), where)
  t = jnp.sum(diff, axis=-1)
  # E_p[da - db] - log(sa / sb): the ratio keeps the precision of a small KL.
  kl = t / sa - jnp.log(sa / sb)
  return kl, _lse(ma, sa), _lse(mb, sb)


@jax.custom_jvp
def _kl_stats(p_logits: Array, q_logits: Array, where: Array | None):
  """``(KL, logsumexp(p_logits), logsumexp(q_logits))`` per row (masked by ``where``)."""
  return _map_rows(_kl_rows, (p_logits, q_logits, where), p_logits.shape[-1])


@functools.partial(_kl_stats.defjvp, symbolic_zeros=True)
def _kl_stats_jvp(primals, tangents):
  a, b, where = primals
  da, db, _ = tangents
  kl, lse_a, lse_b = _kl_stats(a, b, where)
  p, log_p, _ = _log_prob(_mask(a, where), lse_a)
  q, log_q, _ = _log_prob(_mask(b, where), lse_b)
  # dKL = <q - p, dq> + <p (log p - log q - KL), dp>;  dlse_p = <p, dp>, dlse_q = <q, dq>.
  zero = jnp.zeros_like(kl)
  dkl = _add(zero, _dot(q - p, db), _dot(p * (log_p - log_q - kl[..., None]), da))
  return (kl, lse_a, lse_b), (dkl, _add(zero, _dot(p, da)), _add(zero, _dot(q, db)))


def kl_from_logits(p_logits: Array, q_logits: Array, where: Array | None) -> Array:
  r"""KL(softmax(p_logits) || softmax(q_logits)) over the last axis (fused, row-blocked).

  .. math:: \mathrm{KL} = \mathbb{E}_p[\tilde a - \tilde b] - \log(s_a / s_b)

  with :math:`\tilde a = a - \max a`, :math:`s_a = \sum e^{\tilde a}` (same for ``b``):
  two exps per element pair. ``-inf`` logits and excluded categories give probability 0
  (``0 log(0/q) = 0``, ``p > 0 = q`` gives ``+inf``); a fully excluded row gives 0;
  ``+inf`` or NaN logits give NaN.

  Derivative rule (custom JVP, closed form):
  ``dKL = <softmax(q) - softmax(p), dq> + <p (log p - log q - KL), dp>``.
  """
  return _kl_stats(p_logits, q_logits, where)[0]


def _ce_rows(a: Array, b: Array, where: Array | None):
  a, b = _mask(a, where), _mask(b, where)
  da, ma = _shift(a)
  db, mb = _shift(b)
  ea, eb = jnp.exp(da), jnp.exp(db)
  # p_i (b_i - max b): 0 where p_i = 0, -inf where p_i > 0 = q_i.
  pb = jnp.where(b == -jnp.inf, jnp.full_like(ea, -jnp.inf), ea * db)
  pb = jnp.where(a == -jnp.inf, jnp.zeros_like(ea), pb)
  sa = _empty_to_one(jnp.sum(ea, axis=-1), where)
  sb = _empty_to_one(jnp.sum(eb, axis=-1), where)
  ce = jnp.log(sb) - jnp.sum(pb, axis=-1) / sa
  return ce, _lse(ma, sa), _lse(mb, sb)


@jax.custom_jvp
def _ce_stats(p_logits: Array, q_logits: Array, where: Array | None):
  """``(H(p, q), logsumexp(p_logits), logsumexp(q_logits))`` per row."""
  return _map_rows(_ce_rows, (p_logits, q_logits, where), p_logits.shape[-1])


@functools.partial(_ce_stats.defjvp, symbolic_zeros=True)
def _ce_stats_jvp(primals, tangents):
  a, b, where = primals
  da, db, _ = tangents
  ce, lse_a, lse_b = _ce_stats(a, b, where)
  p, _, _ = _log_prob(_mask(a, where), lse_a)
  q, log_q, _ = _log_prob(_mask(b, where), lse_b)
  # dH = <q - p, dq> - <p (log q + H), dp>.
  zero = jnp.zeros_like(ce)
  dce = _add(zero, _dot(q - p, db), _dot(-p * (log_q + ce[..., None]), da))
  return (ce, lse_a, lse_b), (dce, _add(zero, _dot(p, da)), _add(zero, _dot(q, db)))


def ce_from_logits(p_logits: Array, q_logits: Array, where: Array | None) -> Array:
  r"""H(softmax(p_logits), softmax(q_logits)) over the last axis (fused, row-blocked).

  .. math:: H = \log s_b - \mathbb{E}_p[\tilde b]

  Conventions as in :func:`kl_from_logits`. Derivative rule (custom JVP, closed form):
  ``dH = <softmax(q) - softmax(p), dq> - <p (log q + H), dp>``.
  """
  return _ce_stats(p_logits, q_logits, where)[0]


def _softmax_rule_parts(rows, target: Array, b: Array, where: Array | None):
  """``(loss, lse, q, safe log q)`` for the derivative rules of the one-exp kernels.

  The rule computes the primal itself (not through the custom_jvp kernel) and forms
  ``q = exp(b - max) / sum`` from the same exponentials as the log-normaliser, so a
  value-and-gradient takes one exp per element, as autodiff of a log-softmax does;
  going through the kernel and then ``exp(b - lse)`` would take two.
  """
  bm = _mask(b, where)
  shifted, m = _shift(bm)
  e = jnp.exp(shifted)
  s = _empty_to_one(jnp.sum(e, axis=-1), where)
  loss, lse, *extra = rows(target, bm, where, (m, e, s))
  zero = bm == -jnp.inf
  log_q = jnp.where(zero, jnp.zeros_like(bm), bm - lse[..., None])
  return (loss, lse, e / s[..., None], log_q, *extra)


def _soft_ce_rows(p: Array, b: Array, where: Array | None, parts=None):
  if parts is None:
    b = _mask(b, where)
    m = jnp.max(b, axis=-1)
    m = jnp.where(m == -jnp.inf, jnp.zeros_like(m), m)
    # Not blocked: each reduction reads b itself (b - m is not shared, so XLA does not
    # materialise it).
    sb = _empty_to_one(jnp.sum(jnp.exp(b - m[..., None]), axis=-1), where)
    lse = m + jnp.log(sb)
  else:
    m, _, sb = parts
    lse = _lse(m, sb)
  # p_i (lse - b_i) in one reduction: 0 where p_i = 0, +inf where p_i > 0 = q_i; NaN p
  # (and the NaN of a +inf logit, through lse) propagates.
  terms = jnp.where(b == -jnp.inf, jnp.where(p > 0, jnp.inf, p), p * (lse[..., None] - b))
  terms = jnp.where(p == 0, jnp.zeros_like(terms), terms)
  if parts is None:
    return jnp.sum(terms, axis=-1), lse
  # The rule also needs sum(p). (A variadic lax.reduce would read p once for both sums,
  # but it has no derivative rule, and the hessian differentiates this rule.)
  return jnp.sum(terms, axis=-1), lse, jnp.sum(p, axis=-1)


@jax.custom_jvp
def _soft_ce_stats(p: Array, q_logits: Array, where: Array | None):
  """``(H(p, q), logsumexp(q_logits))`` per row, ``p`` probabilities used as given."""
  return _map_rows(_soft_ce_rows, (p, q_logits, where), q_logits.shape[-1], blocked=False)


@functools.partial(_soft_ce_stats.defjvp, symbolic_zeros=True)
def _soft_ce_stats_jvp(primals, tangents):
  p, b, where = primals
  dp, db, _ = tangents
  ce, lse_b, q, log_q, total = _softmax_rule_parts(_soft_ce_rows, p, b, where)
  # dH = <q sum(p) - p, dq> - <log q, dp>  (log q taken as 0 where q = 0).
  zero = jnp.zeros_like(ce)
  coef_q = q * total[..., None] - p
  dce = _add(zero, _dot(coef_q, db), _dot(-log_q, dp))
  return (ce, lse_b), (dce, _add(zero, _dot(q, db)))


def soft_ce_from_logits(p: Array, q_logits: Array, where: Array | None) -> Array:
  r"""H(p, softmax(q_logits)) over the last axis for probabilities ``p`` used as given.

  .. math:: H = \textstyle\sum_i p_i \cdot \log s_b - \sum_i p_i \tilde b_i

  One exp per element. Derivative rule (custom JVP, closed form):
  ``dH = <q sum(p) - p, dq> - <log q, dp>`` (``log q`` taken as 0 where ``q = 0``).
  """
  return _soft_ce_stats(p, q_logits, where)[0]


def _soft_kl_rows(p: Array, b: Array, where: Array | None, parts=None):
  if parts is None:
    b = _mask(b, where)
    m = jnp.max(b, axis=-1)
    m = jnp.where(m == -jnp.inf, jnp.zeros_like(m), m)
    sb = _empty_to_one(jnp.sum(jnp.exp(b - m[..., None]), axis=-1), where)
    lse = m + jnp.log(sb)
  else:
    m, _, sb = parts
    lse = _lse(m, sb)
  log_p, p_zero = safe_log(p)
  # p_i (log p_i - log q_i), formed per category (keeps a small KL's precision): 0 where
  # p_i = 0, +inf where p_i > 0 = q_i; NaN p (and negative p, via log) propagates.
  terms = p * (log_p - (b - lse[..., None]))
  terms = jnp.where(b == -jnp.inf, jnp.where(p_zero, p, jnp.inf + 0 * p), terms)
  if parts is None:
    return jnp.sum(terms, axis=-1), lse
  return jnp.sum(terms, axis=-1), lse, jnp.sum(p, axis=-1)


@jax.custom_jvp
def _soft_kl_stats(p: Array, q_logits: Array, where: Array | None):
  """``(KL(p || softmax(q_logits)), logsumexp(q_logits))`` per row, ``p`` as given."""
  return _map_rows(_soft_kl_rows, (p, q_logits, where), q_logits.shape[-1], blocked=False)


@functools.partial(_soft_kl_stats.defjvp, symbolic_zeros=True)
def _soft_kl_stats_jvp(primals, tangents):
  p, b, where = primals
  dp, db, _ = tangents
  kl, lse_b, q, log_q, total = _softmax_rule_parts(_soft_kl_rows, p, b, where)
  log_p, p_zero = safe_log(p)
  # dKL = <q sum(p) - p, dq> + <log p + 1 - log q, dp>: the q-part is *the same* rule
  # as soft_ce_from_logits (so CE and KL trajectories agree bitwise); the log p + 1
  # part is taken as 0 where p = 0 (its true value is -inf), as for the entropy.
  zero = jnp.zeros_like(kl)
  coef_q = q * total[..., None] - p
  coef_p = jnp.where(p_zero, jnp.zeros_like(p), log_p + 1) - log_q
  return (kl, lse_b), (_add(zero, _dot(coef_q, db), _dot(coef_p, dp)), _add(zero, _dot(q, db)))


def soft_kl_from_logits(p: Array, q_logits: Array, where: Array | None) -> Array:
  r"""KL(p || softmax(q_logits)) over the last axis for probabilities ``p`` used as given.

  .. math:: \mathrm{KL} = \textstyle\sum_i p_i (\log p_i - z_i + \operatorname{lse}(z))

  One exp per element. Derivative rule (custom JVP, closed form):
  ``dKL = <q sum(p) - p, dq> + <log p + 1 - log q, dp>`` -- the ``dq`` part is the
  rule of :func:`soft_ce_from_logits`, so minimising either gives identical steps.
  """
  return _soft_kl_stats(p, q_logits, where)[0]


def _labels_rows(labels: Array, b: Array, where: Array | None, parts=None):
  if parts is None:
    b = _mask(b, where)
    db, mb = _shift(b)
    sb = _empty_to_one(jnp.sum(jnp.exp(db), axis=-1), where)
  else:
    mb, _, sb = parts
  picked = jnp.take_along_axis(b, labels, axis=-1)[..., 0]
  lse = _lse(mb, sb)
  nll = jnp.where(picked == -jnp.inf, jnp.full_like(lse, jnp.inf), lse - picked)
  return nll, lse


@jax.custom_jvp
def _labels_stats(labels: Array, q_logits: Array, where: Array | None):
  """``(-log softmax(q_logits)[label], logsumexp(q_logits))`` per row."""
  return _map_rows(
    _labels_rows, (labels[..., None], q_logits, where), q_logits.shape[-1], blocked=False
  )


@functools.partial(_labels_stats.defjvp, symbolic_zeros=True)
def _labels_stats_jvp(primals, tangents):
  labels, b, where = primals
  _, db, _ = tangents
  nll, lse_b, q, _ = _softmax_rule_parts(_labels_rows, labels[..., None], b, where)
  # d(-log q_y) = <q - onehot(y), dq>; the one-hot is formed elementwise (no scatter).
  onehot = lax.broadcasted_iota(labels.dtype, b.shape, b.ndim - 1) == labels[..., None]
  zero = jnp.zeros_like(nll)
  dnll = _add(zero, _dot(q - onehot.astype(q.dtype), db))
  return (nll, lse_b), (dnll, _add(zero, _dot(q, db)))


def labels_ce_from_logits(labels: Array, q_logits: Array, where: Array | None) -> Array:
  r"""``-log softmax(q_logits)[labels]`` over the last axis (fused, one pass of exps).

  .. math:: -\log q_y = \log \textstyle\sum_i e^{b_i} - b_y

  ``labels`` must already be valid indices (the caller applies the ignore and
  out-of-range conventions); a label at a ``-inf`` logit or an excluded category gives
  ``+inf``; ``+inf`` or NaN logits anywhere in the row give NaN. One exp per element.
  Derivative rule (custom JVP, closed form): ``d(-log q_y) = <softmax(q) - onehot(y), dq>``.
  """
  return _labels_stats(labels, q_logits, where)[0]


# ---------------------------------------------------------------------------
# e^x - 1 - x without cancellation (closed forms and Monte-Carlo KL estimators).
# ---------------------------------------------------------------------------


# 1/n! for n = 17, 16, ..., 2: the Taylor series of (e^x - 1 - x) / x^2, in Horner order.
def _inverse_factorials(lo: int, hi: int) -> tuple[float, ...]:
  """``(1/hi!, ..., 1/lo!)``."""
  out, f = [], 1
  for n in range(1, hi + 1):
    f *= n
    if n >= lo:
      out.append(1.0 / f)
  return tuple(reversed(out))


_EXPM1MX_COEFFS = _inverse_factorials(2, 17)


@jax.jit  # one compiled kernel per shape instead of ~40 dispatched ops in eager mode
def expm1mx(x: Array) -> Array:
  r"""``e^x - 1 - x``, accurate to a few ulps for every ``x``, with finite derivatives.

  ``expm1(x) - x`` loses all relative precision as ``x -> 0`` (both terms are
  :math:`\approx x`, their difference :math:`\approx x^2/2`); for :math:`|x| < 1/2`
  the Taylor series up to :math:`x^{17}/17!` is used instead (truncation below
  :math:`10^{-17}` relative). Each branch sees a safe operand (the "double where"), so
  neither a large ``x`` in the series nor an overflowing ``expm1`` leaks a NaN into
  the derivative :math:`e^x - 1`. ``-inf`` gives ``+inf`` (the value's limit), ``+inf``
  gives ``+inf``; the value overflows to ``inf`` only where it exceeds the largest
  float (:math:`x \gtrsim 709.8` in float64, :math:`88.7` in float32). NaN propagates.
  """
  x = jnp.asarray(x)
  small = jnp.abs(x) < 0.5
  xs = jnp.where(small, x, jnp.zeros_like(x))
  poly = jnp.zeros_like(xs)
  for c in _EXPM1MX_COEFFS:
    poly = poly * xs + c
  series = xs * xs * poly
  xl = jnp.where(small, jnp.ones_like(x), x)
  xl_finite = jnp.where(xl == jnp.inf, jnp.zeros_like(xl), xl)
  direct = jnp.where(xl == jnp.inf, jnp.full_like(xl, jnp.inf), jnp.expm1(xl_finite) - xl_finite)
  return jnp.where(small, series, direct)
