r"""Closed forms for parametric families: univariate and multivariate normals, Dirichlet.

Every divergence here is written as a sum of non-negative terms, so that a small
divergence keeps its relative precision (no ``large - large``) and the result is
never negative from rounding. The recurring term is
:math:`g(y) = e^{y} - 1 - y \ge 0` (:func:`jaxdiv._numerics.expm1mx`), evaluated at
:math:`y = 2 \log(\sigma_p / \sigma_q)`:

.. math:: \frac{\sigma_p^2}{\sigma_q^2} - 1 - \log\frac{\sigma_p^2}{\sigma_q^2} = g(y).

The identity :math:`H(p, q) = H(p) + \mathrm{KL}(p \| q)` holds for every pair here (to
rounding), as for the categorical functions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import linalg as jsp_linalg
from jax.scipy import special as jsp_special
from jax.typing import ArrayLike

from jaxdiv import _api, _checks, _inputs, _numerics

Array = jax.Array

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _floats(fn: str, **arrays) -> tuple[list[Array], tuple]:
  """Elementwise inputs: checked, broadcast together (errors name the shapes), one dtype."""
  xs = {k: _inputs.as_float(fn, k, v) for k, v in arrays.items()}
  shape = _inputs.broadcast_shape(fn, {k: v.shape for k, v in xs.items()})
  dtype = _numerics.compute_dtype(jnp.result_type(*(v.dtype for v in xs.values())))
  return [jnp.broadcast_to(v.astype(dtype), shape) for v in xs.values()], shape


# ---------------------------------------------------------------------------
# Univariate normal (elementwise)
# ---------------------------------------------------------------------------


def _standardised_gap(mp: Array, mq: Array, sq: Array) -> Array:
  """``(mp - mq) / sq``, with 0 (not 0/0 = NaN) for equal means and a zero scale."""
  dm = mp - mq
  return dm / jnp.where((sq == 0) & (dm == 0), jnp.ones_like(sq), sq)


def _log_standardised_gap(mp: Array, mq: Array, log_sq: Array) -> Array:
  """``(mp - mq) / exp(log_sq)`` as ``sign * exp(log|dm| - log_sq)``: exact where
  ``exp(-log_sq)`` alone would overflow; 0 for equal means (double where: finite gradient)."""
  dm = mp - mq
  same = dm == 0
  safe = jnp.where(same, jnp.ones_like(dm), jnp.abs(dm))
  z = jnp.sign(dm) * jnp.exp(jnp.log(safe) - log_sq)
  return jnp.where(same, jnp.zeros_like(z), z)


class _Scale(NamedTuple):
  """One side's scale, as given: ``scale`` (None for a log-scale) and its logarithm."""

  scale: Array | None
  log: Array


def _normal_args(fn: str, sides: dict, **locs):
  """Resolve each side's ``scale_*`` or ``log_scale_*`` (exactly one) and broadcast all."""
  arrays = {k: v for k, v in locs.items()}
  forms = {}
  for suffix, (scale, log_scale) in sides.items():
    s_name, l_name = f"scale{suffix}", f"log_scale{suffix}"
    if (scale is None) == (log_scale is None):
      state = "both" if scale is not None else "neither"
      raise TypeError(f"{fn}: give exactly one of `{s_name}` and `{l_name}` (got {state}).")
    forms[suffix] = (s_name, scale) if log_scale is None else (l_name, log_scale)
    arrays[forms[suffix][0]] = forms[suffix][1]
  for k, v in locs.items():
    if v is None:
      raise TypeError(f"{fn}: `{k}` is required.")
  values, _ = _floats(fn, **arrays)
  by_name = dict(zip(arrays, values, strict=True))
  out_locs = [by_name[k] for k in locs]
  scales = {}
  for suffix, (name, _) in forms.items():
    v = by_name[name]
    scales[suffix] = _Scale(None, v) if name.startswith("log_") else _Scale(v, jnp.log(v))
  return out_locs, scales


