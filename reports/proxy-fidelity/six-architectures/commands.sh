#!/usr/bin/env bash
# The six-architecture proxy-fidelity study (issue 26 item 3; docs/proxy-fidelity.md). One results
# folder per setting under $R. After each stage the runs' records, sample grids and the sweep
# manifests are copied into runs/ next to this file (committed), so the report can be rebuilt and the
# study continued from a fresh checkout: copy runs/* into $R first, and the sweeps skip every cell
# whose completed record is there.
#   mkdir -p $R && cp -r reports/proxy-fidelity/six-architectures/runs/* $R/    # continue
#   python -m harness report --results-dir reports/proxy-fidelity/six-architectures/runs --out reports/proxy-fidelity/six-architectures
# 2026-12-04: stage 1 ran (6 runs, 1.9 h on the 2-core AMD EPYC VM); stages 2-4 are still to run.
set -u
cd "$(dirname "$0")/../../.."
R=${R:-/work/proxy/results}
KEEP=reports/proxy-fidelity/six-architectures/runs
ARCHS=standard,no_attn,full_attn,adm,convnext_unet,dilated_convnet
keep() {  # copy what the report reads out of a stage's results folder
  (cd "$R" && find "$1" -name record.json -o -name 'samples*.png' -o -name 'sweeps' -prune -o -false) |
    while read -r f; do mkdir -p "$KEEP/$(dirname "$f")"; cp -r "$R/$f" "$KEEP/$f"; done
}
stage() {  # name, then the sweep's flags
  local name=$1 rc; shift
  echo "stage $name start $(date -u +%FT%TZ)"
  python -m harness sweep --task shapes --arch $ARCHS --tier demo --no-progress "$@"; rc=$?
  echo "stage $name end $(date -u +%FT%TZ) rc=$rc"
}
stage "demo seed 42" --seed 42 --set 'evaluation.eval_points=[500,1000,2000]' --results-dir $R/demo; keep demo
stage "cheap seed 42" --seed 42 --set training.steps=1000 --set evaluation.num_samples=128 --results-dir $R/cheap; keep cheap
stage "demo seed 43" --seed 43 --set 'evaluation.eval_points=[500,1000,2000]' --results-dir $R/demo; keep demo
stage "cheap seed 43" --seed 43 --set training.steps=1000 --set evaluation.num_samples=128 --results-dir $R/cheap; keep cheap
