#!/usr/bin/env bash
# The label-efficiency study's fine-tuning runs (RESULTS.md, "Few labels"). Run from the repository root:
#   bash study/finetune.sh sweep              # the recipe on EuroSAT val: peak lr at 10 % of the labels, per init
#   bash study/finetune.sh choose             # -> study/finetune-sweep.json: each init's best lr on val
#   bash study/finetune.sh sweep-aid          # the same on AID val with the AID-trained inits (AID's own lr)
#   bash study/finetune.sh choose-aid         # -> study/finetune-sweep-aid.json
#   bash study/finetune.sh eurosat [F ...]    # every init at label fractions F (default 0.01 0.1 1), chosen lr
#   bash study/finetune.sh aid [F ...]        # the same on AID with the AID-trained inits, each at its rate chosen
#                                             # on AID val (scratch: its own, scratch-aid; RATES_FROM=eurosat: EuroSAT's)
#   bash study/finetune.sh paper              # the paper's I-JEPA (its pretraining run, PAPER_RUN, default
#                                             # runs/final/ijepa-150): its rate on EuroSAT val at 10 %, then 1 % and
#                                             # 100 % at it (-> study/finetune-sweep-paper.json); DATASET=aid: from
#                                             # runs/final/ijepa-150-aid at 1 %, 10 % and 100 %, AID's rate (paper_aid)
#   bash study/finetune.sh scratch-aid        # supervised from scratch: its own rate on AID val at 10 %, then 100 %, 1 %
#                                             # (-> study/finetune-sweep-aid-scratch.json)
#   RUNS=runs/finetune-seeds bash study/finetune.sh seeds [F]   # every EuroSAT init at fraction F (0.01) for
#                                             # three label draws: mean ± sd of the fine-tuned rows (DATASET=aid,
#                                             # PASSES, MIX=<variant>, INITS, SEEDS: which runs, as in the mode below)
#   RUNS=runs/finetune-equal bash study/finetune.sh equal   # scratch at 10 % for the compute of pretraining +
#                                             # fine-tuning (study/equal_compute.py), not the fine-tuning's alone;
#                                             # DATASET=aid on AID, EQUAL_TO=<init> for one init's total (default MAE's),
#                                             # FINETUNE_STEPS=6000 with the longer fine-tune in each total,
#                                             # MIX=<variant> (e.g. mix) for a recipe variant, SEED=<draw> for another
#                                             # label draw (default the first, 0)
#   RUNS=runs/self TEACHERS=runs/finetune bash study/finetune.sh self [F]   # self-training: each init's F run
#                                             # (default 0.01) in TEACHERS teaches a student on the unlabelled rest of
#                                             # train, <dataset>-<init>-self-<percent> (DATASET=aid for AID)
#   RUNS=runs/finetune-recipe bash study/finetune.sh recipe [F]   # EuroSAT val at fraction F (0.1): each init
#                                             # (INITS, default mae ijepa random:ijepa) at its chosen rate for PASSES (30 120)
#                                             # passes, plain and with MixUp 0.8 / CutMix 1.0 (the MAE recipe's);
#                                             # MIXES picks among plain, mix, fixmatch (FixMatch on the unlabelled
#                                             # rest of train, training/fixmatch.py: ~4x a plain step's time) and
#                                             # lpft (the head starts as the frozen init's linear probe, LP-FT),
#                                             # or several joined by + (lpft+fixmatch: both; +ema: FixMatch labels
#                                             # with a moving average of the weights, Semi-ViT's EMA-Teacher;
#                                             # pseudomix: FixMatch's strong views mixed in pairs, Semi-ViT's
#                                             # pseudo-MixUp; semivit: FixMatch with Semi-ViT's weight, threshold
#                                             # and pseudo-MixUp; semivit_weight, semivit_threshold: after
#                                             # fixmatch, Semi-ViT's weight or threshold alone; mu5: 5 unlabelled
#                                             # images a labelled one, not 2);
#                                             # DATASET=aid: the same on AID (inits mae-aid ijepa-aid random:mae-aid);
#                                             # RESOLUTION=<pixels>: fine-tuned at that input size (runs named -r<pixels>)
#   RUNS=runs/finetune-recipe bash study/finetune.sh recipe-choose [F]   # -> study/finetune-recipe-<F%>.json: each
#                                             # init's best of them on val (and of the file's earlier points), linked
#                                             # as RUNS/<dataset>-<init>-<F%> where its run is in RUNS, for
#                                             # `python study/label_report.py <dataset> --test --runs RUNS`
#                                             # (DATASET=aid: study/finetune-recipe-aid-<F%>.json)
#   bash study/finetune.sh ship RUN NAME      # a run's exported classifier into assets/models/NAME (card named NAME)
# DRY_RUN=1 prints each run's command instead of running it (the modes that choose from finished runs stop there).
# Each run is `python -m training finetune`, exported to <run>/export (ONNX classifier + card), one thread each
# (two side by side on the 2-core machine; POOL=1 for one at a time); RESUME=1 continues killed runs. Inits: the shipped tuned I-JEPA and
# MAE (their timm weights), and supervised from scratch with the same architecture (random:MODEL, no layer decay:
# there is nothing pretrained to protect). The paper's I-JEPA row needs its pretraining run (RUNS/ijepa-150*).
# Lengths: 30 passes over a 1 % or 10 % subset (at least 300 steps; AID 200), FULL_EPOCHS (default 8) at 100 %;
# INITS names the pretrained inits of `eurosat` / `aid` (default both shipped ones; scratch always runs);
# the session's runs: EuroSAT FULL_EPOCHS=6, AID FULL_EPOCHS=2 (a 128 px image costs ~5x a 64 px one; 5 val
# measurements of 1,000), to fit the session; the budget allows up to 60 core-minutes a run at 100 %.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
runs=${RUNS:-runs/finetune}
eurosat=${EUROSAT:-../shared/data/eurosat-rgb}
aid=${AID:-../shared/data/aid}
mkdir -p "$runs"

