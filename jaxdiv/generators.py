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
logits) never becomes ``0 * inf``. A plain function of :math:`t` passed to
:func:`jaxdiv.f_divergence` becomes a generator through :func:`from_function`, which
derives the two limits from it where it can (see there for exactly how).

The named generators reproduce the named functions of jaxdiv exactly (up to rounding):

======================  ================================================  =================
generator               :math:`f(u)`                                      equals
======================  ================================================  =================
``kl``                  :math:`u \log u`                                  KL(p‖q)
``reverse_kl``          :math:`-\log u`                                   KL(q‖p)
``jeffreys``            :math:`(u - 1) \log u`                            Jeffreys
``jensen_shannon(w)``   :math:`w u \log u - \mu \log \mu`                 JS_w (μ = wu+1−w)
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

  ``weight`` :math:`w \in [0, 1]`, a concrete number (at :math:`w \in \{0, 1\}`,
  :math:`f = 0`). :math:`f(0) = -(1-w)\log(1-w)`, :math:`f'(\infty) = -w \log w`. TFP's
  ``tfp.vi.jensen_shannon`` is twice the :math:`w = \tfrac12` case.

  Args:
    weight: :math:`w \in [0, 1]`, the weight of ``p`` in the mixture.

  Example:
    >>> from jaxdiv import generators
    >>> g = generators.jensen_shannon(0.5)
    >>> round(g.at_zero, 6), round(g.at_infinity, 6)  # (ln 2) / 2 each
    (0.346574, 0.346574)
    >>> p, q = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
    >>> round(float(jaxdiv.f_divergence(p, q, g)), 6)  # ln 2: disjoint supports
    0.693147
  """
  w = _check(
    "jensen_shannon", "weight", weight, lambda v: 0 <= v <= 1, "in the closed interval [0, 1]"
  )
  if w in (0, 1):  # the mixture is one of the two distributions: f = 0 exactly
    return Generator(jnp.zeros_like, 0.0, 0.0, jnp.zeros_like, "jensen_shannon")

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

  Args:
    alpha: :math:`a \in [0, 1]`, the weight of ``p`` in the mixture.

  Example:
    >>> from jaxdiv import generators
    >>> p, q = jnp.array([0.5, 0.5]), jnp.array([0.9, 0.1])
    >>> d = jaxdiv.f_divergence(p, q, generators.skew_kl(0.1))
    >>> round(float(d), 6) == round(float(jaxdiv.skew_kl_divergence(p, q, alpha=0.1)), 6)
    True
    >>> round(float(d), 6)
    0.365321
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

  Args:
    alpha: :math:`\alpha`, a finite real.

  Example:
    >>> from jaxdiv import generators
    >>> g = generators.alpha(2.0)  # (u - 1)^2 / 2: half of Pearson's chi^2
    >>> g.at_zero, g.at_infinity
    (0.5, inf)
    >>> p, q = jnp.array([0.5, 0.5]), jnp.array([0.9, 0.1])
    >>> round(float(jaxdiv.f_divergence(p, q, g)), 6)
    0.888889
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


# Where the limits of a plain function of log u are read off. Near 0: e^t is exactly 0 in
# float32 and float64 for t <= -1e3, so every term through e^t has reached its limit.
_NEAR_ZERO = (-1e3, -1e6, -1e9)
# Near infinity: e^t overflows both dtypes at t = 1e3. f(u)/u is sampled where a square of
# e^t is still finite (float32 up to e^88, float64 up to e^709).
_OVERFLOW = 1e3
_LARGE = {4: (10.0, 20.0, 30.0), 8: (40.0, 80.0, 120.0)}  # by the dtype's item size
_SETTLED = 1e-4  # relative change of f(u)/u between the last two samples: the limit
_GROWTH = 1e-3  # slack in "grows at least linearly in log u" (rounding of the samples)


def _derive_limits(fn: Callable[[Array], Array], dtype) -> tuple[Array, Array]:
  """``(f(0), f'(inf))`` of ``t -> f(e^t)``, as 0-d arrays of ``dtype``; NaN if not derived.

  The rules are those documented in :func:`from_function`.
  """

  def at(t):
    out = jnp.asarray(fn(jnp.asarray(t, dtype)))
    if out.shape != ():
      raise TypeError(
        f"generators.from_function: the function must map log u elementwise; a scalar "
        f"argument gave shape {out.shape}."
      )
    return out.astype(dtype)

  nan, inf = jnp.asarray(jnp.nan, dtype), jnp.asarray(jnp.inf, dtype)

  # f(0): the function at u = 0 (t = -inf) where that is a number, else its value once
  # it no longer changes, else +-inf when it grows at least linearly in -log u.
  v0 = at(-jnp.inf)
  v1, v2, v3 = (at(t) for t in _NEAR_ZERO)
  g12 = (v2 - v1) / (_NEAR_ZERO[0] - _NEAR_ZERO[1])  # growth per unit of -t
  g23 = (v3 - v2) / (_NEAR_ZERO[1] - _NEAR_ZERO[2])
  up = (g12 > 0) & (g23 >= g12 * (1 - _GROWTH))
  down = (g12 < 0) & (g23 <= g12 * (1 - _GROWTH))
  at_zero = jnp.where(up, inf, jnp.where(down, -inf, nan))
  at_zero = jnp.where(v1 == v2, v1, at_zero)
  at_zero = jnp.where(jnp.isnan(v0), at_zero, v0)

  # f'(inf) = lim f(u)/u: 0 where f(u) is still finite at u = e^1000 (a convex f with a
  # nonzero slope overflows there), else f(u)/u at a large u once it has settled, else
  # +-inf when it overflows or grows at least linearly in log u.
  bounded = jnp.isfinite(at(jnp.inf)) | jnp.isfinite(at(_OVERFLOW))
  large = _LARGE[8 if jnp.dtype(dtype).itemsize >= 8 else 4]
  r1, r2, r3 = (at(t) * jnp.exp(jnp.asarray(-t, dtype)) for t in large)
  d12, d23 = r2 - r1, r3 - r2
  settled = jnp.abs(d23) <= _SETTLED * jnp.maximum(1, jnp.abs(r3))
  up = (d12 > 0) & (d23 >= d12 * (1 - _GROWTH))
  down = (d12 < 0) & (d23 <= d12 * (1 - _GROWTH))
  at_inf = jnp.where(up, inf, jnp.where(down, -inf, nan))
  at_inf = jnp.where(settled | jnp.isinf(r3), r3, at_inf)
  at_inf = jnp.where(bounded, jnp.zeros_like(at_inf), at_inf)
  return at_zero + 0.0, at_inf + 0.0  # +0.0, not -0.0


def _as_limit(x):
  """A derived limit as a Python float where it is concrete (else a constant to autodiff)."""
  if isinstance(x, jax.core.Tracer):
    return jax.lax.stop_gradient(x)
  return float(x)


def _from_callable(fn, dtype, at_zero=None, at_infinity=None, name="custom") -> Generator:
  if at_zero is None or at_infinity is None:
    with jax.ensure_compile_time_eval():
      zero, inf = _derive_limits(fn, dtype)
    at_zero = _as_limit(zero) if at_zero is None else at_zero
    at_infinity = _as_limit(inf) if at_infinity is None else at_infinity
  return Generator(fn, at_zero, at_infinity, None, name)


def from_function(
  fn: Callable[[Array], Array],
  *,
  at_zero: float | None = None,
  at_infinity: float | None = None,
  name: str = "custom",
) -> Generator:
  r"""A :class:`Generator` from a plain function of :math:`t = \log u`, limits derived.

  :func:`jaxdiv.f_divergence` calls this for a plain function (``f_divergence(p, q,
  lambda t: t * jnp.exp(t))`` is KL), in the computation dtype. A limit given here is
  used as given; a missing one is derived from ``fn`` (an elementwise jnp function,
  evaluated at a few scalar points of the default float dtype):

  * :math:`f(0)`: ``fn(-inf)`` where that is not NaN -- exact, the function's own value
    at :math:`u = 0` (``0.5 * jnp.abs(jnp.expm1(t))`` gives 0.5, ``-t`` gives ``inf``);
    else, for a NaN there (``t * jnp.exp(t)`` is :math:`-\infty \cdot 0`), the common
    value of ``fn`` at :math:`t = -10^3` and :math:`-10^6`, where :math:`e^t` is exactly 0
    (exact when ``fn`` depends on :math:`t` only through such terms); else ``+inf``
    (``-inf``) when ``fn`` grows (falls) at least linearly in :math:`-t` from
    :math:`-10^3` through :math:`-10^9` (e.g. ``t * jnp.exp(t) - t``); else NaN.
  * :math:`f'(\infty) = \lim_{u\to\infty} f(u)/u`: exactly 0 where ``fn`` is still finite
    at :math:`t = 10^3` (a convex :math:`f` with a nonzero slope overflows there, as
    :math:`e^{1000}` does); else ``fn(t) * exp(-t)`` at the last of :math:`t = 10, 20, 30`
    (float32; :math:`t = 40, 80, 120` in float64) where that is infinite (``fn``
    overflowed) or has settled (changed by at most ``1e-4`` relative since the previous
    point; the named generators' formulas give their limits so to within ``1e-6`` relative
    in float32 and ``1e-14`` in float64); else ``+inf`` (``-inf``) when it grows (falls) at
    least linearly in :math:`t` over the three points (``t * jnp.exp(t)``:
    :math:`f(u)/u = \log u`); else NaN.

  A NaN limit is not an error: the terms that need it (:math:`p_i = 0 < q_i` for
  :math:`f(0)`, :math:`q_i = 0 < p_i` for :math:`f'(\infty)`) are NaN, never a finite
  guess; give the limit explicitly to avoid that. A limit derived from a function that
  closes over traced values (a parameter being optimised) is treated as a constant by
  autodiff. There is no :math:`f(u)/u` form, so where :math:`p_i > q_i` the term is
  :math:`q_i f(u)` as written: at ratios where ``fn`` overflows (``±1e4`` logits) it is
  ``inf`` or NaN, never a finite wrong number; a :class:`Generator` with ``fn_over_u``
  stays exact there.

  Args:
    fn: :math:`t \mapsto f(e^t)`, elementwise (jnp operations).
    at_zero: :math:`f(0)`, if known (then not derived).
    at_infinity: :math:`f'(\infty)`, if known (then not derived).
    name: a label for reprs.

  Returns:
    The generator, its limits Python floats (``inf`` or ``nan`` where so derived).

  Example:
    >>> from jaxdiv import generators
    >>> g = generators.from_function(lambda t: t * jnp.exp(t))  # KL: u log u
    >>> g.at_zero, g.at_infinity
    (0.0, inf)
    >>> tv = generators.from_function(lambda t: 0.5 * jnp.abs(jnp.expm1(t)))
    >>> tv.at_zero, round(tv.at_infinity, 6)
    (0.5, 0.5)
  """
  return _from_callable(fn, jnp.asarray(0.0).dtype, at_zero, at_infinity, name)


# Functions that build a Generator: passed to f_divergence uncalled by mistake.
CONSTRUCTORS = (jensen_shannon, skew_kl, alpha, from_function)


__all__ = [
  "Generator",
  "alpha",
  "chi_squared",
  "from_function",
  "jeffreys",
  "jensen_shannon",
  "kl",
  "neyman_chi_squared",
  "reverse_kl",
  "skew_kl",
  "squared_hellinger",
  "total_variation",
]
