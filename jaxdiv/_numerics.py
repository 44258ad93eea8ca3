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
# Each kernel returns per-row statistics (the loss and the log-normalisers) and is
# computed on one of two paths, chosen at run time by ``lax.cond``:
#
# * The fast path (no ``where`` mask). XLA on CPU compiles a reduction together with its
#   elementwise producer into one vectorised kernel only while the producer is plain
#   arithmetic (``+ - * /``, ``max``, ``exp``, ``log``, ``sqrt``); a compare or select
#   (``jnp.where``) in it drops the whole reduction to a loop about four times slower. So
#   the fast path has no ``where`` in any reduction: each loss is a where-free formula
#   that is *finite exactly when it is valid* -- a ``-inf`` logit against a zero
#   probability (0 * inf), a NaN, a ``+inf`` or a negative probability (through
#   ``sqrt(p) - sqrt(p)``, 0 for p >= 0 and NaN otherwise) all make it non-finite.
#   When a strided sample of the logits (``_GLOBAL_SAMPLES`` over the whole array) is at
#   most ``_UNSHIFTED_MAX`` -- logits as models produce them -- the formula runs
#   unshifted: ``sum e^z`` itself, a logit above about 88 overflows (non-finite), and a
#   row whose log-normaliser is below ``_UNSHIFTED_MIN_LSE`` (where flushing ``e^z`` to
#   0 below -87 could lose mass) is marked NaN. Otherwise the rows are shifted by the
#   maximum of at most ``_SAMPLES`` evenly spaced logits, not by the exact maximum: it
#   costs no pass over the data, keeps every exponential ``<= e^(max - shift)`` and the
#   sum ``>= 1``; a row whose logits span more than about 80 above that sample
#   overflows, which again shows as a non-finite result. Skipping the subtraction saves
#   about a sixth of each pass (KL forward at [1024, 32768]: 52 against 62 ms).
# * The exact path, taken when any fast result is non-finite (and always with a mask):
#   the edge conventions spelled out with ``where`` (``0 log 0 = 0``, ``p > 0 = q`` gives
#   ``+inf``, ``+inf`` logits give NaN, fully masked rows give 0), shifted by the exact
#   maximum. Where it reads two N x V inputs it runs over blocks of rows (``lax.map``),
#   so that the passes of one block stay in cache and no N x V temporary is kept.
#
# Two sums over the same exponentials (``sum e^a`` and ``sum e^a (a - b)``) are kept
# separate reductions that each recompute ``e^a``: each reads its own copy of the input
# and of the shift (``_fresh``, an optimisation barrier), so XLA cannot
# merge them into one materialised N x V array, which on CPU costs more (a page-faulted
# buffer) than the extra exponential. The same copies keep a 16-bit input's conversion
# to float32 inside each pass (``_up``). Every per-row result
# passes through ``_seal`` so that XLA keeps each reduction its own kernel.
#
# Derivatives: custom_jvp (not custom_vjp) so that forward mode, jacfwd and hessian keep
# working. Each rule calls the kernel itself (a custom_jvp too, so higher orders
# recurse) for the per-row statistics and then forms the tangent as an elementwise
# expression in the inputs and those statistics, linear in the tangents; JAX transposes
# it for reverse mode, and XLA fuses the recomputation (softmax(q) - softmax(p)) into the
# gradient, so a value-and-gradient keeps O(rows) residuals and no N x V temporaries
# besides the gradient. (The labels rule once formed ``exp(z - max)`` a single time for
# both its sum and the softmax, written into the gradient's buffer: with the unshifted
# fast statistics the recomputation is faster -- value-and-gradient at [1024, 32768]
# 82 against 88 ms in float32, 66 against 112 ms in bfloat16.) Tangents of inputs that
# are not differentiated arrive as symbolic zeros and cost nothing.
# ---------------------------------------------------------------------------

_BLOCK_BYTES = 1 << 20  # exact path: per input and block of rows, the passes stay in cache
_SAMPLES = 64  # fast path: logits per row whose maximum is the shift
_FAST_MIN_SIZE = 4096  # elements of the logits below which only the exact path is built
_UNSHIFTED_MAX = 64.0  # sampled logits at most this: the fast path runs unshifted ...
_UNSHIFTED_MIN_LSE = -20.0  # ... and keeps the rows whose log-normalisers are at least this
_GLOBAL_SAMPLES = 4096  # logits (over the whole array) whose maximum decides the above
_TINY_SIZE = 128  # elements up to which the exact rows' sums are one reduction (_row_sums)


