"""Run jaxdiv and its peer libraries on the same edge cases and print where they differ.

    .venv/bin/python scripts/peers.py [--out results/peers.json]

Peers: optax, jax.scipy.special and scipy (always installed with the `test` and
`experiments` extras), TensorFlow Probability's JAX substrate and PyTorch when they are
importable (they are not dependencies; install them in a separate environment to
include them). Each row is one edge case; each cell is what that library returns for
the value (and, where marked, the gradient). This table backs the "Numerical
guarantees" section of the README; the same cases are asserted for jaxdiv in
tests/test_grid.py and tests/test_kl.py.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import jaxdiv  # noqa: E402

NINF = -np.inf


def _fmt(x) -> str:
  try:
    a = np.asarray(x, np.float64)
  except Exception:  # noqa: BLE001
    return str(x)
  if a.ndim == 0:
    v = float(a)
    return (
      "nan"
      if math.isnan(v)
      else ("inf" if v == math.inf else ("-inf" if v == -math.inf else f"{v:.6g}"))
    )
  return "[" + ", ".join(_fmt(v) for v in a.ravel()) + "]"


def _try(fn):
  try:
    return _fmt(fn())
  except Exception as e:  # noqa: BLE001
    return f"error: {type(e).__name__}"


def _cases():
  import optax
  import scipy.spatial.distance
  import scipy.special
  import scipy.stats

  try:
    import torch
    import torch.nn.functional as F
  except ImportError:
    torch = None
  try:
    import tensorflow_probability.substrates.jax as tfp
  except Exception:  # noqa: BLE001
    tfp = None

  t = (lambda x: torch.tensor(np.asarray(x, np.float64))) if torch else None

  def torch_grad(f, x):
    x = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    f(x).backward()
    return x.grad.numpy()

  cases = []

  def case(name, jaxdiv_fn, **peers):
    row = {"case": name, "jaxdiv": _try(jaxdiv_fn)}
    for k, v in peers.items():
      row[k] = _try(v) if v is not None else "n/a"
    cases.append(row)

  p1, q1 = jnp.array([1.0, 0.0]), jnp.array([0.7, 0.3])
  case(
    "entropy of one-hot [1, 0]",
    lambda: jaxdiv.entropy(p1),
    scipy=lambda: scipy.stats.entropy([1.0, 0.0]),
    blog_numpy=lambda: -np.sum(np.clip([1, 0], 1e-10, 1) * np.log(np.clip([1, 0], 1e-10, 1))),
    torch=(lambda: -torch.special.xlogy(t([1.0, 0.0]), t([1.0, 0.0])).sum()) if torch else None,
  )
  case(
    "KL([1,0] || [0.7,0.3]) = -ln 0.7 = 0.356674943938732",
    lambda: jaxdiv.kl_divergence(p1, q1),
    scipy=lambda: scipy.stats.entropy([1.0, 0.0], [0.7, 0.3]),
    optax=lambda: optax.losses.kl_divergence(jnp.log(q1), p1),
    torch=(lambda: F.kl_div(t([0.7, 0.3]).log(), t([1.0, 0.0]), reduction="sum"))
    if torch
    else None,
  )
  case(
    "KL(p || q) with p_i > 0 = q_i (expected +inf)",
    lambda: jaxdiv.kl_divergence(jnp.array([0.5, 0.5]), p1),
    scipy=lambda: scipy.stats.entropy([0.5, 0.5], [1.0, 0.0]),
    optax=lambda: optax.losses.kl_divergence(jnp.log(p1), jnp.array([0.5, 0.5])),
    torch=(lambda: F.kl_div(t([1.0, 0.0]).log(), t([0.5, 0.5]), reduction="sum"))
    if torch
    else None,
    tfp=(
      lambda: tfp.distributions.kl_divergence(
        tfp.distributions.Categorical(probs=jnp.array([0.5, 0.5])),
        tfp.distributions.Categorical(probs=p1),
      )
    )
    if tfp
    else None,
  )
  case(
    "d KL / d p at p = [1, 0], q = [0.7, 0.3] (finite: [1 - ln .7, 0 - ln .3] conv.)",
    lambda: jax.grad(lambda p: jaxdiv.kl_divergence(p, q1))(p1),
    optax=lambda: jax.grad(lambda p: optax.losses.kl_divergence(jnp.log(q1), p))(p1),
    torch=(
      lambda: torch_grad(lambda p: F.kl_div(t([0.7, 0.3]).log(), p, reduction="sum"), [1.0, 0.0])
    )
    if torch
    else None,
  )
  z = jnp.array([0.0, NINF, 1.0])
  case(
    "CE, one-hot target, -inf logit on a zero-target class (expected ln(1+e))",
    lambda: jaxdiv.cross_entropy(jnp.array([1.0, 0.0, 0.0]), q_logits=z),
    optax=lambda: optax.losses.softmax_cross_entropy(z, jnp.array([1.0, 0.0, 0.0])),
    torch=(lambda: F.cross_entropy(t([[0.0, -np.inf, 1.0]]), t([[1.0, 0.0, 0.0]])))
    if torch
    else None,
  )
  case(
    "CE, integer label, -inf logit on another class (expected ln(1+e))",
    lambda: jaxdiv.cross_entropy(labels=jnp.array(0), q_logits=z),
    optax=lambda: optax.losses.softmax_cross_entropy_with_integer_labels(z, jnp.array(0)),
    torch=(lambda: F.cross_entropy(t([[0.0, -np.inf, 1.0]]), torch.tensor([0]))) if torch else None,
  )
  case(
    "d CE / d logits, integer label, -inf logit (expected finite)",
    lambda: jax.grad(lambda z: jaxdiv.cross_entropy(labels=jnp.array(0), q_logits=z))(z),
    optax=lambda: jax.grad(
      lambda z: optax.losses.softmax_cross_entropy_with_integer_labels(z, jnp.array(0))
    )(z),
    torch=(
      lambda: torch_grad(lambda x: F.cross_entropy(x[None], torch.tensor([0])), [0.0, -np.inf, 1.0])
    )
    if torch
    else None,
  )
  case(
    "CE, integer label >= num classes (expected NaN or an error, never finite)",
    lambda: jaxdiv.cross_entropy(labels=jnp.array(3), q_logits=jnp.zeros(3)),
    optax=lambda: optax.losses.softmax_cross_entropy_with_integer_labels(
      jnp.zeros(3), jnp.array(3)
    ),
    torch=(lambda: F.cross_entropy(t([[0.0, 0.0, 0.0]]), torch.tensor([3]))) if torch else None,
  )
  case(
    "CE, negative label -1 (jaxdiv/torch: ignored = 0)",
    lambda: jaxdiv.cross_entropy(labels=jnp.array(-1), q_logits=jnp.zeros(3)),
    optax=lambda: optax.losses.softmax_cross_entropy_with_integer_labels(
      jnp.zeros(3), jnp.array(-1)
    ),
    torch=(lambda: F.cross_entropy(t([[0.0, 0.0, 0.0]]), torch.tensor([-1]), ignore_index=-1))
    if torch
    else None,
  )
  case(
    "entropy of [1.5, -0.5] (a negative probability: expected NaN or an error)",
    lambda: jaxdiv.entropy(jnp.array([1.5, -0.5])),
    scipy=lambda: scipy.stats.entropy([1.5, -0.5]),
    scipy_entr=lambda: np.sum(scipy.special.entr([1.5, -0.5])),
    torch=(lambda: -torch.special.xlogy(t([1.5, -0.5]), t([1.5, -0.5])).sum()) if torch else None,
  )
  zb = jnp.array([np.inf, -np.inf, 0.0])
  yb = jnp.array([1.0, 0.0, 1.0])
  case(
    "binary CE at logits [+inf, -inf, 0] with targets [1, 0, 1] (expected [0, 0, ln 2])",
    lambda: jaxdiv.binary_cross_entropy(yb, q_logits=zb),
    optax=lambda: optax.losses.sigmoid_binary_cross_entropy(zb, yb),
    torch=(
      lambda: F.binary_cross_entropy_with_logits(
        t([np.inf, -np.inf, 0.0]), t([1.0, 0.0, 1.0]), reduction="none"
      )
    )
    if torch
    else None,
  )
  ps = jnp.array([[0.2, 0.8], [0.5, 0.5]])
  qs = jnp.array([[0.6, 0.4], [0.1, 0.9]])
  case(
    "KL batch of 2 rows, mean over batch (torch reduction='mean' averages over elements)",
    lambda: jnp.mean(jaxdiv.kl_divergence(ps, qs)),
    torch=(lambda: F.kl_div(t(np.log(qs)), t(ps), reduction="mean")) if torch else None,
    torch_batchmean=(lambda: F.kl_div(t(np.log(qs)), t(ps), reduction="batchmean"))
    if torch
    else None,
  )
  pj, qj = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
  case(
    "Jensen-Shannon of disjoint supports (jaxdiv: ln 2 = 0.693147)",
    lambda: (
      jaxdiv.jensen_shannon_divergence(pj, qj)
      if hasattr(jaxdiv, "jensen_shannon_divergence")
      else np.nan
    ),
    scipy_jensenshannon=lambda: scipy.spatial.distance.jensenshannon([1.0, 0.0], [0.0, 1.0]),
  )
  zbig = jnp.array([1e4, -1e4, 0.0], jnp.float32)
  case(
    "KL from float32 logits of +-1e4 (expected finite, 1e4 + ...)",
    lambda: jaxdiv.kl_divergence(p_logits=zbig, q_logits=zbig[::-1]),
    optax=lambda: optax.losses.kl_divergence_with_log_targets(
      jax.nn.log_softmax(zbig[::-1]), jax.nn.log_softmax(zbig)
    ),
  )
  zbf = jnp.array([3.0, 1.0, 0.2], jnp.bfloat16)
  case(
    "dtype of CE from bfloat16 logits (jaxdiv accumulates and returns float32)",
    lambda: str(jaxdiv.cross_entropy(labels=jnp.array(0), q_logits=zbf).dtype),
    optax=lambda: str(
      optax.losses.softmax_cross_entropy_with_integer_labels(zbf, jnp.array(0)).dtype
    ),
  )
  return cases


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=None, help="also write the table as JSON here")
  args = parser.parse_args(argv)
  rows = _cases()
  for r in rows:
    print(f"\n{r['case']}")
    for k, v in r.items():
      if k != "case":
        print(f"  {k:>18}: {v}")
  if args.out:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