run() {  # name data init fraction epochs overrides...
    local name=$1 data=$2 init=$3 fraction=$4 epochs=$5
    shift 5
    local sets=()
    for kv in "$@"; do sets+=(--set "$kv"); done
    [[ $init == random* ]] && sets+=(--set layer_decay=1.0)
    if [ -f "$runs/$name/export/model_card.json" ]; then echo "$name: done"; return 0; fi
    local command=(python -m training finetune --init "$init" --data "$data" --label-fraction "$fraction"
                   --epochs "$epochs" --out "$runs/$name" "${sets[@]}" ${RESUME:+--resume})
    if [ -n "${DRY_RUN:-}" ]; then echo "${command[*]}"; return 0; fi
    "${command[@]}" > "$runs/$name.log" 2>&1
    echo "$name: $(grep -o '"val_accuracy": [0-9.]*' "$runs/$name/metrics.jsonl" | tail -1)"
}

epochs_for() {  # fraction -> passes over the labelled subset (short subsets get min_steps = 300 steps anyway)
    case $1 in 1) echo "${FULL_EPOCHS:-8}" ;; *) echo 30 ;; esac
}

use_dataset() {  # eurosat|aid -> data; pretrained (the shipped inits trained on it); like (the init whose
    # architecture scratch copies, random:<like>); extra (AID: 5 val measurements of 1,000 scenes, >= 200 steps);
    # choice / scratch_choice (the inits' and scratch's rates chosen on val: on AID each its own sweep, sweep-aid and
    # scratch-aid). RATES_FROM=eurosat: EuroSAT's rates on AID too (the first AID runs', before AID had its own)
    dataset=$1
    case $dataset in
        eurosat) data=$eurosat; pretrained=(ijepa mae); like=ijepa; extra=()
                 choice=study/finetune-sweep.json; scratch_choice=$choice ;;
        aid) data=$aid; pretrained=(ijepa-aid mae-aid); like=mae-aid; extra=(evaluations=5 val_images=1000 min_steps=200)
             choice=study/finetune-sweep-aid.json; scratch_choice=study/finetune-sweep-aid-scratch.json ;;
        *) echo "unknown dataset $dataset: eurosat or aid" >&2; exit 2 ;;
    esac
    if [ "${RATES_FROM:-}" = eurosat ]; then choice=study/finetune-sweep.json; scratch_choice=$choice; fi
}

