r"""Vocabulary-parallel losses: the fused losses' sweep inside :func:`jax.shard_map`.

With tensor parallelism the output projection is split over devices along the
vocabulary, so each device holds the columns ``[D, V / k]`` of the weight (or the logits
``[..., V / k]``). Gathering them to normalise costs ``N x V`` of communication and
memory. The Megatron-LM scheme (Shoeybi et al., 2019) exchanges only per-row scalars
instead. Here every sharded loss is a fused loss's :class:`~jaxdiv._fused.Job` run by the
same drivers (:mod:`jaxdiv._drivers`) inside :func:`jax.shard_map`: each device sweeps its
own columns, and the loss definitions' statistics are merged across the vocabulary axis
with the same rule that merges one device's blocks (one ``pmax`` and one ``psum`` per
pass). Rows may be split over a data axis of the same mesh; a custom VJP outside the
mapped passes sums the hidden states' gradient over the vocabulary axis and a weight's
over the data axis.

``sharded_linear_*`` are generated from the one-device ``linear_*`` functions
(:func:`vocabulary_parallel`): the same arguments, options and edge conventions, plus
``mesh``, ``axis_name`` and ``data_axis_name``. :func:`sharded_cross_entropy` and
:func:`sharded_kl_divergence` take materialised logits.
"""

from __future__ import annotations

import functools
import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike

from jaxdiv import _checks, _drivers, _fused, _inputs
from jaxdiv import _fused_losses as L

Array = jax.Array
P = PartitionSpec


def _explicit(mesh) -> bool:
  types = getattr(mesh, "axis_types", None)
  explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
  return explicit is not None and types is not None and explicit in tuple(types)


