r"""Benchmark jaxdiv's logits kernels against optax and a plain ``jax.nn.log_softmax`` composition.

Every case is timed for the three implementations interleaved in one process (so that
machine load affects them alike): each jitted function is warmed up, then run ``repeats``
times in round-robin order (rotated each repeat; each slot calls once untimed, then
times as many calls as fill about 2 ms, at least one), and the median wall time per call
(``block_until_ready``) is reported, with the
ratios to jaxdiv and the compiled temporary memory
(``jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes``).

Cases: KL from two logit arrays (``kl``), cross-entropy with soft targets (``ce_soft``:
target probabilities, model logits) and with integer labels (``ce_labels``), each forward
(``fwd``) and value-and-gradient with respect to the model logits (``vg``), at
[1024, 32768], [65536, 512] and [8, 10] float32 and [1024, 32768] bfloat16; eager calls
(outside ``jit``) at [8, 10] and [64, 1000]; ``jax.vmap`` over a leading axis of
[4, 256, 8192] against the same data as one batched call (the four functions
interleaved); the exp
floor (``jnp.exp`` over both arrays, summed per row) and a jitted identity (the call
overhead floor for the small shape). The float32 relative error of jaxdiv against a
float64 evaluation of the same inputs is recorded for every shape.

The optax functions (argument order reversed with respect to jaxdiv's):

* KL: ``optax.losses.kl_divergence_with_log_targets(log_softmax(q), log_softmax(p))``
* CE soft: ``optax.softmax_cross_entropy(q_logits, p)``
* CE labels: ``optax.softmax_cross_entropy_with_integer_labels(q_logits, labels)``

Run::

  .venv/bin/python scripts/bench.py                 # full CPU table, writes results/bench.json
  .venv/bin/python scripts/bench.py --quick         # tiny shapes: a smoke test of the suite
  .venv/bin/python scripts/bench.py --gpu           # adds [8192, 131072] KL and % of peak bandwidth
  .venv/bin/python scripts/bench.py --baseline 056c036  # also an older revision, interleaved

``--gpu`` adds KL, CE (soft and labels) and Jensen--Shannon at [8192, 131072] in bfloat16
and float32, with the achieved bandwidth (bytes that must move: each input read once,
the gradient written once) as a percentage of ``--peak-tbps`` (4.8 TB/s, an H200).
``--baseline REV`` adds jaxdiv as of a git revision of this repository to every forward
and value-and-gradient case, timed in the same round robin (a comparison across two runs
moves with the machine's load; one within a run does not), with the ratio ``/base``.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiv

IMPLS = ("jaxdiv", "optax", "jax")
_BASELINE = {}  # "module": jaxdiv of another revision (``--baseline``), timed as "baseline"
_SAMPLE_S = 2e-3  # each timing sample runs calls for about this long (at least one call)
_SMALL = 1 << 16  # elements: below this, a call is dispatch-bound ...
_SMALL_REPEATS = 31  # ... and its median is taken over this many samples at least


# ---------------------------------------------------------------------------
# The functions compared (p: target, q: model; optax takes the model first).
# ---------------------------------------------------------------------------


def _lib(impl):
  """The jaxdiv module that ``impl`` names (this checkout's, or the baseline revision's)."""
  return _BASELINE["module"] if impl == "baseline" else jaxdiv


def _kl(impl):
  import optax

  if impl in ("jaxdiv", "baseline"):
    return lambda p, q: _lib(impl).kl_divergence(p_logits=p, q_logits=q)
  if impl == "optax":
    return lambda p, q: optax.losses.kl_divergence_with_log_targets(
      jax.nn.log_softmax(q.astype(jnp.float32)), jax.nn.log_softmax(p.astype(jnp.float32))
    )

  def plain(p, q):
    log_p = jax.nn.log_softmax(p.astype(jnp.float32))
    log_q = jax.nn.log_softmax(q.astype(jnp.float32))
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)

  return plain


def _ce_soft(impl):
  import optax

  if impl in ("jaxdiv", "baseline"):
    return lambda p, q: _lib(impl).cross_entropy(p, q_logits=q)
  if impl == "optax":
    return lambda p, q: optax.softmax_cross_entropy(q.astype(jnp.float32), p.astype(jnp.float32))
  return lambda p, q: -jnp.sum(p * jax.nn.log_softmax(q.astype(jnp.float32)), axis=-1)


def _ce_labels(impl):
  import optax

  if impl in ("jaxdiv", "baseline"):
    return lambda y, q: _lib(impl).cross_entropy(labels=y, q_logits=q)
  if impl == "optax":
    return lambda y, q: optax.softmax_cross_entropy_with_integer_labels(q.astype(jnp.float32), y)

  def plain(y, q):
    log_q = jax.nn.log_softmax(q.astype(jnp.float32))
    return -jnp.take_along_axis(log_q, y[..., None], axis=-1)[..., 0]

  return plain


def _jsd(impl):
  if impl in ("jaxdiv", "baseline"):
    return lambda p, q: _lib(impl).jensen_shannon_divergence(p_logits=p, q_logits=q)
  if impl == "optax":
    return None  # optax has no Jensen-Shannon divergence

  def plain(p, q):
    log_p = jax.nn.log_softmax(p.astype(jnp.float32))
    log_q = jax.nn.log_softmax(q.astype(jnp.float32))
    log_m = jnp.logaddexp(log_p, log_q) - jnp.log(2.0)
    kl = lambda a: jnp.sum(jnp.exp(a) * (a - log_m), axis=-1)  # noqa: E731
    return 0.5 * (kl(log_p) + kl(log_q))

  return plain


LOSSES = {"kl": _kl, "ce_soft": _ce_soft, "ce_labels": _ce_labels}
GPU_LOSSES = {**LOSSES, "jsd": _jsd}


def _impls():
  return IMPLS + (("baseline",) if _BASELINE else ())


def load_baseline(rev: str):
  """jaxdiv as of git revision ``rev`` of this repository, imported as ``jaxdiv_baseline``
  (its sources copied to a temporary folder with the package renamed), so that both
  versions run interleaved in one process."""
  root = Path(tempfile.mkdtemp(prefix="jaxdiv-baseline-"))
  repo = Path(__file__).resolve().parents[1]
  archive = subprocess.run(
    ["git", "archive", "--format=tar", rev, "jaxdiv"], cwd=repo, capture_output=True, check=True
  ).stdout
  with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
    # the "data" filter where this Python has it (3.10.12+, 3.11.4+): plain files only
    tar.extractall(root, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
  pkg = root / "jaxdiv_baseline"
  (root / "jaxdiv").rename(pkg)
  for f in pkg.rglob("*.py"):
    f.write_text(re.sub(r"\bjaxdiv\b", "jaxdiv_baseline", f.read_text()))
  sys.path.insert(0, str(root))
  _BASELINE["module"] = importlib.import_module("jaxdiv_baseline")
  _BASELINE["rev"] = rev
  return _BASELINE["module"]


def _value_and_grad(f):
  """Value and gradient of the summed loss with respect to the model logits ``q``."""
  return jax.value_and_grad(lambda p, q: jnp.sum(f(p, q)), argnums=1)


def _inputs(loss, shape, dtype, seed):
  kp, kq = jax.random.split(jax.random.key(seed))
  q = (2.0 * jax.random.normal(kq, shape, jnp.float32)).astype(dtype)
  if loss == "ce_labels":
    p = jax.random.randint(kp, shape[:-1], 0, shape[-1])
  elif loss == "ce_soft":
    p = jax.nn.softmax(2.0 * jax.random.normal(kp, shape, jnp.float32)).astype(dtype)
  else:
    p = (2.0 * jax.random.normal(kp, shape, jnp.float32)).astype(dtype)
  return p, q


# ---------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------


def _block(x):
  return jax.tree_util.tree_map(lambda a: a.block_until_ready(), x)


def _time_interleaved(fns: dict, args, repeats: int, warmup: int = 2) -> dict:
  """Median milliseconds per call of each function, run in rotating round-robin order.

  ``args`` is one argument tuple for all functions, or a dict of one per function. Each
  slot of the round robin calls its function once untimed, then times enough calls to
  fill about ``_SAMPLE_S`` (one call where a call takes longer): the function then runs
  on the allocator state it leaves itself, as a training step does, not on whatever its
  neighbour freed (a neighbour that frees hundreds of MiB made the next call up to 10 %
  slower or faster depending on their sizes), and a call of a few microseconds is not
  lost in the timer's and the scheduler's noise. The order rotates with each repeat.
  """
  args_of = args if isinstance(args, dict) else dict.fromkeys(fns, args)
  calls = {}
  for k, f in fns.items():
    for _ in range(warmup):
      _block(f(*args_of[k]))
    t0 = time.perf_counter()
    _block(f(*args_of[k]))
    calls[k] = max(1, math.ceil(_SAMPLE_S / max(time.perf_counter() - t0, 1e-7)))
  names = list(fns)
  times = {k: [] for k in fns}
  for r in range(repeats):
    for k in names[r % len(names) :] + names[: r % len(names)]:
      f, a = fns[k], args_of[k]
      _block(f(*a))
      t0 = time.perf_counter()
      for _ in range(calls[k]):
        out = f(*a)
      _block(out)
      times[k].append((time.perf_counter() - t0) / calls[k])
  return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def _temp_bytes(compiled) -> int | None:
  """Compiled temporary memory (excludes arguments and outputs)."""
  analysis = compiled.memory_analysis()
  return None if analysis is None else int(analysis.temp_size_in_bytes)


def _rel_error(loss, shape, dtype, seed) -> float:
  """Max relative error of jaxdiv in float32 (or from bf16 inputs) against float64."""
  p, q = _inputs(loss, shape, dtype, seed)
  f = jax.jit(LOSSES[loss]("jaxdiv"))
  got = np.asarray(f(p, q), np.float64)
  with jax.enable_x64(True):
    if loss == "ce_labels":
      p64 = jnp.asarray(np.asarray(p))
    else:
      p64 = jnp.asarray(np.asarray(p.astype(jnp.float32)), jnp.float64)
    q64 = jnp.asarray(np.asarray(q.astype(jnp.float32)), jnp.float64)
    ref = np.asarray(jax.jit(LOSSES[loss]("jaxdiv"))(p64, q64))
  return float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-30)))


# ---------------------------------------------------------------------------
# Suite
# ---------------------------------------------------------------------------


def _shapes(quick: bool):
  if quick:
    return [((16, 256), "float32"), ((16, 256), "bfloat16")]  # a smoke test of the suite
  return [
    ((1024, 32768), "float32"),
    ((65536, 512), "float32"),
    ((8, 10), "float32"),
    ((1024, 32768), "bfloat16"),
  ]


def _bench_case(loss, mode, shape, dtype, repeats, seed):
  args = _inputs(loss, shape, jnp.dtype(dtype), seed)
  fns, temp = {}, {}
  for impl in _impls():
    f = GPU_LOSSES[loss](impl)
    if f is None:
      continue
    compiled = jax.jit(f if mode == "fwd" else _value_and_grad(f)).lower(*args).compile()
    fns[impl], temp[impl] = compiled, _temp_bytes(compiled)
  ms = _time_interleaved(fns, args, repeats)
  return _case(loss, mode, shape, dtype, ms, temp)


def _case(loss, mode, shape, dtype, ms, temp):
  return {
    "loss": loss,
    "mode": mode,
    "shape": list(shape),
    "dtype": dtype,
    "ms": ms,
    "temp_bytes": temp,
    "speedup_vs_optax": ms["optax"] / ms["jaxdiv"] if "optax" in ms else None,
    "speedup_vs_jax": ms["jax"] / ms["jaxdiv"],
    "speedup_vs_baseline": ms["baseline"] / ms["jaxdiv"] if "baseline" in ms else None,
  }


def _eager_case(loss, shape, repeats, seed):
  """Calls outside ``jit``, as in a notebook: after a warm-up call, nothing compiles."""
  args = _inputs(loss, shape, jnp.float32, seed)
  fns = {impl: LOSSES[loss](impl) for impl in IMPLS}
  return _case(loss, "eager", shape, "float32", _time_interleaved(fns, args, repeats), {})


def _vmap_case(loss, mode, shape, repeats, seed):
  """``jax.vmap`` over a leading axis of 4 against the same data as one batched call."""
  args = _inputs(loss, shape, jnp.float32, seed)
  flat = tuple(x.reshape(-1, *x.shape[2:]) for x in args)
  fns, args_of = {}, {}
  for impl in ("jaxdiv", "optax"):
    f = LOSSES[loss](impl)
    wrap = (lambda g: g) if mode == "fwd" else _value_and_grad
    fns[impl + "_vmap"], args_of[impl + "_vmap"] = jax.jit(wrap(jax.vmap(f))), args
    fns[impl + "_batched"], args_of[impl + "_batched"] = jax.jit(wrap(f)), flat
  ms = _time_interleaved(fns, args_of, repeats)
  return {
    "loss": loss,
    "mode": mode,
    "shape": list(shape),
    "ms": ms,
    "jaxdiv_vmap_over_batched": ms["jaxdiv_vmap"] / ms["jaxdiv_batched"],
    "optax_vmap_over_jaxdiv_vmap": ms["optax_vmap"] / ms["jaxdiv_vmap"],
  }


def _floors(shape, dtype, repeats, seed):
  """The exp floor (both arrays, exp summed per row) and a jitted identity, against KL."""
  args = _inputs("kl", shape, jnp.dtype(dtype), seed)
  fns = {
    "jaxdiv_kl": jax.jit(_kl("jaxdiv")),
    "exp_floor": jax.jit(
      lambda p, q: (
        jnp.sum(jnp.exp(p.astype(jnp.float32)), axis=-1)
        + jnp.sum(jnp.exp(q.astype(jnp.float32)), axis=-1)
      )
    ),
    "identity": jax.jit(lambda p, q: (p, q)),
  }
  ms = _time_interleaved(fns, args, repeats)
  return {
    "shape": list(shape),
    "dtype": dtype,
    "ms": ms,
    "kl_over_exp_floor": ms["jaxdiv_kl"] / ms["exp_floor"],
    "kl_over_identity": ms["jaxdiv_kl"] / ms["identity"],
  }


def _gpu_cases(quick, repeats, seed, peak_tbps):
  """KL, CE (soft targets and labels) and JSD at [8192, 131072], with the bytes each
  must move -- every input read once, the gradient written once -- and the achieved
  percentage of the peak bandwidth."""
  shape = (64, 2048) if quick else (8192, 131072)
  n = shape[0] * shape[1]
  out = []
  for dtype in ("bfloat16", "float32"):
    itemsize = jnp.dtype(dtype).itemsize
    for loss in GPU_LOSSES:
      for mode in ("fwd", "vg"):
        case = _bench_case(loss, mode, shape, dtype, repeats, seed)
        reads = (1 if loss == "ce_labels" else 2) * n * itemsize
        moved = reads + (n * itemsize if mode == "vg" else 0)
        case["bytes_moved"] = moved
        case["bandwidth_pct_of_peak"] = {
          k: 100 * moved / (v * 1e-3) / (peak_tbps * 1e12) for k, v in case["ms"].items()
        }
        print("gpu " + _row(case), flush=True)
        out.append(case)
  return out


def run(
  quick: bool = False,
  gpu: bool = False,
  repeats: int | None = None,
  seed: int = 0,
  peak_tbps: float = 4.8,
) -> dict:
  repeats = repeats or (3 if quick else 7)
  cases, floors, errors = [], [], []
  for shape, dtype in _shapes(quick):
    # Calls of tens of microseconds vary by a third from one to the next on a shared
    # machine: small shapes get enough repeats for a stable median (not in --quick).
    n = repeats if quick or math.prod(shape) > _SMALL else max(repeats, _SMALL_REPEATS)
    for loss in LOSSES:
      for mode in ("fwd", "vg"):
        cases.append(_bench_case(loss, mode, shape, dtype, n, seed))
        print(_row(cases[-1]), flush=True)
    floors.append(_floors(shape, dtype, n, seed))
    if dtype == "float32":
      for loss in LOSSES:
        errors.append(
          {
            "loss": loss,
            "shape": list(shape),
            "max_rel_error": _rel_error(loss, shape, jnp.float32, seed),
          }
        )
  eager, vmapped = [], []
  for shape in [(8, 10), (16, 64)] if quick else [(8, 10), (64, 1000)]:
    for loss in LOSSES:
      eager.append(_eager_case(loss, shape, repeats if quick else _SMALL_REPEATS, seed))
      print(_row(eager[-1]), flush=True)
  for loss in LOSSES:
    for mode in ("fwd", "vg"):
      vmapped.append(
        _vmap_case(loss, mode, (4, 16, 64) if quick else (4, 256, 8192), repeats, seed)
      )
      print(_vmap_row(vmapped[-1]), flush=True)
  out = {
    "eager": eager,
    "vmap": vmapped,
    "baseline": _BASELINE.get("rev"),
    "backend": jax.default_backend(),
    "device": str(jax.devices()[0].device_kind),
    "jax": jax.__version__,
    "quick": quick,
    "repeats": repeats,
    "seed": seed,
    "cases": cases,
    "floors": floors,
    "rel_errors": errors,
  }
  if gpu:
    out["peak_tbps"] = peak_tbps
    out["gpu_cases"] = _gpu_cases(quick, repeats, seed, peak_tbps)
  return out


def _mib(b):
  return "-" if b is None else f"{b / 2**20:.1f}"


def _row(c):
  ms, t = c["ms"], c["temp_bytes"]
  shape = "x".join(map(str, c["shape"]))
  vs_optax = "-" if c["speedup_vs_optax"] is None else f"{c['speedup_vs_optax']:.2f}"
  row = (
    f"{c['loss']:<10}{c['mode']:<6}{shape:>12} {c['dtype']:<9}"
    + "".join(f"{ms[k]:>9.3f}" if k in ms else f"{'-':>9}" for k in IMPLS)
    + f"{vs_optax:>8}x{c['speedup_vs_jax']:>7.2f}x"
    + "".join(f"{_mib(t.get(k)):>9}" for k in IMPLS)
  )
  if c.get("speedup_vs_baseline") is not None:
    row += f"{ms['baseline']:>10.3f}{c['speedup_vs_baseline']:>7.2f}x"
  return row


def _vmap_row(v):
  ms = v["ms"]
  return (
    f"vmap {v['loss']:<10}{v['mode']:<4}{'x'.join(map(str, v['shape'])):>12} "
    f"jaxdiv vmap {ms['jaxdiv_vmap']:.2f} ms / batched {ms['jaxdiv_batched']:.2f} ms "
    f"= {v['jaxdiv_vmap_over_batched']:.2f}x; optax vmap {ms['optax_vmap']:.2f} ms "
    f"({v['optax_vmap_over_jaxdiv_vmap']:.2f}x jaxdiv's)"
  )


def table(results: dict) -> str:
  head = (
    f"{'loss':<10}{'mode':<6}{'shape':>12} {'dtype':<9}"
    + "".join(f"{k + ' ms':>9}" for k in IMPLS)
    + f"{'/optax':>9}{'/jax':>8}"
    + "".join(f"{k[:4] + ' MiB':>9}" for k in IMPLS)
  )
  if results.get("baseline"):
    head += f"{'base ms':>10}{'/base':>8}"
  lines = [head, "-" * len(head)] + [_row(c) for c in results["cases"]]
  if results.get("baseline"):
    lines.append(f"(base: jaxdiv at revision {results['baseline']}, interleaved in the same run)")
  lines += ["", "eager calls (outside jit, after a warm-up call):"]
  lines += [_row(c) for c in results["eager"]]
  lines += ["", "vmap over a leading axis against the same data batched:"]
  lines += [_vmap_row(v) for v in results["vmap"]]
  lines += ["", "floors (KL forward vs exp over both arrays and a jitted identity):"]
  for f in results["floors"]:
    ms = f["ms"]
    lines.append(
      f"  {'x'.join(map(str, f['shape'])):>12} {f['dtype']:<9} kl {ms['jaxdiv_kl']:.3f} ms, "
      f"exp {ms['exp_floor']:.3f} ms (x{f['kl_over_exp_floor']:.2f}), "
      f"identity {ms['identity']:.3f} ms (x{f['kl_over_identity']:.2f})"
    )
  lines += ["", "float32 relative error of jaxdiv against float64:"]
  lines += [
    f"  {e['loss']:<10}{'x'.join(map(str, e['shape'])):>12}  {e['max_rel_error']:.2e}"
    for e in results["rel_errors"]
  ]
  for c in results.get("gpu_cases", []):
    pct = c["bandwidth_pct_of_peak"]
    lines.append(
      f"gpu {_row(c)}  bandwidth % of {results['peak_tbps']} TB/s: "
      + ", ".join(f"{k} {v:.1f}%" for k, v in pct.items())
    )
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats")
  parser.add_argument(
    "--gpu", action="store_true", help="add KL, CE and JSD at [8192, 131072] with % of bandwidth"
  )
  parser.add_argument("--peak-tbps", type=float, default=4.8, help="peak bandwidth (TB/s)")
  parser.add_argument("--repeats", type=int, default=None, help="timed runs per function")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=os.path.join("results", "bench.json"))
  parser.add_argument(
    "--baseline",
    metavar="REV",
    default=None,
    help="also time jaxdiv at this git revision (e.g. a release tag), interleaved",
  )
  args = parser.parse_args(argv)
  if args.baseline:
    load_baseline(args.baseline)
  results = run(args.quick, args.gpu, args.repeats, args.seed, args.peak_tbps)
  print(table(results))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as fh:
    json.dump(results, fh, sort_keys=True, indent=2)
    fh.write("\n")
  print(f"wrote {args.out}")
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
