r"""Blocks of logits and the mergeable per-row statistics the fused losses are built from.

The fused losses never form ``[N, V]`` logits ``hidden @ weight``: the drivers
(:mod:`jaxdiv._drivers`) walk the tokens and the vocabulary in blocks (:func:`loop`),
form one block of raw logits per distribution (:func:`raw_block`), and hand it to the loss
definitions of :mod:`jaxdiv._fused_losses`. Everything here works on one block and knows
nothing about which loss is computed.

Per-row statistics and how they combine
---------------------------------------
A loss's per-row statistics are written so that one function, ``reduce(stats, ops)``,
merges them both across the blocks of one device's vocabulary loop and across the
vocabulary shards of a mesh. ``ops`` is an :class:`Ops`: an elementwise maximum and a sum,
either over a leading axis that stacks two blocks' statistics (:data:`BLOCKS`) or over a
named mesh axis (:func:`collective`: one ``pmax`` and one ``psum`` of all the statistics of
a pass). A reduction first takes the maxima, then re-expresses every sum relative to them
and adds; so the rules are written once and hold for blocks and shards alike:

* :class:`Lse`, the log-normaliser of a row as ``(m, t)``: the maximum ``m`` and the
  *excess* ``t = sum_v exp(z_v - m) - 1`` (the sum without one arg-max term, so
  ``log sum exp z = m + log1p(t)``). Keeping ``m`` apart from ``log1p(t)`` makes a loss exact
  at any logit offset: log-probabilities are ``(z - m) - log1p(t)``, formed from shifted
  quantities; and ``log1p(t)`` keeps the digits of ``-log p`` of a confident row
  (``p = 0.99999``), which ``log(s)`` with ``s`` rounded near 1 loses. Ties at the maximum
  are counted exactly (:func:`lse_parts`, :func:`lse_total`).
* A listed category's logit (a label, a stored teacher's top-k): each block or shard
  contributes ``-inf`` unless it holds the category, so they merge by ``max``.
* Sums ``sum_v exp(z_v - m) f_v`` relative to a running maximum: when the maximum moves
  from ``m`` to ``m'`` the sum is multiplied by ``exp(m - m')`` (:func:`rescale`).
* Sums of terms formed from *final* log-probabilities (a mixture, total variation): a
  second pass once the row's :class:`Lse` is known, merged by a plain sum.
"""

from __future__ import annotations

from collections.abc import Callable
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


def rows_of(x: Array | None, rows: Range) -> Array | None:
  """The rows ``rows`` of a per-row array (``[N, ...]``)."""
  return None if x is None else lax.dynamic_slice_in_dim(x, rows.start, rows.size, 0)


def put_rows(buffer: Array, x: Array, rows: Range) -> Array:
  """``buffer`` with the rows ``rows`` set to ``x``; a shifted block keeps the rows before it."""
  if rows.valid is not None:
    old = rows_of(buffer, rows)
    valid = rows.valid.reshape((-1,) + (1,) * (x.ndim - 1))
    x = jnp.where(valid, x, old)
  return lax.dynamic_update_slice_in_dim(buffer, x.astype(buffer.dtype), rows.start, 0)


# ---------------------------------------------------------------------------
# One block of logits
# ---------------------------------------------------------------------------


class Side(NamedTuple):
  """One dense distribution over the vocabulary: ``hidden @ weight``, logits or probabilities.

  ``kind`` is ``"head"`` (``hidden [N, D]`` in the compute dtype, ``weight [D, V]``),
  ``"logits"`` or ``"probs"`` (``values [N, V]``).
  """

  kind: str
  hidden: Array | None
  weight: Array | None
  values: Array | None
  hidden_t: Array | None = None  # [D, N] contiguous, for the weight's gradient (see drivers)


def operand_dtype(storage, compute):
  """The dtype a head's product takes its operands in: 16-bit floats as they are (the
  product accumulates in float32), anything else in the compute dtype."""
  storage = jnp.dtype(storage)
  return storage if storage.itemsize < 4 and jnp.issubdtype(storage, jnp.floating) else compute


