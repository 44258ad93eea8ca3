r"""Vocabulary-parallel cross-entropy and KL: logits sharded over a mesh axis.

With tensor parallelism the output projection is split over devices along the
vocabulary, so each device holds logits ``[..., V / k]``. Gathering them to normalise
costs ``N x V`` of communication and memory. The Megatron-LM scheme (Shoeybi et al.,
2019) exchanges only per-row scalars instead: the row maximum (``lax.pmax``), the sum of
``exp(z - max)`` (``lax.psum``) and the per-row partial sums of the loss terms
(``lax.psum``). Each device then works on its own block with the global
log-normaliser; reverse-mode gradients flow through the ``psum`` and stay sharded.

Implemented with :func:`jax.shard_map` over the named mesh axis; any other mesh axes
see the inputs replicated.

The fused versions (``sharded_linear_*``) never form even the local logits: the weight
``[D, V]`` is split along V, each device runs the block loops of
:mod:`jaxdiv._fused_losses` over its own columns, and the per-row statistics of
:mod:`jaxdiv._blocks` are merged across the shards as the blocks of one device are (a
``pmax`` of the maxima, a ``psum`` of the rescaled sums). A custom VJP outside the two
``shard_map`` calls (forward, and the recomputing backward) reduces the hidden-state
gradient over the vocabulary axis and the weight gradient over the data axis; rows may
also be split over a data axis of the same mesh.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike

from jaxdiv import _blocks as B
from jaxdiv import _checks, _fused, _inputs, _numerics
from jaxdiv import _fused_losses as L

Array = jax.Array


def _shard_map(f, mesh, in_specs, out_specs):
  """``shard_map`` under ``jit``, so that unsharded inputs are resharded (not rejected)."""
  if hasattr(jax, "shard_map"):
    mapped = jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
  else:  # jax < 0.7
    from jax.experimental.shard_map import shard_map

    mapped = shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)

  def resharded(*args):
    if _explicit(mesh):  # a mesh with Explicit axes needs inputs with the exact spec
      args = tuple(
        x if x is None or s is None else jax.sharding.reshard(x, NamedSharding(mesh, s))
        for x, s in zip(args, in_specs, strict=True)
      )
    return mapped(*args)

  return jax.jit(resharded)


def _explicit(mesh) -> bool:
  types = getattr(mesh, "axis_types", None)
  explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
  return explicit is not None and types is not None and explicit in tuple(types)


def _check_mesh(fn: str, mesh, axis_name: str, num_v: int) -> int:
  if not isinstance(mesh, Mesh):
    raise TypeError(f"{fn}: `mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
  if axis_name not in mesh.shape:
    raise ValueError(
      f"{fn}: `axis_name`={axis_name!r} is not an axis of the mesh (axes {tuple(mesh.shape)})."
    )
  k = mesh.shape[axis_name]
  if num_v % k:
    raise ValueError(
      f"{fn}: the vocabulary size {num_v} must be divisible by the size {k} of mesh axis "
      f"{axis_name!r}."
    )
  return k


def _prepare(fn, mesh, axis_name, arrays, where):
  """Align dense [..., V] inputs (category axis last) and ``where``; dtype and specs."""
  names = [k for k, v in arrays.items() if v is not None]
  kinds = {"p": "probs"}  # probabilities must carry their own category axis (align checks)
  srcs = [_inputs.Source(kinds.get(k, "logits"), k, jnp.asarray(arrays[k])) for k in names]
  for s in srcs:
    if not jnp.issubdtype(s.value.dtype, jnp.floating):
      raise TypeError(f"{fn}: `{s.name}` must be floating point, got dtype {s.value.dtype}.")
  a = _inputs.align(fn, *srcs, axis=-1, where=where)
  _check_mesh(fn, mesh, axis_name, a.shape[-1])
  spec = PartitionSpec(*([None] * (len(a.shape) - 1)), axis_name)
  return dict(zip(names, (s.value for s in a.sources), strict=True)), a, spec


@_checks.roles(
  p="probs",
  q_logits="logits",
  p_logits="logits",
  labels="labels",
  mesh="unchecked",
  axis_name="unchecked",
  where="where",
  base="unchecked",
)
def sharded_cross_entropy(
  p: ArrayLike | None = None,
  *,
  q_logits: ArrayLike,
  p_logits: ArrayLike | None = None,
  labels: ArrayLike | None = None,
  mesh: Mesh,
  axis_name: str,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r"""Cross-entropy :math:`H(p, q)` over the last axis, vocabulary sharded on ``axis_name``.

  .. math:: H(p, q) = -\sum_v p_v \log q_v, \qquad q = \mathrm{softmax}(z^q)

  The same value and gradients as ``jaxdiv.cross_entropy(p, q_logits=...)`` (the target
  ``p`` as probabilities, ``p_logits`` or integer ``labels``), computed with
  :func:`jax.shard_map` over the mesh axis ``axis_name``, which splits the last
  (vocabulary) axis of ``q_logits``, ``p``/``p_logits`` and ``where``: every device
  normalises its block with the global log-normaliser (one ``pmax`` and one ``psum`` of a
  per-row scalar) and the per-row partial sums are ``psum``-ed -- the logits are never
  gathered. The result is per row, replicated over the mesh. ``labels`` are replicated;
  the device owning the label's column contributes its logit.

  Edge conventions as in :func:`jaxdiv.cross_entropy` (negative labels ignored, labels
  :math:`\ge V` give NaN, ``where`` excludes categories and a fully excluded row gives 0).

  Args:
    p: target probabilities ``[..., V]``.
    q_logits: model logits ``[..., V]``.
    p_logits: target as logits instead of ``p``.
    labels: target as integer class indices ``[...]`` instead of ``p``.
    mesh: the :class:`jax.sharding.Mesh`.
    axis_name: the mesh axis that shards the vocabulary; ``V`` must be divisible by its
      size.
    where: boolean mask over categories, broadcastable to ``q_logits``.
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-row cross-entropy.

  Example:
    >>> mesh = jax.make_mesh((1,), ("vocab",))
    >>> z = jnp.log(jnp.array([[0.7, 0.3]]))
    >>> round(float(sharded_cross_entropy(labels=jnp.array([0]), q_logits=z,
    ...                                  mesh=mesh, axis_name="vocab")[0]), 6)
    0.356675

  References:
    Shoeybi et al., "Megatron-LM: training multi-billion parameter language models using
    model parallelism" (2019), section 3.

  See also:
    :func:`jaxdiv.cross_entropy`, :func:`sharded_kl_divergence`,
    :func:`jaxdiv.linear_cross_entropy`.
  """
  fn = "sharded_cross_entropy"
  _inputs.check_base(fn, base)
  ps = _inputs.source(fn, "p", p, p_logits, labels, labels_allowed=True)
  if ps.kind == "labels":
    vals, a, spec = _prepare(fn, mesh, axis_name, {"q_logits": q_logits}, where)
    lab_src = _inputs.align(fn, ps, _inputs.Source("logits", "q_logits", vals["q_logits"]))
    lab = lab_src.sources[0].value
    num_v = a.shape[-1]
    ignored, out_of_range, index = _inputs.label_mask(lab, num_v, a.where)
    row_spec = PartitionSpec(*([None] * lab.ndim))

    def local(zq, index, ignored, out_of_range, where):
      log_q = _numerics.log_softmax(zq, where, axis_name)
      width = zq.shape[-1]
      offset = lax.axis_index(axis_name) * width
      pos = index - offset
      mine = (pos >= 0) & (pos < width) & ~ignored & ~out_of_range
      lq = jnp.take_along_axis(log_q, jnp.clip(pos, 0, width - 1)[..., None], axis=-1)[..., 0]
      # -inf (a masked column) cannot occur here: a label at an excluded column is ignored.
      h = lax.psum(jnp.where(mine, -lq, jnp.zeros_like(lq)), axis_name)
      return jnp.where(out_of_range, jnp.full_like(h, jnp.nan), h)

    where_in = a.where
    specs = (spec, row_spec, row_spec, row_spec, None if where_in is None else spec)
    h = _shard_map(local, mesh, specs, row_spec)(
      vals["q_logits"], index, ignored, out_of_range, where_in
    )
    return _inputs.apply_base(h, base)

  vals, a, spec = _prepare(fn, mesh, axis_name, {ps.name: ps.value, "q_logits": q_logits}, where)
  row_spec = PartitionSpec(*([None] * (len(a.shape) - 1)))
  p_is_logits = ps.kind == "logits"

  def local(pv, zq, where):
    _, log_q, q_zero = _numerics.prob_triple(_numerics.log_softmax(zq, where, axis_name))
    if p_is_logits:
      pr, _, p_zero = _numerics.prob_triple(_numerics.log_softmax(pv, where, axis_name))
    else:
      pr = _inputs.probs(_inputs.Source("probs", "p", pv), where)
      p_zero = pr == 0
    return _numerics.neg_sum(lax.psum(_numerics.xlogy(pr, p_zero, log_q, q_zero), axis_name))

  specs = (spec, spec, None if a.where is None else spec)
  h = _shard_map(local, mesh, specs, row_spec)(vals[ps.name], vals["q_logits"], a.where)
  return _inputs.apply_base(h, base)


@_checks.roles(
  p="probs",
  q_logits="logits",
  p_logits="logits",
  mesh="unchecked",
  axis_name="unchecked",
  where="where",
  base="unchecked",
)
def sharded_kl_divergence(
  p: ArrayLike | None = None,
  *,
  q_logits: ArrayLike,
  p_logits: ArrayLike | None = None,
  mesh: Mesh,
  axis_name: str,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r""":math:`\mathrm{KL}(p \| q)` over the last axis, with the vocabulary sharded on ``axis_name``.

  .. math:: \mathrm{KL}(p\|q) = \sum_v p_v (\log p_v - \log q_v)

  Mathematical order: ``p`` (probabilities or ``p_logits``, e.g. a teacher) is the
  reference, ``q_logits`` the model. The same value and gradients as
  ``jaxdiv.kl_divergence(p, q_logits=...)``, computed per device on its vocabulary block
  with the global log-normalisers (a ``pmax`` and a ``psum`` of per-row scalars for each
  side) and a final ``psum`` of the per-row partial sums; the logits are never gathered.
  Edge conventions as in :func:`jaxdiv.kl_divergence`. For integer labels use
  :func:`sharded_cross_entropy` (KL with a one-hot target equals cross-entropy).

  Args:
    p: reference probabilities ``[..., V]``.
    q_logits: model logits ``[..., V]``.
    p_logits: reference as logits instead of ``p``.
    mesh: the :class:`jax.sharding.Mesh`.
    axis_name: the mesh axis that shards the vocabulary.
    where: boolean mask over categories, broadcastable to ``q_logits``.
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-row :math:`\mathrm{KL}(p\|q)`.

  Example:
    >>> mesh = jax.make_mesh((1,), ("vocab",))
    >>> z = jnp.array([[0.0, 1.0]])
    >>> float(sharded_kl_divergence(p_logits=z, q_logits=z, mesh=mesh, axis_name="vocab")[0])
    0.0

  References:
    Shoeybi et al., "Megatron-LM" (2019); Kullback & Leibler (1951).

  See also:
    :func:`jaxdiv.kl_divergence`, :func:`sharded_cross_entropy`.
  """
  fn = "sharded_kl_divergence"
  _inputs.check_base(fn, base)
  ps = _inputs.source(fn, "p", p, p_logits)
  vals, a, spec = _prepare(fn, mesh, axis_name, {ps.name: ps.value, "q_logits": q_logits}, where)
  row_spec = PartitionSpec(*([None] * (len(a.shape) - 1)))
  p_is_logits = ps.kind == "logits"

  def local(pv, zq, where):
    _, log_q, q_zero = _numerics.prob_triple(_numerics.log_softmax(zq, where, axis_name))
    if p_is_logits:
      pr, log_p, p_zero = _numerics.prob_triple(_numerics.log_softmax(pv, where, axis_name))
    else:
      pr = _inputs.probs(_inputs.Source("probs", "p", pv), where)
      log_p, p_zero = _numerics.safe_log(pr)
    terms = _numerics.rel_entr(pr, p_zero, log_p, log_q, q_zero)
    return lax.psum(jnp.sum(terms, axis=-1), axis_name)

  specs = (spec, spec, None if a.where is None else spec)
  d = _shard_map(local, mesh, specs, row_spec)(vals[ps.name], vals["q_logits"], a.where)
  return _inputs.apply_base(d, base)


# ---------------------------------------------------------------------------
# Vocabulary-parallel fused losses: the weight [D, V] sharded along V, no logits formed.
#
# Each device runs the fused block loops of jaxdiv._fused_losses over its own columns of
# the weight; the per-row statistics of jaxdiv._blocks merge across the shards like the
# blocks of one device's loop (one pmax of the maxima, one psum of the rescaled sums),
# and the closed-form derivative rules take the merged statistics as they are.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Sharded:
  """A fused loss over a vocabulary shard: ``stats`` returns the *merged* statistics.

  Used as ``Static.loss`` by the fused driver (``_fused_losses._forward``/``_backward``),
  which calls ``stats`` per block of rows inside :func:`jax.shard_map`.
  """

  kind: str  # "ce", "kl" or "js"
  vocab: str  # mesh axis sharding the vocabulary
  data: str | None  # mesh axis sharding the rows, if any
  num_v: int  # the global vocabulary size

  def offset(self, pb):
    return lax.axis_index(self.vocab) * pb.num_v

  def stats(self, pb, st, rows):
    return {"ce": self._ce_stats, "kl": self._kl_stats, "js": self._js_stats}[self.kind](
      pb, st, rows
    )

  def value(self, pb, st, stats):
    if self.kind == "kl":
      return L.KL.value(pb, st, stats)
    if self.kind == "js":
      return L.JensenShannon.value(pb, st, stats)
    m, t, zy, u, excluded = stats
    ignored, out_of_range = self._label_flags(pb.labels, excluded)
    log_s = jnp.log1p(t)
    loss = log_s - (zy - B.finite_or_zero(m))
    if st.smoothing:
      eps = pb.opts["smoothing"]
      loss = (1 - eps) * loss + eps * (log_s - u / pb.opts["included"])
    if st.z_loss:
      lse = m + log_s
      loss = loss + pb.opts["z_loss"] * lse * lse
    loss = jnp.where(ignored, jnp.zeros_like(loss), loss)
    return jnp.where(out_of_range, jnp.full_like(loss, jnp.nan), loss)

  def dlogits(self, pb, st, rows, cols, stats, g, needs):
    if self.kind == "kl":
      return L.KL.dlogits(pb, st, rows, cols, stats, g, needs)
    if self.kind == "js":
      return L.JensenShannon.dlogits(pb, st, rows, cols, stats, g, needs)
    m, t, zy, _, excluded = stats
    labels = pb.labels_rows(rows)
    ignored, out_of_range = self._label_flags(labels, excluded)
    g = jnp.where(ignored | out_of_range, jnp.zeros_like(g), g)
    blk = pb.block("q", rows, cols)
    lse = B.Lse(m, t)
    p = jnp.exp(B.log_probs(blk.z, lse))
    # log q_y = (z_y - m) - log1p(t); q_y - 1 = expm1(log q_y) keeps a confident row's digits
    lp_y = (zy - B.finite_or_zero(m)) - B.log_norm(lse)
    dy = jnp.expm1(lp_y)
    coef = p
    if st.z_loss:
      c = 2 * pb.opts["z_loss"] * (m + B.log_norm(lse))
      coef = coef + jnp.where(ignored, jnp.zeros_like(c), c)[:, None] * p
      dy = dy + c * jnp.exp(lp_y)
    if st.smoothing:
      eps = pb.opts["smoothing"]
      share = eps / pb.opts["included"]
      kept = jnp.ones(cols.size, bool) if blk.keep is None else blk.keep
      coef = coef - jnp.where(kept, share, jnp.zeros_like(share))
      dy = dy + eps - share
    pos = labels - self.offset(pb)
    is_y = (jnp.arange(cols.size) + cols.start)[None, :] == pos[:, None]
    if cols.valid is not None:
      is_y = is_y & cols.valid
    return {"q": (g[:, None] * jnp.where(is_y, dy[:, None], coef), blk)}

  def dmix(self, pb, st, stats, g):
    d = L.JensenShannon.dmix(pb, st, stats, g)
    return d if self.data is None else lax.psum(d, self.data)

  def _label_flags(self, labels, excluded):
    return (labels < 0) | excluded, labels >= self.num_v

  # -- statistics: a local pass over this shard's columns, then one pmax and one psum --

  def _ce_stats(self, pb, st, rows):
    n = rows.size
    labels = pb.labels_rows(rows)
    pos = labels - self.offset(pb)  # the label's column in this shard (outside it elsewhere)

    def body(cols, carry):
      lse, zy, u, cnt = carry
      blk = pb.block("q", rows, cols)
      new = B.lse_merge(lse, B.lse_block(blk.z))
      zy = jnp.maximum(zy, B.label_logit(blk, cols, pos))
      if st.smoothing:  # sum of (z - m) over the included categories, m the running max
        mf_old, mf = B.finite_or_zero(lse.m), B.finite_or_zero(new.m)
        kept = jnp.ones(cols.size, bool) if blk.keep is None else blk.keep
        rel = jnp.where(kept, blk.z - mf[:, None], jnp.zeros_like(blk.z))
        u = u - cnt * (mf - mf_old) + jnp.sum(rel, axis=-1)
        cnt = cnt + jnp.sum(kept).astype(cnt.dtype)
      return new, zy, u, cnt

    zeros = jnp.zeros((n,), pb.dtype)
    init = (B.lse_empty(n, pb.dtype), jnp.full((n,), -jnp.inf, pb.dtype), zeros, zeros)
    lse, zy, u, cnt = pb.over_vocab(body, init)
    m, zy = _pmax_rows((lse.m, zy), self.vocab)
    sums = [*_lse_parts(lse, m)]
    if st.smoothing:  # each shard's sum of (z - m_shard), moved to the global maximum
      sums.append(u - cnt * (B.finite_or_zero(m) - B.finite_or_zero(lse.m)))
    if pb.where is not None:  # the label's owner knows whether it is an excluded category
      mine = (pos >= 0) & (pos < pb.num_v)
      excl = mine & ~pb.where[jnp.clip(pos, 0, pb.num_v - 1)]
      sums.append(excl.astype(pb.dtype))
    sums = _psum_rows(sums, self.vocab)
    t = _lse_total(m, *sums[:2])
    u = sums[2] if st.smoothing else zeros
    excluded = sums[-1] > 0 if pb.where is not None else jnp.zeros((n,), bool)
    return m, t, zy, u, excluded

  def _kl_stats(self, pb, st, rows):
    n = rows.size
    # One pass, as jaxdiv._fused_losses.KL, keeping the shard's accumulator
    # a = sum e^{z^p - m_p} ((z^p - m_p) - (z^q - m_q)) instead of the shard's KL.

    def step(cols, carry):
      sp, sq, a, hit = carry
      zp, zq = pb.block("p", rows, cols).z, pb.block("q", rows, cols).z
      sp_new = B.lse_merge(sp, B.lse_block(zp))
      sq_new = B.lse_merge(sq, B.lse_block(zq))
      a = _move_kl_sum(a, sp, sq, sp_new.m, sq_new.m)
      mp, mq = B.finite_or_zero(sp_new.m), B.finite_or_zero(sq_new.m)
      p_zero, q_zero = zp == -jnp.inf, zq == -jnp.inf
      both = ~(p_zero | q_zero)
      d = jnp.where(both, (zp - mp[:, None]) - (zq - mq[:, None]), jnp.zeros_like(zp))
      a = a + jnp.sum(jnp.where(p_zero, jnp.zeros_like(zp), jnp.exp(zp - mp[:, None])) * d, -1)
      hit = hit | jnp.any(q_zero & ~p_zero, axis=-1)
      return sp_new, sq_new, a, hit

    init = (B.lse_empty(n, pb.dtype), B.lse_empty(n, pb.dtype))
    init += (jnp.zeros((n,), pb.dtype), jnp.zeros((n,), bool))
    sp, sq, a, hit = pb.over_vocab(step, init)
    mp, mq = _pmax_rows((sp.m, sq.m), self.vocab)
    a = _move_kl_sum(a, sp, sq, mp, mq)
    sums = _psum_rows(
      (*_lse_parts(sp, mp), *_lse_parts(sq, mq), a, hit.astype(pb.dtype)), self.vocab
    )
    tp, tq = _lse_total(mp, *sums[0:2]), _lse_total(mq, *sums[2:4])
    sp, sq = B.Lse(mp, tp), B.Lse(mq, tq)
    kl = sums[4] / (1 + tp) - B.log_norm(sp) + B.log_norm(sq)
    kl = jnp.where(sums[5] > 0, jnp.inf, kl)  # the empty-row rules are KL.value's
    return mp, tp, mq, tq, kl

  def _js_stats(self, pb, st, rows):
    sp, sq = pb.norms(rows)
    mp, mq = _pmax_rows((sp.m, sq.m), self.vocab)
    sums = _psum_rows((*_lse_parts(sp, mp), *_lse_parts(sq, mq)), self.vocab)
    norms = (B.Lse(mp, _lse_total(mp, *sums[0:2])), B.Lse(mq, _lse_total(mq, *sums[2:4])))

    def terms(mix):
      _, _, lp, lq, lm = mix
      return B.weighted(lp, lp - lm), B.weighted(lq, lq - lm)

    stats = L._second_pass(pb, rows, norms, terms, 2)
    return stats[:4] + tuple(_psum_rows(stats[4:], self.vocab))


def _pmax_rows(xs, axis_name):
  """``pmax`` of several ``[n]`` row statistics in one all-reduce."""
  return tuple(lax.pmax(jnp.stack(xs), axis_name))


def _psum_rows(xs, axis_name):
  """``psum`` of several ``[n]`` row statistics in one all-reduce."""
  return list(lax.psum(jnp.stack(xs), axis_name))


def _lse_parts(s, m):
  """A shard's share of the merged excess (see ``_blocks.lse_all_reduce``) and its tie count."""
  top = s.m == m
  part = jnp.where(top, s.t, (1 + s.t) * jnp.exp(s.m - B.finite_or_zero(m)))
  return part, top.astype(s.t.dtype)


