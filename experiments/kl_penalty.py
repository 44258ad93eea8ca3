r"""KL penalties in policy-gradient RL: which estimator, and where, against the exact optimum.

    python -m experiments.kl_penalty --out results --figures docs/figures

The objective is :math:`J(\theta) = \mathbb{E}_{x \sim \pi_\theta}[r(x)] - \beta\,
\mathrm{KL}(\pi_\theta \| \pi_{\mathrm{ref}})`, maximised by
:math:`\pi^*(x) \propto \pi_{\mathrm{ref}}(x)\, e^{r(x)/\beta}`. Each variant is one way RL
code writes the penalty; all use the REINFORCE (score-function) gradient for the reward:

* ``exact``: ``jaxdiv.kl_divergence(p_logits=policy, q_logits=reference)`` in the loss.
* ``k1_reward`` / ``k3_reward``: :math:`-\beta k` added to the reward (no gradient through
  :math:`k`), the RLHF/PPO way.
* ``k1_loss`` / ``k2_loss`` / ``k3_loss``: :math:`\beta k` in the loss, differentiated
  (``k3_loss`` is GRPO's, the default of verl, OpenRLHF and SkyRL).
* ``k3_straight_through_loss``: verl's "k3+", the value of k3 with the gradient of k2
  (``jaxdiv.kl_estimate(..., straight_through=True)``).
* ``exact_sequence`` (sequence task): ``jaxdiv.sequence_kl_penalty``, the per-token exact KL
  with the score-function term for later tokens.

Every estimate is ``jaxdiv.kl_estimate(log_ref, log_policy, estimator=...)`` at the sampled
actions, with :math:`\log \rho = \log \pi_{\mathrm{ref}}(x) - \log \pi_\theta(x)`:
:math:`k_1 = -\log\rho`, :math:`k_2 = \frac12 (\log\rho)^2`, :math:`k_3 = \rho - 1 - \log\rho`.

**Expected gradients (bandit).** Write :math:`\pi = \mathrm{softmax}(\theta)`,
:math:`\ell = \log \pi - \log \pi_{\mathrm{ref}}`, :math:`s(x) = \nabla_\theta \log \pi(x) =
e_x - \pi`. Two identities do all the work: :math:`\mathbb{E}_\pi[f(x)\,s(x)] =
\pi \odot (f - \mathbb{E}_\pi f)` and :math:`\mathbb{E}_\pi[\rho(x)\,s(x)] =
\pi_{\mathrm{ref}} - \pi`. The true penalty gradient is :math:`\nabla\mathrm{KL}(\pi \|
\pi_{\mathrm{ref}}) = \pi \odot (\ell - \mathrm{KL})`; that of the other direction is
:math:`\nabla\mathrm{KL}(\pi_{\mathrm{ref}} \| \pi) = \pi - \pi_{\mathrm{ref}}`. Per variant,
the expected gradient of the penalty term is

* ``k1_reward``: :math:`\mathbb{E}[\ell s] = \nabla\mathrm{KL}(\pi\|\pi_{\mathrm{ref}})`: unbiased.
* ``k2_loss`` and ``k3_straight_through_loss``: :math:`\nabla k_2 = \ell\, s`, the same
  per-sample vector as ``k1_reward`` (Liu et al., 2025): unbiased.
* ``k1_loss``: :math:`\nabla k_1 = s`, mean 0: no penalty at all; the bias (of
  :math:`\nabla J`) is :math:`+\beta \nabla\mathrm{KL}(\pi\|\pi_{\mathrm{ref}})`.
* ``k3_loss``: :math:`\nabla k_3 = (1 - \rho)\, s`, mean :math:`\pi - \pi_{\mathrm{ref}} =
  \nabla\mathrm{KL}(\pi_{\mathrm{ref}} \| \pi)`, the other direction; bias
  :math:`\beta(\nabla\mathrm{KL}(\pi\|\pi_{\mathrm{ref}})
  - \nabla\mathrm{KL}(\pi_{\mathrm{ref}}\|\pi))`.
* ``k3_reward``: :math:`\mathbb{E}[k_3 s] = \mathbb{E}[\ell s] + \mathbb{E}[(\rho - 1) s] =
  \nabla\mathrm{KL}(\pi\|\pi_{\mathrm{ref}}) - \nabla\mathrm{KL}(\pi_{\mathrm{ref}}\|\pi)`,
  the gradient of a difference that is third order in :math:`\ell` (k3's value is right,
  but its score-function gradient is only :math:`\nabla \mathbb{E}[k_3] -
  \mathbb{E}[\nabla k_3]`); bias :math:`+\beta \nabla\mathrm{KL}(\pi_{\mathrm{ref}}\|\pi)
  = \beta(\pi - \pi_{\mathrm{ref}})`. Near :math:`\pi_{\mathrm{ref}}` it applies almost no
  penalty, and far from it the "penalty" is unbounded below.

**Sequences.** For :math:`x_{1:T} \sim \pi_\theta` autoregressively, with per-token
:math:`\ell_t`, :math:`s_t = \nabla \log \pi_\theta(x_t \mid x_{<t})` and
:math:`\mathrm{KL}_t = \mathrm{KL}(\pi_\theta(\cdot \mid x_{<t}) \| \pi_{\mathrm{ref}}(\cdot
\mid x_{<t}))`, the chain rule gives :math:`\mathrm{KL}_{\mathrm{seq}} =
\mathbb{E}[\sum_t \mathrm{KL}_t] = \mathbb{E}[\sum_t \ell_t]` and

.. math::

  \nabla \mathrm{KL}_{\mathrm{seq}}
  = \mathbb{E}\Big[\sum_t \big(\textstyle\sum_{t' \ge t} \ell_{t'}\big) s_t\Big]
  = \mathbb{E}\Big[\sum_t \nabla\mathrm{KL}_t + \big(\textstyle\sum_{t' > t}
    \mathrm{KL}_{t'}\big) s_t\Big].

So ``k1_reward`` with returns that include later tokens' penalties is unbiased (the first
form), and so is ``exact_sequence`` (the second). ``exact``, ``k2_loss`` and
``k3_straight_through_loss`` all have expectation :math:`\mathbb{E}[\sum_t
\nabla\mathrm{KL}_t]`, the per-token part only: the dependence of later prefixes on
:math:`\theta` is lost (Tang & Munos, 2025), and k2-as-loss equals k1-in-reward only for a
single token. ``k3_loss`` follows :math:`\mathbb{E}[\sum_t \nabla\mathrm{KL}(\pi_{\mathrm{ref}}
(\cdot \mid x_{<t}) \| \pi_\theta(\cdot \mid x_{<t}))]`, ``k1_loss`` nothing, and
``k3_reward`` :math:`\nabla \mathrm{KL}_{\mathrm{seq}} - \mathbb{E}[\sum_t
\nabla\mathrm{KL}(\pi_{\mathrm{ref}}(\cdot \mid x_{<t}) \| \pi_\theta(\cdot \mid x_{<t}))]`.

**Where the biased ones end.** The fixed point of ``k3_loss``'s expected gradient maximises
:math:`\mathbb{E}_\pi[r] - \beta\,\mathrm{KL}(\pi_{\mathrm{ref}} \| \pi)`:
:math:`\pi_i = \beta\, \pi_{\mathrm{ref}, i} / (\beta + c - r_i)` with :math:`c =
\mathbb{E}_\pi[r]` fixed by the normalisation. ``k1_loss`` has none: it climbs towards the
deterministic policy on the best action (or sequence), whose KL to :math:`\pi^*` is its
limit. The per-token variants on sequences (``exact``, ``k2_loss``, k3+) end at the
policy that, prefix by prefix, solves the one-token problem with the expected reward-to-go
and no KL cost for later tokens (backward induction: :math:`\pi(a \mid h) \propto
\pi_{\mathrm{ref}}(a \mid h)\, e^{Q(h, a)/\beta}`, :math:`Q` the expected reward only);
``k3_loss`` on sequences at the same construction with the k3 fixed point per prefix. For
``k3_reward`` no fixed point is computed (its objective :math:`\mathbb{E}[r] -
\beta(\mathrm{KL}(\pi\|\pi_{\mathrm{ref}}) - \mathrm{KL}(\pi_{\mathrm{ref}}\|\pi))` is
unbounded above at the vertices of the simplex).

**What the run measures.** (a) Bandit: at fixed logits away from the reference, the mean of
``gradient_samples`` per-sample gradients of each variant (the same samples for all)
against the exact :math:`\nabla J`: ``bias_norm``, its standard error ``bias_se`` (the
square root of the trace of the per-sample covariance over the sample count), the
per-sample spread ``std`` (the square root of that trace), and the closed-form prediction
above, also checked against the exact expectation by enumerating the actions. The
sequence task gets the exact expected bias of each variant by enumerating all
:math:`K^T` sequences. (b) Training from :math:`\pi_{\mathrm{ref}}` with Adam (cosine-decayed
rate), the same batch size, steps and random draws for every variant, leave-one-out
baselines on the returns; ``KL(pi_theta || pi*)`` after every update. The run records its
own claims: unbiased variants have ``bias_norm <= 3 bias_se``; biased ones are within 3
standard errors of the prediction (as vectors); unbiased variants end within
``*_tolerance`` nats of :math:`\pi^*`, biased ones beyond ``away_factor`` times it, and those
with a predicted fixed point within ``fixed_point_rtol`` of its KL to :math:`\pi^*`.

Results go to ``OUT/kl_penalty.json``, figures to
``FIGURES/kl_penalty_{bias,training,policies}.{png,pdf}``; ``--quick`` is a small
smoke configuration.

References: J. Schulman, "Approximating KL Divergence" (2020); Y. Tang & R. Munos, "On a few
pitfalls in KL divergence gradient estimation for RL" (2025, arXiv:2506.09477); "A Comedy
of Estimators" (arXiv:2512.21852); Liu et al. (arXiv:2510.01555).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import jaxdiv
from experiments import _io

NAME = "kl_penalty"
BANDIT_VARIANTS = (
  "exact",
  "k1_reward",
  "k3_reward",
  "k1_loss",
  "k2_loss",
  "k3_loss",
  "k3_straight_through_loss",
)
SEQUENCE_VARIANTS = BANDIT_VARIANTS + ("exact_sequence",)
# Which variants follow the true gradient of the regularised objective in expectation.
BANDIT_UNBIASED = {"exact", "k1_reward", "k2_loss", "k3_straight_through_loss"}
SEQUENCE_UNBIASED = {"exact_sequence", "k1_reward"}
# Where each variant puts the penalty ("reward": only its value, through the score function;
# "loss": differentiated) and which term it is ("k3+": k3's value with k2's gradient).
VARIANTS = {
  "exact": ("loss", "exact"),
  "k1_reward": ("reward", "k1"),
  "k3_reward": ("reward", "k3"),
  "k1_loss": ("loss", "k1"),
  "k2_loss": ("loss", "k2"),
  "k3_loss": ("loss", "k3"),
  "k3_straight_through_loss": ("loss", "k3+"),
  "exact_sequence": ("loss", "exact_sequence"),
}
REWARD_TERMS = ("k1", "k3")
LOSS_TERMS = ("exact", "exact_sequence", "k1", "k2", "k3", "k3+")


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0  # the one seed behind every draw (problem, samples, training)
  beta: float = 0.5  # bandit penalty weight
  num_actions: int = 6
  gradient_scale: float = 1.0  # spread of the part-(a) logits around the reference
  gradient_samples: int = 1_000_000  # per-sample gradients for part (a)
  chunk_size: int = 250_000
  batch_size: int = 64  # samples per update, both tasks
  bandit_steps: int = 1500
  bandit_learning_rate: float = 0.05
  bandit_tolerance: float = 0.01  # nats: unbiased variants end within this KL of pi*
  sequence_beta: float = 0.5
  horizon: int = 4
  num_tokens: int = 3
  sequence_steps: int = 3000
  sequence_learning_rate: float = 0.05
  sequence_tolerance: float = 0.02
  away_factor: float = 3.0  # biased variants end beyond this many tolerances
  fixed_point_rtol: float = 0.1  # and within this fraction of their predicted fixed point
  log_every: int = 500

  def __post_init__(self):
    positive_ints = (
      "gradient_samples",
      "chunk_size",
      "bandit_steps",
      "sequence_steps",
      "log_every",
    )
    for name in positive_ints:
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.chunk_size < self.num_actions:
      raise ValueError("chunk_size must be >= num_actions (the exact expectation is one chunk)")
    if self.batch_size < 2:
      raise ValueError(f"batch_size must be >= 2 (leave-one-out baselines), got {self.batch_size}")
    if self.num_actions < 2 or self.num_tokens < 2:
      raise ValueError("num_actions and num_tokens must be >= 2")
    if self.horizon < 3:
      raise ValueError(f"horizon must be >= 3, got {self.horizon}")
    if self.num_tokens**self.horizon > 4096:
      raise ValueError("num_tokens ** horizon must be <= 4096 (every sequence is enumerated)")
    floats = (
      "beta",
      "sequence_beta",
      "gradient_scale",
      "bandit_learning_rate",
      "sequence_learning_rate",
      "bandit_tolerance",
      "sequence_tolerance",
    )
    for name in floats:
      if not getattr(self, name) > 0:
        raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
    if not 0 < self.fixed_point_rtol < 1:
      raise ValueError(f"fixed_point_rtol must be in (0, 1), got {self.fixed_point_rtol}")
    if not self.away_factor >= 1:
      raise ValueError(f"away_factor must be >= 1, got {self.away_factor}")


QUICK = dict(
  gradient_samples=40_000,
  chunk_size=40_000,
  bandit_steps=400,
  horizon=3,
  sequence_steps=600,
  bandit_tolerance=0.03,
  sequence_tolerance=0.05,
  log_every=400,
)


# ---------------------------------------------------------------------------
# The problems (numpy draws from the seed)
# ---------------------------------------------------------------------------


def _problems(config: Config) -> dict:
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
  return {"bandit": bandit, "sequence": sequence}


def _optimum_logits(log_ref, rewards, beta):
  """log pi* = log pi_ref + r / beta, normalised."""
  z = log_ref + rewards / beta
  return z - jax.nn.logsumexp(z)


def _leave_one_out(x):
  """Each sample's baseline: the mean of the other samples (over axis 0); unbiased."""
  n = x.shape[0]
  return (jnp.sum(x, axis=0, keepdims=True) - x) / (n - 1)