rate() {  # init (a name, or random:MODEL) -> its peak rate chosen on val for the dataset in use
    if [[ $1 == random* ]]; then chosen_lr random "$scratch_choice"; else chosen_lr "$1" "$choice"; fi
}

chosen_lr() {  # init [choice.json] -> its rate chosen on val: the choice file's (default EuroSAT's sweep), else
    # EuroSAT's for the same init without "-aid" (AID's sweep names the AID inits, EuroSAT's the plain ones)
    python -c "import json; c = json.load(open('${2:-study/finetune-sweep.json}'))['chosen_lr']; e = json.load(open('study/finetune-sweep.json'))['chosen_lr']; print(c.get('$1') or e['${1%-aid}'])"
}

best_rate() {  # prefix init_name init out.json -> the rate of the best final val accuracy among $runs/<prefix>-lr*
    python - "$runs" "$@" <<'PY'
import json, sys
from pathlib import Path
from study.finetune_runs import final_val
runs, prefix, name, init, out = Path(sys.argv[1]), *sys.argv[2:]
found = {metrics.parent.name.rsplit("-lr", 1)[1]: final_val(metrics.parent)
         for metrics in sorted(runs.glob(f"{prefix}-lr*/metrics.jsonl"))}
best = max(found, key=found.get)
Path(out).write_text(json.dumps({"init": init, "val_accuracy": {name: found}, "chosen_lr": {name: best}}, indent=1))
print(best)
PY
}

paper_aid() {  # DATASET=aid bash study/finetune.sh paper: the paper's I-JEPA pretrained on AID (PAPER_RUN, default
    # runs/final/ijepa-150-aid) fine-tuned as the AID inits were, at their rate chosen on AID val (PAPER_LR, 8e-3:
    # the peak for both; not re-derived for this init): 1 % (200 steps) and 10 % for each of PASSES (120 30: the long
    # run queued second, so that `queue`, which waits for the oldest, runs the short ones beside it); the 10 % row
    # is the best of them on val, linked as aid-ijepa-paper-10; 100 % for FULL_EPOCHS (12, as the AID inits)
    local paper=${PAPER_RUN:-runs/final/ijepa-150-aid} lr=${PAPER_LR:-0.008}
    use_dataset aid
    queue run aid-ijepa-paper-1 "$data" "$paper" 0.01 30 lr="$lr" "${extra[@]}"
    for passes in ${PASSES:-120 30}; do
        queue run "aid-ijepa-paper-10-p$passes" "$data" "$paper" 0.1 "$passes" lr="$lr" "${extra[@]}"
    done
    queue run aid-ijepa-paper-100 "$data" "$paper" 1 "${FULL_EPOCHS:-12}" lr="$lr" "${extra[@]}"
    wait; pool=()
    python - "$runs" <<'PY'
import sys
from pathlib import Path
from study.finetune_runs import exported, final_val
runs = Path(sys.argv[1])
val = {run.name: final_val(run) for run in runs.glob("aid-ijepa-paper-10-p*") if exported(run)}
best = max(val, key=val.get)
link = runs / "aid-ijepa-paper-10"
link.unlink(missing_ok=True)
link.symlink_to(best)
print(f"aid-ijepa-paper-10 -> {best} (val {val})")
PY
}

