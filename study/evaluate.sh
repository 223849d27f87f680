#!/usr/bin/env bash
# After study/pretrain.sh: the embedding variants of each final run, chosen on val, then the test report (once).
#   bash study/evaluate.sh select [eurosat|aid]  # exports the variants, prints the val tables (test never read)
#   BUDGET=150 bash study/evaluate.sh select mixed  # the mixed-corpus runs on both datasets' val
#   bash study/evaluate.sh ship        # copies the chosen exports to assets/models (ijepa = the tuned I-JEPA)
#   bash study/evaluate.sh report [aid]  # the chosen models + floors on EuroSAT and AID test, and both directions of
#                                      # transfer (a shipped model's linear head is only written on its own training
#                                      # data)
# BUDGET=150 does the same for the 150-core-minute runs (<run>-150[-aid]); `ship` and `report` then also take `aid`
# or `eurosat` (one dataset's models). BUDGET=300: AID's runs at twice that (<run>-300-aid). Shipped now: EuroSAT's
# models from the 150 runs (`BUDGET=150 ... ship eurosat`), AID's from the 300 runs (`BUDGET=300 ... ship`).
set -euo pipefail
eurosat=${EUROSAT:-../shared/data/eurosat-rgb}
aid=${AID:-../shared/data/aid}
runs=${RUNS:-runs/final}
budget=${BUDGET:-first}  # as in study/pretrain.sh: the first final runs, or those at 150 (or on AID 300) core-minutes
beside=()  # shipped models that select_runs evaluates beside the runs (none but for the mixed corpus)

