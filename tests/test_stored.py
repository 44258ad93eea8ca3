"""The core functions on a stored distribution (``{p,q}_indices`` with ``{p,q}_log_probs``)
and the logits' options (``temperature``, ``soft_cap``, ``z_loss``).

The oracle coarse-grains both distributions in float64 numpy, cell by cell, as the
docstring of :func:`jaxdiv.kl_divergence` defines the tails; the fused losses are checked
against these core functions in tests/test_fused.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiv

N, V, K = 5, 9, 3
RNG = np.random.default_rng(7)
Z = RNG.normal(size=(N, V)) * 2.0  # the dense side's logits
ZS = RNG.normal(size=(N, V)) * 2.0  # the distribution that is stored
TAILS = ("residual", "renormalize", "truncate")


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _top_k(z, k=K):
  lp = _log_softmax(z)
  idx = np.argsort(-lp, axis=-1)[:, :k]
  return idx, np.take_along_axis(lp, idx, axis=-1)


def _cells(tail, idx, lp, dense_lp):
  """The stored and the dense side on the cells of ``tail``, one row: probabilities."""
  ok = lp > -np.inf
  s, d = np.exp(lp[ok]), np.exp(dense_lp[idx[ok]])
  if tail == "renormalize":
    return s / s.sum(), d / d.sum()
  if tail == "truncate":
    return s, d
  return np.append(s, max(0.0, 1 - s.sum())), np.append(d, 1 - d.sum())


def _kl(p, q):
  m = p > 0
  return np.sum(p[m] * np.log(p[m] / q[m]))


ORACLE = {
  "kl_divergence": _kl,
  "cross_entropy": lambda p, q: -np.sum(p[p > 0] * np.log(q[p > 0])),
  "jensen_shannon_divergence": lambda p, q: 0.5 * _kl(p, (p + q) / 2) + 0.5 * _kl(q, (p + q) / 2),
  "skew_kl_divergence": lambda p, q: _kl(p, 0.3 * p + 0.7 * q),
  "total_variation_distance": lambda p, q: 0.5 * np.sum(np.abs(p - q)),
}
EXTRA = {"skew_kl_divergence": {"alpha": 0.3}}


def _oracle(name, tail, role, idx, lp, dense_logits):
  dense_lp = _log_softmax(dense_logits)
  out = []
  for i in range(len(idx)):
    s, d = _cells(tail, idx[i], lp[i], dense_lp[i])
    out.append(ORACLE[name](*((s, d) if role == "p" else (d, s))))
  return np.array(out)


def _call(name, role, idx, lp, dense, dense_kind="logits", **kw):
  other = "q" if role == "p" else "p"
  dense_arg = f"{other}_logits" if dense_kind == "logits" else other
  args = {f"{role}_indices": idx, f"{role}_log_probs": lp, dense_arg: dense}
  return getattr(jaxdiv, name)(**args, **EXTRA.get(name, {}), **kw)


@jax.jit
def _all_values(idx, lp, z):
  """Every function, tail and stored role, from logits and from probabilities."""
  out = {}
  for name in ORACLE:
    for tail in TAILS:
      for role in ("p", "q"):
        out[name, tail, role] = (
          _call(name, role, idx, lp, z, tail=tail),
          _call(name, role, idx, lp, jax.nn.softmax(z), "probs", tail=tail),
        )
  return out


def test_every_function_tail_and_stored_role_equals_the_coarse_grained_oracle():
  idx, lp = _top_k(ZS)
  got = _all_values(jnp.asarray(idx), jnp.asarray(lp), jnp.asarray(Z))
  for (name, tail, role), (from_logits, from_probs) in got.items():
    want = _oracle(name, tail, role, idx, lp, Z)
    np.testing.assert_allclose(
      from_logits, want, rtol=1e-10, atol=1e-12, err_msg=str((name, tail, role))
    )
    np.testing.assert_allclose(
      from_probs, want, rtol=1e-10, atol=1e-12, err_msg=str((name, tail, role))
    )


def test_the_residual_tail_obeys_the_data_processing_inequality():
  """0 <= D(coarse-grained) <= D(full) for the f-divergences, on many random rows."""
  rng = np.random.default_rng(0)
  zp, zq = rng.normal(size=(64, 12)) * 3, rng.normal(size=(64, 12)) * 3
  idx, lp = _top_k(zp, 4)
  for name in ("kl_divergence", "jensen_shannon_divergence", "total_variation_distance"):
    coarse = np.asarray(getattr(jaxdiv, name)(p_indices=idx, p_log_probs=lp, q_logits=zq))
    full = np.asarray(getattr(jaxdiv, name)(p_logits=zp, q_logits=zq))
    assert np.all(coarse >= 0) and np.all(coarse <= full + 1e-12), name
    if name != "total_variation_distance":  # TV keeps its value where signs agree in a cell
      assert np.all(coarse < full - 1e-9), name  # strictly less: these rows lose information


def test_all_categories_listed_give_the_full_divergence_on_every_tail():
  idx, lp = _top_k(ZS, V)
  full = np.asarray(jaxdiv.kl_divergence(p_logits=ZS, q_logits=Z))
  for tail in TAILS:
    got = jaxdiv.kl_divergence(p_indices=idx, p_log_probs=lp, q_logits=Z, tail=tail)
    np.testing.assert_allclose(got, full, rtol=1e-12, err_msg=tail)


def test_a_listed_mass_of_one_makes_residual_truncate_but_not_renormalize():
  """K categories holding all of p's mass: the residual cell carries no teacher mass, so
  "residual" is "truncate"; "renormalize" also renormalises q, and differs."""
  idx = np.tile(np.arange(K), (N, 1))
  lp = np.log(np.full((N, K), 1.0 / K))
  got = {t: np.asarray(_call("kl_divergence", "p", idx, lp, Z, tail=t)) for t in TAILS}
  np.testing.assert_allclose(got["residual"], got["truncate"], rtol=1e-12)
  assert np.all(np.abs(got["renormalize"] - got["residual"]) > 1e-3)


def test_padding_slots_are_ignored_whatever_their_index():
  idx, lp = _top_k(ZS)
  pad_idx = np.concatenate(
    [idx, idx[:, :1], np.full((N, 1), 10**6)], axis=-1
  )  # repeat, out of range
  pad_lp = np.concatenate([lp, np.full((N, 2), -np.inf)], axis=-1)
  for tail in TAILS:
    want = _call("kl_divergence", "p", idx, lp, Z, tail=tail)
    got = _call("kl_divergence", "p", pad_idx, pad_lp, Z, tail=tail)
    np.testing.assert_array_equal(got, want)


def test_invalid_rows_give_nan_and_valid_rows_are_untouched():
  idx, lp = _top_k(ZS)
  idx, lp = idx.copy(), lp.copy()
  idx[0, -1] = V  # out of range with a finite log-probability
  idx[1, -1] = idx[1, 0]  # listed twice
  lp[2, 0] = np.nan
  lp[3, 0] = 0.5  # a probability above 1
  got = np.asarray(jaxdiv.kl_divergence(p_indices=idx, p_log_probs=lp, q_logits=Z))
  assert np.all(np.isnan(got[:4]))
  want = _oracle("kl_divergence", "residual", "p", idx[4:], lp[4:], Z[4:])
  np.testing.assert_allclose(got[4:], want, rtol=1e-10)


def _js(tail, idx, lp, z):
  return _oracle("jensen_shannon_divergence", tail, "p", idx, lp, z).sum()


def test_gradients_in_the_dense_logits_and_the_stored_log_probs_match_the_oracle():
  """The oracle differentiated by central differences in float64."""
  idx, lp = _top_k(ZS)
  for tail in TAILS:
    f = lambda lp, z, tail=tail: jnp.sum(  # noqa: E731
      _call("jensen_shannon_divergence", "p", idx, lp, z, tail=tail)
    )
    g_lp, g_z = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(lp), jnp.asarray(Z))
    for arg, g in ((0, g_lp), (1, g_z)):
      x = (lp, Z)[arg]
      num = np.zeros_like(x)
      for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = 1e-6
        plus, minus = [(lp + s * e, Z) if arg == 0 else (lp, Z + s * e) for s in (1, -1)]
        num[i] = (_js(tail, idx, *plus) - _js(tail, idx, *minus)) / 2e-6
      np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-7, err_msg=f"{tail}, argument {arg}")


def test_forward_mode_and_the_hessian_work_and_agree_with_reverse_mode():
  idx, lp = _top_k(ZS[:1])
  idx[0, -1], lp[0, -1] = 10**6, -np.inf  # a padding slot, out of range
  z = Z[:1].copy()
  z[0, 5] = -np.inf  # an impossible category of the dense side
  f = lambda z: jnp.sum(jaxdiv.kl_divergence(p_indices=idx, p_log_probs=lp, q_logits=z))  # noqa: E731
  # one program for the three (eager, each transform compiles its own small programs)
  fwd, rev, h = jax.jit(lambda z: (jax.jacfwd(f)(z), jax.grad(f)(z), jax.hessian(f)(z)))(z)
  np.testing.assert_allclose(fwd, rev, rtol=1e-12, atol=1e-15)
  h = h[0, :, 0, :]
  assert np.all(np.isfinite(h))
  np.testing.assert_allclose(h, h.T, atol=1e-12)


def test_where_excludes_categories_on_both_sides():
  """A stored category that ``where`` excludes is padding; q is normalised over the rest."""
  idx, lp = _top_k(ZS)
  where = np.ones(V, bool)
  where[idx[0, 1]] = False
  got = jaxdiv.kl_divergence(p_indices=idx, p_log_probs=lp, q_logits=Z, where=where)
  dense_lp = _log_softmax(np.where(where, Z, -np.inf))
  for i in range(N):
    ok = where[idx[i]]
    s = np.exp(lp[i][ok])
    d = np.exp(dense_lp[i][idx[i][ok]])
    want = _kl(np.append(s, 1 - s.sum()), np.append(d, 1 - d.sum()))
    np.testing.assert_allclose(got[i], want, rtol=1e-10)


def test_another_axis_and_vmap_equal_the_batched_call():
  idx, lp = _top_k(ZS)
  batched = jaxdiv.kl_divergence(p_indices=idx, p_log_probs=lp, q_logits=Z)
  on_axis_0 = jaxdiv.kl_divergence(p_indices=idx, p_log_probs=lp, q_logits=Z.T, axis=0)
  mapped = jax.vmap(lambda i, l, z: jaxdiv.kl_divergence(p_indices=i, p_log_probs=l, q_logits=z))(
    idx, lp, Z
  )
  np.testing.assert_allclose(on_axis_0, batched, rtol=1e-12)
  np.testing.assert_allclose(mapped, batched, rtol=1e-12)


def test_stored_form_errors_name_the_function_and_the_arguments():
  idx, lp = _top_k(ZS)
  cases = [
    (dict(p_indices=idx, p_log_probs=lp, q_indices=idx, q_log_probs=lp), ValueError,
     "both distributions are given stored"),
    (dict(p_indices=idx, p_log_probs=lp, p_logits=ZS, q_logits=Z), ValueError,
     r"p is given twice \(as `p_logits` and as `p_indices`/`p_log_probs`\)"),
    (dict(p_indices=idx, p_log_probs=lp, q_logits=Z, tail="top-k"), ValueError,
     "`tail` must be one of 'residual', 'renormalize', 'truncate'; got 'top-k'"),
    (dict(p_indices=idx[:2], p_log_probs=lp[:2], q_logits=Z), ValueError,
     r"`p_indices` with shape \(2, 3\) must have the batch shape"),
    (dict(p_indices=idx.astype(float), p_log_probs=lp, q_logits=Z), TypeError,
     "`p_indices` must be an integer array"),
  ]  # fmt: skip
  for kwargs, exc, match in cases:
    with pytest.raises(exc, match="kl_divergence: .*" + match):
      jaxdiv.kl_divergence(**kwargs)
  with pytest.raises(ValueError, match="cross_entropy: `label_smoothing` applies to integer"):
    jaxdiv.cross_entropy(p_indices=idx, p_log_probs=lp, q_logits=Z, label_smoothing=0.1)


# ---------------------------------------------------------------------------
# temperature, soft_cap and z_loss: options of the logits
# ---------------------------------------------------------------------------


def test_temperature_and_soft_cap_transform_the_logits_then_the_function_is_unchanged():
  t, c = 2.5, 3.0
  zp, zq = ZS.copy(), Z.copy()
  zq[0, 0] = -np.inf  # an impossible category stays impossible under the cap
  cap = lambda z: np.where(z == -np.inf, z, c * np.tanh(z / c)) / t  # noqa: E731
  for name in ORACLE:
    got = getattr(jaxdiv, name)(p_logits=zp, q_logits=zq, temperature=t, soft_cap=c,
                                **EXTRA.get(name, {}))  # fmt: skip
    want = getattr(jaxdiv, name)(p_logits=cap(zp), q_logits=cap(zq), **EXTRA.get(name, {}))
    np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=name)
  labels = np.arange(N)
  np.testing.assert_allclose(
    jaxdiv.cross_entropy(labels=labels, q_logits=zq, temperature=t, soft_cap=c),
    jaxdiv.cross_entropy(labels=labels, q_logits=cap(zq)),
    rtol=1e-12,
  )


def test_temperature_with_probabilities_is_an_error_naming_the_argument():
  with pytest.raises(ValueError, match="kl_divergence: `temperature` act on logits, but `p`"):
    jaxdiv.kl_divergence(jax.nn.softmax(ZS), q_logits=Z, temperature=2.0)
  with pytest.raises(ValueError, match="`temperature` must be a positive finite number, got 0.0"):
    jaxdiv.kl_divergence(p_logits=ZS, q_logits=Z, temperature=0.0)
  with pytest.raises(ValueError, match="`soft_cap` must be a positive finite number"):
    jaxdiv.kl_divergence(p_logits=ZS, q_logits=Z, soft_cap=-1.0)


def test_z_loss_adds_the_squared_log_normaliser_and_is_zero_on_ignored_labels():
  lam = 1e-2
  labels = np.array([0, 3, -100, 8, 1])
  lse = np.log(np.exp(Z).sum(-1))
  base = np.asarray(jaxdiv.cross_entropy(labels=labels, q_logits=Z))
  got = np.asarray(jaxdiv.cross_entropy(labels=labels, q_logits=Z, z_loss=lam))
  np.testing.assert_allclose(got, np.where(labels >= 0, base + lam * lse**2, 0.0), rtol=1e-12)
  # a shift of the logits moves lse, so z_loss is the one option that is not shift-invariant
  g = jax.grad(lambda z: jnp.sum(jaxdiv.cross_entropy(labels=labels, q_logits=z, z_loss=lam)))(Z)
  assert np.all(np.isfinite(g)) and np.all(g[2] == 0)
  with pytest.raises(ValueError, match="cross_entropy: `z_loss` needs the model as logits"):
    jaxdiv.cross_entropy(labels=labels, q=jax.nn.softmax(Z), z_loss=lam)


# ---------------------------------------------------------------------------
# checked mode: a stored side's values
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "edit, match",
  [
    (lambda i, l: (i.at[0, 0].set(V), l),
     r"index out of range in `p_indices` .* 9 is not in \[0, 9\)"),
    (lambda i, l: (i.at[0, 1].set(i[0, 0]), l), "a category listed twice in a row of `p_indices`"),
    (lambda i, l: (i, l.at[0, 0].set(0.1)), "log-probability above 0.* in `p_log_probs`"),
    (lambda i, l: (i, l.at[0, 0].set(jnp.nan)), "NaN log-probability.* in `p_log_probs`"),
    (lambda i, l: (i, jnp.log(jnp.full_like(l, 0.4))),
     r"`p_log_probs` \(shape \(5, 3\)\) lists a mass above 1"),
  ],
)  # fmt: skip
def test_checked_mode_names_the_bad_stored_value(edit, match):
  idx, lp = (jnp.asarray(x) for x in _top_k(ZS))
  bad_idx, bad_lp = edit(idx, lp)
  fn = jax.jit(jaxdiv.checked(jaxdiv.kl_divergence))
  jax.block_until_ready(fn(p_indices=idx, p_log_probs=lp, q_logits=Z))  # valid: no error
  with pytest.raises(Exception, match="jaxdiv.kl_divergence: .*" + match):
    jax.block_until_ready(fn(p_indices=bad_idx, p_log_probs=bad_lp, q_logits=Z))
  # padding (-inf) may repeat an index or lie out of range
  pad = fn(p_indices=idx.at[0, 1].set(10**6), p_log_probs=lp.at[0, 1].set(-jnp.inf), q_logits=Z)
  assert np.all(np.isfinite(pad))