# ---------------------------------------------------------------------------
# Surrogate losses. Each variant switches on one penalty term, in the reward (where only
# its value enters, through the score function) or in the loss (where it is differentiated);
# all variants share one program (vmapped over the switches), so they compile once.
# ---------------------------------------------------------------------------


def _switches(variants) -> tuple:
  """One row per variant: 1 at the reward term and at the loss term it switches on."""
  reward = np.zeros((len(variants), len(REWARD_TERMS)))
  loss = np.zeros((len(variants), len(LOSS_TERMS)))
  for i, v in enumerate(variants):
    place, term = VARIANTS[v]
    if place == "reward":
      reward[i, REWARD_TERMS.index(term)] = 1.0
    else:
      loss[i, LOSS_TERMS.index(term)] = 1.0
  return jnp.asarray(reward), jnp.asarray(loss)


def _surrogate(switch, beta, logp, logp_ref, rewards, pol_logits, ref_logits, tokens, baseline):
  """The surrogate loss of one batch: REINFORCE for the reward, the penalty as ``switch`` says.

  ``logp``/``logp_ref`` are [B, T] log-probabilities of the sampled tokens, ``rewards`` [B],
  ``pol_logits``/``ref_logits`` [B, T, K] logits at the sampled prefixes (T = 1: bandit).
  Returns are reward-to-go: each token's return includes the penalties of later tokens.
  Minimising the surrogate ascends J in expectation when the variant is unbiased.
  """
  sg = lax.stop_gradient
  on_reward, on_loss = switch

  def est(name, straight_through=False):
    return jaxdiv.kl_estimate(
      logp_ref, logp, estimator=name, straight_through=straight_through
    )  # estimates KL(pi_theta || pi_ref): samples from the policy, the second argument

  k1, k3 = est("k1"), est("k3")
  in_reward = {"k1": sg(k1), "k3": sg(k3)}
  k = sum(jnp.where(on_reward[i] > 0, in_reward[n], 0.0) for i, n in enumerate(REWARD_TERMS))
  ret = rewards[:, None] - beta * jnp.flip(jnp.cumsum(jnp.flip(k, 1), axis=1), 1)
  if baseline:
    ret = ret - _leave_one_out(ret)
  loss = -jnp.sum(sg(ret) * logp, axis=1)
  exact = jaxdiv.kl_divergence(p_logits=pol_logits, q_logits=ref_logits)
  in_loss = {
    "exact": exact,
    # For one position the two coincide (nothing comes later); skip compiling it twice.
    "exact_sequence": exact
    if logp.shape[1] == 1
    else jaxdiv.sequence_kl_penalty(pol_logits, ref_logits, tokens),
    "k1": k1,
    "k2": est("k2"),
    "k3": k3,
    "k3+": est("k3", straight_through=True),
  }
  penalty = sum(jnp.where(on_loss[i] > 0, in_loss[n], 0.0) for i, n in enumerate(LOSS_TERMS))
  return jnp.mean(loss + beta * jnp.sum(penalty, axis=1))


