r"""The fused losses, each defined once: per-block statistics, their merge, value and gradient.

A loss is a class of static methods that the drivers of :mod:`jaxdiv._drivers` call, the
same for one device, for token-chunked runs and for vocabulary shards:

* ``stats(cx)``: the per-row statistics of one block of logits (``[n]`` arrays);
* ``empty(cx)``: the statistics of no categories at all (where a running merge starts);
* ``reduce(stats, ops)``: merges statistics with the two reductions of a
  :class:`~jaxdiv._blocks.Ops` -- two stacked blocks, or the shards of a mesh axis (see
  :mod:`jaxdiv._blocks`): written once, used for both;
* ``second(cx, first)``, for losses whose terms need the final log-normalisers: a second
  pass of plain sums (merged by ``ops.sum``);
* ``value(cx, first, second)``: the per-row loss;
* ``grad(cx, first, second)``: the derivative of each row's loss with respect to the
  block of (transformed) logits of each side it reads, ``{side: [n, c]}``;
* ``extra(cx, first, second)``: derivatives with respect to per-row or scalar inputs
  (a mixture weight, a stored teacher's log-probabilities), ``{name: [n, ...]}``;
* ``counts(cx)``: the rows a ``reduction="mean"`` counts (``None``: every row);
* ``core(cx)``, for a block holding whole rows on one device: the per-row loss by the core
  function's kernel on the block's logits, or by a whole-row rule of the loss's own (a
  stored side's cells), ``core_ok(flags)`` saying for which flags; the drivers take its
  derivative rule instead of ``grad`` (see :mod:`jaxdiv._drivers`);
* ``refine(cx, value, dz)``, for a ``core`` whose value a pass of its own makes exact: that
  value made exact from the block's logit cotangent ``dz`` instead, which the drivers'
  one sweep forms anyway, where the loss is the call's only term and unweighted
  (``refine_ok(flags)`` saying for which flags); ``cx.refined_later`` then tells ``core``
  to leave its pass out.

``cx`` (a :class:`~jaxdiv._drivers.Ctx`) gives the block's transformed logits of side
``"p"`` or ``"q"`` (``cx.z(side)``: ``-inf`` where a category is excluded or repeats an
earlier block), per-row data (``cx.row("labels")``), options (``cx.opt("z_loss")``),
static flags (``cx.flag("smoothing")``), the compute dtype and the vocabulary offset of
this shard. Every loss is formed from shifted quantities (``z - max``) and its derivative
from ``exp((z - max) - log1p(excess))``, so adding a constant to the logits changes
neither; 16-bit inputs are accumulated in float32.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxdiv import _blocks as B
from jaxdiv import _f_divergences, _inputs, _kernels, _kl, _numerics

Array = jax.Array
fz = B.finite_or_zero
SIDES = ("p", "q")


def _pair_edges(first_p: B.Lse, first_q: B.Lse, loss: Array) -> Array:
  """A row with no possible category on either side is 0 (a fully excluded row); on one
  side only, that side is not a distribution: NaN, as in the core functions. Decided from
  the merged statistics alone, so that it holds for the shards of a row too."""
  empty_p, empty_q = first_p.m == -jnp.inf, first_q.m == -jnp.inf
  loss = jnp.where(empty_p | empty_q, jnp.full_like(loss, jnp.nan), loss)
  return jnp.where(empty_p & empty_q, jnp.zeros_like(loss), loss)


def _lse_reduce(ms, lses, ops):
  """The :class:`~jaxdiv._blocks.Lse` parts of a reduce: ``ms`` are the merged maxima."""
  return [x for s, m in zip(lses, ms, strict=True) for x in B.lse_parts(s, m)]


def _lse_from(ms, sums):
  return [B.lse_total(m, sums[2 * i], sums[2 * i + 1]) for i, m in enumerate(ms)]


# ---------------------------------------------------------------------------
# Cross-entropy against integer labels (q is the model; the target is one-hot,
# optionally smoothed over the included categories), plus a z-loss.
# ---------------------------------------------------------------------------


class LabelStats(NamedTuple):
  lse: B.Lse
  zy: Array  # the label's logit (-inf in blocks without it)
  kept: Array  # 1 where the label's category is included, 0 excluded, -inf not in the block
  u: Array  # smoothing: sum over included categories of (z - m)
  count: Array  # smoothing: the number of included categories


def _label_ignored(cx):
  """``(ignored, out_of_range)``: a negative label is ignored, one ``>= V`` gives NaN."""
  labels = cx.row("labels")
  return labels < 0, labels >= cx.num_v


_CONFIDENT = 0.5  # below log 2: no other category's logit is within 0.43 of the label's


def _confident_nll(z, index):
  """``log1p(sum_{v != y} e^{z_v - z_y})`` per row, exact where the loss is below
  ``_CONFIDENT`` (the caller checks that on its own value).

  There the label's is the only term at ``z_v = z_y``, so taking it out with
  :func:`jaxdiv._blocks.unit_step` leaves the exact excess in one vectorised pass.
  Elsewhere ties are dropped and the sum may overflow.
  """
  d = z - B.pick(z, index[:, None])
  return jnp.log1p(jnp.sum(jnp.exp(d) - B.unit_step(d), axis=-1))


def _confident_nll_from_grad(loss, dz, index):
  """:func:`_confident_nll` from the kernel's value ``loss = l - z_y`` and its unit
  cotangent ``dz = softmax - onehot``, with no pass over the logits: the other categories'
  ``dz_v = e^{z_v - l}`` sum (the label's own entry taken out) to the excess times
  ``e^{-loss}``, the kernel's normaliser ``l`` cancelling with its rounding."""
  others = jnp.sum(dz, axis=-1) - B.pick(dz, index[:, None])[:, 0]
  return jnp.log1p(jnp.exp(loss) * others)


def _refined(loss, exact):
  """``exact`` as the value where the kernel's ``loss`` is below ``_CONFIDENT``, keeping
  the kernel's derivative."""
  exact = lax.stop_gradient(exact)
  return jnp.where(loss < _CONFIDENT, (loss - lax.stop_gradient(loss)) + exact, loss)


class LabelsCE:
  r"""``(1 - eps)(lse - z_y) + eps mean_incl(lse - z_v) + z_loss lse^2``, from shifted terms.

  With ``lse = m + log1p(t)``: ``lse - z_y = log1p(t) - (z_y - m)`` and
  ``mean(lse - z_v) = log1p(t) - mean(z_v - m)``, where ``sum (z_v - m)`` is carried over
  the running maximum. A label at an excluded category is ignored. Derivative:
  ``softmax (1 + 2 z_loss lse) - target``, the label's ``softmax - 1`` formed as
  ``expm1(log softmax)`` (a confident row keeps its digits).
  """

  @staticmethod
  def _local(cx):
    ignored, out_of_range = _label_ignored(cx)
    labels = jnp.where(ignored | out_of_range, -1, cx.row("labels"))
    return (labels - cx.offset - cx.cols.start)[:, None]

  @staticmethod
  def empty(cx):
    n, dt = cx.rows.size, cx.dtype
    none = jnp.full((n,), -jnp.inf, dt)
    return LabelStats(B.lse_empty(n, dt), none, none, jnp.zeros((n,), dt), jnp.zeros((n,), dt))

  @staticmethod
  def stats(cx):
    z = cx.z(cx.side)
    s = cx.lse(cx.side)
    local = LabelsCE._local(cx)
    zy = B.pick(z, local)[:, 0]
    kept = jnp.zeros_like(zy)
    if cx.masked:
      keep = jnp.broadcast_to(cx.keep, z.shape).astype(z.dtype)
      kept = B.pick(keep, local)[:, 0]
    u = count = jnp.zeros_like(zy)
    if cx.flag("smoothing"):  # an impossible (-inf) category is included: it costs +inf
      m = B.fresh(fz(s.m))
      if cx.keep is None:
        u = jnp.sum(z - m[:, None], axis=-1)
        count = jnp.full_like(zy, z.shape[1])
      else:
        inc = jnp.broadcast_to(cx.keep, z.shape)
        u = jnp.sum(jnp.where(inc, z - m[:, None], jnp.zeros_like(z)), axis=-1)
        count = jnp.sum(inc, axis=-1).astype(z.dtype)
    return LabelStats(s, zy, kept, u, count)

  @staticmethod
  def reduce(s, ops):
    m, zy, kept = ops.max((s.lse.m, s.zy, s.kept))
    part, top = B.lse_parts(s.lse, m)
    u = s.u - s.count * (fz(m) - fz(s.lse.m))  # the sums of (z - m), moved to the new m
    part, top, u, count = ops.sum((part, top, u, s.count))
    return LabelStats(B.lse_total(m, part, top), zy, kept, u, count)

  @staticmethod
  def _ignored(cx, s):
    ignored, out_of_range = _label_ignored(cx)
    if cx.masked:
      ignored = ignored | (s.kept == 0)
    return ignored, out_of_range

  @staticmethod
  def counts(cx, s):
    return ~LabelsCE._ignored(cx, s)[0]

  @staticmethod
  def value(cx, s, _):
    ignored, out_of_range = LabelsCE._ignored(cx, s)
    log_s = B.log_norm(s.lse)
    loss = log_s - (s.zy - fz(s.lse.m))
    if cx.flag("smoothing"):
      eps = cx.opt("smoothing")
      mean = s.u / jnp.maximum(s.count, 1)
      loss = (1 - eps) * loss + eps * (log_s - mean)
    if cx.flag("z_loss"):
      lse = s.lse.m + log_s
      loss = loss + cx.opt("z_loss") * lse * lse
    loss = B.zero_unless(~ignored, loss)
    return jnp.where(out_of_range, jnp.full_like(loss, jnp.nan), loss)

  @staticmethod
  def grad(cx, s, _):
    ignored, out_of_range = LabelsCE._ignored(cx, s)
    z = cx.z(cx.side)
    p = B.softmax(z, s.lse)
    # log q_y = (z_y - m) - log1p(t); q_y - 1 = expm1(log q_y) keeps a confident row's digits
    lp_y = (s.zy - fz(s.lse.m)) - B.log_norm(s.lse)
    dy = jnp.expm1(lp_y)
    coef = p
    if cx.flag("z_loss"):
      c = 2 * cx.opt("z_loss") * (s.lse.m + B.log_norm(s.lse))
      coef = coef + c[:, None] * p
      dy = dy + c * jnp.exp(lp_y)
    if cx.flag("smoothing"):
      eps = cx.opt("smoothing")
      share = eps / jnp.maximum(s.count, 1)
      coef = coef - share[:, None]  # excluded categories: the driver zeroes them
      dy = dy + eps - share
    # the label's entry is set, not selected: no compare over the block
    dz = coef.at[jnp.arange(z.shape[0])[:, None], LabelsCE._dropped(cx)].set(
      dy[:, None], mode="drop"
    )
    return {cx.side: dz * (~(ignored | out_of_range)).astype(z.dtype)[:, None]}

  @staticmethod
  def core_ok(flags):
    return not flags.get("smoothing")  # the core kernel takes a static smoothing only

  @staticmethod
  def refine_ok(flags):
    return not flags.get("z_loss")  # its value is not the kernel's alone

  @staticmethod
  def core(cx):
    z = cx.z(cx.side)
    ignored, out_of_range, index = _inputs.label_mask(cx.row("labels"), cx.num_v, None)
    loss = _kernels.labels_ce_from_logits(index, z, None)
    # the kernel's log-sum keeps about two digits of a confident row's loss: there the
    # value is log1p of the excess over the label's logit, the derivative the kernel's;
    # beside another term (distillation's soft one), whose round-off is as large, it is not
    if not cx.refined_later and len(cx.pb.st.comps) == 1:
      loss = _refined(loss, _confident_nll(z, index))
    if cx.flag("z_loss"):
      lse = _numerics.logsumexp(z, None)
      loss = loss + cx.opt("z_loss") * lse * lse
    loss = B.zero_unless(~ignored, loss)
    return jnp.where(out_of_range, jnp.full_like(loss, jnp.nan), loss)

  @staticmethod
  def refine(cx, loss, dz):
    _, _, index = _inputs.label_mask(cx.row("labels"), cx.num_v, None)
    return _refined(loss, _confident_nll_from_grad(loss, dz, index))

  @staticmethod
  def _dropped(cx):
    """The label's column in this block, or an index past its end (dropped by a scatter)."""
    return B.columns(LabelsCE._local(cx), cx.cols.size)


# ---------------------------------------------------------------------------
# Two logit sides in one pass: KL(p || q) and H(p, q). The running sum
# a = sum_v e^{z^p_v - m_p} term_v, term = (z^p - m_p) - (z^q - m_q) for KL and z^q - m_q
# for CE, moves with the maxima; nothing is formed at the logits' offset.
# ---------------------------------------------------------------------------


class PairStats(NamedTuple):
  p: B.Lse
  q: B.Lse
  a: Array
  hit: Array  # p_v > 0 = q_v somewhere (the value is +inf)


def _pair_stats(cx, kl: bool) -> PairStats:
  zp, zq = cx.z("p"), cx.z("q")
  sp, sq = cx.lse("p"), cx.lse("q")
  mp, mq = B.fresh(fz(sp.m), fz(sq.m))
  dp, dq = B.clamp(zp - mp[:, None]), B.clamp(zq - mq[:, None])
  a = jnp.sum(jnp.exp(dp) * (dp - dq if kl else dq), axis=-1)
  hit = jnp.zeros_like(a)
  if cx.may_vanish("q"):  # p_v > 0 = q_v: the clamped log-ratio is about +big
    mp, mq = B.fresh(fz(sp.m), fz(sq.m))
    gap = jnp.min(B.clamp(zq - mq[:, None]) - B.clamp(zp - mp[:, None]), axis=-1)
    hit = (gap <= -B.big(gap.dtype) / 2).astype(a.dtype)
  return PairStats(sp, sq, a, hit)


def _pair_reduce(s: PairStats, ops, kl: bool) -> PairStats:
  mp, mq = ops.max((s.p.m, s.q.m))
  # the terms move by the shifts of the maxima, and their weights e^{z^p - m_p} rescale
  shift_q = fz(mq) - fz(s.q.m)
  shift = (fz(mp) - fz(s.p.m)) - shift_q if kl else shift_q
  a = B.rescale(s.p.m, mp) * (s.a - shift * (1 + s.p.t))
  sums = ops.sum((*_lse_reduce((mp, mq), (s.p, s.q), ops), a, s.hit))
  sp, sq = _lse_from((mp, mq), sums)
  return PairStats(sp, sq, sums[4], sums[5])


def _pair_empty(cx) -> PairStats:
  n, dt = cx.rows.size, cx.dtype
  zeros = jnp.zeros((n,), dt)
  return PairStats(B.lse_empty(n, dt), B.lse_empty(n, dt), zeros, zeros)


class KL:
  r"""``KL(p || q) = a / s_p - log s_p + log s_q``; derivatives ``q - p`` and
  ``p (log p - log q - KL)``."""

  empty = staticmethod(_pair_empty)

  @staticmethod
  def core(cx):
    return _kernels.kl_from_logits(cx.z("p"), cx.z("q"), None)

  @staticmethod
  def stats(cx):
    return _pair_stats(cx, kl=True)

  @staticmethod
  def reduce(s, ops):
    return _pair_reduce(s, ops, kl=True)

  @staticmethod
  def value(cx, s, _):
    kl = s.a / (1 + s.p.t) - B.log_norm(s.p) + B.log_norm(s.q)
    return _pair_edges(s.p, s.q, jnp.where(s.hit > 0, jnp.inf, kl))

  @staticmethod
  def grad(cx, s, _):
    lp, lq = B.log_probs(cx.z("p"), s.p), B.log_probs(cx.z("q"), s.q)
    out = {}
    if cx.wants("q"):
      out["q"] = B.prob_diff(lp, lq)
    if cx.wants("p"):
      kl = fz(KL.value(cx, s, None))
      out["p"] = B.weighted(B.log_probs(cx.z("p"), s.p), (lp - lq) - kl[:, None])
    return out


class CE:
  r"""``H(p, q) = log s_q - a / s_p`` for two logit sides; derivatives ``q - p`` and
  ``-p (log q + H)``."""

  empty = staticmethod(_pair_empty)

  @staticmethod
  def core(cx):
    return _kernels.ce_from_logits(cx.z("p"), cx.z("q"), None)

  @staticmethod
  def stats(cx):
    return _pair_stats(cx, kl=False)

  @staticmethod
  def reduce(s, ops):
    return _pair_reduce(s, ops, kl=False)

  @staticmethod
  def value(cx, s, _):
    h = B.log_norm(s.q) - s.a / (1 + s.p.t)
    return _pair_edges(s.p, s.q, jnp.where(s.hit > 0, jnp.inf, h))

  @staticmethod
  def grad(cx, s, _):
    lp, lq = B.log_probs(cx.z("p"), s.p), B.log_probs(cx.z("q"), s.q)
    out = {}
    if cx.wants("q"):
      out["q"] = B.prob_diff(lp, lq)
    if cx.wants("p"):
      h = fz(CE.value(cx, s, None))[:, None]
      lq0 = jnp.where(lq <= -B.big(lq.dtype), jnp.zeros_like(lq), lq)  # log q as 0 where q = 0
      out["p"] = -B.weighted(B.log_probs(cx.z("p"), s.p), lq0 + h)
    return out


# ---------------------------------------------------------------------------
# A probability target p (used as given: NaN where negative, 0 where excluded) and logits
# q: two passes, the log-normaliser of q, then the terms with the final log q.
# ---------------------------------------------------------------------------


class _QStats(NamedTuple):
  q: B.Lse


def _q_reduce(s, ops):
  (m,) = ops.max((s.q.m,))
  return _QStats(_lse_from((m,), ops.sum(_lse_reduce((m,), (s.q,), ops)))[0])


def _soft_terms(cx, s):
  p = cx.probs("p")
  lq = B.log_probs(cx.z("q"), s.q)
  return p, lq


class Soft:
  """``H(p, q) = -sum p log q`` (``kind`` "ce") or ``KL(p || q)`` ("kl") for probabilities
  ``p``; derivatives ``q sum(p) - p`` in the logits of ``q``, and ``-log q`` or
  ``log p + 1 - log q`` in ``p`` (``log q`` and ``log p + 1`` taken as 0 where 0)."""

  @staticmethod
  def empty(cx):
    return _QStats(B.lse_empty(cx.rows.size, cx.dtype))

  @staticmethod
  def stats(cx):
    return _QStats(cx.lse("q"))

  reduce = staticmethod(_q_reduce)

  @staticmethod
  def second(cx, s):
    p, lq = _soft_terms(cx, s)
    q_zero = lq <= -B.big(lq.dtype)
    lq_safe = jnp.where(q_zero, jnp.zeros_like(lq), lq)
    if cx.flag("kind") == "kl":
      log_p, p_zero = jnp.log(jnp.where(p == 0, jnp.ones_like(p), p)), p == 0
      terms = _numerics.rel_entr(p, p_zero, log_p, lq_safe, q_zero)
    else:
      terms = -_numerics.xlogy(p, p == 0, lq_safe, q_zero)
    return jnp.sum(terms, axis=-1), jnp.sum(p, axis=-1)

  @staticmethod
  def value(cx, s, sums):
    return sums[0]

  @staticmethod
  def grad(cx, s, sums):
    p, lq = _soft_terms(cx, s)
    out = {}
    if cx.wants("q"):
      out["q"] = B.softmax(cx.z("q"), s.q) * sums[1][:, None] - p
    if cx.wants("p"):
      lq_safe = jnp.where(lq <= -B.big(lq.dtype), jnp.zeros_like(lq), lq)
      if cx.flag("kind") == "kl":
        log_p1 = jnp.log(jnp.where(p == 0, jnp.ones_like(p), p)) + 1
        out["p"] = jnp.where(p == 0, jnp.zeros_like(p), log_p1) - lq_safe
      else:
        out["p"] = -lq_safe
      out["p"] = out["p"] + 0 * sums[1][:, None]  # a negative p makes the row's gradient NaN
    return out


# ---------------------------------------------------------------------------
# Mixture losses: two passes, the log-normalisers first, then terms of the final
# log-probabilities with the mixture log m = logaddexp(log a + log p, log(1 - a) + log q).
# ---------------------------------------------------------------------------


class _Norms(NamedTuple):
  p: B.Lse
  q: B.Lse


def _norms_empty(cx):
  return _Norms(B.lse_empty(cx.rows.size, cx.dtype), B.lse_empty(cx.rows.size, cx.dtype))


def _norms_stats(cx):
  return _Norms(cx.lse("p"), cx.lse("q"))


def _norms_reduce(s, ops):
  ms = ops.max((s.p.m, s.q.m))
  return _Norms(*_lse_from(ms, ops.sum(_lse_reduce(ms, (s.p, s.q), ops))))


def _mixture(cx, s: _Norms):
  """Both sides' clamped log-probabilities and, with a mixture weight, ``log m``: formed
  anew (own row statistics) by every pass that calls it."""
  lp, lq = B.log_probs(cx.z("p"), s.p), B.log_probs(cx.z("q"), s.q)
  lm = None
  if cx.has_opt("mix"):
    a = cx.opt("mix")
    lm = B.log_mix(B.clamp(jnp.log(a)), lp, B.clamp(jnp.log1p(-a)), lq)
  return lp, lq, lm


def _dists(cx):
  """Both sides of a whole-row block as the core functions' distributions."""
  return [_inputs.dist(_inputs.Source("logits", side, cx.z(side)), None) for side in SIDES]


def _sums(cx, s, *terms):
  """``sum_v term(lp, lq, lm)`` for each term, one pass each."""
  return tuple(jnp.sum(term(*_mixture(cx, s)), axis=-1) for term in terms)


class _TwoPass:
  empty = staticmethod(_norms_empty)
  stats = staticmethod(_norms_stats)
  reduce = staticmethod(_norms_reduce)


class JensenShannon(_TwoPass):
  r"""``w KL(p || m) + (1 - w) KL(q || m)`` with ``m = w p + (1 - w) q``.

  Derivatives ``w p ((log p - log m) - KL(p||m))``, ``(1 - w) q ((log q - log m) - KL(q||m))``
  and, in ``w``, ``KL(p||m) - KL(q||m)``; a term with zero weight counts as 0.
  """

  @staticmethod
  def second(cx, s):
    return _sums(
      cx, s, lambda lp, lq, lm: B.weighted(lp, lp - lm), lambda lp, lq, lm: B.weighted(lq, lq - lm)
    )

  @staticmethod
  def value(cx, s, sums):
    kl_pm, kl_qm = sums
    w = cx.opt("mix")
    loss = B.zero_unless(w != 0, w * kl_pm) + B.zero_unless(w != 1, (1 - w) * kl_qm)
    return _pair_edges(s.p, s.q, loss)

  @staticmethod
  def grad(cx, s, sums):
    kl_pm, kl_qm = sums
    lp, lq, lm = _mixture(cx, s)
    w = cx.opt("mix")
    out = {}
    if cx.wants("p"):
      out["p"] = B.zero_unless(w != 0, w * B.weighted(lp, (lp - lm) - kl_pm[:, None]))
    if cx.wants("q"):
      out["q"] = B.zero_unless(w != 1, (1 - w) * B.weighted(lq, (lq - lm) - kl_qm[:, None]))
    return out

  @staticmethod
  def extra(cx, s, sums):
    return {"mix": sums[0] - sums[1]}


def _ratio(lp, lm):
  """``p / m`` (only ever weighted by ``p`` or ``q``, so its value where both are 0 is moot)."""
  return jnp.exp(lp - lm)


class SkewKL(_TwoPass):
  r"""``KL(p || m)`` with ``m = a p + (1 - a) q``, ``r = p / m``, ``R = sum p r``, ``Q = sum q r``.

  Derivatives ``p ((log p - log m - SKL) - a (r - R))``, ``(1 - a) q (Q - r)`` and, in
  ``a``, ``Q - R``.
  """

  @staticmethod
  def second(cx, s):
    return _sums(
      cx,
      s,
      lambda lp, lq, lm: B.weighted(lp, lp - lm),
      lambda lp, lq, lm: B.weighted(lp, _ratio(lp, lm)),
      lambda lp, lq, lm: B.weighted(lq, _ratio(lp, lm)),
    )

  @staticmethod
  def value(cx, s, sums):
    return _pair_edges(s.p, s.q, sums[0])

  @staticmethod
  def grad(cx, s, sums):
    skl, big_r, big_q = sums
    lp, lq, lm = _mixture(cx, s)
    a = cx.opt("mix")
    r = _ratio(lp, lm)
    out = {}
    if cx.wants("p"):
      inner = ((lp - lm) - skl[:, None]) - a * (r - big_r[:, None])
      out["p"] = B.weighted(lp, inner)
    if cx.wants("q"):
      out["q"] = (1 - a) * B.weighted(lq, big_q[:, None] - r)
    return out

  @staticmethod
  def extra(cx, s, sums):
    return {"mix": sums[2] - sums[1]}


class TotalVariation(_TwoPass):
  r"""``1/2 sum |p - q|``; with ``s = sign(p - q) / 2``, ``S_p = sum p s`` and ``S_q = sum q s``,
  the derivatives are ``p (s - S_p)`` and ``-q (s - S_q)`` (the derivative of ``|x|`` at 0
  taken as 0)."""

  @staticmethod
  def second(cx, s):
    def sign(lp, lq):
      return 0.5 * jnp.sign(B.prob_diff(lq, lp))  # of p - q

    return _sums(
      cx,
      s,
      lambda lp, lq, lm: 0.5 * jnp.abs(B.prob_diff(lq, lp)),
      lambda lp, lq, lm: B.weighted(lp, sign(lp, lq)),
      lambda lp, lq, lm: B.weighted(lq, sign(lp, lq)),
    )

  @staticmethod
  def value(cx, s, sums):
    return _pair_edges(s.p, s.q, sums[0])

  @staticmethod
  def grad(cx, s, sums):
    _, s_p, s_q = sums
    lp, lq, _ = _mixture(cx, s)
    sign = 0.5 * jnp.sign(B.prob_diff(lq, lp))
    out = {}
    if cx.wants("p"):
      out["p"] = B.weighted(lp, sign - s_p[:, None])
    if cx.wants("q"):
      out["q"] = -B.weighted(lq, sign - s_q[:, None])
    return out

  @staticmethod
  def core(cx):
    return _f_divergences.total_variation_of(*_dists(cx))


# ---------------------------------------------------------------------------
# A stored (sparse) side: indices [n, k] with log-probabilities [n, k]. The dense side is
# coarse-grained onto the same cells (the listed categories, and for tail="residual" one
# cell holding the rest), and the divergence of the cells is the core family's own
# formula (jaxdiv._inputs.sparse_cells, then the function of the family on them). Its
# derivative with respect to the dense side's logits is the cells' derivative lifted
# back: with u the cells' log-probabilities and g = dD/du,
#   dD/dz_v = g_v (v listed) + [v unlisted] (q_v / q_rest) g_rest - q_v sum_c g_c.
# ---------------------------------------------------------------------------


class SparseStats(NamedTuple):
  lse: B.Lse  # the dense side's log-normaliser
  listed: Array  # [n, k] the dense side's logits at the listed categories (-inf elsewhere)
  kept: Array  # [n, k] 1 where a listed category is included, 0 excluded, -inf elsewhere
  rest: B.Lse  # the log-normaliser of the unlisted categories ("residual" only)


# The family's formulas on the cells' distributions.
CELL_LOSSES = {
  "kl": lambda dp, dq, mix: _kl.kl_of(dp, dq),
  "ce": lambda dp, dq, mix: _kl.cross_entropy_of(dp, dq),
  "jsd": lambda dp, dq, mix: _f_divergences.jensen_shannon_of(dp, dq, mix),
  "skew_kl": lambda dp, dq, mix: _f_divergences.skew_kl_of(dp, dq, mix),
  "tv": lambda dp, dq, mix: _f_divergences.total_variation_of(dp, dq),
}


def _dense_cells(lse: B.Lse, listed: Array, rest: B.Lse):
  """The dense side's log-probabilities on the cells: ``(listed [n, k], rest [n])`` from
  its log-normaliser, its logits at the listed categories and its rest's log-normaliser
  (``-inf`` for a cell without mass)."""
  lq_listed = (listed - fz(lse.m)[:, None]) - fz(B.log_norm(lse))[:, None]
  lq_listed = jnp.where(listed == -jnp.inf, jnp.full_like(lq_listed, -jnp.inf), lq_listed)
  lq_rest = (rest.m - fz(lse.m)) + (B.log_norm(rest) - B.log_norm(lse))
  lq_rest = jnp.where(rest.m == -jnp.inf, jnp.full_like(lq_rest, -jnp.inf), lq_rest)
  return lq_listed, lq_rest


def _without_listed(z: Array, cols: Array):
  """``(listed [n, k], z_rest [n, c])``: a block's logits at the listed columns ``cols``
  (the block's width: no column), and the block with ``-inf`` there."""
  listed = B.pick(z, cols)
  # -inf from the listed logits: the gather then runs first and the scatter is in place
  z_rest = z.at[jnp.arange(z.shape[0])[:, None], cols].set(listed - jnp.inf, mode="drop")
  return listed, z_rest


def _residual_dz(z_rest, rest: B.Lse, lq_listed, lq_rest, cols, g_listed, g_rest):
  """The residual cells' derivative lifted back to a block's logits, ``total = sum_c g_c``:
  ``e^{z_v - lse_rest} (g_rest - q_rest total)`` at an unlisted ``v`` (``z_rest``: the block
  with ``-inf`` at the listed categories), ``g_v - q_v total`` at a listed one; one
  exponential per category and a scatter of the listed ones."""
  total = jnp.sum(g_listed, axis=-1) + g_rest
  mr, lnr = B.row_shift(rest)
  unlisted = g_rest - jnp.exp(lq_rest) * total
  dz = jnp.exp((z_rest - mr[:, None]) - lnr[:, None]) * unlisted[:, None]
  rows = jnp.arange(z_rest.shape[0])[:, None]
  return dz.at[rows, cols].add(g_listed - jnp.exp(lq_listed) * total[:, None], mode="drop")


@jax.custom_vjp
def _residual_cells(z: Array, cols: Array):
  """``(lq_listed [n, k], lq_rest [n], m [n])`` of whole rows of logits ``z [n, V]`` on the
  residual cells of the listed columns ``cols [n, k]`` (``V``: an empty slot), ``m`` the
  rows' maximum (``-inf``: no possible category). Derivative rule: :func:`_residual_dz`."""
  return _residual_fwd(z, cols)[0]


def _residual_fwd(z, cols):
  listed, z_rest = _without_listed(z, cols)
  # the rest's normaliser at its own maximum, which stays apart from the sum (shift invariance)
  m_rest = jnp.max(z_rest, axis=-1)
  s_rest = jnp.sum(jnp.exp(z_rest - fz(m_rest)[:, None]), axis=-1)
  rest = B.Lse(m_rest, jnp.where(m_rest == -jnp.inf, -jnp.ones_like(s_rest), s_rest - 1))
  whole = B.merge(_q_reduce, _QStats(B.lse_block(listed)), _QStats(rest)).q
  lq_listed, lq_rest = _dense_cells(whole, listed, rest)
  return (lq_listed, lq_rest, whole.m), (z_rest, rest, lq_listed, lq_rest, cols)


def _residual_bwd(res, ct):
  z_rest, rest, lq_listed, lq_rest, cols = res
  g_listed, g_rest, _ = ct
  return _residual_dz(z_rest, rest, lq_listed, lq_rest, cols, g_listed, g_rest), None


_residual_cells.defvjp(_residual_fwd, _residual_bwd)


class Sparse:
  """A divergence between a stored side (``flag("stored")``: ``"p"`` or ``"q"``) and a
  dense one, on the cells of ``flag("tail")``; the loss is ``flag("cells")`` of
  :data:`CELL_LOSSES`."""

  @staticmethod
  def _local(cx):
    idx, ok = cx.row("indices"), cx.row("slot_ok")
    return jnp.where(ok, idx - cx.offset - cx.cols.start, -1)

  @staticmethod
  def empty(cx):
    n, k, dt = cx.rows.size, cx.row("indices").shape[1], cx.dtype
    none = jnp.full((n, k), -jnp.inf, dt)
    return SparseStats(B.lse_empty(n, dt), none, none, B.lse_empty(n, dt))

  @staticmethod
  def stats(cx):
    z = cx.z(cx.side)
    local = Sparse._local(cx)
    listed = B.pick(z, local)
    kept = jnp.zeros_like(listed)
    if cx.masked:
      kept = B.pick(jnp.broadcast_to(cx.keep, z.shape).astype(z.dtype), local)
    if cx.flag("tail") != "residual":
      return SparseStats(cx.lse(cx.side), listed, kept, B.lse_empty(z.shape[0], z.dtype))
    # the whole row's normaliser merges the unlisted categories' with the k listed ones':
    # one pass over the block instead of two
    rest = cx.lse(cx.side, bias=Sparse._unlisted(z, local))
    whole = B.merge(_q_reduce, _QStats(B.lse_block(listed)), _QStats(rest)).q
    return SparseStats(whole, listed, kept, rest)

  @staticmethod
  def _unlisted(z, local):
    """0 at the unlisted categories of the block and ``-inf`` at the listed ones."""
    return B.scatter(z.shape, local, jnp.full(local.shape, -jnp.inf, z.dtype))

  @staticmethod
  def reduce(s, ops):
    m, listed, kept, m_rest = ops.max((s.lse.m, s.listed, s.kept, s.rest.m))
    sums = ops.sum(_lse_reduce((m, m_rest), (s.lse, s.rest), ops))
    lse, rest = _lse_from((m, m_rest), sums)
    return SparseStats(lse, listed, kept, rest)

  @staticmethod
  def _cells(cx, s):
    """``(loss [n], vjp)`` of the cell loss in the dense cells' log-probabilities ``u``,
    the stored log-probabilities and the mixture weight."""
    slot_ok = cx.row("slot_ok")
    if cx.masked:  # a listed category that is excluded is padding
      slot_ok = slot_ok & (s.kept != 0)
    lq_listed, lq_rest = _dense_cells(s.lse, s.listed, s.rest)
    return Sparse._cell_loss(cx, slot_ok, lq_listed, lq_rest, s.lse.m == -jnp.inf)

  @staticmethod
  def _cell_loss(cx, slot_ok, lq_listed, lq_rest, empty):
    """``(loss [n], vjp)`` from the dense cells' log-probabilities (``empty``: rows with no
    possible dense category)."""
    tail, stored = cx.flag("tail"), cx.flag("stored")
    loss_fn = CELL_LOSSES[cx.flag("cells")]
    # a weight per row, so that its derivative is one per row
    mix = cx.opt("mix") if cx.has_opt("mix") else jnp.zeros((), cx.dtype)
    mix = jnp.broadcast_to(mix, (cx.rows.size, 1))

    tol = cx.flag("tol")

    def cell_loss(log_probs, u_listed, u_rest, mix):
      ds, dd = _inputs.sparse_cells(tail, log_probs, slot_ok, u_listed, u_rest, tol)
      dp, dq = (ds, dd) if stored == "p" else (dd, ds)
      return loss_fn(dp, dq, mix)

    log_probs = cx.row("log_probs")
    loss, vjp = jax.vjp(cell_loss, log_probs, lq_listed, lq_rest, mix)
    bad = cx.row("invalid")  # out-of-range or duplicated listed categories
    loss = jnp.where(bad, jnp.full_like(loss, jnp.nan), loss)
    # no possible category on the dense side: a fully excluded row (0), or not a distribution
    gone = jnp.zeros_like(loss) if cx.masked else jnp.full_like(loss, jnp.nan)
    # those rows' values are set, so they have no derivative (the core functions' rule)
    return jnp.where(empty, gone, loss), lambda g: vjp(B.zero_unless(~(bad | empty), g))

  @staticmethod
  def value(cx, s, _):
    return Sparse._cells(cx, s)[0]

  @staticmethod
  def _cell_grads(cx, s):
    loss, vjp = Sparse._cells(cx, s)
    return vjp(jnp.ones_like(loss))

  @staticmethod
  def grad(cx, s, _):
    dense = cx.side
    if not cx.wants(dense):
      return {}
    _, g_listed, g_rest, _ = Sparse._cell_grads(cx, s)
    z = cx.z(dense)
    cols = B.columns(Sparse._local(cx), z.shape[1])
    if cx.flag("tail") == "residual":
      lq_listed, lq_rest = _dense_cells(s.lse, s.listed, s.rest)
      z_rest = _without_listed(z, cols)[1]
      return {dense: _residual_dz(z_rest, s.rest, lq_listed, lq_rest, cols, g_listed, g_rest)}
    total = jnp.sum(g_listed, axis=-1) + g_rest
    dz = -B.softmax(z, s.lse) * total[:, None]
    rows = jnp.arange(z.shape[0])[:, None]
    return {dense: dz.at[rows, cols].add(g_listed, mode="drop")}

  @staticmethod
  def core_ok(flags):
    return flags.get("tail") == "residual"  # the other tails' cells need the whole row's lse

  @staticmethod
  def core(cx):
    z = cx.z(cx.side)
    lq_listed, lq_rest, m = _residual_cells(z, B.columns(Sparse._local(cx), z.shape[1]))
    return Sparse._cell_loss(cx, cx.row("slot_ok"), lq_listed, lq_rest, m == -jnp.inf)[0]

  @staticmethod
  def extra(cx, s, _):
    g_log_probs, _, _, g_mix = Sparse._cell_grads(cx, s)
    out = {"log_probs": g_log_probs}
    if cx.has_opt("mix"):
      out["mix"] = g_mix[:, 0]
    return out
