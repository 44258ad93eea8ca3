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
import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

# What checked mode verifies for an argument of each role (every public function declares
# the role of each of its arguments with :func:`roles`).
ROLES = {
  "probs": "categorical probabilities: not NaN, >= 0, sum to 1 along `axis` (after broadcasting)",
  "logits": "categorical logits: not NaN, not +inf",
  "binary_probs": "Bernoulli probabilities: not NaN, in [0, 1]",
  "binary_logits": "Bernoulli logits: not NaN (+-inf are valid)",
  "labels": "class indices: smaller than the number of categories (negative: ignored)",
  "positive": "scales and concentrations: > 0, not NaN",
  "tril": "Cholesky factors: positive diagonal, no NaN",
  "log_density": "log-densities: not NaN, not +inf",
  "finite": "finite values",
  "classifier": "a [D, V] projection: finite; its last axis counts the categories",
  "indices": "a stored distribution's categories: in range and distinct where their "
  "log-probability is finite",
  "log_probs": "a stored distribution's log-probabilities: not NaN, <= 0, a listed mass of "
  "at most 1 (+ round-off)",
  "axis": "the category axis",
  "where": "the category mask",
  "token_mask": "a token mask: the values and labels it masks out are not read, nor checked",
  "unchecked": "static or scalar parameters, checked by the function itself",
}
_CATEGORICAL = ("probs", "logits")

# The shared arguments of the categorical pair functions and of the Bernoulli ones.
PAIR = dict(p="probs", q="probs", p_logits="logits", q_logits="logits", axis="axis", where="where")
BINARY_PAIR = dict(
  p="binary_probs", q="binary_probs", p_logits="binary_logits", q_logits="binary_logits"
)
# A stored side (top-k or sampled categories with their log-probabilities) and its tail.
STORED = dict(
  p_indices="indices",
  p_log_probs="log_probs",
  q_indices="indices",
  q_log_probs="log_probs",
  tail="unchecked",
)
LINEAR_PAIR = dict(
  p_hidden="finite",
  p_weight="classifier",
  q_hidden="finite",
  q_weight="classifier",
  p_logits="logits",
  q_logits="logits",
  where="where",
  chunk_size="unchecked",
  token_chunk_size="unchecked",
  base="unchecked",
)


def roles(**declared: str):
  """Declare the role of every argument of a public function, for :func:`checked`.

  The roles are stored on the function (``fn._jaxdiv_roles``; ``functools.wraps`` copies
  them to a wrapper). Every parameter must be declared and every declared name must be a
  parameter, so renaming an argument without its role is an error at import time.
  """
  unknown_roles = {k: v for k, v in declared.items() if v not in ROLES}
  if unknown_roles:
    raise TypeError(f"roles: unknown roles {unknown_roles}; the roles are {sorted(ROLES)}.")

  def decorate(fn):
    params = set(inspect.signature(fn).parameters)
    missing, extra = sorted(params - set(declared)), sorted(set(declared) - params)
    if missing or extra:
      raise TypeError(
        f"roles: {fn.__name__} has parameters without a declared role {missing} and "
        f"declared roles for names that are not parameters {extra}."
      )
    fn._jaxdiv_roles = dict(declared)
    return fn

  return decorate


def declared_roles(fn) -> dict | None:
  """The roles :func:`roles` declared for ``fn`` (or the function it wraps), else None."""
  found = getattr(fn, "_jaxdiv_roles", None)
  if found is None:
    found = getattr(inspect.unwrap(fn), "_jaxdiv_roles", None)
  return found


def _is_array(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, np.generic)) or isinstance(x, jax.core.Tracer)


def _is_value(x) -> bool:
  """An array or a real Python number (a scalar argument is checked like an array)."""
  return _is_array(x) or (isinstance(x, (int, float)) and not isinstance(x, bool))


def _sum_tolerance(dtype, n: int) -> float:
  """Allowed |sum(p) - 1|: a few ulps of the input dtype per sqrt(category)."""
  eps = float(jnp.finfo(dtype).eps) if jnp.issubdtype(dtype, jnp.floating) else 0.0
  return max(1e-6, 8.0 * eps * float(np.sqrt(max(n, 1))))


