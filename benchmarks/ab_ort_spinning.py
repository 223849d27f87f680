"""A/B of one suspect for the local build's gap to the encoder alone: ONNX Runtime's intra-op threads spinning
while they wait, on the cores the reader thread needs. Interleaved rounds, each session built with spinning on
(ONNX Runtime's default) then off (``session.intra_op.allow_spinning = 0``), the best of each kept.

    python benchmarks/ab_ort_spinning.py [--images 27000] [--rounds 3] [--model assets/models/ijepa]

A benchmark harness: the build is the project's own; only the ONNX Runtime session is swapped for the B arm.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

import training.encoder
from bench_embed import EUROSAT, images_per_second, subset_archive
from indexing.build import build
from indexing.encoders import OnnxEncoder
from training.data import open_archive

SPINNING = {"on": True}
_default_init = training.encoder.ExportedEncoder.__init__


def _init_with_spinning_switch(self, model_dir, threads=None, gpu=False) -> None:
    _default_init(self, model_dir, threads, gpu)
    if not SPINNING["on"]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or training.encoder.default_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.model_dir / self.card["onnx"]), options,
                                            providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=27000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", type=Path, default=Path("assets/models/ijepa"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    training.encoder.ExportedEncoder.__init__ = _init_with_spinning_switch
    best = {True: [0.0, 0.0], False: [0.0, 0.0]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive = subset_archive(EUROSAT, args.images, tmp / "archive")
        dataset = open_archive(archive, None, image_size=64)
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])  # [N, C, S, S], pre-loaded
        for round_ in range(args.rounds):
            for spinning in (True, False):
                SPINNING["on"] = spinning
                start = time.perf_counter()
                summary = build(args.model, archive, tmp / f"index-{spinning}-{round_}", batch_size=64)
                built = summary.embedded / (time.perf_counter() - start)
                alone = images_per_second(OnnxEncoder(args.model).embed, images, 64)
                print(f"round {round_} spinning {'on ' if spinning else 'off'}: build {built:.1f}, encoder alone "
                      f"{alone:.1f} images/s, ratio {built / alone:.2f}", flush=True)
                best[spinning] = [max(best[spinning][0], built), max(best[spinning][1], alone)]
    for spinning, (built, alone) in best.items():
        print(f"best, spinning {'on ' if spinning else 'off'}: build {built:.1f} / encoder alone {alone:.1f} = "
              f"{built / alone:.2f}")


if __name__ == "__main__":
    main()
