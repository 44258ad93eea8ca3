r"""Offline distillation from stored teacher outputs: full logits, top-k, sampled tokens, labels.

    python -m experiments.sparse_distill --out docs/results --figures docs/figures

The corpus, the model and the teacher are those of :mod:`experiments.distill` (the Python
standard library's top-level modules, tokenised; a context-window MLP whose logits are
``hidden @ head``; a teacher trained with ``jaxdiv.linear_cross_entropy``). The teacher's
outputs at each training position are then "stored" in one of these forms, and a student
(the same initialisation, optimiser and batches for every form, per seed) is distilled
from what was stored, always with a fused loss (the student's logits are never formed):

* ``full``: the teacher's whole distribution, ``jaxdiv.linear_kl_divergence`` with
  ``p_hidden``/``p_weight`` (stored: ``2 V`` bytes per token, bfloat16 logits);
* ``top{k}_{tail}``: the teacher's ``k`` most likely tokens with their log-probabilities
  (``jax.lax.top_k`` of ``log_softmax``), compared under ``tail`` = ``residual``,
  ``renormalize`` or ``truncate`` (``6 k`` bytes: a 4-byte index and a 2-byte bfloat16
  log-probability per slot);
* ``sampled{S}``: ``S`` draws from the teacher, kept as their distinct ids with their
  frequencies ``count / S`` as the stored probabilities (listed mass 1); ``6`` bytes per
  distinct id (the padding of the fixed ``S`` slots is not stored);
* ``tempered{S}``: ``S`` draws from the teacher at temperature ``tau``
  (``q_tau = softmax(z / tau)``), each distinct id weighted by ``(count / S) p(x) / q_tau(x)``,
  the weights normalised to sum 1 (self-normalised importance sampling; Anshumann et al.,
  "Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs", ACL 2025); 6 bytes
  per distinct id;
* ``labels``: no teacher, cross-entropy on the real next token (``4`` bytes, an int32 id).

Sampled and tempered students use ``tail="residual"`` (with a listed mass of 1 it equals
``"truncate"``). The draws of every step come from a key folded from the seed, the form and
the step, so a rerun draws the same tokens. The stored log-probabilities are kept in float32
(the byte counts assume bfloat16; ``bfloat16`` in the results measures what that rounding
changes). The teacher has distill.py's default sizes but its own draws (it is not the
teacher of ``distill.json``); the students take 300 steps (distill.py: 200). All students of
a seed train in step, so that each batch's teacher logits and top-k are formed once; every
stored form is padded to one width (``-inf`` slots), so that one compiled loss per tail
serves every k and S.

Every student is evaluated once, after its last step, on ``eval_tokens`` held-out
positions: cross-entropy on the real next token, KL(teacher || student) (full), top-1
agreement with the teacher, and the expected calibration error (``ece_bins`` equal-width
bins of the student's confidence ``max_v q_v`` against whether its argmax is the real next
token; ECE = sum over bins of |accuracy - confidence| weighted by the bin's share).

The gradient study fixes one student (the labels-only student of the first seed, trained)
and ``grad_tokens`` training positions, and compares the gradient of the mean loss with
respect to the student's head with the full teacher's: for each top-k form, its distance;
for each sampled form, the mean of ``grad_draws`` independent draws, its distance, its
standard error, and z-scores along the full gradient's direction and ``grad_directions``
random directions (unbiased: every ``|z|`` below ``z_max``).

Results go to ``OUT/sparse_distill.json`` (sorted keys):

* ``corpus`` (as in ``distill.json``), ``teacher`` (its held-out metrics and CE curve);
* ``students``: name -> ``form`` (``kind``, ``size``, ``tail``, ``tau``),
  ``bytes_per_token`` (and ``padded_bytes_per_token``, ``distinct_per_token`` for the
  sampled forms: the mean over every training position of every seed), one record per
  metric ``{"seeds": [...], "mean", "std", "sem"}`` (``heldout_ce``, ``forward_kl``,
  ``top1_agreement``, ``ece``, ``confidence``, ``accuracy``, ``train_loss``: the last
  step's batch loss), and ``reliability`` (the first seed's bins: ``count``,
  ``confidence``, ``accuracy``);
* ``gradient``: the fixed student, ``full_norm`` and one record per form (``distance`` =
  |mean - full| / |full|, ``noise_floor`` = its standard error, ``single_draw`` = the RMS
  distance of one draw from the mean, ``bias_ratio`` = |mean - full|^2 / (trace Cov / R),
  about 1 when unbiased, ``z``, ``max_abs_z``);
* ``bfloat16``: per stored form, the share of rows that rounding the stored
  log-probabilities to bfloat16 makes invalid (NaN) and the mean change of the loss;
* ``checks`` (the experiment's own correctness checks; ``main`` returns 1 if one fails),
  ``claims`` (the paper's claims, each with its figures and ``reproduced``), ``config``,
  ``versions``, ``platform``. Every number is the same on a rerun on the same machine.

Figures: ``FIGURES/sparse_distill_{tradeoff,bias,reliability}.{png,pdf}``. ``--quick``
runs a tiny configuration (a smoke test); ``--plot-only`` redraws the figures from an
existing results file.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import jaxdiv
from experiments import _io
from experiments import distill as _distill

NAME = "sparse_distill"
TAILS = ("residual", "renormalize", "truncate")
INDEX_BYTES, LOG_PROB_BYTES, LOGIT_BYTES, LABEL_BYTES = 4, 2, 2, 4
METRICS = ("heldout_ce", "forward_kl", "top1_agreement", "ece", "confidence", "accuracy")


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0  # the one seed behind every random draw
  num_seeds: int = 3  # student replicates: init, batches and draws from one child of `seed` each
  file_stride: int = 1  # the corpus of experiments.distill
  heldout_every: int = 10
  vocab_size: int = 8192
  context: int = 8
  teacher_embed: int = 64
  teacher_hidden: int = 256
  teacher_width: int = 128
  student_embed: int = 32
  student_hidden: int = 128
  student_width: int = 64
  batch_size: int = 128
  teacher_steps: int = 800
  student_steps: int = 300
  learning_rate: float = 3e-3
  eval_every: int = 100  # teacher evaluations and student progress lines
  eval_tokens: int = 8192  # held-out positions of the final evaluation
  eval_chunk: int = 1024
  chunk_size: int | None = None  # vocabulary block of the fused losses (None: the default)
  top_k: str = "1,4,16,64"  # the k of the top-k forms (comma-separated)
  samples: str = "1,4,16,64"  # the draws S of the sampled and tempered forms
  tau: float = 2.0  # temperature of the tempered proposal
  budget: int = 16  # the k and S at which the paper's claims are tested ("about a dozen")
  ece_bins: int = 15
  grad_tokens: int = 256  # training positions of the gradient study
  grad_draws: int = 256  # independent draws averaged per sampled form
  grad_directions: int = 16  # random directions of the z-scores (plus the full gradient's)
  z_max: float = 4.5  # unbiased: every |z| below this

  def __post_init__(self):
    positive = (
      "num_seeds", "file_stride", "context", "teacher_embed", "teacher_hidden",
      "teacher_width", "student_embed", "student_hidden", "student_width", "batch_size",
      "teacher_steps", "student_steps", "eval_every", "eval_tokens", "eval_chunk",
      "chunk_size", "budget", "ece_bins", "grad_tokens", "grad_directions",
    )  # fmt: skip
    for name in positive:
      if getattr(self, name) is not None and getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.heldout_every < 2:
      raise ValueError(f"heldout_every must be >= 2, got {self.heldout_every}")
    if self.grad_draws < 2:
      raise ValueError(f"grad_draws must be >= 2, got {self.grad_draws}")
    for name in ("top_k", "samples"):
      try:
        sizes = _sizes(getattr(self, name))
      except ValueError:
        raise ValueError(
          f"{name} must be comma-separated integers, got {getattr(self, name)!r}"
        ) from None
      if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise ValueError(
          f"{name} must list distinct positive integers, got {getattr(self, name)!r}"
        )
      if self.budget not in sizes:
        raise ValueError(f"budget ({self.budget}) must be one of {name} ({getattr(self, name)})")
    if max(_sizes(self.top_k)) >= self.vocab_size:
      raise ValueError(f"every top_k must be < vocab_size ({self.vocab_size})")
    if self.teacher_steps % self.eval_every:
      raise ValueError(
        f"teacher_steps ({self.teacher_steps}) must be a multiple of eval_every ({self.eval_every})"
      )
    if self.eval_tokens % self.eval_chunk:
      raise ValueError(
        f"eval_tokens ({self.eval_tokens}) must be a multiple of eval_chunk ({self.eval_chunk})"
      )
    for name in ("learning_rate", "z_max"):
      if not getattr(self, name) > 0:
        raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
    if not self.tau > 0 or self.tau == 1:
      raise ValueError(f"tau must be > 0 and not 1 (tau = 1 is the sampled form), got {self.tau}")


def _sizes(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(",") if x.strip())


QUICK = dict(
  num_seeds=2,
  file_stride=16,
  vocab_size=512,
  teacher_embed=16,
  teacher_hidden=64,
  teacher_width=32,
  student_embed=8,
  student_hidden=32,
  student_width=16,
  batch_size=64,
  teacher_steps=40,
  student_steps=20,
  eval_every=10,
  eval_tokens=256,
  eval_chunk=128,
  chunk_size=128,
  top_k="16",
  samples="16",
  grad_tokens=64,
  grad_draws=64,
  grad_directions=4,
)

HELP = {
  "seed": "the one seed behind every random draw",
  "num_seeds": "student replicates (each its own init, batches and draws)",
  "file_stride": "every file_stride-th top-level stdlib module, in sorted order",
  "heldout_every": "every heldout_every-th selected file is held out",
  "vocab_size": "<bos>, <unk> and the most frequent training tokens",
  "context": "previous tokens the model reads",
  "teacher_embed": "teacher embedding width",
  "teacher_hidden": "teacher ReLU layer width",
  "teacher_width": "teacher hidden-state width (fed to the head)",
  "student_embed": "student embedding width",
  "student_hidden": "student ReLU layer width",
  "student_width": "student hidden-state width (fed to the head)",
  "batch_size": "positions per step",
  "teacher_steps": "Adam steps of the teacher",
  "student_steps": "Adam steps of every student",
  "learning_rate": "Adam's rate, for the teacher and every student",
  "eval_every": "steps between teacher evaluations and progress lines",
  "eval_tokens": "held-out positions of the final evaluation",
  "eval_chunk": "held-out positions evaluated at once",
  "chunk_size": "vocabulary block of the fused losses",
  "top_k": "comma-separated k of the top-k forms",
  "samples": "comma-separated number of draws S of the sampled forms",
  "tau": "temperature of the tempered (importance-sampled) proposal",
  "budget": "the k and S at which the paper's claims are tested",
  "ece_bins": "equal-width confidence bins of the calibration error",
  "grad_tokens": "training positions of the gradient study",
  "grad_draws": "independent draws averaged per sampled form in the gradient study",
  "grad_directions": "random directions of the gradient z-scores",
  "z_max": "the unbiasedness check: every |z| below this",
}


# ---------------------------------------------------------------------------
# Stored forms of the teacher
# ---------------------------------------------------------------------------


class Form(NamedTuple):
  """How the teacher is stored: ``kind`` full / labels / topk / sampled; ``size`` k or S."""

  kind: str
  size: int = 0
  tail: str = "residual"
  tau: float = 1.0

  @property
  def stored(self) -> bool:
    return self.kind in ("topk", "sampled")


def forms(config: Config) -> dict[str, Form]:
  """Every form of the study (the stored ones, full and labels), by name, in table order."""
  out = {"full": Form("full"), "labels": Form("labels")}
  for tail in TAILS:
    for k in _sizes(config.top_k):
      out[f"top{k}_{tail}"] = Form("topk", k, tail)
  for s in _sizes(config.samples):
    out[f"sampled{s}"] = Form("sampled", s)
  for s in _sizes(config.samples):
    out[f"tempered{s}"] = Form("sampled", s, "residual", config.tau)
  return out


def sampled_tokens(key, teacher_logits, num_samples: int, temperature: float = 1.0):
  r"""``num_samples`` draws per row from the teacher, stored as distinct ids with weights.

  Draws ``x_1..x_S`` from :math:`q_\tau = \mathrm{softmax}(z / \tau)` (inverse CDF), keeps
  each distinct id once and gives it the weight :math:`w(x) \propto (c_x / S)\,p(x) /
  q_\tau(x)` (:math:`c_x` its count), normalised to sum 1; at :math:`\tau = 1` that is the
  frequency :math:`c_x / S`, an unbiased estimate of :math:`p(x)`. Returns ``indices``
  ``[..., S]`` (int32) and ``log_probs`` ``[..., S]`` (float32): the distinct ids first in
  increasing order, each with its log-weight, then padding (index 0, log-weight ``-inf``).
  """
  z = jnp.asarray(teacher_logits, jnp.float32)
  log_p = jax.nn.log_softmax(z)
  log_q = log_p if temperature == 1 else jax.nn.log_softmax(z / temperature)
  cdf = jnp.cumsum(jnp.exp(log_q), axis=-1)
  u = jax.random.uniform(key, (*z.shape[:-1], num_samples), jnp.float32) * cdf[..., -1:]
  search = functools.partial(jnp.searchsorted, side="right")
  for _ in range(z.ndim - 1):
    search = jax.vmap(search)
  draws = jnp.minimum(search(cdf, u), z.shape[-1] - 1).astype(jnp.int32)
  draws = jnp.sort(draws, axis=-1)
  first = jnp.concatenate(
    [jnp.ones((*draws.shape[:-1], 1), bool), draws[..., 1:] != draws[..., :-1]], axis=-1
  )
  counts = jnp.sum(draws[..., :, None] == draws[..., None, :], axis=-1).astype(jnp.float32)
  log_w = jnp.log(counts) - np.log(num_samples).astype(np.float32)
  if temperature != 1:
    ratio = jnp.take_along_axis(log_p - log_q, draws, axis=-1)
    log_w = jnp.where(first, log_w + ratio, -jnp.inf)
    log_w = log_w - jax.nn.logsumexp(log_w, axis=-1, keepdims=True)
  # the distinct ids first: a stable sort on "not first" keeps them in increasing order
  order = jnp.argsort(~first, axis=-1, stable=True)
  first = jnp.take_along_axis(first, order, axis=-1)
  indices = jnp.where(first, jnp.take_along_axis(draws, order, axis=-1), 0)
  log_probs = jnp.where(first, jnp.take_along_axis(log_w, order, axis=-1), -jnp.inf)
  return indices, log_probs


def store(form: Form, key, teacher_logits):
  """The stored teacher of ``form``: ``(indices, log_probs)``, or ``None`` for full/labels."""
  if form.kind == "topk":
    log_probs, indices = lax.top_k(jax.nn.log_softmax(jnp.asarray(teacher_logits)), form.size)
    return indices.astype(jnp.int32), log_probs.astype(jnp.float32)
  if form.kind == "sampled":
    return sampled_tokens(key, teacher_logits, form.size, form.tau)
  return None


def _pad(indices, log_probs, width: int):
  """A stored teacher widened to ``width`` slots with padding (index 0, log-prob -inf): every
  form then has one shape, and one compiled loss serves them all."""
  extra = width - indices.shape[-1]
  pad = [(0, 0)] * (indices.ndim - 1) + [(0, extra)]
  return jnp.pad(indices, pad), jnp.pad(log_probs, pad, constant_values=-jnp.inf)


def _width(config: Config) -> int:
  return max(_sizes(config.top_k) + _sizes(config.samples))


@functools.partial(jax.jit, static_argnames=("k", "width"))
def _teacher_batch(teacher, ctx, *, k, width):
  """The teacher's logits at one batch and its top-``k`` ids and log-probabilities, padded to
  ``width`` (every top-k form is a prefix of these: ``lax.top_k`` sorts)."""
  zt = _distill._hidden(teacher, ctx) @ teacher["head"]
  return zt, _pad(*store(Form("topk", k), None, zt), width)


@functools.partial(jax.jit, static_argnames=("k",))
def _prefix(top, *, k):
  """The top-``k`` form from the padded top-``K`` one: the slots past ``k`` become padding."""
  indices, log_probs = top
  return indices, jnp.where(jnp.arange(log_probs.shape[-1]) < k, log_probs, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("form", "width"))
def _sampled_batch(form, key, zt, *, width):
  """The sampled form at one batch, padded to ``width``, and its listed ids per row."""
  indices, log_probs = store(form, key, zt)
  return _pad(indices, log_probs, width), jnp.sum(log_probs > -jnp.inf, axis=-1)


def bytes_per_token(form: Form, vocab_size: int, listed: float | None = None) -> float:
  """Stored bytes per position: 2 V (bf16 logits), 4 (an int32 label), 6 per listed slot."""
  if form.kind == "full":
    return float(LOGIT_BYTES * vocab_size)
  if form.kind == "labels":
    return float(LABEL_BYTES)
  slots = form.size if listed is None else listed
  return float((INDEX_BYTES + LOG_PROB_BYTES) * slots)


# ---------------------------------------------------------------------------
# Losses and training
# ---------------------------------------------------------------------------


def _loss(form: Form, head, hs, teacher, ctx, y, stored, chunk):
  """The batch-mean distillation loss of ``form`` at the student's head ``head``."""
  kw = {"reduction": "mean", "chunk_size": chunk}
  if form.kind == "labels":
    return jaxdiv.linear_cross_entropy(hs, head, y, **kw)
  if form.kind == "full":
    ht = lax.stop_gradient(_distill._hidden(teacher, ctx))
    return jaxdiv.linear_kl_divergence(ht, teacher["head"], hs, head, **kw)
  indices, log_probs = stored
  return jaxdiv.linear_kl_divergence(
    p_indices=indices, p_log_probs=log_probs, q_hidden=hs, q_weight=head, tail=form.tail, **kw
  )


