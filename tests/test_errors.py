"""Every trace-time error of the public API, one test per message and function.

Each message must name the function, the argument and the shapes or values involved.
(Value problems inside jit are the business of checked mode: tests/test_checks.py.)
"""

from __future__ import annotations

import inspect
import re

import jax.numpy as jnp
import numpy as np
import pytest
from _api import CATEGORICAL_CALLS

import jaxdiv

P = jnp.full((3, 4), 0.25)
Q = jnp.full((3, 4), 0.25)

# Every two-distribution categorical function with its required extra arguments.
CATEGORICAL = {k: v for k, v in CATEGORICAL_CALLS.items() if k != "entropy"}
WITH_BASE = [n for n in CATEGORICAL if "base" in inspect.signature(getattr(jaxdiv, n)).parameters]


def _call(name, *args, **kwargs):
  return getattr(jaxdiv, name)(*args, **CATEGORICAL.get(name, {}), **kwargs)


def _raises(exc, name, *fragments):
  pattern = re.escape(name) + ".*" + ".*".join(re.escape(f) for f in fragments)
  return pytest.raises(exc, match=pattern)


@pytest.mark.parametrize("name", CATEGORICAL)
def test_distribution_given_twice(name):
  with _raises(ValueError, name, "p is given 2 times", "`p`", "`p_logits`"):
    _call(name, P, Q, p_logits=P)


@pytest.mark.parametrize("name", CATEGORICAL)
def test_distribution_missing(name):
  with _raises(ValueError, name, "q is missing", "`q` or `q_logits`"):
    _call(name, P)


@pytest.mark.parametrize("name", CATEGORICAL)
def test_shapes_that_cannot_broadcast_name_both(name):
  with _raises(ValueError, name, "`p` with shape (3, 4)", "`q` with shape (2, 4)"):
    _call(name, P, jnp.full((2, 4), 0.25))


@pytest.mark.parametrize("name", CATEGORICAL)
def test_where_that_cannot_broadcast(name):
  with _raises(ValueError, name, "`where` with shape (3,)"):
    _call(name, P, Q, where=jnp.ones(3, bool))


@pytest.mark.parametrize("name", CATEGORICAL)
def test_where_must_be_boolean(name):
  with _raises(TypeError, name, "`where` must be a boolean mask", "int"):
    _call(name, P, Q, where=jnp.ones(4, jnp.int32))


@pytest.mark.parametrize("name", CATEGORICAL)
def test_axis_out_of_range(name):
  with _raises(ValueError, name, "`axis`=2 is out of range", "(3, 4)"):
    _call(name, P, Q, axis=2)


@pytest.mark.parametrize("name", CATEGORICAL)
def test_scalar_inputs_have_no_category_axis(name):
  with _raises(ValueError, name, "category axis", "shape ()"):
    _call(name, 0.5, 0.5)


@pytest.mark.parametrize("name", CATEGORICAL)
def test_complex_inputs(name):
  with _raises(TypeError, name, "`p` must be real", "complex"):
    _call(name, P.astype(jnp.complex64), Q)


@pytest.mark.parametrize("name", WITH_BASE)
@pytest.mark.parametrize("base", [0.0, -2.0, 1.0])
def test_base_must_be_positive_and_not_one(name, base):
  with _raises(ValueError, name, "`base` must be positive and not 1", repr(base)):
    _call(name, P, Q, base=base)


@pytest.mark.parametrize(
  "name, arg, value",
  [
    ("skew_kl_divergence", "alpha", 1.5),
    ("skew_kl_divergence", "alpha", -0.1),
    ("renyi_divergence", "alpha", -1.0),
    ("jensen_shannon_divergence", "weight", 1.5),
    ("jensen_shannon_distance", "weight", -0.5),
    ("alpha_divergence", "alpha", float("nan")),
  ],
)
def test_parameter_outside_its_domain(name, arg, value):
  kwargs = {**CATEGORICAL[name], arg: value}
  with _raises(ValueError, name, f"`{arg}`", repr(value)):
    getattr(jaxdiv, name)(P, Q, **kwargs)


@pytest.mark.parametrize("name", ["skew_kl_divergence", "renyi_divergence", "alpha_divergence"])
def test_required_parameter_missing(name):
  with _raises(TypeError, name, "`alpha` is required"):
    getattr(jaxdiv, name)(P, Q)


@pytest.mark.parametrize("name", ["cross_entropy", "kl_divergence"])
def test_float_labels(name):
  with _raises(TypeError, name, "`labels` must be an integer array", "float"):
    getattr(jaxdiv, name)(labels=jnp.zeros(3), q=Q)


@pytest.mark.parametrize("name", ["cross_entropy", "kl_divergence"])
def test_labels_with_the_category_axis_kept(name):
  with _raises(ValueError, name, "`labels` must have the batch shape", "(3,)", "(3, 1)"):
    getattr(jaxdiv, name)(labels=jnp.zeros((3, 1), jnp.int32), q=Q)