mix_sets() {  # a recipe variant (plain, mix, fixmatch, lpft, ema, or several joined by +: lpft+fixmatch) -> its settings,
    # added to sets
    local part
    for part in ${1//+/ }; do
        case $part in
            plain) ;;
            mix) sets+=(mixup=0.8 cutmix=1.0) ;;  # the MAE recipe's MixUp / CutMix
            fixmatch) sets+=(fixmatch=1.0) ;;  # FixMatch at weight 1, threshold 0.95 of the smoothed cap, 2 unlabelled a labelled
            lpft) sets+=(probe_head=true) ;;  # LP-FT: the head starts as the frozen init's probe
            ema) sets+=(fixmatch_ema=0.99) ;;  # with fixmatch: its pseudo-labels from a moving average of the weights
            pseudomix) sets+=(fixmatch_mix=true) ;;  # with fixmatch: its strong views mixed in pairs (Semi-ViT's)
            semivit) sets+=(fixmatch=5.0 fixmatch_threshold=0.6 fixmatch_mix=true) ;;  # instead of fixmatch: Semi-ViT's
                # settings at 1 % of ImageNet (weight 5, threshold 0.6, its pseudo-MixUp); with +ema its EMA-Teacher
            semivit_weight) sets+=(fixmatch=5.0) ;;  # after fixmatch: Semi-ViT's loss weight alone
            semivit_threshold) sets+=(fixmatch_threshold=0.6) ;;  # with fixmatch: Semi-ViT's threshold alone
            mu5) sets+=(unlabelled_ratio=5) ;;  # with fixmatch: 5 unlabelled images a labelled one (Semi-ViT's; FixMatch:
                # 7; default 2), a step ~2x the time
            *) echo "unknown variant $part in '$1': plain, mix, fixmatch, lpft, ema, pseudomix, semivit," \
                    "semivit_weight, semivit_threshold, mu5 or several joined by +" >&2
               exit 2 ;;
        esac
    done
}

pool=()
queue() {  # run in the background, at most POOL (default 2) at a time
    "$@" &
    pool+=($!)
    if [ ${#pool[@]} -ge "${POOL:-2}" ]; then wait "${pool[0]}"; pool=("${pool[@]:1}"); fi
}

case ${1:?sweep, choose, eurosat, aid, paper, scratch-aid, seeds, equal, self, recipe, recipe-choose or ship} in
    sweep)
        for lr in 0.0005 0.001 0.002; do
            queue run "sweep-ijepa-10-lr$lr" "$eurosat" ijepa 0.1 30 lr=$lr
            queue run "sweep-random-10-lr$lr" "$eurosat" random:ijepa 0.1 30 lr=$lr
        done
        for lr in 0.0005 0.001 0.002; do queue run "sweep-mae-10-lr$lr" "$eurosat" mae 0.1 30 lr=$lr; done
        # the best rates were at the grid's top: one step further for every init
        for init in ijepa random:ijepa mae; do queue run "sweep-${init%:*}-10-lr0.004" "$eurosat" "$init" 0.1 30 lr=0.004; done ;;
    sweep-aid)  # AID's 10 % runs at EuroSAT's choice (aid-*-10) are the grid's 4e-3 points; 1e-3 was worse for
        # both inits, so the grid went up, not down (RATES: more points, e.g. RATES=0.016 one step further)
        use_dataset aid
        for lr in ${RATES:-0.001 0.008}; do
            for init in mae-aid ijepa-aid; do queue run "sweep-aid-$init-10-lr$lr" "$data" "$init" 0.1 30 lr=$lr "${extra[@]}"; done
        done ;;
    choose|choose-aid)  # the final val accuracy of each sweep run; the best lr per init
        python - "$runs" "$1" <<'PY'
