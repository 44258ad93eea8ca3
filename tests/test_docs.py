"""The documentation: the site builds with no warnings and passes its checks (slow, run by
.ci/run), the checker catches what it is meant to catch, and every public function and
class has a running example in its docstring (the examples run as doctests).
"""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
sys.path.insert(0, str(ROOT / "scripts"))
import check_docs  # noqa: E402
import public_api  # noqa: E402


@pytest.mark.slow
def test_docs_build_without_warnings():
  proc = subprocess.run(
    [str(ROOT / "scripts" / "docs.sh")], cwd=ROOT, capture_output=True, text=True, timeout=1200
  )
  assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
  assert "0 problems" in proc.stdout


def test_every_public_function_has_an_example():
  for name in public_api.all_page_names():
    module, _, attr = name.rpartition(".")
    obj = getattr(importlib.import_module(module), attr)
    if inspect.isfunction(obj) or inspect.isclass(obj):
      assert ">>>" in (obj.__doc__ or ""), f"{name} has no Example section"


def _documented_arguments(doc: str) -> set[str]:
  """The names an Args section documents: ``name:`` or ``a, b:`` at the entries' indent."""
  args = doc.split("\nArgs:\n", 1)[1].split("\n\n", 1)[0] if "\nArgs:\n" in doc else ""
  names = set()
  for line in args.splitlines():
    head, sep, _ = line.partition(":")
    if sep and line.startswith("  ") and not line.startswith("   "):
      names.update(n.strip() for n in head.split(","))
  return names


def test_every_argument_of_a_public_function_is_documented():
  """In its own Args section, or by reference (``as in :func:`...```) to another function."""
  for name in public_api.all_page_names():
    module, _, attr = name.rpartition(".")
    obj = getattr(importlib.import_module(module), attr)
    if not inspect.isfunction(obj):
      continue
    doc = inspect.getdoc(obj) or ""
    if "{" + "stored" in doc or "{" + "head_args}" in doc:
      raise AssertionError(f"{name}: an unfilled docstring fragment")
    by_reference = re.search(r"(Arguments|arguments|Inputs)[^.]* (are )?as in :func:", doc)
    missing = set(inspect.signature(obj).parameters) - _documented_arguments(doc)
    assert by_reference or not missing, f"{name} does not document {sorted(missing)}"


def test_public_names_are_grouped_by_family():
  groups = public_api.public_names()
  assert "jaxdiv.kl_divergence" in groups["jaxdiv._kl"]
  assert "jaxdiv.generators.Generator" in groups["jaxdiv.generators"]
  assert "other" not in groups, groups.get("other")


def _site(tmp_path, pages):
  for name, html in pages.items():
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<html><body>{html}</body></html>")
  return tmp_path


def test_check_docs_finds_broken_links_and_raw_math(tmp_path, monkeypatch):
  monkeypatch.setattr(public_api, "all_page_names", lambda: ["jaxdiv.kl_divergence"])
  site = _site(
    tmp_path,
    {
      "index.html": '<p id="top">See <a href="b.html#nowhere">b</a>, <a href="c.html">c</a>.</p>'
      "<p>KL is $\\mathrm{KL}(p\\|q)$ and <code>$HOME</code> is code.</p>"
      '<p><math alttext="x"><mi>x</mi></math></p>',
      "b.html": '<p id="here">b</p><a href="index.html#top">back</a>',
      "api/generated/jaxdiv.kl_divergence.html": "<p>ok</p>",
    },
  )
  problems = check_docs.check(site)
  assert any("broken link c.html" in p for p in problems)
  assert any("no anchor #nowhere" in p for p in problems)
  assert any("unrendered math" in p and "mathrm" in p for p in problems)
  assert len(problems) == 3, problems


def test_check_docs_requires_a_page_per_name(tmp_path, monkeypatch):
  monkeypatch.setattr(public_api, "all_page_names", lambda: ["jaxdiv.entropy"])
  site = _site(tmp_path, {"index.html": "<p>nothing</p>"})
  assert check_docs.check(site) == [
    "no API page for jaxdiv.entropy (api/generated/jaxdiv.entropy.html)"
  ]
