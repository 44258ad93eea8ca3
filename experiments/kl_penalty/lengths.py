r"""The length bias of each ``jaxdiv.aggregate_tokens`` mode, on sequences of varied length.

Token 0 ends a sequence, and every sequence ends at ``T`` tokens. The per-token loss is
GRPO's: :math:`-A_i \log\pi(x_{it} \mid x_{i,<t}) + \beta\, v_{it}`, with the outcome advantage
:math:`A_i = r_i - ` the leave-one-out mean of the batch's rewards, and :math:`v` the
per-token penalty whose sum is differentiated as the sequence KL
(``jaxdiv.sequence_kl_penalty``); the mode is the only thing that varies. Per sequence
:math:`x` of length :math:`L`, a mode's expected (ascent) gradient over batches of ``B`` is

.. math:: \mathbb{E}_x\big[(a\, r - c)\, \nabla\log\pi(x) - \beta\, w\, \tilde\nabla V(x)\big],

:math:`\tilde\nabla V` the penalty's gradient, with weights :math:`(a, c, w)` =
:math:`(1, \mathbb{E}r, 1)` for ``seq-mean-token-sum`` (exactly :math:`\nabla J`),
:math:`B` and :math:`1/T` times that for ``token-sum`` and ``seq-mean-token-sum-norm``,
:math:`(1, \mathbb{E}r, 1)/L` for ``seq-mean-token-mean``, and for ``token-mean``
(the batch's token count :math:`L + S`, :math:`S` the lengths of the other ``B - 1``)
:math:`a = w = B\,\mathbb{E}[1/(L + S)]`, :math:`c = B\,\mathbb{E}[r'/(L + L' + S')]`:
with :math:`1/n = \int_0^1 u^{n-1} du` these are
:math:`B\int_0^1 u^{L-1}\phi(u)^{B-1} du` and :math:`B\int_0^1 u^{L-1}\psi(u)\phi(u)^{B-2} du`,
:math:`\phi(u) = \mathbb{E}[u^L]`, :math:`\psi(u) = \mathbb{E}[r\, u^L]`, polynomials that
Gauss-Legendre integrates exactly. ``jax.grad`` of ``aggregate_tokens`` itself, averaged
over every batch of two sequences, checks every one of these closed forms exactly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import jaxdiv
from experiments.kl_penalty import estimators, model

MODES = (
  "token-mean",
  "token-sum",
  "seq-mean-token-sum",
  "seq-mean-token-mean",
  "seq-mean-token-sum-norm",
)
NEWTON_STEPS = 10  # after Adam


def sequence_level_scales(batch, horizon) -> dict:
  """The modes whose expected gradient is a constant times the sequence-level gradient."""
  return {
    "seq-mean-token-sum": 1.0,
    "token-sum": float(batch),
    "seq-mean-token-sum-norm": 1 / horizon,
  }


def _task(config, problem):
  k, t = config.length_tokens, config.length_horizon
  tokens, mask = model.ended_sequences(k, t)
  ref = [jnp.asarray(x) for x in problem["reference_tables"]]
  # Exact for the token-mean integrands of degree below batch_size * T (any batch up to it).
  u, q = np.polynomial.legendre.leggauss(config.batch_size * t // 2 + 1)
  return {
    "beta": config.sequence_beta,
    "horizon": float(t),
    "lengths": jnp.sum(mask, axis=1),
    "mask": mask,
    "nodes": jnp.asarray((u + 1) / 2),
    "node_weights": jnp.asarray(q / 2),
    "prefix": model.ended_prefixes(tokens, mask, k),
    "ref": ref,
    "rewards": jnp.asarray(problem["rewards"]),
    "tokens": tokens,
  }


def _per_token(tables, data):
  """Logits [N, T, K] at every sequence's prefixes and the tokens' log-probabilities (0 where
  the sequence has ended)."""
  logits = model.logits_at(tables, data["prefix"])
  lp = model.token_log_probs(logits, data["tokens"])
  return logits, jnp.where(data["mask"], lp, 0.0)


def sequence_log_probs(tables, data):
  return jnp.sum(_per_token(tables, data)[1], axis=1)


def _objective(tables, data):
  """J = E[r] - beta KL(pi || pi_ref) over the sequences, exactly."""
  lp, lr = sequence_log_probs(tables, data), sequence_log_probs(data["ref"], data)
  kl = jaxdiv.kl_divergence(p_logits=lp, q_logits=lr)
  return jnp.exp(lp) @ data["rewards"] - data["beta"] * kl


def _weights(pi, data, batch):
  """(a, c, w) of every mode, [len(MODES), 3, N], at the sequence probabilities ``pi`` for
  batches of ``batch`` sequences."""
  lengths, r, horizon = data["lengths"], data["rewards"], data["horizon"]
  mean_r = pi @ r
  ones = jnp.ones_like(pi)
  u, q = data["nodes"], data["node_weights"]
  powers = u[:, None] ** lengths[None, :]  # u^L, [nodes, N]
  phi, psi = powers @ pi, powers @ (pi * r)
  before = powers / u[:, None]  # u^(L - 1)
  e = batch * (q * phi ** (batch - 1)) @ before
  h = batch * (q * psi * phi ** (batch - 2)) @ before
  per_length = 1.0 / lengths
  rows = {
    "token-mean": (e, h, e),
    "token-sum": (batch * ones, batch * mean_r * ones, batch * ones),
    "seq-mean-token-sum": (ones, mean_r * ones, ones),
    "seq-mean-token-mean": (per_length, mean_r * per_length, per_length),
    "seq-mean-token-sum-norm": (ones / horizon, mean_r * ones / horizon, ones / horizon),
  }
  return jnp.stack([jnp.stack(rows[m]) for m in MODES])


def _expected_ascent(tables, held, data, rewards_on=1.0):
  """E over sequences of the negated gradient of the surrogate, with ``held`` = (pi, a, c, w)
  held fixed (the caller computes them at the same tables)."""
  pi, a, c, w = held

  def surrogate(tab):
    logits, lp = _per_token(tab, data)
    ref_logits = model.logits_at(data["ref"], data["prefix"])
    v = jaxdiv.sequence_kl_penalty(logits, ref_logits, data["tokens"], mask=data["mask"])
    per = -rewards_on * (a * data["rewards"] - c) * jnp.sum(lp, 1)
    return pi @ (per + data["beta"] * w * jnp.sum(v, 1))

  return jax.tree.map(jnp.negative, jax.grad(surrogate)(tables))


@jax.jit
def _fields(tables, data, batch):
  """Every mode's expected ascent gradient, that of its penalty part alone (per unit beta,
  the gradient it descends), and the exact gradients of J and of the sequence KL."""
  pi = jnp.exp(sequence_log_probs(tables, data))

  def ascent(w, rewards_on):
    return ravel_pytree(_expected_ascent(tables, (pi, *w), data, rewards_on))[0]

  w = _weights(pi, data, batch)
  full = jax.vmap(ascent, in_axes=(0, None))(w, 1.0)
  penalty = -jax.vmap(ascent, in_axes=(0, None))(w, 0.0) / data["beta"]
  grad_j = ravel_pytree(jax.grad(_objective)(tables, data))[0]
  no_reward = {**data, "rewards": jnp.zeros_like(data["rewards"])}
  grad_kl = -ravel_pytree(jax.grad(_objective)(tables, no_reward))[0] / data["beta"]
  return full, penalty, grad_j, grad_kl


def _flat_field(x, mode, data, batch):
  """Mode number ``mode``'s expected ascent gradient at the flattened tables ``x``."""
  tables = ravel_pytree(data["ref"])[1](x)
  pi = jnp.exp(sequence_log_probs(tables, data))
  a, c, w = _weights(pi, data, batch)[mode]
  return ravel_pytree(_expected_ascent(tables, (pi, a, c, w), data))[0]