select_runs() {  # [--baselines] archive json run...: each run as pretrain.sh exported it, and PCA-whitened on its
    # training split, on val (with --baselines the floors too; the models named in the array `beside` next to them)
    local floors=(--no-baselines) models=() best
    [ "$1" = --baselines ] && { floors=(); shift; }
    local archive=$1 json=$2
    shift 2
    for name in "$@"; do
        if [ ! -d "exported/$name" ]; then  # study/pretrain.sh exports a run when it has finished
            echo "no exported/$name (train $runs/$name to the end with study/pretrain.sh): left out" >&2
            continue
        fi
        best=(); [[ $name == ijepa-vicreg* ]] && best=(--best)
        [ -d "exported/$name-whiten" ] || python -m training export "$runs/$name" "${best[@]}" --whiten \
            --out "exported/$name-whiten"
        models+=("exported/$name" "exported/$name-whiten")
    done
    [ ${#models[@]} -gt 0 ] || return 0
    python -m indexing evaluate --queries val --archive "$archive" "${floors[@]}" --json "$json" \
        --model "${models[@]}" "${beside[@]}"
}

case ${1:?select, ship or report} in
    select)
        only=${2:-}
        if [ "$budget" = 300 ]; then  # AID at twice the budget (trained on a GPU): the same three runs
            select_runs "$aid" study/select-aid-300-val.json ijepa-300-aid ijepa-vicreg-300-aid mae-300-aid
            exit 0
        fi
        if [ "$budget" = 150 ] && [ "$only" = mixed ]; then
            # each mixed-corpus run (study/pretrain.sh mixed: EuroSAT + AID train at 128 px), plain and whitened, on
            # both datasets' val beside its method's shipped single-dataset models: its own dataset's (the 1-point bar)
            # and the other's (the bar to beat) on each (RESULTS.md, "EuroSAT + AID as one pretraining corpus")
            for method in mae:mae ijepa-vicreg:ijepa; do
                name=${method%:*}-150-mixed shipped=${method#*:}
                [ -d "exported/$name" ] || continue
                beside=("$shipped" "$shipped-aid"); select_runs "$eurosat" "study/select-$name-val-eurosat.json" "$name"
                beside=("$shipped-aid" "$shipped"); select_runs "$aid" "study/select-$name-val-aid.json" "$name"
            done
            exit 0
        fi
        if [ "$budget" = 150 ]; then  # the paper's I-JEPA, the tuned one and MAE; the floors are in the shipped tables
            [ "$only" != aid ] && select_runs "$eurosat" study/select-eurosat-150-val.json ijepa-150 \
                ijepa-vicreg-150 mae-150
            [ "$only" != eurosat ] && select_runs "$aid" study/select-aid-150-val.json ijepa-150-aid \
                ijepa-vicreg-150-aid mae-150-aid
            exit 0
        fi
        if [ "$only" != aid ]; then
            for name in ijepa mae; do
                [ -d "exported/$name-whiten" ] || python -m training export "$runs/$name" --out "exported/$name-whiten" --whiten
                [ -d "exported/$name-last4" ] || python -m training export "$runs/$name" --out "exported/$name-last4" --last-blocks 4
            done
            python -m indexing evaluate --queries val --archive "$eurosat" --json study/select-eurosat-val.json \
                --model exported/ijepa exported/ijepa-whiten exported/ijepa-last4 exported/mae exported/mae-whiten exported/mae-last4
            # The tuned I-JEPA (VICReg 0.1; its best epoch on val, as pretrain.sh exports it): plain and whitened.
            select_runs "$eurosat" study/select-eurosat-val-ijepa-vicreg.json ijepa-vicreg
        fi
        # AID (AID val against AID train): the paper's I-JEPA, the tuned one (its best epoch on val) and MAE, each
        # plain and PCA-whitened on AID train.
        if [ "$only" != eurosat ]; then
            select_runs --baselines "$aid" study/select-aid-val.json ijepa-aid ijepa-vicreg-aid mae-aid
        fi
        ;;
    ship)
        # The exports chosen on val into the model registry (assets/models/<name>); `report` then fits their heads.
        # `ship aid` / `ship eurosat`: one dataset's models only.
        if [ "$budget" = 300 ]; then
            # AID (study/select-aid-300-val.json, mAP@10): the tuned I-JEPA plain (30.1 vs 29.6 whitened; the paper's
            # at 300 whitened 26.0), MAE whitened (38.0 vs 30.0 plain), each above its 150 run's choice (22.1, 31.3)
            pairs=(ijepa-vicreg-300-aid:ijepa-aid mae-300-aid-whiten:mae-aid)
        elif [ "$budget" = 150 ]; then
            # EuroSAT (study/select-eurosat-150-val.json, mAP@10): the tuned I-JEPA plain (77.0 vs 76.3 whitened),
            # MAE whitened (78.1 vs 77.9 plain). AID (study/select-aid-150-val.json): the paper's I-JEPA whitened
            # (22.1; the tuned one whitened 21.5, plain 21.0), MAE whitened (31.3 vs 23.3 plain).
            pairs=(ijepa-vicreg-150:ijepa mae-150-whiten:mae ijepa-150-aid-whiten:ijepa-aid mae-150-aid-whiten:mae-aid)
        else
            # AID: both methods whitened (AID val: mAP@10 18.8 for the paper's I-JEPA whitened vs 18.5 for the tuned
            # one whitened and 17.2 plain; MAE 30.5 whitened vs 24.0 plain; study/select-aid-val.json).
            pairs=(ijepa-vicreg:ijepa mae:mae ijepa-aid-whiten:ijepa-aid mae-aid-whiten:mae-aid)
        fi
        for pair in "${pairs[@]}"; do
            dataset=eurosat archive=$eurosat; [[ ${pair#*:} == *-aid ]] && dataset=aid archive=$aid
            [ -z "${2:-}" ] || [ "$2" = "$dataset" ] || continue
            mkdir -p "assets/models/${pair#*:}"
            cp "exported/${pair%%:*}/encoder.onnx" "exported/${pair%%:*}/model_card.json" "assets/models/${pair#*:}/"
            # A run trained on a GPU machine names that machine's copy of the archive (/tmp/aid): the card names the
            # archive here instead (the same files), so that `report` recognises it and writes the linear head.
            python -c 'import json, sys; path = sys.argv[1]; card = json.load(open(path))
card["training_data"] = sys.argv[2]; open(path, "w").write(json.dumps(card, indent=1))' \
                "assets/models/${pair#*:}/model_card.json" "$archive"
        done
        ;;
    report)
        # AID first, EuroSAT last: study/report.py reads the EuroSAT features cached by the last evaluation.
        # `report aid` stops after the AID models. At 150 and 300 AID's floors are those of study/results-aid.json
        # (same split).
        if [ "$budget" = 300 ]; then  # AID only: the shipped models, beside the paper's I-JEPA (plain: the paper's
            # embedding; whitened: its variant chosen on val) and MAE's plain embedding, each its own row
            python -m indexing evaluate --model ijepa-aid mae-aid exported/ijepa-300-aid exported/ijepa-300-aid-whiten \
                exported/mae-300-aid --archive "$aid" --no-baselines --json study/results-aid-300.json
            python -m indexing evaluate --model ijepa-aid mae-aid exported/ijepa-300-aid-whiten --archive "$eurosat" \
                --no-baselines --json study/results-aid-300-models-on-eurosat.json
            exit 0
        fi
        if [ "$budget" = 150 ]; then
            if [ "${2:-}" != eurosat ]; then
                # the variants chosen on val (shipped as ijepa-aid / mae-aid until the 300 runs), beside the paper's
                # embedding of both runs and the tuned I-JEPA (its variant chosen on val: whitened), each its own row
                python -m indexing evaluate --model exported/ijepa-150-aid-whiten exported/mae-150-aid-whiten \
                    exported/ijepa-150-aid exported/mae-150-aid exported/ijepa-vicreg-150-aid-whiten --archive "$aid" \
                    --no-baselines --json study/results-aid-150.json
                python -m indexing evaluate --model exported/ijepa-150-aid-whiten exported/mae-150-aid-whiten \
                    --archive "$eurosat" --no-baselines --json study/results-aid-150-models-on-eurosat.json
                # the third AID run on EuroSAT: the tuned I-JEPA, its variant chosen on AID val
                python -m indexing evaluate --model exported/ijepa-vicreg-150-aid-whiten --archive "$eurosat" \
                    --no-baselines --json study/results-aid-150-ijepa-tuned-on-eurosat.json
            fi
            [ "${2:-}" = aid ] && exit 0
            python -m indexing evaluate --model ijepa mae --archive "$aid" --no-baselines \
                --json study/results-eurosat-150-models-on-aid.json
            # the third EuroSAT run, the paper's I-JEPA: its plain export (the paper's embedding, chosen on val: 59.2
            # mAP@10 vs 57.5 whitened) and the whitened one on EuroSAT test, each its own row; the plain one on AID
            python -m indexing evaluate --model exported/ijepa-150 exported/ijepa-150-whiten --archive "$eurosat" \
                --no-baselines --json study/results-eurosat-150-ijepa-paper.json
            python -m indexing evaluate --model exported/ijepa-150 --archive "$aid" --no-baselines \
                --json study/results-eurosat-150-ijepa-paper-on-aid.json
            # the shipped models beside MAE's plain embedding (the paper's), the tuned I-JEPA whitened, the floors
            python -m indexing evaluate --model ijepa mae exported/mae-150 exported/ijepa-vicreg-150-whiten \
                --archive "$eurosat" --json study/results-eurosat-150.json
            exit 0
        fi
        # The first final runs (shipped until the 150 runs): AID's whitened exports, chosen on AID val.
        python -m indexing evaluate --model exported/ijepa-aid-whiten exported/mae-aid-whiten --archive "$aid" \
            --json study/results-aid.json
        # Beside them, their plain exports (shipped until the AID selection) and the tuned I-JEPA (plain, its best val
        # epoch), each its own row.
        python -m indexing evaluate --model exported/ijepa-aid exported/mae-aid exported/ijepa-vicreg-aid \
            --archive "$aid" --no-baselines --json study/results-aid-variants.json
        python -m indexing evaluate --model exported/ijepa-aid-whiten exported/mae-aid-whiten --archive "$eurosat" \
            --no-baselines --json study/results-aid-models-on-eurosat.json  # EuroSAT's floors: in results-eurosat.json
        [ "${2:-}" = aid ] && exit 0
        # EuroSAT's: the tuned I-JEPA (VICReg 0.1, chosen on val) and MAE, both plain; the paper's I-JEPA keeps its
        # own rows (its plain export and its whitened one, which was shipped before the tuned run existed).
        python -m indexing evaluate --model exported/ijepa-vicreg exported/mae --archive "$aid" \
            --json study/results-eurosat-models-on-aid.json
        python -m indexing evaluate --model exported/ijepa exported/ijepa-whiten --archive "$eurosat" --no-baselines \
            --json study/results-eurosat-ijepa-paper.json
        python -m indexing evaluate --model exported/ijepa-vicreg exported/mae --archive "$eurosat" \
            --json study/results-eurosat.json
        ;;
esac