def _student_loss(form, student, teacher, ctx, y, stored, chunk):
  return _loss(
    form, student["head"], _distill._hidden(student, ctx), teacher, ctx, y, stored, chunk
  )


@functools.partial(jax.jit, static_argnames=("form", "opt", "chunk"))
def _step(form, opt, chunk, carry, teacher, ctx, y, stored):
  params, state = carry
  loss, grads = jax.value_and_grad(_student_loss, argnums=1)(
    form, params, teacher, ctx, y, stored, chunk
  )
  updates, state = opt.update(grads, state, params)
  return (optax.apply_updates(params, updates), state), loss


def _train_students(names, params, teacher, train, batches, key, config, progress, label):
  """Distil one student per form of ``names``, all from ``params`` and in step with one
  another, so that each batch's teacher logits and top-k are formed once for all forms.

  Returns, per form, the parameters, the last batch loss and the mean number of listed ids
  per position (sampled forms)."""
  opt = _distill._optimizer(config.learning_rate)
  params = jax.device_put(params)
  carries = dict.fromkeys(names, (params, _distill._opt_init(params, opt=opt)))
  keys = {n: jax.random.fold_in(key, i) for i, n in enumerate(names)}
  listed = {n: jnp.zeros((), jnp.float32) for n, f in names.items() if f.kind == "sampled"}
  losses = {}
  width, k_max = _width(config), max(_sizes(config.top_k))
  for t, pos in enumerate(batches):
    ctx, y = _distill._window(train["stream"], pos, config.context)
    zt, top = _teacher_batch(teacher, ctx, k=k_max, width=width)
    for name, form in names.items():
      stored = None
      if form.kind == "topk":
        stored = _prefix(top, k=form.size)
      elif form.kind == "sampled":
        stored, n = _sampled_batch(form, jax.random.fold_in(keys[name], t), zt, width=width)
        listed[name] = listed[name] + jnp.mean(n.astype(jnp.float32))
      loss_form = Form(form.kind, tail=form.tail)  # the loss depends on the kind and tail only
      carries[name], losses[name] = _step(
        loss_form, opt, config.chunk_size, carries[name], teacher, ctx, y, stored
      )
    if (t + 1) % config.eval_every == 0 or t + 1 == len(batches):
      worst = max(names, key=lambda n: float(losses[n]))
      progress(
        f"{label}: step {t + 1}/{len(batches)}  loss full {float(losses['full']):.4f}, "
        f"labels {float(losses['labels']):.4f}, largest {worst} {float(losses[worst]):.4f}"
      )
  return {
    n: (carries[n][0], float(losses[n]), float(listed[n]) / len(batches) if n in listed else None)
    for n in names
  }


