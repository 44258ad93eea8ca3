"""Tests for jaxdiv._fused and its engine: fused linear-head losses equal the core functions.

Compiling the blocked loops dominates the run time, so each check jits the fused loss and
its core reference together (values and gradients in one ``jax.value_and_grad``). The
central test, ``test_fused_equals_core``, runs every fused function against the core
function on ``hidden @ weight`` for the combinations of its options (temperature, soft
cap, z-loss, label smoothing, the three forms of ``where``, the three reductions) and of
the layouts of its sides (teacher as a head, as logits or stored; reverse KL); the default
suite runs a deterministic sample of the combinations and ``.ci/run`` (``-m slow``) the
rest.
"""

from __future__ import annotations

import functools
import itertools
import json
import runpy
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiv
from jaxdiv import _blocks, _drivers
from jaxdiv import _fused_losses as L

N, D, V = 12, 5, 36
BATCH = (3, 4)  # the rows as batch dimensions: the fused functions flatten them
NON_DIVIDING = {"chunk_size": 8, "token_chunk_size": 5}  # shifted last blocks on both axes
rng = np.random.default_rng(0)
H, W = rng.normal(size=(N, D)), rng.normal(size=(D, V))
HT, WT = rng.normal(size=(N, D + 2)), 1.5 * rng.normal(size=(D + 2, V))  # a wider teacher
LABELS = np.array([-1, -100, *rng.integers(0, V, N - 2)])
TEACHER = 2 * rng.normal(size=(N, V))
TEACHER[:, :3] = -np.inf  # categories the teacher rules out
TEACHER[2, 5:] = -np.inf  # a row whose listed top-k holds all of its mass
MASKS = {
  "vocab": np.arange(V) % 5 != 1,  # [V]: excludes some labels too
  "token": np.array([True] * 5 + [False] + [True] * 6)[:, None],  # [N, 1]
  "full": rng.random((N, V)) > 0.2,  # [N, V]
}
K = 6  # stored teacher categories per row


def _stored(z):
  """The teacher's top-k log-probabilities, with padding slots (-inf, any index)."""
  lp = jax.nn.log_softmax(jnp.asarray(z))
  idx = jnp.argsort(-lp, axis=-1)[:, :K]
  vals = jnp.take_along_axis(lp, idx, axis=-1)
  vals = vals.at[1, -2:].set(-jnp.inf)  # two padding slots in row 1
  idx = idx.at[1, -1].set(idx[1, 0])  # padding may repeat an index
  return idx, vals


# ---------------------------------------------------------------------------
# Fused = core on hidden @ weight, for every combination of options and layouts
# ---------------------------------------------------------------------------

PAIRS = {  # fused function, core function, the mixture option
  "kl": ("linear_kl_divergence", "kl_divergence", None),
  "jsd": ("linear_jensen_shannon_divergence", "jensen_shannon_divergence", ("weight", 0.3)),
  "skew": ("linear_skew_kl_divergence", "skew_kl_divergence", ("alpha", 0.2)),
  "tv": ("linear_total_variation_distance", "total_variation_distance", None),
}
LAYOUTS = {
  "kl": ("teacher-head", "teacher-logits", "student-p", "stored-p", "stored-q"),
  "jsd": ("teacher-head", "teacher-logits", "stored-p"),
  "skew": ("teacher-head", "teacher-logits", "stored-p"),
  "tv": ("teacher-head", "teacher-logits", "stored-p"),
  "ce": ("head",),
  "distill": ("teacher-head", "teacher-logits", "stored-p"),
}
DIVERGENCES = ("kl", "reverse_kl", "jsd", "gkd0", "gkd", "gkd1", "skew_kl", "tv")
WHERES = (None, "vocab", "token", "full")
REDUCTIONS = (None, "sum", "mean")


def _scalars(kind):
  """The scalar options of a function: name -> (off, on)."""
  if kind == "ce":
    return {"temperature": (1.0, 1.7), "soft_cap": (None, 4.0), "z_loss": (0.0, 0.03),
            "label_smoothing": (0.0, 0.1)}  # fmt: skip
  if kind == "distill":
    return {"temperature": (1.0, 1.7), "hard_weight": (0.0, 0.4),
            "scale_by_temperature_squared": (False, True)}  # fmt: skip
  return {"temperature": (1.0, 1.7), "soft_cap": (None, 4.0)}


def _cell(kind, layout, on, where, reduction, chunks, divergence="kl"):
  opts = {k: v[1] if k in on else v[0] for k, v in _scalars(kind).items()}
  opts.update(where=where, reduction=reduction)
  if kind == "distill":
    opts["divergence"] = divergence
  return (kind, layout, tuple(opts.items()), chunks)


def _cells():
  """Every combination of a function's options: each subset of its scalar options (with
  ``where`` and ``reduction`` in rotation), each ``where`` with each reduction (every
  scalar option on), every layout with every option on and off, and for the distillation
  loss every divergence. The default suite runs a fixed sample of them; the rest is slow."""
  cells, sample = [], set()
  rotation = list(itertools.product(WHERES, REDUCTIONS))
  for kind in ("ce", *PAIRS, "distill"):
    names = list(_scalars(kind))
    primary = LAYOUTS[kind][0]
    divs = DIVERGENCES if kind == "distill" else ("kl",)
    for d, div in enumerate(divs):
      for i, on in enumerate(itertools.chain.from_iterable(
        itertools.combinations(names, r) for r in range(len(names) + 1)
      )):  # fmt: skip
        where, red = rotation[(i + d) % len(rotation)]
        chunks = "blocked" if (i + d) % 2 else "default"
        cells.append(_cell(kind, primary, set(on), where, red, chunks, div))
      for where, red in rotation:
        cells.append(_cell(kind, primary, set(names), where, red, "blocked", div))
    for layout in LAYOUTS[kind]:
      for on, where, red in ((set(), None, None), (set(names), "full", "mean")):
        cells.append(_cell(kind, layout, on, where, red, "blocked" if on else "default"))
    # the sample: everything off and on, every layout on, a where and a reduction each
    sample.add(_cell(kind, primary, set(), None, None, "default"))
    sample.add(_cell(kind, primary, set(names), "full", "mean", "blocked"))
    for layout in LAYOUTS[kind][1:]:
      sample.add(_cell(kind, layout, set(names), "full", "mean", "blocked"))
  sample.add(_cell("ce", "head", {"z_loss"}, "token", "sum", "blocked"))
  sample.add(_cell("kl", "teacher-head", {"soft_cap"}, "vocab", None, "blocked"))
  for div in ("gkd0", "gkd1", "jsd"):
    sample.add(_cell("distill", "teacher-head", {"temperature", "hard_weight"}, "vocab", "sum",
                     "blocked", div))  # fmt: skip
  cells = list(dict.fromkeys(cells + sorted(sample - set(cells), key=str)))
  return [
    pytest.param(c, id="-".join(str(x) for x in (c[0], c[1], *(f"{k}={v}" for k, v in c[2]), c[3])),
                 marks=() if c in sample else pytest.mark.slow)
    for c in cells
  ]  # fmt: skip


def _head(z, opts):
  if opts.get("soft_cap") is not None:
    z = opts["soft_cap"] * jnp.tanh(z / opts["soft_cap"])
  return z / opts["temperature"] if opts.get("temperature", 1.0) != 1.0 else z


def _reduce(values, counted, reduction):
  values = jnp.where(counted, values, 0.0)
  if reduction is None:
    return values
  total = jnp.sum(values)
  return total if reduction == "sum" else total / jnp.maximum(jnp.sum(counted), 1)


def _where(name):
  return None if name is None else jnp.asarray(MASKS[name])


def _row_kept(where):
  """Per row: not masked out by a token mask (a [N, 1] mask) or a full mask's empty row."""
  if where is None:
    return jnp.ones(N, bool)
  return jnp.any(jnp.broadcast_to(where, (N, V)), axis=-1)


def _label_counts(labels, where):
  """CE's tokens that count: label not ignored, its category included."""
  keep = jnp.ones((N, V), bool) if where is None else jnp.broadcast_to(where, (N, V))
  at = jnp.take_along_axis(keep, jnp.clip(labels, 0)[:, None], axis=1)[:, 0]
  return (labels >= 0) & at


def _batched(where):
  """A [N, ...] mask as the [*BATCH, ...] mask of the batched inputs (a [V] mask as it is)."""
  return where if where is None or where.ndim == 1 else where.reshape(*BATCH, where.shape[-1])