@pytest.mark.parametrize("name", ["cross_entropy", "kl_divergence"])
def test_labels_that_cannot_broadcast(name):
  with _raises(ValueError, name, "`labels` with shape (2,)", "batch shape (3,)"):
    getattr(jaxdiv, name)(labels=jnp.zeros(2, jnp.int32), q=Q)


def test_entropy_errors_name_its_logits_argument():
  with _raises(ValueError, "entropy", "given 2 times", "`p`", "`logits`"):
    jaxdiv.entropy(P, logits=P)
  with _raises(ValueError, "entropy", "given 2 times", "`p`", "`p_logits`"):
    jaxdiv.entropy(P, p_logits=P)
  with _raises(ValueError, "entropy", "missing", "`p` or `p_logits`"):
    jaxdiv.entropy()
  with _raises(ValueError, "entropy", "logits once", "`p_logits`", "`logits`"):
    jaxdiv.entropy(p_logits=P, logits=P)


@pytest.mark.parametrize("name", ["binary_cross_entropy", "binary_kl_divergence"])
def test_binary_shapes_that_cannot_broadcast(name):
  with _raises(ValueError, name, "`p` with shape (3,)", "`q_logits` with shape (2,)"):
    getattr(jaxdiv, name)(jnp.full(3, 0.5), q_logits=jnp.zeros(2))


@pytest.mark.parametrize("name", ["binary_cross_entropy", "binary_kl_divergence"])
def test_binary_given_twice_and_base(name):
  with _raises(ValueError, name, "q is given 2 times"):
    getattr(jaxdiv, name)(0.5, 0.5, q_logits=0.0)
  with _raises(ValueError, name, "`base`"):
    getattr(jaxdiv, name)(0.5, 0.5, base=-1)


@pytest.mark.parametrize(
  "name, args",
  [
    ("normal_kl_divergence", (jnp.zeros(3), jnp.ones(3), jnp.zeros(2), jnp.ones(2))),
    ("normal_cross_entropy", (jnp.zeros(3), jnp.ones(3), jnp.zeros(2), jnp.ones(2))),
    ("mvn_kl_divergence", (jnp.zeros(3), jnp.eye(3), jnp.zeros(2), jnp.eye(2))),
  ],
)
def test_closed_form_shapes_are_named(name, args):
  with pytest.raises(ValueError, match=re.escape(name) + r".*\(3,?\).*\(2,?\)"):
    getattr(jaxdiv, name)(*args)


def test_kl_estimate_unknown_estimator_lists_the_valid_ones():
  with _raises(ValueError, "kl_estimate", "k4", "k1", "k2", "k3"):
    jaxdiv.kl_estimate(jnp.zeros(3), jnp.zeros(3), estimator="k4")


def test_linear_cross_entropy_names_mismatched_shapes():
  with pytest.raises(ValueError, match=r"linear_cross_entropy.*\(4, 5\).*\(6, 7\)"):
    jaxdiv.linear_cross_entropy(jnp.zeros((4, 5)), jnp.zeros((6, 7)), jnp.zeros(4, jnp.int32))


def test_errors_are_raised_at_trace_time_under_jit():
  import jax

  with _raises(ValueError, "kl_divergence", "cannot broadcast"):
    jax.jit(jaxdiv.kl_divergence)(P, jnp.full((2, 4), 0.25))
  with _raises(ValueError, "kl_divergence", "`axis`=5"):
    jax.jit(jaxdiv.kl_divergence, static_argnames="axis")(P, Q, axis=5)
  assert np.isfinite(jax.jit(jaxdiv.kl_divergence)(P, Q)).all()


# ---------------------------------------------------------------------------
# Static arguments of the wrong type, over the whole public API
# ---------------------------------------------------------------------------

_H, _W, _L = jnp.ones((2, 4)), jnp.ones((4, 3)) / 4, jnp.array([0, 2])


def _mesh():
  import jax

  return jax.make_mesh((1,), ("x",))


