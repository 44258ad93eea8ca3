r"""Large-vocabulary fused losses: divergences of ``softmax(hidden @ weight)`` without the logits.

A language-model head turns ``N`` hidden states of width ``D`` into ``N x V`` logits; at
``V = 65536`` and ``N = 8192`` those are 2 GiB in float32, and differentiating a loss on
them keeps several such arrays alive. The functions here never form them: they walk the
tokens (and, for very large vocabularies, the vocabulary) in blocks, computing
``hidden @ weight`` one block at a time, and fold each block into per-token statistics
(:mod:`jaxdiv._drivers`, :mod:`jaxdiv._fused_losses`). Under ``jax.grad`` with a
``reduction``, the same sweep forms the gradients, so a training step costs the products
of the naive step and the memory of a few blocks.

This is the idea of Cut Cross-Entropy (Wijmans et al., 2025), Liger-Kernel's fused linear
losses (Hsu et al., 2024) and levanter's blockwise cross-entropy, written in plain JAX, so
it runs on every backend. Every public function here checks its arguments and builds a
:class:`Job`; the drivers run it on one device, and :mod:`jaxdiv._sharded` runs the same
job on the vocabulary shards of a mesh.
"""

from __future__ import annotations

import functools
import inspect
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad
from jax.typing import ArrayLike

from jaxdiv import _checks, _drivers, _inputs
from jaxdiv import _fused_losses as L

Array = jax.Array
REDUCTIONS = (None, "sum", "mean")

# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def _float_array(fn: str, name: str, x) -> Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{fn}: `{name}` must be a floating-point array, got dtype {x.dtype}.")
  return x


def _chunk(fn: str, name: str, size) -> int | None:
  if size is None:
    return None
  try:
    size = operator.index(size)
  except TypeError:
    raise TypeError(f"{fn}: `{name}` must be a positive integer, got {size!r}.") from None
  if size <= 0:
    raise ValueError(f"{fn}: `{name}` must be a positive integer, got {size}.")
  return size


def _reduction(fn: str, reduction) -> str | None:
  if reduction not in REDUCTIONS:
    raise ValueError(
      f"{fn}: `reduction` must be None (per token), 'sum' or 'mean' (over the tokens that "
      f"count); got {reduction!r}."
    )
  return reduction


class _Side(NamedTuple):
  """A distribution as given: ``kind`` "head", "logits" or "sparse"."""

  kind: str
  hidden: Array | None = None
  weight: Array | None = None
  logits: Array | None = None
  sparse: _inputs.Sparse | None = None

  @property
  def batch(self):
    if self.kind == "head":
      return self.hidden.shape[:-1]
    if self.kind == "logits":
      return self.logits.shape[:-1]
    return self.sparse.indices.shape[:-1]


def _head_side(fn, hidden, weight, h_name, w_name) -> _Side:
  if hidden is None or weight is None:
    missing = h_name if hidden is None else w_name
    raise ValueError(f"{fn}: `{missing}` is missing (the logits are `{h_name} @ {w_name}`).")
  h, w = _float_array(fn, h_name, hidden), _float_array(fn, w_name, weight)
  if h.ndim < 1 or w.ndim != 2 or h.shape[-1] != w.shape[0]:
    raise ValueError(
      f"{fn}: `{h_name}` must have shape [..., D] and `{w_name}` shape [D, V]; got "
      f"{h.shape} and {w.shape}."
    )
  return _Side("head", h, w)


def _side(fn: str, role: str, hidden, weight, logits, indices=None, log_probs=None, names=None):
  """One distribution, given as a head, as logits, or stored sparse; ``None`` if absent.

  ``names``: the caller's argument names for the five (default ``{role}_hidden`` etc.).
  """
  names = names or tuple(
    f"{role}_{a}" for a in ("hidden", "weight", "logits", "indices", "log_probs")
  )
  forms = {
    "head": (hidden, weight),
    "logits": (logits,),
    "sparse": (indices, log_probs),
  }
  given = [k for k, v in forms.items() if any(x is not None for x in v)]
  if len(given) > 1:
    spelled = {"head": f"`{names[0]}`/`{names[1]}`", "logits": f"`{names[2]}`"}
    spelled["sparse"] = f"`{names[3]}`/`{names[4]}`"
    raise ValueError(
      f"{fn}: the distribution {role} is given {len(given)} times (as "
      f"{' and '.join(spelled[k] for k in given)}); give exactly one of them."
    )
  if not given:
    return None
  if given[0] == "head":
    return _head_side(fn, hidden, weight, names[0], names[1])
  if given[0] == "logits":
    z = _float_array(fn, names[2], logits)
    if z.ndim < 1:
      raise ValueError(f"{fn}: `{names[2]}` needs a category axis, got a scalar.")
    return _Side("logits", logits=z)
  return _Side("sparse", sparse=(indices, log_probs, names[3:]))


def _num_v(side: _Side):
  if side.kind == "head":
    return side.weight.shape[1]
  if side.kind == "logits":
    return side.logits.shape[-1]
  return None


def _sparse_now(fn, role, side: _Side, num_v) -> _Side:
  """A stored side's arrays checked against the dense side's vocabulary."""
  if side.kind != "sparse":
    return side
  indices, log_probs, names = side.sparse
  return _Side("sparse", sparse=_inputs.sparse(fn, role, indices, log_probs, num_v, names))


def _masks(fn: str, where, batch: tuple, num_v: int) -> dict:
  """``where`` as a vocabulary mask ``[V]``, a token mask ``[N]`` or a full mask ``[N, V]``.

  ``where`` broadcasts against ``[..., V]`` as in the core functions: ``[V]`` (e.g. a
  padded vocabulary) and ``[..., 1]`` (padded tokens) cost nothing of size ``N x V``.
  """
  if where is None:
    return {}
  w = jnp.asarray(where)
  if w.dtype != jnp.bool_:
    raise TypeError(f"{fn}: `where` must be a boolean mask, got dtype {w.dtype}.")
  shape = (*batch, num_v)
  try:
    ok = tuple(np.broadcast_shapes(w.shape, shape)) == shape
  except ValueError:
    ok = False
  if not ok:
    hint = ""
    if tuple(w.shape) == tuple(batch):
      hint = " To mask tokens, keep the category axis: `where=mask[..., None]`."
    raise ValueError(
      f"{fn}: `where` with shape {w.shape} must broadcast against the logits' shape {shape}: "
      f"a vocabulary mask ({num_v},), a token mask {(*batch, 1)}, or both.{hint}"
    )
  n = int(np.prod(batch, dtype=np.int64))
  lead, last = w.shape[:-1] if w.ndim else (), w.shape[-1] if w.ndim else 1
  if all(d == 1 for d in lead) and last == num_v and num_v != 1:
    return {"vocab_mask": w.reshape(num_v)}
  if last == 1:
    return {"row_mask": jnp.broadcast_to(w, (*batch, 1)).reshape(n)}
  full = jnp.broadcast_to(w, shape).reshape(n, num_v)
  return {"full_mask": full, "row_mask": jnp.any(full, axis=-1)}  # an empty row: masked