@functools.partial(jax.jit, static_argnames=("steps",))
def _adam(x, mode, data, batch, lr, *, steps):
  """Adam (cosine-decayed rate) along the mode's exact expected gradient."""
  opt = optax.adam(optax.cosine_decay_schedule(lr, steps))

  def step(carry, _):
    x, state = carry
    updates, state = opt.update(-_flat_field(x, mode, data, batch), state, x)
    return (optax.apply_updates(x, updates), state), None

  return jax.lax.scan(step, (x, opt.init(x)), None, length=steps)[0][0]


@jax.jit
def _residual(x, mode, data, batch):
  return jnp.linalg.norm(_flat_field(x, mode, data, batch))


@jax.jit
def _newton(x, mode, data, batch):
  """One Newton step on the field (its Jacobian by forward over reverse mode; least squares,
  since adding a constant to a row of logits changes nothing)."""
  jac = jax.jacfwd(_flat_field)(x, mode, data, batch)
  return x + jnp.linalg.lstsq(jac, -_flat_field(x, mode, data, batch))[0]


def _fixed_point(mode, data, batch, steps, lr):
  """Adam from the reference, then Newton steps: (flat tables, |field| at the start, after
  Adam, at the end). The Jacobian holds ``sequence_kl_penalty``'s later-token sums fixed (its
  gradient stops there), so the steps converge linearly, not quadratically."""
  x = x0 = ravel_pytree(data["ref"])[0]
  x = _adam(x, mode, data, batch, lr, steps=steps)
  after_adam = _residual(x, mode, data, batch)
  for _ in range(NEWTON_STEPS):
    x = _newton(x, mode, data, batch)
  norms = (_residual(x0, mode, data, batch), after_adam, _residual(x, mode, data, batch))
  return (x, *map(float, norms))


