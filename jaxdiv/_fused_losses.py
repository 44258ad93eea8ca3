r"""The fused losses' algorithms: per-row statistics, values and closed-form derivatives.

Each loss is a small class of static methods, built from the block helpers of
:mod:`jaxdiv._blocks`:

* ``stats(pb, st, rows)``: walks the vocabulary for a block of rows and returns per-row
  statistics (``[n]`` arrays);
* ``value(pb, st, stats)``: the per-row loss from the statistics;
* ``dlogits(pb, st, rows, cols, stats, g, needs)``: for one block, the cotangent of the
  (transformed) logits of each side in ``needs``, as ``{side: (dz, block)}``;
* ``dmix(pb, st, stats, g)``, for the losses with a differentiable mixture weight.

``pb`` is the :class:`Problem` (the sides, the head's transform, the mask, labels and
options in the compute dtype) and ``st`` the trace-time :class:`Static` configuration. A
generic :func:`jax.custom_vjp` driver (:func:`fused`) loops over blocks of rows, keeps only
the statistics for the backward pass, applies the derivative of the logit transform, and
turns each recomputed block's cotangent into the gradients of ``hidden``, ``weight`` or
``logits`` of the sides being differentiated.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxdiv import _blocks as B
from jaxdiv import _numerics

Array = jax.Array


class Static(NamedTuple):
  """The trace-time configuration of a fused call."""

  loss: Any  # one of the loss classes below
  vocab_chunk: int
  token_chunk: int
  soft_cap: bool
  temperature: bool
  z_loss: bool
  smoothing: bool


class Problem(NamedTuple):
  """Everything a loss reads, in the compute dtype."""

  p: B.Side | None
  q: B.Side
  head: B.Head
  where: Array | None  # [V] bool
  labels: Array | None  # [N] int
  opts: dict  # scalar option arrays: "z_loss", "smoothing", "mix"
  dtype: Any
  num_v: int
  vocab_chunk: int

  def block(self, name: str, rows: B.Range, cols: B.Range) -> B.Block:
    side = self.p if name == "p" else self.q
    return B.logits(side, self.head, rows, cols, self.where, self.dtype)

  def labels_rows(self, rows: B.Range) -> Array:
    return lax.dynamic_slice_in_dim(self.labels, rows.start, rows.size)

  def over_vocab(self, body, carry):
    return B.loop(self.num_v, self.vocab_chunk, body, carry)

  def norms(self, rows: B.Range, sides=("p", "q")):
    """First pass: each side's :class:`~jaxdiv._blocks.Lse` over the whole vocabulary."""

    def body(cols, carry):
      return tuple(
        B.lse_merge(s, B.lse_block(self.block(name, rows, cols).z))
        for s, name in zip(carry, sides, strict=True)
      )

    return self.over_vocab(body, tuple(B.lse_empty(rows.size, self.dtype) for _ in sides))


def _zero_unless(cond, x):
  return jnp.where(cond, x, jnp.zeros_like(x))


def _pair_edges(pb: Problem, stats, loss):
  """A row with no possible category on either side is 0 (the linear side can only be
  empty by an all-False mask); on one side only, that side is not a distribution: NaN, as
  in the core functions. Decided from the merged statistics alone, so that it holds for
  the vocabulary shards of a sharded row too."""
  empty_p, empty_q = stats[0] == -jnp.inf, stats[2] == -jnp.inf
  loss = jnp.where(empty_p | empty_q, jnp.full_like(loss, jnp.nan), loss)
  return _zero_unless(~(empty_p & empty_q), loss)


# ---------------------------------------------------------------------------
# Cross-entropy against integer labels (q is the model; the target is one-hot,
# optionally smoothed over the included categories), plus a z-loss.
# ---------------------------------------------------------------------------


def label_info(labels: Array, num_v: int, where: Array | None):
  """``(ignored, out_of_range, index)``: a negative label or one at an excluded category
  is ignored; a label ``>= V`` gives NaN."""
  ignored = labels < 0
  out_of_range = labels >= num_v
  index = jnp.where(ignored | out_of_range, 0, labels)
  if where is not None:
    ignored = ignored | ~where[index]
  return ignored, out_of_range, index


def _num_included(pb: Problem):
  if pb.where is None:
    return jnp.asarray(pb.num_v, pb.dtype)
  return jnp.sum(pb.where).astype(pb.dtype)


