#!/usr/bin/env bash
# The study's final runs on EuroSAT: each method with the settings chosen on val by study/sweep.py (see
# RESULTS.md), at about equal compute on the CPU (one thread each, run side by side), then exported.
# Run from the repository root; add --resume to continue killed runs (the same command line).
#   bash study/pretrain.sh mae          # or ijepa, ijepa-paper; no argument = all three, two at a time
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # two runs on a 2-core machine: one thread each
data=${DATA:-../shared/data/eurosat-rgb}
runs=${RUNS:-runs/final}
mkdir -p "$runs"

run() {  # name method epochs overrides...
    local name=$1 method=$2 epochs=$3
    shift 3
    local sets=()
    for kv in "$@"; do sets+=(--set "$kv"); done
    python -m training pretrain --method "$method" --data "$data" --config study_final --out "$runs/$name" \
        --epochs "$epochs" "${sets[@]}" ${RESUME:+--resume} > "$runs/$name.log" 2>&1
    python -m training export "$runs/$name" --out "exported/$name" >> "$runs/$name.log" 2>&1
}

mae() { run mae mae 32 optim.lr=0.0015; }
ijepa() { run ijepa ijepa 16 optim.lr=0.0015 'ijepa.ema=[0.99,1.0]' ijepa.regularizer=vicreg ijepa.reg_weight=1.0; }
ijepa-paper() { run ijepa-paper ijepa 16 optim.lr=0.000125 'ijepa.ema=[0.996,1.0]'; }

if [ $# -eq 0 ]; then
    mae & ijepa & wait
    ijepa-paper
else
    for name in "$@"; do "$name"; done
fi
