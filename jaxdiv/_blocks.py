r"""Blocks of a linear head's logits and the per-row statistics fused losses are built from.

The fused losses (:mod:`jaxdiv._fused`) never form the ``[N, V]`` logits ``hidden @ weight``:
they walk the tokens and the vocabulary in blocks (:func:`loop`), form one block of logits
at a time (:func:`logits`), and fold it into per-row statistics. Everything here works on
one block and knows nothing about which loss is being computed.

Per-row statistics and how they combine
---------------------------------------
Every statistic is a small tuple per row that can be merged *associatively*, so the same
rules combine the blocks of one device's vocabulary loop and the vocabulary shards of
several devices (``lax.pmax`` / ``lax.psum`` over a mesh axis):

* :class:`Lse`, the log-normaliser of a row as ``(m, t)``: the running maximum ``m`` and
  the *excess* ``t = sum_v exp(z_v - m) - 1`` (the sum without one arg-max term, so
  ``log sum exp z = m + log1p(t)``). Keeping ``m`` apart from ``log1p(t)`` is what makes a
  loss exact at any logit offset: log-probabilities are ``(z - m) - log1p(t)``, formed from
  shifted quantities, never ``z - lse`` after the shift was added back; and ``log1p(t)``
  keeps the digits of ``-log p`` of a confident row (``p = 0.99999``), which ``log(s)``
  with ``s`` rounded near 1 loses. Merging: :func:`lse_merge` (two blocks),
  :func:`lse_all_reduce` (shards: one ``pmax`` and one ``psum``; see its docstring).
* A label's logit: each block (or shard) contributes ``-inf`` unless it holds the label,
  so blocks merge by ``max`` (:func:`label_logit`) and shards by ``pmax``.
* Shifted sums ``sum_v exp(z_v - m) f_v`` over a running maximum (the KL accumulator):
  when the maximum moves from ``m`` to ``m'`` the sum is multiplied by ``exp(m - m')``
  (:func:`rescale`); across shards, rescale each shard's sum to the global ``m`` and
  ``psum``.
* Sums of terms formed from *final* log-probabilities (Jensen--Shannon's mixture, total
  variation, the skew KL): a second pass once the row's :class:`Lse` is known (globally,
  after :func:`lse_all_reduce`), then a plain ``psum``.

The derivative rules of the fused losses depend only on these statistics and on the
recomputed block of logits, not on how the statistics were computed, so a
vocabulary-parallel version can reuse them per shard.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# ---------------------------------------------------------------------------
# The blocked loop
# ---------------------------------------------------------------------------


class Range(NamedTuple):
  """A block ``[start, start + size)`` of rows or categories."""

  start: Array | int  # traced inside a loop
  size: int  # static
  valid: Array | None  # [size] bool: False where an earlier block already covered the position


def loop(total: int, size: int, body, carry):
  """``body(block, carry)`` over ``[0, total)`` in blocks of ``size <= total``.

  One ``fori_loop`` whose body is traced once, whatever ``total % size``: when ``size``
  does not divide ``total`` the last block is shifted back to end at ``total`` (so no
  input is padded or copied) and its ``valid`` mask marks the positions it adds; the body
  must leave the others out (a category as ``-inf``, a row with zero cotangent). A single
  block needs no loop at all.
  """
  num_blocks, rem = -(-total // size), total % size
  if num_blocks == 0:
    return carry
  if num_blocks == 1:
    return body(Range(0, size, None), carry)

  def step(i, carry):
    start = i * size
    if not rem:
      return body(Range(start, size, None), carry)
    shifted = jnp.minimum(start, total - size)
    return body(Range(shifted, size, shifted + jnp.arange(size) >= start), carry)

  return lax.fori_loop(0, num_blocks, step, carry)


# ---------------------------------------------------------------------------
# One block of logits
# ---------------------------------------------------------------------------


class Side(NamedTuple):
  """One distribution: ``hidden @ weight`` (``hidden`` in the compute dtype) or logits."""

  hidden: Array | None  # [N, D]
  weight: Array | None  # [D, V]
  logits: Array | None  # [N, V]


class Head(NamedTuple):
  """The map from raw logits ``r`` to the logits a loss sees: ``cap tanh(r / cap) / T``."""

  soft_cap: Array | None  # scalar, or None for no cap
  temperature: Array | None  # scalar, or None for T = 1


class Block(NamedTuple):
  """Logits of a block of rows and categories."""

  z: Array  # [n, c] transformed logits, -inf where excluded or already covered
  raw: Array  # [n, c] logits before the head's transform (for its derivative)
  keep: Array | None  # [c] bool, or None when every category of the block counts


def logits(side: Side, head: Head, rows: Range, cols: Range, where, dtype) -> Block:
  """The block ``rows x cols`` of ``side``'s logits, transformed by ``head``."""
  if side.logits is not None:
    raw = lax.dynamic_slice(side.logits, (rows.start, cols.start), (rows.size, cols.size))
    raw = raw.astype(dtype)
  else:
    h = lax.dynamic_slice_in_dim(side.hidden, rows.start, rows.size, 0)
    w = lax.dynamic_slice_in_dim(side.weight, cols.start, cols.size, 1).astype(dtype)
    raw = jnp.dot(h, w, preferred_element_type=dtype)
  z = raw
  if head.soft_cap is not None:
    z = head.soft_cap * jnp.tanh(z / head.soft_cap)
  if head.temperature is not None:
    z = z / head.temperature
  keep = cols.valid
  if where is not None:
    m = lax.dynamic_slice_in_dim(where, cols.start, cols.size)
    keep = m if keep is None else keep & m
  if keep is not None:
    z = jnp.where(keep, z, -jnp.inf)
  return Block(z, raw, keep)


