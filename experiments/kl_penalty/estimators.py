"""The estimators' study: each variant's surrogate loss, the bias of its gradient at fixed
logits (part a), training every variant to its end (part b), and where the biased ones end."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import jaxdiv
from experiments.kl_penalty import model

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


def leave_one_out(x):
  """Each sample's baseline: the mean of the other samples (over axis 0); unbiased."""
  n = x.shape[0]
  return (jnp.sum(x, axis=0, keepdims=True) - x) / (n - 1)


# ---------------------------------------------------------------------------
# Surrogate losses. Each variant switches on one penalty term, in the reward (where only
# its value enters, through the score function) or in the loss (where it is differentiated);
# all variants share one program (vmapped over the switches), so they compile once.
# ---------------------------------------------------------------------------


def switches(variants) -> tuple:
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


def surrogate(switch, beta, logp, logp_ref, rewards, pol_logits, ref_logits, tokens, baseline):
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
    ret = ret - leave_one_out(ret)
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


def bandit_loss(theta, switch, beta, ref, rewards, actions, baseline):
  """Surrogate loss of a batch of actions [B] for the softmax policy theta [K]."""
  pol = jnp.broadcast_to(theta, (actions.shape[0], 1, theta.shape[-1]))
  refl = jnp.broadcast_to(ref, pol.shape)
  tok = actions[:, None]
  logp, logp_ref = model.token_log_probs(pol, tok), model.token_log_probs(refl, tok)
  return surrogate(switch, beta, logp, logp_ref, rewards[actions], pol, refl, tok, baseline)


def sequence_loss(tables, switch, beta, ref_tables, rewards, tokens, baseline):
  """Surrogate loss of a batch of sequences [B, T] for the tabular policy ``tables``."""
  prefix, seq = model.prefixes(tokens, tables[0].shape[-1])
  pol, refl = model.logits_at(tables, prefix), model.logits_at(ref_tables, prefix)
  logp, logp_ref = model.token_log_probs(pol, tokens), model.token_log_probs(refl, tokens)
  return surrogate(switch, beta, logp, logp_ref, rewards[seq], pol, refl, tokens, baseline)


# ---------------------------------------------------------------------------
# Part (a): bias and spread of each variant's gradient at fixed logits
# ---------------------------------------------------------------------------


def predicted_bandit_bias(variant, beta, theta, ref):
  """Closed-form bias of the variant's expected gradient of J (see the package docstring)."""
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
      return -jax.grad(bandit_loss)(theta, switch, beta, ref, rewards, a[None], False)

    g = jax.vmap(one)(actions)
    return weights @ g, weights @ jnp.sum(g * g, axis=1)

  return jax.vmap(per_variant)(switches)


def bandit_gradients(config, bandit, key, progress) -> tuple[dict, dict]:
  theta = jnp.asarray(bandit["gradient_logits"])
  ref = jnp.asarray(bandit["reference_logits"])
  rewards = jnp.asarray(bandit["rewards"])
  beta, k, size = config.beta, config.num_actions, config.chunk_size
  sw = switches(BANDIT_VARIANTS)
  exact = np.asarray(_bandit_exact_gradient(theta, ref, rewards, beta))

  def padded(actions, weights):
    pad = size - actions.shape[0]
    return jnp.pad(actions, (0, pad)), jnp.pad(weights, (0, pad))

  acts, w = padded(jnp.arange(k), jax.nn.softmax(theta))
  enumerated = np.asarray(_gradient_sums(sw, beta, theta, ref, rewards, acts, w)[0])
  total, total_sq = np.zeros((len(BANDIT_VARIANTS), k)), np.zeros(len(BANDIT_VARIANTS))
  done, i = 0, 0
  while done < config.gradient_samples:
    n = min(size, config.gradient_samples - done)
    actions = jax.random.categorical(jax.random.fold_in(key, i), theta, shape=(n,))
    acts, w = padded(actions, jnp.ones(n))
    s, s2 = _gradient_sums(sw, beta, theta, ref, rewards, acts, w)
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
      return bandit_loss(theta, switch, beta, data["ref"], rewards, actions, True)

    def kl_fn(theta):
      return jaxdiv.kl_divergence(p_logits=theta, q_logits=log_opt)

    def sample_fn(k, theta, batch):
      return jax.random.categorical(k, theta, shape=(batch,))

    return loss_fn, kl_fn, sample_fn

  def loss_fn(tables, switch, tokens):
    return sequence_loss(tables, switch, beta, data["ref"], rewards, tokens, True)

  def kl_fn(tables):
    lp = model.sequence_log_probs(tables, data["all_tokens"])
    return jaxdiv.kl_divergence(p_logits=lp, q_logits=log_opt)

  return loss_fn, kl_fn, model.sample_sequences


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
  sw = switches(variants)

  def one_step(params, state, switch, k, on):
    x = sample_fn(k, params, batch)
    grads = jax.grad(loss_fn)(params, switch, x)
    updates, new_state = opt.update(grads, state, params)
    new = (optax.apply_updates(params, updates), new_state)
    params, state = jax.tree.map(lambda a, b: jnp.where(on, a, b), new, (params, state))
    return params, state, kl_fn(params)

  step_all = jax.vmap(one_step, in_axes=(0, 0, 0, None, None))

  def step(carry, inp):
    params, state, kl = step_all(*carry, sw, *inp)
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


