r"""Minimising cross-entropy and minimising KL reach the same optimum -- and where they don't.

    python -m experiments.ce_vs_kl --out results --figures docs/figures

With the target p fixed, :math:`H(p, q) = H(p) + \mathrm{KL}(p \| q)` and H(p) does not
depend on the model q, so the two losses differ by a constant and have the same gradients.
This module fits a linear softmax model (weights and bias) with optax twice, from the same
initial parameters with the same optimiser: once minimising ``jaxdiv.cross_entropy``, once
``jaxdiv.kl_divergence`` (both averaged over the batch), full-batch, on three tasks:

* ``teacher``: Gaussian inputs labelled with the soft probabilities of a random linear
  softmax teacher (the model class contains the target; H(p) > 0).
* ``digits-onehot``: scikit-learn's bundled 8x8 digits (no download), standardised, a fixed
  train/test split from the seed, one-hot targets (H(p) = 0: CE and KL coincide).
* ``digits-soft``: the same data with label-smoothed targets
  (:math:`p = (1 - \alpha)\,\mathrm{onehot} + \alpha / K`; H(p) > 0).

Each task records, per step and for both runs, CE and KL over the full training set, the
batch-mean target entropy H(p), ``max |CE - KL - H(p)|`` over all steps and
``max |theta_CE - theta_KL|`` over all steps and parameters.

The second half puts the optimised distribution in the *first* argument: a free categorical
q (softmax of free logits) is fitted to a fixed two-mode target p by minimising CE(q, p) and,
separately, KL(q || p) = CE(q, p) - H(q). CE collapses onto p's mode; KL recovers p.

Results go to ``OUT/ce_vs_kl.json`` (sorted keys; byte-identical on a rerun on the same
machine), figures to ``FIGURES/ce_vs_kl_{losses,checks,mode_collapse}.{png,pdf}``.
``--quick`` runs a tiny configuration in seconds; ``--devices N`` shards the batch over N
devices with ``jax.sharding`` (on CPU, set
``XLA_FLAGS=--xla_force_host_platform_device_count=N``); ``--plot-only`` redraws the figures
from an existing results file.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jaxdiv
from experiments import _io

try:
  import optax
except ModuleNotFoundError as e:  # the `experiments` extra is not installed
  raise _io.missing_extra(e, "ce_vs_kl") from None

NAME = "ce_vs_kl"
TASKS = ("teacher", "digits-onehot", "digits-soft")
OPTIMIZERS = ("adam", "sgd")

COLLAPSE_EXPLANATION = (
  "With q optimised in the first argument, CE(q, p) = KL(q||p) + H(q): the entropy term is no "
  "longer a constant, it rewards a low-entropy q. CE is linear in q, so its minimum over the "
  "simplex is the vertex on p's mode (H(q) -> 0), while KL(q||p) >= 0 is minimised exactly at "
  "q = p."
)


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = 0  # the one seed behind every random draw (data, split, teacher, init)
  steps: int = 1500  # full-batch optimiser steps per run
  optimizer: str = "adam"  # "adam" or "sgd"
  learning_rate: float = 0.05
  teacher_samples: int = 4096
  teacher_features: int = 16
  teacher_classes: int = 8
  teacher_scale: float = 1.0  # scale of the teacher's logits (sets H(p))
  label_smoothing: float = 0.1  # alpha for digits-soft
  target_form: str = "logits"  # how targets reach jaxdiv: "logits" (log p) or "probs"
  compare_forms: bool = True  # also run the other target form and record its checks
  test_fraction: float = 0.25  # digits held out for test accuracy
  collapse_categories: int = 40
  collapse_steps: int = 2000
  collapse_learning_rate: float = 0.1
  log_every: int = 500  # a progress line (and a host sync) every this many steps
  devices: int = 1  # shard the batch over this many devices (data parallel)

  def __post_init__(self):
    positive = ("steps", "teacher_samples", "teacher_features", "log_every", "devices")
    for name in positive + ("collapse_steps",):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    if self.teacher_classes < 2 or self.collapse_categories < 2:
      raise ValueError("teacher_classes and collapse_categories must be >= 2")
    if self.target_form not in ("logits", "probs"):
      raise ValueError(f"target_form must be 'logits' or 'probs', got {self.target_form!r}")
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
    for name in ("learning_rate", "collapse_learning_rate", "teacher_scale"):
      if not getattr(self, name) > 0:
        raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
    if not 0 < self.label_smoothing < 1:
      raise ValueError(f"label_smoothing must be in (0, 1), got {self.label_smoothing}")
    if not 0 < self.test_fraction < 1:
      raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


QUICK = dict(steps=60, teacher_samples=256, collapse_steps=300, log_every=31, compare_forms=False)
HELP = {
  "seed": "the one seed behind every random draw (data, split, teacher, init)",
  "steps": "full-batch optimiser steps per run (>= 1)",
  "optimizer": "the optimiser of both runs",
  "learning_rate": "learning rate of both runs (> 0)",
  "teacher_samples": "inputs of the teacher task (>= 1)",
  "teacher_features": "input dimension of the teacher task (>= 1)",
  "teacher_classes": "classes of the teacher task (>= 2)",
  "teacher_scale": "scale of the teacher's logits, which sets H(p) (> 0)",
  "label_smoothing": "alpha of the digits-soft targets, in (0, 1)",
  "target_form": "how targets reach jaxdiv: logits (log p) or probabilities",
  "compare_forms": "also run the other target form and record its checks",
  "test_fraction": "share of the digits held out for test accuracy, in (0, 1)",
  "collapse_categories": "categories of the mode-collapse target (>= 2)",
  "collapse_steps": "optimiser steps of the mode-collapse fits (>= 1)",
  "collapse_learning_rate": "learning rate of the mode-collapse fits (> 0)",
  "log_every": "a progress line (and a host sync) every this many steps (>= 1)",
  "devices": "shard the batch over this many devices (data parallel; >= 1)",
}
CHOICES = {"optimizer": OPTIMIZERS, "target_form": ("logits", "probs")}


# ---------------------------------------------------------------------------
# Data (numpy, float64 draws from the seed, cast to float32 once)
# ---------------------------------------------------------------------------


def _softmax64(z):
  z = z - z.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _make_tasks(config: Config) -> dict:
  """Every task's arrays: x, p (targets as probabilities), optional test set, init params."""
  from sklearn.datasets import load_digits

  rng = np.random.default_rng(config.seed)
  f32 = np.float32
  n, d, k = config.teacher_samples, config.teacher_features, config.teacher_classes
  x = rng.standard_normal((n, d))
  w_t = rng.standard_normal((d, k)) * config.teacher_scale / math.sqrt(d)
  b_t = rng.standard_normal(k) * config.teacher_scale
  tasks = {"teacher": {"x": x.astype(f32), "p": _softmax64(x @ w_t + b_t).astype(f32)}}

  digits = load_digits()
  xd, yd = digits.data, digits.target
  order = rng.permutation(len(yd))
  n_test = int(round(config.test_fraction * len(yd)))
  test, train = order[:n_test], order[n_test:]
  mean, std = xd[train].mean(0), xd[train].std(0)
  std = np.where(std > 0, std, 1.0)  # constant pixels (the corners) stay 0
  xd = ((xd - mean) / std).astype(f32)
  onehot = np.eye(10)[yd]
  alpha = config.label_smoothing
  smooth = (1 - alpha) * onehot + alpha / 10
  for name, p in (("digits-onehot", onehot), ("digits-soft", smooth)):
    tasks[name] = {
      "x": xd[train],
      "p": p[train].astype(f32),
      "x_test": xd[test],
      "y_test": yd[test].astype(np.int32),
    }
  for name in TASKS:  # the same small random init for both runs of a task
    d_in, k_out = tasks[name]["x"].shape[1], tasks[name]["p"].shape[1]
    tasks[name]["init"] = {
      "b": np.zeros(k_out, f32),
      "w": (0.01 * rng.standard_normal((d_in, k_out))).astype(f32),
    }
  return tasks