@_api.public
@_checks.roles(
  loc_p="finite",
  scale_p="positive",
  loc_q="finite",
  scale_q="positive",
  log_scale_p="finite",
  log_scale_q="finite",
  base="unchecked",
)
def normal_kl_divergence(
  loc_p: ArrayLike,
  scale_p: ArrayLike | None = None,
  loc_q: ArrayLike | None = None,
  scale_q: ArrayLike | None = None,
  *,
  log_scale_p: ArrayLike | None = None,
  log_scale_q: ArrayLike | None = None,
  base: float | str | None = None,
) -> Array:
  r"""Elementwise :math:`\mathrm{KL}(p \| q)` between univariate normals ``p`` and ``q``.

  Here :math:`p = N(\mu_p, \sigma_p^2)` and :math:`q = N(\mu_q, \sigma_q^2)`.

  .. math::

    \mathrm{KL}(p \| q) = \log\frac{\sigma_q}{\sigma_p}
      + \frac{\sigma_p^2 + (\mu_p - \mu_q)^2}{2 \sigma_q^2} - \frac12
    = \frac12 \Big[ g\big(2 \log\tfrac{\sigma_p}{\sigma_q}\big)
      + \Big(\frac{\mu_p - \mu_q}{\sigma_q}\Big)^2 \Big],
    \qquad g(y) = e^y - 1 - y.

  The second form, used here, is a sum of two non-negative terms: no cancellation,
  exactly 0 for equal arguments, full relative precision for nearby distributions.
  The inputs broadcast against each other; summing the result over a dimension axis
  gives the KL between diagonal Gaussians (independent coordinates).

  Each scale is given either as the standard deviation (``scale_p``, ``scale_q``) or,
  keyword-only, as its logarithm (``log_scale_p``, ``log_scale_q``: a VAE's
  ``0.5 * logvar``); exactly one of the two per side. From log-scales the divergence is
  computed in log space, exact where :math:`e^{\log\sigma}` would over- or underflow
  (at ``logvar = -180`` the KL to :math:`N(0, 1)` is 89.5, where
  ``scale_p=jnp.exp(0.5 * logvar)`` underflows to 0 and gives ``inf``), with finite
  gradients.

  Edge conventions: a zero scale (a point mass) gives ``+inf`` when the other scale is
  positive (the densities are mutually singular); two zero scales and negative scales
  give NaN. Gradients are finite wherever the value is.

  Args:
    loc_p: mean of ``p``.
    scale_p: standard deviation of ``p`` (not the variance).
    loc_q: mean of ``q``.
    scale_q: standard deviation of ``q``.
    log_scale_p: :math:`\log\sigma_p`, in place of ``scale_p``.
    log_scale_q: :math:`\log\sigma_q`, in place of ``scale_q``.
    base: logarithm base (``None`` or ``'nats'``: nats; 2 or ``'bits'``: bits).

  Returns:
    The divergence, with the broadcast shape of the inputs (float32 for 16-bit inputs).

  Example:
    >>> float(normal_kl_divergence(0.0, 1.0, 1.0, 1.0))
    0.5
    >>> float(normal_kl_divergence(0.0, log_scale_p=-90.0, loc_q=0.0, log_scale_q=0.0))
    89.5

  References:
    Kullback, *Information Theory and Statistics* (1959); Cover & Thomas (2006),
    section 8.6 (differential entropy of the normal).

  See also:
    :func:`normal_cross_entropy` (:math:`H(p, q) = H(p) + \mathrm{KL}(p\|q)`),
    :func:`normal_entropy`, :func:`mvn_kl_divergence` (full covariances),
    :func:`kl_estimate` (Monte-Carlo, when no closed form exists).
  """
  fn = "normal_kl_divergence"
  _inputs.check_base(fn, base)
  (mp, mq), sc = _normal_args(
    fn, {"_p": (scale_p, log_scale_p), "_q": (scale_q, log_scale_q)}, loc_p=loc_p, loc_q=loc_q
  )
  sp, sq = sc["_p"], sc["_q"]
  log_ratio = sp.log - sq.log
  z = _standardised_gap(mp, mq, sq.scale) if sq.scale is not None else None
  if z is None:
    z = _log_standardised_gap(mp, mq, sq.log)
  kl = 0.5 * (_numerics.expm1mx(2 * log_ratio) + z * z)
  return _inputs.apply_base(kl, base)


