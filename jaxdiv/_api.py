"""Public-function plumbing: an eager call runs one cached, compiled program.

Called outside ``jit`` (a notebook, an evaluation loop), a jaxdiv function would
otherwise dispatch its operations one by one, and any ``lax.map`` or
``lax.platform_dependent`` in it over a fresh closure would be traced and compiled anew
on every call. :func:`public` routes such a call through one ``jax.jit`` per function,
with the non-array arguments (``axis``, ``base``, ``alpha`` given as a Python number, a
generator, a mesh) as static arguments, so that a repeated call at the same shapes
compiles nothing. Inside a trace (``jit``, ``vmap``, ``grad``, checked mode) the
function runs as written: the enclosing transformation compiles it.
"""

from __future__ import annotations

import functools
import inspect

import jax
import numpy as np

_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)


def _numeric(x) -> bool:
  """A value jit can take (a string or object array gets the function's own error)."""
  return np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_


def public(fn):
  """Wrap a public function so that its eager calls are compiled once per configuration."""
  params = inspect.signature(fn).parameters
  if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()):
    return fn
  positional = [k for k, p in params.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
  # Parameters (alpha, weight, ...) whose concrete values the function checks: given as
  # an array, the call runs as written so that the check sees the value, not a tracer.
  roles = getattr(fn, "_jaxdiv_roles", {})
  checked_by_value = {k for k, role in roles.items() if role == "unchecked"}

  @functools.partial(jax.jit, static_argnums=0)
  def compiled(static, arrays):
    return fn(**dict(static), **arrays)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    if len(args) > len(positional) or any(k in kwargs for k in positional[: len(args)]):
      return fn(*args, **kwargs)  # the function's own error for a wrong call
    arrays, static = {}, []
    for k, v in (*zip(positional[: len(args)], args, strict=True), *kwargs.items()):
      if isinstance(v, jax.core.Tracer):
        return fn(*args, **kwargs)  # inside a trace: the enclosing transformation compiles
      if isinstance(v, _ARRAY_TYPES):
        if k in checked_by_value or not _numeric(v):
          return fn(*args, **kwargs)
        arrays[k] = v
      else:
        static.append((k, v))
    static = tuple(static)
    try:
      hash(static)
    except TypeError:  # a list or another unhashable argument: run as written
      return fn(*args, **kwargs)
    return compiled(static, arrays)

  return wrapper


def fill_doc(fragments: dict):
  """A decorator replacing each ``{name}`` of a docstring by ``fragments[name]``."""

  def decorate(fn):
    doc = fn.__doc__
    for name, text in fragments.items():
      doc = doc.replace("{" + name + "}", text)
    fn.__doc__ = doc
    return fn

  return decorate
