"""The figures, drawn from the results alone (so a plot can be redrawn without rerunning)."""

from __future__ import annotations

import numpy as np

from experiments.kl_penalty import estimators, model
from experiments.kl_penalty.lengths import MODES

NAME = "kl_penalty"
FLOOR = 1e-17  # where a value that is 0 up to round-off is drawn on a log scale


def _ordered(rows: dict, order) -> list:
  """The variants of ``rows`` in the module's order (the JSON keeps them sorted)."""
  return [v for v in order if v in rows]


def plot(results: dict, out_dir) -> list:
  """Four figures from ``results`` alone; returns the written paths."""
  from experiments import plotting

  plt = plotting.pyplot()
  paths = []
  b, s, cfg = results["bandit"], results["sequence"], results["config"]
  colors = {v: f"C{i}" for i, v in enumerate(estimators.SEQUENCE_VARIANTS)}
  colors["k3_straight_through_loss"] = "0.55"  # C7 is black; k2_loss and k3+ coincide anyway

  fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13.5, 4.2), layout="constrained")
  vs = _ordered(b["gradient"], estimators.SEQUENCE_VARIANTS)
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
  svs = _ordered(s["gradient"], estimators.SEQUENCE_VARIANTS)
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
    for v in _ordered(task["training"], estimators.SEQUENCE_VARIANTS):
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
  ax1.plot(np.arange(k), model.np_softmax(b["reference_logits"]), "k--", lw=1, label="pi_ref")
  bvs = _ordered(b["training"], estimators.SEQUENCE_VARIANTS)
  for i, v in enumerate(bvs):
    shift = (i - (len(bvs) - 1) / 2) * 0.09
    q = model.np_softmax(b["training"][v]["final_logits"])
    ax1.plot(np.arange(k) + shift, q, "o", ms=4, color=colors[v])
  ax1.set_xlabel("action")
  ax1.set_ylabel("probability")
  ax1.set_title("bandit: final policies against pi*")
  ax1.legend(loc="upper right", fontsize=7)
  opt_s = np.asarray(s["optimum_sequence_probs"])
  order = np.argsort(-opt_s, kind="stable")
  n = len(opt_s)
  ax2.bar(np.arange(n), opt_s[order], color="0.85", width=1.0, label="pi*")
  for v in _ordered(s["training"], estimators.SEQUENCE_VARIANTS):
    q = np.asarray(s["training"][v]["final_sequence_probs"])[order]
    ax2.plot(np.arange(n), q, ".", ms=4, color=colors[v], label=v)
  ax2.set_yscale("log")
  ax2.set_ylim(max(1e-10, 0.1 * opt_s.min()), 2.0)
  ax2.set_xlabel("sequence (sorted by pi*)")
  ax2.set_ylabel("probability")
  ax2.set_title("sequences: final policies against pi*")
  fig.legend(*ax2.get_legend_handles_labels(), loc="outside right center", fontsize=8)
  paths += plotting.save(fig, out_dir, f"{NAME}_policies")
  paths += _clamps_and_lengths(plt, plotting, results, out_dir)
  return paths