def _check(fn: str, name: str, bad, message: str) -> None:
  checkify.check(~jnp.any(bad), f"jaxdiv.{fn}: {message} in `{name}`")


def _categorical_frame(args: dict, roles: dict):
  """The broadcast shape, category axis and mask that the computation uses, or None.

  None where the inputs do not broadcast or ``axis`` is invalid: the function raises its
  own trace-time error for those.
  """
  shapes = [
    jnp.shape(args[k]) for k, r in roles.items() if r in _CATEGORICAL and _is_value(args[k])
  ]
  where = next((args[k] for k, r in roles.items() if r == "where"), None)
  if where is not None:
    shapes.append(jnp.shape(where))
  axis = next((args[k] for k, r in roles.items() if r == "axis"), -1)
  try:
    shape = tuple(np.broadcast_shapes(*shapes))
    ax = int(axis)
    if not -len(shape) <= ax < len(shape):
      return None
  except (ValueError, TypeError):
    return None
  mask = None if where is None else jnp.broadcast_to(jnp.asarray(where), shape)
  return shape, ax, mask


def _check_probs(fn: str, name: str, x, frame) -> None:
  """Probabilities as the computation uses them: broadcast to the inputs' common shape."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    x = x.astype(jnp.result_type(float))
  _check(fn, name, jnp.isnan(x), f"NaN probability (shape {x.shape})")
  _check(fn, name, x < 0, f"negative probability (shape {x.shape})")
  if frame is None:
    return
  shape, ax, mask = frame
  if mask is not None and mask.dtype != jnp.bool_:
    return  # the function raises its own TypeError
  xb = jnp.broadcast_to(x, shape)
  xs = xb.astype(jnp.float32) if xb.dtype.itemsize < 4 else xb
  total = jnp.sum(xs, axis=ax, where=mask)
  has_any = True if mask is None else jnp.any(mask, axis=ax)
  dev = jnp.where(has_any, jnp.abs(total - 1), 0)
  tol = _sum_tolerance(x.dtype, shape[ax])
  checkify.check(
    jnp.all(dev <= tol),
    f"jaxdiv.{fn}: `{name}` (shape {x.shape}) does not sum to 1 along axis {ax}: "
    f"largest deviation {{dev}} > tolerance {tol:.2g}",
    dev=jnp.max(dev),
  )


def _num_categories(args: dict, roles: dict, frame):
  if frame is not None and len(frame[0]):
    return frame[0][frame[1]]
  for k, r in roles.items():
    if r == "classifier" and _is_array(args[k]) and jnp.ndim(args[k]) == 2:
      return jnp.shape(args[k])[-1]
  return None


def _unmasked(x, mask, fill):
  """``x`` with the positions a token mask drops set to ``fill`` (``mask`` broadcasting
  against ``x``; where it does not, ``x`` as given and the function raises its own error)."""
  x = jnp.asarray(x)
  if mask is None:
    return x
  try:
    m = jnp.broadcast_to(jnp.asarray(mask), x.shape)
  except (TypeError, ValueError):
    return x
  return jnp.where(m, x, jnp.asarray(fill, x.dtype))


def _check_arguments(fn: str, args: dict, roles: dict) -> None:
  frame = _categorical_frame(args, roles)
  masks = [args[k] for k, r in roles.items() if r == "token_mask" and _is_array(args[k])]
  mask = masks[0] if masks else None
  for name, role in roles.items():
    x = args[name]
    if not _is_value(x) or role in ("axis", "where", "token_mask", "unchecked"):
      continue
    if role == "probs":
      _check_probs(fn, name, x, frame)
    elif role == "binary_probs":
      x = jnp.asarray(x)
      _check(fn, name, jnp.isnan(x), f"NaN probability (shape {x.shape})")
      _check(fn, name, x < 0, f"negative probability (shape {x.shape})")
      _check(fn, name, x > 1, f"probability greater than 1 (shape {x.shape})")
    elif role in ("logits", "binary_logits"):
      x = jnp.asarray(x)
      _check(fn, name, jnp.isnan(x), f"NaN logit (shape {x.shape})")
      if role == "logits":
        _check(fn, name, x == jnp.inf, f"+inf logit (shape {x.shape})")
    elif role == "labels":
      num = _num_categories(args, roles, frame)
      x = _unmasked(x, mask, -1)
      if num is not None:
        checkify.check(
          jnp.all(jnp.asarray(x) < num),
          f"jaxdiv.{fn}: label out of range in `{name}` (shape {jnp.shape(x)}): "
          f"largest label {{m}} >= the number of categories {num}",
          m=jnp.max(x) if jnp.size(x) else jnp.asarray(-1),
        )
    elif role == "positive":
      _check(fn, name, ~(jnp.asarray(x) > 0), f"non-positive or NaN value (shape {jnp.shape(x)})")
    elif role == "tril":
      d = jnp.diagonal(jnp.asarray(x), axis1=-2, axis2=-1)
      _check(fn, name, ~(d > 0), f"non-positive or NaN diagonal (shape {jnp.shape(x)})")
      _check(fn, name, jnp.isnan(jnp.asarray(x)), f"NaN (shape {jnp.shape(x)})")
    elif role == "log_density":
      x = jnp.asarray(x)
      _check(fn, name, jnp.isnan(x) | (x == jnp.inf), f"NaN or +inf log-density (shape {x.shape})")
    elif role in ("finite", "classifier"):
      x = _unmasked(x, mask, 0) if role == "finite" else jnp.asarray(x)
      _check(fn, name, ~jnp.isfinite(x), f"non-finite value (shape {jnp.shape(x)})")
    elif role == "log_probs":
      _check_log_probs(fn, name, jnp.asarray(x))
    elif role == "indices":
      pair = name.replace("indices", "log_probs")
      if _is_value(args.get(pair)):
        _check_indices(fn, name, jnp.asarray(x), jnp.asarray(args[pair]),
                       _num_categories(args, roles, frame))  # fmt: skip


def _check_log_probs(fn: str, name: str, lp) -> None:
  """A stored distribution's log-probabilities: not NaN, at most 0, a listed mass of at
  most 1 up to the round-off of their dtype (``-inf`` slots are padding)."""
  from jaxdiv import _inputs, _numerics

  _check(fn, name, jnp.isnan(lp), f"NaN log-probability (shape {lp.shape})")
  _check(fn, name, lp > 0, f"log-probability above 0, a probability above 1 (shape {lp.shape})")
  if lp.ndim == 0:
    return
  up = lp.astype(_numerics.compute_dtype(lp.dtype))
  mass = jnp.exp(_numerics.logsumexp(jnp.where(jnp.isnan(up), -jnp.inf, up)))
  tol = _inputs.sparse_tolerance(lp.dtype)
  checkify.check(
    jnp.all(mass <= 1 + tol),
    f"jaxdiv.{fn}: `{name}` (shape {lp.shape}) lists a mass above 1 in a row: largest "
    f"{{mass}} > 1 + {tol:.2g} (the round-off allowed for its dtype)",
    mass=jnp.max(mass) if mass.size else jnp.asarray(0.0),
  )


def _check_indices(fn: str, name: str, idx, lp, num) -> None:
  """A stored distribution's categories, where their log-probability is finite: in range,
  and no category listed twice in a row."""
  if idx.ndim == 0 or idx.shape != lp.shape:
    return  # the function raises its own error
  listed = lp > -jnp.inf
  if num is not None:
    bad = listed & ((idx < 0) | (idx >= num))
    checkify.check(
      ~jnp.any(bad),
      f"jaxdiv.{fn}: index out of range in `{name}` (shape {idx.shape}) at a slot with a "
      f"finite log-probability: {{i}} is not in [0, {num}) (JAX's gather would clamp it)",
      i=jnp.max(jnp.where(bad, jnp.abs(idx), -1)) if idx.size else jnp.asarray(-1),
    )
  k = idx.shape[-1]
  if k > 1:
    key = jnp.sort(jnp.where(listed, idx, -1 - jnp.arange(k, dtype=idx.dtype)), axis=-1)
    dup = jnp.any(key[..., 1:] == key[..., :-1])
    checkify.check(
      ~dup,
      f"jaxdiv.{fn}: a category listed twice in a row of `{name}` (shape {idx.shape}); store "
      f"sampled tokens as distinct ids with their frequencies",
    )


class InvalidValueError(checkify.JaxRuntimeError):
  """An invalid input value found by checked mode, raised from a host callback under ``jit``."""


class _DropCheckFailures(logging.Filter):
  """jax logs every exception a debug callback raises, with its traceback, before
  re-raising it; for checked mode's own failure the error the caller catches is the
  report, so that log record is dropped (any other callback failure is still logged)."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, InvalidValueError)