def _token_log_probs(logits, tokens):
  lp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(lp, tokens[..., None], axis=-1)[..., 0]


def _bandit_loss(theta, switch, beta, ref, rewards, actions, baseline):
  """Surrogate loss of a batch of actions [B] for the softmax policy theta [K]."""
  pol = jnp.broadcast_to(theta, (actions.shape[0], 1, theta.shape[-1]))
  refl = jnp.broadcast_to(ref, pol.shape)
  tok = actions[:, None]
  logp, logp_ref = _token_log_probs(pol, tok), _token_log_probs(refl, tok)
  return _surrogate(switch, beta, logp, logp_ref, rewards[actions], pol, refl, tok, baseline)


def _prefixes(tokens, num_tokens):
  """Prefix index (base K, lexicographic) of every position of sequences [B, T], and of the
  whole sequence."""
  idx = [jnp.zeros(tokens.shape[0], jnp.int32)]
  for t in range(tokens.shape[1] - 1):
    idx.append(idx[-1] * num_tokens + tokens[:, t])
  return jnp.stack(idx, 1), idx[-1] * num_tokens + tokens[:, -1]


def _logits_at(tables, prefix):
  return jnp.stack([tab[prefix[:, t]] for t, tab in enumerate(tables)], 1)


def _sequence_loss(tables, switch, beta, ref_tables, rewards, tokens, baseline):
  """Surrogate loss of a batch of sequences [B, T] for the tabular policy ``tables``."""
  prefix, seq = _prefixes(tokens, tables[0].shape[-1])
  pol, refl = _logits_at(tables, prefix), _logits_at(ref_tables, prefix)
  logp, logp_ref = _token_log_probs(pol, tokens), _token_log_probs(refl, tokens)
  return _surrogate(switch, beta, logp, logp_ref, rewards[seq], pol, refl, tokens, baseline)


