r"""The drivers of the fused losses: one sweep over blocks, for one device or a mesh.

A fused call is a :class:`Job`: its static configuration (:class:`Static`: the terms of the
loss, which arrays are present, the blocks, the reduction, the mesh axes) and its arrays.
The drivers walk the tokens in blocks (:func:`_sweep`) and, for each block of tokens, the
vocabulary (:func:`_token_block`): they form each side's raw logits, hand them to the loss
definitions of :mod:`jaxdiv._fused_losses` through a :class:`Ctx`, merge the per-row
statistics over the vocabulary blocks -- and across the vocabulary shards of a mesh, with
one ``pmax`` and one ``psum`` per pass, when the sweep runs inside :func:`jax.shard_map`
-- and form the value and, when asked, the gradients of the differentiated arrays.

Derivatives are a :func:`jax.custom_vjp` with two strategies, chosen at trace time:

* **one sweep** (a ``reduction``, or no weight differentiated): the forward pass forms the
  value and the gradients together, from the same blocks of logits, and keeps the
  gradients (the sizes of the inputs) as residuals that the backward pass only scales by
  the cotangent. With ``reduction=None`` this is possible only while no weight is
  differentiated: each row's gradient scales by that row's cotangent, but a weight's
  gradient sums over rows.
* **recompute** (``reduction=None`` with a weight differentiated): the forward pass keeps
  per-row statistics only, and the backward pass recomputes each block of logits.

A call that is not differentiated computes the value only. Arrays that are not
differentiated (a frozen teacher) cost only their forward products.

Where a block holds whole rows on one device (:func:`whole_rows`), the terms that have one
take their value from the core function's kernel on the block (``core`` of a loss) and the
block's logit cotangents from that kernel's derivative rule, by :func:`jax.vjp`: no
statistics are merged, and the kernels make fewer elementwise passes than the mergeable
statistics do. Vocabulary blocks, shards and category masks keep the statistics.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxdiv import _blocks as B
from jaxdiv import _numerics

Array = jax.Array

# The blocks of logits of a call hold at most this many elements (48 MiB in float32): the whole
# vocabulary of a block of tokens when at least _MIN_ROWS tokens fit, else _MIN_ROWS tokens
# by as many categories as fit.
BLOCK_ELEMENTS = 3 << 22
_MIN_ROWS = 128
# Where the whole vocabulary does not fit: blocks of _MIN_ROWS tokens and this many
# elements per head (8 MiB in float32).
VOCAB_BLOCK_ELEMENTS = 1 << 21
# The elementwise passes run on row sub-blocks of about this many elements (1 MiB in
# float32), so that what XLA writes out between passes stays in cache.
SUB_ELEMENTS = 1 << 18

SIDES = ("p", "q")
_SIDE_ARRAYS = ("hidden", "weight", "values")
# The arrays a fused loss may differentiate (options are differentiable where a term says).
_SIDE_DIFFERENTIABLE = tuple(f"{s}_{a}" for s in SIDES for a in _SIDE_ARRAYS)
DIFFERENTIABLE = _SIDE_DIFFERENTIABLE + ("log_probs",)
HIDDEN, WEIGHTS = ("p_hidden", "q_hidden"), ("p_weight", "q_weight")
_PER_ROW = ("labels", "indices", "log_probs", "slot_ok", "invalid", "row_mask", "full_mask")


class Comp(NamedTuple):
  """One term of a fused loss (static): ``weight * loss`` with its own logit transform."""

  loss: Any  # a class of jaxdiv._fused_losses
  sides: tuple  # the dense sides it reads ("p", "q")
  head: tuple  # option names of its soft cap and temperature (None: none)
  flags: tuple  # sorted (name, value) pairs
  opts: tuple  # (name the loss reads, name of the Job's option) pairs
  weight: str | None = None  # option name of the term's weight (None: 1)


class Static(NamedTuple):
  """The trace-time configuration of a fused call (hashable)."""

  fn: str  # the public function, for messages
  comps: tuple  # Comp, ...
  kinds: tuple  # ("head" | "logits" | "probs" | None) for p and q
  num_rows: int  # N on this device
  num_v: int  # V of the whole vocabulary
  local_v: int  # V on this device (num_v / the vocabulary shards)
  token_block: int
  vocab_block: int
  reduction: str | None
  keys: tuple  # the names of the call's arrays (some None)
  diff_opts: tuple = ()  # options with a derivative ("mix")
  vocab_axis: str | None = None
  data_axis: str | None = None


def plan(num_rows: int, num_v: int, chunk_size=None, token_chunk_size=None, sides=1):
  """``(token_block, vocab_block)``: the given sizes, or sizes chosen from the problem.

  A block of logits holds at most :data:`BLOCK_ELEMENTS`: the whole vocabulary of a block
  of tokens when at least ``_MIN_ROWS`` tokens fit (the weight's gradient then takes one
  ``D x V`` product per block of many tokens), else ``_MIN_ROWS`` tokens by as many
  categories as fit (a budget shared by the ``sides`` dense distributions). Blocks are
  never larger than the problem; chosen token blocks are a multiple of ``_MIN_ROWS`` that
  divides the tokens where one fits (the products run fastest at such sizes), else equal
  blocks of a multiple of 16 tokens.
  """
  n, v = max(num_rows, 1), max(num_v, 1)
  if chunk_size is None and token_chunk_size is None:
    if min(n, _MIN_ROWS) * v <= BLOCK_ELEMENTS:
      return _rows_per_block(n, BLOCK_ELEMENTS // v), v
    # the statistics merge over vocabulary blocks: small ones are as fast
    token_chunk_size = _MIN_ROWS
    chunk_size = max(1, VOCAB_BLOCK_ELEMENTS // max(sides, 1) // _MIN_ROWS)
  elif chunk_size is None:
    chunk_size = max(1, BLOCK_ELEMENTS // max(sides, 1) // min(token_chunk_size, n))
  elif token_chunk_size is None:
    token_chunk_size = max(1, BLOCK_ELEMENTS // max(sides, 1) // min(chunk_size, v))
  chunk_size, token_chunk_size = min(chunk_size, v), min(token_chunk_size, n)
  blocks = -(-n // token_chunk_size)
  return -(-n // blocks), chunk_size


def _rows_per_block(n: int, fit: int) -> int:
  """Tokens per block, at most ``fit`` (``>= _MIN_ROWS``): all ``n`` if they fit."""
  if n <= fit:
    return n
  top = fit // _MIN_ROWS * _MIN_ROWS
  for rows in range(top, 0, -_MIN_ROWS):
    if n % rows == 0:
      return rows
  equal = -(-n // -(-n // top))
  return min(top, -(-equal // 16) * 16)


# ---------------------------------------------------------------------------
# What a loss definition sees
# ---------------------------------------------------------------------------


class Problem(NamedTuple):
  """A call's arrays in the compute dtype, on this device."""

  st: Static
  sides: dict  # "p" / "q" -> B.Side
  arrays: dict  # per-row data, masks and options
  dtype: Any
  offset: Array | int  # the first category of this device's vocabulary shard
  needs: frozenset  # the differentiated arrays (names of DIFFERENTIABLE and diff_opts)


