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
in plain JAX (``lax.fori_loop`` over blocks), so it runs on every backend. The block
helpers and mergeable per-row statistics live in :mod:`jaxdiv._blocks`, one class per
loss in :mod:`jaxdiv._fused_losses`; this module checks arguments and documents.

Every loss is formed from shifted quantities (``z - max``) and its derivative from
``exp((z - max) - log1p(excess))``, so adding a constant to the logits changes neither the
value nor the gradient, and 16-bit inputs are accumulated in float32.

Derivatives: reverse mode (``jax.grad``, ``jax.vjp``) and forward-over-reverse
(``jax.hessian``, ``jax.jacfwd(jax.grad(f))``). Pure forward mode (``jax.jvp``,
``jax.jacfwd``, ``jax.linearize``) raises a ``TypeError`` naming the core function to use
on materialised logits instead.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad
from jax.typing import ArrayLike

from jaxdiv import _checks, _inputs
from jaxdiv import _fused_losses as L

Array = jax.Array

_DEFAULT_CHUNK = 4096
_DEFAULT_TOKEN_CHUNK = 1024

# ---------------------------------------------------------------------------
# Argument checks, flattening of batch dimensions, base conversion
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


def _side_arrays(fn: str, role: str, hidden, weight, logits, names=None):
  """``(hidden [..., D], weight [D, V], None)`` or ``(None, None, logits [..., V])``.

  ``names`` are the caller's argument names for hidden, weight and logits (default
  ``{role}_hidden`` etc.), so that messages name what the user passed.
  """
  h_name, w_name, z_name = names or (f"{role}_hidden", f"{role}_weight", f"{role}_logits")
  linear = hidden is not None or weight is not None
  if linear and logits is not None:
    raise ValueError(
      f"{fn}: the distribution {role} is given twice; give either `{h_name}` and "
      f"`{w_name}` or `{z_name}`."
    )
  if not linear and logits is None:
    raise ValueError(
      f"{fn}: the distribution {role} is missing; give `{h_name}` and `{w_name}` or `{z_name}`."
    )
  if logits is not None:
    z = _float_array(fn, z_name, logits)
    if z.ndim < 1:
      raise ValueError(f"{fn}: `{z_name}` needs a category axis, got a scalar.")
    return None, None, z
  if hidden is None or weight is None:
    missing = h_name if hidden is None else w_name
    raise ValueError(f"{fn}: `{missing}` is missing (the logits are `{h_name} @ {w_name}`).")
  h = _float_array(fn, h_name, hidden)
  w = _float_array(fn, w_name, weight)
  if h.ndim < 1 or w.ndim != 2 or h.shape[-1] != w.shape[0]:
    raise ValueError(
      f"{fn}: `{h_name}` must have shape [..., D] and `{w_name}` shape [D, V]; got "
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
      f"{fn}: `where` must be a mask over the vocabulary, shape ({num_v},); got {where.shape} "
      f"(mask padded tokens by weighting the per-token result instead)."
    )
  return where


def _scalar(fn: str, name: str, value, *, low=None, high=None, positive=False, what=""):
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


def _head_options(fn, temperature, soft_cap):
  """The ``opts`` entries and static flags for ``temperature`` and ``soft_cap``."""
  opts, flags = {}, {}
  t, tv = _scalar(fn, "temperature", temperature, positive=True)
  if tv != 1.0:  # a concrete T = 1 divides nothing
    opts["temperature"], flags["temperature"] = t, True
  if soft_cap is not None:
    c, _ = _scalar(fn, "soft_cap", soft_cap, positive=True)
    opts["soft_cap"], flags["soft_cap"] = c, True
  return opts, flags


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


def _forward_mode_error(fn: str, instead: str) -> TypeError:
  return TypeError(
    f"{fn} has no forward-mode derivative (jax.jvp, jax.jacfwd, jax.linearize): its custom "
    f"VJP gives reverse mode only (jax.grad, jax.vjp; jax.hessian works, as forward-over-"
    f"reverse). For forward mode use {instead} on materialised logits (hidden @ weight)."
  )