def _collapse_target(k: int) -> np.ndarray:
  """A fixed two-mode target over k categories: a taller bump at 25 %, a lower one at 70 %."""
  i = np.arange(k)
  bump = lambda c, s: np.exp(-0.5 * ((i - c * (k - 1)) / s) ** 2)  # noqa: E731
  p = 0.6 * bump(0.25, 0.06 * k) + 0.4 * bump(0.7, 0.08 * k) + 1e-3
  return (p / p.sum()).astype(np.float32)


# ---------------------------------------------------------------------------
# Training: both runs in one jitted lax.scan, chunked for progress lines
# ---------------------------------------------------------------------------


@functools.lru_cache
def _optimizer(name: str, lr: float):
  """One optimiser object per (name, rate): a static argument, so tasks share compilations."""
  return {"adam": optax.adam, "sgd": optax.sgd}[name](lr)


def _losses(params, data, form):
  """Batch-mean CE(p, q) and KL(p || q) for the model q = softmax(x w + b).

  ``form`` says how the target reaches jaxdiv: ``"probs"`` passes p as probabilities,
  ``"logits"`` passes log p as ``p_logits`` (-inf where p = 0).
  """
  x, target, weight, n = data
  logits = x @ params["w"] + params["b"]
  if form == "logits":
    ce = jaxdiv.cross_entropy(p_logits=target, q_logits=logits)
    kl = jaxdiv.kl_divergence(p_logits=target, q_logits=logits)
  else:
    ce = jaxdiv.cross_entropy(target, q_logits=logits)
    kl = jaxdiv.kl_divergence(target, q_logits=logits)
  return jnp.sum(weight * ce) / n, jnp.sum(weight * kl) / n


