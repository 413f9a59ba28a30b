#!/usr/bin/env bash
# The proxy-fidelity study (issue 26 item 3). One results folder per setting under /work/proxy/results.
set -u
cd /work/main
R=/work/proxy/results
ARCHS=standard,no_attn,full_attn,convnext_unet,dilated_convnet
echo "stage 1 (demo, eval points 500,1000,2000, seed 42) start $(date -u +%FT%TZ)"
python -m harness sweep --task shapes --arch $ARCHS --tier demo --seed 42 --no-progress \
  --set 'evaluation.eval_points=[500,1000,2000]' --results-dir $R/demo
echo "stage 1 end $(date -u +%FT%TZ) rc=$?"
echo "stage 2 (1000 steps, 128 FID samples, seed 42)"
python -m harness sweep --task shapes --arch $ARCHS --tier demo --seed 42 --no-progress \
  --set training.steps=1000 --set evaluation.num_samples=128 --results-dir $R/cheap
echo "stage 2 end $(date -u +%FT%TZ) rc=$?"
echo "stage 3 (demo, seed 43)"
python -m harness sweep --task shapes --arch $ARCHS --tier demo --seed 43 --no-progress \
  --set 'evaluation.eval_points=[500,1000,2000]' --results-dir $R/demo
echo "stage 3 end $(date -u +%FT%TZ) rc=$?"
