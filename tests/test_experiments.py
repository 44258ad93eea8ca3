"""Every experiment's ``main`` in a tiny configuration, into a temporary folder."""

import dataclasses
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _compiler import default_env

from experiments import _io, blog_example, ce_vs_kl, forward_vs_reverse, kl_estimators

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("ce_vs_kl_losses", "ce_vs_kl_checks", "ce_vs_kl_mode_collapse")
QUICK = ["--quick", "--quiet"]


def _run_ce_vs_kl(argv):
  """``python -m experiments.ce_vs_kl ARGV`` with XLA's default flags, as a user runs it:
  its bitwise claims are about how XLA compiles the CE and KL steps by default (the test
  processes compile with fewer optimisations, see tests/_compiler.py)."""
  cmd = [sys.executable, "-m", "experiments.ce_vs_kl", *argv]
  subprocess.run(cmd, cwd=ROOT, env=default_env(), check=True, timeout=300)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  """One quick run (with the target-form comparison) shared by the tests that read it."""
  out = tmp_path_factory.mktemp("ce_vs_kl")
  _run_ce_vs_kl([*QUICK, "--compare-forms", "--out", str(out)])
  return out


@pytest.mark.slow  # the quick run is an experiment end to end (20 s)
def test_ce_vs_kl_results_keys(quick_run):
  r = json.loads((quick_run / "ce_vs_kl.json").read_text())
  assert {"config", "versions", "tasks", "mode_collapse", "claims"} <= set(r)
  assert set(r["tasks"]) == {"teacher", "digits-onehot", "digits-soft"}
  steps = r["config"]["steps"]
  for name, t in r["tasks"].items():
    for key in ("target_entropy", "max_gap_error", "max_param_diff", "ce_run", "kl_run"):
      assert key in t, (name, key)
    for run in ("ce_run", "kl_run"):
      assert len(t[run]["ce"]) == len(t[run]["kl"]) == steps + 1
      assert ("test_accuracy" in t[run]) == name.startswith("digits")
    assert t["other_form"]["target_form"] == "probs"


@pytest.mark.slow  # the quick run is an experiment end to end (20 s)
def test_ce_vs_kl_claims(quick_run):
  r = json.loads((quick_run / "ce_vs_kl.json").read_text())
  tasks = r["tasks"]
  assert tasks["digits-onehot"]["target_entropy"] == 0.0
  assert 0.1 < tasks["digits-soft"]["target_entropy"] < np.log(10)
  assert 0.1 < tasks["teacher"]["target_entropy"] < np.log(r["config"]["teacher_classes"])
  for name, t in tasks.items():
    # The gap CE - KL equals H(p) at every step, to float32 round-off.
    assert t["max_gap_error"] <= t["gap_tolerance"] < 1e-5, name
    ce, kl = np.array(t["ce_run"]["ce"]), np.array(t["ce_run"]["kl"])
    np.testing.assert_allclose(ce - kl, t["target_entropy"], atol=1e-5)
    assert kl[-1] < kl[0] / 2, name  # training did something
    # Logit targets: both losses' gradients are the same closed-form rule -> bitwise equal.
    assert t["max_param_diff"] == 0.0 and t["bitwise_identical"], name
    assert t["ce_run"].get("test_accuracy") == t["kl_run"].get("test_accuracy")
    assert t["other_form"]["max_gap_error"] <= t["other_form"]["gap_tolerance"]
    # Probability targets: KL's rule shares CE's q*sum(p) - p, so also bitwise equal.
    assert t["other_form"]["bitwise_identical"], name
  assert tasks["digits-onehot"]["ce_run"]["test_accuracy"] > 0.85
  claims = r["claims"]
  assert claims["gap_equals_target_entropy"] and claims["parameters_agree"]
  assert claims["ce_collapses_onto_mode"] and claims["kl_recovers_target"]
  mc = r["mode_collapse"]
  assert mc["ce_run"]["argmax"] == mc["target_mode"] == int(np.argmax(mc["target"]))
  assert mc["ce_run"]["final_entropy"] < 0.1 < mc["target_entropy"]
  np.testing.assert_allclose(mc["kl_run"]["q"], mc["target"], atol=1e-3)


