"""The adversarial grid: every categorical function x input form x dtype x edge pattern x
transformation, each cell checked against its documented result.

A *cell* is one (function, form, dtype, pattern, transformation). Cells that share a
shape run in one batched call (each edge pattern is a row, and every function reduces
only the last axis, so rows are independent); the assertions are still made per cell.
Each cell asserts:

* value / jit / vmap: equal to a float64 numpy oracle computed from the same (rounded)
  inputs where the oracle is finite, the same +-inf where it is infinite, NaN where it is
  NaN; jit and vmap also equal the eager batched result;
* grad / jacfwd / hessian: finite in every row whose value is finite (jacfwd and hessian
  in the edge-pattern rows).

Cells with logits inputs in float32 or float64 also run the offset rows (``OFFSET_ROWS``):
logits on a 1/16 grid, each shifted by constants of ``±1e4`` and ``±1e6`` (every shifted
logit exactly representable), must give the unshifted value to the rounding of the
result (``SHIFT_ULPS`` units in the last place of ``max(1, |value|)``) and the same
gradient; and equal logits at ``±1e8`` and ``±1e30``, ``[1e8, -inf, 1e8, -inf, -inf]``
and a spread of multiples of 8 around ``±1e8`` must match the oracle (``log K`` for the
entropy and the cross-entropy of equal logits, ``log 2`` for the two-of-five row).
16-bit logits have no such exact shifts (bfloat16 resolves 64 at 1e4; float16 overflows
at 1e6), so their cells run the patterns only.

The number of cells run is printed at the end of the session (``-s`` shows it) and
checked to be in the thousands.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import jaxdiv

V = 5
RNG = np.random.default_rng(20261128)
DTYPES = {
  "bfloat16": jnp.bfloat16,
  "float16": jnp.float16,
  "float32": jnp.float32,
  "float64": jnp.float64,
}
TRANSFORMS = ("value", "jit", "vmap", "grad", "jacfwd", "hessian")
CELLS = {"run": 0}


# ---------------------------------------------------------------------------
# Edge patterns: each is one row of (p, q) probabilities or logits, and a mask row.
# ---------------------------------------------------------------------------


def _dirichlet():
  return RNG.dirichlet(np.ones(V))


def _with_zeros(x, idx):
  x = x.copy()
  x[list(idx)] = 0
  return x / x.sum()


def _logits(p):
  with np.errstate(divide="ignore"):
    return np.log(p)


@dataclasses.dataclass
class Row:
  name: str
  p: np.ndarray  # probabilities (probs form) -- float64
  q: np.ndarray
  zp: np.ndarray  # logits (logits form)
  zq: np.ndarray
  where: np.ndarray


def _row(name, p, q, where=None, zp=None, zq=None):
  where = np.ones(V, bool) if where is None else where
  return Row(name, p, q, _logits(p) if zp is None else zp, _logits(q) if zq is None else zq, where)


def _patterns() -> list[Row]:
  a, b = _dirichlet(), _dirichlet()
  rows = [
    _row("interior", a, b),
    _row("zeros_in_p", _with_zeros(a, [1, 3]), b),
    _row("zeros_in_q", a, _with_zeros(b, [2])),  # p > 0 = q: KL and CE are +inf
    _row("shared_zeros", _with_zeros(a, [0, 4]), _with_zeros(b, [0, 4])),
  ]
  masked_where = np.array([True, False, True, True, False])
  # distributions over the included categories, garbage (NaN) at the excluded ones,
  # which must not leak into values or gradients
  p_nan = a / a[masked_where].sum()
  p_nan[~masked_where] = np.nan
  q_nan = b / b[masked_where].sum()
  q_nan[~masked_where] = np.nan
  rows.append(_row("masked", p_nan, q_nan, masked_where))
  rows.append(_row("fully_masked", a, b, np.zeros(V, bool)))
  big = np.array([1e4, -1e4, 0.0, 3.0, -2e3])
  rows.append(_row("logits_1e4", _softmax(big), _softmax(big[::-1]), zp=big, zq=big[::-1].copy()))
  huge = np.array([1e30, -1e30, 0.0, 1e29, -5.0])
  rows.append(
    _row("logits_1e30", _softmax(huge), _softmax(np.roll(huge, 1)), zp=huge, zq=np.roll(huge, 1))
  )
  sub = np.array([1e-40, 3e-39, 0.5, 0.25, 0.25 - 3.1e-39])
  rows.append(_row("subnormal", sub, b))
  return rows


def _log_softmax(z):
  z = np.asarray(z, np.float64)
  if np.any(z == np.inf) or np.any(np.isnan(z)):
    return np.full_like(z, np.nan)
  if np.all(z == -np.inf):
    return np.full_like(z, -np.inf)
  m = np.max(z)
  return (z - m) - np.log(np.sum(np.exp(z - m)))


def _softmax(z, where=None):
  z = np.asarray(z, np.float64)
  if where is not None:
    z = np.where(where, z, -np.inf)
  if np.any(z == np.inf) or np.any(np.isnan(z)):
    return np.full_like(z, np.nan)
  if np.all(z == -np.inf):
    return np.zeros_like(z)
  m = np.max(z)
  e = np.exp(z - m)
  return e / e.sum()


PATTERNS = _patterns()


def _fine(x):
  """Logits rounded to multiples of 1/16 and at least -8 (-inf stays -inf): any shift by
  a multiple of 1/16 below 2^20 in magnitude is exact in float32."""
  with np.errstate(invalid="ignore"):
    return np.where(np.isneginf(x), x, np.maximum(np.round(x * 16) / 16, -8.0))


SHIFTS = ((1e4, -1e6), (-1e4, 1e6), (1e6, 1e4), (-1e6, -1e4))  # (added to p, added to q)
SHIFT_ULPS = 8


def _offset_rows() -> tuple[list[Row], list[tuple[int, int]]]:
  """Rows with exactly representable offsets, and (base, shifted) index pairs into them."""
  rng = np.random.default_rng(20261201)
  zp, zq = _fine(np.log(rng.dirichlet(np.ones(V)))), _fine(np.log(rng.dirichlet(np.ones(V))))
  zp_zero, zq_zero = zp.copy(), zq.copy()
  zp_zero[1], zq_zero[3] = -np.inf, -np.inf  # p_1 = 0 < q_1 and q_3 = 0 < p_3
  keep = np.array([True, True, False, True, False])

  def row(name, zp, zq, where=None):
    w = np.ones(V, bool) if where is None else where
    return Row(name, _softmax(zp, w), _softmax(zq, w), zp, zq, w)

  base = [
    row("fine", zp, zq),
    row("fine_zeros", zp_zero, zq_zero),
    row("fine_masked", zp, zq, keep),
  ]
  rows, pairs = list(base), []
  for b in base:
    for cp, cq in SHIFTS:
      pairs.append((base.index(b), len(rows)))
      rows.append(Row(f"{b.name}{cp:+g}/{cq:+g}", b.p, b.q, b.zp + cp, b.zq + cq, b.where))
  two = np.array([1e8, -np.inf, 1e8, -np.inf, -np.inf])
  spread = 8.0 * np.array([0, 1, -1, 2, 0])
  for c in (1e8, -1e8, 1e30, -1e30):
    rows.append(row(f"equal{c:+g}", np.full(V, c), np.full(V, c)))
  rows.append(row("two_of_five+1e8", two, two))
  rows.append(row("spread+-1e8", 1e8 + spread, -1e8 + spread[::-1]))
  return rows, pairs


OFFSET_ROWS, SHIFT_PAIRS = _offset_rows()


def _offsets_apply(spec, form: str, dtype_name: str) -> bool:
  """The offset rows run where a logits input is given in float32 or float64."""
  logits = form in ("logits", "mixed", "labels")  # the unary forms: "probs" or "logits"
  return logits and dtype_name in ("float32", "float64")


def _rows(spec, form: str, dtype_name: str) -> list[Row]:
  return PATTERNS + (OFFSET_ROWS if _offsets_apply(spec, form, dtype_name) else [])


# ---------------------------------------------------------------------------
# Float64 numpy oracles on probability rows (the documented conventions).
# ---------------------------------------------------------------------------


# Oracles take float64 probabilities and log-probabilities (log-probabilities stay exact
# where probabilities underflow, e.g. for logits of +-1e4).


def _h(p, lp, q, lq):
  s = lp > -np.inf
  return -np.sum(p[s] * lp[s])


def _ce(p, lp, q, lq):
  s = lp > -np.inf
  return -np.sum(p[s] * lq[s])


def _kl(p, lp, q, lq):
  s = lp > -np.inf
  if np.any(s & (lq == -np.inf)):  # p_i > 0 = q_i, also where p_i underflows
    return np.inf
  return np.sum(p[s] * (lp[s] - lq[s]))


@dataclasses.dataclass(frozen=True)
class Spec:
  name: str
  fn: Callable
  oracle: Callable  # oracle(p, log p, q, log q), float64 rows, masked categories removed
  forms: tuple = ("probs", "logits")
  unary: bool = False
  kwargs: tuple = ()
  # Renyi, alpha and the Bhattacharyya distance treat their inputs as distributions
  # (documented): the oracle normalises them, and 16-bit probability inputs, whose
  # rounding moves the sum off 1, are compared at the precision of the input dtype.
  normalised: bool = False


def _lmix(w, lp, lq):
  with np.errstate(divide="ignore"):
    return np.logaddexp(np.log(w) + lp, np.log1p(-w) + lq)


def _js(w):
  def oracle(p, lp, q, lq):
    lm = _lmix(w, lp, lq)
    return w * _kl(p, lp, None, lm) + (1 - w) * _kl(q, lq, None, lm)

  return oracle


def _skew(a):
  return lambda p, lp, q, lq: _kl(p, lp, None, _lmix(a, lp, lq))


def _renyi(a):
  def oracle(p, lp, q, lq):
    s = lp > -np.inf  # the support of p (finite logits: every category)
    if a == 0:
      return -special.logsumexp(lq[s])
    if a == 1:
      return _kl(p, lp, q, lq)
    if a == np.inf:
      return np.max(lp[s] - lq[s])
    with np.errstate(invalid="ignore"):
      x = a * lp[s] + (1 - a) * lq[s]
    return special.logsumexp(x) / (a - 1)

  return oracle


def _alpha(a):
  def oracle(p, lp, q, lq):
    s = (p > 0) & (q > 0)
    if a > 1 and np.any((p > 0) & (q == 0)):
      return np.inf
    return (1 - np.sum(np.exp(a * lp[s] + (1 - a) * lq[s]))) / (a * (1 - a))

  return oracle


def _chi2(p, lp, q, lq):
  if np.any((p > 0) & (q == 0)):
    return np.inf
  s = q > 0
  return np.sum((p[s] - q[s]) ** 2 / q[s])


def _hell2(p, lp, q, lq):
  return 0.5 * np.sum((np.sqrt(p) - np.sqrt(q)) ** 2)


def _bc(p, lp, q, lq):
  return np.sum(np.sqrt(p * q))


CATEGORICAL = ("probs", "logits", "mixed")
SPECS = [
  Spec("entropy", jaxdiv.entropy, _h, unary=True),
  Spec("cross_entropy", jaxdiv.cross_entropy, _ce, forms=("probs", "logits", "labels", "mixed")),
  Spec("kl_divergence", jaxdiv.kl_divergence, _kl, forms=("probs", "logits", "labels", "mixed")),
  Spec("jensen_shannon_divergence", jaxdiv.jensen_shannon_divergence, _js(0.5), CATEGORICAL),
  Spec(
    "jensen_shannon_divergence_w0.3",
    jaxdiv.jensen_shannon_divergence,
    _js(0.3),
    CATEGORICAL,
    kwargs=(("weight", 0.3),),
  ),
  Spec(
    "jensen_shannon_distance",
    jaxdiv.jensen_shannon_distance,
    lambda *a: np.sqrt(max(_js(0.5)(*a), 0.0)),  # rounding can leave -1e-17 at p = q
    CATEGORICAL,
  ),
  Spec(
    "jeffreys_divergence",
    jaxdiv.jeffreys_divergence,
    lambda p, lp, q, lq: _kl(p, lp, q, lq) + _kl(q, lq, p, lp),
    CATEGORICAL,
  ),
  Spec(
    "skew_kl_divergence",
    jaxdiv.skew_kl_divergence,
    _skew(0.2),
    CATEGORICAL,
    kwargs=(("alpha", 0.2),),
  ),
  Spec(
    "total_variation_distance",
    jaxdiv.total_variation_distance,
    lambda p, lp, q, lq: 0.5 * np.sum(np.abs(p - q)),
    CATEGORICAL,
  ),
  Spec("squared_hellinger_distance", jaxdiv.squared_hellinger_distance, _hell2, CATEGORICAL),
  Spec(
    "hellinger_distance",
    jaxdiv.hellinger_distance,
    lambda *a: np.sqrt(_hell2(*a)),
    CATEGORICAL,
  ),
  Spec("bhattacharyya_coefficient", jaxdiv.bhattacharyya_coefficient, _bc, CATEGORICAL),
  Spec(
    "bhattacharyya_distance",
    jaxdiv.bhattacharyya_distance,
    lambda p, lp, q, lq: -special.logsumexp(0.5 * (lp + lq)),
    CATEGORICAL,
    normalised=True,
  ),
  Spec("chi_squared_divergence", jaxdiv.chi_squared_divergence, _chi2, CATEGORICAL),
  *[
    Spec(
      f"renyi_divergence_a{a}",
      jaxdiv.renyi_divergence,
      _renyi(a),
      CATEGORICAL,
      kwargs=(("alpha", a),),
      normalised=True,
    )
    for a in (0.0, 0.5, 2.0, np.inf)
  ],
  *[
    Spec(
      f"alpha_divergence_a{a}",
      jaxdiv.alpha_divergence,
      _alpha(a),
      CATEGORICAL,
      kwargs=(("alpha", a),),
      normalised=True,
    )
    for a in (0.5, 2.0)
  ],
  Spec(
    "f_divergence_kl",
    jaxdiv.f_divergence,
    _kl,
    CATEGORICAL,
    kwargs=(("f", jaxdiv.generators.kl),),
  ),
]


def _oracle_row(spec: Spec, form: str, row: Row, dtype) -> float:
  """The documented result for one row, in float64, from the inputs rounded to dtype."""
  cast = lambda x: np.asarray(jnp.asarray(x, dtype).astype(jnp.float64))  # noqa: E731
  w = row.where
  if not w.any():
    return 0.0
  with np.errstate(divide="ignore", invalid="ignore"):
    if form in ("probs", "mixed"):
      p = cast(row.p)[w]
      lp = np.log(p)
    else:
      lp = _log_softmax(cast(row.zp)[w])
      p = np.exp(lp)
    if form == "probs":
      q = cast(row.q)[w]
      lq = np.log(q)
    else:
      lq = _log_softmax(cast(row.zq)[w])
      q = np.exp(lq)
    if form == "labels":
      label = int(np.argmax(row.p))
      if not w[label]:
        return 0.0
      p = np.zeros(w.sum())
      p[int(np.cumsum(w)[label] - 1)] = 1.0
      lp = np.log(p)
    if np.any(np.isnan(p)) or np.any(np.isnan(q)) or np.any(p < 0) or np.any(q < 0):
      return np.nan
    if spec.normalised and form != "labels":
      lp, lq = lp - np.log(np.sum(p)), lq - np.log(np.sum(q))
      p, q = np.exp(lp), np.exp(lq)
    return float(spec.oracle(p, lp, q, lq))


def _inputs(spec: Spec, form: str, rows: list[Row], dtype):
  """``(x, fixed, call)``: the differentiated array, the other (row-aligned) arrays, and
  ``call(x, fixed) -> per-row results``."""
  fixed = {
    "where": jnp.asarray(np.stack([r.where for r in rows])),
    "p": jnp.asarray(np.stack([r.p for r in rows]), dtype),
    "p_logits": jnp.asarray(np.stack([r.zp for r in rows]), dtype),
    "labels": jnp.asarray([int(np.argmax(r.p)) for r in rows], jnp.int32),
  }
  Q = jnp.asarray(np.stack([r.q for r in rows]), dtype)
  ZQ = jnp.asarray(np.stack([r.zq for r in rows]), dtype)
  kw = dict(spec.kwargs)
  if spec.unary:
    if form == "probs":
      return fixed["p"], {"where": fixed["where"]}, lambda x, f: spec.fn(x, **f, **kw)
    return fixed["p_logits"], {"where": fixed["where"]}, lambda x, f: spec.fn(logits=x, **f, **kw)
  keep = {"probs": "p", "logits": "p_logits", "mixed": "p", "labels": "labels"}[form]
  fixed = {"where": fixed["where"], keep: fixed[keep]}
  if form == "probs":
    return Q, fixed, lambda x, f: spec.fn(q=x, **f, **kw)
  return ZQ, fixed, lambda x, f: spec.fn(q_logits=x, **f, **kw)


def _assert_matches(got, want, dtype, what, rtol=None, rows=PATTERNS):
  got = np.asarray(jnp.asarray(got).astype(jnp.float64))
  want = np.asarray(want, np.float64)
  if rtol is None:
    rtol = 1e-10 if dtype == jnp.float64 else 2e-5
  for i, (g, w) in enumerate(zip(got, want, strict=True)):
    name = rows[i].name if i < len(rows) else i
    if np.isnan(w):
      assert np.isnan(g), f"{what} [{name}]: expected NaN, got {g}"
    elif np.isinf(w):
      assert g == w, f"{what} [{name}]: expected {w}, got {g}"
    else:
      assert np.isfinite(g), f"{what} [{name}]: expected {w}, got {g}"
      np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * 10, err_msg=f"{what} [{name}]")


def _transformed(call, hessian: bool, n: int):
  """One compiled function computing every transformation of a cell group. jacfwd and the
  hessian take tangents in the first ``n`` rows only (the edge patterns; the offset rows
  are checked for values and gradients), through the same batched call."""

  def all_transforms(x, fixed, finite):
    total = lambda x: jnp.sum(jnp.where(finite, call(x, fixed), 0.0))  # noqa: E731
    rowwise = lambda x: jnp.where(finite, call(x, fixed), 0.0)  # noqa: E731
    head = lambda f: lambda h: f(x.at[:n].set(h))  # noqa: E731  f of the first n rows
    grad_head = lambda x: jax.grad(total)(x)[:n]  # noqa: E731
    hess = jax.jacfwd(head(grad_head))(x[:n]) if hessian else None
    value, vmapped = call(x, fixed), jax.vmap(call)(x, fixed)
    return value, vmapped, jax.grad(total)(x), jax.jacfwd(head(rowwise))(x[:n])[:n], hess

  return jax.jit(all_transforms)


FULL_GRID = os.environ.get("JAXDIV_FULL_GRID", "") not in ("", "0")


def _groups():
  """Every (function, form, dtype) cell group; a deterministic sample unless full.

  The default suite runs, for every function, one form and one dtype in rotation (so
  every function, form and dtype is covered), plus float32 in every form of the core
  three functions. ``JAXDIV_FULL_GRID=1`` runs all of them (``.ci/run`` does).
  """
  names = list(DTYPES)
  for k, spec in enumerate(SPECS):
    forms = ("probs", "logits") if spec.unary else spec.forms
    for i, form in enumerate(forms):
      for j, dt in enumerate(names):
        core = spec.name in ("entropy", "cross_entropy", "kl_divergence") and dt == "float32"
        picked = j == k % len(names) and i == (k // len(names)) % len(forms)
        if FULL_GRID or core or picked:
          yield spec, form, dt


def _cells():
  for spec, form, dt in _groups():
    yield pytest.param(spec, form, dt, id=f"{spec.name}-{form}-{dt}")


def planned_cells() -> int:
  """How many cells the selected groups contain (patterns x transformations)."""
  n = 0
  for spec, form, dt in _groups():
    # value, jit, vmap, grad in every row; jacfwd (and the hessian) in the edge patterns
    second = 2 if dt in ("float32", "float64") else 1
    n += 4 * len(_rows(spec, form, dt)) + second * len(PATTERNS)
    if _offsets_apply(spec, form, dt):
      n += 2 * len(SHIFT_PAIRS)  # shift invariance of the value and of the gradient
  return n + 4 * len(SPECS) * len(DTYPES)


@pytest.mark.parametrize("spec, form, dtype_name", list(_cells()))
def test_grid(spec, form, dtype_name):
  dtype = DTYPES[dtype_name]
  rows = _rows(spec, form, dtype_name)
  x, fixed, call = _inputs(spec, form, rows, dtype)
  want = np.array([_oracle_row(spec, form, r, dtype) for r in rows])
  finite = np.isfinite(want)
  value = call(x, fixed)
  assert value.dtype == (jnp.float64 if dtype == jnp.float64 else jnp.float32)
  assert value.shape == (len(rows),)
  rtol = (
    2e-2 if spec.normalised and form in ("probs", "mixed") and dtype_name[-2:] == "16" else None
  )
  what = f"{spec.name}/{form}/{dtype_name}"
  _assert_matches(value, want, dtype, f"{what}/value", rtol, rows)
  hess_too = dtype_name in ("float32", "float64")  # 16-bit hessians add nothing new
  n = len(PATTERNS)
  jitted, vm, g, jf, hess = _transformed(call, hess_too, n)(x, fixed, jnp.asarray(finite))
  _assert_matches(jitted, want, dtype, f"{what}/jit", rtol, rows)
  # vmap over rows (every row-aligned input mapped alongside) == the batched call
  _assert_matches(vm, want, dtype, f"{what}/vmap", rtol, rows)
  if _offsets_apply(spec, form, dtype_name):
    _assert_shift_invariant(value, g, rows, dtype, what)
  # derivatives: finite in every row whose value is finite
  assert np.all(np.isfinite(np.asarray(g, np.float64)[finite])), f"grad not finite: {g}"
  assert np.all(np.isfinite(np.asarray(jf, np.float64)[finite[:n]])), "jacfwd not finite"
  if hess_too:
    h = np.asarray(hess, np.float64)[finite[:n]][:, :, finite[:n]]
    assert np.all(np.isfinite(h)), "hessian not finite"
    CELLS["run"] += n
  CELLS["run"] += len(rows) * 4 + n


def _assert_shift_invariant(value, grad, rows, dtype, what):
  """Each shifted row equals its base row: the value to the rounding of the result, the
  gradient to the same number of units in the last place of its largest entry."""
  ulp = float(jnp.finfo(jnp.float64 if dtype == jnp.float64 else jnp.float32).eps)
  off = len(PATTERNS)
  value = np.asarray(value, np.float64)[off:]
  grad = np.asarray(jnp.asarray(grad).astype(jnp.float64))[off:]
  for b, i in SHIFT_PAIRS:
    name = rows[off + i].name
    vb, vi = value[b], value[i]
    if np.isinf(vb) or np.isnan(vb):
      assert vi == vb or (np.isnan(vb) and np.isnan(vi)), f"{what}/shift [{name}]: {vi} != {vb}"
    else:
      tol = SHIFT_ULPS * ulp * max(1.0, abs(vb))
      assert abs(vi - vb) <= tol, f"{what}/shift [{name}]: {vi} != {vb} (by {vi - vb:.3g})"
    gb, gi = grad[b], grad[i]
    tol = SHIFT_ULPS * ulp * max(1.0, float(np.max(np.abs(gb), initial=0.0)))
    assert np.all(np.abs(gi - gb) <= tol), f"{what}/shift grad [{name}]: {gi} != {gb}"
  CELLS["run"] += 2 * len(SHIFT_PAIRS)


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_single_category_and_empty_batch(spec, dtype_name):
  dtype = DTYPES[dtype_name]
  kw = dict(spec.kwargs)
  fn = lambda *a: spec.fn(*a, **kw)  # noqa: E731
  call = (lambda x: fn(x)) if spec.unary else (lambda x: fn(x, x))
  one = jnp.ones((3, 1), dtype)
  lone = np.zeros(1)
  want = spec.oracle(np.ones(1), lone, np.ones(1), lone)
  empty = jnp.ones((0, V), dtype) / V
  # one compiled program for the three checks (eager calls are covered elsewhere)
  both = jax.jit(
    lambda one, empty: (call(one), call(empty), jax.grad(lambda x: jnp.sum(call(x)))(empty))
  )
  out, out_empty, g = both(one, empty)
  np.testing.assert_array_equal(out, np.full(3, want))
  assert out_empty.shape == (0,)
  assert g.shape == empty.shape
  CELLS["run"] += 4


def test_zz_grid_size_report():
  """Runs last in this module: every planned cell ran (and the count is printed)."""
  print(f"\nadversarial grid: {CELLS['run']} of {planned_cells()} planned cells")
  assert CELLS["run"] == planned_cells() > 500
