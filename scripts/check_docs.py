"""Check a built docs site: internal links, unrendered math, one page per public name.

    .venv/bin/python scripts/check_docs.py docs/_build/html

- every internal ``href`` (and ``src``) points at a file of the site, and every
  ``#anchor`` at an ``id`` in its target page;
- no page shows math source: no ``$...$``, ``\\(``, ``\\[``, ``:math:`` or TeX command
  such as ``\\frac`` in the text a reader sees (code, ``<math>`` and scripts excluded);
- every public name of jaxdiv (docs/_ext/public_api.py) has its page under api/generated/.

Exits 1 with one line per problem.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

# Text that should have become MathML: TeX delimiters, roles, or a TeX command.
MATH_SOURCE = re.compile(
  r"\$[^$\s][^$]*\$|\\\(|\\\[|:math:`|\\(?:frac|mathrm|sum|log|sqrt|alpha|mathbb|tfrac|left|right)\b"
)
SKIP_TEXT_IN = {"pre", "code", "math", "script", "style", "kbd", "samp", "tt"}


class Page(HTMLParser):
  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.ids: set[str] = set()
    self.links: list[str] = []
    self.text: list[str] = []
    self._skip = 0

  def handle_starttag(self, tag, attrs):
    a = dict(attrs)
    for key in ("id", "name"):
      if a.get(key):
        self.ids.add(a[key])
    for key in ("href", "src"):
      if a.get(key) and tag in ("a", "img", "link", "script"):
        self.links.append(a[key])
    if tag in SKIP_TEXT_IN:
      self._skip += 1

  def handle_endtag(self, tag):
    if tag in SKIP_TEXT_IN and self._skip:
      self._skip -= 1

  def handle_data(self, data):
    if not self._skip:
      self.text.append(data)


def parse(path: Path) -> Page:
  page = Page()
  page.feed(path.read_text(encoding="utf-8"))
  return page


def check(site: Path) -> list[str]:
  problems = []
  pages = {p: parse(p) for p in sorted(site.rglob("*.html"))}
  if not pages:
    return [f"no HTML pages under {site}"]
  for path, page in pages.items():
    rel = path.relative_to(site)
    for link in page.links:
      parts = urlsplit(link)
      if parts.scheme or parts.netloc or link.startswith(("mailto:", "data:", "javascript:")):
        continue
      target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
      if target.is_dir():
        target = target / "index.html"
      if not target.exists():
        problems.append(f"{rel}: broken link {link}")
        continue
      if parts.fragment and target.suffix == ".html":
        ids = pages[target].ids if target in pages else parse(target).ids
        if unquote(parts.fragment) not in ids:
          problems.append(f"{rel}: no anchor #{parts.fragment} in {target.relative_to(site)}")
    text = " ".join(page.text)
    for m in MATH_SOURCE.finditer(text):
      snippet = text[max(0, m.start() - 30) : m.end() + 30].replace("\n", " ")
      problems.append(f"{rel}: unrendered math {m.group()!r} in ...{snippet}...")
  import public_api

  for name in public_api.all_page_names():
    if not (site / "api" / "generated" / f"{name}.html").exists():
      problems.append(f"no API page for {name} (api/generated/{name}.html)")
  return problems


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  site = Path(argv[0] if argv else ROOT / "docs" / "_build" / "html")
  problems = check(site)
  for p in problems:
    print(p)
  n = len(list(site.rglob("*.html")))
  print(f"[check_docs] {n} pages, {len(problems)} problems")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
