"""The CPU strategy for the logits kernels' statistics (see :mod:`jaxdiv._kernels`).

XLA's CPU backend runs each per-row reduction as its own pass over the input, and
vectorises a reduction only while its elementwise producer is plain arithmetic (a
compare or select in it makes the whole pass a scalar loop). Two strategies follow,
each used where ``scripts/bench.py`` shows it pays (the docs' performance page has the
measurements):

* **Row blocks** (the exact formulas, with a mask or where the fast ones are not
  finite): the portable formula over blocks of rows of about a megabyte (``lax.map``),
  so that a block stays in cache for all of its passes instead of each pass reading the
  whole ``[N, V]`` array from memory.
* **Fast formulas** (no mask, at least 4096 elements): where-free formulas that are
  finite exactly when they are valid, each pass reading its own copy of the input (an
  optimisation barrier) so that a 16-bit input is converted inside the pass instead of
  into a materialised float32 copy; the rows are shifted by a sample of the logits (or
  not at all when the logits are small), which saves the maximum's pass. Where any
  result is not finite, the exact row blocks run instead (one ``lax.cond``).

Under ``vmap`` these functions fold the mapped axis into the rows
(:func:`jax.custom_batching.custom_vmap`), so that a conditional stays a conditional
and a vmapped call costs what the batched one does. On GPU and TPU the portable formula
runs as it is: the passes fuse there, and a loop or a conditional would split them.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxdiv import _numerics

_BLOCK_BYTES = 1 << 20  # per input and block of rows: a block's passes stay in cache
_FAST_MIN_SIZE = 4096  # elements below which the fast formulas' conditionals cost more
_SAMPLES = 64  # logits per row whose maximum is the fast formulas' shift
_UNSHIFTED_MAX = 64.0  # a global sample at most this: the fast formulas run unshifted ...
_UNSHIFTED_MIN_LOG_SUM = -20.0  # ... keeping rows whose log-normaliser is at least this
_GLOBAL_SAMPLES = 4096  # logits over the whole array whose maximum decides the above


def strategy(portable, *args):
  """The CPU statistics function for the portable rows function ``portable`` (one of
  :mod:`jaxdiv._kernels`' ``*_rows``, given by the caller: this module does not import the
  kernels) and these inputs: the portable formula, in row blocks where the input is larger
  than one, and the fast formulas where they apply, folding ``vmap`` into the rows."""
  name = portable.__name__
  x, z, where, *static = args  # every kernel: (p / p_logits / labels, logits, where, ...)
  exact = _exact(portable, z)
  fast = _FAST.get(name)
  fast_applies = (
    fast is not None
    and where is None
    and not any(static)  # label smoothing: the exact rows
    and z.size >= _FAST_MIN_SIZE
  )
  exact = exact or portable
  if not fast_applies:
    return _fold_vmap(portable, exact, len(static))
  logits = (0, 1) if name in ("kl_rows", "ce_rows") else (1,)
  return _fold_vmap(portable, functools.partial(_fast_or_exact, fast, exact, logits), len(static))


def _exact(portable, z):
  """The portable rows over blocks of rows, or None where the input fits in one block."""
  rows, num_v = math.prod(z.shape[:-1]), z.shape[-1]
  block = max(1, _BLOCK_BYTES // (4 * max(num_v, 1)))
  if rows <= block:
    return None
  rows_fn = portable
  if jnp.dtype(z.dtype).itemsize < 4:  # converted inside the loop, not hoisted out of it
    rows_fn = functools.partial(rows_fn, fresh=lax.optimization_barrier)

  def run(*args):
    *arrays, where = args[:3]
    static = args[3:]
    batch = z.shape[:-1]
    flat = tuple(
      None if x is None else x.reshape((rows, *x.shape[len(batch) :])) for x in (*arrays, where)
    )
    out = lax.map(lambda xs: rows_fn(*xs, *static), flat, batch_size=block)
    return tuple(o.reshape(batch) for o in out)

  return run


def _fold_vmap(portable, fn, num_static: int):
  """``fn`` whose ``vmap`` runs the CPU strategy on the batched inputs (the mapped axis
  folded into the rows) instead of batching ``fn``'s loop or conditional."""

  def call(*args):
    static = args[len(args) - num_static :]

    @jax.custom_batching.custom_vmap
    def folded(x, z, where):
      return fn(x, z, where, *static)

    @folded.def_vmap
    def rule(axis_size, in_batched, x, z, where):
      def lift(v, batched):
        if v is None or batched:
          return v
        return jnp.broadcast_to(v, (axis_size, *v.shape))

      x, z, where = (lift(v, b) for v, b in zip((x, z, where), in_batched, strict=True))
      out = strategy(portable, x, z, where, *static)(x, z, where, *static)
      return out, tuple(True for _ in out)

    return folded(*args[:3])

  return call


# ---------------------------------------------------------------------------
# Fast formulas
# ---------------------------------------------------------------------------


def _fresh(*xs):
  """The same values as new HLO values that XLA keeps apart: each pass reads its own."""
  return lax.optimization_barrier(xs)


def _seal(x):
  """``x`` behind a select XLA's CPU fusion cannot see through: each reduction stays its
  own vectorised kernel instead of being grouped with the next one's epilogue."""
  return jnp.where(x == x, x, jnp.full_like(x, jnp.nan))


