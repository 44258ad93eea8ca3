r"""Distilling a next-token model on real code: which divergence, and what fusing the head buys.

    python -m experiments.distill --out docs/results --figures docs/figures

The corpus is the Python standard library's own source, which ships with every Python (no
download): the top-level modules ``Lib/*.py`` (packages and the build-specific
``_sysconfigdata_*`` left out), in sorted order, every ``file_stride``-th of them, tokenised
with :mod:`tokenize`. A token is the text of every NAME, OP, NUMBER and STRING token
(identifiers, keywords, operators, literals), with ``<newline>``, ``<indent>`` and
``<dedent>`` for the layout tokens; comments and blank-line tokens are dropped. Every
``heldout_every``-th selected file is held out (a split by document). The vocabulary is
``<bos>`` (the left padding of each document's first contexts), ``<unk>`` and the
``vocab_size - 2`` most frequent tokens of the training files (ties broken by the token
text). The corpus is pinned by ``corpus.sha256``, the SHA-256 of every selected file's
name and bytes, and ``corpus.token_sha256``, that of the token ids; both depend only on
the Python build, recorded as ``corpus.python_version``.

The model reads the previous ``context`` tokens: embeddings, concatenated, one ReLU layer
and a linear layer give the hidden state ``h``; the logits are ``h @ head``. A teacher is
trained with ``jaxdiv.linear_cross_entropy``; then students of smaller width, all from the
same initialisation with the same optimiser and the same batches, are distilled from the
teacher's head (teacher ``p``, student ``q``; every loss fused, ``hidden @ weight`` never
materialised):

* ``labels``: the baseline, cross-entropy on the real next token, no teacher;
* ``forward_kl``: KL(p || q), ``jaxdiv.linear_kl_divergence(teacher, student)``;
* ``reverse_kl``: KL(q || p), the same function with the student as ``p``;
* ``jsd_w05``, ``jsd_w09``: the generalised JSD with mixture weight w = 0.5, 0.9 on the
  teacher (TRL's / GKD's ``beta`` = w), ``jaxdiv.linear_jensen_shannon_divergence``;
* ``skew_kl_a01``: DistiLLM's skew KL, KL(p || 0.1 p + 0.9 q);
* ``total_variation``: the total variation distance.

Every ``eval_every`` steps each student is evaluated on a fixed sample of held-out positions.

Results go to ``OUT/distill.json`` (sorted keys):

* ``corpus``: ``name``, ``sha256``, ``token_sha256``, ``python_version``, ``num_tokens``
  (targets, train + held out), ``vocab_size``, the document and token counts of each
  split, the held-out file names and the ``<unk>`` rates;
* ``teacher``: ``heldout_ce`` (nats per token), ``head_mass`` (its own mass on its top
  ``head_k``), ``train_loss`` and ``heldout_ce_curve`` as ``{"steps", "values"}``;
* ``students``: name -> ``heldout_ce``, ``forward_kl`` (KL(teacher || student)),
  ``reverse_kl`` (KL(student || teacher)), ``top1_agreement`` (student's argmax equals
  the teacher's), ``head_mass`` (student's probability on the teacher's top ``head_k``
  tokens; the tail gets ``1 - head_mass``), each a record ``{"steps": [0, eval_every, ...],
  "values": [...], "final": values[-1]}`` of means over the held-out sample, plus
  ``train_loss`` (the batch loss of the step before each evaluation; ``values[0]`` is the
  first step's) and ``loss`` (a description);
* ``cost``: loss -> ``fused_temp_bytes``, ``naive_temp_bytes`` (compiled temporary bytes
  of one whole student training step -- loss, gradient, Adam update -- with the loss fused
  or on materialised ``[batch, vocab]`` logits through the core function,
  ``memory_analysis().temp_size_in_bytes``), ``fused_step_ms``, ``naive_step_ms`` (the
  fastest of ``timing_repeats`` wall times of that step, the two timed alternately),
  ``fused_loss``, ``naive_loss`` and ``abs_loss_diff`` (both steps compute the same loss at
  the students' initialisation on the first batch). The two ``*_step_ms`` fields are the
  only timings: every other number in the file is the same on a rerun on the same machine;
* ``claims``, ``config``, ``versions``, ``platform``.

Figures: ``FIGURES/distill_{curves,mass,cost}.{png,pdf}``. ``--quick`` runs a tiny
configuration (a smoke test); ``--plot-only`` redraws the figures from an existing results file.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import platform
import sys
import sysconfig
import time
import tokenize
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import jaxdiv
from experiments import _io

NAME = "distill"
CORPUS_NAME = "python-stdlib-toplevel-modules"
SPECIALS = ("<bos>", "<unk>")
BOS, UNK = 0, 1
LAYOUT = {tokenize.NEWLINE: "<newline>", tokenize.INDENT: "<indent>", tokenize.DEDENT: "<dedent>"}
DROPPED = {tokenize.NL, tokenize.COMMENT, tokenize.ENCODING, tokenize.ENDMARKER}

# name -> (the loss, its JSD weight or skew alpha, a description); the teacher is p, the student q
STUDENTS = {
  "labels": ("labels", None, "cross-entropy on the next token (no teacher)"),
  "forward_kl": ("kl", None, "KL(teacher || student)"),
  "reverse_kl": ("reverse_kl", None, "KL(student || teacher)"),
  "jsd_w05": ("jsd", 0.5, "JS_w(teacher || student), w = 0.5"),
  "jsd_w09": ("jsd", 0.9, "JS_w(teacher || student), w = 0.9"),
  "skew_kl_a01": ("skew_kl", 0.1, "KL(teacher || 0.1 teacher + 0.9 student)"),
  "total_variation": ("tv", None, "total variation distance(teacher, student)"),
}
LABELS = {
  "labels": "labels only",
  "forward_kl": "forward KL",
  "reverse_kl": "reverse KL",
  "jsd_w05": "JSD, w = 0.5",
  "jsd_w09": "JSD, w = 0.9",
  "skew_kl_a01": "skew KL, alpha = 0.1",
  "total_variation": "total variation",
}
METRICS = ("heldout_ce", "forward_kl", "reverse_kl", "top1_agreement", "head_mass")


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0  # the one seed behind every random draw (inits, batches, held-out sample)
  file_stride: int = 1  # every file_stride-th top-level stdlib module, in sorted order
  heldout_every: int = 10  # every heldout_every-th selected file is held out
  vocab_size: int = 8192  # <bos>, <unk> and the most frequent training tokens
  context: int = 8  # previous tokens the model reads
  teacher_embed: int = 64
  teacher_hidden: int = 256
  teacher_width: int = 128  # width of the hidden state fed to the head
  student_embed: int = 32
  student_hidden: int = 128
  student_width: int = 64
  batch_size: int = 128  # tokens per step
  teacher_steps: int = 800
  student_steps: int = 200
  learning_rate: float = 3e-3  # Adam, for the teacher and every student
  eval_every: int = 20  # steps between evaluations (and progress lines)
  eval_tokens: int = 1024  # held-out positions in the evaluation sample
  eval_chunk: int = 512  # held-out positions evaluated at once
  head_k: int = 10  # the teacher's top-k tokens are the "head", the rest the "tail"
  chunk_size: int | None = None  # vocabulary block of the fused losses (None: the default)
  timing_repeats: int = 7  # timed calls per step in the cost comparison (fastest kept)

  def __post_init__(self):
    positive = (
      "file_stride", "context", "teacher_embed", "teacher_hidden", "teacher_width",
      "student_embed", "student_hidden", "student_width", "batch_size", "teacher_steps",
      "student_steps", "eval_every", "eval_tokens", "eval_chunk", "head_k", "chunk_size",
      "timing_repeats",
    )  # fmt: skip
    for name in positive:
      if getattr(self, name) is not None and getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.heldout_every < 2:
      raise ValueError(f"heldout_every must be >= 2, got {self.heldout_every}")
    if self.vocab_size < 3 + self.head_k:
      raise ValueError(f"vocab_size must be >= head_k + 3, got {self.vocab_size}")
    for name in ("teacher_steps", "student_steps"):
      if getattr(self, name) % self.eval_every:
        raise ValueError(
          f"{name} ({getattr(self, name)}) must be a multiple of eval_every ({self.eval_every})"
        )
    if self.eval_tokens % self.eval_chunk:
      raise ValueError(
        f"eval_tokens ({self.eval_tokens}) must be a multiple of eval_chunk ({self.eval_chunk})"
      )
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


QUICK = dict(
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
  timing_repeats=2,
)


# ---------------------------------------------------------------------------
# Corpus: the standard library's top-level modules, tokenised
# ---------------------------------------------------------------------------


def _stdlib_files(stride: int) -> list[Path]:
  root = Path(sysconfig.get_paths()["stdlib"])
  files = sorted(p for p in root.glob("*.py") if not p.name.startswith("_sysconfigdata"))
  return files[::stride]


def _tokens(source: bytes) -> list[str]:
  out = []
  for tok in tokenize.tokenize(io.BytesIO(source).readline):
    if tok.type in LAYOUT:
      out.append(LAYOUT[tok.type])
    elif tok.type not in DROPPED:
      out.append(tok.string)
  return out


def _corpus(config: Config) -> dict:
  """Token ids per split (each document left-padded with ``context`` <bos>), and metadata."""
  files = _stdlib_files(config.file_stride)
  digest = hashlib.sha256()
  docs = []
  for path in files:
    source = path.read_bytes()
    digest.update(path.name.encode() + b"\0" + source + b"\0")
    docs.append((path.name, _tokens(source)))
  split = {"train": [], "heldout": []}
  for i, doc in enumerate(docs):
    split["heldout" if i % config.heldout_every == config.heldout_every - 1 else "train"].append(
      doc
    )
  if not split["heldout"]:
    raise ValueError(
      f"no held-out file: {len(docs)} files selected (file_stride {config.file_stride}) and "
      f"every {config.heldout_every}th held out"
    )
  counts = Counter(t for _, toks in split["train"] for t in toks)
  ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: config.vocab_size - 2]
  if len(ranked) < config.vocab_size - 2:
    raise ValueError(
      f"vocab_size {config.vocab_size} needs {config.vocab_size - 2} distinct training tokens; "
      f"the selected files have {len(ranked)}"
    )
  vocab = {t: i + len(SPECIALS) for i, (t, _) in enumerate(ranked)}
  token_digest = hashlib.sha256()
  arrays, info = {}, {}
  for name, part in split.items():
    stream, targets = [], []
    for _, toks in part:
      ids = [vocab.get(t, UNK) for t in toks]
      start = len(stream) + config.context
      stream += [BOS] * config.context + ids
      targets.append(np.arange(start, start + len(ids)))
    stream = np.asarray(stream, np.int32)
    token_digest.update(stream.astype("<i4").tobytes())
    targets = np.concatenate(targets).astype(np.int32)
    arrays[name] = {"stream": stream, "targets": targets}
    info[f"{name}_documents"] = len(part)
    info[f"{name}_tokens"] = len(targets)
    info[f"{name}_unk_rate"] = float(np.mean(stream[targets] == UNK))
  info.update(
    name=CORPUS_NAME,
    python_version=platform.python_version(),
    sha256=digest.hexdigest(),
    token_sha256=token_digest.hexdigest(),
    num_files=len(docs),
    num_tokens=info["train_tokens"] + info["heldout_tokens"],
    vocab_size=config.vocab_size,
    distinct_training_tokens=len(counts),
    heldout_files=[n for n, _ in split["heldout"]],
    tokens=(
      "NAME, OP, NUMBER and STRING token texts; <newline>, <indent>, <dedent> for layout; "
      "comments and NL dropped"
    ),
  )
  return {"arrays": arrays, "info": info}


# ---------------------------------------------------------------------------
# Model: context embeddings -> ReLU layer -> linear -> hidden state; logits = hidden @ head
# ---------------------------------------------------------------------------


def _init(rng, vocab: int, context: int, embed: int, hidden: int, width: int) -> dict:
  """Gaussian weights with variance 1 / fan-in, zero biases (numpy draws from ``rng``)."""

  def normal(shape, fan_in):
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

  return {
    "embed": normal((vocab, embed), 1),
    "w1": normal((context * embed, hidden), context * embed),
    "b1": np.zeros(hidden, np.float32),
    "w2": normal((hidden, width), hidden),
    "b2": np.zeros(width, np.float32),
    "head": normal((width, vocab), width),
  }


def _hidden(params, ctx):
  x = params["embed"][ctx].reshape(ctx.shape[0], -1)
  return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def _batches(rng, targets, steps: int, batch_size: int) -> np.ndarray:
  """The target positions of every step, ``[steps, batch_size]``, drawn once from ``rng``."""
  return targets[rng.integers(0, len(targets), (steps, batch_size))]


def _window(stream, pos, context: int):
  """The contexts ``[len(pos), context]`` and next tokens ``[len(pos)]`` at positions ``pos``."""
  ctx = stream[pos[:, None] + np.arange(-context, 0)]
  return jnp.asarray(ctx, jnp.int32), jnp.asarray(stream[pos], jnp.int32)


def _loss(name: str, student, teacher, ctx, y, *, fused: bool, chunk: int):
  """The batch-mean training objective of student ``name``, fused or on materialised logits."""
  kind, arg, _ = STUDENTS[name]
  hs, ws = _hidden(student, ctx), student["head"]
  if kind == "labels":
    if fused:
      return jaxdiv.linear_cross_entropy(hs, ws, y, chunk_size=chunk, reduction="mean")
    return jnp.mean(jaxdiv.cross_entropy(labels=y, q_logits=hs @ ws))
  ht, wt = lax.stop_gradient(_hidden(teacher, ctx)), teacher["head"]
  t, s = (ht, wt), (hs, ws)  # teacher p, student q (reverse KL swaps them)
  if fused:
    kw = {"chunk_size": chunk, "reduction": "mean"}  # the gradient formed in the sweep
    if kind == "kl":
      loss = jaxdiv.linear_kl_divergence(*t, *s, **kw)
    elif kind == "reverse_kl":
      loss = jaxdiv.linear_kl_divergence(*s, *t, **kw)
    elif kind == "jsd":
      loss = jaxdiv.linear_jensen_shannon_divergence(*t, *s, weight=arg, **kw)
    elif kind == "skew_kl":
      loss = jaxdiv.linear_skew_kl_divergence(*t, *s, alpha=arg, **kw)
    else:
      loss = jaxdiv.linear_total_variation_distance(*t, *s, **kw)
    return loss
  zt, zs = ht @ wt, hs @ ws
  if kind == "kl":
    loss = jaxdiv.kl_divergence(p_logits=zt, q_logits=zs)
  elif kind == "reverse_kl":
    loss = jaxdiv.kl_divergence(p_logits=zs, q_logits=zt)
  elif kind == "jsd":
    loss = jaxdiv.jensen_shannon_divergence(p_logits=zt, q_logits=zs, weight=arg)
  elif kind == "skew_kl":
    loss = jaxdiv.skew_kl_divergence(p_logits=zt, q_logits=zs, alpha=arg)
  else:
    loss = jaxdiv.total_variation_distance(p_logits=zt, q_logits=zs)
  return jnp.mean(loss)


@functools.lru_cache
def _optimizer(lr: float):
  """One optimiser object per rate: a static argument, so reruns share compilations."""
  return optax.adam(lr)


def _step(name, opt, chunk, fused, carry, teacher, ctx, y):
  """One training step: the loss, its gradient in the student, an optimiser update."""
  params, state = carry
  loss, grads = jax.value_and_grad(_loss, argnums=1)(
    name, params, teacher, ctx, y, fused=fused, chunk=chunk
  )
  updates, state = opt.update(grads, state, params)
  return (optax.apply_updates(params, updates), state), loss


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


@functools.lru_cache(maxsize=64)
def _compiled_step(name, fused, opt, chunk, shapes):
  """The compiled step for these static settings and argument shapes (cached: reruns reuse it).

  One executable serves the training loop, the compiled-memory figures and the timings.
  """
  step = functools.partial(_step, name, opt, chunk, fused)
  return jax.jit(step).lower(*shapes).compile()


def _step_fn(name, fused, opt, chunk, carry, teacher, ctx, y):
  shapes = _abstract((carry, teacher, ctx, y))
  return _compiled_step(name, fused, opt, chunk, _Hashable(shapes))


class _Hashable:
  """A pytree of ShapeDtypeStructs, hashed by its structure and leaves (a cache key)."""

  def __init__(self, tree):
    leaves, treedef = jax.tree.flatten(tree)
    self.tree, self.key = tree, (treedef, tuple((x.shape, str(x.dtype)) for x in leaves))

  def __iter__(self):
    return iter(self.tree)

  def __hash__(self):
    return hash(self.key)

  def __eq__(self, other):
    return isinstance(other, _Hashable) and self.key == other.key


@functools.partial(jax.jit, static_argnames=("rows", "head_k"))
def _evaluate(student, teacher, ctx, y, *, rows, head_k):
  """Held-out means: CE on the text, both KLs to the teacher, top-1 agreement, head mass."""

  def block(args):
    c, yy = args
    zs, zt = _hidden(student, c) @ student["head"], _hidden(teacher, c) @ teacher["head"]
    log_qs = jax.nn.log_softmax(zs)
    top = lax.top_k(zt, head_k)[1]
    head = jnp.exp(jax.nn.logsumexp(jnp.take_along_axis(log_qs, top, axis=-1), axis=-1))
    agree = (jnp.argmax(zs, axis=-1) == jnp.argmax(zt, axis=-1)).astype(jnp.float32)
    return {
      "heldout_ce": jaxdiv.cross_entropy(labels=yy, q_logits=zs),
      "forward_kl": jaxdiv.kl_divergence(p_logits=zt, q_logits=zs),
      "reverse_kl": jaxdiv.kl_divergence(p_logits=zs, q_logits=zt),
      "top1_agreement": agree,
      "head_mass": head,
    }

  blocks = (ctx.reshape(-1, rows, ctx.shape[-1]), y.reshape(-1, rows))
  return jax.tree.map(jnp.mean, lax.map(block, blocks))


# ---------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("opt",))
def _opt_init(params, *, opt):
  return opt.init(params)


def _train(name, params, teacher, split, positions, config, evaluate, progress):
  """Train ``params`` with the fused loss ``name`` on the batches at ``positions``.

  Evaluates before the first step and every ``eval_every`` steps; returns the final
  parameters and the curves.
  """
  opt = _optimizer(config.learning_rate)
  params = jax.device_put(params)
  carry = (params, _opt_init(params, opt=opt))
  curves = {k: [v] for k, v in evaluate(params).items()}
  curves["steps"], curves["train_loss"] = [0], []
  step = None
  label = "teacher" if teacher is None else name
  for t, pos in enumerate(positions):
    ctx, y = _window(split["stream"], pos, config.context)
    if step is None:
      step = _step_fn(name, True, opt, config.chunk_size, carry, teacher, ctx, y)
    carry, loss = step(carry, teacher, ctx, y)
    if t == 0:
      curves["train_loss"].append(float(loss))
    if (t + 1) % config.eval_every == 0:
      metrics = evaluate(carry[0])
      for k, v in metrics.items():
        curves[k].append(v)
      curves["steps"].append(t + 1)
      curves["train_loss"].append(float(loss))
      progress(
        f"{label}: step {t + 1}/{len(positions)}  loss {float(loss):.4f}  "
        f"held-out CE {metrics['heldout_ce']:.4f}  KL(t||s) {metrics['forward_kl']:.4f}"
      )
  return carry[0], curves


def _record(steps, values) -> dict:
  return {"steps": list(steps), "values": list(values), "final": values[-1]}


# ---------------------------------------------------------------------------
# Cost: one whole student step, fused vs materialised logits
# ---------------------------------------------------------------------------


def _cost(name, student, teacher, ctx, y, config) -> dict:
  """Temporaries, step time and loss of the fused and the materialised step.

  The two steps are timed alternately, so a change in the machine's load hits both alike.
  """
  opt = _optimizer(config.learning_rate)
  student = jax.device_put(student)
  carry = (student, _opt_init(student, opt=opt))
  modes = {"fused": True, "naive": False}
  steps = {
    m: _step_fn(name, f, opt, config.chunk_size, carry, teacher, ctx, y) for m, f in modes.items()
  }
  out, times = {}, {m: [] for m in modes}
  for mode, step in steps.items():
    out[f"{mode}_temp_bytes"] = int(step.memory_analysis().temp_size_in_bytes)
    out[f"{mode}_loss"] = float(step(carry, teacher, ctx, y)[1])  # also the warm-up
  for _ in range(config.timing_repeats):
    for mode, step in steps.items():
      t0 = time.perf_counter()
      jax.block_until_ready(step(carry, teacher, ctx, y))
      times[mode].append(time.perf_counter() - t0)
  for mode in modes:
    out[f"{mode}_step_ms"] = 1e3 * min(times[mode])  # other load only ever adds time
  out["abs_loss_diff"] = abs(out["fused_loss"] - out["naive_loss"])
  return out


# ---------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------


def run(config: Config, progress=None) -> dict:
  """Corpus, teacher, students, cost; a pure function of ``config`` except the timings."""
  progress = progress or (lambda msg: None)
  corpus = _corpus(config)
  info = corpus["info"]
  progress(
    f"corpus: {info['num_files']} files, {info['num_tokens']} tokens, "
    f"sha256 {info['sha256'][:12]}, <unk> {info['train_unk_rate']:.3f} (train)"
  )
  train, heldout = corpus["arrays"]["train"], corpus["arrays"]["heldout"]
  if len(heldout["targets"]) < config.eval_tokens:
    raise ValueError(
      f"eval_tokens {config.eval_tokens} exceeds the {len(heldout['targets'])} held-out tokens"
    )
  rng = np.random.default_rng(config.seed)
  eval_pos = np.sort(rng.choice(heldout["targets"], config.eval_tokens, replace=False))
  eval_ctx, eval_y = _window(heldout["stream"], eval_pos, config.context)
  v, c = config.vocab_size, config.context
  t_init = _init(rng, v, c, config.teacher_embed, config.teacher_hidden, config.teacher_width)
  s_init = _init(rng, v, c, config.student_embed, config.student_hidden, config.student_width)
  t_batches = _batches(rng, train["targets"], config.teacher_steps, config.batch_size)
  s_batches = _batches(rng, train["targets"], config.student_steps, config.batch_size)

  def evaluate(student, teacher):
    metrics = _evaluate(
      student, teacher, eval_ctx, eval_y, rows=config.eval_chunk, head_k=config.head_k
    )
    return {k: float(x) for k, x in metrics.items()}

  teacher, t_curves = _train(
    "labels", t_init, None, train, t_batches, config, lambda p: evaluate(p, p), progress
  )
  results = {
    "corpus": info,
    "teacher": {
      "heldout_ce": t_curves["heldout_ce"][-1],
      "head_mass": t_curves["head_mass"][-1],
      "heldout_ce_curve": {"steps": t_curves["steps"], "values": t_curves["heldout_ce"]},
      "train_loss": {"steps": t_curves["steps"], "values": t_curves["train_loss"]},
    },
    "students": {},
  }
  for name, (_, _, description) in STUDENTS.items():
    _, curves = _train(
      name, s_init, teacher, train, s_batches, config, lambda p: evaluate(p, teacher), progress
    )
    rec = {m: _record(curves["steps"], curves[m]) for m in METRICS}
    rec["train_loss"] = _record(curves["steps"], curves["train_loss"])
    rec["loss"] = description
    results["students"][name] = rec

  ctx, y = _window(train["stream"], s_batches[0], config.context)
  results["cost"] = {}
  for name in STUDENTS:
    results["cost"][name] = cost = _cost(name, s_init, teacher, ctx, y, config)
    progress(
      f"cost {name}: temp bytes fused {cost['fused_temp_bytes']} naive "
      f"{cost['naive_temp_bytes']}; step ms fused {cost['fused_step_ms']:.1f} naive "
      f"{cost['naive_step_ms']:.1f}"
    )
  results = _io.to_jsonable(results)
  results["claims"] = _claims(results)
  results["config"] = dataclasses.asdict(config)
  results["versions"] = _io.versions()
  results["platform"] = jax.devices()[0].platform
  return results


def _claims(results) -> dict:
  """The experiment's own checks, as booleans recorded in the results."""
  students, cost = results["students"], results["cost"]
  final = {m: {n: s[m]["final"] for n, s in students.items()} for m in METRICS}
  distilled = [n for n in students if n != "labels"]
  return {
    "forward_kl_student_closest_in_forward_kl": min(
      final["forward_kl"], key=final["forward_kl"].get
    )
    == "forward_kl",
    "distilled_agree_more_than_labels": all(
      final["top1_agreement"][n] > final["top1_agreement"]["labels"] for n in distilled
    ),
    "fused_temporaries_smaller": all(
      c["fused_temp_bytes"] < c["naive_temp_bytes"] for c in cost.values()
    ),
    "fused_equals_naive": all(c["abs_loss_diff"] < 1e-4 for c in cost.values()),
  }