# ---------------------------------------------------------------------------
# Options: one check each, the same for every function
# ---------------------------------------------------------------------------


def _head(fn, temperature, soft_cap, arrays: dict, prefix="") -> tuple:
  """Put the temperature and soft cap into ``arrays``; the names a term's head reads."""
  head = _inputs.head_options(fn, temperature, soft_cap)  # the core functions' check
  names = [None, None]
  if head.soft_cap is not None:
    arrays[prefix + "soft_cap"] = jnp.asarray(head.soft_cap)
    names[0] = prefix + "soft_cap"
  if head.temperature is not None:  # a concrete T = 1 divides nothing
    arrays[prefix + "temperature"] = jnp.asarray(head.temperature)
    names[1] = prefix + "temperature"
  return tuple(names)


def _ce_options(fn, z_loss, label_smoothing, arrays: dict) -> tuple:
  """Put the z-loss and smoothing into ``arrays``; the cross-entropy term's flags."""
  flags = []
  zl, zlv = _inputs.scalar_option(fn, "z_loss", z_loss, low=0.0)
  if zlv != 0.0:
    arrays["z_loss"] = jnp.asarray(zl)
    flags.append(("z_loss", True))
  eps, epsv = _inputs.scalar_option(fn, "label_smoothing", label_smoothing, low=0.0, high=1.0)
  if epsv != 0.0:
    arrays["smoothing"] = jnp.asarray(eps)
    flags.append(("smoothing", True))
  return tuple(flags)


def _labels(fn: str, labels, batch) -> Array:
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_:
    raise TypeError(f"{fn}: `labels` must be an integer array, got dtype {labels.dtype}.")
  if labels.shape != tuple(batch):
    raise ValueError(
      f"{fn}: `labels` must have the batch shape of `hidden` {tuple(batch)} "
      f"(hidden without its last axis); got {labels.shape}."
    )
  return labels


def _mix_weight(fn, name, value, what):
  """A mixture weight in the closed interval [0, 1]."""
  if value is None:
    raise ValueError(f"{fn}: `{name}` is required ({what}).")
  value, _ = _inputs.scalar_option(fn, name, value, low=0.0, high=1.0, what=f" ({what})")
  return jnp.asarray(value)


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------


class Job(NamedTuple):
  """A checked fused call: what the drivers run, on one device or on a mesh."""

  fn: str
  comps: tuple  # _drivers.Comp, ...
  kinds: tuple  # the dense kinds of p and q ("head", "logits", None)
  arrays: dict  # flattened to rows: sides, per-row data, masks, options
  batch: tuple
  num_v: int
  chunks: tuple  # (chunk_size, token_chunk_size) as given
  reduction: str | None
  diff_opts: tuple
  base: Any
  instead: str  # the core function for forward mode

  @property
  def num_rows(self) -> int:
    return int(np.prod(self.batch, dtype=np.int64))

  def static(self, num_rows, local_v, vocab_axis=None, data_axis=None) -> _drivers.Static:
    blocks = _drivers.plan(
      num_rows, local_v, *self.chunks, sides=sum(k == "head" for k in self.kinds)
    )
    return _drivers.Static(
      self.fn, self.comps, self.kinds, num_rows, self.num_v, local_v, *blocks,
      self.reduction, tuple(sorted(self.arrays)), self.diff_opts, vocab_axis, data_axis,
    )  # fmt: skip

  def finish(self, out: Array) -> Array:
    if self.reduction is None:
      out = out.reshape(self.batch)
    return out if self.base is False else _inputs.apply_base(out, self.base)


def _forward_mode_error(fn: str, instead: str) -> TypeError:
  return TypeError(
    f"{fn} has no forward-mode derivative (jax.jvp, jax.jacfwd, jax.linearize): its custom "
    f"VJP gives reverse mode only (jax.grad, jax.vjp; jax.hessian works, as forward-over-"
    f"reverse). For forward mode use {instead} on materialised logits (hidden @ weight)."
  )


def call(job: Job, run, fn: str | None = None) -> Array:
  """``run(arrays)`` (a driver), with JAX's bare forward-mode error replaced by one that
  says what to use instead."""
  fn = fn or job.fn
  if any(isinstance(x, ad.JVPTracer) for x in job.arrays.values()):
    raise _forward_mode_error(fn, job.instead)
  try:
    return job.finish(run(job.arrays))
  except TypeError as e:
    if "forward-mode autodiff" in str(e):
      raise _forward_mode_error(fn, job.instead) from None
    raise


def run(job: Job) -> Array:
  """A job on one device."""
  st = job.static(job.num_rows, job.num_v)
  return call(job, functools.partial(_drivers.device, st))


def fused(**roles):
  """Make ``build(fn, *args, **kwargs) -> Job`` the public function ``fn`` (without its
  first argument), running the job on one device; ``.build`` keeps the builder for the
  vocabulary-parallel version (:func:`jaxdiv._sharded.vocabulary_parallel`)."""

  def decorate(build):
    sig = inspect.signature(build)
    name = build.__name__

    @functools.wraps(build)
    def public(*args, **kwargs):
      return run(build(name, *args, **kwargs))

    public.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])
    public.build = build
    return _checks.roles(**roles)(public)

  return decorate