def _call(fn: str, instead: str, st: L.Static, arrays, labels, where, opts) -> Array:
  """The fused kernel, with JAX's bare forward-mode error replaced by one that says what to do."""
  if any(isinstance(x, ad.JVPTracer) for x in (*arrays, *opts.values())):
    raise _forward_mode_error(fn, instead)
  try:
    return L.fused(st, arrays, labels, where, opts)
  except TypeError as e:
    if "forward-mode autodiff" in str(e):
      raise _forward_mode_error(fn, instead) from None
    raise


def _run_pair(fn, instead, loss, sides, where, chunk_size, token_chunk_size, opts, flags, base):
  p, q, batch, num_v, where = _pair(fn, *sides, where)
  num_rows = int(np.prod(batch, dtype=np.int64))
  st = _static(fn, loss, num_rows, num_v, chunk_size, token_chunk_size, **flags)
  out = _call(fn, instead, st, (*p, *q), None, where, opts).reshape(batch)
  return out if base is False else _inputs.apply_base(out, base)


_HEAD_ROLES = dict(temperature="unchecked", soft_cap="unchecked")

# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


@_checks.roles(
  hidden="finite",
  weight="classifier",
  labels="labels",
  where="where",
  chunk_size="unchecked",
  token_chunk_size="unchecked",
  base="unchecked",
  z_loss="unchecked",
  label_smoothing="unchecked",
  **_HEAD_ROLES,
)
def linear_cross_entropy(
  hidden: ArrayLike,
  weight: ArrayLike,
  labels: ArrayLike,
  *,
  temperature: ArrayLike = 1.0,
  soft_cap: ArrayLike | None = None,
  z_loss: ArrayLike = 0.0,
  label_smoothing: ArrayLike = 0.0,
  where: ArrayLike | None = None,
  chunk_size: int | None = None,
  token_chunk_size: int | None = None,
  base: float | None = None,
) -> Array:
  r"""Per-token cross-entropy of ``softmax(hidden @ weight)``, model first as in the product.

  .. math::
    \ell = (1 - \varepsilon)\,(\mathrm{lse}(z) - z_y)
      + \frac{\varepsilon}{K} \sum_{v\ \mathrm{included}} (\mathrm{lse}(z) - z_v)
      + \lambda\, \mathrm{lse}(z)^2,
    \qquad z = \frac{c \tanh(h W / c)}{T}

  The arguments mirror the product ``hidden @ weight`` they stand for (as in Cut
  Cross-Entropy and Liger), followed by the target; ``labels`` may also be given by
  keyword. The value is :math:`H(p, q)` with the (smoothed) one-hot target :math:`p` and
  the model :math:`q`, as :func:`jaxdiv.cross_entropy` with ``labels=`` computes it on
  materialised logits, without ever forming the ``[..., V]`` logits: the vocabulary is
  processed in blocks of ``chunk_size`` columns of ``weight`` (and the tokens in blocks of
  ``token_chunk_size``), and a custom VJP keeps only per-token statistics, recomputing
  each block of logits in the backward pass. Compiled temporaries are a few
  ``token_chunk_size x chunk_size`` blocks plus the gradients themselves.

  Options, applied in this order:

  * ``soft_cap`` :math:`c` (Gemma 2): logits become :math:`c \tanh(z / c)`;
  * ``temperature`` :math:`T`: logits are divided by :math:`T`;
  * ``label_smoothing`` :math:`\varepsilon` as in PyTorch: the target puts
    :math:`1 - \varepsilon` on the label and spreads :math:`\varepsilon` uniformly over the
    :math:`K` *included* categories (those ``where`` keeps; optax's ``smooth_labels`` also
    puts mass on masked categories, which then cost ``+inf``);
  * ``z_loss`` :math:`\lambda` (PaLM): adds :math:`\lambda\,\mathrm{lse}(z)^2`, with
    :math:`\mathrm{lse}(z)` the log-normaliser of the logits *after* the cap and the
    temperature, over the included categories.

  Edge conventions: a negative label is ignored -- exactly 0 for every term (z-loss and
  smoothing included), with zero gradient; so is a label at an excluded category. A
  label :math:`\ge V` gives NaN (and no gradient contribution). ``where`` (a ``[V]`` mask,
  e.g. for a padded vocabulary) excludes categories from the normaliser. Reductions
  over tokens belong to the caller (a mean over non-ignored tokens is ``sum / count``).
  The value is formed from shifted logits (:math:`\log\sum e^{z - m} - (z_y - m)`), so
  adding a constant to the logits changes neither value nor gradient.

  Derivatives: reverse mode (``jax.grad``, ``jax.vjp``) and ``jax.hessian``; ``jax.jvp``
  and ``jax.jacfwd`` raise -- use :func:`jaxdiv.cross_entropy` on materialised logits for
  those. Gradients are computed only for the arguments being differentiated.

  Args:
    hidden: ``[..., D]`` hidden states (the last layer's input).
    weight: ``[D, V]`` output projection (for tied embeddings ``E`` of shape ``[V, D]``,
      pass ``E.T``).
    labels: ``[...]`` integer class indices (negative: ignored).
    temperature: :math:`T > 0`, a scalar.
    soft_cap: :math:`c > 0` for logit soft-capping, or ``None``.
    z_loss: :math:`\lambda \ge 0`, the weight of :math:`\mathrm{lse}(z)^2`.
    label_smoothing: :math:`\varepsilon \in [0, 1]`.
    where: optional boolean ``[V]`` mask of the categories to include.
    chunk_size: vocabulary block size (default 4096); need not divide ``V``.
    token_chunk_size: token block size (default 1024); need not divide the number of
      tokens. With ``chunk_size`` it bounds the temporaries independently of ``N``.
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-token loss (float32 for 16-bit inputs).

  Example:
    >>> h = jnp.array([[1.0, 0.0], [0.0, 1.0]]); w = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> loss = linear_cross_entropy(h, w, jnp.array([0, -1]), chunk_size=2)
    >>> [round(float(x), 6) for x in loss]  # ln(e^2 + 2) - 2, ignored
    [0.239545, 0.0]
    >>> y = jnp.array([0, 1])
    >>> smooth = linear_cross_entropy(h, w, labels=y, label_smoothing=0.1, z_loss=1e-4)
    >>> [round(float(x), 4) for x in smooth]  # 0.9 (lse - 2) + 0.1 mean(lse - z) + 1e-4 lse^2
    [0.3734, 0.6184]

  References:
    Wijmans et al., "Cut your losses in large-vocabulary language models", ICLR (2025);
    Hsu et al., "Liger Kernel: efficient Triton kernels for LLM training" (2024);
    Szegedy et al., "Rethinking the Inception architecture", CVPR (2016) (smoothing);
    Chowdhery et al., "PaLM" (2022) (z-loss); Gemma Team, "Gemma 2" (2024) (soft cap).

  See also:
    :func:`jaxdiv.cross_entropy`, :func:`linear_kl_divergence`,
    :func:`jaxdiv.sharded_cross_entropy` (vocabulary sharded over devices).
  """
  fn = "linear_cross_entropy"
  _inputs.check_base(fn, base)
  h, w, _ = _side_arrays(fn, "q", hidden, weight, None, names=("hidden", "weight", "logits"))
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
  opts, flags = _head_options(fn, temperature, soft_cap)
  zl, zlv = _scalar(fn, "z_loss", z_loss, low=0.0)
  if zlv != 0.0:
    opts["z_loss"], flags["z_loss"] = zl, True
  eps, epsv = _scalar(fn, "label_smoothing", label_smoothing, low=0.0, high=1.0)
  if epsv != 0.0:
    opts["smoothing"], flags["smoothing"] = eps, True
  num_rows = int(np.prod(batch, dtype=np.int64))
  st = _static(fn, L.CrossEntropy, num_rows, num_v, chunk_size, token_chunk_size, **flags)
  hf, _, _ = _flat(h, w, None)
  instead = "jaxdiv.cross_entropy(labels=..., q_logits=...)"
  loss = _call(fn, instead, st, (None, None, None, hf, w, None), labels.reshape(-1), where, opts)
  return _inputs.apply_base(loss.reshape(batch), base)