# ---------------------------------------------------------------------------
# Figures (from the results only)
# ---------------------------------------------------------------------------


def plot(results: dict, out_dir) -> list:
  """The three figures, drawn from ``results`` alone; returns the written paths."""
  from experiments import plotting

  plt = plotting.pyplot()
  paths = []
  order = [n for n in STUDENTS if n in results["students"]]
  order += sorted(set(results["students"]) - set(order))
  students = {n: results["students"][n] for n in order}
  teacher_ce = results["teacher"]["heldout_ce"]
  corpus = results["corpus"]

  panels = (
    ("heldout_ce", "held-out cross-entropy (nats/token)"),
    ("forward_kl", "KL(teacher || student) (nats)"),
    ("reverse_kl", "KL(student || teacher) (nats)"),
  )
  fig, axes = plt.subplots(1, 3, figsize=(13.0, 4.0), layout="constrained")
  for ax, (metric, ylabel) in zip(axes, panels, strict=True):
    for name, s in students.items():
      style = {"color": "k", "ls": "--"} if name == "labels" else {}
      ax.plot(s[metric]["steps"], s[metric]["values"], label=LABELS.get(name, name), **style)
    if metric == "heldout_ce":
      ax.axhline(teacher_ce, color="0.4", ls=":", lw=1, label=f"teacher ({teacher_ce:.3f})")
    ax.set_yscale("log")
    ax.set_xlabel("student step")
    ax.set_ylabel(ylabel)
  axes[0].legend(loc="upper right", fontsize=7)
  axes[0].set_title("held-out cross-entropy on the real next token")
  axes[1].set_title("forward KL to the teacher (held out)")
  axes[2].set_title("reverse KL to the teacher (held out)")
  fig.suptitle(
    f"Students distilled from the teacher's head: {corpus['name']} "
    f"(Python {corpus['python_version']}), {corpus['num_tokens']} tokens, "
    f"V = {corpus['vocab_size']}"
  )
  paths += plotting.save(fig, out_dir, f"{NAME}_curves")

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11.0, 4.0), layout="constrained")
  k = results["config"]["head_k"]
  for name, s in students.items():
    style = {"color": "k", "ls": "--"} if name == "labels" else {}
    head = np.asarray(s["head_mass"]["values"])
    ax1.plot(s["head_mass"]["steps"], head, label=LABELS.get(name, name), **style)
    ax2.plot(s["head_mass"]["steps"], 1 - head, **style)
  teacher_head = results["teacher"]["head_mass"]
  ax1.axhline(teacher_head, color="0.4", ls=":", lw=1, label=f"teacher ({teacher_head:.3f})")
  ax2.axhline(1 - teacher_head, color="0.4", ls=":", lw=1)
  ax1.set_title(f"student mass on the teacher's top-{k} tokens")
  ax2.set_title("student mass on the tail (the other tokens)")
  ax2.set_yscale("log")
  for ax in (ax1, ax2):
    ax.set_xlabel("student step")
    ax.set_ylabel("probability (held-out mean)")
  ax1.legend(loc="lower right", fontsize=7)
  paths += plotting.save(fig, out_dir, f"{NAME}_mass")

  cost = results["cost"]
  names = [n for n in students if n in cost]
  x = np.arange(len(names))
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12.0, 4.0), layout="constrained")
  for ax, field, ylabel in (
    (ax1, "temp_bytes", "compiled temporaries of one step (MiB)"),
    (ax2, "step_ms", "wall time of one step (ms, fastest call)"),
  ):
    scale = 2.0**-20 if field == "temp_bytes" else 1.0
    for off, mode in ((-0.2, "fused"), (0.2, "naive")):
      vals = [cost[n][f"{mode}_{field}"] * scale for n in names]
      label = "fused head" if mode == "fused" else "materialised logits"
      ax.bar(x + off, vals, width=0.4, label=label)
    ax.set_xticks(x, [LABELS.get(n, n) for n in names], rotation=30, ha="right")
    ax.set_ylabel(ylabel)
  cfg = results["config"]
  chunk = cfg["chunk_size"]
  blocks = "default blocks" if chunk is None else f"vocabulary block {chunk}"
  ax1.set_title(f"Student step, {cfg['batch_size']} tokens x V = {cfg['vocab_size']} ({blocks})")
  ax2.set_title(
    f"on {results['platform']}, fastest of {cfg['timing_repeats']} calls each, timed alternately"
  )
  ax1.legend(loc="upper left")
  paths += plotting.save(fig, out_dir, f"{NAME}_cost")
  return paths


def report(results) -> str:
  """The student table and the cost table, as Markdown."""
  lines = [
    f"teacher held-out CE {results['teacher']['heldout_ce']:.4f}",
    "",
    "| student | held-out CE | KL(t||s) | KL(s||t) | top-1 agreement | head mass |",
    "|---|---|---|---|---|---|",
  ]
  for name, s in results["students"].items():
    cells = " | ".join(f"{s[m]['final']:.4f}" for m in METRICS)
    lines.append(f"| {name} | {cells} |")
  lines += [
    "",
    "| loss | fused temp bytes | naive temp bytes | fused step ms | naive step ms |",
    "|---|---|---|---|---|",
  ]
  for name, c in results["cost"].items():
    lines.append(
      f"| {name} | {c['fused_temp_bytes']} | {c['naive_temp_bytes']} | "
      f"{c['fused_step_ms']:.1f} | {c['naive_step_ms']:.1f} |"
    )
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
    ok=None,
  )


if __name__ == "__main__":
  sys.exit(main())
