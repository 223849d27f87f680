"""Does a fine-tuned classifier gain from averaging over the image's 8 orientations? Val accuracy with and without.

    python study/orientations.py assets/models/mae-ft assets/models/mae-aid-ft
    python study/orientations.py runs/finetune-ema-seeds/eurosat-*/export --split val

A scene seen from above has no up: the fine-tuning recipe trains with flips and quarter turns, so each of an image's
8 orientations (the dihedral group D4) is the same scene to the classifier, and averaging its probabilities over
them is an ensemble at 8 times the inference cost. Each exported classifier (a run's ``export/`` or a shipped
model) is scored on the split of the archive its card was trained on (``--archive`` for another), every image of
it, as it is and averaged (``ExportedEncoder.logits(d4=True)``): the choice is made here, on val, before
``label_report.py --test --d4`` reads test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from label_report import classifier_accuracy  # study/label_report.py, beside this file
from training.data import open_archive
from training.encoder import ExportedEncoder

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="exported classifiers (folders with a model card)")
    parser.add_argument("--split", default="val", choices=("val", "train"),
                        help="the split scored (test is read once, by label_report.py --test --d4)")
    parser.add_argument("--archive", type=Path, help="the archive (default: the one each card was fine-tuned on)")
    args = parser.parse_args()
    for model in args.models:
        encoder = ExportedEncoder(model)
        if encoder.classes is None:
            raise SystemExit(f"{model}: an encoder, not a fine-tuned classifier (its card has no task: "
                             "classification); name a run's export/ or a shipped -ft model")
        archive = args.archive or (REPO / encoder.card["training_data"]).resolve()
        split = open_archive(archive, args.split)
        plain, averaged = classifier_accuracy(encoder, split, d4=True)
        print(json.dumps({"model": str(model), "archive": str(archive), "split": args.split, "images": len(split),
                          "accuracy": round(100 * plain, 2), "accuracy_d4": round(100 * averaged, 2),
                          "gain": round(100 * (averaged - plain), 2)}))


if __name__ == "__main__":
    main()
