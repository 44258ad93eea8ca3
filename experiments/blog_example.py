"""The seed blog post's example, computed exactly, beside its epsilon-clipped numpy code.

    python -m experiments.blog_example --out results

With p = [1, 0] and q = [0.7, 0.3] in float64, KL(p||q) and H(p, q) both equal
-ln 0.7 = 0.35667494393873245 and H(p) is exactly 0. The blog clips p to [1e-10, 1], so
its zero becomes 1e-10 and adds 1e-10 * ln(1e-10 / 0.3) = -2.2e-9 to KL and
-1e-10 * ln(1e-10) = 2.3e-9 to H(p): hence its 0.3566749417565447.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from experiments import _io


@dataclasses.dataclass(frozen=True)
class Config:
  epsilon: float = 1e-10  # the blog's clipping constant


def blog_numpy(p, q, epsilon):
  """The blog's code, verbatim in substance."""
  pc = np.clip(p, epsilon, 1.0)
  qc = np.clip(q, epsilon, 1.0)
  kl = np.sum(pc * np.log(pc)) - np.sum(pc * np.log(qc))
  ce = -np.sum(p * np.log(q))
  h = -np.sum(pc * np.log(pc))
  return {"kl": float(kl), "cross_entropy": float(ce), "entropy": float(h)}


def run(config: Config) -> dict:
  import jax

  jax.config.update("jax_enable_x64", True)
  import jaxdiv

  p = np.array([1, 0])
  q = np.array([0.7, 0.3])
  exact = {
    "kl": float(jaxdiv.kl_divergence(p, q)),
    "cross_entropy": float(jaxdiv.cross_entropy(p, q)),
    "entropy": float(jaxdiv.entropy(p)),
  }
  blog = blog_numpy(p, q, config.epsilon)
  return {
    "config": dataclasses.asdict(config),
    "versions": _io.versions(),
    "true_value": float(-np.log(0.7)),
    "jaxdiv": exact,
    "blog_numpy": blog,
    "blog_error": {k: blog[k] - exact[k] for k in exact},
  }


HELP = {"epsilon": "the blog's clipping constant"}


def main(argv=None) -> int:
  parser = _io.config_parser(Config, __doc__.splitlines()[0], help=HELP)
  args = parser.parse_args(argv)
  config = _io.config_from_args(Config, args)
  out = _io.prepare_out_dir(args.out)
  with _io.command_line("blog_example"):
    results = run(config)
    _io.write_json_atomic(results, out / "blog_example.json")
  if not args.quiet:
    for k in ("kl", "cross_entropy", "entropy"):
      print(f"{k:>14}: jaxdiv {results['jaxdiv'][k]!r:<22} blog {results['blog_numpy'][k]!r}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
