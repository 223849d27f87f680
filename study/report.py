"""Figures of the study, from files that the study's commands wrote:

    python study/report.py [--runs runs/final] [--features index] [--archive ../shared/data/eurosat-rgb]

* `study/figures/compute_curve.png`: online kNN accuracy on the val subset against training core-minutes and
  against images seen, one line per final run, one row per dataset (EuroSAT, AID: names ending in `-aid`), from
  `runs/final/<name>/metrics.jsonl` (written by `study/pretrain.sh`), first copied to `study/final/<name>.jsonl` so
  that the figure can be redrawn from the repository alone; every file in `study/final/` is drawn, so a run from
  another checkout (the CPU rerun `mae-150-cpu-check-aid`, RESULTS.md) is added by copying its metrics there. On AID
  also the GPU runs of `study/gpu_aid.sh` (`study/gpu/*-metrics.jsonl`), against images seen.
* `study/figures/queries.png`: example test-split queries with each model's top-5 train-split neighbours, and
  `study/figures/embedding_map.png`: a t-SNE map of the test embeddings coloured by class. Both read the
  embeddings cached by `python -m indexing evaluate` (`<features>/<model>/features-<archive>-<split>.npz`), with the same
  centring and cosine as the evaluation. It also prints the variance spectrum of the train embeddings, the
  final runs' table (from `study/final/*.jsonl`) and the tables of every `study/results-*.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "study" / "figures"
FINAL = REPO / "study" / "final"
GPU = REPO / "study" / "gpu"  # study/gpu_aid.sh's metrics, copied from the GPU machine
METHODS = {"ijepa": "I-JEPA", "mae": "MAE"}


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """(loss records, monitor records) of a metrics.jsonl file. Records with training time also get
    ``core_minutes``: the compute so far, each stretch of training seconds times the threads that ran it (a run
    resumed with another thread count counts each part at its own)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    core_seconds, previous = 0.0, 0.0
    for record in records:
        if "train_seconds" in record:
            core_seconds += (record["train_seconds"] - previous) * record["threads"]
            previous = record["train_seconds"]
            record["core_minutes"] = core_seconds / 60
    return [r for r in records if "loss" in r], [r for r in records if "knn_accuracy" in r]


def gpu_name(record: dict) -> str | None:
    """The GPU a run trained on (metrics name a CUDA device by its GPU name: training.distributed.device_name), or
    None for the CPU; core-minutes apply to CPU runs only."""
    device = record.get("device", "")
    return device if device.startswith("NVIDIA") else None


def collect_final(runs: Path) -> list[Path]:
    """Copy each final run's metrics (runs/<name>/metrics.jsonl) to study/final/<name>.jsonl."""
    FINAL.mkdir(parents=True, exist_ok=True)
    copied = []
    for metrics in sorted(runs.glob("*/metrics.jsonl")):
        target = FINAL / f"{metrics.parent.name}.jsonl"
        shutil.copyfile(metrics, target)
        copied.append(target)
    return copied


