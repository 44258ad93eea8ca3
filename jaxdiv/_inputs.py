r"""The one place where ``p`` / ``p_logits`` / ``labels`` become log-probabilities.

Every public function resolves its arguments here, in three steps:

1. :func:`source` checks that a distribution is given exactly once -- as probabilities,
   as logits, or (first argument only) as integer labels -- and converts it.
2. :func:`align` checks dtypes, broadcasts the inputs and the ``where`` mask against one
   another (errors name the shapes), normalises ``axis`` and moves it last, so that the
   families only ever reduce over the last axis.
3. :func:`dist` turns a probability or logit source into a :class:`Dist`: the
   probabilities, their *safe* logarithm (0 where the probability is exactly 0) and the
   exact-zero mask, with excluded categories set to probability 0.

All checks here happen at trace time, on shapes and dtypes. Value problems are handled
by construction: a negative probability becomes NaN, a label >= the number of
categories gives NaN, so neither can turn into a finite wrong number.
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiv import _numerics

Array = jax.Array


class Source(NamedTuple):
  """A distribution as the user gave it (category axis moved last once aligned)."""

  kind: str  # "probs", "logits" or "labels"
  name: str  # the argument's name, for error messages
  value: Array


class Dist(NamedTuple):
  """A distribution over the last axis, in the form every divergence is built from."""

  prob: Array  # probabilities; exactly 0 at excluded categories
  log_prob: Array  # log-probabilities with 0 substituted where prob == 0 (finite gradients)
  zero: Array  # bool: prob is exactly 0 (a zero probability, a -inf logit, or excluded)


def source(
  fn: str, role: str, probs, logits, labels=None, *, labels_allowed=False, logits_name=None
) -> Source:
  """Resolve one distribution given as exactly one of probabilities, logits or labels."""
  logits_name = logits_name or f"{role}_logits"
  given = {role: probs, logits_name: logits}
  if labels_allowed:
    given["labels"] = labels
  present = [k for k, v in given.items() if v is not None]
  if len(present) != 1:
    options = " or ".join(f"`{k}`" for k in given)
    if not present:
      raise ValueError(f"{fn}: the distribution {role} is missing; give it as {options}.")
    raise ValueError(
      f"{fn}: the distribution {role} is given {len(present)} times "
      f"(as {', '.join(f'`{k}`' for k in present)}); give exactly one of {options}."
    )
  name = present[0]
  value = given[name]
  if name == "labels":
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.integer) or value.dtype == jnp.bool_:
      raise TypeError(
        f"{fn}: `labels` must be an integer array of class indices, got dtype {value.dtype} "
        f"with shape {value.shape}; pass probabilities as `{role}` instead."
      )
    return Source("labels", name, value)
  try:
    value = jnp.asarray(value)
  except TypeError:
    raise TypeError(f"{fn}: `{name}` must be numeric, got {type(value).__name__}.") from None
  if not (jnp.issubdtype(value.dtype, jnp.number) or value.dtype == jnp.bool_):
    raise TypeError(f"{fn}: `{name}` must be numeric, got dtype {value.dtype}.")
  if jnp.issubdtype(value.dtype, jnp.complexfloating):
    raise TypeError(f"{fn}: `{name}` must be real, got dtype {value.dtype}.")
  kind = "logits" if name == logits_name else "probs"
  return Source(kind, name, value)


_BASE_NAMES = {"nats": None, "bits": 2}


def check_base(fn: str, base) -> None:
  """A logarithm base: a positive number other than 1, or ``'bits'`` / ``'nats'``.

  Strings and types are checked always, the value when it is a concrete number.
  """
  if base is None or isinstance(base, jax.core.Tracer):
    return
  if isinstance(base, str):
    if base not in _BASE_NAMES:
      raise ValueError(
        f"{fn}: `base` must be a positive number other than 1, 'bits' or 'nats', got {base!r}."
      )
    return
  b = np.asarray(base)
  if b.dtype.kind not in "iuf":  # bool, complex, object, ...: not a logarithm base
    raise TypeError(
      f"{fn}: `base` must be a positive number other than 1, 'bits' or 'nats', "
      f"got {type(base).__name__} {base!r}."
    )
  if b.ndim == 0 and (not b > 0 or b == 1):
    raise ValueError(f"{fn}: `base` must be positive and not 1 (or 'bits' / 'nats'), got {base!r}.")


def apply_base(x: Array, base) -> Array:
  """Convert a value in nats to the given logarithm base (None or 'nats': nats; 'bits': 2)."""
  if isinstance(base, str):
    base = _BASE_NAMES[base]
  if base is None:
    return x
  return x / jnp.log(jnp.asarray(base, x.dtype))


def _normalise_axis(fn: str, axis, ndim: int, shape) -> int:
  try:
    axis = operator.index(axis)
  except TypeError:
    raise TypeError(f"{fn}: `axis` must be a single integer, got {axis!r}.") from None
  if not -ndim <= axis < ndim:
    raise ValueError(
      f"{fn}: `axis`={axis} is out of range for inputs of shape {tuple(shape)} (ndim {ndim})."
    )
  return axis % ndim


def broadcast_shape(fn: str, shapes: dict[str, tuple]) -> tuple:
  try:
    return tuple(np.broadcast_shapes(*shapes.values()))
  except ValueError:
    desc = " and ".join(f"`{k}` with shape {tuple(v)}" for k, v in shapes.items())
    raise ValueError(f"{fn}: cannot broadcast {desc} against each other.") from None


class Aligned(NamedTuple):
  sources: tuple  # Sources with float values cast to `dtype` (see `upcast`), category axis last
  where: Array | None  # bool mask broadcast to `shape`, category axis last
  dtype: jnp.dtype  # computation and result dtype
  shape: tuple  # common shape, category axis last


def _where_without_categories(fn: str, where_shape: tuple, dense: dict, axis) -> None:
  """A ``where`` with the batch shape (a mask over rows) names the form that works."""
  try:
    shape = tuple(np.broadcast_shapes(*dense.values()))
    ax = operator.index(axis) % len(shape)
  except (ValueError, TypeError, ZeroDivisionError):
    return
  batch = shape[:ax] + shape[ax + 1 :]
  if tuple(where_shape) != batch:
    return
  form = "mask[..., None]" if ax == len(shape) - 1 else f"jnp.expand_dims(mask, {ax})"
  raise ValueError(
    f"{fn}: `where` with shape {tuple(where_shape)} has the batch shape of the inputs "
    f"(shape {shape} without the category axis {ax}), but it masks categories and must "
    f"broadcast against {shape}. To exclude whole rows (padded tokens), keep the category "
    f"axis: `where={form}`; an excluded row gives 0."
  )


def _check_category_axis(fn: str, sources, shape: tuple, ax: int, where_shape) -> None:
  """Probabilities must have their own category axis: a distribution cannot broadcast along it."""
  num = shape[ax]
  if num <= 1:
    return
  for s in sources:
    if s.kind != "probs":
      continue
    i = ax - (len(shape) - s.value.ndim)
    if i >= 0 and s.value.shape[i] != 1:
      continue
    what = "no category axis" if i < 0 else f"a category axis (axis {i}) of size 1"
    others = ", ".join(
      f"`{o.name}` with shape {o.value.shape}" for o in sources if o is not s and o.kind != "labels"
    )
    if where_shape is not None:
      others = ", ".join(filter(None, [others, f"`where` with shape {tuple(where_shape)}"]))
    msg = (
      f"{fn}: `{s.name}` with shape {s.value.shape} has {what}, but the inputs have {num} "
      f"categories along axis {ax} ({others}); a distribution cannot be broadcast along its "
      "own categories."
    )
    if jnp.issubdtype(s.value.dtype, jnp.integer) or s.value.dtype == jnp.bool_:
      msg += (
        f" `{s.name}` has dtype {s.value.dtype}: if it holds class indices, pass them as "
        f"`labels=` (cross_entropy, kl_divergence) or one-hot encode them "
        f"(jax.nn.one_hot({s.name}, {num}))."
      )
    raise ValueError(msg)


def align(
  fn: str,
  *sources: Source,
  axis=-1,
  where=None,
  upcast: bool = True,
  category_broadcast: bool = False,
) -> Aligned:
  """Check and broadcast distributions (and ``where``) so that ``axis`` is the last one.

  Values are cast to the computation dtype ``Aligned.dtype``. With ``upcast=False``
  floating values keep their own dtype: the fused logits kernels of ``_numerics`` take
  16-bit inputs as they are and convert them inside each pass (a converted copy that
  several passes read would be written out in full). A probability source must have its
  own category axis (not one of size 1 broadcast against the others');
  ``category_broadcast=True`` lifts that for parameters that are not distributions
  (Dirichlet concentrations).
  """
  dense = {s.name: s.value.shape for s in sources if s.kind != "labels"}
  if where is not None:
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
      raise TypeError(f"{fn}: `where` must be a boolean mask, got dtype {where.dtype}.")
    dense_with_where = {**dense, "where": where.shape}
    try:
      np.broadcast_shapes(*dense_with_where.values())
    except ValueError:
      _where_without_categories(fn, where.shape, dense, axis)
  else:
    dense_with_where = dense
  shape = broadcast_shape(fn, dense_with_where)
  if len(shape) == 0:
    raise ValueError(
      f"{fn}: distributions need a category axis; got scalar inputs "
      f"({', '.join(f'`{k}` with shape {tuple(v)}' for k, v in dense.items())})."
    )
  ax = _normalise_axis(fn, axis, len(shape), shape)
  if not category_broadcast:
    _check_category_axis(fn, sources, shape, ax, None if where is None else where.shape)
  batch = shape[:ax] + shape[ax + 1 :]
  for s in sources:
    if s.kind != "labels":
      continue
    if s.value.ndim != len(batch):
      raise ValueError(
        f"{fn}: `labels` must have the batch shape of the other inputs (their shape "
        f"{tuple(shape)} without axis {ax}, i.e. {batch}); got shape {s.value.shape}."
      )
    try:
      batch = tuple(np.broadcast_shapes(s.value.shape, batch))
    except ValueError:
      raise ValueError(
        f"{fn}: `labels` with shape {s.value.shape} does not broadcast against the batch "
        f"shape {batch} (inputs of shape {tuple(shape)} without axis {ax})."
      ) from None
    shape = batch[:ax] + (shape[ax],) + batch[ax:]  # labels may broadcast the batch up
  shape_last = batch + (shape[ax],)

  dtypes = [s.value.dtype for s in sources if s.kind != "labels"]
  dtype = _numerics.compute_dtype(jnp.result_type(*dtypes))

  out = []
  for s in sources:
    if s.kind == "labels":
      out.append(s._replace(value=jnp.broadcast_to(s.value, batch)))
      continue
    v = s.value
    if upcast or not jnp.issubdtype(v.dtype, jnp.floating):
      v = v.astype(dtype)
      if s.kind == "probs":
        v = _numerics.flush_subnormal_upcast(s.value, v)
    v = jnp.broadcast_to(v, shape)
    out.append(s._replace(value=jnp.moveaxis(v, ax, -1)))
  if where is not None:
    where = jnp.moveaxis(jnp.broadcast_to(where, shape), ax, -1)
  return Aligned(tuple(out), where, dtype, shape_last)


def dist(s: Source, where: Array | None) -> Dist:
  """Probabilities or logits (category axis last) as a :class:`Dist`."""
  if s.kind == "logits":
    return Dist(*_numerics.prob_triple(_numerics.log_softmax(s.value, where)))
  if s.kind != "probs":
    raise AssertionError(s.kind)
  p = probs(s, where)
  log_p, zero = _numerics.safe_log(p)
  return Dist(p, log_p, zero)


def probs(s: Source, where: Array | None) -> Array:
  """Probabilities as given, NaN where negative, 0 at excluded categories."""
  return _numerics.nan_negative(s.value, where)


def label_mask(labels: Array, num_categories: int, where: Array | None):
  """``(ignored, out_of_range, safe_index)`` for integer labels, the batch shape each.

  Negative labels are ignored (result 0, zero gradient); labels >= ``num_categories``
  give NaN; a label at an excluded category counts as ignored (its one-hot target lies
  outside the included categories).
  """
  ignored = labels < 0
  out_of_range = labels >= num_categories
  index = jnp.where(ignored | out_of_range, 0, labels)
  if where is not None:
    included = jnp.take_along_axis(where, index[..., None], axis=-1)[..., 0]
    ignored = ignored | ~included
  return ignored, out_of_range, index


# ---------------------------------------------------------------------------
# A stored (sparse) distribution: the log-probabilities of some categories
# ---------------------------------------------------------------------------

TAILS = ("residual", "renormalize", "truncate")

# The docstring fragments of the stored form and the logits' options, shared by the core
# functions that take them (filled in by :func:`jaxdiv._api.fill_doc`).
DOC = {
  "stored": r"""A distribution may be given *stored*: ``p_indices`` with ``p_log_probs`` (or the
  ``q_`` pair), ``k`` categories per row with their log-probabilities under the full
  distribution -- a teacher's top-k, or tokens sampled from it. A slot whose
  log-probability is ``-inf`` is padding, whatever its index. The other side must have all
  its categories (probabilities or logits); the two are compared on the cells of ``tail``:

  * ``"residual"`` (default): the listed categories and one cell more holding each side's
    remaining mass (the stored side's :math:`1 - \sum`, exactly 0 when the listed mass is 1
    up to round-off; the dense side's mass off the listed categories). This is the exact
    divergence of the two coarse-grained distributions: by the data-processing inequality
    it lies between 0 and the full divergence.
  * ``"renormalize"``: both restricted to the listed categories and renormalised (MaxText's
    top-k distillation); the full divergence only when the listed categories hold all of
    both sides' mass.
  * ``"truncate"``: the listed terms only, the sides left as they are (MaxText's formula
    before June 2026): not a divergence (it can be negative), kept for ports.

  A stored row with an index out of range, a duplicated index, a NaN, a log-probability
  above 0 or a listed mass above 1 beyond round-off (:math:`\max(10^{-6}, \epsilon)` of
  its dtype) gives NaN; :func:`jaxdiv.checked` raises naming it. ``where`` applies to both
  sides: a stored category it excludes is padding. Gradients flow to the dense side and
  to the stored log-probabilities. See :doc:`/guides/stored_teachers`.""",
  "stored_args": r"""p_indices: ``p`` stored: ``[..., k]`` integer categories (the batch shape
      of the dense side, then ``k``).
    p_log_probs: ``[..., k]`` their log-probabilities under the full ``p`` (``-inf``:
      padding).
    q_indices: ``q`` stored, as ``p_indices``.
    q_log_probs: ``q`` stored, as ``p_log_probs``.
    tail: with a stored side, ``"residual"``, ``"renormalize"`` or ``"truncate"``.""",
  "head_args": r"""temperature: :math:`T > 0` dividing logits inputs (after ``soft_cap``); an
      error with probabilities; a stored side's log-probabilities are used as given.
    soft_cap: :math:`c > 0` mapping logits inputs to :math:`c \tanh(z / c)` (Gemma 2's
      soft-capping; ``-inf`` stays ``-inf``), or ``None``.""",
}


class Sparse(NamedTuple):
  """A distribution stored as ``indices [..., k]`` with their ``log_probs [..., k]``."""

  indices: Array  # integer categories
  log_probs: Array  # the categories' log-probabilities under the full distribution
  slot_ok: Array  # [..., k] bool: a slot that lists a category (not padding, in range)
  invalid: Array  # [...] bool: a row that is not a distribution (see :func:`sparse`)


def check_tail(fn: str, tail) -> str:
  if not isinstance(tail, str) or tail not in TAILS:
    raise ValueError(f"{fn}: `tail` must be one of {', '.join(map(repr, TAILS))}; got {tail!r}.")
  return tail


def sparse_tolerance(dtype) -> float:
  """How far above 1 the listed mass of a row may be by round-off: ``max(1e-6, eps)`` of
  the stored log-probabilities' dtype (bfloat16 rounds each one by up to 2^-8)."""
  return max(1e-6, float(jnp.finfo(dtype).eps))


def sparse(fn: str, role: str, indices, log_probs, num_v: int, names=None) -> Sparse | None:
  """Check a stored side given as ``{role}_indices`` and ``{role}_log_probs`` (or ``names``).

  A slot whose log-probability is ``-inf`` is padding, whatever its index. A row is
  ``invalid`` (its results NaN, an error under :func:`jaxdiv.checked`) where a slot with a
  finite log-probability has an index outside ``[0, num_v)`` (JAX's gather would clamp
  it), where two such slots list the same category, where a log-probability is NaN or
  positive, or where the listed mass exceeds 1 by more than :func:`sparse_tolerance`.
  """
  i_name, l_name = names or (f"{role}_indices", f"{role}_log_probs")
  if indices is None and log_probs is None:
    return None
  if indices is None or log_probs is None:
    given, missing = (i_name, l_name) if log_probs is None else (l_name, i_name)
    raise ValueError(
      f"{fn}: `{given}` needs `{missing}` (a stored distribution is the categories "
      f"`{i_name}` with their log-probabilities `{l_name}`)."
    )
  idx, lp = jnp.asarray(indices), jnp.asarray(log_probs)
  if not jnp.issubdtype(idx.dtype, jnp.integer) or idx.dtype == jnp.bool_:
    raise TypeError(f"{fn}: `{i_name}` must be an integer array, got dtype {idx.dtype}.")
  if not jnp.issubdtype(lp.dtype, jnp.floating):
    raise TypeError(f"{fn}: `{l_name}` must be a floating-point array, got dtype {lp.dtype}.")
  if idx.ndim < 1 or idx.shape != lp.shape:
    raise ValueError(
      f"{fn}: `{i_name}` and `{l_name}` must have the same shape [..., k] (k stored "
      f"categories per row); got {idx.shape} and {lp.shape}."
    )
  padding = lp == -jnp.inf
  in_range = (idx >= 0) & (idx < num_v)
  slot_ok = ~padding & in_range
  # duplicates among the listed slots: sort, with distinct stand-ins for padding
  k = idx.shape[-1]
  key = jnp.where(padding, -1 - jnp.arange(k, dtype=idx.dtype), idx)
  key = jnp.sort(key, axis=-1)
  dup = (
    jnp.any(key[..., 1:] == key[..., :-1], axis=-1) if k > 1 else jnp.zeros(idx.shape[:-1], bool)
  )
  up = lp.astype(_numerics.compute_dtype(lp.dtype))
  mass = _numerics.logsumexp(jnp.where(padding, -jnp.inf, up))
  too_much = mass > jnp.log1p(jnp.asarray(sparse_tolerance(lp.dtype), up.dtype))
  bad_lp = jnp.any(jnp.isnan(lp) | (lp > 0), axis=-1)
  invalid = jnp.any(~padding & ~in_range, axis=-1) | dup | too_much | bad_lp
  return Sparse(idx, lp, slot_ok, invalid)


def sparse_cells(tail: str, log_probs, slot_ok, dense_listed, dense_rest, tol: float = 1e-6):
  """The stored and the dense distribution coarse-grained onto the same cells, as Dists.

  ``log_probs`` are the stored log-probabilities ``[n, k]``, ``slot_ok`` the slots that
  count; ``dense_listed`` the dense side's log-probabilities at those categories (``-inf``
  elsewhere) and ``dense_rest`` the log of its mass on every other category (``[n]``,
  formed from its log-normaliser by the caller). The cells are the listed categories and,
  for ``"residual"``, one more holding the rest of each distribution's mass (the stored
  side's ``1 - sum``, exactly 0 when the listed mass is within ``tol`` of 1). For
  ``"renormalize"`` both are restricted to the listed categories and renormalised; for
  ``"truncate"`` the listed cells are kept as they are (not distributions).
  """
  lp = jnp.where(slot_ok, log_probs, jnp.full_like(log_probs, -jnp.inf))
  lq = jnp.where(slot_ok, dense_listed, jnp.full_like(dense_listed, -jnp.inf))
  if tail == "renormalize":
    stored = _numerics.log_softmax(lp, slot_ok)
    dense = _numerics.log_softmax(lq, slot_ok)  # no mass on any listed category: NaN
  elif tail == "truncate":
    stored, dense = lp, lq
  else:
    mass = _numerics.logsumexp(lp)
    some = mass < np.log1p(-tol)  # a listed mass of 1 up to round-off leaves exactly nothing
    rest = jnp.log(-jnp.expm1(jnp.where(some, mass, -jnp.ones_like(mass))))
    rest = jnp.where(some, rest, jnp.full_like(rest, -jnp.inf))
    stored = jnp.concatenate([lp, rest[..., None]], axis=-1)
    dense = jnp.concatenate([lq, dense_rest[..., None]], axis=-1)
  return Dist(*_numerics.prob_triple(stored)), Dist(*_numerics.prob_triple(dense))


# ---------------------------------------------------------------------------
# Options of the logits: one check, the same for the core and the fused functions
# ---------------------------------------------------------------------------


def scalar_option(fn: str, name: str, value, *, low=None, high=None, positive=False, what=""):
  """A scalar option, checked where it is concrete; ``(value, concrete float or None)``."""
  if isinstance(value, jax.core.Tracer):
    if jnp.ndim(value) != 0:
      raise ValueError(f"{fn}: `{name}` must be a scalar, got shape {jnp.shape(value)}.")
    return value, None
  v = np.asarray(value)
  if v.ndim != 0:
    raise ValueError(f"{fn}: `{name}` must be a scalar{what}; got an array of shape {v.shape}.")
  if not np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.complexfloating):
    raise TypeError(f"{fn}: `{name}` must be a real number, got {value!r}.")
  x = float(v)
  bad = not np.isfinite(x) or (positive and not x > 0)
  bad = bad or (low is not None and x < low) or (high is not None and x > high)
  if bad:
    if positive:
      rule = "a positive finite number"
    elif high is None:
      rule = f"a finite number >= {low}"
    else:
      rule = f"in [{low}, {high}]"
    raise ValueError(f"{fn}: `{name}` must be {rule}, got {value!r}.")
  return value, x


class Head(NamedTuple):
  """``temperature`` and ``soft_cap`` as given (``None``: not applied)."""

  temperature: Any
  soft_cap: Any

  @property
  def active(self) -> bool:
    return self.temperature is not None or self.soft_cap is not None


def head_options(fn: str, temperature, soft_cap) -> Head:
  """The logits' transform ``z -> soft_cap tanh(z / soft_cap) / temperature``, checked."""
  t, tv = scalar_option(fn, "temperature", temperature, positive=True)
  c = None if soft_cap is None else scalar_option(fn, "soft_cap", soft_cap, positive=True)[0]
  return Head(None if tv == 1.0 else t, c)


def transform_logits(fn: str, head: Head, *sources: Source) -> tuple[Source, ...]:
  """Logit sources with ``head`` applied (cap, then temperature), in their compute dtype;
  a probability source with an active ``head`` is an error (the options act on logits)."""
  if not head.active:
    return sources
  out = []
  for s in sources:
    if s.kind == "probs":
      opts = " and ".join(
        f"`{k}`"
        for k, v in (("temperature", head.temperature), ("soft_cap", head.soft_cap))
        if v is not None
      )
      raise ValueError(
        f"{fn}: {opts} act on logits, but `{s.name}` is given as probabilities; pass its "
        f"logits (`{s.name}_logits`) instead, or transform it yourself."
      )
    if s.kind != "logits":
      out.append(s)
      continue
    z = s.value.astype(_numerics.compute_dtype(s.value.dtype))
    if head.soft_cap is not None:  # an impossible (-inf) category stays impossible
      c = jnp.asarray(head.soft_cap, z.dtype)
      z = jnp.where(z == -jnp.inf, z, c * jnp.tanh(z / c))
    if head.temperature is not None:
      z = z / jnp.asarray(head.temperature, z.dtype)
    out.append(s._replace(value=z))
  return tuple(out)


class Stored(NamedTuple):
  """A stored side as given to a core function: ``role`` "p" or "q", not yet checked."""

  role: str
  indices: Any
  log_probs: Any


def stored_side(fn: str, p_indices, p_log_probs, q_indices, q_log_probs, **dense) -> Stored | None:
  """The stored side of a call, if any: at most one, and never with a dense form of the
  same distribution (``dense``: the caller's dense arguments by name)."""
  given = [
    Stored(r, i, lp)
    for r, i, lp in (("p", p_indices, p_log_probs), ("q", q_indices, q_log_probs))
    if i is not None or lp is not None
  ]
  if len(given) > 1:
    raise ValueError(
      f"{fn}: both distributions are given stored (`p_indices` and `q_indices`); at most "
      f"one side may be stored, the other needs all its categories."
    )
  if not given:
    return None
  role = given[0].role
  twice = [k for k, v in dense.items() if v is not None and (k == role or k.startswith(role + "_"))]
  if twice:
    raise ValueError(
      f"{fn}: the distribution {role} is given twice (as `{twice[0]}` and as "
      f"`{role}_indices`/`{role}_log_probs`); give exactly one of them."
    )
  return given[0]


def _listed(shape, indices, ok):
  """``[..., V]`` bool: the categories a row's ok slots list (a scatter, not a compare)."""
  n, num_v = int(np.prod(shape[:-1], dtype=np.int64)), shape[-1]
  k = indices.shape[-1]
  cols = jnp.where(ok, indices, num_v).reshape(n, k)
  rows = jnp.broadcast_to(jnp.arange(n)[:, None], (n, k))
  mask = jnp.zeros((n, num_v), bool).at[rows, cols].set(True, mode="drop")
  return mask.reshape(shape)


def sparse_pair(fn: str, stored: Stored, dense: Source, tail: str, axis, where):
  """``(dp, dq, finish)`` for a stored side and a dense one (probabilities or logits, any
  ``axis``): both coarse-grained onto the cells of ``tail`` (:func:`sparse_cells`), in the
  order ``p``, ``q``; ``finish(result)`` gives NaN on an invalid row and 0 on a row whose
  categories ``where`` excludes entirely."""
  check_tail(fn, tail)
  a = align(fn, dense, axis=axis, where=where)
  (d,) = a.sources
  num_v, batch = a.shape[-1], a.shape[:-1]
  stored_role = stored.role
  sp = sparse(fn, stored_role, stored.indices, stored.log_probs, num_v)
  if sp.indices.shape[:-1] != tuple(batch):
    raise ValueError(
      f"{fn}: `{stored_role}_indices` with shape {sp.indices.shape} must have the batch shape "
      f"of `{d.name}` ({tuple(batch)}, its shape without the category axis) plus the stored "
      f"categories' axis."
    )
  w = a.where
  idx = jnp.clip(sp.indices, 0, num_v - 1)
  slot_ok = sp.slot_ok
  if w is not None:  # a stored category that `where` excludes is padding
    slot_ok = slot_ok & jnp.take_along_axis(w, idx, axis=-1)
  if d.kind == "logits":
    log_q = _numerics.log_softmax(d.value, w)
    listed = jnp.take_along_axis(log_q, idx, axis=-1)
  else:
    q = probs(d, w)
    listed = jnp.log(jnp.take_along_axis(q, idx, axis=-1))
  listed_mask = _listed(a.shape, idx, slot_ok)
  unlisted = ~listed_mask if w is None else ~listed_mask & w
  if d.kind == "logits":
    rest = _numerics.logsumexp(log_q, unlisted)
  else:
    rest = jnp.log(jnp.sum(jnp.where(unlisted, q, jnp.zeros_like(q)), axis=-1))
  tol = sparse_tolerance(sp.log_probs.dtype)
  ds, dd = sparse_cells(tail, sp.log_probs.astype(a.dtype), slot_ok, listed, rest, tol)
  dp, dq = (ds, dd) if stored_role == "p" else (dd, ds)

  def finish(result):
    result = jnp.where(sp.invalid, jnp.full_like(result, jnp.nan), result)
    if w is None:
      return result
    return jnp.where(jnp.any(w, axis=-1), result, jnp.zeros_like(result))

  return dp, dq, finish


def as_float(fn: str, name: str, x) -> Array:
  """An elementwise float input (binary and closed-form families): ints promoted."""
  x = jnp.asarray(x)
  if not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == jnp.bool_) or jnp.issubdtype(
    x.dtype, jnp.complexfloating
  ):
    raise TypeError(f"{fn}: `{name}` must be real numeric, got dtype {x.dtype}.")
  return x
