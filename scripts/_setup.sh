# Sourced by test.sh and reproduce.sh: create .venv if missing and install jaxdiv with
# its extras. Idempotent; quick when the environment is already up to date.
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
