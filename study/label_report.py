"""The label-efficiency report: test accuracy against labelled images per class, frozen and fine-tuned.

    python study/label_report.py eurosat   # and: aid
    python study/label_report.py eurosat --test   # score the fine-tuned classifiers on test (once) first
    python study/label_report.py aid --test --runs runs/finetune-long --suffix=-aid-lr   # another set
    python study/label_report.py eurosat --with=-paper   # the main figure with another set's rows beside
    python study/label_report.py eurosat --test --d4 --runs R --suffix=S   # also over the 8 orientations
    python study/label_report.py eurosat --suffix=S --gap mae ijepa   # MAE's lead on each label draw both ran

Reads the few-label table that ``python -m indexing evaluate --label-fractions ... --json
study/label-efficiency-<dataset>.json`` wrote (linear probe and kNN of every frozen model and baseline) and the
fine-tuning runs of ``study/finetune.sh <dataset>`` (``runs/finetune/<dataset>-<init>-<percent>/``). With
``--test`` each run's exported classifier is scored by its own head on the test split and the numbers are kept in
``study/finetune-<dataset>-test.json`` (with the run's val accuracy, labelled images, steps and core-minutes), so
that the figure and the table can be redrawn from the repository alone; ``--d4`` keeps beside each the accuracy of
its probabilities averaged over the image's 8 orientations (``test_accuracy_d4``; chosen on val first by
``study/orientations.py``), which the figure and table do not draw. Writes
``study/figures/label_efficiency_<dataset>.png`` (x: labelled images per class, log scale; y: test accuracy) and
prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARCHIVES = {"eurosat": REPO.parent / "shared" / "data" / "eurosat-rgb", "aid": REPO.parent / "shared" / "data" / "aid"}
# a fine-tuning init -> the names of its frozen rows (EuroSAT, AID), for one colour per model
FROZEN_ROWS = {"ijepa-paper": ("ijepa-150", "ijepa-150-aid-whiten")}
SELF_TRAINED = re.compile(r"-self.*$")  # a student of ``finetune.sh self``: <init>-self[-t<T>][-e<epochs>]
# <dataset>-<init>-<percent>[-p<passes>][-<variant>][-seed<draw>]: the names finetune.sh gives (seeds: PASSES, MIX)
RUN_NAME = re.compile(r"(?P<dataset>eurosat|aid)-(?P<init>.+)-(?P<percent>[\d.]+)(?:-p\d+)?"
                      r"(?:-(?:plain|mix|fixmatch|lpft)(?:\+\w+)*)?(-seed(?P<seed>\d+))?$")


def core_minutes(metrics: Path) -> float:
    """Training compute of a run, as the compute curve counts it (``report.read_metrics``: each stretch of training
    seconds times the threads that ran it)."""
    from report import read_metrics  # study/report.py, beside this file

    losses, _ = read_metrics(metrics)
    return max(r["core_minutes"] for r in losses)


def exported_runs(dataset: str, runs: Path) -> dict[str, tuple[Path, re.Match, dict]]:
    """The finished runs of ``runs`` (run name -> folder, parsed name, model card), one per label draw (init, labels
    per class, draw): two runs of one draw (e.g. plain and LP-FT) would count as two samples of its spread."""
    found, seen = {}, {}
    for run in sorted(runs.glob(f"{dataset}-*")):
        match, card_path = RUN_NAME.match(run.name), run / "export" / "model_card.json"
        if match is None or not card_path.is_file():
            continue
        card = json.loads(card_path.read_text())
        draw = match["init"], card["labelled_images"], card.get("label_seed", 0)
        if draw in seen:
            raise SystemExit(f"{runs}: {seen[draw]} and {run.name} fine-tuned the same label draw; keep one of them "
                             "in this folder (link the chosen run into a folder of its own) and run again")
        seen[draw], found[run.name] = run.name, (run, match, card)
    return found


def classifier_accuracy(encoder, split, d4: bool = False, batch_size: int = 256) -> tuple[float, float | None]:
    """Top-1 accuracy (fraction) of an exported classifier (``ExportedEncoder``, its own head) on an archive split,
    and with ``d4`` (else None) its probabilities averaged over each image's 8 orientations, from the same pass."""
    import torch

    correct = averaged = 0
    for start in range(0, len(split), batch_size):
        batch = [split[i] for i in range(start, min(start + batch_size, len(split)))]
        images, labels = torch.stack([s["image"] for s in batch]), np.array([s["label"] for s in batch])
        if d4:
            views = encoder.orientation_probabilities(images)  # [8, b, K]; view 0 is the image as it is
            correct += int((views[0].argmax(1) == labels).sum())
            averaged += int((views.mean(0).argmax(1) == labels).sum())
        else:
            correct += int((encoder.logits(images).argmax(1) == labels).sum())
    return correct / len(split), (averaged / len(split) if d4 else None)