# ---------------------------------------------------------------------------
# Evaluation: CE, KL to the teacher, top-1 agreement, calibration
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("rows", "bins"))
def _evaluate(student, teacher, ctx, y, *, rows, bins):
  """Held-out means and the calibration bins (sums of count, confidence, accuracy)."""

  def block(args):
    c, yy = args
    zs = _distill._hidden(student, c) @ student["head"]
    zt = _distill._hidden(teacher, c) @ teacher["head"]
    log_q = jax.nn.log_softmax(zs)
    conf = jnp.exp(jnp.max(log_q, axis=-1))
    pred = jnp.argmax(zs, axis=-1)
    correct = (pred == yy).astype(jnp.float32)
    onehot = jax.nn.one_hot(jnp.clip(jnp.floor(conf * bins).astype(jnp.int32), 0, bins - 1), bins)
    return {
      "heldout_ce": jnp.sum(jaxdiv.cross_entropy(labels=yy, q_logits=zs)),
      "forward_kl": jnp.sum(jaxdiv.kl_divergence(p_logits=zt, q_logits=zs)),
      "top1_agreement": jnp.sum((pred == jnp.argmax(zt, axis=-1)).astype(jnp.float32)),
      "confidence": jnp.sum(conf),
      "accuracy": jnp.sum(correct),
      "bin_count": jnp.sum(onehot, axis=0),
      "bin_confidence": jnp.sum(onehot * conf[:, None], axis=0),
      "bin_accuracy": jnp.sum(onehot * correct[:, None], axis=0),
    }

  blocks = (ctx.reshape(-1, rows, ctx.shape[-1]), y.reshape(-1, rows))
  return jax.tree.map(lambda x: jnp.sum(x, axis=0), lax.map(block, blocks))


