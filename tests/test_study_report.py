"""study/report.py reads a run's compute from its metrics: each stretch at the thread count that ran it;
study/label_report.py counts each label draw once; study/finetune.sh gives every init its rate chosen on val."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parents[1] / "study" / "report.py"


@pytest.fixture(scope="module")
def report(study_script):
    return study_script("report")


def test_a_run_resumed_with_more_threads_counts_each_stretch_at_its_own(report, tmp_path):
    # 120 s on one thread, then resumed on two for 60 s more: 120 + 2 * 60 = 240 core-seconds, not 2 * 180
    records = [
        {"step": 0, "train_seconds": 0.0, "threads": 1, "knn_accuracy": 0.5},
        {"step": 50, "loss": 1.0, "train_seconds": 120.0, "threads": 1},
        {"step": 50, "train_seconds": 120.0, "threads": 1, "knn_accuracy": 0.6},
        {"step": 100, "loss": 0.9, "train_seconds": 180.0, "threads": 2},
        {"step": 100, "train_seconds": 180.0, "threads": 2, "knn_accuracy": 0.7},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    losses, knn = report.read_metrics(path)
    assert [r["core_minutes"] for r in knn] == pytest.approx([0.0, 2.0, 4.0])
    assert [r["core_minutes"] for r in losses] == pytest.approx([2.0, 4.0])


def test_a_label_draw_fine_tuned_in_two_sets_counts_once_as_the_first_set_has_it(study_script):
    """study/label_report.py: drawing sets together (--with) keeps one run per (init, labels per class, draw), so a
    draw rerun in another precision is not a second sample of the spread."""
    label_report = study_script("label_report")
    first = {"eurosat-mae-1-seed0": {"init": "mae", "per_class": 16.2, "label_seed": 0, "test_accuracy": 0.76}}
    more = {"eurosat-mae-1": {"init": "mae", "per_class": 16.2, "test_accuracy": 0.75},  # draw 0, no seed recorded
            "eurosat-mae-10": {"init": "mae", "per_class": 162.0, "test_accuracy": 0.89},
            "eurosat-mae-1-seed1": {"init": "mae", "per_class": 16.2, "label_seed": 1, "test_accuracy": 0.78}}
    kept = label_report.one_run_per_draw(first, more)
    assert sorted(kept) == ["eurosat-mae-1-seed1", "eurosat-mae-10"]
    points = label_report.fine_tuned({**first, **kept})["mae"]
    assert [(p["per_class"], p["runs"]) for p in points] == [(16.2, 2), (162.0, 1)]


def test_the_gap_between_two_inits_is_taken_draw_by_draw_where_both_ran(study_script):
    """study/label_report.py --gap: one init's accuracy minus the other's on the same label draw, only where both
    fine-tuned that draw, and its mean and sd over the draws."""
    label_report = study_script("label_report")
    tuned = {"eurosat-mae-10": {"init": "mae", "per_class": 162.0, "test_accuracy": 0.921},  # draw 0
             "eurosat-mae-10-seed1": {"init": "mae", "per_class": 162.0, "label_seed": 1, "test_accuracy": 0.926},
             "eurosat-mae-10-seed2": {"init": "mae", "per_class": 162.0, "label_seed": 2, "test_accuracy": 0.93},
             "eurosat-ijepa-10": {"init": "ijepa", "per_class": 162.0, "label_seed": 0, "test_accuracy": 0.915},
             "eurosat-ijepa-10-seed1": {"init": "ijepa", "per_class": 162.0, "label_seed": 1, "test_accuracy": 0.919},
             "eurosat-ijepa-1": {"init": "ijepa", "per_class": 16.2, "test_accuracy": 0.78}}
    gaps = label_report.paired_gaps(tuned, "mae", "ijepa")
    assert list(gaps) == [162.0]  # 1 %: no MAE run; draw 2: no I-JEPA run
    assert gaps[162.0]["draws"] == pytest.approx({0: 0.6, 1: 0.7})
    assert gaps[162.0]["mean"] == pytest.approx(0.65)
    assert gaps[162.0]["sd"] == pytest.approx(0.0707, abs=1e-4)


def test_the_runs_scored_on_test_are_named_as_finetune_sh_names_them_and_one_a_draw(study_script, tmp_path):
    """study/label_report.py reads the seeds mode's names (-p<passes>, -<variant>, -seed<draw>) as their init and
    fraction, and refuses a folder holding two runs of one label draw before it scores anything."""
    label_report = study_script("label_report")
    names = {"aid-mae-aid-10-p120-lpft-seed1": ("mae-aid", "10", "1"), "eurosat-mae-1-seed0": ("mae", "1", "0"),
             "aid-random-10": ("random", "10", None), "eurosat-mae-self-t2-1": ("mae-self-t2", "1", None),
             "eurosat-mae-1-p600-lpft+fixmatch-seed2": ("mae", "1", "2"),
             "eurosat-mae-1-p600-lpft+fixmatch+ema-seed1": ("mae", "1", "1")}
    for name, (init, percent, seed) in names.items():
        match = label_report.RUN_NAME.match(name)
        assert (match["init"], match["percent"], match["seed"]) == (init, percent, seed)

    def finished(name: str, label_seed: int) -> None:
        (tmp_path / name / "export").mkdir(parents=True)
        card = {"labelled_images": 600, "classes": ["a"] * 30, "label_seed": label_seed}
        (tmp_path / name / "export" / "model_card.json").write_text(json.dumps(card))

    finished("aid-mae-aid-10-p120-lpft-seed1", 1)
    finished("aid-mae-aid-10-p120-lpft-seed2", 2)
    assert sorted(label_report.exported_runs("aid", tmp_path)) == ["aid-mae-aid-10-p120-lpft-seed1",
                                                                    "aid-mae-aid-10-p120-lpft-seed2"]
    finished("aid-mae-aid-10-seed1", 1)  # the plain run of draw 1 beside its LP-FT run
    with pytest.raises(SystemExit, match="aid-mae-aid-10-p120-lpft-seed1 and aid-mae-aid-10-seed1 .*same label draw"):
        label_report.exported_runs("aid", tmp_path)


def test_a_runs_final_val_is_its_last_measurement_and_an_unmeasured_run_says_so(study_script, tmp_path):
    """study/finetune_runs.py, what finetune.sh's choosing modes read: the run's end, not its best point."""
    finetune_runs = study_script("finetune_runs")
    run = tmp_path / "recipe-mae-10-p30-plain"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 20, "loss": 2.0}\n')
    with pytest.raises(ValueError, match="recipe-mae-10-p30-plain.*no val accuracy"):
        finetune_runs.final_val(run)
    (run / "metrics.jsonl").write_text('{"step": 20, "val_accuracy": 0.61}\n{"step": 40, "val_accuracy": 0.58}\n')
    assert finetune_runs.final_val(run) == 0.58
    assert not finetune_runs.exported(run)
    (run / "export").mkdir()
    (run / "export" / "model_card.json").write_text("{}")
    assert finetune_runs.exported(run)


def test_pseudo_label_quality_weights_each_step_by_its_confident_share_and_refuses_a_run_without_fixmatch(study_script, tmp_path):
    """study/pseudo_labels.py's numbers: per half of the steps, the mean confident share and the accuracy of the
    confident pseudo-labels, weighted by how many each step had (a step with none counts in the share only)."""
    finetune_runs = study_script("finetune_runs")
    run = tmp_path / "recipe-mae-1-p600-lpft+fixmatch"
    with pytest.raises(FileNotFoundError, match="lpft\\+fixmatch: not a fine-tuning run folder"):
        finetune_runs.pseudo_label_quality(run)
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 10, "loss": 2.0}\n{"step": 10, "val_accuracy": 0.5}\n')
    with pytest.raises(ValueError, match="lpft\\+fixmatch.*no pseudo-labels logged"):
        finetune_runs.pseudo_label_quality(run)
    steps = [{"step": 10, "confident": 0.2, "pseudo_accuracy": 0.5}, {"step": 20, "confident": 0.6, "pseudo_accuracy": 1.0},
             {"step": 30, "confident": 0.0, "pseudo_accuracy": None}, {"step": 40, "confident": 0.0, "pseudo_accuracy": None}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(step) + "\n" for step in steps))
    (first_share, first_right), (second_share, second_right) = finetune_runs.pseudo_label_quality(run, parts=2)
    assert (first_share, first_right) == pytest.approx((0.4, (0.2 * 0.5 + 0.6 * 1.0) / 0.8))
    assert second_share == 0.0 and second_right is None


def queued_runs(tmp_path: Path, *args: str, **env: str) -> dict[str, str]:
    """study/finetune.sh's runs for a mode (DRY_RUN: printed, not run): run name -> its command line."""
    root = REPORT.parents[1]
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                   "DRY_RUN": "1", "RUNS": str(tmp_path), **env}
    out = subprocess.run(["bash", "study/finetune.sh", *args], cwd=root, env=environment, check=True,
                         capture_output=True, text=True).stdout
    return {line.split("--out ")[1].split()[0].rsplit("/", 1)[1]: line for line in out.splitlines()}


