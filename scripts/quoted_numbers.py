"""Check (or update) the numbers that README.md and docs/**/*.md quote from results files.

    .venv/bin/python scripts/quoted_numbers.py          # list every mismatch; exit 1 if any
    .venv/bin/python scripts/quoted_numbers.py --fix    # rewrite quoted numbers from the JSON

A quoted number carries a marker right before it (invisible once rendered):

    <!-- json: ce_vs_kl.json:tasks.teacher.max_gap_error -->2.6e-7

FILE is relative to docs/results/; PATH is keys separated by dots (a key that itself
contains dots, such as "0.1", is matched whole; integers index lists); an optional
`` xFACTOR`` after a space scales the value (`` x100`` for a percentage; a ``*`` would be
read as Markdown emphasis). The JSON value must round to the
quoted number at its written precision (within half a unit of its last digit); a number
written without "." or "e" must equal the value exactly. --fix keeps each number's
precision and style. tests/test_readme.py runs the check.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
NUMBER = r"[-−]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+−]?\d+)?"
MARKER = re.compile(
  r"<!--\s*json:\s*(?P<file>[^:\s]+):(?P<path>\S+?)(?:\s+x(?P<scale>[0-9.eE+-]+))?\s*-->"
  rf"(?P<number>{NUMBER})?"
)


@dataclass
class Quote:
  source: Path
  line: int
  file: str
  path: str
  scale: float
  text: str | None
  start: int  # offset of the number in the source text
  end: int
  at_line_start: bool  # a line that starts with "<!--" is an HTML block, not a paragraph


def documents() -> list[Path]:
  return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


FENCE = re.compile(r"^ *(```|~~~).*?^ *\1", re.M | re.S)


def quotes(path: Path) -> list[Quote]:
  """The markers of one document, outside fenced code blocks (which only show the syntax)."""
  text = path.read_text()
  fenced = [m.span() for m in FENCE.finditer(text)]
  out = []
  for m in MARKER.finditer(text):
    if "_build" in path.parts or any(a <= m.start() < b for a, b in fenced):
      continue
    out.append(
      Quote(
        path,
        text.count("\n", 0, m.start()) + 1,
        m["file"],
        m["path"],
        float(m["scale"]) if m["scale"] else 1.0,
        m["number"],
        m.start("number") if m["number"] else m.end(),
        m.end("number") if m["number"] else m.end(),
        not text[text.rfind("\n", 0, m.start()) + 1 : m.start()].strip(),
      )
    )
  return out


def lookup(obj, path: str):
  """Follow dot-separated keys; a key containing dots is tried whole, longest first."""
  parts = path.split(".")
  while parts:
    for n in range(len(parts), 0, -1):
      key = ".".join(parts[:n])
      if isinstance(obj, dict) and key in obj:
        obj, parts = obj[key], parts[n:]
        break
      if isinstance(obj, list) and n == 1 and key.lstrip("-").isdigit():
        obj, parts = obj[int(key)], parts[1:]
        break
    else:
      raise KeyError(f"no key {'.'.join(parts)!r}")
  return obj


def value_of(q: Quote, cache: dict) -> float:
  if q.file not in cache:
    cache[q.file] = json.loads((RESULTS / q.file).read_text())
  v = lookup(cache[q.file], q.path)
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    raise TypeError(f"{q.file}:{q.path} is {v!r}, not a number")
  return float(v) * q.scale


def _parse(text: str) -> Decimal:
  return Decimal(text.replace("−", "-"))


def agrees(text: str, value: float) -> bool:
  """Does ``value`` round to the number written as ``text`` at its precision?"""
  quoted = _parse(text)
  if math.isnan(value) or math.isinf(value):
    return False
  if not re.search(r"[.eE]", text):
    return Decimal(repr(value)) == quoted
  half_unit = Decimal(1).scaleb(quoted.as_tuple().exponent) / 2
  return abs(Decimal(repr(value)) - quoted) <= half_unit * (1 + Decimal("1e-9"))


def formatted(text: str, value: float) -> str:
  """``value`` written with the precision and style of ``text``."""
  minus = "−" if "−" in text else "-"
  t = text.replace("−", "-")
  if re.search(r"[eE]", t):
    mant, exp = re.split(r"[eE]", t)
    digits = len(mant.split(".")[1]) if "." in mant else 0
    out = f"{value:.{digits}e}"
    m, e = out.split("e")
    out = f"{m}e{int(e)}"
  elif "." in t:
    out = f"{value:.{len(t.split('.')[1])}f}"
  else:
    out = str(int(value)) if float(value).is_integer() else repr(value)
  return out.replace("-", minus) if minus == "−" else out


def check() -> list[str]:
  cache: dict = {}
  problems = []
  for doc in documents():
    for q in quotes(doc):
      where = f"{doc.relative_to(ROOT)}:{q.line}: {q.file}:{q.path}"
      if q.at_line_start:
        problems.append(f"{where}: a marker must not start a line (Markdown reads it as HTML)")
      if q.text is None:
        problems.append(f"{where}: the marker is not followed by a number")
        continue
      try:
        v = value_of(q, cache)
      except (OSError, KeyError, IndexError, TypeError, ValueError) as e:
        problems.append(f"{where}: {e}")
        continue
      if not agrees(q.text, v):
        problems.append(f"{where}: quotes {q.text}, the results say {v!r} ({formatted(q.text, v)})")
  return problems


def fix() -> int:
  cache: dict = {}
  changed = 0
  for doc in documents():
    qs = [q for q in quotes(doc) if q.text is not None]
    text = doc.read_text()
    for q in reversed(qs):
      v = value_of(q, cache)
      if not agrees(q.text, v):
        text = text[: q.start] + formatted(q.text, v) + text[q.end :]
        changed += 1
    doc.write_text(text)
  return changed


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--fix", action="store_true", help="rewrite mismatched numbers")
  args = parser.parse_args(argv)
  if args.fix:
    print(f"updated {fix()} quoted numbers")
  problems = check()
  for p in problems:
    print(p)
  n = sum(len(quotes(d)) for d in documents())
  print(f"{n} quoted numbers, {len(problems)} mismatched")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