def head_derivative(head: Head, block: Block, dz: Array) -> Array:
  """``dz`` (a cotangent of the transformed logits) as a cotangent of the raw logits."""
  if head.temperature is not None:
    dz = dz / head.temperature
  if head.soft_cap is not None:
    th = jnp.tanh(block.raw / head.soft_cap)
    dz = dz * (1 - th * th)
  if block.keep is not None:  # a NaN raw logit outside the block's categories adds nothing
    dz = jnp.where(block.keep, dz, jnp.zeros_like(dz))
  return dz


# ---------------------------------------------------------------------------
# Per-row statistics
# ---------------------------------------------------------------------------


def finite_or_zero(x: Array) -> Array:
  return jnp.where(jnp.isfinite(x), x, jnp.zeros_like(x))


class Lse(NamedTuple):
  """A row's log-normaliser: maximum ``m`` and excess ``t``, ``log sum e^z = m + log1p(t)``.

  An empty row (every logit ``-inf``) is ``m = -inf, t = -1`` (a sum of 0).
  """

  m: Array  # [n]
  t: Array  # [n]


def lse_empty(n: int, dtype) -> Lse:
  return Lse(jnp.full((n,), -jnp.inf, dtype), jnp.full((n,), -1, dtype))


def lse_block(z: Array) -> Lse:
  """The :class:`Lse` of a block ``z [n, c]``: one arg-max term is left out of the sum.

  Every element equal to the maximum contributes ``exp(0) = 1``; those are counted exactly
  (an integer) instead of summed, so that ``t`` carries no rounding of 1.
  """
  m = jnp.max(z, axis=-1)
  mf = finite_or_zero(m)
  at_max = z == m[:, None]
  e = jnp.where(at_max, jnp.zeros_like(z), jnp.exp(z - mf[:, None]))
  t = jnp.sum(e, axis=-1) + (jnp.sum(at_max, axis=-1).astype(z.dtype) - 1)
  return Lse(m, jnp.where(m == -jnp.inf, -jnp.ones_like(t), t))