def bandit_training(config, bandit, key, progress):
  ref = jnp.asarray(bandit["reference_logits"])
  rewards = jnp.asarray(bandit["rewards"])
  log_opt = model.optimum_logits(jax.nn.log_softmax(ref), rewards, config.beta)
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
  lp = model.sequence_log_probs(tables, all_tokens)
  lr = model.sequence_log_probs(ref_tables, all_tokens)
  return jnp.sum(jnp.exp(lp) * rewards) - beta * jaxdiv.kl_divergence(p_logits=lp, q_logits=lr)


@jax.jit
def _sequence_expected_gradients(switches, beta, tables, ref_tables, rewards, all_tokens):
  """Exact expected gradient of J of every variant (rows), by enumerating all sequences."""
  weight = jnp.exp(model.sequence_log_probs(tables, all_tokens))

  def per_variant(switch):
    def one(x):
      return jax.grad(sequence_loss)(tables, switch, beta, ref_tables, rewards, x[None], False)

    per = jax.vmap(one)(all_tokens)
    return jax.tree.map(lambda g: -jnp.tensordot(weight, g, axes=1), per)

  return jax.vmap(per_variant)(switches)


def sequence_task(config, seq, key, progress):
  beta = config.sequence_beta
  ref_tables = [jnp.asarray(t) for t in seq["reference_tables"]]
  rewards = jnp.asarray(seq["rewards"])
  all_tokens = model.all_sequences(config.num_tokens, config.horizon)
  log_ref_seq = model.sequence_log_probs(ref_tables, all_tokens)
  log_opt = model.optimum_logits(log_ref_seq, rewards, beta)

  tables = [jnp.asarray(t) for t in seq["gradient_tables"]]
  exact = model.flat(_sequence_exact_gradient(tables, ref_tables, rewards, all_tokens, beta))
  means = _sequence_expected_gradients(
    switches(SEQUENCE_VARIANTS), beta, tables, ref_tables, rewards, all_tokens
  )
  gradient = {}
  for i, v in enumerate(SEQUENCE_VARIANTS):
    mean = model.flat(jax.tree.map(lambda x, i=i: x[i], means))
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
  predicted = sequence_predictions(seq["reference_tables"], seq["rewards"], beta, optimum)
  training = {}
  for v in SEQUENCE_VARIANTS:
    probs = np.exp(np.asarray(model.sequence_log_probs(final[v], all_tokens)))
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


def bandit_predictions(bandit, optimum) -> dict:
  """Predicted KL(pi || pi*) at the end of training; None where no fixed point is known."""
  ref = model.np_softmax(bandit["reference_logits"])
  rewards, beta = np.asarray(bandit["rewards"]), bandit["beta"]
  out = {v: 0.0 for v in BANDIT_UNBIASED}
  out["k3_loss"] = model.kl(model.k3_fixed_point(ref, rewards, beta), optimum)
  out["k1_loss"] = model.kl(np.eye(len(rewards))[np.argmax(rewards)], optimum)  # the limit
  out["k3_reward"] = None
  return out


def sequence_predictions(ref_tables, rewards, beta, optimum) -> dict:
  conds = [np.stack([model.np_softmax(row) for row in tab]) for tab in ref_tables]
  per_token = model.backward_induction(conds, rewards, beta, model.per_token_fixed_point)
  out = {v: 0.0 for v in SEQUENCE_UNBIASED}
  for v in ("exact", "k2_loss", "k3_straight_through_loss"):
    out[v] = model.kl(per_token, optimum)
  k3 = model.backward_induction(conds, rewards, beta, model.k3_fixed_point)
  out["k3_loss"] = model.kl(k3, optimum)
  out["k1_loss"] = model.kl(np.eye(len(rewards))[np.argmax(rewards)], optimum)  # the limit
  out["k3_reward"] = None
  return out


def training_claims(prefix, training, unbiased, config, tol) -> dict:
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
