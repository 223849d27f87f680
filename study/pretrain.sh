#!/usr/bin/env bash
# The study's final runs: each method with the settings chosen on EuroSAT val by study/sweep.py (see RESULTS.md),
# at about equal compute on the CPU (one thread each, two side by side), each run exported after training.
# Run from the repository root:
#   bash study/pretrain.sh eurosat mae ijepa ijepa_vicreg    # and: bash study/pretrain.sh aid mae ijepa
#   BUDGET=150 bash study/pretrain.sh eurosat mae ijepa_vicreg ijepa  # the three at 150 core-minutes each
#   BUDGET=300 bash study/pretrain.sh aid mae ijepa_vicreg ijepa  # AID at twice that: shipped (run on a GPU, RESULTS.md)
#   BUDGET=150 bash study/pretrain.sh mixed mae   # EuroSAT + AID train as one corpus (22,200 images) at 128 px, for
#                                                # the images (so the FLOPs) of the AID 150 runs: <method>-150-mixed
# (no method = mae and ijepa). `ijepa` is the paper's I-JEPA (its own row everywhere); `ijepa_vicreg` the tuned
# one: the sweep's winner on val after its full 3 epochs (VICReg weight 0.1, lr 1.5e-3 per 256, EMA 0.99 -> 1;
# RESULTS.md), exported from its best online-kNN epoch on val (checkpoint-best/). RESUME=1 continues killed runs
# with the same command line. Epochs are sized for about equal compute at the measured one-thread speed of each
# method (EuroSAT: VICReg steps cost ~1.2x the paper's, so 14 epochs against 16; AID: I-JEPA ~22.5, MAE ~41 img/s
# side by side).
# On AID (128 px) the online kNN costs 1-2 min per measurement (a full forward of 3,000 images, per encoder), so it is measured
# every 4 (I-JEPA) or 8 (MAE) epochs, on 2,000 train / 1,000 val images. The first AID runs were started longer
# and shortened on --resume --epochs to fit the session (I-JEPA 24 -> 22 at epoch 1.2 -> 18 at epoch 9.5; MAE
# 44 -> 36 at epoch 21.4): their cosine schedules have a step there; these lines rerun them smoothly.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # two runs on a 2-core machine: one thread each
dataset=${1:?name a dataset: eurosat or aid}
shift
budget=${BUDGET:-first}  # "first": the first final runs; 150: the 150 core-minutes per run (AID: also 300)
case $dataset:$budget in
    eurosat:first) data=("${DATA:-../shared/data/eurosat-rgb}"); config=study_final; suffix=""
             ijepa_epochs=16; vicreg_epochs=14; mae_epochs=32; ijepa_monitor=1; mae_monitor=1 ;;
    aid:first) data=("${DATA:-../shared/data/aid}"); config=study_final_aid; suffix="-aid"
         ijepa_epochs=18; vicreg_epochs=16; mae_epochs=36; ijepa_monitor=4; mae_monitor=8 ;;
    # 150 core-minutes at the first runs' one-thread speeds (EuroSAT: 2.9 / 3.1 / 1.6 core-min per epoch for
    # I-JEPA / tuned I-JEPA / MAE; AID: 5.8 / 5.8 / 2.8), named <method>-150[-aid]
    eurosat:150) data=("${DATA:-../shared/data/eurosat-rgb}"); config=study_final; suffix="-150"
             ijepa_epochs=52; vicreg_epochs=48; mae_epochs=94; ijepa_monitor=2; mae_monitor=4 ;;
    aid:150) data=("${DATA:-../shared/data/aid}"); config=study_final_aid; suffix="-150-aid"
         ijepa_epochs=26; vicreg_epochs=26; mae_epochs=54; ijepa_monitor=4; mae_monitor=8 ;;
    # AID at twice the budget (run on a GPU: DATA=<a copy of AID> there; the tuned I-JEPA and MAE shipped from it)
    aid:300) data=("${DATA:-../shared/data/aid}"); config=study_final_aid; suffix="-300-aid"
         ijepa_epochs=52; vicreg_epochs=52; mae_epochs=108; ijepa_monitor=4; mae_monitor=8 ;;
    # one corpus of EuroSAT + AID train (16,200 + 6,000 images), every image at 128 px (AID's size; EuroSAT's 64 px
    # tiles upsampled), for as many images as the AID 150 runs saw (MAE 54 x 6,000 = 324k: 15 epochs of 22,200;
    # I-JEPA 26 x 6,000: 7); the monitor reads both archives' val
    mixed:150) data=("${EUROSAT:-../shared/data/eurosat-rgb}" "${AID:-../shared/data/aid}"); config=study_final_aid
         suffix="-150-mixed"; ijepa_epochs=7; vicreg_epochs=7; mae_epochs=15; ijepa_monitor=7; mae_monitor=5 ;;
    *) echo "unknown dataset or budget $dataset:$budget: eurosat, aid or mixed, BUDGET=first or 150 (aid: also 300)" >&2
       exit 2 ;;
esac
runs=${RUNS:-runs/final}
mkdir -p "$runs"

run() {  # name method epochs export-options overrides...
    local name=$1$suffix method=$2 epochs=$3 export_options=$4
    shift 4
    local sets=()
    for kv in "$@"; do sets+=(--set "$kv"); done
    python -m training pretrain --method "$method" --data "${data[@]}" --config "$config" --out "$runs/$name" \
        --epochs "$epochs" "${sets[@]}" ${RESUME:+--resume} > "$runs/$name.log" 2>&1
    python -m training export "$runs/$name" --out "exported/$name" $export_options >> "$runs/$name.log" 2>&1
}

mae() { run mae mae "$mae_epochs" "" optim.lr=0.0015 monitor.every=$mae_monitor; }
ijepa() { run ijepa ijepa "$ijepa_epochs" "" optim.lr=0.000125 'ijepa.ema=[0.996,1.0]' monitor.every=$ijepa_monitor; }
ijepa_vicreg() {
    run ijepa-vicreg ijepa "$vicreg_epochs" --best optim.lr=0.0015 'ijepa.ema=[0.99,1.0]' ijepa.regularizer=vicreg \
        ijepa.reg_weight=0.1 monitor.every=$ijepa_monitor
}

if [ $# -eq 0 ]; then
    set -- mae ijepa
fi
pids=()
for method in "$@"; do
    "$method" &
    pids+=($!)
    if [ ${#pids[@]} -eq 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
wait
