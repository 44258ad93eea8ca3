"""The public names of jaxdiv, grouped by family: the one list the API pages come from.

Used by docs/conf.py (which writes docs/api/index.rst from it before every build, so a
name added to ``jaxdiv/__init__.py`` gets its page without touching the docs) and by
scripts/check_docs.py (which checks that every name has its page in the built site).
"""

from __future__ import annotations

import types
from pathlib import Path

# Private module a public function comes from -> (section title, one-line summary).
FAMILIES = {
  "jaxdiv._kl": (
    "Entropy, cross-entropy and KL",
    "The core functions; see :doc:`../guides/conventions`.",
  ),
  "jaxdiv._f_divergences": (
    "The divergence family",
    "Jensen–Shannon, Jeffreys, skew KL, TV, Hellinger, Bhattacharyya, χ², Rényi, α and general"
    " f-divergences; see :doc:`../guides/family`.",
  ),
  "jaxdiv.generators": (
    "Generators for f_divergence",
    "The :mod:`jaxdiv.generators` module: named Csiszár generators and the"
    " :class:`~jaxdiv.generators.Generator` type.",
  ),
  "jaxdiv._closed_forms": (
    "Closed forms",
    "Normal, multivariate normal and Dirichlet; see :doc:`../guides/closed_forms`.",
  ),
  "jaxdiv._estimators": (
    "Monte-Carlo estimators",
    "KL estimators from samples; see :doc:`../guides/closed_forms`.",
  ),
  "jaxdiv._fused": (
    "Fused linear-head losses",
    "Losses of ``softmax(hidden @ weight)`` that never form the logits; see"
    " :doc:`../guides/large_vocabularies`.",
  ),
  "jaxdiv._sharded": (
    "Vocabulary-parallel losses",
    "Logits split over a mesh axis; see :doc:`../guides/large_vocabularies`.",
  ),
  "jaxdiv._checks": ("Checked mode", "Errors instead of NaN for bad values."),
}
OTHER = ("Other", "")


def public_names() -> dict[str, list[str]]:
  """Fully qualified public names per family module, in FAMILIES order, sorted within."""
  import jaxdiv
  import jaxdiv.generators as generators

  groups: dict[str, list[str]] = {}
  for name, obj in sorted(vars(jaxdiv).items()):
    if name.startswith("_") or isinstance(obj, types.ModuleType):
      continue
    module = getattr(obj, "__module__", None) or "other"
    groups.setdefault(module if module in FAMILIES else "other", []).append(f"jaxdiv.{name}")
  groups["jaxdiv.generators"] = [f"jaxdiv.generators.{n}" for n in sorted(generators.__all__)]
  order = list(FAMILIES) + ["other"]
  return {m: groups[m] for m in order if groups.get(m)}


def all_page_names() -> list[str]:
  """Every name that must have its own page (the generators module has one too)."""
  names = ["jaxdiv.generators"]
  for group in public_names().values():
    names.extend(group)
  return names


def write_api_index(path: Path) -> None:
  """docs/api/index.rst: one autosummary table (one page per name) per family."""
  lines = [
    "API reference",
    "=============",
    "",
    "Every public name of jaxdiv, by family. Each has its own page with its formula, edge",
    "conventions and a running example (the examples are doctests, run by the test suite).",
    "Arguments are in mathematical order: ``f(p, q)`` is D(p‖q).",
    "",
    ".. currentmodule:: jaxdiv",
    "",
  ]
  for module, names in public_names().items():
    title, summary = FAMILIES.get(module, OTHER)
    lines += [title, "-" * len(title), ""]
    if summary:
      lines += [summary, ""]
    if module == "jaxdiv.generators":
      lines += [
        ".. autosummary::",
        "   :toctree: generated",
        "   :nosignatures:",
        "",
        "   generators",
        "",
      ]
    lines += [".. autosummary::", "   :toctree: generated", ""]
    lines += [f"   {n.removeprefix('jaxdiv.')}" for n in names]
    lines.append("")
  text = "\n".join(lines)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not path.exists() or path.read_text() != text:  # unchanged: keep Sphinx's cache valid
    path.write_text(text)