@pytest.mark.slow  # the quick run is an experiment end to end (20 s)
def test_ce_vs_kl_figures_exist(quick_run):
  for name in FIGURES:
    for ext in ("png", "pdf"):
      assert (quick_run / f"{name}.{ext}").stat().st_size > 1000, name


@pytest.mark.slow  # a second full run in a fresh process
def test_ce_vs_kl_rerun_is_byte_identical(quick_run, tmp_path):
  """Same arguments, same bytes; the figures redrawn from the JSON alone (--plot-only)."""
  argv = [*QUICK, "--compare-forms", "--out", str(tmp_path)]
  _run_ce_vs_kl([*argv, "--no-plot"])
  assert not (tmp_path / "ce_vs_kl_losses.png").exists()
  assert ce_vs_kl.main([*argv, "--plot-only"]) == 0
  for name in ["ce_vs_kl.json"] + [f"{f}.png" for f in FIGURES]:
    assert (tmp_path / name).read_bytes() == (quick_run / name).read_bytes(), name


@pytest.mark.slow  # a second run on four simulated devices
def test_ce_vs_kl_four_devices_match_one(quick_run, tmp_path):
  """Data-parallel over 4 simulated CPU devices (a fresh process) matches one device."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "experiments.ce_vs_kl", *QUICK, "--no-plot", "--devices", "4"]
  subprocess.run([*cmd, "--out", str(tmp_path)], cwd=ROOT, env=env, check=True, timeout=300)
  four = json.loads((tmp_path / "ce_vs_kl.json").read_text())
  one = json.loads((quick_run / "ce_vs_kl.json").read_text())
  assert four["config"]["devices"] == 4 and one["config"]["devices"] == 1
  for name in ce_vs_kl.TASKS:
    a, b = four["tasks"][name], one["tasks"][name]
    for run in ("ce_run", "kl_run"):
      for k in ("ce", "kl"):
        np.testing.assert_allclose(a[run][k], b[run][k], rtol=1e-5, atol=1e-6)
      assert a[run].get("test_accuracy") == b[run].get("test_accuracy")
    np.testing.assert_allclose(a["target_entropy"], b["target_entropy"], rtol=1e-6)
    assert a["max_param_diff"] == 0.0
  np.testing.assert_allclose(
    four["mode_collapse"]["kl_run"]["q"], one["mode_collapse"]["kl_run"]["q"], atol=1e-6
  )
  assert four["claims"] == one["claims"]


def test_ce_vs_kl_too_many_devices_is_a_clear_error(tmp_path):
  with pytest.raises(SystemExit, match=r"^error: --devices 64 but only \d+ cpu device"):
    ce_vs_kl.main([*QUICK, "--devices", "64", "--out", str(tmp_path)])
  assert not (tmp_path / "ce_vs_kl.json").exists()


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--steps", "0"], "error: invalid configuration: steps must be >= 1"),
    (["--label-smoothing", "1.5"], "error: invalid configuration: label_smoothing"),
  ],
)
def test_ce_vs_kl_bad_config_is_one_line(tmp_path, argv, message):
  with pytest.raises(SystemExit) as e:
    ce_vs_kl.main([*QUICK, *argv, "--out", str(tmp_path)])
  assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--no-such-flag"], "error: unrecognized arguments: --no-such-flag"),
    (["--steps", "many"], "error: argument --steps: invalid int value: 'many'"),
    (["--optimizer", "lbfgs"], "invalid choice: 'lbfgs' (choose from 'adam', 'sgd')"),
    (["--target-form", "labels"], "invalid choice: 'labels' (choose from 'logits', 'probs')"),
  ],
)
def test_ce_vs_kl_bad_flag_names_the_problem(tmp_path, capsys, argv, message):
  with pytest.raises(SystemExit) as e:
    ce_vs_kl.main([*argv, "--out", str(tmp_path)])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


def test_ce_vs_kl_unwritable_output_folder(tmp_path):
  blocker = tmp_path / "a-file"
  blocker.write_text("not a folder")
  with pytest.raises(SystemExit, match=r"^error: output folder .* is not writable"):
    ce_vs_kl.main([*QUICK, "--out", str(blocker / "sub")])


def test_ce_vs_kl_failed_run_leaves_no_partial_file(tmp_path, monkeypatch):
  old = tmp_path / "ce_vs_kl.json"
  old.write_text('{"old": true}\n')

  def broken_run(config, progress=None):
    raise RuntimeError("boom in the middle of training")

  monkeypatch.setattr(ce_vs_kl, "run", broken_run)
  with pytest.raises(RuntimeError, match="boom"):
    ce_vs_kl.main([*QUICK, "--out", str(tmp_path)])
  assert old.read_text() == '{"old": true}\n'
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ce_vs_kl.json"]


def test_write_json_atomic_failure_leaves_nothing(tmp_path, monkeypatch):
  def failing_replace(src, dst):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", failing_replace)
  with pytest.raises(OSError, match="disk full"):
    _io.write_json_atomic({"a": np.float32(1.5)}, tmp_path / "r.json")
  assert list(tmp_path.iterdir()) == []


def test_blog_example_main(tmp_path):
  assert blog_example.main(["--quiet", "--out", str(tmp_path)]) == 0
  r = json.loads((tmp_path / "blog_example.json").read_text())
  assert r["jaxdiv"] == {
    "kl": 0.35667494393873245,
    "cross_entropy": 0.35667494393873245,
    "entropy": 0.0,
  }
  assert r["true_value"] == -np.log(0.7)
  assert r["blog_numpy"]["kl"] == 0.3566749417565447
  assert abs(r["blog_error"]["kl"]) > 1e-9  # the clipping's error is real


# ---------------------------------------------------------------------------
# The command line: help, folders, Ctrl-C, missing extras
# ---------------------------------------------------------------------------

EXPERIMENTS = (blog_example, ce_vs_kl, forward_vs_reverse, kl_estimators)


@pytest.mark.parametrize("module", EXPERIMENTS, ids=lambda m: m.__name__)
def test_every_flag_has_a_description_and_its_choices(module):
  parser = _io.config_parser(
    module.Config, "d", getattr(module, "HELP", None), getattr(module, "CHOICES", None)
  )
  actions = {a.dest: a for a in parser._actions}
  for field in dataclasses.fields(module.Config):
    description = module.HELP[field.name]
    assert description and not description.startswith("default"), field.name
    assert actions[field.name].help == f"{description} (default: {field.default})"
  for field, allowed in getattr(module, "CHOICES", {}).items():
    assert tuple(actions[field].choices) == tuple(allowed)


CONFIGS = ("blog_example", "ce_vs_kl", "forward_vs_reverse", "kl_estimators", "distill",
           "sparse_distill", "kl_penalty.study")  # fmt: skip


@pytest.mark.parametrize("name", CONFIGS)
def test_every_numeric_flag_parses_to_its_type(name):
  # an optional field (`int | None`, default None) takes a number too, not a string
  config_cls = importlib.import_module(f"experiments.{name}").Config
  parser = _io.config_parser(config_cls, "d")
  for field in dataclasses.fields(config_cls):
    kind = str(field.type).removesuffix(" | None")
    if kind not in ("int", "float"):
      continue
    flag = "--" + field.name.replace("_", "-")
    value = getattr(parser.parse_args([flag, "3"]), field.name)
    assert type(value) is {"int": int, "float": float}[kind], (field.name, value)


def test_help_lists_the_choices(capsys):
  with pytest.raises(SystemExit) as e:
    ce_vs_kl.main(["--help"])
  assert e.value.code == 0
  text = capsys.readouterr().out
  assert "--optimizer {adam,sgd}" in text and "--target-form {logits,probs}" in text
  assert "the optimiser of both runs" in text


def test_unwritable_figures_folder_is_reported_as_the_figures_folder(tmp_path):
  blocker = tmp_path / "a-file"
  blocker.write_text("not a folder")
  with pytest.raises(SystemExit, match=r"^error: figures folder .*a-file/sub.* is not writable"):
    ce_vs_kl.main([*QUICK, "--out", str(tmp_path / "out"), "--figures", str(blocker / "sub")])


def test_ctrl_c_says_where_the_run_stopped_exits_130_and_writes_nothing(
  tmp_path, monkeypatch, capsys
):
  old = tmp_path / "ce_vs_kl.json"
  old.write_text('{"old": true}\n')

  def interrupted_run(config, progress):
    progress("teacher: step 31/60")
    raise KeyboardInterrupt

  monkeypatch.setattr(ce_vs_kl, "run", interrupted_run)
  with pytest.raises(SystemExit) as e:
    ce_vs_kl.main(["--quick", "--out", str(tmp_path)])
  assert e.value.code == 130
  err = capsys.readouterr().err
  assert "interrupted (last progress: teacher: step 31/60)" in err and "Traceback" not in err
  assert old.read_text() == '{"old": true}\n'
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ce_vs_kl.json"]


def test_ctrl_c_while_drawing_leaves_no_partial_figure(tmp_path, monkeypatch):
  monkeypatch.setattr(ce_vs_kl, "run", lambda config, progress: {"done": True})

  def interrupted_plot(results, out_dir):
    (Path(out_dir) / "ce_vs_kl_losses.png").write_bytes(b"half a png")
    raise KeyboardInterrupt

  monkeypatch.setattr(ce_vs_kl, "plot", interrupted_plot)
  figures = tmp_path / "figures"
  with pytest.raises(SystemExit) as e:
    ce_vs_kl.main([*QUICK, "--out", str(tmp_path), "--figures", str(figures)])
  assert e.value.code == 130
  assert json.loads((tmp_path / "ce_vs_kl.json").read_text()) == {"done": True}
  assert list(figures.iterdir()) == []


def test_missing_optax_names_the_experiments_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "optax", None)  # `import optax` now fails
  with pytest.raises(SystemExit, match=r"forward_vs_reverse needs the `experiments` extra") as e:
    forward_vs_reverse.main([*QUICK, "--no-plot", "--out", str(tmp_path)])
  assert "optax is not installed" in str(e.value) and "pip install -e '.[experiments]'" in str(
    e.value
  )
  assert not (tmp_path / "forward_vs_reverse.json").exists()
  # a module-level import (ce_vs_kl imports optax when it is imported)
  monkeypatch.delitem(sys.modules, "experiments.ce_vs_kl")
  with pytest.raises(SystemExit, match=r"ce_vs_kl needs the `experiments` extra \(optax"):
    importlib.import_module("experiments.ce_vs_kl")


def test_missing_matplotlib_names_the_experiments_extra(tmp_path, monkeypatch):
  (tmp_path / "forward_vs_reverse.json").write_text("{}\n")
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  with pytest.raises(SystemExit, match=r"needs the `experiments` extra \(matplotlib"):
    forward_vs_reverse.main(["--quiet", "--plot-only", "--out", str(tmp_path)])


def test_forward_vs_reverse_reports_the_fitted_mean_and_standard_deviation():
  fit = {"loc": [0.651], "scale": [3.14], "grid_mean": [0.6], "grid_var": [9.0]}
  results = {
    "checks": {"forward_matches_target_moments": True},
    "target": {"grid_mean": 0.6, "grid_var": 9.0},
    "fits": {name: fit for name in forward_vs_reverse.OBJECTIVES},
  }
  text = forward_vs_reverse._report(results)
  assert "forward_kl: fitted means +0.600; standard deviations 3.000" in text
  assert "0.651" not in text and "3.14" not in text
