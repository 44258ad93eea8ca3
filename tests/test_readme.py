"""Every ```python block of README.md and docs/**/*.md runs as written, with the output it
claims; every number quoted from a results file agrees with that file.

Blocks run in one subprocess, each in a fresh namespace with jax's defaults (see
tests/_snippets.py for the ``EXPR  # => CLAIM`` convention). Quoted numbers use the
``<!-- json: FILE:PATH -->NUMBER`` markers checked by scripts/quoted_numbers.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import quoted_numbers  # noqa: E402

FENCE = re.compile(
  r"^(?P<indent> *)```python[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.M | re.S
)


def _documents() -> list[Path]:
  docs = [p for p in sorted((ROOT / "docs").rglob("*.md")) if "_build" not in p.parts]
  return [ROOT / "README.md", *docs]


def _blocks() -> list[dict]:
  out = []
  for doc in _documents():
    text = doc.read_text()
    for m in FENCE.finditer(text):
      line = text.count("\n", 0, m.start()) + 1
      indent = len(m["indent"])
      code = "\n".join(ln[indent:] for ln in m["code"].splitlines())
      out.append({"id": f"{doc.relative_to(ROOT)}:{line}", "code": code})
  return out


BLOCKS = _blocks()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
  path = tmp_path_factory.mktemp("snippets") / "blocks.json"
  path.write_text(json.dumps(BLOCKS))
  env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
  proc = subprocess.run(
    [sys.executable, str(ROOT / "tests" / "_snippets.py"), str(path)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_readme_has_blocks_and_is_short():
  readme = (ROOT / "README.md").read_text()
  assert len(readme.splitlines()) <= 200
  assert sum(b["id"].startswith("README.md") for b in BLOCKS) >= 2


@pytest.mark.slow  # every snippet in its own process: run by .ci/run (`-m slow`)
@pytest.mark.parametrize("block", BLOCKS, ids=[b["id"] for b in BLOCKS])
def test_snippet_runs_as_written(block, outcomes):
  error = outcomes[block["id"]]
  assert error is None, f"{block['id']}:\n{block['code']}\n{error}"


def test_quoted_numbers_match_results():
  assert quoted_numbers.check() == []


def test_quoted_number_check_can_fail():
  """The rounding rule: the value must round to the quoted digits; a bare integer is exact."""
  assert quoted_numbers.agrees("2.6e-7", 2.6437e-7)
  assert not quoted_numbers.agrees("2.5e-7", 2.6437e-7)
  assert quoted_numbers.agrees("95.55", 95.5456)
  assert not quoted_numbers.agrees("0", 1e-12)
  assert quoted_numbers.agrees("0", 0.0)
  assert quoted_numbers.formatted("2.5e-7", 2.6437e-7) == "2.6e-7"
  assert quoted_numbers.lookup({"a": {"0.1": [3, 4]}}, "a.0.1.1") == 4


def test_claim_check_can_fail():
  """A claimed output that the value does not round to is an error; a claimed 0 is exact."""
  sys.path.insert(0, str(ROOT / "tests"))
  from _snippets import check

  check(0.35667497, "0.35667497", 1)
  check((2, 5), "(2, 5)", 1)
  check([0.2014133, 0.0], "[0.20141, 0.0]", 1)
  for value, claim in [(0.3567, "0.35667497"), (1e-30, "0.0"), ((2, 4), "(2, 5)"), (False, "True")]:
    with pytest.raises(AssertionError):
      check(value, claim, 1)
