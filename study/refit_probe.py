"""Does a fine-tuned encoder classify better through a logistic probe re-fitted on its own embeddings than through
the head it was fine-tuned with? Val accuracy of both, from the run's own labelled images.

    python study/refit_probe.py runs/mu5/recipe-mae-1-p600-lpft+fixmatch+ema+mu5/export assets/models/mae-ft
    python study/refit_probe.py RUN/export --test --json study/refit-probe-X-test.json   # test once, after val
    python study/refit_probe.py assets/models/mae-ft --save   # where val chose the probe: the app predicts with it
    python study/refit_probe.py RUN/export --pseudo   # the probe also fitted on the head's confident pseudo-labels

The probe is the frozen encoders' (``indexing.probe``: standardised features, logistic regression), fitted on
exactly the train images the classifier was fine-tuned on (its card's label fraction and draw,
``training.subsets.stratified_subset``), its C chosen on a val subset of the same per-class size drawn with the
same seed (all of val at 100 %), as ``indexing evaluate --label-fractions`` chooses it for the frozen encoders.
Head and probe are then both scored on every image of val (with ``--test``: of test too); one pass of the graph
gives the embedding and the head's logits (``ExportedEncoder.embed_and_logits``). ``--save`` writes the probe
beside the classifier (``linear_head.npz``, with both val accuracies) where it beat the head on val: the app then
predicts with it (``retrieval_app.service``), and says so.

``--pseudo`` fits the probe on the labelled images and on the unlabelled rest of train where the fine-tuned head is
confident, labelled by the head (self-training of the probe alone): confident by the run's own FixMatch rule (its
card's threshold as a share of what label smoothing lets the head predict, ``training.fixmatch``), fixed in advance,
not tuned. The true labels of those images are read only to report how many of the pseudo-labels are right.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from indexing.probe import fit_linear_probe, predict, probe_logits, save_head
from training.config import FinetuneConfig
from training.data import open_archive
from training.encoder import ExportedEncoder, read_card
from training.fixmatch import confidence_threshold
from training.subsets import stratified_subset

REPO = Path(__file__).resolve().parents[1]


def embeddings_and_logits(encoder: ExportedEncoder, split, picks: np.ndarray | None = None, d4: bool = False,
                          batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings [N, D], logits [N, K], labels [N]) of ``split`` (only ``picks`` of it, when given); ``d4``: of
    each image's 8 orientations, ([8, N, D], [8, N, K], [N]), view 0 the image as it is."""
    indices = np.arange(len(split)) if picks is None else picks
    embeddings, logits, labels = [], [], []
    for start in tqdm(range(0, len(indices), batch_size), desc=f"{encoder.name} {len(indices)} images", leave=False):
        batch = [split[int(i)] for i in indices[start:start + batch_size]]
        images = torch.stack([s["image"] for s in batch])
        embedding, logit = encoder.oriented(images) if d4 else encoder.embed_and_logits(images)
        embeddings.append(embedding)
        logits.append(logit)
        labels.append(np.array([s["label"] for s in batch]))
    axis = 1 if d4 else 0
    return np.concatenate(embeddings, axis), np.concatenate(logits, axis), np.concatenate(labels)


def accuracies(probe: dict, embeddings: np.ndarray, logits: np.ndarray, labels: np.ndarray, split: str) -> dict:
    """Accuracy in % of the head (its logits) and the probe on ``split``; from the 8 orientations' embeddings and
    logits [8, N, ...] also of both averaged over them (the mean probability)."""
    def averaged(view_logits: np.ndarray) -> np.ndarray:  # [8, N, K] -> mean probability [N, K]
        return torch.softmax(torch.from_numpy(view_logits), -1).mean(0).numpy()

    def percent(predicted: np.ndarray) -> float:
        return round(100 * float((predicted == labels).mean()), 2)

    oriented = embeddings.ndim == 3
    row = {f"{split}_head": percent((logits[0] if oriented else logits).argmax(-1)),
           f"{split}_probe": percent(predict(probe, embeddings[0] if oriented else embeddings))}
    if oriented:
        row |= {f"{split}_head_d4": percent(averaged(logits).argmax(-1)),
                f"{split}_probe_d4": percent(averaged(probe_logits(probe, embeddings)).argmax(-1))}
    return row