@_api.public
@_checks.roles(scale="positive", log_scale="finite", base="unchecked")
def normal_entropy(
  scale: ArrayLike | None = None,
  *,
  log_scale: ArrayLike | None = None,
  base: float | str | None = None,
) -> Array:
  r"""Elementwise differential entropy of :math:`N(\mu, \sigma^2)` (independent of the mean).

  .. math:: H(p) = \tfrac12 \log(2 \pi e \sigma^2) = \tfrac12 (1 + \log 2\pi) + \log\sigma

  Differential entropy can be negative (:math:`\sigma < 1/\sqrt{2\pi e}`); a zero scale
  gives ``-inf``, a negative scale NaN.

  Args:
    scale: standard deviation :math:`\sigma`.
    log_scale: :math:`\log\sigma`, keyword-only, in place of ``scale`` (exact for any
      value, where ``exp`` would over- or underflow).
    base: logarithm base (``None`` or ``'nats'``: nats; 2 or ``'bits'``: bits).

  Returns:
    The entropy, with the shape of ``scale``.

  Example:
    >>> round(float(normal_entropy(1.0)), 6)
    1.418939
    >>> round(float(normal_entropy(log_scale=-100.0)), 4)  # float32: 7 significant digits
    -98.5811

  References:
    Cover & Thomas (2006), section 8.1.

  See also:
    :func:`normal_cross_entropy`, :func:`mvn_entropy`.
  """
  fn = "normal_entropy"
  _inputs.check_base(fn, base)
  _, sc = _normal_args(fn, {"": (scale, log_scale)})
  h = (0.5 + _HALF_LOG_2PI) + sc[""].log
  return _inputs.apply_base(h, base)


@_api.public
@_checks.roles(
  loc_p="finite",
  scale_p="positive",
  loc_q="finite",
  scale_q="positive",
  log_scale_p="finite",
  log_scale_q="finite",
  base="unchecked",
)
def normal_cross_entropy(
  loc_p: ArrayLike,
  scale_p: ArrayLike | None = None,
  loc_q: ArrayLike | None = None,
  scale_q: ArrayLike | None = None,
  *,
  log_scale_p: ArrayLike | None = None,
  log_scale_q: ArrayLike | None = None,
  base: float | str | None = None,
) -> Array:
  r"""Elementwise cross-entropy :math:`H(p, q) = -\mathbb{E}_p[\log q]` of two normals.

  .. math::

    H(p, q) = \tfrac12 \log 2\pi + \log\sigma_q
      + \frac{\sigma_p^2 + (\mu_p - \mu_q)^2}{2\sigma_q^2}
    = H(p) + \mathrm{KL}(p \| q)

  Argument order as in :func:`normal_kl_divergence`: the reference ``p`` (whose
  expectation is taken) first; each scale as a standard deviation or, keyword-only, as
  its logarithm (``log_scale_p``, ``log_scale_q``; computed in log space, exact where
  ``exp`` would over- or underflow). Edges: ``scale_q = 0`` gives ``+inf`` (NaN when ``p``
  is the same point mass); ``scale_p = 0`` gives the finite :math:`-\log q(\mu_p)`;
  negative scales give NaN.

  Args:
    loc_p: mean of ``p``.
    scale_p: standard deviation of ``p``.
    loc_q: mean of ``q``.
    scale_q: standard deviation of ``q``.
    log_scale_p: :math:`\log\sigma_p`, in place of ``scale_p``.
    log_scale_q: :math:`\log\sigma_q`, in place of ``scale_q``.
    base: logarithm base (``None`` or ``'nats'``: nats; 2 or ``'bits'``: bits).

  Returns:
    The cross-entropy, with the broadcast shape of the inputs.

  Example:
    >>> round(float(normal_cross_entropy(0.0, 1.0, 0.0, 1.0)), 6)  # = H(N(0, 1))
    1.418939

  See also:
    :func:`normal_entropy`, :func:`normal_kl_divergence`.
  """
  fn = "normal_cross_entropy"
  _inputs.check_base(fn, base)
  (mp, mq), sc = _normal_args(
    fn, {"_p": (scale_p, log_scale_p), "_q": (scale_q, log_scale_q)}, loc_p=loc_p, loc_q=loc_q
  )
  sp, sq = sc["_p"], sc["_q"]
  if sp.scale is not None and sq.scale is not None:
    t = sp.scale / sq.scale
    z = _standardised_gap(mp, mq, sq.scale)
  else:
    t = jnp.exp(sp.log - sq.log)
    z = _log_standardised_gap(mp, mq, sq.log)
  h = _HALF_LOG_2PI + sq.log + 0.5 * (t * t + z * z)
  # A point mass q: -log q is +inf off its atom (NaN if p is the same point mass).
  p_spread = sp.log > -jnp.inf
  degenerate = jnp.where(p_spread | (mp != mq), jnp.inf, jnp.nan).astype(h.dtype)
  h = jnp.where(sq.log == -jnp.inf, degenerate, h)
  if sp.scale is not None:  # sp enters squared: NaN explicitly
    h = jnp.where(sp.scale < 0, jnp.full_like(h, jnp.nan), h)
  return _inputs.apply_base(h, base)