def _ce_pair(arrays, opts, chunks):
  labels = jnp.asarray(LABELS)
  where = _where(opts["where"])
  kw = {k: opts[k] for k in ("temperature", "soft_cap", "z_loss", "label_smoothing")}

  def fused(h, w, *_):  # batch dimensions, flattened by the fused function
    return jaxdiv.linear_cross_entropy(h.reshape(*BATCH, D), w, labels.reshape(BATCH),
                                       where=_batched(where), reduction=opts["reduction"],
                                       **kw, **chunks)  # fmt: skip

  def core(h, w, *_):
    out = jaxdiv.cross_entropy(labels=labels, q_logits=h @ w, where=where, **kw)
    return _reduce(out, _label_counts(labels, where), opts["reduction"])

  return fused, core, (0, 1)


def _sides(layout, arrays):
  """``(fused kwargs, core kwargs, argnums)`` of a layout; arrays = (h, w, ht, wt, zt)."""
  h, w, ht, wt, zt = arrays
  idx, lp = _stored(zt)
  if layout == "teacher-head":
    return (dict(p_hidden=ht, p_weight=wt, q_hidden=h, q_weight=w),
            dict(p_logits=ht @ wt, q_logits=h @ w), (0, 1, 2, 3))  # fmt: skip
  if layout == "teacher-logits":
    return dict(p_logits=zt, q_hidden=h, q_weight=w), dict(p_logits=zt, q_logits=h @ w), (0, 1, 4)
  if layout == "student-p":  # reverse KL; the teacher's ruled-out categories made finite
    zt = jnp.where(jnp.isinf(zt), -3.0, zt)
    return dict(p_hidden=h, p_weight=w, q_logits=zt), dict(p_logits=h @ w, q_logits=zt), (0, 1, 4)
  if layout == "stored-p":
    s = dict(p_indices=idx, p_log_probs=lp)
    return dict(s, q_hidden=h, q_weight=w), dict(s, q_logits=h @ w), (0, 1)
  s = dict(q_indices=idx, q_log_probs=lp)  # stored-q: reverse KL from a stored teacher
  return dict(s, p_hidden=h, p_weight=w), dict(s, p_logits=h @ w), (0, 1)


def _pair_pair(kind, layout, arrays, opts, chunks):
  fused_name, core_name, mix = PAIRS[kind]
  where = _where(opts["where"])
  kw = {k: opts[k] for k in ("temperature", "soft_cap")}
  if mix is not None:
    kw[mix[0]] = mix[1]
  _, _, argnums = _sides(layout, arrays)

  def fused(*a):
    f, _, _ = _sides(layout, a)
    return getattr(jaxdiv, fused_name)(**f, where=where, reduction=opts["reduction"], **kw,
                                       **chunks)  # fmt: skip

  def core(*a):
    _, c, _ = _sides(layout, a)
    out = getattr(jaxdiv, core_name)(**c, where=where, **kw)
    return _reduce(out, _row_kept(where), opts["reduction"])

  return fused, core, argnums


def _distill_pair(layout, arrays, opts, chunks):
  div = opts["divergence"]
  beta = {"gkd0": 0.0, "gkd1": 1.0}.get(div, 0.6)
  div = "gkd" if div.startswith("gkd") else div
  t, hw = opts["temperature"], opts["hard_weight"]
  where = _where(opts["where"])
  labels = jnp.asarray(LABELS)
  soft = 0.7 * (t * t if opts["scale_by_temperature_squared"] else 1.0)
  _, _, argnums = _sides(layout, arrays)
  kw = dict(divergence=div, beta=beta, alpha=0.2, temperature=t, hard_weight=hw, soft_weight=0.7,
            scale_by_temperature_squared=opts["scale_by_temperature_squared"])  # fmt: skip

  def teacher(a):
    f, c, _ = _sides(layout, a)
    ft = {k.replace("p_", "teacher_"): v for k, v in f.items() if k.startswith("p_")}
    return ft, c

  def fused(*a):
    ft, _ = teacher(a)
    return jaxdiv.linear_distillation_loss(a[0], a[1], labels, **ft, **kw, where=where,
                                           reduction=opts["reduction"], **chunks)  # fmt: skip

  def core(*a):
    _, c = teacher(a)
    zs = a[0] @ a[1]
    t_kw = {k: v for k, v in c.items() if k != "q_logits"}
    name = {"gkd": {0.0: "kl", 1.0: "reverse_kl"}.get(beta, "jsd")}.get(div, div)
    if name == "reverse_kl":  # the student first; a stored teacher becomes q
      t_kw = {k.replace("p_", "q_"): v for k, v in t_kw.items()}
      d = jaxdiv.kl_divergence(p_logits=zs, **t_kw, temperature=t, where=where)
    else:
      fn = {
        "kl": jaxdiv.kl_divergence,
        "jsd": jaxdiv.jensen_shannon_divergence,
        "skew_kl": jaxdiv.skew_kl_divergence,
        "tv": jaxdiv.total_variation_distance,
      }[name]
      extra = {"jsd": {"weight": beta}, "skew_kl": {"alpha": 0.2}}.get(name, {})
      d = fn(**t_kw, q_logits=zs, temperature=t, where=where, **extra)  # fmt: skip
    hard = jaxdiv.cross_entropy(labels=labels, q_logits=zs, where=where) if hw else 0.0
    out = soft * d + hw * hard
    counted = (labels >= 0) & _row_kept(where)
    return _reduce(out, counted, opts["reduction"])

  return fused, core, argnums


@functools.partial(jax.jit, static_argnames=("cell",))
def _run_cell(arrays, *, cell):
  kind, layout, opts, chunks = cell
  opts, chunks = dict(opts), dict(NON_DIVIDING if chunks == "blocked" else {})
  if kind == "ce":
    fused, core, argnums = _ce_pair(arrays, opts, chunks)
  elif kind == "distill":
    fused, core, argnums = _distill_pair(layout, arrays, opts, chunks)
  else:
    fused, core, argnums = _pair_pair(kind, layout, arrays, opts, chunks)
  c = jnp.asarray(np.random.default_rng(7).normal(size=N))

  def scalar(f):
    def g(*a):
      out = f(*a).reshape(-1)
      return jnp.sum(out * c[: out.size]), out

    return jax.value_and_grad(g, argnums, has_aux=True)(*arrays)

  return scalar(fused), scalar(core)


def _arrays():
  return tuple(jnp.asarray(x) for x in (H, W, HT, WT, TEACHER))