# A valid call of every public function: name -> (args, kwargs).
PUBLIC_CALLS = {
  **{
    name: ((P,) if name == "entropy" else (P, Q), extra)
    for name, extra in CATEGORICAL_CALLS.items()
  },
  "binary_cross_entropy": ((0.3, 0.6), {}),
  "binary_kl_divergence": ((0.3, 0.6), {}),
  "normal_kl_divergence": ((0.0, 1.0, 0.5, 2.0), {}),
  "normal_cross_entropy": ((0.0, 1.0, 0.5, 2.0), {}),
  "normal_entropy": ((2.0,), {}),
  "mvn_kl_divergence": ((jnp.zeros(2), jnp.eye(2), jnp.ones(2), jnp.eye(2)), {}),
  "mvn_cross_entropy": ((jnp.zeros(2), jnp.eye(2), jnp.ones(2), jnp.eye(2)), {}),
  "mvn_entropy": ((jnp.eye(2),), {}),
  "dirichlet_kl_divergence": ((jnp.ones(3), jnp.full(3, 2.0)), {}),
  "kl_estimate": ((jnp.zeros(3), jnp.full(3, -0.1)), {}),
  "sequence_kl_penalty": ((jnp.zeros((2, 3)), jnp.ones((2, 3)), jnp.array([0, 2])), {}),
  "linear_cross_entropy": ((_H, _W, _L), {}),
  "linear_kl_divergence": ((_H, _W, 0.5 * _H, _W), {}),
  "linear_jensen_shannon_divergence": ((_H, _W, 0.5 * _H, _W), {}),
  "linear_skew_kl_divergence": ((_H, _W, 0.5 * _H, _W), {"alpha": 0.3}),
  "linear_total_variation_distance": ((_H, _W, 0.5 * _H, _W), {}),
  "sharded_linear_cross_entropy": ((_H, _W, _L), {}),
  "sharded_linear_kl_divergence": ((_H, _W, 0.5 * _H, _W), {}),
  "sharded_linear_jensen_shannon_divergence": ((_H, _W, 0.5 * _H, _W), {}),
  "sharded_linear_skew_kl_divergence": ((_H, _W, 0.5 * _H, _W), {"alpha": 0.3}),
  "sharded_linear_total_variation_distance": ((_H, _W, 0.5 * _H, _W), {}),
  "linear_distillation_loss": ((_H, _W, _L), {"teacher_hidden": 0.5 * _H, "teacher_weight": _W}),
  "sharded_linear_distillation_loss": (
    (_H, _W, _L),
    {"teacher_hidden": 0.5 * _H, "teacher_weight": _W},
  ),
  "aggregate_tokens": ((jnp.ones((2, 3)), jnp.ones((2, 3), bool)), {}),
  "sharded_cross_entropy": ((), {"labels": _L, "q_logits": jnp.zeros((2, 3))}),
  "sharded_kl_divergence": ((), {"p_logits": jnp.ones((2, 3)), "q_logits": jnp.zeros((2, 3))}),
}
_NEEDS_MESH = tuple(n for n in PUBLIC_CALLS if n.startswith("sharded_"))


def _public_functions():
  return sorted(
    n
    for n in dir(jaxdiv)
    if not n.startswith("_") and inspect.isfunction(getattr(jaxdiv, n)) and n != "checked"
  )


def _public_call(name, **override):
  args, kwargs = PUBLIC_CALLS[name]
  if name in _NEEDS_MESH:
    kwargs = {**kwargs, "mesh": _mesh(), "axis_name": "x"}
  return getattr(jaxdiv, name)(*args, **{**kwargs, **override})


def test_every_public_function_has_a_valid_call_here():
  assert set(PUBLIC_CALLS) >= set(_public_functions())


def _static_arguments():
  """(function, argument) for every static argument: those checked mode leaves alone."""
  out = []
  for name in _public_functions():
    roles = getattr(getattr(jaxdiv, name), "_jaxdiv_roles", {})
    for arg, role in roles.items():
      if role in ("axis", "unchecked"):
        out.append((name, arg))
  return out


WRONG_TYPES = {"string": "wrong-type", "object": object(), "complex": 1j}


@pytest.mark.parametrize("name, arg", _static_arguments())
@pytest.mark.parametrize("wrong", WRONG_TYPES)
def test_static_argument_of_the_wrong_type_names_the_argument(name, arg, wrong):
  with pytest.raises((TypeError, ValueError)) as e:
    _public_call(name, **{arg: WRONG_TYPES[wrong]})
  message = str(e.value)
  assert message.startswith(f"{name}: ") and f"`{arg}`" in message, message


# One function per module (every `base` goes through jaxdiv._inputs.apply_base).
BASE_SAMPLE = [
  "kl_divergence",
  "binary_kl_divergence",
  "jensen_shannon_divergence",
  "normal_kl_divergence",
  "dirichlet_kl_divergence",
  "kl_estimate",
  "linear_cross_entropy",
  "sharded_kl_divergence",
]


@pytest.mark.parametrize("name", BASE_SAMPLE)
def test_base_accepts_bits_and_nats(name):
  nats = _public_call(name)
  np.testing.assert_array_equal(_public_call(name, base="nats"), nats)
  np.testing.assert_allclose(_public_call(name, base="bits"), nats / np.log(2), rtol=1e-6)


@pytest.mark.parametrize("base", ["Bits", "e", "dits", ""])
def test_base_strings_other_than_bits_and_nats_list_the_accepted_ones(base):
  with _raises(ValueError, "kl_divergence", "`base`", "'bits' or 'nats'", repr(base)):
    jaxdiv.kl_divergence(P, Q, base=base)


@pytest.mark.parametrize("base", [True, 1j, [2, "x"]])
def test_base_of_a_non_numeric_type_is_a_type_error(base):
  with _raises(TypeError, "entropy", "`base` must be a positive number", "'bits' or 'nats'"):
    jaxdiv.entropy(P, base=base)


@pytest.mark.parametrize(
  "arg, value", [("axis", 1.5), ("chunk_size", 8.0), ("token_chunk_size", "8")]
)
def test_integer_static_arguments_reject_floats_and_strings(arg, value):
  name = "kl_divergence" if arg == "axis" else "linear_cross_entropy"
  with _raises(TypeError, name, f"`{arg}`"):
    _public_call(name, **{arg: value})