def _all_sequences(num_tokens, horizon):
  idx = np.arange(num_tokens**horizon)
  cols = [(idx // num_tokens ** (horizon - 1 - t)) % num_tokens for t in range(horizon)]
  return jnp.asarray(np.stack(cols, 1), jnp.int32)


def _sequence_log_probs(tables, all_tokens):
  """log pi(x_1..x_T) of every sequence, lexicographic order."""
  prefix, _ = _prefixes(all_tokens, tables[0].shape[-1])
  return jnp.sum(_token_log_probs(_logits_at(tables, prefix), all_tokens), axis=1)


def _sample_sequences(key, tables, batch):
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
# Part (a): bias and spread of each variant's gradient at fixed logits
# ---------------------------------------------------------------------------


def predicted_bandit_bias(variant, beta, theta, ref):
  """Closed-form bias of the variant's expected gradient of J (see the module docstring)."""
  pi, pr = jax.nn.softmax(theta), jax.nn.softmax(ref)
  ell = jax.nn.log_softmax(theta) - jax.nn.log_softmax(ref)
  grad_kl = pi * (ell - jnp.sum(pi * ell))  # d/dtheta KL(pi || pi_ref)
  grad_kl_rev = pi - pr  # d/dtheta KL(pi_ref || pi)
  return {
    "k1_loss": beta * grad_kl,
    "k3_loss": beta * (grad_kl - grad_kl_rev),
    "k3_reward": beta * grad_kl_rev,
  }.get(variant, jnp.zeros_like(theta))


@jax.jit
@jax.grad
def _bandit_exact_gradient(theta, ref, rewards, beta):
  """The exact gradient of J (jaxdiv's KL differentiated)."""
  pi = jax.nn.softmax(theta)
  return jnp.sum(pi * rewards) - beta * jaxdiv.kl_divergence(p_logits=theta, q_logits=ref)


@jax.jit
def _gradient_sums(switches, beta, theta, ref, rewards, actions, weights):
  """Per variant: sum_i w_i g_i and sum_i w_i |g_i|^2, g_i the gradient of J from action i.

  Monte Carlo: sampled actions, weights 1 (0 for padding); exact expectation: every action,
  weighted by pi. One compilation serves both.
  """

  def per_variant(switch):
    def one(a):
      return -jax.grad(_bandit_loss)(theta, switch, beta, ref, rewards, a[None], False)

    g = jax.vmap(one)(actions)
    return weights @ g, weights @ jnp.sum(g * g, axis=1)

  return jax.vmap(per_variant)(switches)


def _bandit_gradients(config, bandit, key, progress) -> tuple[dict, dict]:
  theta = jnp.asarray(bandit["gradient_logits"])
  ref = jnp.asarray(bandit["reference_logits"])
  rewards = jnp.asarray(bandit["rewards"])
  beta, k, size = config.beta, config.num_actions, config.chunk_size
  switches = _switches(BANDIT_VARIANTS)
  exact = np.asarray(_bandit_exact_gradient(theta, ref, rewards, beta))

  def padded(actions, weights):
    pad = size - actions.shape[0]
    return jnp.pad(actions, (0, pad)), jnp.pad(weights, (0, pad))

  acts, w = padded(jnp.arange(k), jax.nn.softmax(theta))
  enumerated = np.asarray(_gradient_sums(switches, beta, theta, ref, rewards, acts, w)[0])
  total, total_sq = np.zeros((len(BANDIT_VARIANTS), k)), np.zeros(len(BANDIT_VARIANTS))
  done, i = 0, 0
  while done < config.gradient_samples:
    n = min(size, config.gradient_samples - done)
    actions = jax.random.categorical(jax.random.fold_in(key, i), theta, shape=(n,))
    acts, w = padded(actions, jnp.ones(n))
    s, s2 = _gradient_sums(switches, beta, theta, ref, rewards, acts, w)
    total, total_sq = total + np.asarray(s), total_sq + np.asarray(s2)
    done, i = done + n, i + 1
    progress(f"bandit gradients: {done}/{config.gradient_samples} samples")
  n = config.gradient_samples
  rows, checks = {}, {}
  for j, v in enumerate(BANDIT_VARIANTS):
    mean = total[j] / n
    trace_cov = max(total_sq[j] - n * float(mean @ mean), 0.0) / (n - 1)
    bias = mean - exact
    predicted = np.asarray(predicted_bandit_bias(v, beta, theta, ref))
    se = math.sqrt(trace_cov / n)
    unbiased = v in BANDIT_UNBIASED
    rows[v] = {
      "bias": bias,
      "bias_norm": float(np.linalg.norm(bias)),
      "bias_se": se,
      "deviation_from_prediction": float(np.linalg.norm(bias - predicted)),
      "enumerated_bias_norm": float(np.linalg.norm(enumerated[j] - exact)),
      "mean_gradient": mean,
      "num_samples": n,
      "predicted_bias": predicted,
      "predicted_bias_norm": float(np.linalg.norm(predicted)),
      "std": math.sqrt(trace_cov),
      "theory_unbiased": unbiased,
    }
    scale = float(np.linalg.norm(exact)) + float(np.linalg.norm(predicted))
    checks[f"bandit/{v}/closed_form_equals_enumeration"] = bool(
      np.linalg.norm(enumerated[j] - exact - predicted) <= 1e-9 * scale
    )
    if unbiased:
      checks[f"bandit/{v}/bias_within_3se"] = rows[v]["bias_norm"] <= 3 * se
    else:
      checks[f"bandit/{v}/bias_matches_prediction_within_3se"] = (
        rows[v]["deviation_from_prediction"] <= 3 * se
      )
      checks[f"bandit/{v}/bias_detectable"] = rows[v]["predicted_bias_norm"] > 3 * se
  diff = np.max(np.abs(rows["k2_loss"]["mean_gradient"] - rows["k1_reward"]["mean_gradient"]))
  checks["bandit/k2_loss_equals_k1_reward_per_sample"] = bool(diff <= 1e-12)
  part = {"exact_gradient": exact, "exact_gradient_norm": float(np.linalg.norm(exact))}
  return part | {"gradient": rows}, checks


# ---------------------------------------------------------------------------
# Part (b): training, every variant in one vmapped scan (one compilation per task)
# ---------------------------------------------------------------------------


def _task_functions(task, data):
  """(surrogate loss, KL(pi_theta || pi*), sampler) of a task, from its arrays ``data``."""
  beta, rewards, log_opt = data["beta"], data["rewards"], data["log_opt"]
  if task == "bandit":

    def loss_fn(theta, switch, actions):
      return _bandit_loss(theta, switch, beta, data["ref"], rewards, actions, True)

    def kl_fn(theta):
      return jaxdiv.kl_divergence(p_logits=theta, q_logits=log_opt)

    def sample_fn(k, theta, batch):
      return jax.random.categorical(k, theta, shape=(batch,))

    return loss_fn, kl_fn, sample_fn

  def loss_fn(tables, switch, tokens):
    return _sequence_loss(tables, switch, beta, data["ref"], rewards, tokens, True)

  def kl_fn(tables):
    lp = _sequence_log_probs(tables, data["all_tokens"])
    return jaxdiv.kl_divergence(p_logits=lp, q_logits=log_opt)

  return loss_fn, kl_fn, _sample_sequences


def _optimizer(lr, steps):
  return optax.adam(optax.cosine_decay_schedule(lr, steps))


@functools.partial(jax.jit, static_argnames=("task", "variants", "lr", "steps", "batch"))
def _train_chunk(carry, keys, active, data, *, task, variants, lr, steps, batch):
  """``len(keys)`` updates of every variant (vmapped); KL(pi_theta || pi*) before and after.

  A step with ``active`` false keeps the parameters, so every chunk has the same length
  (one compilation, reused by a rerun in the same process).
  """
  loss_fn, kl_fn, sample_fn = _task_functions(task, data)
  opt = _optimizer(lr, steps)
  switches = _switches(variants)

  def one_step(params, state, switch, k, on):
    x = sample_fn(k, params, batch)
    grads = jax.grad(loss_fn)(params, switch, x)
    updates, new_state = opt.update(grads, state, params)
    new = (optax.apply_updates(params, updates), new_state)
    params, state = jax.tree.map(lambda a, b: jnp.where(on, a, b), new, (params, state))
    return params, state, kl_fn(params)

  step_all = jax.vmap(one_step, in_axes=(0, 0, 0, None, None))

  def step(carry, inp):
    params, state, kl = step_all(*carry, switches, *inp)
    return (params, state), kl

  kl_before = jax.vmap(kl_fn)(carry[0])
  carry, kls = lax.scan(step, carry, (keys, active))
  return carry, kl_before, kls


def _train(task, variants, data, params0, steps, lr, config, key, progress):
  """Adam (cosine-decayed rate) from ``params0``; KL(pi_theta || pi*) at the start and after
  every update. Every variant gets the same random keys (common random numbers), the same
  batch size and the same number of steps."""
  opt = _optimizer(lr, steps)
  params = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(variants),) + x.shape), params0)
  carry = (params, jax.vmap(opt.init)(params))
  n_chunks = -(-steps // config.log_every)
  length = -(-steps // n_chunks)
  keys = jax.random.split(key, n_chunks * length)
  kw = dict(task=task, variants=variants, lr=lr, steps=steps, batch=config.batch_size)
  curves = []
  for c in range(n_chunks):
    active = np.arange(c * length, (c + 1) * length) < steps
    carry, kl_before, kls = _train_chunk(
      carry, keys[c * length : (c + 1) * length], active, data, **kw
    )
    if c == 0:
      curves.append(np.asarray(kl_before)[None])
    curves.append(np.asarray(kls))
    done = min((c + 1) * length, steps)
    tail = "  ".join(f"{v} {float(x):.4f}" for v, x in zip(variants, kls[-1], strict=True))
    progress(f"{task} training: step {done}/{steps}  KL(pi||pi*): {tail}")
  curves = np.concatenate(curves)[: steps + 1]
  final = {v: jax.tree.map(lambda x, i=i: x[i], carry[0]) for i, v in enumerate(variants)}
  return final, {v: curves[:, i] for i, v in enumerate(variants)}


def _bandit_training(config, bandit, key, progress):
  ref = jnp.asarray(bandit["reference_logits"])
  rewards = jnp.asarray(bandit["rewards"])
  log_opt = _optimum_logits(jax.nn.log_softmax(ref), rewards, config.beta)
  data = {"beta": config.beta, "log_opt": log_opt, "ref": ref, "rewards": rewards}
  lr, steps = config.bandit_learning_rate, config.bandit_steps
  final, curves = _train("bandit", BANDIT_VARIANTS, data, ref, steps, lr, config, key, progress)
  out = {}
  for v in BANDIT_VARIANTS:
    theta = np.asarray(final[v])
    out[v] = {"final_logits": theta - theta.mean(), "kl_to_optimum": curves[v]}
  return out, np.exp(np.asarray(log_opt))


@jax.jit
@jax.grad
def _sequence_exact_gradient(tables, ref_tables, rewards, all_tokens, beta):
  """The exact gradient of J: the KL of the sequence distributions, by enumeration."""
  lp = _sequence_log_probs(tables, all_tokens)
  lr = _sequence_log_probs(ref_tables, all_tokens)
  return jnp.sum(jnp.exp(lp) * rewards) - beta * jaxdiv.kl_divergence(p_logits=lp, q_logits=lr)


@jax.jit
def _sequence_expected_gradients(switches, beta, tables, ref_tables, rewards, all_tokens):
  """Exact expected gradient of J of every variant (rows), by enumerating all sequences."""
  weight = jnp.exp(_sequence_log_probs(tables, all_tokens))

  def per_variant(switch):
    def one(x):
      return jax.grad(_sequence_loss)(tables, switch, beta, ref_tables, rewards, x[None], False)

    per = jax.vmap(one)(all_tokens)
    return jax.tree.map(lambda g: -jnp.tensordot(weight, g, axes=1), per)

  return jax.vmap(per_variant)(switches)


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def _sequence_task(config, seq, key, progress):
  beta = config.sequence_beta
  ref_tables = [jnp.asarray(t) for t in seq["reference_tables"]]
  rewards = jnp.asarray(seq["rewards"])
  all_tokens = _all_sequences(config.num_tokens, config.horizon)
  log_ref_seq = _sequence_log_probs(ref_tables, all_tokens)
  log_opt = _optimum_logits(log_ref_seq, rewards, beta)

  tables = [jnp.asarray(t) for t in seq["gradient_tables"]]
  exact = _flat(_sequence_exact_gradient(tables, ref_tables, rewards, all_tokens, beta))
  means = _sequence_expected_gradients(
    _switches(SEQUENCE_VARIANTS), beta, tables, ref_tables, rewards, all_tokens
  )
  gradient = {}
  for i, v in enumerate(SEQUENCE_VARIANTS):
    mean = _flat(jax.tree.map(lambda x, i=i: x[i], means))
    gradient[v] = {
      "expected_bias_norm": float(np.linalg.norm(mean - exact)),
      "theory_unbiased": v in SEQUENCE_UNBIASED,
    }
  progress(
    "sequence expected biases (exact, by enumeration): "
    + "  ".join(f"{v} {r['expected_bias_norm']:.2e}" for v, r in gradient.items())
  )

  data = {
    "all_tokens": all_tokens,
    "beta": beta,
    "log_opt": log_opt,
    "ref": ref_tables,
    "rewards": rewards,
  }
  lr, steps = config.sequence_learning_rate, config.sequence_steps
  final, curves = _train(
    "sequence", SEQUENCE_VARIANTS, data, ref_tables, steps, lr, config, key, progress
  )
  optimum = np.exp(np.asarray(log_opt))
  predicted = _sequence_predictions(seq["reference_tables"], seq["rewards"], beta, optimum)
  training = {}
  for v in SEQUENCE_VARIANTS:
    probs = np.exp(np.asarray(_sequence_log_probs(final[v], all_tokens)))
    training[v] = {
      "final_sequence_probs": probs,
      "kl_to_optimum": curves[v],
      "predicted_final_kl": predicted[v],
    }
  return {
    "beta": beta,
    "exact_gradient_norm": float(np.linalg.norm(exact)),
    "gradient": gradient,
    "horizon": config.horizon,
    "num_tokens": config.num_tokens,
    "optimum_sequence_probs": optimum,
    "reference_sequence_probs": np.exp(np.asarray(log_ref_seq)),
    "rewards": np.asarray(rewards),
    "training": training,
  }


# ---------------------------------------------------------------------------
# Where each biased variant should end: the fixed point of its expected gradient
# ---------------------------------------------------------------------------


def _k3_fixed_point(ref_probs, values, beta):
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


def _per_token_fixed_point(ref_probs, values, beta):
  """argmax over pi of E_pi[values] - beta KL(pi || ref): pi ∝ ref exp(values / beta)."""
  pi = ref_probs * np.exp((values - values.max()) / beta)
  return pi / pi.sum()


def _backward_induction(ref_conditionals, rewards, beta, rule):
  """The tabular policy whose every prefix solves ``rule`` with the expected reward-to-go.

  These are the fixed points of gradients that treat each token's penalty locally (they
  never carry a KL cost back to earlier tokens): per-token exact KL, k2 and k3+ in the loss
  (``_per_token_fixed_point``) and k3 in the loss (``_k3_fixed_point``). Returns the
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


def _np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max())
  return e / e.sum()


def _kl(p, q) -> float:
  return float(jaxdiv.kl_divergence(jnp.asarray(p), jnp.asarray(q)))


def _bandit_predictions(bandit, optimum) -> dict:
  """Predicted KL(pi || pi*) at the end of training; None where no fixed point is known."""
  ref = _np_softmax(bandit["reference_logits"])
  rewards, beta = np.asarray(bandit["rewards"]), bandit["beta"]
  out = {v: 0.0 for v in BANDIT_UNBIASED}
  out["k3_loss"] = _kl(_k3_fixed_point(ref, rewards, beta), optimum)
  out["k1_loss"] = _kl(np.eye(len(rewards))[np.argmax(rewards)], optimum)  # the limit
  out["k3_reward"] = None
  return out


def _sequence_predictions(ref_tables, rewards, beta, optimum) -> dict:
  conds = [np.stack([_np_softmax(row) for row in tab]) for tab in ref_tables]
  per_token = _backward_induction(conds, rewards, beta, _per_token_fixed_point)
  out = {v: 0.0 for v in SEQUENCE_UNBIASED}
  for v in ("exact", "k2_loss", "k3_straight_through_loss"):
    out[v] = _kl(per_token, optimum)
  out["k3_loss"] = _kl(_backward_induction(conds, rewards, beta, _k3_fixed_point), optimum)
  out["k1_loss"] = _kl(np.eye(len(rewards))[np.argmax(rewards)], optimum)  # the limit
  out["k3_reward"] = None
  return out


# ---------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------


def _training_claims(prefix, training, unbiased, config, tol) -> dict:
  checks = {}
  for v, row in training.items():
    final, predicted = row["kl_to_optimum"][-1], row["predicted_final_kl"]
    if v in unbiased:
      checks[f"{prefix}/{v}/ends_within_tolerance"] = final <= tol
    else:
      checks[f"{prefix}/{v}/ends_away"] = final > config.away_factor * tol
      if predicted is not None and v != "k1_loss":  # k1_loss's prediction is a limit
        rtol = config.fixed_point_rtol
        checks[f"{prefix}/{v}/ends_at_predicted_fixed_point"] = (
          abs(final - predicted) <= rtol * predicted
        )
  return checks


def run(config: Config, progress=None) -> dict:
  """Both tasks; a pure function of ``config`` (``progress`` only prints)."""
  jax.config.update("jax_enable_x64", True)
  progress = progress or (lambda msg: None)
  problems = _problems(config)
  key = jax.random.key(config.seed)
  k_grad, k_bandit, k_seq = jax.random.split(key, 3)

  b = problems["bandit"]
  gradient_part, checks = _bandit_gradients(config, b, k_grad, progress)
  training, optimum = _bandit_training(config, b, k_bandit, progress)
  predicted = _bandit_predictions({**b, "beta": config.beta}, optimum)
  for v, row in training.items():
    row["predicted_final_kl"] = predicted[v]
  bandit = {
    "beta": config.beta,
    "gradient_logits": b["gradient_logits"],
    "optimum_probs": optimum,
    "reference_logits": b["reference_logits"],
    "rewards": b["rewards"],
    "training": training,
    **gradient_part,
  }
  sequence = _sequence_task(config, problems["sequence"], k_seq, progress)
  bandit, sequence = _io.to_jsonable(bandit), _io.to_jsonable(sequence)

  for v, row in sequence["gradient"].items():
    scale = sequence["exact_gradient_norm"]
    if row["theory_unbiased"]:
      checks[f"sequence/{v}/expected_gradient_unbiased"] = row["expected_bias_norm"] <= 1e-9 * scale
    else:
      checks[f"sequence/{v}/expected_gradient_biased"] = row["expected_bias_norm"] > 1e-3 * scale
  b_tol, s_tol = config.bandit_tolerance, config.sequence_tolerance
  checks |= _training_claims("bandit", bandit["training"], BANDIT_UNBIASED, config, b_tol)
  checks |= _training_claims("sequence", sequence["training"], SEQUENCE_UNBIASED, config, s_tol)
  return {
    "all_claims_pass": all(checks.values()),
    "bandit": bandit,
    "claims": checks,
    "config": dataclasses.asdict(config),
    "sequence": sequence,
    "versions": _io.versions(),
  }


def table(results: dict) -> str:
  """The bias table (bandit) and the final KL(pi_theta || pi*) per variant, as Markdown."""
  b, s = results["bandit"], results["sequence"]
  lines = [
    f"exact |grad J| = {b['exact_gradient_norm']:.4g} (bandit), "
    f"{s['exact_gradient_norm']:.4g} (sequence)",
    "",
    "| variant | theory | bias norm ± SE | predicted | std | final KL bandit (predicted) | "
    "sequence bias (exact) | final KL sequence (predicted) |",
    "|---|---|---|---|---|---|---|---|",
  ]

  def final(row):
    pred = row["predicted_final_kl"]
    return f"{row['kl_to_optimum'][-1]:.3g} ({'?' if pred is None else format(pred, '.3g')})"

  for v in SEQUENCE_VARIANTS:
    g = b["gradient"].get(v)
    cells = (
      [
        "unbiased" if g["theory_unbiased"] else "biased",
        f"{g['bias_norm']:.4g} ± {g['bias_se']:.2g}",
        f"{g['predicted_bias_norm']:.4g}",
        f"{g['std']:.4g}",
        final(b["training"][v]),
      ]
      if g
      else ["-"] * 5
    )
    cells += [f"{s['gradient'][v]['expected_bias_norm']:.3g}", final(s["training"][v])]
    lines.append(f"| {v} | " + " | ".join(cells) + " |")
  failed = [k for k, ok in results["claims"].items() if not ok]
  lines.append(
    f"\nall claims pass: {results['all_claims_pass']}" + (f" (failed: {failed})" if failed else "")
  )
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Figures (from the results only)
# ---------------------------------------------------------------------------


def _ordered(rows: dict, order) -> list:
  """The variants of ``rows`` in the module's order (the JSON keeps them sorted)."""
  return [v for v in order if v in rows]


def plot(results: dict, out_dir) -> list:
  """Three figures from ``results`` alone; returns the written paths."""
  from experiments import plotting

  plt = plotting.pyplot()
  paths = []
  b, s, cfg = results["bandit"], results["sequence"], results["config"]
  colors = {v: f"C{i}" for i, v in enumerate(SEQUENCE_VARIANTS)}
  colors["k3_straight_through_loss"] = "0.55"  # C7 is black; k2_loss and k3+ coincide anyway

  fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13.5, 4.2), layout="constrained")
  vs = _ordered(b["gradient"], SEQUENCE_VARIANTS)
  x = np.arange(len(vs))
  g = [b["gradient"][v] for v in vs]
  c = [colors[v] for v in vs]
  ax1.bar(x, [r["bias_norm"] for r in g], yerr=[3 * r["bias_se"] for r in g], color=c, capsize=3)
  ax1.plot(x, [r["predicted_bias_norm"] for r in g], "k_", ms=16, mew=2, label="closed form")
  ax1.axhline(b["exact_gradient_norm"], color="0.4", ls=":", label="|exact gradient of J|")
  ax1.set_xticks(x, vs, rotation=35, ha="right")
  ax1.set_ylabel("|mean gradient - exact gradient|")
  ax1.set_title(f"bandit: bias (bars ±3 SE, {g[0]['num_samples']:,} samples)")
  ax1.legend(loc="upper left", fontsize=7, bbox_to_anchor=(0.0, 0.93))
  ax2.bar(x, [r["std"] for r in g], color=c)
  ax2.axhline(b["exact_gradient_norm"], color="0.4", ls=":", label="|exact gradient of J|")
  ax2.set_xticks(x, vs, rotation=35, ha="right")
  ax2.set_ylabel("sqrt(trace Cov) of one sample's gradient")
  ax2.set_title("bandit: spread of a single-sample gradient")
  ax2.set_ylim(0, 1.25 * max(r["std"] for r in g))
  ax2.legend(loc="upper left", fontsize=7)
  svs = _ordered(s["gradient"], SEQUENCE_VARIANTS)
  xs = np.arange(len(svs))
  floor = 1e-17
  ax3.bar(
    xs,
    [max(s["gradient"][v]["expected_bias_norm"], floor) for v in svs],
    color=[colors[v] for v in svs],
  )
  ax3.axhline(s["exact_gradient_norm"], color="0.4", ls=":", label="|exact gradient of J|")
  for i, v in enumerate(svs):
    if s["gradient"][v]["theory_unbiased"]:
      ax3.text(i, 1e-15, "0 to\nround-off", ha="center", va="bottom", fontsize=7)
  ax3.set_yscale("log")
  ax3.set_ylim(floor, 10 * s["exact_gradient_norm"])
  ax3.set_xticks(xs, svs, rotation=35, ha="right")
  ax3.set_ylabel("|expected gradient - exact gradient|")
  ax3.set_title(f"sequences (T={s['horizon']}, K={s['num_tokens']}): exact bias, all sequences")
  ax3.legend(loc="center left", fontsize=7)
  paths += plotting.save(fig, out_dir, f"{NAME}_bias")

  fig, axes = plt.subplots(1, 2, figsize=(13.0, 4.2), layout="constrained")
  for ax, task, tol, title in (
    (axes[0], b, cfg["bandit_tolerance"], f"bandit (K={len(b['rewards'])})"),
    (axes[1], s, cfg["sequence_tolerance"], f"sequences (T={s['horizon']}, K={s['num_tokens']})"),
  ):
    for v in _ordered(task["training"], SEQUENCE_VARIANTS):
      kl = np.maximum(np.asarray(task["training"][v]["kl_to_optimum"]), 1e-9)
      ls = "--" if v == "k3_straight_through_loss" else "-"
      ax.plot(np.arange(len(kl)), kl, ls, color=colors[v], lw=1.0, label=v)
      predicted = task["training"][v]["predicted_final_kl"]
      if predicted:  # the fixed point of the variant's expected gradient (k1_loss: its limit)
        ax.plot(1.03 * (len(kl) - 1), predicted, "<", color=colors[v], ms=6, clip_on=False)
    ax.plot([], [], "<", color="0.3", label="predicted end")
    ax.axhline(tol, color="k", ls=":", lw=1, label="tolerance")
    ax.set_yscale("log")
    ax.set_xlabel("update")
    ax.set_ylabel("KL(pi_theta || pi*) (nats)")
    ax.set_title(f"{title}: distance to the regularised optimum")
  handles, labels = axes[1].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside right center", fontsize=8)
  paths += plotting.save(fig, out_dir, f"{NAME}_training")

  fig, (ax1, ax2) = plt.subplots(
    1, 2, figsize=(14.0, 4.2), layout="constrained", width_ratios=(1, 2)
  )
  k = len(b["rewards"])
  ax1.bar(np.arange(k), b["optimum_probs"], color="0.85", label="pi*")
  ax1.plot(np.arange(k), _np_softmax(b["reference_logits"]), "k--", lw=1, label="pi_ref")
  bvs = _ordered(b["training"], SEQUENCE_VARIANTS)
  for i, v in enumerate(bvs):
    shift = (i - (len(bvs) - 1) / 2) * 0.09
    q = _np_softmax(b["training"][v]["final_logits"])
    ax1.plot(np.arange(k) + shift, q, "o", ms=4, color=colors[v])
  ax1.set_xlabel("action")
  ax1.set_ylabel("probability")
  ax1.set_title("bandit: final policies against pi*")
  ax1.legend(loc="upper right", fontsize=7)
  opt_s = np.asarray(s["optimum_sequence_probs"])
  order = np.argsort(-opt_s, kind="stable")
  n = len(opt_s)
  ax2.bar(np.arange(n), opt_s[order], color="0.85", width=1.0, label="pi*")
  for v in _ordered(s["training"], SEQUENCE_VARIANTS):
    q = np.asarray(s["training"][v]["final_sequence_probs"])[order]
    ax2.plot(np.arange(n), q, ".", ms=4, color=colors[v], label=v)
  ax2.set_yscale("log")
  ax2.set_ylim(max(1e-10, 0.1 * opt_s.min()), 2.0)
  ax2.set_xlabel("sequence (sorted by pi*)")
  ax2.set_ylabel("probability")
  ax2.set_title("sequences: final policies against pi*")
  fig.legend(*ax2.get_legend_handles_labels(), loc="outside right center", fontsize=8)
  paths += plotting.save(fig, out_dir, f"{NAME}_policies")
  return paths


def main(argv=None) -> int:
  return _io.run_experiment(
    argv,
    name=NAME,
    config_cls=Config,
    quick=QUICK,
    run=run,
    plot=plot,
    description=__doc__.splitlines()[0],
    report=table,
    ok=lambda r: r["all_claims_pass"],
  )


if __name__ == "__main__":
  sys.exit(main())
