"""KL penalties in policy-gradient RL: which estimator, and where, against the exact optimum.

The configuration, the run that ties the parts together (estimators, clamps, lengths) and
records their claims, the report table and the command line; see the package docstring.
"""

from __future__ import annotations

import dataclasses

import jax

from experiments import _io
from experiments.kl_penalty import clamps, estimators, figures, lengths, model

NAME = "kl_penalty"


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0  # the one seed behind every draw (problem, samples, training)
  beta: float = 0.5  # bandit penalty weight
  num_actions: int = 6
  gradient_scale: float = 1.0  # spread of the part-(a) logits around the reference
  gradient_samples: int = 1_000_000  # per-sample gradients for part (a)
  chunk_size: int = 250_000
  batch_size: int = 64  # samples per update, both tasks (and the length task's batches)
  bandit_steps: int = 1500
  bandit_learning_rate: float = 0.05
  bandit_tolerance: float = 0.01  # nats: unbiased variants end within this KL of pi*
  sequence_beta: float = 0.5  # also the length task's
  horizon: int = 4
  num_tokens: int = 3
  sequence_steps: int = 3000
  sequence_learning_rate: float = 0.05
  sequence_tolerance: float = 0.02
  clamp_max_scale: float = 32.0  # clamps: the farthest policy, ref + s (gradient_logits - ref)
  clamp_num_scales: int = 8  # doubling distances s up to clamp_max_scale
  length_tokens: int = 3  # length task: tokens, the end token (0) included
  length_horizon: int = 6  # the longest sequence
  length_fixed_point_steps: int = 1000  # Adam steps on each mode's exact expected gradient
  length_learning_rate: float = 0.05
  length_fixed_point_tol: float = 1e-9  # nats: sequence-level modes' fixed points are pi*
  away_factor: float = 3.0  # biased variants end beyond this many tolerances
  fixed_point_rtol: float = 0.1  # and within this fraction of their predicted fixed point
  log_every: int = 500

  def __post_init__(self):
    positive_ints = (
      "gradient_samples",
      "chunk_size",
      "bandit_steps",
      "sequence_steps",
      "clamp_num_scales",
      "length_fixed_point_steps",
      "log_every",
    )
    for name in positive_ints:
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.chunk_size < self.num_actions:
      raise ValueError("chunk_size must be >= num_actions (the exact expectation is one chunk)")
    if self.batch_size < 2:
      raise ValueError(f"batch_size must be >= 2 (leave-one-out baselines), got {self.batch_size}")
    if self.num_actions < 2 or self.num_tokens < 2 or self.length_tokens < 2:
      raise ValueError("num_actions, num_tokens and length_tokens must be >= 2")
    if self.horizon < 3:
      raise ValueError(f"horizon must be >= 3, got {self.horizon}")
    if self.num_tokens**self.horizon > 4096:
      raise ValueError("num_tokens ** horizon must be <= 4096 (every sequence is enumerated)")
    if self.length_horizon < 2:
      raise ValueError(f"length_horizon must be >= 2, got {self.length_horizon}")
    if model.num_ended_sequences(self.length_tokens, self.length_horizon) > 4096:
      raise ValueError("the length task must have <= 4096 sequences (every one is enumerated)")
    floats = (
      "beta",
      "sequence_beta",
      "gradient_scale",
      "bandit_learning_rate",
      "sequence_learning_rate",
      "bandit_tolerance",
      "sequence_tolerance",
      "clamp_max_scale",
      "length_learning_rate",
      "length_fixed_point_tol",
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
  length_fixed_point_steps=400,
  log_every=400,
)