def _max_abs_diff(a, b):
  leaves = jax.tree.leaves(jax.tree.map(lambda u, v: jnp.max(jnp.abs(u - v)), a, b))
  return functools.reduce(jnp.maximum, leaves)


def _centred(params):
  """Parameters with their mean over classes removed: softmax(z + c) = softmax(z), so the
  class-mean of w and b is a direction the loss cannot see."""
  return jax.tree.map(lambda v: v - jnp.mean(v, axis=-1, keepdims=True), params)


def _diffs(th_ce, th_kl):
  return {
    "param_diff": _max_abs_diff(th_ce, th_kl),
    "centred_param_diff": _max_abs_diff(_centred(th_ce), _centred(th_kl)),
  }


@functools.partial(jax.jit, static_argnames=("opt", "length", "form"))
def _train_chunk(carry, data, active, *, opt, length, form):
  """``length`` steps of both runs; per step the metrics at the parameters before the update.

  A step with ``active[t]`` false records the metrics but keeps the parameters: every chunk
  has the same length (one compilation) and the last row is the final parameters' metrics.
  """

  def ce_loss(th):  # (CE, KL), differentiating CE
    return _losses(th, data, form)

  def kl_loss(th):  # (KL, CE), differentiating KL
    return _losses(th, data, form)[::-1]

  def update(grads, state, params, on):
    updates, new_state = opt.update(grads, state, params)
    new = (optax.apply_updates(params, updates), new_state)
    return jax.tree.map(lambda a, b: jnp.where(on, a, b), new, (params, state))

  def step(carry, on):
    th_ce, st_ce, th_kl, st_kl = carry
    (ce_c, kl_c), g_ce = jax.value_and_grad(ce_loss, has_aux=True)(th_ce)
    (kl_k, ce_k), g_kl = jax.value_and_grad(kl_loss, has_aux=True)(th_kl)
    metrics = {
      "ce_run/ce": ce_c,
      "ce_run/kl": kl_c,
      "kl_run/ce": ce_k,
      "kl_run/kl": kl_k,
      "grad_diff": _max_abs_diff(g_ce, g_kl),
      **_diffs(th_ce, th_kl),
    }
    th_ce, st_ce = update(g_ce, st_ce, th_ce, on)
    th_kl, st_kl = update(g_kl, st_kl, th_kl, on)
    return (th_ce, st_ce, th_kl, st_kl), metrics

  x, target, weight, n = data
  h = jaxdiv.entropy(logits=target) if form == "logits" else jaxdiv.entropy(target)
  # H(p) of the distribution jaxdiv sees (from logits, softmax(log p): p renormalised).
  carry, metrics = lax.scan(step, carry, active, length=length)
  return carry, metrics, jnp.sum(weight * h) / n


def _mesh(devices: int):
  available = jax.devices()
  if devices > len(available):
    raise ValueError(
      f"--devices {devices} but only {len(available)} {available[0].platform} device(s) are "
      f"visible (on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count={devices})"
    )
  mesh = Mesh(np.array(available[:devices]), ("data",))
  return NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())


