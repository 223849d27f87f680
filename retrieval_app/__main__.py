"""``python -m retrieval_app [--index-dir DIR] [--models ijepa mae] [--archive DIR] [--host H] [--port P]``.

Parses arguments and calls :func:`main`: builds the indexes that are missing (the demo archive with the shipped
models by default), loads the service once, and launches the UI on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retrieval_app", description=__doc__)
    parser.add_argument("--models", nargs="+", default=["ijepa", "mae"],
                        help="registry names (assets/models/<name>) or exported-model folders (default: ijepa mae)")
    parser.add_argument("--archive", help="image archive to index when an index is missing (default: assets/demo)")
    parser.add_argument("--index-dir", help="folder of the indexes (default: index/ at the repo root)")
    parser.add_argument("--no-build", action="store_true", help="fail instead of building missing indexes")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("retrieval_app")
    from .service import RetrievalService, build_missing

    try:
        if not args.no_build:
            for report in build_missing(args.models, args.archive, args.index_dir):
                log.info("%s", report)
        service = RetrievalService.open(args.models, args.index_dir)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        log.error("%s", err)
        return 1
    from .ui import create_demo, launch_options

    demo = create_demo(service)
    demo.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port,
                                                   **launch_options(service))
    return 0


if __name__ == "__main__":
    sys.exit(main())