class CrossEntropy:
  r"""``(1 - eps)(lse - z_y) + eps mean_incl(lse - z_v) + z_loss lse^2``, from shifted terms.

  With ``lse = m + log1p(t)``: ``lse - z_y = log1p(t) - (z_y - m)`` and
  ``mean(lse - z_v) = log1p(t) - mean(z_v - m)``, where ``sum (z_v - m)`` is carried over
  the running maximum. Derivative: ``softmax (1 + 2 z_loss lse) - target``, with the label's
  ``softmax - 1`` formed as ``expm1(log softmax)``.
  """

  @staticmethod
  def stats(pb: Problem, st: Static, rows: B.Range):
    n = rows.size
    _, _, index = label_info(pb.labels_rows(rows), pb.num_v, pb.where)

    def body(cols, carry):
      lse, zy, u, cnt = carry
      blk = pb.block("q", rows, cols)
      new = B.lse_merge(lse, B.lse_block(blk.z))
      zy = jnp.maximum(zy, B.label_logit(blk, cols, index))
      if st.smoothing:  # sum of (z - m) over the included categories, m the running max
        mf_old, mf = B.finite_or_zero(lse.m), B.finite_or_zero(new.m)
        kept = jnp.ones(cols.size, bool) if blk.keep is None else blk.keep
        rel = jnp.where(kept, blk.z - mf[:, None], jnp.zeros_like(blk.z))
        u = u - cnt * (mf - mf_old) + jnp.sum(rel, axis=-1)
        cnt = cnt + jnp.sum(kept).astype(cnt.dtype)
      return new, zy, u, cnt

    zeros = jnp.zeros((n,), pb.dtype)
    init = (B.lse_empty(n, pb.dtype), jnp.full((n,), -jnp.inf, pb.dtype), zeros, zeros)
    lse, zy, u, _ = pb.over_vocab(body, init)
    return lse.m, lse.t, zy, u

  @staticmethod
  def value(pb: Problem, st: Static, stats):
    m, t, zy, u = stats
    ignored, out_of_range, _ = label_info(pb.labels, pb.num_v, pb.where)
    log_s = jnp.log1p(t)
    loss = log_s - (zy - B.finite_or_zero(m))
    if st.smoothing:
      eps = pb.opts["smoothing"]
      smooth = log_s - u / _num_included(pb)
      loss = (1 - eps) * loss + eps * smooth
    if st.z_loss:
      lse = m + log_s
      loss = loss + pb.opts["z_loss"] * lse * lse
    loss = _zero_unless(~ignored, loss)
    return jnp.where(out_of_range, jnp.full_like(loss, jnp.nan), loss)

  @staticmethod
  def dlogits(pb: Problem, st: Static, rows: B.Range, cols: B.Range, stats, g, needs):
    m, t, zy, _ = stats
    ignored, out_of_range, index = label_info(pb.labels_rows(rows), pb.num_v, pb.where)
    g = _zero_unless(~(ignored | out_of_range), g)
    blk = pb.block("q", rows, cols)
    lse = B.Lse(m, t)
    lp = B.log_probs(blk.z, lse)
    p = jnp.exp(lp)
    # log q_y = (z_y - m) - log1p(t); q_y - 1 = expm1(log q_y) keeps a confident row's digits
    lp_y = (zy - B.finite_or_zero(m)) - B.log_norm(lse)
    dy = jnp.expm1(lp_y)
    coef = p
    if st.z_loss:
      c = 2 * pb.opts["z_loss"] * (m + B.log_norm(lse))
      coef = coef + _zero_unless(~ignored, c)[:, None] * p
      dy = dy + c * jnp.exp(lp_y)
    if st.smoothing:
      eps = pb.opts["smoothing"]
      share = eps / _num_included(pb)
      kept = jnp.ones(cols.size, bool) if blk.keep is None else blk.keep
      coef = coef - jnp.where(kept, share, jnp.zeros_like(share))
      dy = dy + eps - share
    is_y = (jnp.arange(cols.size) + cols.start)[None, :] == index[:, None]
    if cols.valid is not None:
      is_y = is_y & cols.valid
    dz = jnp.where(is_y, dy[:, None], coef)
    return {"q": (g[:, None] * dz, blk)}


