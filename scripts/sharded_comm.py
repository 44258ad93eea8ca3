r"""Communication of the vocabulary-parallel losses, read from their compiled programs.

    python scripts/sharded_comm.py [--devices 4] [--rows 64] [--dim 32] [--vocab 1024]
    python scripts/sharded_comm.py --memory

Compiles the value and gradient of each loss on ``--devices`` simulated CPU devices (a
``data x vocab`` mesh of ``2 x devices/2`` and a ``vocab`` mesh of all of them), parses
every collective in the optimised HLO and prints, per loss, the collectives and their
payload in bytes per row (token), split by what the payload scales with: rows (per-row
statistics), rows x D (the hidden-state gradient), D x V/k (the weight gradient over the
data axis, once per step) and rows x V (gathered logits). The last lines compile the same
loss on logits forced to be replicated (gathered), the alternative the sharded losses avoid.
``--memory`` prints the compiled temporaries per device of each loss's value and gradient.
"""

from __future__ import annotations

import argparse
import os
import re
import sys


def _collectives(hlo: str):
  """``(op, [(dtype, shape), ...])`` for every collective of an optimised HLO module."""
  ops = "all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute"
  out = []
  for line in hlo.splitlines():
    m = re.search(rf"= (.*?) ({ops})(?:-start)?\(", line)
    if m:
      arrays = re.findall(r"([a-z]+\d+)\[([\d,]*)\]", m.group(1))
      out.append((m.group(2), [(t, tuple(int(d) for d in s.split(",") if d)) for t, s in arrays]))
  return out


