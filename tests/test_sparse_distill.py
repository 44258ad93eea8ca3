"""The stored-teacher distillation experiment: its sampled-token storage, and ``main`` in its
quick configuration into a temporary folder."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiv
from experiments import sparse_distill as sd

QUICK = ["--quick", "--quiet"]
FIGURES = ("sparse_distill_tradeoff", "sparse_distill_bias", "sparse_distill_reliability")
LOGITS = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -3.0], np.float32)
ROWS = 4000  # independent stored rows of the same teacher distribution


def _stored(num_samples, temperature=1.0, seed=0):
  logits = jnp.broadcast_to(jnp.asarray(LOGITS), (ROWS, len(LOGITS)))
  idx, lp = sd.sampled_tokens(jax.random.key(seed), logits, num_samples, temperature)
  return np.asarray(idx), np.asarray(lp, np.float64)


def _dense(idx, lp):
  """The stored rows as dense ``[rows, V]`` probabilities (padding adds nothing)."""
  out = np.zeros((len(idx), len(LOGITS)))
  np.add.at(out, (np.arange(len(idx))[:, None], idx), np.exp(lp))
  return out


def test_sampled_tokens_are_distinct_weights_summing_to_one_and_unbiased():
  """Distinct ids, weights summing to 1, padding after them; E[stored] = p within 4.5 SE."""
  s = 8
  idx, lp = _stored(s)
  listed = lp > -np.inf
  assert idx.shape == lp.shape == (ROWS, s) and idx.dtype == np.int32
  assert np.all(np.sort(~listed, axis=-1) == ~listed)  # the listed slots come first
  for row, ok in zip(idx, listed, strict=True):
    assert len(np.unique(row[ok])) == ok.sum()
  assert np.all(idx[~listed] == 0)
  np.testing.assert_allclose(np.sum(np.exp(lp), axis=-1), 1.0, atol=1e-6)
  counts = np.rint(np.exp(lp) * s)[listed]
  np.testing.assert_allclose(np.exp(lp)[listed], counts / s, rtol=1e-6)  # frequencies c / S
  p = np.exp(LOGITS - np.logaddexp.reduce(LOGITS))
  mean = _dense(idx, lp).mean(axis=0)
  se = np.sqrt(p * (1 - p) / s / ROWS)
  assert np.all(np.abs(mean - p) < 4.5 * se), (mean, p)


def test_tempered_weights_are_self_normalised():
  """At S = 1 the one weight is 1, so the stored row is a draw from q_tau (biased); the
  weights of every row sum to 1, and the residual and truncate tails agree on them."""
  idx, lp = _stored(1, temperature=2.0, seed=1)
  assert np.all(lp == 0.0)
  q = np.exp(LOGITS / 2 - np.logaddexp.reduce(LOGITS / 2))
  mean = _dense(idx, lp).mean(axis=0)
  assert np.all(np.abs(mean - q) < 4.5 * np.sqrt(q * (1 - q) / ROWS))
  idx, lp = _stored(8, temperature=2.0, seed=2)
  np.testing.assert_allclose(np.sum(np.exp(lp), axis=-1), 1.0, atol=1e-5)
  idx, lp = idx[:8], lp[:8]
  student = jnp.zeros((8, len(LOGITS)), jnp.float32)
  kw = {"p_indices": idx, "p_log_probs": jnp.asarray(lp, jnp.float32), "q_logits": student}
  residual = jaxdiv.kl_divergence(tail="residual", **kw)
  truncate = jaxdiv.kl_divergence(tail="truncate", **kw)
  np.testing.assert_allclose(residual, truncate, atol=1e-6)


def test_bytes_per_token():
  v = 8192
  assert sd.bytes_per_token(sd.Form("full"), v) == 2 * v
  assert sd.bytes_per_token(sd.Form("labels"), v) == 4
  assert sd.bytes_per_token(sd.Form("topk", 16), v) == 96
  assert sd.bytes_per_token(sd.Form("sampled", 16), v, listed=7.5) == 45


# ---------------------------------------------------------------------------
# The experiment end to end: run by .ci/run (`-m slow`), not by ./scripts/test.sh
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("sparse_distill")
  assert sd.main([*QUICK, "--no-plot", "--out", str(out)]) == 0
  return out, json.loads((out / "sparse_distill.json").read_text())


@pytest.mark.slow
def test_sparse_distill_results_contract(quick_run):
  _, r = quick_run
  keys = {"corpus", "teacher", "students", "gradient", "bfloat16", "checks", "claims"}
  assert keys | {"config", "versions", "platform"} <= set(r)
  cfg = r["config"]
  names = sd.forms(sd.Config(**cfg))
  assert list(r["students"]) == sorted(names)
  v = cfg["vocab_size"]
  for name, s in r["students"].items():
    form = sd.Form(**s["form"])
    assert form == names[name]
    for metric in (*sd.METRICS, "train_loss"):
      rec = s[metric]
      assert set(rec) == {"seeds", "mean", "std", "sem"}, (name, metric)
      assert len(rec["seeds"]) == cfg["num_seeds"]
      assert rec["mean"] == pytest.approx(np.mean(rec["seeds"]))
    for metric in ("top1_agreement", "ece", "confidence", "accuracy"):
      assert all(0 <= x <= 1 for x in s[metric]["seeds"]), (name, metric)
    assert all(x >= 0 for x in s["forward_kl"]["seeds"])
    assert sum(s["reliability"]["count"]) == cfg["eval_tokens"]
    if form.kind == "sampled":
      assert 1 <= s["distinct_per_token"] <= form.size
      assert s["bytes_per_token"] == pytest.approx(6 * s["distinct_per_token"])
      assert s["padded_bytes_per_token"] == 6 * form.size
    else:
      expected = {"full": 2 * v, "labels": 4, "topk": 6 * form.size}[form.kind]
      assert s["bytes_per_token"] == expected, name
  stored = [n for n, f in names.items() if f.stored]
  assert set(r["gradient"]["forms"]) == {*stored, "labels"}
  assert set(r["bfloat16"]) == set(stored)
  for name in stored:
    g = r["gradient"]["forms"][name]
    assert g["distance"] >= 0
    if names[name].kind == "sampled":
      assert len(g["z"]) == cfg["grad_directions"] + 1
  for name, claim in r["claims"].items():
    assert isinstance(claim["reproduced"], bool) and claim["statement"], name


@pytest.mark.slow
def test_sparse_distill_checks_itself(quick_run):
  """The experiment's own correctness checks pass (the paper's claims need not)."""
  _, r = quick_run
  assert {c: v["passed"] for c, v in r["checks"].items()} == dict.fromkeys(r["checks"], True)
  assert r["checks"]["sampled_rows_valid"]["duplicates"] == 0
  assert r["checks"]["tails_at_listed_mass_one"]["max_residual_truncate_diff"] < 1e-5
  assert sd.ok(r)
  broken = json.loads(json.dumps(r))
  broken["checks"]["sampled_gradient_unbiased"]["passed"] = False
  assert not sd.ok(broken)
  # the tempered proposal is self-normalised: biased where the sampled form is not
  g = r["gradient"]["forms"]
  k = r["config"]["budget"]
  assert g[f"sampled{k}"]["max_abs_z"] < r["config"]["z_max"]
  assert g[f"tempered{k}"]["bias_ratio"] > g[f"sampled{k}"]["bias_ratio"]


@pytest.mark.slow
def test_sparse_distill_rerun_is_deterministic(quick_run, tmp_path):
  _, r = quick_run
  assert sd.main([*QUICK, "--no-plot", "--out", str(tmp_path)]) == 0
  assert json.loads((tmp_path / "sparse_distill.json").read_text()) == r


@pytest.mark.slow
def test_sparse_distill_figures_from_the_json_alone(quick_run, tmp_path):
  _, r = quick_run
  (tmp_path / "sparse_distill.json").write_text(json.dumps(r))
  assert sd.main([*QUICK, "--plot-only", "--out", str(tmp_path)]) == 0
  for name in FIGURES:
    for ext in ("png", "pdf"):
      assert (tmp_path / f"{name}.{ext}").stat().st_size > 1000, name


def test_every_flag_has_a_description():
  assert set(sd.HELP) == {f.name for f in dataclasses.fields(sd.Config)}


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--budget", "12"], "error: invalid configuration: budget (12) must be one of top_k"),
    (["--samples", "4,x"], "error: invalid configuration: samples must be comma-separated"),
    (["--tau", "1"], "error: invalid configuration: tau must be > 0 and not 1"),
  ],
)
def test_sparse_distill_bad_config_is_one_line(tmp_path, argv, message):
  with pytest.raises(SystemExit) as e:
    sd.main([*QUICK, *argv, "--out", str(tmp_path)])
  assert str(e.value).startswith(message) and "\n" not in str(e.value)
  assert not (tmp_path / "sparse_distill.json").exists()
