#!/usr/bin/env bash
# Set up .venv (if needed) and run the test suite. Extra arguments go to pytest.
# By default the end-to-end checks marked `slow` (docs build, wheel round-trip,
# multi-process runs, the full grid) are left out; `.ci/run` runs them with `-m slow`.
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
export MPLBACKEND=Agg
# One worker per core (2 here); a module stays on one worker (the grid counts its cells).
exec "$VPY" -m pytest -n auto --dist loadfile -m "not slow" "$@"
