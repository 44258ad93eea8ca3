r"""Large-vocabulary fused losses: divergences of ``softmax(hidden @ weight)`` without the logits.

A language-model head turns ``N`` hidden states of width ``D`` into ``N x V`` logits; at
``V = 65536`` and ``N = 8192`` those are 2 GiB in float32, and differentiating a loss on
them keeps several such arrays alive. The functions here never form them: they walk the
vocabulary (and optionally the tokens) in blocks, computing ``hidden @ weight[:, block]``
on the fly with an online (running-max) log-sum-exp, and a :func:`jax.custom_vjp` keeps
only per-row statistics (log-normalisers, the divergence itself) for the backward pass,
which recomputes each block and turns it straight into the two weight-gradient
products. Compiled temporaries are ``O(rows x chunk_size)`` instead of ``O(N x V)``.

This is the idea of Cut Cross-Entropy (Wijmans et al., 2025), Liger-Kernel's fused
linear cross-entropy (Hsu et al., 2024) and levanter's blockwise cross-entropy, written
in plain JAX (``lax.fori_loop`` over blocks), so it runs on every backend.

The custom VJP has no forward mode: ``jax.jvp``, ``jax.jacfwd`` and ``jax.hessian`` of these
functions raise. Use the core functions (:func:`jaxdiv.cross_entropy`,
:func:`jaxdiv.kl_divergence`) on materialised logits for forward-mode derivatives.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxdiv import _inputs, _numerics

Array = jax.Array

_DEFAULT_CHUNK = 4096
_DEFAULT_TOKEN_CHUNK = 1024

# ---------------------------------------------------------------------------
# Blocked loops
# ---------------------------------------------------------------------------


class _Range(NamedTuple):
  """A block ``[start, start + size)`` of rows or categories."""

  start: Array | int  # traced inside a loop
  size: int  # static
  valid: Array | None  # [size] bool: False where an earlier block already covered the position


def _loop(total: int, size: int, body, carry):
  """``body(block, carry)`` over ``[0, total)`` in blocks of ``size <= total``.

  One ``fori_loop`` whose body is traced once, whatever ``total % size``: when ``size``
  does not divide ``total`` the last block is shifted back to end at ``total`` (so no
  input is padded or copied) and its ``valid`` mask marks the positions it adds; the body
  must leave the others out (a category as ``-inf``, a row with zero cotangent). A single
  block needs no loop at all.
  """
  num_blocks, rem = -(-total // size), total % size
  if num_blocks == 0:
    return carry
  if num_blocks == 1:
    return body(_Range(0, size, None), carry)

  def step(i, carry):
    start = i * size
    if not rem:
      return body(_Range(start, size, None), carry)
    shifted = jnp.minimum(start, total - size)
    return body(_Range(shifted, size, shifted + jnp.arange(size) >= start), carry)

  return lax.fori_loop(0, num_blocks, step, carry)


class _Side(NamedTuple):
  """One distribution: ``hidden @ weight`` (``hidden`` in the compute dtype) or logits."""

  hidden: Array | None  # [N, D]
  weight: Array | None  # [D, V]
  logits: Array | None  # [N, V]


def _block(side: _Side, rows: _Range, cols: _Range, mask, dtype) -> Array:
  """Logits of a block of rows and categories; ``-inf`` where masked or already covered."""
  if side.logits is not None:
    z = lax.dynamic_slice(side.logits, (rows.start, cols.start), (rows.size, cols.size))
    z = z.astype(dtype)
  else:
    h = lax.dynamic_slice_in_dim(side.hidden, rows.start, rows.size, 0)
    w = lax.dynamic_slice_in_dim(side.weight, cols.start, cols.size, 1).astype(dtype)
    z = jnp.dot(h, w, preferred_element_type=dtype)
  keep = cols.valid
  if mask is not None:
    m = lax.dynamic_slice_in_dim(mask, cols.start, cols.size)
    keep = m if keep is None else keep & m
  if keep is not None:
    z = jnp.where(keep, z, -jnp.inf)
  return z


def _finite_or_zero(x: Array) -> Array:
  return jnp.where(jnp.isfinite(x), x, jnp.zeros_like(x))


def _lse_update(m: Array, s: Array, z: Array):
  """Online log-sum-exp: fold block ``z`` [n, c] into the running max ``m`` and sum ``s``."""
  m_new = jnp.maximum(m, jnp.max(z, axis=-1))
  ms = _finite_or_zero(m_new)
  s = s * jnp.exp(m - ms) + jnp.sum(jnp.exp(z - ms[:, None]), axis=-1)
  return m_new, s, ms


# ---------------------------------------------------------------------------
# The fused kernel: forward statistics and a recomputing backward pass
#
# kind "ce": q = softmax(q logits) against integer labels (p is one-hot).
# kind "kl": KL(p || q), one pass with running sums a = sum exp(z_p - m_p) (z_p - z_q).
# kind "js": weighted Jensen-Shannon, two passes (log-normalisers, then the mixture).
# ---------------------------------------------------------------------------


class _Static(NamedTuple):
  kind: str
  vocab_chunk: int
  token_chunk: int


def _forward(st: _Static, p: _Side | None, q: _Side, labels, where, w):
  """Per-row loss and the O(N) statistics the backward pass needs."""
  num_rows = (q.hidden if q.hidden is not None else q.logits).shape[0]
  num_v = q.weight.shape[1] if q.logits is None else q.logits.shape[1]
  dtype = _dtype(p, q)
  zeros = jnp.zeros((num_rows,), dtype)
  kind = st.kind

  def rows(rr, out):
    n = rr.size

    def init():
      return jnp.full((n,), -jnp.inf, dtype), jnp.zeros((n,), dtype)

    if kind == "ce":

      def body(cc, carry):
        m, s, _ = _lse_update(*carry, _block(q, rr, cc, where, dtype))
        return m, s

      m, s = _loop(num_v, st.vocab_chunk, body, init())
      stats = (m + jnp.log(s),)
    elif kind == "kl":

      def body(cc, carry):
        mp, sp, a, hit, mq, sq = carry
        zp = _block(p, rr, cc, where, dtype)
        zq = _block(q, rr, cc, where, dtype)
        scale = jnp.exp(mp - _finite_or_zero(jnp.maximum(mp, jnp.max(zp, axis=-1))))
        mp, sp, mps = _lse_update(mp, sp, zp)
        mq, sq, _ = _lse_update(mq, sq, zq)
        p_zero, q_zero = zp == -jnp.inf, zq == -jnp.inf
        diff = jnp.where(p_zero | q_zero, jnp.zeros_like(zp), zp - zq)
        a = a * scale + jnp.sum(jnp.exp(zp - mps[:, None]) * diff, axis=-1)
        hit = hit | jnp.any(q_zero & ~p_zero, axis=-1)
        return mp, sp, a, hit, mq, sq

      mp, sp = init()
      mq, sq = init()
      carry = (mp, sp, jnp.zeros((n,), dtype), jnp.zeros((n,), bool), mq, sq)
      mp, sp, a, hit, mq, sq = _loop(num_v, st.vocab_chunk, body, carry)
      lse_p, lse_q = mp + jnp.log(sp), mq + jnp.log(sq)
      kl = jnp.where(hit, jnp.inf, a / sp - lse_p + lse_q)
      if where is not None:
        kl = jnp.where(jnp.any(where), kl, jnp.zeros_like(kl))
      stats = (lse_p, lse_q, kl)
    else:  # "js"

      def body1(cc, carry):
        mp, sp, mq, sq = carry
        mp, sp, _ = _lse_update(mp, sp, _block(p, rr, cc, where, dtype))
        mq, sq, _ = _lse_update(mq, sq, _block(q, rr, cc, where, dtype))
        return mp, sp, mq, sq

      mp, sp, mq, sq = _loop(num_v, st.vocab_chunk, body1, init() + init())
      lse_p, lse_q = mp + jnp.log(sp), mq + jnp.log(sq)

      def body2(cc, carry):
        kl_pm, kl_qm = carry
        t_p, t_q, _, _, _, _ = _js_terms(p, q, rr, cc, where, dtype, lse_p, lse_q, w)
        return kl_pm + jnp.sum(t_p, axis=-1), kl_qm + jnp.sum(t_q, axis=-1)

      kl_pm, kl_qm = _loop(num_v, st.vocab_chunk, body2, (jnp.zeros((n,), dtype),) * 2)
      stats = (lse_p, lse_q, kl_pm, kl_qm)
    if rr.valid is not None:  # a shifted last block keeps the rows written before
      old = [lax.dynamic_slice_in_dim(o, rr.start, n) for o in out]
      stats = tuple(jnp.where(rr.valid, x, o) for x, o in zip(stats, old, strict=True))
    pairs = zip(out, stats, strict=True)
    return tuple(lax.dynamic_update_slice_in_dim(o, x, rr.start, 0) for o, x in pairs)

  n_stats = {"ce": 1, "kl": 3, "js": 4}[kind]
  stats = _loop(num_rows, st.token_chunk, rows, (zeros,) * n_stats)

  if kind == "ce":
    (lse,) = stats
    ignored, out_of_range, index = _label_mask(labels, num_v, where)
    w_label = jnp.take(q.weight, index, axis=1).astype(dtype)  # [D, N]
    z_label = jnp.einsum("nd,dn->n", q.hidden, w_label)
    loss = jnp.where(ignored, jnp.zeros_like(lse), lse - z_label)
    loss = jnp.where(out_of_range, jnp.full_like(loss, jnp.nan), loss)
  elif kind == "kl":
    loss = stats[2]
  else:
    _, _, kl_pm, kl_qm = stats
    loss = _js_combine(w, kl_pm, kl_qm)
  return loss, stats


def _label_mask(labels, num_v, where):
  """:func:`jaxdiv._inputs.label_mask` with a ``[V]`` mask: excluded labels are ignored."""
  ignored, out_of_range, index = _inputs.label_mask(labels, num_v, None)
  if where is not None:
    ignored = ignored | ~where[index]
  return ignored, out_of_range, index


def _js_combine(w, kl_pm, kl_qm):
  """``w KL(p||m) + (1 - w) KL(q||m)``, a term with zero weight counting as 0 (not 0 inf)."""
  a = jnp.where(w == 0, jnp.zeros_like(kl_pm), w * kl_pm)
  b = jnp.where(w == 1, jnp.zeros_like(kl_qm), (1 - w) * kl_qm)
  return a + b


def _js_terms(p, q, rr, cc, where, dtype, lse_p, lse_q, w):
  """Blockwise ``p (log p - log m)``, ``q (log q - log m)`` and the log-probabilities."""
  zp = _block(p, rr, cc, where, dtype)
  zq = _block(q, rr, cc, where, dtype)
  log_p = zp - _finite_or_zero(lse_p)[:, None]
  log_q = zq - _finite_or_zero(lse_q)[:, None]
  log_m = jnp.logaddexp(jnp.log(w) + log_p, jnp.log1p(-w) + log_q)
  pr, qr = jnp.exp(log_p), jnp.exp(log_q)
  t_p = jnp.where(pr == 0, jnp.zeros_like(pr), pr * (log_p - log_m))
  t_q = jnp.where(qr == 0, jnp.zeros_like(qr), qr * (log_q - log_m))
  return t_p, t_q, pr, qr, log_p - log_m, log_q - log_m


def _backward(st: _Static, p, q, labels, where, w, stats, g, needs):
  """Cotangents of the per-row loss, recomputing one block of logits at a time."""
  num_rows = (q.hidden if q.hidden is not None else q.logits).shape[0]
  num_v = q.weight.shape[1] if q.logits is None else q.logits.shape[1]
  dtype = _dtype(p, q)
  kind = st.kind
  g = g.astype(dtype)
  sides = {"p": p, "q": q}
  keys = sorted(k for k in needs if k[0] != "w")  # e.g. ("q", "hidden")
  need_p = any(k[0] == "p" for k in keys)
  need_q = any(k[0] == "q" for k in keys)

  if kind == "ce":
    ignored, out_of_range, index = _label_mask(labels, num_v, where)
    g = jnp.where(ignored | out_of_range, jnp.zeros_like(g), g)

  def grads_block(rr, cc):
    gr = lax.dynamic_slice_in_dim(g, rr.start, rr.size)[:, None]
    st_r = [lax.dynamic_slice_in_dim(x, rr.start, rr.size) for x in stats]
    if kind == "ce":
      zq = _block(q, rr, cc, where, dtype)
      return {"q": gr * jnp.exp(zq - _finite_or_zero(st_r[0])[:, None])}
    if kind == "kl":
      lse_p, lse_q, kl = st_r
      zp = _block(p, rr, cc, where, dtype)
      zq = _block(q, rr, cc, where, dtype)
      log_p = zp - _finite_or_zero(lse_p)[:, None]
      log_q = zq - _finite_or_zero(lse_q)[:, None]
      pr, qr = jnp.exp(log_p), jnp.exp(log_q)
      out = {"q": gr * (qr - pr)}
      if need_p:
        coef = jnp.where(pr == 0, jnp.zeros_like(pr), pr * (log_p - log_q - kl[:, None]))
        out["p"] = gr * coef
      return out
    lse_p, lse_q, kl_pm, kl_qm = st_r
    _, _, pr, qr, d_p, d_q = _js_terms(p, q, rr, cc, where, dtype, lse_p, lse_q, w)
    out = {}
    if need_p:
      coef = jnp.where(pr == 0, jnp.zeros_like(pr), pr * (d_p - kl_pm[:, None]))
      out["p"] = jnp.where(w == 0, jnp.zeros_like(coef), gr * w * coef)
    if need_q:
      coef = jnp.where(qr == 0, jnp.zeros_like(qr), qr * (d_q - kl_qm[:, None]))
      out["q"] = jnp.where(w == 1, jnp.zeros_like(coef), gr * (1 - w) * coef)
    return out

  def init(name, part):
    s = sides[name]
    if part == "hidden":
      return jnp.zeros(s.hidden.shape, dtype)
    if part == "weight":
      return jnp.zeros(s.weight.shape, dtype)
    return jnp.zeros(s.logits.shape, s.logits.dtype)

  acc = {k: init(*k) for k in keys}

  # Every update is additive, so that a shifted last block (rows or categories it shares
  # with the previous block left out: zero cotangent, -inf logits) adds exactly zero there.
  def rows(rr, acc):
    n = rr.size
    dh = {k: jnp.zeros((n, sides[k[0]].hidden.shape[1]), dtype) for k in keys if k[1] == "hidden"}

    def body(cc, carry):
      acc, dh = carry
      dz = grads_block(rr, cc)
      if rr.valid is not None:
        dz = {k: jnp.where(rr.valid[:, None], v, jnp.zeros_like(v)) for k, v in dz.items()}
      acc, dh = dict(acc), dict(dh)
      r0, v0, c = rr.start, cc.start, cc.size
      for k in keys:
        name, part = k
        if name not in dz:
          continue
        s = sides[name]
        if part == "logits":
          old = lax.dynamic_slice(acc[k], (r0, v0), (n, c))
          upd = old + dz[name].astype(s.logits.dtype)
          acc[k] = lax.dynamic_update_slice(acc[k], upd, (r0, v0))
        elif part == "hidden":
          w_blk = lax.dynamic_slice_in_dim(s.weight, v0, c, 1).astype(dtype)
          dh[k] = dh[k] + jnp.dot(dz[name], w_blk.T, preferred_element_type=dtype)
        else:
          h_blk = lax.dynamic_slice_in_dim(s.hidden, r0, n, 0)
          old = lax.dynamic_slice(acc[k], (0, v0), (s.weight.shape[0], c))
          upd = old + jnp.dot(h_blk.T, dz[name], preferred_element_type=dtype)
          acc[k] = lax.dynamic_update_slice(acc[k], upd, (0, v0))
      return acc, dh

    acc, dh = _loop(num_v, st.vocab_chunk, body, (acc, dh))
    acc = dict(acc)
    for k, v in dh.items():
      old = lax.dynamic_slice_in_dim(acc[k], rr.start, n, 0)
      acc[k] = lax.dynamic_update_slice_in_dim(acc[k], old + v, rr.start, 0)
    return acc

  acc = _loop(num_rows, st.token_chunk, rows, acc) if keys else {}

  if kind == "ce":  # the one-hot part of softmax(z) - onehot(label), outside the loops
    if ("q", "hidden") in acc:
      w_label = jnp.take(q.weight, index, axis=1).astype(dtype)  # [D, N]
      acc["q", "hidden"] = acc["q", "hidden"] - g[:, None] * w_label.T
    if ("q", "weight") in acc:
      acc["q", "weight"] = acc["q", "weight"].at[:, index].add(-(g[:, None] * q.hidden).T)
  dw = None
  if kind == "js" and ("w", "mix") in needs:
    _, _, kl_pm, kl_qm = stats
    dw = jnp.sum(g * (kl_pm - kl_qm)).astype(jnp.result_type(w))
  return acc, dw


def _dtype(p, q):
  arrays = [x for s in (p, q) if s is not None for x in s if x is not None]
  return _numerics.compute_dtype(jnp.result_type(*arrays))


def _sides(p_h, p_w, p_z, q_h, q_w, q_z, dtype):
  def side(h, w, z):
    if h is None and z is None:
      return None
    return _Side(None if h is None else h.astype(dtype), w, z)

  return side(p_h, p_w, p_z), side(q_h, q_w, q_z)


def _primal(st, vals):
  arrays = [x for x in vals[:6] if x is not None]
  dtype = _numerics.compute_dtype(jnp.result_type(*arrays))
  p, q = _sides(*vals[:6], dtype)
  return p, q, _forward(st, p, q, *vals[6:])


def _fused_impl(st, p_h, p_w, p_z, q_h, q_w, q_z, labels, where, w):
  return _primal(st, (p_h, p_w, p_z, q_h, q_w, q_z, labels, where, w))[2][0]


def _fused_fwd(st, p_h, p_w, p_z, q_h, q_w, q_z, labels, where, w):
  names = (("p", "hidden"), ("p", "weight"), ("p", "logits"))
  names += (("q", "hidden"), ("q", "weight"), ("q", "logits"))
  args = (p_h, p_w, p_z, q_h, q_w, q_z)
  needs = {k: None for k, a in zip(names, args, strict=True) if a is not None and a.perturbed}
  if w is not None and w.perturbed:
    needs["w", "mix"] = None
  vals = tuple(None if a is None else a.value for a in (*args, labels, where, w))
  _, _, (loss, stats) = _primal(st, vals)
  return loss, (vals, stats, needs)


def _fused_bwd(st, res, g):
  vals, stats, needs = res
  arrays = [x for x in vals[:6] if x is not None]
  dtype = _numerics.compute_dtype(jnp.result_type(*arrays))
  p, q = _sides(*vals[:6], dtype)
  acc, dw = _backward(st, p, q, *vals[6:], stats, g, needs)
  out = []
  for i, key in enumerate(
    (
      ("p", "hidden"),
      ("p", "weight"),
      ("p", "logits"),
      ("q", "hidden"),
      ("q", "weight"),
      ("q", "logits"),
    )
  ):
    out.append(acc[key].astype(vals[i].dtype) if key in acc else None)
  return (*out, None, None, dw)


_fused_vjp = jax.custom_vjp(_fused_impl, nondiff_argnums=(0,))
_fused_vjp.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)
# Jitted, so that a call outside jit compiles the loops once per configuration instead of
# dispatching them primitive by primitive.
_fused = jax.jit(_fused_vjp, static_argnums=0)


# ---------------------------------------------------------------------------
# Public API: argument checks, flattening of batch dimensions, base conversion
# ---------------------------------------------------------------------------


def _float_array(fn: str, name: str, x) -> Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{fn}: `{name}` must be a floating-point array, got dtype {x.dtype}.")
  return x


def _chunk(fn: str, name: str, size, default: int) -> int:
  if size is None:
    return default
  try:
    size = operator.index(size)
  except TypeError:
    raise TypeError(f"{fn}: `{name}` must be a positive integer, got {size!r}.") from None
  if size <= 0:
    raise ValueError(f"{fn}: `{name}` must be a positive integer, got {size}.")
  return size


def _side_arrays(fn: str, role: str, hidden, weight, logits):
  """``(hidden [..., D], weight [D, V], None)`` or ``(None, None, logits [..., V])``."""
  linear = hidden is not None or weight is not None
  if linear and logits is not None:
    raise ValueError(
      f"{fn}: the distribution {role} is given twice; give either `{role}_hidden` and "
      f"`{role}_weight` or `{role}_logits`."
    )
  if not linear and logits is None:
    raise ValueError(
      f"{fn}: the distribution {role} is missing; give `{role}_hidden` and `{role}_weight` "
      f"or `{role}_logits`."
    )
  if logits is not None:
    z = _float_array(fn, f"{role}_logits", logits)
    if z.ndim < 1:
      raise ValueError(f"{fn}: `{role}_logits` needs a category axis, got a scalar.")
    return None, None, z
  if hidden is None or weight is None:
    missing = f"{role}_hidden" if hidden is None else f"{role}_weight"
    raise ValueError(f"{fn}: `{missing}` is missing (the logits of {role} are hidden @ weight).")
  h = _float_array(fn, f"{role}_hidden", hidden)
  w = _float_array(fn, f"{role}_weight", weight)
  if h.ndim < 1 or w.ndim != 2 or h.shape[-1] != w.shape[0]:
    raise ValueError(
      f"{fn}: `{role}_hidden` must have shape [..., D] and `{role}_weight` shape [D, V]; got "
      f"{h.shape} and {w.shape}."
    )
  return h, w, None


def _batch_vocab(h, w, z):
  return (z.shape[:-1], z.shape[-1]) if z is not None else (h.shape[:-1], w.shape[1])


def _flat(h, w, z):
  return (
    None if h is None else h.reshape(-1, h.shape[-1]),
    w,
    None if z is None else z.reshape(-1, z.shape[-1]),
  )


def _where(fn: str, where, num_v: int):
  if where is None:
    return None
  where = jnp.asarray(where)
  if where.dtype != jnp.bool_:
    raise TypeError(f"{fn}: `where` must be a boolean mask, got dtype {where.dtype}.")
  if where.shape != (num_v,):
    raise ValueError(
      f"{fn}: `where` must be a mask over the vocabulary, shape ({num_v},); got {where.shape}."
    )
  return where


def _static(fn, kind, num_rows, num_v, chunk_size, token_chunk_size) -> _Static:
  vc = min(_chunk(fn, "chunk_size", chunk_size, _DEFAULT_CHUNK), max(num_v, 1))
  tc = _chunk(fn, "token_chunk_size", token_chunk_size, _DEFAULT_TOKEN_CHUNK)
  tc = min(tc, max(num_rows, 1))
  return _Static(kind, vc, max(tc, 1))


def _pair(fn, p_hidden, p_weight, p_logits, q_hidden, q_weight, q_logits, where):
  p = _side_arrays(fn, "p", p_hidden, p_weight, p_logits)
  q = _side_arrays(fn, "q", q_hidden, q_weight, q_logits)
  if p[2] is not None and q[2] is not None:
    raise ValueError(
      f"{fn}: both distributions are given as logits; use the core functions "
      f"(jaxdiv.kl_divergence etc.) on logits, the fused form needs a (hidden, weight) side."
    )
  (bp, vp), (bq, vq) = _batch_vocab(*p), _batch_vocab(*q)
  if bp != bq or vp != vq:
    raise ValueError(
      f"{fn}: p and q must have the same batch shape and vocabulary size; got batch {bp}, "
      f"V={vp} for p and batch {bq}, V={vq} for q."
    )
  return _flat(*p), _flat(*q), bp, vp, _where(fn, where, vp)


def linear_cross_entropy(
  hidden: ArrayLike,
  weight: ArrayLike,
  labels: ArrayLike,
  *,
  where: ArrayLike | None = None,
  chunk_size: int | None = None,
  token_chunk_size: int | None = None,
  base: float | None = None,
) -> Array:
  r"""Cross-entropy of ``softmax(hidden @ weight)`` against integer ``labels``, per token.

  .. math:: H(\mathbb{1}_y, q) = -\log q_y = \log\sum_v e^{z_v} - z_y, \qquad z = h W

  The same value as ``jaxdiv.cross_entropy(labels=labels, q_logits=hidden @ weight)``,
  without ever forming the ``[..., V]`` logits: the vocabulary is processed in blocks of
  ``chunk_size`` columns of ``weight`` (and, with ``token_chunk_size``, blocks of rows),
  and a custom VJP keeps only the per-token log-normaliser, recomputing each block of
  logits in the backward pass. Compiled temporaries are about a few
  ``token_chunk_size x chunk_size`` blocks plus the gradients themselves.

  Argument order follows Cut Cross-Entropy and Liger (model first: ``hidden``,
  ``weight``, then the target ``labels``); the value is :math:`H(p, q)` with the one-hot
  target :math:`p` and the model :math:`q`, as in :func:`jaxdiv.cross_entropy`.

  Edge conventions as in the core: a negative label is ignored (result exactly 0, zero
  gradient); a label :math:`\ge V` gives NaN (and no gradient contribution); ``where``
  (a ``[V]`` mask, e.g. for a padded vocabulary) excludes categories from the
  normaliser, and a label at an excluded category is ignored. Reductions over tokens
  belong to the caller (a mean over non-ignored tokens is ``sum / count``).

  Derivatives: reverse mode only (``jax.grad``, ``jax.vjp``); the custom VJP has no
  forward mode, so ``jax.jvp``/``jacfwd``/``hessian`` raise -- use
  :func:`jaxdiv.cross_entropy` on materialised logits for those. Gradients are computed
  only for the arguments being differentiated.

  Args:
    hidden: ``[..., D]`` hidden states (the last layer's input).
    weight: ``[D, V]`` output projection (for tied embeddings ``E`` of shape ``[V, D]``,
      pass ``E.T``).
    labels: ``[...]`` integer class indices.
    where: optional boolean ``[V]`` mask of the categories to include.
    chunk_size: vocabulary block size (default 4096); need not divide ``V``.
    token_chunk_size: token block size (default 1024); need not divide the number of
      tokens. With ``chunk_size`` it bounds the temporaries independently of ``N``.
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-token cross-entropy (float32 for 16-bit inputs).

  Example:
    >>> h = jnp.array([[1.0, 0.0], [0.0, 1.0]]); w = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> loss = linear_cross_entropy(h, w, jnp.array([0, -1]), chunk_size=2)
    >>> [round(float(x), 6) for x in loss]  # ln(e^2 + 2) - 2, ignored
    [0.239545, 0.0]

  References:
    Wijmans et al., "Cut your losses in large-vocabulary language models", ICLR (2025);
    Hsu et al., "Liger Kernel: efficient Triton kernels for LLM training" (2024).

  See also:
    :func:`jaxdiv.cross_entropy`, :func:`linear_kl_divergence`,
    :func:`jaxdiv.sharded_cross_entropy` (vocabulary sharded over devices).
  """
  fn = "linear_cross_entropy"
  _inputs.check_base(fn, base)
  h, w, _ = _side_arrays(fn, "q", hidden, weight, None)
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_:
    raise TypeError(f"{fn}: `labels` must be an integer array, got dtype {labels.dtype}.")
  if labels.shape != h.shape[:-1]:
    raise ValueError(
      f"{fn}: `labels` must have the batch shape of `hidden` {h.shape[:-1]} "
      f"(hidden {h.shape} without its last axis); got {labels.shape}."
    )
  batch, num_v = h.shape[:-1], w.shape[1]
  where = _where(fn, where, num_v)
  num_rows = int(np.prod(batch, dtype=np.int64))
  st = _static(fn, "ce", num_rows, num_v, chunk_size, token_chunk_size)
  hf, _, _ = _flat(h, w, None)
  loss = _fused(st, None, None, None, hf, w, None, labels.reshape(-1), where, None)
  return _inputs.apply_base(loss.reshape(batch), base)


def linear_kl_divergence(
  p_hidden: ArrayLike | None = None,
  p_weight: ArrayLike | None = None,
  q_hidden: ArrayLike | None = None,
  q_weight: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  where: ArrayLike | None = None,
  chunk_size: int | None = None,
  token_chunk_size: int | None = None,
  base: float | None = None,
) -> Array:
  r""":math:`\mathrm{KL}(p \| q)` per token, with ``p`` and/or ``q`` given as ``hidden @ weight``.

  .. math:: \mathrm{KL}(p\|q) = \sum_v p_v (\log p_v - \log q_v),
     \quad p = \mathrm{softmax}(h^p W^p),\ q = \mathrm{softmax}(h^q W^q)

  Mathematical order: ``p`` is the reference. For distillation with forward KL,
  KL(teacher‖student), pass the teacher as ``p`` (``p_hidden``/``p_weight``, or its
  logits as ``p_logits``) and the student as ``q`` (``q_hidden``/``q_weight``); for
  reverse KL (KL(student‖teacher), as in on-policy distillation) swap them. Each side is
  either a ``(hidden [..., D], weight [D, V])`` pair or ``[..., V]`` logits; at least one
  must be a pair (for two logit arrays use :func:`jaxdiv.kl_divergence`). The two sides
  may have different hidden widths.

  Computed in one pass over blocks of the vocabulary with running maxima and the running
  sum :math:`\sum_v e^{z^p_v - m}(z^p_v - z^q_v)`, so no ``[..., V]`` array of either side
  is formed (beyond ``p_logits``/``q_logits`` if given). The custom VJP keeps both
  log-normalisers and the KL per token and recomputes each block for the gradients
  :math:`\partial/\partial z^q = q - p` and
  :math:`\partial/\partial z^p = p(\log p - \log q - \mathrm{KL})`. Gradients are only
  computed for arguments being differentiated (a frozen teacher costs nothing extra).

  Edge conventions as in :func:`jaxdiv.kl_divergence`: ``-inf`` logits are impossible
  categories (:math:`0 \log 0 = 0`; :math:`p_v > 0 = q_v` gives ``+inf``); ``where`` (a
  ``[V]`` mask) excludes categories from both, and an all-``False`` mask gives 0.
  Reverse mode only: ``jax.jvp``/``jacfwd``/``hessian`` raise (no forward mode for a
  custom VJP); use :func:`jaxdiv.kl_divergence` on materialised logits for those.

  Args:
    p_hidden: ``[..., D_p]`` hidden states of the reference ``p``.
    p_weight: ``[D_p, V]`` output projection of ``p``.
    q_hidden: ``[..., D_q]`` hidden states of ``q``.
    q_weight: ``[D_q, V]`` output projection of ``q``.
    p_logits: ``p`` as ``[..., V]`` logits instead of ``p_hidden``/``p_weight``.
    q_logits: ``q`` as ``[..., V]`` logits instead of ``q_hidden``/``q_weight``.
    where: optional boolean ``[V]`` mask of the categories to include.
    chunk_size: vocabulary block size (default 4096).
    token_chunk_size: token block size (default 1024).
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-token :math:`\mathrm{KL}(p\|q) \ge 0`.

  Example:
    >>> h = jnp.ones((1, 2)); w = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> round(float(linear_kl_divergence(h, w, p_logits=None, q_hidden=h, q_weight=w)[0]), 6)
    0.0

  References:
    Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network" (2015);
    Wijmans et al., "Cut your losses in large-vocabulary language models", ICLR (2025).

  See also:
    :func:`jaxdiv.kl_divergence`, :func:`linear_cross_entropy`,
    :func:`linear_jensen_shannon_divergence`.
  """
  fn = "linear_kl_divergence"
  _inputs.check_base(fn, base)
  p, q, batch, num_v, where = _pair(
    fn, p_hidden, p_weight, p_logits, q_hidden, q_weight, q_logits, where
  )
  num_rows = int(np.prod(batch, dtype=np.int64))
  st = _static(fn, "kl", num_rows, num_v, chunk_size, token_chunk_size)
  loss = _fused(st, *p, *q, None, where, None)
  return _inputs.apply_base(loss.reshape(batch), base)


def linear_jensen_shannon_divergence(
  p_hidden: ArrayLike | None = None,
  p_weight: ArrayLike | None = None,
  q_hidden: ArrayLike | None = None,
  q_weight: ArrayLike | None = None,
  *,
  p_logits: ArrayLike | None = None,
  q_logits: ArrayLike | None = None,
  weight: ArrayLike = 0.5,
  where: ArrayLike | None = None,
  chunk_size: int | None = None,
  token_chunk_size: int | None = None,
  base: float | None = None,
) -> Array:
  r"""Weighted Jensen--Shannon divergence per token, ``p``/``q`` given as ``hidden @ weight``.

  .. math:: \mathrm{JS}_w(p\|q) = w\,\mathrm{KL}(p\|m) + (1 - w)\,\mathrm{KL}(q\|m),
     \qquad m = w p + (1 - w) q

  The generalised JSD of GKD (Agarwal et al., 2024); ``weight`` (the mixture weight
  :math:`w \in [0, 1]`, default ½) is named as in :func:`jaxdiv.jensen_shannon_divergence`
  -- the projection matrices are ``p_weight`` and ``q_weight``. At :math:`w = ½` the value
  is at most :math:`\ln 2` (TFP's Jensen--Shannon is twice this; scipy's
  ``jensenshannon`` is the square root). The mixture is formed in log space,
  :math:`\log m = \mathrm{logaddexp}(\log w + \log p, \log(1-w) + \log q)`; a term with
  zero weight counts as 0. Sides, masks, blocking and the reverse-mode-only restriction
  as in :func:`linear_kl_divergence`. Two passes over the vocabulary (log-normalisers,
  then the mixture terms); the custom VJP keeps both log-normalisers and
  :math:`\mathrm{KL}(p\|m)`, :math:`\mathrm{KL}(q\|m)` per token, and also gives the
  derivative in ``weight``, :math:`\mathrm{KL}(p\|m) - \mathrm{KL}(q\|m)`.

  Args:
    p_hidden, p_weight, q_hidden, q_weight, p_logits, q_logits: the two distributions,
      as in :func:`linear_kl_divergence`.
    weight: the mixture weight :math:`w` of ``p`` (a scalar in :math:`[0, 1]`).
    where: optional boolean ``[V]`` mask of the categories to include.
    chunk_size: vocabulary block size (default 4096).
    token_chunk_size: token block size (default 1024).
    base: logarithm base (``None``: nats; 2: bits).

  Returns:
    ``[...]`` per-token :math:`\mathrm{JS}_w(p\|q)`.

  Example:
    >>> h = jnp.ones((1, 1)); w1 = jnp.array([[50.0, 0.0]]); w2 = jnp.array([[0.0, 50.0]])
    >>> round(float(linear_jensen_shannon_divergence(h, w1, h, w2)[0]), 6)  # ln 2
    0.693147

  References:
    Lin, "Divergence measures based on the Shannon entropy", IEEE Trans. Inf. Theory
    (1991); Agarwal et al., "On-policy distillation of language models", ICLR (2024).

  See also:
    :func:`linear_kl_divergence`, :func:`jaxdiv.jensen_shannon_divergence`.
  """
  fn = "linear_jensen_shannon_divergence"
  _inputs.check_base(fn, base)
  p, q, batch, num_v, where = _pair(
    fn, p_hidden, p_weight, p_logits, q_hidden, q_weight, q_logits, where
  )
  if not isinstance(weight, jax.core.Tracer):
    wv = np.asarray(weight)
    if wv.ndim != 0:
      raise ValueError(
        f"{fn}: `weight` is the scalar mixture weight w (the projection matrices are "
        f"`p_weight`/`q_weight`); got an array of shape {wv.shape}."
      )
    if not 0 <= wv <= 1:
      raise ValueError(f"{fn}: `weight` must lie in [0, 1], got {weight!r}.")
  arrays = [x for x in (*p, *q) if x is not None]
  dtype = _numerics.compute_dtype(jnp.result_type(*arrays))
  w = jnp.asarray(weight).astype(dtype)
  if jnp.ndim(w) != 0:
    raise ValueError(f"{fn}: `weight` must be a scalar, got shape {jnp.shape(w)}.")
  num_rows = int(np.prod(batch, dtype=np.int64))
  st = _static(fn, "js", num_rows, num_v, chunk_size, token_chunk_size)
  loss = _fused(st, *p, *q, None, where, w)
  return _inputs.apply_base(loss.reshape(batch), base)