def test_every_finetune_mode_gives_scratch_on_aid_its_own_rate_and_the_inits_theirs(tmp_path):
    # the rates chosen on AID val: the inits' (sweep-aid) and scratch's own (scratch-aid), in every mode alike
    aid = json.loads((REPORT.parent / "finetune-sweep-aid.json").read_text())["chosen_lr"]
    scratch = json.loads((REPORT.parent / "finetune-sweep-aid-scratch.json").read_text())["chosen_lr"]["random"]
    eurosat = json.loads((REPORT.parent / "finetune-sweep.json").read_text())["chosen_lr"]
    assert scratch != eurosat["random"]  # else the test could not tell the two apart
    for runs in (queued_runs(tmp_path, "aid", "0.1"),
                 queued_runs(tmp_path, "recipe", "0.1", DATASET="aid", PASSES="30", MIXES="plain"),
                 queued_runs(tmp_path, "seeds", "0.1", DATASET="aid", SEEDS="1")):
        inits = {name: line for name, line in runs.items() if "random" not in name}
        [scratch_line] = [line for name, line in runs.items() if "random" in name]
        assert f"--set lr={scratch} " in scratch_line and "--init random:mae-aid" in scratch_line
        assert "--set layer_decay=1.0" in scratch_line  # nothing pretrained to protect
        assert len(inits) == 2
        for line in inits.values():
            init = line.split("--init ")[1].split()[0]
            assert f"--set lr={aid[init]} " in line and "--data ../shared/data/aid" in line
    # label draws: each run trained on its draw and seeded by it, LP-FT's head where asked, in its own named run
    draws = queued_runs(tmp_path, "seeds", "0.1", DATASET="aid", INITS="mae-aid", PASSES="120", MIX="lpft",
                        SEEDS="1 2")
    assert sorted(draws) == ["aid-mae-aid-10-p120-lpft-seed1", "aid-mae-aid-10-p120-lpft-seed2"]
    assert all(f"--set label_seed={s} --set seed={s} --set probe_head=true" in draws[f"aid-mae-aid-10-p120-lpft-seed{s}"]
               and "--epochs 120 " in draws[f"aid-mae-aid-10-p120-lpft-seed{s}"] for s in (1, 2))
    assert sorted(queued_runs(tmp_path, "seeds", "0.01", SEEDS="0")) == [  # EuroSAT's names, as its runs were kept
        "eurosat-ijepa-1-seed0", "eurosat-mae-1-seed0", "eurosat-random-1-seed0"]
    # recipe variants joined by +: each part's settings in one run; an unknown part stops before any run
    [both] = queued_runs(tmp_path, "recipe", "0.01", PASSES="600", MIXES="lpft+fixmatch", INITS="mae").values()
    assert "--set probe_head=true --set fixmatch=1.0" in both and "/recipe-mae-1-p600-lpft+fixmatch " in both
    [averaged] = queued_runs(tmp_path, "recipe", "0.01", PASSES="600", MIXES="lpft+fixmatch+ema", INITS="mae").values()
    assert "--set fixmatch=1.0 --set fixmatch_ema=0.99" in averaged and "/recipe-mae-1-p600-lpft+fixmatch+ema " in averaged
    # Semi-ViT's loss weight or threshold alone: FixMatch's own setting replaced, the other kept
    apart = queued_runs(tmp_path, "recipe", "0.01", PASSES="600", INITS="ijepa",
                        MIXES="fixmatch+semivit_weight fixmatch+semivit_threshold")
    weight, threshold = (apart[f"recipe-ijepa-1-p600-fixmatch+semivit_{part}"] for part in ("weight", "threshold"))
    assert weight.endswith("--set fixmatch=1.0 --set fixmatch=5.0") and "fixmatch_threshold" not in weight
    assert threshold.endswith("--set fixmatch=1.0 --set fixmatch_threshold=0.6")
    with pytest.raises(subprocess.CalledProcessError, match="exit status 2"):
        queued_runs(tmp_path, "recipe", "0.01", MIXES="lpft+fixmtach", INITS="mae")
    [draw] = queued_runs(tmp_path, "seeds", "0.01", PASSES="600", MIX="lpft+fixmatch", INITS="mae", SEEDS="1").values()
    assert "--set seed=1 --set probe_head=true --set fixmatch=1.0" in draw and "-p600-lpft+fixmatch-seed1 " in draw
    # scratch at equal total compute on another label draw: the same steps and recipe, its own draw and seed
    [(name, other)] = queued_runs(tmp_path, "equal", FINETUNE_STEPS="6000", MIX="mix", SEED="2").items()
    [first] = queued_runs(tmp_path, "equal", FINETUNE_STEPS="6000", MIX="mix").values()
    assert name == "eurosat-random-10-mix-seed2" and "--set label_seed=2 --set seed=2 " in other
    assert other.replace("-seed2", "").replace("--set label_seed=2 --set seed=2 ", "") == first
    # RATES_FROM=eurosat: the first AID runs', EuroSAT's rates for all
    first = queued_runs(tmp_path, "aid", "0.01", RATES_FROM="eurosat")
    assert f"--set lr={eurosat['random']} " in first["aid-random-1"]
    assert f"--set lr={eurosat['mae']} " in first["aid-mae-aid-1"]