import json, re, sys
from pathlib import Path
from study.finetune_runs import final_val
runs, mode = Path(sys.argv[1]), sys.argv[2]
out = Path("study/finetune-sweep.json" if mode == "choose" else "study/finetune-sweep-aid.json")
# the points measured in earlier sessions (their runs may be gone), the runs here measure theirs again
found = json.loads(out.read_text())["val_accuracy"] if out.is_file() else {}
if mode == "choose":
    for metrics in sorted(runs.glob("sweep-*/metrics.jsonl")):
        if metrics.parent.name.startswith(("sweep-aid-", "sweep-ijepa-paper-")):  # their own choices
            continue
        init, lr = re.match(r"sweep-(.+)-10-lr(.+)", metrics.parent.name).groups()
        found.setdefault(init, {})[lr] = final_val(metrics.parent)
else:  # AID: its sweep runs plus the 10 % runs made at EuroSAT's choice
    eurosat_lr = json.loads(Path("study/finetune-sweep.json").read_text())["chosen_lr"]
    for metrics in sorted(runs.glob("sweep-aid-*/metrics.jsonl")):
        init, lr = re.match(r"sweep-aid-(.+)-10-lr(.+)", metrics.parent.name).groups()
        found.setdefault(init, {})[lr] = final_val(metrics.parent)
    for init in list(found):
        earlier = runs / f"aid-{init}-10"
        if (earlier / "metrics.jsonl").exists():
            found[init][eurosat_lr[init.removesuffix("-aid")]] = final_val(earlier)
