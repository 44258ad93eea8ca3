r"""Csiszár generators for :func:`jaxdiv.f_divergence`, written in log space.

An f-divergence is :math:`D_f(p \| q) = \sum_i q_i f(p_i / q_i)` for a convex
:math:`f` with :math:`f(1) = 0`. jaxdiv takes the generator as a function of
:math:`t = \log u` (:math:`u = p_i/q_i`), computed from the log-probabilities, so that no
ratio is ever formed and nothing overflows where the divergence is finite. A
:class:`Generator` also carries the two limits that fix the terms at the edges:

* :math:`f(0) = \lim_{u \to 0} f(u)` -- the term of a category with :math:`p_i = 0 < q_i`
  is :math:`q_i f(0)`;
* :math:`f'(\infty) = \lim_{u \to \infty} f(u)/u` -- the term of a category with
  :math:`q_i = 0 < p_i` is :math:`p_i f'(\infty)` (``+inf`` for KL).

and, optionally, :math:`t \mapsto f(e^t) e^{-t}`, used where :math:`p_i > q_i` as
:math:`p_i \cdot f(u)/u`, so that a huge ratio next to a tiny :math:`q_i` (``±1e4``
logits) never becomes ``0 * inf``.

The named generators reproduce the named functions of jaxdiv exactly (up to rounding):

======================  ================================================  =================
generator               :math:`f(u)`                                      equals
======================  ================================================  =================
``kl``                  :math:`u \log u`                                  KL(p‖q)
``reverse_kl``          :math:`-\log u`                                   KL(q‖p)
``jeffreys``            :math:`(u - 1) \log u`                            Jeffreys
``jensen_shannon(w)``   :math:`w u \log u - \mu \log \mu` (:math:`\mu = wu+1-w`)  JS_w
``skew_kl(a)``          :math:`u \log\frac{u}{a u + 1 - a}`               skew KL
``total_variation``     :math:`\tfrac12 |u - 1|`                          TV
``squared_hellinger``   :math:`\tfrac12 (\sqrt u - 1)^2`                  H²
``chi_squared``         :math:`(u - 1)^2`                                 Pearson χ²(p‖q)
``neyman_chi_squared``  :math:`(1 - u)^2 / u`                             χ²(q‖p)
``alpha(a)``            :math:`\frac{u^a - 1 - a(u - 1)}{a(a - 1)}`       Amari α (normalised)
======================  ================================================  =================

Conventions elsewhere: TFP's ``tfp.vi`` generators take ``logu`` too, but its
``jensen_shannon`` is twice the ½-weighted one above and its ``squared_hellinger`` omits
the ½ (twice ours); its ``total_variation`` and ``pearson`` agree with ours.

References:
  Csiszár, "Information-type measures of difference of probability distributions",
  Studia Sci. Math. Hungar. (1967); Ali & Silvey, J. R. Stat. Soc. B (1966);
  Cichocki & Amari, "Families of alpha- beta- and gamma-divergences", Entropy (2010).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class Generator(NamedTuple):
  r"""A Csiszár generator :math:`f`, given in log space.

  Attributes:
    fn: :math:`t \mapsto f(e^t)`; jaxdiv calls it with :math:`t \le 0` only when
      ``fn_over_u`` is given, else with any finite :math:`t`.
    at_zero: :math:`f(0) = \lim_{u\to 0} f(u)` (may be ``inf``).
    at_infinity: :math:`\lim_{u\to\infty} f(u)/u` (may be ``inf``).
    fn_over_u: optional :math:`t \mapsto f(e^t)\,e^{-t}`, called with :math:`t \ge 0`.
    name: a label for messages and reprs.

  Example:
    >>> g = Generator(lambda t: t * jnp.exp(t), at_zero=0.0, at_infinity=math.inf)
  """

  fn: Callable[[Array], Array]
  at_zero: float
  at_infinity: float
  fn_over_u: Callable[[Array], Array] | None = None
  name: str = "custom"


def _check(fn: str, name: str, value, ok, domain: str) -> float:
  """A generator parameter: a concrete real number inside its domain."""
  if isinstance(value, jax.core.Tracer):
    raise TypeError(
      f"generators.{fn}: `{name}` must be a concrete number (it fixes the generator), "
      f"got a traced value; use jaxdiv's named function to vary it under jit."
    )
  v = np.asarray(value)
  if v.ndim != 0 or not np.issubdtype(v.dtype, np.number) or np.iscomplexobj(v):
    raise TypeError(f"generators.{fn}: `{name}` must be a real scalar, got {value!r}.")
  v = float(v)
  if not ok(v):
    raise ValueError(f"generators.{fn}: `{name}` must be {domain}, got {value!r}.")
  return v


def _log_mix(t: Array, w: float) -> Array:
  """:math:`\\log(w e^t + 1 - w)`, exact 0 at ``t = 0`` (``log1p`` near 0)."""
  small = jnp.abs(t) <= 0.5
  ts = jnp.where(small, t, jnp.zeros_like(t))
  tl = jnp.where(small, jnp.ones_like(t), t)
  near = jnp.log1p(w * jnp.expm1(ts))
  lw = math.log(w) if w > 0 else -math.inf
  l1w = math.log1p(-w) if w < 1 else -math.inf
  far = jnp.logaddexp(lw + tl, jnp.full_like(tl, l1w))
  return jnp.where(small, near, far)


def _kl_fn(t):
  return t * jnp.exp(t)


def _kl_over_u(t):
  return t


kl = Generator(_kl_fn, 0.0, math.inf, _kl_over_u, "kl")
"""KL(p‖q): :math:`f(u) = u \\log u`."""

reverse_kl = Generator(lambda t: -t, math.inf, 0.0, lambda t: -t * jnp.exp(-t), "reverse_kl")
"""KL(q‖p): :math:`f(u) = -\\log u`."""

jeffreys = Generator(
  lambda t: t * jnp.expm1(t), math.inf, math.inf, lambda t: -t * jnp.expm1(-t), "jeffreys"
)
"""Jeffreys (symmetrised KL): :math:`f(u) = (u - 1)\\log u`."""

total_variation = Generator(
  lambda t: 0.5 * jnp.abs(jnp.expm1(t)),
  0.5,
  0.5,
  lambda t: 0.5 * jnp.abs(jnp.expm1(-t)),
  "total_variation",
)
"""Total variation: :math:`f(u) = \\tfrac12 |u - 1|`."""

squared_hellinger = Generator(
  lambda t: 0.5 * jnp.expm1(0.5 * t) ** 2,
  0.5,
  0.5,
  lambda t: 0.5 * jnp.expm1(-0.5 * t) ** 2,
  "squared_hellinger",
)
"""Squared Hellinger: :math:`f(u) = \\tfrac12(\\sqrt u - 1)^2` (TFP omits the ½)."""

chi_squared = Generator(
  lambda t: jnp.expm1(t) ** 2,
  1.0,
  math.inf,
  lambda t: jnp.expm1(-t) ** 2 * jnp.exp(t),
  "chi_squared",
)
"""Pearson :math:`\\chi^2`: :math:`f(u) = (u - 1)^2`."""

neyman_chi_squared = Generator(
  lambda t: jnp.expm1(t) ** 2 * jnp.exp(-t),
  math.inf,
  1.0,
  lambda t: jnp.expm1(-t) ** 2,
  "neyman_chi_squared",
)
"""Neyman :math:`\\chi^2`: :math:`f(u) = (1 - u)^2/u` (Pearson with the arguments swapped)."""


def jensen_shannon(weight: float = 0.5) -> Generator:
  r"""Generalised Jensen--Shannon: :math:`f(u) = w u \log u - \mu\log\mu`, :math:`\mu = wu + 1 - w`.

  ``weight`` :math:`w \in (0, 1)`, a concrete number. :math:`f(0) = -(1-w)\log(1-w)`,
  :math:`f'(\infty) = -w \log w`. TFP's ``tfp.vi.jensen_shannon`` is twice the
  :math:`w = \tfrac12` case.
  """
  w = _check("jensen_shannon", "weight", weight, lambda v: 0 < v < 1, "in the open interval (0, 1)")

  def fn(t):
    lm = _log_mix(t, w)  # log mu
    return w * jnp.exp(t) * (t - lm) - (1 - w) * lm

  def fn_over_u(t):
    k = _log_mix(-t, 1 - w)  # log(w + (1 - w) e^-t) = log mu - t
    return -w * k - (1 - w) * jnp.exp(-t) * (t + k)

  return Generator(fn, -(1 - w) * math.log1p(-w), -w * math.log(w), fn_over_u, "jensen_shannon")


def skew_kl(alpha: float) -> Generator:
  r"""Skew KL, :math:`\mathrm{KL}(p \| a p + (1-a) q)`: :math:`f(u) = u\log\frac{u}{au + 1 - a}`.

  ``alpha`` :math:`a \in [0, 1]`, a concrete number; :math:`f(0) = 0`,
  :math:`f'(\infty) = -\log a`.
  """
  a = _check("skew_kl", "alpha", alpha, lambda v: 0 <= v <= 1, "in the closed interval [0, 1]")

  def fn(t):
    return jnp.exp(t) * (t - _log_mix(t, a))

  def fn_over_u(t):
    return -_log_mix(-t, 1 - a)

  at_inf = math.inf if a == 0 else -math.log(a)
  return Generator(fn, 0.0, at_inf, fn_over_u, "skew_kl")


def alpha(alpha: float) -> Generator:
  r"""Amari/Cichocki :math:`\alpha`: :math:`f(u) = \frac{u^a - 1 - a(u-1)}{a(a-1)}`.

  ``alpha`` any finite real, a concrete number; the limits are used at
  :math:`\alpha = 1` (:math:`u\log u - u + 1`, KL) and :math:`\alpha = 0`
  (:math:`-\log u + u - 1`, reverse KL). For normalised inputs the divergence is
  :func:`jaxdiv.alpha_divergence`. Near :math:`\alpha \in \{0, 1\}` (but not at them)
  the closed form loses relative precision to cancellation; prefer
  :func:`jaxdiv.alpha_divergence` there.
  """
  a = _check("alpha", "alpha", alpha, math.isfinite, "a finite real number")
  if a == 1:
    return Generator(
      lambda t: t * jnp.exp(t) - jnp.expm1(t), 1.0, math.inf, lambda t: t + jnp.expm1(-t), "alpha"
    )
  if a == 0:
    return Generator(
      lambda t: jnp.expm1(t) - t,
      math.inf,
      1.0,
      lambda t: -t * jnp.exp(-t) - jnp.expm1(-t),
      "alpha",
    )
  c = 1.0 / (a * (a - 1))

  def fn(t):
    return c * (jnp.expm1(a * t) - a * jnp.expm1(t))

  def fn_over_u(t):
    return c * (jnp.expm1((a - 1) * t) - (1 - a) * jnp.expm1(-t))

  at_zero = 1.0 / a if a > 0 else math.inf
  at_inf = 1.0 / (1 - a) if a < 1 else math.inf
  return Generator(fn, at_zero, at_inf, fn_over_u, "alpha")


__all__ = [
  "Generator",
  "alpha",
  "chi_squared",
  "jeffreys",
  "jensen_shannon",
  "kl",
  "neyman_chi_squared",
  "reverse_kl",
  "skew_kl",
  "squared_hellinger",
  "total_variation",
]