def plot_compute_curve() -> Path:
    """Val kNN of the exported encoder (I-JEPA: target encoder; dashed: context encoder) against core-minutes
    of training steps and against images seen; one row per dataset (runs named ``*-aid`` trained on AID)."""
    datasets = {"EuroSAT": lambda stem: not stem.endswith("-aid"), "AID": lambda stem: stem.endswith("-aid")}
    fig, axes = plt.subplots(len(datasets), 2, figsize=(16, 4.6 * len(datasets)), squeeze=False)
    for row, (dataset, belongs) in zip(axes, datasets.items()):
        runs = [path for path in sorted(FINAL.glob("*.jsonl")) if belongs(path.stem)]
        for index, path in enumerate(runs):
            _, knn = read_metrics(path)
            knn = [r for r in knn if "train_seconds" in r]
            if not knn:
                continue
            color = plt.cm.tab20(index % 20)  # one colour per run in both panels
            gpu = gpu_name(knn[-1])
            label = f"{path.stem} ({gpu}, the CPU config)" if gpu else path.stem
            minutes = [r["core_minutes"] for r in knn]
            seen = [r["images_seen"] / 1e3 for r in knn]
            for axis, x in zip(row, (minutes, seen)):
                if gpu and axis is row[0]:
                    continue
                axis.plot(x, [100 * r["knn_accuracy"] for r in knn], marker=".", label=label, color=color,
                          ls="-." if gpu else "-")
                if "knn_context" in knn[0]:
                    axis.plot(x, [100 * r["knn_context"] for r in knn], ls="--", color=color, lw=1,
                              label=f"{path.stem} (context encoder)")
        if dataset == "AID":  # the GPU runs (ViT-S/16, 224 px): images seen only, core-minutes do not apply
            for path in sorted(GPU.glob("*-metrics.jsonl")):
                _, knn = read_metrics(path)
                name = path.name.removesuffix("-metrics.jsonl")
                row[1].plot([r["images_seen"] / 1e3 for r in knn], [100 * r["knn_accuracy"] for r in knn], marker="x",
                            ls=":", label=f"{name} (H200, ViT-S/16)")
        row[0].set(xlabel="core-minutes of training steps", ylabel="kNN20 accuracy on the val subset (%)",
                   title=f"compute curve ({dataset}, CPU)")
        row[1].set(xlabel="thousands of images seen", title=f"{dataset}: the same against images seen")
        row[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the curves, not on them
    fig.tight_layout()
    path = FIGURES / "compute_curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_features(features: Path, archive: Path, model: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with np.load(features / model / f"features-{archive.name}-{split}.npz", allow_pickle=False) as data:
        return data["x"], data["y"], [str(c) for c in data["classes"]]


def _split_paths(archive: Path, split: str) -> list[Path]:
    from training.data import open_archive

    dataset = open_archive(archive, split)
    return [Path(dataset.describe(i)["path"]) for i in range(len(dataset))]


def plot_queries(features: Path, archive: Path, models: list[str], queries_per_class: int = 1, top: int = 5) -> Path:
    train_paths, test_paths = _split_paths(archive, "train"), _split_paths(archive, "test")
    rng = np.random.default_rng(0)
    _, y_test, classes = load_features(features, archive, models[0], "test")
    picks = [int(rng.choice(np.flatnonzero(y_test == c))) for c in range(len(classes))
             for _ in range(queries_per_class)][::2]  # every other class keeps the grid readable
    neighbours = {}
    for model in models:
        x_train, y_train, _ = load_features(features, archive, model, "train")
        x_test, _, _ = load_features(features, archive, model, "test")
        assert len(x_train) == len(train_paths) and len(x_test) == len(test_paths), "cache does not match archive"
        mean = x_train.mean(0, keepdims=True)
        train = x_train - mean
        train /= np.linalg.norm(train, axis=1, keepdims=True)
        query = x_test[picks] - mean
        query /= np.linalg.norm(query, axis=1, keepdims=True)
        neighbours[model] = np.argsort(-(query @ train.T), axis=1)[:, :top], y_train
    rows, cols = len(picks), 1 + top * len(models)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.15, rows * 1.35))
    for r, q in enumerate(picks):
        axes[r, 0].imshow(Image.open(test_paths[q]))
        axes[r, 0].set_title(f"query\n{classes[y_test[q]]}", fontsize=6)
        for m, model in enumerate(models):
            idx, y_train = neighbours[model]
            for j, n in enumerate(idx[r]):
                ax = axes[r, 1 + m * top + j]
                ax.imshow(Image.open(train_paths[n]))
                ok = y_train[n] == y_test[q]
                ax.set_title(f"{METHODS.get(model, model)} #{j + 1}\n{classes[y_train[n]]}", fontsize=5,
                             color="green" if ok else "red")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle("Test queries and their top-5 train neighbours (green: same class)", fontsize=8)
    fig.tight_layout()
    path = FIGURES / "queries.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_embedding_map(features: Path, archive: Path, models: list[str], points: int = 2000) -> Path:
    from sklearn.manifold import TSNE

    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 5.5))
    for ax, model in zip(np.atleast_1d(axes), models):
        x_train, _, _ = load_features(features, archive, model, "train")
        x, y, classes = load_features(features, archive, model, "test")
        pick = np.random.default_rng(0).permutation(len(x))[:points]
        x = x[pick] - x_train.mean(0, keepdims=True)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        xy = TSNE(n_components=2, init="pca", random_state=0, perplexity=30).fit_transform(x)
        for c, name in enumerate(classes):
            ax.scatter(*xy[y[pick] == c].T, s=3, label=name)
        ax.set(title=f"{METHODS.get(model, model)}: t-SNE of {len(pick)} test embeddings", xticks=[], yticks=[])
    np.atleast_1d(axes)[-1].legend(markerscale=4, fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    path = FIGURES / "embedding_map.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def variance_spectrum(features: Path, archive: Path, models: list[str]) -> list[str]:
    """Share of the variance of the (centred) train embeddings in their top principal directions, and the
    effective rank exp(entropy of the normalised spectrum): low values mean dimensional collapse."""
    import torch

    from training.monitor import spectrum, variance_shares

    lines = []
    for model in models:
        x, _, _ = load_features(features, archive, model, "train")
        centred = torch.from_numpy(x - x.mean(0, keepdims=True))
        share, rank = variance_shares(centred), spectrum(centred)["effective_rank"]
        lines.append(f"{model}: top-3 variance share {', '.join(f'{v:.3f}' for v in share[:3].tolist())}; "
                     f"effective rank {rank:.1f} of {x.shape[1]}")
    return lines


def final_runs_table() -> list[str]:
    """Markdown rows of the final runs (study/final/*.jsonl): epochs, images, core-minutes, val kNN at the end
    and at its best epoch, spectrum and weight correlation at the end."""
    lines = ["| run | epochs | images seen | core-minutes of training steps | val kNN at the end (best, epoch) | "
             "context encoder | eff. rank | top share | weight corr. with init |", "|---" * 9 + "|"]
    for path in sorted(FINAL.glob("*.jsonl")):
        _, knn = read_metrics(path)
        knn = [r for r in knn if "train_seconds" in r]
        if not knn:
            continue
        last, best = knn[-1], max(knn, key=lambda r: r["knn_accuracy"])
        context = f"{100 * last['knn_context']:.1f}" if "knn_context" in last else "—"
        gpu = gpu_name(last)
        compute = f"— ({gpu}: {last['train_seconds'] / 60:.1f} min)" if gpu else \
            f"{last['core_minutes']:.1f}"
        lines.append(f"| {path.stem} | {last['epoch']:g} | {last['images_seen']:,} | {compute} | "
                     f"{100 * last['knn_accuracy']:.1f} ({100 * best['knn_accuracy']:.1f}, {best['epoch']:g}) | "
                     f"{context} | {last['effective_rank']:.1f} | {last['top_share']:.2f} | {last['init_correlation']:.2f} |")
    return lines


def results_tables() -> list[str]:
    """Markdown tables of every ``study/results-*.json`` (written by ``bash study/evaluate.sh report``)."""
    columns = ("linear", "kNN20", "mAP@10", "mAP@100", "P@10")
    lines = []
    for path in sorted((REPO / "study").glob("results-*.json")):
        numbers = json.loads(path.read_text())
        lines += [f"\n{path.name}: {numbers['archive']}, queries = {numbers['queries']}",
                  "| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(f"{100 * row[c]:.1f}" for c in columns) + " |"
                  for name, row in numbers["rows"].items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(REPO / "runs" / "final"))
    parser.add_argument("--features", default=str(REPO / "index"), help="index dir used by indexing evaluate")
    parser.add_argument("--archive", default=str(REPO.parent / "shared" / "data" / "eurosat-rgb"))
    parser.add_argument("--models", nargs="+", default=["ijepa", "mae"])
    args = parser.parse_args()
    FIGURES.mkdir(parents=True, exist_ok=True)
    collect_final(Path(args.runs))
    print(plot_compute_curve())
    print(plot_queries(Path(args.features), Path(args.archive), args.models))
    print(plot_embedding_map(Path(args.features), Path(args.archive), args.models))
    print("\n".join(variance_spectrum(Path(args.features), Path(args.archive), args.models)))
    print("\n".join(final_runs_table()))
    print("\n".join(results_tables()))


if __name__ == "__main__":
    main()