def _clamps_and_lengths(plt, plotting, results, out_dir) -> list:
  """The clamps along the drift (top) and the aggregation modes on varied lengths (bottom)."""
  c, ln = results["clamps"], results["lengths"]
  est, grads = c["estimates"], c["gradients"]
  x = np.asarray(c["scales"])
  fig, axes = plt.subplots(2, 3, figsize=(14.0, 8.4), layout="constrained")
  binding = np.asarray(est["verl_k3"]["binding_mass"]) > 0
  ratio_binds = np.asarray(c["max_log_ratio"]) > 20

  def marks(ax):
    if binding.any():
      ax.axvline(x[binding][0], color="0.6", ls=":", lw=1, label="k3 clip (10) starts to bind")
    if ratio_binds.any():
      ax.axvline(x[ratio_binds][0], color="0.6", ls="--", lw=1, label="log-ratio clip (20) binds")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("distance s: logits ref + s (theta - ref)")

  ax = axes[0, 0]
  ax.plot(x, c["exact_kl"], "k-", lw=1.5, label="exact KL(pi || pi_ref)")
  ax.plot(x, est["k3"]["mean"], "o", color="C0", ms=5, mfc="none", label="mean k3, no clamp")
  ax.plot(x, est["verl_k3"]["mean"], "s-", color="C3", ms=4, label="mean k3, verl = OpenRLHF")
  ax.plot(x, est["openrlhf_k1"]["mean"], "^--", color="C1", ms=4, label="mean k1, OpenRLHF")
  marks(ax)
  ax.set_ylabel("nats")
  ax.set_title("clamps: the mean estimate against the KL")
  ax.legend(fontsize=7, loc="upper left")

  ax = axes[0, 1]
  ax.plot(x, est["k3"]["std"], "o-", color="C0", ms=4, label="k3, no clamp")
  ax.plot(x, est["verl_k3"]["std"], "s-", color="C3", ms=4, label="k3, clamped")
  ax.plot(x, est["openrlhf_k1"]["std"], "^--", color="C1", ms=4, label="k1, clamped")
  marks(ax)
  ax.set_yscale("log")
  ax.set_ylabel("per-sample standard deviation (nats)")
  ax.set_title("clamps: what they buy (the spread)")
  ax.legend(fontsize=7, loc="upper left")

  ax = axes[0, 2]
  ax.plot(x, c["exact_kl_gradient_norm"], "k:", lw=1.5, label="|grad KL(pi || pi_ref)|")
  for name, style, color in (
    ("k3_loss", "o-", "C0"),
    ("verl_k3_loss", "s-", "C3"),
    ("verl_k3_straight_through_loss", "D--", "0.4"),
    ("openrlhf_k1_reward", "^--", "C1"),
  ):
    bias = np.maximum(np.asarray(grads[name]["bias_norm"]), FLOOR)
    ax.plot(x, bias, style, color=color, ms=4, label=name)
  marks(ax)
  ax.set_yscale("log")
  ax.set_ylim(0.3 * FLOOR, 10)
  ax.set_ylabel("|E grad penalty - grad KL(pi || pi_ref)|")
  ax.set_title("clamps: bias of the expected penalty gradient")
  ax.legend(fontsize=7, loc="center left")

  rows = [ln["modes"][m] for m in MODES]
  xm = np.arange(len(MODES))
  colors = ["C2" if r["gives_sequence_level_gradient"] else "C3" for r in rows]
  ax = axes[1, 0]
  ax.bar(xm, [max(r["expected_gradient_sine"], FLOOR) for r in rows], color=colors)
  for i, r in enumerate(rows):
    if r["gives_sequence_level_gradient"]:
      ax.text(i, 3e-15, f"{r['sequence_level_scale']:.3g} x grad J", ha="center", fontsize=7)
  ax.set_yscale("log")
  ax.set_ylim(0.3 * FLOOR, 3)
  ax.set_xticks(xm, MODES, rotation=30, ha="right")
  ax.set_ylabel("sine of the angle to grad J")
  ax.set_title(f"aggregation: expected gradient (batches of {ln['batch_size']})")

  ax = axes[1, 1]
  ax.bar(xm, [max(r["fixed_point_kl_to_optimum"], FLOOR) for r in rows], color=colors)
  for i, r in enumerate(rows):
    if r["gives_sequence_level_gradient"]:
      ax.text(i, 3e-15, "pi*, to\nround-off", ha="center", fontsize=7)
  tol = results["config"]["sequence_tolerance"]
  ax.axhline(tol, color="k", ls=":", lw=1, label="training tolerance")
  ax.set_yscale("log")
  ax.set_ylim(0.3 * FLOOR, 3)
  ax.set_xticks(xm, MODES, rotation=30, ha="right")
  ax.set_ylabel("KL(fixed point || pi*) (nats)")
  ax.set_title("aggregation: where each mode ends")
  ax.legend(fontsize=7, loc="upper left")

  ax = axes[1, 2]
  lengths = np.arange(1, ln["horizon"] + 1)
  ax.plot(lengths, ln["optimum_length_probs"], "k-", lw=2, label="pi*")
  ax.plot(lengths, ln["reference_length_probs"], "k--", lw=1, label="pi_ref")
  for i, (m, r) in enumerate(zip(MODES, rows, strict=True)):
    ax.plot(lengths, r["fixed_point_length_probs"], "o:", ms=6 - i, lw=1, label=m)
  ax.set_xlabel("sequence length (tokens, the end token included)")
  ax.set_ylabel("probability")
  ax.set_title("aggregation: lengths at each fixed point")
  ax.legend(fontsize=7, loc="upper left")
  return plotting.save(fig, out_dir, f"{NAME}_clamps_lengths")