def _metrics(sums, n: int) -> tuple[dict, dict]:
  """Means over ``n`` positions, the ECE, and the reliability bins."""
  s = {k: np.asarray(v, np.float64) for k, v in sums.items()}
  out = {k: float(s[k] / n) for k in METRICS if k != "ece"}
  out["ece"] = float(np.sum(np.abs(s["bin_accuracy"] - s["bin_confidence"])) / n)
  count = s["bin_count"]
  safe = np.maximum(count, 1)
  bins = {
    "count": count.astype(int).tolist(),
    "confidence": (s["bin_confidence"] / safe).tolist(),
    "accuracy": (s["bin_accuracy"] / safe).tolist(),
  }
  return out, bins


def _summary(values) -> dict:
  v = np.asarray(values, np.float64)
  std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
  return {"seeds": v.tolist(), "mean": float(np.mean(v)), "std": std, "sem": std / np.sqrt(len(v))}


# ---------------------------------------------------------------------------
# The gradient study and the checks of the stored forms, at a fixed student
# ---------------------------------------------------------------------------


def _head_grad(form, head, hs, teacher, ctx, stored, chunk):
  return jax.grad(_loss, argnums=1)(form, head, hs, teacher, ctx, None, stored, chunk)


@functools.partial(jax.jit, static_argnames=("chunk",))
def _full_grad(head, hs, teacher, ctx, *, chunk):
  return _head_grad(Form("full"), head, hs, teacher, ctx, None, chunk)


@functools.partial(jax.jit, static_argnames=("form", "width"))
def _draws(form, keys, zt, *, width):
  """The stored teacher of every key, padded: ``[draws, rows, width]``."""
  return lax.map(lambda key: _pad(*store(form, key, zt), width), keys)


@functools.partial(jax.jit, static_argnames=("chunk",))
def _grad_draws(head, hs, stored, full, directions, *, chunk):
  """Sums of ``g - full`` and ``(g - full)^2`` over the stored draws, and each one's
  projections on ``directions``."""
  form = Form("sampled")

  def body(acc, st):
    d = _head_grad(form, head, hs, None, None, st, chunk) - full
    return (acc[0] + d, acc[1] + d * d), jnp.tensordot(directions, d, axes=d.ndim)

  zero = jnp.zeros_like(full)
  (s1, s2), proj = lax.scan(body, (zero, zero), stored)
  return s1, s2, proj


@functools.partial(jax.jit, static_argnames=("chunk",))
def _labels_grad(head, hs, y, *, chunk):
  return jax.grad(_loss, argnums=1)(Form("labels"), head, hs, None, None, y, None, chunk)


@functools.partial(jax.jit, static_argnames=("chunk",))
def _stored_losses(indices, log_probs, head, hs, *, chunk):
  """Per tail: the per-row fused and core KL of a stored teacher, the fused mean's head gradient."""
  out = {}
  for tail in TAILS:
    kw = {"p_indices": indices, "p_log_probs": log_probs, "tail": tail}

    def mean_loss(w, kw=kw):
      return jaxdiv.linear_kl_divergence(
        q_hidden=hs, q_weight=w, reduction="mean", chunk_size=chunk, **kw
      )

    fused = jaxdiv.linear_kl_divergence(q_hidden=hs, q_weight=head, chunk_size=chunk, **kw)
    core = jaxdiv.kl_divergence(q_logits=hs @ head, **kw)
    out[tail] = (fused, core, jax.grad(mean_loss)(head))
  return out


def _distance(g, full, norm) -> dict:
  """``|g - full| / |full|`` and the cosine of ``g`` and ``full`` (None where ``g`` is 0)."""
  g_norm = float(np.linalg.norm(g))
  cos = float(np.vdot(g, full) / (g_norm * norm)) if g_norm > 0 else None
  return {"distance": float(np.linalg.norm(g - full)) / norm, "cosine": cos}


