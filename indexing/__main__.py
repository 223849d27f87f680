"""Command line: ``python -m indexing {build,search,merge,info,evaluate} ...`` (parses arguments, calls one function)."""

from __future__ import annotations

import argparse
import logging
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m indexing", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    build = verbs.add_parser("build", help="embed an archive into a FAISS index + DuckDB catalogue (incremental)")
    build.add_argument("--model", required=True, help="registry name (assets/models/<name>) or exported-model dir")
    build.add_argument("--archive", help="image archive (default: the demo archive assets/demo)")
    build.add_argument("--index-dir", help="folder of the indexes (default: index/ at the repo root)")
    build.add_argument("--spec", help="FAISS index-factory string (default: IVF sized to the archive, or exact)")
    build.add_argument("--nprobe", type=int, help="IVF lists probed per query (default: nlist/16, >= 8)")
    build.add_argument("--batch-size", type=int, default=64)
    build.add_argument("--commit-every", type=int, default=512, help="samples per committed chunk")
    build.add_argument("--backend", choices=("onnx", "torch"), default="onnx",
                       help="torch: --model is a training run folder, run in PyTorch eager mode")
    build.add_argument("--shard", help="i/n: embed shard i of n into its own inverted lists (then `merge`)")
    build.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="ray: read as Ray tasks and embed in an actor pool (pip install -e \".[ray]\")")
    build.add_argument("--address", help="--engine ray: the cluster to join (auto: the running one; default: "
                                         "start a local one)")
    build.add_argument("--workers", type=int, help="--engine ray: embedding actors (default: one per CPU, or per "
                                                    "GPU with --gpus-per-worker)")
    build.add_argument("--gpus-per-worker", type=float, default=0.0, help="--engine ray: GPUs per actor")

    search = verbs.add_parser("search", help="top-k similar images for a query image")
    search.add_argument("image", help="query image (JPEG, PNG or GeoTIFF)")
    search.add_argument("--model", required=True)
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--where", help="SQL filter on the catalogue, e.g. \"label = 'Forest'\"")
    search.add_argument("--json", action="store_true", help="print a JSON list of {id, path, score, label, ...}")
    search.add_argument("--index-dir")

    merge = verbs.add_parser("merge", help="join the shards built with --shard into one index")
    merge.add_argument("--model", required=True)
    merge.add_argument("--index-dir")

    info = verbs.add_parser("info", help="spec, bytes per vector, RAM and measured recall of published indexes")
    info.add_argument("--model", nargs="*", help="models (default: every index under --index-dir)")
    info.add_argument("--index-dir")

    evaluate = verbs.add_parser("evaluate", help="mAP@k, P@k, kNN and linear probe for models and baselines")
    evaluate.add_argument("--model", nargs="+", required=True)
    evaluate.add_argument("--archive", help="archive with train/val/test splits (default: the demo archive)")
    evaluate.add_argument("--index-dir", help="where embeddings are cached (default: index/)")
    evaluate.add_argument("--json", dest="json_file", help="write every number to this JSON file")
    evaluate.add_argument("--no-baselines", action="store_true", help="skip random-init and raw-pixel rows")
    evaluate.add_argument("--no-heads", action="store_true",
                          help="do not write linear_head.npz beside the models (by default it is written for each "
                               "model evaluated on the archive it was trained on, never for a transfer)")
    evaluate.add_argument("--queries", choices=["test", "val"], default="test",
                          help="query split: test (report once) or val (model selection: the test split is not "
                               "read, the linear probe is fitted with C = 1, not tuned)")
    evaluate.add_argument("--label-fractions", type=float, nargs="+", metavar="F",
                          help="also score every row with a stratified fraction F of the train labels (>= 1 per "
                               "class; 3 seeds, mean ± sd), e.g. 0.01 0.1 1")
    evaluate.add_argument("--labels-per-class", type=int, nargs="+", metavar="N",
                          help="also score every row with N train labels per class, e.g. 1 5 10 50")
    evaluate.add_argument("--per-class", action="store_true",
                          help="also each row's accuracy class by class (sorted by the second row's lead over the "
                               "first) and its most frequent mistakes")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    try:
        if args.verb == "build":
            if args.shard:
                from .shard import build_shard

                print(build_shard(args.model, args.shard, args.archive, args.index_dir, batch_size=args.batch_size,
                                  commit_every=args.commit_every).report())
            else:
                from .build import build

                print(build(args.model, args.archive, args.index_dir, spec=args.spec, nprobe=args.nprobe,
                            batch_size=args.batch_size, commit_every=args.commit_every, backend=args.backend,
                            engine=args.engine, address=args.address, workers=args.workers,
                            gpus_per_worker=args.gpus_per_worker).report())
        elif args.verb == "search":
            from .search import format_results, search_image

            rows = search_image(args.model, args.image, args.k, args.where, args.index_dir)
            print(format_results(rows, args.json))
        elif args.verb == "info":
            from .info import info

            print(info(args.model, args.index_dir))
        elif args.verb == "merge":
            from .shard import merge

            print(merge(args.model, args.index_dir).report())
        elif args.verb == "evaluate":
            from .evaluate import evaluate
            from .label_efficiency import parse_budgets

            budgets = parse_budgets(args.label_fractions, args.labels_per_class)
            print(evaluate(args.model, args.archive, args.index_dir, args.json_file,
                           baselines=not args.no_baselines, save_heads=not args.no_heads, queries=args.queries,
                           label_budgets=budgets, per_class=args.per_class))
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        logging.getLogger("indexing").error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
