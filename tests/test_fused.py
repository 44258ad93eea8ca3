"""Tests for jaxdiv._fused: fused linear-head losses against the core on materialised logits.

Compiling the blocked loops dominates the run time, so each check jits the fused loss and
its naive reference together (value and gradient in one ``jax.value_and_grad``), and the
edge-case tests reuse those compiled functions with other data (labels, masks, offsets and
the options are arguments, not static configuration).
"""

import functools
import json
import runpy
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiv
from jaxdiv import _blocks
from jaxdiv._fused import (
  linear_cross_entropy,
  linear_jensen_shannon_divergence,
  linear_kl_divergence,
  linear_skew_kl_divergence,
  linear_total_variation_distance,
)

# Block configurations: (12, 4) divides N and V (3 x 3 blocks); (8, 5) divides neither (a
# shifted last block on both axes); (None, None) is the default, one block and no loop.
N, D, V = 12, 5, 36
DIVIDING, NON_DIVIDING, ONE_BLOCK = (12, 4), (8, 5), (None, None)


def _data(seed, dtype=jnp.float64, d=D):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(N, d)), dtype), jnp.asarray(rng.normal(size=(d, V)), dtype)


def _cotangent(seed, dtype=jnp.float64):
  return jnp.asarray(np.random.default_rng(seed).normal(size=N), dtype)


LABELS = jnp.asarray([-1, -100, *np.random.default_rng(1).integers(0, V, size=N - 2)], jnp.int32)
MASK = jnp.asarray(np.arange(V) % 3 != 0)


def _vg(f, argnums, *args):
  """``((sum(c * loss), loss), grads)`` of ``f`` returning the per-token loss."""
  *args, c = args

  def scalar(*a):
    loss = f(*a)
    return jnp.sum(c * loss), loss

  return jax.value_and_grad(scalar, argnums, has_aux=True)(*args)


def _head(z, opts):
  """The fused losses' logit transform, by hand: cap tanh(z / cap), then / T."""
  if "soft_cap" in opts:
    z = opts["soft_cap"] * jnp.tanh(z / opts["soft_cap"])
  if "temperature" in opts:
    z = z / opts["temperature"]
  return z