def raw_block(side: Side, rows: Range, cols: Range, dtype) -> Array:
  """The block ``rows x cols`` of ``side``'s raw logits (or probabilities), in ``dtype``."""
  if side.kind != "head":
    v = lax.dynamic_slice(side.values, (rows.start, cols.start), (rows.size, cols.size))
    return v.astype(dtype)
  h = rows_of(side.hidden, rows)
  w = lax.dynamic_slice_in_dim(side.weight, cols.start, cols.size, 1).astype(h.dtype)
  return jnp.dot(h, w, preferred_element_type=dtype)


class Head(NamedTuple):
  """The map from raw logits ``r`` to the logits a loss sees: ``cap tanh(r / cap) / T``."""

  soft_cap: Array | None  # scalar, or None for no cap
  temperature: Array | None  # scalar, or None for T = 1


NO_HEAD = Head(None, None)  # the identity transform


def transform(head: Head, raw: Array) -> Array:
  """``cap tanh(r / cap) / T``; a ``-inf`` logit (an impossible category) stays ``-inf``."""
  z = raw
  if head.soft_cap is not None:
    capped = head.soft_cap * jnp.tanh(z / head.soft_cap)
    z = jnp.where(z == -jnp.inf, z, capped)
  if head.temperature is not None:
    z = z / head.temperature
  return z


def shifted(head: Head, raw: Array, m_raw: Array) -> Array:
  """``transform(raw) - transform(m_raw)`` per row (``m_raw [n]`` finite), formed so that it
  is exactly 0 where ``raw == m_raw``, in whichever pass XLA computes it: the difference is
  taken before the transform (for the cap, ``tanh a - tanh b = tanh(a - b) (1 - tanh a
  tanh b)``). ``-inf`` stays ``-inf``."""
  d = raw - m_raw[:, None]
  if head.soft_cap is not None:
    c = head.soft_cap
    capped = c * jnp.tanh(d / c) * (1 - jnp.tanh(raw / c) * jnp.tanh(m_raw / c)[:, None])
    d = jnp.where(raw == -jnp.inf, raw, capped)
  if head.temperature is not None:
    d = d / head.temperature
  return d


def head_derivative(head: Head, raw: Array, dz: Array) -> Array:
  """``dz`` (a cotangent of the transformed logits) as a cotangent of the raw logits."""
  if head.temperature is not None:
    dz = dz / head.temperature
  if head.soft_cap is not None:
    th = jnp.tanh(raw / head.soft_cap)
    dz = dz * (1 - th * th)
  return dz


def exclude(z: Array, keep: Array | None) -> Array:
  """Logits with ``-inf`` where ``keep`` is False (``keep`` broadcasts against ``z``)."""
  return z if keep is None else jnp.where(keep, z, jnp.full_like(z, -jnp.inf))


def zero_unless(keep, x: Array) -> Array:
  return x if keep is None else jnp.where(keep, x, jnp.zeros_like(x))


def finite_or_zero(x: Array) -> Array:
  return jnp.where(jnp.isfinite(x), x, jnp.zeros_like(x))


# ---------------------------------------------------------------------------
# Merging: one rule for blocks and shards
# ---------------------------------------------------------------------------


class Ops(NamedTuple):
  """The two reductions a merge is written in: each maps a tuple of arrays to a tuple."""

  max: Callable
  sum: Callable


def _over_parts(fn):
  return lambda xs: tuple(fn(x, axis=0) for x in xs)


# Two blocks' statistics stacked on a leading axis (see :func:`merge`).
BLOCKS = Ops(_over_parts(jnp.max), _over_parts(jnp.sum))


def _flat_collective(fn, axis_name):
  def apply(xs):
    xs = tuple(xs)
    flat = jnp.concatenate([x.reshape(-1) for x in xs])
    out, start = fn(flat, axis_name), 0
    parts = []
    for x in xs:
      parts.append(out[start : start + x.size].reshape(x.shape))
      start += x.size
    return tuple(parts)

  return apply


def collective(axis_name) -> Ops:
  """The shards of a named mesh axis: each reduction is one ``pmax`` or ``psum``."""
  return Ops(_flat_collective(lax.pmax, axis_name), _flat_collective(lax.psum, axis_name))


def merge(reduce, a, b):
  """Two blocks' statistics merged by a loss's ``reduce(stats, ops)``."""
  return reduce(jax.tree.map(lambda x, y: jnp.stack([x, y]), a, b), BLOCKS)


