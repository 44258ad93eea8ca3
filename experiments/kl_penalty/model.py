"""The tasks: the problems drawn from the seed, tabular policies, the exact optimum and the
fixed-point solvers of the one-step problems (numpy and jax, no estimator in sight)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiv


def problems(config) -> dict:
  """Every random quantity of the study, drawn in a fixed order from ``config.seed``."""
  rng = np.random.default_rng(config.seed)
  k = config.num_actions
  ref = rng.standard_normal(k)
  bandit = {
    "rewards": rng.standard_normal(k),
    "reference_logits": ref - ref.mean(),
    "gradient_logits": ref - ref.mean() + config.gradient_scale * rng.standard_normal(k),
  }
  n, t = config.num_tokens, config.horizon
  sequence = {
    "reference_tables": [rng.standard_normal((n**i, n)) for i in range(t)],
    "rewards": rng.standard_normal(n**t),
    "gradient_tables": [rng.standard_normal((n**i, n)) for i in range(t)],
  }
  # Drawn after the others, so adding this task left every earlier draw unchanged.
  m, h = config.length_tokens, config.length_horizon
  length = {
    "reference_tables": [rng.standard_normal(((m - 1) ** i, m)) for i in range(h)],
    "rewards": rng.standard_normal(num_ended_sequences(m, h)),
    "gradient_tables": [rng.standard_normal(((m - 1) ** i, m)) for i in range(h)],
  }
  return {"bandit": bandit, "length": length, "sequence": sequence}


def optimum_logits(log_ref, rewards, beta):
  """log pi* = log pi_ref + r / beta, normalised: the maximiser of E[r] - beta KL(pi || pi_ref)."""
  z = log_ref + rewards / beta
  return z - jax.nn.logsumexp(z)


def np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max())
  return e / e.sum()


def kl(p, q) -> float:
  return float(jaxdiv.kl_divergence(jnp.asarray(p), jnp.asarray(q)))


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


# ---------------------------------------------------------------------------
# Fixed-length sequences: one logit table per position, prefixes in base K
# ---------------------------------------------------------------------------


def token_log_probs(logits, tokens):
  lp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(lp, tokens[..., None], axis=-1)[..., 0]


def prefixes(tokens, num_tokens):
  """Prefix index (base K, lexicographic) of every position of sequences [B, T], and of the
  whole sequence."""
  idx = [jnp.zeros(tokens.shape[0], jnp.int32)]
  for t in range(tokens.shape[1] - 1):
    idx.append(idx[-1] * num_tokens + tokens[:, t])
  return jnp.stack(idx, 1), idx[-1] * num_tokens + tokens[:, -1]


def logits_at(tables, prefix):
  return jnp.stack([tab[prefix[:, t]] for t, tab in enumerate(tables)], 1)


def all_sequences(num_tokens, horizon):
  idx = np.arange(num_tokens**horizon)
  cols = [(idx // num_tokens ** (horizon - 1 - t)) % num_tokens for t in range(horizon)]
  return jnp.asarray(np.stack(cols, 1), jnp.int32)


def sequence_log_probs(tables, all_tokens):
  """log pi(x_1..x_T) of every sequence, lexicographic order."""
  prefix, _ = prefixes(all_tokens, tables[0].shape[-1])
  return jnp.sum(token_log_probs(logits_at(tables, prefix), all_tokens), axis=1)


def sample_sequences(key, tables, batch):
  num_tokens = tables[0].shape[-1]
  keys = jax.random.split(key, len(tables))
  prefix = jnp.zeros(batch, jnp.int32)
  tokens = []
  for t, tab in enumerate(tables):
    x = jax.random.categorical(keys[t], tab[prefix], axis=-1).astype(jnp.int32)
    tokens.append(x)
    prefix = prefix * num_tokens + x
  return jnp.stack(tokens, 1)


# ---------------------------------------------------------------------------
# Sequences of varied length: token 0 ends a sequence, and every sequence ends at T
# ---------------------------------------------------------------------------


def num_ended_sequences(num_tokens, horizon) -> int:
  """Sequences that end with the end token before T, plus all those that reach T."""
  m = num_tokens - 1
  return sum(m**t for t in range(horizon - 1)) + num_tokens * m ** (horizon - 1)


def ended_sequences(num_tokens, horizon):
  """Every sequence of the varied-length task: tokens [N, T] (0 after the end) and mask [N, T]."""
  tokens, masks = [], []

  def extend(prefix):
    for a in range(num_tokens):
      s = prefix + [a]
      if a == 0 or len(s) == horizon:
        tokens.append(s + [0] * (horizon - len(s)))
        masks.append([True] * len(s) + [False] * (horizon - len(s)))
      else:
        extend(s)

  extend([])
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(masks)


def ended_prefixes(tokens, mask, num_tokens):
  """Prefix index of every position: base K - 1 over the tokens before it (none is the end
  token where the position counts); 0 where the sequence has already ended."""
  idx = [jnp.zeros(tokens.shape[0], jnp.int32)]
  for t in range(tokens.shape[1] - 1):
    going_on = mask[:, t + 1]
    idx.append(jnp.where(going_on, idx[-1] * (num_tokens - 1) + tokens[:, t] - 1, 0))
  return jnp.stack(idx, 1)


# ---------------------------------------------------------------------------
# Fixed points of one-step problems and their backward induction over prefixes
# ---------------------------------------------------------------------------


def k3_fixed_point(ref_probs, values, beta):
  """argmax over pi of E_pi[values] - beta KL(ref || pi), the stationary point of k3 in the loss.

  Stationarity pi (values - c) = beta (pi - ref) gives pi_i = beta ref_i / (beta + c - values_i)
  with c = E_pi[values]; the normalisation fixes c in (max values - beta, max values], where
  the sum falls from +inf to at most 1 (bisection).
  """
  lo, hi = values.max() - beta, values.max()
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if np.sum(beta * ref_probs / (beta + mid - values)) > 1:
      lo = mid
    else:
      hi = mid
  pi = beta * ref_probs / (beta + hi - values)
  return pi / pi.sum()


def per_token_fixed_point(ref_probs, values, beta):
  """argmax over pi of E_pi[values] - beta KL(pi || ref): pi ∝ ref exp(values / beta)."""
  pi = ref_probs * np.exp((values - values.max()) / beta)
  return pi / pi.sum()


def backward_induction(ref_conditionals, rewards, beta, rule):
  """The tabular policy whose every prefix solves ``rule`` with the expected reward-to-go.

  These are the fixed points of gradients that treat each token's penalty locally (they
  never carry a KL cost back to earlier tokens): per-token exact KL, k2 and k3+ in the loss
  (``per_token_fixed_point``) and k3 in the loss (``k3_fixed_point``). Returns the
  sequence probabilities, lexicographic order.
  """
  num_tokens, horizon = ref_conditionals[0].shape[-1], len(ref_conditionals)
  value, policy = rewards, [None] * horizon
  for t in reversed(range(horizon)):
    q = value.reshape(num_tokens**t, num_tokens)
    policy[t] = np.stack([rule(ref_conditionals[t][h], q[h], beta) for h in range(len(q))])
    value = np.sum(policy[t] * q, axis=1)
  idx = np.arange(num_tokens**horizon)
  log_p = np.zeros(len(idx))
  for t in range(horizon):
    log_p += np.log(
      policy[t][
        idx // num_tokens ** (horizon - t), (idx // num_tokens ** (horizon - 1 - t)) % num_tokens
      ]
    )
  return np.exp(log_p)
