r"""Large-vocabulary fused losses: divergences of ``softmax(hidden @ weight)`` without the logits.

A language-model head turns ``N`` hidden states of width ``D`` into ``N x V`` logits; at
``V = 65536`` and ``N = 8192`` those are 2 GiB in float32, and differentiating a loss on
them keeps several such arrays alive. The functions here never form them: they walk the
vocabulary (and optionally the tokens) in blocks, computing ``hidden @ weight[:, block]``
on the fly with an online (running-max) log-sum-exp, and a :func:`jax.custom_vjp` keeps
only per-row statistics (log-normalisers, the divergence itself) for the backward pass,
which recomputes each block and turns it straight into the two weight-gradient
products. Compiled temporaries are ``O(rows x chunk_size)`` instead of ``O(N x V)``.

This is the idea of Cut Cross-Entropy (Wijmans et al., 2025), Liger-Kernel's fused
linear cross-entropy (Hsu et al., 2024) and levanter's blockwise cross-entropy, written
in plain JAX (``lax.fori_loop`` over blocks), so it runs on every backend.

The custom VJP has no forward mode: ``jax.jvp``, ``jax.jacfwd`` and ``jax.hessian`` of these
functions raise. Use the core functions (:func:`jaxdiv.cross_entropy`,
:func:`jaxdiv.kl_divergence`) on materialised logits for forward-mode derivatives.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxdiv import _checks, _inputs, _numerics
from jaxdiv import _fused_losses as L

Array = jax.Array

_DEFAULT_CHUNK = 4096
_DEFAULT_TOKEN_CHUNK = 1024

# ---------------------------------------------------------------------------
# Public API: argument checks, flattening of batch dimensions, base conversion
# ---------------------------------------------------------------------------


def _float_array(fn: str, name: str, x) -> Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{fn}: `{name}` must be a floating-point array, got dtype {x.dtype}.")
  return x


def _chunk(fn: str, name: str, size, default: int) -> int:
  if size is None:
    return default
  try:
    size = operator.index(size)
  except TypeError:
    raise TypeError(f"{fn}: `{name}` must be a positive integer, got {size!r}.") from None
  if size <= 0:
    raise ValueError(f"{fn}: `{name}` must be a positive integer, got {size}.")
  return size


def _side_arrays(fn: str, role: str, hidden, weight, logits):
  """``(hidden [..., D], weight [D, V], None)`` or ``(None, None, logits [..., V])``."""
  linear = hidden is not None or weight is not None
  if linear and logits is not None:
    raise ValueError(
      f"{fn}: the distribution {role} is given twice; give either `{role}_hidden` and "
      f"`{role}_weight` or `{role}_logits`."
    )
  if not linear and logits is None:
    raise ValueError(
      f"{fn}: the distribution {role} is missing; give `{role}_hidden` and `{role}_weight` "
      f"or `{role}_logits`."
    )
  if logits is not None:
    z = _float_array(fn, f"{role}_logits", logits)
    if z.ndim < 1:
      raise ValueError(f"{fn}: `{role}_logits` needs a category axis, got a scalar.")
    return None, None, z
  if hidden is None or weight is None:
    missing = f"{role}_hidden" if hidden is None else f"{role}_weight"
    raise ValueError(f"{fn}: `{missing}` is missing (the logits of {role} are hidden @ weight).")
  h = _float_array(fn, f"{role}_hidden", hidden)
  w = _float_array(fn, f"{role}_weight", weight)
  if h.ndim < 1 or w.ndim != 2 or h.shape[-1] != w.shape[0]:
    raise ValueError(
      f"{fn}: `{role}_hidden` must have shape [..., D] and `{role}_weight` shape [D, V]; got "
      f"{h.shape} and {w.shape}."
    )
  return h, w, None


def _batch_vocab(h, w, z):
  return (z.shape[:-1], z.shape[-1]) if z is not None else (h.shape[:-1], w.shape[1])


def _flat(h, w, z):
  return (
    None if h is None else h.reshape(-1, h.shape[-1]),
    w,
    None if z is None else z.reshape(-1, z.shape[-1]),
  )


def _where(fn: str, where, num_v: int):
  if where is None:
    return None
  where = jnp.asarray(where)
  if where.dtype != jnp.bool_:
    raise TypeError(f"{fn}: `where` must be a boolean mask, got dtype {where.dtype}.")
  if where.shape != (num_v,):
    raise ValueError(
      f"{fn}: `where` must be a mask over the vocabulary, shape ({num_v},); got {where.shape}."
    )
  return where


def _static(fn, loss, num_rows, num_v, chunk_size, token_chunk_size, **flags) -> L.Static:
  vc = min(_chunk(fn, "chunk_size", chunk_size, _DEFAULT_CHUNK), max(num_v, 1))
  tc = _chunk(fn, "token_chunk_size", token_chunk_size, _DEFAULT_TOKEN_CHUNK)
  tc = min(tc, max(num_rows, 1))
  flags = {k: flags.get(k, False) for k in ("soft_cap", "temperature", "z_loss", "smoothing")}
  return L.Static(loss, vc, max(tc, 1), **flags)


def _pair(fn, p_hidden, p_weight, p_logits, q_hidden, q_weight, q_logits, where):
  p = _side_arrays(fn, "p", p_hidden, p_weight, p_logits)
  q = _side_arrays(fn, "q", q_hidden, q_weight, q_logits)
  if p[2] is not None and q[2] is not None:
    raise ValueError(
      f"{fn}: both distributions are given as logits; use the core functions "
      f"(jaxdiv.kl_divergence etc.) on logits, the fused form needs a (hidden, weight) side."
    )
  (bp, vp), (bq, vq) = _batch_vocab(*p), _batch_vocab(*q)
  if bp != bq or vp != vq:
    raise ValueError(
      f"{fn}: p and q must have the same batch shape and vocabulary size; got batch {bp}, "
      f"V={vp} for p and batch {bq}, V={vq} for q."
    )
  return _flat(*p), _flat(*q), bp, vp, _where(fn, where, vp)


@_checks.roles(
  hidden="finite",
  weight="classifier",
  labels="labels",
  where="where",
  chunk_size="unchecked",
  token_chunk_size="unchecked",
  base="unchecked",
)
def linear_cross_entropy(
  hidden: ArrayLike,
  weight: ArrayLike,
  labels: ArrayLike,
  *,
  where: ArrayLike | None = None,
  chunk_size: int | None = None,
  token_chunk_size: int | None = None,
  base: float | None = None,
) -> Array:
  r"""Cross-entropy of ``softmax(hidden @ weight)`` against integer ``labels``, per token.

  .. math:: H(\mathbb{1}_y, q) = -\log q_y = \log\sum_v e^{z_v} - z_y, \qquad z = h W

  The same value as ``jaxdiv.cross_entropy(labels=labels, q_logits=hidden @ weight)``,
  without ever forming the ``[..., V]`` logits: the vocabulary is processed in blocks of
  ``chunk_size`` columns of ``weight`` (and, with ``token_chunk_size``, blocks of rows),
  and a custom VJP keeps only the per-token log-normaliser, recomputing each block of
  logits in the backward pass. Compiled temporaries are about a few
  ``token_chunk_size x chunk_size`` blocks plus the gradients themselves.

  Argument order follows Cut Cross-Entropy and Liger (model first: ``hidden``,
  ``weight``, then the target ``labels``); the value is :math:`H(p, q)` with the one-hot
  target :math:`p` and the model :math:`q`, as in :func:`jaxdiv.cross_entropy`.

  Edge conventions as in the core: a negative label is ignored (result exactly 0, zero
  gradient); a label :math:`\ge V` gives NaN (and no gradient contribution); ``where``
  (a ``[V]`` mask, e.g. for a padded vocabulary) excludes categories from the
  normaliser, and a label at an excluded category is ignored. Reductions over tokens
  belong to the caller (a mean over non-ignored tokens is ``sum / count``).

  Derivatives: reverse mode only (``jax.grad``, ``jax.vjp``); the custom VJP has no
  forward mode, so ``jax.jvp``/``jacfwd``/``hessian`` raise -- use
  :func:`jaxdiv.cross_entropy` on materialised logits for those. Gradients are computed
  only for the arguments being differentiated.

  Args:
    hidden: ``[..., D]`` hidden states (the last layer's input).
    weight: ``[D, V]`` output projection (for tied embeddings ``E`` of shape ``[V, D]``,
      pass ``E.T``).
    labels: ``[...]`` integer class indices.
    where: optional boolean ``[V]`` mask of the categories to include.
    chunk_size: vocabulary block size (default 4096); need not divide ``V``.
    token_chunk_size: token block size (default 1024); need not divide the number of
      tokens. With ``chunk_size`` it bounds the temporaries independently of ``N``.
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-token cross-entropy (float32 for 16-bit inputs).

  Example:
    >>> h = jnp.array([[1.0, 0.0], [0.0, 1.0]]); w = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> loss = linear_cross_entropy(h, w, jnp.array([0, -1]), chunk_size=2)
    >>> [round(float(x), 6) for x in loss]  # ln(e^2 + 2) - 2, ignored
    [0.239545, 0.0]

  References:
    Wijmans et al., "Cut your losses in large-vocabulary language models", ICLR (2025);
    Hsu et al., "Liger Kernel: efficient Triton kernels for LLM training" (2024).

  See also:
    :func:`jaxdiv.cross_entropy`, :func:`linear_kl_divergence`,
    :func:`jaxdiv.sharded_cross_entropy` (vocabulary sharded over devices).
  """
  fn = "linear_cross_entropy"
  _inputs.check_base(fn, base)
  h, w, _ = _side_arrays(fn, "q", hidden, weight, None)
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_:
    raise TypeError(f"{fn}: `labels` must be an integer array, got dtype {labels.dtype}.")
  if labels.shape != h.shape[:-1]:
    raise ValueError(
      f"{fn}: `labels` must have the batch shape of `hidden` {h.shape[:-1]} "
      f"(hidden {h.shape} without its last axis); got {labels.shape}."
    )
  batch, num_v = h.shape[:-1], w.shape[1]
  where = _where(fn, where, num_v)
  num_rows = int(np.prod(batch, dtype=np.int64))
  st = _static(fn, L.CrossEntropy, num_rows, num_v, chunk_size, token_chunk_size)
  hf, _, _ = _flat(h, w, None)
  loss = L.fused(st, (None, None, None, hf, w, None), labels.reshape(-1), where, {})
  return _inputs.apply_base(loss.reshape(batch), base)


@_checks.roles(**_checks.LINEAR_PAIR)
def linear_kl_divergence(
  p_hidden: ArrayLike | None = None,
  p_weight: ArrayLike | None = None,
  q_hidden: ArrayLike | None = None,
  q_weight: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  where: ArrayLike | None = None,
  chunk_size: int | None = None,
  token_chunk_size: int | None = None,
  base: float | None = None,
) -> Array:
  r""":math:`\mathrm{KL}(p \| q)` per token, with ``p`` and/or ``q`` given as ``hidden @ weight``.

  .. math:: \mathrm{KL}(p\|q) = \sum_v p_v (\log p_v - \log q_v),
     \quad p = \mathrm{softmax}(h^p W^p),\ q = \mathrm{softmax}(h^q W^q)

  Mathematical order: ``p`` is the reference. For distillation with forward KL,
  KL(teacher‖student), pass the teacher as ``p`` (``p_hidden``/``p_weight``, or its
  logits as ``p_logits``) and the student as ``q`` (``q_hidden``/``q_weight``); for
  reverse KL (KL(student‖teacher), as in on-policy distillation) swap them. Each side is
  either a ``(hidden [..., D], weight [D, V])`` pair or ``[..., V]`` logits; at least one
  must be a pair (for two logit arrays use :func:`jaxdiv.kl_divergence`). The two sides
  may have different hidden widths.

  Computed in one pass over blocks of the vocabulary with running maxima and the running
  sum :math:`\sum_v e^{z^p_v - m}(z^p_v - z^q_v)`, so no ``[..., V]`` array of either side
  is formed (beyond ``p_logits``/``q_logits`` if given). The custom VJP keeps both
  log-normalisers and the KL per token and recomputes each block for the gradients
  :math:`\partial/\partial z^q = q - p` and
  :math:`\partial/\partial z^p = p(\log p - \log q - \mathrm{KL})`. Gradients are only
  computed for arguments being differentiated (a frozen teacher costs nothing extra).

  Edge conventions as in :func:`jaxdiv.kl_divergence`: ``-inf`` logits are impossible
  categories (:math:`0 \log 0 = 0`; :math:`p_v > 0 = q_v` gives ``+inf``); ``where`` (a
  ``[V]`` mask) excludes categories from both, and an all-``False`` mask gives 0.
  Reverse mode only: ``jax.jvp``/``jacfwd``/``hessian`` raise (no forward mode for a
  custom VJP); use :func:`jaxdiv.kl_divergence` on materialised logits for those.

  Args:
    p_hidden: ``[..., D_p]`` hidden states of the reference ``p``.
    p_weight: ``[D_p, V]`` output projection of ``p``.
    q_hidden: ``[..., D_q]`` hidden states of ``q``.
    q_weight: ``[D_q, V]`` output projection of ``q``.
    p_logits: ``p`` as ``[..., V]`` logits instead of ``p_hidden``/``p_weight``.
    q_logits: ``q`` as ``[..., V]`` logits instead of ``q_hidden``/``q_weight``.
    where: optional boolean ``[V]`` mask of the categories to include.
    chunk_size: vocabulary block size (default 4096).
    token_chunk_size: token block size (default 1024).
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-token :math:`\mathrm{KL}(p\|q) \ge 0`.

  Example:
    >>> h = jnp.ones((1, 2)); w = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> round(float(linear_kl_divergence(h, w, p_logits=None, q_hidden=h, q_weight=w)[0]), 6)
    0.0

  References:
    Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network" (2015);
    Wijmans et al., "Cut your losses in large-vocabulary language models", ICLR (2025).

  See also:
    :func:`jaxdiv.kl_divergence`, :func:`linear_cross_entropy`,
    :func:`linear_jensen_shannon_divergence`.
  """
  fn = "linear_kl_divergence"
  _inputs.check_base(fn, base)
  p, q, batch, num_v, where = _pair(
    fn, p_hidden, p_weight, p_logits, q_hidden, q_weight, q_logits, where
  )
  num_rows = int(np.prod(batch, dtype=np.int64))
  st = _static(fn, L.KL, num_rows, num_v, chunk_size, token_chunk_size)
  loss = L.fused(st, (*p, *q), None, where, {})
  return _inputs.apply_base(loss.reshape(batch), base)


@_checks.roles(**_checks.LINEAR_PAIR, weight="unchecked")
def linear_jensen_shannon_divergence(
  p_hidden: ArrayLike | None = None,
  p_weight: ArrayLike | None = None,
  q_hidden: ArrayLike | None = None,
  q_weight: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  weight: ArrayLike = 0.5,
  where: ArrayLike | None = None,
  chunk_size: int | None = None,
  token_chunk_size: int | None = None,
  base: float | None = None,
) -> Array:
  r"""Weighted Jensen--Shannon divergence per token, ``p``/``q`` given as ``hidden @ weight``.

  .. math:: \mathrm{JS}_w(p\|q) = w\,\mathrm{KL}(p\|m) + (1 - w)\,\mathrm{KL}(q\|m),
     \qquad m = w p + (1 - w) q

  The generalised JSD of GKD (Agarwal et al., 2024); ``weight`` (the mixture weight
  :math:`w \in [0, 1]`, default ½) is named as in :func:`jaxdiv.jensen_shannon_divergence`
  -- the projection matrices are ``p_weight`` and ``q_weight``. At :math:`w = ½` the value
  is at most :math:`\ln 2` (TFP's Jensen--Shannon is twice this; scipy's
  ``jensenshannon`` is the square root). The mixture is formed in log space,
  :math:`\log m = \mathrm{logaddexp}(\log w + \log p, \log(1-w) + \log q)`; a term with
  zero weight counts as 0. Sides, masks, blocking and the reverse-mode-only restriction
  as in :func:`linear_kl_divergence`. Two passes over the vocabulary (log-normalisers,
  then the mixture terms); the custom VJP keeps both log-normalisers and
  :math:`\mathrm{KL}(p\|m)`, :math:`\mathrm{KL}(q\|m)` per token, and also gives the
  derivative in ``weight``, :math:`\mathrm{KL}(p\|m) - \mathrm{KL}(q\|m)`.

  Args:
    p_hidden, p_weight, q_hidden, q_weight, p_logits, q_logits: the two distributions,
      as in :func:`linear_kl_divergence`.
    weight: the mixture weight :math:`w` of ``p`` (a scalar in :math:`[0, 1]`).
    where: optional boolean ``[V]`` mask of the categories to include.
    chunk_size: vocabulary block size (default 4096).
    token_chunk_size: token block size (default 1024).
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-token :math:`\mathrm{JS}_w(p\|q)`.

  Example:
    >>> h = jnp.ones((1, 1)); w1 = jnp.array([[50.0, 0.0]]); w2 = jnp.array([[0.0, 50.0]])
    >>> round(float(linear_jensen_shannon_divergence(h, w1, h, w2)[0]), 6)  # ln 2
    0.693147

  References:
    Lin, "Divergence measures based on the Shannon entropy", IEEE Trans. Inf. Theory
    (1991); Agarwal et al., "On-policy distillation of language models", ICLR (2024).

  See also:
    :func:`linear_kl_divergence`, :func:`jaxdiv.jensen_shannon_divergence`.
  """
  fn = "linear_jensen_shannon_divergence"
  _inputs.check_base(fn, base)
  p, q, batch, num_v, where = _pair(
    fn, p_hidden, p_weight, p_logits, q_hidden, q_weight, q_logits, where
  )
  if not isinstance(weight, jax.core.Tracer):
    wv = np.asarray(weight)
    if wv.dtype.kind not in "iuf":
      raise TypeError(f"{fn}: `weight` must be a real number, got {weight!r}.")
    if wv.ndim != 0:
      raise ValueError(
        f"{fn}: `weight` is the scalar mixture weight w (the projection matrices are "
        f"`p_weight`/`q_weight`); got an array of shape {wv.shape}."
      )
    if not 0 <= wv <= 1:
      raise ValueError(f"{fn}: `weight` must lie in [0, 1], got {weight!r}.")
  arrays = [x for x in (*p, *q) if x is not None]
  dtype = _numerics.compute_dtype(jnp.result_type(*arrays))
  w = jnp.asarray(weight).astype(dtype)
  if jnp.ndim(w) != 0:
    raise ValueError(f"{fn}: `weight` must be a scalar, got shape {jnp.shape(w)}.")
  num_rows = int(np.prod(batch, dtype=np.int64))
  st = _static(fn, L.JensenShannon, num_rows, num_v, chunk_size, token_chunk_size)
  loss = L.fused(st, (*p, *q), None, where, {"mix": w})
  return _inputs.apply_base(loss.reshape(batch), base)
