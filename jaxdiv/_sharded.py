r"""Vocabulary-parallel cross-entropy and KL: logits sharded over a mesh axis.

With tensor parallelism the output projection is split over devices along the
vocabulary, so each device holds logits ``[..., V / k]``. Gathering them to normalise
costs ``N x V`` of communication and memory. The Megatron-LM scheme (Shoeybi et al.,
2019) exchanges only per-row scalars instead: the row maximum (``lax.pmax``), the sum of
``exp(z - max)`` (``lax.psum``) and the per-row partial sums of the loss terms
(``lax.psum``). Each device then works on its own block with the global
log-normaliser; reverse-mode gradients flow through the ``psum`` and stay sharded.

Implemented with :func:`jax.shard_map` over the named mesh axis; any other mesh axes
see the inputs replicated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike

from jaxdiv import _checks, _inputs, _numerics

Array = jax.Array


def _shard_map(f, mesh, in_specs, out_specs):
  """``shard_map`` under ``jit``, so that unsharded inputs are resharded (not rejected)."""
  if hasattr(jax, "shard_map"):
    mapped = jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
  else:  # jax < 0.7
    from jax.experimental.shard_map import shard_map

    mapped = shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)

  def resharded(*args):
    if _explicit(mesh):  # a mesh with Explicit axes needs inputs with the exact spec
      args = tuple(
        x if x is None or s is None else jax.sharding.reshard(x, NamedSharding(mesh, s))
        for x, s in zip(args, in_specs, strict=True)
      )
    return mapped(*args)

  return jax.jit(resharded)


def _explicit(mesh) -> bool:
  types = getattr(mesh, "axis_types", None)
  explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
  return explicit is not None and types is not None and explicit in tuple(types)


def _check_mesh(fn: str, mesh, axis_name: str, num_v: int) -> int:
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
  return k


def _local_log_softmax(z: Array, where: Array | None, axis_name: str) -> Array:
  """``log softmax`` of the full row from this device's block: one pmax, one psum."""
  if where is not None:
    z = jnp.where(where, z, -jnp.inf)
  m = lax.pmax(lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True)), axis_name)
  m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))  # a constant: the shift cancels
  s = lax.psum(jnp.sum(jnp.exp(z - m), axis=-1, keepdims=True), axis_name)
  if where is not None:
    s = jnp.where(s == 0, jnp.ones_like(s), s)  # a fully excluded row: the zero measure
  return z - m - jnp.log(s)


def _dist(log_p: Array):
  zero = log_p == -jnp.inf
  return jnp.exp(log_p), jnp.where(zero, jnp.zeros_like(log_p), log_p), zero


def _prepare(fn, mesh, axis_name, arrays, where):
  """Align dense [..., V] inputs (category axis last) and ``where``; dtype and specs."""
  names = [k for k, v in arrays.items() if v is not None]
  srcs = [_inputs.Source("logits", k, jnp.asarray(arrays[k])) for k in names]
  for s in srcs:
    if not jnp.issubdtype(s.value.dtype, jnp.floating):
      raise TypeError(f"{fn}: `{s.name}` must be floating point, got dtype {s.value.dtype}.")
  a = _inputs.align(fn, *srcs, axis=-1, where=where)
  _check_mesh(fn, mesh, axis_name, a.shape[-1])
  spec = PartitionSpec(*([None] * (len(a.shape) - 1)), axis_name)
  return dict(zip(names, (s.value for s in a.sources), strict=True)), a, spec