class Ctx:
  """One term's view of a block of rows (and, inside a sweep, of columns)."""

  def __init__(self, pb: Problem, comp: Comp, rows, cols=None, raws=None, keep=None,
               refined_later=False):  # fmt: skip
    self.pb, self.comp, self.rows, self.cols = pb, comp, rows, cols
    self.refined_later = refined_later  # ``core``'s value goes to the loss's ``refine``
    self._raws, self.keep, self._z = raws, keep, {}
    self.dtype, self.num_v, self.offset = pb.dtype, pb.st.num_v, pb.offset
    self._opts = dict(comp.opts)
    self._flags = dict(comp.flags)
    self.side = comp.sides[0]  # a term that reads one dense side
    self.masked = "vocab_mask" in pb.arrays or "full_mask" in pb.arrays

  def head(self) -> B.Head:
    cap, temp = self.comp.head
    a = self.pb.arrays
    return B.Head(None if cap is None else a[cap], None if temp is None else a[temp])

  def z(self, side: str) -> Array:
    """The block's logits of ``side`` after the term's transform, ``-inf`` where excluded."""
    if side not in self._z:
      self._z[side] = B.exclude(B.transform(self.head(), self._raws[side]), self.keep)
    return self._z[side]

  def lse(self, side: str, bias=None) -> B.Lse:
    """The block's :class:`~jaxdiv._blocks.Lse` of ``side`` (``bias``: added to the raw
    logits, ``-inf`` to leave categories out)."""
    raw = self._raws[side] if bias is None else self._raws[side] + bias
    return B.lse_block(raw, self.head(), self.keep)

  def probs(self, side: str) -> Array:
    """The block's probabilities of a ``"probs"`` side: NaN where negative, 0 where excluded."""
    return _numerics.nan_negative(self._raws[side], self.keep)

  def row(self, name: str) -> Array:
    return B.rows_of(self.pb.arrays[name], self.rows)

  def has_opt(self, name: str) -> bool:
    return name in self._opts

  def opt(self, name: str) -> Array:
    return self.pb.arrays[self._opts[name]]

  def flag(self, name: str, default=False):
    return self._flags.get(name, default)

  def wants(self, side: str) -> bool:
    return any(f"{side}_{a}" in self.pb.needs for a in _SIDE_ARRAYS)

  def may_vanish(self, side: str) -> bool:
    """Whether ``side`` can put probability 0 on an included category: logits (``-inf``)
    can, a linear head's finite logits cannot (a mask excludes a category for both)."""
    return self.pb.sides[side].kind != "head"


# ---------------------------------------------------------------------------
# One block of tokens
# ---------------------------------------------------------------------------