chosen = {init: max(lrs, key=lrs.get) for init, lrs in found.items()}
out.write_text(json.dumps({"val_accuracy": found, "chosen_lr": chosen}, indent=1))
print(json.dumps({"val_accuracy": found, "chosen_lr": chosen}, indent=1))
PY
        ;;
    eurosat|aid)
        use_dataset "$1"; shift
        [ $# -gt 0 ] || set -- 0.01 0.1 1
        for fraction in "$@"; do
            pct=$(python -c "print(f'{100 * $fraction:g}')")
            for init in ${INITS:-${pretrained[*]}} "random:$like"; do
                queue run "$dataset-${init%:*}-$pct" "$data" "$init" "$fraction" "$(epochs_for "$fraction")" \
                    lr="$(rate "$init")" "${extra[@]}"
            done
        done ;;
    paper)  # the paper's I-JEPA, fine-tuned as the other inits: rates one step either side of the tuned I-JEPA's
        # choice (4e-3) on EuroSAT val at 10 %; the 10 % row is the sweep's run at the best rate (a link)
        if [ "${DATASET:-eurosat}" = aid ]; then paper_aid; exit 0; fi
        paper=${PAPER_RUN:-runs/final/ijepa-150}
        for lr in 0.002 0.004 0.008; do queue run "sweep-ijepa-paper-10-lr$lr" "$eurosat" "$paper" 0.1 30 lr=$lr; done
        wait; pool=()
        best=$(best_rate sweep-ijepa-paper-10 ijepa-paper "$paper" study/finetune-sweep-paper.json)
        echo "the paper's I-JEPA: lr $best per 256 images (study/finetune-sweep-paper.json)"
        ln -sfn "sweep-ijepa-paper-10-lr$best" "$runs/eurosat-ijepa-paper-10"
        queue run eurosat-ijepa-paper-1 "$eurosat" "$paper" 0.01 30 lr="$best"
        queue run eurosat-ijepa-paper-100 "$eurosat" "$paper" 1 "$(epochs_for 1)" lr="$best" ;;
    scratch-aid)  # supervised from scratch on AID at its own rate, as the AID inits got theirs: EuroSAT's choice
        # (2e-3) and two steps up on AID val at 10 %, then 100 % at FULL_EPOCHS (the inits' 12) and 1 % at the best
        use_dataset aid
        for lr in 0.002 0.004 0.008; do
            queue run "sweep-aid-random-10-lr$lr" "$data" "random:$like" 0.1 30 lr=$lr "${extra[@]}"
        done
        wait; pool=()
        best=$(best_rate sweep-aid-random-10 random "random:$like" "$scratch_choice")
        echo "scratch on AID: lr $best per 256 images ($scratch_choice)"
        ln -sfn "sweep-aid-random-10-lr$best" "$runs/aid-random-10"
        queue run aid-random-100 "$data" "random:$like" 1 "$(epochs_for 1)" lr="$best" "${extra[@]}"
        queue run aid-random-1 "$data" "random:$like" 0.01 30 lr="$best" "${extra[@]}" ;;
    seeds)  # each init (INITS, default the dataset's inits and scratch) at fraction F (default 0.01) for label
        # draws SEEDS (default 0 1 2), each run's training seeded by its draw: the fine-tuned rows' spread (mean ±
        # sd), as the frozen rows have. DATASET=aid on AID; PASSES=<n> for n passes instead of the 30-pass length
        # (runs named -p<n>); MIX=<variant>, a recipe variant as MIXES names them (runs named -<variant>; lpft: the
        # head started as the frozen init's probe)
        fraction=${2:-0.01}; pct=$(python -c "print(f'{100 * $fraction:g}')"); use_dataset "${DATASET:-eurosat}"
        for seed in ${SEEDS:-0 1 2}; do
            for init in ${INITS:-${pretrained[*]} random:$like}; do
                sets=(lr="$(rate "$init")" "${extra[@]}" label_seed="$seed" seed="$seed")
                mix_sets "${MIX:-plain}"
                queue run "$dataset-${init%:*}-$pct${PASSES:+-p$PASSES}${MIX:+-$MIX}-seed$seed" "$data" "$init" \
                    "$fraction" "${PASSES:-$(epochs_for "$fraction")}" "${sets[@]}"
            done
        done ;;
    equal)  # supervised from scratch at 10 % of EuroSAT's labels for as many FLOPs as pretraining + fine-tuning
        # spent (study/equal_compute.py: MAE's total, the largest), at scratch's rate chosen on val; DATASET=aid:
        # AID at its own scratch rate; EQUAL_TO=<init> matches that init's total instead (e.g. ijepa-paper);
        # FINETUNE_STEPS=<n>: the totals with an n-step fine-tune instead of the short one (EuroSAT's 6,000-step cells);
        # MIX=<variant>: a recipe variant as MIXES names them (run named -<variant>; scratch's choice at 6,000 steps: mix);
        # SEED=<draw>: another label draw, the run's training seeded by it too (run named -seed<draw>, as seeds names them)
        use_dataset "${DATASET:-eurosat}"
        steps=$(python study/equal_compute.py "$dataset" ${EQUAL_TO:+--as "$EQUAL_TO"} \
            ${FINETUNE_STEPS:+--finetune-steps "$FINETUNE_STEPS"} | sed -n 's/.*--max-steps \([0-9]*\).*/\1/p')
        sets=(min_steps="$steps" lr="$(rate random)" ${SEED:+label_seed="$SEED" seed="$SEED"})
        mix_sets "${MIX:-plain}"
        [ "$dataset" = aid ] && sets+=(evaluations=10 val_images=1000)  # a long run: val every tenth
        run "$dataset-random-10${MIX:+-$MIX}${SEED:+-seed$SEED}" "$data" "random:$like" 0.1 0 "${sets[@]}" ;;
    self)  # self-training (training/teacher.py): each init's run at fraction F on DATASET (eurosat) is the teacher
        # of a student from the same init, trained for SELF_EPOCHS (6) passes over the whole train split — its
        # labelled subset with labels, the rest with the teacher's probabilities at temperature T (1);
        # scratch's student learns from scratch's teacher: self-training without pretraining
        fraction=${2:-0.01}; pct=$(python -c "print(f'{100 * $fraction:g}')"); use_dataset "${DATASET:-eurosat}"
        suffix=self${T:+-t$T}${SELF_EPOCHS:+-e$SELF_EPOCHS}
        for init in ${INITS:-${pretrained[*]} random:$like}; do
            name=${init%:*}
            teacher=${TEACHERS:-$runs}/$dataset-$name-$pct
            [ -f "$teacher/export/model_card.json" ] || { echo "$teacher: no exported teacher (run the $dataset mode first)" >&2; exit 2; }
            queue run "$dataset-$name-$suffix-$pct" "$data" "$init" "$fraction" "${SELF_EPOCHS:-6}" \
                lr="$(rate "$init")" teacher="$teacher" teacher_temperature="${T:-1.0}" "${extra[@]}"
        done ;;
    recipe)  # longer runs and MixUp / CutMix at a small label fraction, on val (the plain 30-pass point is the
        # sweep's run at the chosen rate; it is rerun here so that every point of the table sits in RUNS);
        # DATASET=aid: the AID inits at AID's rates (scratch at its own, study/finetune-sweep-aid-scratch.json)
        fraction=${2:-0.1}; pct=$(python -c "print(f'{100 * $fraction:g}')"); use_dataset "${DATASET:-eurosat}"
        for passes in ${PASSES:-30 120}; do
            for init in ${INITS:-${pretrained[*]} random:$like}; do
                name=${init%:*}
                for mix in ${MIXES:-plain mix}; do
                    sets=(lr="$(rate "$init")" "${extra[@]}")
                    mix_sets "$mix"
                    [ -n "${RESOLUTION:-}" ] && sets+=(resolution="$RESOLUTION")  # pixels; the init's when unset
                    queue run "recipe-$name-$pct-p$passes-$mix${RESOLUTION:+-r$RESOLUTION}" "$data" "$init" \
                        "$fraction" "$passes" "${sets[@]}"
                done
            done
        done ;;
    recipe-choose)  # merges with the choice file's earlier points (their runs may be gone, as choose does); links
        # each init's best where its run is in RUNS
        fraction=${2:-0.1}; pct=$(python -c "print(f'{100 * $fraction:g}')")
        python - "$runs" "$pct" "${DATASET:-eurosat}" <<'PY'
