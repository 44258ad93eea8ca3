"""Checked mode: bad values raise clear errors eagerly, under jit, vmap and grad."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _api import CATEGORICAL_CALLS

import jaxdiv
from jaxdiv import _checks

P = jnp.array([0.5, 0.5], jnp.float32)
Q = jnp.array([0.25, 0.75], jnp.float32)

TRANSFORMS = {
  "eager": lambda f: f,
  "jit": jax.jit,
}


def _raises(match):
  return pytest.raises(Exception, match=match)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize(
  "p, message",
  [
    (jnp.array([1.5, -0.5]), "negative probability .* in `p`"),
    (jnp.array([0.5, jnp.nan]), "NaN probability .* in `p`"),
    (jnp.array([0.5, 0.6]), r"`p` \(shape \(2,\)\) does not sum to 1 along axis -1"),
  ],
)
def test_bad_probabilities_raise(transform, p, message):
  fn = TRANSFORMS[transform](jaxdiv.checked(jaxdiv.kl_divergence))
  with _raises(f"jaxdiv.kl_divergence: .*{message}"):
    jax.block_until_ready(fn(p, Q))


def test_unchecked_results_for_the_same_values_are_nan_not_finite():
  # What checked mode catches, unchecked mode turns into NaN (not a finite number),
  # except a wrong sum, which is used as given.
  assert np.isnan(jaxdiv.kl_divergence(jnp.array([1.5, -0.5]), Q))
  assert np.isnan(jaxdiv.cross_entropy(jnp.array([1.5, -0.5]), Q))
  assert np.isnan(jaxdiv.cross_entropy(labels=jnp.array(2), q=Q))
  assert np.isnan(jaxdiv.kl_divergence(P, q_logits=jnp.array([0.0, jnp.inf])))


def test_sum_check_respects_where_and_dtype_tolerance():
  kl = jaxdiv.checked(jaxdiv.kl_divergence)
  where = jnp.array([True, True, False])
  # the excluded category carries garbage: not part of the sum
  out = kl(jnp.array([0.5, 0.5, 7.0]), jnp.array([0.25, 0.75, 0.0]), where=where)
  np.testing.assert_allclose(out, jaxdiv.kl_divergence(P, Q), rtol=1e-6)
  # bfloat16 rounding of a valid distribution passes; a 1% error does not
  p16 = jax.nn.softmax(jnp.arange(64.0) / 10).astype(jnp.bfloat16)
  kl(p16, p16)
  with _raises("does not sum to 1"):
    kl(jnp.array([0.5, 0.51], jnp.float32), Q)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_label_out_of_range_raises(transform):
  ce = TRANSFORMS[transform](jaxdiv.checked(jaxdiv.cross_entropy))
  logits = jnp.zeros((3, 4))
  with _raises(r"label out of range in `labels` \(shape \(3,\)\): largest label 4 >= .* 4"):
    jax.block_until_ready(ce(labels=jnp.array([0, -1, 4]), q_logits=logits))
  # negative labels are the documented "ignore" value, not an error
  out = ce(labels=jnp.array([0, -1, 3]), q_logits=logits)
  np.testing.assert_allclose(out, [np.log(4), 0, np.log(4)], rtol=1e-6)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_bad_logits_raise(transform):
  ce = TRANSFORMS[transform](jaxdiv.checked(jaxdiv.cross_entropy))
  with _raises(r"\+inf logit .* in `q_logits`"):
    jax.block_until_ready(ce(P, q_logits=jnp.array([0.0, jnp.inf])))
  with _raises("NaN logit .* in `p_logits`"):
    jax.block_until_ready(ce(p_logits=jnp.array([0.0, jnp.nan]), q_logits=jnp.zeros(2)))


def test_vmap_and_grad_in_checked_mode():
  kl = jaxdiv.checked(jaxdiv.kl_divergence)
  ps = jnp.stack([P, jnp.array([0.2, 0.8])])
  np.testing.assert_allclose(jax.vmap(kl)(ps, jnp.stack([Q, Q])), jaxdiv.kl_divergence(ps, Q))
  with _raises("negative probability"):
    jax.vmap(kl)(jnp.stack([P, jnp.array([1.2, -0.2])]), jnp.stack([Q, Q]))
  g = jax.grad(lambda z: kl(P, q_logits=z))(jnp.zeros(2))
  np.testing.assert_allclose(g, jax.nn.softmax(jnp.zeros(2)) - P, atol=1e-7)


def test_binary_probabilities_must_lie_in_unit_interval():
  bce = jaxdiv.checked(jaxdiv.binary_cross_entropy)
  with _raises(r"probability greater than 1 .* in `p`"):
    bce(jnp.array([0.5, 1.5]), jnp.array([0.5, 0.5]))
  # +-inf logits are valid Bernoulli logits
  out = bce(jnp.array([1.0, 0.0]), q_logits=jnp.array([jnp.inf, -jnp.inf]))
  np.testing.assert_array_equal(out, [0.0, 0.0])


def test_checked_keeps_signature_and_results():
  kl = jaxdiv.checked(jaxdiv.kl_divergence)
  assert kl.__name__ == "kl_divergence"
  assert kl.__doc__ == jaxdiv.kl_divergence.__doc__
  np.testing.assert_array_equal(kl(P, Q, base=2), jaxdiv.kl_divergence(P, Q, base=2))


FAMILY = CATEGORICAL_CALLS


@pytest.mark.parametrize("name", FAMILY)
def test_every_categorical_function_checks_its_probabilities(name):
  fn = jaxdiv.checked(getattr(jaxdiv, name))
  args = (P,) if name == "entropy" else (P, Q)
  np.testing.assert_array_equal(
    fn(*args, **FAMILY[name]), getattr(jaxdiv, name)(*args, **FAMILY[name])
  )
  bad = jnp.array([1.5, -0.5])
  with _raises(f"jaxdiv.{name}: negative probability"):
    fn(bad, **FAMILY[name]) if name == "entropy" else fn(P, bad, **FAMILY[name])
  with _raises(f"jaxdiv.{name}: .*does not sum to 1"):
    fn(jnp.array([0.5, 0.6]), **FAMILY[name]) if name == "entropy" else fn(
      jnp.array([0.5, 0.6]), Q, **FAMILY[name]
    )


def test_closed_forms_estimators_and_fused_losses_are_checked():
  with _raises(r"normal_kl_divergence: non-positive or NaN value .* in `scale_q`"):
    jaxdiv.checked(jaxdiv.normal_kl_divergence)(0.0, 1.0, 0.0, jnp.array(-1.0))
  with _raises(r"mvn_entropy: non-positive or NaN diagonal"):
    jaxdiv.checked(jaxdiv.mvn_entropy)(jnp.diag(jnp.array([1.0, -2.0])))
  with _raises(r"kl_estimate: NaN or \+inf log-density .* in `log_p`"):
    jaxdiv.checked(jaxdiv.kl_estimate)(jnp.array([0.0, jnp.nan]), jnp.zeros(2))
  with _raises(r"linear_cross_entropy: label out of range .* >= the number of categories 3"):
    jaxdiv.checked(jaxdiv.linear_cross_entropy)(
      jnp.ones((2, 4)), jnp.ones((4, 3)), jnp.array([0, 3])
    )
  with _raises(r"linear_kl_divergence: non-finite value .* in `q_hidden`"):
    jaxdiv.checked(jaxdiv.linear_kl_divergence)(
      jnp.ones((2, 4)), jnp.ones((4, 3)), jnp.array([[1.0, jnp.inf, 0, 0]] * 2), jnp.ones((4, 3))
    )


# ---------------------------------------------------------------------------
# What the computation uses: probabilities after broadcasting
# ---------------------------------------------------------------------------

LOGITS = jax.random.normal(jax.random.key(13), (4, 5))


@pytest.mark.parametrize("labels", [jnp.array(3), jnp.ones((4, 1), int)])
def test_integer_labels_passed_as_probabilities_raise_suggesting_labels(labels):
  # Unchecked and checked: a distribution cannot broadcast along its own categories.
  for fn in (jaxdiv.cross_entropy, jaxdiv.checked(jaxdiv.cross_entropy)):
    with pytest.raises(ValueError, match=r"cross_entropy: `p` with shape .*`labels=`"):
      fn(labels, q_logits=LOGITS)


def test_sum_is_checked_on_the_broadcast_probabilities_and_mask():
  kl = jaxdiv.checked(jaxdiv.kl_divergence)
  p = jnp.array([0.5, 0.5, 0.3])  # one p for two rows of q
  q = jnp.array([[0.25, 0.75, 0.0], [0.2, 0.3, 0.5]])
  where = jnp.array([[True, True, False], [True, True, True]])
  # row 0 sums to 1 over its included categories; row 1 (all included) to 1.3
  with _raises(r"`p` \(shape \(3,\)\) does not sum to 1 .* largest deviation 0.3"):
    kl(p, q, where=where)
  q = q.at[1].set(jnp.array([0.5, 0.5, 0.0]))
  ok = jnp.array([[True, True, False], [True, True, False]])
  np.testing.assert_array_equal(kl(p, q, where=ok), jaxdiv.kl_divergence(p, q, where=ok))


def test_scalar_probability_is_not_skipped():
  with pytest.raises(ValueError, match="`p` with shape \\(\\) has no category axis"):
    jaxdiv.checked(jaxdiv.kl_divergence)(jnp.array(1.0), Q)


# ---------------------------------------------------------------------------
# Under jit the caught error is the only report
# ---------------------------------------------------------------------------


def test_checked_under_jit_logs_nothing(capfd, caplog):
  fn = jax.jit(jaxdiv.checked(jaxdiv.kl_divergence))
  with _raises(r"jaxdiv.kl_divergence: `p` \(shape \(2,\)\) does not sum to 1"):
    jax.block_until_ready(fn(jnp.array([0.5, 0.6]), Q))
  err = capfd.readouterr().err
  assert "callback failed" not in err and "Traceback" not in err, err
  assert not [r for r in caplog.records if r.levelno >= 30], caplog.text


def test_other_callback_failures_are_still_logged(caplog):
  def fail(x):
    raise RuntimeError("a user callback")

  with pytest.raises(Exception, match="a user callback"):
    jax.block_until_ready(jax.jit(lambda x: jax.debug.callback(fail, x))(jnp.ones(2)))
  assert any("callback failed" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------
# Roles: declared by each function, never inferred from names
# ---------------------------------------------------------------------------


def _public_functions():
  return [
    getattr(jaxdiv, n)
    for n in sorted(dir(jaxdiv))
    if not n.startswith("_") and inspect.isfunction(getattr(jaxdiv, n)) and n != "checked"
  ]


@pytest.mark.parametrize("fn", _public_functions(), ids=lambda f: f.__name__)
def test_every_public_function_declares_the_role_of_every_argument(fn):
  roles = _checks.declared_roles(fn)
  assert roles is not None, fn.__name__
  assert set(roles) == set(inspect.signature(fn).parameters)
  assert set(roles.values()) <= set(_checks.ROLES)


def test_a_renamed_argument_without_its_role_is_an_error_at_definition():
  with pytest.raises(TypeError, match=r"f has parameters without a declared role \['target'\]"):

    @_checks.roles(p="probs", q="probs")
    def f(target, q):
      return jaxdiv.kl_divergence(target, q)

  with pytest.raises(TypeError, match="unknown roles"):
    _checks.roles(p="probability")


def test_checks_follow_the_declared_role_not_the_name():
  @_checks.roles(target="probs", model="probs", axis="axis")
  def kl(target, model, *, axis=-1):
    return jaxdiv.kl_divergence(target, model, axis=axis)

  with _raises(r"jaxdiv.kl: `target` \(shape \(2,\)\) does not sum to 1"):
    jaxdiv.checked(kl)(jnp.array([0.5, 0.6]), Q)
  with _raises(r"negative probability .* in `model`"):
    jaxdiv.checked(kl)(P, jnp.array([1.5, -0.5]))
  with _raises(r"`target` \(shape \(2, 2\)\) does not sum to 1 along axis 0"):
    jaxdiv.checked(kl)(jnp.array([[0.5, 0.5], [0.6, 0.5]]), jnp.full((2, 2), 0.5), axis=0)


def test_undeclared_function_is_a_type_error():
  def my_loss(p, q):
    return jaxdiv.kl_divergence(p, q)

  with pytest.raises(TypeError, match="jaxdiv.checked: my_loss does not declare the roles"):
    jaxdiv.checked(my_loss)


def test_roles_survive_a_functools_wraps_wrapper():
  @functools.wraps(jaxdiv.kl_divergence)
  def outer(*args, **kwargs):
    return jaxdiv.kl_divergence(*args, **kwargs)

  with _raises("jaxdiv.kl_divergence: negative probability"):
    jaxdiv.checked(outer)(P, jnp.array([1.5, -0.5]))


def test_a_token_mask_keeps_masked_positions_out_of_the_checks():
  """What a function does not read at masked positions, checked mode does not check."""
  agg = jax.jit(jaxdiv.checked(jaxdiv.aggregate_tokens), static_argnums=2)
  values, mask = jnp.array([[1.0, jnp.nan]]), jnp.array([[True, False]])
  assert float(agg(values, mask, "token-mean")) == 1.0
  with _raises(r"jaxdiv.aggregate_tokens: non-finite value .* in `values`"):
    jax.block_until_ready(agg(values, jnp.array([[True, True]]), "token-mean"))

  penalty = jax.jit(jaxdiv.checked(jaxdiv.sequence_kl_penalty))
  logits, tokens = jnp.zeros((1, 2, 3)), jnp.array([[0, 99]])
  out = penalty(logits, logits, tokens, mask=jnp.array([[True, False]]))
  np.testing.assert_array_equal(out, 0.0)
  with _raises(r"jaxdiv.sequence_kl_penalty: label out of range in `tokens`.* 99 >= .* 3"):
    jax.block_until_ready(penalty(logits, logits, tokens, mask=jnp.array([[True, True]])))
