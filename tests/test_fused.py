"""Tests for jaxdiv._fused: fused linear-head losses against the core on materialised logits.

Compiling the blocked loops dominates the run time, so each check jits the fused loss and
its naive reference together (value and gradient in one ``jax.value_and_grad``), and the
edge-case tests reuse those compiled functions with other data (labels, masks and the
mixture weight are arguments, not static configuration).
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
from jaxdiv._fused import (
  linear_cross_entropy,
  linear_jensen_shannon_divergence,
  linear_kl_divergence,
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


@functools.partial(jax.jit, static_argnames=("chunks", "base"))
def _ce_pair(h, w, labels, where, c, *, chunks, base=None):
  """Fused and naive cross-entropy: ``((value, loss), (dh, dw))`` for each."""
  chunk, token_chunk = chunks

  def fused(h, w):
    return linear_cross_entropy(
      h, w, labels, where=where, chunk_size=chunk, token_chunk_size=token_chunk, base=base
    )

  def naive(h, w):
    return jaxdiv.cross_entropy(labels=labels, q_logits=h @ w, where=where, base=base)

  return _vg(fused, (0, 1), h, w, c), _vg(naive, (0, 1), h, w, c)


def _assert_pair_close(pair, tol):
  ((_, loss_f), grads_f), ((_, loss_n), grads_n) = pair
  assert np.array_equal(np.isnan(loss_f), np.isnan(loss_n))
  chex.assert_trees_all_close((loss_f, grads_f), (loss_n, grads_n), rtol=tol, atol=tol)


CE_CASES = {
  "float64-dividing": (jnp.float64, DIVIDING, None, 1e-12),
  "float32-non-dividing-where": (jnp.float32, NON_DIVIDING, MASK, 2e-5),
}


@pytest.mark.parametrize("case", CE_CASES)
def test_linear_cross_entropy_matches_core(case):
  dtype, chunks, mask, tol = CE_CASES[case]
  h, w = _data(0, dtype)
  pair = _ce_pair(h, w, LABELS, mask, _cotangent(2, dtype), chunks=chunks)
  _assert_pair_close(pair, tol)
  ((_, loss), (gh, _)), _ = pair
  assert loss.dtype == dtype and np.all(loss[:2] == 0) and np.all(gh[:2] == 0)


def test_linear_cross_entropy_one_block_batch_dims_where_and_base_match_core():
  h, w = _data(3)
  c = _cotangent(4)
  pair = _ce_pair(h[None], w, LABELS[None], MASK, c[None], chunks=ONE_BLOCK, base=2)
  _assert_pair_close(pair, 1e-12)


def test_linear_cross_entropy_out_of_range_is_nan_and_ignored_is_zero():
  h, w = _data(5)
  labels = LABELS.at[2:5].set(jnp.asarray([V, V + 5, 7], jnp.int32))
  c = _cotangent(6)
  ((_, loss), (gh, gw)), _ = _ce_pair(h, w, labels, None, c, chunks=DIVIDING)
  assert np.all(loss[:2] == 0) and np.all(np.isnan(loss[2:4])) and np.all(np.isfinite(loss[4:]))
  assert np.all(gh[:4] == 0) and np.all(np.isfinite(gw))
  # The gradient equals the naive one with the out-of-range tokens ignored instead.
  ignored = labels.at[2:4].set(-1)
  _, ((_, _), grads_n) = _ce_pair(h, w, ignored, None, c, chunks=DIVIDING)
  chex.assert_trees_all_close((gh, gw), grads_n, rtol=1e-12, atol=1e-12)


def test_linear_cross_entropy_all_ignored_or_all_excluded_gives_exact_zeros():
  h, w = _data(7)
  c = _cotangent(8)
  (value, (gh, gw)), _ = _ce_pair(h, w, -jnp.ones(N, jnp.int32), None, c, chunks=DIVIDING)
  assert value[0] == 0 and np.all(value[1] == 0) and np.all(gh == 0) and np.all(gw == 0)
  h, w, c = h.astype(jnp.float32), w.astype(jnp.float32), c.astype(jnp.float32)
  empty = jnp.zeros(V, bool)
  (value, (gh, gw)), _ = _ce_pair(h, w, LABELS, empty, c, chunks=NON_DIVIDING)
  assert np.all(value[1] == 0) and np.all(gh == 0) and np.all(gw == 0)


def test_linear_cross_entropy_bfloat16_computes_in_float32():
  h, w = _data(9, jnp.bfloat16)
  c = _cotangent(10, jnp.float32)
  (_, loss), grads = jax.jit(
    lambda h, w: _vg(
      lambda h, w: linear_cross_entropy(h, w, LABELS, where=MASK, chunk_size=8, token_chunk_size=5),
      (0, 1),
      h,
      w,
      c,
    )
  )(h, w)
  assert loss.dtype == jnp.float32 and all(g.dtype == jnp.bfloat16 for g in grads)
  # The float32 computation on the same (bfloat16-representable) values.
  f32 = (h.astype(jnp.float32), w.astype(jnp.float32))
  ((_, want), grads_32), _ = _ce_pair(*f32, LABELS, MASK, c, chunks=NON_DIVIDING)
  chex.assert_trees_all_close(loss, want, rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_close(
    tuple(g.astype(jnp.float32) for g in grads), grads_32, rtol=1e-2, atol=1e-2
  )


@jax.jit
def _kl_linear_pair(hp, wp, hq, wq, c):
  """KL(p || q), both sides ``hidden @ weight`` (different widths), non-dividing blocks."""

  def fused(hp, wp, hq, wq):
    return linear_kl_divergence(hp, wp, hq, wq, chunk_size=10, token_chunk_size=5)

  def naive(hp, wp, hq, wq):
    return jaxdiv.kl_divergence(p_logits=hp @ wp, q_logits=hq @ wq)

  return _vg(fused, (0, 1, 2, 3), hp, wp, hq, wq, c), _vg(naive, (0, 1, 2, 3), hp, wp, hq, wq, c)


@jax.jit
def _kl_logits_pair(zp, hq, wq, c):
  """KL(teacher || student) with the teacher as logits; and the reverse KL, fused and core."""

  def fused(zp, hq, wq):
    return linear_kl_divergence(q_hidden=hq, q_weight=wq, p_logits=zp, chunk_size=8)

  def naive(zp, hq, wq):
    return jaxdiv.kl_divergence(p_logits=zp, q_logits=hq @ wq)

  pair = _vg(fused, (0, 1, 2), zp, hq, wq, c), _vg(naive, (0, 1, 2), zp, hq, wq, c)
  reverse = linear_kl_divergence(hq, wq, q_logits=zp, chunk_size=8)
  return pair, (reverse, jaxdiv.kl_divergence(p_logits=hq @ wq, q_logits=zp))


def test_linear_kl_divergence_linear_teacher_matches_core_float32():
  hq, wq = _data(10, jnp.float32)
  hp, wp = _data(11, jnp.float32, d=3)
  _assert_pair_close(_kl_linear_pair(hp, wp, hq, wq, _cotangent(12, jnp.float32)), 3e-5)


def test_linear_kl_divergence_logits_teacher_matches_core():
  hq, wq = _data(13)
  zp = jnp.asarray(np.random.default_rng(14).normal(size=(N, V)))
  pair, (reverse, want) = _kl_logits_pair(zp, hq, wq, _cotangent(15))
  _assert_pair_close(pair, 1e-12)
  chex.assert_trees_all_close(reverse, want, rtol=1e-12, atol=1e-12)
  # KL(q || q) = 0 with the teacher materialised from the same head.
  ((_, same), _), _ = _kl_logits_pair(hq @ wq, hq, wq, _cotangent(15))[0]
  chex.assert_trees_all_close(same, jnp.zeros(N), atol=1e-12)


def test_linear_kl_divergence_with_a_teacher_that_rules_out_categories():
  hq, wq = _data(16)
  zp = jnp.asarray(np.random.default_rng(17).normal(size=(N, V))).at[:, :5].set(-jnp.inf)
  pair, (reverse, _) = _kl_logits_pair(zp, hq, wq, _cotangent(18))
  # KL(teacher || student): finite, with finite gradients equal to the core's.
  _assert_pair_close(pair, 1e-12)
  ((_, loss), grads), _ = pair
  assert np.all(np.isfinite(loss)) and all(np.all(np.isfinite(g)) for g in grads)
  assert np.all(grads[0][:, :5] == 0)
  # KL(student || teacher) = inf: the student puts mass where the teacher has none.
  assert np.all(reverse == np.inf)


def _js_ref(zp, zq, w):
  lp, lq = jax.nn.log_softmax(zp), jax.nn.log_softmax(zq)
  lm = jnp.logaddexp(jnp.log(w) + lp, jnp.log1p(-w) + lq)
  return w * jnp.sum(jnp.exp(lp) * (lp - lm), -1) + (1 - w) * jnp.sum(jnp.exp(lq) * (lq - lm), -1)


@jax.jit
def _js_pair(hp, wp, hq, wq, weight, c):
  def fused(hp, wp, hq, wq, weight):
    return linear_jensen_shannon_divergence(hp, wp, hq, wq, weight=weight, chunk_size=8)

  def naive(hp, wp, hq, wq, weight):
    return _js_ref(hp @ wp, hq @ wq, weight)

  args = (hp, wp, hq, wq, weight, c)
  return _vg(fused, (0, 1, 2, 3, 4), *args), _vg(naive, (0, 1, 2, 3, 4), *args)


def test_linear_jensen_shannon_matches_reference_values_and_gradients():
  hp, wp = _data(18)
  hq, wq = _data(19)
  _assert_pair_close(_js_pair(hp, wp, hq, wq, 0.2, _cotangent(20)), 1e-10)


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_linear_jensen_shannon_is_zero_at_weight_0_and_1(weight):
  hp, wp = _data(21)
  hq, wq = _data(22)
  ((_, loss), grads), _ = _js_pair(hp, wp, hq, wq, weight, _cotangent(23))
  assert np.all(loss == 0) and all(np.all(np.isfinite(g)) for g in grads)


def test_linear_jensen_shannon_of_disjoint_supports_is_log2():
  h = jnp.ones((N, D))
  wp, wq = jnp.zeros((D, V)).at[:, 0].set(12.0), jnp.zeros((D, V)).at[:, 1].set(12.0)
  ((_, loss), _), _ = _js_pair(h, wp, h, wq, 0.5, _cotangent(24))
  chex.assert_trees_all_close(loss, jnp.full(N, np.log(2)), rtol=1e-12)


def test_forward_mode_is_not_supported():
  h, w = _data(25)
  with pytest.raises(TypeError):
    jax.jacfwd(lambda h: linear_cross_entropy(h, w, LABELS))(h)


def test_argument_errors_name_the_function_and_shapes():
  h, w = _data(26)
  with pytest.raises(ValueError, match=r"linear_cross_entropy.*\(12, 5\).*\(4, 36\)"):
    linear_cross_entropy(h, w[:4], LABELS)
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
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    linear_jensen_shannon_divergence(h, w, h, w, weight=1.5)


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