@pytest.fixture
def standing(study_script):
    return study_script("standing")


def test_results_headline_tables_are_what_the_kept_test_scores_give(standing):
    """RESULTS.md's "Where each method stands": every cell as study/standing.py draws it from study/*.json."""
    results = (REPORT.parents[1] / "RESULTS.md").read_text()
    for dataset in ("eurosat", "aid"):
        assert standing.table(dataset) in results, f"python study/standing.py {dataset} differs from RESULTS.md"


def test_a_cell_is_the_run_best_on_val_at_the_rate_chosen_on_val_never_the_best_on_test(standing, tmp_path,
                                                                                        monkeypatch):
    monkeypatch.setattr(standing, "STUDY", tmp_path)
    (tmp_path / "finetune-sweep-aid.json").write_text('{"chosen_lr": {"mae-aid": "0.008"}}')
    (tmp_path / "finetune-sweep-aid-scratch.json").write_text('{"chosen_lr": {"random": "0.004"}}')

    def run(val, test, lr, steps, **more):
        return {"init": "mae-aid", "percent": 10.0, "val_accuracy": val, "test_accuracy": test, "lr": lr,
                "steps": steps, "labelled": 600, "per_class": 20.0, **more}

    (tmp_path / "finetune-aid-first-test.json").write_text(json.dumps({
        "aid-mae-aid-10": run(0.70, 0.72, 0.004, 270)}))  # best val, but at a superseded rate
    (tmp_path / "finetune-aid-long-test.json").write_text(json.dumps({
        "aid-mae-aid-10": run(0.62, 0.60, 0.008, 1080),  # the cell: best val at the chosen rate
        "aid-mae-aid-10-seed1": run(0.66, 0.65, 0.008, 1080, label_seed=1)}))  # another label draw
    (tmp_path / "finetune-aid-short-test.json").write_text(json.dumps({
        "aid-mae-aid-10": run(0.58, 0.63, 0.008, 270)}))  # better on test, worse on val
    (tmp_path / "finetune-aid-equal-ijepa-test.json").write_text(json.dumps({
        "aid-random-10": {**run(0.56, 0.55, 0.004, 6153), "init": "random"}}))  # its own row
    [(key, cell)] = standing.best_on_val("aid").items()
    assert key == ("mae-aid", 10.0) and cell["set"] == "-long" and cell["test_accuracy"] == 0.60