@pytest.mark.parametrize("cell", _cells())
def test_fused_equals_core(cell):
  ((_, vf), gf), ((_, vc), gc) = _run_cell(_arrays(), cell=cell)
  assert np.array_equal(np.isnan(vf), np.isnan(vc)), (vf, vc)
  assert np.array_equal(np.isinf(vf), np.isinf(vc)), (vf, vc)
  finite = np.isfinite(vc)
  chex.assert_trees_all_close(
    np.asarray(vf)[finite], np.asarray(vc)[finite], rtol=1e-10, atol=1e-12
  )
  if np.all(finite):
    chex.assert_trees_all_close(gf, gc, rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------------------
# The strategies: one sweep (a reduction, or no weight differentiated) and recompute
# ---------------------------------------------------------------------------


@jax.jit
def _strategies(h, w, ht, wt):
  """Gradients of one loss through every strategy: per token with a weight (recompute),
  'sum' (one sweep), per token in the hidden states only (one sweep, per-row residuals),
  and 'mean' times the count."""
  c = jnp.asarray(np.random.default_rng(8).normal(size=N))

  def kl(reduction, **kw):
    return jaxdiv.linear_kl_divergence(ht, wt, h, w, reduction=reduction, **NON_DIVIDING, **kw)

  recompute = jax.grad(lambda h, w: jnp.sum(c * jaxdiv.linear_kl_divergence(
    ht, wt, h, w, **NON_DIVIDING)), (0, 1))(h, w)  # fmt: skip
  hidden_only = jax.grad(lambda h: jnp.sum(c * jaxdiv.linear_kl_divergence(
    ht, wt, h, w, **NON_DIVIDING)))(h)  # fmt: skip
  total = jax.grad(lambda h, w: jaxdiv.linear_kl_divergence(
    ht, wt, h, w, reduction="sum", **NON_DIVIDING), (0, 1))(h, w)  # fmt: skip
  per_token = jax.grad(lambda h, w: jnp.sum(jaxdiv.linear_kl_divergence(
    ht, wt, h, w, **NON_DIVIDING)), (0, 1))(h, w)  # fmt: skip
  mean = jax.grad(lambda h, w: N * jaxdiv.linear_kl_divergence(
    ht, wt, h, w, reduction="mean", **NON_DIVIDING), (0, 1))(h, w)  # fmt: skip
  return recompute, hidden_only, total, per_token, mean


def test_every_strategy_gives_the_same_gradients():
  recompute, hidden_only, total, per_token, mean = _strategies(*_arrays()[:4])
  chex.assert_trees_all_close(hidden_only, recompute[0], rtol=1e-12)
  chex.assert_trees_all_close(total, per_token, rtol=1e-12)
  chex.assert_trees_all_close(mean, total, rtol=1e-12)


def test_the_strategy_is_chosen_at_trace_time_from_what_is_differentiated():
  st = _drivers.Static("f", (), ("head", "head"), 4, 8, 8, 4, 8, None, ())
  assert not _drivers.one_sweep(st, frozenset({"q_hidden", "q_weight"}))
  assert _drivers.one_sweep(st, frozenset({"q_hidden", "p_values"}))
  assert _drivers.one_sweep(st._replace(reduction="sum"), frozenset({"q_weight"}))


@pytest.mark.parametrize("reduction", [None, "sum"])
def test_forward_over_reverse_hessian_vector_products_match_core(reduction):
  # jax.hessian is jacfwd(jacrev(f)): forward mode through either strategy works
  h, w = jnp.asarray(H), jnp.asarray(W)
  v = jnp.asarray(np.random.default_rng(27).normal(size=w.shape))
  labels = jnp.asarray(LABELS)

  def hvp(f, x):
    return jax.jvp(jax.grad(f), (x,), (v,))[1]

  def fused(w):
    loss = jaxdiv.linear_cross_entropy(
      h, w, labels, z_loss=0.01, reduction=reduction, **NON_DIVIDING
    )
    return jnp.sum(loss**2) if reduction is None else loss**2

  def core(w):
    loss = jaxdiv.cross_entropy(labels=labels, q_logits=h @ w, z_loss=0.01)
    return jnp.sum(loss**2) if reduction is None else jnp.sum(loss) ** 2

  chex.assert_trees_all_close(
    jax.jit(lambda w: hvp(fused, w))(w), hvp(core, w), rtol=1e-10, atol=1e-12
  )


def test_forward_mode_raises_naming_the_core_function_to_use():
  h, w = jnp.asarray(H), jnp.asarray(W)
  f = lambda h: jaxdiv.linear_cross_entropy(h, w, jnp.asarray(LABELS))  # noqa: E731
  for transform in (
    lambda: jax.jvp(f, (h,), (h,)),
    lambda: jax.jacfwd(f)(h),
    lambda: jax.jit(lambda h: jax.jvp(f, (h,), (h,)))(h),
  ):
    with pytest.raises(TypeError, match=r"linear_cross_entropy.*jaxdiv\.cross_entropy\(labels="):
      transform()
  g = lambda z: jaxdiv.linear_kl_divergence(q_hidden=h, q_weight=w, p_logits=z)  # noqa: E731
  with pytest.raises(TypeError, match=r"jaxdiv\.kl_divergence"):
    jax.jvp(g, (h @ w,), (h @ w,))


def test_no_derivative_for_a_constant_option():
  h, w = jnp.asarray(H), jnp.asarray(W)
  f = lambda t: jaxdiv.linear_cross_entropy(h, w, jnp.asarray(LABELS), temperature=t).sum()  # noqa: E731
  with pytest.raises(
    TypeError, match=r"linear_cross_entropy: no derivative with respect to `temperature`"
  ):
    jax.grad(f)(1.5)


def test_a_repeated_eager_call_compiles_nothing(caplog):
  h, w = jnp.asarray(H, jnp.float32), jnp.asarray(W, jnp.float32)
  idx, lp = _stored(TEACHER)
  calls = (
    lambda: jaxdiv.linear_cross_entropy(
      h, w, jnp.asarray(LABELS), temperature=2.0, label_smoothing=0.1
    ),
    lambda: jax.grad(lambda h: jaxdiv.linear_kl_divergence(h, w, h, w, reduction="mean"))(h),
    lambda: jaxdiv.linear_distillation_loss(h, w, jnp.asarray(LABELS), teacher_indices=idx,
                                            teacher_log_probs=lp, hard_weight=0.5),
  )  # fmt: skip
  for call in calls:
    jax.block_until_ready(call())
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level("WARNING", logger="jax"):
      for call in calls:
        jax.block_until_ready(call())
  finally:
    jax.config.update("jax_log_compiles", False)
  assert not [r for r in caplog.records if "ompil" in r.getMessage()]


# ---------------------------------------------------------------------------
# Reductions and masks: what counts, and what a masked token gives
# ---------------------------------------------------------------------------


@jax.jit
def _masked_nan_inputs(h, w, zt):
  """A token mask over rows whose inputs are NaN: 0 and zero gradient for them."""
  keep = jnp.asarray(MASKS["token"][:, 0])
  h = jnp.where(keep[:, None], h, jnp.nan)
  zt = jnp.where(keep[:, None], zt, jnp.nan)
  labels = jnp.where(keep, jnp.asarray(LABELS), -100)
  ce = jax.value_and_grad(
    lambda h, w: jaxdiv.linear_cross_entropy(h, w, labels, reduction="mean"), (0, 1)
  )
  kl = jax.value_and_grad(lambda h, w, z: jaxdiv.linear_kl_divergence(
    p_logits=z, q_hidden=h, q_weight=w, where=keep[:, None], reduction="sum"),
    (0, 1, 2))  # fmt: skip
  per_token = jaxdiv.linear_kl_divergence(p_logits=zt, q_hidden=h, q_weight=w, where=keep[:, None])
  return ce(h, w), kl(h, w, zt), per_token


def test_masked_tokens_give_zero_with_zero_gradient_even_where_their_inputs_are_nan():
  (ce, ce_g), (kl, kl_g), per_token = _masked_nan_inputs(*_arrays()[:2], _arrays()[4])
  assert np.isfinite(ce) and np.isfinite(kl) and all(np.all(np.isfinite(g)) for g in (*ce_g, *kl_g))
  masked = ~MASKS["token"][:, 0]
  assert np.all(per_token[masked] == 0) and np.all(np.isfinite(per_token))
  for g in (ce_g[0], kl_g[0], kl_g[2]):
    assert np.all(g[masked] == 0)


@jax.jit
def _zero_weight_on_a_row_without_a_distribution(h, w, zt):
  """Per-token KL (the recomputing backward) weighted 0 on row 4, whose teacher logits are
  all ``-inf`` (a NaN loss) or finite; whole-row blocks, then with a shifted last block."""
  c = jnp.ones(N).at[4].set(0.0)
  out = []
  for kw in ({}, {"token_chunk_size": 5}):

    def weighted(h, w, zt, kw=kw):
      return jnp.sum(c * jaxdiv.linear_kl_divergence(p_logits=zt, q_hidden=h, q_weight=w, **kw))

    out.append([jax.grad(weighted, (0, 1))(h, w, zt.at[4].set(x)) for x in (-jnp.inf, 0.0)])
  return out


def test_a_row_with_zero_cotangent_adds_nothing_even_where_its_loss_is_nan():
  # the one-sweep reductions need no such guard (a masked row's inputs are zeroed, above);
  # the per-token backward gets the caller's cotangent, which may be 0 on any row
  h, w, _, _, zt = _arrays()
  for g_nan, g_finite in _zero_weight_on_a_row_without_a_distribution(h, w, zt):
    for a, b in zip(g_nan, g_finite, strict=True):
      assert np.all(np.isfinite(a))
      np.testing.assert_array_equal(a, b)


def test_a_mean_over_no_token_is_zero_with_zero_gradient():
  h, w = jnp.asarray(H), jnp.asarray(W)
  ignored = -jnp.ones(N, jnp.int32)
  v, (gh, gw) = jax.value_and_grad(
    lambda h, w: jaxdiv.linear_cross_entropy(h, w, ignored, reduction="mean"), (0, 1)
  )(h, w)
  assert v == 0 and np.all(gh == 0) and np.all(gw == 0)


# ---------------------------------------------------------------------------
# Exact at any logit offset (float32)
# ---------------------------------------------------------------------------


def _exact_head(offset, seed):
  """float32 ``(hidden, weight)`` whose product is exactly representable at the offset:
  small dyadic values plus ``offset`` through a last hidden column of ones."""
  r = np.random.default_rng(seed)
  h = np.concatenate([r.integers(-2, 3, size=(N, D - 1)), np.ones((N, 1))], axis=1)
  w = np.concatenate([r.integers(-8, 9, size=(D - 1, V)) / 8, np.full((1, V), offset)], axis=0)
  return jnp.asarray(h, jnp.float32), jnp.asarray(w, jnp.float32)


@jax.jit
def _offset_losses(hp, wp, hq, wq):
  labels = jnp.asarray(LABELS)
  t = jnp.asarray(2.0, jnp.float32)  # a power of 2 keeps the products exact

  def losses(hp, wp, hq, wq):
    ce = jaxdiv.linear_cross_entropy(hq, wq, labels, temperature=t, **NON_DIVIDING)
    kl = jaxdiv.linear_kl_divergence(hp, wp, hq, wq, temperature=t, **NON_DIVIDING)
    js = jaxdiv.linear_jensen_shannon_divergence(hp, wp, hq, wq, temperature=t, **NON_DIVIDING)
    return jnp.stack([ce, kl, js])

  c = jnp.asarray(np.random.default_rng(9).normal(size=N), jnp.float32)
  value, grads = jax.value_and_grad(lambda *a: jnp.sum(losses(*a) * c), (0, 1, 2, 3))(
    hp, wp, hq, wq
  )
  return losses(hp, wp, hq, wq), grads


def test_adding_a_constant_to_the_logits_changes_neither_value_nor_gradient():
  def run(offset_p, offset_q):
    return _offset_losses(*_exact_head(offset_p, 40), *_exact_head(offset_q, 41))

  loss0, grads0 = run(0.0, 0.0)
  for offset_p, offset_q in [(1e6, -1e6), (1e4, 1e6)]:
    loss, grads = run(offset_p, offset_q)
    chex.assert_trees_all_close(loss, loss0, rtol=2e-7, atol=2e-7)
    # every gradient but the columns and rows of ones that carry the offset
    for g, g0 in zip(grads, grads0, strict=True):
      sl = (slice(None), slice(0, -1)) if g.shape[0] == N else (slice(0, -1),)
      chex.assert_trees_all_close(g[sl], g0[sl], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("big", [1e8, -1e8, 1e30])
def test_equal_logits_at_huge_offsets_give_log_k(big):
  h = jnp.ones((1, 1), jnp.float32)
  w = jnp.full((1, 3), big, jnp.float32)
  ce = jaxdiv.linear_cross_entropy(h, w, jnp.array([1]))
  chex.assert_trees_all_close(ce, jnp.full(1, np.log(3), jnp.float32), rtol=1e-7)
  z = h @ w
  for fn in (jaxdiv.linear_kl_divergence, jaxdiv.linear_total_variation_distance):
    assert fn(q_hidden=h, q_weight=w, p_logits=z)[0] == 0
  js = jaxdiv.linear_jensen_shannon_divergence(q_hidden=h, q_weight=w, p_logits=z)
  chex.assert_trees_all_close(js, jnp.zeros(1), atol=1e-7)


def test_an_impossible_category_between_two_huge_logits_gives_log2():
  h = jnp.ones((1, 1), jnp.float32)
  w = jnp.asarray([[1e8, -jnp.inf, 1e8]], jnp.float32)
  ce = jaxdiv.linear_cross_entropy(h, w, jnp.array([0]))
  chex.assert_trees_all_close(ce, jnp.full(1, np.log(2), jnp.float32), rtol=1e-7)
  uniform = jnp.full((1, 3), 1e30, jnp.float32)  # KL([1/2, 0, 1/2] || uniform) = log(3/2)
  kl = jaxdiv.linear_kl_divergence(q_hidden=h, q_weight=uniform, p_logits=h @ w)
  chex.assert_trees_all_close(kl, jnp.full(1, np.log(1.5), jnp.float32), rtol=1e-6)


# ---------------------------------------------------------------------------
# bfloat16: gradients against the float64 gradient of the same inputs
# ---------------------------------------------------------------------------

BF_N, BF_D, BF_V = 8, 16, 32768
BF_LABELS = np.random.default_rng(50).integers(0, BF_V, BF_N)


def _bf16_head(seed, confidence):
  """bfloat16 ``(hidden, weight)`` whose row ``n`` puts probability ``confidence[n]`` (as
  rounded) on ``BF_LABELS[n]`` through its own hidden dimension ``n``; ``None``: random."""
  r = np.random.default_rng(seed)
  w = 0.3 * r.normal(size=(BF_D, BF_V))
  w[:BF_N] = 0
  w[np.arange(BF_N), BF_LABELS] = 1.0
  h = r.normal(size=(BF_N, BF_D))
  h[:, :BF_N] = 0
  w = np.asarray(jnp.asarray(w, jnp.bfloat16), np.float64)
  base = h @ w
  for n, target in enumerate(confidence):
    if target is not None:  # z_y = a + base_y: solve softmax_y = target for a
      rest = np.delete(base[n], BF_LABELS[n])
      h[n, n] = np.log(target / (1 - target)) + np.log(np.sum(np.exp(rest))) - base[n, BF_LABELS[n]]
  return jnp.asarray(h, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)


BF_STUDENT = (None, 0.99, 0.999, 0.99999, 0.999, 0.99999, None, 0.99999)
BF_TEACHER = (None, 0.999, None, 0.99999, 0.99999, 0.99, 0.999, None)
BF_CONFIDENT = np.asarray([s is not None for s in BF_STUDENT])
BF_LOSSES = {  # fused (hp, wp, hq, wq) and core (zp, zq)
  "cross_entropy": (
    lambda hp, wp, hq, wq: jaxdiv.linear_cross_entropy(hq, wq, BF_LABELS),
    lambda zp, zq: jaxdiv.cross_entropy(labels=BF_LABELS, q_logits=zq),
  ),
  "kl": (
    lambda hp, wp, hq, wq: jaxdiv.linear_kl_divergence(hp, wp, hq, wq),
    lambda zp, zq: jaxdiv.kl_divergence(p_logits=zp, q_logits=zq),
  ),
  "jensen_shannon": (
    lambda hp, wp, hq, wq: jaxdiv.linear_jensen_shannon_divergence(hp, wp, hq, wq, weight=0.9),
    lambda zp, zq: jaxdiv.jensen_shannon_divergence(p_logits=zp, q_logits=zq, weight=0.9),
  ),
  "skew_kl": (
    lambda hp, wp, hq, wq: jaxdiv.linear_skew_kl_divergence(hp, wp, hq, wq, alpha=0.1),
    lambda zp, zq: jaxdiv.skew_kl_divergence(p_logits=zp, q_logits=zq, alpha=0.1),
  ),
  "total_variation": (
    lambda hp, wp, hq, wq: jaxdiv.linear_total_variation_distance(hp, wp, hq, wq),
    lambda zp, zq: jaxdiv.total_variation_distance(p_logits=zp, q_logits=zq),
  ),
}


@jax.jit
def _bf16_gradients(rows, arrays, wide):
  """Every loss's fused bfloat16 gradients and float64 gradients on materialised logits."""
  out = {}
  for name, (fused, core) in BF_LOSSES.items():
    g = jax.grad(lambda *a, fused=fused: jnp.sum(rows.astype(jnp.float32) * fused(*a)),
                 (0, 1, 2, 3))(*arrays)  # fmt: skip
    r = jax.grad(lambda hp, wp, hq, wq, core=core: jnp.sum(rows * core(hp @ wp, hq @ wq)),
                 (0, 1, 2, 3))(*wide)  # fmt: skip
    out[name] = (g, r)
  return out


def test_bfloat16_gradients_are_within_1e_2_of_the_float64_gradient_also_on_confident_rows():
  # V = 32768 and rows whose true-class probability is 0.999 and 0.99999
  arrays = (*_bf16_head(51, BF_TEACHER), *_bf16_head(52, BF_STUDENT))
  wide = tuple(a.astype(jnp.float64) for a in arrays)
  errors = {}
  for label, rows in (("all", np.ones(BF_N)), ("confident", BF_CONFIDENT.astype(np.float64))):
    for name, (g, r) in _bf16_gradients(jnp.asarray(rows), arrays, wide).items():
      assert all(x.dtype == jnp.bfloat16 for x in g)
      errors[label, name] = max(
        float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))
        for a, b in zip(g, r, strict=True)
        if np.linalg.norm(b) > 0  # the labels loss has no teacher
      )
  assert max(errors.values()) <= 1e-2, errors