def _fit(name, task, config, form, progress) -> dict:
  """Both runs of one task with the target passed as ``form``; per-step lists and checks."""
  batch, replicated = _mesh(config.devices)
  x, p = task["x"], task["p"]
  n = x.shape[0]
  # Pad the batch to a multiple of the device count with zero-weight rows (zero inputs, a
  # uniform target): they add exactly 0 to the sums, and the mean still divides by n.
  pad = -n % config.devices
  weight = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  x = np.concatenate([x, np.zeros((pad, x.shape[1]), np.float32)])
  p = np.concatenate([p, np.full((pad, p.shape[1]), 1 / p.shape[1], np.float32)])
  if form == "logits":
    with np.errstate(divide="ignore"):
      target = np.log(p)  # -inf where p = 0 (one-hot targets)
  else:
    target = p
  data = (
    jax.device_put(x, batch),
    jax.device_put(target, batch),
    jax.device_put(weight, batch),
    jax.device_put(np.float32(n), replicated),
  )

  opt = _optimizer(config.optimizer, config.learning_rate)
  init = task["init"]
  carry = jax.device_put((init, opt.init(init), init, opt.init(init)), replicated)
  # Rows for the parameters before each step and after the last: steps + 1 of them, in
  # equal chunks (one compilation), with a progress line and host sync after each chunk.
  n_chunks = -(-(config.steps + 1) // config.log_every)
  length = -(-(config.steps + 1) // n_chunks)
  chunks = []
  for c in range(n_chunks):
    active = np.arange(c * length, (c + 1) * length) < config.steps
    carry, metrics, h = _train_chunk(carry, data, active, opt=opt, length=length, form=form)
    chunks.append(metrics)
    progress(
      f"{name} ({form} targets): step {min((c + 1) * length, config.steps)}/{config.steps}  "
      f"CE {float(metrics['ce_run/ce'][-1]):.5f}  KL {float(metrics['kl_run/kl'][-1]):.5f}"
    )
  rows = {
    k: np.concatenate([np.asarray(c[k]) for c in chunks])[: config.steps + 1] for k in chunks[0]
  }
  grad_diff = rows.pop("grad_diff")[: config.steps]
  h = float(h)
  th_ce, th_kl = jax.device_get((carry[0], carry[2]))
  q_ce, q_kl = (_softmax64(task["x"] @ th["w"] + th["b"]) for th in (th_ce, th_kl))

  gaps = [rows[f"{r}/ce"].astype(np.float64) - rows[f"{r}/kl"] - h for r in ("ce_run", "kl_run")]
  out = {
    "target_form": form,
    "target_entropy": h,
    "max_gap_error": float(max(np.max(np.abs(g)) for g in gaps)),
    # float32 round-off scale of the logged numbers: a few ulps of the largest CE.
    "gap_tolerance": float(16 * np.finfo(np.float32).eps * np.max(rows["ce_run/ce"])),
    "max_param_diff": float(np.max(rows["param_diff"])),
    "max_centred_param_diff": float(np.max(rows["centred_param_diff"])),
    "max_grad_diff": float(np.max(grad_diff)),
    "final_max_prob_diff": float(np.max(np.abs(q_ce - q_kl))),
    "bitwise_identical": bool(np.all(rows["param_diff"] == 0)),
    "param_diff": rows["param_diff"],
  }
  for r, params in (("ce_run", th_ce), ("kl_run", th_kl)):
    run = {"ce": rows[f"{r}/ce"], "kl": rows[f"{r}/kl"]}
    if "x_test" in task:
      pred = np.argmax(task["x_test"] @ params["w"] + params["b"], axis=-1)
      run["test_accuracy"] = float(np.mean(pred == task["y_test"]))
      run["n_test"] = len(task["y_test"])
    out[r] = run
  return out


@functools.partial(jax.jit, static_argnames=("lr", "steps"))
def _collapse_fit(p, *, lr, steps):
  """Adam on free logits z, q = softmax(z), from the uniform q; CE(q, p) and KL(q || p)."""
  log_p = jnp.log(p)
  ce = lambda z: jaxdiv.cross_entropy(p_logits=z, q_logits=log_p)  # noqa: E731  CE(q, p)
  kl = lambda z: jaxdiv.kl_divergence(p_logits=z, q_logits=log_p)  # noqa: E731  KL(q || p)
  losses = {"ce_run": ce, "kl_run": kl}
  opt = optax.adam(lr)

  def step(zs, _):
    out, metrics = {}, {}
    for run, (z, state) in zs.items():
      metrics[run] = {"ce": ce(z), "kl": kl(z), "entropy": jaxdiv.entropy(logits=z)}
      updates, state = opt.update(jax.grad(losses[run])(z), state, z)
      out[run] = (optax.apply_updates(z, updates), state)
    return out, metrics

  z0 = jnp.zeros_like(p)
  zs, metrics = lax.scan(step, {r: (z0, opt.init(z0)) for r in losses}, None, length=steps)
  mode = jnp.argmax(p)
  result = {"target": p, "target_entropy": jaxdiv.entropy(p), "target_mode": mode}
  for run, (z, _) in zs.items():
    q = jax.nn.softmax(z)
    result[run] = {
      **metrics[run],
      "q": q,
      "argmax": jnp.argmax(q),
      "mass_on_mode": q[mode],
      "final_entropy": jaxdiv.entropy(logits=z),
      "final_kl": kl(z),
      "max_abs_q_minus_p": jnp.max(jnp.abs(q - p)),
    }
  return result


def _collapse(config: Config, progress) -> dict:
  """Fit a free categorical q to a fixed two-mode p with q in the FIRST argument."""
  p = _collapse_target(config.collapse_categories)
  fit = _collapse_fit(p, lr=config.collapse_learning_rate, steps=config.collapse_steps)
  result = _io.to_jsonable(fit)
  result["explanation"] = COLLAPSE_EXPLANATION
  progress(
    f"mode collapse: H(p) {result['target_entropy']:.4f}  H(q_CE) "
    f"{result['ce_run']['final_entropy']:.4f}  max|q_KL - p| "
    f"{result['kl_run']['max_abs_q_minus_p']:.2e}"
  )
  return result


TARGET_DESCRIPTION = {
  "teacher": "softmax(x W_t + b_t) of a random linear teacher",
  "digits-onehot": "one-hot labels",
  "digits-soft": "label smoothing: (1 - alpha) onehot + alpha / 10",
}


def run(config: Config, progress=None) -> dict:
  """Both halves of the experiment; a pure function of ``config`` (``progress`` only prints)."""
  progress = progress or (lambda msg: None)
  _mesh(config.devices)  # fail early on a device count we cannot honour
  tasks = _make_tasks(config)
  other = {"logits": "probs", "probs": "logits"}[config.target_form]
  results = {"tasks": {}}
  for name in TASKS:
    res = _fit(name, tasks[name], config, config.target_form, progress)
    res["target"] = TARGET_DESCRIPTION[name]
    if config.compare_forms:
      alt = _fit(name, tasks[name], config, other, progress)
      for r in ("ce_run", "kl_run"):  # keep the checks and accuracies, not the curves
        alt[r] = {k: v for k, v in alt[r].items() if k not in ("ce", "kl")}
      res["other_form"] = alt
    results["tasks"][name] = _io.to_jsonable(res)
  results["mode_collapse"] = _collapse(config, progress)
  results["claims"] = _claims(results)
  results["config"] = dataclasses.asdict(config)
  results["versions"] = _io.versions()
  results["platform"] = jax.devices()[0].platform
  return results


def _claims(results) -> dict:
  """The experiment's own checks, as booleans recorded in the results."""
  tasks = results["tasks"].values()
  mc = results["mode_collapse"]
  return {
    "gap_equals_target_entropy": all(t["max_gap_error"] <= t["gap_tolerance"] for t in tasks),
    "parameters_agree": all(t["max_param_diff"] <= 1e-6 for t in tasks),
    "bitwise_identical": all(t["bitwise_identical"] for t in tasks),
    "ce_collapses_onto_mode": mc["ce_run"]["argmax"] == mc["target_mode"]
    and mc["ce_run"]["final_entropy"] < 0.1 * mc["target_entropy"],
    "kl_recovers_target": mc["kl_run"]["max_abs_q_minus_p"] < 1e-3,
  }


# ---------------------------------------------------------------------------
# Figures (from the results only)
# ---------------------------------------------------------------------------


def plot(results: dict, out_dir) -> list:
  """The three figures, drawn from ``results`` alone; returns the written paths."""
  from experiments import plotting

  plt = plotting.pyplot()
  paths = []
  tasks = {k: results["tasks"][k] for k in TASKS if k in results["tasks"]}

  fig, axes = plt.subplots(1, len(tasks), figsize=(12.0, 3.8), layout="constrained")
  for ax, (name, t) in zip(axes, tasks.items(), strict=True):
    h = t["target_entropy"]
    steps = np.arange(len(t["ce_run"]["ce"]))
    ax.plot(steps, t["ce_run"]["ce"], label="CE, run minimising CE")
    ax.plot(steps, t["ce_run"]["kl"], label="KL, run minimising CE")
    ax.plot(steps, t["kl_run"]["ce"], "--", color="k", lw=0.9, label="CE, KL, run minimising KL")
    ax.plot(steps, t["kl_run"]["kl"], "--", color="k", lw=0.9)
    ce_end, kl_end = t["ce_run"]["ce"][-1], t["ce_run"]["kl"][-1]
    ax.annotate(
      "",
      xy=(steps[-1], kl_end),
      xytext=(steps[-1], ce_end),
      arrowprops={"arrowstyle": "<->", "color": "0.3"},
    )
    ax.text(steps[-1], (ce_end + kl_end) / 2, f" H(p) = {h:.3f}", ha="right", va="center")
    ax.set_yscale("log" if h == 0 else "linear")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss on the training set (nats)")
    ax.set_title(f"{name}\nCE - KL = H(p) = {h:.3f} nats at every step")
  axes[0].legend(loc="upper right")
  fig.suptitle("Minimising CE or KL: the curves differ by the constant H(p), the fits coincide")
  paths += plotting.save(fig, out_dir, f"{NAME}_losses")

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11.0, 3.8))
  eps32 = float(np.finfo(np.float32).eps)
  for name, t in tasks.items():
    gap = np.abs(
      np.asarray(t["ce_run"]["ce"], np.float64) - t["ce_run"]["kl"] - t["target_entropy"]
    )
    steps = np.arange(len(gap))
    (line,) = ax1.plot(steps, np.maximum(gap, eps32 / 64), label=name, lw=0.6, alpha=0.8)
    for r, ls in ((t, "-"), (t.get("other_form"), "--")):
      if r is None:
        continue
      diff = np.asarray(r["param_diff"])
      label = f"{name}, {r['target_form']} targets" + (
        " (bitwise identical: all 0)" if r["bitwise_identical"] else ""
      )
      ax2.plot(steps, np.maximum(diff, 1e-12), ls, color=line.get_color(), label=label, lw=1.0)
  tol = max(t["gap_tolerance"] for t in tasks.values())
  ax1.axhline(tol, color="k", ls=":", lw=1, label="tolerance: 16 float32 ulps of CE")
  ax1.set_yscale("log")
  ax1.set_xlabel("optimiser step")
  ax1.set_ylabel("|CE - KL - H(p)| (nats)")
  ax1.set_title("CE - KL equals H(p) at every step, to float32 round-off")
  ax1.legend(loc="lower right", fontsize=7)
  ax2.axhline(1e-6, color="k", ls=":", lw=1, label="1e-6")
  ax2.set_yscale("log")
  ax2.set_ylim(5e-13, 1.0)
  ax2.set_xlabel("optimiser step")
  ax2.set_ylabel("max |theta_CE - theta_KL| (parameter units)")
  ax2.set_title("Parameter trajectories: CE run vs KL run (0 drawn at 1e-12)")
  ax2.legend(loc="upper left", fontsize=7)
  paths += plotting.save(fig, out_dir, f"{NAME}_checks")

  mc = results["mode_collapse"]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11.0, 3.8))
  cats = np.arange(len(mc["target"]))
  ax1.bar(cats, mc["target"], color="0.8", label="target p")
  ax1.plot(cats, mc["ce_run"]["q"], "o-", ms=3, label="q minimising CE(q, p)")
  ax1.plot(cats, mc["kl_run"]["q"], "s--", ms=3, label="q minimising KL(q || p)")
  ax1.set_xlabel("category")
  ax1.set_ylabel("probability")
  ax1.set_yscale("log")
  ax1.set_title("CE(q, p) puts all mass on p's mode; KL(q || p) recovers p")
  ax1.legend(loc="upper right", fontsize=7)
  steps = np.arange(len(mc["ce_run"]["entropy"]))
  ax2.plot(steps, mc["ce_run"]["entropy"], label="H(q), minimising CE(q, p)")
  ax2.plot(steps, mc["kl_run"]["entropy"], label="H(q), minimising KL(q || p)")
  ax2.axhline(mc["target_entropy"], color="k", ls=":", lw=1, label="H(p)")
  ax2.set_xlabel("optimiser step")
  ax2.set_ylabel("entropy of q (nats)")
  ax2.set_title("H(q) -> 0 under CE, -> H(p) under KL")
  ax2.legend(loc="center right")
  plotting.caption(fig, mc["explanation"])
  paths += plotting.save(fig, out_dir, f"{NAME}_mode_collapse")
  return paths


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def main(argv=None) -> int:
  return _io.run_experiment(
    argv,
    name=NAME,
    config_cls=Config,
    quick=QUICK,
    run=run,
    plot=plot,
    description=__doc__.splitlines()[0],
    report=None,
    ok=None,
    help=HELP,
    choices=CHOICES,
  )


if __name__ == "__main__":
  sys.exit(main())
