"""Render math to MathML when the site is built, so pages need no script and no network.

Sphinx hands every ``:math:`` role, ``.. math::`` directive and MyST ``$...$`` to an HTML
math renderer; this one converts the LaTeX with `latex2mathml` (pure Python) and writes
the ``<math>`` element into the page. Browsers render MathML Core natively. A formula
that does not convert fails the build with its source, rather than shipping raw TeX.
"""

from __future__ import annotations

import html
import re

from docutils import nodes
from latex2mathml.converter import convert
from sphinx.errors import ExtensionError

# latex2mathml writes \log as a bare <mi>, which browsers set flush against its argument;
# TeX puts a thin space there (but not before a parenthesis).
_FUNCTION = re.compile(
  r"(<mi>(?:log|ln|exp|lg|sin|cos|tan|sinh|cosh|tanh|det|dim|arg|ker|deg|Pr)</mi>)"
  r"(?!<mo[^>]*>&#x00028;)"
)


def _mathml(latex: str, display: str) -> str:
  try:
    out = convert(latex.strip(), display=display)
  except Exception as e:  # noqa: BLE001 -- any converter failure becomes a build error
    raise ExtensionError(f"latex2mathml could not convert {latex!r}: {e}") from e
  out = _FUNCTION.sub(r'\1<mspace width="0.1667em"></mspace>', out)
  # The TeX source travels along as an annotation-free title, for copy and screen readers.
  return out.replace("<math ", f'<math alttext="{html.escape(latex.strip())}" ', 1)


def visit_math(self, node):
  self.body.append(
    self.starttag(node, "span", "", CLASS="math notranslate") + _mathml(node.astext(), "inline")
  )
  self.body.append("</span>")
  raise nodes.SkipNode


def visit_displaymath(self, node):
  latex = node.astext()
  # Several equations separated by blank lines are stacked, as Sphinx's own renderers do.
  parts = [p for p in latex.split("\n\n") if p.strip()] if not node.get("nowrap") else [latex]
  self.body.append(self.starttag(node, "div", CLASS="math notranslate"))
  if node.get("number"):
    self.body.append(f'<span class="eqno">({node["number"]})</span>')
  for part in parts:
    self.body.append(_mathml(part, "block"))
  self.body.append("</div>\n")
  raise nodes.SkipNode


def setup(app):
  app.add_html_math_renderer("mathml", (visit_math, None), (visit_displaymath, None))
  return {"parallel_read_safe": True, "parallel_write_safe": True}