def score_runs(dataset: str, runs: Path, d4: bool = False) -> dict[str, dict]:
    """Test accuracy of every finished run's exported classifier (its own head), with its provenance; ``d4``: also
    averaged over the 8 orientations (``test_accuracy_d4``)."""
    from training.data import open_archive
    from training.encoder import ExportedEncoder

    finished = exported_runs(dataset, runs)
    test = open_archive(ARCHIVES[dataset], "test")
    scored = {}
    for name, (run, match, card) in finished.items():
        encoder = ExportedEncoder(run / "export")
        accuracy, averaged = classifier_accuracy(encoder, test, d4)
        scored[name] = {"init": match["init"], "percent": float(match["percent"]), "test_accuracy": accuracy,
                        **({"test_accuracy_d4": averaged} if d4 else {}),
                        "val_accuracy": card.get("val_accuracy"), "labelled": card["labelled_images"],
                        "per_class": card["labelled_images"] / len(card["classes"]), "steps": card["steps"],
                        "core_minutes": round(core_minutes(run / "metrics.jsonl"), 1),
                        "device": card.get("training_device"), "precision": card.get("training_precision"),
                        "lr": card["finetune"]["lr"], "label_seed": card.get("label_seed", 0),
                        **({"teacher": card["teacher"], "train_images": card["train_images"]}
                           if card.get("teacher") else {})}
        oriented = f", over the 8 orientations {100 * averaged:.1f}" if d4 else ""
        print(f"{name}: test {100 * accuracy:.1f}{oriented} (val {100 * (card.get('val_accuracy') or 0):.1f})")
    return scored


def label_draw(row: dict) -> tuple[str, float, int]:
    """A run's label draw: its init, labels per class and label seed (0 where the run recorded none)."""
    return row["init"], row["per_class"], row.get("label_seed", 0)


def mean_sd(values: list[float]) -> dict[str, float]:
    """Mean and sample sd (0 for one value), as the frozen rows' spread is given."""
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def fine_tuned(tuned: dict) -> dict[str, list[dict]]:
    """init -> one point per label budget, sorted by labels per class: the test accuracy (%) of its run, or the
    mean and sd over its runs where several label draws were fine-tuned (``finetune.sh seeds``)."""
    runs: dict[tuple[str, float], list[float]] = {}
    for row in tuned.values():
        runs.setdefault((row["init"], row["per_class"]), []).append(100 * row["test_accuracy"])
    points: dict[str, list[dict]] = {}
    for (init, per_class), accuracies in sorted(runs.items(), key=lambda kv: kv[0][1]):
        points.setdefault(init, []).append({"per_class": per_class, **mean_sd(accuracies), "runs": len(accuracies)})
    return points


