"""experiments/kl_penalty/ in its quick configuration: the results contract and its claims."""

import json
import runpy
import sys

import numpy as np
import pytest
from scipy.optimize import brentq

from experiments import _io, kl_penalty

# the KL-penalty experiment end to end: run by .ci/run (`-m slow`), not by ./scripts/test.sh
pytestmark = pytest.mark.slow

QUICK = ["--quick", "--quiet"]
FIGURES = (
  "kl_penalty_bias",
  "kl_penalty_training",
  "kl_penalty_policies",
  "kl_penalty_clamps_lengths",
)
GRADIENT_KEYS = {"bias_norm", "bias_se", "num_samples", "predicted_bias_norm", "theory_unbiased"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("kl_penalty")
  assert kl_penalty.main([*QUICK, "--out", str(out), "--no-plot"]) == 0  # 0: every claim holds
  return out


@pytest.fixture(scope="module")
def results(quick_run):
  return json.loads((quick_run / "kl_penalty.json").read_text())


def _softmax(z):
  e = np.exp(np.asarray(z) - np.max(z))
  return e / e.sum()


def _kl(p, q):
  p, q = np.asarray(p), np.asarray(q)
  return float(np.sum(np.where(p > 0, p * np.log(p / q), 0.0)))


def test_results_contract_keys(results):
  top = {
    "config",
    "versions",
    "bandit",
    "sequence",
    "clamps",
    "lengths",
    "claims",
    "all_claims_pass",
  }
  assert top <= set(results)
  assert {"jax", "optax", "jaxdiv"} <= set(results["versions"])
  cfg, b, s = results["config"], results["bandit"], results["sequence"]
  k = cfg["num_actions"]
  assert {"beta", "rewards", "reference_logits", "gradient_logits", "gradient", "training"} <= set(
    b
  )
  assert len(b["rewards"]) == len(b["reference_logits"]) == len(b["gradient_logits"]) == k
  assert set(b["gradient"]) == set(b["training"]) == set(kl_penalty.BANDIT_VARIANTS)
  assert set(kl_penalty.BANDIT_VARIANTS) == {
    "exact",
    "k1_reward",
    "k3_reward",
    "k1_loss",
    "k2_loss",
    "k3_loss",
    "k3_straight_through_loss",
  }
  for v, row in b["gradient"].items():
    assert GRADIENT_KEYS | {"std"} <= set(row), v
    assert (
      isinstance(row["theory_unbiased"], bool) and row["num_samples"] == cfg["gradient_samples"]
    )
    np.testing.assert_allclose(row["bias_se"], row["std"] / np.sqrt(row["num_samples"]))
  for row in b["training"].values():
    assert len(row["kl_to_optimum"]) == cfg["bandit_steps"] + 1 and len(row["final_logits"]) == k
  n = cfg["num_tokens"] ** cfg["horizon"]
  keys = {"beta", "horizon", "num_tokens", "rewards", "reference_sequence_probs", "training"}
  assert keys <= set(s)
  assert len(s["rewards"]) == len(s["reference_sequence_probs"]) == n and s["horizon"] >= 3
  assert set(s["training"]) == set(kl_penalty.BANDIT_VARIANTS) | {"exact_sequence"}
  for v, row in s["training"].items():
    assert len(row["kl_to_optimum"]) == cfg["sequence_steps"] + 1
    assert len(row["final_sequence_probs"]) == n, v


def test_predicted_bias_is_the_closed_form(results):
  """The recorded predictions against the formulas, recomputed here in numpy."""
  b = results["bandit"]
  pi, pr, beta = _softmax(b["gradient_logits"]), _softmax(b["reference_logits"]), b["beta"]
  ell = np.log(pi) - np.log(pr)
  grad_kl, grad_kl_rev = pi * (ell - pi @ ell), pi - pr
  expected = {"k1_loss": grad_kl, "k3_loss": grad_kl - grad_kl_rev, "k3_reward": grad_kl_rev}
  for v, row in b["gradient"].items():
    norm = beta * np.linalg.norm(expected.get(v, 0.0 * pi))
    np.testing.assert_allclose(row["predicted_bias_norm"], norm, rtol=1e-9, atol=1e-15)
    assert row["theory_unbiased"] == (v not in expected)
  exact = pi * (b["rewards"] - pi @ b["rewards"]) - beta * grad_kl  # gradient of J
  np.testing.assert_allclose(b["exact_gradient"], exact, rtol=1e-9, atol=1e-15)


def test_recorded_claims_hold(results):
  claims, cfg = results["claims"], results["config"]
  assert results["all_claims_pass"] and all(claims.values()), [
    k for k, v in claims.items() if not v
  ]
  b, s = results["bandit"], results["sequence"]
  for v, row in b["gradient"].items():  # the claims, re-derived from the recorded numbers
    se = row["bias_se"]
    if row["theory_unbiased"]:
      assert row["bias_norm"] <= 3 * se, v
    else:
      assert abs(row["bias_norm"] - row["predicted_bias_norm"]) <= 3 * se, v
      assert row["predicted_bias_norm"] > 3 * se, v
  opt_b = _softmax(np.log(_softmax(b["reference_logits"])) + np.asarray(b["rewards"]) / b["beta"])
  ref_s = np.asarray(s["reference_sequence_probs"])
  opt_s = ref_s * np.exp(np.asarray(s["rewards"]) / s["beta"])
  opt_s /= opt_s.sum()
  np.testing.assert_allclose(ref_s.sum(), 1.0, rtol=1e-12)
  for task, opt, final_key, unbiased, tol in (
    (b, opt_b, "final_logits", kl_penalty.BANDIT_UNBIASED, cfg["bandit_tolerance"]),
    (s, opt_s, "final_sequence_probs", kl_penalty.SEQUENCE_UNBIASED, cfg["sequence_tolerance"]),
  ):
    for v, row in task["training"].items():
      final = row[final_key]
      q = _softmax(final) if final_key == "final_logits" else np.asarray(final)
      last = row["kl_to_optimum"][-1]
      np.testing.assert_allclose(last, _kl(q, opt), rtol=1e-6, atol=1e-12)  # after the last update
      assert row["kl_to_optimum"][0] > 10 * tol, v  # every run starts far from pi*
      if v in unbiased:
        assert last <= tol and row["predicted_final_kl"] == 0.0, v
      else:
        assert last > cfg["away_factor"] * tol, v
  for task, name in ((b, "k3_loss"), (s, "exact"), (s, "k2_loss"), (s, "k3_loss")):
    row = task["training"][name]
    assert abs(row["kl_to_optimum"][-1] / row["predicted_final_kl"] - 1) <= cfg["fixed_point_rtol"]


def test_k3_loss_fixed_point_and_k1_loss_limit(results):
  """The bandit predictions, recomputed with scipy's root finder from the recorded problem."""
  b = results["bandit"]
  ref, r, beta = _softmax(b["reference_logits"]), np.asarray(b["rewards"]), b["beta"]
  opt = _softmax(np.log(ref) + r / beta)
  c = brentq(lambda c: np.sum(beta * ref / (beta + c - r)) - 1, r.max() - beta + 1e-12, r.max())
  pi = beta * ref / (beta + c - r)
  np.testing.assert_allclose(pi.sum(), 1.0, rtol=1e-10)
  np.testing.assert_allclose(pi * (r - pi @ r), beta * (pi - ref), atol=1e-10)  # stationary
  np.testing.assert_allclose(
    b["training"]["k3_loss"]["predicted_final_kl"], _kl(pi, opt), rtol=1e-8
  )
  limit = -np.log(opt[np.argmax(r)])
  np.testing.assert_allclose(b["training"]["k1_loss"]["predicted_final_kl"], limit, rtol=1e-10)
  assert b["training"]["k3_reward"]["predicted_final_kl"] is None


def _verl_k3(log_r):
  """verl's low_var_kl (kl_penalty_forward in verl/trainer/ppo/core_algos.py) of log r."""
  kl = np.clip(log_r, -20, 20)
  return np.clip(np.exp(kl) - kl - 1, -10, 10)


def test_clamps_recomputed_from_the_recorded_problem(results):
  """The clamped k3 means along the drift, restated in numpy from verl's formula."""
  b, c = results["bandit"], results["clamps"]
  ref, theta = np.asarray(b["reference_logits"]), np.asarray(b["gradient_logits"])
  scales = np.asarray(c["scales"])
  assert len(scales) == results["config"]["clamp_num_scales"]
  np.testing.assert_allclose(scales[1:] / scales[:-1], 2.0)
  est, grads = c["estimates"], c["gradients"]
  assert set(est) == {"k3", "verl_k3", "openrlhf_k3", "k1", "openrlhf_k1"}
  for i, s in enumerate(scales):
    pi, pr = _softmax(ref + s * (theta - ref)), _softmax(ref)
    log_r = np.log(pr) - np.log(pi)
    kl = _kl(pi, pr)
    np.testing.assert_allclose(c["exact_kl"][i], kl, rtol=1e-10)
    np.testing.assert_allclose(c["max_log_ratio"][i], log_r.max(), rtol=1e-10)
    np.testing.assert_allclose(est["verl_k3"]["mean"][i], pi @ _verl_k3(log_r), rtol=1e-10)
    np.testing.assert_allclose(est["k3"]["mean"][i], kl, rtol=1e-9)
    clipped = pi @ (np.expm1(log_r) - log_r > 10)
    np.testing.assert_allclose(est["verl_k3"]["binding_mass"][i], clipped, rtol=1e-12, atol=0)
    if clipped > 0:
      assert est["verl_k3"]["mean"][i] < kl and est["verl_k3"]["std"][i] < est["k3"]["std"][i]
    ell = -log_r
    grad_kl = pi * (ell - pi @ ell)
    np.testing.assert_allclose(c["exact_kl_gradient_norm"][i], np.linalg.norm(grad_kl), rtol=1e-9)
    # k3 in the loss unclamped follows grad KL(pi_ref || pi) = pi - pi_ref (the other way)
    np.testing.assert_allclose(
      grads["k3_loss"]["bias_norm"][i], np.linalg.norm(pi - pr - grad_kl), rtol=1e-8, atol=1e-15
    )
    assert grads["verl_k3_straight_through_loss"]["bias_norm"][i] <= 1e-12
  assert est["verl_k3"]["mean"] == est["openrlhf_k3"]["mean"]
  assert c["max_log_ratio"][-1] > 20 and max(est["verl_k3"]["binding_mass"]) > 0


def test_lengths_contract_and_the_sequence_level_modes(results):
  ln, cfg = results["lengths"], results["config"]
  assert set(ln["modes"]) == set(kl_penalty.MODES)
  batch, horizon = ln["batch_size"], ln["horizon"]
  assert batch == cfg["batch_size"] and horizon == cfg["length_horizon"] >= 2
  for key in ("optimum_length_probs", "reference_length_probs"):
    assert len(ln[key]) == horizon
    np.testing.assert_allclose(sum(ln[key]), 1.0, rtol=1e-12)
  lengths = np.arange(1, horizon + 1)
  np.testing.assert_allclose(ln["optimum_mean_length"], lengths @ ln["optimum_length_probs"])
  scales = {"seq-mean-token-sum": 1.0, "token-sum": batch, "seq-mean-token-sum-norm": 1 / horizon}
  for mode, row in ln["modes"].items():
    np.testing.assert_allclose(sum(row["fixed_point_length_probs"]), 1.0, rtol=1e-10)
    np.testing.assert_allclose(
      row["fixed_point_mean_length"], lengths @ row["fixed_point_length_probs"]
    )
    assert row["pair_closed_form_relative_error"] <= 1e-10, mode
    assert row["gives_sequence_level_gradient"] == (mode in scales), mode
    if mode in scales:  # the sequence-level gradient, times a constant: the optimum is the end
      np.testing.assert_allclose(row["expected_gradient_scale"], scales[mode], rtol=1e-9)
      np.testing.assert_allclose(row["penalty_gradient_scale"], scales[mode], rtol=1e-9)
      assert row["expected_gradient_sine"] <= 1e-9 and row["penalty_gradient_sine"] <= 1e-9
      assert abs(row["fixed_point_kl_to_optimum"]) <= cfg["length_fixed_point_tol"], mode
      np.testing.assert_allclose(
        row["fixed_point_length_probs"], ln["optimum_length_probs"], rtol=1e-6, atol=1e-9
      )
    else:
      assert row["expected_gradient_sine"] > 1e-3, mode
      assert row["fixed_point_kl_to_optimum"] > 1e3 * cfg["length_fixed_point_tol"], mode
  # per-sequence normalisation ends farthest from pi*
  worst = max(ln["modes"], key=lambda m: ln["modes"][m]["fixed_point_kl_to_optimum"])
  assert worst == "seq-mean-token-mean"


def test_rerun_is_byte_identical_and_figures_come_from_the_json(quick_run, tmp_path):
  assert kl_penalty.main([*QUICK, "--out", str(tmp_path), "--no-plot"]) == 0
  a, b = (d / "kl_penalty.json" for d in (quick_run, tmp_path))
  assert a.read_bytes() == b.read_bytes()
  drawn = kl_penalty.plot(_io.read_json(b), tmp_path / "figs")
  assert sorted(p.name for p in drawn) == sorted(
    f"{f}.{e}" for f in FIGURES for e in ("png", "pdf")
  )
  assert all(p.stat().st_size > 1000 for p in drawn)


def test_bad_config_is_one_line(tmp_path):
  with pytest.raises(SystemExit) as e:
    kl_penalty.main([*QUICK, "--horizon", "2", "--out", str(tmp_path)])
  assert str(e.value) == "error: invalid configuration: horizon must be >= 3, got 2"
  with pytest.raises(SystemExit) as e:
    kl_penalty.main([*QUICK, "--length-horizon", "1", "--out", str(tmp_path)])
  assert str(e.value) == "error: invalid configuration: length_horizon must be >= 2, got 1"
  assert not (tmp_path / "kl_penalty.json").exists()


def test_python_dash_m_entry_point(monkeypatch, capsys):
  """``python -m experiments.kl_penalty`` runs the package's ``__main__`` (here with --help)."""
  monkeypatch.setattr(sys, "argv", ["kl_penalty", "--help"])
  with pytest.raises(SystemExit) as e:
    runpy.run_module("experiments.kl_penalty", run_name="__main__")
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("usage:") and "--clamp-max-scale" in out and "--length-horizon" in out