def _job(fn, comps, sides, batch, num_v, rows, where, reduction, chunks, base, instead,
         options, diff_opts=()) -> Job:  # fmt: skip
  """Flatten the batch dimensions to rows and collect the arrays."""
  n = int(np.prod(batch, dtype=np.int64))
  arrays = dict(options)
  kinds = []
  for role in ("p", "q"):
    s = sides.get(role)
    dense = s is not None and s.kind != "sparse"
    kinds.append(s.kind if dense else None)
    arrays[f"{role}_hidden"] = s.hidden.reshape(n, -1) if dense and s.kind == "head" else None
    arrays[f"{role}_weight"] = s.weight if dense and s.kind == "head" else None
    arrays[f"{role}_values"] = s.logits.reshape(n, num_v) if dense and s.kind == "logits" else None
    if s is not None and s.kind == "sparse":
      sp = s.sparse
      k = sp.indices.shape[-1]
      arrays.update(
        indices=sp.indices.reshape(n, k),
        log_probs=sp.log_probs.reshape(n, k),
        slot_ok=sp.slot_ok.reshape(n, k),
        invalid=sp.invalid.reshape(n),
      )
  for k, v in rows.items():
    arrays[k] = v.reshape(n, *v.shape[len(batch) :])
  masks = _masks(fn, where, batch, num_v)
  if "row_mask" in masks and "row_mask" in arrays:
    masks["row_mask"] = masks["row_mask"] & arrays["row_mask"]
  arrays.update(masks)
  return Job(fn, tuple(comps), tuple(kinds), arrays, tuple(batch), num_v,
             (_chunk(fn, "chunk_size", chunks[0]), _chunk(fn, "token_chunk_size", chunks[1])),
             _reduction(fn, reduction), tuple(diff_opts), base, instead)  # fmt: skip


def _comp(loss, sides, head=(None, None), flags=(), opts=(), weight=None) -> _drivers.Comp:
  return _drivers.Comp(loss, tuple(sides), tuple(head), tuple(sorted(flags)), tuple(opts), weight)


# The dense pair losses and their cells' counterpart for a stored side.
_PAIRS = {
  "kl": (L.KL, "kl"),
  "jsd": (L.JensenShannon, "jsd"),
  "skew_kl": (L.SkewKL, "skew_kl"),
  "tv": (L.TotalVariation, "tv"),
}


def _divergence_term(fn, kind, sides, tail, head, mix_name=None) -> _drivers.Comp:
  """The term of ``kind`` between two sides (one of them possibly stored)."""
  opts = () if mix_name is None else (("mix", mix_name),)
  stored = [r for r in ("p", "q") if sides[r].kind == "sparse"]
  if not stored:
    return _comp(_PAIRS[kind][0], ("p", "q"), head, opts=opts)
  dense = "q" if stored[0] == "p" else "p"
  tol = _inputs.sparse_tolerance(sides[stored[0]].sparse.log_probs.dtype)
  flags = (("stored", stored[0]), ("tail", tail), ("cells", _PAIRS[kind][1]), ("tol", tol))
  return _comp(L.Sparse, (dense,), head, flags=flags, opts=opts)


def _pair_sides(fn, p_hidden, p_weight, p_logits, p_indices, p_log_probs,
                q_hidden, q_weight, q_logits, q_indices, q_log_probs):  # fmt: skip
  p = _side(fn, "p", p_hidden, p_weight, p_logits, p_indices, p_log_probs)
  q = _side(fn, "q", q_hidden, q_weight, q_logits, q_indices, q_log_probs)
  for role, s in (("p", p), ("q", q)):
    if s is None:
      raise ValueError(
        f"{fn}: the distribution {role} is missing; give `{role}_hidden` and `{role}_weight`, "
        f"`{role}_logits`, or `{role}_indices` with `{role}_log_probs`."
      )
  if p.kind != "head" and q.kind != "head":
    what = {"logits": "logits", "sparse": "stored log-probabilities"}
    raise ValueError(
      f"{fn}: p is given as {what[p.kind]} and q as {what[q.kind]}; the fused form needs a "
      f"(hidden, weight) side -- for these use the core functions (jaxdiv.kl_divergence etc.)."
    )
  num_v = _num_v(p) if p.kind != "sparse" else _num_v(q)
  p, q = _sparse_now(fn, "p", p, num_v), _sparse_now(fn, "q", q, num_v)
  vp, vq = _num_v(p), _num_v(q)
  if p.batch != q.batch or (vp is not None and vq is not None and vp != vq):
    raise ValueError(
      f"{fn}: p and q must have the same batch shape and vocabulary size; got batch "
      f"{p.batch}, V={vp} for p and batch {q.batch}, V={vq} for q."
    )
  return {"p": p, "q": q}, p.batch, num_v


def _pair_job(fn, kind, sides_args, tail, temperature, soft_cap, where, reduction, chunks,
              base, instead, mix=None) -> Job:  # fmt: skip
  _inputs.check_tail(fn, tail)
  sides, batch, num_v = _pair_sides(fn, *sides_args)
  options = {}
  head = _head(fn, temperature, soft_cap, options)
  diff = ()
  if mix is not None:
    options["mix"], diff = mix, ("mix",)
  comp = _divergence_term(fn, kind, sides, tail, head, None if mix is None else "mix")
  return _job(fn, [comp], sides, batch, num_v, {}, where, reduction, chunks, base, instead,
              options, diff)  # fmt: skip


# ---------------------------------------------------------------------------
# Shared documentation
# ---------------------------------------------------------------------------

_SIDES_DOC = r"""Each side is a ``(hidden [..., D], weight [D, V])`` pair, ``[..., V]`` logits, or a
  stored distribution ``indices [..., k]`` with ``log_probs [..., k]`` (see
  :doc:`/guides/stored_teachers`); at least one side must be a pair, and the two may have
  different hidden widths. Gradients flow to every argument being differentiated, on
  either side: for reverse KL with a frozen teacher, pass the student as ``p`` and the
  teacher as ``q``."""

_HEAD_DOC = r"""``soft_cap`` :math:`c` maps the dense sides' logits to :math:`c \tanh(z / c)` and
  ``temperature`` :math:`T` then divides them by :math:`T` (a stored side's log-probabilities
  are used as given: store them at the temperature of the loss). No :math:`T^2` factor is
  applied: Hinton et al. (2015) multiply the softened loss by :math:`T^2` so that its
  gradients keep their size relative to a hard-label loss as :math:`T` changes; see
  :func:`linear_distillation_loss` for that convention."""

