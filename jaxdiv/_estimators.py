r"""Monte-Carlo estimators of KL divergence from log-densities at samples.

For samples :math:`x \sim q` and :math:`\log r = \log p(x) - \log q(x)`, Schulman (2020)
gives three per-sample estimators of :math:`\mathrm{KL}(q \| p) = \mathbb{E}_q[-\log r]`:

==========  ===============================  =========  ===============================
name        per-sample value                 unbiased   sign
==========  ===============================  =========  ===============================
``"k1"``    :math:`-\log r`                  yes        either (high variance)
``"k2"``    :math:`\tfrac12 (\log r)^2`      no         :math:`\ge 0`
``"k3"``    :math:`(r - 1) - \log r`         yes        :math:`\ge 0` (low variance)
==========  ===============================  =========  ===============================

These are what RLHF (PPO/GRPO's KL penalty between the policy and a reference) and
variational inference compute when only log-probabilities of sampled tokens are stored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxdiv import _api, _checks, _inputs, _numerics

Array = jax.Array

ESTIMATORS = ("k1", "k2", "k3")


@jax.custom_jvp
def _with_k2_gradient(value: Array, log_ratio: Array) -> Array:
  """``value``, differentiated as if it were ``k2 = (log r)^2 / 2``: tangent ``log r * d log r``."""
  return value


@_with_k2_gradient.defjvp
def _with_k2_gradient_jvp(primals, tangents):
  value, log_ratio = primals
  _, d_log_ratio = tangents
  return value, log_ratio * d_log_ratio


def _bounds(fn: str, name: str, bounds):
  """``(lo, hi)`` floats with ``lo <= hi`` (either may be ``None``: unbounded), or None."""
  if bounds is None:
    return None
  try:
    lo, hi = bounds
  except (TypeError, ValueError):
    raise TypeError(f"{fn}: `{name}` must be a pair (lo, hi), got {bounds!r}.") from None
  vals = []
  for v in (lo, hi):
    if v is None:
      vals.append(None)
      continue
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
      raise TypeError(f"{fn}: `{name}` must be a pair of numbers (lo, hi), got {bounds!r}.")
    if np.isnan(v):
      raise ValueError(f"{fn}: `{name}` must not hold NaN, got {bounds!r}.")
    vals.append(float(v))
  if vals[0] is not None and vals[1] is not None and vals[0] > vals[1]:
    raise ValueError(f"{fn}: `{name}` must have lo <= hi, got {bounds!r}.")
  return tuple(vals)


def _clipped(f, x: Array, bounds) -> Array:
  """``clip(f(x), lo, hi)`` with zero derivative outside the bounds (as ``torch.clamp``),
  and finite even where ``f(x)`` overflows: ``f`` is evaluated at 0 wherever it is clipped
  (the "double where"), so an infinite ``f(x)`` there leaks no ``0 * inf``."""
  if bounds is None:
    return f(x)
  lo, hi = (-jnp.inf if b is None else b for b in bounds)
  v = lax.stop_gradient(f(x))
  inside = (v > lo) & (v < hi)
  safe = f(jnp.where(inside, x, jnp.zeros_like(x)))
  return jnp.where(inside, safe, jnp.clip(v, lo, hi))


@_api.public
@_checks.roles(
  log_p="log_density",
  log_q="log_density",
  estimator="unchecked",
  straight_through="unchecked",
  log_ratio_clip="unchecked",
  clip="unchecked",
  base="unchecked",
)
def kl_estimate(
  log_p: ArrayLike,
  log_q: ArrayLike,
  *,
  estimator: str = "k3",
  straight_through: bool = False,
  log_ratio_clip: tuple[float | None, float | None] | None = None,
  clip: tuple[float | None, float | None] | None = None,
  base: float | None = None,
) -> Array:
  r"""Per-sample Monte-Carlo estimates of :math:`\mathrm{KL}(q \| p)` from samples :math:`x \sim q`.

  With :math:`\log r = \log p(x) - \log q(x)` (Schulman, 2020):

  .. math::

    k_1 = -\log r, \qquad k_2 = \tfrac12 (\log r)^2, \qquad
    k_3 = (r - 1) - \log r = e^{\log r} - 1 - \log r.

  **The direction.** The samples come from the *second* argument ``q``, and the
  estimate is of :math:`\mathrm{KL}(q \| p)`: with ``log_q`` the policy's log-probability
  of its own sampled tokens and ``log_p`` the reference model's, this is the "reverse"
  KL penalty of PPO/GRPO, :math:`\mathrm{KL}(\pi_\theta \| \pi_{\mathrm{ref}})`. (The
  argument order follows Schulman's :math:`\mathrm{KL}[q, p]` and his ratio
  :math:`r = p/q`; it is the only function in jaxdiv whose expectation is
  :math:`D(\text{second} \| \text{first})`. Average the returned per-sample values
  yourself.)

  **Bias and variance** (for samples from ``q``): :math:`\mathbb{E}[k_1] =
  \mathbb{E}[k_3] = \mathrm{KL}(q \| p)`; :math:`\mathbb{E}[k_2]` is the f-divergence
  with :math:`f(u) = \frac12 (\log u)^2`, equal to KL to second order in
  :math:`\log r` and larger beyond it. ``k1`` is negative for about half the samples;
  ``k2`` and ``k3`` are non-negative (``k3`` is the Bregman gap of :math:`-\log` at
  :math:`r = 1`). For :math:`q = N(0, 1)`, :math:`p = N(\mu, 1)`: stdev/KL is
  :math:`2/\mu` for ``k1``, :math:`\sqrt{2 + \mu^2}` for ``k2`` (bias/KL
  :math:`\mu^2/4`) and :math:`\sqrt{e^{\mu^2} - 1 - \mu^2}/(\mu^2/2)` for ``k3``
  (1.42, 1.42 and 20 at :math:`\mu = 0.1`; 2, 1.73 and 1.70 at :math:`\mu = 1`; see
  ``experiments/kl_estimators.py``). ``k3``'s variance grows like :math:`e^{\mu^2}`: when
  :math:`p` puts much more mass than :math:`q` somewhere, rare samples with large
  :math:`r` dominate. An estimate's value is only one part of the story in RL; see
  ``straight_through`` for its gradient.

  **Numerics.** ``k3`` is computed as :math:`g(\log r)` with
  :math:`g(y) = e^y - 1 - y` evaluated without cancellation (a Taylor series for
  :math:`|y| < 1/2`, ``expm1`` beyond), so it keeps full relative precision for nearby
  ``p`` and ``q`` and is never negative from rounding; at :math:`\log r = -10^3` it is
  exactly :math:`999`, and it overflows to ``inf`` only where :math:`e^{\log r}` exceeds
  the largest float. ``k2`` is formed as :math:`(\frac12 \log r) \log r` so that it is
  finite whenever :math:`\frac12 (\log r)^2` is. ``log_p = -inf`` (a sample ``p`` rules
  out) gives ``+inf`` for every estimator, the value of the divergence.

  **Clamps, as the trainers apply them.** ``log_ratio_clip=(lo, hi)`` bounds
  :math:`\log r` before the estimator and ``clip=(lo, hi)`` bounds the estimate, each with
  zero derivative outside its bounds (as ``torch.clamp``) and finite even where the
  unclipped estimate overflows (``k3`` at :math:`\log r = 100` in float32 is ``inf``;
  clipped to 10 it is 10, with derivative 0). verl's ``low_var_kl``/``"k3"``
  (``kl_penalty_forward`` in ``verl/trainer/ppo/core_algos.py``) is
  ``kl_estimate(ref_log_prob, log_prob, estimator="k3", log_ratio_clip=(-20, 20),
  clip=(-10, 10))``, and its ``"k3+"`` adds ``straight_through=True`` (the clipped value,
  the unclipped ``k2`` gradient); OpenRLHF's ``compute_approx_kl`` clamps every estimator
  to ``clip=(-10, 10)``. A clamp biases the estimate once the policy drifts far from the
  reference (``experiments/kl_penalty/`` measures by how much).

  Args:
    log_p: log-density (or log-probability) of ``p`` at the samples.
    log_q: log-density of ``q`` at the same samples, which were drawn from ``q``.
      The two broadcast against each other.
    estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
    straight_through: keep the chosen estimator's *value* but give it the *gradient*
      of ``k2``: :math:`\partial/\partial \log q = \log q - \log p` (the value of
      ``k1``) and :math:`\partial/\partial \log p = \log p - \log q`. When ``log_q`` is
      :math:`\log q_\theta(x)` at samples held fixed (no reparameterisation), the
      gradient is :math:`(\log q_\theta - \log p)\,\nabla_\theta \log q_\theta`, whose
      expectation under :math:`q_\theta` is exactly
      :math:`\nabla_\theta \mathrm{KL}(q_\theta \| p)` (the score-function identity,
      since :math:`\mathbb{E}_{q_\theta}[\nabla_\theta \log q_\theta] = 0`). Plain ``k1``
      has expected gradient 0 (:math:`\mathbb{E}[\nabla_\theta \log q_\theta]`), and plain
      ``k3`` has expected gradient :math:`\nabla_\theta \mathrm{KL}(p \| q_\theta)`, the
      *other* direction. For per-token estimates of an autoregressive sequence this is the
      per-token (partial) gradient; the full sequence-level gradient also weights each
      token's score by the log-ratios of the tokens after it (Tang & Munos, 2025).
      This is verl's ``"k3+"`` (``kl_penalty`` in
      ``verl/trainer/ppo/core_algos.py``: ``k2 - stop_grad(k2) + stop_grad(k3)``); here a
      custom JVP returns the value bit-for-bit and works in forward mode too.
    log_ratio_clip: ``(lo, hi)`` bounds of :math:`\log r` (either ``None``: unbounded), or
      ``None``.
    clip: ``(lo, hi)`` bounds of the estimate, or ``None``.
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    Per-sample estimates with the broadcast shape of ``log_p`` and ``log_q`` (nothing is
    averaged); float32 for 16-bit inputs.

  Raises:
    ValueError: for an unknown ``estimator`` (the message lists the valid names) or
      shapes that do not broadcast.

  Example:
    >>> log_p, log_q = jnp.log(jnp.array([0.5, 0.2])), jnp.log(jnp.array([0.4, 0.4]))
    >>> [round(float(v), 6) for v in kl_estimate(log_p, log_q, estimator="k1")]
    [-0.223144, 0.693147]
    >>> [round(float(v), 6) for v in kl_estimate(log_p, log_q)]  # k3: r - 1 - log r
    [0.026856, 0.193147]

  References:
    J. Schulman, "Approximating KL Divergence" (2020), http://joschu.net/blog/kl-approx.html;
    on gradients: Y. Tang & R. Munos, "On a few pitfalls in KL divergence gradient
    estimation for RL" (2025, arXiv:2506.09477).

  See also:
    :func:`kl_divergence` (exact, categorical), :func:`normal_kl_divergence` and
    :func:`mvn_kl_divergence` (exact, Gaussian).
  """
  fn = "kl_estimate"
  if not isinstance(estimator, str) or estimator not in ESTIMATORS:
    raise ValueError(
      f"{fn}: unknown `estimator`={estimator!r}; valid names are "
      f"{', '.join(repr(e) for e in ESTIMATORS)}."
    )
  if not isinstance(straight_through, bool):
    raise TypeError(f"{fn}: `straight_through` must be True or False, got {straight_through!r}.")
  _inputs.check_base(fn, base)
  lp = _inputs.as_float(fn, "log_p", log_p)
  lq = _inputs.as_float(fn, "log_q", log_q)
  shape = _inputs.broadcast_shape(fn, {"log_p": lp.shape, "log_q": lq.shape})
  dtype = _numerics.compute_dtype(jnp.result_type(lp.dtype, lq.dtype))
  lp = jnp.broadcast_to(lp.astype(dtype), shape)
  lq = jnp.broadcast_to(lq.astype(dtype), shape)
  ratio_bounds = _bounds(fn, "log_ratio_clip", log_ratio_clip)
  value_bounds = _bounds(fn, "clip", clip)
  log_r = lp - lq

  def estimate(log_r):
    if ratio_bounds is not None:
      lo, hi = (-jnp.inf if b is None else b for b in ratio_bounds)
      log_r = jnp.clip(log_r, lo, hi)  # zero derivative outside, as torch.clamp
    if estimator == "k1":
      return -log_r
    if estimator == "k2":
      return (0.5 * log_r) * log_r
    return _numerics.expm1mx(log_r)

  k = _clipped(estimate, log_r, value_bounds)
  if straight_through:  # the (clipped) value, the unclipped k2 gradient
    k = _with_k2_gradient(lax.stop_gradient(k), log_r)
  return _inputs.apply_base(k, base)


@jax.custom_jvp
def _with_score(value: Array, weight: Array, log_prob: Array) -> Array:
  """``value``, differentiated with an extra score term ``weight * d log_prob`` (weight held)."""
  return value


@_with_score.defjvp
def _with_score_jvp(primals, tangents):
  value, weight, log_prob = primals
  d_value, _, d_log_prob = tangents
  return value, d_value + weight * d_log_prob


@_api.public
@_checks.roles(
  p_logits="logits",
  q_logits="logits",
  tokens="labels",
  mask="token_mask",
  where="where",
  base="unchecked",
)
def sequence_kl_penalty(
  p_logits: ArrayLike,
  q_logits: ArrayLike,
  tokens: ArrayLike,
  *,
  mask: ArrayLike | None = None,
  where: ArrayLike | None = None,
  base: float | None = None,
) -> Array:
  r"""Per-token KL(p_t ‖ q_t) at sampled prefixes, differentiated as the sequence-level KL.

  For a sequence :math:`x_1, \dots, x_T` drawn autoregressively from :math:`p` (a policy),
  ``p_logits[..., t, :]`` and ``q_logits[..., t, :]`` are the logits of
  :math:`p(\cdot \mid x_{<t})` and :math:`q(\cdot \mid x_{<t})` (a reference) at the sampled
  prefix. The value at position :math:`t` is the exact per-token divergence

  .. math:: v_t = \mathrm{KL}\big(p(\cdot \mid x_{<t}) \,\|\, q(\cdot \mid x_{<t})\big),

  whose sum is an unbiased estimate of the KL of the whole sequence distributions,
  :math:`\mathbb{E}_{x \sim p}[\sum_t v_t] = \mathrm{KL}(p(x_{1:T}) \| q(x_{1:T}))` (the chain
  rule). Its *gradient* is not that of :math:`v_t` alone: the prefixes at which
  :math:`v_t` is evaluated were themselves drawn from :math:`p`, so the sum is
  differentiated as

  .. math::

    \nabla \sum_t v_t \;:=\; \sum_t \Big(\nabla v_t
      + \big(\textstyle\sum_{t' > t} v_{t'}\big)\, \nabla \log p(x_t \mid x_{<t})\Big),

  whose expectation is exactly :math:`\nabla\, \mathrm{KL}(p(x_{1:T}) \| q(x_{1:T}))`, in the
  parameters of ``p`` and of ``q``. Summing ``kl_divergence(p_logits=..., q_logits=...)``
  over positions and differentiating it (the usual "exact KL in the loss") drops the
  second term and follows only the per-token part of the gradient (Tang & Munos, 2025);
  ``experiments/kl_penalty/`` shows that this part alone ends away from the regularised
  optimum, while this function's gradient reaches it. The score term uses no baseline, and
  its weights (the later sums) are held constant: a second derivative (``jax.hessian``, or
  ``jax.jacfwd`` of the gradient) differentiates this surrogate, not the expected gradient.

  Edge conventions: as :func:`kl_divergence` per position (:math:`0 \log 0 = 0`; a
  category ``p`` allows and ``q`` rules out gives ``+inf`` there). The score term changes
  only the gradient: the value is the per-token KL bit-for-bit, also where a later
  :math:`v_{t'}` is infinite. Positions where ``mask`` is false (padding, prompt tokens)
  give 0, add nothing to the later sums and contribute no score; their ``tokens`` are not
  read. Sum (or average) the returned values yourself.

  Args:
    p_logits: policy logits at the sampled prefixes, shape ``[..., T, K]``.
    q_logits: reference logits at the same prefixes; broadcasts against ``p_logits``.
    tokens: the sampled tokens, integers of shape ``[..., T]`` (the leading shape of the
      logits); they must have been drawn from ``p`` for the gradient to be unbiased.
    mask: optional bool ``[..., T]`` (broadcasts against ``tokens``): the positions that
      were sampled from ``p``.
    where: optional bool broadcastable against the logits ``[..., T, K]``, as in the other
      functions: a ``[..., T, 1]`` token mask (the same as ``mask``), a ``[K]`` category mask
      (the per-token KL and the policy's log-probabilities over the included categories),
      or both; with ``mask`` too, a position counts where both keep it.
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    Per-position values of shape ``[..., T]``; float32 for 16-bit inputs.

  Raises:
    TypeError: ``tokens`` not integers, or ``mask`` not bool.
    ValueError: logits with fewer than two axes, or shapes that do not line up (the
      message names them).

  Example:
    >>> p = jnp.array([[0.0, 1.0], [2.0, 0.0]])  # two positions, two tokens
    >>> q = jnp.zeros((2, 2))
    >>> v = sequence_kl_penalty(p, q, jnp.array([1, 0]))
    >>> [round(float(x), 6) for x in v]  # the per-token KL values
    [0.110944, 0.327813]
    >>> g = jax.grad(lambda z: sequence_kl_penalty(z, q, jnp.array([1, 0])).sum())(p)
    >>> g0 = jax.grad(lambda z: jaxdiv.kl_divergence(p_logits=z, q_logits=q).sum())(p)
    >>> [round(float(x), 6) for x in (g - g0)[0]]  # 0.327813 * d log p(x_1) at t = 1
    [-0.088163, 0.088163]

  References:
    Y. Tang & R. Munos, "On a few pitfalls in KL divergence gradient estimation for RL"
    (2025, arXiv:2506.09477).

  See also:
    :func:`kl_divergence` (the per-token value), :func:`kl_estimate` (sample estimates
    from log-probabilities of the sampled tokens only).
  """
  from jaxdiv._kl import kl_divergence

  fn = "sequence_kl_penalty"
  _inputs.check_base(fn, base)
  pl = _inputs.as_float(fn, "p_logits", p_logits)
  ql = _inputs.as_float(fn, "q_logits", q_logits)
  tok = jnp.asarray(tokens)
  if not jnp.issubdtype(tok.dtype, jnp.integer):
    raise TypeError(f"{fn}: `tokens` must be integers, got dtype {tok.dtype}.")
  shape = _inputs.broadcast_shape(fn, {"p_logits": pl.shape, "q_logits": ql.shape})
  if len(shape) < 2:
    raise ValueError(
      f"{fn}: logits need a position and a category axis ([..., T, K]), got `p_logits` with "
      f"shape {tuple(pl.shape)} and `q_logits` with shape {tuple(ql.shape)}."
    )
  lead = shape[:-1]
  if tuple(tok.shape) != lead:
    raise ValueError(
      f"{fn}: `tokens` with shape {tuple(tok.shape)} must match the logits' leading shape "
      f"{shape[:-1]} (logits of shape {shape})."
    )
  if mask is None:
    m = jnp.ones(lead, bool)
  else:
    m = jnp.asarray(mask)
    if m.dtype != jnp.bool_:
      raise TypeError(f"{fn}: `mask` must be bool, got dtype {m.dtype}.")
    if _inputs.broadcast_shape(fn, {"tokens": lead, "mask": m.shape}) != lead:
      raise ValueError(
        f"{fn}: `mask` with shape {tuple(m.shape)} must broadcast to the tokens' shape {lead}."
      )
    m = jnp.broadcast_to(m, lead)
  cats = None
  if where is not None:
    w = jnp.asarray(where)
    if w.dtype != jnp.bool_:
      raise TypeError(f"{fn}: `where` must be a boolean mask, got dtype {w.dtype}.")
    if _inputs.broadcast_shape(fn, {"logits": shape, "where": w.shape}) != shape:
      raise ValueError(
        f"{fn}: `where` with shape {tuple(w.shape)} must broadcast against the logits' shape "
        f"{shape} (a token mask [..., T, 1], a category mask [K], or both)."
      )
    cats = jnp.broadcast_to(w, shape)
    m = m & jnp.any(cats, axis=-1)  # a position with no included category counts for nothing
  dtype = _numerics.compute_dtype(jnp.result_type(pl.dtype, ql.dtype))
  pl = jnp.broadcast_to(pl.astype(dtype), shape)
  ql = jnp.broadcast_to(ql.astype(dtype), shape)
  tok = jnp.broadcast_to(jnp.where(m, tok, 0), lead)
  kl = jnp.where(m, kl_divergence(p_logits=pl, q_logits=ql, where=cats), 0.0)
  # Exclusive reverse cumulative sum (no subtraction, so an infinite later term stays inf).
  rev = jnp.flip(jnp.cumsum(jnp.flip(kl, -1), axis=-1), -1)
  later = jnp.where(m, jnp.concatenate([rev[..., 1:], jnp.zeros_like(rev[..., :1])], -1), 0.0)
  log_p = jnp.take_along_axis(_numerics.log_softmax(pl, cats), tok[..., None], axis=-1)[..., 0]
  log_p = jnp.where(m, log_p, jnp.zeros_like(log_p))  # an excluded token is not read
  out = _with_score(kl, lax.stop_gradient(later), log_p)
  return _inputs.apply_base(out, base)


AGGREGATIONS = (
  "token-mean",
  "token-sum",
  "seq-mean-token-sum",
  "seq-mean-token-mean",
  "seq-mean-token-sum-norm",
)


@_api.public
@_checks.roles(values="finite", mask="token_mask", mode="unchecked", normalizer="unchecked")
def aggregate_tokens(
  values: ArrayLike,
  mask: ArrayLike,
  mode: str = "token-mean",
  *,
  normalizer: float | None = None,
) -> Array:
  r"""Reduce per-token losses ``[..., T]`` (sequences of ``T`` tokens) to a scalar, as in RL.

  With :math:`m_{it}` the mask (the tokens that count) and :math:`v_{it}` the values, the
  modes are named as verl's ``loss_agg_mode`` names them:

  =============================== =================================================================
  mode                            value
  =============================== =================================================================
  ``"token-mean"``                :math:`\sum_{it} m v / \sum_{it} m` (every token weighs the same)
  ``"token-sum"``                 :math:`\sum_{it} m v`
  ``"seq-mean-token-sum"``        the mean over sequences of :math:`\sum_t m v`
  ``"seq-mean-token-mean"``       the mean over sequences of :math:`\sum_t m v / \sum_t m`
  ``"seq-mean-token-sum-norm"``   the mean over sequences of :math:`\sum_t m v`, divided by
                                  ``normalizer`` (Dr. GRPO's fixed divisor; default ``T``)
  =============================== =================================================================

  How strongly a long answer is penalised depends on the mode: ``"seq-mean-token-mean"``
  (GRPO's, TRL's ``loss_type="grpo"``) gives every sequence the same total weight, so each
  token of a long sequence counts less; ``"token-mean"`` (DAPO's and TRL's ``"bnpo"``/
  ``"dapo"``) and the sum modes weigh tokens alike (Liu et al., 2025, "Understanding R1-Zero-
  like training"). The KL guide shows which mode gives the sequence-level KL gradient of a
  regularised objective.

  A sequence with no token that counts is left out of the sequence count (verl's
  ``exclude_fully_masked_seq``, OpenRLHF's aggregation): never NaN, and a batch with no
  token at all gives 0 (with zero gradient). Masked positions are not read (NaN there is
  harmless). verl's ``"seq-mean-token-sum-norm"`` divides the batch's *sum* of sequence
  totals by the constant, so it equals this mode times the number of sequences with at
  least one token; TRL's ``"dr_grpo"`` divides by the batch size (every sequence) times
  ``max_completion_length``, and its ``"grpo"`` averages over every sequence too: these
  modes where no sequence is empty.

  Args:
    values: ``[..., T]`` per-token values (a policy loss, a KL penalty).
    mask: bool, broadcastable to ``values``: the tokens that count.
    mode: one of the modes above.
    normalizer: the divisor of ``"seq-mean-token-sum-norm"`` (default ``T``); only that
      mode takes it.

  Returns:
    A scalar.

  Example:
    >>> v = jnp.array([[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0]])
    >>> m = jnp.array([[True, True, True, True], [True, False, False, False]])
    >>> [round(float(aggregate_tokens(v, m, mode)), 6) for mode in
    ...  ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean")]
    [1.2, 6.0, 3.0, 1.5]
    >>> float(aggregate_tokens(v, m, "seq-mean-token-sum-norm"))  # 3.0 / 4
    0.75

  References:
    Z. Liu et al., "Understanding R1-Zero-like training: a critical perspective" (Dr. GRPO,
    2025); Q. Yu et al., "DAPO" (2025); verl's ``agg_loss`` (``verl/trainer/ppo/core_algos.py``).

  See also:
    :func:`kl_estimate`, :func:`sequence_kl_penalty`.
  """
  fn = "aggregate_tokens"
  if not isinstance(mode, str) or mode not in AGGREGATIONS:
    raise ValueError(
      f"{fn}: unknown `mode`={mode!r}; valid modes are {', '.join(map(repr, AGGREGATIONS))}."
    )
  v = _inputs.as_float(fn, "values", values)
  if v.ndim < 1:
    raise ValueError(f"{fn}: `values` needs a token axis ([..., T]), got a scalar.")
  m = jnp.asarray(mask)
  if m.dtype != jnp.bool_:
    raise TypeError(f"{fn}: `mask` must be bool, got dtype {m.dtype}.")
  if _inputs.broadcast_shape(fn, {"values": v.shape, "mask": m.shape}) != v.shape:
    raise ValueError(
      f"{fn}: `mask` with shape {tuple(m.shape)} must broadcast to the values' shape {v.shape}."
    )
  if normalizer is not None and mode != "seq-mean-token-sum-norm":
    raise ValueError(f"{fn}: `normalizer` applies to mode 'seq-mean-token-sum-norm' only.")
  norm, normv = _inputs.scalar_option(
    fn, "normalizer", v.shape[-1] if normalizer is None else normalizer, positive=True
  )
  dtype = _numerics.compute_dtype(v.dtype)
  m = jnp.broadcast_to(m, v.shape)
  masked = jnp.where(m, v.astype(dtype), jnp.zeros(v.shape, dtype))
  counts = jnp.sum(m, axis=-1).astype(dtype)  # tokens per sequence
  sums = jnp.sum(masked, axis=-1)
  if mode == "token-sum":
    return jnp.sum(sums)
  if mode == "token-mean":
    return jnp.sum(sums) / jnp.maximum(jnp.sum(counts), 1)
  seqs = jnp.maximum(jnp.sum(counts > 0).astype(dtype), 1)
  if mode == "seq-mean-token-mean":
    return jnp.sum(sums / jnp.maximum(counts, 1)) / seqs
  total = jnp.sum(sums) / seqs
  if mode == "seq-mean-token-sum-norm":
    return total / jnp.asarray(norm, dtype)
  return total