# ---------------------------------------------------------------------------
# Passes over a block
#
# XLA's CPU backend runs each reduction over a block as one vectorised loop only while its
# elementwise producer is arithmetic and shares no computed intermediate with another
# reduction: a compare or select makes the loop scalar, and a shared ``z - m`` is written
# out in full (measured 4-9x slower on a [256, 32768] block; docs' performance page). So
# every pass over a block below is arithmetic, with its own copy of the per-row
# statistics it reads (:func:`fresh`), and a zero probability is a log-probability
# clamped to a finite ``-BIG`` (:func:`clamp`) whose exponential is exactly 0, so that
# ``0 * log 0`` is ``0 * finite`` instead of NaN. Where a value must become ``+inf``
# (``p > 0 = q``), a separate reduction says so.
# ---------------------------------------------------------------------------


def fresh(*xs):
  """New copies of per-row statistics for one pass over a block (see above)."""
  out = lax.optimization_barrier(tuple(xs))
  return out if len(xs) > 1 else out[0]


def big(dtype) -> float:
  """A finite magnitude whose exponential's reciprocal is 0: ``exp(-big) == 0``."""
  return float(jnp.finfo(dtype).max) / 8


def clamp(x: Array) -> Array:
  """Log-probabilities with ``-inf`` (a zero probability) as ``-big``; NaN stays NaN."""
  return jnp.maximum(x, -big(x.dtype))


# ---------------------------------------------------------------------------
# Log-normalisers
# ---------------------------------------------------------------------------


class Lse(NamedTuple):
  """A row's log-normaliser: maximum ``m`` and excess ``t``, ``log sum e^z = m + log1p(t)``.

  An empty row (every logit ``-inf``) is ``m = -inf, t = -1`` (a sum of 0).
  """

  m: Array  # [n]
  t: Array  # [n]


def lse_empty(n: int, dtype) -> Lse:
  return Lse(jnp.full((n,), -jnp.inf, dtype), jnp.full((n,), -1, dtype))


def unit_step(d: Array) -> Array:
  """1 where ``d >= 0``, 0 where ``d < -2^-100``: ``max(0, 1 + 2^100 min(d, 0))``, with no
  derivative. Arithmetic, not a select, so that a reduction it feeds stays vectorised on
  CPU."""
  return lax.stop_gradient(jnp.maximum(0.0, 1.0 + 2.0**100 * jnp.minimum(d, 0.0)))


def lse_block(raw: Array, head: Head = NO_HEAD, keep=None) -> Lse:
  r"""The :class:`Lse` of a block of logits ``transform(head, raw)`` (``-inf`` where ``keep``
  is False), the sum leaving the arg-max terms out.

  The maximum is taken on the raw logits (a transform is increasing), then two
  arithmetic passes over ``d = transform(raw) - transform(max)``: ``a = sum_v (e^{d_v} -
  1[d_v = 0])``, which keeps the arg-max terms' 1s out of the accumulators, so that a
  confident row keeps its digits, and the number of terms at the maximum,
  ``sum_v 1[d_v = 0]``, exactly (an integer); ``t = a + (count - 1)``. The two sums must
  agree on which terms are at the maximum although XLA recomputes ``d`` in each pass, with
  its own rounding of a transform: :func:`shifted` makes ``d`` exactly 0 there in any
  pass. The indicator is :func:`unit_step`. An empty row (all
  ``-inf``) gives ``t = -1``.
  """
  r = exclude(raw, keep)
  m_raw = jnp.max(r, axis=-1)
  mf = finite_or_zero(m_raw)
  d = shifted(head, r, mf)
  at_max = unit_step(d)
  a = jnp.sum(jnp.exp(d) - at_max, axis=-1)
  t = a + (jnp.sum(at_max, axis=-1) - 1)
  m = jnp.where(m_raw == -jnp.inf, m_raw, transform(head, mf))
  return Lse(m, jnp.where(m_raw == jnp.inf, jnp.full_like(t, jnp.nan), t))


def lse_parts(s: Lse, m: Array) -> tuple[Array, Array]:
  """A part's share of the merged excess relative to the merged maximum ``m``, and whether
  it holds that maximum (its own arg-max term is then counted, not summed)."""
  top = s.m == m
  part = jnp.where(top, s.t, (1 + s.t) * jnp.exp(s.m - finite_or_zero(m)))
  return part, top.astype(s.t.dtype)