def _lse_total(m, part, n_top):
  t = part + n_top - 1
  return jnp.where(m == -jnp.inf, -jnp.ones_like(t), t)


def _move_kl_sum(a, sp, sq, mp, mq):
  """The KL accumulator over the maxima ``(sp.m, sq.m)`` moved to the maxima ``(mp, mq)``."""
  f = B.finite_or_zero
  shift = (f(mp) - f(sp.m)) - (f(mq) - f(sq.m))
  return jnp.exp(sp.m - f(mp)) * (a - shift * (1 + sp.t))


def _sharded_problem(st, arrays, labels, where, opts):
  pb = L._problem(st, arrays, labels, where, opts)
  if st.smoothing:  # the smoothing spreads over the included categories of every shard
    k = jnp.asarray(pb.num_v) if where is None else jnp.sum(where)
    pb = pb._replace(opts={**pb.opts, "included": lax.psum(k, st.loss.vocab).astype(pb.dtype)})
  return pb


class _Layout(NamedTuple):
  """The static part of a sharded fused call: the loss and how its arguments are split."""

  st: L.Static
  mesh: Mesh
  arg_specs: tuple  # specs of (arrays, labels, where), None for an absent argument
  opt_names: tuple


def _smap(f, mesh, in_specs, out_specs):
  # The collectives are explicit and nothing differentiates through the map (the custom
  # VJP sits outside it), so the replication of the outputs is the code's to guarantee.
  if hasattr(jax, "shard_map"):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
  from jax.experimental.shard_map import shard_map  # jax < 0.7

  return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def _specs(lay: _Layout):
  arrays, labels, where = lay.arg_specs[:6], *lay.arg_specs[6:]
  return arrays, labels, where, {k: PartitionSpec() for k in lay.opt_names}


