"""``python -m indexing evaluate``: offline quality of frozen embeddings on an archive with train/val/test splits.

Retrieval: test queries against the train archive, relevant = same class, mAP@k / P@k (:mod:`indexing.metrics`).
Classification: weighted kNN (k = 20, cosine, weights exp(s / 0.07), ``training.knn``) and a linear probe
(:mod:`indexing.probe`, C tuned on val, reported on test). Retrieval and kNN use features centred on the train
mean and L2-normalised, as in the floors of NOTES.md. Baselines go through the same code: ``random-init`` (the
first model's architecture, randomly initialised, exported like a trained model), ``raw-pixels`` (16 x 16
average-pooled pixels), ``colour-histogram`` (3 x 32 bins of each band's values, each band's histogram
summing to 1) and ``colour-histogram-hellinger`` (the same, square-rooted, so that cosine compares histograms as
the Hellinger distance does: the stronger floor): no learning at all, the floor a trained encoder must clearly beat
(NOTES.md). With label budgets (``--label-fractions``, ``--labels-per-class``) every row is also scored with a
stratified part of the train labels only (:mod:`indexing.label_efficiency`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.data import open_archive
from training.knn import knn_predict

from .encoders import OnnxEncoder
from .label_efficiency import label_efficiency
from .label_efficiency import markdown_table as label_efficiency_table
from .metrics import DEFINITION, retrieval_metrics
from .per_class import per_class_report
from .per_class import markdown_table as per_class_table
from .paths import DEFAULT_INDEX_DIR, model_key, resolve_archive, resolve_model
from .probe import fit_linear_probe, predict, save_head
from .reader import iter_batches

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
COLUMNS = ("linear", "kNN20", "mAP@10", "mAP@20", "mAP@100", "P@10")
PIXEL_GRID = 16
PIXEL_SIZE = 64
HISTOGRAM_BINS = 32


def split_features(archive: Path, split: str, cache: Path, embed: Any, key: dict[str, Any], image_size: int,
                   bands: list[int] | None, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(features [N, D], labels [N], classes)`` of one split, computed by ``embed(images [B, C, S, S])`` or
    read from ``cache/features-<archive folder name>-<split>.npz`` when its key (model identity, archive, split)
    matches (one file per archive: evaluating a model on two archives does not recompute either)."""
    path = cache / f"features-{Path(archive).name}-{split}.npz"
    key = {**key, "archive": str(archive), "split": split}
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            if json.loads(str(data["key"])) == key:
                return data["x"], data["y"], [str(c) for c in data["classes"]]
    dataset = open_archive(archive, split, image_size=image_size, bands=bands)
    xs, ys = [], []
    from tqdm import tqdm

    with tqdm(total=len(dataset), desc=f"{key.get('name', '')} {split}", unit="img", disable=None) as bar:
        for batch in iter_batches(dataset, range(len(dataset)), batch_size):
            ok = [s for _, s in batch if not isinstance(s, str)]
            if len(ok) < len(batch):
                logger.warning("%s: %d unreadable images skipped", split, len(batch) - len(ok))
            if ok:
                xs.append(np.asarray(embed(torch.stack([s["image"] for s in ok])), dtype=np.float32))
                ys.append(np.array([s["label"] for s in ok], dtype=np.int64))
            bar.update(len(batch))
    x, y = np.concatenate(xs), np.concatenate(ys)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y, classes=np.array(dataset.classes, dtype=str), key=np.array(json.dumps(key)))
    return x, y, list(dataset.classes)


def pooled_pixels(images: torch.Tensor) -> np.ndarray:
    """Raw-pixel baseline features: images [B, C, H, W] average-pooled to 16 x 16 -> [B, C * 256]."""
    return F.adaptive_avg_pool2d(images, PIXEL_GRID).flatten(1).numpy()


