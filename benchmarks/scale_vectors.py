"""The vectors of the scale benchmark: every real embedding we can make, then a labelled synthetic extension.

Real (one model, default ``mae-aid``, L2-normalised like the index):

* base: EuroSAT train + val (21,600), AID train + val (7,000), the located NAIP / Landsat chips (194) and random
  crops of the GeoTIFF scenes in ``../shared/data/geotiff`` (bands 1-3, 8 crops per tile);
* queries: EuroSAT test and AID test (8,400), never in the base and never used to fit the extension.

Synthetic (everything past the real base): drawn from a model fitted to the real base only — one Gaussian per
labelled class (EuroSAT's 10, AID's 30; Ledoit-Wolf shrunk covariance) and an 8-component Gaussian mixture for
the unlabelled chips and crops, weighted by their real counts — then L2-normalised. Rows are generated in
blocks seeded by their block number, so any block can be regenerated alone and 100 M never has to be in RAM.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BLOCK = 1_000_000  # rows per generated block


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


def split_embeddings(model: str, archive: Path, split: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(features [N, D], labels [N])`` of an archive split by ``model``, via the evaluate cache."""
    from indexing.encoders import load_encoder
    from indexing.evaluate import split_features

    encoder = load_encoder(model)
    card = encoder.card
    x, y, _ = split_features(archive, split, cache, encoder.embed, {"model": encoder.identity, "name": model},
                             int(card["input_size"]), card.get("band_indices"))
    return x, y


def located_embeddings(model: str) -> np.ndarray:
    """The located demo archive's embeddings (its catalogue, built by the app or `indexing build`)."""
    from indexing.build import build
    from indexing.catalog import connect, load_vectors
    from indexing.paths import DEFAULT_INDEX_DIR, LOCATED_ARCHIVE

    folder = DEFAULT_INDEX_DIR / "located" / model
    if not (folder / "catalog.duckdb").is_file():
        build(model, LOCATED_ARCHIVE, DEFAULT_INDEX_DIR / "located")
    con = connect(folder, read_only=True)
    try:
        return load_vectors(con, "WHERE hash IN (SELECT hash FROM images)")[1]
    finally:
        con.close()


def geotiff_crops(model: str, per_tile: int = 8, seed: int = 0) -> np.ndarray:
    """Embeddings of ``per_tile`` random resized crops (scale 0.25-1) of every tile of every GeoTIFF scene."""
    import torch
    from torchvision.transforms import v2

    from indexing.encoders import load_encoder
    from training.data import open_archive

    encoder = load_encoder(model)
    size = int(encoder.card["input_size"])
    dataset = open_archive(SHARED / "geotiff", None, image_size=size, bands=[1, 2, 3])  # the bands all share
    crop = v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True)
    torch.manual_seed(seed)
    tiles = []
    for i in range(len(dataset)):
        try:
            tiles.append(dataset[i]["image"])
        except Exception as err:  # noqa: BLE001 - an unreadable tile is left out, said once
            logger.warning("geotiff tile %d left out: %s", i, err)
    crops = torch.stack([crop(tile) for tile in tiles for _ in range(per_tile)])
    return np.concatenate([encoder.embed(crops[i:i + 64]) for i in range(0, len(crops), 64)])


@dataclass
class RealVectors:
    base: np.ndarray  # float32 [N, D] normalised
    groups: list[tuple[str, np.ndarray]]  # (name, rows of base) fitted as one Gaussian each (or a mixture)
    queries: np.ndarray  # float32 [Q, D] normalised, held out
    query_source: list[str]  # [Q] which archive each query comes from


def real_vectors(model: str = "mae-aid", queries_per_archive: int = 500, seed: int = 0) -> RealVectors:
    cache = REPO / "index" / model
    eurosat, aid = SHARED / "eurosat-rgb", SHARED / "aid"
    parts, groups, at = [], [], 0
    for name, archive in (("eurosat", eurosat), ("aid", aid)):
        xs, ys = zip(*(split_embeddings(model, archive, split, cache) for split in ("train", "val")))
        x, y = _normalised(np.concatenate(xs)), np.concatenate(ys)
        parts.append(x)
        groups += [(f"{name}/{c}", at + np.nonzero(y == c)[0]) for c in np.unique(y)]
        at += len(x)
    unlabelled = _normalised(np.concatenate([located_embeddings(model), geotiff_crops(model)]))
    parts.append(unlabelled)
    groups.append(("chips+crops", at + np.arange(len(unlabelled))))
    rng = np.random.default_rng(seed)
    queries, sources = [], []
    for name, archive in (("eurosat", eurosat), ("aid", aid)):
        x, _ = split_embeddings(model, archive, "test", cache)
        queries.append(_normalised(x[np.sort(rng.choice(len(x), min(queries_per_archive, len(x)), replace=False))]))
        sources += [name] * len(queries[-1])
    return RealVectors(np.concatenate(parts), groups, np.concatenate(queries), sources)


