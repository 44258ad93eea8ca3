"""Multi-process runs on JAX's distributed runtime: 2 processes x 2 CPU devices, one mesh.

``scripts/multiprocess.py`` starts the processes (``jax.distributed.initialize`` with
CPU collectives over gloo). The same program then runs as one process with 4 devices;
the vocabulary-parallel losses and the CE-vs-KL experiment's data-parallel mode must
give the same numbers both ways. A second group of tests kills or breaks one process on
purpose: the launcher reports it and the other process stops by itself.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _compiler import default_env

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = [sys.executable, str(ROOT / "scripts" / "multiprocess.py")]

# One program for both layouts: every process draws the same inputs from the seed, puts
# them on the global mesh and writes the gathered values, gradients and gradient specs.
PROGRAM = textwrap.dedent(
  """
  import json, sys
  import jax, jax.numpy as jnp, numpy as np
  from jax.experimental import multihost_utils
  from jax.sharding import NamedSharding, PartitionSpec as P
  import jaxdiv
  from experiments import ce_vs_kl

  out = sys.argv[1]
  assert jax.device_count() == 4, jax.devices()
  auto = jax.sharding.AxisType.Auto
  mesh = jax.make_mesh((4,), ("vocab",), axis_types=(auto,))
  mesh2 = jax.make_mesh((2, 2), ("data", "vocab"), axis_types=(auto, auto))
  put = lambda x, *spec: jax.device_put(x, NamedSharding(mesh, P(*spec)))
  put2 = lambda x, *spec: jax.device_put(x, NamedSharding(mesh2, P(*spec)))
  kw = dict(mesh=mesh, axis_name="vocab")
  rng = np.random.default_rng(0)
  N, V = 6, 16
  zp = put(rng.normal(size=(N, V)).astype(np.float32), None, "vocab")
  zq = put(rng.normal(size=(N, V)).astype(np.float32), None, "vocab")
  lab = put(np.array([0, 5, -1, 15, 3, 9], np.int32))
  c = put(rng.normal(size=N).astype(np.float32))
  cases = {
    "ce_labels": lambda a, b, lab: jaxdiv.sharded_cross_entropy(labels=lab, q_logits=b, **kw),
    "ce_logits": lambda a, b, _: jaxdiv.sharded_cross_entropy(p_logits=a, q_logits=b, **kw),
    "kl_logits": lambda a, b, _: jaxdiv.sharded_kl_divergence(p_logits=a, q_logits=b, **kw),
  }
  # The fused losses on a data x vocabulary mesh: rows over processes' devices, columns too.
  D = 3
  h = put2(rng.normal(size=(N + 2, D)).astype(np.float32), "data", None)
  w = put2(rng.normal(size=(D, V)).astype(np.float32), None, "vocab")
  w2 = put2(rng.normal(size=(D, V)).astype(np.float32), None, "vocab")
  lab2 = put2(np.array([0, 5, -1, 15, 3, 9, 2, 11], np.int32), "data")
  kw2 = dict(mesh=mesh2, axis_name="vocab", data_axis_name="data", chunk_size=3)
  # A multi-process jit takes global arrays as arguments (a closed-over one cannot be a
  # constant), so the labels, the other head and the row weights are passed in.
  cf = put2(np.linspace(-1, 1, N + 2).astype(np.float32), "data")
  fused = {
    "fused_ce": lambda a, b, lb, _: jaxdiv.sharded_linear_cross_entropy(
      a, b, lb, label_smoothing=0.1, **kw2
    ),
    "fused_kl": lambda a, b, _, b2: jaxdiv.sharded_linear_kl_divergence(a, b, a, b2, **kw2),
    "fused_jsd": lambda a, b, _, b2: jaxdiv.sharded_linear_jensen_shannon_divergence(
      a, b2, a, b, weight=0.3, **kw2
    ),
  }
  # every run: (differentiated a, b, labels, another head, row weights)
  runs = [(k, lambda a, b, lb, _, f=f: f(a, b, lb), (zp, zq, lab, zq, c)) for k, f in cases.items()]
  runs += [(k, f, (h, w, lab2, w2, cf)) for k, f in fused.items()]
  result = {}
  for name, f, args in runs:

    def loss(a, b, lb, x, cc, f=f):
      v = f(a, b, lb, x)
      return jnp.sum(v * cc), v

    (_, v), grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(*args)
    result[name] = [multihost_utils.process_allgather(x, tiled=True).tolist() for x in (v, *grads)]
    result[name + "/specs"] = [str(g.sharding.spec) for g in grads]

  config = ce_vs_kl.Config(
    steps=12, teacher_samples=64, collapse_steps=5, log_every=100, compare_forms=False, devices=4
  )
  res = ce_vs_kl.run(config)
  result["ce_vs_kl"] = {"tasks": res["tasks"], "claims": res["claims"]}
  result["process"] = [jax.process_index(), jax.process_count()]
  with open(out, "w") as f:
    json.dump(result, f)
  """
)


def _env(**extra):
  env = default_env()  # the CE-vs-KL claims are about XLA's default compiler
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  env.update(extra)
  return env


def _close(a, b, path=""):
  """Recursive comparison of two results trees: equal structure, numbers to float32 ulps."""
  if isinstance(a, dict):
    assert sorted(a) == sorted(b), path
    for k in a:
      _close(a[k], b[k], f"{path}/{k}")
  elif isinstance(a, list) and a and isinstance(a[0], (list, dict, str)):
    assert len(a) == len(b), path
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
      _close(x, y, f"{path}[{i}]")
  elif isinstance(a, (str, bool)) or a is None:
    assert a == b, (path, a, b)
  else:  # the reduction order differs between one and two processes: round-off only
    np.testing.assert_allclose(
      np.asarray(a, float), np.asarray(b, float), rtol=2e-5, atol=2e-6, err_msg=path
    )


@pytest.mark.slow
def test_two_processes_equal_one_process_with_four_devices(tmp_path):
  prog = tmp_path / "program.py"
  prog.write_text(PROGRAM)
  single = subprocess.run(
    [sys.executable, str(prog), str(tmp_path / "single.json")],
    env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert single.returncode == 0, single.stderr[-3000:]
  multi = subprocess.run(
    [
      *LAUNCHER,
      "-n",
      "2",
      "--devices-per-process",
      "2",
      "--timeout",
      "240",
      "--",
      str(prog),
      str(tmp_path / "multi{process}.json"),
    ],
    env=_env(),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert multi.returncode == 0, multi.stderr[-3000:]
  assert "all processes succeeded" in multi.stderr
  ref = json.loads((tmp_path / "single.json").read_text())
  assert ref.pop("process") == [0, 1]
  for i in range(2):
    got = json.loads((tmp_path / f"multi{i}.json").read_text())
    assert got.pop("process") == [i, 2]
    _close(ref, got)
  assert all(
    ref["ce_vs_kl"]["claims"][k] for k in ("gap_equals_target_entropy", "parameters_agree")
  )


# A process that dies (os._exit) or raises while its peer is inside a collective loop.
FAILING = textwrap.dedent(
  """
  import os, sys, time
  import jax, jax.numpy as jnp, numpy as np
  from jax.experimental import multihost_utils
  from jax.sharding import NamedSharding, PartitionSpec as P

  how, who = sys.argv[1], int(sys.argv[2])
  mesh = jax.make_mesh((jax.device_count(),), ("x",))
  x = jax.device_put(np.arange(8.0, dtype=np.float32), NamedSharding(mesh, P("x")))
  f = jax.jit(lambda x: jnp.sum(x * x), out_shardings=NamedSharding(mesh, P()))
  print("step", float(f(x)), flush=True)
  # Both have printed before either fails (else the survivor may be stopped first).
  multihost_utils.sync_global_devices("printed")
  if jax.process_index() == who:
    if how == "exit":
      os._exit(3)
    raise RuntimeError("deliberate failure in process %d" % who)
  while True:  # the survivor keeps running collectives with its dead peer
    f(x).block_until_ready()
    time.sleep(0.05)
  """
)


@pytest.mark.slow
@pytest.mark.parametrize("how, who", [("exit", 1), ("raise", 0)])
def test_a_failed_process_stops_the_others(tmp_path, how, who):
  prog = tmp_path / "failing.py"
  prog.write_text(FAILING)
  run = subprocess.run(
    [
      *LAUNCHER,
      "-n",
      "2",
      "--heartbeat-timeout",
      "3",
      "--grace",
      "60",
      "--timeout",
      "120",
      "--",
      str(prog),
      how,
      str(who),
    ],
    env=_env(),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=200,
  )
  err = run.stderr
  assert run.returncode == 1, err[-3000:]
  code = "3" if how == "exit" else "1"
  assert f"[multiprocess] process {who} exited with code {code}" in err, err[-3000:]
  if how == "raise":
    assert "RuntimeError: deliberate failure in process 0" in err
  other = 1 - who
  # The survivor stops by itself, not by the launcher: JAX's coordination service
  # terminates it, or the collective it is in fails first (gloo sees the closed socket).
  survivor = "\n".join(ln for ln in err.splitlines() if ln.startswith(f"[p{other}]"))
  reasons = (
    "Terminating process because the JAX distributed service detected fatal errors",
    "Gloo all-reduce failed",
  )
  assert any(r in survivor for r in reasons), survivor[-3000:]
  # It aborts, or raises from inside the collective first; either way a non-zero end.
  summary = err[err.rindex(f"[multiprocess] process {other} ") :].splitlines()[0]
  assert "exited with code 0" not in summary and "ended by signal SIGKILL" not in summary, summary
  assert "killed by the launcher" not in err
  assert run.stdout.count("step 140.0") == 2
