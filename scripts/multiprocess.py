r"""Run a Python program as N JAX processes on this machine, forming one global device mesh.

    python scripts/multiprocess.py -n 2 --devices-per-process 2 -- -m experiments.ce_vs_kl \
        --quick --devices 4 --out results/mp{process}

Each process gets its own CPU devices (``--xla_force_host_platform_device_count``) and
calls :func:`jax.distributed.initialize` against a coordinator on ``127.0.0.1`` (a free
port), with CPU collectives over gloo, before the program runs; after that
``jax.devices()`` lists the devices of all processes and a :class:`jax.sharding.Mesh`
over them spans every process. ``{process}`` in the program's arguments becomes the
process index (so each process can write its own files). The program itself is
unchanged: it runs with ``runpy`` like ``python -m module`` or ``python script.py``.

Every process exits by itself within a bound:

* a peer that never starts: ``initialize`` gives up after ``--init-timeout`` seconds;
* a peer that dies: JAX's coordination service notices the missing heartbeats after
  ``--heartbeat-timeout`` seconds and terminates the others with "Terminating process
  because the JAX distributed service detected fatal errors", even inside a collective;
* a program that raises: its process prints the traceback and exits at once (code 1)
  without waiting at the shutdown barrier, so its peers see it die as above;
* anything else: each process dumps its Python stacks and exits after ``--timeout``
  seconds (``faulthandler``), and the launcher kills what is left a little later.

The launcher prefixes every output line with ``[pI]``, waits ``--grace`` seconds after the
first failure for the others to stop by themselves, reports how each process ended, and
returns 0 only when all of them exited with 0. ``scripts/multiprocess.sh N ...`` is a
shorthand for ``-n N``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

_ENV = "JAXDIV_MP_"  # prefix of the variables that pass the run's layout to each process


def free_port() -> int:
  """A TCP port on 127.0.0.1 that was free a moment ago (the coordinator binds it)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _parse(argv):
  p = argparse.ArgumentParser(
    description=__doc__.splitlines()[0],
    usage="%(prog)s [options] -- (-m MODULE | SCRIPT.py) [ARGS ...]",
  )
  p.add_argument("-n", "--processes", type=int, default=2, help="number of processes (2)")
  p.add_argument(
    "--devices-per-process", type=int, default=2, help="CPU devices of each process (2)"
  )
  p.add_argument("--port", type=int, default=None, help="coordinator port (a free one)")
  p.add_argument(
    "--timeout", type=float, default=600.0, help="wall-clock bound of each process, s (600)"
  )
  p.add_argument(
    "--init-timeout", type=int, default=60, help="bound on jax.distributed.initialize, s (60)"
  )
  p.add_argument(
    "--heartbeat-timeout", type=int, default=10, help="a silent peer is dead after this, s (10)"
  )
  p.add_argument(
    "--grace", type=float, default=30.0, help="after a failure, wait this long for the others (30)"
  )
  p.add_argument("program", nargs=argparse.REMAINDER, help="-m MODULE or SCRIPT.py, then its args")
  args = p.parse_args(argv)
  prog = args.program[1:] if args.program[:1] == ["--"] else args.program
  if not prog or (prog[0] == "-m" and len(prog) < 2):
    p.error("give the program after the options: -- -m MODULE [ARGS] or -- SCRIPT.py [ARGS]")
  for name in ("processes", "devices_per_process", "init_timeout", "heartbeat_timeout"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
  if not args.timeout > 0 or args.grace < 0:
    p.error("--timeout must be > 0 and --grace >= 0")
  args.program = prog
  return args


def _pump(stream, prefix: str, out) -> None:
  for line in iter(stream.readline, ""):
    out.write(f"{prefix}{line}")
    out.flush()
  stream.close()


def _describe(code: int | None) -> str:
  if code is None:
    return "still running"
  if code < 0:
    try:
      return f"ended by signal {signal.Signals(-code).name}"
    except ValueError:
      return f"ended by signal {-code}"
  return f"exited with code {code}"


def launch(args) -> int:
  """Start the processes, stream their output, enforce the bounds; 0 iff all exited with 0."""
  n = args.processes
  port = args.port or free_port()
  # Stderr of the launcher carries its own report; the processes' lines go to stdout/stderr.
  say = lambda msg: print(f"[multiprocess] {msg}", file=sys.stderr, flush=True)  # noqa: E731
  say(
    f"{n} processes x {args.devices_per_process} CPU devices, coordinator 127.0.0.1:{port}, "
    f"bound {args.timeout:g} s"
  )
  procs, pumps = [], []
  for i in range(n):
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={args.devices_per_process}")
    env.update(
      {
        "XLA_FLAGS": " ".join(flags),
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
        f"{_ENV}COORDINATOR": f"127.0.0.1:{port}",
        f"{_ENV}NUM_PROCESSES": str(n),
        f"{_ENV}PROCESS_ID": str(i),
        f"{_ENV}TIMEOUT": str(args.timeout),
        f"{_ENV}INIT_TIMEOUT": str(args.init_timeout),
        f"{_ENV}HEARTBEAT_TIMEOUT": str(args.heartbeat_timeout),
      }
    )
    program = [a.replace("{process}", str(i)) for a in args.program]
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", *program]
    proc = subprocess.Popen(
      cmd,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      start_new_session=True,  # the launcher can end a process and anything it started
    )
    procs.append(proc)
    for stream, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
      t = threading.Thread(target=_pump, args=(stream, f"[p{i}] ", out), daemon=True)
      t.start()
      pumps.append(t)

  start = time.monotonic()
  ended = [None] * n  # seconds after start at which each process ended
  first_failure = None
  deadline = start + args.timeout + 15  # the processes' own bound, then a margin
  reason, killed = None, set()
  while any(e is None for e in ended):
    now = time.monotonic()
    for i, proc in enumerate(procs):
      if ended[i] is None and proc.poll() is not None:
        ended[i] = now - start
        if proc.returncode != 0 and first_failure is None:
          first_failure = (i, now)
          say(
            f"process {i} failed ({_describe(proc.returncode)} after {ended[i]:.1f} s); "
            f"waiting up to {args.grace:g} s for the others to stop"
          )
    if all(e is not None for e in ended):
      break
    if first_failure is not None and now > first_failure[1] + args.grace:
      reason = f"did not stop within {args.grace:g} s of process {first_failure[0]}'s failure"
    elif now > deadline:
      reason = f"still running after {now - start:.0f} s"
    if reason:
      for i, proc in enumerate(procs):
        if ended[i] is None:
          say(f"process {i} {reason}: killing it")
          os.killpg(proc.pid, signal.SIGKILL)
          killed.add(i)
      for i, proc in enumerate(procs):
        if ended[i] is None:
          proc.wait()
          ended[i] = time.monotonic() - start
      break
    time.sleep(0.05)
  for t in pumps:
    t.join(timeout=5)
  codes = [p.returncode for p in procs]
  for i, (code, t) in enumerate(zip(codes, ended, strict=True)):
    by = " (killed by the launcher)" if i in killed else ""
    say(f"process {i} {_describe(code)} after {t:.1f} s{by}")
  ok = all(c == 0 for c in codes)
  say("all processes succeeded" if ok else "FAILED: not every process exited with 0")
  return 0 if ok else 1


def initialize() -> None:
  """``jax.distributed.initialize`` from the launcher's variables, CPU collectives over gloo.

  Called in each process before the program runs (the program must not have touched a
  JAX backend yet). A program may call it itself when started another way with the same
  ``JAXDIV_MP_*`` variables.
  """
  import jax

  env = os.environ
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  heartbeat = int(env[f"{_ENV}HEARTBEAT_TIMEOUT"])
  jax.distributed.initialize(
    coordinator_address=env[f"{_ENV}COORDINATOR"],
    num_processes=int(env[f"{_ENV}NUM_PROCESSES"]),
    process_id=int(env[f"{_ENV}PROCESS_ID"]),
    initialization_timeout=int(env[f"{_ENV}INIT_TIMEOUT"]),
    heartbeat_timeout_seconds=heartbeat,
    shutdown_timeout_seconds=max(heartbeat, 10),
  )


def worker(program) -> int:
  """One process: bound its life, join the run, then run the program as ``__main__``."""
  import faulthandler
  import runpy
  import traceback

  timeout = float(os.environ[f"{_ENV}TIMEOUT"])
  faulthandler.dump_traceback_later(timeout, exit=True)  # the bound, whatever the program does
  initialize()
  if program[0] == "-m":
    sys.argv = [program[1], *program[2:]]
    run = lambda: runpy.run_module(program[1], run_name="__main__", alter_sys=True)  # noqa: E731
  else:
    sys.argv = list(program)
    sys.path[0] = os.path.dirname(os.path.abspath(program[0]))  # as `python script.py`
    run = lambda: runpy.run_path(program[0], run_name="__main__")  # noqa: E731
  try:
    run()
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if code:
      if not isinstance(e.code, int):
        print(e.code, file=sys.stderr)
      sys.stderr.flush()
      os._exit(code)  # no shutdown barrier: the peers must see this process die
  except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(1)
  import jax

  jax.distributed.shutdown()  # the barrier: every process has finished the program
  return 0


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ["--worker"]:
    sys.path[0] = os.getcwd()  # as `python -m`: modules resolve from the working folder
    return worker(argv[1:])
  return launch(_parse(argv))


if __name__ == "__main__":
  sys.exit(main())