def test_bfloat16_inputs_are_accumulated_in_float32_with_the_digits_of_confident_rows():
  hq, wq = _bf16_head(52, BF_STUDENT)
  loss = jaxdiv.linear_cross_entropy(hq, wq, BF_LABELS)
  want = jaxdiv.cross_entropy(labels=BF_LABELS, q_logits=hq.astype(float) @ wq.astype(float))
  assert loss.dtype == jnp.float32
  chex.assert_trees_all_close(loss.astype(float), want, rtol=1e-5)
  # the rows are as confident as intended (1 - q_y within 10 %; bfloat16 rounds hidden)
  target = 1 - np.asarray([s for s in BF_STUDENT if s is not None])
  chex.assert_trees_all_close(-np.expm1(-np.asarray(want)[BF_CONFIDENT]), target, rtol=0.1)


# ---------------------------------------------------------------------------
# Memory: compiled temporaries, a deterministic compile-time figure
# ---------------------------------------------------------------------------


def _temp_bytes(f, *shapes):
  return jax.jit(f).lower(*shapes).compile().memory_analysis().temp_size_in_bytes


def test_blocks_are_sized_from_the_problem_and_never_larger_than_it():
  assert _drivers.plan(128, 8192) == (128, 8192)  # one block: the whole problem
  for rows, v in ((1024, 32768), (8192, 65536)):  # a multiple of 128 that divides the tokens
    n, c = _drivers.plan(rows, v)
    assert c == v and n * c <= _drivers.BLOCK_ELEMENTS and n % 128 == 0 and rows % n == 0
    assert 2 * n * c > _drivers.BLOCK_ELEMENTS or rows == n  # the largest such block
  n, c = _drivers.plan(1000, 32768)  # none divides: equal blocks of a multiple of 16 tokens
  blocks = -(-1000 // n)
  assert c == 32768 and n % 16 == 0 and n * c <= _drivers.BLOCK_ELEMENTS
  assert blocks * n - 1000 < 16 * blocks
  n3, c3 = _drivers.plan(512, 262144)  # the whole vocabulary does not fit 128 tokens
  assert n3 == 128 and c3 < 262144 and n3 * c3 <= _drivers.VOCAB_BLOCK_ELEMENTS
  assert _drivers.plan(7, 5, 4, 3) == (3, 4)  # given sizes, tokens in equal blocks
  assert _drivers.plan(3, 5, 100, 100) == (3, 5)  # never larger than the problem


MEM_N, MEM_D, MEM_V, MEM_CHUNKS = 256, 16, 4096, {"chunk_size": 256, "token_chunk_size": 32}


@pytest.mark.parametrize("name", ["cross_entropy", "kl", "jensen_shannon"])
def test_compiled_temporaries_are_a_few_blocks_not_rows_times_vocabulary(name):
  h = jax.ShapeDtypeStruct((MEM_N, MEM_D), jnp.float32)
  w = jax.ShapeDtypeStruct((MEM_D, MEM_V), jnp.float32)
  labels = jnp.zeros(MEM_N, jnp.int32)
  fns = {
    "cross_entropy": lambda hp, wp, h, w: jaxdiv.linear_cross_entropy(
      h, w, labels, **MEM_CHUNKS
    ).sum(),
    "kl": lambda hp, wp, h, w: jaxdiv.linear_kl_divergence(hp, wp, h, w, **MEM_CHUNKS).sum(),
    "jensen_shannon": lambda hp, wp, h, w: jaxdiv.linear_jensen_shannon_divergence(
      hp, wp, h, w, reduction="sum", **MEM_CHUNKS),
  }  # fmt: skip
  temp = _temp_bytes(jax.value_and_grad(fns[name], (0, 1, 2, 3)), h, w, h, w)
  block = 32 * 256 * 4
  grads = 2 * (MEM_N * MEM_D + MEM_D * MEM_V) * 4  # the gradients' accumulators
  assert temp <= 24 * block + grads, (temp, block, grads)
  assert temp * 4 <= MEM_N * MEM_V * 4  # a quarter of one [N, V] float32 array


def test_at_the_first_shapes_people_try_the_temporaries_are_no_larger_than_the_naive_steps():
  # 128 x 256 x 8192 float32, one block: the temporaries beyond one buffer the size of the
  # weight's gradient are at most the naive step's, which holds the logits
  n, d, v = 128, 256, 8192
  h, w = jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32)
  labels = jnp.zeros(n, jnp.int32)
  fused = _temp_bytes(jax.value_and_grad(
    lambda h, w: jaxdiv.linear_cross_entropy(h, w, labels, reduction="sum"), (0, 1)),
    h, w)  # fmt: skip
  naive = _temp_bytes(jax.value_and_grad(
    lambda h, w: jaxdiv.cross_entropy(labels=labels, q_logits=h @ w).sum(), (0, 1)),
    h, w)  # fmt: skip
  assert fused - d * v * 4 <= naive, (fused, naive)