def _smap(f, mesh, in_specs, out_specs):
  # The collectives are explicit and nothing differentiates through the map (the custom
  # VJP sits outside it), so the replication of the outputs is the code's to guarantee.
  if hasattr(jax, "shard_map"):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
  from jax.experimental.shard_map import shard_map  # jax < 0.7

  return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def _check_mesh(fn: str, mesh, axis_name, data_axis_name, num_rows: int, num_v: int):
  """``(vocabulary shards, data shards)`` of a mesh that fits the problem."""
  if not isinstance(mesh, Mesh):
    raise TypeError(f"{fn}: `mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
  if axis_name not in mesh.shape:
    raise ValueError(
      f"{fn}: `axis_name`={axis_name!r} is not an axis of the mesh (axes {tuple(mesh.shape)})."
    )
  k = mesh.shape[axis_name]
  if num_v % k:
    raise ValueError(
      f"{fn}: the vocabulary size {num_v} must be divisible by the size {k} of mesh axis "
      f"{axis_name!r}."
    )
  r = 1
  if data_axis_name is not None:
    if data_axis_name not in mesh.shape or data_axis_name == axis_name:
      raise ValueError(
        f"{fn}: `data_axis_name`={data_axis_name!r} must be an axis of the mesh (axes "
        f"{tuple(mesh.shape)}) other than `axis_name`={axis_name!r}."
      )
    r = mesh.shape[data_axis_name]
    if num_rows % r:
      raise ValueError(
        f"{fn}: the number of rows {num_rows} (the batch dimensions, flattened) must be "
        f"divisible by the size {r} of mesh axis {data_axis_name!r}."
      )
  return k, r


def _spec(name: str, vocab, data) -> PartitionSpec:
  """How a job's array is split: weights and vocabulary masks along V, per-token arrays
  along the rows, logits both ways, options replicated."""
  if name in _drivers.WEIGHTS:
    return P(None, vocab)
  if name in ("p_values", "q_values", "full_mask"):
    return P(data, vocab)
  if name == "vocab_mask":
    return P(vocab)
  if name in _drivers.HIDDEN or name in _drivers._PER_ROW:
    return P(data)
  return P()


class _Layout(NamedTuple):
  """The static part of a sharded call: the configuration and how the arrays are split."""

  st: _drivers.Static
  mesh: Mesh
  specs: tuple  # (name, spec) of the arrays that are present


def _grad_specs(lay: _Layout, needs, per_row: bool):
  """How the gradients are split; a scalar option's derivative is one per row when
  ``per_row`` (a one-sweep residual without a reduction), else summed (replicated)."""
  st, specs = lay.st, dict(lay.specs)
  return {
    k: (P(st.data_axis) if per_row else P()) if k in st.diff_opts else specs[k] for k in needs
  }


def _passes(lay: _Layout) -> _drivers.Passes:
  st, mesh = lay.st, lay.mesh
  specs = dict(lay.specs)
  names = tuple(k for k, _ in lay.specs)
  out_spec = P(st.data_axis) if st.reduction is None else P()
  rows = P(st.data_axis)

  def full(present):  # the arrays of the job, absent ones None
    return {k: present.get(k) for k in st.keys}

  def mapped(f, out_specs, extra_specs=()):
    in_specs = ({k: specs[k] for k in names}, *extra_specs)
    return _smap(f, mesh, in_specs, out_specs)

  def present(arrays):
    return {k: arrays[k] for k in names}

  def value(st_, arrays):
    f = mapped(lambda a: _drivers.local_value(st, full(a)), out_spec)
    return f(present(arrays))

  def forward(st_, needs, arrays):
    def local(a):
      out, res = _drivers.local_forward(st, needs, full(a))
      if _drivers.one_sweep(st, needs):
        grads, count = res
        return out, (grads, jnp.zeros((), jnp.float32) if count is None else count)
      return out, res

    if _drivers.one_sweep(st, needs):
      res_specs = (_grad_specs(lay, needs, st.reduction is None), P())
    else:
      res_specs = rows  # per-row statistics
    out, res = mapped(local, (out_spec, res_specs))(present(arrays))
    if _drivers.one_sweep(st, needs) and st.reduction is None:
      res = (res[0], None)
    return out, res

  def backward(st_, needs, arrays, stats, g):
    f = mapped(
      lambda a, s, g: _drivers.local_backward(st, needs, full(a), s, g),
      _grad_specs(lay, needs, False),
      (rows, rows),
    )
    return f(present(arrays), stats, g)

  return _drivers.Passes(value, forward, backward)


@functools.lru_cache(maxsize=256)
def _entry(lay: _Layout):
  """One jitted function per layout, so that eager calls do not recompile."""
  f = _drivers.make_vjp(_passes(lay))

  def run(arrays):
    if _explicit(lay.mesh):  # a mesh with Explicit axes needs inputs with the exact spec
      arrays = {
        k: v if v is None else jax.sharding.reshard(v, NamedSharding(lay.mesh, s))
        for k, v, s in ((k, arrays[k], dict(lay.specs).get(k, P())) for k in arrays)
      }
    return f(lay.st, arrays)

  return jax.jit(run)


def run(job: _fused.Job, fn: str, mesh, axis_name, data_axis_name) -> Array:
  """A fused job on the vocabulary shards (and data shards) of ``mesh``."""
  k, r = _check_mesh(fn, mesh, axis_name, data_axis_name, job.num_rows, job.num_v)
  st = job.static(job.num_rows // r, job.num_v // k, axis_name, data_axis_name)
  st = st._replace(fn=fn)
  specs = tuple(
    (name, _spec(name, axis_name, data_axis_name))
    for name in st.keys
    if job.arrays[name] is not None
  )
  entry = _entry(_Layout(st, mesh, specs))
  try:
    return _fused.call(job, entry, fn)
  except (TypeError, NotImplementedError) as e:  # jvp of the custom VJP, or of its pmax
    if (
      "forward-mode autodiff" in str(e) or "rule for 'pmax'" in str(e) or "has no forward" in str(e)
    ):
      raise TypeError(
        f"{fn} has reverse-mode derivatives only (jax.grad, jax.vjp): no jax.jvp, "
        f"jax.jacfwd, jax.linearize or jax.hessian. For those use {job.instead} on "
        f"materialised (gathered) logits."
      ) from None
    raise


# ---------------------------------------------------------------------------
# The vocabulary-parallel version of a fused loss
# ---------------------------------------------------------------------------

_MESH_ROLES = dict(mesh="unchecked", axis_name="unchecked", data_axis_name="unchecked")

_SHARDED_DOC = r"""{summary}

  The same value and gradients as :func:`jaxdiv.{base}` -- every argument, option and edge
  convention -- with the vocabulary split over the mesh axis ``axis_name`` (tensor
  parallelism of the output head, as in Megatron-LM) and, with ``data_axis_name``, the
  tokens over a second axis of the same mesh. Inside :func:`jax.shard_map` each device runs
  the fused sweep over its own columns; no device forms more than a block of logits, and
  neither the weight nor the logits are gathered. The devices exchange only per-row
  statistics: one ``pmax`` and one ``psum`` per pass over the vocabulary.

  Sharding: a weight ``[D, V]``, logits ``[..., V]`` and a ``[V]`` vocabulary mask are split
  along ``axis_name``; hidden states, labels, token masks and a stored side's
  ``indices``/``log_probs`` along ``data_axis_name`` (the indices are global: each shard
  uses the categories it holds). Results per token are sharded like the tokens. Gradients
  are sharded like their inputs: the hidden states' is summed over the vocabulary axis
  (one ``[rows, D]`` all-reduce, as any vocabulary-parallel head needs), a weight's over
  the data axis (the usual data-parallel reduction). Reverse mode only (no ``jax.jvp``,
  ``jax.jacfwd`` or ``jax.hessian``: use the core functions on gathered logits for those).

  The other arguments are as in :func:`jaxdiv.{base}`.

  Args:
    mesh: the :class:`jax.sharding.Mesh`.
    axis_name: the mesh axis that shards the vocabulary; ``V`` must be divisible by its size.
    data_axis_name: an optional mesh axis (not ``axis_name``) that shards the tokens, whose
      number must be divisible by its size; ``None``: tokens replicated.

  Returns:
    As :func:`jaxdiv.{base}`; per-token results are sharded over ``data_axis_name``.

  Example:
{example}

  References:
    Shoeybi et al., "Megatron-LM: training multi-billion parameter language models using
    model parallelism" (2019), section 3.

  See also:
    :func:`jaxdiv.{base}` (one device), :func:`jaxdiv.sharded_cross_entropy` (materialised
    logits).
  """


def vocabulary_parallel(base, summary: str, example: str):
  """The vocabulary-parallel version of the fused loss ``base`` (a :func:`~jaxdiv._fused.fused`
  function): its signature with ``mesh``, ``axis_name`` and ``data_axis_name`` added."""
  build, name = base.build, f"sharded_{base.__name__}"
  sig = inspect.signature(base)
  params = list(sig.parameters.values())
  first_kw = next(i for i, p in enumerate(params) if p.kind == p.KEYWORD_ONLY)
  kw = inspect.Parameter.KEYWORD_ONLY
  mesh_params = [
    inspect.Parameter("mesh", kw, annotation="jax.sharding.Mesh"),
    inspect.Parameter("axis_name", kw, annotation=str),
    inspect.Parameter("data_axis_name", kw, default=None, annotation="str | None"),
  ]
  params = params[:first_kw] + mesh_params + params[first_kw:]

  def sharded(*args, mesh, axis_name, data_axis_name=None, **kwargs):
    return run(build(name, *args, **kwargs), name, mesh, axis_name, data_axis_name)

  sharded.__name__ = sharded.__qualname__ = name
  sharded.__module__ = __name__
  sharded.__signature__ = sig.replace(parameters=params)
  sharded.__doc__ = _SHARDED_DOC.format(summary=summary, base=base.__name__, example=example)
  return _checks.roles(**_checks.declared_roles(base), **_MESH_ROLES)(sharded)


sharded_linear_cross_entropy = vocabulary_parallel(
  _fused.linear_cross_entropy,
  r"Fused cross-entropy of ``softmax(hidden @ weight)`` against ``labels``, V sharded.",
  r"""    >>> mesh = jax.make_mesh((1,), ("vocab",))
    >>> h = jnp.array([[1.0, 0.0], [0.0, 1.0]]); w = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    >>> loss = sharded_linear_cross_entropy(h, w, jnp.array([0, -1]), mesh=mesh,
    ...                                     axis_name="vocab")
    >>> [round(float(x), 6) for x in loss]  # ln(e^2 + 1) - 2, ignored
    [0.126928, 0.0]""",
)
sharded_linear_kl_divergence = vocabulary_parallel(
  _fused.linear_kl_divergence,
  r":math:`\mathrm{KL}(p \| q)` per token of two linear heads (or a stored side), V sharded.",
  r"""    >>> mesh = jax.make_mesh((1,), ("vocab",))
    >>> h = jnp.ones((1, 2)); w = jnp.array([[1.0, 0.0], [0.0, 0.0]])
    >>> float(sharded_linear_kl_divergence(h, w, h, w, mesh=mesh, axis_name="vocab")[0])
    0.0""",
)
sharded_linear_jensen_shannon_divergence = vocabulary_parallel(
  _fused.linear_jensen_shannon_divergence,
  r"Weighted Jensen--Shannon divergence per token of two linear heads, V sharded.",
  r"""    >>> mesh = jax.make_mesh((1,), ("vocab",))
    >>> h = jnp.ones((1, 1)); w1 = jnp.array([[50.0, 0.0]]); w2 = jnp.array([[0.0, 50.0]])
    >>> js = sharded_linear_jensen_shannon_divergence(h, w1, h, w2, mesh=mesh, axis_name="vocab")
    >>> round(float(js[0]), 6)  # ln 2
    0.693147""",
)
sharded_linear_skew_kl_divergence = vocabulary_parallel(
  _fused.linear_skew_kl_divergence,
  r"Skew KL :math:`\mathrm{KL}(p \| \alpha p + (1-\alpha) q)` per token, V sharded.",
  r"""    >>> mesh = jax.make_mesh((1,), ("vocab",))
    >>> h = jnp.ones((1, 1)); w1 = jnp.array([[50.0, 0.0]]); w2 = jnp.array([[0.0, 50.0]])
    >>> skl = sharded_linear_skew_kl_divergence(h, w1, h, w2, alpha=0.1, mesh=mesh,
    ...                                         axis_name="vocab")
    >>> round(float(skl[0]), 6)  # -ln 0.1
    2.302585""",
)
sharded_linear_total_variation_distance = vocabulary_parallel(
  _fused.linear_total_variation_distance,
  r"Total variation distance per token of two linear heads, V sharded.",
  r"""    >>> mesh = jax.make_mesh((1,), ("vocab",))
    >>> h = jnp.ones((1, 1)); w1 = jnp.array([[50.0, 0.0]]); w2 = jnp.array([[0.0, 50.0]])
    >>> tv = sharded_linear_total_variation_distance(h, w1, h, w2, mesh=mesh, axis_name="vocab")
    >>> round(float(tv[0]), 6)
    1.0""",
)

sharded_linear_distillation_loss = vocabulary_parallel(
  _fused.linear_distillation_loss,
  r"A distillation loss (hard labels plus a soft teacher) of a linear head, V sharded.",
  r"""    >>> mesh = jax.make_mesh((1,), ("vocab",))
    >>> h = jnp.array([[1.0, 0.0]]); w = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    >>> loss = sharded_linear_distillation_loss(h, w, jnp.array([0]), teacher_logits=h @ w,
    ...                                         mesh=mesh, axis_name="vocab")
    >>> float(loss[0])  # the student is its own teacher
    0.0""",
)


# ---------------------------------------------------------------------------
# Materialised logits, vocabulary sharded
# ---------------------------------------------------------------------------


def _logits(fn: str, name: str, x) -> Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{fn}: `{name}` must be floating point, got dtype {x.dtype}.")
  if x.ndim < 1:
    raise ValueError(f"{fn}: `{name}` needs a category axis, got a scalar.")
  return x


def _materialised_job(fn, kind, p, p_logits, labels, q_logits, where, base) -> _fused.Job:
  """``kind`` "ce" or "kl" between a target (probabilities, logits or labels) and ``q_logits``."""
  _inputs.check_base(fn, base)
  ps = _inputs.source(fn, "p", p, p_logits, labels, labels_allowed=kind == "ce")
  zq = _logits(fn, "q_logits", q_logits)
  batch, num_v = zq.shape[:-1], zq.shape[-1]
  q = _fused._Side("logits", logits=zq)
  rows, sides = {}, {"q": q}
  if ps.kind == "labels":
    labels = ps.value
    if labels.shape != batch:
      raise ValueError(
        f"{fn}: `labels` must have the batch shape of `q_logits` {batch}; got {labels.shape}."
      )
    comp = _fused._comp(L.LabelsCE, ("q",))
    rows = {"labels": labels, "row_mask": labels >= 0}
  else:
    _logits(fn, ps.name, ps.value)
    # the core's checks: a probability side needs its own categories, shapes broadcast
    a = _inputs.align(fn, ps, _inputs.Source("logits", "q_logits", zq), where=where)
    if a.shape[:-1] != batch:
      raise ValueError(
        f"{fn}: `{ps.name}` with shape {ps.value.shape} must not add batch dimensions to "
        f"`q_logits` with shape {zq.shape}."
      )
    sides["p"] = _fused._Side("logits", logits=a.sources[0].value)
    if ps.kind == "probs":
      comp = _fused._comp(L.Soft, ("p", "q"), flags=(("kind", kind),))
    else:
      comp = _fused._comp(L.KL if kind == "kl" else L.CE, ("p", "q"))
  instead = f"jaxdiv.{'cross_entropy' if kind == 'ce' else 'kl_divergence'}"
  job = _fused._job(fn, [comp], sides, batch, num_v, rows, where, None, (None, None), base,
                    instead, {})  # fmt: skip
  if ps.kind == "probs":  # a probability side is not logits
    job = job._replace(kinds=("probs", "logits"))
  return job


@_checks.roles(
  p="probs",
  q_logits="logits",
  p_logits="logits",
  labels="labels",
  **_MESH_ROLES,
  where="where",
  base="unchecked",
)
def sharded_cross_entropy(
  p: ArrayLike | None = None,
  *,
  q_logits: ArrayLike,
  p_logits: ArrayLike | None = None,
  labels: ArrayLike | None = None,
  mesh: Mesh,
  axis_name: str,
  data_axis_name: str | None = None,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r"""Cross-entropy :math:`H(p, q)` over the last axis, vocabulary sharded on ``axis_name``.

  .. math:: H(p, q) = -\sum_v p_v \log q_v, \qquad q = \mathrm{softmax}(z^q)

  The same value and gradients as ``jaxdiv.cross_entropy(p, q_logits=...)`` (the target
  ``p`` as probabilities, ``p_logits`` or integer ``labels``), computed by the fused
  losses' drivers inside :func:`jax.shard_map`: the last (vocabulary) axis of ``q_logits``,
  ``p``/``p_logits`` and ``where`` is split over the mesh axis ``axis_name`` and, with
  ``data_axis_name``, the rows (the flattened batch dimensions) over a second axis. Every
  device normalises its block with the global log-normaliser (one ``pmax`` and one
  ``psum`` of per-row statistics): the logits are never gathered, over either axis, and the
  result is sharded like the rows. ``labels`` are sharded like the rows; the device owning
  the label's column contributes its logit.

  Edge conventions as in :func:`jaxdiv.cross_entropy` (negative labels ignored, labels
  :math:`\ge V` give NaN, ``where`` excludes categories and a fully excluded row gives 0).
  Reverse mode only: for ``jax.jvp`` or ``jax.hessian`` use :func:`jaxdiv.cross_entropy`.

  Args:
    p: target probabilities ``[..., V]``.
    q_logits: model logits ``[..., V]``.
    p_logits: target as logits instead of ``p``.
    labels: target as integer class indices ``[...]`` instead of ``p``.
    mesh: the :class:`jax.sharding.Mesh`.
    axis_name: the mesh axis that shards the vocabulary; ``V`` must be divisible by its
      size.
    data_axis_name: an optional mesh axis that shards the rows (their number divisible by
      its size); ``None``: rows replicated.
    where: boolean mask broadcastable against ``q_logits`` (a ``[V]`` vocabulary mask, a
      ``[..., 1]`` token mask, or a full mask).
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-row cross-entropy, sharded over ``data_axis_name``.

  Example:
    >>> mesh = jax.make_mesh((1,), ("vocab",))
    >>> z = jnp.log(jnp.array([[0.7, 0.3]]))
    >>> round(float(sharded_cross_entropy(labels=jnp.array([0]), q_logits=z,
    ...                                  mesh=mesh, axis_name="vocab")[0]), 6)
    0.356675

  References:
    Shoeybi et al., "Megatron-LM: training multi-billion parameter language models using
    model parallelism" (2019), section 3.

  See also:
    :func:`jaxdiv.cross_entropy`, :func:`sharded_kl_divergence`,
    :func:`jaxdiv.sharded_linear_cross_entropy`.
  """
  fn = "sharded_cross_entropy"
  job = _materialised_job(fn, "ce", p, p_logits, labels, q_logits, where, base)
  return run(job, fn, mesh, axis_name, data_axis_name)


@_checks.roles(
  p="probs",
  q_logits="logits",
  p_logits="logits",
  **_MESH_ROLES,
  where="where",
  base="unchecked",
)
def sharded_kl_divergence(
  p: ArrayLike | None = None,
  *,
  q_logits: ArrayLike,
  p_logits: ArrayLike | None = None,
  mesh: Mesh,
  axis_name: str,
  data_axis_name: str | None = None,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r""":math:`\mathrm{KL}(p \| q)` over the last axis, with the vocabulary sharded on ``axis_name``.

  .. math:: \mathrm{KL}(p\|q) = \sum_v p_v (\log p_v - \log q_v)

  Mathematical order: ``p`` (probabilities or ``p_logits``, e.g. a teacher) is the
  reference, ``q_logits`` the model. The same value and gradients as
  ``jaxdiv.kl_divergence(p, q_logits=...)``, computed per device on its vocabulary block
  with the global log-normalisers (a ``pmax`` and a ``psum`` of per-row statistics); the
  logits are never gathered, and with ``data_axis_name`` the rows are split too (see
  :func:`sharded_cross_entropy`). Edge conventions as in :func:`jaxdiv.kl_divergence`. For
  integer labels use :func:`sharded_cross_entropy` (KL with a one-hot target equals
  cross-entropy). Reverse mode only.

  Args:
    p: reference probabilities ``[..., V]``.
    q_logits: model logits ``[..., V]``.
    p_logits: reference as logits instead of ``p``.
    mesh: the :class:`jax.sharding.Mesh`.
    axis_name: the mesh axis that shards the vocabulary.
    data_axis_name: an optional mesh axis that shards the rows.
    where: boolean mask broadcastable against ``q_logits``.
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-row :math:`\mathrm{KL}(p\|q)`, sharded over ``data_axis_name``.

  Example:
    >>> mesh = jax.make_mesh((1,), ("vocab",))
    >>> z = jnp.array([[0.0, 1.0]])
    >>> float(sharded_kl_divergence(p_logits=z, q_logits=z, mesh=mesh, axis_name="vocab")[0])
    0.0

  References:
    Shoeybi et al., "Megatron-LM" (2019); Kullback & Leibler (1951).

  See also:
    :func:`jaxdiv.kl_divergence`, :func:`sharded_cross_entropy`.
  """
  fn = "sharded_kl_divergence"
  job = _materialised_job(fn, "kl", p, p_logits, None, q_logits, where, base)
  return run(job, fn, mesh, axis_name, data_axis_name)