_SIDES_DOC = r"""Each side is either a ``(hidden [..., D], weight [D, V])`` pair or ``[..., V]``
  logits; at least one must be a pair (for two logit arrays use the core functions), and
  the two sides may have different hidden widths. Gradients flow to every argument being
  differentiated, on either side: for reverse KL with a frozen teacher, pass the student as
  ``p`` and the teacher as ``q``."""

_HEAD_DOC = r"""``soft_cap`` :math:`c` maps both sides' logits to :math:`c \tanh(z / c)` and
  ``temperature`` :math:`T` then divides both by :math:`T`. No :math:`T^2` factor is
  applied: Hinton et al. (2015) multiply the softened loss by :math:`T^2` so that its
  gradients keep their size relative to a hard-label loss as :math:`T` changes (they
  scale as :math:`1/T^2`); multiply the result by ``temperature**2`` for that convention."""


@_checks.roles(**_checks.LINEAR_PAIR, **_HEAD_ROLES)
def linear_kl_divergence(
  p_hidden: ArrayLike | None = None,
  p_weight: ArrayLike | None = None,
  q_hidden: ArrayLike | None = None,
  q_weight: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  temperature: ArrayLike = 1.0,
  soft_cap: ArrayLike | None = None,
  where: ArrayLike | None = None,
  chunk_size: int | None = None,
  token_chunk_size: int | None = None,
  base: float | None = None,
) -> Array:
  r""":math:`\mathrm{KL}(p \| q)` per token, with ``p`` and/or ``q`` given as ``hidden @ weight``.

  .. math:: \mathrm{KL}(p\|q) = \sum_v p_v (\log p_v - \log q_v),
     \quad p = \mathrm{softmax}(z^p / T),\ q = \mathrm{softmax}(z^q / T),\ z = h W

  Mathematical order: ``p`` is the reference. For distillation with forward KL,
  KL(teacher‖student), pass the teacher as ``p`` (``p_hidden``/``p_weight``, or its
  logits as ``p_logits``) and the student as ``q`` (``q_hidden``/``q_weight``). Reverse KL,
  KL(student‖teacher) (mode-seeking, as in MiniLLM and on-policy distillation), is the
  same function with the student as ``p`` (``p_hidden``/``p_weight``) and the teacher as
  ``q``: the gradients then flow through the derivative in ``p``,
  :math:`p(\log p - \log q - \mathrm{KL})`. {sides}

  {head}

  Computed in one pass over blocks of the vocabulary with running maxima and the running
  sum :math:`\sum_v e^{z^p_v - m_p}((z^p_v - m_p) - (z^q_v - m_q))`, so no ``[..., V]``
  array is formed (beyond ``p_logits``/``q_logits`` if given) and a constant added to either
  side's logits changes nothing. The custom VJP keeps both log-normalisers and the KL per
  token and recomputes each block for the gradients :math:`\partial/\partial z^q = q - p`
  and :math:`\partial/\partial z^p = p(\log p - \log q - \mathrm{KL})`, computed only for
  the arguments being differentiated (a frozen teacher costs nothing extra).

  Edge conventions as in :func:`jaxdiv.kl_divergence`: ``-inf`` logits are impossible
  categories (:math:`0 \log 0 = 0`; :math:`p_v > 0 = q_v` gives ``+inf``); ``where`` (a
  ``[V]`` mask) excludes categories from both, and an all-``False`` mask gives 0.
  ``jax.jvp``/``jax.jacfwd`` raise (no forward mode for a custom VJP; ``jax.hessian``
  works); use :func:`jaxdiv.kl_divergence` on materialised logits for those.

  Args:
    p_hidden: ``[..., D_p]`` hidden states of the reference ``p``.
    p_weight: ``[D_p, V]`` output projection of ``p``.
    q_hidden: ``[..., D_q]`` hidden states of ``q``.
    q_weight: ``[D_q, V]`` output projection of ``q``.
    p_logits: ``p`` as ``[..., V]`` logits instead of ``p_hidden``/``p_weight``.
    q_logits: ``q`` as ``[..., V]`` logits instead of ``q_hidden``/``q_weight``.
    temperature: :math:`T > 0`, dividing both sides' logits.
    soft_cap: :math:`c > 0` capping both sides' logits, or ``None``.
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
    >>> teacher = jnp.array([[2.0, 0.0, 0.0]])
    >>> round(float(linear_kl_divergence(q_hidden=h, q_weight=w, p_logits=teacher)[0]), 6)
    0.098886

  References:
    Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network" (2015);
    Gu et al., "MiniLLM: knowledge distillation of large language models", ICLR (2024);
    Wijmans et al., "Cut your losses in large-vocabulary language models", ICLR (2025).

  See also:
    :func:`jaxdiv.kl_divergence`, :func:`linear_cross_entropy`,
    :func:`linear_skew_kl_divergence`, :func:`linear_jensen_shannon_divergence`.
  """
  fn = "linear_kl_divergence"
  _inputs.check_base(fn, base)
  opts, flags = _head_options(fn, temperature, soft_cap)
  sides = (p_hidden, p_weight, p_logits, q_hidden, q_weight, q_logits)
  instead = "jaxdiv.kl_divergence(p_logits=..., q_logits=...)"
  return _run_pair(fn, instead, L.KL, sides, where, chunk_size, token_chunk_size, opts, flags, base)