def test_over_several_token_blocks_the_weight_gradient_is_accumulated_without_a_second_copy():
  # 1024 x 512 x 32768 float32, four blocks of 256 tokens: each block's `h^T dz` is added
  # into the weight's gradient in parts, so beyond that one buffer the temporaries are less
  # than one block of logits (a whole product would be a second weight-sized buffer), and
  # at least 4x below the naive step's, also where the teacher comes as logits (the naive
  # step then forms only the student's)
  n, d, v = 1024, 512, 32768
  h, w = jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32)
  zt = jax.ShapeDtypeStruct((n, v), jnp.float32)
  labels = jnp.zeros(n, jnp.int32)
  rows, cols = _drivers.plan(n, v)
  assert rows < n and cols == v
  block, grad_w = rows * cols * 4, d * v * 4
  fused = {
    "ce": lambda zt, h, w: jaxdiv.linear_cross_entropy(h, w, labels, reduction="sum"),
    "kl": lambda zt, h, w: jaxdiv.linear_kl_divergence(
      p_logits=zt, q_hidden=h, q_weight=w, reduction="sum"),
  }  # fmt: skip
  naive = {
    "ce": lambda zt, h, w: jaxdiv.cross_entropy(labels=labels, q_logits=h @ w).sum(),
    "kl": lambda zt, h, w: jaxdiv.kl_divergence(p_logits=zt, q_logits=h @ w).sum(),
  }
  for name in fused:
    f = _temp_bytes(jax.value_and_grad(fused[name], (1, 2)), zt, h, w)
    b = _temp_bytes(jax.value_and_grad(naive[name], (1, 2)), zt, h, w)
    assert f - grad_w < block, (name, f / 2**20, block / 2**20)
    assert 4 * (f - grad_w) <= b, (name, f / 2**20, b / 2**20)