def lse_total(m: Array, part_sum: Array, top_sum: Array) -> Lse:
  """The merged :class:`Lse` from the summed :func:`lse_parts`: ties counted exactly."""
  t = part_sum + top_sum - 1
  return Lse(m, jnp.where(m == -jnp.inf, -jnp.ones_like(t), t))


def log_norm(s: Lse) -> Array:
  """``log sum e^{z - m}`` (``-inf`` for an empty row)."""
  return jnp.log1p(s.t)


def row_shift(s: Lse):
  """``(m, log1p t)`` for one pass, finite (an empty row's are 0: its logits stay -inf)."""
  return fresh(finite_or_zero(s.m), finite_or_zero(log_norm(s)))


def log_probs(z: Array, s: Lse) -> Array:
  """``log softmax(z)`` of a block from the row's :class:`Lse`, clamped (:func:`clamp`):
  ``(z - m) - log1p(t)``, formed from shifted quantities."""
  m, ln = row_shift(s)
  return clamp((z - m[:, None]) - ln[:, None])


def softmax(z: Array, s: Lse) -> Array:
  """``softmax(z)`` of a block from the row's :class:`Lse` (0 at ``-inf``): ``exp((z - m) -
  log1p t)``, not ``z - (m + log1p t)``, which would round at the logits' offset."""
  m, ln = row_shift(s)
  return jnp.exp((z - m[:, None]) - ln[:, None])


def rescale(m_old: Array, m_new: Array) -> Array:
  """``exp(m_old - m_new)``: the factor of a sum ``sum e^{z - m_old} f`` when ``m`` moves."""
  return jnp.exp(m_old - finite_or_zero(m_new))


# ---------------------------------------------------------------------------
# Listed categories (labels, a stored teacher's indices)
# ---------------------------------------------------------------------------


def pick(z: Array, local: Array) -> Array:
  """``z[n, local[n, j]]`` where ``0 <= local < c``, else ``-inf`` (``local [n, k]``)."""
  c = z.shape[-1]
  inside = (local >= 0) & (local < c)
  got = jnp.take_along_axis(z, jnp.clip(local, 0, c - 1), axis=1)
  return jnp.where(inside, got, jnp.full_like(got, -jnp.inf))


def columns(local: Array, c: int) -> Array:
  """The columns ``local [n, k]`` of a block ``c`` wide, ``c`` where outside it: an index a
  scatter with ``mode="drop"`` drops."""
  return jnp.where((local >= 0) & (local < c), local, c)


def scatter(shape, local: Array, values: Array) -> Array:
  """``[n, c]`` zeros plus ``values [n, k]`` added at the columns ``local [n, k]``
  (indices outside ``[0, c)`` are dropped)."""
  n, c = shape
  cols = columns(local, c)
  rows = jnp.broadcast_to(jnp.arange(n)[:, None], local.shape)
  return jnp.zeros(shape, values.dtype).at[rows, cols].add(values, mode="drop")


# ---------------------------------------------------------------------------
# Elementwise terms from clamped log-probabilities (arithmetic: see "Passes over a block")
# ---------------------------------------------------------------------------


def weighted(lp: Array, x: Array) -> Array:
  """``exp(lp) x`` for a clamped ``lp``: exactly 0 where the probability is 0."""
  return jnp.exp(lp) * x


def prob_diff(lp: Array, lq: Array) -> Array:
  """``q - p`` from clamped log-probabilities, to the relative precision of the difference.

  ``exp(lq) - exp(lp)`` loses the digits of a small difference of two probabilities near
  1; ``e^a (e^{lq - a} - e^{lp - a})`` with ``a = max(lp, lq)`` is ``e^a`` times
  ``-expm1(-|lq - lp|)``, accurate for every gap.
  """
  gap = lq - lp
  d = -jnp.expm1(-jnp.abs(gap)) * jnp.exp(jnp.maximum(lp, lq))
  return jnp.copysign(d, gap)


def log_mix(log_a: Array, lp: Array, log_b: Array, lq: Array) -> Array:
  """``log(a p + b q)`` from clamped log-probabilities and clamped ``log a``, ``log b``:
  ``logaddexp`` as arithmetic (both operands are finite), clamped."""
  x, y = log_a + lp, log_b + lq
  return clamp(jnp.maximum(x, y) + jnp.log1p(jnp.exp(-jnp.abs(x - y))))
