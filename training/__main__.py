"""Command line: `python -m training {pretrain,export,bench} ...`. Parses arguments and calls one function."""

from __future__ import annotations

import argparse
import logging
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("pretrain", help="pretrain an I-JEPA or MAE encoder")
    p.add_argument("--method", choices=["ijepa", "mae"], required=True)
    p.add_argument("--data", required=True,
                   help="a folder archive, a split CSV's folder (splits.csv), an fMoW root or SatMAE CSV, "
                        "or a folder of GeoTIFFs")
    p.add_argument("--out", required=True, help="run folder: checkpoint, config.json, metrics.jsonl")
    p.add_argument("--config", help="JSON config file or preset name (training/configs); default: cpu_eurosat")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (schedules fit them)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: auto)")

    e = verbs.add_parser("export", help="export a run's encoder to ONNX with a model card")
    e.add_argument("run", help="run folder written by pretrain")
    e.add_argument("--out", required=True, help="output folder: encoder.onnx + model_card.json")
    e.add_argument("--check-images", type=int, default=32, help="real images used for the parity check")

    b = verbs.add_parser("bench", help="training throughput and model FLOP utilisation on this machine")
    b.add_argument("--method", choices=["ijepa", "mae"], required=True)
    b.add_argument("--config", help="JSON config file or preset name; default: cpu_eurosat")
    b.add_argument("--steps", type=int, default=30)
    b.add_argument("--warmup", type=int, default=5)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verb == "pretrain":
        from training.config import load_config
        from training.engine import NonFiniteLossError, pretrain

        overrides = {"method": args.method}
        if args.batch_size:
            overrides["batch_size"] = args.batch_size
        if args.device:
            overrides["device"] = args.device
        config = load_config(args.config or "cpu_eurosat", **overrides)
        try:
            pretrain(config, args.data, args.out, resume=args.resume, epochs=args.epochs, max_steps=args.max_steps)
        except NonFiniteLossError as err:
            logging.getLogger("training").error("%s", err)
            return 1
        except KeyboardInterrupt:
            return 130
        return 0
    if args.verb == "export":
        from training.export import export_run

        export_run(args.run, args.out, check_images=args.check_images)
        return 0
    if args.verb == "bench":
        from training.bench import run_benchmark
        from training.config import load_config

        config = load_config(args.config or "cpu_eurosat", method=args.method)
        run_benchmark(config, steps=args.steps, warmup=args.warmup)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