def _mix_weight(fn, name, value, what):
  """A mixture weight in the closed interval [0, 1], in the sides' compute dtype."""
  if value is None:
    raise ValueError(f"{fn}: `{name}` is required ({what}).")
  value, _ = _scalar(fn, name, value, low=0.0, high=1.0, what=f" ({what})")
  return value


@_checks.roles(**_checks.LINEAR_PAIR, **_HEAD_ROLES, weight="unchecked")
def linear_jensen_shannon_divergence(
  p_hidden: ArrayLike | None = None,
  p_weight: ArrayLike | None = None,
  q_hidden: ArrayLike | None = None,
  q_weight: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  weight: ArrayLike = 0.5,
  temperature: ArrayLike = 1.0,
  soft_cap: ArrayLike | None = None,
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
  ``jensenshannon`` is the square root). At :math:`w \in \{0, 1\}` the mixture is one of
  the sides and the value is 0 (a term with zero weight counts as 0).

  Liger-Kernel (``LigerFusedLinearJSDLoss``) and TRL (``GKDTrainer.generalized_jsd_loss``)
  compute :math:`\beta\,\mathrm{KL}(t\|m) + (1-\beta)\,\mathrm{KL}(s\|m)` with
  :math:`m = \beta t + (1 - \beta) s` for teacher :math:`t` and student :math:`s`: that is
  this function with the teacher as ``p``, the student as ``q`` and ``weight`` :math:`=
  \beta`. At :math:`\beta = 0` and :math:`\beta = 1` both switch to plain KL --
  KL(teacher‖student) and KL(student‖teacher) -- where this function gives 0: use
  :func:`linear_kl_divergence` for those (the teacher as ``p`` for the first, the student
  as ``p`` for the second).

  {sides}

  {head}

  The mixture is formed in log space,
  :math:`\log m = \mathrm{logaddexp}(\log w + \log p, \log(1-w) + \log q)`, from
  log-probabilities formed from shifted logits. Two passes over the vocabulary
  (log-normalisers, then the mixture terms); the custom VJP keeps both log-normalisers and
  :math:`\mathrm{KL}(p\|m)`, :math:`\mathrm{KL}(q\|m)` per token, and also gives the
  derivative in ``weight``, :math:`\mathrm{KL}(p\|m) - \mathrm{KL}(q\|m)`. Masks and
  blocking as in :func:`linear_kl_divergence`.

  Args:
    p_hidden, p_weight, q_hidden, q_weight, p_logits, q_logits: the two distributions,
      as in :func:`linear_kl_divergence`.
    weight: the mixture weight :math:`w` of ``p`` (a scalar in :math:`[0, 1]`).
    temperature: :math:`T > 0`, dividing both sides' logits.
    soft_cap: :math:`c > 0` capping both sides' logits, or ``None``.
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
  mix = _mix_weight(
    fn, "weight", weight, "the mixture weight w; the projection matrices are `p_weight`/`q_weight`"
  )
  opts, flags = _head_options(fn, temperature, soft_cap)
  opts["mix"] = mix
  sides = (p_hidden, p_weight, p_logits, q_hidden, q_weight, q_logits)
  instead = "jaxdiv.jensen_shannon_divergence(p_logits=..., q_logits=..., weight=...)"
  return _run_pair(
    fn, instead, L.JensenShannon, sides, where, chunk_size, token_chunk_size, opts, flags, base
  )


