#!/usr/bin/env bash
# Set up the environment and nothing else: create .venv if it is missing and install jaxdiv
# with its test and experiments extras (quick when it is already up to date). Runs no tests.
# Run it from any folder: ./scripts/setup.sh (sourcing it is harmless too: the work happens
# in a subshell, so your shell keeps its options and folder). Then use .venv/bin/python, or
# activate the environment with: source .venv/bin/activate
(
  source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
  echo "[setup] ready: run $VPY, or activate with: source $ROOT/.venv/bin/activate"
)
