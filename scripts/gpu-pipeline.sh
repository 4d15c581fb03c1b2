#!/usr/bin/env bash
# The research pipeline on the device machine, through tch's CUDA path (design §6): a time-limited
# shapes-detector training run, FeatJND estimators for each candidate detector, and
# `featjnd run --quick --device $DEV`. Binary and the few libraries and one font the image lacks
# come from scripts/build-gpu-bins.sh in .gpu/; MobileNetV2 weights and photos are carried from
# .deps/data. A candidate detector trained elsewhere may wait in .gpu/candidates/<name>/.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-pipeline}; mkdir -p "$OUT"
TRAIN_S=${FEATJND_GPU_TRAIN_SECONDS:-240}
JND_STEPS=${FEATJND_GPU_JND_STEPS:-400}
INIT=${FEATJND_GPU_INIT:-models/shapes-det.safetensors}
LR=${FEATJND_GPU_LR:+--lr $FEATJND_GPU_LR}
BATCH=${FEATJND_GPU_BATCH:-32}
DEV=${FEATJND_GPU_DEVICE:-cuda}   # cpu: a dry run of this script on a machine without a GPU
tl=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__)+"/lib")')
nv=$(python3 -c 'import nvidia,os;print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)/nvidia/cu13/lib
export LD_LIBRARY_PATH="$tl:$nv:${LD_LIBRARY_PATH:-}"
export FEATJND_SKIMAGE_DIR=$PWD/.deps/data/skimage FEATJND_MOBILENET_V2=$PWD/.deps/data/mobilenet_v2/mobilenet_v2.safetensors
export FEATJND_FONT=$PWD/.gpu/fonts/DejaVuSans.ttf
F=.gpu/featjnd
ldd $F | grep "not found" && echo "missing libraries above"
nproc; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null

echo "== detector: ${TRAIN_S} s of training on $DEV from $INIT (batch $BATCH) $LR"
mkdir -p .gpu/candidates/gpu
timeout $((TRAIN_S + 120)) $F train-task --task shapes --device $DEV --init "$INIT" $LR \
  --batch $BATCH --max-steps 40000 --time-limit "$TRAIN_S" --out .gpu/candidates/gpu/shapes-det.safetensors > "$OUT/train-det.json" 2> "$OUT/train-det.log"
echo "train-task rc=$?"; tail -n 3 "$OUT/train-det.log"; grep -E '"(box|mask)_ap50"|train_steps|train_seconds' "$OUT/train-det.json"

for dir in .gpu/candidates/*/; do
  name=$(basename "$dir"); [ -f "$dir/shapes-det.safetensors" ] || continue
  for split in stem fpn; do
    echo "== estimator $name/$split: $JND_STEPS steps on cuda"; start=$(date +%s)
    timeout 150 $F train-jnd --task shapes --split $split --steps "$JND_STEPS" --device $DEV --models "$dir" \
      --out "$dir/jnd/shapes-$split.safetensors" > "$OUT/jnd-$name-$split.json" 2> "$OUT/jnd-$name-$split.log"
    echo "rc=$? in $(( $(date +%s) - start )) s"; grep -E 'final_(d|hinge|lambda)' "$OUT/jnd-$name-$split.json"
  done
done

echo "== featjnd run --quick --device $DEV (shapes, mobilenet)"; start=$(date +%s)
timeout 180 $F run --quick --device $DEV --tasks shapes,mobilenet --cache /tmp/fj-cache --out /tmp/report-quick > "$OUT/run-quick.json" 2> "$OUT/run-quick.log"
echo "run rc=$? in $(( $(date +%s) - start )) s"; tail -n 5 "$OUT/run-quick.log"
tar czf "$OUT/pipeline.tgz" .gpu/candidates /tmp/report-quick/summary.json /tmp/report-quick/report.md 2>/dev/null
ls -la "$OUT"