def test_a_recipe_cell_names_its_variant_as_chosen_on_val_parts_joined_by_plus(standing, tmp_path, monkeypatch):
    monkeypatch.setattr(standing, "STUDY", tmp_path)
    (tmp_path / "finetune-recipe-1.json").write_text(json.dumps({"chosen": {
        "mae": "p600-lpft+fixmatch", "ijepa": "p30-plain", "random": "p120-mix-r192"}}))
    cell = {"set": "-recipe-lpft-fixmatch", "percent": 1.0}
    assert standing.variant("eurosat", {**cell, "init": "mae"}) == ", LP-FT + FixMatch"
    assert standing.variant("eurosat", {**cell, "init": "ijepa"}) == ""
    assert standing.variant("eurosat", {**cell, "init": "random"}) == ", MixUp / CutMix, at 192 px"
    assert standing.variant("eurosat", {**cell, "set": "-long", "init": "mae"}) == ""  # not a recipe run
    (tmp_path / "finetune-recipe-1.json").write_text(json.dumps({"chosen": {
        "ijepa": "p600-lpft+fixmatch+ema+pseudomix+semivit_threshold"}}))
    assert standing.variant("eurosat", {**cell, "init": "ijepa"}) == (
        ", LP-FT + FixMatch + EMA teacher + pseudo-MixUp + Semi-ViT's threshold")


