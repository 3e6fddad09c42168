#!/usr/bin/env bash
# The frame engine's GPU checks (issue #13), in one go, for a machine lent with a CUDA GPU: model frames/s
# per variant with float16 autocast at batch 1/8/32, the plumbing ceiling on that machine's CPUs at
# 360p/720p/1080p, and `avs bench service --concurrency 16` end to end on an avesformer-pvt_v2_b0 worker
# at 224². JSON lines in $OUT (or ./gpu-check). Needs the project installed (make setup) and a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
AVS=${AVS:-.venv/bin/avs}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

for variant in avesformer-pvt_v2_b0 avesformer-pvt_v2_b2 avesformer-pvt_v2_b5 avsegformer-pvt_v2_b5; do
  for batch in 1 8 32; do
    $AVS bench model --variant "$variant" --batch-size "$batch" --size 224 --device cuda --amp --iters 20 \
      --warmup 5 --json >> "$OUT/model.jsonl"
  done
done

# Issue #20: the published AVSegFormer models at their own input size (512 for S4), as imported checkpoints
# (random weights in the official layout, from the committed manifests: the speed does not depend on the
# values), float16 / bfloat16 autocast, channels-last and torch.compile, beside AVESFormer on the same backbone.
ckpts=$(mktemp -d)
$PY - "$ckpts" <<'PYEOF'
import sys, torch
from pathlib import Path
from model.avsegformer_release import load_manifest
for backbone in ("r50", "pvt_v2_b5"):
    manifest = load_manifest(backbone, "s4")
    state = {k: (torch.zeros(s, dtype=torch.long) if k.endswith("num_batches_tracked") else torch.randn(s) * 0.02)
             for k, s in {**manifest["keys"], **manifest["dropped"]}.items()}
    torch.save(state, Path(sys.argv[1]) / f"{backbone}-S4_best.pth")
PYEOF
for backbone in r50 pvt_v2_b5; do
  $AVS weights import-avsegformer "$ckpts/$backbone-S4_best.pth" --out "$ckpts/$backbone-s4.safetensors" --json \
    > "$OUT/import-$backbone.json"
  for batch in 1 8; do
    for opts in "--amp --amp-dtype float16" "--amp --amp-dtype bfloat16" "--amp --amp-dtype float16 --channels-last" \
                "--amp --amp-dtype bfloat16 --compile"; do
      # shellcheck disable=SC2086  # one word per option
      $AVS bench model --checkpoint "$ckpts/$backbone-s4.safetensors" --batch-size "$batch" --device cuda $opts \
        --iters 20 --warmup 5 --json >> "$OUT/real-models.jsonl"
    done
  done
  $AVS bench compare --checkpoint "$ckpts/$backbone-s4.safetensors" --batch-sizes 1 8 --device cuda --json \
    >> "$OUT/real-models-compare.jsonl"
done

clips=$(mktemp -d)
$PY - "$clips" <<'PYEOF'
import sys
from pathlib import Path
from worker.media.samples import make_video
for w, h, fps in ((640, 360, 25), (1280, 720, 30), (1920, 1080, 30)):
    make_video(Path(sys.argv[1]) / f"{h}.mp4", duration_s=10, size=(w, h), fps=fps)
PYEOF
for h in 360 720 1080; do
  $AVS bench segment "$clips/$h.mp4" --model none --json >> "$OUT/plumbing.jsonl"
done

AVS_DEVICE=cuda AVS_VARIANT=avesformer-pvt_v2_b0 AVS_BATCH_SIZE=32 \
  $AVS bench service --video "$clips/360.mp4" --concurrency 16 --runs 1 --batch-size 32 --json >> "$OUT/service.jsonl"
echo "gpu-check: results in $OUT"
