"""Command line: `python -m training {pretrain,export,bench} ...`. Parses arguments and calls one function."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("pretrain", help="pretrain an I-JEPA or MAE encoder")
    p.add_argument("--method", choices=["ijepa", "mae"], required=True)
    p.add_argument("--data", required=True, nargs="+", metavar="ARCHIVE",
                   help="a folder archive, a split CSV's folder (splits.csv), an fMoW root or SatMAE CSV, "
                        "or a folder of GeoTIFFs; several: one mixed corpus, each resized to data.image_size")
    p.add_argument("--out", required=True, help="run folder: checkpoint, config.json, metrics.jsonl")
    p.add_argument("--config", help="JSON config file or preset name (training/configs); default: cpu_eurosat")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (schedules fit them)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", default=None,
                   help="train in fp32 even where the device computes bf16 natively (config bf16)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=0.002 --set ijepa.regularizer=sigreg")

    f = verbs.add_parser("finetune", help="fine-tune an encoder + linear head end to end on (part of) the labels")
    f.add_argument("--init", required=True,
                   help="registry name (assets/models/<name>: its shipped weights), exported-model folder, "
                        "pretraining run folder, or random[:MODEL] (supervised from scratch, MODEL's architecture)")
    f.add_argument("--data", required=True, help="archive with a labelled train split (and val, for monitoring)")
    f.add_argument("--out", required=True, help="run folder: checkpoint, config.json, metrics.jsonl")
    f.add_argument("--label-fraction", type=float, help="stratified fraction of the train labels (default 1)")
    f.add_argument("--label-seed", type=int, help="which stratified subset (default 0)")
    f.add_argument("--epochs", type=int, help="passes over the labelled subset (a run is >= min_steps steps)")
    f.add_argument("--max-steps", type=int, help="stop after this many steps (a smoke test; schedules fit them)")
    f.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    f.add_argument("--no-export", action="store_true", help="do not export the classifier to OUT/export")
    f.add_argument("--no-bf16", dest="bf16", action="store_false", default=None, help="fp32 even where bf16 is native")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a fine-tuning key (training/config.py FinetuneConfig), e.g. --set layer_decay=0.65")

    e = verbs.add_parser("export", help="export a run's encoder to ONNX with a model card")
    e.add_argument("run", help="run folder written by pretrain")
    e.add_argument("--out", required=True, help="output folder: encoder.onnx + model_card.json")
    e.add_argument("--check-images", type=int, default=32, help="real images used for the parity check")
    e.add_argument("--last-blocks", type=int, default=1,
                   help="embedding = mean tokens of the last K blocks, concatenated (default 1: the paper's)")
    e.add_argument("--whiten", action="store_true",
                   help="PCA-whiten the embedding on training images, folded into the ONNX graph")
    e.add_argument("--best", action="store_true",
                   help="export the epoch with the best online kNN on val (checkpoint-best/), not the last")

    b = verbs.add_parser("bench", help="training throughput and model FLOP utilisation on this machine")
    b.add_argument("--method", choices=["ijepa", "mae"], required=True)
    b.add_argument("--config", help="JSON config file or preset name; default: cpu_eurosat")
    b.add_argument("--steps", type=int, default=30)
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--compare", action="store_true",
                   help="also time the previous step (fp32, fused attention, per-target predictor), interleaved")
    b.add_argument("--rounds", type=int, default=3, help="interleaved rounds with --compare")
    b.add_argument("--profile", action="store_true", help="print where the step's time goes (torch.profiler)")
    b.add_argument("--no-bf16", dest="bf16", action="store_false", help="fp32 even where bf16 is native")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # the exporter's per-constant notes
    if args.verb in ("pretrain", "finetune", "bench"):
        from training.heap import keep_freed_buffers

        keep_freed_buffers()  # each step's buffers reused (training/heap.py); process-wide, so the command's choice
    if args.verb == "pretrain":
        from training.config import load_config, parse_assignments
        from training.engine import pretrain
        from training.learner import NonFiniteLossError

        overrides = {**parse_assignments(args.set), "method": args.method}
        if args.batch_size:
            overrides["batch_size"] = args.batch_size
        if args.device:
            overrides["device"] = args.device
        if args.bf16 is not None:
            overrides["bf16"] = args.bf16
        config = load_config(args.config or "cpu_eurosat", **overrides)
        try:
            pretrain(config, args.data, args.out, resume=args.resume, epochs=args.epochs, max_steps=args.max_steps)
        except NonFiniteLossError as err:
            logging.getLogger("training").error("%s", err)
            return 1
        except KeyboardInterrupt:
            return 130
        return 0
    if args.verb == "finetune":
        from training.config import FinetuneConfig, apply_overrides, parse_assignments
        from training.export import export_run
        from training.finetune import finetune
        from training.learner import NonFiniteLossError

        given = {"init": args.init, "label_fraction": args.label_fraction, "label_seed": args.label_seed,
                 "epochs": args.epochs, "bf16": args.bf16}
        if args.max_steps:
            given.update(min_steps=args.max_steps, epochs=0)
        config = apply_overrides(FinetuneConfig(), {**parse_assignments(args.set),
                                                    **{k: v for k, v in given.items() if v is not None}})
        try:
            finetune(config, args.data, args.out, resume=args.resume)
        except NonFiniteLossError as err:
            logging.getLogger("training").error("%s", err)
            return 1
        except KeyboardInterrupt:
            return 130
        except (FileNotFoundError, ValueError) as err:
            logging.getLogger("training").error("%s", err)
            return 1
        if not args.no_export:
            export_run(args.out, Path(args.out) / "export")
        return 0
    if args.verb == "export":
        from training.export import export_run

        export_run(args.run, args.out, check_images=args.check_images, last_blocks=args.last_blocks,
                   whiten=args.whiten, best=args.best)
        return 0
    if args.verb == "bench":
        from training.bench import run_benchmark
        from training.config import load_config, parse_assignments

        config = load_config(args.config or "cpu_eurosat", **{**parse_assignments(args.set), "method": args.method,
                                                                "bf16": args.bf16})
        run_benchmark(config, steps=args.steps, warmup=args.warmup, compare=args.compare, rounds=args.rounds,
                      profile=args.profile)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
