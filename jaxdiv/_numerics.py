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
  m = jnp.max(logits, axis=-1, keepdims=True)
  m = lax.stop_gradient(jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m)))
  shifted = logits - m
  s = jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True)
  if where is not None:
    empty = ~jnp.any(where, axis=-1, keepdims=True)
    s = jnp.where(empty, jnp.ones_like(s), s)
  return shifted - jnp.log(s)


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
# Fused kernels for two logit arrays, with closed-form derivative rules.
#
# custom_jvp (not custom_vjp) so that forward mode, jacfwd and hessian keep working;
# the tangent maps are linear in the tangents with coefficients computed from the
# primals, so JAX transposes them for reverse mode without differentiating the
# log-softmax composition.
# ---------------------------------------------------------------------------


def _normalise(logits: Array, where: Array | None):
  log_p = log_softmax(logits, where)
  p_zero = log_p == -jnp.inf
  safe = jnp.where(p_zero, jnp.zeros_like(log_p), log_p)
  return jnp.exp(log_p), safe, p_zero


@jax.custom_jvp
def kl_from_logits(p_logits: Array, q_logits: Array, where: Array | None) -> Array:
  """KL(softmax(p_logits) || softmax(q_logits)) over the last axis.

  Tangent rule: ``dKL = <softmax(q) - softmax(p), dq> + <p (log p - log q - KL), dp>``.
  """
  p, log_p, p_zero = _normalise(p_logits, where)
  _, log_q, q_zero = _normalise(q_logits, where)
  return jnp.sum(rel_entr(p, p_zero, log_p, log_q, q_zero), axis=-1)


@kl_from_logits.defjvp
def _kl_from_logits_jvp(primals, tangents):
  p_logits, q_logits, where = primals
  dp, dq, _ = tangents
  p, log_p, p_zero = _normalise(p_logits, where)
  q, log_q, q_zero = _normalise(q_logits, where)
  terms = rel_entr(p, p_zero, log_p, log_q, q_zero)
  kl = jnp.sum(terms, axis=-1)
  # p (log p - log q - KL); finite wherever KL is finite (p = 0 terms are exactly 0).
  coef_p = terms - p * kl[..., None]
  out_t = jnp.sum((q - p) * dq, axis=-1) + jnp.sum(coef_p * dp, axis=-1)
  return kl, out_t


@jax.custom_jvp
def ce_from_logits(p_logits: Array, q_logits: Array, where: Array | None) -> Array:
  """H(softmax(p_logits), softmax(q_logits)) over the last axis.

  Tangent rule: ``dH = <softmax(q) - softmax(p), dq> - <p (log q + H), dp>``.
  """
  p, _, p_zero = _normalise(p_logits, where)
  _, log_q, q_zero = _normalise(q_logits, where)
  return neg_sum(xlogy(p, p_zero, log_q, q_zero))


@ce_from_logits.defjvp
def _ce_from_logits_jvp(primals, tangents):
  p_logits, q_logits, where = primals
  dp, dq, _ = tangents
  p, _, p_zero = _normalise(p_logits, where)
  q, log_q, q_zero = _normalise(q_logits, where)
  terms = xlogy(p, p_zero, log_q, q_zero)
  ce = neg_sum(terms)
  coef_p = -(terms + p * ce[..., None])
  out_t = jnp.sum((q - p) * dq, axis=-1) + jnp.sum(coef_p * dp, axis=-1)
  return ce, out_t


@jax.custom_jvp
def soft_ce_from_logits(p: Array, q_logits: Array, where: Array | None) -> Array:
  """H(p, softmax(q_logits)) over the last axis for probabilities ``p`` used as given.

  Tangent rule: ``dH = <q sum(p) - p, dq> - <log q, dp>`` (``log q`` taken as 0 where
  ``p = q = 0``).
  """
  p_zero = p == 0
  _, log_q, q_zero = _normalise(q_logits, where)
  return neg_sum(xlogy(p, p_zero, log_q, q_zero))


@soft_ce_from_logits.defjvp
def _soft_ce_from_logits_jvp(primals, tangents):
  p, q_logits, where = primals
  dp, dq, _ = tangents
  p_zero = p == 0
  q, log_q, q_zero = _normalise(q_logits, where)
  terms = xlogy(p, p_zero, log_q, q_zero)
  ce = neg_sum(terms)
  coef_q = q * jnp.sum(p, axis=-1, keepdims=True) - p
  out_t = jnp.sum(coef_q * dq, axis=-1) - jnp.sum(log_q * dp, axis=-1)
  return ce, out_t