# ---------------------------------------------------------------------------
# Multivariate normal with Cholesky factors
# ---------------------------------------------------------------------------


def _mvn_args(fn: str, **arrays):
  """Check ``loc`` (..., d) and ``scale_tril`` (..., d, d) arguments; broadcast the batch."""
  xs = {k: _inputs.as_float(fn, k, v) for k, v in arrays.items()}
  dims = {}
  for k, v in xs.items():
    if k.startswith("scale_tril"):
      if v.ndim < 2 or v.shape[-1] != v.shape[-2]:
        raise ValueError(
          f"{fn}: `{k}` must be a batch of square lower-triangular matrices with shape "
          f"(..., d, d), got shape {v.shape}."
        )
      dims[k] = v.shape[-1]
    else:
      if v.ndim < 1:
        raise ValueError(f"{fn}: `{k}` must have shape (..., d), got a scalar.")
      dims[k] = v.shape[-1]
  if len(set(dims.values())) != 1:
    desc = ", ".join(f"`{k}` with shape {xs[k].shape}" for k in xs)
    raise ValueError(
      f"{fn}: the event dimension d must agree (last axis of each loc, last two of each "
      f"scale_tril); got {desc}."
    )
  d = next(iter(dims.values()))
  batch = {k: (v.shape[:-2] if k.startswith("scale_tril") else v.shape[:-1]) for k, v in xs.items()}
  try:
    batch_shape = tuple(np.broadcast_shapes(*batch.values()))
  except ValueError:
    desc = ", ".join(f"`{k}` with shape {xs[k].shape} (batch {batch[k]})" for k in xs)
    raise ValueError(f"{fn}: the batch shapes do not broadcast: {desc}.") from None
  dtype = _numerics.compute_dtype(jnp.result_type(*(v.dtype for v in xs.values())))
  out = []
  for k, v in xs.items():
    v = v.astype(dtype)
    if k.startswith("scale_tril"):
      out.append(jnp.tril(jnp.broadcast_to(v, batch_shape + (d, d))))
    else:
      out.append(jnp.broadcast_to(v, batch_shape + (d,)))
  return out, d


def _log_abs_diag(scale_tril: Array) -> Array:
  return jnp.log(jnp.abs(jnp.diagonal(scale_tril, axis1=-2, axis2=-1)))