_BLOCKS_DOC = r"""Blocks: ``chunk_size`` categories by ``token_chunk_size`` tokens, chosen from the
  problem when not given (the whole vocabulary of a block of tokens while a block fits
  ``2**23`` elements with at least 128 tokens; see :doc:`/performance`). With a
  ``reduction`` the value and the gradients are formed in one sweep under ``jax.grad``;
  with ``reduction=None`` (per token) the backward pass recomputes each block once a
  weight is differentiated (a per-token cotangent arrives only then)."""

_WHERE_DOC = r"""``where`` broadcasts against the logits ``[..., V]``, as in the core functions: a
  ``[V]`` vocabulary mask excludes categories (a padded vocabulary), a ``[..., 1]`` token
  mask excludes tokens (padding: 0, with zero gradient, even where the inputs are NaN),
  neither at an ``N x V`` cost; a full ``[..., V]`` mask is sliced block by block."""

_ARGS_DOC = r"""reduction: ``None`` (per token), ``"sum"``, or ``"mean"`` over the tokens that
      count (not masked; for cross-entropy, label not ignored); 0 when none counts.
    chunk_size: vocabulary block size (default: from the problem).
    token_chunk_size: token block size (default: from the problem)."""


def _doc(fn):
  fn.__doc__ = (
    fn.__doc__.replace("{sides}", _SIDES_DOC)
    .replace("{head}", _HEAD_DOC)
    .replace("{blocks}", _BLOCKS_DOC)
    .replace("{where}", _WHERE_DOC)
    .replace("{args}", _ARGS_DOC)
  )
  return fn


_PAIR_ROLES = dict(
  _checks.LINEAR_PAIR,
  p_indices="indices",
  p_log_probs="log_probs",
  q_indices="indices",
  q_log_probs="log_probs",
  tail="unchecked",
  temperature="unchecked",
  soft_cap="unchecked",
  reduction="unchecked",
)

# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