_up, _dtype = _numerics.upcast, _numerics.compute_dtype_of


def _sample_max(x):
  """Per-row maximum of ``_SAMPLES`` evenly spaced logits (the exact maximum where the
  samples would lie less than a cache line apart)."""
  stride = x.shape[-1] // _SAMPLES
  if stride * x.dtype.itemsize < 64:
    return _seal(jnp.max(x, axis=-1))
  return _seal(jnp.max(x[..., ::stride], axis=-1))


def _fast_sum(x, shift: bool, dt):
  """``(m, s, x')``: the row shift (zeros unshifted), ``s = sum e^(x - m)``, and a copy
  of ``x`` for a further pass."""
  x0, x1, x2 = _fresh(x, x, x)
  x1 = _up(x1, dt)
  if not shift:
    s = _seal(jnp.sum(jnp.exp(x1), axis=-1))
    return jnp.zeros_like(s), s, x2
  m = _up(_sample_max(x0), dt)
  return m, _seal(jnp.sum(jnp.exp(x1 - m[..., None]), axis=-1)), x2


def _shifted(x, m, shift: bool):
  if not shift:
    return x
  (m,) = _fresh(m)
  return x - m[..., None]


def _sqrt_guard(p):
  """0 where ``p >= 0``, NaN where negative or NaN (``sqrt(p) - sqrt(p)``: a broadcast
  constant in a reduction's producer would be materialised)."""
  r = jnp.sqrt(p)
  return r - r


def _pair(a, b, shift: bool):
  dt = _dtype(a, b)
  (ma, sa, a2), (mb, sb, b2) = _fast_sum(a, shift, dt), _fast_sum(b, shift, dt)
  da, db = _shifted(_up(a2, dt), ma, shift), _shifted(_up(b2, dt), mb, shift)
  return ma, sa, mb, sb, da, db


def _kl_fast(a, b, shift: bool):
  ma, sa, mb, sb, da, db = _pair(a, b, shift)
  t = _seal(jnp.sum(jnp.exp(da) * (da - db), axis=-1))
  return t / sa - jnp.log(sa / sb), ma, jnp.log(sa), mb, jnp.log(sb)


def _ce_fast(a, b, shift: bool):
  ma, sa, mb, sb, da, db = _pair(a, b, shift)
  # (da - da): NaN at a -inf ``a`` (0 * inf), so CE takes the exact rows where KL does.
  t = _seal(jnp.sum(jnp.exp(da) * (db + (da - da)), axis=-1))
  return jnp.log(sb) - t / sa, ma, jnp.log(sa), mb, jnp.log(sb)


def _soft(p, b, shift: bool):
  dt = _dtype(p, b)
  m, s, b2 = _fast_sum(b, shift, dt)
  return _up(p, dt), _shifted(_up(b2, dt), m, shift), m, jnp.log(s)


def _soft_ce_fast(p, b, shift: bool):
  p, db, m, ls = _soft(p, b, shift)
  return jnp.sum(p * (ls[..., None] - db) + _sqrt_guard(p), axis=-1), m, ls


def _soft_kl_fast(p, b, shift: bool):
  p, db, m, ls = _soft(p, b, shift)
  log_p = jnp.log(jnp.maximum(p, jnp.finfo(p.dtype).tiny))  # p log p = 0 at p = 0
  return jnp.sum(p * (log_p - (db - ls[..., None])) + _sqrt_guard(p), axis=-1), m, ls


def _labels_fast(labels, b, shift: bool, smoothing: float = 0.0):
  dt = _dtype(b)
  m, s, b2 = _fast_sum(b, shift, dt)
  picked = _up(jnp.take_along_axis(b2, labels[..., None], axis=-1)[..., 0], dt)
  return jnp.log(s) - (picked - m), m, jnp.log(s)


_FAST = {
  "kl_rows": _kl_fast,
  "ce_rows": _ce_fast,
  "soft_ce_rows": _soft_ce_fast,
  "soft_kl_rows": _soft_kl_fast,
  "labels_rows": _labels_fast,
}


def _global_sample_max(x):
  flat = x.reshape(-1)
  return jnp.max(flat[:: max(1, flat.size // _GLOBAL_SAMPLES)])


def _tier(fast, x, z, shift: bool, static):
  """The fast formula shifted or not; unshifted, rows whose log-normaliser is so low that
  flushing ``e^z`` to 0 below ``z = -87`` could lose mass are marked NaN."""
  out = fast(x, z, shift, *static)
  if shift:
    return out
  ok = functools.reduce(jnp.logical_and, [ls >= _UNSHIFTED_MIN_LOG_SUM for ls in out[2::2]])
  return tuple(jnp.where(ok, o, jnp.full_like(o, jnp.nan)) for o in out)


def _fast_or_exact(fast, exact, logits: tuple, x, z, where, *static):
  """The fast formula where all its results are finite, else the exact rows."""
  arrays = (x, z)
  small = functools.reduce(
    jnp.logical_and, [_global_sample_max(arrays[i]) <= _UNSHIFTED_MAX for i in logits]
  )
  out = lax.cond(
    small,
    lambda: _tier(fast, x, z, False, static),
    lambda: _tier(fast, x, z, True, static),
  )
  ok = functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(o)) for o in out])
  return lax.cond(ok, lambda: out, lambda: exact(x, z, where, *static))