def _map_rows(body, arrays, num_categories: int):
  """``body`` over blocks of rows of ``[..., V]`` arrays (``None`` entries passed through).

  ``body`` takes arrays with the categories last and any leading shape, and returns a
  tuple of per-row arrays (the category axis reduced). Batch dimensions are flattened
  to rows, processed in cache-sized blocks, and restored.
  """
  batch = next(x.shape[:-1] for x in arrays if x is not None)
  rows = math.prod(batch)
  flat = tuple(None if x is None else x.reshape((rows, x.shape[-1])) for x in arrays)
  block = max(1, _BLOCK_BYTES // (4 * max(num_categories, 1)))
  if rows <= block:
    out = body(*flat)
  else:
    out = lax.map(lambda xs: body(*xs), flat, batch_size=block)
  return tuple(o.reshape(batch) for o in out)


def _fast_or_exact(fast, exact, arrays: tuple, where: Array | None, logits: tuple):
  """``fast(*arrays, shift=...)`` where all its results are finite, else ``exact``.

  ``fast`` returns the loss and then the log-normaliser of each logits array (those at
  the positions ``logits`` of ``arrays``). It runs unshifted when the maximum of a
  strided sample of every logits array is at most ``_UNSHIFTED_MAX``, else shifted by
  per-row sampled maxima (see ``_fast_tier``). The choices are ``lax.cond`` over the
  whole batch (under ``vmap`` they become selects and every path runs; the result is
  the same). With a mask, with no categories, or below ``_FAST_MIN_SIZE`` elements,
  only the exact path is built: at that size the conditionals alone cost more than the
  whole exact path (and at [8, 10] they would push the call over XLA's inline-execution
  line, see ``_row_sums``).
  """
  size = arrays[-1].size
  if where is not None or arrays[-1].shape[-1] == 0 or size < _FAST_MIN_SIZE:
    return exact(*arrays, where)
  small = _all([_global_sample_max(arrays[i]) <= _UNSHIFTED_MAX for i in logits])
  out = lax.cond(
    small, lambda: _fast_tier(fast, arrays, False), lambda: _fast_tier(fast, arrays, True)
  )
  ok = _all([jnp.all(jnp.isfinite(o)) for o in out])
  return lax.cond(ok, lambda: out, lambda: exact(*arrays, None))


def _all(flags):
  return functools.reduce(jnp.logical_and, flags)


def _global_sample_max(x: Array) -> Array:
  """Maximum of about ``_GLOBAL_SAMPLES`` evenly spaced entries of the whole array."""
  flat = x.reshape(-1)
  return jnp.max(flat[:: max(1, flat.size // _GLOBAL_SAMPLES)])


def _fast_tier(fast, arrays: tuple, shift: bool):
  """The fast formula shifted (by per-row sampled maxima) or unshifted.

  Unshifted, ``sum e^x`` skips the subtraction (about a sixth of each pass's time) and
  overflows to a non-finite result where a logit exceeds about 88 (float32). Its one
  silent failure is underflow: ``e^x`` is flushed to 0 below ``x = -87``, which only
  loses mass that matters on a row whose log-normaliser is far below 0. Such rows (a
  log-normaliser below ``_UNSHIFTED_MIN_LSE``: what is flushed there is below ``e^-67``
  of the row's mass) are set to NaN, so the exact path takes them.
  """
  out = fast(*arrays, shift=shift)
  if shift:
    return out
  ok = _all([lse >= _UNSHIFTED_MIN_LSE for lse in out[1:]])
  return tuple(jnp.where(ok, o, jnp.full_like(o, jnp.nan)) for o in out)


def _seal(x: Array) -> Array:
  """``x`` unchanged, behind a select that XLA's CPU fusion cannot see through.

  Each per-row statistic of the fast path passes through this, so that every reduction
  stays its own vectorised kernel: left to itself, XLA groups several reductions and
  their per-row epilogue into one kernel that runs up to four times slower at short
  rows (seen at [65536, 512]). NaN stays NaN.
  """
  return jnp.where(x == x, x, jnp.full_like(x, jnp.nan))


def _sample_max(x: Array) -> Array:
  """Per-row maximum of ``_SAMPLES`` evenly spaced entries (the fast path's shift).

  Sampling pays only while the samples lie at least a cache line apart (rows of 1024
  categories or more in float32); shorter rows take the exact maximum, one pass that
  XLA runs without materialising the strided sample.
  """
  stride = x.shape[-1] // _SAMPLES
  if stride * x.dtype.itemsize < 64:
    return _seal(jnp.max(x, axis=-1))
  return _seal(jnp.max(x[..., ::stride], axis=-1))


def _dtype(*xs: Array) -> jnp.dtype:
  """The computation dtype of the kernels' float inputs (float32 for 16-bit ones)."""
  return compute_dtype(jnp.result_type(*(x.dtype for x in xs)))


def _up(x: Array, dtype) -> Array:
  """Logits in the computation dtype.

  The kernels take 16-bit inputs as given and convert them where they are read, each
  fast pass from its own copy (``_fast_sum``): otherwise XLA merges the conversions (also
  out of a slice) into one converted N x V array that it writes out and the passes
  share. (The exact path's row-block loop still gets its conversion hoisted out of the
  loop by XLA, so there a 16-bit input costs a converted copy.)
  """
  return x if x.dtype == dtype else x.astype(dtype)


def _up_probs(p: Array, dtype) -> Array:
  """Probabilities in the computation dtype, 16-bit values below float32's normal range
  set to exactly 0 (see :func:`flush_subnormal_upcast`)."""
  return flush_subnormal_upcast(p, p.astype(dtype))


def _fast_sum(x: Array, shift: bool, dtype):
  """``(m, s, x')``: the row shift ``m`` (None unshifted), ``s = sum e^(x - m)``, and a
  fresh copy ``x'`` of the input for a further pass.

  The shift, the sum and the further pass each read their own copy of ``x`` (one
  barrier, distinct outputs), so that neither an exponential nor a 16-bit input's
  conversion is shared between them. (Two barriers on the same array would be merged.)
  """
  x0, x1, x2 = _fresh(x, x, x)
  m = _up(_sample_max(x0), dtype) if shift else None
  x1 = _up(x1, dtype)
  s = _seal(jnp.sum(jnp.exp(x1 if m is None else x1 - m[..., None]), axis=-1))
  return m, s, x2


def _shifted_lse(shift: Array | None, s: Array) -> Array:
  return jnp.log(s) if shift is None else shift + jnp.log(s)


def _fresh(*xs):
  """The same values as new HLO values, which XLA's CSE keeps apart from the originals.

  What is computed from them is recomputed, not shared (see the section comment).
  """
  return lax.optimization_barrier(xs)


def _sqrt_guard(p: Array) -> Array:
  """0 where ``p >= 0``, NaN where ``p < 0`` (or NaN): a where-free validity term.

  (``sqrt(p) - sqrt(p)``, not ``0 * sqrt(p)``: a broadcast constant in a reduction's
  producer is materialised as a full array by XLA on CPU.)
  """
  r = jnp.sqrt(p)
  return r - r


def nan_negative(p: Array, where: Array | None) -> Array:
  """Probabilities as given, NaN where negative, 0 at categories excluded by ``where``."""
  p = jnp.where(p < 0, jnp.full_like(p, jnp.nan), p)
  if where is not None:
    p = jnp.where(where, p, jnp.zeros_like(p))
  return p


def _mask(x: Array, where: Array | None) -> Array:
  return x if where is None else jnp.where(where, x, -jnp.inf)


def _shift(x: Array) -> Array:
  """``(x - max(x), max(x))`` over the last axis; a row of only ``-inf`` stays ``-inf``.

  (Such a row is shifted by the lowest finite number, not by ``-inf``.) A ``+inf`` or
  NaN in the row makes the whole row NaN (``inf - inf``), as it should.
  """
  m = jnp.max(x, axis=-1, keepdims=True)
  return x - jnp.maximum(m, jnp.finfo(m.dtype).min), m


def _row_sums(xs: tuple, tiny: bool) -> tuple[Array, ...]:
  """Sums over the last axis of same-shaped arrays (the exact KL and CE rows' sums).

  ``tiny`` (the whole input has at most ``_TINY_SIZE`` elements): one variadic
  reduction, so that what the sums share (the shifted logits) is computed once, in one
  kernel. XLA's CPU client runs a call whose estimated cost is under 1000 flops on the
  calling thread and hands any other to a worker thread, which at [8, 10] costs more
  than the computation itself (KL forward 15.5 against 9.8 us); separate reductions
  each recompute the shared subtractions, and at [8, 10] that alone crosses the line.
  Otherwise separate reductions, each its own vectorised kernel: a variadic reduction
  is not vectorised (with it, the masked KL at [64, 50] took 2.8 times as long).
  ``tiny`` is decided on the whole input, outside ``_map_rows`` (whose blocks are
  vmapped, so the body sees single rows).
  """
  if not tiny:
    return tuple(jnp.sum(x, axis=-1) for x in xs)

  def add(u, v):
    return tuple(ui + vi for ui, vi in zip(u, v, strict=True))

  zeros = tuple(jnp.zeros((), x.dtype) for x in xs)
  return tuple(lax.reduce(xs, zeros, add, (xs[0].ndim - 1,)))


def _underflowed_inf(t: Array, inf: float) -> Array:
  """The exact KL and CE rows' ``sum_i e^(a_i - max) * c_i`` with NaN read as ``inf``.

  A category with ``p_i > 0 = q_i`` has ``c_i = +-inf``, which gives the right infinity
  unless ``e^(a_i - max)`` underflowed to 0 (``0 * inf = NaN``). That is the only NaN
  the sum can hold while ``sum e^(a - max)`` and ``sum e^(b - max)`` are not NaN: a NaN
  or ``+inf`` logit makes one of those NaN, and the loss with it. So one select per row
  replaces one per category.
  """
  return jnp.where(jnp.isnan(t), jnp.full_like(t, inf), t)


def _empty_to_one(s: Array, where: Array | None) -> Array:
  """Sum of exps with 1 on fully excluded rows (log-normaliser 0: the zero measure)."""
  if where is None:
    return s
  return jnp.where(jnp.any(where, axis=-1), s, jnp.ones_like(s))


def _lse(m: Array, s: Array) -> Array:
  m = m[..., 0]
  return jnp.where(m == -jnp.inf, jnp.zeros_like(m), m) + jnp.log(s)


def _masked_lse(b: Array, where: Array | None) -> Array:
  """Exact path: ``logsumexp`` of the masked logits (0 for a fully excluded row)."""
  b = _mask(b, where)
  db, mb = _shift(b)
  return _lse(mb, _empty_to_one(jnp.sum(jnp.exp(db), axis=-1), where))


def _log_prob(x: Array, lse: Array):
  """``(prob, safe log-prob, zero mask)`` from masked logits and their log-normaliser.

  Elementwise, so that XLA fuses it into whatever consumes it; the log-prob is 0 (not
  ``-inf``) where the probability is 0, which keeps every derivative finite there.
  """
  zero = x == -jnp.inf
  log_p = jnp.where(zero, jnp.zeros_like(x), x - lse[..., None])
  return jnp.where(zero, jnp.zeros_like(x), jnp.exp(log_p)), log_p, zero


def _prob(x: Array, lse: Array, where: Array | None) -> Array:
  """``exp(x - lse)`` with 0 at ``-inf`` and excluded logits (the rules' softmax).

  Without a mask this is plain arithmetic, one elementwise pass that XLA fuses into the
  gradient (a row of only ``-inf`` logits, whose ``lse`` is ``-inf``, gives zeros).
  """
  if where is not None:
    return _log_prob(_mask(x, where), lse)[0]
  return jnp.exp(x - jnp.where(lse == -jnp.inf, jnp.zeros_like(lse), lse)[..., None])


def _is_zero(t) -> bool:
  return t is None or isinstance(t, SymbolicZero)


def _dot(coef: Array, t) -> Array | None:
  return None if _is_zero(t) else jnp.sum(coef * t, axis=-1)


def _add(*terms) -> Array:
  terms = [t for t in terms if t is not None]
  return sum(terms[1:], terms[0])


def _total(p: Array, where: Array | None, dtype) -> Array:
  """``sum(p)`` per row over the included categories; NaN if any ``p`` is negative."""
  if where is None:
    (p,) = _fresh(p)  # not shared with the loss's reduction (see the section comment)
    p = _up_probs(p, dtype)
    return jnp.sum(p + _sqrt_guard(p), axis=-1)
  return jnp.sum(nan_negative(_up_probs(p, dtype), where), axis=-1)


# KL(softmax(a) || softmax(b)) ----------------------------------------------


def _fast_pair(a: Array, b: Array, shift: bool):
  """Fast path of the two-logit kernels: ``(lse_a, lse_b, sa, sb, da, db)``.

  The sums ``sa = sum e^(a - ma)`` (likewise ``sb``) for the per-row shifts ``ma, mb``
  (none when ``shift`` is false), their log-normalisers, and the shifted logits
  ``da, db`` for the third reduction, built fresh so that its ``e^da`` is recomputed
  rather than shared with ``sa``.
  """
  dt = _dtype(a, b)
  (ma, sa, a2), (mb, sb, b2) = _fast_sum(a, shift, dt), _fast_sum(b, shift, dt)
  da, db = _up(a2, dt), _up(b2, dt)
  if shift:
    ma2, mb2 = _fresh(ma, mb)
    da, db = da - ma2[..., None], db - mb2[..., None]
  return _shifted_lse(ma, sa), _shifted_lse(mb, sb), sa, sb, da, db


def _kl_fast(a: Array, b: Array, shift: bool = True):
  lse_a, lse_b, sa, sb, da, db = _fast_pair(a, b, shift)
  t = _seal(jnp.sum(jnp.exp(da) * (da - db), axis=-1))
  # E_p[da - db] - log(sa / sb): the ratio keeps the precision of a small KL.
  return t / sa - jnp.log(sa / sb), lse_a, lse_b


def _masked_pair(a: Array, b: Array, where: Array | None):
  """Exact path: both logit arrays in the computation dtype, masked."""
  dt = _dtype(a, b)
  return _mask(_up(a, dt), where), _mask(_up(b, dt), where)


def _pair_sums(a: Array, b: Array, where: Array | None, tiny: bool, term, inf: float):
  """Exact rows of the two-logit kernels: ``(sa, sb, t, lse_a, lse_b)``.

  ``sa = sum e^da``, ``sb = sum e^db`` for the logits shifted by their exact maxima, and
  ``t = sum_i e^da_i term(da_i, db_i)``: 0 where ``p_i = 0`` (also where ``q_i = 0``),
  ``inf`` (the caller's sign) where ``p_i > 0 = q_i``, even where the exponential
  underflows (:func:`_underflowed_inf`). One select per category, which keeps [8, 10]
  under XLA's inline line (:func:`_row_sums`).
  """
  a, b = _masked_pair(a, b, where)
  da, ma = _shift(a)
  db, mb = _shift(b)
  ea, eb = jnp.exp(da), jnp.exp(db)
  terms = jnp.where(a == -jnp.inf, jnp.zeros_like(ea), ea * term(da, db))
  sa, sb, t = _row_sums((ea, eb, terms), tiny)
  sa, sb = _empty_to_one(sa, where), _empty_to_one(sb, where)
  return sa, sb, _underflowed_inf(t, inf), _lse(ma, sa), _lse(mb, sb)


def _kl_rows(a: Array, b: Array, where: Array | None, tiny: bool = False):
  # p_i (log p_i - log q_i) up to the per-row constant: e^da (da - db).
  sa, sb, t, lse_a, lse_b = _pair_sums(a, b, where, tiny, lambda da, db: da - db, jnp.inf)
  return t / sa - jnp.log(sa / sb), lse_a, lse_b


def _kl_exact(a: Array, b: Array, where: Array | None):
  rows = functools.partial(_kl_rows, tiny=a.size <= _TINY_SIZE)
  return _map_rows(rows, (a, b, where), a.shape[-1])


@jax.custom_jvp
def _kl_stats(p_logits: Array, q_logits: Array, where: Array | None):
  """``(KL, logsumexp(p_logits), logsumexp(q_logits))`` per row (masked by ``where``)."""
  return _fast_or_exact(_kl_fast, _kl_exact, (p_logits, q_logits), where, (0, 1))


@functools.partial(_kl_stats.defjvp, symbolic_zeros=True)
def _kl_stats_jvp(primals, tangents):
  a, b, where = primals
  da, db, _ = tangents
  kl, lse_a, lse_b = _kl_stats(a, b, where)
  a, b = _up(a, kl.dtype), _up(b, kl.dtype)
  p, q = _prob(a, lse_a, where), _prob(b, lse_b, where)
  # dKL = <q - p, dq> + <p (log p - log q - KL), dp>;  dlse_p = <p, dp>, dlse_q = <q, dq>.
  zero = jnp.zeros_like(kl)
  dkl = _add(zero, _dot(q - p, db))
  if not _is_zero(da):
    _, log_p, _ = _log_prob(_mask(a, where), lse_a)
    _, log_q, _ = _log_prob(_mask(b, where), lse_b)
    dkl = _add(dkl, _dot(p * (log_p - log_q - kl[..., None]), da))
  return (kl, lse_a, lse_b), (dkl, _add(zero, _dot(p, da)), _add(zero, _dot(q, db)))


def kl_from_logits(p_logits: Array, q_logits: Array, where: Array | None) -> Array:
  r"""KL(softmax(p_logits) || softmax(q_logits)) over the last axis (fused).

  .. math:: \mathrm{KL} = \mathbb{E}_p[\tilde a - \tilde b] - \log(s_a / s_b)

  with :math:`\tilde a = a - c_a`, :math:`s_a = \sum e^{\tilde a}` (same for ``b``) for
  a per-row shift :math:`c`: three reductions, no N x V temporaries. ``-inf`` logits
  and excluded categories give probability 0 (``0 log(0/q) = 0``, ``p > 0 = q`` gives
  ``+inf``); a fully excluded row gives 0; ``+inf`` or NaN logits give NaN.

  Derivative rule (custom JVP, closed form):
  ``dKL = <softmax(q) - softmax(p), dq> + <p (log p - log q - KL), dp>``.
  """
  return _kl_stats(p_logits, q_logits, where)[0]


# H(softmax(a), softmax(b)) -------------------------------------------------


def _ce_fast(a: Array, b: Array, shift: bool = True):
  lse_a, lse_b, sa, sb, da, db = _fast_pair(a, b, shift)
  # (da - da): NaN at a -inf ``a``, where the KL formula is NaN too. So CE and KL of the
  # same logits take the same path and return bitwise-equal log-normalisers, and their
  # derivative rules (both softmax(b) - softmax(a) in b) take identical steps.
  t = _seal(jnp.sum(jnp.exp(da) * (db + (da - da)), axis=-1))
  return jnp.log(sb) - t / sa, lse_a, lse_b


def _ce_rows(a: Array, b: Array, where: Array | None, tiny: bool = False):
  # p_i (b_i - max b) up to the per-row constant: e^da db.
  sa, sb, t, lse_a, lse_b = _pair_sums(a, b, where, tiny, lambda da, db: db, -jnp.inf)
  return jnp.log(sb) - t / sa, lse_a, lse_b


def _ce_exact(a: Array, b: Array, where: Array | None):
  rows = functools.partial(_ce_rows, tiny=a.size <= _TINY_SIZE)
  return _map_rows(rows, (a, b, where), a.shape[-1])


@jax.custom_jvp
def _ce_stats(p_logits: Array, q_logits: Array, where: Array | None):
  """``(H(p, q), logsumexp(p_logits), logsumexp(q_logits))`` per row."""
  return _fast_or_exact(_ce_fast, _ce_exact, (p_logits, q_logits), where, (0, 1))


@functools.partial(_ce_stats.defjvp, symbolic_zeros=True)
def _ce_stats_jvp(primals, tangents):
  a, b, where = primals
  da, db, _ = tangents
  ce, lse_a, lse_b = _ce_stats(a, b, where)
  a, b = _up(a, ce.dtype), _up(b, ce.dtype)
  p, q = _prob(a, lse_a, where), _prob(b, lse_b, where)
  # dH = <q - p, dq> - <p (log q + H), dp>.
  zero = jnp.zeros_like(ce)
  dce = _add(zero, _dot(q - p, db))
  if not _is_zero(da):
    _, log_q, _ = _log_prob(_mask(b, where), lse_b)
    dce = _add(dce, _dot(-p * (log_q + ce[..., None]), da))
  return (ce, lse_a, lse_b), (dce, _add(zero, _dot(p, da)), _add(zero, _dot(q, db)))


def ce_from_logits(p_logits: Array, q_logits: Array, where: Array | None) -> Array:
  r"""H(softmax(p_logits), softmax(q_logits)) over the last axis (fused).

  .. math:: H = \log s_b - \mathbb{E}_p[\tilde b]

  Conventions as in :func:`kl_from_logits`. Derivative rule (custom JVP, closed form):
  ``dH = <softmax(q) - softmax(p), dq> - <p (log q + H), dp>``.
  """
  return _ce_stats(p_logits, q_logits, where)[0]


# H(p, softmax(b)) and KL(p || softmax(b)) for probabilities p ------------------------


def _fast_terms(p: Array, b: Array, shift: bool):
  """``(lse, p, b)``: the fast log-normaliser and fresh ``p``, ``b`` in its dtype."""
  dt = _dtype(p, b)
  m, s, b = _fast_sum(b, shift, dt)
  return _shifted_lse(m, s), _up(p, dt), _up(b, dt)


def _soft_ce_fast(p: Array, b: Array, shift: bool = True):
  lse, p, b = _fast_terms(p, b, shift)
  return jnp.sum(p * (lse[..., None] - b) + _sqrt_guard(p), axis=-1), lse


def _soft_ce_exact(p: Array, b: Array, where: Array | None):
  return _map_rows(_soft_ce_rows, (p, b, where), b.shape[-1])


def _soft_rows_inputs(p: Array, b: Array, where: Array | None):
  """Exact path: ``(p, b, lse, lse')`` -- probabilities 0 where excluded, masked logits,
  their log-normaliser, and that log-normaliser raised to the lowest finite number
  (``lse' - b_i = +inf`` at a ``-inf`` logit, also on a row of only ``-inf``)."""
  dt = _dtype(p, b)
  p, b = _up_probs(p, dt), _mask(_up(b, dt), where)
  if where is not None:
    p = jnp.where(where, p, jnp.zeros_like(p))
  lse = _masked_lse(b, where)
  return p, b, lse, jnp.maximum(lse, jnp.finfo(lse.dtype).min)[..., None]


def _soft_term(p: Array, term: Array) -> Array:
  """``term`` where ``p > 0``, else ``sqrt(p)``: 0 where ``p = 0`` (whatever ``term``
  is there), NaN where ``p`` is negative or NaN. One select per category, which keeps
  [8, 10] under XLA's inline-execution line (see :func:`_row_sums`)."""
  return jnp.where(p > 0, term, jnp.sqrt(p))


def _soft_ce_rows(p: Array, b: Array, where: Array | None):
  p, b, lse, lse_ = _soft_rows_inputs(p, b, where)
  # p_i (lse - b_i): 0 where p_i = 0, +inf where p_i > 0 = q_i; NaN p (and the NaN of a
  # +inf logit, through lse) propagates.
  return jnp.sum(_soft_term(p, p * (lse_ - b)), axis=-1), lse


@jax.custom_jvp
def _soft_ce_stats(p: Array, q_logits: Array, where: Array | None):
  """``(H(p, q), logsumexp(q_logits))`` per row, ``p`` probabilities as given."""
  return _fast_or_exact(_soft_ce_fast, _soft_ce_exact, (p, q_logits), where, (1,))


def _soft_rule_q(p: Array, b: Array, where: Array | None, lse: Array):
  """``(q, q sum(p) - p)``: the softmax and the ``dq`` coefficient shared by CE and KL.

  CE and KL with the same ``p`` call this with the same ``lse`` (computed by the same
  expression), so minimising either takes bitwise-identical steps.
  """
  q = _prob(_up(b, lse.dtype), lse, where)
  # Without a mask p is used raw: a negative entry already makes sum(p), so the row, NaN.
  p_up = _up_probs(p, lse.dtype)
  p_used = p_up if where is None else nan_negative(p_up, where)
  return q, q * _total(p, where, lse.dtype)[..., None] - p_used


@functools.partial(_soft_ce_stats.defjvp, symbolic_zeros=True)
def _soft_ce_stats_jvp(primals, tangents):
  p, b, where = primals
  dp, db, _ = tangents
  ce, lse_b = _soft_ce_stats(p, b, where)
  q, coef_q = _soft_rule_q(p, b, where, lse_b)
  # dH = <q sum(p) - p, dq> - <log q, dp>  (log q taken as 0 where q = 0).
  zero = jnp.zeros_like(ce)
  dce = _add(zero, _dot(coef_q, db))
  if not _is_zero(dp):
    dce = _add(dce, _dot(-_log_prob(_mask(_up(b, ce.dtype), where), lse_b)[1], dp))
  return (ce, lse_b), (dce, _add(zero, _dot(q, db)))


def soft_ce_from_logits(p: Array, q_logits: Array, where: Array | None) -> Array:
  r"""H(p, softmax(q_logits)) over the last axis for probabilities ``p`` used as given.

  .. math:: H = \textstyle\sum_i p_i (\operatorname{lse}(z) - z_i)

  ``p`` is taken raw: a negative entry gives NaN, excluded categories count as 0.
  Derivative rule (custom JVP, closed form):
  ``dH = <q sum(p) - p, dq> - <log q, dp>`` (``log q`` taken as 0 where ``q = 0``).
  """
  return _soft_ce_stats(p, q_logits, where)[0]


def _soft_kl_fast(p: Array, b: Array, shift: bool = True):
  lse, p, b = _fast_terms(p, b, shift)
  log_p = jnp.log(jnp.maximum(p, jnp.finfo(p.dtype).tiny))  # p log p = 0 at p = 0
  terms = p * (log_p - (b - lse[..., None])) + _sqrt_guard(p)
  return jnp.sum(terms, axis=-1), lse


def _soft_kl_exact(p: Array, b: Array, where: Array | None):
  return _map_rows(_soft_kl_rows, (p, b, where), b.shape[-1])


def _soft_kl_rows(p: Array, b: Array, where: Array | None):
  p, b, lse, lse_ = _soft_rows_inputs(p, b, where)
  # p_i (log p_i - log q_i), formed per category (keeps a small KL's precision): 0 where
  # p_i = 0, +inf where p_i > 0 = q_i; NaN p propagates.
  return jnp.sum(_soft_term(p, p * (jnp.log(p) - (b - lse_))), axis=-1), lse


@jax.custom_jvp
def _soft_kl_stats(p: Array, q_logits: Array, where: Array | None):
  """``(KL(p || softmax(q_logits)), logsumexp(q_logits))`` per row, ``p`` as given."""
  return _fast_or_exact(_soft_kl_fast, _soft_kl_exact, (p, q_logits), where, (1,))


@functools.partial(_soft_kl_stats.defjvp, symbolic_zeros=True)
def _soft_kl_stats_jvp(primals, tangents):
  p, b, where = primals
  dp, db, _ = tangents
  kl, lse_b = _soft_kl_stats(p, b, where)
  q, coef_q = _soft_rule_q(p, b, where, lse_b)
  # dKL = <q sum(p) - p, dq> + <log p + 1 - log q, dp>: the q-part is *the same* rule
  # as soft_ce_from_logits (so CE and KL trajectories agree bitwise); the log p + 1
  # part is taken as 0 where p = 0 (its true value is -inf), as for the entropy.
  zero = jnp.zeros_like(kl)
  dkl = _add(zero, _dot(coef_q, db))
  if not _is_zero(dp):
    log_p, p_zero = safe_log(nan_negative(_up_probs(p, kl.dtype), where))
    log_q = _log_prob(_mask(_up(b, kl.dtype), where), lse_b)[1]
    coef_p = jnp.where(p_zero, jnp.zeros_like(log_p), log_p + 1) - log_q
    dkl = _add(dkl, _dot(coef_p, dp))
  return (kl, lse_b), (dkl, _add(zero, _dot(q, db)))


def soft_kl_from_logits(p: Array, q_logits: Array, where: Array | None) -> Array:
  r"""KL(p || softmax(q_logits)) over the last axis for probabilities ``p`` used as given.

  .. math:: \mathrm{KL} = \textstyle\sum_i p_i (\log p_i - z_i + \operatorname{lse}(z))

  ``p`` is taken raw, as in :func:`soft_ce_from_logits`. Derivative rule (custom JVP,
  closed form): ``dKL = <q sum(p) - p, dq> + <log p + 1 - log q, dp>`` -- the ``dq``
  part is the rule of :func:`soft_ce_from_logits`, so minimising either gives
  identical steps.
  """
  return _soft_kl_stats(p, q_logits, where)[0]


# -log softmax(b)[label] ----------------------------------------------------


def _pick(b: Array, labels: Array) -> Array:
  return jnp.take_along_axis(b, labels[..., None], axis=-1)[..., 0]


def _labels_fast(labels: Array, b: Array, shift: bool = True):
  dt = _dtype(b)
  m, s, b = _fast_sum(b, shift, dt)
  lse = _shifted_lse(m, s)
  return lse - _up(_pick(b, labels), dt), lse


def _labels_exact(labels: Array, b: Array, where: Array | None):
  b = _mask(_up(b, _dtype(b)), where)
  lse = _masked_lse(b, where)
  picked = _pick(b, labels)
  # +inf where the picked logit is -inf (also in a row of only -inf).
  return jnp.where(picked == -jnp.inf, jnp.full_like(lse, jnp.inf), lse - picked), lse


@jax.custom_jvp
def _labels_stats(labels: Array, q_logits: Array, where: Array | None):
  """``(-log softmax(q_logits)[label], logsumexp(q_logits))`` per row."""
  return _fast_or_exact(_labels_fast, _labels_exact, (labels, q_logits), where, (1,))


@functools.partial(_labels_stats.defjvp, symbolic_zeros=True)
def _labels_stats_jvp(primals, tangents):
  labels, b, where = primals
  _, db, _ = tangents
  nll, lse_b = _labels_stats(labels, b, where)
  q = _prob(_up(b, lse_b.dtype), lse_b, where)
  # d(-log q_y) = <q, dq> - dq_y. Picking dq_y (not a dense one-hot, whose compare costs
  # a third of the gradient pass) transposes to a scatter-add that XLA does in place.
  zero = jnp.zeros_like(nll)
  dq_q = _dot(q, db)
  dnll = _add(zero, None if dq_q is None else dq_q - _pick(db, labels))
  return (nll, lse_b), (dnll, _add(zero, dq_q))


def labels_ce_from_logits(labels: Array, q_logits: Array, where: Array | None) -> Array:
  r"""``-log softmax(q_logits)[labels]`` over the last axis (fused, one pass of exps).

  .. math:: -\log q_y = \log \textstyle\sum_i e^{b_i} - b_y

  ``labels`` must already be valid indices (the caller applies the ignore and
  out-of-range conventions); a label at a ``-inf`` logit or an excluded category gives
  ``+inf``; ``+inf`` or NaN logits anywhere in the row give NaN.
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