def test_gemmas_vocabulary_compiles_to_small_temporaries_with_default_blocks():
  # V = 262144 (Gemma's vocabulary), N = 512, D = 256, float32: value and gradient of a KL
  # between two heads, default blocks (Liger-Kernel needed an environment variable here)
  n, d, v = 512, 256, 262144
  h, w = jax.ShapeDtypeStruct((n, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32)
  f = lambda hp, wp, h, w: jaxdiv.linear_kl_divergence(hp, wp, h, w, reduction="mean")  # noqa: E731
  temp = _temp_bytes(jax.value_and_grad(f, (2, 3)), h, w, h, w)
  assert temp <= 50 * 2**20, temp / 2**20  # the previous engine's 50 MiB; a logits array is 512


def test_bfloat16_kl_at_gemmas_vocabulary_is_within_1e_6_of_float64_on_every_row():
  n, d, v = 4, 8, 262144
  r = np.random.default_rng(61)
  arrays = [jnp.asarray(r.normal(size=s) * c, jnp.bfloat16) for s, c in
            (((n, d), 1.0), ((d, v), 0.5), ((n, d), 1.0), ((d, v), 0.5))]  # fmt: skip
  kl = jaxdiv.linear_kl_divergence(*arrays)
  wide = [a.astype(jnp.float64) for a in arrays]
  want = jaxdiv.kl_divergence(p_logits=wide[0] @ wide[1], q_logits=wide[2] @ wide[3])
  assert kl.dtype == jnp.float32 and np.all(np.asarray(kl) >= 0)
  np.testing.assert_allclose(np.asarray(kl, np.float64), np.asarray(want), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# A stored teacher: the edges of the form, on the fused path
# ---------------------------------------------------------------------------


@jax.jit
def _stored_losses(idx, lp, h, w):
  """Per-token KL of the student from a stored teacher (every tail) and its gradients."""
  out = {}
  for tail in ("residual", "renormalize", "truncate"):
    f = lambda w, tail=tail: jaxdiv.linear_kl_divergence(  # noqa: E731
      p_indices=idx, p_log_probs=lp, q_hidden=h, q_weight=w, tail=tail, **NON_DIVIDING
    )
    loss, vjp = jax.vjp(f, w)
    out[tail] = (loss, vjp(jnp.ones_like(loss))[0])
  return out


def _stored_edges():
  """A stored teacher with every edge in its own row."""
  idx, lp = (np.asarray(x) for x in _stored(TEACHER))
  idx, lp = idx.copy(), lp.astype(np.float64).copy()
  lp[3, -1] = -np.inf
  idx[3, -1] = 10**6  # padding, whatever its index
  idx[4, -1] = V  # out of range with a finite log-probability: NaN
  idx[5, -1] = idx[5, 0]  # duplicated with a finite log-probability: NaN
  lp[6] = np.log(np.full(K, 1.0 / K) * (1 + 3e-7))  # all the mass, above 1 by round-off
  idx[6] = np.arange(K)
  lp[7] = np.log(np.full(K, 1.0 / K) * 1.01)  # above 1 by more than round-off: NaN
  idx[7] = np.arange(K)
  return jnp.asarray(idx), jnp.asarray(lp)


def test_a_stored_teacher_s_edges_padding_round_off_and_invalid_rows():
  idx, lp = _stored_edges()
  out = _stored_losses(idx, lp, jnp.asarray(H), jnp.asarray(W))
  for tail, (loss, g) in out.items():
    loss = np.asarray(loss)
    assert np.all(np.isnan(loss[[4, 5, 7]])), (tail, loss)
    valid = np.setdiff1d(np.arange(N), [4, 5, 7])
    assert np.all(np.isfinite(loss[valid])) and np.all(np.isfinite(g)), tail
  # row 6 lists all its mass (round-off above 1): an unlisted mass of exactly 0, so the
  # residual cell carries no teacher mass and "residual" is "truncate" there ("renormalize"
  # also renormalises the student over the listed categories)
  np.testing.assert_allclose(out["residual"][0][6], out["truncate"][0][6], rtol=1e-12)
  # the residual tail is a divergence of the coarse-grained teacher: 0 <= it <= the full KL
  # (rows 6 and 7 store another distribution than the teacher's)
  full = np.asarray(jaxdiv.linear_kl_divergence(p_logits=TEACHER, q_hidden=H, q_weight=W))
  res = np.asarray(out["residual"][0])
  teachers = np.setdiff1d(np.arange(N), [4, 5, 6, 7])
  assert np.all(res[teachers] >= 0) and np.all(res[teachers] <= full[teachers] + 1e-12)


def test_whole_rows_take_the_residual_cells_own_rule_equal_to_the_merged_blocks(monkeypatch):
  # Whole rows (the vocabulary in one block) take the residual tail's derivative rule of
  # its own; blocks of 8 categories merge statistics. They agree on every edge row, with
  # the teacher stored as p (per token) and as q (summed); a derivative in the stored
  # log-probabilities comes from the statistics. 11 rows: traces of their own.
  calls = []
  rule = L._residual_cells
  monkeypatch.setattr(L, "_residual_cells", lambda *a: calls.append(a) or rule(*a))
  idx, lp = (x[:11] for x in _stored_edges())
  h, w = jnp.asarray(H[:11]), jnp.asarray(W)

  def losses(h, w, lp, chunks):
    per_token = jaxdiv.linear_kl_divergence(p_indices=idx, p_log_probs=lp, q_hidden=h,
                                            q_weight=w, **chunks)  # fmt: skip
    summed = jaxdiv.linear_kl_divergence(p_hidden=h, p_weight=w, q_indices=idx, q_log_probs=lp,
                                         reduction="sum", **chunks)  # fmt: skip
    return per_token, summed

  def run(chunks):
    f = lambda h, w: losses(h, w, lp, chunks)  # noqa: E731
    out, vjp = jax.vjp(f, h, w)
    ones = jax.tree.map(jnp.ones_like, out)
    nan_free = jax.tree.map(lambda o: jnp.where(jnp.isnan(o), 0.0, 1.0), out)
    return out, vjp(ones), vjp(nan_free)

  whole = jax.jit(lambda: run({"token_chunk_size": 5}))()
  assert calls, "the whole-row call did not take the residual cells' rule"
  blocks = jax.jit(lambda: run(NON_DIVIDING))()
  (tok, tot), grads, grads_valid = whole
  assert np.all(np.isnan(np.asarray(tok)[[4, 5, 7]])) and np.isnan(tot)
  # an invalid row's value is set to NaN: no derivative, as in the core functions
  np.testing.assert_array_equal(np.asarray(grads[0])[[4, 5, 7]], 0.0)
  chex.assert_trees_all_close(whole, blocks, rtol=1e-10, atol=1e-12)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads_valid))

  g_lp = jax.jit(jax.grad(lambda lp: losses(h, w, lp, {})[0][6]))(lp)
  want = jax.grad(lambda lp: jaxdiv.kl_divergence(p_indices=idx, p_log_probs=lp, q_logits=h @ w)[6])
  np.testing.assert_allclose(g_lp, want(lp), rtol=1e-10, atol=1e-12)


def test_the_residual_cells_rule_is_unchanged_by_an_offset_of_1e6_in_float32():
  # Logits on a grid of 1/16 are exact at 1e6 in float32 (ulp 0.0625), so only the rule's
  # own rounding could move. The rest's normaliser keeps its maximum apart from the sum, as
  # the statistics do: one log-sum rounded at 1e6 moved its cell by up to 0.03.
  z = jnp.asarray(rng.integers(-128, 128, size=(N, V)) / 16.0, jnp.float32)
  cols = jnp.asarray(np.argsort(-np.asarray(z), axis=-1)[:, :K].copy())
  cols = cols.at[1, -1].set(V)  # an empty slot

  def rule(z):
    cells, vjp = jax.vjp(lambda z: L._residual_cells(z, cols)[:2], z)
    g = (jnp.linspace(-1, 1, N * K).reshape(N, K), jnp.linspace(1, 2, N))
    return cells, vjp(jax.tree.map(lambda x: x.astype(jnp.float32), g))[0]

  (cells, dz), (cells_off, dz_off) = jax.jit(lambda: (rule(z), rule(z + 1e6)))()
  chex.assert_trees_all_close(cells_off, cells, rtol=0, atol=1e-6)
  np.testing.assert_allclose(dz_off, dz, rtol=0, atol=1e-6)


def test_a_stored_teacher_in_bfloat16_is_accumulated_in_float32():
  idx, lp = _stored(TEACHER)
  h, w = jnp.asarray(H, jnp.float32), jnp.asarray(W, jnp.float32)
  lp16 = lp.astype(jnp.bfloat16)
  loss = jaxdiv.linear_kl_divergence(p_indices=idx, p_log_probs=lp16, q_hidden=h, q_weight=w)
  want = jaxdiv.kl_divergence(p_indices=idx, p_log_probs=lp16,  # the same tolerance
                              q_logits=h.astype(jnp.float64) @ w.astype(jnp.float64))  # fmt: skip
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(loss, np.float64), want, rtol=2e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# The distillation loss: one sweep of the student's head for both terms
# ---------------------------------------------------------------------------


def test_distillation_is_the_weighted_sum_of_its_terms_and_gkd_switches_at_the_ends():
  h, w = jnp.asarray(H), jnp.asarray(W)
  labels, zt = jnp.asarray(LABELS), jnp.asarray(TEACHER)

  @jax.jit
  def terms():
    kw = dict(teacher_logits=zt, temperature=2.0, **NON_DIVIDING)
    both = jaxdiv.linear_distillation_loss(h, w, labels, hard_weight=0.3, soft_weight=0.5,
                                           scale_by_temperature_squared=True, **kw)  # fmt: skip
    ce = jaxdiv.linear_cross_entropy(h, w, labels)
    kl = jaxdiv.linear_kl_divergence(p_logits=zt, q_hidden=h, q_weight=w, temperature=2.0)
    ends = [jaxdiv.linear_distillation_loss(h, w, labels, divergence="gkd", beta=b, **kw)
            for b in (0.0, 1.0)]  # fmt: skip
    rkl = jaxdiv.linear_kl_divergence(h, w, p_logits=None, q_logits=jnp.where(
      jnp.isinf(zt), -1e30, zt), temperature=2.0)  # fmt: skip
    return both, ce, kl, ends, rkl

  both, ce, kl, (gkd0, gkd1), _ = terms()
  counted = LABELS >= 0
  chex.assert_trees_all_close(both, jnp.where(counted, 0.3 * ce + 0.5 * 4.0 * kl, 0.0), rtol=1e-12)
  chex.assert_trees_all_close(gkd0, jnp.where(counted, kl, 0.0), rtol=1e-12)  # forward KL
  assert np.all(
    np.asarray(gkd1)[counted] == np.inf
  )  # KL(student || teacher): the teacher rules out


def test_gkd_needs_a_concrete_beta():
  h, w = jnp.asarray(H), jnp.asarray(W)
  with pytest.raises(
    TypeError, match=r"linear_distillation_loss: divergence='gkd' needs a concrete `beta`"
  ):
    jax.jit(lambda b: jaxdiv.linear_distillation_loss(
      h, w, jnp.asarray(LABELS), teacher_logits=TEACHER, divergence="gkd", beta=b)
    )(0.5)  # fmt: skip


# ---------------------------------------------------------------------------
# Arguments: every trace-time error names the function, the argument and the shapes
# ---------------------------------------------------------------------------