import json, re, sys
from pathlib import Path
from study.finetune_runs import exported, final_val
runs, pct, dataset = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
out = Path(f"study/finetune-recipe-{pct}.json" if dataset == "eurosat" else f"study/finetune-recipe-{dataset}-{pct}.json")
found = json.loads(out.read_text())["val_accuracy"] if out.is_file() else {}
for run in sorted(runs.glob(f"recipe-*-{pct}-p*")):
    if run.is_dir() and exported(run):  # an unfinished run is not a candidate
        init, variant = re.match(rf"recipe-(.+)-{re.escape(pct)}-(p\d+-[\w+]+(?:-r\d+)?)$", run.name).groups()
        found.setdefault(init, {})[variant] = final_val(run)
chosen = {init: max(variants, key=variants.get) for init, variants in found.items()}
for init, variant in chosen.items():
    link, target = runs / f"{dataset}-{init}-{pct}", runs / f"recipe-{init}-{pct}-{variant}"
    link.unlink(missing_ok=True)
    if target.is_dir():
        link.symlink_to(target.name)
    else:
        print(f"{init}: its best, {target.name}, is not in {runs}: no link", file=sys.stderr)
out.write_text(json.dumps({"val_accuracy": found, "chosen": chosen}, indent=1))
print(out.read_text())
PY
        ;;
    ship)
        run_dir=${2:?name a run folder}; name=${3:?name the shipped model}
        rm -rf "assets/models/$name" && cp -r "$run_dir/export" "assets/models/$name"
        python - "assets/models/$name/model_card.json" "$name" <<'PY'
import json, sys
card = json.load(open(sys.argv[1]))
card["name"] = sys.argv[2]
json.dump(card, open(sys.argv[1], "w"), indent=1)
PY
        echo "shipped $run_dir/export as assets/models/$name" ;;
    *) echo "unknown mode $1: sweep, choose, eurosat, aid, paper, scratch-aid, seeds, equal, self, recipe, recipe-choose or ship" >&2; exit 2 ;;
esac
wait