def _keep(pb: Problem, rows: B.Range, cols: B.Range):
  """The categories of a block that count: the vocabulary and full masks, and the columns
  a shifted last block does not repeat. ``None`` where every one counts."""
  keep = cols.valid
  vocab = pb.arrays.get("vocab_mask")
  if vocab is not None:
    v = lax.dynamic_slice_in_dim(vocab, cols.start, cols.size)
    keep = v if keep is None else keep & v
  full = pb.arrays.get("full_mask")
  if full is not None:
    f = lax.dynamic_slice(full, (rows.start, cols.start), (rows.size, cols.size))
    keep = f if keep is None else keep & f
  return keep


def _raws(pb: Problem, rows, cols):
  """Every side's raw logits (or probabilities) of a block: the products, for a head."""
  return {s: B.raw_block(pb.sides[s], rows, cols, pb.dtype) for s in pb.sides}


def _sub_rows(st: Static, rows: int, cols: int) -> int:
  """Rows of the sub-blocks the elementwise passes run on: about ``SUB_ELEMENTS``, so
  that whatever XLA writes out between two passes stays in cache."""
  return max(1, min(rows, SUB_ELEMENTS // max(cols, 1)))


def _each_sub(pb: Problem, rows, cols, raws, body, carry):
  """``body(ctx_rows, sub, sub_raws, keep, carry)`` over the row sub-blocks of a block.

  ``ctx_rows`` are the sub-block's rows of the problem, ``sub`` the same rows within the
  block (where its per-row outputs go), ``sub_raws`` the sides' raw logits there (a side
  in ``carry["raws"]`` is read from the carry: a gradient pass overwrites it in place).
  """
  r = _sub_rows(pb.st, rows.size, cols.size)

  def step(sub, carry):
    ctx_rows = B.Range(rows.start + sub.start, sub.size, None)
    current = dict(raws, **carry.get("raws", {}))
    sub_raws = {k: lax.dynamic_slice_in_dim(x, sub.start, sub.size, 0) for k, x in current.items()}
    return body(ctx_rows, sub, sub_raws, _keep(pb, ctx_rows, cols), carry)

  return B.loop(rows.size, r, step, carry)


def _probe(pb: Problem, cols, fn):
  """The shapes of ``fn(ctx_rows, ctxs)`` on one sub-block (nothing is computed)."""
  r = _sub_rows(pb.st, pb.st.token_block, cols.size)
  rows = B.Range(0, r, None)

  def run():
    raws = {s: jnp.zeros((r, cols.size), pb.dtype) for s in pb.sides}
    keep = _keep(pb, rows, cols)
    return fn(rows, [Ctx(pb, c, rows, cols, raws, keep) for c in pb.st.comps])

  return jax.eval_shape(run)


def _per_sub(pb: Problem, rows, cols, raws, fn):
  """``fn(ctx_rows, ctxs)`` (per-row outputs) over the sub-blocks, assembled for the block."""
  shapes = _probe(pb, cols, fn)
  bufs = jax.tree.map(lambda x: jnp.zeros((rows.size, *x.shape[1:]), x.dtype), shapes)

  def body(ctx_rows, sub, sub_raws, keep, carry):
    out = fn(ctx_rows, [Ctx(pb, c, ctx_rows, cols, sub_raws, keep) for c in pb.st.comps])
    return {"out": jax.tree.map(lambda b, x: B.put_rows(b, x, sub), carry["out"], out)}

  return _each_sub(pb, rows, cols, raws, body, {"out": bufs})["out"]


def _reduce_shards(pb: Problem, comp: Comp, s):
  if pb.st.vocab_axis is None:
    return s
  return comp.loss.reduce(s, B.collective(pb.st.vocab_axis))


def _sum_shards(pb: Problem, sums):
  if pb.st.vocab_axis is None:
    return sums
  return B.collective(pb.st.vocab_axis).sum(sums)


def _over_vocab(pb: Problem, rows, one, fn, merge, init):
  """``fn(cols, raws)`` over the vocabulary blocks of a block of rows, merged."""
  if one is not None:
    return fn(*one)

  def body(cols, acc):
    return merge(acc, fn(cols, _raws(pb, rows, cols)))

  return B.loop(pb.st.local_v, pb.st.vocab_block, body, init(body))


def _first_pass(pb: Problem, rows, one):
  """Every term's merged first statistics for a block of rows."""
  comps = pb.st.comps

  def fn(cols, raws):
    return _per_sub(
      pb,
      rows,
      cols,
      raws,
      lambda r, cxs: [c.loss.stats(x) for c, x in zip(comps, cxs, strict=True)],
    )

  def merge(acc, new):
    return [B.merge(c.loss.reduce, a, b) for c, a, b in zip(comps, acc, new, strict=True)]

  def init(_):
    return [c.loss.empty(Ctx(pb, c, rows)) for c in comps]

  return _over_vocab(pb, rows, one, fn, merge, init)


def _second_pass(pb: Problem, rows, one, first):
  comps = pb.st.comps
  has = [hasattr(c.loss, "second") for c in comps]
  if not any(has):
    return [None] * len(comps)

  def sums(ctx_rows, cxs):
    local = B.Range(ctx_rows.start - rows.start, ctx_rows.size, None)
    out = []
    for c, cx, f, h in zip(comps, cxs, first, has, strict=True):
      out.append(c.loss.second(cx, jax.tree.map(lambda x: B.rows_of(x, local), f)) if h else ())
    return out

  def fn(cols, raws):
    return _per_sub(pb, rows, cols, raws, sums)

  def merge(acc, new):
    return jax.tree.map(jnp.add, acc, new)

  def init(body):
    cols = B.Range(0, pb.st.vocab_block, None)
    return jax.tree.map(
      lambda x: jnp.zeros((rows.size, *x.shape[1:]), x.dtype), _probe(pb, cols, sums)
    )

  return _over_vocab(pb, rows, one, fn, merge, init)


def _whole(pb: Problem, rows):
  """``(cols, raws)`` for a block holding the whole (local) vocabulary."""
  cols = B.Range(0, pb.st.local_v, None)
  return cols, _raws(pb, rows, cols)


def _statistics(pb: Problem, rows, one, shards=True):
  """Every term's final per-row statistics ``(first, finished)``, merged over the shards
  (``shards=False``: only their shapes are wanted, outside any mesh)."""
  st = pb.st
  first = _first_pass(pb, rows, one)
  if shards:
    first = [_reduce_shards(pb, c, f) for c, f in zip(st.comps, first, strict=True)]
  second = _second_pass(pb, rows, one, first)
  out = []
  for c, f, s in zip(st.comps, first, second, strict=True):
    if shards and s is not None and s != ():
      s = _sum_shards(pb, s)
    if hasattr(c.loss, "finish"):
      s = c.loss.finish(Ctx(pb, c, rows), f, s)
    out.append((f, s))
  return out


def _weight(pb: Problem, comp: Comp):
  return None if comp.weight is None else pb.arrays[comp.weight]


def _values(pb: Problem, rows, stats):
  """The per-row loss from the terms' statistics."""
  comps = zip(pb.st.comps, stats, strict=True)
  return _total_of(pb, rows, [c.loss.value(Ctx(pb, c, rows), f, s) for c, (f, s) in comps])


def _total_of(pb: Problem, rows, terms):
  """The per-row loss: the weighted sum of the terms' values, 0 on masked rows."""
  total = None
  for c, v in zip(pb.st.comps, terms, strict=True):
    w = _weight(pb, c)
    if w is not None:
      v = B.zero_unless(w != 0, w * v)
    total = v if total is None else total + v
  mask = B.rows_of(pb.arrays.get("row_mask"), rows)
  return B.zero_unless(mask, total)


def _counts(pb: Problem, rows, stats):
  """The rows ``reduction="mean"`` divides by: unmasked, and counted by some term (a term
  without ``counts`` counts every row; the distillation loss's soft term counts a token
  whose label's category ``where`` excludes)."""
  by_terms = []
  for c, (f, _) in zip(pb.st.comps, stats, strict=True):
    if not hasattr(c.loss, "counts"):
      by_terms = None
      break
    by_terms.append(c.loss.counts(Ctx(pb, c, rows), f))
  counted = B.rows_of(pb.arrays.get("row_mask"), rows)
  if by_terms:
    k = functools.reduce(jnp.logical_or, by_terms)
    counted = k if counted is None else counted & k
  if counted is None:
    return jnp.full((rows.size,), 1, pb.dtype)
  return counted.astype(pb.dtype)


def _row_weights(pb: Problem, rows, g):
  """The per-row cotangent, 0 on masked rows and on the rows a shifted block repeats."""
  mask = B.rows_of(pb.arrays.get("row_mask"), rows)
  if rows.valid is not None:
    mask = rows.valid if mask is None else mask & rows.valid
  return B.zero_unless(mask, g)


def _grad_sides(pb: Problem):
  return [s for s in pb.sides if any(f"{s}_{a}" in pb.needs for a in _SIDE_ARRAYS)]


def _dz(pb: Problem, rows, cols, raws, stats, g):
  """The cotangents of the sides' raw logits on a block, ``{side: [n, c]}``: formed sub-block
  by sub-block, each written over that side's raw logits (which it no longer needs)."""
  st = pb.st
  sides = _grad_sides(pb)

  def body(ctx_rows, sub, sub_raws, keep, carry):
    local = B.Range(sub.start, sub.size, None)
    gs = B.rows_of(g, local)
    dz = {}
    for c, (f, s) in zip(st.comps, stats, strict=True):
      cx = Ctx(pb, c, ctx_rows, cols, sub_raws, keep)
      rows_stats = jax.tree.map(lambda x: B.rows_of(x, local), (f, s))
      w = _weight(pb, c)
      for side, d in c.loss.grad(cx, *rows_stats).items():
        if pb.sides[side].kind != "probs":
          d = B.head_derivative(cx.head(), sub_raws[side], d)
        d = d if w is None else B.zero_unless(w != 0, w * d)
        dz[side] = d if side not in dz else dz[side] + d
    out = dict(carry["raws"])
    for side in sides:
      d = dz[side] * gs[:, None] if side in dz else jnp.zeros_like(sub_raws[side])
      if keep is not None:  # a NaN logit outside the block's categories adds nothing
        d = jnp.where(keep, d, jnp.zeros_like(d))
      out[side] = B.put_rows(out[side], d, sub)
    return {"raws": out}

  return _each_sub(pb, rows, cols, raws, body, {"raws": {s: raws[s] for s in sides}})["raws"]


def _gradients(pb: Problem, rows, cols, raws, stats, g, acc):
  """Add one block's gradients (rows x cols, cotangent ``g [n]``) into ``acc``."""
  return _products(pb, rows, cols, _dz(pb, rows, cols, raws, stats, g), acc)


def _products(pb: Problem, rows, cols, dz, acc):
  """Add the gradients that the cotangents ``dz`` of a block's raw logits give into ``acc``."""
  acc = dict(acc)
  for side, d in dz.items():
    sd = pb.sides[side]
    if sd.kind == "head":
      # 16-bit operands go to the products as they are (float32 accumulation), as the
      # naive step's do: a float32 copy of the weight would be as large as the logits
      ds = d.astype(B.operand_dtype(sd.weight.dtype, pb.dtype))
      if f"{side}_hidden" in acc:
        w_blk = lax.dynamic_slice_in_dim(sd.weight, cols.start, cols.size, 1)
        w_blk = w_blk.astype(ds.dtype)
        acc[f"{side}_hidden_rows"] = acc[f"{side}_hidden_rows"] + jnp.dot(
          ds, w_blk.T, preferred_element_type=pb.dtype
        )
      if f"{side}_weight" in acc:
        h_t = lax.dynamic_slice_in_dim(sd.hidden_t, rows.start, rows.size, 1)
        acc[f"{side}_weight"] = _add_weight_grad(pb, acc[f"{side}_weight"], h_t, ds, cols)
    elif f"{side}_values" in acc:
      key = f"{side}_values"
      old = lax.dynamic_slice(acc[key], (rows.start, cols.start), (rows.size, cols.size))
      acc[key] = lax.dynamic_update_slice(
        acc[key], old + d.astype(acc[key].dtype), (rows.start, cols.start)
      )
  return acc


def _add_weight_grad(pb: Problem, acc_w, h_t, ds, cols):
  """``acc_w[:, cols] + h_t @ ds`` (``h_t [D, rows]``, ``ds [rows, cols]``). Where the sweep
  has several token blocks, in parts of ``rows`` rows of the weight: XLA's CPU product
  writes a fresh output before it is added, which whole would be a second weight-sized
  buffer; a part is no larger than the block of logits (one block: the product is the
  gradient itself)."""
  d, step = h_t.shape[0], ds.shape[0]
  full = d // step

  def add(acc_w, lo, size):
    part = lax.dynamic_slice_in_dim(h_t, lo, size, 0).astype(ds.dtype)
    old = lax.dynamic_slice(acc_w, (lo, cols.start), (size, cols.size))
    new = old + jnp.dot(part, ds, preferred_element_type=pb.dtype)
    return lax.dynamic_update_slice(acc_w, new, (lo, cols.start))

  if pb.st.num_rows <= pb.st.token_block or full < 2:
    return add(acc_w, 0, d)
  # a loop: XLA would otherwise form every part's product before the additions
  acc_w = lax.fori_loop(0, full, lambda i, a: add(a, i * step, step), acc_w)
  if full * step < d:
    acc_w = add(acc_w, full * step, d - full * step)
  return acc_w


def _extras(pb: Problem, rows, stats, g, acc):
  """Per-row and scalar derivatives (stored log-probabilities, a mixture weight)."""
  acc = dict(acc)
  for c, (f, s) in zip(pb.st.comps, stats, strict=True):
    if not hasattr(c.loss, "extra"):
      continue
    w = _weight(pb, c)
    for name, d in c.loss.extra(Ctx(pb, c, rows), f, s).items():
      key = dict(c.opts).get(name, name)
      if key not in acc:
        continue
      gw = g if w is None else B.zero_unless(w != 0, w * g)
      gw = gw.reshape((-1,) + (1,) * (d.ndim - 1))
      d = B.zero_unless(gw != 0, d) * gw
      acc[key] = B.put_rows(acc[key], B.rows_of(acc[key], rows) + d, rows)
  return acc


def whole_rows(pb: Problem) -> bool:
  """Whether each block holds whole rows that the core functions' kernels can take: one
  device's whole vocabulary, no category mask, every term with a ``core`` for its flags,
  and derivatives in the sides' arrays only (a mixture weight's and stored
  log-probabilities' come from the statistics). Their value and derivative rule then
  replace the block statistics (no merge is needed), with fewer elementwise passes (docs'
  performance page)."""
  st = pb.st
  if st.vocab_axis is not None or st.vocab_block < st.local_v:
    return False
  if "vocab_mask" in pb.arrays or "full_mask" in pb.arrays:
    return False
  if any(k not in _SIDE_DIFFERENTIABLE for k in pb.needs):
    return False
  for c in st.comps:
    ok = getattr(c.loss, "core_ok", lambda flags: True)
    if not hasattr(c.loss, "core") or not ok(dict(c.flags)):
      return False
    if any(pb.sides[s].kind == "probs" for s in c.sides):
      return False
  return True


def _core_values(pb: Problem, rows, cols, raws, refined_later=False):
  """The per-row loss of a whole-row block from the terms' core kernels."""
  cxs = [Ctx(pb, c, rows, cols, raws, refined_later=refined_later) for c in pb.st.comps]
  return _total_of(pb, rows, [cx.comp.loss.core(cx) for cx in cxs])


def _refined_later(pb: Problem) -> bool:
  """Whether the one sweep refines the value of its only term, unweighted, from the block's
  logit cotangent (the loss's ``refine``) instead of by a pass of the term's own."""
  (c, *others) = pb.st.comps
  ok = getattr(c.loss, "refine_ok", None)
  return not others and c.weight is None and ok is not None and ok(dict(c.flags))


def _core_block(pb: Problem, rows, g, acc, g_masks_only=False):
  """``(values, acc)`` of a whole-row block (:func:`whole_rows`): the value and, with a
  cotangent ``g``, the gradients by the derivative rules of the core kernels.

  ``g_masks_only``: ``g`` is the one sweep's own (1 on every row), so that after the row
  weights it is 0 only on masked rows, whose inputs :func:`problem` zeroed, and on rows a
  shifted block repeats, which count in their own block: their logit cotangents need no
  zeroing (a pass over the block saved; docs' performance page)."""
  cols, raws = _whole(pb, rows)
  if g is None:
    return _core_values(pb, rows, cols, raws), acc
  sides = _grad_sides(pb)
  fixed = {s: x for s, x in raws.items() if s not in sides}
  later = g_masks_only and _refined_later(pb)

  def values(diff):
    return _core_values(pb, rows, cols, dict(fixed, **diff), later)

  out, vjp = jax.vjp(values, {s: raws[s] for s in sides})
  g = _row_weights(pb, rows, g).astype(out.dtype)
  (dz,) = vjp(g)
  if later:  # g is 1 where the value is kept (a row a shifted block repeats keeps its own)
    cx = Ctx(pb, pb.st.comps[0], rows, cols, raws)
    out = cx.comp.loss.refine(cx, out, dz[cx.side])
  if not g_masks_only:
    # a row without a cotangent adds nothing, even where its loss is NaN (no distribution)
    dz = {s: B.zero_unless((g != 0)[:, None], d) for s, d in dz.items()}
  return out, _with_hidden_rows(pb, rows, acc, lambda acc: _products(pb, rows, cols, dz, acc))


def _with_hidden_rows(pb: Problem, rows, acc, add):
  """``add(acc)`` with a block's rows of the hidden states' gradients accumulated apart."""
  hidden = [k for k in acc if k in HIDDEN]
  acc = dict(
    acc, **{f"{k}_rows": jnp.zeros((rows.size, acc[k].shape[1]), pb.dtype) for k in hidden}
  )
  acc = add(acc)
  for k in hidden:
    acc[k] = B.put_rows(acc[k], acc.pop(f"{k}_rows"), rows)
  return acc


def _token_block(pb: Problem, rows, g, acc, stats=None):
  """Statistics (unless given) and, with a cotangent ``g``, the gradients of one block."""
  st = pb.st
  one = _whole(pb, rows) if st.vocab_block >= st.local_v else None
  if stats is None:
    stats = _statistics(pb, rows, one)
  if g is None:
    return stats, acc
  g = _row_weights(pb, rows, g)
  acc = _with_hidden_rows(pb, rows, acc, lambda acc: _vocab_gradients(pb, rows, one, stats, g, acc))
  return stats, _extras(pb, rows, stats, g, acc)


def _vocab_gradients(pb: Problem, rows, one, stats, g, acc):
  """A block of rows' gradients from its statistics, over the vocabulary blocks."""
  st = pb.st
  if one is not None:
    acc = _gradients(pb, rows, *one, stats, g, acc)
  else:

    def body(cols, acc):
      return _gradients(pb, rows, cols, _raws(pb, rows, cols), stats, g, acc)

    acc = B.loop(st.local_v, st.vocab_block, body, acc)
  return acc


def _grad_buffers(pb: Problem):
  """Zero gradients of the differentiated arrays (compute dtype); a scalar option gets one
  derivative per row, summed at the end."""
  out = {}
  for k in pb.needs:
    if k in pb.st.diff_opts:
      out[k] = jnp.zeros((pb.st.num_rows,), pb.dtype)
    else:
      x = pb.arrays[k] if k in pb.arrays else _side_array(pb, k)
      out[k] = jnp.zeros(x.shape, pb.dtype)
  return out


def _side_array(pb: Problem, key: str):
  side, part = key.split("_", 1)
  return getattr(pb.sides[side], part)


def _sweep(pb: Problem, g=None, stats=None, keep_stats=False):
  """Over every block of tokens: ``(values [N], counts [N], stats, grads)``.

  ``g``: the per-row cotangent (``None``: value only); ``stats``: the statistics of an
  earlier sweep (the backward pass of the recomputing strategy), in which case values,
  counts and statistics are not formed again; ``keep_stats``: the statistics are wanted
  (else ``None`` where the core kernels take whole rows, :func:`whole_rows`). Without
  ``stats``, ``g`` is the one sweep's own (:func:`local_forward`); with them, the caller's.
  """
  st = pb.st
  acc = _grad_buffers(pb) if g is not None else {}
  n = st.num_rows
  core = whole_rows(pb)
  if stats is not None:

    def backward(rows, acc):
      if core:
        return _core_block(pb, rows, B.rows_of(g, rows), acc)[1]
      given = jax.tree.map(lambda x: B.rows_of(x, rows), stats)
      return _token_block(pb, rows, B.rows_of(g, rows), acc, given)[1]

    return None, None, stats, _reduce_grads(pb, B.loop(n, st.token_block, backward, acc))
  zeros = jnp.zeros((n,), pb.dtype)
  if core and not keep_stats:
    no_stats = [(None, None)] * len(st.comps)  # a term's counts need none without masks

    def core_body(rows, carry):
      values, counts, acc = carry
      v, acc = _core_block(pb, rows, None if g is None else B.rows_of(g, rows), acc, True)
      values = B.put_rows(values, v, rows)
      counts = B.put_rows(counts, _counts(pb, rows, no_stats), rows)
      return values, counts, acc

    values, counts, acc = B.loop(n, st.token_block, core_body, (zeros, zeros, acc))
    return values, counts, None, _reduce_grads(pb, acc)

  probe = B.Range(0, st.token_block, None)
  one = st.vocab_block >= st.local_v
  shapes = jax.eval_shape(
    lambda: _statistics(pb, probe, _whole(pb, probe) if one else None, shards=False)
  )

  def body(rows, carry):
    values, counts, all_stats, acc = carry
    s, acc = _token_block(pb, rows, None if g is None else B.rows_of(g, rows), acc)
    values = B.put_rows(values, _values(pb, rows, s), rows)
    counts = B.put_rows(counts, _counts(pb, rows, s), rows)
    all_stats = jax.tree.map(lambda buf, x: B.put_rows(buf, x, rows), all_stats, s)
    return values, counts, all_stats, acc

  init_stats = jax.tree.map(lambda x: jnp.zeros((n, *x.shape[1:]), x.dtype), shapes)
  values, counts, all_stats, acc = B.loop(n, st.token_block, body, (zeros, zeros, init_stats, acc))
  return values, counts, all_stats, _reduce_grads(pb, acc)


def _reduce_grads(pb: Problem, acc):
  """Sum the gradients over the shards that share them: a head's hidden states over the
  vocabulary shards, a weight over the data shards."""
  st = pb.st
  out = {}
  for k, v in acc.items():
    if k in HIDDEN and st.vocab_axis is not None:
      v = lax.psum(v, st.vocab_axis)
    if k in WEIGHTS and st.data_axis is not None:
      v = lax.psum(v, st.data_axis)
    out[k] = v
  return out


# ---------------------------------------------------------------------------
# The problem on this device, and the outputs
# ---------------------------------------------------------------------------


def problem(st: Static, arrays: dict, needs=frozenset()) -> Problem:
  """The arrays of a call in the compute dtype (16-bit floats: float32; a head's product
  takes 16-bit operands as they are); a masked row's hidden state and logits are zeroed, so
  that padding (even NaN) adds nothing to any gradient."""
  floats = [v for k, v in arrays.items() if k.startswith(SIDES) and v is not None]
  dtype = _numerics.compute_dtype(jnp.result_type(*floats))
  mask = arrays.get("row_mask")
  sides = {}
  for s, kind in zip(SIDES, st.kinds, strict=True):
    if kind is None:
      continue
    h = arrays[f"{s}_hidden"]
    h_t = None
    if h is not None:
      op = B.operand_dtype(jnp.result_type(h.dtype, arrays[f"{s}_weight"].dtype), dtype)
      h = B.zero_unless(None if mask is None else mask[:, None], h.astype(op))
      if f"{s}_weight" in needs:
        # A contiguous transpose: XLA's CPU dot is much slower when it contracts the rows
        # of a [rows, D] operand in place (docs' performance page).
        h_t = lax.optimization_barrier(h.T)
    v = arrays[f"{s}_values"]
    if v is not None and mask is not None:  # a masked row's logits likewise
      v = jnp.where(mask[:, None], v, jnp.zeros_like(v))
    sides[s] = B.Side(kind, h, arrays[f"{s}_weight"], v, h_t)
  rest = {}
  for k, v in arrays.items():
    if v is None or k.startswith(SIDES):
      continue
    rest[k] = v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v
  offset = 0 if st.vocab_axis is None else lax.axis_index(st.vocab_axis) * st.local_v
  return Problem(st, sides, rest, dtype, offset, frozenset(needs))


def _total(pb: Problem, values, counts):
  """``(output, count)``: per-row values, or their sum or mean (over the data shards too)."""
  st = pb.st
  if st.reduction is None:
    return values, None
  total, count = jnp.sum(values), jnp.sum(counts)
  if st.data_axis is not None:
    total, count = lax.psum((total, count), st.data_axis)
  if st.reduction == "mean":
    return total / jnp.maximum(count, 1), count
  return total, count


def _sum_rows(st: Static, x):
  s = jnp.sum(x)
  return s if st.data_axis is None else lax.psum(s, st.data_axis)


# ---------------------------------------------------------------------------
# The passes a device runs, and the custom VJP over them
# ---------------------------------------------------------------------------


def one_sweep(st: Static, needs) -> bool:
  """Whether the forward pass forms the gradients too (see the module docstring)."""
  return st.reduction is not None or not any(k in WEIGHTS for k in needs)


def local_value(st: Static, arrays):
  pb = problem(st, arrays)
  values, counts, _, _ = _sweep(pb)
  return _total(pb, values, counts)[0]


def local_forward(st: Static, needs, arrays):
  """The forward pass of either strategy: ``(out, residual)``; the residual is the
  gradients and the count (one sweep) or the per-row statistics (recompute)."""
  pb = problem(st, arrays, needs)
  if not one_sweep(st, needs):
    values, counts, stats, _ = _sweep(pb, keep_stats=True)
    return _total(pb, values, counts)[0], stats
  values, counts, _, grads = _sweep(pb, g=jnp.ones((st.num_rows,), pb.dtype))
  out, count = _total(pb, values, counts)
  if st.reduction is not None:  # a scalar option's derivative, summed over the rows
    grads = {k: _sum_rows(st, v) if k in st.diff_opts else v for k, v in grads.items()}
  return out, (grads, count)


def local_backward(st: Static, needs, arrays, stats, g):
  """The recomputing backward pass: the gradients for the per-row cotangent ``g``."""
  pb = problem(st, arrays, needs)
  grads = _sweep(pb, g=g.astype(pb.dtype), stats=stats)[3]
  return {k: _sum_rows(st, v) if k in st.diff_opts else v for k, v in grads.items()}


class Passes(NamedTuple):
  """The three passes of a call: value only, the forward pass, the recomputing backward."""

  value: Any  # (st, arrays) -> out
  forward: Any  # (st, needs, arrays) -> (out, residual)
  backward: Any  # (st, needs, arrays, stats, g) -> grads


def _check_needs(st: Static, needs):
  for k in sorted(needs):
    if k not in DIFFERENTIABLE and k not in st.diff_opts:
      raise TypeError(
        f"{st.fn}: no derivative with respect to `{k}` (it enters the loss as a constant); "
        f"differentiate the core functions on materialised logits for that."
      )


def make_vjp(passes: Passes):
  """``f(st, arrays)``: the value, with a custom VJP over ``passes``."""

  def impl(st, arrays):
    return passes.value(st, arrays)

  def fwd(st, arrays):
    needs = frozenset(k for k, a in arrays.items() if a is not None and a.perturbed)
    _check_needs(st, needs)
    arrays = {k: None if a is None else a.value for k, a in arrays.items()}
    out, res = passes.forward(st, needs, arrays)
    # empty arrays of the primal dtypes: the cotangents' dtypes, and which were needed
    markers = {k: jnp.zeros((0,), arrays[k].dtype) for k in needs}
    kept = None if one_sweep(st, needs) else arrays
    return out, (markers, kept, res)

  def bwd(st, res, g):
    markers, arrays, res = res
    needs = frozenset(markers)
    if arrays is None:  # one sweep: the residuals are the gradients, scaled here
      grads, count = res
      if st.reduction is None:
        grads = {k: _scale_rows(st, k, v, g) for k, v in grads.items()}
      else:
        scale = g if st.reduction == "sum" else g / jnp.maximum(count, 1)
        grads = {k: v * scale.astype(v.dtype) for k, v in grads.items()}
    else:
      grads = passes.backward(st, needs, arrays, res, g)
    out = {k: grads[k].astype(markers[k].dtype) if k in markers else None for k in st.keys}
    return (out,)

  f = jax.custom_vjp(impl, nondiff_argnums=(0,))
  f.defvjp(fwd, bwd, symbolic_zeros=True)
  return f


def _scale_rows(st: Static, k: str, v, g):
  """A per-row gradient times the per-row cotangent (a scalar option's: their dot)."""
  g = g.astype(v.dtype)
  if k in st.diff_opts:
    return jnp.sum(v * g)
  return v * g.reshape((-1,) + (1,) * (v.ndim - 1))


# One device: jitted, so that an eager call compiles the loops once per configuration.
device = jax.jit(make_vjp(Passes(local_value, local_forward, local_backward)), static_argnums=0)
