r"""Fused linear-head losses against the naive ``logits = hidden @ weight`` step, on CPU.

    .venv/bin/python scripts/bench_fused.py                    # every shape and case (long)
    .venv/bin/python scripts/bench_fused.py --shapes medium    # 1024 x 512 x 32768 only
    .venv/bin/python scripts/bench_fused.py --quick            # a smoke test, seconds

A distillation student step: the value and the gradient, with respect to the student's
``hidden`` and ``weight``, of the loss summed over tokens, the teacher frozen. For each loss
(cross-entropy on labels; KL(teacher || student), reverse KL, JSD with w = 0.5, skew KL with
alpha = 0.1 and total variation, the teacher given as its head ``hidden @ weight`` or as
``[N, V]`` logits) three programs are compiled with the library's default blocks and timed
alternately in one process:

* ``fused_sum``: the fused loss with ``reduction="sum"`` (the gradient formed in the sweep);
* ``fused_per_token``: the fused loss per token (``reduction=None``), summed by the caller
  (the backward pass recomputes each block, since the weight is differentiated);
* ``naive``: the core function on materialised logits, jitted.

Reported per case: the compiled temporaries (``memory_analysis().temp_size_in_bytes``, a
deterministic compile-time figure) and the same less one buffer the size of the weight's
gradient; the median over rounds of each round's time ratio to the naive step; the
relative errors of the loss and of the gradients (``max |g - g_naive| / max |g_naive|``),
against the naive step in float32 and against a float64 step at the small shape. Two more
comparisons: a stored (top-k) teacher against ``linear_cross_entropy`` on the same student
(the same sweep plus a gather), and the distillation loss with a hard term against its soft
term alone. Results go to ``OUT/bench_fused.json`` (sorted keys); times vary between runs,
memory does not. Targets: docs' performance page.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiv

NAME = "bench_fused"
SHAPES = {  # name -> (tokens N, hidden D, vocabulary V)
  "small": (128, 256, 8192),
  "medium": (1024, 512, 32768),
  "large": (8192, 512, 65536),
}
LOSSES = ("cross_entropy", "kl", "reverse_kl", "jensen_shannon", "skew_kl", "total_variation")
TEACHERS = ("head", "logits")
_PROGRESS = functools.partial(print, flush=True)


@dataclasses.dataclass(frozen=True)
class Config:
  shapes: tuple[str, ...] = ("small", "medium", "large")
  losses: tuple[str, ...] = LOSSES
  rounds: dict | None = None  # shape -> timed rounds (default: 30, 15, 3)
  large_losses: tuple[str, ...] = ("cross_entropy", "kl", "jensen_shannon")
  top_k: int = 64  # the stored teacher's categories per token
  seed: int = 0
  quick: bool = False


QUICK_SHAPES = {"quick": (64, 32, 2048)}


def _rounds(config, shape):
  if config.quick:
    return 1
  return (config.rounds or {}).get(shape, {"small": 100, "medium": 15, "large": 3}[shape])


def _inputs(shape, seed):
  n, d, v = shape
  rng = np.random.default_rng(seed)
  f32 = np.float32
  return {
    "h": jnp.asarray(rng.standard_normal((n, d), f32)),
    "w": jnp.asarray(rng.standard_normal((d, v), f32) / np.sqrt(d, dtype=f32)),
    "ht": jnp.asarray(rng.standard_normal((n, d), f32)),
    "wt": jnp.asarray(2 * rng.standard_normal((d, v), f32) / np.sqrt(d, dtype=f32)),
    "labels": jnp.asarray(rng.integers(0, v, size=n), jnp.int32),
  }


_PAIRS = {  # fused, core, option
  "kl": ("linear_kl_divergence", "kl_divergence", {}),
  "reverse_kl": ("linear_kl_divergence", "kl_divergence", {}),
  "jensen_shannon": (
    "linear_jensen_shannon_divergence",
    "jensen_shannon_divergence",
    {"weight": 0.5},
  ),
  "skew_kl": ("linear_skew_kl_divergence", "skew_kl_divergence", {"alpha": 0.1}),
  "total_variation": ("linear_total_variation_distance", "total_variation_distance", {}),
}


def _steps(loss, teacher):
  """``(fused_sum, fused_per_token, naive)``: scalar losses of ``(h, w, arrays)``."""
  if loss == "cross_entropy":

    def fused(h, w, a, reduction):
      return jaxdiv.linear_cross_entropy(h, w, a["labels"], reduction=reduction)

    def naive(h, w, a):
      return jaxdiv.cross_entropy(labels=a["labels"], q_logits=h @ w).sum()
  else:
    fused_name, core_name, opts = _PAIRS[loss]
    fused_fn, core_fn = getattr(jaxdiv, fused_name), getattr(jaxdiv, core_name)
    reverse = loss == "reverse_kl"

    def teacher_kw(a, role):
      if teacher == "head":
        return {f"{role}_hidden": a["ht"], f"{role}_weight": a["wt"]}
      return {f"{role}_logits": a["zt"]}

    def fused(h, w, a, reduction):
      student = {"p_hidden": h, "p_weight": w} if reverse else {"q_hidden": h, "q_weight": w}
      t = teacher_kw(a, "q" if reverse else "p")
      return fused_fn(**student, **t, **opts, reduction=reduction)

    def naive(h, w, a):
      zt = a["ht"] @ a["wt"] if teacher == "head" else a["zt"]
      zs = h @ w
      zp, zq = (zs, zt) if reverse else (zt, zs)
      return core_fn(p_logits=zp, q_logits=zq, **opts).sum()

  return (
    lambda h, w, a: fused(h, w, a, "sum"),
    lambda h, w, a: fused(h, w, a, None).sum(),
    naive,
  )


def _compile(f, h, w, a):
  return jax.jit(jax.value_and_grad(f, (0, 1))).lower(h, w, a).compile()


def _rel(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300))


# A naive step whose temporaries exceed this share of the machine's memory is not run.
_MEMORY_SHARE = 0.6


def _physical_memory() -> int:
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _time_alternately(programs: dict, args, rounds: int, reference="naive") -> dict:
  """Per program: the median time, and the median over rounds of its ratio to the
  ``reference`` program (``None``: no ratio)."""
  times = {k: [] for k in programs}
  for _ in range(rounds):
    for k, c in programs.items():
      start = time.perf_counter()
      jax.block_until_ready(c(*args))
      times[k].append(time.perf_counter() - start)
  out = {}
  for k, ts in times.items():
    ratio = None
    if reference is not None:
      ratio = statistics.median(t / n for t, n in zip(ts, times[reference], strict=True))
    out[k] = {"seconds": statistics.median(ts), "ratio": ratio, "runs": ts}
  return out


def bench_case(shape_name, shape, loss, teacher, config, progress=None) -> dict:
  progress = progress or _PROGRESS
  n, d, v = shape
  arrays = _inputs(shape, config.seed)
  if teacher == "logits" and loss != "cross_entropy":
    arrays["zt"] = arrays["ht"] @ arrays["wt"]
  h, w = arrays.pop("h"), arrays.pop("w")
  fused_sum, fused_tok, naive = _steps(loss, teacher)
  programs = {"fused_sum": fused_sum, "fused_per_token": fused_tok, "naive": naive}
  compiled, out = {}, {}
  for k, f in programs.items():
    compiled[k] = _compile(f, h, w, arrays)
    temp = int(compiled[k].memory_analysis().temp_size_in_bytes)
    out[k] = {"temp_bytes": temp, "temp_bytes_less_weight_gradient": temp - d * v * 4}
  fits = out["naive"]["temp_bytes"] <= _MEMORY_SHARE * _physical_memory()
  out["naive"]["fits"] = fits  # if not, its temporaries are the result: it is not run
  if fits:
    values = {k: jax.block_until_ready(c(h, w, arrays)) for k, c in compiled.items()}
    for k in ("fused_sum", "fused_per_token"):
      (lf, gf), (ln, gn) = values[k], values["naive"]
      out[k]["loss_rel_error"] = abs(float(lf) - float(ln)) / max(abs(float(ln)), 1e-300)
      out[k]["grad_rel_error"] = max(_rel(a, b) for a, b in zip(gf, gn, strict=True))
    del values
  if fits and shape_name in ("small", "quick"):  # against float64, where a sign may round
    with jax.enable_x64(True):
      wide = {k: x.astype(jnp.float64) if x.dtype == jnp.float32 else x for k, x in arrays.items()}
      ref = jax.jit(jax.value_and_grad(naive, (0, 1)))(
        h.astype(jnp.float64), w.astype(jnp.float64), wide
      )
      for k in ("fused_sum", "naive"):
        lv, g = compiled[k](h, w, arrays)
        out[k]["grad_rel_error_float64"] = max(_rel(a, b) for a, b in zip(g, ref[1], strict=True))
  timed = compiled if fits else {k: compiled[k] for k in ("fused_sum", "fused_per_token")}
  timing = _time_alternately(
    timed, (h, w, arrays), _rounds(config, shape_name), reference="naive" if fits else None
  )
  for k, t in timing.items():
    out[k].update(t)
  if not fits:
    progress(
      f"{shape_name} {loss}/{teacher}: the naive step needs "
      f"{out['naive']['temp_bytes'] / 2**30:.1f} GiB of temporaries and is not run; fused "
      f"sum {out['fused_sum']['seconds']:.1f} s, per token {out['fused_per_token']['seconds']:.1f} "
      f"s; temporaries {out['fused_sum']['temp_bytes'] / 2**20:.0f} MiB"
    )
    return out
  progress(
    f"{shape_name} {loss}/{teacher}: sum {out['fused_sum']['ratio']:.2f}x, per token "
    f"{out['fused_per_token']['ratio']:.2f}x of naive {out['naive']['seconds'] * 1e3:.1f} ms; "
    f"temporaries {out['fused_sum']['temp_bytes'] / 2**20:.0f} / "
    f"{out['naive']['temp_bytes'] / 2**20:.0f} MiB; grad error "
    f"{out['fused_sum']['grad_rel_error']:.1e}"
  )
  return out


def bench_stored(shape_name, shape, config, progress=None) -> dict:
  """A top-k teacher (residual tail) against ``linear_cross_entropy`` on the same student."""
  progress = progress or _PROGRESS
  arrays = _inputs(shape, config.seed)
  lp = jax.nn.log_softmax(arrays["ht"] @ arrays["wt"])
  lp_k, idx = jax.lax.top_k(lp, config.top_k)
  stored = {"labels": arrays["labels"], "idx": idx, "lp": lp_k}
  del lp
  h, w = arrays["h"], arrays["w"]
  programs = {
    "stored_kl": lambda h, w, a: jaxdiv.linear_kl_divergence(
      p_indices=a["idx"], p_log_probs=a["lp"], q_hidden=h, q_weight=w, reduction="sum"),
    "naive": lambda h, w, a: jaxdiv.linear_cross_entropy(h, w, a["labels"], reduction="sum"),
  }  # fmt: skip
  compiled = {k: _compile(f, h, w, stored) for k, f in programs.items()}
  timing = _time_alternately(compiled, (h, w, stored), _rounds(config, shape_name))
  out = {
    "ratio_to_linear_cross_entropy": timing["stored_kl"]["ratio"],
    "stored_kl_seconds": timing["stored_kl"]["seconds"],
    "linear_cross_entropy_seconds": timing["naive"]["seconds"],
    "temp_bytes": int(compiled["stored_kl"].memory_analysis().temp_size_in_bytes),
    "top_k": config.top_k,
  }
  progress(f"{shape_name} stored top-{config.top_k}: {out['ratio_to_linear_cross_entropy']:.2f}x "
           f"linear_cross_entropy")  # fmt: skip
  return out


def bench_distillation(shape_name, shape, config, progress=None) -> dict:
  """The distillation loss with a hard term against its soft term alone (teacher head)."""
  progress = progress or _PROGRESS
  a = _inputs(shape, config.seed)
  h, w = a.pop("h"), a.pop("w")

  def loss(hard):
    def f(h, w, a):
      return jaxdiv.linear_distillation_loss(
        h, w, a["labels"], teacher_hidden=a["ht"], teacher_weight=a["wt"], temperature=2.0,
        hard_weight=0.5 if hard else 0.0, reduction="sum")  # fmt: skip

    return f

  compiled = {
    "hard_and_soft": _compile(loss(True), h, w, a),
    "naive": _compile(loss(False), h, w, a),
  }
  timing = _time_alternately(compiled, (h, w, a), _rounds(config, shape_name))
  out = {"ratio_to_soft_alone": timing["hard_and_soft"]["ratio"],
         "soft_alone_seconds": timing["naive"]["seconds"]}  # fmt: skip
  progress(f"{shape_name} distillation hard + soft: {out['ratio_to_soft_alone']:.2f}x soft alone")
  return out


def run(config: Config, progress=None) -> dict:
  progress = progress or _PROGRESS
  shapes = QUICK_SHAPES if config.quick else {k: SHAPES[k] for k in config.shapes}
  results = {}
  for shape_name, shape in shapes.items():
    losses = config.large_losses if shape_name == "large" else config.losses
    cases = {}
    for loss in losses:
      for teacher in ("head",) if loss == "cross_entropy" else TEACHERS:
        cases[f"{loss}/{teacher}"] = bench_case(shape_name, shape, loss, teacher, config, progress)
    results[shape_name] = {
      "shape": list(shape),
      "cases": cases,
      "stored_teacher": bench_stored(shape_name, shape, config, progress),
      "distillation": bench_distillation(shape_name, shape, config, progress),
    }
  return {
    "config": dataclasses.asdict(config),
    "blocks": {
      "block_elements": jaxdiv._drivers.BLOCK_ELEMENTS,
      "vocab_block_elements": jaxdiv._drivers.VOCAB_BLOCK_ELEMENTS,
      "sub_elements": jaxdiv._drivers.SUB_ELEMENTS,
    },  # fmt: skip
    "shapes": results,
    "machine": {
      "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind),
      "cpu_count": os.cpu_count(),
      "python": platform.python_version(),
      "jax": jax.__version__,
    },
  }


def table(results: dict) -> str:
  """Markdown tables of the results: time ratios to the naive step, memory, accuracy."""
  lines = []
  for r in results["shapes"].values():
    n, d, v = r["shape"]
    lines += [
      f"**{n} x {d} x {v}** (float32, value and gradient of the student step)",
      "",
      "| loss / teacher | sum | per token | naive ms | temporaries sum / naive (MiB) | "
      "less the weight gradient | grad error |",
      "|---|---|---|---|---|---|---|",
    ]
    for case, c in r["cases"].items():
      fs, ft, nv = c["fused_sum"], c["fused_per_token"], c["naive"]
      if not nv.get("fits", True):
        lines.append(
          f"| {case} | {fs['seconds']:.1f} s | {ft['seconds']:.1f} s | does not fit | "
          f"{fs['temp_bytes'] / 2**20:.1f} / {nv['temp_bytes'] / 2**20:.1f} | "
          f"{fs['temp_bytes_less_weight_gradient'] / 2**20:.1f} | |"
        )
        continue
      lines.append(
        f"| {case} | {fs['ratio']:.2f} | {ft['ratio']:.2f} | {nv['seconds'] * 1e3:.1f} | "
        f"{fs['temp_bytes'] / 2**20:.1f} / {nv['temp_bytes'] / 2**20:.1f} | "
        f"{fs['temp_bytes_less_weight_gradient'] / 2**20:.1f} | {fs['grad_rel_error']:.1e} |"
      )
    s, dl = r["stored_teacher"], r["distillation"]
    lines += [
      "",
      f"stored top-{s['top_k']} teacher: {s['ratio_to_linear_cross_entropy']:.2f}x "
      f"linear_cross_entropy; distillation hard + soft: {dl['ratio_to_soft_alone']:.2f}x the "
      "soft term alone",
      "",
    ]
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="a small smoke-test shape")
  parser.add_argument("--out", default="results", help="folder for bench_fused.json")
  parser.add_argument("--shapes", nargs="+", choices=tuple(SHAPES), default=None)
  parser.add_argument("--losses", nargs="+", choices=LOSSES, default=None)
  parser.add_argument("--rounds", type=int, default=None, help="timed rounds at every shape")
  args = parser.parse_args(argv)
  config = Config(quick=args.quick)
  if args.shapes:
    config = dataclasses.replace(config, shapes=tuple(args.shapes))
  if args.losses:
    config = dataclasses.replace(config, losses=tuple(args.losses))
  if args.rounds:
    config = dataclasses.replace(config, rounds={k: args.rounds for k in SHAPES})
  results = run(config)
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"{NAME}.json"
  path.write_text(json.dumps(results, sort_keys=True, indent=2) + "\n")
  print(table(results), flush=True)
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
