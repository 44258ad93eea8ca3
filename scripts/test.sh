#!/usr/bin/env bash
# Set up .venv (if needed) and run the test suite. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
export MPLBACKEND=Agg
# One worker per core (2 here); a module stays on one worker (the grid counts its cells).
exec "$VPY" -m pytest -n auto --dist loadfile "$@"
