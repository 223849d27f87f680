"""How good were a FixMatch run's pseudo-labels? Per quarter of its steps: the share of unlabelled images confident
enough to train on, and how many of those were right (their true train labels, logged, never trained on).

    python study/pseudo_labels.py RUN [RUN ...] [--parts 4]

RUN: a ``python -m training finetune`` folder trained with ``--set fixmatch=...``. Prints a markdown table with the
run's final val accuracy beside.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from finetune_runs import final_val, pseudo_label_quality  # study/finetune_runs.py, beside this file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN")
    parser.add_argument("--parts", type=int, default=4, help="stretches of the run's steps, in order (default 4)")
    args = parser.parse_args()
    print("| run | confident share, by part | right where confident, by part | final val |")
    print("|---|---|---|---|")
    for run in args.runs:
        try:
            quality, val = pseudo_label_quality(run, args.parts), final_val(run)
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(str(error)) from None
        shares = " / ".join(f"{share:.2f}" for share, _ in quality)
        right = " / ".join("–" if accuracy is None else f"{accuracy:.3f}" for _, accuracy in quality)
        print(f"| {run.name} | {shares} | {right} | {val:.4f} |")


if __name__ == "__main__":
    main()