def _study(student, teacher, ctx, y, zt, config, key, progress) -> dict:
  """Each stored form's head gradient against the full teacher's, and the stored forms'
  checks: valid sampled rows, the tails at a listed mass of 1, the residual bounds, fused =
  core, and what bfloat16 log-probabilities change. Every stored form is padded to one width,
  so that one compilation serves them all."""
  head, hs = student["head"], _distill._hidden(student, ctx)
  chunk = config.chunk_size
  width = _width(config)
  full = _full_grad(head, hs, teacher, ctx, chunk=chunk)
  norm = float(jnp.linalg.norm(full))
  g = np.asarray(_labels_grad(head, hs, y, chunk=chunk), np.float64)
  grads = {"labels": _distance(g, np.asarray(full, np.float64), norm)}
  u = jax.random.normal(jax.random.fold_in(key, 0), (config.grad_directions, *full.shape))
  directions = jnp.concatenate([(full / norm)[None], u.astype(full.dtype)], axis=0)
  directions = (
    directions / jnp.linalg.norm(directions.reshape(len(directions), -1), axis=-1)[:, None, None]
  )
  log_q = jax.nn.log_softmax(hs @ head)
  full_kl = np.asarray(jaxdiv.kl_divergence(p_logits=zt, q_logits=hs @ head), np.float64)
  r = config.grad_draws
  valid = {"max_mass_error": 0.0, "duplicates": 0, "invalid_ids": 0}
  tails = {"max_residual_truncate_diff": 0.0, "max_renormalize_identity_error": 0.0}
  bounds = {"max_excess_over_full_kl": -np.inf, "min_residual": np.inf, "min_renormalize": np.inf}
  fused_core, bf16 = 0.0, {}
  for i, (name, form) in enumerate(forms(config).items()):
    if not form.stored:
      continue
    indices, log_probs = _pad(*store(form, jax.random.fold_in(key, 1 + i), zt), width)
    res = _stored_losses(indices, log_probs, head, hs, chunk=chunk)
    res = jax.tree.map(lambda x: np.asarray(x, np.float64), res)
    for fused, core, _ in res.values():
      fused_core = max(fused_core, float(np.max(np.abs(fused - core))))
    listed = np.asarray(log_probs) > -np.inf
    if form.kind == "topk":
      grads[name] = _distance(res[form.tail][2], np.asarray(full, np.float64), norm)
      if form.tail == "residual":
        excess = float(np.max((res["residual"][0] - full_kl) / (1 + full_kl)))
        bounds["max_excess_over_full_kl"] = max(bounds["max_excess_over_full_kl"], excess)
        bounds["min_residual"] = min(bounds["min_residual"], float(np.min(res["residual"][0])))
      if form.tail == "renormalize":
        low = float(np.min(res["renormalize"][0]))
        bounds["min_renormalize"] = min(bounds["min_renormalize"], low)
    else:
      mass = np.sum(np.exp(np.asarray(log_probs, np.float64)), axis=-1)
      valid["max_mass_error"] = max(valid["max_mass_error"], float(np.max(np.abs(mass - 1))))
      for row, ok in zip(np.asarray(indices), listed, strict=True):
        ids = row[ok]
        valid["duplicates"] += int(len(ids) - len(np.unique(ids)))
        valid["invalid_ids"] += int(np.sum((ids < 0) | (ids >= config.vocab_size)))
      (l_res, _, g_res), (l_ren, _, _), (l_tru, _, g_tru) = (res[t] for t in TAILS)
      diff = max(float(np.max(np.abs(l_res - l_tru))), float(np.max(np.abs(g_res - g_tru))))
      tails["max_residual_truncate_diff"] = max(tails["max_residual_truncate_diff"], diff)
      # renormalize also restricts the student to the listed ids: KL(p || q_L / q(L))
      at = jnp.where(listed, jnp.take_along_axis(log_q, indices, axis=-1), -jnp.inf)
      q_listed = np.asarray(jax.nn.logsumexp(at, axis=-1), np.float64)
      err = float(np.max(np.abs(l_ren - (l_res + q_listed))))
      tails["max_renormalize_identity_error"] = max(tails["max_renormalize_identity_error"], err)
      keys = jax.random.split(jax.random.fold_in(key, 1000 + i), r)
      draws = _draws(form, keys, zt, width=width)
      s1, s2, proj = _grad_draws(head, hs, draws, full, directions, chunk=chunk)
      s1, s2, proj = (np.asarray(x, np.float64) for x in (s1, s2, proj))
      bias = s1 / r
      trace = float(np.sum(np.maximum(s2 - r * bias**2, 0.0)) / (r - 1))
      sq = float(np.sum(bias**2))
      z = np.mean(proj, axis=0) / (np.std(proj, axis=0, ddof=1) / np.sqrt(r))
      grads[name] = {
        "distance": float(np.sqrt(sq)) / norm,
        "noise_floor": float(np.sqrt(trace / r)) / norm,
        "single_draw": float(np.sqrt(trace)) / norm,
        "bias_ratio": sq / (trace / r),
        "z": z.tolist(),
        "max_abs_z": float(np.max(np.abs(z))),
      }
      progress(
        f"gradient {name}: |mean - full| / |full| {grads[name]['distance']:.4f} "
        f"(standard error {grads[name]['noise_floor']:.4f}), max |z| {grads[name]['max_abs_z']:.2f}"
      )
    rounded = _stored_losses(indices, log_probs.astype(jnp.bfloat16), head, hs, chunk=chunk)
    rounded = np.asarray(rounded[form.tail][0], np.float64)
    ok = np.isfinite(rounded)
    ref = res[form.tail][0]
    bf16[name] = {
      "invalid_rows": float(np.mean(~ok)),
      "mean_abs_change": float(np.mean(np.abs(rounded[ok] - ref[ok]))) if ok.any() else None,
      "mean_loss": float(np.mean(ref)),
    }
  checks = {"valid": valid, "tails": tails, "bounds": bounds, "fused_core": fused_core}
  return {"full_norm": norm, "forms": grads}, checks, bf16


# ---------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------