def run(config: Config, progress=None) -> dict:
  """Every part; a pure function of ``config`` (``progress`` only prints)."""
  jax.config.update("jax_enable_x64", True)
  progress = progress or (lambda msg: None)
  problems = model.problems(config)
  key = jax.random.key(config.seed)
  k_grad, k_bandit, k_seq = jax.random.split(key, 3)

  b = problems["bandit"]
  gradient_part, checks = estimators.bandit_gradients(config, b, k_grad, progress)
  training, optimum = estimators.bandit_training(config, b, k_bandit, progress)
  predicted = estimators.bandit_predictions({**b, "beta": config.beta}, optimum)
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
  sequence = estimators.sequence_task(config, problems["sequence"], k_seq, progress)
  clamp_part, clamp_checks = clamps.clamp_study(config, b)
  progress("clamps: exact moments and gradients along the drift")
  length_part, length_checks = lengths.length_study(config, problems["length"], progress)
  bandit, sequence = _io.to_jsonable(bandit), _io.to_jsonable(sequence)

  for v, row in sequence["gradient"].items():
    scale = sequence["exact_gradient_norm"]
    if row["theory_unbiased"]:
      checks[f"sequence/{v}/expected_gradient_unbiased"] = row["expected_bias_norm"] <= 1e-9 * scale
    else:
      checks[f"sequence/{v}/expected_gradient_biased"] = row["expected_bias_norm"] > 1e-3 * scale
  b_tol, s_tol = config.bandit_tolerance, config.sequence_tolerance
  unbiased = estimators.BANDIT_UNBIASED, estimators.SEQUENCE_UNBIASED
  checks |= estimators.training_claims("bandit", bandit["training"], unbiased[0], config, b_tol)
  checks |= estimators.training_claims("sequence", sequence["training"], unbiased[1], config, s_tol)
  checks |= clamp_checks | length_checks
  return {
    "all_claims_pass": all(checks.values()),
    "bandit": bandit,
    "claims": checks,
    "clamps": _io.to_jsonable(clamp_part),
    "config": dataclasses.asdict(config),
    "lengths": _io.to_jsonable(length_part),
    "sequence": sequence,
    "versions": _io.versions(),
  }


def table(results: dict) -> str:
  """The bias table (bandit), the final KL(pi_theta || pi*) per variant, the clamps' cost and
  each aggregation mode's fixed point, as Markdown."""
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

  for v in estimators.SEQUENCE_VARIANTS:
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

  c = results["clamps"]
  est, grads = c["estimates"], c["gradients"]
  lines += [
    "",
    "| scale | max log r | KL | k3 mean (verl/OpenRLHF clamps) | k3 std, clamped / not | "
    "binding mass | k3-loss grad bias, clamped / not | k3+ clamped grad bias |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for i, scale in enumerate(c["scales"]):
    lines.append(
      f"| {scale:g} | {c['max_log_ratio'][i]:.3g} | {c['exact_kl'][i]:.4g} | "
      f"{est['verl_k3']['mean'][i]:.4g} ({100 * est['verl_k3']['relative_bias'][i]:+.1f} %) | "
      f"{est['verl_k3']['std'][i]:.3g} / {est['k3']['std'][i]:.3g} | "
      f"{est['verl_k3']['binding_mass'][i]:.2g} | "
      f"{grads['verl_k3_loss']['bias_norm'][i]:.3g} / {grads['k3_loss']['bias_norm'][i]:.3g} | "
      f"{grads['verl_k3_straight_through_loss']['bias_norm'][i]:.1e} |"
    )
  ln = results["lengths"]
  lines += [
    "",
    f"lengths: pi* mean length {ln['optimum_mean_length']:.3f} "
    f"(reference {ln['reference_mean_length']:.3f})",
    "",
    "| mode | grad scale | sine to grad J | fixed point KL to pi* | mean length |",
    "|---|---|---|---|---|",
  ]
  for mode in lengths.MODES:
    r = ln["modes"][mode]
    lines.append(
      f"| {mode} | {r['expected_gradient_scale']:.4g} | {r['expected_gradient_sine']:.2g} | "
      f"{r['fixed_point_kl_to_optimum']:.3g} | {r['fixed_point_mean_length']:.3f} |"
    )
  failed = [k for k, ok in results["claims"].items() if not ok]
  lines.append(
    f"\nall claims pass: {results['all_claims_pass']}" + (f" (failed: {failed})" if failed else "")
  )
  return "\n".join(lines)


def main(argv=None) -> int:
  return _io.run_experiment(
    argv,
    name=NAME,
    config_cls=Config,
    quick=QUICK,
    run=run,
    plot=figures.plot,
    description=__doc__.splitlines()[0],
    report=table,
    ok=lambda r: r["all_claims_pass"],
  )