def colour_histogram(images: torch.Tensor, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Colour-histogram baseline features: images [B, C, H, W] in scaled units ([0, 1]) -> [B, C * bins], each
    band's `bins`-bin histogram of its pixel values, normalised to sum to 1."""
    b, c = images.shape[:2]
    index = (images.clamp(0, 1) * bins).long().clamp(max=bins - 1).flatten(2)  # [B, C, H*W]
    counts = torch.zeros(b, c, bins).scatter_add_(2, index, torch.ones(index.shape))  # [B, C, bins]
    return (counts / index.shape[2]).flatten(1).numpy()


def hellinger_histogram(images: torch.Tensor) -> np.ndarray:
    """The colour histogram, square-rooted [B, C * bins]: cosine of these is one minus the Hellinger distance's
    square (per band), a stronger floor than the plain histogram (NOTES.md)."""
    return np.sqrt(colour_histogram(images))


BASELINES = {  # name -> (features of images [B, C, H, W], identity for the cache)
    "raw-pixels": (pooled_pixels, f"avgpool{PIXEL_GRID}@{PIXEL_SIZE}"),
    "colour-histogram": (colour_histogram, f"hist{HISTOGRAM_BINS}@{PIXEL_SIZE}"),
    "colour-histogram-hellinger": (hellinger_histogram, f"sqrt-hist{HISTOGRAM_BINS}@{PIXEL_SIZE}"),
}


def evaluation_splits(archive: Path) -> dict[str, str | None]:
    """Which split plays which role: {"train", "val", "test"} -> split name. An archive without a labelled test
    split (fMoW: train/val) is queried with val, and its linear probe is not tuned (C = 1)."""
    try:
        has_test = len(open_archive(archive, "test")) > 0
    except ValueError:
        has_test = False
    return {"train": "train", "val": "val", "test": "test"} if has_test else {"train": "train", "val": None,
                                                                             "test": "val"}


def score(features: dict[str, tuple[np.ndarray, np.ndarray]],
          num_classes: int) -> tuple[dict[str, float], dict, dict[str, np.ndarray]]:
    """All numbers of one table row (fractions), the fitted linear head and the classifiers' predictions on the
    query split ({"linear", "kNN20"}: [N]), from per-split (x, y); an empty val split means no tuning (C = 1)."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (features[s] for s in SPLITS)
    mean = x_train.mean(axis=0, keepdims=True)
    train_c, test_c = x_train - mean, x_test - mean  # centred; cosine normalises rows
    row = retrieval_metrics(test_c, y_test, train_c, y_train)
    head = fit_linear_probe(x_train, y_train, x_val, y_val, **({} if len(x_val) else {"grid": (1.0,)}))
    predicted = {"linear": predict(head, x_test),
                 "kNN20": knn_predict(torch.from_numpy(train_c), torch.from_numpy(y_train), torch.from_numpy(test_c),
                                      num_classes, k=20, temperature=0.07).argmax(dim=1).numpy()}
    row["linear"], row["kNN20"] = (float((predicted[m] == y_test).mean()) for m in ("linear", "kNN20"))
    row["linear_C"], row["linear_val"] = head["C"], head["val_accuracy"]
    return row, head, predicted


CLASSIFIER_COLUMNS = {"fine-tuned": False, "fine-tuned, 8 orientations": True}  # column -> averaged over D4


def classifier_accuracy(encoder: OnnxEncoder, archive: Path, split: str, cache: Path, key: dict[str, Any],
                        classes: list[str], d4: bool = False) -> float:
    """Top-1 accuracy (fraction) of a fine-tuned classifier's own head (its ``logits``) on ``split``; ``d4``: its
    probabilities averaged over each image's 8 orientations (the app's ``--orientations``)."""
    if encoder.classes != classes:
        raise ValueError(f"{encoder.name} was fine-tuned on the classes {encoder.classes}, but {archive} has "
                         f"{classes}: evaluate it on the archive it was fine-tuned on")
    output = "logits-d4" if d4 else "logits"
    logits, labels, _ = split_features(archive, split, cache / output, lambda x: encoder.logits(x, d4),
                                       {**key, "output": output}, encoder.input_size, encoder.card.get("band_indices"))
    return float((logits.argmax(axis=1) == labels).mean())


def random_init_model(first_model_dir: Path, archive: Path, cache: Path) -> Path:
    """Export (once, cached under ``cache``) a randomly initialised encoder with the first model's architecture
    and normalisation, the baseline that shows what training added."""
    from training.config import load_config
    from training.encoder import read_card
    from training.export import export_encoder, random_init_encoder

    card = read_card(first_model_dir)
    # Keyed by architecture alone: the same untrained encoder serves as baseline for every method.
    out = cache / f"random-init-{card['model']['embed_dim']}x{card['model']['depth']}"
    if (out / "model_card.json").is_file() and read_card(out).get("model") == card["model"]:
        return out
    norm = card["normalisation"]
    config = load_config(None, method=card["method"], model=card["model"],
                         data={"stats_mean": norm["mean"], "stats_std": norm["std"], "bands": card.get("band_indices")})
    size = int(card["input_size"])
    dataset = open_archive(archive, "train", image_size=size, bands=card.get("band_indices"))
    images = torch.stack([dataset[i]["image"] for i in range(min(8, len(dataset)))])
    export_encoder(random_init_encoder(config, seed=0), config, out, images,
                   provenance={"training_data": None, "epochs": 0, "steps": 0, "baseline": "random-init"},
                   name="random-init")
    return out


def evaluate(models: list[str], archive: str | Path | None = None, index_dir: str | Path | None = None,
             json_file: str | Path | None = None, baselines: bool = True, save_heads: bool = True,
             queries: str = "test", label_budgets: list[float] | None = None, per_class: bool = False) -> str:
    """Evaluate ``models`` (registry names or exported-model folders) plus baselines; returns the Markdown table
    (and writes every number to ``json_file``). Saves each model's linear head next to it unless the card
    names another training archive (a transfer evaluation never replaces the classes the app shows).

    ``label_budgets``: label fractions (floats) and per-class counts (ints); each row is then also scored with
    that part of the train labels (a second table, ``label_efficiency`` in the JSON). ``per_class``: each row's
    accuracy class by class and its most frequent mistakes (:mod:`indexing.per_class`; ``per_class`` in the JSON).

    ``queries="val"`` is for model selection: val queries against train, the test split never read, the probe
    fitted with C = 1 (nothing left to tune it on) and no head saved."""
    archive = resolve_archive(archive)
    root = Path(index_dir or DEFAULT_INDEX_DIR)
    dirs = {model_key(m): resolve_model(m) for m in models}
    if baselines:
        dirs["random-init"] = random_init_model(next(iter(dirs.values())), archive, root / "_baselines")
    if queries not in ("test", "val"):
        raise ValueError(f"queries must be 'test' or 'val', got {queries!r}")
    roles = evaluation_splits(archive) if queries == "test" else {"train": "train", "val": None, "test": "val"}
    save_heads = save_heads and queries == "test"
    rows: dict[str, dict[str, float]] = {}
    few_labels: dict[str, dict[str, dict[str, float]]] = {}
    predictions: dict[str, dict[str, np.ndarray]] = {}  # row -> {"linear", "kNN20"} -> predicted [N], for per_class
    classes: list[str] = []
    query_labels = np.zeros(0, np.int64)  # [N] of the query split, the same for every row

    def features_of(cache: Path, embed, key, size, bands) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        nonlocal classes, query_labels
        out = {}
        for role, split in roles.items():
            if split is None:
                out[role] = (np.zeros((0, out["train"][0].shape[1]), np.float32), np.zeros(0, np.int64))
                continue
            x, y, classes = split_features(archive, split, cache, embed, key, size, bands)
            out[role] = (x, y)
        query_labels = out["test"][1]
        return out

    for name, model_dir in dirs.items():
        encoder = OnnxEncoder(model_dir)
        key = {"name": name, "model": encoder.identity}
        feats = features_of(root / name, encoder.embed, key, encoder.input_size, encoder.card.get("band_indices"))
        rows[name], head, predictions[name] = score(feats, len(classes))
        if encoder.classes is not None:
            for column, d4 in CLASSIFIER_COLUMNS.items():
                rows[name][column] = classifier_accuracy(encoder, archive, roles["test"], root / name, key, classes, d4)
        if label_budgets:
            few_labels[name] = label_efficiency(feats, len(classes), label_budgets)
        if save_heads and name != "random-init":
            if encoder.classes is not None:  # a probe on every train label could stand in for a 1 % classifier
                logger.info("%s is a fine-tuned classifier with its own head: no linear head saved (a probe re-fitted "
                            "on its own labelled images: study/refit_probe.py --save)", name)
            elif not trained_elsewhere(encoder.card, archive):
                saved = save_head(head, classes, model_dir, encoder.card, archive)
                logger.info("saved the linear head to %s", saved)
            else:
                logger.info("%s was trained on %s, not on %s: its linear head is left as it is (transfer)",
                            name, encoder.card.get("training_data"), archive)
    for name, (features, identity) in (BASELINES.items() if baselines else ()):
        feats = features_of(root / "_baselines" / name, features, {"name": name, "model": identity}, PIXEL_SIZE, None)
        rows[name], _, predictions[name] = score(feats, len(classes))
        if label_budgets:
            few_labels[name] = label_efficiency(feats, len(classes), label_budgets)
    table = markdown_table(rows, archive, {s: len(feats[s][1]) for s in SPLITS}, roles)
    if few_labels:
        table += "\n\n" + label_efficiency_table(few_labels, str(archive), f"{roles['test']} split")
    by_class = per_class_report(query_labels, predictions, classes) if per_class else {}
    if by_class:
        table += "\n\n" + per_class_table(by_class, query_labels, classes, roles["test"])
    if json_file:
        Path(json_file).write_text(json.dumps({"archive": str(archive), "definition": DEFINITION,
                                               "queries": f"{roles['test']} split", "database": "train split",
                                               "tuning": f"{roles['val']} split" if roles["val"] else "none (C=1)",
                                               "rows": rows, **({"label_efficiency": few_labels} if few_labels
                                                                else {}),
                                               **({"per_class": by_class} if by_class else {})}, indent=1))
    return table


def trained_elsewhere(card: dict, archive: Path) -> bool:
    """Whether the model card names training archives (one, or a mixed corpus's list; stored as the paths were
    given) and ``archive`` is not among them."""
    trained = card.get("training_data")
    if trained is None:
        return False
    roots = [trained] if isinstance(trained, str) else trained
    return all(Path(root).resolve() != Path(archive).resolve() for root in roots)


def markdown_table(rows: dict[str, dict[str, float]], archive: Path, sizes: dict[str, int],
                   roles: dict[str, str | None] | None = None) -> str:
    """One row per model, numbers in %, with the protocol and the AP definition underneath."""
    columns = COLUMNS + (tuple(CLASSIFIER_COLUMNS) if any("fine-tuned" in row for row in rows.values()) else ())
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * row[c]:.1f}" if c in row else "—" for c in columns) + " |")
    roles = roles or {"train": "train", "val": "val", "test": "test"}
    tuning = f"C tuned on val ({sizes['val']})" if roles["val"] else "C = 1, not tuned (val is the query split)"
    lines.append(f"\n{archive}: queries = {roles['test']} ({sizes['test']}), archive = train ({sizes['train']}), "
                 f"relevant = same class; linear probe {tuning}; kNN k=20, cosine, exp(s/0.07); "
                 "features centred on the train mean for retrieval and kNN"
                 + ("; fine-tuned = the classifier's own head, as it is and with its probabilities averaged over "
                    "each image's 8 orientations (quarter turns and mirror)" if len(columns) > len(COLUMNS) else "")
                 + ".\n" + DEFINITION)
    return "\n".join(lines)