_CALLBACK_LOGGERS = ("jax._src.debugging", "jax._src.callback")
for _name in _CALLBACK_LOGGERS:
  logging.getLogger(_name).addFilter(_DropCheckFailures())


def _raise(err: checkify.Error) -> None:
  message = err.get()
  if message is not None:
    raise InvalidValueError(message)


def checked(fn):
  """Wrap a jaxdiv function so that invalid input *values* raise an error.

  Checks every array argument by the role its function declares for it: probabilities
  (``p``, ``q``) must be non-negative, not NaN, and sum to 1 along ``axis`` over the
  included categories, as broadcast against the other inputs (tolerance
  ``max(1e-6, 8·eps·sqrt(n))`` for the input dtype); Bernoulli probabilities must lie in
  ``[0, 1]``; logits must not be NaN or ``+inf`` (``±inf`` are valid Bernoulli logits);
  labels must be smaller than the number of categories (negative labels stay
  "ignored"); scales, concentrations and Cholesky diagonals must be positive;
  log-densities must not be NaN or ``+inf``; locations, log-scales and the fused losses'
  hidden states and weights must be finite.

  The wrapped function has the same signature and results. It raises
  :class:`jax.experimental.checkify.JaxRuntimeError` (eagerly, under ``vmap`` and
  ``grad``) or a runtime error carrying the same message (under ``jit``), whose text
  names the function, the argument and the problem; that error is the only report
  (nothing is logged). Checked mode costs a reduction or two per input and a host
  round-trip: use it while debugging, not in the training step you time.

  Args:
    fn: a public jaxdiv function (one that declares its arguments' roles).

  Returns:
    The checked function.

  Raises:
    TypeError: ``fn`` does not declare the roles of its arguments.

  Example:
    >>> import jaxdiv
    >>> safe_kl = jaxdiv.checked(jaxdiv.kl_divergence)
    >>> safe_kl(jnp.array([0.5, 0.6]), jnp.array([0.5, 0.5]))  # doctest: +SKIP
    JaxRuntimeError: jaxdiv.kl_divergence: `p` (shape (2,)) does not sum to 1 ...
  """
  declared = declared_roles(fn)
  name = getattr(fn, "__name__", repr(fn))
  if declared is None:
    raise TypeError(
      f"jaxdiv.checked: {name} does not declare the roles of its arguments, so checked "
      "mode cannot tell which checks apply; it wraps jaxdiv's public functions only."
    )
  sig = inspect.signature(fn)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    arrays = {k: v for k, v in bound.arguments.items() if _is_array(v)}
    static = {k: v for k, v in bound.arguments.items() if k not in arrays}

    def body(arrays):
      arguments = {**static, **arrays}
      _check_arguments(name, arguments, declared)
      return fn(**arguments)

    err, out = checkify.checkify(body)(arrays)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(err)):
      # Under jit the error is only known on the device: raise it from a host callback.
      jax.debug.callback(_raise, err)
    else:
      err.throw()
    return out

  return wrapper