def test_argument_errors_name_the_function_the_arguments_and_shapes():
  h, w = jnp.asarray(H), jnp.asarray(W)
  labels, idx = jnp.asarray(LABELS), jnp.zeros((N, K), jnp.int32)
  cases = [
    (lambda: jaxdiv.linear_cross_entropy(h, w[:4], labels),
     ValueError, r"linear_cross_entropy: `hidden`.*`weight`.*\(12, 5\).*\(4, 36\)"),
    (lambda: jaxdiv.linear_cross_entropy(h, None, labels), ValueError, "`weight` is missing"),
    (lambda: jaxdiv.linear_cross_entropy(jnp.ones((N, D), int), w, labels), TypeError,
     "linear_cross_entropy: `hidden` must be a floating"),
    (lambda: jaxdiv.linear_cross_entropy(h, w, labels[:3]), ValueError, r"`labels`.*\(12,\)"),
    (lambda: jaxdiv.linear_cross_entropy(h, w, jnp.zeros(N)), TypeError, "labels"),
    (lambda: jaxdiv.linear_cross_entropy(h, w, labels, chunk_size=0), ValueError, "chunk_size"),
    (lambda: jaxdiv.linear_cross_entropy(h, w, labels, token_chunk_size=2.5), TypeError,
     "token_chunk_size"),
    (lambda: jaxdiv.linear_cross_entropy(h, w, labels, where=jnp.ones((3, V), bool)), ValueError,
     r"`where` with shape \(3, 36\) must broadcast against the logits' shape \(12, 36\)"),
    (lambda: jaxdiv.linear_cross_entropy(h, w, labels, where=jnp.ones(N, bool)), ValueError,
     r"keep the category axis: `where=mask\[..., None\]`"),
    (lambda: jaxdiv.linear_cross_entropy(h, w, labels, reduction="avg"), ValueError,
     r"`reduction` must be None \(per token\), 'sum' or 'mean'"),
    (lambda: jaxdiv.linear_kl_divergence(p_logits=h @ w, q_logits=h @ w), ValueError,
     r"p is given as logits and q as logits; the fused form needs a \(hidden, weight\) side"),
    (lambda: jaxdiv.linear_kl_divergence(h, w, q_hidden=h, q_weight=w, p_logits=h @ w), ValueError,
     r"the distribution p is given 2 times \(as `p_hidden`/`p_weight` and `p_logits`\)"),
    (lambda: jaxdiv.linear_kl_divergence(h, w, h[:3], w), ValueError, "same batch shape"),
    (lambda: jaxdiv.linear_kl_divergence(p_indices=idx, q_hidden=h, q_weight=w), ValueError,
     "`p_indices` needs `p_log_probs`"),
    (lambda: jaxdiv.linear_kl_divergence(p_indices=idx.astype(float), p_log_probs=idx * 0.0,
                                         q_hidden=h, q_weight=w),
     TypeError, "`p_indices` must be an integer array, got dtype float"),
    (lambda: jaxdiv.linear_kl_divergence(p_indices=idx, p_log_probs=jnp.zeros((N, K + 1)),
                                         q_hidden=h, q_weight=w),
     ValueError,
     r"`p_indices` and `p_log_probs` must have the same shape.*\(12, 6\) and \(12, 7\)"),
    (lambda: jaxdiv.linear_kl_divergence(p_indices=idx, p_log_probs=idx * 0.0, p_logits=h @ w,
                                         q_hidden=h, q_weight=w),
     ValueError, r"p is given 2 times \(as `p_logits` and `p_indices`/`p_log_probs`\)"),
    (lambda: jaxdiv.linear_kl_divergence(h, w, q_hidden=h, q_weight=w, tail="rest"), ValueError,
     r"`tail` must be one of 'residual', 'renormalize', 'truncate'"),
    (lambda: jaxdiv.linear_jensen_shannon_divergence(h, w, h, w, weight=w), ValueError,
     "mixture weight"),
    (lambda: jaxdiv.linear_jensen_shannon_divergence(h, w, h, w, weight=1.5), ValueError,
     r"\[0.0, 1.0\]"),
    (lambda: jaxdiv.linear_distillation_loss(h, w, labels), ValueError, "the teacher is missing"),
    (lambda: jaxdiv.linear_distillation_loss(h, w, labels, teacher_logits=h @ w, divergence="js"),
     ValueError, r"`divergence` must be one of 'kl', 'reverse_kl', 'jsd', 'gkd'"),
    (lambda: jaxdiv.linear_distillation_loss(h, w, labels, teacher_logits=h @ w, soft_weight=0.0),
     ValueError, "`hard_weight` and `soft_weight` are both 0"),
  ]  # fmt: skip
  for call, exc, match in cases:
    with pytest.raises(exc, match=match):
      call()


@pytest.mark.parametrize(
  ("fn", "kwargs", "match"),
  [
    ("linear_cross_entropy", {"temperature": 0.0}, "`temperature` must be a positive"),
    ("linear_cross_entropy", {"soft_cap": -1.0}, "`soft_cap` must be a positive"),
    ("linear_cross_entropy", {"z_loss": -0.1}, r"`z_loss` must be a finite number >= 0"),
    (
      "linear_cross_entropy",
      {"label_smoothing": 1.5},
      r"`label_smoothing` must be in \[0.0, 1.0\]",
    ),
    ("linear_cross_entropy", {"temperature": jnp.ones(2)}, "`temperature` must be a scalar"),
    ("linear_skew_kl_divergence", {}, "`alpha` is required"),
    ("linear_skew_kl_divergence", {"alpha": -0.5}, r"`alpha` must be in \[0.0, 1.0\]"),
    ("linear_kl_divergence", {"temperature": np.inf}, "`temperature` must be a positive finite"),
  ],
)
def test_option_errors_name_the_option_and_its_domain(fn, kwargs, match):
  h, w = jnp.asarray(H), jnp.asarray(W)
  args = (h, w, jnp.asarray(LABELS)) if fn == "linear_cross_entropy" else (h, w, h, w)
  with pytest.raises((ValueError, TypeError), match=match):
    getattr(jaxdiv, fn)(*args, **kwargs)


# ---------------------------------------------------------------------------
# The per-row statistics: one merge rule for two blocks and for the shards of an axis
# ---------------------------------------------------------------------------


def test_lse_statistics_merge_the_same_across_blocks_and_across_shards():
  r = np.random.default_rng(60)
  z = r.normal(size=(5, 4, 6)) * 3  # [rows, shards, categories per shard]
  z[0, :, :] = 7.0  # ties within and across shards
  z[1, 2:] = -np.inf  # empty shards
  z[2] = -np.inf  # an empty row
  z[3, :, 0] = 1e6  # a confident row at an offset
  z = jnp.asarray(z)

  def reduce(s, ops):
    (m,) = ops.max((s.m,))
    part, top = _blocks.lse_parts(s, m)
    return _blocks.lse_total(m, *ops.sum((part, top)))

  @jax.jit
  def merged(z):
    per_shard = jax.vmap(_blocks.lse_block, in_axes=1)(z)
    shards = jax.vmap(lambda s: reduce(s, _blocks.collective("v")), axis_name="v")(per_shard)
    flat = z.reshape(5, -1)
    blocks = _blocks.merge(reduce, _blocks.lse_block(flat[:, :12]), _blocks.lse_block(flat[:, 12:]))
    return _blocks.Lse(shards.m[0], shards.t[0]), blocks

  shards, blocks = merged(z)
  got = shards.m + _blocks.log_norm(shards)
  chex.assert_trees_all_close(got, jax.nn.logsumexp(z.reshape(5, -1), axis=-1), rtol=1e-13)
  chex.assert_trees_all_close(tuple(blocks), tuple(shards), rtol=1e-13)
  # the excess counts tied maxima exactly: 24 tied terms, one left out; an empty row is -1
  assert shards.t[0] == 23.0 and shards.t[2] == -1.0


@pytest.mark.slow
def test_the_fused_benchmark_runs_and_its_losses_agree_with_the_naive_step(tmp_path):
  # scripts/bench_fused.py --quick; times are not asserted, only the figures that do not vary
  path = Path(__file__).parents[1] / "scripts" / "bench_fused.py"
  bench = runpy.run_path(str(path), run_name="bench_fused")
  assert bench["main"](["--quick", "--out", str(tmp_path)]) == 0
  results = json.loads((tmp_path / "bench_fused.json").read_text())
  (shape,) = results["shapes"].values()
  cases = {f"{loss}/{t}" for loss in bench["LOSSES"] for t in bench["TEACHERS"]
           if loss != "cross_entropy" or t == "head"}  # fmt: skip
  assert set(shape["cases"]) == cases
  for case, c in shape["cases"].items():
    for k in ("fused_sum", "fused_per_token"):
      assert c[k]["loss_rel_error"] <= 1e-5, (case, k, c[k])
      # a total variation's sign may round either way between two float32 programs
      ref = (
        "grad_rel_error_float64"
        if case.startswith("total") and k == "fused_sum"
        else "grad_rel_error"
      )
      assert c[k][ref] <= 1e-4, (case, k, c[k])
    assert c["naive"]["temp_bytes"] >= 4 * 64 * 2048  # the naive step holds the logits
  assert shape["stored_teacher"]["ratio_to_linear_cross_entropy"] > 0


