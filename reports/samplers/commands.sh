#!/usr/bin/env bash
# The sampler study (issue 38 item 6; docs/samplers.md): does a backbone's rank at the demo tier survive
# another sampler and fewer steps? Six architectures x two seeds at shapes/demo, each run's last evaluation
# sampled with the protocol's DDIM (100 steps, eta 1) and the grid below, from the same noise. After the
# sweep the runs' records and sample grids are copied into runs/ next to this file (committed), so the
# report can be rebuilt from a fresh checkout:
#   python -m harness report --results-dir reports/samplers/runs --out reports/samplers
set -u
cd "$(dirname "$0")/../.."
R=${R:-/work/samplers-study/results}
KEEP=reports/samplers/runs
ARCHS=standard,no_attn,full_attn,adm,convnext_unet,dilated_convnet
GRID='samplers.grid=[ddim:10,ddim:20,ddim:50,dpmpp_2m:10,dpmpp_2m:20,unipc:20]'
echo "sweep start $(date -u +%FT%TZ)"
python -m harness sweep --task shapes --arch $ARCHS --tier demo --seed 42,43 --cpus-per-run 1 --no-progress \
  --set "$GRID" --results-dir "$R"; rc=$?
echo "sweep end $(date -u +%FT%TZ) rc=$rc"
(cd "$R" && find . -name sweeps -prune -o \( -name record.json -o -name 'samples*.png' \) -print) |
  while read -r f; do mkdir -p "$KEEP/$(dirname "$f")"; cp -r "$R/$f" "$KEEP/$f"; done
python -m harness report --results-dir "$KEEP" --out reports/samplers
