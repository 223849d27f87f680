#!/usr/bin/env bash
# The GPU path end to end on AID: torchrun (NCCL, one process per GPU, also at one GPU), bf16 autocast, the
# gpu_fmow_vits16 preset (ViT-S/16 at 224 px, batch 512, the papers' EMA and warm-up), I-JEPA (paper) and MAE
# trained side by side on the same GPU(s), then exported to ONNX (checked against PyTorch on real images).
#
#   bash study/gpu_aid.sh DATA OUT EPOCHS [GPUS [PRETRAIN FLAGS...]]
#
# DATA: the AID folder (splits.csv + images/); EPOCHS: the run length, the schedules follow it (choose it from
# `python -m training bench --config gpu_fmow_vits16` on the GPU and the time you have). The online kNN monitor
# uses the CPU AID runs' subsets (2,000 train / 1,000 val images), so its curve sits beside theirs.
# Not a shipped model: ViT-S/16 is 87 MB per encoder; the shipped AID models stay the CPU runs.
# Run once on one H200 (2026-11-26): `bash study/gpu_aid.sh /tmp/aid /tmp/gpurun 44 1`; its metrics, cards and the
# GPU bench are in study/gpu/ (RESULTS.md, "The GPU path").
set -euo pipefail

data=$1 out=$2 epochs=$3 gpus=${4:-1}
shift $(($# < 4 ? $# : 4))  # what is left goes to every pretrain (a CPU smoke test: --max-steps 2 --batch-size 8)
mkdir -p "$out"

port=29611
for method in ijepa mae; do
  torchrun --nproc-per-node "$gpus" --master-port "$port" -m training pretrain --method "$method" --data "$data" \
      --config gpu_fmow_vits16 --epochs "$epochs" --out "$out/$method-gpu-aid" \
      --set data.preload=true --set monitor.n_train=2000 --set monitor.n_eval=1000 "$@" \
      > "$out/$method-gpu-aid.log" 2>&1 &
  port=$((port + 1))
done
status=0
for job in $(jobs -p); do wait "$job" || status=1; done
if [[ $status != 0 ]]; then
  tail -n 30 "$out"/*-gpu-aid.log
  exit 1
fi

# One after the other (~70 s each on 16 cores): two side by side, each on every core, took over 4 minutes.
for method in ijepa mae; do
  python -m training export "$out/$method-gpu-aid" --out "$out/$method-gpu-aid-export" 2>&1 | tail -n 1
done
