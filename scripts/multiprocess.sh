#!/usr/bin/env bash
# Run a program as N JAX processes on this machine (one global mesh over their CPU devices):
#   ./scripts/multiprocess.sh N [launcher options] -- -m MODULE [ARGS]   (or SCRIPT.py [ARGS])
# e.g. ./scripts/multiprocess.sh 2 -- -m experiments.ce_vs_kl --quick --devices 4 --out results/mp{process}
# Options and bounds: python scripts/multiprocess.py --help.
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 N [options] -- (-m MODULE | SCRIPT.py) [ARGS ...]" >&2
  exit 2
fi
n="$1"
shift
exec "$VPY" "$ROOT/scripts/multiprocess.py" -n "$n" "$@"