def test_an_equal_total_run_names_its_variant_from_its_run_name(standing):
    """finetune.sh equal names a run <dataset>-random-<percent>[-<variant>] (MIX=mix: -mix); a plain one has none."""
    assert standing.equal_variant({"percent": 10.0, "name": "eurosat-random-10-mix"}) == ", MixUp / CutMix"
    assert standing.equal_variant({"percent": 1.0, "name": "eurosat-random-1-fixmatch+ema"}) == ", FixMatch + EMA teacher"
    assert standing.equal_variant({"percent": 10.0, "name": "aid-random-10"}) == ""
    assert standing.equal_variant({"percent": 10.0, "name": "eurosat-random-10-mix-seed2"}) == ", MixUp / CutMix"
    assert standing.equal_variant({"percent": 10.0, "name": "aid-random-10-seed1"}) == ""


def test_the_equal_total_row_is_the_first_label_draw_as_the_cells_are(standing, tmp_path, monkeypatch):
    """finetune.sh equal SEED=<draw> runs another draw; the headline row keeps draw 0, the spread is its own analysis."""
    monkeypatch.setattr(standing, "STUDY", tmp_path)
    (tmp_path / "finetune-sweep.json").write_text('{"chosen_lr": {"mae": "0.004", "random": "0.002"}}')
    (tmp_path / "finetune-sweep-paper.json").write_text('{"chosen_lr": {}}')
    (tmp_path / "label-efficiency-eurosat.json").write_text(json.dumps({"label_efficiency": {
        name: {f"{p:g}%": {"linear": 0.5, "kNN20": 0.5} for p in standing.PERCENTS}
        for name in ("mae", "colour-histogram-hellinger")}}))

    def run(percent, test, steps, init="mae", lr=0.004, **more):
        labelled = {1.0: 162, 10.0: 1620, 100.0: 16200}[percent]
        return {"init": init, "percent": percent, "val_accuracy": test, "test_accuracy": test, "lr": lr,
                "steps": steps, "labelled": labelled, "per_class": labelled / 10, **more}

    (tmp_path / "finetune-eurosat-test.json").write_text(json.dumps({
        f"eurosat-mae-{p:g}": run(p, 0.9, 100) for p in standing.PERCENTS}))
    (tmp_path / "finetune-eurosat-equal-ft6000-test.json").write_text(json.dumps({
        "eurosat-random-10-mix": run(10.0, 0.915, 19295, init="random", lr=0.002, label_seed=0)}))
    (tmp_path / "finetune-eurosat-equal-ft6000-seeds-test.json").write_text(json.dumps({
        f"eurosat-random-10-mix-seed{draw}": run(10.0, 0.93, 19295, init="random", lr=0.002, label_seed=draw)
        for draw in (1, 2)}))
    [row] = [line for line in standing.table("eurosat").splitlines() if "equal *total*" in line]
    assert "91.5 (19,295 steps, MixUp / CutMix: MAE's total with a 6,000-step fine-tune)" in row and "93.0" not in row


def test_an_equal_total_run_names_whose_total_with_or_without_its_variant_in_the_set(standing):
    """The set a run was kept in (label_report's --suffix) is -equal<total>, the variant's suffix after it or not."""
    assert standing.equal_total({"percent": 10.0, "name": "aid-random-10-mix", "set": "-equal-mae-mix"}) == "MAE's total"
    assert standing.equal_total({"percent": 10.0, "name": "aid-random-10", "set": "-equal-mae"}) == "MAE's total"
    assert (standing.equal_total({"percent": 10.0, "name": "eurosat-random-10-mix", "set": "-equal-ft6000"})
            == "MAE's total with a 6,000-step fine-tune")
