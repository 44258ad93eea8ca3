"""The benchmark suite runs end to end (``scripts/bench.py --quick --gpu``) and writes the
documented JSON structure. No timing is asserted: only structure, and the accuracy of the
fast path, which is deterministic."""

import importlib.util
import json
import math
import pathlib

import pytest

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


def test_float32_fast_path_is_within_1e_5_of_float64(bench_results):
  results, _ = bench_results
  errors = results["rel_errors"]
  assert {e["loss"] for e in errors} == {"kl", "ce_soft", "ce_labels"}
  assert len(errors) == 3  # three losses at the float32 shape
  assert all(0 <= e["max_rel_error"] <= 1e-5 for e in errors)


def test_gpu_cases_report_bandwidth(bench_results):
  results, _ = bench_results
  gpu = results["gpu_cases"]
  assert {(c["dtype"], c["mode"]) for c in gpu} == {
    (d, m) for d in ("bfloat16", "float32") for m in ("fwd", "vg")
  }
  for c in gpu:
    assert c["loss"] == "kl" and c["bytes_moved"] > 0
    assert set(c["bandwidth_pct_of_peak"]) == {"jaxdiv", "optax", "jax"}
    assert all(v > 0 for v in c["bandwidth_pct_of_peak"].values())