def _batch_values(tables, data, idx):
  """GRPO's per-token loss [B, T] of the sequences ``idx`` (as a trainer computes it) and
  their mask."""
  tokens, mask, prefix = data["tokens"][idx], data["mask"][idx], data["prefix"][idx]
  logits = model.logits_at(tables, prefix)
  lp = jnp.where(mask, model.token_log_probs(logits, tokens), jnp.nan)  # unread where masked
  ref_logits = model.logits_at(data["ref"], prefix)
  v = jaxdiv.sequence_kl_penalty(logits, ref_logits, tokens, mask=mask)
  r = data["rewards"][idx]
  advantage = jax.lax.stop_gradient(r - estimators.leave_one_out(r))
  return -advantage[:, None] * lp + data["beta"] * v, mask


@jax.jit
def _pair_expectation(tables, data):
  """Every mode's expected ascent gradient over batches of two sequences, exactly: the
  gradient of ``aggregate_tokens`` of every pair (the chain rule: its gradient in the
  per-token values, pulled back through them), weighted by the pair's probability."""
  pi = jnp.exp(sequence_log_probs(tables, data))
  n, size = pi.shape[0], ravel_pytree(tables)[0].shape[0]

  def grads(i, j):
    idx = jnp.stack([i, j])
    (values, mask), pull = jax.vjp(lambda t: _batch_values(t, data, idx), tables)
    outer = [jax.grad(jaxdiv.aggregate_tokens)(values, mask, m) for m in MODES]
    back = jax.vmap(lambda d: pull((d, jnp.zeros(mask.shape, jax.dtypes.float0)))[0])
    return -jax.vmap(lambda t: ravel_pytree(t)[0])(back(jnp.stack(outer)))

  def row(total, i):
    g = jax.vmap(lambda j: grads(i, j))(jnp.arange(n))
    return total + pi[i] * jnp.tensordot(pi, g, axes=1), None

  return jax.lax.scan(row, jnp.zeros((len(MODES), size)), jnp.arange(n))[0]


def _length_probs(pi, lengths, horizon) -> np.ndarray:
  """P(L = 1..T)."""
  return np.bincount(np.asarray(lengths), weights=np.asarray(pi), minlength=horizon + 1)[1:]


def _direction(g, exact) -> tuple[float, float]:
  """(scale, sine): g's projection on ``exact`` over |exact|^2, and the sine of their angle."""
  scale = float(g @ exact / (exact @ exact))
  return scale, float(np.linalg.norm(g - scale * exact) / np.linalg.norm(g))


