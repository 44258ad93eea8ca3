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
  with _raises(ValueError, "entropy", "missing", "`p` or `logits`"):
    jaxdiv.entropy()


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