def lse_merge(a: Lse, b: Lse) -> Lse:
  """The :class:`Lse` of the union of two disjoint sets of categories (associative)."""
  m = jnp.maximum(a.m, b.m)
  mf = finite_or_zero(m)
  ea, eb = jnp.exp(a.m - mf), jnp.exp(b.m - mf)  # 0 for an empty side
  t = jnp.where(a.m >= b.m, a.t + (1 + b.t) * eb, b.t + (1 + a.t) * ea)
  return Lse(m, jnp.where(m == -jnp.inf, -jnp.ones_like(t), t))


def lse_all_reduce(a: Lse, axis_name) -> Lse:
  """:func:`lse_merge` over the shards of a mapped axis (``shard_map``, ``pmap``, ``vmap``).

  With the global maximum ``M = pmax(m_i)``, the shards at the maximum contribute their
  excess ``t_i`` plus one (their own arg-max term), the others ``(1 + t_i) e^{m_i - M}``:
  ``t = psum(top ? t_i : (1 + t_i) e^{m_i - M}) + psum(top) - 1``, exact for ties.
  """
  m = lax.pmax(a.m, axis_name)
  top = a.m == m
  part = jnp.where(top, a.t, (1 + a.t) * jnp.exp(a.m - finite_or_zero(m)))
  t, n_top = lax.psum((part, top.astype(a.t.dtype)), axis_name)
  t = t + n_top - 1
  return Lse(m, jnp.where(m == -jnp.inf, -jnp.ones_like(t), t))


def log_norm(s: Lse) -> Array:
  """``log sum e^{z - m}`` (``-inf`` for an empty row)."""
  return jnp.log1p(s.t)


def log_probs(z: Array, s: Lse) -> Array:
  """``log softmax(z)`` of a block from the row's :class:`Lse`: ``(z - m) - log1p(t)``."""
  lp = (z - finite_or_zero(s.m)[:, None]) - finite_or_zero(log_norm(s))[:, None]
  return jnp.where(z == -jnp.inf, jnp.full_like(lp, -jnp.inf), lp)


def rescale(s_old: Lse, s_new: Lse) -> Array:
  """``exp(m_old - m_new)``: the factor of a sum ``sum e^{z - m_old} f`` when ``m`` moves."""
  return jnp.exp(s_old.m - finite_or_zero(s_new.m))


def label_logit(block: Block, cols: Range, labels: Array) -> Array:
  """``z[label]`` where the label falls in ``cols``, else ``-inf``; blocks merge by max."""
  idx = labels - cols.start
  inside = (idx >= 0) & (idx < cols.size)
  z = jnp.take_along_axis(block.z, jnp.clip(idx, 0, cols.size - 1)[:, None], axis=1)[:, 0]
  return jnp.where(inside, z, jnp.full_like(z, -jnp.inf))


# ---------------------------------------------------------------------------
# Elementwise terms from log-probabilities
# ---------------------------------------------------------------------------


def weighted(lp: Array, x: Array) -> Array:
  """``exp(lp) x``, exactly 0 where ``exp(lp)`` is 0 (so ``0 log 0 = 0`` and ``0 inf = 0``)."""
  p = jnp.exp(lp)
  return jnp.where(p == 0, jnp.zeros_like(p), p * jnp.where(p == 0, jnp.zeros_like(x), x))


def prob_diff(lp: Array, lq: Array) -> Array:
  """``q - p`` from log-probabilities, to the relative precision of the difference.

  ``exp(lq) - exp(lp)`` loses the digits of a small difference of two probabilities near
  1; ``e^a (e^{lq - a} - e^{lp - a})`` with ``a = max(lp, lq)`` is ``e^a`` times
  ``-expm1(-|lq - lp|)``, accurate for every gap.
  """
  a = jnp.maximum(lp, lq)
  gap = jnp.where(a == -jnp.inf, jnp.zeros_like(a), lq - lp)
  d = -jnp.expm1(-jnp.abs(gap)) * jnp.exp(a)
  return jnp.where(gap < 0, -d, d)