def confident_pseudo_labels(card: dict, logits: np.ndarray, labelled: np.ndarray,
                            true_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """The unlabelled train images [M] (those not in ``labelled``) whose head confidence (softmax of ``logits`` [N,
    K]) reaches the run's FixMatch threshold, their pseudo-labels [M], and a row: the threshold, M, and the share of
    them that is right (``true_labels`` [N], read for that alone)."""
    settings, default = card.get("finetune", {}), FinetuneConfig()  # older cards predate FixMatch's settings
    threshold = confidence_threshold(settings.get("fixmatch_threshold", default.fixmatch_threshold),
                                     settings.get("label_smoothing", default.label_smoothing), logits.shape[1])
    probabilities = torch.softmax(torch.from_numpy(logits), -1).numpy()
    unlabelled = np.setdiff1d(np.arange(len(logits)), labelled)
    confident = unlabelled[probabilities[unlabelled].max(-1) >= threshold]
    labels = probabilities[confident].argmax(-1)
    right = round(100 * float((labels == true_labels[confident]).mean()), 2) if len(confident) else None
    return confident, labels, {"pseudo_threshold": round(threshold, 4), "pseudo_labelled": len(confident),
                               "pseudo_right": right}


def compare(model: Path, archive: Path, test: bool, save: bool = False, d4: bool = False,
            threads: int | None = None, pseudo: bool = False) -> dict:
    """Val (and test) accuracy in % of the classifier's own head and of a probe re-fitted on its embeddings; ``d4``:
    also of each averaged over the image's 8 orientations (the app's ``--orientations``)."""
    encoder = ExportedEncoder(model, threads=threads)
    if encoder.classes is None:
        raise SystemExit(f"{model}: an encoder, not a fine-tuned classifier (its card has no task: "
                         "classification); name a run's export/ or a shipped -ft model")
    card = encoder.card
    fraction, seed = float(card["label_fraction"]), int(card.get("label_seed", 0))
    train = open_archive(archive, "train")
    train_labels = np.array([item.label for item in train.items])
    labelled = stratified_subset(train_labels, fraction, seed)  # the run's own labelled images
    x_seen, seen_logits, y_seen = embeddings_and_logits(encoder, train, None if pseudo else labelled)
    x_train, y_train, pseudo_row = x_seen, y_seen, {}
    if pseudo:  # x_seen: every train image, in order
        confident, pseudo_labels, pseudo_row = confident_pseudo_labels(card, seen_logits, labelled, y_seen)
        x_train = np.concatenate([x_seen[labelled], x_seen[confident]])
        y_train = np.concatenate([y_seen[labelled], pseudo_labels])
    x_val, val_logits, y_val = embeddings_and_logits(encoder, open_archive(archive, "val"), d4=d4)
    tune = np.arange(len(y_val)) if fraction == 1 else stratified_subset(y_val, fraction, seed)
    probe = fit_linear_probe(x_train, y_train, (x_val[0] if d4 else x_val)[tune], y_val[tune])
    row = {"model": str(model), "archive": str(archive), "labelled": len(labelled), "label_seed": seed,
           **pseudo_row, "C": probe["C"], "C_chosen_on": len(tune), "val_images": len(y_val),
           **accuracies(probe, x_val, val_logits, y_val, "val")}
    if test:
        x_test, test_logits, y_test = embeddings_and_logits(encoder, open_archive(archive, "test"), d4=d4)
        row |= {"test_images": len(y_test), **accuracies(probe, x_test, test_logits, y_test, "test")}
    if save and row["val_probe"] > row["val_head"]:
        chosen = {key: row[key] for key in ("val_head", "val_probe")}
        own = archive == (REPO / card["training_data"]).resolve()  # as the card names it, not this machine's path
        row["saved"] = str(save_head(probe, encoder.classes, model, card, card["training_data"] if own else archive,
                                     chosen))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="exported classifiers (folders with a model card)")
    parser.add_argument("--archive", type=Path, help="the archive (default: the one each card was fine-tuned on)")
    parser.add_argument("--test", action="store_true", help="score test too: once, after val chose the probe")
    parser.add_argument("--save", action="store_true", help="write the probe beside the classifier where it beat "
                                                             "the head on val (the app predicts with it)")
    parser.add_argument("--d4", action="store_true", help="also each averaged over the image's 8 orientations")
    parser.add_argument("--pseudo", action="store_true", help="fit the probe on the head's confident pseudo-labels "
                                                               "of the unlabelled train images too")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads (default: every core)")
    parser.add_argument("--json", type=Path, help="keep the rows in this JSON file")
    args = parser.parse_args()
    rows = []
    for model in args.models:
        archive = args.archive or (REPO / read_card(model)["training_data"]).resolve()
        rows.append(compare(model, archive, args.test, args.save, args.d4, args.threads, args.pseudo))
        print(json.dumps(rows[-1]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
