#!/usr/bin/env bash
# The study's pretraining runs: I-JEPA and MAE on the EuroSAT train split, same backbone, same epochs.
# Run from the repository root (as root for the nice level); both runs share the CPU, ahead of other work. Add --resume to continue killed runs.
set -euo pipefail
# One thread per run: two runs with two OpenMP threads each on a 2-core machine spin against each other.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
data=${DATA:-../shared/data/eurosat-rgb}
nice -n -5 python -m training pretrain --method ijepa --data "$data" --config study_eurosat --out runs/study/ijepa "$@" \
    > runs/study/ijepa.log 2>&1 &
nice -n -5 python -m training pretrain --method mae --data "$data" --config study_eurosat --out runs/study/mae "$@" \
    > runs/study/mae.log 2>&1 &
wait
