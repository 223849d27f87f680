"""How far the unlabelled train images can carry a few labels through a frozen embedding: label spreading
(Zhou et al. 2004; scikit-learn's ``LabelSpreading``) over a kNN graph of every train image, on val only.

    python study/label_spreading.py assets/models/mae [MODEL ...] [--fraction 0.01]

For each model: the labels it gives the unlabelled train images (their accuracy: the labels are read only to
score), and val accuracy of a kNN20 vote over the spread labels, beside kNN20 over the labelled images alone.
RESULTS.md ("Self-training") reads it as the ceiling a teacher's pseudo-labels start from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.neighbors import KNeighborsClassifier
from sklearn.semi_supervised import LabelSpreading

from training.data import open_archive
from training.encoder import ExportedEncoder
from training.feed import preload
from training.subsets import stratified_subset

EUROSAT = Path(__file__).resolve().parents[2] / "shared" / "data" / "eurosat-rgb"


def unit_embeddings(encoder: ExportedEncoder, images, batch: int = 512) -> np.ndarray:
    """[N, D] unit-length embeddings of images [N, C, S, S]."""
    e = np.concatenate([encoder.embed(images[i:i + batch]) for i in range(0, len(images), batch)])
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--archive", type=Path, default=EUROSAT)
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--label-seed", type=int, default=0)
    args = parser.parse_args()
    for model in args.models:
        encoder = ExportedEncoder(model)
        split = {}
        for name in ("train", "val"):
            images, labels, _ = preload(open_archive(args.archive, name, image_size=encoder.input_size),
                                        show_progress=False)
            split[name] = unit_embeddings(encoder, images), labels.numpy()
        (train, y), (val, y_val) = split["train"], split["val"]
        picks = stratified_subset(y, args.fraction, args.label_seed)
        others = np.setdiff1d(np.arange(len(y)), picks)
        given = np.full(len(y), -1)
        given[picks] = y[picks]
        alone = KNeighborsClassifier(20, metric="cosine").fit(train[picks], y[picks]).score(val, y_val)
        print(f"{model}: {len(picks)} labelled, {len(others)} unlabelled; kNN20 over the labelled alone: val "
              f"{100 * alone:.1f}")
        for neighbours in (10, 20):
            for alpha in (0.2, 0.5, 0.8, 0.95):
                spread = LabelSpreading(kernel="knn", n_neighbors=neighbours, alpha=alpha, max_iter=100).fit(train, given)
                labels = spread.transduction_
                vote = KNeighborsClassifier(20, metric="cosine").fit(train, labels).score(val, y_val)
                print(f"  {neighbours} neighbours, alpha {alpha}: unlabelled train labelled "
                      f"{100 * (labels[others] == y[others]).mean():.1f} % right; kNN20 over them: val {100 * vote:.1f}")


if __name__ == "__main__":
    main()
