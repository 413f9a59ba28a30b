#!/usr/bin/env bash
# The proxy-fidelity study (issue 26 item 3). One results folder per setting under $R; after each
# stage the runs' records and sample grids are copied into reports/proxy-fidelity/runs/ (committed),
# so the report can be rebuilt, and the study continued, from a fresh checkout:
#   python -m harness report reports/proxy-fidelity/runs --out reports/proxy-fidelity
set -u
cd "$(dirname "$0")/../.."
R=${R:-/work/proxy/results}
ARCHS=standard,no_attn,full_attn,adm,convnext_unet,dilated_convnet
keep() {  # copy what the report reads out of a stage's results folder
  (cd "$R" && find "$1" -name record.json -o -name 'samples*.png' -o -name 'sweeps' -prune -o -false) |
    while read -r f; do mkdir -p "reports/proxy-fidelity/runs/$(dirname "$f")"; cp -r "$R/$f" "reports/proxy-fidelity/runs/$f"; done
}
stage() {  # name, then the sweep's flags
  local name=$1; shift
  echo "stage $name start $(date -u +%FT%TZ)"
  python -m harness sweep --task shapes --arch $ARCHS --tier demo --no-progress "$@"
  echo "stage $name end $(date -u +%FT%TZ) rc=$?"
}
stage "demo seed 42" --seed 42 --set 'evaluation.eval_points=[500,1000,2000]' --results-dir $R/demo; keep demo
stage "cheap seed 42" --seed 42 --set training.steps=1000 --set evaluation.num_samples=128 --results-dir $R/cheap; keep cheap
stage "demo seed 43" --seed 43 --set 'evaluation.eval_points=[500,1000,2000]' --results-dir $R/demo; keep demo
stage "cheap seed 43" --seed 43 --set training.steps=1000 --set evaluation.num_samples=128 --results-dir $R/cheap; keep cheap
