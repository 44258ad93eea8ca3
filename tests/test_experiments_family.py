"""Smoke runs of the divergence-family experiments: --quick, into a temporary folder."""

import json

import pytest

from experiments import forward_vs_reverse, kl_estimators


def _run_twice(module, tmp_path, extra=()):
  a, b = tmp_path / "a", tmp_path / "b"
  assert module.main(["--quick", "--quiet", "--out", str(a), *extra]) == 0
  assert module.main(["--quick", "--quiet", "--no-plot", "--out", str(b), *extra]) == 0
  name = module.NAME
  text_a = (a / f"{name}.json").read_bytes()
  assert text_a == (b / f"{name}.json").read_bytes()  # byte-identical rerun
  for ext in ("png", "pdf"):
    assert (a / f"{name}.{ext}").stat().st_size > 1000
  assert not (b / f"{name}.png").exists()  # --no-plot
  return json.loads(text_a)


@pytest.mark.slow  # two quick runs of an experiment end to end
def test_kl_estimators_quick(tmp_path):
  r = _run_twice(kl_estimators, tmp_path)
  assert {"config", "versions", "settings", "curve", "checks", "all_checks_pass"} <= set(r)
  assert r["all_checks_pass"] and all(r["checks"].values())
  assert set(r["settings"]) == {"0.1", "1"}
  s = r["settings"]["1"]
  assert s["true_kl"] == 0.5
  assert s["estimators"]["k2"]["exact"]["bias_over_true"] == 0.25
  assert s["estimators"]["k3"]["published_text"]["stdev_over_true"] == "1.7"
  # the unbiased estimators are measured near 0 bias, k2 near its exact 1/4
  for e in ("k1", "k3"):
    m = s["estimators"][e]["measured"]
    assert abs(m["bias_over_true"]) < 5 * m["bias_over_true_se"]
  assert "| 0.005 | k1 | 0 |" in kl_estimators.table(r)


@pytest.mark.slow  # two quick runs of an experiment end to end
def test_forward_vs_reverse_quick(tmp_path):
  r = _run_twice(forward_vs_reverse, tmp_path)
  assert {"config", "versions", "target", "fits", "summary", "checks"} <= set(r)
  assert r["all_checks_pass"] and all(r["checks"].values())
  assert set(r["fits"]) == set(forward_vs_reverse.OBJECTIVES)
  fw, rv = r["fits"]["forward_kl"], r["fits"]["reverse_kl"]
  # mass-covering: wider than either mode; mode-seeking: about one mode's width
  mode_scale = r["config"]["mode_scale"]
  assert min(fw["scale"]) > 3 * mode_scale
  assert max(rv["scale"]) < 1.25 * mode_scale
  # forward KL at the forward fit is smaller than at any reverse fit, and vice versa
  assert max(fw["final_forward_kl"]) < min(rv["final_forward_kl"])
  assert max(rv["final_reverse_kl"]) < min(fw["final_reverse_kl"])


def test_invalid_config_is_a_clean_error(tmp_path):
  with pytest.raises(SystemExit, match="invalid configuration"):
    forward_vs_reverse.main(["--right-weight", "1.5", "--out", str(tmp_path)])
  with pytest.raises(SystemExit, match="invalid configuration"):
    kl_estimators.main(["--num-samples", "1", "--out", str(tmp_path)])
