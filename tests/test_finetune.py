"""Fine-tuning (`python -m training finetune`), its ONNX classifier, the timm weights, and few-label evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from indexing.label_efficiency import label_efficiency, markdown_table, parse_budgets
from indexing.testing import export_tiny_model, write_archive
from training.config import FinetuneConfig, apply_overrides
from training.encoder import ExportedEncoder
from training.subsets import stratified_subset


def test_stratified_subset_keeps_every_class_and_its_share():
    labels = np.repeat([0, 1, 2], [100, 50, 3])
    subset = stratified_subset(labels, 0.1, seed=0)
    assert np.bincount(labels[subset]).tolist() == [10, 5, 1]  # at least one of the 3-image class
    assert stratified_subset(labels, 0.1, seed=0).tolist() == subset.tolist()  # seeded
    assert stratified_subset(labels, 0.1, seed=1).tolist() != subset.tolist()
    assert np.bincount(labels[stratified_subset(labels, 5, seed=0)]).tolist() == [5, 5, 3]  # per class, capped
    assert len(stratified_subset(labels, 1.0, seed=0)) == len(labels)
    with pytest.raises(ValueError, match="fraction"):
        stratified_subset(labels, 1.5, seed=0)
    with pytest.raises(ValueError, match="--labels-per-class"):
        parse_budgets(None, [0])


def test_label_efficiency_rises_with_labels_and_reports_spread():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16)) * 1.2

    def split(n):  # overlapping classes: more labels help
        y = rng.integers(0, 5, n)
        return (centres[y] + rng.normal(size=(n, 16))).astype(np.float32), y

    features = {"train": split(1000), "val": split(300), "test": split(500)}
    rows = label_efficiency(features, 5, [1, 0.1, 1.0], seeds=3)
    assert rows["1/class"]["labelled"] == 5 and rows["10%"]["labelled"] >= 95 and rows["100%"]["seeds"] == 1
    assert rows["1/class"]["linear"] < rows["100%"]["linear"] and rows["1/class"]["kNN20"] < rows["100%"]["kNN20"]
    assert rows["1/class"]["linear_sd"] > 0 and rows["100%"]["linear_sd"] == 0
    assert 0.2 < rows["1/class"]["kNN20"] < rows["100%"]["kNN20"] <= 1
    table = markdown_table({"model": rows}, "archive", "test split")
    assert "| model |" in table and "±" in table and "1/class (5 labels" in table


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    archive = write_archive(root / "archive", per_class=16)  # train 8 per class, 3 classes
    model = export_tiny_model(root / "tiny-ijepa")
    return root, archive, model


def _config(init, **overrides):
    base = {"init": str(init), "min_steps": 6, "epochs": 0, "batch_size": 8, "evaluations": 2, "val_images": 0,
            "lr": 4e-3, "warmup_epochs": 0.0}
    return apply_overrides(FinetuneConfig(), {**base, **overrides})


def test_timm_loads_the_exported_weights_with_no_project_code(tiny):
    import timm

    from training.weights import save_timm_weights

    root, _, model = tiny
    path = save_timm_weights(model, dtype=torch.float32)
    card = json.loads((model / "model_card.json").read_text())
    vit = timm.create_model(card["timm"]["architecture"], checkpoint_path=str(path), **card["timm"]["kwargs"]).eval()
    images = torch.rand(3, 3, 64, 64)
    norm = card["normalisation"]
    x = (images - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = vit.forward_features(x)
    _, onnx_tokens = ExportedEncoder(model).run(images)
    assert np.abs(tokens.numpy() - onnx_tokens).max() < 1e-4


def test_finetune_learns_exports_a_classifier_and_evaluate_uses_its_head(tiny, tmp_path):
    from indexing.evaluate import evaluate
    from training.export import export_run
    from training.finetune import finetune

    root, archive, model = tiny
    summary = finetune(_config(model, min_steps=12), str(archive), tmp_path / "run")
    assert summary["step"] == 12
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_accuracy" in r] == [6, 12]
    card = export_run(tmp_path / "run", tmp_path / "export")
    assert card["task"] == "classification" and card["classes"] == ["Forest", "River", "SeaLake"]
    assert card["init"] == str(model) and card["label_fraction"] == 1.0 and card["parity"]["max_abs_diff"] <= 1e-4
    encoder = ExportedEncoder(tmp_path / "export")
    from training.data import open_archive

    test = open_archive(archive, "test")
    images = torch.stack([test[i]["image"] for i in range(len(test))])
    labels = np.array([test[i]["label"] for i in range(len(test))])
    accuracy = (encoder.logits(images).argmax(1) == labels).mean()
    assert accuracy > 0.5  # three colour-coded classes: a fine-tuned head separates them
    table = evaluate([str(tmp_path / "export")], archive, tmp_path / "ix", baselines=False, save_heads=False)
    averaged = (encoder.logits(images, d4=True).argmax(1) == labels).mean()
    header, row = table.splitlines()[0], table.splitlines()[2]
    assert header.endswith("| fine-tuned | fine-tuned, 8 orientations |")
    assert row.endswith(f"| {100 * accuracy:.1f} | {100 * averaged:.1f} |")


def test_averaging_over_the_8_orientations_makes_a_prediction_free_of_them(tiny, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from training.augment import dihedral_views
    from training.data import open_archive
    from training.export import export_run
    from training.finetune import finetune

    root, archive, model = tiny
    finetune(_config(model), str(archive), tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "export")
    encoder = ExportedEncoder(tmp_path / "export")
    x = torch.rand(4, 3, 32, 32)
    views = dihedral_views(x)
    assert len(views) == 8 and torch.equal(views[0], x)
    assert len({view.numpy().tobytes() for view in views}) == 8  # all 8 differ for a random image
    averaged = encoder.logits(x, d4=True)  # [4, classes]: log of the mean probability
    assert np.allclose(np.exp(averaged).sum(1), 1.0, atol=1e-5)
    plain = torch.softmax(torch.from_numpy(encoder.logits(x)), 1).numpy()
    assert np.allclose(encoder.orientation_probabilities(x)[0], plain, atol=1e-5)  # view 0: the image as it is
    embedding, _ = encoder.embed_and_logits(x, d4=True)  # the embedding an index holds: the image's as it is
    assert np.allclose(embedding, encoder.embed(x), atol=1e-5)
    for turned in (torch.rot90(x, 1, dims=(2, 3)), x.flip(2), x.transpose(2, 3)):
        assert np.allclose(encoder.logits(turned, d4=True), averaged, atol=1e-4)  # the same 8 views, reordered
    assert not np.allclose(encoder.logits(torch.rot90(x, 1, dims=(2, 3))), encoder.logits(x), atol=1e-4)

    script = Path(__file__).resolve().parents[1] / "study" / "orientations.py"
    printed = subprocess.run([sys.executable, str(script), str(tmp_path / "export")], capture_output=True, text=True,
                             check=True).stdout
    scored = json.loads(printed.splitlines()[-1])
    val = open_archive(archive, "val")
    images = torch.stack([val[i]["image"] for i in range(len(val))])
    labels = np.array([val[i]["label"] for i in range(len(val))])
    assert scored["split"] == "val" and scored["images"] == len(val)
    assert scored["accuracy"] == round(100 * (encoder.logits(images).argmax(1) == labels).mean(), 2)
    assert scored["accuracy_d4"] == round(100 * (encoder.logits(images, d4=True).argmax(1) == labels).mean(), 2)


@pytest.mark.parametrize("mixing", [{}, {"mixup": 0.8, "cutmix": 1.0},
                                    {"fixmatch": 1.0, "fixmatch_threshold": 0.0, "label_fraction": 0.5},
                                    {"fixmatch": 1.0, "fixmatch_threshold": 0.0, "label_fraction": 0.5,
                                     "fixmatch_ema": 0.5},
                                    {"probe_head": True}],
                         ids=["plain", "mixup-cutmix", "fixmatch", "fixmatch-ema", "probe-head"])
def test_finetune_resumes_exactly_where_it_stopped(tiny, tmp_path, monkeypatch, mixing):
    from safetensors.torch import load_file

    from training.checkpoint import find_checkpoint, load_weights
    from training.finetune import Finetuner, finetune

    root, archive, model = tiny
    finetune(_config(model, **mixing), str(archive), tmp_path / "straight")
    original = Finetuner.train_step

    def stop_at_four(self, images, labels):  # killed after the checkpoint at step 3
        if self.step == 4:
            raise KeyboardInterrupt
        return original(self, images, labels)

    monkeypatch.setattr(Finetuner, "train_step", stop_at_four)
    with pytest.raises(KeyboardInterrupt):
        finetune(_config(model, **mixing), str(archive), tmp_path / "resumed")
    monkeypatch.setattr(Finetuner, "train_step", original)
    assert json.loads((find_checkpoint(tmp_path / "resumed") / "state.json").read_text())["step"] == 3
    finetune(_config(model, **mixing), str(archive), tmp_path / "resumed", resume=True)
    a, b = (load_weights(find_checkpoint(tmp_path / name)) for name in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    if "fixmatch_ema" in mixing:  # the labelling average is restored too, not restarted from the resumed weights
        a, b = (load_file(find_checkpoint(tmp_path / name) / "ema.safetensors") for name in ("straight", "resumed"))
        assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["module.head.weight"], load_weights(
            find_checkpoint(tmp_path / "straight"))["head.weight"])
        logged = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
        assert all(0 <= r["ema_val_accuracy"] <= 1 for r in logged if "val_accuracy" in r)
    steps = {name: [json.loads(line)["step"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
             for name in ("straight", "resumed")}
    assert steps["resumed"] == steps["straight"] == [3, 3, 6, 6]  # nothing lost, nothing logged twice


def test_mixup_and_cutmix_train_on_mixed_soft_targets(tiny, tmp_path, monkeypatch):
    import training.finetune as ft

    root, archive, model = tiny
    seen = []
    cross_entropy = ft.F.cross_entropy

    def spy(logits, targets, **kwargs):
        seen.append((targets.detach().clone(), kwargs["label_smoothing"]))
        return cross_entropy(logits, targets, **kwargs)

    monkeypatch.setattr(ft.F, "cross_entropy", spy)
    trainer = ft.Finetuner(_config(model, mixup=0.8, cutmix=1.0, batch_size=7), str(archive), tmp_path / "run")
    assert trainer.batch_size == 6  # pairs: each image is mixed with the batch reversed
    picks = torch.arange(0, 24, 4)  # two images of each of the three classes (train is sorted by class)
    assert trainer.targets[picks].unique().numel() == 3
    trainer.train_step(trainer.images[picks], trainer.targets[picks])
    targets, smoothing = seen[-1]
    assert targets.shape == (6, 3) and smoothing == 0.0  # timm's soft targets carry the smoothing
    assert torch.allclose(targets.sum(1), torch.ones(6)) and (targets > 0.1).sum(1).max() >= 2  # two labels mixed
    with pytest.raises(ValueError, match="mixup"):  # a teacher's soft targets are not mixed
        ft.Finetuner(_config(model, mixup=0.8, teacher=str(model)), str(archive), tmp_path / "x")


def test_fixmatch_trains_strong_views_towards_the_models_own_confident_labels(tiny, tmp_path):
    from training.export import export_run
    from training.finetune import Finetuner

    root, archive, model = tiny
    few = dict(label_fraction=0.25, label_seed=1, fixmatch=1.0, unlabelled_ratio=2)  # 2 of 8 train images a class
    trainer = Finetuner(_config(model, fixmatch_threshold=0.0, **few), str(archive), tmp_path / "run")
    assert trainer.labelled == 6 and len(trainer.targets) == 6 and trainer.unlabelled.shape[0] == 18
    # a share of the most that label smoothing (0.1, 3 classes) lets the model predict: 0.95 alone would be unreachable
    assert Finetuner(_config(model, **few), str(archive), tmp_path / "default").threshold == pytest.approx(
        0.95 * (0.9 + 0.1 / 3))
    seen = []
    hook = trainer.model.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    record = trainer.train_step(trainer.images, trainer.targets)
    hook.remove()
    assert seen == [12, 6 + 12]  # the pseudo-labelling pass over 2 x 6 weak views, then labelled + strong views
    assert record["confident"] == 1.0 and record["unlabelled_loss"] > 0 and 0 <= record["pseudo_accuracy"] <= 1
    assert record["loss"] == pytest.approx(record["labelled_loss"] + record["unlabelled_loss"], rel=1e-5)

    # the unlabelled images' own labels are only logged: shuffled, the step trains exactly the same
    a = Finetuner(_config(model, **few), str(archive), tmp_path / "a")
    b = Finetuner(_config(model, **few), str(archive), tmp_path / "b")
    b.unlabelled_truth = b.unlabelled_truth[torch.randperm(18)]
    a.train_step(a.images, a.targets), b.train_step(b.images, b.targets)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))

    trainer.step = 6
    trainer.save()
    card = export_run(tmp_path / "run", tmp_path / "run" / "export")
    assert card["unlabelled_images"] == 18 and card["labelled_images"] == 6 and card["finetune"]["fixmatch"] == 1.0

    unsure = Finetuner(_config(model, fixmatch_threshold=1.2, **few), str(archive), tmp_path / "unsure")
    record = unsure.train_step(unsure.images, unsure.targets)
    assert record["confident"] == 0.0 and record["unlabelled_loss"] == 0.0 and record["pseudo_accuracy"] is None

    with pytest.raises(ValueError, match="nothing unlabelled"):  # every train label read: no rest of train
        Finetuner(_config(model, fixmatch=1.0), str(archive), tmp_path / "all")
    with pytest.raises(ValueError, match="pick one"):
        Finetuner(_config(model, teacher=str(model), **few), str(archive), tmp_path / "both")
    with pytest.raises(ValueError, match="mixup"):
        Finetuner(_config(model, mixup=0.8, **few), str(archive), tmp_path / "mixed")


def test_fixmatch_can_label_with_a_moving_average_of_the_weights(tiny, tmp_path):
    from training.finetune import Finetuner

    root, archive, model = tiny
    few = dict(label_fraction=0.25, label_seed=1, fixmatch=1.0, unlabelled_ratio=2, fixmatch_threshold=0.0)
    trainer = Finetuner(_config(model, fixmatch_ema=0.75, **few), str(archive), tmp_path / "run")
    before = trainer.ema.module.head.weight.clone()
    assert torch.equal(before, trainer.model.head.weight)  # the average starts as the init (its probe head with LP-FT)
    labelling, training = [], []
    hooks = [trainer.ema.module.register_forward_hook(lambda m, args, out: labelling.append(args[0].shape[0])),
             trainer.model.register_forward_hook(lambda m, args, out: training.append(args[0].shape[0]))]
    trainer.train_step(trainer.images, trainer.targets)
    for hook in hooks:
        hook.remove()
    assert labelling == [12] and training == [6 + 12]  # the average labels the weak views; the model trains
    after = trainer.model.head.weight
    assert not torch.equal(after, before)
    assert torch.allclose(trainer.ema.module.head.weight, 0.75 * before + 0.25 * after, atol=1e-6)
    assert not any(p.requires_grad for p in trainer.ema.module.parameters())
    for momentum, other in ((1.0, few), (0.9, dict(label_fraction=0.25))):  # a momentum of 1 never moves; no FixMatch
        with pytest.raises(ValueError, match="fixmatch_ema"):
            Finetuner(_config(model, fixmatch_ema=momentum, **other), str(archive), tmp_path / "bad")


def test_semi_vits_pseudo_mixup_blends_views_and_labels_by_their_confidences():
    from training.fixmatch import confidence_mix

    shades = torch.arange(1, 9).float() / 10  # view k is a flat image of shade (k + 1) / 10: its pixels name it
    views = shades[:, None, None, None].expand(8, 3, 16, 16).clone()
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    confidence = torch.tensor([0.9, 0.3, 0.6, 0.2, 0.95, 0.5, 0.7, 0.4])
    one_hot = torch.eye(3)[labels]  # [8, 3]
    np.random.seed(0)
    mixed, targets, judged = confidence_mix(views, labels, confidence, 3, torch.Generator().manual_seed(1))
    assert mixed.shape == views.shape and torch.allclose(targets.sum(1), torch.ones(8))
    kinds = set()
    for i in range(8):
        values = mixed[i].unique()
        if len(values) == 2:  # CutMix: a box of the partner's pixels; the target's share of i is what is left of i
            j = int((values[values != shades[i]] * 10).round() - 1)
            kept = (mixed[i] == shades[i]).float().mean()
            kinds.add("box")
        else:  # MixUp: a blend, i's share its confidence's share of the pair's
            shares = confidence[i] / (confidence[i] + confidence)  # [8] for each candidate partner
            blends = shares * shades[i] + (1 - shares) * shades
            j = int((blends - values[0]).abs().argmin())
            kept = shares[j]
            kinds.add("blend" if j != i else "itself")
        assert torch.allclose(targets[i], kept * one_hot[i] + (1 - kept) * one_hot[j], atol=1e-5)
        assert judged[i] == torch.maximum(confidence[i], confidence[j])  # as sure as the surer of the two
    assert {"box", "blend"} <= kinds  # both kinds of mixing drawn over 8 views


def test_fixmatch_with_pseudo_mixup_trains_on_mixed_soft_targets(tiny, tmp_path):
    from training.finetune import Finetuner

    root, archive, model = tiny
    few = dict(label_fraction=0.25, label_seed=1, fixmatch=1.0, unlabelled_ratio=2, fixmatch_threshold=0.0)
    plain = Finetuner(_config(model, **few), str(archive), tmp_path / "plain")
    mixing = Finetuner(_config(model, fixmatch_mix=True, **few), str(archive), tmp_path / "mix")
    a, b = plain.train_step(plain.images, plain.targets), mixing.train_step(mixing.images, mixing.targets)
    assert a["pseudo_accuracy"] == b["pseudo_accuracy"] and a["confident"] == b["confident"]  # the same labels
    assert b["unlabelled_loss"] != pytest.approx(a["unlabelled_loss"])  # trained towards other (mixed) targets
    with pytest.raises(ValueError, match="fixmatch_mix"):
        Finetuner(_config(model, fixmatch_mix=True, label_fraction=0.25), str(archive), tmp_path / "bad")


def test_study_ema_val_measures_again_what_the_run_logged_at_its_end(tiny, tmp_path, study_script):
    from training.finetune import finetune

    root, archive, model = tiny
    run = tmp_path / "run"
    finetune(_config(model, label_fraction=0.5, fixmatch=1.0, fixmatch_threshold=0.0, fixmatch_ema=0.5), str(archive), run)
    ema_val = study_script("ema_val")
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert ema_val.measure(run) == (6, pytest.approx(last["val_accuracy"], abs=1e-5),  # logged to 5 digits
                                   pytest.approx(last["ema_val_accuracy"], abs=1e-5))
    finetune(_config(model), str(archive), tmp_path / "plain")
    with pytest.raises(SystemExit, match="without --set fixmatch_ema"):
        ema_val.measure(tmp_path / "plain")


def test_fixmatchs_strong_view_distorts_each_image_its_own_way_and_needs_rgb():
    from training.fixmatch import strong_view

    torch.manual_seed(0)
    images = torch.rand(1, 3, 32, 32).repeat(6, 1, 1, 1)
    strong = strong_view(images)
    assert strong.shape == images.shape and 0 <= strong.min() and strong.max() <= 1
    assert not torch.allclose(strong, images, atol=0.02)
    assert len({tuple(s.flatten()[:64].tolist()) for s in strong}) > 1  # not one draw for the whole batch
    with pytest.raises(ValueError, match="fixmatch=0"):
        strong_view(torch.rand(2, 4, 32, 32))


def test_a_student_learns_from_its_teachers_predictions_on_the_unlabelled_images(tiny, tmp_path):
    from training.export import export_run
    from training.finetune import Finetuner, finetune

    root, archive, model = tiny
    few = dict(label_fraction=0.25, label_seed=1)  # 2 of the 8 train images per class
    finetune(_config(model, **few), str(archive), tmp_path / "teacher")
    export_run(tmp_path / "teacher", tmp_path / "teacher" / "export")
    student = Finetuner(_config(model, teacher=str(tmp_path / "teacher"), **few), str(archive), tmp_path / "student")
    assert student.labelled == 6 and student.targets.shape == (24, 3)
    labelled, unlabelled = student.targets[:6], student.targets[6:]
    assert set(labelled.sum(1).tolist()) == {1.0} and set(labelled.max(1).values.tolist()) == {1.0}  # one-hot
    teacher_logits = ExportedEncoder(tmp_path / "teacher" / "export").logits(student.images[6:])
    assert torch.allclose(unlabelled, torch.softmax(torch.from_numpy(teacher_logits), 1), atol=1e-5)
    assert student.fit()["step"] == 6
    card = export_run(tmp_path / "student", tmp_path / "student" / "export")
    assert card["labelled_images"] == 6 and card["train_images"] == 24
    assert card["teacher"] == str(tmp_path / "teacher")

    with pytest.raises(ValueError, match="label_seed"):  # a teacher that saw other labels would leak them
        Finetuner(_config(model, teacher=str(tmp_path / "teacher"), label_fraction=0.25), str(archive), tmp_path / "x")
    with pytest.raises(ValueError, match="task: classification"):  # an encoder has no predictions to teach
        Finetuner(_config(model, teacher=str(model), **few), str(archive), tmp_path / "y")


def test_lp_ft_starts_the_head_as_the_frozen_inits_linear_probe(tiny, tmp_path):
    from indexing.probe import fit_linear_probe
    from training.finetune import Finetuner
    from training.probe_head import fit_probe_head, head_inputs

    root, archive, model = tiny
    run = Finetuner(_config(model, probe_head=True), str(archive), tmp_path / "lp-ft")
    features = head_inputs(run.model, run.images, run.config.model.img_size, run.mean, run.std, run.precision,
                           run.device)  # [N, D]
    probe = fit_linear_probe(features.numpy(), run.targets.numpy(), np.empty((0, features.shape[1])), np.empty(0),
                             grid=(1.0,))
    expected = ((features.numpy() - probe["mean"]) / probe["scale"]) @ probe["weight"].T + probe["bias"]  # [N, K]
    with torch.no_grad():
        logits = run.model.head(features).numpy()
    assert np.abs(logits - expected).max() < 1e-3 * np.abs(expected).max()
    assert (logits.argmax(1) == run.targets.numpy()).mean() > 0.5  # colour-coded classes: the probe separates them
    plain = Finetuner(_config(model), str(archive), tmp_path / "plain")
    assert plain.model.head.weight.abs().max() < 1e-3  # without it the head starts near zero (MAE's recipe)
    with pytest.raises(ValueError, match=r"classes \[1, 2\] have no labelled image"):
        fit_probe_head(run.model, features, torch.zeros(len(features), dtype=torch.long))


def test_finetuning_at_a_higher_resolution_resamples_the_positions_and_exports_at_that_size(tiny, tmp_path):
    from timm.layers import resample_abs_pos_embed

    from training.export import export_run
    from training.finetune import build_encoder, finetune
    from training.weights import timm_encoder

    root, archive, model = tiny
    card = json.loads((model / "model_card.json").read_text())
    patch, native = card["model"]["patch_size"], card["model"]["img_size"]
    size = 2 * native
    vit, config, _ = build_encoder(_config(model, resolution=size), str(archive))
    assert config.model.img_size == size and vit.patch_embed.grid_size == (size // patch,) * 2
    native_positions = timm_encoder(model).pos_embed  # [1, (native / patch)^2, D]
    resampled = resample_abs_pos_embed(native_positions, new_size=[size // patch] * 2, num_prefix_tokens=0)
    assert torch.allclose(vit.pos_embed, resampled) and not vit.pos_embed.requires_grad
    finetune(_config(model, resolution=size), str(archive), tmp_path / "run")
    exported = export_run(tmp_path / "run", tmp_path / "export")
    assert exported["input_size"] == size and exported["finetune"]["resolution"] == size
    assert exported["parity"]["max_abs_diff"] <= 1e-4  # the ONNX graph runs at the new size, as PyTorch did
    logits = ExportedEncoder(tmp_path / "export").logits(torch.rand(2, 3, native, native))  # resized on the way in
    assert logits.shape == (2, 3)
    with pytest.raises(ValueError, match=f"multiple of {patch}"):
        build_encoder(_config(model, resolution=size + 1), str(archive))


def test_supervised_from_scratch_takes_the_named_models_architecture(tiny, tmp_path):
    from training.finetune import build_encoder

    root, archive, model = tiny
    vit, config, described = build_encoder(_config(f"random:{model}"), str(archive))
    assert described["init_kind"] == "random" and config.model.embed_dim == 48 and len(vit.blocks) == 2
    assert config.stats_mean == json.loads((model / "model_card.json").read_text())["normalisation"]["mean"]


def test_a_wrong_init_says_what_to_give(tiny):
    from training.finetune import resolve_init

    with pytest.raises(FileNotFoundError, match="random"):
        resolve_init("no-such-model")


@pytest.mark.parametrize("name", ["ijepa", "mae", "ijepa-aid", "mae-aid"])
def test_shipped_weights_load_through_timm_and_match_the_onnx_encoder(name):
    import timm

    from indexing.paths import MODELS_DIR

    model_dir = MODELS_DIR / name
    card = json.loads((model_dir / "model_card.json").read_text())
    entry = card["timm"]
    vit = timm.create_model(entry["architecture"], checkpoint_path=str(model_dir / entry["weights"]), **entry["kwargs"])
    size, norm = card["input_size"], card["normalisation"]
    images = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = (images - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = vit.float().eval().forward_features(x).numpy()
    _, onnx_tokens = ExportedEncoder(model_dir).run(images)
    # fp16 weights: tokens (layer-normed, |t| up to ~5) agree to a few 1e-3; the embeddings' cosine to 1e-5
    assert np.abs(tokens - onnx_tokens).max() < 2e-2
    pooled = tokens.mean(1)
    reference = onnx_tokens.mean(1)
    cosine = (pooled * reference).sum(1) / np.linalg.norm(pooled, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.9999


def test_the_app_predicts_with_a_fine_tuned_models_own_head_and_says_so(tiny, tmp_path):
    from indexing.build import build
    from retrieval_app.service import RetrievalService
    from retrieval_app.upload import decode_query
    from training.export import export_run
    from training.finetune import finetune

    root, archive, model = tiny
    finetune(_config(model, min_steps=12), str(archive), tmp_path / "run")
    classifier = tmp_path / "tiny-ft"
    export_run(tmp_path / "run", classifier)
    build(classifier, archive, tmp_path / "ix")
    tile = archive / "2750" / "River" / "River_3.jpg"
    encoder = ExportedEncoder(classifier)
    image = decode_query(tile, encoder.card).image[None]  # [1, C, S, S]
    for orientations, title in ((True, "fine-tuned head over 8 orientations"), (False, "fine-tuned head")):
        service = RetrievalService.open([classifier], tmp_path / "ix", orientations=orientations)
        try:
            result = service.query(tile, k=3).models["tiny-ft"]
            assert result.head_name == f"{title} (3 classes of archive)" and "fine-tuned" in result.display
            logits = encoder.logits(image, d4=orientations)[0]
            p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            assert max(result.probabilities, key=result.probabilities.get) == ["Forest", "River", "SeaLake"][p.argmax()]
            assert abs(max(result.probabilities.values()) - p.max()) < 1e-5
            assert f": {title} (3 classes of archive) **" in service.query(tile, k=3).summary()
            assert result.hits[0]["score"] > 0.999  # the tile itself, found by its embedding as it is
        finally:
            service.close()
    averaged, plain = encoder.logits(image, d4=True), encoder.logits(image)
    assert not np.allclose(averaged, plain, atol=1e-4)  # the two services above answered differently


def test_a_probe_refitted_on_a_fine_tuned_models_embeddings_predicts_in_the_app_where_val_chose_it(tiny, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from indexing.build import build
    from indexing.probe import HEAD_NAME, load_head, save_head
    from retrieval_app.service import RetrievalService
    from retrieval_app.upload import decode_query
    from training.data import open_archive
    from training.export import export_run
    from training.finetune import finetune

    root, archive, model = tiny
    finetune(_config(model, label_fraction=0.5), str(archive), tmp_path / "run")
    classifier = tmp_path / "tiny-ft"
    card = export_run(tmp_path / "run", classifier)

    script = Path(__file__).resolve().parents[1] / "study" / "refit_probe.py"
    printed = subprocess.run([sys.executable, str(script), str(classifier), "--save", "--d4"], capture_output=True,
                             text=True, check=True).stdout
    row = json.loads(printed.splitlines()[-1])
    val = open_archive(archive, "val")
    images = torch.stack([val[i]["image"] for i in range(len(val))])
    labels = np.array([val[i]["label"] for i in range(len(val))])
    encoder = ExportedEncoder(classifier)
    assert row["labelled"] == card["labelled_images"] < len(open_archive(archive, "train"))  # the run's own half
    assert row["val_images"] == len(val)
    for column, d4 in (("val_head", False), ("val_head_d4", True)):
        assert row[column] == round(100 * (encoder.logits(images, d4).argmax(1) == labels).mean(), 2)
    assert 0 <= row["val_probe_d4"] <= 100
    assert ("saved" in row) == (row["val_probe"] > row["val_head"]) == (classifier / HEAD_NAME).is_file()

    # a random probe: the app predicts with it only where it beat the head on val, over the 8 orientations if asked
    build(classifier, archive, tmp_path / "ix")
    tile = archive / "2750" / "River" / "River_3.jpg"
    dim = card["embedding_dim"]
    rng = np.random.default_rng(0)
    probe = {"weight": rng.normal(size=(3, dim)).astype(np.float32), "bias": np.zeros(3, np.float32),
             "mean": np.zeros(dim, np.float32), "scale": np.ones(dim, np.float32), "C": 1.0}
    views, _ = encoder.oriented(decode_query(tile, card).image[None])  # [8, 1, D]
    view_p = torch.softmax(torch.from_numpy(views[:, 0] @ probe["weight"].T), -1).numpy()  # [8, 3]
    assert np.abs(view_p[0] - view_p.mean(0)).max() > 1e-4  # the average is not the tile as it is
    for val_probe, orientations, expected, title in (
            (90.0, False, view_p[0], "linear probe on the fine-tuned embeddings"),
            (90.0, True, view_p.mean(0), "linear probe on the fine-tuned embeddings over 8 orientations"),
            (70.0, True, None, "fine-tuned head over 8 orientations")):
        save_head(probe, card["classes"], classifier, card, archive, {"val_head": 80.0, "val_probe": val_probe})
        assert load_head(classifier)["val_probe"] == val_probe
        service = RetrievalService.open([classifier], tmp_path / "ix", orientations=orientations)
        try:
            result = service.query(tile, k=3).models["tiny-ft"]
        finally:
            service.close()
        assert result.head_name == f"{title} (3 classes of archive)"
        if expected is not None:
            assert [result.probabilities[c] for c in card["classes"]] == pytest.approx(expected.tolist(), abs=1e-5)
        assert result.hits[0]["score"] > 0.999  # the search: the tile as it is, whichever head


def test_the_refitted_probe_takes_pseudo_labels_where_the_head_passes_the_runs_own_threshold(study_script):
    refit_probe = study_script("refit_probe")

    height = np.array([10.0, 10.0, 10.0, 2.5, 1.0])  # softmax top ~1.0, ~1.0, ~1.0, 0.575, 0.23 over 10 classes
    predicted = np.array([3, 4, 5, 6, 7])
    logits = np.zeros((5, 10), np.float32)
    logits[np.arange(5), predicted] = height
    true_labels = np.array([3, 4, 0, 6, 7])  # image 2's head is confident and wrong
    labelled = np.array([0])  # image 0's label is known: never pseudo-labelled
    fixmatch = {"finetune": {"fixmatch_threshold": 0.95, "label_smoothing": 0.1}}  # 0.95 x 0.91
    confident, labels, row = refit_probe.confident_pseudo_labels(fixmatch, logits, labelled, true_labels)
    assert confident.tolist() == [1, 2] and labels.tolist() == [4, 5]
    assert row == {"pseudo_threshold": round(0.95 * 0.91, 4), "pseudo_labelled": 2, "pseudo_right": 50.0}
    semi_vit = {"finetune": {"fixmatch_threshold": 0.6, "label_smoothing": 0.1}}  # a run's own, lower threshold
    confident, labels, row = refit_probe.confident_pseudo_labels(semi_vit, logits, labelled, true_labels)
    assert confident.tolist() == [1, 2, 3] and labels.tolist() == [4, 5, 6] and row["pseudo_right"] == 66.67