@_checks.roles(**_checks.LINEAR_PAIR, **_HEAD_ROLES, alpha="unchecked")
def linear_skew_kl_divergence(
  p_hidden: ArrayLike | None = None,
  p_weight: ArrayLike | None = None,
  q_hidden: ArrayLike | None = None,
  q_weight: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  alpha: ArrayLike | None = None,
  temperature: ArrayLike = 1.0,
  soft_cap: ArrayLike | None = None,
  where: ArrayLike | None = None,
  chunk_size: int | None = None,
  token_chunk_size: int | None = None,
  base: float | None = None,
) -> Array:
  r"""Skew KL :math:`\mathrm{KL}(p \| \alpha p + (1-\alpha) q)` per token, without the logits.

  .. math:: \mathrm{SKL}_\alpha(p\|q) = \sum_v p_v \log\frac{p_v}{\alpha p_v + (1-\alpha) q_v}

  The skew divergence of Lee (1999), DistiLLM's "skew KL" (Ko et al., 2024, who take
  :math:`\alpha = 0.1`) with the teacher as ``p`` and the student as ``q``; their "skew
  reverse KL" swaps the sides (the student as ``p``). :math:`\alpha = 0` gives
  :math:`\mathrm{KL}(p\|q)`, :math:`\alpha = 1` gives 0; for :math:`\alpha > 0` it is
  finite, at most :math:`-\log\alpha`, whatever the supports. The same value as
  :func:`jaxdiv.skew_kl_divergence` on materialised logits. {sides}

  {head}

  Two passes over the vocabulary (log-normalisers, then the terms with the mixture
  formed in log space); the custom VJP keeps per token the log-normalisers, the value and
  :math:`R = \sum_v p_v^2 / m_v`, :math:`Q = \sum_v q_v p_v / m_v`, which give the
  derivatives :math:`\partial/\partial z^p = p((\log p - \log m - \mathrm{SKL}) -
  \alpha(p/m - R))`, :math:`\partial/\partial z^q = (1-\alpha)\,q\,(Q - p/m)` and, in
  ``alpha``, :math:`Q - R`. Masks and blocking as in :func:`linear_kl_divergence`.

  Args:
    p_hidden, p_weight, q_hidden, q_weight, p_logits, q_logits: the two distributions,
      as in :func:`linear_kl_divergence`.
    alpha: :math:`\alpha \in [0, 1]` (required), a scalar.
    temperature: :math:`T > 0`, dividing both sides' logits.
    soft_cap: :math:`c > 0` capping both sides' logits, or ``None``.
    where: optional boolean ``[V]`` mask of the categories to include.
    chunk_size: vocabulary block size (default 4096).
    token_chunk_size: token block size (default 1024).
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-token :math:`\mathrm{SKL}_\alpha(p\|q)`.

  Example:
    >>> h = jnp.ones((1, 1)); w1 = jnp.array([[50.0, 0.0]]); w2 = jnp.array([[0.0, 50.0]])
    >>> round(float(linear_skew_kl_divergence(h, w1, h, w2, alpha=0.1)[0]), 6)  # -ln 0.1
    2.302585

  References:
    Lee, "Measures of distributional similarity", ACL (1999);
    Ko et al., "DistiLLM: towards streamlined distillation for large language models",
    ICML (2024).

  See also:
    :func:`jaxdiv.skew_kl_divergence`, :func:`linear_kl_divergence`,
    :func:`linear_jensen_shannon_divergence`.
  """
  fn = "linear_skew_kl_divergence"
  _inputs.check_base(fn, base)
  mix = _mix_weight(fn, "alpha", alpha, "the skew alpha in [0, 1]")
  opts, flags = _head_options(fn, temperature, soft_cap)
  opts["mix"] = mix
  sides = (p_hidden, p_weight, p_logits, q_hidden, q_weight, q_logits)
  instead = "jaxdiv.skew_kl_divergence(p_logits=..., q_logits=..., alpha=...)"
  return _run_pair(
    fn, instead, L.SkewKL, sides, where, chunk_size, token_chunk_size, opts, flags, base
  )


