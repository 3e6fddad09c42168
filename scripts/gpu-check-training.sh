#!/usr/bin/env bash
# The GPU checks of issue #16, in one go on a lent GPU machine (~10 min on one H200), writing JSON to $OUT:
#   1. training steps/s of avesformer-pvt_v2_b2 at 224², 10 frames per step (the recipes' 2 clips x 5):
#      float32 vs bf16 autocast vs fp16 autocast, and torch.compile (`avs bench train`, alternated in one run);
#   2. the same short synthetic schedule on the GPU and on the CPU, then the held-out mIoU of each
#      (`avs train` + `avs eval`): the GPU run should reach the CPU run's number.
# Needs the project's venv on that machine (see the device tool's notes on carrying wheels).
set -euo pipefail
OUT=${OUT:-runs/gpu-check}
AVS=${AVS:-.venv/bin/avs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.csv"

for amp in bf16 fp16; do
  $AVS bench train --variant avesformer-pvt_v2_b2 --size 224 --frames 10 --device cuda --amp $amp \
    --steps 30 --warmup 5 $([ $amp = bf16 ] && echo --compile) --json | tee "$OUT/bench-train-b2-$amp.json"
done

DATA="$OUT/synthetic-s4"
$AVS synth --out "$DATA" --subset s4 --videos 200 --seed 1 --size 128 --no-mp4 --json > /dev/null
$AVS synth --out "$DATA" --subset s4 --videos 40 --seed 2 --size 128 --split val --no-mp4 --json > /dev/null
$AVS synth --out "$DATA" --subset s4 --videos 60 --seed 3 --size 128 --split test --no-mp4 --json > /dev/null
SCHEDULE=(--data "$DATA" --subset s4 --variant avesformer-tiny --epochs 8 --batch-size 4 --lr 5e-4
          --eval-every 4 --tensorboard "" --no-resume --json)
for device in cuda cpu; do
  $AVS train "${SCHEDULE[@]}" --device $device --out "$OUT/tiny-$device.safetensors" | tee "$OUT/train-$device.json"
  $AVS eval --data "$DATA" --subset s4 --checkpoint "$OUT/tiny-$device.safetensors" --device $device --json \
    | tee "$OUT/eval-$device.json"
done
