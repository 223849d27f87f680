"""``python -m retrieval_app [--index-dir DIR] [--models M ...] [--archive DIR] [--host H] [--port P]``.

Parses arguments and calls :func:`main`: builds the indexes that are missing (by default of both shipped
archives, the EuroSAT demo and the located NAIP + Landsat chips, each with its models: those its ``models.json``
names — the located archive's are the AID-trained ``ijepa-aid`` and ``mae-aid`` — else ``ijepa`` and ``mae``;
``--models`` for all; with ``--archive`` of that archive only), loads one service per archive, and launches the UI
on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retrieval_app", description=__doc__)
    parser.add_argument("--models", nargs="+",
                        help="registry names (assets/models/<name>) or exported-model folders, for every archive "
                             "(default: each archive's models.json, else ijepa mae)")
    parser.add_argument("--archive", help="serve this image archive only, indexing it where needed (default: the "
                                          "two shipped archives, assets/demo and assets/located)")
    parser.add_argument("--index-dir", help="folder of the indexes (default: index/ at the repo root; the located archive's "
                                            "in its located/ subfolder)")
    parser.add_argument("--no-build", action="store_true", help="fail instead of building missing indexes")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--no-tile-server", action="store_true",
                        help="serve the result thumbnails through gradio too (default: from a process of their own "
                             "on another port, retrieval_app/tile_server.py; behind a proxy the page uses gradio's "
                             "route anyway)")
    parser.add_argument("--orientations", action="store_true",
                        help="a fine-tuned classifier's class probabilities averaged over the tile's 8 orientations "
                             "(+0.3 to +0.55 val accuracy for 8 times its inference: +37 ms a search at 64 px, "
                             "+155 ms at 128 px, on one core; default: the tile as it is)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("retrieval_app")
    from indexing.paths import DEFAULT_INDEX_DIR, SHIPPED_ARCHIVES

    from .service import RetrievalService, archive_models, build_missing

    archives = ({Path(args.archive).name: (args.archive, args.index_dir)} if args.archive
                else {name: (archive, Path(args.index_dir or DEFAULT_INDEX_DIR) / folder)
                      for name, (archive, folder) in SHIPPED_ARCHIVES.items()})
    services = {}
    try:
        for name, (archive, index_dir) in archives.items():
            models = args.models or archive_models(archive)
            log.info("%s: models %s", name, ", ".join(map(str, models)))
            if not args.no_build:
                for report in build_missing(models, archive, index_dir):
                    log.info("%s", report)
            services[name] = RetrievalService.open(models, index_dir, orientations=args.orientations)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        log.error("%s", err)
        return 1
    from .tile_server import TileServer
    from .ui import create_demo, launch_options, tile_roots

    export_dir = Path(tempfile.mkdtemp(prefix="satjepa-exports-"))
    tiles = None if args.no_tile_server else TileServer(tile_roots(services, export_dir), host=args.host)
    with tiles or contextlib.nullcontext():
        demo = create_demo(services, export_dir, tiles=tiles)
        demo.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port,
                                                       **launch_options(services))
    return 0


if __name__ == "__main__":
    sys.exit(main())