def _forward_map(lay: _Layout, arrays, labels, where, opts):
  """``(loss, stats)`` per row, computed on every shard; rows sharded like ``labels``."""
  rows = PartitionSpec(lay.st.loss.data)

  def local(arrays, labels, where, opts):
    return L._forward(lay.st, _sharded_problem(lay.st, arrays, labels, where, opts))

  return _smap(local, lay.mesh, _specs(lay), rows)(arrays, labels, where, opts)


def _sharded_impl(lay, arrays, labels, where, opts):
  return _forward_map(lay, arrays, labels, where, opts)[0]


def _sharded_fwd(lay, arrays, labels, where, opts):
  pairs = zip(L._SIDE_KEYS, arrays, strict=True)
  needs = {k: None for k, a in pairs if a is not None and a.perturbed}
  if "mix" in opts and opts["mix"].perturbed:
    needs["opt", "mix"] = None
  unwrap = lambda a: None if a is None else a.value  # noqa: E731
  arrays = tuple(unwrap(a) for a in arrays)
  labels, where = unwrap(labels), unwrap(where)
  opts = {k: v.value for k, v in opts.items()}
  loss, stats = _forward_map(lay, arrays, labels, where, opts)
  return loss, (arrays, labels, where, opts, stats, needs)


def _sharded_bwd(lay, res, g):
  arrays, labels, where, opts, stats, needs = res
  st, vocab, data = lay.st, lay.st.loss.vocab, lay.st.loss.data
  keys = tuple(k for k in L._SIDE_KEYS if k in needs)
  rows = PartitionSpec(data)

  def local(arrays, labels, where, opts, stats, g):
    pb = _sharded_problem(st, arrays, labels, where, opts)
    acc, dmix = L._backward(st, pb, stats, g, needs)
    out = []
    for key in keys:
      d = acc[key]
      if key[1] == "hidden":  # every shard's columns contribute to each row's hidden state
        d = lax.psum(d, vocab)
      elif key[1] == "weight" and data is not None:  # every block of rows contributes
        d = lax.psum(d, data)
      out.append(d)
    return tuple(out), dmix  # dmix: summed over the rows by the loss's dmix

  arr_specs = lay.arg_specs[:6]
  out_specs = (tuple(arr_specs[L._SIDE_KEYS.index(k)] for k in keys), PartitionSpec())
  in_specs = (*_specs(lay), rows, rows)
  grads, dmix = _smap(local, lay.mesh, in_specs, out_specs)(arrays, labels, where, opts, stats, g)
  grads = dict(zip(keys, grads, strict=True))
  d_arrays = tuple(
    grads[k].astype(a.dtype) if k in grads else None
    for k, a in zip(L._SIDE_KEYS, arrays, strict=True)
  )
  d_opts = {k: None for k in opts}
  if dmix is not None:
    d_opts["mix"] = dmix.astype(opts["mix"].dtype)
  return d_arrays, None, None, d_opts


