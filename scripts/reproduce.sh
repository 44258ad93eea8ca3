#!/usr/bin/env bash
# Set up .venv (if needed), then regenerate every result (docs/results/*.json, committed so
# that the numbers the docs quote can be checked) and every figure (docs/figures/) from
# scratch. Extra arguments go to every experiment.
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
export MPLBACKEND=Agg
RESULTS="$ROOT/docs/results"
FIGURES="$ROOT/docs/figures"
mkdir -p "$RESULTS" "$FIGURES"
EXPERIMENTS=(blog_example ce_vs_kl forward_vs_reverse kl_estimators kl_penalty distill sparse_distill)
for exp in "${EXPERIMENTS[@]}"; do
  echo "== experiments.$exp"
  start=$(date +%s)
  "$VPY" -m "experiments.$exp" --out "$RESULTS" --figures "$FIGURES" "$@"
  echo "   done in $(( $(date +%s) - start )) s"
done
echo "results in $RESULTS, figures in $FIGURES"