# ---------------------------------------------------------------------------
# Whole-row blocks: the core kernels' value and derivative rule instead of the statistics
# ---------------------------------------------------------------------------


def _whole_row_cases(h, w, zt, y):
  """Losses of the student head ``(a, b)``: ``f(a, b, reduction, **chunks)``."""
  opts = dict(temperature=1.7, soft_cap=4.0)
  return {
    "ce, z-loss": lambda a, b, red, **c: jaxdiv.linear_cross_entropy(
      a, b, y, z_loss=1e-3, temperature=0.8, reduction=red, **c),
    "kl, teacher logits": lambda a, b, red, **c: jaxdiv.linear_kl_divergence(
      p_logits=zt, q_hidden=a, q_weight=b, reduction=red, **opts, **c),
    "reverse kl, two heads": lambda a, b, red, **c: jaxdiv.linear_kl_divergence(
      a, b, h, w, reduction=red, **c),
    "tv": lambda a, b, red, **c: jaxdiv.linear_total_variation_distance(
      p_logits=zt, q_hidden=a, q_weight=b, reduction=red, **opts, **c),
    "distillation": lambda a, b, red, **c: jaxdiv.linear_distillation_loss(
      a, b, y, teacher_hidden=h, teacher_weight=w, hard_weight=0.3, reduction=red, **c),
  }  # fmt: skip


def test_whole_row_blocks_take_the_core_kernels_and_agree_with_the_block_statistics():
  # default blocks hold whole rows (the core kernels' rules); two vocabulary blocks force the
  # mergeable statistics: values and every gradient agree to float32 round-off, per token
  # (recomputing backward) and summed (one sweep)
  rng = np.random.default_rng(7)
  n, d, v = 40, 8, 96
  h, hq = (jnp.asarray(rng.normal(size=(n, d)), jnp.float32) for _ in range(2))
  w, wq = (jnp.asarray(rng.normal(size=(d, v)), jnp.float32) for _ in range(2))
  zt = jnp.asarray(rng.normal(size=(n, v)) * 2, jnp.float32).at[3, :5].set(-jnp.inf)
  y = jnp.asarray(rng.integers(0, v, n)).at[::7].set(-100)  # some ignored labels
  c = jnp.asarray(rng.normal(size=n), jnp.float32)
  cases = _whole_row_cases(h, w, zt, y)

  def step(f, red, chunks):
    def loss(a, b):
      out = f(a, b, red, **chunks)
      return out if red else jnp.sum(c * out)

    return jax.value_and_grad(loss, (0, 1))(hq, wq)

  keys = [(name, red) for name in cases for red in (None, "sum")]

  @jax.jit
  def run():
    return [[step(cases[name], red, c) for c in ({}, {"chunk_size": v // 2})] for name, red in keys]

  for (name, red), (whole, split) in zip(keys, run(), strict=True):
    chex.assert_trees_all_close(whole, split, rtol=2e-5, atol=1e-5, custom_message=f"{name} {red}")

  # the decision: whole rows unless the vocabulary is split or a category mask is given
  def pb(vocab_block, arrays):
    comps = (_drivers.Comp(L.KL, ("p", "q"), (None, None), (), ()),)
    st = _drivers.Static("f", comps, ("head", "head"), 4, 8, 8, 4, vocab_block, None, ())
    sides = {k: _blocks.Side("head", None, None, None, None) for k in "pq"}
    return _drivers.Problem(st, sides, arrays, jnp.float32, 0, frozenset())

  assert _drivers.whole_rows(pb(8, {}))
  assert not _drivers.whole_rows(pb(4, {}))
  assert not _drivers.whole_rows(pb(8, {"vocab_mask": jnp.ones(8, bool)}))


def test_a_differentiated_call_keeps_the_digits_of_confident_rows():
  # per-row values from a one-sweep forward (the core kernels' rule for the derivative)
  # are the value-only call's: the confident rows keep their digits
  hq, wq = _bf16_head(52, BF_STUDENT)
  alone = jaxdiv.linear_cross_entropy(hq, wq, BF_LABELS)
  swept, _ = jax.vjp(lambda a: jaxdiv.linear_cross_entropy(a, wq, BF_LABELS), hq)
  want = jaxdiv.cross_entropy(labels=BF_LABELS, q_logits=hq.astype(float) @ wq.astype(float))
  chex.assert_trees_all_close(alone.astype(float), want, rtol=1e-5)
  chex.assert_trees_all_close(swept, alone, rtol=1e-6)


@pytest.mark.parametrize("gap", [17.0, 2.0, 0.46, 0.3])  # runner-up's loss ~4e-8 .. 0.49, 0.55
def test_a_label_near_the_maximum_gives_the_float64_loss_on_both_sides_of_the_refinement(gap):
  # whole-row blocks refine a confident row's value from the label's logit (below a loss of
  # 0.5): every other row, ties included, keeps the kernel's log-sum
  z = np.full((4, 64), -30.0)
  z[:, 3] = 0.0
  z[0, 7] = z[2, 7] = z[3, 7] = -gap  # the runner-up sets the loss
  z[1, 5] = 0.0  # a tie with the label: log 2
  z[3] += 1e4  # at an offset
  h, w = jnp.eye(4, dtype=jnp.float32), jnp.asarray(z, jnp.float32)  # logits h @ w = z
  labels = jnp.full((4,), 3)
  want = jaxdiv.cross_entropy(labels=labels, q_logits=jnp.asarray(w, jnp.float64))
  alone = jaxdiv.linear_cross_entropy(h, w, labels)
  swept, _ = jax.vjp(lambda a: jaxdiv.linear_cross_entropy(a, w, labels), h)
  for got in (alone, swept):
    chex.assert_trees_all_close(got.astype(float), want, rtol=2e-6, atol=0)


def test_the_one_sweep_refines_confident_rows_from_the_cotangent_over_shifted_blocks(monkeypatch):
  # the one sweep takes a confident row's exact value from its block's logit cotangent
  # (no pass of its own); with 3-token blocks over 7 rows the last block is shifted back,
  # and the rows it repeats keep the value of the block that first held them
  gaps = (17.0, 15.0, 12.0, 9.0, 17.0, 0.3, 17.0)  # losses ~4e-8 .. 1.2e-4, and 0.55
  z = np.full((7, 64), -30.0)
  z[:, 3] = 0.0
  z[np.arange(7), 7] = -np.asarray(gaps)
  z[4] += 1e4  # at an offset
  h, w = jnp.eye(7, dtype=jnp.float32), jnp.asarray(z, jnp.float32)  # logits h @ w = z
  labels = jnp.full((7,), 3)
  want = np.asarray(jaxdiv.cross_entropy(labels=labels, q_logits=jnp.asarray(w, jnp.float64)))
  calls = []
  refine = L.LabelsCE.refine
  monkeypatch.setattr(L.LabelsCE, "refine", staticmethod(lambda *a: calls.append(1) or refine(*a)))

  def fused(h, w, reduction):
    return jaxdiv.linear_cross_entropy(h, w, labels, reduction=reduction, token_chunk_size=3)

  per_token, _ = jax.vjp(lambda a: fused(a, w, None), h)  # one sweep: no weight differentiated
  total, _ = jax.value_and_grad(fused, (0, 1))(h, w, "sum")
  mean, _ = jax.value_and_grad(fused, (0, 1))(h, w, "mean")
  assert calls, "the one sweep did not refine from the cotangent"
  chex.assert_trees_all_close(per_token.astype(float), want, rtol=2e-6, atol=0)
  chex.assert_trees_all_close(float(total), want.sum(), rtol=2e-6)
  chex.assert_trees_all_close(float(mean), want.mean(), rtol=2e-6)
  # a z-loss keeps the refining pass: its value is not the kernel's alone
  lse = np.asarray(jax.nn.logsumexp(jnp.asarray(w, jnp.float64), axis=-1))
  calls.clear()
  zl = jax.value_and_grad(
    lambda h, w: jaxdiv.linear_cross_entropy(h, w, labels, z_loss=1e-4, reduction="sum"), (0, 1)
  )(h, w)[0]
  assert not calls
  chex.assert_trees_all_close(float(zl), np.sum(want + 1e-4 * lse**2), rtol=2e-6)
  # the distillation loss's hard term alone is weighted: refined by the pass, as above
  hard = jaxdiv.linear_distillation_loss(
    h, w, labels, teacher_logits=w, hard_weight=1.0, soft_weight=0.0, token_chunk_size=3
  )
  chex.assert_trees_all_close(hard.astype(float), want, rtol=2e-6, atol=0)