_sharded_vjp = jax.custom_vjp(_sharded_impl, nondiff_argnums=(0,))
_sharded_vjp.defvjp(_sharded_fwd, _sharded_bwd, symbolic_zeros=True)


@functools.lru_cache(maxsize=256)
def _entry(lay: _Layout):
  """One jitted function per layout, so that eager calls do not recompile."""

  def run(arrays, labels, where, opts):
    if _explicit(lay.mesh):  # a mesh with Explicit axes needs inputs with the exact spec
      arrays, labels, where, _ = jax.tree.map(
        lambda x, s: jax.sharding.reshard(x, NamedSharding(lay.mesh, s)),
        (arrays, labels, where, opts),
        _specs(lay),
      )
    return _sharded_vjp(lay, arrays, labels, where, opts)

  return jax.jit(run)


def _linear_sharded(
  fn, kind, arrays, labels, where, opts, *, mesh, axis_name, data_axis_name, chunks, flags
):
  """Check the mesh, then run the fused loss on every shard of the flattened inputs."""
  q_h, q_w, q_z = arrays[3:]
  num_rows = (q_h if q_h is not None else q_z).shape[0]
  num_v = (q_w if q_w is not None else q_z).shape[1]
  k = _check_mesh(fn, mesh, axis_name, num_v)
  local_rows = num_rows
  if data_axis_name is not None:
    if data_axis_name not in mesh.shape or data_axis_name == axis_name:
      raise ValueError(
        f"{fn}: `data_axis_name`={data_axis_name!r} must be an axis of the mesh (axes "
        f"{tuple(mesh.shape)}) other than `axis_name`={axis_name!r}."
      )
    r = mesh.shape[data_axis_name]
    if num_rows % r:
      raise ValueError(
        f"{fn}: the number of rows {num_rows} (the batch dimensions of the hidden states, "
        f"flattened) must be divisible by the size {r} of mesh axis {data_axis_name!r}."
      )
    local_rows = num_rows // r
  P = PartitionSpec
  loss = _Sharded(kind, axis_name, data_axis_name, num_v)
  st = _fused._static(fn, loss, local_rows, num_v // k, *chunks, **flags)
  # hidden: rows over the data axis, replicated over V; weight: columns over V; logits: both
  specs = (P(data_axis_name, None), P(None, axis_name), P(data_axis_name, axis_name))
  arg_specs = tuple(None if a is None else specs[i % 3] for i, a in enumerate(arrays))
  arg_specs += (None if labels is None else P(data_axis_name),)
  arg_specs += (None if where is None else P(axis_name),)
  lay = _Layout(st, mesh, arg_specs, tuple(opts))
  try:
    return _entry(lay)(arrays, labels, where, opts)
  except (TypeError, NotImplementedError) as e:  # jvp of the custom VJP, or of its pmax
    if "forward-mode autodiff" in str(e) or "rule for 'pmax'" in str(e):
      instead = {"ce": "sharded_cross_entropy", "kl": "sharded_kl_divergence"}.get(kind)
      raise TypeError(
        f"{fn} has reverse-mode derivatives only (jax.grad, jax.vjp): no jax.jvp, "
        f"jax.jacfwd, jax.linearize or jax.hessian. For those use "
        f"{'jaxdiv.' + instead if instead else 'the core functions'} on materialised logits."
      ) from None
    raise


_MESH_ROLES = dict(mesh="unchecked", axis_name="unchecked", data_axis_name="unchecked")
_HEAD_ROLES = _fused._HEAD_ROLES  # temperature and soft_cap, as the one-device losses


@_checks.roles(
  hidden="finite",
  weight="classifier",
  labels="labels",
  **_MESH_ROLES,
  **_HEAD_ROLES,
  z_loss="unchecked",
  label_smoothing="unchecked",
  where="where",
  chunk_size="unchecked",
  token_chunk_size="unchecked",
  base="unchecked",
)
def sharded_linear_cross_entropy(
  hidden: ArrayLike,
  weight: ArrayLike,
  labels: ArrayLike,
  *,
  mesh: Mesh,
  axis_name: str,
  data_axis_name: str | None = None,
  temperature: float = 1.0,
  soft_cap: float | None = None,
  z_loss: float = 0.0,
  label_smoothing: float = 0.0,
  where: ArrayLike | None = None,
  chunk_size: int | None = None,
  token_chunk_size: int | None = None,
  base: float | None = None,
) -> Array:
  r"""Fused cross-entropy of ``softmax(hidden @ weight)`` against ``labels``, V sharded.

  .. math:: H(\mathbb{1}_y, q) = \log\sum_v e^{z_v} - z_y, \qquad z = h W

  The same value and gradients as :func:`jaxdiv.linear_cross_entropy` for a weight
  ``[D, V]`` whose vocabulary (columns) is split over the mesh axis ``axis_name`` (tensor
  parallelism of the output head, as in Megatron-LM). Inside :func:`jax.shard_map` each
  device runs the fused block loop over its own columns -- no device ever forms logits
  beyond one ``token_chunk_size x chunk_size`` block, and neither the weight nor the
  logits are gathered. The devices exchange only per-row statistics: one ``pmax`` of
  the row's maximum and the label's logit and one ``psum`` of the rescaled sums (two
  all-reduces of a few scalars per row). With ``data_axis_name`` the rows (the
  flattened batch dimensions of ``hidden`` and ``labels``) are also split over that axis
  of the same mesh; the result is sharded like the rows.

  Gradients come from a custom VJP that recomputes each block on its shard: the weight's
  gradient stays sharded along V like the weight (summed over the data axis, the usual
  data-parallel reduction), the hidden states' gradient is summed over the vocabulary
  axis (one ``[rows, D]`` all-reduce, as any vocabulary-parallel head needs) and stays
  sharded like ``hidden``. Everything is formed from shifted quantities, so the result
  is exact at any logit offset.

  Options as in :func:`jaxdiv.linear_cross_entropy`: ``soft_cap`` (logits
  ``soft_cap * tanh(z / soft_cap)``), then ``temperature`` (``z / T``); ``label_smoothing``
  :math:`\varepsilon` (``1 - eps`` on the label, ``eps`` spread uniformly over the included
  categories of all shards) and ``z_loss`` (adds ``z_loss * logsumexp(z)^2``). Edge
  conventions too: a negative label gives exactly 0 and no gradient, a label ``>= V``
  NaN, ``where`` (a ``[V]`` mask, sharded like the vocabulary) excludes categories and a
  label at an excluded category is ignored. Reverse mode only (no ``jax.jvp``,
  ``jax.jacfwd`` or ``jax.hessian``: use :func:`sharded_cross_entropy` on logits for those).

  Args:
    hidden: ``[..., D]`` hidden states.
    weight: ``[D, V]`` output projection; ``V`` divisible by the size of ``axis_name``.
    labels: ``[...]`` integer class indices (the batch shape of ``hidden``).
    mesh: the :class:`jax.sharding.Mesh`.
    axis_name: the mesh axis that shards the vocabulary.
    data_axis_name: optional mesh axis that shards the rows (the number of rows must be
      divisible by its size); ``None``: rows replicated.
    temperature: divides the (capped) logits.
    soft_cap: optional cap of the logits, ``soft_cap * tanh(z / soft_cap)``.
    z_loss: weight of the ``logsumexp(z)^2`` term.
    label_smoothing: :math:`\varepsilon \in [0, 1]`.
    where: optional boolean ``[V]`` mask of the categories to include.
    chunk_size: vocabulary block size on each device (default 4096, at most ``V / k``).
    token_chunk_size: token block size on each device (default 1024).
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-token cross-entropy, sharded over ``data_axis_name`` (replicated
    without it).

  Example:
    >>> mesh = jax.make_mesh((1,), ("vocab",))
    >>> h = jnp.array([[1.0, 0.0], [0.0, 1.0]]); w = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    >>> loss = sharded_linear_cross_entropy(h, w, jnp.array([0, -1]), mesh=mesh,
    ...                                     axis_name="vocab")
    >>> [round(float(x), 6) for x in loss]  # ln(e^2 + 1) - 2, ignored
    [0.126928, 0.0]

  References:
    Shoeybi et al., "Megatron-LM" (2019), section 3; Wijmans et al., "Cut your losses in
    large-vocabulary language models", ICLR (2025).

  See also:
    :func:`jaxdiv.linear_cross_entropy` (one device), :func:`sharded_cross_entropy`
    (materialised logits), :func:`sharded_linear_kl_divergence`.
  """
  fn = "sharded_linear_cross_entropy"
  _inputs.check_base(fn, base)
  h, w, _ = _fused._side_arrays(fn, "q", hidden, weight, None)
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_:
    raise TypeError(f"{fn}: `labels` must be an integer array, got dtype {labels.dtype}.")
  if labels.shape != h.shape[:-1]:
    raise ValueError(
      f"{fn}: `labels` must have the batch shape of `hidden` {h.shape[:-1]} "
      f"(hidden {h.shape} without its last axis); got {labels.shape}."
    )
  batch, num_v = h.shape[:-1], w.shape[1]
  where = _fused._where(fn, where, num_v)
  opts, flags = _fused._head_options(fn, temperature, soft_cap)  # checked as on one device
  zl, zlv = _fused._scalar(fn, "z_loss", z_loss, low=0.0)
  if zlv != 0.0:
    opts["z_loss"], flags["z_loss"] = zl, True
  eps, epsv = _fused._scalar(fn, "label_smoothing", label_smoothing, low=0.0, high=1.0)
  if epsv != 0.0:
    opts["smoothing"], flags["smoothing"] = eps, True
  arrays = (None, None, None, h.reshape(-1, h.shape[-1]), w, None)
  loss = _linear_sharded(
    fn,
    "ce",
    arrays,
    labels.reshape(-1),
    where,
    opts,
    mesh=mesh,
    axis_name=axis_name,
    data_axis_name=data_axis_name,
    chunks=(chunk_size, token_chunk_size),
    flags=flags,
  )
  return _inputs.apply_base(loss.reshape(batch), base)


@_checks.roles(**_checks.LINEAR_PAIR, **_MESH_ROLES, **_HEAD_ROLES)
def sharded_linear_kl_divergence(
  p_hidden: ArrayLike | None = None,
  p_weight: ArrayLike | None = None,
  q_hidden: ArrayLike | None = None,
  q_weight: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  mesh: Mesh,
  axis_name: str,
  data_axis_name: str | None = None,
  temperature: float = 1.0,
  soft_cap: float | None = None,
  where: ArrayLike | None = None,
  chunk_size: int | None = None,
  token_chunk_size: int | None = None,
  base: float | None = None,
) -> Array:
  r""":math:`\mathrm{KL}(p \| q)` per token of two linear heads, the vocabulary sharded.

  .. math:: \mathrm{KL}(p\|q) = \sum_v p_v (\log p_v - \log q_v),
     \quad p = \mathrm{softmax}(h^p W^p),\ q = \mathrm{softmax}(h^q W^q)

  Mathematical order: ``p`` is the reference (the teacher, for forward-KL distillation).
  The same value and gradients as :func:`jaxdiv.linear_kl_divergence`, with each
  weight ``[D, V]`` (or logits ``[..., V]``) split along the vocabulary over the mesh
  axis ``axis_name``: every device runs the fused one-pass loop over its own columns and
  the devices exchange one ``pmax`` (both rows' maxima) and one ``psum`` (both rescaled
  sums of exponentials, the rescaled KL accumulator and the ``q = 0 < p`` flag) of
  per-row scalars. No logits, weights or ``N x V`` arrays are gathered; gradients stay
  sharded like their inputs (see :func:`sharded_linear_cross_entropy` for the two
  reductions of the backward pass). ``data_axis_name`` also splits the rows.

  Sides, options (``temperature`` divides both sides' logits, with no ``T^2`` factor;
  ``soft_cap``) and edge conventions as in :func:`jaxdiv.linear_kl_divergence`; a
  ``p_logits``/``q_logits`` side is sharded over both axes like the logits it stands for.
  Reverse mode only (no ``jax.jvp``, ``jax.jacfwd`` or ``jax.hessian``).

  Args:
    p_hidden, p_weight, q_hidden, q_weight, p_logits, q_logits: the two distributions, as
      in :func:`jaxdiv.linear_kl_divergence`.
    mesh: the :class:`jax.sharding.Mesh`.
    axis_name: the mesh axis that shards the vocabulary.
    data_axis_name: optional mesh axis that shards the rows.
    temperature: divides both sides' logits.
    soft_cap: optional cap, ``soft_cap * tanh(z / soft_cap)``, before the temperature.
    where: optional boolean ``[V]`` mask of the categories to include.
    chunk_size: vocabulary block size on each device (default 4096).
    token_chunk_size: token block size on each device (default 1024).
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-token :math:`\mathrm{KL}(p\|q)`, sharded over ``data_axis_name``.

  Example:
    >>> mesh = jax.make_mesh((1,), ("vocab",))
    >>> h = jnp.ones((1, 2)); w = jnp.array([[1.0, 0.0], [0.0, 0.0]])
    >>> float(sharded_linear_kl_divergence(h, w, h, w, mesh=mesh, axis_name="vocab")[0])
    0.0

  References:
    Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network" (2015);
    Shoeybi et al., "Megatron-LM" (2019).

  See also:
    :func:`jaxdiv.linear_kl_divergence`, :func:`sharded_kl_divergence`,
    :func:`sharded_linear_jensen_shannon_divergence`.
  """
  fn = "sharded_linear_kl_divergence"
  _inputs.check_base(fn, base)
  p, q, batch, num_v, where = _fused._pair(
    fn, p_hidden, p_weight, p_logits, q_hidden, q_weight, q_logits, where
  )
  opts, flags = _fused._head_options(fn, temperature, soft_cap)
  loss = _linear_sharded(
    fn,
    "kl",
    (*p, *q),
    None,
    where,
    opts,
    mesh=mesh,
    axis_name=axis_name,
    data_axis_name=data_axis_name,
    chunks=(chunk_size, token_chunk_size),
    flags=flags,
  )
  return _inputs.apply_base(loss.reshape(batch), base)


@_checks.roles(**_checks.LINEAR_PAIR, **_MESH_ROLES, **_HEAD_ROLES, weight="unchecked")
def sharded_linear_jensen_shannon_divergence(
  p_hidden: ArrayLike | None = None,
  p_weight: ArrayLike | None = None,
  q_hidden: ArrayLike | None = None,
  q_weight: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  mesh: Mesh,
  axis_name: str,
  data_axis_name: str | None = None,
  weight: ArrayLike = 0.5,
  temperature: float = 1.0,
  soft_cap: float | None = None,
  where: ArrayLike | None = None,
  chunk_size: int | None = None,
  token_chunk_size: int | None = None,
  base: float | None = None,
) -> Array:
  r"""Weighted Jensen--Shannon divergence per token of two linear heads, vocabulary sharded.

  .. math:: \mathrm{JS}_w(p\|q) = w\,\mathrm{KL}(p\|m) + (1 - w)\,\mathrm{KL}(q\|m),
     \qquad m = w p + (1 - w) q

  The same value and gradients (also in the mixture weight ``weight``) as
  :func:`jaxdiv.linear_jensen_shannon_divergence`, with the vocabulary split over the
  mesh axis ``axis_name``. Two passes over each device's columns: the log-normalisers
  (merged with one ``pmax`` and one ``psum`` of per-row scalars), then the mixture terms
  with the global normalisers (one ``psum`` of the two per-row sums). Nothing ``N x V``
  or ``D x V`` is gathered; see :func:`sharded_linear_cross_entropy` for the gradients'
  shardings and ``data_axis_name``. Reverse mode only.

  Args:
    p_hidden, p_weight, q_hidden, q_weight, p_logits, q_logits: the two distributions, as
      in :func:`jaxdiv.linear_kl_divergence`.
    mesh: the :class:`jax.sharding.Mesh`.
    axis_name: the mesh axis that shards the vocabulary.
    data_axis_name: optional mesh axis that shards the rows.
    weight: the mixture weight :math:`w \in [0, 1]` of ``p`` (a scalar).
    temperature: divides both sides' logits.
    soft_cap: optional cap, ``soft_cap * tanh(z / soft_cap)``, before the temperature.
    where: optional boolean ``[V]`` mask of the categories to include.
    chunk_size: vocabulary block size on each device (default 4096).
    token_chunk_size: token block size on each device (default 1024).
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-token :math:`\mathrm{JS}_w(p\|q)`, sharded over ``data_axis_name``.

  Example:
    >>> mesh = jax.make_mesh((1,), ("vocab",))
    >>> h = jnp.ones((1, 1)); w1 = jnp.array([[50.0, 0.0]]); w2 = jnp.array([[0.0, 50.0]])
    >>> js = sharded_linear_jensen_shannon_divergence(h, w1, h, w2, mesh=mesh, axis_name="vocab")
    >>> round(float(js[0]), 6)  # ln 2
    0.693147

  References:
    Lin, "Divergence measures based on the Shannon entropy", IEEE Trans. Inf. Theory
    (1991); Agarwal et al., "On-policy distillation of language models", ICLR (2024).

  See also:
    :func:`jaxdiv.linear_jensen_shannon_divergence`, :func:`sharded_linear_kl_divergence`.
  """
  fn = "sharded_linear_jensen_shannon_divergence"
  _inputs.check_base(fn, base)
  p, q, batch, num_v, where = _fused._pair(
    fn, p_hidden, p_weight, p_logits, q_hidden, q_weight, q_logits, where
  )
  weight, _ = _fused._scalar(
    fn,
    "weight",
    weight,
    low=0.0,
    high=1.0,
    what=" (the mixture weight w; the projection matrices are `p_weight`/`q_weight`)",
  )
  opts, flags = _fused._head_options(fn, temperature, soft_cap)
  present = [x for x in (*p, *q) if x is not None]
  opts["mix"] = jnp.asarray(weight).astype(_numerics.compute_dtype(jnp.result_type(*present)))
  loss = _linear_sharded(
    fn,
    "js",
    (*p, *q),
    None,
    where,
    opts,
    mesh=mesh,
    axis_name=axis_name,
    data_axis_name=data_axis_name,
    chunks=(chunk_size, token_chunk_size),
    flags=flags,
  )
  return _inputs.apply_base(loss.reshape(batch), base)
