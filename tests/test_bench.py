"""The benchmark suite runs end to end (``scripts/bench.py --quick --gpu``) and writes the
documented JSON structure. No timing is asserted: only structure, and the accuracy of the
kernels, which is deterministic."""

import importlib.util
import json
import math
import pathlib

import pytest

# the benchmark suite end to end: run by .ci/run (`-m slow`), not by ./scripts/test.sh
pytestmark = pytest.mark.slow

_BENCH = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench_results(tmp_path_factory):
  spec = importlib.util.spec_from_file_location("bench", _BENCH)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path_factory.mktemp("bench") / "bench.json"
  bench.main(["--quick", "--gpu", "--repeats", "1", "--out", str(out)])
  return json.loads(out.read_text()), out.read_text()


def test_json_is_written_with_sorted_keys(bench_results):
  results, text = bench_results
  assert text == json.dumps(results, sort_keys=True, indent=2) + "\n"
  assert results["quick"] is True


def test_every_loss_mode_and_shape_is_timed_for_every_implementation(bench_results):
  results, _ = bench_results
  seen = {(c["loss"], c["mode"], tuple(c["shape"]), c["dtype"]) for c in results["cases"]}
  shapes = {(tuple(c["shape"]), c["dtype"]) for c in results["cases"]}
  assert len(shapes) == 2
  assert seen == {
    (loss, mode, shape, dtype)
    for loss in ("kl", "ce_soft", "ce_labels")
    for mode in ("fwd", "vg")
    for shape, dtype in shapes
  }
  for c in results["cases"]:
    assert set(c["ms"]) == set(c["temp_bytes"]) == {"jaxdiv", "optax", "jax"}
    assert all(v > 0 and math.isfinite(v) for v in c["ms"].values())
    assert all(isinstance(v, int) and v >= 0 for v in c["temp_bytes"].values())
    assert c["speedup_vs_optax"] == pytest.approx(c["ms"]["optax"] / c["ms"]["jaxdiv"])


def test_floors_cover_every_shape(bench_results):
  results, _ = bench_results
  assert len(results["floors"]) == 2
  for f in results["floors"]:
    assert set(f["ms"]) == {"jaxdiv_kl", "exp_floor", "identity"}
    assert f["kl_over_exp_floor"] == pytest.approx(f["ms"]["jaxdiv_kl"] / f["ms"]["exp_floor"])


def test_float32_kernels_are_within_1e_5_of_float64(bench_results):
  results, _ = bench_results
  errors = results["rel_errors"]
  assert {e["loss"] for e in errors} == {"kl", "ce_soft", "ce_labels"}
  assert len(errors) == 3  # three losses at the float32 shape
  assert all(0 <= e["max_rel_error"] <= 1e-5 for e in errors)


def test_gpu_cases_report_bandwidth_for_kl_ce_and_jsd(bench_results):
  results, _ = bench_results
  gpu = results["gpu_cases"]
  assert {(c["loss"], c["dtype"], c["mode"]) for c in gpu} == {
    (loss, d, m)
    for loss in ("kl", "ce_soft", "ce_labels", "jsd")
    for d in ("bfloat16", "float32")
    for m in ("fwd", "vg")
  }
  for c in gpu:
    n = math.prod(c["shape"]) * (2 if c["dtype"] == "bfloat16" else 4)
    reads = n * (1 if c["loss"] == "ce_labels" else 2)
    assert c["bytes_moved"] == reads + (n if c["mode"] == "vg" else 0)
    impls = {"jaxdiv", "jax"} if c["loss"] == "jsd" else {"jaxdiv", "optax", "jax"}
    assert set(c["bandwidth_pct_of_peak"]) == impls
    assert all(v > 0 for v in c["bandwidth_pct_of_peak"].values())


def test_eager_rows_time_calls_outside_jit(bench_results):
  results, _ = bench_results
  assert {(c["loss"], tuple(c["shape"])) for c in results["eager"]} == {
    (loss, shape) for loss in ("kl", "ce_soft", "ce_labels") for shape in ((8, 10), (16, 64))
  }
  for c in results["eager"]:
    assert c["mode"] == "eager" and set(c["ms"]) == {"jaxdiv", "optax", "jax"}


def test_vmap_rows_compare_vmap_with_the_batched_call(bench_results):
  results, _ = bench_results
  assert {(v["loss"], v["mode"]) for v in results["vmap"]} == {
    (loss, m) for loss in ("kl", "ce_soft", "ce_labels") for m in ("fwd", "vg")
  }
  for v in results["vmap"]:
    assert set(v["ms"]) == {"jaxdiv_vmap", "jaxdiv_batched", "optax_vmap", "optax_batched"}
    ratio = v["ms"]["jaxdiv_vmap"] / v["ms"]["jaxdiv_batched"]
    assert v["jaxdiv_vmap_over_batched"] == pytest.approx(ratio)


def test_a_baseline_revision_is_timed_in_the_same_round_robin():
  # A second copy of the script, so the baseline stays out of the fixture's module.
  spec = importlib.util.spec_from_file_location("bench_with_baseline", _BENCH)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  base = bench.load_baseline("HEAD")
  assert base.__name__ == "jaxdiv_baseline"
  assert pathlib.Path(base.__file__).parent.name == "jaxdiv_baseline"
  assert base is not bench.jaxdiv and "jaxdiv-baseline-" in base.__file__
  case = bench._bench_case("kl", "vg", (16, 256), "float32", 1, 0)
  assert set(case["ms"]) == {"jaxdiv", "optax", "jax", "baseline"}
  assert case["speedup_vs_baseline"] == pytest.approx(case["ms"]["baseline"] / case["ms"]["jaxdiv"])
  assert bench._row(case).endswith(f"{case['speedup_vs_baseline']:.2f}x")
  # The committed revision computes what the checkout's package does on the same inputs.
  p, q = bench._inputs("kl", (4, 64), bench.jnp.float32, 0)
  got = bench.jaxdiv.kl_divergence(p_logits=p, q_logits=q)
  ref = base.kl_divergence(p_logits=p, q_logits=q)
  assert bench.np.allclose(got, ref, rtol=1e-6, atol=1e-7)
