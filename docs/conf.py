"""Sphinx configuration for the jaxdiv site (built by ./scripts/docs.sh)."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

import jaxdiv  # noqa: E402

project = "jaxdiv"
author = "The jaxdiv authors"
copyright = "The jaxdiv authors"  # noqa: A001 -- Sphinx's name for it
release = jaxdiv.__version__
version = release

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.intersphinx",
  "myst_parser",
  "mathml",
  "generated_tables",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "README.md", "results", "_inventories", "_templates"]
templates_path = ["_templates"]

# Math: rendered to MathML at build time (docs/_ext/mathml.py); no MathJax, no network.
html_math_renderer = "mathml"

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# API pages: one per public name (docs/api/index.md lists them by family).
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": False}
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# Docstrings name sections "See also:" and "References:"; napoleon knows both.
# Attribute types come from the signature; the docstrings' Attributes sections say the rest.
napoleon_attr_annotations = False
add_module_names = False
python_use_unqualified_type_names = True

# Cross-references to other projects resolve against inventories committed under
# docs/_inventories/ (written by docs/_inventories/make_inventories.py): the build reads
# no network, and the links point at the projects' published pages.
intersphinx_mapping = {
  "python": ("https://docs.python.org/3/", "_inventories/python.inv"),
  "jax": ("https://docs.jax.dev/en/latest/", "_inventories/jax.inv"),
  "numpy": ("https://numpy.org/doc/stable/", "_inventories/numpy.inv"),
  "scipy": ("https://docs.scipy.org/doc/scipy/", "_inventories/scipy.inv"),
  "optax": ("https://optax.readthedocs.io/en/latest/", "_inventories/optax.inv"),
}
intersphinx_timeout = 1

nitpicky = True
nitpick_ignore = []

html_theme = "furo"
html_title = f"jaxdiv {release}"
html_static_path = ["_static"]
html_css_files = ["jaxdiv.css"]
html_last_updated_fmt = None
html_show_sourcelink = False
html_copy_source = False

# Signatures keep the names of the type aliases (ArrayLike, not the union it stands for),
# qualified so that they link to jax's pages.
_ALIASES = {
  "ArrayLike": "jax.typing.ArrayLike",
  "DTypeLike": "jax.typing.DTypeLike",
  "Array": "jax.Array",
  "Mesh": "jax.sharding.Mesh",
  "Generator": "jaxdiv.generators.Generator",
  "Callable": "collections.abc.Callable",
}
_ALIAS_RE = re.compile(r"(?<![\w.])(" + "|".join(_ALIASES) + r")(?![\w])")


class _Annotation(str):
  """A postponed annotation printed as written (inspect would quote a plain string)."""

  def __repr__(self):
    return str(self)


def _rewrite(annotation):
  if not isinstance(annotation, str):
    return annotation
  return _Annotation(_ALIAS_RE.sub(lambda m: _ALIASES[m.group(1)], annotation))


def _signature(app, what, name, obj, options, signature, return_annotation):
  if what not in ("function", "class", "method"):
    return None
  try:
    sig = inspect.signature(obj)
  except (TypeError, ValueError):
    return None
  params = [p.replace(annotation=_rewrite(p.annotation)) for p in sig.parameters.values()]
  ret = _rewrite(sig.return_annotation)
  sig = sig.replace(parameters=params, return_annotation=inspect.Signature.empty)
  if what == "class":
    return str(sig), None
  return str(sig), (None if ret is inspect.Signature.empty else str(ret))


def _data_docstring(app, what, name, obj, options, lines):
  """Napoleon reads ``Label: text`` on a data docstring's first line as ``type: text``."""
  if what == "data" and lines and re.match(r"^[^:`]+: ", lines[0]):
    lines[0] = lines[0].replace(": ", " — ", 1)


def setup(app):
  app.connect("autodoc-process-signature", _signature)
  app.connect("autodoc-process-docstring", _data_docstring, priority=100)


# docs/api/index.rst is written from jaxdiv's public names before every build.
import public_api  # noqa: E402

public_api.write_api_index(DOCS / "api" / "index.rst")