def _memory(jax, jnp, jaxdiv, NamedSharding, P) -> int:
  """Temporaries of value-and-gradient per device: 2 x 2 mesh, 4096 tokens, D 256, V 32768."""
  auto = (jax.sharding.AxisType.Auto,) * 2
  mesh = jax.make_mesh((2, 2), ("data", "vocab"), axis_types=auto)
  n, d, v = 4096, 256, 32768

  def spec(shape, dtype, *s):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P(*s)))

  h, w = spec((n, d), jnp.float32, "data", None), spec((d, v), jnp.float32, None, "vocab")
  labels = spec((n,), jnp.int32, "data")
  kw = dict(mesh=mesh, axis_name="vocab", data_axis_name="data")
  losses = {
    "sharded_linear_cross_entropy": lambda h, w, t, y: jaxdiv.sharded_linear_cross_entropy(
      h, w, y, **kw
    ),
    "sharded_linear_kl_divergence": lambda h, w, t, y: jaxdiv.sharded_linear_kl_divergence(
      h, t, h, w, **kw
    ),
    "sharded_linear_jensen_shannon_divergence": (
      lambda h, w, t, y: jaxdiv.sharded_linear_jensen_shannon_divergence(h, t, h, w, **kw)
    ),
    "sharded_cross_entropy(hidden @ weight)": lambda h, w, t, y: jaxdiv.sharded_cross_entropy(
      labels=y, q_logits=h @ w, mesh=mesh, axis_name="vocab"
    ),
  }
  for name, f in losses.items():

    def loss(h, w, t, y, f=f):
      return jnp.sum(f(h, w, t, y))

    m = jax.jit(jax.grad(loss, (0, 1))).lower(h, w, w, labels).compile().memory_analysis()
    print(f"{name:44s} temporaries {m.temp_size_in_bytes / 2**20:6.1f} MiB")
  print(f"(float32 logits of one device's rows and columns: {n // 2 * v // 2 * 4 / 2**20:.0f} MiB)")
  return 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--devices", type=int, default=4)
  p.add_argument("--rows", type=int, default=64, help="rows (tokens) per data shard")
  p.add_argument("--dim", type=int, default=32)
  p.add_argument("--vocab", type=int, default=1024)
  p.add_argument(
    "--memory", action="store_true", help="instead: compiled temporaries per device (4 devices)"
  )
  args = p.parse_args(argv)
  if args.memory:
    args.devices = 4
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import jaxdiv

  if args.memory:
    return _memory(jax, jnp, jaxdiv, NamedSharding, P)
  k, n, d, v = args.devices, args.rows, args.dim, args.vocab
  auto = (jax.sharding.AxisType.Auto,)
  meshes = {
    "vocab": jax.make_mesh((k,), ("vocab",), axis_types=auto),
    "data x vocab": jax.make_mesh((2, k // 2), ("data", "vocab"), axis_types=auto * 2),
  }
  bytes_of = {"f32": 4, "f64": 8, "s32": 4, "pred": 1, "bf16": 2}
  rng = np.random.default_rng(0)
  head = "| loss | mesh | collectives | per row: statistics | rows x D | rows x V "
  print(head + "| per step: D x V/k | D x V |")
  print("|---|---|---|---|---|---|---|---|")

  def table_rows(mesh_name, mesh):
    data = "data" if "data" in mesh.shape else None
    vk = v // mesh.shape["vocab"]
    rows = n * (mesh.shape.get("data", 1))  # global rows; n per data shard

    def put(x, *s):
      return jax.device_put(jnp.asarray(x, jnp.float32), NamedSharding(mesh, P(*s)))

    h = put(rng.normal(size=(rows, d)), data, None)
    w = put(rng.normal(size=(d, v)) / 4, None, "vocab")
    w2 = put(rng.normal(size=(d, v)) / 4, None, "vocab")
    z = put(rng.normal(size=(rows, v)), data, "vocab")
    labels = jax.device_put(jnp.asarray(rng.integers(0, v, rows)), NamedSharding(mesh, P(data)))
    kw = dict(mesh=mesh, axis_name="vocab", chunk_size=vk, token_chunk_size=n)
    fkw = dict(kw, data_axis_name=data)
    mkw = dict(mesh=mesh, axis_name="vocab")
    losses = {
      "sharded_linear_cross_entropy": (
        lambda h, w: jaxdiv.sharded_linear_cross_entropy(h, w, labels, **fkw),
        (h, w),
      ),
      "sharded_linear_kl_divergence (teacher frozen)": (
        lambda h, w: jaxdiv.sharded_linear_kl_divergence(jax.lax.stop_gradient(h), w2, h, w, **fkw),
        (h, w),
      ),
      "sharded_linear_jensen_shannon_divergence": (
        lambda h, w: jaxdiv.sharded_linear_jensen_shannon_divergence(
          jax.lax.stop_gradient(h), w2, h, w, **fkw
        ),
        (h, w),
      ),
    }
    if data is None:
      losses["sharded_cross_entropy (logits)"] = (
        lambda z: jaxdiv.sharded_cross_entropy(labels=labels, q_logits=z, **mkw),
        (z,),
      )
      losses["sharded_kl_divergence (logits)"] = (
        lambda z: jaxdiv.sharded_kl_divergence(p_logits=z * 0.5, q_logits=z, **mkw),
        (z,),
      )
      rep, cols = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, "vocab"))
      gathered = lambda h, w: jax.lax.with_sharding_constraint(  # noqa: E731
        jax.lax.with_sharding_constraint(h @ w, cols), rep
      )
      losses["cross_entropy on gathered logits"] = (
        lambda h, w: jaxdiv.cross_entropy(labels=labels, q_logits=gathered(h, w)),
        (h, w),
      )
      losses["linear_cross_entropy (one-device loop, V-sharded weight)"] = (
        lambda h, w: jaxdiv.linear_cross_entropy(h, w, labels, chunk_size=vk),
        (h, w),
      )
    for name, (f, a) in losses.items():

      def loss(*x, f=f):
        return jnp.sum(f(*x))

      hlo = jax.jit(jax.grad(loss, tuple(range(len(a))))).lower(*a).compile().as_text()
      cats = {"rows": 0, "rows x D": 0, "D x V/k": 0, "rows x V": 0, "D x V": 0}
      count = 0
      for op, arrays in _collectives(hlo):
        count += 1
        if os.environ.get("SHOW"):
          print(name, op, arrays)
        for t, shape in arrays:
          size = int(np.prod(shape, dtype=np.int64)) * bytes_of.get(t, 4)
          if shape == (d, vk):
            cats["D x V/k"] += size
          elif shape == (d, v):
            cats["D x V"] += size
          elif len(shape) == 2 and set(shape) >= {n, d} and d != n:
            cats["rows x D"] += size / n
          elif any(s in (v, vk) for s in shape) and (n in shape or rows in shape):
            cats["rows x V"] += size / n
          elif n in shape or (len(shape) == 1 and shape[0] % n == 0):
            # per-row statistics, several of them flattened into one all-reduce
            cats["rows"] += size / n
          # scalars (the sum over rows of a test loss) are left out
      order = ("rows", "rows x D", "rows x V", "D x V/k", "D x V")
      cells = [f"{cats[c]:g} B" for c in order]
      print(f"| {name} | {mesh_name} | {count} | " + " | ".join(cells) + " |")

  for mesh_name, mesh in meshes.items():
    table_rows(mesh_name, mesh)
  print(f"\nk = {k} devices, {n} rows per data shard, D = {d}, V = {v} (V/k per device), float32;")
  print("bytes per row are the payloads of the collectives (what one device contributes).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