# ---------------------------------------------------------------------------
# KL(p || q): one pass, a = sum_v e^{z^p_v - m_p} ((z^p_v - m_p) - (z^q_v - m_q)) over the
# running maxima, so KL = a / s_p - log s_p + log s_q with nothing formed at the offset.
# ---------------------------------------------------------------------------


class KL:
  @staticmethod
  def stats(pb: Problem, st: Static, rows: B.Range):
    n = rows.size

    def body(cols, carry):
      sp, sq, a, hit = carry
      zp, zq = pb.block("p", rows, cols).z, pb.block("q", rows, cols).z
      sp_new = B.lse_merge(sp, B.lse_block(zp))
      sq_new = B.lse_merge(sq, B.lse_block(zq))
      mp_old, mp = B.finite_or_zero(sp.m), B.finite_or_zero(sp_new.m)
      mq_old, mq = B.finite_or_zero(sq.m), B.finite_or_zero(sq_new.m)
      # the old terms' log-ratios move by the shift of the two maxima
      shift = (mp - mp_old) - (mq - mq_old)
      a = B.rescale(sp, sp_new) * (a - shift * (1 + sp.t))
      p_zero, q_zero = zp == -jnp.inf, zq == -jnp.inf
      both = ~(p_zero | q_zero)
      d = jnp.where(both, (zp - mp[:, None]) - (zq - mq[:, None]), jnp.zeros_like(zp))
      a = a + jnp.sum(jnp.where(p_zero, jnp.zeros_like(zp), jnp.exp(zp - mp[:, None])) * d, -1)
      hit = hit | jnp.any(q_zero & ~p_zero, axis=-1)
      return sp_new, sq_new, a, hit

    init = (B.lse_empty(n, pb.dtype), B.lse_empty(n, pb.dtype))
    init += (jnp.zeros((n,), pb.dtype), jnp.zeros((n,), bool))
    sp, sq, a, hit = pb.over_vocab(body, init)
    kl = a / (1 + sp.t) - B.log_norm(sp) + B.log_norm(sq)
    kl = jnp.where(hit, jnp.inf, kl)
    return sp.m, sp.t, sq.m, sq.t, kl

  @staticmethod
  def value(pb: Problem, st: Static, stats):
    return _pair_edges(pb, stats, stats[-1])

  @staticmethod
  def dlogits(pb: Problem, st: Static, rows: B.Range, cols: B.Range, stats, g, needs):
    mp, tp, mq, tq, kl = stats
    bp, bq = pb.block("p", rows, cols), pb.block("q", rows, cols)
    lp, lq = B.log_probs(bp.z, B.Lse(mp, tp)), B.log_probs(bq.z, B.Lse(mq, tq))
    out = {}
    if "q" in needs:  # q - p
      out["q"] = (g[:, None] * B.prob_diff(lp, lq), bq)
    if "p" in needs:  # p (log p - log q - KL)
      out["p"] = (g[:, None] * B.weighted(lp, (lp - lq) - kl[:, None]), bp)
    return out


# ---------------------------------------------------------------------------
# Mixture losses: two passes, the log-normalisers first, then terms of the final
# log-probabilities with the mixture log m = logaddexp(log a + log p, log(1 - a) + log q).
# ---------------------------------------------------------------------------


def _mixture(pb: Problem, rows, cols, stats):
  """Both sides' blocks, their log-probabilities and, with a mixture weight, ``log m``."""
  mp, tp, mq, tq = stats[:4]
  bp, bq = pb.block("p", rows, cols), pb.block("q", rows, cols)
  lp, lq = B.log_probs(bp.z, B.Lse(mp, tp)), B.log_probs(bq.z, B.Lse(mq, tq))
  lm = None
  if "mix" in pb.opts:
    a = pb.opts["mix"]
    lm = jnp.logaddexp(jnp.log(a) + lp, jnp.log1p(-a) + lq)
  return bp, bq, lp, lq, lm


def _second_pass(pb: Problem, rows, norms, terms, num):
  """Sums over the vocabulary of ``terms(block stats) -> tuple of [n, c]`` arrays."""
  stats = tuple(x for s in norms for x in s)

  def body(cols, acc):
    parts = terms(_mixture(pb, rows, cols, stats))
    return tuple(a + jnp.sum(x, axis=-1) for a, x in zip(acc, parts, strict=True))

  return stats + pb.over_vocab(body, (jnp.zeros((rows.size,), pb.dtype),) * num)