def run(config: Config, progress=None) -> dict:
  """Corpus, teacher, one student per stored form and seed, the gradient study; pure."""
  progress = progress or (lambda msg: None)
  corpus = _distill._corpus(config)
  info = corpus["info"]
  progress(
    f"corpus: {info['num_files']} files, {info['num_tokens']} tokens, "
    f"sha256 {info['sha256'][:12]}, V = {config.vocab_size}"
  )
  train, heldout = corpus["arrays"]["train"], corpus["arrays"]["heldout"]
  if len(heldout["targets"]) < config.eval_tokens:
    raise ValueError(
      f"eval_tokens {config.eval_tokens} exceeds the {len(heldout['targets'])} held-out tokens"
    )
  rng = np.random.default_rng(config.seed)
  eval_pos = np.sort(rng.choice(heldout["targets"], config.eval_tokens, replace=False))
  eval_ctx, eval_y = _distill._window(heldout["stream"], eval_pos, config.context)
  grad_pos = train["targets"][rng.integers(0, len(train["targets"]), config.grad_tokens)]
  grad_ctx, grad_y = _distill._window(train["stream"], grad_pos, config.context)
  v, c = config.vocab_size, config.context
  t_init = _distill._init(
    rng, v, c, config.teacher_embed, config.teacher_hidden, config.teacher_width
  )
  t_batches = _distill._batches(rng, train["targets"], config.teacher_steps, config.batch_size)
  study_key = jax.random.key(int(rng.integers(2**31)))
  children = rng.spawn(config.num_seeds)

  def evaluate(student, teacher):
    sums = _evaluate(
      student, teacher, eval_ctx, eval_y, rows=config.eval_chunk, bins=config.ece_bins
    )
    return _metrics(sums, config.eval_tokens)

  def teacher_eval(p):
    m, _ = evaluate(p, p)
    return {"heldout_ce": m["heldout_ce"], "forward_kl": m["forward_kl"]}

  teacher, t_curves = _distill._train(
    "labels", t_init, None, train, t_batches, config, teacher_eval, progress
  )
  t_metrics, t_bins = evaluate(teacher, teacher)
  progress(f"teacher: held-out CE {t_metrics['heldout_ce']:.4f}, ECE {t_metrics['ece']:.4f}")

  names = forms(config)
  per_seed = {n: {m: [] for m in (*METRICS, "train_loss")} for n in names}
  listed = {n: [] for n in names}
  reliability, fixed = {}, None
  for r, child in enumerate(children):
    s_init = _distill._init(
      child, v, c, config.student_embed, config.student_hidden, config.student_width
    )
    batches = _distill._batches(child, train["targets"], config.student_steps, config.batch_size)
    key = jax.random.key(int(child.integers(2**31)))
    label = f"seed {r + 1}/{config.num_seeds}"
    trained = _train_students(names, s_init, teacher, train, batches, key, config, progress, label)
    for name, (params, loss, n) in trained.items():
      metrics, bins = evaluate(params, teacher)
      for m in METRICS:
        per_seed[name][m].append(metrics[m])
      per_seed[name]["train_loss"].append(loss)
      if n is not None:
        listed[name].append(n)
      if r == 0:
        reliability[name] = bins
        if name == "labels":
          fixed = params
      progress(
        f"{label} {name}: held-out CE {metrics['heldout_ce']:.4f}  "
        f"KL(t||s) {metrics['forward_kl']:.4f}  top-1 {metrics['top1_agreement']:.3f}  "
        f"ECE {metrics['ece']:.4f}"
      )

  students = {}
  for name, form in names.items():
    rec = {m: _summary(per_seed[name][m]) for m in (*METRICS, "train_loss")}
    rec["form"] = form._asdict()
    rec["reliability"] = reliability[name]
    if form.kind == "sampled":
      d = float(np.mean(listed[name]))
      rec["distinct_per_token"] = d
      rec["bytes_per_token"] = bytes_per_token(form, v, d)
      rec["padded_bytes_per_token"] = bytes_per_token(form, v)
    else:
      rec["bytes_per_token"] = bytes_per_token(form, v)
    students[name] = rec

  zt = _distill._hidden(teacher, grad_ctx) @ teacher["head"]
  gradient, stored, bf16 = _study(fixed, teacher, grad_ctx, grad_y, zt, config, study_key, progress)
  gradient["fixed_student"] = "labels (first seed, trained)"
  gradient["tokens"] = config.grad_tokens
  gradient["draws"] = config.grad_draws

  results = _io.to_jsonable(
    {
      "corpus": info,
      "teacher": {
        **t_metrics,
        "reliability": t_bins,
        "heldout_ce_curve": {"steps": t_curves["steps"], "values": t_curves["heldout_ce"]},
      },
      "students": students,
      "gradient": gradient,
      "bfloat16": bf16,
    }
  )
  results["checks"] = _io.to_jsonable(_checks(results, stored, config))
  results["claims"] = _io.to_jsonable(_claims(results, config))
  results["config"] = dataclasses.asdict(config)
  results["versions"] = _io.versions()
  results["platform"] = jax.devices()[0].platform
  return results


def _checks(results, stored, config) -> dict:
  """The experiment's own correctness checks; ``main`` fails if one does not pass."""
  g = results["gradient"]["forms"]
  sampled = [n for n, f in forms(config).items() if f.kind == "sampled" and f.tau == 1]
  v, t, b = stored["valid"], stored["tails"], stored["bounds"]
  finite = all(
    np.all(np.isfinite(s[m]["seeds"]))
    for s in results["students"].values()
    for m in (*METRICS, "train_loss")
  )
  return {
    "sampled_gradient_unbiased": {
      "statement": (
        f"the mean of {config.grad_draws} sampled-teacher head gradients (tau = 1) equals the "
        f"full teacher's within its standard error: every |z| < {config.z_max}"
      ),
      "max_abs_z": {n: g[n]["max_abs_z"] for n in sampled},
      "bias_ratio": {n: g[n]["bias_ratio"] for n in sampled},
      "passed": all(g[n]["max_abs_z"] < config.z_max for n in sampled),
    },
    "sampled_rows_valid": {
      "statement": "sampled rows list distinct in-range ids whose weights sum to 1 (1e-5)",
      **v,
      "passed": v["duplicates"] == 0 and v["invalid_ids"] == 0 and v["max_mass_error"] < 1e-5,
    },
    "tails_at_listed_mass_one": {
      "statement": (
        "with a listed mass of 1, residual and truncate give the same loss and gradient "
        "(1e-5), and renormalize is residual + log q(listed) (1e-4)"
      ),
      **t,
      "passed": bool(
        t["max_residual_truncate_diff"] < 1e-5 and t["max_renormalize_identity_error"] < 1e-4
      ),
    },
    "residual_bounded_by_full_kl": {
      "statement": "top-k with the residual tail: 0 <= KL <= full KL per row (1e-5 relative)",
      **b,
      "passed": b["max_excess_over_full_kl"] < 1e-5 and b["min_residual"] > -1e-6,
    },
    "fused_equals_core": {
      "statement": "fused linear_kl_divergence of a stored teacher = core kl_divergence (1e-4)",
      "max_abs_diff": stored["fused_core"],
      "passed": stored["fused_core"] < 1e-4,
    },
    "students_finite": {
      "statement": "every student's metrics and last training loss are finite",
      "passed": bool(finite),
    },
  }