def _assert_pair_close(pair, tol):
  ((_, loss_f), grads_f), ((_, loss_n), grads_n) = pair
  assert np.array_equal(np.isnan(loss_f), np.isnan(loss_n))
  chex.assert_trees_all_close((loss_f, grads_f), (loss_n, grads_n), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------
# linear_cross_entropy
# ---------------------------------------------------------------------------


def _ce_reference(h, w, labels, where, opts, base=None):
  """Core cross-entropy on materialised logits; smoothing as a dense target."""
  z = _head(h @ w, opts)
  if not {"smoothing", "z_loss"} & set(opts):
    return jaxdiv.cross_entropy(labels=labels, q_logits=z, where=where, base=base)
  eps, lam = opts.get("smoothing", 0.0), opts.get("z_loss", 0.0)
  incl = jnp.ones(V, bool) if where is None else where
  ignored = (labels < 0) | ~incl[jnp.clip(labels, 0)]
  target = (1 - eps) * jax.nn.one_hot(labels, V) + eps * incl / jnp.sum(incl)
  target = jnp.where(ignored[:, None], 0.0, target)
  lse = jax.nn.logsumexp(jnp.where(incl, z, -jnp.inf), axis=-1)
  loss = jaxdiv.cross_entropy(target, q_logits=z, where=where) + lam * lse**2
  return jnp.where(ignored, 0.0, loss)


@functools.partial(jax.jit, static_argnames=("chunks", "base"))
def _ce_pair(h, w, labels, where, c, opts=None, *, chunks, base=None):
  """Fused and naive cross-entropy: ``((value, loss), (dh, dw))`` for each."""
  opts = opts or {}
  chunk, token_chunk = chunks
  kw = {"label_smoothing" if k == "smoothing" else k: v for k, v in opts.items()}

  def fused(h, w):
    return linear_cross_entropy(
      h, w, labels, where=where, chunk_size=chunk, token_chunk_size=token_chunk, base=base, **kw
    )

  def naive(h, w):
    return _ce_reference(h, w, labels, where, opts, base)

  return _vg(fused, (0, 1), h, w, c), _vg(naive, (0, 1), h, w, c)


CE_CASES = {
  "float64-dividing": (jnp.float64, DIVIDING, None, 1e-12),
  "float32-non-dividing-where": (jnp.float32, NON_DIVIDING, MASK, 2e-5),
}
# float32 calls pass a traced temperature (here 1), so they share one compiled function
T32 = {"temperature": jnp.asarray(1.0, jnp.float32)}


@pytest.mark.parametrize("case", CE_CASES)
def test_linear_cross_entropy_matches_core(case):
  dtype, chunks, mask, tol = CE_CASES[case]
  h, w = _data(0, dtype)
  opts = T32 if dtype == jnp.float32 else None
  pair = _ce_pair(h, w, LABELS, mask, _cotangent(2, dtype), opts, chunks=chunks)
  _assert_pair_close(pair, tol)
  ((_, loss), (gh, _)), _ = pair
  assert loss.dtype == dtype and np.all(loss[:2] == 0) and np.all(gh[:2] == 0)


CE_OPTIONS = {"temperature": 1.7, "soft_cap": 4.0, "z_loss": 0.03, "smoothing": 0.1}


def test_linear_cross_entropy_options_match_core_with_a_dense_smoothed_target():
  # soft cap, temperature, z-loss and PyTorch-style smoothing over the included categories
  h, w = _data(30)
  opts = {k: jnp.asarray(v) for k, v in CE_OPTIONS.items()}
  pair = _ce_pair(h, w, LABELS, MASK, _cotangent(31), opts, chunks=NON_DIVIDING)
  _assert_pair_close(pair, 1e-12)
  ((_, loss), (gh, _)), _ = pair
  # an ignored label contributes exactly 0 to every term, with zero gradient
  assert np.all(loss[:2] == 0) and np.all(gh[:2] == 0)
  # the options are not a no-op: the plain loss differs
  plain = jaxdiv.cross_entropy(labels=LABELS, q_logits=h @ w, where=MASK)
  active = plain != 0
  assert np.sum(active) >= 4 and np.all(np.abs(plain - loss)[active] > 1e-3)


def test_linear_cross_entropy_one_block_batch_dims_where_and_base_match_core():
  h, w = _data(3)
  c = _cotangent(4)
  pair = _ce_pair(h[None], w, LABELS[None], MASK, c[None], None, chunks=ONE_BLOCK, base=2)
  _assert_pair_close(pair, 1e-12)


def test_linear_cross_entropy_out_of_range_is_nan_and_ignored_is_zero():
  h, w = _data(5)
  labels = LABELS.at[2:5].set(jnp.asarray([V, V + 5, 7], jnp.int32))
  c = _cotangent(6)
  ((_, loss), (gh, gw)), _ = _ce_pair(h, w, labels, None, c, None, chunks=DIVIDING)
  assert np.all(loss[:2] == 0) and np.all(np.isnan(loss[2:4])) and np.all(np.isfinite(loss[4:]))
  assert np.all(gh[:4] == 0) and np.all(np.isfinite(gw))
  # The gradient equals the naive one with the out-of-range tokens ignored instead.
  ignored = labels.at[2:4].set(-1)
  _, ((_, _), grads_n) = _ce_pair(h, w, ignored, None, c, None, chunks=DIVIDING)
  chex.assert_trees_all_close((gh, gw), grads_n, rtol=1e-12, atol=1e-12)


def test_linear_cross_entropy_all_ignored_or_all_excluded_gives_exact_zeros():
  h, w = _data(7)
  c = _cotangent(8)
  (value, (gh, gw)), _ = _ce_pair(h, w, -jnp.ones(N, jnp.int32), None, c, None, chunks=DIVIDING)
  assert value[0] == 0 and np.all(value[1] == 0) and np.all(gh == 0) and np.all(gw == 0)
  h, w, c = h.astype(jnp.float32), w.astype(jnp.float32), c.astype(jnp.float32)
  empty = jnp.zeros(V, bool)
  (value, (gh, gw)), _ = _ce_pair(h, w, LABELS, empty, c, T32, chunks=NON_DIVIDING)
  assert np.all(value[1] == 0) and np.all(gh == 0) and np.all(gw == 0)


# ---------------------------------------------------------------------------
# The pair losses: KL, Jensen-Shannon, skew KL, total variation
# ---------------------------------------------------------------------------

PAIRS = {
  "kl": (linear_kl_divergence, jaxdiv.kl_divergence, None),
  "jensen_shannon": (linear_jensen_shannon_divergence, jaxdiv.jensen_shannon_divergence, "weight"),
  "skew_kl": (linear_skew_kl_divergence, jaxdiv.skew_kl_divergence, "alpha"),
  "total_variation": (linear_total_variation_distance, jaxdiv.total_variation_distance, None),
}
MIX = {"weight": 0.3, "alpha": 0.2}


@functools.partial(jax.jit, static_argnames=("name", "layout", "chunks"))
def _pair_vg(arrays, where, opts, c, *, name, layout, chunks):
  """Fused and core ``((value, loss), grads)`` of one pair loss, grads in every array.

  ``layout``: "teacher-logits" (p as logits, q as hidden @ weight) or "student-p" (p as
  hidden @ weight, q as logits: reverse KL). ``opts``: traced temperature, soft cap and
  mixture weight.
  """
  fused_fn, core_fn, mix = PAIRS[name]
  chunk, token_chunk = chunks
  mix_kw = {} if mix is None else {mix: opts["mix"]}
  head_kw = {k: v for k, v in opts.items() if k != "mix"}

  def sides(a, b, c):
    if layout == "teacher-logits":
      return {"p_logits": a, "q_hidden": b, "q_weight": c}, (a, b @ c)
    return {"p_hidden": a, "p_weight": b, "q_logits": c}, (a @ b, c)

  def fused(*a):
    kw = sides(*a)[0]
    return fused_fn(
      **kw, **mix_kw, **head_kw, where=where, chunk_size=chunk, token_chunk_size=token_chunk
    )

  def naive(*a):
    zp, zq = sides(*a)[1]
    return core_fn(p_logits=_head(zp, opts), q_logits=_head(zq, opts), where=where, **mix_kw)

  return _vg(fused, (0, 1, 2), *arrays, c), _vg(naive, (0, 1, 2), *arrays, c)


def _teacher_logits(seed, dtype=jnp.float64):
  z = jnp.asarray(2 * np.random.default_rng(seed).normal(size=(N, V)), dtype)
  return z.at[:, :4].set(-jnp.inf)  # categories the teacher rules out


def _pair32(name, arrays, where=MASK, temperature=1.0, mix=None, seed=15):
  """A pair loss in float32 with the teacher as logits and a traced temperature and mixture
  weight: one compiled function per loss serves every float32 test below."""
  weight = PAIRS[name][2]
  opts = {"temperature": jnp.asarray(temperature, jnp.float32)}
  if weight is not None:
    opts["mix"] = jnp.asarray(MIX[weight] if mix is None else mix, jnp.float32)
  arrays = tuple(jnp.asarray(a, jnp.float32) for a in arrays)
  c = _cotangent(seed, jnp.float32)
  return _pair_vg(arrays, where, opts, c, name=name, layout="teacher-logits", chunks=(5, 7))


def _pair_data(seed):
  return (_teacher_logits(seed, jnp.float32), *_data(seed + 1, jnp.float32))


@pytest.mark.parametrize("name", PAIRS)
def test_pair_loss_matches_core_with_where_and_a_teacher_that_rules_out_categories(name):
  arrays = _pair_data(10)
  pair = _pair32(name, arrays, temperature=1.7)
  _assert_pair_close(pair, 3e-5)
  ((_, loss), grads), _ = pair
  assert np.all(np.isfinite(loss)) and all(np.all(np.isfinite(g)) for g in grads)
  assert np.all(grads[0][:, :4] == 0)  # no gradient into the ruled-out teacher logits
  # A fully excluded row (an all-False mask) gives exactly 0, with zero gradients.
  ((_, loss), grads), _ = _pair32(name, arrays, where=jnp.zeros(V, bool))
  assert np.all(loss == 0) and all(np.all(g == 0) for g in grads)
  # A teacher row with no possible category is not a distribution: NaN, as in the core.
  invalid = (arrays[0].at[0].set(-jnp.inf), *arrays[1:])
  ((_, bad), _), ((_, core_bad), _) = _pair32(name, invalid, temperature=1.7)
  ((_, good), _), _ = pair
  assert np.isnan(bad[0]) and np.isnan(core_bad[0]) and np.array_equal(bad[1:], good[1:])


def test_soft_cap_and_temperature_apply_to_both_sides():
  hq, wq = _data(11)
  opts = {"temperature": jnp.asarray(1.7), "soft_cap": jnp.asarray(4.0)}
  pair = _pair_vg(
    (_teacher_logits(12), hq, wq), None, opts, _cotangent(13), name="kl",
    layout="teacher-logits", chunks=NON_DIVIDING,
  )  # fmt: skip
  _assert_pair_close(pair, 1e-12)


def test_reverse_kl_is_kl_with_the_student_as_p_and_its_gradients_flow_to_p():
  hs, ws = _data(16)
  teacher = _teacher_logits(17).at[:, :4].set(-3.0)  # finite: KL(student || teacher) < inf
  pair = _pair_vg(
    (hs, ws, teacher), None, {}, _cotangent(18), name="kl", layout="student-p", chunks=ONE_BLOCK
  )
  _assert_pair_close(pair, 1e-12)
  ((_, loss), (g_hidden, g_weight, _)), _ = pair
  assert np.all(loss > 0) and np.all(np.abs(g_hidden) > 0) and np.any(np.abs(g_weight) > 0)
  # KL(student || teacher) = inf where the teacher rules out a category the student allows
  ((_, loss), _), _ = _pair_vg(
    (hs, ws, _teacher_logits(17)), None, {}, _cotangent(18), name="kl", layout="student-p",
    chunks=ONE_BLOCK,
  )  # fmt: skip
  assert np.all(loss == np.inf)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_mixture_weights_cover_the_closed_interval(value):
  # JS at w = 0 and 1 is 0; skew KL at alpha = 0 is KL and at alpha = 1 is 0.
  arrays = _pair_data(10)
  ((_, js), grads), _ = _pair32("jensen_shannon", arrays, mix=value)
  assert np.all(js == 0) and all(np.all(np.isfinite(g)) for g in grads)
  ((_, skew), skew_grads), _ = _pair32("skew_kl", arrays, mix=value)
  if value == 1.0:
    assert np.all(skew == 0)
    chex.assert_trees_all_close(skew_grads, jax.tree.map(jnp.zeros_like, skew_grads), atol=1e-7)
  else:
    ((_, kl), kl_grads), _ = _pair32("kl", arrays)
    chex.assert_trees_all_close((skew, skew_grads), (kl, kl_grads), rtol=1e-5, atol=1e-6)


def test_linear_jensen_shannon_of_disjoint_supports_is_log2():
  zp = jnp.zeros((N, V)).at[:, 0].set(40.0)
  hq, wq = jnp.ones((N, D)), jnp.zeros((D, V)).at[:, 1].set(8.0)
  arrays, where = (zp, hq, wq), MASK.at[:2].set(True)
  ((_, loss), _), _ = _pair32("jensen_shannon", arrays, where=where, mix=0.5)
  chex.assert_trees_all_close(loss, jnp.full(N, np.log(2), jnp.float32), rtol=1e-6)


# ---------------------------------------------------------------------------
# Exact at any logit offset (float32)
# ---------------------------------------------------------------------------


def _exact_head(offset, seed):
  """float32 ``(hidden, weight)`` whose product is exactly representable at the offset:
  small dyadic values plus ``offset`` through a last hidden column of ones."""
  rng = np.random.default_rng(seed)
  h = np.concatenate([rng.integers(-2, 3, size=(N, D - 1)), np.ones((N, 1))], axis=1)
  w = np.concatenate([rng.integers(-8, 9, size=(D - 1, V)) / 8, np.full((1, V), offset)], axis=0)
  return jnp.asarray(h, jnp.float32), jnp.asarray(w, jnp.float32)


def _exact_teacher(offset, seed=41):
  z = np.random.default_rng(seed).integers(-24, 25, size=(N, V)) / 8 + offset
  return jnp.asarray(z, jnp.float32).at[:, :4].set(-jnp.inf)


def _unshifted(grads):
  """The gradients an offset must not change: all but the student's column/row of ones."""
  *rest, dh, dw = grads
  return (*rest, dh[:, :-1], dw[:-1])


@pytest.mark.parametrize("name", ["cross_entropy", *PAIRS])
def test_adding_a_constant_to_the_logits_changes_neither_value_nor_gradient(name):
  def run(offset_p, offset_q):
    hq, wq = _exact_head(offset_q, 40)
    if name == "cross_entropy":
      opts = {"temperature": T32["temperature"] * 2}
      return _ce_pair(hq, wq, LABELS, MASK, _cotangent(42, jnp.float32), opts, chunks=NON_DIVIDING)
    return _pair32(name, (_exact_teacher(offset_p), hq, wq), temperature=2.0)

  (_, loss0), grads0 = run(0.0, 0.0)[0]  # a power-of-2 temperature keeps values exact
  for offset_p, offset_q in [(1e6, -1e6), (1e4, 1e6)]:
    (_, loss), grads = run(offset_p, offset_q)[0]
    chex.assert_trees_all_close(loss, loss0, rtol=2e-7, atol=2e-7)
    chex.assert_trees_all_close(_unshifted(grads), _unshifted(grads0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("big", [1e8, -1e8, 1e30])
def test_equal_logits_at_huge_offsets_give_log_k(big):
  h = jnp.ones((1, 1), jnp.float32)
  w = jnp.full((1, 3), big, jnp.float32)
  ce = linear_cross_entropy(h, w, jnp.array([1]))
  chex.assert_trees_all_close(ce, jnp.full(1, np.log(3), jnp.float32), rtol=1e-7)
  # the same teacher and student at the offset: every divergence is 0
  z = h @ w
  for fn in (linear_kl_divergence, linear_total_variation_distance):
    assert fn(q_hidden=h, q_weight=w, p_logits=z)[0] == 0
  js = linear_jensen_shannon_divergence(q_hidden=h, q_weight=w, p_logits=z)
  chex.assert_trees_all_close(js, jnp.zeros(1), atol=1e-7)


def test_an_impossible_category_between_two_huge_logits_gives_log2():
  h = jnp.ones((1, 1), jnp.float32)
  w = jnp.asarray([[1e8, -jnp.inf, 1e8]], jnp.float32)
  ce = linear_cross_entropy(h, w, jnp.array([0]))
  chex.assert_trees_all_close(ce, jnp.full(1, np.log(2), jnp.float32), rtol=1e-7)
  # KL([1/2, 0, 1/2] || uniform) = log(3/2), the student uniform at 1e30
  uniform = jnp.full((1, 3), 1e30, jnp.float32)
  kl = linear_kl_divergence(q_hidden=h, q_weight=uniform, p_logits=h @ w)
  chex.assert_trees_all_close(kl, jnp.full(1, np.log(1.5), jnp.float32), rtol=1e-6)


# ---------------------------------------------------------------------------
# bfloat16: gradients against the float64 gradient of the same inputs
# ---------------------------------------------------------------------------

BF_N, BF_D, BF_V = 8, 16, 32768
BF_LABELS = np.random.default_rng(50).integers(0, BF_V, BF_N)


def _bf16_head(seed, confidence):
  """bfloat16 ``(hidden, weight)`` whose row ``n`` puts probability ``confidence[n]`` (as
  rounded) on ``BF_LABELS[n]`` through its own hidden dimension ``n``; ``None``: random."""
  rng = np.random.default_rng(seed)
  w = 0.3 * rng.normal(size=(BF_D, BF_V))
  w[:BF_N] = 0
  w[np.arange(BF_N), BF_LABELS] = 1.0
  h = rng.normal(size=(BF_N, BF_D))
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
BF_CONFIDENT = np.asarray([s is not None for s in BF_STUDENT], np.float64)
BF_LOSSES = {
  "cross_entropy": (
    lambda hp, wp, hq, wq: linear_cross_entropy(hq, wq, BF_LABELS),
    lambda zp, zq: jaxdiv.cross_entropy(labels=BF_LABELS, q_logits=zq),
  ),
  "kl": (
    lambda hp, wp, hq, wq: linear_kl_divergence(hp, wp, hq, wq),
    lambda zp, zq: jaxdiv.kl_divergence(p_logits=zp, q_logits=zq),
  ),
  "jensen_shannon": (
    lambda hp, wp, hq, wq: linear_jensen_shannon_divergence(hp, wp, hq, wq, weight=0.9),
    lambda zp, zq: jaxdiv.jensen_shannon_divergence(p_logits=zp, q_logits=zq, weight=0.9),
  ),
  "skew_kl": (
    lambda hp, wp, hq, wq: linear_skew_kl_divergence(hp, wp, hq, wq, alpha=0.1),
    lambda zp, zq: jaxdiv.skew_kl_divergence(p_logits=zp, q_logits=zq, alpha=0.1),
  ),
  "total_variation": (
    lambda hp, wp, hq, wq: linear_total_variation_distance(hp, wp, hq, wq),
    lambda zp, zq: jaxdiv.total_variation_distance(p_logits=zp, q_logits=zq),
  ),
}


def bf16_gradient_errors(name):
  """Relative Frobenius errors of the fused bfloat16 gradients (hp, wp, hq, wq) against the
  float64 gradients of the same inputs on materialised logits: every row, then the
  confident rows only."""
  fused, core = BF_LOSSES[name]
  arrays = (*_bf16_head(51, BF_TEACHER), *_bf16_head(52, BF_STUDENT))
  wide = tuple(a.astype(jnp.float64) for a in arrays)
  rows = np.stack([np.ones(BF_N), BF_CONFIDENT])

  @jax.jit
  def grads(c, arrays, wide):
    def fused_sum(*a):
      return jnp.sum(c.astype(jnp.float32) * fused(*a))

    def core_sum(hp, wp, hq, wq):
      return jnp.sum(c * core(hp @ wp, hq @ wq))

    return jax.grad(fused_sum, (0, 1, 2, 3))(*arrays), jax.grad(core_sum, (0, 1, 2, 3))(*wide)

  errors = {}
  for label, c in zip(("all", "confident"), rows, strict=True):
    g, r = grads(c, arrays, wide)
    assert all(x.dtype == jnp.bfloat16 for x in g)
    errors[label] = [
      float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))
      for a, b in zip(g, r, strict=True)
      if np.linalg.norm(b) > 0  # the labels loss has no teacher
    ]
  return errors


def test_bfloat16_inputs_are_accumulated_in_float32_with_the_digits_of_confident_rows():
  hq, wq = _bf16_head(52, BF_STUDENT)
  loss = linear_cross_entropy(hq, wq, BF_LABELS)
  want = jaxdiv.cross_entropy(labels=BF_LABELS, q_logits=hq.astype(float) @ wq.astype(float))
  assert loss.dtype == jnp.float32
  chex.assert_trees_all_close(loss.astype(float), want, rtol=1e-5)
  # the rows are as confident as intended (1 - q_y within 10 %; bfloat16 rounds hidden)
  confident = BF_CONFIDENT > 0
  target = 1 - np.asarray([s for s in BF_STUDENT if s is not None])
  chex.assert_trees_all_close(-np.expm1(-np.asarray(want)[confident]), target, rtol=0.1)


@pytest.mark.parametrize("name", BF_LOSSES)
def test_bfloat16_gradients_are_within_1e_2_of_the_float64_gradient(name):
  # V = 32768 and rows whose true-class probability is 0.999 and 0.99999
  errors = bf16_gradient_errors(name)
  assert max(errors["all"]) <= 1e-2 and max(errors["confident"]) <= 1e-2, errors


# ---------------------------------------------------------------------------
# Memory: compiled temporaries O(rows x chunk), a deterministic compile-time figure
# ---------------------------------------------------------------------------

MEM_N, MEM_D, MEM_V, MEM_CHUNKS = 256, 16, 4096, (256, 32)


@pytest.mark.parametrize("name", ["cross_entropy", *PAIRS])
def test_compiled_temporaries_are_rows_times_chunk_not_rows_times_vocabulary(name):
  chunk, token_chunk = MEM_CHUNKS
  kw = {"chunk_size": chunk, "token_chunk_size": token_chunk}
  h = jax.ShapeDtypeStruct((MEM_N, MEM_D), jnp.float32)
  w = jax.ShapeDtypeStruct((MEM_D, MEM_V), jnp.float32)
  if name == "cross_entropy":
    labels = jnp.zeros(MEM_N, jnp.int32)
    loss = lambda hp, wp, h, w: linear_cross_entropy(h, w, labels, **kw).sum()  # noqa: E731
  else:
    fn, _, mix = PAIRS[name]
    mix_kw = {} if mix is None else {mix: MIX[mix]}
    loss = lambda hp, wp, h, w: fn(hp, wp, h, w, **mix_kw, **kw).sum()  # noqa: E731
  compiled = jax.jit(jax.value_and_grad(loss, (0, 1, 2, 3))).lower(h, w, h, w).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  block = token_chunk * chunk * 4
  grads = 2 * (MEM_N * MEM_D + MEM_D * MEM_V) * 4  # the gradients themselves (both sides)
  assert temp <= 16 * block + grads, (temp, block, grads)
  assert temp * 4 <= MEM_N * MEM_V * 4  # a quarter of one [N, V] float32 array


def test_bench_quick_meets_the_memory_bound_and_agrees(tmp_path):
  # scripts/bench_fused.py --quick. Memory is memory_analysis() of the compiled
  # value-and-gradient: a deterministic compile-time figure (times are not asserted).
  path = Path(__file__).parents[1] / "scripts" / "bench_fused.py"
  bench = runpy.run_path(str(path), run_name="bench_fused")
  assert bench["main"](["--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
  results = json.loads((tmp_path / "bench_fused.json").read_text())
  for case in bench["CASES"]:
    r = results["cases"][case]
    assert r["naive_temp_bytes"] >= r["logits_bytes"]  # the naive version holds the logits
    assert r["fused_temp_bytes"] * 8 <= r["naive_temp_bytes"], r
    assert r["grad_rel_error"] <= 1e-4 and r["loss_rel_error"] <= 1e-5, r


# ---------------------------------------------------------------------------
# Derivatives: forward mode raises a useful error; forward-over-reverse works
# ---------------------------------------------------------------------------


def test_forward_mode_raises_naming_the_core_function_to_use():
  h, w = _data(25)
  f = lambda h: linear_cross_entropy(h, w, LABELS)  # noqa: E731
  for transform in (
    lambda: jax.jvp(f, (h,), (h,)),
    lambda: jax.jacfwd(f)(h),
    lambda: jax.jit(lambda h: jax.jvp(f, (h,), (h,)))(h),
  ):
    with pytest.raises(TypeError, match=r"linear_cross_entropy.*jaxdiv\.cross_entropy\(labels="):
      transform()
  g = lambda z: linear_kl_divergence(q_hidden=h, q_weight=w, p_logits=z)  # noqa: E731
  with pytest.raises(TypeError, match=r"jaxdiv\.kl_divergence"):
    jax.jvp(g, (h @ w,), (h @ w,))


def test_forward_over_reverse_hessian_vector_products_match_core():
  # jax.hessian is jacfwd(jacrev(f)): forward mode through the backward pass works
  h, w = _data(26)
  v = jnp.asarray(np.random.default_rng(27).normal(size=w.shape))

  def hvp(f, x):
    return jax.jvp(jax.grad(f), (x,), (v,))[1]

  def fused(w):
    return jnp.sum(linear_cross_entropy(h, w, LABELS, chunk_size=8) ** 2)

  def naive(w):
    return jnp.sum(jaxdiv.cross_entropy(labels=LABELS, q_logits=h @ w) ** 2)

  chex.assert_trees_all_close(hvp(fused, w), hvp(naive, w), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


def test_a_repeated_eager_call_compiles_nothing(caplog):
  h, w = _data(29, jnp.float32)
  calls = (
    lambda: linear_cross_entropy(h, w, LABELS, temperature=2.0, label_smoothing=0.1),
    lambda: jax.grad(lambda h: linear_kl_divergence(h, w, h, w).sum())(h),
  )
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


def test_labels_may_be_given_by_keyword():
  h, w = _data(27)
  chex.assert_trees_all_close(
    linear_cross_entropy(h, w, labels=LABELS), linear_cross_entropy(h, w, LABELS), atol=0
  )


def test_argument_errors_name_the_function_the_arguments_and_shapes():
  h, w = _data(26)
  shapes = r"linear_cross_entropy: `hidden`.*`weight`.*\(12, 5\).*\(4, 36\)"
  with pytest.raises(ValueError, match=shapes):
    linear_cross_entropy(h, w[:4], LABELS)
  with pytest.raises(ValueError, match="`weight`") as info:
    linear_cross_entropy(h, None, LABELS)
  assert "q_" not in str(info.value)
  with pytest.raises(TypeError, match="linear_cross_entropy: `hidden` must be a floating"):
    linear_cross_entropy(jnp.ones((N, D), int), w, LABELS)
  with pytest.raises(ValueError, match="linear_cross_entropy: `labels`"):
    linear_cross_entropy(h, w, LABELS[:3])
  with pytest.raises(TypeError, match="labels"):
    linear_cross_entropy(h, w, jnp.zeros(N))
  with pytest.raises(ValueError, match="chunk_size"):
    linear_cross_entropy(h, w, LABELS, chunk_size=0)
  with pytest.raises(TypeError, match="token_chunk_size"):
    linear_cross_entropy(h, w, LABELS, token_chunk_size=2.5)
  with pytest.raises(ValueError, match=r"where.*\(36,\)"):
    linear_cross_entropy(h, w, LABELS, where=jnp.ones((N, V), bool))
  with pytest.raises(ValueError, match="both distributions are given as logits"):
    linear_kl_divergence(p_logits=h @ w, q_logits=h @ w)
  with pytest.raises(ValueError, match="given twice"):
    linear_kl_divergence(h, w, q_hidden=h, q_weight=w, p_logits=h @ w)
  with pytest.raises(ValueError, match="same batch shape"):
    linear_kl_divergence(h, w, h[:3], w)
  with pytest.raises(ValueError, match="mixture weight"):
    linear_jensen_shannon_divergence(h, w, h, w, weight=w)
  with pytest.raises(ValueError, match=r"\[0.0, 1.0\]"):
    linear_jensen_shannon_divergence(h, w, h, w, weight=1.5)


@pytest.mark.parametrize(
  ("fn", "kwargs", "match"),
  [
    (linear_cross_entropy, {"temperature": 0.0}, "`temperature` must be a positive"),
    (linear_cross_entropy, {"soft_cap": -1.0}, "`soft_cap` must be a positive"),
    (linear_cross_entropy, {"z_loss": -0.1}, r"`z_loss` must be a finite number >= 0"),
    (linear_cross_entropy, {"label_smoothing": 1.5}, r"`label_smoothing` must be in \[0.0, 1.0\]"),
    (linear_cross_entropy, {"temperature": jnp.ones(2)}, "`temperature` must be a scalar"),
    (linear_skew_kl_divergence, {}, "`alpha` is required"),
    (linear_skew_kl_divergence, {"alpha": -0.5}, r"`alpha` must be in \[0.0, 1.0\]"),
    (linear_kl_divergence, {"temperature": np.inf}, "`temperature` must be a positive finite"),
  ],
)
def test_option_errors_name_the_option_and_its_domain(fn, kwargs, match):
  h, w = _data(28)
  args = (h, w, LABELS) if fn is linear_cross_entropy else (h, w, h, w)
  with pytest.raises((ValueError, TypeError), match=match):
    fn(*args, **kwargs)


# ---------------------------------------------------------------------------
# The per-row statistics merge across vocabulary shards
# ---------------------------------------------------------------------------


def test_lse_statistics_merge_across_shards_with_pmax_and_psum():
  rng = np.random.default_rng(60)
  z = rng.normal(size=(5, 4, 6)) * 3  # [rows, shards, categories per shard]
  z[0, :, :] = 7.0  # ties within and across shards
  z[1, 2:] = -np.inf  # empty shards
  z[2] = -np.inf  # an empty row
  z[3, :, 0] = 1e6  # a confident row at an offset
  z = jnp.asarray(z)

  @jax.jit
  def merged(z):
    per_shard = jax.vmap(_blocks.lse_block, in_axes=1)(z)
    reduced = jax.vmap(lambda s: _blocks.lse_all_reduce(s, "v"), axis_name="v")(per_shard)
    flat = z.reshape(5, -1)
    sequential = _blocks.lse_merge(_blocks.lse_block(flat[:, :12]), _blocks.lse_block(flat[:, 12:]))
    return _blocks.Lse(reduced.m[0], reduced.t[0]), sequential

  reduced, sequential = merged(z)
  got = reduced.m + _blocks.log_norm(reduced)
  chex.assert_trees_all_close(got, jax.nn.logsumexp(z.reshape(5, -1), axis=-1), rtol=1e-13)
  chex.assert_trees_all_close(tuple(sequential), tuple(reduced), rtol=1e-13)
  # the excess counts tied maxima exactly: 24 tied terms, one left out; an empty row is -1
  assert reduced.t[0] == 23.0 and reduced.t[2] == -1.0