class JensenShannon:
  r"""``w KL(p || m) + (1 - w) KL(q || m)`` with ``m = w p + (1 - w) q``.

  Derivatives ``w p ((log p - log m) - KL(p||m))``, ``(1 - w) q ((log q - log m) - KL(q||m))``
  and, in ``w``, ``KL(p||m) - KL(q||m)``; a term with zero weight counts as 0.
  """

  @staticmethod
  def stats(pb: Problem, st: Static, rows: B.Range):
    def terms(mix):
      _, _, lp, lq, lm = mix
      return B.weighted(lp, lp - lm), B.weighted(lq, lq - lm)

    return _second_pass(pb, rows, pb.norms(rows), terms, 2)

  @staticmethod
  def value(pb: Problem, st: Static, stats):
    kl_pm, kl_qm = stats[4:]
    w = pb.opts["mix"]
    loss = _zero_unless(w != 0, w * kl_pm) + _zero_unless(w != 1, (1 - w) * kl_qm)
    return _pair_edges(pb, stats, loss)

  @staticmethod
  def dlogits(pb: Problem, st: Static, rows: B.Range, cols: B.Range, stats, g, needs):
    kl_pm, kl_qm = stats[4:]
    bp, bq, lp, lq, lm = _mixture(pb, rows, cols, stats)
    w = pb.opts["mix"]
    out = {}
    if "p" in needs:
      coef = B.weighted(lp, (lp - lm) - kl_pm[:, None])
      out["p"] = (_zero_unless(w != 0, g[:, None] * w * coef), bp)
    if "q" in needs:
      coef = B.weighted(lq, (lq - lm) - kl_qm[:, None])
      out["q"] = (_zero_unless(w != 1, g[:, None] * (1 - w) * coef), bq)
    return out

  @staticmethod
  def dmix(pb: Problem, st: Static, stats, g):
    kl_pm, kl_qm = stats[4:]
    return jnp.sum(g * (kl_pm - kl_qm))


class SkewKL:
  r"""``KL(p || m)`` with ``m = a p + (1 - a) q``, ``r = p / m``, ``R = sum p r``, ``Q = sum q r``.

  Derivatives ``p ((log p - log m - SKL) - a (r - R))``, ``(1 - a) q (Q - r)`` and, in
  ``a``, ``Q - R``.
  """

  @staticmethod
  def stats(pb: Problem, st: Static, rows: B.Range):
    def terms(mix):
      _, _, lp, lq, lm = mix
      r = _ratio(lp, lm)
      return B.weighted(lp, lp - lm), B.weighted(lp, r), B.weighted(lq, r)

    return _second_pass(pb, rows, pb.norms(rows), terms, 3)

  @staticmethod
  def value(pb: Problem, st: Static, stats):
    return _pair_edges(pb, stats, stats[4])

  @staticmethod
  def dlogits(pb: Problem, st: Static, rows: B.Range, cols: B.Range, stats, g, needs):
    skl, big_r, big_q = stats[4:]
    bp, bq, lp, lq, lm = _mixture(pb, rows, cols, stats)
    a = pb.opts["mix"]
    r = _ratio(lp, lm)
    out = {}
    if "p" in needs:
      inner = ((lp - lm) - skl[:, None]) - a * (r - big_r[:, None])
      out["p"] = (g[:, None] * B.weighted(lp, inner), bp)
    if "q" in needs:
      out["q"] = (g[:, None] * (1 - a) * B.weighted(lq, big_q[:, None] - r), bq)
    return out

  @staticmethod
  def dmix(pb: Problem, st: Static, stats, g):
    _, big_r, big_q = stats[4:]
    return jnp.sum(g * (big_q - big_r))


def _ratio(lp, lm):
  """``p / m`` (0 where ``p`` is 0)."""
  return jnp.where(lp == -jnp.inf, jnp.zeros_like(lp), jnp.exp(lp - lm))


