"""Where each method stands: RESULTS.md's two headline tables, drawn from the kept test scores alone.

    python study/standing.py eurosat   # and: aid

Each fine-tuned cell is one run, chosen without looking at test: among every kept run of that init at that label
budget (``study/finetune-<dataset>*-test.json``, what ``label_report.py --test`` scored once), on the first label
draw (the other draws are their own analysis), at the init's rate chosen on val (the files ``finetune.sh`` reads;
runs at a superseded rate, e.g. the first AID runs at EuroSAT's, drop out), the one with the best val accuracy. Its
length is in brackets, with "MixUp / CutMix" or "FixMatch" where that is the recipe variant chosen on val
(``finetune-recipe*-<percent>.json``). Supervised from scratch at equal *total* compute (``finetune.sh equal``) is
its own row, one run per total it matches (whose, with which fine-tune), with its recipe variant where not plain,
on the first label draw as the cells are.
The frozen row is the best shipped encoder on test per protocol (a summary of reported numbers, not a choice),
beside the Hellinger colour histogram and the issue's goals.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

STUDY = Path(__file__).resolve().parent
BATCH = 64  # training.finetune's batch: epochs = steps * BATCH / labelled images
PERCENTS = (1.0, 10.0, 100.0)
GOALS = {"eurosat": ("85", "93", "98.5"), "aid": ("45", "75", "90")}  # issue 22, test accuracy %
TITLES = {"eurosat": "EuroSAT", "aid": "AID"}
# each dataset's fine-tuned rows, in order: init -> row name
INITS = {
    "eurosat": {"mae": "`mae` fine-tuned", "ijepa": "tuned I-JEPA (`ijepa`) fine-tuned",
                "ijepa-paper": "the paper's I-JEPA fine-tuned",
                "random": "supervised from scratch, the same recipe (its best run on val)"},
    "aid": {"mae-aid": "`mae-aid` fine-tuned", "ijepa-aid": "tuned I-JEPA (`ijepa-aid`) fine-tuned",
            "ijepa-paper": "the paper's I-JEPA fine-tuned (half the others' pretraining: 150 core-min)",
            "random": "supervised from scratch, the same recipe (its best run on val)"},
}
RATE_FILES = {"eurosat": ("finetune-sweep.json", "finetune-sweep-paper.json"),
              "aid": ("finetune-sweep-aid.json", "finetune-sweep-aid-scratch.json")}
NOT_SWEPT = {("aid", "ijepa-paper"): 0.008}  # finetune.sh paper on AID: the AID inits' rate, not re-derived
EQUAL_TO = {"": "MAE's total with a 750-step fine-tune", "-ft6000": "MAE's total with a 6,000-step fine-tune",
            "-paper": "the paper's I-JEPA's total", "-ijepa": "the tuned I-JEPA's total",
            "-mae": "MAE's total"}  # finetune-<dataset>-equal<suffix>-test.json: whose total
# finetune.sh's recipe variants (several joined by +): ema, FixMatch labels with a moving average; pseudomix, its strong
# views mixed in pairs; semivit, at Semi-ViT's weight and threshold, with its pseudo-MixUp; semivit_weight / _threshold:
# one of them; mu5: FixMatch with 5 unlabelled images a labelled one, not 2
VARIANTS = {"mix": "MixUp / CutMix", "fixmatch": "FixMatch", "lpft": "LP-FT", "ema": "EMA teacher",
            "pseudomix": "pseudo-MixUp", "semivit": "FixMatch as Semi-ViT", "semivit_weight": "Semi-ViT's loss weight",
            "semivit_threshold": "Semi-ViT's threshold", "mu5": "5 unlabelled a labelled"}
BASELINES = {"random-init", "raw-pixels", "colour-histogram", "colour-histogram-hellinger"}
KEPT = re.compile(r"finetune-(?P<dataset>eurosat|aid)(?P<set>.*)-test\.json$")


def chosen_rates(dataset: str) -> dict[str, float]:
    """init -> its fine-tuning rate chosen on val for this dataset."""
    rates = {init: rate for (d, init), rate in NOT_SWEPT.items() if d == dataset}
    for name in RATE_FILES[dataset]:
        rates.update({init: float(lr) for init, lr in json.loads((STUDY / name).read_text())["chosen_lr"].items()})
    return rates


def kept_runs(dataset: str) -> list[dict]:
    """Every run scored on test for this dataset, each with the set it was kept in (the JSON's suffix)."""
    runs = []
    for path in sorted(STUDY.glob(f"finetune-{dataset}*-test.json")):
        match = KEPT.match(path.name)
        if match and match["dataset"] == dataset:
            runs += [{**row, "name": name, "set": match["set"]} for name, row in json.loads(path.read_text()).items()]
    return runs


def variant(dataset: str, run: dict) -> str:
    """", MixUp / CutMix", ", FixMatch", ", LP-FT", ", EMA teacher", ", FixMatch as Semi-ViT" and / or ", at 192 px" where
    the run is a recipe run whose variant chosen on val is one, else ""."""
    if not run["set"].startswith("-recipe"):
        return ""
    choice = STUDY / f"finetune-recipe{'-aid' if dataset == 'aid' else ''}-{run['percent']:g}.json"
    chosen = json.loads(choice.read_text())["chosen"].get(run["init"], "") if choice.is_file() else ""
    if not chosen:
        return ""
    _, mix, *resolution = chosen.split("-")  # "p<passes>-<plain|mix|fixmatch|lpft|ema, or several joined by +>[-r<pixels>]"
    return variant_names(mix) + (f", at {resolution[0].removeprefix('r')} px" if resolution else "")


def variant_names(mix: str) -> str:
    """"lpft+fixmatch" -> ", LP-FT + FixMatch" (VARIANTS' names joined by +); "plain" or "" -> ""."""
    mixing = " + ".join(VARIANTS[part] for part in mix.split("+") if part in VARIANTS)
    return f", {mixing}" if mixing else ""


def equal_mix(run: dict) -> str:
    """An equal-total run's variant from its name (``finetune.sh equal``:
    <dataset>-random-<percent>[-<variant>][-seed<draw>]), e.g. "mix"; "" where plain."""
    after = run["name"].split(f"-random-{run['percent']:g}", 1)[1]
    return re.sub(r"-seed\d+$", "", after).lstrip("-")


def equal_variant(run: dict) -> str:
    """", MixUp / CutMix" for an equal-total run with that variant (``equal_mix``), "" for a plain one."""
    return variant_names(equal_mix(run))


def equal_total(run: dict) -> str:
    """Whose total an equal-total run matches, from the set it was kept in: ``-equal<total>[-<variant>]`` (the
    variant is in the run's name too, so a set may name it or not: -equal-ft6000, -equal-mae-mix)."""
    mix = equal_mix(run)
    total = run["set"].removeprefix("-equal")
    return EQUAL_TO[total.removesuffix(f"-{mix}") if mix else total]


def length(run: dict) -> str:
    if run["percent"] == 100.0:
        return f"{round(run['steps'] * BATCH / run['labelled'])} epochs"
    return f"{run['steps']:,} steps"


def best_on_val(dataset: str) -> dict[tuple[str, float], dict]:
    """(init, percent) -> the run each fine-tuned cell reports (the module's docstring says how it is chosen)."""
    rates = chosen_rates(dataset)
    cells: dict[tuple[str, float], dict] = {}
    for run in kept_runs(dataset):
        if (run["set"].startswith("-equal") or "-seed" in run["name"] or (run.get("label_seed") or 0) != 0
                or abs(run["lr"] - rates[run["init"]]) > 1e-12):
            continue
        key = (run["init"], run["percent"])
        if key not in cells or run["val_accuracy"] > cells[key]["val_accuracy"]:
            cells[key] = run
    return cells


def table(dataset: str) -> str:
    """The Markdown table RESULTS.md shows under "Where each method stands"."""
    runs = kept_runs(dataset)
    cells = best_on_val(dataset)
    labelled = {percent: next(r["labelled"] for r in runs if r["percent"] == percent) for percent in PERCENTS}
    classes = round(labelled[100.0] / next(r["per_class"] for r in runs if r["percent"] == 100.0))
    header = [f"{p:g} % ({labelled[p] // classes:,} per class)" for p in PERCENTS]
    lines = [f"| {TITLES[dataset]} test, accuracy % | " + " | ".join(header) + " |", "|---" * 4 + "|"]
    best = {p: max(run["test_accuracy"] for (init, q), run in cells.items() if q == p and init != "random")
            for p in PERCENTS}
    for init, row in INITS[dataset].items():
        line = []
        for p in PERCENTS:
            run = cells.get((init, p))
            if run is None:
                line.append("not run")
                continue
            score = f"{100 * run['test_accuracy']:.1f}"
            line.append(f"{f'**{score}**' if run['test_accuracy'] == best[p] else score} "
                        f"({length(run)}{variant(dataset, run)})")
        lines.append(f"| {row} | " + " | ".join(line) + " |")
    equal = []
    for p in PERCENTS:
        found = sorted((r for r in runs if r["set"].startswith("-equal") and r["percent"] == p
                        and not r.get("label_seed")),  # the other draws are their own analysis
                       key=lambda r: (r["steps"], equal_mix(r)))  # by length, a plain run before its variants
        equal.append("; ".join(f"{100 * r['test_accuracy']:.1f} ({r['steps']:,} steps{equal_variant(r)}: "
                               f"{equal_total(r)})" for r in found) or "not run")
    row = "supervised from scratch, equal *total* compute (pretraining + a 10 % fine-tune, `study/equal_compute.py`)"
    lines.append(f"| {row} | " + " | ".join(equal) + " |")
    frozen, hellinger = frozen_rows(dataset)
    lines.append("| best frozen encoder, linear / kNN20 | " + " | ".join(frozen) + " |")
    lines.append("| colour histogram (Hellinger), linear / kNN20 | " + " | ".join(hellinger) + " |")
    lines.append("| the issue's goal | " + " | ".join(GOALS[dataset]) + " |")
    return "\n".join(lines)


def frozen_rows(dataset: str) -> tuple[list[str], list[str]]:
    """Per budget: the best frozen encoder's linear probe / kNN20 (named), and the Hellinger colour histogram's."""
    rows: dict[str, dict] = {}
    for path in sorted(STUDY.glob(f"label-efficiency-{dataset}*.json")):
        rows.update(json.loads(path.read_text())["label_efficiency"])
    encoders = {name: budgets for name, budgets in rows.items() if name not in BASELINES}
    frozen, hellinger = [], []
    for p in PERCENTS:
        budget = f"{p:g}%"
        linear = max(encoders, key=lambda name: encoders[name][budget]["linear"])
        knn = max(encoders, key=lambda name: encoders[name][budget]["kNN20"])
        scores = (100 * encoders[linear][budget]["linear"], 100 * encoders[knn][budget]["kNN20"])
        frozen.append(f"{scores[0]:.1f} / {scores[1]:.1f} (`{knn}`)" if linear == knn
                      else f"{scores[0]:.1f} (`{linear}`) / {scores[1]:.1f} (`{knn}`)")
        own = rows["colour-histogram-hellinger"][budget]
        hellinger.append(f"{100 * own['linear']:.1f} / {100 * own['kNN20']:.1f}")
    return frozen, hellinger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(TITLES))
    print(table(parser.parse_args().dataset))


if __name__ == "__main__":
    main()
