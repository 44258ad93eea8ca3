"""The distillation experiment's ``main`` in its quick configuration, into a temporary folder."""

import copy
import json

import numpy as np
import pytest

from experiments import distill

# the distillation experiment end to end: run by .ci/run (`-m slow`), not by ./scripts/test.sh
pytestmark = pytest.mark.slow

QUICK = ["--quick", "--quiet"]
FIGURES = ("distill_curves", "distill_mass", "distill_cost")
TIMINGS = ("fused_step_ms", "naive_step_ms")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("distill")
  assert distill.main([*QUICK, "--no-plot", "--out", str(out)]) == 0
  return out, json.loads((out / "distill.json").read_text())


def _without_timings(results):
  """The results less the wall-clock step times, the only fields a rerun may change."""
  r = copy.deepcopy(results)
  for c in r["cost"].values():
    for key in TIMINGS:
      assert c.pop(key) > 0
  return r


def test_distill_results_keys(quick_run):
  _, r = quick_run
  assert {"corpus", "teacher", "students", "cost", "claims", "config", "versions"} <= set(r)
  assert {"name", "sha256", "num_tokens", "vocab_size"} <= set(r["corpus"])
  assert len(r["corpus"]["sha256"]) == len(r["corpus"]["token_sha256"]) == 64
  assert r["corpus"]["python_version"] == r["versions"]["python"]
  assert isinstance(r["teacher"]["heldout_ce"], float)
  assert list(r["students"]) == sorted(distill.STUDENTS)  # sorted keys, every student
  cfg = r["config"]
  steps = list(range(0, cfg["student_steps"] + 1, cfg["eval_every"]))
  for name, s in r["students"].items():
    for metric in (*distill.METRICS, "train_loss"):
      rec = s[metric]
      assert set(rec) == {"steps", "values", "final"}, (name, metric)
      assert rec["steps"] == steps and len(rec["values"]) == len(steps)
      assert rec["final"] == rec["values"][-1]
  assert set(r["cost"]) == set(distill.STUDENTS)
  for name, c in r["cost"].items():
    for key in ("fused_temp_bytes", "naive_temp_bytes"):
      assert isinstance(c[key], int) and c[key] >= 0, (name, key)
    assert c["fused_step_ms"] > 0 and c["naive_step_ms"] > 0


def test_distill_corpus_is_split_by_document(quick_run):
  _, r = quick_run
  corpus = r["corpus"]
  assert corpus["num_tokens"] == corpus["train_tokens"] + corpus["heldout_tokens"]
  assert corpus["vocab_size"] == r["config"]["vocab_size"]
  assert corpus["distinct_training_tokens"] > corpus["vocab_size"]
  files = [p.name for p in distill._stdlib_files(r["config"]["file_stride"])]
  every = r["config"]["heldout_every"]
  assert corpus["heldout_files"] == files[every - 1 :: every]
  assert (
    corpus["num_files"] == len(files) == corpus["train_documents"] + len(corpus["heldout_files"])
  )
  assert 0 < corpus["heldout_unk_rate"] < 1 and 0 < corpus["train_unk_rate"] < 1


def test_distill_learns_and_checks_itself(quick_run):
  _, r = quick_run
  assert r["teacher"]["heldout_ce"] < np.log(r["config"]["vocab_size"])
  for name, s in r["students"].items():
    assert s["heldout_ce"]["final"] < s["heldout_ce"]["values"][0], name
    assert s["forward_kl"]["final"] < s["forward_kl"]["values"][0], name
    for metric in ("top1_agreement", "head_mass"):
      assert all(0 <= v <= 1 for v in s[metric]["values"]), (name, metric)
    assert all(v >= 0 for v in s["forward_kl"]["values"] + s["reverse_kl"]["values"])
  for name, c in r["cost"].items():
    # the fused step computes the same loss as the step on materialised logits
    assert c["abs_loss_diff"] < 1e-4, name
  assert r["claims"]["fused_equals_naive"]


def test_distill_rerun_is_deterministic(quick_run, tmp_path):
  """Same flags, the same results except the step times (wall-clock, never reproducible)."""
  _, r = quick_run
  assert distill.main([*QUICK, "--no-plot", "--out", str(tmp_path)]) == 0
  assert not (tmp_path / "distill_curves.png").exists()  # --no-plot
  again = json.loads((tmp_path / "distill.json").read_text())
  assert _without_timings(again) == _without_timings(r)


def test_distill_figures_from_the_json_alone(quick_run, tmp_path):
  out, r = quick_run
  (tmp_path / "distill.json").write_text(json.dumps(r))
  assert distill.main([*QUICK, "--plot-only", "--out", str(tmp_path)]) == 0
  for name in FIGURES:
    for ext in ("png", "pdf"):
      assert (tmp_path / f"{name}.{ext}").stat().st_size > 1000, name


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--student-steps", "15"], "error: invalid configuration: student_steps (15) must be"),
    (["--vocab-size", "5"], "error: invalid configuration: vocab_size must be"),
    (["--vocab-size", "1000000"], "error: vocab_size 1000000 needs 999998 distinct"),
  ],
)
def test_distill_bad_config_is_one_line(tmp_path, argv, message):
  with pytest.raises(SystemExit) as e:
    distill.main([*QUICK, *argv, "--out", str(tmp_path)])
  assert str(e.value).startswith(message) and "\n" not in str(e.value)
  assert not (tmp_path / "distill.json").exists()
