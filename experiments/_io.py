"""Shared plumbing for experiments: results files, versions, argument parsing, progress."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any


def versions() -> dict[str, str]:
  """Library versions recorded in every results file."""
  import jax
  import numpy as np

  out = {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__}
  for name in ("optax", "jaxdiv", "sklearn"):
    try:
      mod = __import__(name)
      out[name] = getattr(mod, "__version__", "unknown")
    except ImportError:
      pass
  return out


def to_jsonable(x: Any) -> Any:
  """Arrays and numpy scalars to plain Python (floats kept at full precision)."""
  import numpy as np

  if isinstance(x, dict):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return to_jsonable(dataclasses.asdict(x))
  if hasattr(x, "__array__"):
    a = np.asarray(x)
    return a.item() if a.ndim == 0 else a.tolist()
  if isinstance(x, (np.floating, np.integer, np.bool_)):
    return x.item()
  return x


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
  """Write JSON (sorted keys, indented) to a temporary name, then rename: never half a file."""
  path = Path(path)
  text = json.dumps(to_jsonable(obj), sort_keys=True, indent=2, allow_nan=True) + "\n"
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return path


def read_json(path: str | os.PathLike) -> Any:
  with open(path) as f:
    return json.load(f)


def prepare_out_dir(out: str | os.PathLike, what: str = "output folder") -> Path:
  """Create a folder and check it is writable; a one-line error naming ``what`` if not."""
  out = Path(out)
  try:
    out.mkdir(parents=True, exist_ok=True)
    probe = tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-", delete=True)
    probe.close()
  except OSError as e:
    raise SystemExit(f"error: {what} {str(out)!r} is not writable: {e.strerror}") from None
  return out


# The third-party modules of the `experiments` extra (import name: what to install).
EXTRA_MODULES = ("optax", "matplotlib", "sklearn")
INSTALL_HINT = "pip install -e '.[experiments]'"


def missing_extra(err: ModuleNotFoundError, name: str | None = None) -> BaseException:
  """A one-line SystemExit for a missing module of the `experiments` extra, else ``err``."""
  root = (err.name or "").split(".")[0]
  if root not in EXTRA_MODULES:
    return err
  who = f"experiments.{name}" if name else "the experiments"
  return SystemExit(
    f"error: {who} needs the `experiments` extra ({root} is not installed); "
    f"from the repository root run: {INSTALL_HINT}"
  )


@contextlib.contextmanager
def command_line(name: str, progress: Progress | None = None):
  """The shared failure handling of every experiment's ``main``.

  Ctrl-C prints where the run stopped (its last progress line) and exits with status 130
  (results are written atomically, so no partial file is left); a module of the
  `experiments` extra that is not installed is a one-line error naming the extra.
  """
  try:
    yield
  except KeyboardInterrupt:
    stage = f" (last progress: {progress.last})" if progress is not None and progress.last else ""
    print(
      f"\n[{name}] interrupted{stage}; nothing partial was written.",
      file=sys.stderr,
      flush=True,
    )
    raise SystemExit(130) from None
  except ModuleNotFoundError as e:
    raise missing_extra(e, name) from None


def config_parser(
  config_cls, description: str, help: dict | None = None, choices: dict | None = None
) -> argparse.ArgumentParser:
  """An argparse parser whose flags mirror the fields of a frozen Config dataclass.

  ``help`` maps each field to its description, ``choices`` a field to its allowed values.
  """
  help, choices = help or {}, choices or {}
  fields = dataclasses.fields(config_cls)
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--out", default="results", help="folder for the results JSON (default: results)")
  p.add_argument(
    "--figures", default=None, help="folder for the figures (default: the --out folder)"
  )
  p.add_argument("--quick", action="store_true", help="tiny configuration for a smoke test")
  p.add_argument("--quiet", action="store_true", help="no progress output")
  p.add_argument("--no-plot", action="store_true", help="write the JSON only")
  for f in fields:
    flag = "--" + f.name.replace("_", "-")
    text = f"{help.get(f.name, f.name.replace('_', ' '))} (default: {f.default})"
    if f.type in (bool, "bool"):
      p.add_argument(
        flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text
      )
    else:
      name = f.type.removesuffix(" | None") if isinstance(f.type, str) else ""  # optional: None
      typ = {"int": int, "float": float, "str": str}.get(name, None)
      typ = typ or (f.type if f.type in (int, float, str) else str)
      p.add_argument(
        flag, dest=f.name, type=typ, default=None, help=text, choices=choices.get(f.name)
      )
  return p


def config_from_args(config_cls, args: argparse.Namespace, quick_overrides: dict | None = None):
  """Build a Config: defaults, then --quick overrides, then explicit flags."""
  kw = {}
  if args.quick and quick_overrides:
    kw.update(quick_overrides)
  for f in dataclasses.fields(config_cls):
    v = getattr(args, f.name, None)
    if v is not None:
      kw[f.name] = v
  try:
    return config_cls(**kw)
  except (TypeError, ValueError) as e:
    raise SystemExit(f"error: invalid configuration: {e}") from None


class Progress:
  """A line every so often on stderr; silent when quiet."""

  def __init__(self, quiet: bool, prefix: str):
    self.quiet, self.prefix = quiet, prefix
    self.last = None  # where an interrupted run stopped

  def __call__(self, msg: str) -> None:
    self.last = msg
    if not self.quiet:
      print(f"[{self.prefix}] {msg}", file=sys.stderr, flush=True)


def run_experiment(
  argv,
  *,
  name: str,
  config_cls,
  quick: dict,
  run,
  plot,
  description: str,
  report=None,
  ok=None,
  help: dict | None = None,
  choices: dict | None = None,
) -> int:
  """The shared ``main`` of every experiment.

  Parses flags that mirror ``config_cls`` (described by ``help``, restricted by
  ``choices``; plus ``--out``, ``--figures``, ``--quick``, ``--quiet``, ``--no-plot``,
  ``--plot-only``), runs ``run(config, progress)``, writes ``OUT/<name>.json``
  atomically, draws the figures from that file only (each figure written under a
  temporary name, then renamed), prints ``report(results)`` unless quiet, and returns 0,
  or 1 when ``ok(results)`` is false. A configuration the machine cannot honour (``run``
  raising ValueError) is a one-line error, and no results file is written; so are Ctrl-C
  (exit status 130) and a missing `experiments` extra (see :func:`command_line`).
  """
  parser = config_parser(config_cls, description, help, choices)
  parser.add_argument(
    "--plot-only", action="store_true", help=f"redraw the figures from OUT/{name}.json"
  )
  args = parser.parse_args(argv)
  config = config_from_args(config_cls, args, quick)
  out = prepare_out_dir(args.out)
  figures = out
  if args.figures and not args.no_plot:
    figures = prepare_out_dir(args.figures, what="figures folder")
  progress = Progress(args.quiet, name)
  with command_line(name, progress):
    return _run(args, name, config, out, figures, progress, run, plot, report, ok)


def _run(args, name, config, out, figures, progress, run, plot, report, ok) -> int:
  import time

  path = out / f"{name}.json"
  if not args.plot_only:
    start = time.perf_counter()
    try:
      results = run(config, progress)
    except ValueError as e:
      raise SystemExit(f"error: {e}") from None
    write_json_atomic(results, path)
    progress(f"wrote {path} in {time.perf_counter() - start:.1f} s")
  elif not path.exists():
    raise SystemExit(f"error: --plot-only needs an existing results file, {str(path)!r} is missing")
  results = read_json(path)
  if not args.no_plot:
    for p in plot_atomic(plot, results, figures):
      progress(f"wrote {p}")
  if report is not None and not args.quiet:
    print(report(results))
  return 0 if ok is None or ok(results) else 1


def plot_atomic(plot, results, figures: Path) -> list[Path]:
  """Draw into a temporary folder beside ``figures``, then move each file into place."""
  tmp = Path(tempfile.mkdtemp(dir=figures, prefix=".figures-"))
  try:
    drawn = [Path(p) for p in plot(results, tmp)]
    final = []
    for p in drawn:
      os.replace(p, figures / p.name)
      final.append(figures / p.name)
    return final
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