def _claims(results, config) -> dict:
  """The paper's claims at this scale, each with its figures and whether it reproduced."""
  s, g = results["students"], results["gradient"]["forms"]
  k = config.budget
  mean = {n: {m: rec[m]["mean"] for m in METRICS} for n, rec in s.items()}

  def sem_diff(a, b, m):
    return float(np.hypot(s[a][m]["sem"], s[b][m]["sem"]))

  listed_tails = ("truncate", "renormalize")
  biased = {
    f"top{kk}_{tail}": g[f"top{kk}_{tail}"]["distance"]
    for tail in TAILS
    for kk in _sizes(config.top_k)
  }
  sampled_at = {f"sampled{ss}": g[f"sampled{ss}"]["distance"] for ss in _sizes(config.samples)}
  nearest = {
    kk: min(_sizes(config.samples), key=lambda ss: abs(ss - kk)) for kk in _sizes(config.top_k)
  }
  worse = {
    name: dist > g[f"sampled{nearest[int(name[3:].split('_')[0])]}"]["distance"]
    for name, dist in biased.items()
  }
  ece = {
    tail: {
      "ece": mean[f"top{k}_{tail}"]["ece"],
      "minus_full": mean[f"top{k}_{tail}"]["ece"] - mean["full"]["ece"],
      "two_sem": 2 * sem_diff(f"top{k}_{tail}", "full", "ece"),
    }
    for tail in TAILS
  }
  for e in ece.values():
    e["higher"] = e["minus_full"] > e["two_sem"]
  ce = {
    tail: {
      "heldout_ce": mean[f"top{k}_{tail}"]["heldout_ce"],
      "minus_full": mean[f"top{k}_{tail}"]["heldout_ce"] - mean["full"]["heldout_ce"],
      "two_sem": 2 * sem_diff(f"top{k}_{tail}", "full", "heldout_ce"),
    }
    for tail in TAILS
  }
  for e in ce.values():
    e["worse"] = e["minus_full"] > e["two_sem"]
  gain = {
    m: (mean["labels"][m] - mean[f"sampled{k}"][m]) / (mean["labels"][m] - mean["full"][m])
    for m in ("heldout_ce", "forward_kl")
  }
  ece_gap = mean[f"sampled{k}"]["ece"] - mean["full"]["ece"]
  return {
    "topk_gradient_biased": {
      "statement": (
        "the top-k teacher's gradient is biased: for every k and tail its distance from the "
        "full teacher's head gradient (relative to |full|) exceeds that of the mean of "
        f"{config.grad_draws} sampled-teacher gradients with S nearest k"
      ),
      "topk_distance": biased,
      "sampled_mean_distance": sampled_at,
      "by_form": worse,
      "reproduced": all(worse.values()),
    },
    "topk_miscalibrated": {
      "statement": (
        f"students of the top-{k} teacher whose loss sees only the listed tokens (truncate, "
        "renormalize) are worse calibrated than the full-KD student: mean ECE over seeds "
        "higher by more than two standard errors of the difference (residual reported too)"
      ),
      "full_ece": mean["full"]["ece"],
      "by_tail": ece,
      "holds_for_residual": ece["residual"]["higher"],
      "reproduced": all(ece[t]["higher"] for t in listed_tails),
    },
    "topk_suboptimal": {
      "statement": (
        f"students of the top-{k} teacher (truncate, renormalize) have a higher held-out "
        "cross-entropy than the full-KD student, by more than two standard errors"
      ),
      "full_heldout_ce": mean["full"]["heldout_ce"],
      "by_tail": ce,
      "holds_for_residual": ce["residual"]["worse"],
      "reproduced": all(ce[t]["worse"] for t in listed_tails),
    },
    "sampling_close_to_full": {
      "statement": (
        f"a student of {k} sampled teacher tokens ({s[f'sampled{k}']['distinct_per_token']:.1f} "
        "distinct per position on average) is close to full KD: it recovers at least 90 % of "
        "full KD's improvement over the labels in held-out CE and in KL(teacher || student), "
        "and its ECE is at most 0.01 above full KD's"
      ),
      "distinct_per_token": s[f"sampled{k}"]["distinct_per_token"],
      "bytes_per_token": s[f"sampled{k}"]["bytes_per_token"],
      "fraction_of_gain": gain,
      "ece_minus_full": ece_gap,
      "reproduced": bool(min(gain.values()) >= 0.9 and ece_gap <= 0.01),
    },
  }


def ok(results) -> bool:
  """Every correctness check passed (the paper's claims may or may not reproduce)."""
  return all(c["passed"] for c in results["checks"].values())


# ---------------------------------------------------------------------------
# Figures (from the results only)
# ---------------------------------------------------------------------------

TAIL_STYLE = {"residual": "o-", "renormalize": "s--", "truncate": "^:"}


def _groups(results):
  """The students by family, each a list of (size, name), sizes increasing."""
  cfg, s = results["config"], results["students"]
  out = {f"top-k, {t}": [(k, f"top{k}_{t}") for k in _sizes(cfg["top_k"])] for t in TAILS}
  out["sampled"] = [(n, f"sampled{n}") for n in _sizes(cfg["samples"])]
  out[f"tempered, tau = {cfg['tau']:g}"] = [(n, f"tempered{n}") for n in _sizes(cfg["samples"])]
  return {g: [(k, n) for k, n in sorted(items) if n in s] for g, items in out.items()}


def _style(group):
  if group.startswith("top-k"):
    return TAIL_STYLE[group.split(", ")[1]]
  return "D-" if group == "sampled" else "v-."


def _colors(plt, groups) -> dict:
  """One colour per family, the same in every figure."""
  cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  return {g: cycle[i % len(cycle)] for i, g in enumerate(groups)}


def _clip_renormalize(ax, s, groups, metric) -> None:
  """Limit the axis to the other forms when the renormalize tail is far off their scale,
  and say where its points are."""
  others = [
    (s[n][metric]["mean"], s[n][metric]["std"])
    for g, items in groups.items()
    if g != "top-k, renormalize"
    for _, n in items
  ] + [(s[n][metric]["mean"], s[n][metric]["std"]) for n in ("full", "labels")]
  renorm = [s[n][metric]["mean"] for _, n in groups.get("top-k, renormalize", [])]
  lo, hi = min(m - e for m, e in others), max(m + e for m, e in others)
  if not renorm or max(renorm) <= hi + (hi - lo):
    return
  pad = 0.05 * (hi - lo)
  ax.set_ylim(lo - pad, hi + pad)
  ax.text(
    0.02, 0.98, f"top-k, renormalize: up to {max(renorm):.2f}, off the scale",
    transform=ax.transAxes, ha="left", va="top", fontsize=7,
  )  # fmt: skip


