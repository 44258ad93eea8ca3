r"""Entropy, cross-entropy and Kullback--Leibler divergence (categorical and Bernoulli).

The three are tied by :math:`H(p, q) = H(p) + \mathrm{KL}(p \| q)`: with the target
``p`` fixed, minimising cross-entropy and minimising KL are the same optimisation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import _api, _checks, _inputs, _kernels, _numerics

Array = jax.Array


def _label_smoothing(fn: str, eps, labels) -> float:
  """A static smoothing weight in ``[0, 1]`` (only with ``labels``)."""
  if isinstance(eps, jax.core.Tracer):
    raise TypeError(f"{fn}: `label_smoothing` must be a Python number, not a traced array.")
  try:
    eps = float(eps)
  except (TypeError, ValueError):
    raise TypeError(f"{fn}: `label_smoothing` must be a number, got {eps!r}.") from None
  if not 0 <= eps <= 1:
    raise ValueError(f"{fn}: `label_smoothing` must lie in [0, 1], got {eps!r}.")
  if eps and labels is None:
    raise ValueError(f"{fn}: `label_smoothing` applies to integer `labels` only.")
  return eps


def _labels_nll(fn: str, labels: _inputs.Source, q: _inputs.Source, where, eps=0.0) -> Array:
  """``-log q[label]`` per row (smoothed by ``eps`` over the included categories), with
  the ignore / out-of-range / excluded conventions."""
  num = q.value.shape[-1]
  ignored, out_of_range, index = _inputs.label_mask(labels.value, num, where)
  if q.kind == "logits":  # fused kernel: NaN for an invalid row, +inf at a zero q[label]
    nll = _kernels.labels_ce_from_logits(index, q.value, where, eps)
    nll = jnp.where(ignored, jnp.zeros_like(nll), nll)
    return jnp.where(out_of_range, jnp.full_like(nll, jnp.nan), nll)
  dq = _inputs.dist(q, where)
  log_q = jnp.take_along_axis(dq.log_prob, index[..., None], axis=-1)[..., 0]
  q_zero = jnp.take_along_axis(dq.zero, index[..., None], axis=-1)[..., 0]
  nll = jnp.where(q_zero, jnp.inf, -log_q)
  if eps:  # eps times the cross-entropy against the uniform distribution on `where`
    uniform = jnp.ones_like(dq.prob) if where is None else where.astype(dq.prob.dtype)
    uniform = uniform / jnp.maximum(jnp.sum(uniform, axis=-1, keepdims=True), 1)
    u_zero = uniform == 0
    h_u = _numerics.neg_sum(_numerics.xlogy(uniform, u_zero, dq.log_prob, dq.zero))
    nll = (1 - eps) * nll + eps * h_u
  # An invalid q anywhere in the row (negative or NaN probability, NaN or +inf logit)
  # makes the result NaN, as it does for a dense target: never a finite wrong number.
  invalid = jnp.any(jnp.isnan(dq.prob), axis=-1)
  nll = jnp.where(invalid, jnp.full_like(nll, jnp.nan), nll)
  nll = jnp.where(ignored, jnp.zeros_like(nll), nll)
  return jnp.where(out_of_range, jnp.full_like(nll, jnp.nan), nll)


@_api.public
@_checks.roles(
  p="probs", p_logits="logits", logits="logits", axis="axis", where="where", base="unchecked"
)
def entropy(
  p: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  logits: ArrayLike | None = None,
  axis: int = -1,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r"""Shannon entropy :math:`H(p)` of a categorical distribution over ``axis``.

  .. math:: H(p) = -\sum_i p_i \log p_i

  Edge conventions: :math:`0 \log 0 = 0` exactly (a one-hot ``p`` gives exactly 0.0);
  categories excluded by ``where`` contribute nothing, and a fully excluded row gives 0.
  Negative or NaN probabilities give NaN. Probabilities are used as given (not
  renormalised). The derivative :math:`-(\log p_i + 1)` is :math:`+\infty` at
  :math:`p_i = 0`; jaxdiv returns 0 there (the term is held at its limit, 0), so
  gradients stay finite. From logits the gradient
  :math:`-p_i(\log p_i + H)` is finite everywhere, including at ``-inf`` logits.

  Args:
    p: probabilities, with the categories along ``axis``.
    p_logits: unnormalised log-probabilities instead of ``p`` (``-inf`` marks an
      impossible category); normalised by a log-softmax over the included categories.
    logits: another name for ``p_logits`` (give one of the two).
    axis: the category axis.
    where: boolean mask over categories, broadcastable to the input.
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    The entropy, with ``axis`` reduced (float32 for 16-bit inputs).

  Example:
    >>> float(entropy(jnp.array([1.0, 0.0])))
    0.0
    >>> round(float(entropy(jnp.array([0.5, 0.5]), base=2)), 6)
    1.0

  References:
    Cover & Thomas, *Elements of Information Theory*, 2nd ed. (2006), section 2.1.

  See also:
    :func:`cross_entropy` (:math:`H(p) = H(p, p)`), :func:`kl_divergence`.
  """
  fn = "entropy"
  _inputs.check_base(fn, base)
  if p_logits is not None and logits is not None:
    raise ValueError(f"{fn}: give the logits once, as `p_logits` or as `logits` (the same).")
  logits_name = "logits" if logits is not None else "p_logits"
  p_logits = logits if logits is not None else p_logits
  src = _inputs.source(fn, "p", p, p_logits, logits_name=logits_name)
  a = _inputs.align(fn, src, axis=axis, where=where)
  d = _inputs.dist(a.sources[0], a.where)
  h = _numerics.neg_sum(d.prob * d.log_prob)
  return _inputs.apply_base(h, base)


@_api.public
@_checks.roles(
  **_checks.PAIR,
  **_checks.STORED,
  labels="labels",
  label_smoothing="unchecked",
  temperature="unchecked",
  soft_cap="unchecked",
  z_loss="unchecked",
  base="unchecked",
)
@_api.fill_doc(_inputs.DOC)
def cross_entropy(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  labels: ArrayLike | None = None,
  p_indices: ArrayLike | None = None,
  p_log_probs: ArrayLike | None = None,
  q_indices: ArrayLike | None = None,
  q_log_probs: ArrayLike | None = None,
  tail: str = "residual",
  label_smoothing: float = 0.0,
  temperature: ArrayLike = 1.0,
  soft_cap: ArrayLike | None = None,
  z_loss: ArrayLike = 0.0,
  axis: int = -1,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r"""Cross-entropy :math:`H(p, q)` of ``q`` relative to the target ``p``, over ``axis``.

  .. math:: H(p, q) = -\sum_i p_i \log q_i = H(p) + \mathrm{KL}(p \| q)

  Argument order is mathematical: the target ``p`` first, the model ``q`` second (as
  in Cover & Thomas; ``optax.softmax_cross_entropy(logits, labels)`` takes the model
  first).

  Edge conventions: :math:`0 \log q_i = 0` for every :math:`q_i`, including 0;
  :math:`p_i > 0 = q_i` gives ``+inf``; negative or NaN probabilities give NaN.
  With ``labels`` (integer class indices in place of ``p``), the result is
  :math:`-\log q_{\text{label}}`; a negative label is ignored (result exactly 0, zero
  gradient: PyTorch's ``ignore_index`` for any negative value); a label
  :math:`\ge` the number of categories gives NaN. ``where`` excludes categories: they
  contribute nothing, a logits input is normalised over the included ones, a fully
  excluded row gives 0 and so does a label pointing at an excluded category.

  Gradients: :math:`\partial H / \partial p_i = -\log q_i`, also where
  :math:`p_i = 0` (the function is linear in ``p``); where :math:`p_i = q_i = 0` it is
  returned as 0 (the true value is :math:`+\infty`). From logits, the derivative rule
  is the closed form :math:`\partial H/\partial z^q = q \sum_i p_i - p` (a custom JVP,
  so ``grad``, ``jacfwd`` and ``hessian`` all work and stay finite at ``-inf`` logits).

  Either distribution may be stored (indices with their log-probabilities), compared on the
  cells of ``tail`` as in :func:`kl_divergence`. ``z_loss`` adds PaLM's
  :math:`\lambda\,\mathrm{lse}(z^q)^2` per row (over the included categories; 0 on an
  ignored label), which keeps the model's log-normaliser near 0.

  Args:
    p: target probabilities, categories along ``axis``.
    q: model probabilities.
    p_logits: target as logits instead of ``p``.
    q_logits: model as logits instead of ``q``.
    labels: target as integer class indices instead of ``p`` (the batch shape: the
      input shape without ``axis``).
    label_smoothing: with ``labels``, the weight :math:`\varepsilon \in [0, 1]` of the
      uniform distribution over the categories ``where`` includes: the target is
      :math:`(1 - \varepsilon)\,\mathbb{1}_y + \varepsilon / K` (PyTorch's
      ``label_smoothing``, but no mass on excluded categories -- ``optax.smooth_labels``
      puts some there, which then cost ``+inf``). A Python number.
    {stored_args}
    {head_args}
    z_loss: :math:`\lambda \ge 0`, the weight of :math:`\mathrm{lse}(z^q)^2`; needs
      ``q_logits``.
    axis: the category axis.
    where: boolean mask over categories, broadcastable to the inputs.
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    :math:`H(p, q)` with ``axis`` reduced; batch dimensions broadcast, never averaged.

  Example:
    >>> p, q = jnp.array([1.0, 0.0]), jnp.array([0.7, 0.3])
    >>> round(float(cross_entropy(p, q)), 6)  # -ln 0.7
    0.356675
    >>> round(float(cross_entropy(labels=jnp.array(0), q=q)), 6)
    0.356675

  References:
    Cover & Thomas, *Elements of Information Theory*, 2nd ed. (2006), section 2.3.

  See also:
    :func:`entropy`, :func:`kl_divergence` (:math:`H(p, q) = H(p) + \mathrm{KL}(p\|q)`),
    :func:`binary_cross_entropy`.
  """
  fn = "cross_entropy"
  _inputs.check_base(fn, base)
  eps = _label_smoothing(fn, label_smoothing, labels)
  head = _inputs.head_options(fn, temperature, soft_cap)
  _inputs.check_tail(fn, tail)
  zl, zlv = _inputs.scalar_option(fn, "z_loss", z_loss, low=0.0)
  stored = _inputs.stored_side(
    fn, p_indices, p_log_probs, q_indices, q_log_probs,
    p=p, p_logits=p_logits, labels=labels, q=q, q_logits=q_logits,
  )  # fmt: skip
  if stored is not None:
    if eps:
      raise ValueError(f"{fn}: `label_smoothing` applies to integer `labels` only.")
    role = "q" if stored.role == "p" else "p"
    ds = _inputs.source(fn, role, q if role == "q" else p, q_logits if role == "q" else p_logits)
    (ds,) = _inputs.transform_logits(fn, head, ds)
    dp, dq, finish = _inputs.sparse_pair(fn, stored, ds, tail, axis, where)
    h = finish(cross_entropy_of(dp, dq))
    if zlv != 0.0:
      h = h + _z_loss(fn, zl, ds if role == "q" else None, axis, where, None)
    return _inputs.apply_base(h, base)
  ps = _inputs.source(fn, "p", p, p_logits, labels, labels_allowed=True)
  qs = _inputs.source(fn, "q", q, q_logits)
  ps, qs = _inputs.transform_logits(fn, head, ps, qs)
  # Logits q: a fused kernel of _numerics, which upcasts 16-bit inputs itself.
  a = _inputs.align(fn, ps, qs, axis=axis, where=where, upcast=qs.kind != "logits")
  ps, qs = a.sources
  if ps.kind == "labels":
    h = _labels_nll(fn, ps, qs, a.where, eps)
  elif qs.kind == "logits" and ps.kind == "logits":
    h = _kernels.ce_from_logits(ps.value, qs.value, a.where)
  elif qs.kind == "logits":
    h = _kernels.soft_ce_from_logits(ps.value, qs.value, a.where)
  else:
    h = cross_entropy_of(_inputs.dist(ps, a.where), _inputs.dist(qs, a.where))
  if zlv != 0.0:
    h = h + _z_loss(fn, zl, qs, -1, a.where, ps if ps.kind == "labels" else None)
  return _inputs.apply_base(h, base)


def _z_loss(fn: str, z_loss, qs, axis, where, labels) -> Array:
  """``z_loss * lse(q_logits)^2`` per row, over the included categories (PaLM's z-loss): 0
  on a fully excluded row and, with labels, on an ignored one."""
  if qs is None or qs.kind != "logits":
    raise ValueError(f"{fn}: `z_loss` needs the model as logits (`q_logits`).")
  a = _inputs.align(fn, qs, axis=axis, where=where)
  lse = _numerics.logsumexp(a.sources[0].value, a.where)
  out = jnp.where(lse == -jnp.inf, jnp.zeros_like(lse), z_loss * lse * lse)
  if labels is not None:
    ignored, _, _ = _inputs.label_mask(labels.value, a.shape[-1], a.where)
    out = jnp.where(ignored, jnp.zeros_like(out), out)
  return out


def cross_entropy_of(dp: _inputs.Dist, dq: _inputs.Dist) -> Array:
  """:math:`H(p, q)` of two resolved distributions (categories last)."""
  return _numerics.neg_sum(_numerics.xlogy(dp.prob, dp.zero, dq.log_prob, dq.zero))


@_api.public
@_checks.roles(
  **_checks.PAIR,
  **_checks.STORED,
  labels="labels",
  temperature="unchecked",
  soft_cap="unchecked",
  base="unchecked",
)
@_api.fill_doc(_inputs.DOC)
def kl_divergence(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  labels: ArrayLike | None = None,
  p_indices: ArrayLike | None = None,
  p_log_probs: ArrayLike | None = None,
  q_indices: ArrayLike | None = None,
  q_log_probs: ArrayLike | None = None,
  tail: str = "residual",
  temperature: ArrayLike = 1.0,
  soft_cap: ArrayLike | None = None,
  axis: int = -1,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r"""Kullback--Leibler divergence :math:`\mathrm{KL}(p \| q)` over ``axis``.

  .. math:: \mathrm{KL}(p \| q) = \sum_i p_i (\log p_i - \log q_i) = H(p, q) - H(p)

  Argument order is mathematical: ``kl_divergence(p, q)`` is KL(p‖q), the divergence
  of ``q`` from the reference ``p`` (``optax.kl_divergence(log_predictions, targets)``
  and ``torch.nn.functional.kl_div(input, target)`` take the model first, and want
  log-probabilities for it).

  Edge conventions: :math:`0 \log(0/q_i) = 0` for every :math:`q_i`;
  :math:`p_i > 0 = q_i` gives ``+inf``; negative or NaN probabilities give NaN.
  ``labels``, ``where`` and fully excluded rows behave as in :func:`cross_entropy`
  (with a one-hot target, KL equals cross-entropy because :math:`H(p) = 0`).
  The differences :math:`\log p_i - \log q_i` are formed per category, so a small KL
  between high-entropy distributions keeps its relative precision (unlike
  ``H(p, q) - H(p)``).

  Gradients: in ``p``, :math:`\log p_i + 1 - \log q_i`, with the :math:`\log p_i + 1`
  part returned as 0 at :math:`p_i = 0` (see :func:`entropy`); in ``q``,
  :math:`-p_i / q_i` (0 where :math:`p_i = 0`). From two logit arrays, a custom JVP
  gives the closed form :math:`\partial \mathrm{KL}/\partial z^q = q - p` and
  :math:`\partial \mathrm{KL}/\partial z^p_i = p_i(\log p_i - \log q_i - \mathrm{KL})`.

  {stored}

  Args:
    p: reference probabilities, categories along ``axis``.
    q: approximating probabilities.
    p_logits: ``p`` as logits.
    q_logits: ``q`` as logits.
    labels: ``p`` as integer class indices (one-hot).
    {stored_args}
    {head_args}
    axis: the category axis.
    where: boolean mask over categories, broadcastable to the inputs.
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    :math:`\mathrm{KL}(p\|q) \ge 0` with ``axis`` reduced.

  Example:
    >>> p, q = jnp.array([1.0, 0.0]), jnp.array([0.7, 0.3])
    >>> round(float(kl_divergence(p, q)), 6)
    0.356675
    >>> float(kl_divergence(jnp.array([0.5, 0.5]), jnp.array([1.0, 0.0])))
    inf
    >>> top1 = kl_divergence(  # p's largest category and the rest of its mass
    ...   p_indices=jnp.array([0]), p_log_probs=jnp.log(jnp.array([0.5])), q=q)
    >>> round(float(top1), 6)  # 0.5 log(0.5/0.7) + 0.5 log(0.5/0.3)
    0.087177

  References:
    Kullback & Leibler, "On information and sufficiency", Ann. Math. Stat. (1951);
    Cover & Thomas (2006), section 2.3.

  See also:
    :func:`cross_entropy`, :func:`entropy`, :func:`binary_kl_divergence`.
  """
  fn = "kl_divergence"
  _inputs.check_base(fn, base)
  head = _inputs.head_options(fn, temperature, soft_cap)
  _inputs.check_tail(fn, tail)
  stored = _inputs.stored_side(
    fn, p_indices, p_log_probs, q_indices, q_log_probs,
    p=p, p_logits=p_logits, labels=labels, q=q, q_logits=q_logits,
  )  # fmt: skip
  if stored is not None:
    role = "q" if stored.role == "p" else "p"
    ds = _inputs.source(fn, role, q if role == "q" else p, q_logits if role == "q" else p_logits)
    (ds,) = _inputs.transform_logits(fn, head, ds)
    dp, dq, finish = _inputs.sparse_pair(fn, stored, ds, tail, axis, where)
    return _inputs.apply_base(finish(kl_of(dp, dq)), base)
  ps = _inputs.source(fn, "p", p, p_logits, labels, labels_allowed=True)
  qs = _inputs.source(fn, "q", q, q_logits)
  ps, qs = _inputs.transform_logits(fn, head, ps, qs)
  a = _inputs.align(fn, ps, qs, axis=axis, where=where, upcast=qs.kind != "logits")
  ps, qs = a.sources
  if ps.kind == "labels":
    d = _labels_nll(fn, ps, qs, a.where)
  elif ps.kind == "logits" and qs.kind == "logits":
    d = _kernels.kl_from_logits(ps.value, qs.value, a.where)
  elif qs.kind == "logits":
    d = _kernels.soft_kl_from_logits(ps.value, qs.value, a.where)
  else:
    d = kl_of(_inputs.dist(ps, a.where), _inputs.dist(qs, a.where))
  return _inputs.apply_base(d, base)


def kl_of(dp: _inputs.Dist, dq: _inputs.Dist) -> Array:
  r""":math:`\mathrm{KL}(p \| q)` of two resolved distributions (categories last)."""
  terms = _numerics.rel_entr(dp.prob, dp.zero, dp.log_prob, dq.log_prob, dq.zero)
  return jnp.sum(terms, axis=-1)


# ---------------------------------------------------------------------------
# Bernoulli (elementwise)
# ---------------------------------------------------------------------------


def _bernoulli_dist(kind: str, x: Array) -> _inputs.Dist:
  """A Bernoulli as a two-category :class:`Dist` on a new last axis: [P(1), P(0)]."""
  if kind == "logits":
    # log sigma(z) and log sigma(-z): exact at +-inf logits (probabilities 1 and 0).
    log_p = jnp.stack([jax.nn.log_sigmoid(x), jax.nn.log_sigmoid(-x)], axis=-1)
    zero = log_p == -jnp.inf
    return _inputs.Dist(jnp.exp(log_p), jnp.where(zero, jnp.zeros_like(log_p), log_p), zero)
  p = jnp.stack([x, 1 - x], axis=-1)
  p = jnp.where(p < 0, jnp.full_like(p, jnp.nan), p)  # p outside [0, 1]: NaN
  log_p, zero = _numerics.safe_log(p)
  return _inputs.Dist(p, log_p, zero)


def _bernoulli_pair(fn, p, q, p_logits, q_logits, base):
  _inputs.check_base(fn, base)
  sp = _inputs.source(fn, "p", p, p_logits)
  sq = _inputs.source(fn, "q", q, q_logits)
  shape = _inputs.broadcast_shape(fn, {sp.name: sp.value.shape, sq.name: sq.value.shape})
  dtype = _numerics.compute_dtype(jnp.result_type(sp.value.dtype, sq.value.dtype))

  def upcast(s):
    v = s.value.astype(dtype)
    return _numerics.flush_subnormal_upcast(s.value, v) if s.kind == "probs" else v

  return tuple(_bernoulli_dist(s.kind, jnp.broadcast_to(upcast(s), shape)) for s in (sp, sq))


@_api.public
@_checks.roles(**_checks.BINARY_PAIR, base="unchecked")
def binary_cross_entropy(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r"""Elementwise Bernoulli cross-entropy :math:`H(p, q)` of ``q`` relative to ``p``.

  .. math:: H(p, q) = -p \log q - (1 - p) \log(1 - q)

  ``p`` and ``q`` are probabilities of the event (broadcast like numpy), or logits via
  ``p_logits`` / ``q_logits`` (:math:`q = \sigma(z)`). Logits of :math:`\pm\infty` are
  valid (probabilities 1 and 0) and give exact values and finite gradients
  (``optax.sigmoid_binary_cross_entropy`` returns NaN there). Conventions as in
  :func:`cross_entropy`: :math:`0 \log 0 = 0`, a positive probability on an outcome
  that ``q`` rules out gives ``+inf``, a probability outside :math:`[0, 1]` gives NaN.
  From logits, :math:`\log q = \log\sigma(z)` and :math:`\log(1-q) = \log\sigma(-z)`
  are computed without cancellation.

  Args:
    p, q: probabilities of the event.
    p_logits, q_logits: the distributions as logits of the event instead.
    base: logarithm base (``None``: nats; 2: bits).

  Example:
    >>> round(float(binary_cross_entropy(1.0, 0.7)), 6)
    0.356675

  See also:
    :func:`binary_kl_divergence`, :func:`cross_entropy` (the two-category case).
  """
  fn = "binary_cross_entropy"
  dp, dq = _bernoulli_pair(fn, p, q, p_logits, q_logits, base)
  h = _numerics.neg_sum(_numerics.xlogy(dp.prob, dp.zero, dq.log_prob, dq.zero))
  return _inputs.apply_base(h, base)


@_api.public
@_checks.roles(**_checks.BINARY_PAIR, base="unchecked")
def binary_kl_divergence(
  p: ArrayLike | None = None,
  q: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r"""Elementwise Bernoulli KL divergence :math:`\mathrm{KL}(p \| q)`.

  .. math:: \mathrm{KL}(p \| q) = p \log\frac{p}{q} + (1 - p)\log\frac{1 - p}{1 - q}

  Inputs and conventions as in :func:`binary_cross_entropy`;
  :math:`H(p, q) = H(p) + \mathrm{KL}(p\|q)` holds elementwise.

  Example:
    >>> float(binary_kl_divergence(0.3, 0.3))
    0.0

  See also:
    :func:`kl_divergence` (the two-category case), :func:`binary_cross_entropy`.
  """
  fn = "binary_kl_divergence"
  dp, dq = _bernoulli_pair(fn, p, q, p_logits, q_logits, base)
  terms = _numerics.rel_entr(dp.prob, dp.zero, dp.log_prob, dq.log_prob, dq.zero)
  return _inputs.apply_base(jnp.sum(terms, axis=-1), base)
