#!/usr/bin/env bash
# Trains the shipped models and the ablations in parallel on one GPU.
# Usage: tools/train_release.sh DATA_DIR OUT_DIR MINUTES
# Writes OUT_DIR/{unet,deeplab}.pt (trained on all 50 labelled slices + pseudo),
# OUT_DIR/{unet,deeplab}_val.pt (same recipe, 10 slices held out), ablations and logs.
set -u
DATA=$1; OUT=$2; MIN=$3
mkdir -p "$OUT"
run() { name=$1; shift; python3 -m ctscreen.cli train --data "$DATA" --out "$OUT/$name.pt" --minutes "$MIN" --device cuda "$@" >"$OUT/$name.log" 2>&1 & }
run unet --arch unet --val-fraction 0
run deeplab --arch deeplab --val-fraction 0
run unet_val --arch unet --seed 0
run deeplab_val --arch deeplab --seed 0
run unet_val_seed1 --arch unet --seed 1
run unet_nopseudo --arch unet --seed 0 --no-pseudo
run unet_geometric --arch unet --seed 0 --aug geometric
run unet_noaug --arch unet --seed 0 --aug none
wait
for f in "$OUT"/*.log; do echo "== $f"; tail -c 400 "$f"; echo; done
