r"""Portable numerical helpers shared by every family (never exported).

Everything that keeps jaxdiv exact at the edges lives here, as elementwise or per-row
expressions that are right on every backend and under every transform:

* :func:`shift` -- logits minus their (masked) row maximum: the one place a row is
  shifted, so that every log-softmax and log-sum-exp is formed from shifted values and
  adding a constant to the logits changes nothing. :func:`log_softmax` and
  :func:`logsumexp` are built on it (optionally across the shards of a named axis).
* :func:`safe_log` -- ``log p`` with ``0`` substituted where ``p == 0`` *before* the
  log (the "double where" of the JAX FAQ), so that ``p * safe_log(p)`` is exactly 0 at
  ``p == 0`` with a zero derivative, and no NaN leaks into reverse or forward mode.
* :func:`prob_triple` -- the (probability, safe log-probability, exact-zero mask) triple
  every divergence is built from, formed from log-probabilities in one place.
* :func:`xlogy` / :func:`rel_entr` -- the two elementwise terms ``p log q`` and
  ``p (log p - log q)``, written on that triple.
* :func:`expm1mx` -- ``e^x - 1 - x`` without cancellation.

The logits kernels with their derivative rules are in :mod:`jaxdiv._kernels`.

Conventions (Cover & Thomas, 2006, section 2.3): ``0 log 0 = 0``, ``0 log(0/0) = 0``,
``p log(p/0) = +inf`` for ``p > 0``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def compute_dtype(dtype) -> jnp.dtype:
  """The dtype jaxdiv accumulates in: float32 for 16-bit floats, else the float itself."""
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    return jnp.result_type(float)  # ints and bools: the default float (float64 under x64)
  if dtype.itemsize < 4:
    return jnp.dtype(jnp.float32)
  return dtype


def compute_dtype_of(*xs: Array) -> jnp.dtype:
  """:func:`compute_dtype` of the arrays' common dtype."""
  return compute_dtype(jnp.result_type(*(x.dtype for x in xs)))


def upcast(x: Array, dtype) -> Array:
  """``x`` in ``dtype`` (no conversion where it already is)."""
  return x if x.dtype == dtype else x.astype(dtype)


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


def mask(x: Array, where: Array | None) -> Array:
  """Logits with ``-inf`` at the categories ``where`` excludes."""
  return x if where is None else jnp.where(where, x, -jnp.inf)


def shift(
  logits: Array, where: Array | None = None, axis_name: str | None = None
) -> tuple[Array, Array]:
  """``(z - m, m)``: masked logits minus their row maximum ``m`` (over the last axis).

  ``m`` is raised to the lowest finite number, so a row of only ``-inf`` (or a fully
  excluded one) stays ``-inf`` instead of ``-inf - -inf = NaN``; a ``+inf`` or NaN logit
  makes its row NaN downstream (``inf - inf``). With ``axis_name`` the maximum is taken
  across the shards of that named axis (the categories split over devices). ``m`` is a
  constant for differentiation: everything built on the shifted logits is invariant to
  it.
  """
  z = mask(logits, where)
  m = lax.stop_gradient(jnp.max(z, axis=-1))  # before pmax, which has no derivative rule
  if axis_name is not None:
    m = lax.pmax(m, axis_name)
  m = jnp.maximum(m, jnp.finfo(m.dtype).min)
  return z - m[..., None], m


def _sum(x: Array, axis_name: str | None) -> Array:
  s = jnp.sum(x, axis=-1)
  return s if axis_name is None else lax.psum(s, axis_name)


def _empty(where: Array | None, axis_name: str | None) -> Array | None:
  if where is None:
    return None
  empty = ~jnp.any(where, axis=-1)
  return empty if axis_name is None else lax.psum((~empty).astype(jnp.int32), axis_name) == 0


def log_softmax(logits: Array, where: Array | None = None, axis_name: str | None = None) -> Array:
  """Log-softmax over the last axis, restricted to ``where``.

  Excluded categories get ``-inf``; a row with no included category is all ``-inf``
  (the zero measure, which every divergence maps to 0). A row of only ``-inf`` logits
  without a mask is not a distribution and gives NaN. ``+inf`` or NaN logits give NaN
  for the whole row. Derivatives are finite at ``-inf`` logits (they are those of the
  included ones). With ``axis_name``, normalised across the shards of that axis.
  """
  d, _ = shift(logits, where, axis_name)
  s = _sum(jnp.exp(d), axis_name)
  empty = _empty(where, axis_name)
  if empty is not None:
    s = jnp.where(empty, jnp.ones_like(s), s)
  return d - jnp.log(s)[..., None]


def logsumexp(x: Array, where: Array | None = None, axis_name: str | None = None) -> Array:
  """``log sum_where exp(x)`` over the last axis: ``-inf`` for a row with nothing
  included (or only ``-inf``), with finite derivatives there; NaN stays NaN."""
  d, m = shift(x, where, axis_name)
  s = _sum(jnp.exp(d), axis_name)
  empty = s == 0
  return jnp.where(empty, -jnp.inf, jnp.log(jnp.where(empty, jnp.ones_like(s), s)) + m)


def prob_triple(log_p: Array) -> tuple[Array, Array, Array]:
  """``(p, log p with 0 where p = 0, p = 0)`` from log-probabilities (``-inf``: zero).

  The safe log keeps every derivative finite where a probability is exactly 0; NaN
  stays NaN.
  """
  zero = log_p == -jnp.inf
  safe = jnp.where(zero, jnp.zeros_like(log_p), log_p)
  return jnp.where(zero, jnp.zeros_like(log_p), jnp.exp(safe)), safe, zero


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


def nan_negative(p: Array, where: Array | None) -> Array:
  """Probabilities as given, NaN where negative, 0 at categories excluded by ``where``."""
  p = jnp.where(p < 0, jnp.full_like(p, jnp.nan), p)
  if where is not None:
    p = jnp.where(where, p, jnp.zeros_like(p))
  return p


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