def paired_gaps(tuned: dict, first: str, second: str) -> dict[float, dict]:
    """labels per class -> ``first``'s test accuracy minus ``second``'s (points) on each label draw both ran, and
    their mean and sd: the gap measured draw by draw, as the two runs of a draw saw the same labelled images."""
    by_draw = {label_draw(row): 100 * row["test_accuracy"] for row in tuned.values()}
    gaps: dict[float, dict[int, float]] = {}
    for (init, per_class, seed), accuracy in sorted(by_draw.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if init == first and (second, per_class, seed) in by_draw:
            gaps.setdefault(per_class, {})[seed] = accuracy - by_draw[second, per_class, seed]
    return {per_class: {"draws": draws, **mean_sd(list(draws.values()))} for per_class, draws in gaps.items()}


def row_name(init: str) -> str:
    """A fine-tuned row's name: ``random`` is supervised from scratch, ``<init>-self`` a self-trained student."""
    base = SELF_TRAINED.sub("", init)
    name = "supervised from scratch" if base == "random" else f"{base} fine-tuned"
    return f"{name}, self-trained on the unlabelled rest of train" if base != init else name


def one_run_per_draw(kept: dict, more: dict) -> dict:
    """The runs of ``more`` whose label draw (init, labels per class, label seed) ``kept`` has no run of: a draw
    fine-tuned twice (e.g. in bf16 and again in fp32) counts once, as the set named first has it."""
    drawn = {label_draw(row) for row in kept.values()}
    return {name: row for name, row in more.items() if label_draw(row) not in drawn}


def draw(dataset: str, frozen: dict, tuned: dict, out: Path) -> None:
    """One panel per protocol (linear probe, kNN, fine-tuned): accuracy against labelled images per class."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True)
    colours = {}
    for name in frozen:
        colours.setdefault(name, f"C{len(colours)}")
    for ax, metric, title in ((axes[0], "linear", "linear probe (frozen)"), (axes[1], "kNN20", "kNN20 (frozen)")):
        for name, budgets in frozen.items():
            rows = sorted(budgets.values(), key=lambda r: r["per_class"])
            x = [r["per_class"] for r in rows]
            y = np.array([100 * r[metric] for r in rows])
            sd = np.array([100 * r[f"{metric}_sd"] for r in rows])
            style = "--" if name in ("raw-pixels", "colour-histogram", "colour-histogram-hellinger", "random-init") else "-"
            ax.plot(x, y, style, marker="o", color=colours[name], label=name)
            ax.fill_between(x, y - sd, y + sd, color=colours[name], alpha=0.15)
        ax.set_title(title)
    for init, points in fine_tuned(tuned).items():
        base = SELF_TRAINED.sub("", init)
        fmt = ":^" if init != base else "--s" if init == "random" else "-s"
        axes[2].errorbar([p["per_class"] for p in points], [p["mean"] for p in points],
                         yerr=[p["sd"] for p in points], fmt=fmt, capsize=3,
                         color=next((colours[n] for n in FROZEN_ROWS.get(base, (base,)) if n in colours), "black"),
                         label=row_name(init))
    axes[2].set_title("fine-tuned end to end (bars: sd over label draws)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("labelled train images per class")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel(f"{dataset} test accuracy (%)")
    fig.suptitle(f"{dataset}: test accuracy against labels (frozen: mean ± sd over 3 label draws; fine-tuned: one "
                 "run, or mean ± sd over its draws)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(out)


def table(frozen: dict, tuned: dict) -> str:
    """Markdown: one row per method, one column per label budget (the fine-tuned rows where they exist)."""
    budgets = list(next(iter(frozen.values())))
    lines = ["| method | " + " | ".join(budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    for name, rows in frozen.items():
        cells = [f"{100 * rows[b]['linear']:.1f} / {100 * rows[b]['kNN20']:.1f}" for b in budgets]
        lines.append(f"| {name} (frozen: linear / kNN) | " + " | ".join(cells) + " |")
    per_class = {b: next(iter(frozen.values()))[b]["per_class"] for b in budgets}
    points = fine_tuned(tuned)
    for init in sorted(points, key=lambda i: (i.startswith("random"), i)):
        found = {p["per_class"]: p for p in points[init]}
        cells = []
        for b in budgets:
            p = found.get(per_class[b])
            cells.append("—" if p is None else f"**{p['mean']:.1f}**" if p["runs"] == 1
                         else f"**{p['mean']:.1f} ± {p['sd']:.1f}** ({p['runs']} draws)")
        lines.append(f"| {row_name(init)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(ARCHIVES))
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "finetune")
    parser.add_argument("--test", action="store_true", help="score the fine-tuned runs on test (once) first")
    parser.add_argument("--d4", action="store_true", help="with --test: also score each classifier averaged over "
                                                          "the image's 8 orientations (choose it on val first: "
                                                          "study/orientations.py)")
    parser.add_argument("--suffix", default="", help="another set of runs: study/finetune-<dataset><suffix>-test.json "
                                                      "and its own figure")
    parser.add_argument("--with", dest="beside", action="append", default=[], metavar="SUFFIX",
                        help="draw another set beside (its kept test scores, and label-efficiency-<dataset><suffix>"
                             ".json's frozen rows where one exists), e.g. --with=-paper; repeat for more (--with= is "
                             "the main set); a label draw that two sets ran counts once, as the first named has it")
    parser.add_argument("--gap", nargs=2, metavar=("INIT", "OTHER"), help="also print INIT's test accuracy minus "
                        "OTHER's on each label draw both fine-tuned, and its mean ± sd (e.g. --gap mae ijepa)")
    args = parser.parse_args()
    study = REPO / "study"
    kept = study / f"finetune-{args.dataset}{args.suffix}-test.json"
    if args.test:
        kept.write_text(json.dumps(score_runs(args.dataset, args.runs, args.d4), indent=1))
    tuned = json.loads(kept.read_text()) if kept.is_file() else {}
    frozen = json.loads((study / f"label-efficiency-{args.dataset}.json").read_text())["label_efficiency"]
    for suffix in dict.fromkeys([args.suffix, *args.beside]):
        if suffix and (more := study / f"label-efficiency-{args.dataset}{suffix}.json").is_file():
            frozen.update(json.loads(more.read_text())["label_efficiency"])
        if suffix in args.beside:
            tuned.update(one_run_per_draw(tuned, json.loads((study / f"finetune-{args.dataset}{suffix}-test.json")
                                                            .read_text())))
    draw(args.dataset, frozen, tuned, study / "figures" / f"label_efficiency_{args.dataset}{args.suffix}.png")
    print(table(frozen, tuned))
    for per_class, gap in paired_gaps(tuned, *args.gap).items() if args.gap else ():
        draws = ", ".join(f"draw {seed} {points:+.1f}" for seed, points in gap["draws"].items())
        print(f"{args.gap[0]} - {args.gap[1]} at {per_class:g} labels per class: {draws}; "
              f"mean {gap['mean']:+.1f} ± {gap['sd']:.1f}")


if __name__ == "__main__":
    main()
