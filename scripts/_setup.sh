# Internal: sourced by setup.sh, test.sh and reproduce.sh, each in its own process. Creates
# .venv if missing and installs jaxdiv with its extras; idempotent, and quick when the
# environment is already up to date. It turns on errexit/nounset/pipefail and moves to the
# repository root for the script that sources it, so an interactive shell must not source
# it: run ./scripts/setup.sh instead (it only sets up .venv).
if [[ $- == *i* && ${BASH_SUBSHELL:-0} -eq 0 ]]; then
  echo "scripts/_setup.sh is internal (it would change your shell's options and folder);" \
    "run ./scripts/setup.sh instead." >&2
  return 1
fi
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
# Reinstall only when pyproject.toml changed since the last successful install.
STAMP=.venv/.jaxdiv-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || ! "$VPY" -c "import jaxdiv, optax, pytest" 2>/dev/null; then
  echo "[setup] installing jaxdiv[test,experiments] into .venv"
  "$VPY" -m pip install --quiet --upgrade pip
  "$VPY" -m pip install --quiet -e ".[test,experiments]"
  touch "$STAMP"
fi