@_checks.roles(
  p="probs",
  q_logits="logits",
  p_logits="logits",
  labels="labels",
  mesh="unchecked",
  axis_name="unchecked",
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
  where: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r"""Cross-entropy :math:`H(p, q)` over the last axis, vocabulary sharded on ``axis_name``.

  .. math:: H(p, q) = -\sum_v p_v \log q_v, \qquad q = \mathrm{softmax}(z^q)

  The same value and gradients as ``jaxdiv.cross_entropy(p, q_logits=...)`` (the target
  ``p`` as probabilities, ``p_logits`` or integer ``labels``), computed with
  :func:`jax.shard_map` over the mesh axis ``axis_name``, which splits the last
  (vocabulary) axis of ``q_logits``, ``p``/``p_logits`` and ``where``: every device
  normalises its block with the global log-normaliser (one ``pmax`` and one ``psum`` of a
  per-row scalar) and the per-row partial sums are ``psum``-ed -- the logits are never
  gathered. The result is per row, replicated over the mesh. ``labels`` are replicated;
  the device owning the label's column contributes its logit.

  Edge conventions as in :func:`jaxdiv.cross_entropy` (negative labels ignored, labels
  :math:`\ge V` give NaN, ``where`` excludes categories and a fully excluded row gives 0).

  Args:
    p: target probabilities ``[..., V]``.
    q_logits: model logits ``[..., V]``.
    p_logits: target as logits instead of ``p``.
    labels: target as integer class indices ``[...]`` instead of ``p``.
    mesh: the :class:`jax.sharding.Mesh`.
    axis_name: the mesh axis that shards the vocabulary; ``V`` must be divisible by its
      size.
    where: boolean mask over categories, broadcastable to ``q_logits``.
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-row cross-entropy.

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
    :func:`jaxdiv.linear_cross_entropy`.
  """
  fn = "sharded_cross_entropy"
  _inputs.check_base(fn, base)
  ps = _inputs.source(fn, "p", p, p_logits, labels, labels_allowed=True)
  if ps.kind == "labels":
    vals, a, spec = _prepare(fn, mesh, axis_name, {"q_logits": q_logits}, where)
    lab_src = _inputs.align(fn, ps, _inputs.Source("logits", "q_logits", vals["q_logits"]))
    lab = lab_src.sources[0].value
    num_v = a.shape[-1]
    ignored, out_of_range, index = _inputs.label_mask(lab, num_v, a.where)
    row_spec = PartitionSpec(*([None] * lab.ndim))

    def local(zq, index, ignored, out_of_range, where):
      log_q = _local_log_softmax(zq, where, axis_name)
      width = zq.shape[-1]
      offset = lax.axis_index(axis_name) * width
      pos = index - offset
      mine = (pos >= 0) & (pos < width) & ~ignored & ~out_of_range
      lq = jnp.take_along_axis(log_q, jnp.clip(pos, 0, width - 1)[..., None], axis=-1)[..., 0]
      # -inf (a masked column) cannot occur here: a label at an excluded column is ignored.
      h = lax.psum(jnp.where(mine, -lq, jnp.zeros_like(lq)), axis_name)
      return jnp.where(out_of_range, jnp.full_like(h, jnp.nan), h)

    where_in = a.where
    specs = (spec, row_spec, row_spec, row_spec, None if where_in is None else spec)
    h = _shard_map(local, mesh, specs, row_spec)(
      vals["q_logits"], index, ignored, out_of_range, where_in
    )
    return _inputs.apply_base(h, base)

  vals, a, spec = _prepare(fn, mesh, axis_name, {ps.name: ps.value, "q_logits": q_logits}, where)
  row_spec = PartitionSpec(*([None] * (len(a.shape) - 1)))
  p_is_logits = ps.kind == "logits"

  def local(pv, zq, where):
    _, log_q, q_zero = _dist(_local_log_softmax(zq, where, axis_name))
    if p_is_logits:
      pr, _, p_zero = _dist(_local_log_softmax(pv, where, axis_name))
    else:
      pr = _inputs.probs(_inputs.Source("probs", "p", pv), where)
      p_zero = pr == 0
    return _numerics.neg_sum(lax.psum(_numerics.xlogy(pr, p_zero, log_q, q_zero), axis_name))

  specs = (spec, spec, None if a.where is None else spec)
  h = _shard_map(local, mesh, specs, row_spec)(vals[ps.name], vals["q_logits"], a.where)
  return _inputs.apply_base(h, base)


@_checks.roles(
  p="probs",
  q_logits="logits",
  p_logits="logits",
  mesh="unchecked",
  axis_name="unchecked",
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
  where: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r""":math:`\mathrm{KL}(p \| q)` over the last axis, with the vocabulary sharded on ``axis_name``.

  .. math:: \mathrm{KL}(p\|q) = \sum_v p_v (\log p_v - \log q_v)

  Mathematical order: ``p`` (probabilities or ``p_logits``, e.g. a teacher) is the
  reference, ``q_logits`` the model. The same value and gradients as
  ``jaxdiv.kl_divergence(p, q_logits=...)``, computed per device on its vocabulary block
  with the global log-normalisers (a ``pmax`` and a ``psum`` of per-row scalars for each
  side) and a final ``psum`` of the per-row partial sums; the logits are never gathered.
  Edge conventions as in :func:`jaxdiv.kl_divergence`. For integer labels use
  :func:`sharded_cross_entropy` (KL with a one-hot target equals cross-entropy).

  Args:
    p: reference probabilities ``[..., V]``.
    q_logits: model logits ``[..., V]``.
    p_logits: reference as logits instead of ``p``.
    mesh: the :class:`jax.sharding.Mesh`.
    axis_name: the mesh axis that shards the vocabulary.
    where: boolean mask over categories, broadcastable to ``q_logits``.
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-row :math:`\mathrm{KL}(p\|q)`.

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
  _inputs.check_base(fn, base)
  ps = _inputs.source(fn, "p", p, p_logits)
  vals, a, spec = _prepare(fn, mesh, axis_name, {ps.name: ps.value, "q_logits": q_logits}, where)
  row_spec = PartitionSpec(*([None] * (len(a.shape) - 1)))
  p_is_logits = ps.kind == "logits"

  def local(pv, zq, where):
    _, log_q, q_zero = _dist(_local_log_softmax(zq, where, axis_name))
    if p_is_logits:
      pr, log_p, p_zero = _dist(_local_log_softmax(pv, where, axis_name))
    else:
      pr = _inputs.probs(_inputs.Source("probs", "p", pv), where)
      log_p, p_zero = _numerics.safe_log(pr)
    terms = _numerics.rel_entr(pr, p_zero, log_p, log_q, q_zero)
    return lax.psum(jnp.sum(terms, axis=-1), axis_name)

  specs = (spec, spec, None if a.where is None else spec)
  d = _shard_map(local, mesh, specs, row_spec)(vals[ps.name], vals["q_logits"], a.where)
  return _inputs.apply_base(d, base)
