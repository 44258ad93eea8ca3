#!/usr/bin/env bash
# Build the documentation site into docs/_build/html, then check it. Same .venv set-up as
# test.sh, plus the `docs` extra. Warnings are errors and every cross-reference must
# resolve (-W --keep-going -n); scripts/check_docs.py then checks internal links and
# anchors, that no math was left unrendered, and that every public name has its page.
# Extra arguments go to sphinx-build (for example -E to rebuild from scratch).
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
DOCS_STAMP=.venv/.jaxdiv-docs-installed
if [ ! -f "$DOCS_STAMP" ] || [ pyproject.toml -nt "$DOCS_STAMP" ] \
    || ! "$VPY" -c "import sphinx, furo, myst_parser, latex2mathml" 2>/dev/null; then
  echo "[docs] installing jaxdiv[docs] into .venv"
  "$VPY" -m pip install --quiet -e ".[docs]"
  touch "$DOCS_STAMP"
fi
export MPLBACKEND=Agg
start=$(date +%s)
"$VPY" -m sphinx -b html -W --keep-going -n -q docs docs/_build/html "$@"
echo "[docs] built docs/_build/html in $(( $(date +%s) - start )) s"
"$VPY" scripts/check_docs.py docs/_build/html
