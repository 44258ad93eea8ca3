"""What the trainers' clamps cost once the policy drifts: the bandit policy moved along one
direction away from the reference, with every expectation taken exactly over the actions.

verl's ``low_var_kl`` clamps log r to (-20, 20) and k3 to (-10, 10); OpenRLHF clamps every
estimate to (-10, 10). k3 > 10 where log r > 2.6 (the reference is 13 times likelier than
the policy), so the clamp binds first on actions the policy has nearly abandoned. Such an
action carries pi_i k3_i ~ pi_ref_i of the KL on a probability pi_i: rare but heavy samples,
which the clamp cuts (a lower, biased estimate with a bounded spread). The log-ratio clip
never changes k3's value or gradient (k3 > 10 wherever |log r| > 20): verl's and OpenRLHF's
k3 agree; it only keeps torch's ``exp`` finite. k1's clamp binds where |log r| > 10, on
actions whose probability is below e^-10 of the reference's (or above e^10 of it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiv

# name: (estimator, log_ratio_clip, clip)
ESTIMATES = {
  "k3": ("k3", None, None),
  "verl_k3": ("k3", (-20, 20), (-10, 10)),  # verl's low_var_kl
  "openrlhf_k3": ("k3", None, (-10, 10)),
  "k1": ("k1", None, None),
  "openrlhf_k1": ("k1", None, (-10, 10)),  # OpenRLHF's default, in the reward
}
# name: (estimate, where the penalty goes, straight_through)
GRADIENTS = {
  "k3_loss": ("k3", "loss", False),
  "verl_k3_loss": ("verl_k3", "loss", False),
  "openrlhf_k3_loss": ("openrlhf_k3", "loss", False),
  "k3_straight_through_loss": ("k3", "loss", True),
  "verl_k3_straight_through_loss": ("verl_k3", "loss", True),  # verl's "k3+"
  "k1_reward": ("k1", "reward", False),
  "openrlhf_k1_reward": ("openrlhf_k1", "reward", False),
}
CLAMPED = ("verl_k3", "openrlhf_k3", "openrlhf_k1")


def scales(config) -> np.ndarray:
  """Doubling distances from the reference, the largest ``clamp_max_scale``."""
  n = config.clamp_num_scales
  return config.clamp_max_scale * 2.0 ** np.arange(1 - n, 1)


def _estimate(name, log_ref, log_pol, straight_through=False):
  estimator, log_ratio_clip, clip = ESTIMATES[name]
  return jaxdiv.kl_estimate(
    log_ref,
    log_pol,
    estimator=estimator,
    straight_through=straight_through,
    log_ratio_clip=log_ratio_clip,
    clip=clip,
  )


@jax.jit
def _at(theta, ref):
  """Exact moments of every estimate and expected penalty gradients at the policy ``theta``."""
  log_ref = jax.nn.log_softmax(ref)
  log_pol = jax.nn.log_softmax(theta)
  pi = jnp.exp(log_pol)
  ell = log_pol - log_ref
  out = {
    "exact_kl": jaxdiv.kl_divergence(p_logits=theta, q_logits=ref),
    "exact_kl_gradient": pi * (ell - pi @ ell),  # d/dtheta KL(pi || pi_ref)
    "max_log_ratio": jnp.max(-ell),
  }
  plain = {"k3": _estimate("k3", log_ref, log_pol), "k1": _estimate("k1", log_ref, log_pol)}
  for name, (estimator, _, _) in ESTIMATES.items():
    k = _estimate(name, log_ref, log_pol)
    mean = pi @ k
    out[f"{name}/mean"] = mean
    out[f"{name}/std"] = jnp.sqrt(pi @ (k - mean) ** 2)
    out[f"{name}/binding_mass"] = pi @ (k != plain[estimator])

  for name, (est, place, st) in GRADIENTS.items():
    if place == "loss":  # samples held fixed, the estimate differentiated

      def penalty(t, est=est, st=st):
        lp = jax.nn.log_softmax(t)
        return jax.lax.stop_gradient(jnp.exp(lp)) @ _estimate(est, log_ref, lp, st)

    else:  # only the value, through the score function

      def penalty(t, est=est):
        return jax.nn.softmax(t) @ jax.lax.stop_gradient(_estimate(est, log_ref, log_pol))

    out[f"{name}/gradient"] = jax.grad(penalty)(theta)
  return out


def clamp_study(config, bandit) -> tuple[dict, dict]:
  """Every estimate and penalty gradient along ``ref + s (gradient_logits - ref)``."""
  ref = jnp.asarray(bandit["reference_logits"])
  direction = jnp.asarray(bandit["gradient_logits"]) - ref
  s_all = scales(config)
  rows = [jax.tree.map(np.asarray, _at(ref + s * direction, ref)) for s in s_all]
  col = {k: np.array([r[k] for r in rows]) for k in rows[0]}
  kl, grad_kl = col["exact_kl"], col["exact_kl_gradient"]
  grad_norm = np.linalg.norm(grad_kl, axis=1)
  estimates = {}
  for name, (estimator, log_ratio_clip, clip) in ESTIMATES.items():
    mean = col[f"{name}/mean"]
    estimates[name] = {
      "binding_mass": col[f"{name}/binding_mass"],
      "clip": clip,
      "estimator": estimator,
      "log_ratio_clip": log_ratio_clip,
      "mean": mean,
      "relative_bias": (mean - kl) / kl,
      "std": col[f"{name}/std"],
    }
  unclamped = {(e, p, st): n for n, (e, p, st) in GRADIENTS.items() if e in ("k1", "k3")}
  gradients = {}
  for name, (est, place, st) in GRADIENTS.items():
    g = col[f"{name}/gradient"]
    plain = col[f"{unclamped[ESTIMATES[est][0], place, st]}/gradient"]
    gradients[name] = {
      "bias_norm": np.linalg.norm(g - grad_kl, axis=1),  # against d KL(pi || pi_ref)
      "clamp_shift_norm": np.linalg.norm(g - plain, axis=1),  # against the unclamped one
      "estimate": est,
      "place": place,
      "straight_through": st,
    }

  checks = {}
  k3_err = np.abs(estimates["k3"]["mean"] - kl)
  checks["clamps/k3/mean_equals_exact_kl"] = bool(np.all(k3_err <= 1e-9 * kl))
  for name in CLAMPED:
    row, plain = estimates[name], estimates[ESTIMATES[name][0]]
    idle, binding = row["binding_mass"] == 0, row["binding_mass"] > 0
    checks[f"clamps/{name}/mean_exact_where_idle"] = bool(
      np.all(row["mean"][idle] == plain["mean"][idle])
    )
    if row["estimator"] == "k3":  # k3 >= 0: only the upper clip can bind, so it lowers k3
      checks[f"clamps/{name}/mean_below_kl_where_binding"] = bool(
        np.all(row["mean"][binding] < kl[binding])
      )
  checks["clamps/verl_k3_equals_openrlhf_k3"] = bool(
    np.array_equal(estimates["verl_k3"]["mean"], estimates["openrlhf_k3"]["mean"])
    and np.array_equal(col["verl_k3_loss/gradient"], col["openrlhf_k3_loss/gradient"])
  )
  checks["clamps/some_scale_binds"] = bool(np.any(estimates["verl_k3"]["binding_mass"] > 0))
  checks["clamps/log_ratio_clip_binds_at_largest_scale"] = bool(col["max_log_ratio"][-1] > 20)
  st = gradients["verl_k3_straight_through_loss"]["bias_norm"]
  checks["clamps/verl_k3_straight_through_loss/gradient_unbiased"] = bool(
    np.all(st <= 1e-9 * grad_norm)
  )
  binding = estimates["verl_k3"]["binding_mass"] > 0
  shift = gradients["verl_k3_loss"]["clamp_shift_norm"]
  checks["clamps/verl_k3_loss/gradient_changes_exactly_where_binding"] = bool(
    np.all(shift[~binding] == 0) and np.all(shift[binding] > 1e-6 * grad_norm[binding])
  )
  part = {
    "direction": "gradient_logits - reference_logits",
    "estimates": estimates,
    "exact_kl": kl,
    "exact_kl_gradient_norm": grad_norm,
    "gradients": gradients,
    "max_log_ratio": col["max_log_ratio"],
    "scales": s_all,
  }
  return part, checks