def plot(results: dict, out_dir) -> list:
  """The trade-off, bias and reliability figures, drawn from ``results`` alone."""
  from experiments import plotting

  plt = plotting.pyplot()
  paths = []
  s, cfg = results["students"], results["config"]
  groups = _groups(results)
  colors = _colors(plt, groups)

  panels = (
    ("heldout_ce", "held-out cross-entropy (nats/token)"),
    ("forward_kl", "KL(teacher || student) (nats)"),
    ("top1_agreement", "top-1 agreement with the teacher"),
    ("ece", f"expected calibration error ({cfg['ece_bins']} bins)"),
  )
  fig, axes = plt.subplots(2, 2, figsize=(12.0, 8.0), layout="constrained")
  for ax, (metric, ylabel) in zip(axes.flat, panels, strict=True):
    for group, items in groups.items():
      x = [s[n]["bytes_per_token"] for _, n in items]
      y = [s[n][metric]["mean"] for _, n in items]
      e = [s[n][metric]["std"] for _, n in items]
      ax.errorbar(
        x, y, yerr=e, fmt=_style(group), color=colors[group], ms=4, capsize=2, label=group
      )
    for name, marker, color in (("full", "*", "k"), ("labels", "X", "0.4")):
      rec = s[name]
      ax.errorbar(
        rec["bytes_per_token"], rec[metric]["mean"], yerr=rec[metric]["std"], fmt=marker,
        color=color, ms=10, capsize=2, label="full logits" if name == "full" else "labels only",
      )  # fmt: skip
      ax.axhline(rec[metric]["mean"], color=color, ls=":", lw=0.8)
    if metric in ("heldout_ce", "forward_kl"):
      _clip_renormalize(ax, s, groups, metric)
    ax.set_xscale("log")
    ax.set_xlabel("stored bytes per token")
    ax.set_ylabel(ylabel)
  axes[0, 0].legend(fontsize=7, loc="upper right")
  fig.suptitle(
    f"Students distilled from stored teacher outputs (V = {cfg['vocab_size']}, "
    f"{cfg['student_steps']} steps, mean and std over {cfg['num_seeds']} seeds)"
  )
  paths += plotting.save(fig, out_dir, f"{NAME}_tradeoff")

  g = results["gradient"]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12.0, 4.5), layout="constrained")
  for group, items in groups.items():
    sizes = [k for k, _ in items]
    dist = [g["forms"][n]["distance"] for _, n in items]
    ax1.plot(sizes, dist, _style(group), color=colors[group], ms=4, label=group)
  samp = groups["sampled"]
  sizes = [k for k, _ in samp]
  ax1.plot(sizes, [g["forms"][n]["noise_floor"] for _, n in samp], color="0.5", lw=1,
           label=f"standard error of the {g['draws']}-draw mean (sampled)")  # fmt: skip
  ax1.plot(sizes, [g["forms"][n]["single_draw"] for _, n in samp], color="0.5", lw=1, ls="--",
           label="one draw's RMS distance from the mean (sampled)")  # fmt: skip
  if "labels" in g["forms"]:
    ax1.axhline(g["forms"]["labels"]["distance"], color="0.4", ls=":", lw=1,
                label="labels only (the cross-entropy gradient)")  # fmt: skip
  ax1.set_xscale("log", base=2)
  ax1.set_yscale("log")
  ax1.set_xlabel("k (top-k) or S (draws)")
  ax1.set_ylabel("|g - g_full| / |g_full| (sampled: mean of the draws)")
  ax1.set_title(f"head gradient at a fixed student, {g['tokens']} positions")
  ax1.legend(fontsize=7, loc="lower left")
  zmax = cfg["z_max"]
  for off, (group, items) in zip((-0.06, 0.06), list(groups.items())[-2:], strict=True):
    for k, n in items:
      z = np.abs(g["forms"][n]["z"])
      ax2.scatter(
        np.full(len(z), k * 2**off), z, s=12, marker=_style(group)[0], color=colors[group]
      )
    ax2.scatter([], [], marker=_style(group)[0], color=colors[group], label=group)
  ax2.axhline(zmax, color="k", ls=":", lw=1, label=f"|z| = {zmax:g} (the check)")
  ax2.set_xscale("log", base=2)
  ax2.set_yscale("log")
  ax2.set_xlabel("S (draws)")
  ax2.set_ylabel("|z| of the mean gradient's error")
  ax2.set_title("z-scores along the full gradient and random directions")
  ax2.legend(fontsize=7)
  paths += plotting.save(fig, out_dir, f"{NAME}_bias")

  k = cfg["budget"]
  shown = [
    ("full", "full logits"), ("labels", "labels only"), (f"sampled{k}", f"sampled, S = {k}"),
    *((f"top{k}_{t}", f"top-{k}, {t}") for t in TAILS),
  ]  # fmt: skip
  cols = (len(shown) + 1) // 2
  fig, axes = plt.subplots(2, cols, figsize=(3.2 * cols, 6.4), layout="constrained")
  for ax in axes.flat[len(shown) :]:
    ax.set_visible(False)
  for ax, (name, title) in zip(axes.flat, shown, strict=False):
    b = s[name]["reliability"]
    count = np.asarray(b["count"])
    keep = count > 0
    edges = np.linspace(0, 1, len(count) + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    ax.bar(centres[keep], np.asarray(b["accuracy"])[keep], width=1 / len(count), alpha=0.6,
           edgecolor="k", lw=0.4)  # fmt: skip
    ax.plot([0, 1], [0, 1], color="k", ls=":", lw=1)
    ax.set_title(f"{title}\nECE {s[name]['ece']['seeds'][0]:.3f}", fontsize=9)
    ax.set_xlabel("confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
  for ax in axes[:, 0]:
    ax.set_ylabel("accuracy on the next token")
  fig.suptitle("Reliability on held-out positions (first seed)")
  paths += plotting.save(fig, out_dir, f"{NAME}_reliability")
  return paths


def report(results) -> str:
  """The student table, the gradient table and the claims, as Markdown."""
  lines = [
    f"teacher held-out CE {results['teacher']['heldout_ce']:.4f}, "
    f"ECE {results['teacher']['ece']:.4f}",
    "",
    "| student | bytes/token | held-out CE | KL(t||s) | top-1 agreement | ECE |",
    "|---|---|---|---|---|---|",
  ]
  shown = ("heldout_ce", "forward_kl", "top1_agreement", "ece")
  for name, s in results["students"].items():
    cells = " | ".join(f"{s[m]['mean']:.4f} ± {s[m]['std']:.4f}" for m in shown)
    lines.append(f"| {name} | {s['bytes_per_token']:.0f} | {cells} |")
  lines += ["", "| form | gradient distance | standard error | max abs z |", "|---|---|---|---|"]
  for name, g in results["gradient"]["forms"].items():
    lines.append(
      f"| {name} | {g['distance']:.4f} | {g.get('noise_floor', 0.0):.4f} | "
      f"{g.get('max_abs_z', float('nan')):.2f} |"
    )
  lines.append("")
  for name, c in {**results["checks"], **results["claims"]}.items():
    flag = c.get("passed", c.get("reproduced"))
    lines.append(f"- {name}: {flag}")
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def main(argv=None) -> int:
  return _io.run_experiment(
    argv,
    name=NAME,
    config_cls=Config,
    quick=QUICK,
    run=run,
    plot=plot,
    description=__doc__.splitlines()[0],
    report=report,
    ok=ok,
    help=HELP,
  )


if __name__ == "__main__":
  sys.exit(main())
