r"""Logits kernels: per-row statistics and their closed-form derivative rules.

Each kernel turns logit arrays (categories last) into a per-row loss together with the
statistics its derivative rule needs: for every logits array :math:`z`, the row maximum
:math:`m` and :math:`\ell = \log \sum_i e^{z_i - m}`. The loss is formed from the
*shifted* logits :math:`z - m` only -- never as :math:`\operatorname{lse}(z) - z_y` after
adding the shift back -- so adding a constant to the logits changes nothing, also where
the logits are large (:math:`10^6` in float32) and :math:`m + \ell` would round.

The formulas are portable: one expression per kernel, no data-dependent control flow,
correct on every backend and under ``jit``, ``vmap``, ``grad``, ``jacfwd`` and
``hessian``. How the statistics are computed is a strategy (:mod:`jaxdiv._cpu` on CPU,
chosen with :func:`jax.lax.platform_dependent`); the derivative rules below depend only
on the statistics, not on how they were computed.

Derivatives are custom JVPs (so forward mode and higher orders work): each rule calls
its kernel for the statistics, then forms the tangent as an elementwise expression in
the inputs and those statistics, linear in the tangents; JAX transposes it for reverse
mode and XLA fuses the recomputed softmax into the gradient, so value-and-gradient keeps
only per-row residuals. The row maximum is a shift, not a statistic: its tangent is 0
and :math:`\ell` carries the whole derivative of the log-normaliser,
:math:`d\ell = \langle \mathrm{softmax}(z), dz \rangle`.

Conventions (Cover & Thomas, 2006): ``-inf`` logits and categories excluded by ``where``
have probability 0 (``0 log 0 = 0``; ``p_i > 0 = q_i`` gives ``+inf``); a fully excluded
row gives 0; a ``+inf`` or NaN logit gives NaN for its row.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxdiv import _cpu, _numerics

Array = jax.Array


# ---------------------------------------------------------------------------
# Per-row statistics (portable)
# ---------------------------------------------------------------------------


_dtype, _up = _numerics.compute_dtype_of, _numerics.upcast


def _log_sum(d: Array, where: Array | None) -> Array:
  """``log sum e^d`` per row of shifted logits; 0 on a fully excluded row."""
  s = jnp.sum(jnp.exp(d), axis=-1)
  if where is not None:
    s = jnp.where(jnp.any(where, axis=-1), s, jnp.ones_like(s))
  return jnp.log(s)


def _row_stats(z: Array, where: Array | None, dt, fresh=None):
  """``(d, m, l)``: shifted logits ``z - m`` in ``dt`` (``-inf`` where excluded), the row
  maximum and log-sum. ``fresh(xs)``, where given, returns new copies of ``xs`` that the
  compiler must not share: the maximum, the sum and ``d`` then each read their own."""
  z_max, z_sum, z_out = (z,) * 3 if fresh is None else fresh((z,) * 3)
  _, m = _numerics.shift(_up(z_max, dt), where)
  d_sum = _numerics.mask(_up(z_sum, dt), where) - m[..., None]
  return _numerics.mask(_up(z_out, dt), where) - m[..., None], m, _log_sum(d_sum, where)


def _nan_as(t: Array, fill: float, *valid: Array) -> Array:
  """``t`` with NaN read as ``fill`` on rows whose ``valid`` statistics are not NaN.

  ``sum_i e^(a_i - m) c_i`` with ``c_i = +-inf`` (``p_i > 0 = q_i``) is NaN only where the
  exponential underflowed (``0 * inf``); a NaN or ``+inf`` logit makes a log-sum NaN.
  """
  ok = functools.reduce(jnp.logical_and, [~jnp.isnan(v) for v in valid])
  return jnp.where(jnp.isnan(t) & ok, jnp.full_like(t, fill), t)


def _pair_terms(a: Array, b: Array, where: Array | None, term, fill: float, fresh):
  """Two-logit rows: ``(t / s_a, m_a, l_a, m_b, l_b, db)`` with ``t = sum e^da term``.

  ``term(da, db)`` is taken as 0 where ``p_i = 0``; ``fill`` is the infinity a category
  with ``p_i > 0 = q_i`` gives even where ``e^da`` underflows.
  """
  dt = _dtype(a, b)
  da, ma, la = _row_stats(a, where, dt, fresh)
  db, mb, lb = _row_stats(b, where, dt, fresh)
  ea = jnp.exp(da)
  t = jnp.sum(jnp.where(da == -jnp.inf, jnp.zeros_like(ea), ea * term(da, db)), axis=-1)
  t = _nan_as(t, fill, la, lb)
  return t * jnp.exp(-la), ma, la, mb, lb


def kl_rows(a: Array, b: Array, where: Array | None, fresh=None):
  """``(KL, m_a, l_a, m_b, l_b)`` of ``softmax(a) || softmax(b)`` per row."""
  # KL = E_p[da - db] - l_a + l_b: shifted logits only.
  e, ma, la, mb, lb = _pair_terms(a, b, where, lambda da, db: da - db, jnp.inf, fresh)
  kl = e - (la - lb)
  return _zero_if_empty(kl, where), ma, la, mb, lb


def ce_rows(a: Array, b: Array, where: Array | None, fresh=None):
  """``(H(softmax(a), softmax(b)), m_a, l_a, m_b, l_b)`` per row."""
  e, ma, la, mb, lb = _pair_terms(a, b, where, lambda da, db: db, -jnp.inf, fresh)
  return _zero_if_empty(lb - e, where), ma, la, mb, lb


def _zero_if_empty(x: Array, where: Array | None) -> Array:
  if where is None:
    return x
  return jnp.where(jnp.any(where, axis=-1), x, jnp.zeros_like(x))


def _soft_inputs(p: Array, b: Array, where: Array | None, fresh):
  """``(p, db, m, l, l')``: probabilities (0 where excluded), shifted logits, statistics,
  and ``l`` raised to the lowest finite number (so ``l' - db_i = +inf`` at a ``-inf``
  logit, also on a row of only ``-inf``)."""
  dt = _dtype(p, b)
  p = _numerics.flush_subnormal_upcast(p, _up(p, dt))
  if where is not None:
    p = jnp.where(where, p, jnp.zeros_like(p))
  db, m, lb = _row_stats(b, where, dt, fresh)
  return p, db, m, lb, jnp.maximum(lb, jnp.finfo(lb.dtype).min)[..., None]


def _soft_sum(p: Array, term: Array) -> Array:
  """``sum_i term_i`` over ``p_i > 0``; 0 at ``p_i = 0``, NaN at a negative or NaN ``p_i``
  (``sqrt(p)``: one select per category)."""
  return jnp.sum(jnp.where(p > 0, term, jnp.sqrt(p)), axis=-1)


def soft_ce_rows(p: Array, b: Array, where: Array | None, fresh=None):
  """``(H(p, softmax(b)), m_b, l_b)`` per row, ``p`` probabilities used as given."""
  p, db, m, lb, lb_ = _soft_inputs(p, b, where, fresh)
  return _soft_sum(p, p * (lb_ - db)), m, lb


def soft_kl_rows(p: Array, b: Array, where: Array | None, fresh=None):
  """``(KL(p || softmax(b)), m_b, l_b)`` per row, formed per category (keeps a small KL's
  precision)."""
  p, db, m, lb, lb_ = _soft_inputs(p, b, where, fresh)
  return _soft_sum(p, p * (jnp.log(p) - (db - lb_))), m, lb


def _pick(x: Array, index: Array) -> Array:
  return jnp.take_along_axis(x, index[..., None], axis=-1)[..., 0]


def _included_mean(x: Array, where: Array | None) -> Array:
  """Mean over the included categories (0 on a fully excluded row, with a zero
  derivative: the count is at least 1)."""
  if where is None:
    return jnp.mean(x, axis=-1)
  count = jnp.maximum(jnp.sum(where, axis=-1), 1).astype(x.dtype)
  return jnp.sum(jnp.where(where, x, jnp.zeros_like(x)), axis=-1) / count


def labels_rows(labels: Array, b: Array, where: Array | None, smoothing: float = 0.0, fresh=None):
  """``(-log q_y, m_b, l_b)`` per row; with ``smoothing`` ``eps``, the cross-entropy
  against ``(1 - eps) onehot(y) + eps uniform(included)``."""
  dt = _dtype(b)
  db, m, lb = _row_stats(b, where, dt, fresh)
  lb_ = jnp.maximum(lb, jnp.finfo(lb.dtype).min)
  # Picked from the input, not from db: a gather from a computed array materialises it.
  picked = _up(_pick(_numerics.mask(b, where) if where is not None else b, labels), dt)
  nll = lb_ - (picked - m)  # +inf at a -inf or excluded label
  if smoothing:
    mean_d = _included_mean(db, where)
    nll = (1 - smoothing) * nll + smoothing * (lb_ - mean_d)
  return nll, m, lb


# ---------------------------------------------------------------------------
# Strategy switch: the portable rows everywhere, a CPU strategy where it pays
# ---------------------------------------------------------------------------


def _per_platform(name: str, *static):
  """The statistics ``name`` (a ``*_rows`` function, its static arguments last): the
  :mod:`jaxdiv._cpu` strategy on CPU, the portable formula elsewhere. The choice is made
  at trace time (``platform_dependent`` lowers to the branch of the platform compiled
  for)."""
  portable = globals()[name]

  def rows(*args):
    cpu = _cpu.strategy(portable, *args, *static)
    return lax.platform_dependent(
      *args, cpu=lambda *a: cpu(*a, *static), default=lambda *a: portable(*a, *static)
    )

  return rows


# ---------------------------------------------------------------------------
# Derivative rules
# ---------------------------------------------------------------------------


def _is_zero(t) -> bool:
  return t is None or isinstance(t, SymbolicZero)


def _dot(coef: Array, t) -> Array | None:
  return None if _is_zero(t) else jnp.sum(coef * t, axis=-1)


def _add(zero: Array, *terms) -> Array:
  terms = [t for t in terms if t is not None]
  return sum(terms, zero)


def _log_prob(z: Array, m: Array, ls: Array, where: Array | None):
  """``(prob, log-prob with 0 where prob = 0, prob = 0)`` from statistics (elementwise,
  so XLA fuses it into the consumer)."""
  return _numerics.prob_triple(_numerics.mask(z, where) - m[..., None] - ls[..., None])


def _softmax(z: Array, m: Array, ls: Array, where: Array | None) -> Array:
  """The softmax from statistics, as plain arithmetic (a row of only ``-inf`` gives 0):
  a select in the gradient's elementwise pass would make XLA's CPU loop scalar."""
  ls = jnp.maximum(ls, jnp.finfo(ls.dtype).min)
  return jnp.exp(_numerics.mask(z, where) - m[..., None] - ls[..., None])


def _zeros(x: Array) -> Array:
  return jnp.zeros_like(x)


def _pair_jvp(stats, coef_a, primals, tangents):
  """The rule of a two-logit kernel: ``dloss = <q - p, db> + <coef_a, da>`` (``coef_a``
  taken as 0 where ``p = 0``), ``dl_a = <p, da>`` and ``dl_b = <q, db>``."""
  a, b, where = primals
  da, db, _ = tangents
  out = stats(a, b, where)
  loss, ma, la, mb, lb = out
  dt = loss.dtype
  p, log_p, p_zero = _log_prob(_up(a, dt), ma, la, where)
  q, log_q, _ = _log_prob(_up(b, dt), mb, lb, where)
  zero = _zeros(loss)
  dloss = _add(zero, _dot(q - p, db))
  if not _is_zero(da):
    coef = jnp.where(p_zero, _zeros(p), coef_a(p, log_p, log_q, loss[..., None]))
    dloss = _add(dloss, _dot(coef, da))
  return out, (dloss, zero, _add(zero, _dot(p, da)), zero, _add(zero, _dot(q, db)))


@jax.custom_jvp
def _kl_stats(a: Array, b: Array, where: Array | None):
  return _per_platform("kl_rows")(a, b, where)


# dKL = <q - p, db> + <p (log p - log q - KL), da>.
_kl_stats.defjvp(
  functools.partial(_pair_jvp, _kl_stats, lambda p, lp, lq, kl: p * (lp - lq - kl)),
  symbolic_zeros=True,
)


@jax.custom_jvp
def _ce_stats(a: Array, b: Array, where: Array | None):
  return _per_platform("ce_rows")(a, b, where)


# dH = <q - p, db> - <p (log q + H), da>.
_ce_stats.defjvp(
  functools.partial(_pair_jvp, _ce_stats, lambda p, lp, lq, ce: -p * (lq + ce)),
  symbolic_zeros=True,
)


def _soft_jvp(stats, coef_p, primals, tangents):
  """The rule of a soft-target kernel: ``dloss = <q sum(p) - p, db> + <coef_p, dp>``,
  ``dl = <q, db>``. The ``db`` part is shared by the soft CE and KL, so that minimising
  either takes bitwise-identical steps; ``coef_p(p, log_q)`` is the loss's own."""
  p, b, where = primals
  dp, db, _ = tangents
  out = stats(p, b, where)
  loss, m, lb = out
  dt = lb.dtype
  q = _softmax(_up(b, dt), m, lb, where)
  p_up = _numerics.flush_subnormal_upcast(p, _up(p, dt))
  if where is not None:
    p_up = _numerics.nan_negative(p_up, where)
  # sqrt(p) - sqrt(p), held constant: a negative entry makes sum(p), so the row's
  # gradient, NaN, with no select on the N x V array and no inf - inf derivative at 0.
  guard = lax.stop_gradient(jnp.sqrt(p_up) - jnp.sqrt(p_up))
  total = jnp.sum(p_up + guard, axis=-1, keepdims=True)
  zero = _zeros(loss)
  dloss = _add(zero, _dot(q * total - p_up, db))
  if not _is_zero(dp):
    log_q = _log_prob(_up(b, dt), m, lb, where)[1]  # 0 where q = 0
    dloss = _add(dloss, _dot(coef_p(p_up, log_q), dp))
  return out, (dloss, zero, _add(zero, _dot(q, db)))


def _soft_kl_coef_p(p: Array, log_q: Array) -> Array:
  """``log p + 1 - log q``, with ``log p + 1`` taken as 0 where ``p = 0`` (its true value
  is ``-inf``), as for the entropy."""
  log_p, p_zero = _numerics.safe_log(p)
  return jnp.where(p_zero, _zeros(log_p), log_p + 1) - log_q


@jax.custom_jvp
def _soft_ce_stats(p: Array, b: Array, where: Array | None):
  return _per_platform("soft_ce_rows")(p, b, where)


# dH = <q sum(p) - p, db> - <log q, dp>.
_soft_ce_stats.defjvp(
  functools.partial(_soft_jvp, _soft_ce_stats, lambda p, log_q: -log_q), symbolic_zeros=True
)


@jax.custom_jvp
def _soft_kl_stats(p: Array, b: Array, where: Array | None):
  return _per_platform("soft_kl_rows")(p, b, where)


# dKL = <q sum(p) - p, db> + <log p + 1 - log q, dp>.
_soft_kl_stats.defjvp(
  functools.partial(_soft_jvp, _soft_kl_stats, _soft_kl_coef_p), symbolic_zeros=True
)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _labels_stats(smoothing: float, labels: Array, b: Array, where: Array | None):
  return _per_platform("labels_rows", smoothing)(labels, b, where)


@functools.partial(_labels_stats.defjvp, symbolic_zeros=True)
def _labels_stats_jvp(smoothing, primals, tangents):
  labels, b, where = primals
  _, db, _ = tangents
  out = _labels_stats(smoothing, labels, b, where)
  nll, m, lb = out
  zero = _zeros(nll)
  if _is_zero(db):
    return out, (zero, zero, zero)
  q = _softmax(_up(b, lb.dtype), m, lb, where)
  dq_q = _dot(q, db)
  # d(-log q_y) = <q, db> - db_y: picking db_y (not a dense one-hot) transposes to a
  # scatter-add done in place. Smoothing adds eps (<q, db> - mean_included(db)) - eps ...
  dnll = dq_q - (1 - smoothing) * _pick(db, labels)
  if smoothing:
    db_up = _up(db, lb.dtype)
    dnll = dnll - smoothing * _included_mean(db_up, where)
  return out, (dnll.astype(nll.dtype), zero, dq_q.astype(nll.dtype))


# ---------------------------------------------------------------------------
# The kernels the families call
# ---------------------------------------------------------------------------


def kl_from_logits(p_logits: Array, q_logits: Array, where: Array | None) -> Array:
  r"""KL(softmax(p_logits) || softmax(q_logits)) per row.

  .. math:: \mathrm{KL} = \mathbb{E}_p[\tilde a - \tilde b] - \ell_a + \ell_b

  with :math:`\tilde a = a - \max a`, :math:`\ell_a = \log \sum e^{\tilde a}` (same for
  ``b``). Derivative rule: ``dKL = <q - p, dq> + <p (log p - log q - KL), dp>``.
  """
  return _kl_stats(p_logits, q_logits, where)[0]


def ce_from_logits(p_logits: Array, q_logits: Array, where: Array | None) -> Array:
  r"""H(softmax(p_logits), softmax(q_logits)) per row: :math:`\ell_b - \mathbb{E}_p[\tilde b]`.

  Derivative rule: ``dH = <q - p, dq> - <p (log q + H), dp>``.
  """
  return _ce_stats(p_logits, q_logits, where)[0]


def soft_ce_from_logits(p: Array, q_logits: Array, where: Array | None) -> Array:
  r"""H(p, softmax(q_logits)) per row for probabilities ``p`` used as given.

  .. math:: H = \textstyle\sum_i p_i (\ell - \tilde z_i)

  A negative entry gives NaN, excluded categories count as 0. Derivative rule:
  ``dH = <q sum(p) - p, dq> - <log q, dp>`` (``log q`` taken as 0 where ``q = 0``).
  """
  return _soft_ce_stats(p, q_logits, where)[0]


def soft_kl_from_logits(p: Array, q_logits: Array, where: Array | None) -> Array:
  r"""KL(p || softmax(q_logits)) per row for probabilities ``p`` used as given.

  .. math:: \mathrm{KL} = \textstyle\sum_i p_i (\log p_i - \tilde z_i + \ell)

  Derivative rule: ``dKL = <q sum(p) - p, dq> + <log p + 1 - log q, dp>`` -- the ``dq``
  part is the rule of :func:`soft_ce_from_logits`.
  """
  return _soft_kl_stats(p, q_logits, where)[0]


def labels_ce_from_logits(
  labels: Array, q_logits: Array, where: Array | None, smoothing: float = 0.0
) -> Array:
  r"""``-log softmax(q_logits)[labels]`` per row: :math:`\ell - \tilde z_y`.

  ``labels`` must already be valid indices (the caller applies the ignore and
  out-of-range conventions). With ``smoothing`` :math:`\varepsilon`, the cross-entropy
  against :math:`(1 - \varepsilon)\,\mathbb{1}_y + \varepsilon / K` over the ``K``
  included categories. Derivative rule: ``<softmax(q) - target, dq>``.
  """
  return _labels_stats(float(smoothing), labels, q_logits, where)[0]