@_doc
@fused(
  hidden="finite",
  weight="classifier",
  labels="labels",
  where="where",
  chunk_size="unchecked",
  token_chunk_size="unchecked",
  base="unchecked",
  z_loss="unchecked",
  label_smoothing="unchecked",
  temperature="unchecked",
  soft_cap="unchecked",
  reduction="unchecked",
)
def linear_cross_entropy(
  fn,
  hidden: ArrayLike,
  weight: ArrayLike,
  labels: ArrayLike,
  *,
  temperature: ArrayLike = 1.0,
  soft_cap: ArrayLike | None = None,
  z_loss: ArrayLike = 0.0,
  label_smoothing: ArrayLike = 0.0,
  where: ArrayLike | None = None,
  reduction: str | None = None,
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
  the model :math:`q`, as :func:`jaxdiv.cross_entropy` with ``labels=`` and the same options
  computes it on materialised logits, without ever forming the ``[..., V]`` logits.

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

  Edge conventions: a negative label is ignored (PyTorch's ``ignore_index=-100``, Liger's
  too) -- exactly 0 for every term (z-loss and smoothing included), with zero gradient; so
  is a label at an excluded category. A label :math:`\ge V` gives NaN (and no gradient
  contribution). {where} The value is formed from shifted logits
  (:math:`\log\sum e^{z - m} - (z_y - m)`), so adding a constant to the logits changes
  neither value nor gradient.

  {blocks}

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
    where: boolean mask broadcastable against ``[..., V]`` (see above).
    {args}
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-token loss, or the scalar sum or mean (float32 for 16-bit inputs).

  Example:
    >>> h = jnp.array([[1.0, 0.0], [0.0, 1.0]]); w = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> loss = linear_cross_entropy(h, w, jnp.array([0, -1]), chunk_size=2)
    >>> [round(float(x), 6) for x in loss]  # ln(e^2 + 2) - 2, ignored
    [0.239545, 0.0]
    >>> y = jnp.array([0, 1])
    >>> smooth = linear_cross_entropy(h, w, labels=y, label_smoothing=0.1, z_loss=1e-4)
    >>> [round(float(x), 4) for x in smooth]  # 0.9 (lse - 2) + 0.1 mean(lse - z) + 1e-4 lse^2
    [0.3734, 0.6184]
    >>> mean = linear_cross_entropy(h, w, jnp.array([0, -1]), reduction="mean")
    >>> round(float(mean), 6)  # over the one token that counts
    0.239545

  References:
    Wijmans et al., "Cut your losses in large-vocabulary language models", ICLR (2025);
    Hsu et al., "Liger Kernel: efficient Triton kernels for LLM training" (2024);
    Szegedy et al., "Rethinking the Inception architecture", CVPR (2016) (smoothing);
    Chowdhery et al., "PaLM" (2022) (z-loss); Gemma Team, "Gemma 2" (2024) (soft cap).

  See also:
    :func:`jaxdiv.cross_entropy`, :func:`linear_distillation_loss`,
    :func:`jaxdiv.sharded_linear_cross_entropy` (vocabulary sharded over devices).
  """
  _inputs.check_base(fn, base)
  q = _head_side(fn, hidden, weight, "hidden", "weight")
  labels = _labels(fn, labels, q.batch)
  options = {}
  head = _head(fn, temperature, soft_cap, options)
  flags = _ce_options(fn, z_loss, label_smoothing, options)
  opts = [(k, k) for k in ("z_loss", "smoothing") if k in options]
  comp = _comp(L.LabelsCE, ("q",), head, flags, opts)
  rows = {"labels": labels, "row_mask": labels >= 0}  # an ignored token adds nothing, even NaN
  instead = "jaxdiv.cross_entropy(labels=..., q_logits=...)"
  return _job(fn, [comp], {"q": q}, q.batch, q.weight.shape[1], rows, where, reduction,
              (chunk_size, token_chunk_size), base, instead,
              options)  # fmt: skip


@_doc
@fused(**_PAIR_ROLES)
def linear_kl_divergence(
  fn,
  p_hidden: ArrayLike | None = None,
  p_weight: ArrayLike | None = None,
  q_hidden: ArrayLike | None = None,
  q_weight: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  p_indices: ArrayLike | None = None,
  p_log_probs: ArrayLike | None = None,
  q_indices: ArrayLike | None = None,
  q_log_probs: ArrayLike | None = None,
  tail: str = "residual",
  temperature: ArrayLike = 1.0,
  soft_cap: ArrayLike | None = None,
  where: ArrayLike | None = None,
  reduction: str | None = None,
  chunk_size: int | None = None,
  token_chunk_size: int | None = None,
  base: float | None = None,
) -> Array:
  r""":math:`\mathrm{KL}(p \| q)` per token, with ``p`` and/or ``q`` given as ``hidden @ weight``.

  .. math:: \mathrm{KL}(p\|q) = \sum_v p_v (\log p_v - \log q_v),
     \quad p = \mathrm{softmax}(z^p / T),\ q = \mathrm{softmax}(z^q / T),\ z = h W

  Mathematical order: ``p`` is the reference. For distillation with forward KL,
  KL(teacher‖student), pass the teacher as ``p`` (``p_hidden``/``p_weight``, its logits as
  ``p_logits``, or its stored top-k or sampled tokens as ``p_indices``/``p_log_probs``) and
  the student as ``q`` (``q_hidden``/``q_weight``). Reverse KL, KL(student‖teacher)
  (mode-seeking, as in MiniLLM and on-policy distillation), is the same function with the
  student as ``p`` and the teacher as ``q``: the gradients then flow through the derivative
  in ``p``, :math:`p(\log p - \log q - \mathrm{KL})`. {sides}

  {head}

  A stored side is compared on the cells of ``tail`` (:func:`jaxdiv.kl_divergence` has the
  conventions): ``"residual"`` (default) adds one category holding each side's unlisted
  mass, the exact KL of the coarse-grained distributions (:math:`\ge 0` and, by the
  data-processing inequality, at most the full KL); ``"renormalize"`` restricts both to the
  listed categories (MaxText's top-k distillation); ``"truncate"`` sums the listed terms
  only (MaxText's formula before June 2026; not a divergence, kept for compatibility).

  The value is formed in one pass over each block with running maxima and the running sum
  :math:`\sum_v e^{z^p_v - m_p}((z^p_v - m_p) - (z^q_v - m_q))`, so a constant added to
  either side's logits changes nothing. Gradients :math:`\partial/\partial z^q = q - p` and
  :math:`\partial/\partial z^p = p(\log p - \log q - \mathrm{KL})` are computed only for the
  arguments being differentiated (a frozen teacher costs its forward products only).

  Edge conventions as in :func:`jaxdiv.kl_divergence`: ``-inf`` logits are impossible
  categories (:math:`0 \log 0 = 0`; :math:`p_v > 0 = q_v` gives ``+inf``); a fully excluded
  row gives 0. {where} {blocks} ``jax.jvp``/``jax.jacfwd`` raise (``jax.hessian`` works);
  use :func:`jaxdiv.kl_divergence` on materialised logits for those.

  Args:
    p_hidden: ``[..., D_p]`` hidden states of the reference ``p``.
    p_weight: ``[D_p, V]`` output projection of ``p``.
    q_hidden: ``[..., D_q]`` hidden states of ``q``.
    q_weight: ``[D_q, V]`` output projection of ``q``.
    p_logits: ``p`` as ``[..., V]`` logits instead of ``p_hidden``/``p_weight``.
    q_logits: ``q`` as ``[..., V]`` logits instead of ``q_hidden``/``q_weight``.
    p_indices: ``p`` stored: ``[..., k]`` integer categories.
    p_log_probs: ``[..., k]`` their log-probabilities under the full ``p`` (``-inf``:
      padding).
    q_indices: ``q`` stored, as ``p_indices``.
    q_log_probs: ``q`` stored, as ``p_log_probs``.
    tail: with a stored side, ``"residual"``, ``"renormalize"`` or ``"truncate"``.
    temperature: :math:`T > 0`, dividing the dense sides' logits.
    soft_cap: :math:`c > 0` capping the dense sides' logits, or ``None``.
    where: boolean mask broadcastable against ``[..., V]``.
    {args}
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-token :math:`\mathrm{KL}(p\|q) \ge 0`, or the sum or mean.

  Example:
    >>> h = jnp.ones((1, 2)); w = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> round(float(linear_kl_divergence(h, w, q_hidden=h, q_weight=w)[0]), 6)
    0.0
    >>> teacher = jnp.array([[2.0, 0.0, 0.0]])
    >>> round(float(linear_kl_divergence(q_hidden=h, q_weight=w, p_logits=teacher)[0]), 6)
    0.098886
    >>> top1 = linear_kl_divergence(  # the teacher's top-1 and the rest, stored
    ...   p_indices=jnp.array([[0]]), p_log_probs=jax.nn.log_softmax(teacher)[:, :1],
    ...   q_hidden=h, q_weight=w)
    >>> round(float(top1[0]), 6)  # at most the full KL
    0.098886

  References:
    Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network" (2015);
    Gu et al., "MiniLLM: knowledge distillation of large language models", ICLR (2024);
    Wijmans et al., "Cut your losses in large-vocabulary language models", ICLR (2025).

  See also:
    :func:`jaxdiv.kl_divergence`, :func:`linear_cross_entropy`,
    :func:`linear_distillation_loss`, :func:`linear_jensen_shannon_divergence`.
  """
  _inputs.check_base(fn, base)
  sides = (p_hidden, p_weight, p_logits, p_indices, p_log_probs)
  sides += (q_hidden, q_weight, q_logits, q_indices, q_log_probs)
  return _pair_job(fn, "kl", sides, tail, temperature, soft_cap, where, reduction,
                   (chunk_size, token_chunk_size), base,
                   "jaxdiv.kl_divergence(p_logits=..., q_logits=...)")  # fmt: skip


@_doc
@fused(**_PAIR_ROLES, weight="unchecked")
def linear_jensen_shannon_divergence(
  fn,
  p_hidden: ArrayLike | None = None,
  p_weight: ArrayLike | None = None,
  q_hidden: ArrayLike | None = None,
  q_weight: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  p_indices: ArrayLike | None = None,
  p_log_probs: ArrayLike | None = None,
  q_indices: ArrayLike | None = None,
  q_log_probs: ArrayLike | None = None,
  tail: str = "residual",
  weight: ArrayLike = 0.5,
  temperature: ArrayLike = 1.0,
  soft_cap: ArrayLike | None = None,
  where: ArrayLike | None = None,
  reduction: str | None = None,
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
  KL(teacher‖student) and KL(student‖teacher) -- where this function gives 0:
  :func:`linear_distillation_loss` with ``divergence="gkd"`` follows TRL there.

  {sides}

  {head}

  The mixture is formed in log space,
  :math:`\log m = \mathrm{logaddexp}(\log w + \log p, \log(1-w) + \log q)`, from
  log-probabilities formed from shifted logits; the derivative in ``weight`` is
  :math:`\mathrm{KL}(p\|m) - \mathrm{KL}(q\|m)`. A stored side is compared on the cells of
  ``tail``, as in :func:`linear_kl_divergence`. {where} {blocks}

  Args:
    p_hidden, p_weight, q_hidden, q_weight, p_logits, q_logits: the two distributions,
      as in :func:`linear_kl_divergence`.
    p_indices, p_log_probs, q_indices, q_log_probs: a stored side, as in
      :func:`linear_kl_divergence`.
    tail: with a stored side, ``"residual"``, ``"renormalize"`` or ``"truncate"``.
    weight: the mixture weight :math:`w` of ``p`` (a scalar in :math:`[0, 1]`).
    temperature: :math:`T > 0`, dividing the dense sides' logits.
    soft_cap: :math:`c > 0` capping the dense sides' logits, or ``None``.
    where: boolean mask broadcastable against ``[..., V]``.
    {args}
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-token :math:`\mathrm{JS}_w(p\|q)`, or the sum or mean.

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
  _inputs.check_base(fn, base)
  what = "the mixture weight w; the projection matrices are `p_weight`/`q_weight`"
  mix = _mix_weight(fn, "weight", weight, what)
  sides = (p_hidden, p_weight, p_logits, p_indices, p_log_probs)
  sides += (q_hidden, q_weight, q_logits, q_indices, q_log_probs)
  return _pair_job(fn, "jsd", sides, tail, temperature, soft_cap, where, reduction,
                   (chunk_size, token_chunk_size), base,
                   "jaxdiv.jensen_shannon_divergence(p_logits=..., q_logits=..., weight=...)",
                   mix)  # fmt: skip


@_doc
@fused(**_PAIR_ROLES, alpha="unchecked")
def linear_skew_kl_divergence(
  fn,
  p_hidden: ArrayLike | None = None,
  p_weight: ArrayLike | None = None,
  q_hidden: ArrayLike | None = None,
  q_weight: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  p_indices: ArrayLike | None = None,
  p_log_probs: ArrayLike | None = None,
  q_indices: ArrayLike | None = None,
  q_log_probs: ArrayLike | None = None,
  tail: str = "residual",
  alpha: ArrayLike | None = None,
  temperature: ArrayLike = 1.0,
  soft_cap: ArrayLike | None = None,
  where: ArrayLike | None = None,
  reduction: str | None = None,
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

  Derivatives, with :math:`r = p/m`, :math:`R = \sum_v p_v r_v`, :math:`Q = \sum_v q_v r_v`:
  :math:`\partial/\partial z^p = p((\log p - \log m - \mathrm{SKL}) - \alpha(r - R))`,
  :math:`\partial/\partial z^q = (1-\alpha)\,q\,(Q - r)` and, in ``alpha``, :math:`Q - R`.
  A stored side is compared on the cells of ``tail``, as in :func:`linear_kl_divergence`.
  {where} {blocks}

  Args:
    p_hidden, p_weight, q_hidden, q_weight, p_logits, q_logits: the two distributions,
      as in :func:`linear_kl_divergence`.
    p_indices, p_log_probs, q_indices, q_log_probs: a stored side, as in
      :func:`linear_kl_divergence`.
    tail: with a stored side, ``"residual"``, ``"renormalize"`` or ``"truncate"``.
    alpha: :math:`\alpha \in [0, 1]` (required), a scalar.
    temperature: :math:`T > 0`, dividing the dense sides' logits.
    soft_cap: :math:`c > 0` capping the dense sides' logits, or ``None``.
    where: boolean mask broadcastable against ``[..., V]``.
    {args}
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-token :math:`\mathrm{SKL}_\alpha(p\|q)`, or the sum or mean.

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
  _inputs.check_base(fn, base)
  mix = _mix_weight(fn, "alpha", alpha, "the skew alpha in [0, 1]")
  sides = (p_hidden, p_weight, p_logits, p_indices, p_log_probs)
  sides += (q_hidden, q_weight, q_logits, q_indices, q_log_probs)
  return _pair_job(fn, "skew_kl", sides, tail, temperature, soft_cap, where, reduction,
                   (chunk_size, token_chunk_size), base,
                   "jaxdiv.skew_kl_divergence(p_logits=..., q_logits=..., alpha=...)",
                   mix)  # fmt: skip


@_doc
@fused(**{k: v for k, v in _PAIR_ROLES.items() if k != "base"})
def linear_total_variation_distance(
  fn,
  p_hidden: ArrayLike | None = None,
  p_weight: ArrayLike | None = None,
  q_hidden: ArrayLike | None = None,
  q_weight: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  p_indices: ArrayLike | None = None,
  p_log_probs: ArrayLike | None = None,
  q_indices: ArrayLike | None = None,
  q_log_probs: ArrayLike | None = None,
  tail: str = "residual",
  temperature: ArrayLike = 1.0,
  soft_cap: ArrayLike | None = None,
  where: ArrayLike | None = None,
  reduction: str | None = None,
  chunk_size: int | None = None,
  token_chunk_size: int | None = None,
) -> Array:
  r"""Total variation distance :math:`\tfrac12 \sum_v |p_v - q_v|` per token, without the logits.

  A metric with values in :math:`[0, 1]`, symmetric in ``p`` and ``q``, used as a
  distillation loss (Wen et al., 2023); the same value as
  :func:`jaxdiv.total_variation_distance` on materialised logits. The difference
  :math:`p_v - q_v` is formed from log-probabilities with ``expm1``, so it keeps its digits
  when both are near 1. The derivative of :math:`|x|` at 0 is taken as 0: with
  :math:`s_v = \mathrm{sign}(p_v - q_v)/2`, :math:`\partial/\partial z^p = p(s -
  \sum_v p_v s_v)` and :math:`\partial/\partial z^q = -q(s - \sum_v q_v s_v)`. Unit-free,
  so no ``base``. {sides}

  {head}

  A stored side is compared on the cells of ``tail``, as in :func:`linear_kl_divergence`.
  {where} {blocks}

  Args:
    p_hidden, p_weight, q_hidden, q_weight, p_logits, q_logits: the two distributions,
      as in :func:`linear_kl_divergence`.
    p_indices, p_log_probs, q_indices, q_log_probs: a stored side, as in
      :func:`linear_kl_divergence`.
    tail: with a stored side, ``"residual"``, ``"renormalize"`` or ``"truncate"``.
    temperature: :math:`T > 0`, dividing the dense sides' logits.
    soft_cap: :math:`c > 0` capping the dense sides' logits, or ``None``.
    where: boolean mask broadcastable against ``[..., V]``.
    {args}

  Returns:
    ``[...]`` per-token :math:`\delta(p, q) \in [0, 1]`, or the sum or mean.

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
  sides = (p_hidden, p_weight, p_logits, p_indices, p_log_probs)
  sides += (q_hidden, q_weight, q_logits, q_indices, q_log_probs)
  return _pair_job(fn, "tv", sides, tail, temperature, soft_cap, where, reduction,
                   (chunk_size, token_chunk_size), False,
                   "jaxdiv.total_variation_distance(p_logits=..., q_logits=...)")  # fmt: skip


DIVERGENCES = ("kl", "reverse_kl", "jsd", "gkd", "skew_kl", "tv")


@_doc
@fused(
  hidden="finite",
  weight="classifier",
  labels="labels",
  teacher_hidden="finite",
  teacher_weight="classifier",
  teacher_logits="logits",
  teacher_indices="indices",
  teacher_log_probs="log_probs",
  tail="unchecked",
  divergence="unchecked",
  beta="unchecked",
  alpha="unchecked",
  temperature="unchecked",
  scale_by_temperature_squared="unchecked",
  hard_weight="unchecked",
  soft_weight="unchecked",
  where="where",
  reduction="unchecked",
  chunk_size="unchecked",
  token_chunk_size="unchecked",
)
def linear_distillation_loss(
  fn,
  hidden: ArrayLike,
  weight: ArrayLike,
  labels: ArrayLike,
  *,
  teacher_hidden: ArrayLike | None = None,
  teacher_weight: ArrayLike | None = None,
  teacher_logits: ArrayLike | None = None,
  teacher_indices: ArrayLike | None = None,
  teacher_log_probs: ArrayLike | None = None,
  tail: str = "residual",
  divergence: str = "kl",
  beta: ArrayLike = 0.5,
  alpha: ArrayLike = 0.1,
  temperature: ArrayLike = 1.0,
  scale_by_temperature_squared: bool = False,
  hard_weight: ArrayLike = 0.0,
  soft_weight: ArrayLike = 1.0,
  where: ArrayLike | None = None,
  reduction: str | None = None,
  chunk_size: int | None = None,
  token_chunk_size: int | None = None,
) -> Array:
  r"""Hard labels plus a soft teacher for the student ``softmax(hidden @ weight)``, one sweep.

  .. math::
    \ell = w_h\, H(\mathbb{1}_y, s) + w_s\, [T^2]\, D\big(t_T, s_T\big),
    \qquad s_T = \mathrm{softmax}(h W / T),\ t_T = \mathrm{softmax}(z^t / T)

  per token, with the hard term at temperature 1 (``hard_weight`` :math:`w_h`, cross-entropy
  against ``labels``) and the soft term between the teacher and the student at temperature
  ``T`` (``soft_weight`` :math:`w_s`, times :math:`T^2` with
  ``scale_by_temperature_squared``, Hinton et al.'s convention, which keeps the soft
  gradients' size as ``T`` changes). Both terms read the same blocks of the student's
  logits, so the hard term costs an extra pass over each block, not another product.

  ``divergence`` picks :math:`D`, in the order the frameworks use:

  * ``"kl"``: :math:`\mathrm{KL}(t\|s)`, forward KL (Hinton; MaxText's
    :math:`\alpha T^2 \mathrm{KL} + (1 - \alpha)\,\mathrm{CE}` is ``soft_weight=alpha``,
    ``hard_weight=1 - alpha``, ``scale_by_temperature_squared=True``);
  * ``"reverse_kl"``: :math:`\mathrm{KL}(s\|t)` (MiniLLM, on-policy distillation);
  * ``"jsd"``:
    :math:`\mathrm{JS}_\beta(t\|s) = \beta\,\mathrm{KL}(t\|m) + (1-\beta)\,\mathrm{KL}(s\|m)`,
    :math:`m = \beta t + (1-\beta) s` (``beta`` the teacher's weight), the divergence
    itself: 0 at :math:`\beta \in \{0, 1\}`;
  * ``"gkd"``: TRL's ``generalized_jsd_loss`` and Liger's ``LigerFusedLinearJSDLoss``
    (since Liger-Kernel PR #609): ``"jsd"`` for :math:`0 < \beta < 1`, and at the ends
    their switch to forward KL (:math:`\beta = 0`) and reverse KL (:math:`\beta = 1`),
    which needs a concrete ``beta``;
  * ``"skew_kl"``: :math:`\mathrm{KL}(t\|\alpha t + (1-\alpha) s)` (DistiLLM, ``alpha``);
  * ``"tv"``: the total variation distance.

  The teacher is ``teacher_hidden``/``teacher_weight`` (its head), ``teacher_logits``, or
  stored categories ``teacher_indices`` with ``teacher_log_probs`` compared on the cells of
  ``tail`` (see :func:`linear_kl_divergence`; store the log-probabilities at the loss's
  temperature: they are used as given). A negative label (``-100``) ignores the token for
  both terms (Liger's ``ignore_index``); a label whose category ``where`` excludes makes the
  hard term 0, and the token still counts for the soft term (and in a ``"mean"``). {where}

  {blocks}

  Args:
    hidden: ``[..., D]`` the student's hidden states.
    weight: ``[D, V]`` the student's output projection.
    labels: ``[...]`` integer targets (negative: the token is ignored).
    teacher_hidden: ``[..., D_t]`` the teacher's hidden states (with ``teacher_weight``).
    teacher_weight: ``[D_t, V]`` the teacher's output projection.
    teacher_logits: ``[..., V]`` the teacher's logits instead of its head.
    teacher_indices: ``[..., k]`` stored teacher categories instead (with
      ``teacher_log_probs``).
    teacher_log_probs: ``[..., k]`` their log-probabilities (``-inf``: padding).
    tail: with a stored teacher, ``"residual"``, ``"renormalize"`` or ``"truncate"``.
    divergence: ``"kl"``, ``"reverse_kl"``, ``"jsd"``, ``"gkd"``, ``"skew_kl"`` or ``"tv"``.
    beta: the teacher's weight in ``"jsd"`` and ``"gkd"``, in :math:`[0, 1]`.
    alpha: the skew of ``"skew_kl"``, in :math:`[0, 1]`.
    temperature: :math:`T > 0` of the soft term (the hard term is at 1).
    scale_by_temperature_squared: multiply the soft term by :math:`T^2`.
    hard_weight: :math:`w_h \ge 0`, the hard term's weight (0: not computed).
    soft_weight: :math:`w_s \ge 0`, the soft term's weight.
    where: boolean mask broadcastable against ``[..., V]``.
    {args}

  Returns:
    ``[...]`` per-token loss (0 at ignored tokens), or the sum or mean over the tokens
    that count.

  Example:
    >>> h = jnp.array([[1.0, 0.0], [0.0, 1.0]]); w = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> t = jnp.array([[3.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    >>> loss = linear_distillation_loss(h, w, jnp.array([0, -100]), teacher_logits=t,
    ...                                 hard_weight=0.5, soft_weight=0.5)
    >>> kl = jaxdiv.kl_divergence(p_logits=t, q_logits=h @ w)
    >>> ce = jaxdiv.cross_entropy(labels=jnp.array([0, 0]), q_logits=h @ w)
    >>> [round(float(x), 6) for x in loss], round(float(0.5 * ce[0] + 0.5 * kl[0]), 6)
    ([0.146805, 0.0], 0.146805)

  References:
    Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network" (2015);
    Agarwal et al., "On-policy distillation of language models" (GKD), ICLR (2024);
    Ko et al., "DistiLLM", ICML (2024); Gu et al., "MiniLLM", ICLR (2024).

  See also:
    :func:`linear_kl_divergence`, :func:`linear_jensen_shannon_divergence`,
    :func:`linear_cross_entropy`, :doc:`/guides/migration`.
  """
  student = _head_side(fn, hidden, weight, "hidden", "weight")
  labels = _labels(fn, labels, student.batch)
  num_v = student.weight.shape[1]
  teacher = _side(
    fn, "teacher", teacher_hidden, teacher_weight, teacher_logits, teacher_indices,
    teacher_log_probs,
    names=("teacher_hidden", "teacher_weight", "teacher_logits", "teacher_indices",
           "teacher_log_probs"),
  )  # fmt: skip
  if teacher is None:
    raise ValueError(
      f"{fn}: the teacher is missing; give `teacher_hidden` and `teacher_weight`, "
      f"`teacher_logits`, or `teacher_indices` with `teacher_log_probs`."
    )
  teacher = _sparse_now(fn, "teacher", teacher, num_v)
  if teacher.batch != student.batch or _num_v(teacher) not in (None, num_v):
    raise ValueError(
      f"{fn}: the teacher must have the student's batch shape {student.batch} and vocabulary "
      f"size {num_v}; got batch {teacher.batch}, V={_num_v(teacher)}."
    )
  if divergence not in DIVERGENCES:
    raise ValueError(
      f"{fn}: `divergence` must be one of {', '.join(map(repr, DIVERGENCES))}; got {divergence!r}."
    )
  _inputs.check_tail(fn, tail)
  if not isinstance(scale_by_temperature_squared, bool):
    raise TypeError(f"{fn}: `scale_by_temperature_squared` must be True or False.")
  options = {}
  head = _head(fn, temperature, None, options)
  kind, mix = divergence, None
  # Both weights are checked whichever divergence uses them: a typo never passes silently.
  beta_mix = _mix_weight(fn, "beta", beta, "the teacher's weight in [0, 1]")
  alpha_mix = _mix_weight(fn, "alpha", alpha, "the skew alpha in [0, 1]")
  if divergence in ("jsd", "gkd"):
    mix = beta_mix
    if divergence == "gkd":
      _, bv = _inputs.scalar_option(fn, "beta", beta, low=0.0, high=1.0)
      if bv is None:
        raise TypeError(
          f"{fn}: divergence='gkd' needs a concrete `beta` (a Python number): at 0 and 1 it "
          f"switches to another divergence. Use divergence='jsd' for a traced `beta`."
        )
      kind = "kl" if bv == 0.0 else "reverse_kl" if bv == 1.0 else "jsd"
  elif divergence == "skew_kl":
    mix = alpha_mix
  reverse = kind == "reverse_kl"
  sides = {"q": student, "p": teacher} if not reverse else {"p": student, "q": teacher}
  student_side = "p" if reverse else "q"
  ws, wsv = _inputs.scalar_option(fn, "soft_weight", soft_weight, low=0.0)
  wh, whv = _inputs.scalar_option(fn, "hard_weight", hard_weight, low=0.0)
  scale = jnp.asarray(ws)
  if scale_by_temperature_squared:
    scale = scale * jnp.asarray(temperature) ** 2
  options["soft_weight"] = scale
  diff = ()
  if mix is not None and kind != "kl" and kind != "reverse_kl":
    options["mix"], diff = mix, ("mix",)
  pair_kind = "kl" if kind in ("kl", "reverse_kl") else kind
  comps = []
  if wsv != 0.0:
    soft = _divergence_term(fn, pair_kind, sides, tail, head, "mix" if "mix" in options else None)
    comps.append(soft._replace(weight="soft_weight"))
  if whv != 0.0:
    options["hard_weight"] = jnp.asarray(wh)
    comps.append(_comp(L.LabelsCE, (student_side,), weight="hard_weight"))
  if not comps:
    raise ValueError(f"{fn}: `hard_weight` and `soft_weight` are both 0: there is no loss.")
  rows = {"labels": labels, "row_mask": labels >= 0}  # an ignored token: both terms 0
  instead = "jaxdiv.kl_divergence / jaxdiv.cross_entropy on materialised logits"
  return _job(fn, comps, sides, student.batch, num_v, rows, where, reduction,
              (chunk_size, token_chunk_size), False, instead, options, diff)  # fmt: skip
