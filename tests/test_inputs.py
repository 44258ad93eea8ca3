"""Tests for jaxdiv._inputs: argument resolution, broadcasting, dtypes and every error path."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _api import CATEGORICAL_CALLS

import jaxdiv
from jaxdiv import _inputs

P = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
Q = np.array([[0.25, 0.25, 0.5], [0.1, 0.6, 0.3]])

TWO_DIST = [jaxdiv.cross_entropy, jaxdiv.kl_divergence]
BINARY = [jaxdiv.binary_cross_entropy, jaxdiv.binary_kl_divergence]
ALL = [jaxdiv.entropy, *TWO_DIST, *BINARY]


def _name(fn):
  return fn.__name__


# ---------------------------------------------------------------------------
# A distribution given twice or not at all
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kwargs, names",
  [
    (dict(p=P, p_logits=P, q=Q), ["p", "`p`", "`p_logits`"]),
    (dict(p=P, labels=np.array([0, 1]), q=Q), ["p", "`p`", "`labels`"]),
    (dict(p_logits=P, labels=np.array([0, 1]), q=Q), ["p", "`p_logits`", "`labels`"]),
    (dict(p=P, q=Q, q_logits=Q), ["q", "`q`", "`q_logits`"]),
  ],
)
@pytest.mark.parametrize("fn", TWO_DIST, ids=_name)
def test_distribution_given_twice_is_a_value_error_naming_the_arguments(fn, kwargs, names):
  with pytest.raises(ValueError, match="given 2 times") as e:
    fn(**kwargs)
  assert fn.__name__ in str(e.value)
  for n in names:
    assert n in str(e.value)


@pytest.mark.parametrize("fn", TWO_DIST, ids=_name)
def test_missing_p_is_a_value_error_listing_its_forms(fn):
  with pytest.raises(ValueError, match=r"distribution p is missing.*`p`.*`p_logits`.*`labels`"):
    fn(q=Q)


@pytest.mark.parametrize("fn", TWO_DIST, ids=_name)
def test_missing_q_is_a_value_error_listing_its_forms(fn):
  with pytest.raises(ValueError, match=r"distribution q is missing.*`q`.*`q_logits`") as e:
    fn(P)
  assert "labels" not in str(e.value)


def test_entropy_given_twice_or_not_at_all():
  with pytest.raises(ValueError, match=r"entropy: .*given 2 times.*`p`.*`logits`"):
    jaxdiv.entropy(P, logits=P)
  with pytest.raises(ValueError, match=r"entropy: .*missing.*`p` or `p_logits`"):
    jaxdiv.entropy()


def test_entropy_takes_p_logits_like_every_other_function():
  z = np.array([[0.0, 1.0, -np.inf], [2.0, 0.5, 0.1]])
  np.testing.assert_array_equal(jaxdiv.entropy(p_logits=z), jaxdiv.entropy(logits=z))
  np.testing.assert_allclose(
    jaxdiv.entropy(p_logits=z), jaxdiv.cross_entropy(p_logits=z, q_logits=z), rtol=1e-12
  )


@pytest.mark.parametrize("fn", BINARY, ids=_name)
def test_binary_given_twice_or_not_at_all(fn):
  with pytest.raises(ValueError, match=r"given 2 times.*`q`.*`q_logits`"):
    fn(0.5, 0.5, q_logits=0.0)
  with pytest.raises(ValueError, match=r"distribution p is missing"):
    fn(q=0.5)


def test_labels_are_not_accepted_for_q_or_entropy():
  with pytest.raises(TypeError):
    jaxdiv.entropy(labels=np.array([0]))  # no such argument


# ---------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn", TWO_DIST, ids=_name)
def test_shapes_that_cannot_broadcast_name_both_shapes(fn):
  with pytest.raises(ValueError, match="cannot broadcast") as e:
    fn(np.ones((3, 4)) / 4, np.ones((2, 4)) / 4)
  assert "(3, 4)" in str(e.value) and "(2, 4)" in str(e.value)
  assert fn.__name__ in str(e.value)


@pytest.mark.parametrize("fn", BINARY, ids=_name)
def test_binary_shapes_that_cannot_broadcast_name_both_shapes(fn):
  with pytest.raises(ValueError, match=r"cannot broadcast.*\(3,\).*\(2,\)"):
    fn(np.full(3, 0.5), q_logits=np.zeros(2))


def test_where_that_cannot_broadcast_names_its_shape():
  with pytest.raises(ValueError, match=r"cannot broadcast.*`where` with shape \(4,\)"):
    jaxdiv.kl_divergence(P, Q, where=np.ones(4, bool))


@pytest.mark.parametrize("fn", ALL[:3], ids=_name)
def test_non_bool_where_is_a_type_error(fn):
  args = (P,) if fn is jaxdiv.entropy else (P, Q)
  with pytest.raises(TypeError, match="`where` must be a boolean mask"):
    fn(*args, where=np.ones(3))


@pytest.mark.parametrize("axis", [2, -3, 5])
def test_axis_out_of_range_is_a_value_error_naming_the_shape(axis):
  with pytest.raises(ValueError, match=re.escape(f"`axis`={axis} is out of range")) as e:
    jaxdiv.kl_divergence(P, Q, axis=axis)
  assert "(2, 3)" in str(e.value)


def test_non_integer_axis_is_a_type_error():
  with pytest.raises(TypeError, match="`axis` must be a single integer"):
    jaxdiv.entropy(P, axis=(0, 1))


def test_scalar_distributions_are_a_value_error():
  with pytest.raises(ValueError, match="need a category axis"):
    jaxdiv.kl_divergence(0.5, 0.5)


@pytest.mark.parametrize("labels_shape", [(2, 1), (), (3,)])
def test_labels_with_wrong_shape_are_a_value_error_naming_the_shapes(labels_shape):
  labels = np.zeros(labels_shape, np.int32)
  with pytest.raises(ValueError, match="`labels`") as e:
    jaxdiv.cross_entropy(labels=labels, q=Q)
  assert str(labels_shape) in str(e.value) and "(2,)" in str(e.value)


def test_labels_broadcast_against_the_batch_both_ways():
  q_row = Q[:1]  # batch (1,)
  labels = np.array([0, 2, 1])
  out = jaxdiv.cross_entropy(labels=labels, q=q_row)
  np.testing.assert_allclose(out, -np.log(Q[0, labels]), rtol=1e-15)
  out = jaxdiv.cross_entropy(labels=np.array([1]), q=Q)
  np.testing.assert_allclose(out, -np.log(Q[:, 1]), rtol=1e-15)


def test_labels_follow_axis():
  q_t = Q.T  # categories on axis 0, batch (2,)
  out = jaxdiv.cross_entropy(labels=np.array([2, 1]), q=q_t, axis=0)
  np.testing.assert_allclose(out, -np.log([Q[0, 2], Q[1, 1]]), rtol=1e-15)


def test_batch_dimensions_broadcast_and_are_never_averaged():
  p = np.array([0.3, 0.7])  # one p for a batch of q
  q = np.array([[0.5, 0.5], [0.1, 0.9], [0.9, 0.1]])
  out = jaxdiv.kl_divergence(p, q)
  assert out.shape == (3,)
  np.testing.assert_allclose(out[1], jaxdiv.kl_divergence(p, q[1]), rtol=1e-15)


# ---------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn", TWO_DIST, ids=_name)
def test_float_labels_are_a_type_error(fn):
  with pytest.raises(TypeError, match="`labels` must be an integer array") as e:
    fn(labels=np.array([0.0, 1.0]), q=Q)
  assert "float" in str(e.value)


def test_bool_labels_are_a_type_error():
  with pytest.raises(TypeError, match="`labels` must be an integer array"):
    jaxdiv.cross_entropy(labels=np.array([True, False]), q=Q)


@pytest.mark.parametrize("fn", ALL, ids=_name)
def test_complex_inputs_are_a_type_error(fn):
  with pytest.raises(TypeError, match="real"):
    if fn is jaxdiv.entropy:
      fn(np.array([0.5 + 0j, 0.5]))
    else:
      fn(np.array([0.5 + 0j, 0.5]), np.array([0.5, 0.5]))


def test_string_inputs_are_a_type_error():
  with pytest.raises(TypeError, match="numeric"):
    jaxdiv.entropy(np.array(["a", "b"]))


def test_integer_probabilities_are_promoted_to_the_default_float():
  out = jaxdiv.entropy(np.array([1, 0]))
  assert out.dtype == jnp.float64  # x64 is enabled in conftest
  assert jaxdiv.kl_divergence(np.array([1, 0]), np.array([1, 1], np.int32) / 2).dtype == (
    jnp.float64
  )
  assert jaxdiv.binary_cross_entropy(1, 0).dtype == jnp.float64


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16_bit_inputs_compute_and_return_float32(dtype):
  p, q = jnp.asarray(P, dtype), jnp.asarray(Q, dtype)
  outs = [
    jaxdiv.entropy(p),
    jaxdiv.entropy(logits=q),
    jaxdiv.kl_divergence(p, q),
    jaxdiv.cross_entropy(p_logits=p, q_logits=q),
    jaxdiv.cross_entropy(p, q_logits=q),
    jaxdiv.kl_divergence(labels=np.array([0, 1]), q_logits=q),
    jaxdiv.binary_cross_entropy(p, q),
    jaxdiv.binary_kl_divergence(p_logits=p, q_logits=q),
  ]
  for out in outs:
    assert out.dtype == jnp.float32
  # float32 accumulation: the bf16/f16 inputs give the float32 result of the rounded inputs
  expected = jaxdiv.kl_divergence(p.astype(jnp.float32), q.astype(jnp.float32))
  np.testing.assert_array_equal(outs[2], expected)


def test_float32_is_kept_and_float64_is_kept():
  p32, q32 = jnp.asarray(P, jnp.float32), jnp.asarray(Q, jnp.float32)
  assert jaxdiv.kl_divergence(p32, q32).dtype == jnp.float32
  assert jaxdiv.kl_divergence(P, Q).dtype == jnp.float64
  assert jaxdiv.kl_divergence(p32, Q).dtype == jnp.float64  # numpy promotion


# ---------------------------------------------------------------------------
# base
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("base", [0, -2.0, 1, 1.0, float("nan")])
@pytest.mark.parametrize("fn", ALL, ids=_name)
def test_invalid_base_is_a_value_error(fn, base):
  args = (P,) if fn is jaxdiv.entropy else (P, Q)
  with pytest.raises(ValueError, match=rf"{fn.__name__}: `base` must be positive and not 1"):
    fn(*args, base=base)


def test_apply_base_divides_by_log_base():
  x = jnp.array([1.0, 2.0])
  np.testing.assert_allclose(_inputs.apply_base(x, 2), x / np.log(2), rtol=1e-15)
  assert _inputs.apply_base(x, None) is x


# ---------------------------------------------------------------------------
# The helpers' own contracts
# ---------------------------------------------------------------------------


def test_align_moves_axis_last_and_broadcasts_where():
  p = _inputs.source("f", "p", np.ones((4, 2, 3)), None)
  a = _inputs.align("f", p, axis=0, where=np.ones((4, 1, 1), bool))
  assert a.shape == (2, 3, 4)
  assert a.sources[0].value.shape == (2, 3, 4)
  assert a.where.shape == (2, 3, 4)


def test_dist_sets_excluded_categories_to_exact_zero_probability():
  s = _inputs.source("f", "p", np.array([0.2, 0.3, 0.5]), None)
  d = _inputs.dist(s, jnp.array([True, False, True]))
  np.testing.assert_array_equal(d.prob, [0.2, 0.0, 0.5])
  np.testing.assert_array_equal(d.zero, [False, True, False])
  np.testing.assert_array_equal(d.log_prob[1], 0.0)


def test_dist_of_logits_has_safe_log_prob_at_minus_inf():
  s = _inputs.source("f", "p", None, np.array([0.0, -np.inf]))
  d = _inputs.dist(s, None)
  np.testing.assert_array_equal(d.prob, [1.0, 0.0])
  np.testing.assert_array_equal(d.log_prob, [0.0, 0.0])
  np.testing.assert_array_equal(d.zero, [False, True])


def test_probs_negative_become_nan_and_are_otherwise_used_as_given():
  s = _inputs.source("f", "p", np.array([0.7, -0.1, 0.9]), None)
  out = np.asarray(_inputs.probs(s, None))
  assert np.isnan(out[1]) and out[0] == 0.7 and out[2] == 0.9  # not renormalised


def test_label_mask_conventions():
  mask = jnp.broadcast_to(jnp.array([True, False, True, True]), (5, 4))  # aligned, as in align
  ignored, out_of_range, index = _inputs.label_mask(jnp.array([-1, 0, 3, 5, 1]), 4, mask)
  np.testing.assert_array_equal(ignored, [True, False, False, False, True])
  np.testing.assert_array_equal(out_of_range, [False, False, False, True, False])
  np.testing.assert_array_equal(index, [0, 0, 3, 0, 1])


# ---------------------------------------------------------------------------
# A distribution cannot broadcast along its own category axis
# ---------------------------------------------------------------------------

FAMILY = sorted(CATEGORICAL_CALLS)
V5 = np.full((4, 5), 0.2)


@pytest.mark.parametrize("name", [n for n in FAMILY if n != "entropy"])
@pytest.mark.parametrize("side", ["p", "q"])
@pytest.mark.parametrize("shape", [(4, 1), (), (1,)])
def test_probabilities_without_their_own_categories_are_a_value_error(name, side, shape):
  fn = getattr(jaxdiv, name)
  narrow = np.ones(shape)
  args = (narrow, V5) if side == "p" else (V5, narrow)
  what = "has no category axis" if len(shape) == 0 else "has a category axis .* of size 1"
  with pytest.raises(
    ValueError, match=rf"{name}: `{side}` with shape {re.escape(str(shape))} {what}.* 5 categories"
  ) as e:
    fn(*args, **CATEGORICAL_CALLS[name])
  assert "cannot be broadcast along its own categories" in str(e.value)
  assert "labels=" not in str(e.value)  # a float array: not a mistaken label


@pytest.mark.parametrize("fn", TWO_DIST, ids=_name)
def test_integer_probabilities_without_categories_suggest_labels(fn):
  logits = np.arange(20.0).reshape(4, 5)
  for labels in (np.array(3), np.ones((4, 1), np.int32)):
    with pytest.raises(ValueError, match=r"`p` has dtype int.*`labels=`.*one_hot\(p, 5\)"):
      fn(labels, q_logits=logits)
  # the same values as labels are the intended call
  np.testing.assert_allclose(
    fn(labels=np.full(4, 3), q_logits=logits), -jax.nn.log_softmax(logits)[:, 3], rtol=1e-12
  )


def test_category_axis_follows_axis_and_batch_broadcasting_still_works():
  with pytest.raises(ValueError, match=r"`p` with shape \(5,\) has no category axis"):
    jaxdiv.kl_divergence(np.full(5, 0.2), np.full((3, 5), 1 / 3), axis=0)
  # a p with its own 5 categories broadcasts along the batch of q
  out = jaxdiv.kl_divergence(np.full(5, 0.2), V5)
  np.testing.assert_array_equal(out, np.zeros(4))
  # logits may still be constant along the categories (a uniform distribution)
  np.testing.assert_allclose(jaxdiv.kl_divergence(V5, q_logits=np.zeros((4, 1))), 0, atol=1e-15)
  # Dirichlet concentrations are parameters, not distributions: a scalar is symmetric
  np.testing.assert_allclose(
    jaxdiv.dirichlet_kl_divergence(np.ones(3), 2.0),
    jaxdiv.dirichlet_kl_divergence(np.ones(3), np.full(3, 2.0)),
    rtol=1e-13,  # a Python scalar is a compile-time constant: the last bits may differ
  )


# ---------------------------------------------------------------------------
# A `where` over rows (padded tokens) names the form that works
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILY)
def test_where_with_the_batch_shape_names_mask_none(name):
  z = np.zeros((2, 3, 5))
  args = (z,) if name == "entropy" else (z + 0.2, z + 0.2)
  with pytest.raises(ValueError, match=re.escape("where=mask[..., None]")) as e:
    getattr(jaxdiv, name)(*args, where=np.ones((2, 3), bool), **CATEGORICAL_CALLS[name])
  assert "`where` with shape (2, 3) has the batch shape" in str(e.value)


def test_where_with_the_batch_shape_and_another_axis_names_expand_dims():
  z = np.zeros((2, 5, 3))
  with pytest.raises(ValueError, match=re.escape("where=jnp.expand_dims(mask, 1)")):
    jaxdiv.kl_divergence(p_logits=z, q_logits=z, where=np.ones((2, 3), bool), axis=1)


def test_token_masked_mean_with_mask_none():
  """The documented distillation form: padded rows give 0 with zero gradient, even NaN ones."""
  rng = np.random.default_rng(12)
  t, s = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 5))
  token_mask = np.array([[True, True, False], [True, False, False]])
  t[~token_mask] = np.nan  # padded positions may hold anything
  s[~token_mask] = np.nan

  def masked_mean(s):
    loss = jaxdiv.kl_divergence(p_logits=t, q_logits=s, where=token_mask[..., None])
    return loss.sum() / token_mask.sum()

  expected = jaxdiv.kl_divergence(p_logits=t[token_mask], q_logits=s[token_mask]).mean()
  np.testing.assert_allclose(masked_mean(s), expected, rtol=1e-12)
  g = jax.grad(masked_mean)(s)
  np.testing.assert_array_equal(g[~token_mask], 0.0)
  assert np.isfinite(g).all()


@pytest.mark.parametrize("name", ["sharded_cross_entropy", "sharded_kl_divergence"])
def test_sharded_probabilities_need_their_own_categories(name):
  mesh = jax.make_mesh((1,), ("x",))
  with pytest.raises(ValueError, match=rf"{name}: `p` with shape \(4, 1\) has a category axis"):
    getattr(jaxdiv, name)(np.ones((4, 1)), q_logits=np.zeros((4, 5)), mesh=mesh, axis_name="x")
