r"""Checked mode: an opt-in wrapper that turns bad *values* into errors.

jaxdiv's default (unchecked) functions check shapes, dtypes and static arguments at trace
time, and never look at values inside compiled code: that is what keeps them fast. What
a bad value produces there is documented and never a finite wrong number:

=============================================  =========================================
bad value (unchecked)                          result
=============================================  =========================================
negative probability                           NaN
NaN in any input                               NaN
``+inf`` logit                                 NaN
label ``>=`` the number of categories          NaN
probabilities that do not sum to 1             used as given (a finite number: only
                                               checked mode catches this)
=============================================  =========================================

:func:`checked` wraps any public function so that these raise instead, also under
``jit``, ``vmap`` and ``grad``. It is built on :mod:`jax.experimental.checkify`: the
checks run inside the compiled computation and the error is raised on the host, with a
message that names the function, the argument and the problem.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

_PROB_ARGS = ("p", "q")
_LOGIT_ARGS = ("p_logits", "q_logits", "logits")
_POSITIVE_ARGS = ("scale", "scale_p", "scale_q", "concentration_p", "concentration_q")
_TRIL_ARGS = ("scale_tril", "scale_tril_p", "scale_tril_q")
_LOG_DENSITY_ARGS = ("log_p", "log_q")
_FINITE_ARGS = (
  "loc_p",
  "loc_q",
  "hidden",
  "weight",
  "p_hidden",
  "q_hidden",
  "p_weight",
  "q_weight",
)


def _is_array(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, np.generic)) or isinstance(x, jax.core.Tracer)


def _sum_tolerance(dtype, n: int) -> float:
  """Allowed |sum(p) - 1|: a few ulps of the input dtype per sqrt(category)."""
  eps = float(jnp.finfo(dtype).eps) if jnp.issubdtype(dtype, jnp.floating) else 0.0
  return max(1e-6, 8.0 * eps * float(np.sqrt(max(n, 1))))


def _check(fn: str, name: str, bad, message: str) -> None:
  checkify.check(~jnp.any(bad), f"jaxdiv.{fn}: {message} in `{name}`")


def _check_arguments(fn: str, args: dict) -> None:
  elementwise = fn.startswith("binary_")
  axis = args.get("axis", -1)
  where = args.get("where")
  for name in _PROB_ARGS:
    x = args.get(name)
    if not _is_array(x) or fn.startswith(("normal_", "mvn_")):
      continue
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
      x = x.astype(jnp.result_type(float))
    _check(fn, name, jnp.isnan(x), f"NaN probability (shape {x.shape})")
    _check(fn, name, x < 0, f"negative probability (shape {x.shape})")
    if elementwise:
      _check(fn, name, x > 1, f"probability greater than 1 (shape {x.shape})")
      continue
    if x.ndim == 0:
      continue
    w = None if where is None else jnp.broadcast_to(jnp.asarray(where), x.shape)
    xs = x.astype(jnp.float32) if x.dtype.itemsize < 4 else x
    total = jnp.sum(xs, axis=axis, where=w)
    has_any = True if w is None else jnp.any(w, axis=axis)
    dev = jnp.where(has_any, jnp.abs(total - 1), 0)
    tol = _sum_tolerance(x.dtype, x.shape[axis])
    checkify.check(
      jnp.all(dev <= tol),
      f"jaxdiv.{fn}: `{name}` (shape {x.shape}) does not sum to 1 along axis {axis}: "
      f"largest deviation {{dev}} > tolerance {tol:.2g}",
      dev=jnp.max(dev),
    )
  for name in _LOGIT_ARGS:
    x = args.get(name)
    if _is_array(x):
      x = jnp.asarray(x)
      _check(fn, name, jnp.isnan(x), f"NaN logit (shape {x.shape})")
      if not elementwise:
        _check(fn, name, x == jnp.inf, f"+inf logit (shape {x.shape})")
  labels = args.get("labels")
  if _is_array(labels):
    num = _num_categories(args)
    if num is not None:
      checkify.check(
        jnp.all(jnp.asarray(labels) < num),
        f"jaxdiv.{fn}: label out of range in `labels` (shape {jnp.shape(labels)}): "
        f"largest label {{m}} >= the number of categories {num}",
        m=jnp.max(labels) if jnp.size(labels) else jnp.asarray(-1),
      )
  for name in _POSITIVE_ARGS:
    x = args.get(name)
    if _is_array(x):
      _check(fn, name, ~(jnp.asarray(x) > 0), f"non-positive or NaN value (shape {jnp.shape(x)})")
  for name in _TRIL_ARGS:
    x = args.get(name)
    if _is_array(x):
      d = jnp.diagonal(jnp.asarray(x), axis1=-2, axis2=-1)
      _check(fn, name, ~(d > 0), f"non-positive or NaN diagonal (shape {jnp.shape(x)})")
      _check(fn, name, jnp.isnan(jnp.asarray(x)), f"NaN (shape {jnp.shape(x)})")
  for name in _LOG_DENSITY_ARGS:
    x = args.get(name)
    if _is_array(x):
      x = jnp.asarray(x)
      _check(fn, name, jnp.isnan(x) | (x == jnp.inf), f"NaN or +inf log-density (shape {x.shape})")
  for name in _FINITE_ARGS:
    x = args.get(name)
    if _is_array(x):
      _check(fn, name, ~jnp.isfinite(jnp.asarray(x)), f"non-finite value (shape {jnp.shape(x)})")


def _num_categories(args: dict):
  axis = args.get("axis", -1)
  for name in ("q", "q_logits", "logits"):
    x = args.get(name)
    if x is not None and jnp.ndim(x) > 0:
      return jnp.shape(x)[axis]
  x = args.get("weight")  # linear_cross_entropy: hidden [..., D] @ weight [D, V]
  if "hidden" in args and x is not None and jnp.ndim(x) == 2:
    return jnp.shape(x)[-1]
  return None


def _raise(err: checkify.Error) -> None:
  err.throw()


def checked(fn):
  """Wrap a jaxdiv function so that invalid input *values* raise an error.

  Checks every array argument by its role: probabilities (``p``, ``q``) must be
  non-negative, not NaN, and sum to 1 along ``axis`` over the included categories
  (tolerance ``max(1e-6, 8·eps·sqrt(n))`` for the input dtype); Bernoulli probabilities
  must lie in ``[0, 1]``; logits must not be NaN or ``+inf`` (``±inf`` are valid
  Bernoulli logits); labels must be smaller than the number of categories (negative
  labels stay "ignored"); scales, concentrations and Cholesky diagonals must be
  positive; log-densities must not be NaN or ``+inf``.

  The wrapped function has the same signature and results. It raises
  :class:`jax.experimental.checkify.JaxRuntimeError` (eagerly, under ``vmap`` and
  ``grad``) or a runtime error carrying the same message (under ``jit``), whose text
  names the function, the argument and the problem. Checked mode costs a reduction or
  two per input and a host round-trip: use it while debugging, not in the training
  step you time.

  Example:
    >>> import jaxdiv
    >>> safe_kl = jaxdiv.checked(jaxdiv.kl_divergence)
    >>> safe_kl(jnp.array([0.5, 0.6]), jnp.array([0.5, 0.5]))  # doctest: +SKIP
    JaxRuntimeError: jaxdiv.kl_divergence: `p` (shape (2,)) does not sum to 1 ...
  """
  sig = inspect.signature(fn)
  name = fn.__name__

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    arrays = {k: v for k, v in bound.arguments.items() if _is_array(v)}
    static = {k: v for k, v in bound.arguments.items() if k not in arrays}

    def body(arrays):
      arguments = {**static, **arrays}
      _check_arguments(name, arguments)
      return fn(**arguments)

    err, out = checkify.checkify(body)(arrays)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(err)):
      # Under jit the error is only known on the device: raise it from a host callback.
      jax.debug.callback(_raise, err)
    else:
      err.throw()
    return out

  return wrapper