def length_study(config, problem, progress) -> tuple[dict, dict]:
  data = _task(config, problem)
  batch, horizon = config.batch_size, config.length_horizon
  scales = sequence_level_scales(batch, horizon)
  log_ref = sequence_log_probs(data["ref"], data)
  log_opt = model.optimum_logits(log_ref, data["rewards"], data["beta"])
  lengths = np.asarray(data["lengths"])

  tables = [jnp.asarray(x) for x in problem["gradient_tables"]]
  full, penalty, grad_j, grad_kl = map(np.asarray, _fields(tables, data, float(batch)))
  pairs_closed = np.asarray(_fields(tables, data, 2.0)[0])
  pairs = np.asarray(_pair_expectation(tables, data))
  progress("lengths: expected gradients of every mode (closed forms; every pair of sequences)")

  opt = np.exp(np.asarray(log_opt))
  modes, checks = {}, {}
  for i, mode in enumerate(MODES):
    steps, lr = config.length_fixed_point_steps, config.length_learning_rate
    x, start, after_adam, residual = _fixed_point(i, data, float(batch), steps, lr)
    lp = sequence_log_probs(ravel_pytree(data["ref"])[1](x), data)
    pi = np.exp(np.asarray(lp))
    scale, sine = _direction(full[i], grad_j)
    kl_scale, kl_sine = _direction(penalty[i], grad_kl)
    pair_error = np.linalg.norm(pairs[i] - pairs_closed[i]) / np.linalg.norm(pairs_closed[i])
    modes[mode] = {
      "expected_gradient_scale": scale,
      "expected_gradient_sine": sine,
      "fixed_point_kl_to_optimum": float(jaxdiv.kl_divergence(p_logits=lp, q_logits=log_opt)),
      "fixed_point_length_probs": _length_probs(pi, lengths, horizon),
      "fixed_point_mean_length": float(pi @ lengths),
      "fixed_point_residual": residual,
      "fixed_point_residual_after_adam": after_adam,
      "fixed_point_residual_at_start": start,
      "gives_sequence_level_gradient": mode in scales,
      "pair_closed_form_relative_error": float(pair_error),
      "penalty_gradient_scale": kl_scale,
      "penalty_gradient_sine": kl_sine,
      "sequence_level_scale": scales.get(mode),
    }
    row = modes[mode]
    progress(f"lengths: {mode} fixed point at KL {row['fixed_point_kl_to_optimum']:.3g} from pi*")
    checks[f"lengths/{mode}/closed_form_equals_aggregate_tokens_over_pairs"] = bool(
      pair_error <= 1e-10
    )
    checks[f"lengths/{mode}/fixed_point_converged"] = residual <= 1e-6 * start
    if mode in scales:
      c = scales[mode]
      checks[f"lengths/{mode}/expected_gradient_is_scaled_grad_J"] = bool(
        np.linalg.norm(full[i] - c * grad_j) <= 1e-9 * c * np.linalg.norm(grad_j)
      )
      checks[f"lengths/{mode}/penalty_gradient_is_scaled_grad_sequence_kl"] = bool(
        np.linalg.norm(penalty[i] - c * grad_kl) <= 1e-9 * c * np.linalg.norm(grad_kl)
      )
      checks[f"lengths/{mode}/fixed_point_at_optimum"] = (
        row["fixed_point_kl_to_optimum"] <= config.length_fixed_point_tol
      )
    else:
      checks[f"lengths/{mode}/expected_gradient_off_direction"] = sine > 1e-3
      checks[f"lengths/{mode}/penalty_gradient_off_direction"] = kl_sine > 1e-3
      checks[f"lengths/{mode}/fixed_point_away_from_optimum"] = (
        row["fixed_point_kl_to_optimum"] > 1e3 * config.length_fixed_point_tol
      )
  checks["lengths/seq-mean-token-mean/fixed_point_beyond_training_tolerance"] = (
    modes["seq-mean-token-mean"]["fixed_point_kl_to_optimum"]
    > config.away_factor * config.sequence_tolerance
  )
  checks["lengths/token-mean/fixed_point_within_training_tolerance"] = (
    modes["token-mean"]["fixed_point_kl_to_optimum"] <= config.sequence_tolerance
  )
  ref_probs = np.exp(np.asarray(log_ref))
  part = {
    "batch_size": batch,
    "beta": data["beta"],
    "exact_gradient_norm": float(np.linalg.norm(grad_j)),
    "horizon": horizon,
    "modes": modes,
    "num_sequences": int(lengths.shape[0]),
    "num_tokens": config.length_tokens,
    "optimum_length_probs": _length_probs(opt, lengths, horizon),
    "optimum_mean_length": float(opt @ lengths),
    "reference_length_probs": _length_probs(ref_probs, lengths, horizon),
    "reference_mean_length": float(ref_probs @ lengths),
    "sequence_kl_gradient_norm": float(np.linalg.norm(grad_kl)),
  }
  return part, checks