@_api.public
@_checks.roles(
  loc_p="finite", scale_tril_p="tril", loc_q="finite", scale_tril_q="tril", base="unchecked"
)
def mvn_kl_divergence(
  loc_p: ArrayLike,
  scale_tril_p: ArrayLike,
  loc_q: ArrayLike,
  scale_tril_q: ArrayLike,
  *,
  base: float | None = None,
) -> Array:
  r""":math:`\mathrm{KL}(p \| q)` between multivariate normals given by Cholesky factors.

  With :math:`p = N(\mu_p, L_p L_p^\top)` and :math:`q = N(\mu_q, L_q L_q^\top)`,
  :math:`M = L_q^{-1} L_p` (lower triangular) and :math:`y = L_q^{-1}(\mu_p - \mu_q)`,

  .. math::

    \mathrm{KL}(p \| q)
      = \tfrac12\big[\operatorname{tr}(\Sigma_q^{-1}\Sigma_p) - d
        + \log\det\Sigma_q - \log\det\Sigma_p + (\mu_p-\mu_q)^\top\Sigma_q^{-1}(\mu_p-\mu_q)\big]
      = \tfrac12\Big[\sum_i g(2\log|M_{ii}|) + \sum_{i > j} M_{ij}^2 + \|y\|^2\Big],

  with :math:`g(y) = e^y - 1 - y \ge 0` and :math:`\log|M_{ii}| = \log|L_{p,ii}| -
  \log|L_{q,ii}|`. ``M`` and ``y`` come from triangular solves
  (``jax.scipy.linalg.solve_triangular``), the log-determinants from the diagonals; no
  inverse or determinant is formed. Every term is non-negative, so the trace and the
  log-determinant (each of order ``d``) never cancel: at ``d = 512`` a KL of order 1 keeps
  float32's relative precision, and the result is never negative.

  Conventions: only the lower triangle of each ``scale_tril`` is read (the strict upper
  triangle is ignored, as in TFP's ``LinearOperatorLowerTriangular``); the sign of a
  diagonal entry does not matter (:math:`\Sigma = L L^\top`). A singular factor (a zero
  on the diagonal) gives ``inf`` or NaN, never a finite number.

  Args:
    loc_p: mean of ``p``, shape ``(..., d)``.
    scale_tril_p: lower-triangular factor of the covariance of ``p``, shape ``(..., d, d)``.
    loc_q: mean of ``q``, shape ``(..., d)``.
    scale_tril_q: lower-triangular factor of the covariance of ``q``, shape ``(..., d, d)``.
    base: logarithm base (``None`` or ``'nats'``: nats; 2 or ``'bits'``: bits).

  Returns:
    The divergence with the broadcast batch shape (the leading dimensions).

  Example:
    >>> eye = jnp.eye(2)
    >>> float(mvn_kl_divergence(jnp.zeros(2), eye, jnp.ones(2), eye))
    1.0

  References:
    Kullback (1959); Rasmussen & Williams, *Gaussian Processes for Machine Learning*
    (2006), appendix A.5.

  See also:
    :func:`mvn_entropy`, :func:`mvn_cross_entropy`, :func:`normal_kl_divergence` (a
    diagonal ``scale_tril`` gives the sum of univariate divergences).
  """
  fn = "mvn_kl_divergence"
  _inputs.check_base(fn, base)
  (mp, lp, mq, lq), _ = _mvn_args(
    fn, loc_p=loc_p, scale_tril_p=scale_tril_p, loc_q=loc_q, scale_tril_q=scale_tril_q
  )
  m = jsp_linalg.solve_triangular(lq, lp, lower=True)
  y = jsp_linalg.solve_triangular(lq, (mp - mq)[..., None], lower=True)[..., 0]
  log_diag = _log_abs_diag(lp) - _log_abs_diag(lq)
  off = jnp.tril(m, k=-1)
  kl = 0.5 * (
    jnp.sum(_numerics.expm1mx(2 * log_diag), axis=-1)
    + jnp.sum(off * off, axis=(-2, -1))
    + jnp.sum(y * y, axis=-1)
  )
  return _inputs.apply_base(kl, base)


@_api.public
@_checks.roles(scale_tril="tril", base="unchecked")
def mvn_entropy(scale_tril: ArrayLike, *, base: float | None = None) -> Array:
  r"""Differential entropy of :math:`N(\mu, L L^\top)` from its Cholesky factor.

  .. math:: H(p) = \tfrac d2 (1 + \log 2\pi) + \sum_i \log|L_{ii}|

  Only the diagonal of ``scale_tril`` matters. A zero on the diagonal gives ``-inf``.

  Args:
    scale_tril: lower-triangular factor, shape ``(..., d, d)``.
    base: logarithm base (``None`` or ``'nats'``: nats; 2 or ``'bits'``: bits).

  Returns:
    The entropy with the batch shape ``scale_tril.shape[:-2]``.

  Example:
    >>> round(float(mvn_entropy(jnp.eye(2))), 6)  # 2 * normal_entropy(1.0)
    2.837877

  References:
    Cover & Thomas (2006), theorem 8.4.1.

  See also:
    :func:`normal_entropy`, :func:`mvn_kl_divergence`.
  """
  fn = "mvn_entropy"
  _inputs.check_base(fn, base)
  (lt,), d = _mvn_args(fn, scale_tril=scale_tril)
  h = d * (0.5 + _HALF_LOG_2PI) + jnp.sum(_log_abs_diag(lt), axis=-1)
  return _inputs.apply_base(h, base)


