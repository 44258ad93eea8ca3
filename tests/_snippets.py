"""Run the ```python blocks of the Markdown docs, each in a fresh namespace (a subprocess).

Used by tests/test_readme.py: ``python tests/_snippets.py BLOCKS.json`` reads a list of
``{"id", "code"}``, runs every block with jax's defaults (x64 off, reset after each block)
and prints one JSON object ``{id: null | "error text"}``.

A line ``EXPR  # => CLAIM`` (top level, not indented) claims the value of EXPR: numbers
(scalars, lists, tuples) must round to CLAIM at its written precision, and a claimed 0
must be exactly 0; ``True``/``False`` must match ``bool(EXPR)``; anything else is compared
with ``str(EXPR)``.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import traceback
from decimal import Decimal

CLAIM = re.compile(r"^(?P<expr>\S.*?)\s*#\s*=>\s*(?P<claim>.+?)\s*$")
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan")


def transform(code: str) -> str:
  lines = []
  for i, line in enumerate(code.splitlines(), 1):
    m = CLAIM.match(line)
    if m:
      line = f"__check__(({m['expr']}), {m['claim']!r}, {i})"
    lines.append(line)
  return "\n".join(lines) + "\n"


def _tolerance(text: str) -> float:
  if text.lstrip("+-") in ("inf", "nan"):
    return 0.0
  d = Decimal(text)
  if d == 0:
    return 0.0
  return float(Decimal(1).scaleb(d.as_tuple().exponent)) / 2


def check(value, claim: str, line: int) -> None:
  import numpy as np

  where = f"line {line}: claimed {claim}"
  if claim in ("True", "False"):
    if bool(value) != (claim == "True"):
      raise AssertionError(f"{where}, got {value!r}")
    return
  numbers = NUMBER.findall(claim)
  stripped = NUMBER.sub("0", claim)
  is_numeric = numbers and re.fullmatch(r"[\s\[\](),0]*", stripped)
  if not is_numeric:
    if str(value) != claim:
      raise AssertionError(f"{where}, got {value}")
    return
  expected = ast.literal_eval(re.sub(r"\bnan\b", "None", re.sub(r"\binf\b", "1e999", claim)))
  got = np.asarray(value, dtype=np.float64) if not isinstance(value, tuple) else np.asarray(value)
  want = np.asarray(expected, dtype=np.float64)
  if got.shape != want.shape:
    raise AssertionError(f"{where}, got shape {got.shape}: {value}")
  tol = np.array([_tolerance(t) for t in numbers]).reshape(want.shape)
  close = np.abs(got - want) <= tol * (1 + 1e-9)
  ok = np.where(np.isnan(want), np.isnan(got), np.where(np.isinf(want), got == want, close))
  if not bool(np.all(ok)):
    raise AssertionError(f"{where}, got {value}")


def main(path: str) -> None:
  import jax

  blocks = json.loads(open(path).read())
  out = {}
  for block in blocks:
    ns = {"__name__": "__snippet__", "__check__": check}
    try:
      exec(compile(transform(block["code"]), block["id"], "exec"), ns)  # noqa: S102
      out[block["id"]] = None
    except BaseException:  # noqa: BLE001 -- reported per block
      out[block["id"]] = traceback.format_exc(limit=3)
    finally:
      jax.config.update("jax_enable_x64", False)
  print(json.dumps(out))


if __name__ == "__main__":
  main(sys.argv[1])