@_checks.roles(**{k: v for k, v in _checks.LINEAR_PAIR.items() if k != "base"}, **_HEAD_ROLES)
def linear_total_variation_distance(
  p_hidden: ArrayLike | None = None,
  p_weight: ArrayLike | None = None,
  q_hidden: ArrayLike | None = None,
  q_weight: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  temperature: ArrayLike = 1.0,
  soft_cap: ArrayLike | None = None,
  where: ArrayLike | None = None,
  chunk_size: int | None = None,
  token_chunk_size: int | None = None,
) -> Array:
  r"""Total variation distance :math:`\tfrac12 \sum_v |p_v - q_v|` per token, without the logits.

  A metric with values in :math:`[0, 1]`, symmetric in ``p`` and ``q``, used as a
  distillation loss (Wen et al., 2023); the
  same value as :func:`jaxdiv.total_variation_distance` on materialised logits. The
  difference :math:`p_v - q_v` is formed from log-probabilities with ``expm1``, so it
  keeps its digits when both are near 1. The derivative of :math:`|x|` at 0 is taken as 0:
  with :math:`s_v = \mathrm{sign}(p_v - q_v)/2`, :math:`\partial/\partial z^p = p(s -
  \sum_v p_v s_v)` and :math:`\partial/\partial z^q = -q(s - \sum_v q_v s_v)`. Unit-free,
  so no ``base``. {sides}

  {head}

  Args:
    p_hidden, p_weight, q_hidden, q_weight, p_logits, q_logits: the two distributions,
      as in :func:`linear_kl_divergence`.
    temperature: :math:`T > 0`, dividing both sides' logits.
    soft_cap: :math:`c > 0` capping both sides' logits, or ``None``.
    where: optional boolean ``[V]`` mask of the categories to include.
    chunk_size: vocabulary block size (default 4096).
    token_chunk_size: token block size (default 1024).

  Returns:
    ``[...]`` per-token :math:`\delta(p, q) \in [0, 1]`.

  Example:
    >>> h = jnp.ones((1, 1)); w1 = jnp.array([[50.0, 0.0]]); w2 = jnp.array([[0.0, 50.0]])
    >>> round(float(linear_total_variation_distance(h, w1, h, w2)[0]), 6)
    1.0

  References:
    Tsybakov, *Introduction to Nonparametric Estimation* (2009), section 2.4;
    Wen et al., "f-Divergence minimization for sequence-level knowledge distillation",
    ACL (2023).

  See also:
    :func:`jaxdiv.total_variation_distance`, :func:`linear_kl_divergence`.
  """
  fn = "linear_total_variation_distance"
  opts, flags = _head_options(fn, temperature, soft_cap)
  sides = (p_hidden, p_weight, p_logits, q_hidden, q_weight, q_logits)
  instead = "jaxdiv.total_variation_distance(p_logits=..., q_logits=...)"
  return _run_pair(
    fn, instead, L.TotalVariation, sides, where, chunk_size, token_chunk_size, opts, flags, False
  )


for _f in (
  linear_kl_divergence,
  linear_jensen_shannon_divergence,
  linear_skew_kl_divergence,
  linear_total_variation_distance,
):
  _f.__doc__ = _f.__doc__.replace("{sides}", _SIDES_DOC).replace("{head}", _HEAD_DOC)
del _f
