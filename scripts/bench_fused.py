r"""Fused linear-head losses against the naive ``logits = hidden @ weight`` version.

    .venv/bin/python scripts/bench_fused.py            # N=8192, D=512, V=65536 float32
    .venv/bin/python scripts/bench_fused.py --quick    # a smoke-test shape, seconds

For each loss, value-and-gradient with respect to ``hidden`` and ``weight`` of the sum over
tokens, two ways:

* ``cross_entropy``: :func:`jaxdiv.linear_cross_entropy` against the jitted naive
  ``jaxdiv.cross_entropy(labels=labels, q_logits=hidden @ weight).sum()``;
* ``kl_divergence``: :func:`jaxdiv.linear_kl_divergence` with the teacher as ``[N, V]``
  logits (KL(teacher || student), the student ``hidden @ weight``) against the naive
  ``jaxdiv.kl_divergence(p_logits=teacher, q_logits=hidden @ weight).sum()``;
* with ``--cases``, also ``jensen_shannon`` (weight 0.5), ``skew_kl`` (alpha 0.1) and
  ``total_variation``, the teacher as logits in the same way, against the core
  ``jensen_shannon_divergence``, ``skew_kl_divergence`` and ``total_variation_distance``.

Reported per loss: the compiled temporaries of both (``memory_analysis()
.temp_size_in_bytes``, a deterministic compile-time figure) and their ratio (target
<= 1/8 at the full shape), the median wall time of ``--repeats`` interleaved runs after a
warm-up run and the ratio (target <= 1.3), and the gradient error of fused against naive,
``max |g_fused - g_naive| / max |g_naive|`` over the two gradients (target: float32
round-off, <= 1e-4), plus the same relative error of the summed loss. The full shape needs
about 12 GiB of memory and takes minutes on a 2-core CPU. Results go to
``OUT/bench_fused.json`` (sorted keys); times vary between runs, memory does not.
``--cases cross_entropy`` runs one loss only; ``--chunk-size``/``--token-chunk-size``
override the library's block sizes (the way the defaults were chosen).
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
CASES = ("cross_entropy", "kl_divergence")  # the default run
PAIRS = {  # fused loss, core function, options (the teacher as p_logits, the student as q)
  "kl_divergence": ("linear_kl_divergence", "kl_divergence", {}),
  "jensen_shannon": (
    "linear_jensen_shannon_divergence",
    "jensen_shannon_divergence",
    {"weight": 0.5},
  ),
  "skew_kl": ("linear_skew_kl_divergence", "skew_kl_divergence", {"alpha": 0.1}),
  "total_variation": ("linear_total_variation_distance", "total_variation_distance", {}),
}
ALL_CASES = ("cross_entropy", *PAIRS)
_PROGRESS = functools.partial(print, flush=True)


@dataclasses.dataclass(frozen=True)
class Config:
  num_tokens: int = 8192  # N
  hidden: int = 512  # D
  vocab: int = 65536  # V
  chunk_size: int | None = None  # vocabulary block of the fused losses (None: library default)
  token_chunk_size: int | None = None  # token block (None: library default)
  repeats: int = 3  # timed runs per function, interleaved, after one warm-up run
  seed: int = 0
  cases: tuple[str, ...] = CASES


QUICK = Config(num_tokens=256, hidden=32, vocab=4096, chunk_size=512, token_chunk_size=64)


def _inputs(config: Config):
  rng = np.random.default_rng(config.seed)
  n, d, v = config.num_tokens, config.hidden, config.vocab
  hidden = jnp.asarray(rng.standard_normal((n, d), np.float32))
  weight = jnp.asarray(rng.standard_normal((d, v), np.float32) / np.sqrt(d, dtype=np.float32))
  labels = jnp.asarray(rng.integers(0, v, size=n), jnp.int32)
  teacher = jnp.asarray(2 * rng.standard_normal((n, v), np.float32))
  return hidden, weight, labels, teacher


def _losses(case: str, config: Config):
  """``(fused, naive)``: scalar losses of ``(hidden, weight, target)``."""
  chunks = {"chunk_size": config.chunk_size, "token_chunk_size": config.token_chunk_size}
  if case == "cross_entropy":

    def fused(h, w, y):
      return jaxdiv.linear_cross_entropy(h, w, y, **chunks).sum()

    def naive(h, w, y):
      return jaxdiv.cross_entropy(labels=y, q_logits=h @ w).sum()

  else:
    fused_name, core_name, opts = PAIRS[case]
    fused_fn, core_fn = getattr(jaxdiv, fused_name), getattr(jaxdiv, core_name)

    def fused(h, w, zp):
      return fused_fn(q_hidden=h, q_weight=w, p_logits=zp, **opts, **chunks).sum()

    def naive(h, w, zp):
      return core_fn(p_logits=zp, q_logits=h @ w, **opts).sum()

  return fused, naive


def _timed(f, args) -> float:
  start = time.perf_counter()
  jax.block_until_ready(f(*args))
  return time.perf_counter() - start


def _rel_error(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def bench_case(case: str, config: Config, progress=None) -> dict:
  """Memory, time and accuracy of one loss, fused and naive (value-and-gradient)."""
  progress = progress or _PROGRESS
  hidden, weight, labels, teacher = _inputs(config)
  args = (hidden, weight, labels if case == "cross_entropy" else teacher)
  del labels, teacher
  compiled, out = {}, {}
  for name, f in zip(("fused", "naive"), _losses(case, config), strict=True):
    compiled[name] = jax.jit(jax.value_and_grad(f, (0, 1))).lower(*args).compile()
    out[f"{name}_temp_bytes"] = int(compiled[name].memory_analysis().temp_size_in_bytes)
  progress(
    f"{case}: compiled, temporaries {out['fused_temp_bytes'] / 2**20:.0f} MiB fused, "
    f"{out['naive_temp_bytes'] / 2**20:.0f} MiB naive"
  )
  values, times = {}, {"fused": [], "naive": []}
  for name in ("fused", "naive"):  # warm-up, and the results compared below
    start = time.perf_counter()
    values[name] = jax.block_until_ready(compiled[name](*args))
    progress(f"{case}: {name} warm-up {time.perf_counter() - start:.2f} s")
  (loss_f, grads_f), (loss_n, grads_n) = values["fused"], values["naive"]
  out["loss_rel_error"] = abs(float(loss_f) - float(loss_n)) / abs(float(loss_n))
  out["grad_rel_error"] = max(_rel_error(a, b) for a, b in zip(grads_f, grads_n, strict=True))
  del values, grads_f, grads_n
  for _ in range(config.repeats):
    for name in ("fused", "naive"):
      times[name].append(_timed(compiled[name], args))
  for name in ("fused", "naive"):
    out[f"{name}_seconds"] = statistics.median(times[name])
    out[f"{name}_runs_seconds"] = times[name]
  out["memory_ratio"] = out["fused_temp_bytes"] / out["naive_temp_bytes"]
  out["time_ratio"] = out["fused_seconds"] / out["naive_seconds"]
  out["logits_bytes"] = config.num_tokens * config.vocab * 4
  progress(
    f"{case}: {out['fused_seconds']:.3f} s fused, {out['naive_seconds']:.3f} s naive "
    f"({out['time_ratio']:.2f}x); grad error {out['grad_rel_error']:.1e}"
  )
  return out


def run(config: Config, progress=None) -> dict:
  progress = progress or _PROGRESS
  from jaxdiv import _fused

  return {
    "config": dataclasses.asdict(config),
    "defaults": {
      "chunk_size": _fused._DEFAULT_CHUNK,
      "token_chunk_size": _fused._DEFAULT_TOKEN_CHUNK,
    },
    "cases": {case: bench_case(case, config, progress) for case in config.cases},
    "machine": {
      "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind),
      "cpu_count": os.cpu_count(),
      "python": platform.python_version(),
      "jax": jax.__version__,
    },
  }


def table(results: dict) -> str:
  """A Markdown table of the results."""
  c = results["config"]
  lines = [
    f"value-and-gradient, N={c['num_tokens']}, D={c['hidden']}, V={c['vocab']} float32",
    "",
    "| loss | temporaries fused / naive (MiB) | memory ratio | time fused / naive (s) "
    "| time ratio | grad rel. error |",
    "|---|---|---|---|---|---|",
  ]
  for case, r in results["cases"].items():
    lines.append(
      f"| {case} | {r['fused_temp_bytes'] / 2**20:.0f} / {r['naive_temp_bytes'] / 2**20:.0f} "
      f"| {r['memory_ratio']:.3f} (1/{1 / r['memory_ratio']:.0f}) "
      f"| {r['fused_seconds']:.3f} / {r['naive_seconds']:.3f} | {r['time_ratio']:.2f} "
      f"| {r['grad_rel_error']:.1e} |"
    )
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="a small smoke-test shape")
  parser.add_argument("--out", default="results", help="folder for bench_fused.json")
  parser.add_argument(
    "--cases", nargs="+", choices=ALL_CASES, default=None, help=f"default: {' '.join(CASES)}"
  )
  for field in dataclasses.fields(Config):
    if field.name != "cases":
      parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=None)
  args = parser.parse_args(argv)
  config = QUICK if args.quick else Config()
  overrides = {
    f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if getattr(args, f.name)
  }
  if args.cases:
    overrides["cases"] = tuple(args.cases)
  config = dataclasses.replace(config, **overrides)
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