class SyntheticExtension:
    """Gaussians fitted to the real base's groups; ``sample(n, rng)`` draws normalised rows."""

    def __init__(self, real: RealVectors, mixture_components: int = 8, seed: int = 0) -> None:
        from sklearn.covariance import LedoitWolf
        from sklearn.mixture import GaussianMixture

        self.means, self.factors, weights = [], [], []
        for name, rows in real.groups:
            x = real.base[rows]
            if name == "chips+crops":
                gmm = GaussianMixture(mixture_components, covariance_type="full", reg_covar=1e-4,
                                      random_state=seed).fit(x)
                for w, mean, cov in zip(gmm.weights_, gmm.means_, gmm.covariances_):
                    self.means.append(mean)
                    self.factors.append(np.linalg.cholesky(cov))
                    weights.append(w * len(x))
            else:
                cov = LedoitWolf().fit(x).covariance_
                self.means.append(x.mean(axis=0))
                self.factors.append(np.linalg.cholesky(cov + 1e-6 * np.eye(len(cov))))
                weights.append(len(x))
        self.weights = np.array(weights) / np.sum(weights)
        self.dim = real.base.shape[1]

    @classmethod
    def from_parts(cls, means: list[np.ndarray], factors: list[np.ndarray], weights: np.ndarray
                   ) -> "SyntheticExtension":
        """The extension as saved (means [D], Cholesky factors [D, D], weights), without refitting."""
        extension = cls.__new__(cls)
        extension.means, extension.factors = list(means), list(factors)
        extension.weights, extension.dim = np.asarray(weights), len(means[0])
        return extension

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        counts = rng.multinomial(n, self.weights)
        out = np.empty((n, self.dim), dtype=np.float32)
        at = 0
        for mean, factor, count in zip(self.means, self.factors, counts):
            out[at:at + count] = mean + rng.standard_normal((count, self.dim)) @ factor.T
            at += count
        out = out[rng.permutation(n)]
        return _normalised(out)


class ScaleVectors:
    """Rows 0..n-1: the real base first, then the synthetic extension; ids = row numbers."""

    def __init__(self, n: int, real: RealVectors, synthetic: SyntheticExtension, seed: int = 0) -> None:
        self.n, self.real, self.synthetic, self.seed = int(n), real, synthetic, seed
        self.dim = real.base.shape[1]

    @property
    def real_rows(self) -> int:
        return min(self.n, len(self.real.base))

    def block(self, b: int) -> np.ndarray:
        """float32 [rows, D] of block ``b`` (rows b * BLOCK ...), the same on every call."""
        start, stop = b * BLOCK, min(self.n, (b + 1) * BLOCK)
        real = self.real.base[start:min(stop, len(self.real.base))]
        synthetic = self.synthetic.sample(stop - start - len(real), np.random.default_rng([self.seed, b]))
        return np.concatenate([real, synthetic]) if len(real) else synthetic

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids int64 [B], vectors float32 [B, D])`` block by block."""
        for b in range((self.n + BLOCK - 1) // BLOCK):
            start = b * BLOCK
            x = self.block(b)
            yield np.arange(start, start + len(x), dtype=np.int64), x

    def training_sample(self, count: int) -> np.ndarray:
        """``count`` rows drawn at random from the first block (real rows included in proportion)."""
        first = self.block(0)
        pick = np.sort(np.random.default_rng(self.seed).choice(len(first), min(count, len(first)), replace=False))
        return first[pick]

    def exact_top(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``(scores [Q, k], ids [Q, k])`` over all n rows, streamed block by block (the heap keeps the
        largest inner products: ``keep_max=True``)."""
        heap = faiss.ResultHeap(len(queries), k, keep_max=True)
        for ids, x in self.blocks():
            scores, rows = faiss.knn(queries, x, k, metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(scores, ids[rows])
        heap.finalize()
        return heap.D, heap.I