class TotalVariation:
  r"""``1/2 sum |p - q|``; with ``s = sign(p - q) / 2``, ``S_p = sum p s`` and ``S_q = sum q s``,
  the derivatives are ``p (s - S_p)`` and ``-q (s - S_q)`` (the derivative of ``|x|`` at 0
  taken as 0)."""

  @staticmethod
  def stats(pb: Problem, st: Static, rows: B.Range):
    def terms(mix):
      _, _, lp, lq, _ = mix
      d = B.prob_diff(lq, lp)  # p - q
      s = 0.5 * jnp.sign(d)
      return 0.5 * jnp.abs(d), B.weighted(lp, s), B.weighted(lq, s)

    return _second_pass(pb, rows, pb.norms(rows), terms, 3)

  @staticmethod
  def value(pb: Problem, st: Static, stats):
    return _pair_edges(pb, stats, stats[4])

  @staticmethod
  def dlogits(pb: Problem, st: Static, rows: B.Range, cols: B.Range, stats, g, needs):
    _, s_p, s_q = stats[4:]
    bp, bq, lp, lq, _ = _mixture(pb, rows, cols, stats)
    s = 0.5 * jnp.sign(B.prob_diff(lq, lp))
    out = {}
    if "p" in needs:
      out["p"] = (g[:, None] * B.weighted(lp, s - s_p[:, None]), bp)
    if "q" in needs:
      out["q"] = (-g[:, None] * B.weighted(lq, s - s_q[:, None]), bq)
    return out


# ---------------------------------------------------------------------------
# The custom-VJP driver, shared by every loss
# ---------------------------------------------------------------------------

_SIDE_KEYS = (("p", "hidden"), ("p", "weight"), ("p", "logits"))
_SIDE_KEYS += (("q", "hidden"), ("q", "weight"), ("q", "logits"))


def _problem(st: Static, arrays, labels, where, opts) -> Problem:
  present = [x for x in arrays if x is not None]
  dtype = _numerics.compute_dtype(jnp.result_type(*present))

  def side(h, w, z):
    if h is None and z is None:
      return None
    return B.Side(None if h is None else h.astype(dtype), w, z)

  opts = {k: jnp.asarray(v).astype(dtype) for k, v in opts.items()}
  head = B.Head(
    opts.pop("soft_cap") if st.soft_cap else None,
    opts.pop("temperature") if st.temperature else None,
  )
  q = side(*arrays[3:])
  num_v = q.weight.shape[1] if q.logits is None else q.logits.shape[1]
  return Problem(side(*arrays[:3]), q, head, where, labels, opts, dtype, num_v, st.vocab_chunk)


def _num_rows(pb: Problem) -> int:
  return (pb.q.hidden if pb.q.hidden is not None else pb.q.logits).shape[0]


def _forward(st: Static, pb: Problem):
  """Per-row loss and the O(N) statistics the backward pass needs."""
  num_rows = _num_rows(pb)

  def rows(rr, out):
    stats = st.loss.stats(pb, st, rr)
    if out is None:
      return stats
    if rr.valid is not None:  # a shifted last block keeps the rows written before
      old = [lax.dynamic_slice_in_dim(o, rr.start, rr.size) for o in out]
      stats = tuple(jnp.where(rr.valid, x, o) for x, o in zip(stats, old, strict=True))
    pairs = zip(out, stats, strict=True)
    return tuple(lax.dynamic_update_slice_in_dim(o, x, rr.start, 0) for o, x in pairs)

  if st.token_chunk >= num_rows:
    stats = rows(B.Range(0, num_rows, None), None)
  else:
    shapes = jax.eval_shape(lambda: st.loss.stats(pb, st, B.Range(0, st.token_chunk, None)))
    init = tuple(jnp.zeros((num_rows,), s.dtype) for s in shapes)
    stats = B.loop(num_rows, st.token_chunk, rows, init)
  return st.loss.value(pb, st, stats), stats