@_api.public
@_checks.roles(
  loc_p="finite", scale_tril_p="tril", loc_q="finite", scale_tril_q="tril", base="unchecked"
)
def mvn_cross_entropy(
  loc_p: ArrayLike,
  scale_tril_p: ArrayLike,
  loc_q: ArrayLike,
  scale_tril_q: ArrayLike,
  *,
  base: float | None = None,
) -> Array:
  r"""Cross-entropy :math:`H(p, q) = -\mathbb{E}_p[\log q]` of multivariate normals.

  .. math::

    H(p, q) = \tfrac d2 \log 2\pi + \sum_i \log|L_{q,ii}|
      + \tfrac12\big(\|L_q^{-1} L_p\|_F^2 + \|L_q^{-1}(\mu_p - \mu_q)\|^2\big)
    = H(p) + \mathrm{KL}(p \| q)

  Arguments and conventions as in :func:`mvn_kl_divergence`.

  Example:
    >>> round(float(mvn_cross_entropy(jnp.zeros(2), jnp.eye(2), jnp.zeros(2), jnp.eye(2))), 6)
    2.837877

  See also:
    :func:`mvn_entropy`, :func:`mvn_kl_divergence`, :func:`normal_cross_entropy`.
  """
  fn = "mvn_cross_entropy"
  _inputs.check_base(fn, base)
  (mp, lp, mq, lq), d = _mvn_args(
    fn, loc_p=loc_p, scale_tril_p=scale_tril_p, loc_q=loc_q, scale_tril_q=scale_tril_q
  )
  m = jsp_linalg.solve_triangular(lq, lp, lower=True)
  y = jsp_linalg.solve_triangular(lq, (mp - mq)[..., None], lower=True)[..., 0]
  h = (
    d * _HALF_LOG_2PI
    + jnp.sum(_log_abs_diag(lq), axis=-1)
    + 0.5 * (jnp.sum(m * m, axis=(-2, -1)) + jnp.sum(y * y, axis=-1))
  )
  return _inputs.apply_base(h, base)


# ---------------------------------------------------------------------------
# Dirichlet
# ---------------------------------------------------------------------------


@_api.public
@_checks.roles(
  concentration_p="positive", concentration_q="positive", axis="axis", base="unchecked"
)
def dirichlet_kl_divergence(
  concentration_p: ArrayLike,
  concentration_q: ArrayLike,
  *,
  axis: int = -1,
  base: float | None = None,
) -> Array:
  r"""KL divergence :math:`\mathrm{KL}(p \| q)` between two Dirichlet distributions.

  Here :math:`p = \mathrm{Dir}(\alpha)` and :math:`q = \mathrm{Dir}(\beta)`.

  .. math::

    \mathrm{KL}(p \| q) = \log\Gamma(\alpha_0) - \sum_i \log\Gamma(\alpha_i)
      - \log\Gamma(\beta_0) + \sum_i \log\Gamma(\beta_i)
      + \sum_i (\alpha_i - \beta_i)\big(\psi(\alpha_i) - \psi(\alpha_0)\big),

  with :math:`\alpha_0 = \sum_i \alpha_i`, :math:`\beta_0 = \sum_i \beta_i` and
  :math:`\psi` the digamma function. Exactly 0 for equal arguments. Concentrations must
  be positive; a zero or negative one gives ``inf`` or NaN.

  Args:
    concentration_p: :math:`\alpha`, the categories along ``axis``.
    concentration_q: :math:`\beta`, broadcastable against ``concentration_p``.
    axis: the category axis.
    base: logarithm base (``None`` or ``'nats'``: nats; 2 or ``'bits'``: bits).

  Returns:
    The divergence with ``axis`` reduced.

  Example:
    >>> float(dirichlet_kl_divergence(jnp.array([2.0, 3.0]), jnp.array([2.0, 3.0])))
    0.0

  References:
    Penny, "KL-divergences of Normal, Gamma, Dirichlet and Wishart densities" (2001).

  See also:
    :func:`kl_divergence` (between categorical distributions).
  """
  fn = "dirichlet_kl_divergence"
  _inputs.check_base(fn, base)
  sa = _inputs.source(fn, "concentration_p", concentration_p, None)
  sb = _inputs.source(fn, "concentration_q", concentration_q, None)
  a = _inputs.align(fn, sa, sb, axis=axis, category_broadcast=True)
  alpha, beta = (s.value for s in a.sources)
  # A non-positive concentration is not a Dirichlet: NaN (gammaln is finite at most
  # negative arguments, so it would otherwise give a finite wrong number).
  alpha = jnp.where(alpha > 0, alpha, jnp.full_like(alpha, jnp.nan))
  beta = jnp.where(beta > 0, beta, jnp.full_like(beta, jnp.nan))
  alpha0 = jnp.sum(alpha, axis=-1)
  beta0 = jnp.sum(beta, axis=-1)
  dig = jsp_special.digamma(alpha) - jsp_special.digamma(alpha0)[..., None]
  kl = (
    jsp_special.gammaln(alpha0)
    - jsp_special.gammaln(beta0)
    + jnp.sum(jsp_special.gammaln(beta) - jsp_special.gammaln(alpha) + (alpha - beta) * dig, -1)
  )
  return _inputs.apply_base(kl, base)