def _backward(st: Static, pb: Problem, stats, g, needs):
  """Cotangents of the per-row loss, recomputing one block of logits at a time."""
  num_rows = _num_rows(pb)
  dtype = pb.dtype
  g = g.astype(dtype)
  sides = {"p": pb.p, "q": pb.q}
  keys = sorted(k for k in needs if k[0] != "opt")  # e.g. ("q", "hidden")
  need_sides = {k[0] for k in keys}

  def init(name, part):
    s = sides[name]
    if part == "hidden":
      return jnp.zeros(s.hidden.shape, dtype)
    if part == "weight":
      return jnp.zeros(s.weight.shape, dtype)
    return jnp.zeros(s.logits.shape, s.logits.dtype)

  acc = {k: init(*k) for k in keys}

  # Every update is additive, so that a shifted last block (rows or categories it shares
  # with the previous block left out: zero cotangent, -inf logits) adds exactly zero there.
  def rows(rr, acc):
    n = rr.size
    gr = lax.dynamic_slice_in_dim(g, rr.start, n)
    if rr.valid is not None:
      gr = jnp.where(rr.valid, gr, jnp.zeros_like(gr))
    st_r = tuple(lax.dynamic_slice_in_dim(x, rr.start, n) for x in stats)
    dh = {k: jnp.zeros((n, sides[k[0]].hidden.shape[1]), dtype) for k in keys if k[1] == "hidden"}

    def body(cc, carry):
      acc, dh = carry
      dz = st.loss.dlogits(pb, st, rr, cc, st_r, gr, need_sides)
      dz = {k: B.head_derivative(pb.head, blk, d) for k, (d, blk) in dz.items()}
      acc, dh = dict(acc), dict(dh)
      r0, v0, c = rr.start, cc.start, cc.size
      for k in keys:
        name, part = k
        s = sides[name]
        if part == "logits":
          old = lax.dynamic_slice(acc[k], (r0, v0), (n, c))
          upd = old + dz[name].astype(s.logits.dtype)
          acc[k] = lax.dynamic_update_slice(acc[k], upd, (r0, v0))
        elif part == "hidden":
          w_blk = lax.dynamic_slice_in_dim(s.weight, v0, c, 1).astype(dtype)
          dh[k] = dh[k] + jnp.dot(dz[name], w_blk.T, preferred_element_type=dtype)
        else:
          h_blk = lax.dynamic_slice_in_dim(s.hidden, r0, n, 0)
          old = lax.dynamic_slice(acc[k], (0, v0), (s.weight.shape[0], c))
          upd = old + jnp.dot(h_blk.T, dz[name], preferred_element_type=dtype)
          acc[k] = lax.dynamic_update_slice(acc[k], upd, (0, v0))
      return acc, dh

    acc, dh = pb.over_vocab(body, (acc, dh))
    acc = dict(acc)
    for k, v in dh.items():
      old = lax.dynamic_slice_in_dim(acc[k], rr.start, n, 0)
      acc[k] = lax.dynamic_update_slice_in_dim(acc[k], old + v, rr.start, 0)
    return acc

  acc = B.loop(num_rows, st.token_chunk, rows, acc) if keys else {}
  dmix = None
  if ("opt", "mix") in needs:
    dmix = st.loss.dmix(pb, st, stats, g)
  return acc, dmix


def _impl(st, arrays, labels, where, opts):
  return _forward(st, _problem(st, arrays, labels, where, opts))[0]


def _fwd(st, arrays, labels, where, opts):
  pairs = zip(_SIDE_KEYS, arrays, strict=True)
  needs = {k: None for k, a in pairs if a is not None and a.perturbed}
  if "mix" in opts and opts["mix"].perturbed:
    needs["opt", "mix"] = None
  unwrap = lambda a: None if a is None else a.value  # noqa: E731
  arrays = tuple(unwrap(a) for a in arrays)
  labels, where = unwrap(labels), unwrap(where)
  opts = {k: v.value for k, v in opts.items()}
  loss, stats = _forward(st, _problem(st, arrays, labels, where, opts))
  return loss, (arrays, labels, where, opts, stats, needs)


def _bwd(st, res, g):
  arrays, labels, where, opts, stats, needs = res
  pb = _problem(st, arrays, labels, where, opts)
  acc, dmix = _backward(st, pb, stats, g, needs)
  d_arrays = tuple(
    acc[k].astype(a.dtype) if k in acc else None for k, a in zip(_SIDE_KEYS, arrays, strict=True)
  )
  d_opts = {k: None for k in opts}
  if dmix is not None:
    d_opts["mix"] = dmix.astype(opts["mix"].dtype)
  return d_arrays, None, None, d_opts


_fused_vjp = jax.custom_vjp(_impl, nondiff_argnums=(0,))
_fused_vjp.defvjp(_fwd, _bwd, symbolic_zeros=True)
# Jitted, so that a call outside jit compiles the loops once per configuration instead of
# dispatching them primitive by primitive.
fused = jax.jit(_fused_vjp, static_argnums=0)
