"""The retrieval service beneath the app: models, indexes and catalogues loaded once; query, classify, explain.

No gradio here: the UI (:mod:`retrieval_app.ui`), the benchmark and the tests all call :class:`RetrievalService`.
It composes the indexing package: ``load_encoder`` (ONNX Runtime), ``open_index`` (FAISS + DuckDB catalogue),
``search_vectors`` (exact filtered search), the linear-probe head of ``indexing.probe``; uploads are read once and
decoded by :mod:`retrieval_app.upload`. The models of one query run side by side (embed -> search -> catalogue
rows, one thread each: ONNX Runtime, FAISS and DuckDB release the GIL). Safe for concurrent queries: FAISS search
and ONNX Runtime sessions are read-only, and each thread gets its own DuckDB cursor.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from rasterio.windows import Window

from indexing.encoders import OnnxEncoder, load_encoder, normalised
from indexing.paths import index_dir_for, model_key, resolve_model
from indexing.probe import HEAD_NAME, load_head, probe_logits, replaces_fine_tuned_head
from indexing.search import search_vectors
from indexing.store import OpenIndex, open_index
from training.data import UnreadableImageError, open_archive
from training.data.base import check_bands, resize_image
from training.data.raster import open_raster, read_window

from .filters import Filters, allowed_ids
from .heatmap import explain_pair
from .upload import CHIP_SIZE, LARGE_MODES, QueryImage, UploadError, decode_query, read_upload, to_display

logger = logging.getLogger(__name__)

#: Display names of the methods (the model key stays the one name used in code, files and the API).
METHOD_NAMES = {"ijepa": "I-JEPA", "mae": "MAE"}
#: Temperature of the weighted kNN vote, as in ``training.knn`` and the evaluation.
KNN_TEMPERATURE = 0.07
MAX_K = 100
#: Archive samples whose display pixels (thumbnails, map imagery) stay in memory (64 px RGB: ~12 kB each).
PIXEL_CACHE = 4096
#: Archive paths remembered as checked to lie inside their archive.
SERVED_CACHE = 100_000
#: Threads that run the models of queries side by side (shared by all queries; more than the cores, so that
#: concurrent clients queue on the CPU rather than on the pool).
MODEL_THREADS = 8
_CHIP_ID = re.compile(r"#r(\d+)c(\d+)$")
Ring = list[tuple[float, float]]  # [(lon, lat), ...] in EPSG:4326


class RowLookup:
    """Catalogue rows of FAISS ids through an in-memory map id -> DuckDB ``rowid`` (int64 [N] each, sorted by id,
    then sample_id) and one parameterised rowid query.

    ``images`` has no index on ``id``, so :func:`indexing.search.search_vectors`' join scans the whole catalogue:
    ~50 ms for 10 hits in a 1M-row catalogue on this CPU, against ~6 ms by rowid (16 MB per 1M rows). Rowids are
    stable while the app holds its read-only connection (a build cannot write meanwhile).
    """

    def __init__(self, con: Any) -> None:
        data = con.execute("SELECT id, rowid FROM images ORDER BY id, sample_id").fetchnumpy()
        self.ids = np.asarray(data["id"], dtype=np.int64)  # [N]
        self.rowids = np.asarray(data["rowid"], dtype=np.int64)  # [N]

    def rows(self, con: Any, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        """Rows (dicts with ``score``) of ``ids`` [k] in that order; rows sharing an id by sample_id."""
        lo, hi = np.searchsorted(self.ids, ids, "left"), np.searchsorted(self.ids, ids, "right")  # [k]
        wanted = [int(r) for a, b in zip(lo, hi) for r in self.rowids[a:b]]
        if not wanted:
            return []
        cursor = con.execute("SELECT rowid AS _rowid, * FROM images WHERE rowid IN (SELECT unnest(?::BIGINT[]))",
                             [wanted])
        names = [d[0] for d in cursor.description]
        by_rowid = {row[0]: dict(zip(names[1:], row[1:])) for row in cursor.fetchall()}
        return [{"score": float(score), **by_rowid[int(r)]} for a, b, score in zip(lo, hi, scores)
                for r in self.rowids[a:b] if int(r) in by_rowid]


class QueryError(ValueError):
    """A request the service cannot answer (unknown model or result, bad k); ``str(err)`` is for the user."""


@dataclass
class LoadedModel:
    """One model with its index: encoder (ONNX), opened index + catalogue, linear head (or None; beside a fine-tuned
    classifier, a probe re-fitted on its embeddings that beat its own head on val, else None).
    ``orientations``: a fine-tuned classifier's probabilities (its head's or its probe's) are averaged over the
    tile's 8 orientations."""

    key: str
    encoder: OnnxEncoder
    opened: OpenIndex
    head: dict[str, Any] | None
    archive: Path
    rows: RowLookup | None = None
    orientations: bool = False

    @property
    def display(self) -> str:
        card = self.encoder.card
        method = METHOD_NAMES.get(str(card.get("method")), str(card.get("method")))
        if self.encoder.classes is not None:  # a fine-tuned classifier: what it was fine-tuned from
            method = f"{METHOD_NAMES.get(str(card.get('init_method')), 'supervised')} fine-tuned"
        return method if method.lower().replace("-", "") == self.key.lower() else f"{method} ({self.key})"

    @property
    def own_head(self) -> bool:
        """Whether the class probabilities come from a fine-tuned classifier's own head (its ``logits``)."""
        return self.encoder.classes is not None and self.head is None

    @property
    def head_name(self) -> str:
        """Which head gives the model's class probabilities: a fine-tuned classifier's own (averaged over the
        tile's 8 orientations where it is), a probe re-fitted on its embeddings, or the linear probe."""
        if self.encoder.classes is None:
            return "linear probe"
        head = "fine-tuned head" if self.own_head else "linear probe on the fine-tuned embeddings"
        return f"{head} over 8 orientations" if self.orientations else head

    @property
    def class_set(self) -> str:
        """Which classes its head predicts, and learnt where: "10 classes of eurosat-rgb" (no head: "no head")."""
        classes = self.encoder.classes or (self.head["classes"] if self.head is not None else None)
        if not classes:
            return "no head"
        data = self.encoder.card.get("training_data")
        if not self.encoder.classes and self.head is not None and "archive" in self.head:
            data = self.head["archive"]  # the probe's own labels (a mixed corpus's model: one of its archives)
        if isinstance(data, list):  # a mixed corpus, no record of which archive the head learnt on
            return f"{len(classes)} classes"
        return f"{len(classes)} classes of {Path(data).name}" if data else f"{len(classes)} classes"

    @property
    def panel_title(self) -> str:
        """The class panel's title: the head and its class set, e.g. "linear probe (30 classes of aid)"."""
        return f"{self.head_name} ({self.class_set})"


@dataclass
class ModelResult:
    """What one model says about a query: ``hits`` (catalogue rows with ``rank``, ``score``, ``is_query``,
    ``also_in``), class ``probabilities`` of its ``head_name`` head (a fine-tuned classifier's own, else the linear
    probe; None without one), the kNN ``knn`` vote of the hits."""

    key: str
    display: str
    hits: list[dict[str, Any]]
    probabilities: dict[str, float] | None
    knn: dict[str, float]
    timings_ms: dict[str, float]
    note: str = ""
    head_name: str = "linear probe"

    @property
    def prediction(self) -> str | None:
        return max(self.probabilities, key=self.probabilities.get) if self.probabilities else None

    @property
    def knn_prediction(self) -> str | None:
        return max(self.knn, key=self.knn.get) if self.knn else None


@dataclass
class QueryResult:
    """Per-model results of one query, the decoded query (``query.display``, ``query.note``) and timings."""

    models: dict[str, ModelResult]
    query: QueryImage
    k: int
    filters: Filters
    timings_ms: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """Markdown: per model its two predictions (linear probe, kNN vote) and whether they agree; across two
        models, whether their probes agree, whether their kNN votes agree, and the shared neighbours."""
        results = list(self.models.values())
        lines = []
        for r in results:
            probe = f"**{r.prediction}** ({r.probabilities[r.prediction]:.0%})" if r.prediction else "— no head"
            knn = f"**{r.knn_prediction}** ({r.knn[r.knn_prediction]:.0%})" if r.knn_prediction else (
                "— none: this archive's images carry no labels to vote with")
            verdict = ""
            if r.prediction and r.knn_prediction:
                verdict = " — they agree" if r.prediction == r.knn_prediction else " — they differ"
            if not r.head_name:  # a search with marks: no single query to classify
                lines.append(f"* {r.display}: kNN vote of its results {knn}")
                continue
            lines.append(f"* {r.display}: {r.head_name} {probe}; kNN vote of its neighbours {knn}{verdict}")
        if len(results) >= 2:
            a, b = results[0], results[1]
            shared = {h["sample_id"] for h in a.hits} & {h["sample_id"] for h in b.hits}
            lines.insert(0, f"{_compare('Linear probes', a.display, a.prediction, b.display, b.prediction)}; "
                            f"{_compare('kNN votes', a.display, a.knn_prediction, b.display, b.knn_prediction)}; "
                            f"{len(shared)} of the top {self.k} neighbours are shared (marked ★ in the galleries).")
        return "\n".join(lines)


def _compare(what: str, name_a: str, a: str | None, name_b: str, b: str | None) -> str:
    """"The linear probes agree: both **X**" / "The kNN votes differ: A **X**, B **Y**"."""
    if a is None or b is None:
        return f"{what}: not available for both models"
    if a == b:
        return f"{what} agree: both **{a}**"
    return f"{what} differ: {name_a} **{a}**, {name_b} **{b}**"


class RetrievalService:
    """Models, indexes and catalogues loaded once (see :meth:`open`); query, classify, explain, export."""

    def __init__(self, models: Sequence[LoadedModel], side_by_side: bool = True) -> None:
        """``side_by_side``: run the models of a query at once on a thread pool (False: one after the other)."""
        if not models:
            raise ValueError("RetrievalService needs at least one model")
        self.models = {m.key: m for m in models}
        self._pool = ThreadPoolExecutor(MODEL_THREADS, "model") if side_by_side and len(models) > 1 else None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._cursors: list[Any] = []
        self._datasets: dict[str, tuple[Any, dict[str, int]]] = {}
        self._pixel_cache: dict[tuple[str, str], np.ndarray] = {}  # (model, sample_id) -> uint8 [H, W, 3]
        self._served: set[tuple[str, Path]] = set()  # (model key, path) checked to be inside the archive

    @classmethod
    def open(cls, models: Sequence[str | Path] = ("ijepa", "mae"), index_dir: str | Path | None = None,
             threads: int | None = 1, faiss_threads: int | None = 1, side_by_side: bool = True,
             orientations: bool = False) -> RetrievalService:
        """Load each model (registry name or exported-model folder), its index in ``<index_dir>/<model>/`` and
        its linear head (``linear_head.npz`` beside the model, optional).

        ``orientations``: a fine-tuned classifier's class probabilities are the mean over the tile's 8
        orientations (quarter turns and mirror), an ensemble: +0.3 and +0.55 val accuracy for the shipped
        ``mae-ft`` and ``mae-aid-ft`` (RESULTS.md, "Averaging over the 8 orientations") at 8 times the inference,
        +37 and +155 ms a search on one core (``benchmarks/bench_orientations.py``; one batch of 8 is no faster),
        so off unless asked for. The search still uses the tile's embedding as it is. A frozen encoder's linear
        probe: never (not measured). A fine-tuned classifier whose folder holds a probe re-fitted on its
        embeddings that beat its own head on val (``study/refit_probe.py --save``; the shipped two: +0.8 and +1.9)
        predicts with that probe, with ``orientations`` averaged over the 8 orientations' embeddings (+0.1, +0.3).

        ``threads``: ONNX Runtime intra-op threads per model (None = one per core). One is right when the models
        run side by side: on this 2-core CPU two one-thread sessions embed a tile each in 4.6 ms together, one
        two-thread session after the other in 8.2 ms (`benchmarks/bench_app.py`). ``faiss_threads``: FAISS OpenMP
        threads for the whole process (None = leave as is); 1 is right for one query at a time: on a busy 2-core
        machine OpenMP's thread wake-up made a 24-vector search take ~10-30 ms instead of 0.03 ms.

        Raises:
            FileNotFoundError: a model or an index is missing (the message says how to make it).
            RuntimeError: an index was built with another export of its model (rebuild it).
        """
        if faiss_threads:
            faiss.omp_set_num_threads(faiss_threads)
        loaded = []
        for model in models:
            encoder = OnnxEncoder(resolve_model(model), threads)
            opened = open_index(index_dir_for(index_dir, model))
            if encoder.identity != opened.manifest["model_sha256"]:
                opened.close()
                raise RuntimeError(f"the index in {opened.folder} was built with another export of {model!r}: "
                                   f"rebuild it with `python -m indexing build --model {model}`.")
            model_dir = resolve_model(model)
            head = load_head(model_dir) if (model_dir / HEAD_NAME).is_file() else None
            if encoder.classes is not None:
                head = _probe_over_fine_tuned_head(model, head, encoder.classes)
            elif head is None:
                logger.warning("%s has no %s: classes come from the kNN vote only (fit one with "
                               "`python -m indexing evaluate --model %s`)", model, HEAD_NAME, model)
            archive = Path(opened.manifest["archive"]).resolve()
            loaded.append(LoadedModel(model_key(model), encoder, opened, head, archive, RowLookup(opened.con),
                                      orientations and encoder.classes is not None))
            logger.info("loaded %s: %d images in %s", model_key(model), opened.manifest["counts"]["images"],
                        opened.folder)
        return cls(loaded, side_by_side)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        for cursor in self._cursors:
            cursor.close()
        for model in self.models.values():
            model.opened.close()

    # ---- catalogue -------------------------------------------------------------------------------------------

    def allowed_paths(self) -> list[str]:
        """The only folders (or files) the app may serve: the archives of the indexes."""
        return sorted({str(m.archive) for m in self.models.values()})

    def catalogue_values(self, column: str) -> list[str]:
        """Distinct non-null values of ``label`` or ``split`` over all catalogues, sorted."""
        if column not in ("label", "split"):
            raise QueryError(f"no value list for column {column!r}")
        values: set[str] = set()
        for model in self.models.values():
            con = self._opened(model).con
            values |= {r[0] for r in con.execute(f"SELECT DISTINCT {column} FROM images WHERE {column} IS NOT NULL")
                       .fetchall()}
        return sorted(values)

    def examples(self, per_label: int = 2, limit: int = 30) -> list[tuple[str, str]]:
        """``(caption, sample_id)`` of a few catalogue images per label (test split first) to try as queries."""
        con = self._opened(self._first).con
        rows = con.execute("""SELECT sample_id, label FROM (
              SELECT sample_id, label, row_number() OVER (PARTITION BY label
                     ORDER BY split = 'test' DESC, sample_id) AS n FROM images) WHERE n <= ? ORDER BY label, n
              LIMIT ?""", [per_label, limit]).fetchall()
        return [(f"{label or 'unlabelled'}: {sid}", sid) for sid, label in rows]

    def row(self, key: str, sample_id: str) -> dict[str, Any]:
        """The catalogue row of ``sample_id`` in model ``key``'s catalogue."""
        model = self._model(key)
        cursor = self._opened(model).con.execute("SELECT * FROM images WHERE sample_id = ?", [str(sample_id)])
        names = [d[0] for d in cursor.description]
        found = next(iter(cursor.fetchall()), None)
        if found is None:
            raise QueryError(f"{sample_id!r} is not in the catalogue of {key}: choose a result of the last query.")
        return clean_row(dict(zip(names, found)))

    # ---- queries ---------------------------------------------------------------------------------------------

    def query(self, image: str | Path | np.ndarray | None = None, k: int = 10, filters: Filters | None = None,
              *, example: str | None = None, large: str = LARGE_MODES[0]) -> QueryResult:
        """Top-``k`` neighbours, linear-probe probabilities and kNN vote of every model for one query.

        Args:
            image: path of an uploaded JPEG/PNG/GeoTIFF, or float32 [C, H, W] in scaled units; or None and
                ``example`` = a catalogue ``sample_id``.
            filters: catalogue filters (:func:`retrieval_app.filters.parse_filters`).
            large: how a GeoTIFF larger than a chip is read (see :mod:`retrieval_app.upload`).

        Raises:
            UploadError / QueryError / FilterError (all ValueError) with a message for the user.
        """
        if not 1 <= int(k) <= MAX_K:
            raise QueryError(f"k = {k}: ask for between 1 and {MAX_K} neighbours.")
        k, filters = int(k), filters or Filters()
        start = time.perf_counter()
        decoded = self._decode_all(image, example, large)
        first = decoded[_card_key(self._first)]
        query_hash = self.row(self._first.key, example)["hash"] if example is not None else first.sha256
        timings = {"decode": (time.perf_counter() - start) * 1e3}

        def answer(model: LoadedModel) -> ModelResult:
            return self._query_model(model, decoded[_card_key(model)], k, filters, query_hash)

        models = list(self.models.values())
        if self._pool is None:
            results = {m.key: answer(m) for m in models}
        else:  # the first model on this thread, the others on the pool, at the same time
            others = [(m.key, self._pool.submit(answer, m)) for m in models[1:]]
            results = {models[0].key: answer(models[0])} | {key: future.result() for key, future in others}
        mark_shared(results)
        timings["total"] = (time.perf_counter() - start) * 1e3
        return QueryResult(results, first, k, filters, timings)

    def decode(self, image: str | Path | np.ndarray, large: str = LARGE_MODES[0]) -> QueryImage:
        """The upload decoded for the first model, as that model sees it (for a preview)."""
        return self._decode_all(image, None, large, only=self._first)[_card_key(self._first)]

    def classify(self, image: str | Path | np.ndarray | None = None, *, example: str | None = None,
                 large: str = LARGE_MODES[0], k: int = 20) -> dict[str, dict[str, Any]]:
        """Per model: ``{"probabilities": {class: p} | None, "knn": {class: weight}, "prediction",
        "knn_prediction"}`` (kNN over the ``k`` nearest catalogue images, no filters)."""
        result = self.query(image, k, example=example, large=large)
        return {key: {"probabilities": r.probabilities, "knn": r.knn, "prediction": r.prediction,
                      "knn_prediction": r.knn_prediction} for key, r in result.models.items()}

    def explain(self, key: str, result_id: str, image: str | Path | np.ndarray | None = None, *,
                example: str | None = None, large: str = LARGE_MODES[0], size: int = 256) -> dict[str, Any]:
        """Patch-to-patch token similarity of the query and catalogue image ``result_id`` under model ``key``.

        Returns :func:`retrieval_app.heatmap.explain_pair`'s dict (``query`` / ``result`` overlays uint8
        [size, size, 3], ``low``, ``high``, ``mean_best``) plus ``score`` (cosine of the embeddings) and ``row``.
        """
        model = self._model(key)
        query = self._decode_all(image, example, large, only=model)[_card_key(model)]
        row = self.row(key, result_id)
        target = self.read_row(model, row)
        embedding, tokens = model.encoder.run(torch.stack([query.image, target.image]))  # [2, D], [2, N, D]
        e = normalised(embedding)
        grid = tuple(int(v) for v in model.encoder.card["token_grid"])
        out = explain_pair(query.display, tokens[0], target.display, tokens[1], grid, size)  # type: ignore[arg-type]
        return {**out, "score": float(e[0] @ e[1]), "row": row, "model": key}

    # ---- reading archive images ------------------------------------------------------------------------------

    def read_row(self, model: LoadedModel, row: dict[str, Any]) -> QueryImage:
        """The pixels of a catalogue row for ``model``: a whole file, a GeoTIFF chip or a dataset sample."""
        path, sample_id, card = Path(row["path"]), str(row["sample_id"]), model.encoder.card
        self._check_served(model, path)
        chip = _CHIP_ID.search(sample_id)
        try:
            if chip:
                r, c = int(chip.group(1)), int(chip.group(2))
                with open_raster(path) as src:
                    bands = check_bands(card.get("band_indices"), src.count, path)
                    image, _ = read_window(src, bands, Window(c * CHIP_SIZE, r * CHIP_SIZE, CHIP_SIZE, CHIP_SIZE))
                image = resize_image(image, int(card["input_size"]))
                return QueryImage(image, to_display(image, stretch=True), "TIFF", (CHIP_SIZE, CHIP_SIZE, len(bands)))
            if "#" in sample_id:  # a crop (fMoW box): read it through the archive's own dataset
                dataset, index = self._dataset(model)
                image = dataset[index[sample_id]]["image"]
                return QueryImage(image, to_display(image, stretch=False), "crop", tuple(image.shape[::-1]))
        except UnreadableImageError as err:
            raise QueryError(f"the archive image {path} cannot be read any more ({err.reason}).") from err
        try:
            return decode_query(path, card, large="resize whole")
        except UploadError as err:
            raise QueryError(f"the archive image {path} cannot be read any more: {err}") from err

    def thumbnail(self, key: str, row: dict[str, Any]) -> str | np.ndarray:
        """What a gallery shows for a hit: the archive file's path when a browser can show it (JPEG/PNG whole
        file), else uint8 [H, W, 3] pixels (rendered once per sample, then kept)."""
        model = self._model(key)
        path = Path(row["path"])
        if "#" not in str(row["sample_id"]) and path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            self._check_served(model, path)
            return str(path)
        return self._pixels(model, row)

    def map_chips(self, bounds: tuple[float, float, float, float], limit: int = 400
                  ) -> list[tuple[Ring, np.ndarray]]:
        """``(footprint ring [(lon, lat), ...], uint8 [H, W, 3])`` of the archive chips centred inside ``bounds``
        (min_lon, min_lat, max_lon, max_lat), for the map's imagery layer; none when more than ``limit`` are
        (too small to see). Pixels are read once and kept (at most ``PIXEL_CACHE`` samples)."""
        model = self._first
        min_lon, min_lat, max_lon, max_lat = bounds
        cursor = self._opened(model).con.execute(
            "SELECT * FROM images WHERE footprint IS NOT NULL AND lon BETWEEN ? AND ? AND lat BETWEEN ? AND ? "
            "ORDER BY sample_id LIMIT ?", [min_lon, max_lon, min_lat, max_lat, limit + 1])
        names = [d[0] for d in cursor.description]
        rows = [clean_row(dict(zip(names, found))) for found in cursor.fetchall()]
        if len(rows) > limit:
            return []
        return [(footprint_ring(row), self._pixels(model, row)) for row in rows]

    # ---- internals -------------------------------------------------------------------------------------------

    def _pixels(self, model: LoadedModel, row: dict[str, Any]) -> np.ndarray:
        """uint8 [H, W, 3] of a catalogue row as ``model`` reads it (gallery thumbnails, the map's imagery),
        read once and kept (at most ``PIXEL_CACHE`` samples)."""
        key = (model.key, str(row["sample_id"]))
        with self._lock:
            cached = self._pixel_cache.get(key)
        if cached is not None:
            return cached
        pixels = self.read_row(model, row).display
        with self._lock:
            if len(self._pixel_cache) >= PIXEL_CACHE:
                self._pixel_cache.clear()
            self._pixel_cache[key] = pixels
        return pixels

    @property
    def _first(self) -> LoadedModel:
        return next(iter(self.models.values()))

    def catalogue(self, key: str) -> Any:
        """Model ``key``'s DuckDB catalogue, through a cursor owned by the calling thread."""
        return self._opened(self._model(key)).con

    def _model(self, key: str) -> LoadedModel:
        if key not in self.models:
            raise QueryError(f"unknown model {key!r}: choose one of {', '.join(self.models)}.")
        return self.models[key]

    def _opened(self, model: LoadedModel) -> OpenIndex:
        """``model.opened`` with a DuckDB cursor owned by the calling thread."""
        per_thread = self._local.__dict__.setdefault("opened", {})
        if model.key not in per_thread:
            cursor = model.opened.con.cursor()
            with self._lock:
                self._cursors.append(cursor)
            per_thread[model.key] = replace(model.opened, con=cursor)
        return per_thread[model.key]

    def _decode_all(self, image: Any, example: str | None, large: str, only: LoadedModel | None = None
                    ) -> dict[tuple, QueryImage]:
        """The query decoded once per distinct model input (size, bands); an upload is read from disk once."""
        if (image is None) == (example is None):
            raise UploadError("Upload a JPEG, PNG or GeoTIFF tile or pick an example from the archive "
                              "(one of the two).")
        upload = read_upload(image) if isinstance(image, (str, Path)) else None
        decoded: dict[tuple, QueryImage] = {}
        for model in [only] if only else self.models.values():
            key = _card_key(model)
            if key in decoded:
                continue
            if example is not None:
                decoded[key] = self.read_row(model, self.row(model.key, example))
            elif isinstance(image, np.ndarray):
                decoded[key] = _from_array(image, model.encoder.card)
            else:
                decoded[key] = decode_query(upload, model.encoder.card, large)
        return decoded

    def _query_model(self, model: LoadedModel, query: QueryImage, k: int, filters: Filters,
                     query_hash: str | None) -> ModelResult:
        t0 = time.perf_counter()
        if model.own_head:  # a fine-tuned classifier: its own head, in the same run(s) of the graph
            embedding, logits = model.encoder.embed_and_logits(query.image[None], model.orientations)  # [1, D], [1, K]
            probabilities = _softmax(logits[0], model.encoder.classes)
        elif model.orientations:  # a probe re-fitted on a fine-tuned classifier's embeddings, over the 8 views
            views, _ = model.encoder.oriented(query.image[None])  # [8, 1, D]; view 0: the tile as it is
            embedding, probabilities = views[0], _apply_head(model.head, views[:, 0])
        else:
            embedding = model.encoder.embed(query.image[None])  # [1, D], not normalised
            probabilities = _apply_head(model.head, embedding[0]) if model.head is not None else None
        t1 = time.perf_counter()
        hits = self._search(self._opened(model), normalised(embedding), k, filters, model.rows)
        t2 = time.perf_counter()
        for rank, hit in enumerate(hits, 1):
            hit.update(rank=rank, is_query=query_hash is not None and hit["hash"] == query_hash, also_in=[])
        note = "" if hits else f"no catalogue image matches the filters ({filters.describe()})."
        return ModelResult(model.key, model.display, hits, probabilities, knn_vote(hits),
                           {"embed": (t1 - t0) * 1e3, "search": (t2 - t1) * 1e3}, note, model.panel_title)

    @staticmethod
    def _search(opened: OpenIndex, query: np.ndarray, k: int, filters: Filters, rows: RowLookup | None = None
                ) -> list[dict[str, Any]]:
        """Top-k rows of ``opened`` for query [1, D]; filters select ids with a parameterised query first.

        Unfiltered with a :class:`RowLookup`: the same FAISS search as ``search_vectors`` and the rows by rowid.
        """
        if filters.empty and rows is not None:
            scores, ids = opened.search(query, k)  # [1, k]
            found = ids[0] >= 0
            return [clean_row(r) for r in rows.rows(opened.con, ids[0][found], scores[0][found])[:k]]
        if filters.empty:
            return [clean_row(r) for r in search_vectors(opened, query, k)[0]]
        ids = allowed_ids(opened.con, filters)
        if len(ids) == 0:
            return []
        opened.con.register("_app_allowed", {"id": ids})
        try:
            rows = search_vectors(opened, query, k, "id IN (SELECT id FROM _app_allowed)")[0]
        finally:
            opened.con.unregister("_app_allowed")
        return [clean_row(r) for r in rows]

    def _dataset(self, model: LoadedModel) -> tuple[Any, dict[str, int]]:
        with self._lock:
            if model.key not in self._datasets:
                card = model.encoder.card
                dataset = open_archive(model.archive, None, image_size=int(card["input_size"]),
                                       bands=card.get("band_indices"))
                index = {item.id: i for i, item in enumerate(getattr(dataset, "items", []))}
                self._datasets[model.key] = (dataset, index)
            dataset, index = self._datasets[model.key]
        return dataset, index

    def _check_served(self, model: LoadedModel, path: Path) -> None:
        """Refuse a path outside the model's archive (symlinks and '..' resolved); paths once found inside are
        remembered, so a gallery of hits costs no file-system calls."""
        if (model.key, path) in self._served:
            return
        resolved = path.resolve()
        if not (resolved == model.archive or resolved.is_relative_to(model.archive)):
            raise QueryError(f"{path} is outside the archive {model.archive}: it is not served.")
        with self._lock:
            if len(self._served) >= SERVED_CACHE:
                self._served.clear()
            self._served.add((model.key, path))


#: The file beside an archive that names the models it is served with by default (``{"models": [...], "why": ...}``).
ARCHIVE_MODELS = "models.json"
DEFAULT_MODELS = ("ijepa", "mae")


def archive_models(archive: str | Path | None) -> list[str]:
    """The models an archive is served with by default: its ``models.json``'s list, else ijepa and mae.

    Raises:
        ValueError: the file is not a JSON object with a non-empty ``models`` list of names (says which file).
    """
    path = Path(archive) / ARCHIVE_MODELS if archive else None
    if path is None or not path.is_file():
        return list(DEFAULT_MODELS)
    try:
        models = json.loads(path.read_text())["models"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a JSON object with a 'models' list ({err}); write e.g. "
                         '{"models": ["ijepa-aid", "mae-aid"]}, or remove it to use ijepa and mae') from None
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise ValueError(f"{path}: 'models' must be a non-empty list of model names, got {models!r}")
    return models


def build_missing(models: Sequence[str | Path], archive: str | Path | None = None,
                  index_dir: str | Path | None = None) -> list[str]:
    """Build the index of each model whose index is missing or was built with another export; returns the build
    reports (empty when every index was already there)."""
    from indexing.build import build

    reports = []
    for model in models:
        try:
            opened = open_index(index_dir_for(index_dir, model))
        except FileNotFoundError:
            opened = None
        if opened is not None:
            current = opened.manifest["model_sha256"] == load_encoder(model).identity
            opened.close()
            if current:
                continue
        logger.info("building the index of %s (first start; incremental afterwards)", model)
        reports.append(build(model, archive, index_dir).report())
    return reports


def _card_key(model: LoadedModel) -> tuple:
    card = model.encoder.card
    bands = card.get("band_indices")
    return int(card["input_size"]), tuple(bands) if bands is not None else None


def _from_array(array: np.ndarray, card: dict[str, Any]) -> QueryImage:
    """A query given as float [C, H, W] in scaled units (the card's band count)."""
    if array.ndim != 3 or array.shape[0] != int(card["bands"]):
        raise UploadError(f"an array query must be float [C, H, W] with C = {card['bands']}, got {array.shape}.")
    image = resize_image(torch.as_tensor(np.asarray(array, dtype=np.float32)), int(card["input_size"]))
    return QueryImage(image, to_display(image, stretch=False), "array", (array.shape[2], array.shape[1],
                                                                          array.shape[0]))


def _apply_head(head: dict[str, Any], embeddings: np.ndarray) -> dict[str, float]:
    """Softmax probabilities {class: p} (descending) of the linear probe on the raw embedding [D], or their mean over
    the embeddings [V, D] of one tile's views."""
    logits = probe_logits(head, np.atleast_2d(embeddings))  # [V, C]
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):  # a class absent from the probe's train labels: probability 0, log -inf
        return _softmax(np.log(probabilities.mean(axis=0)), head["classes"])


def _probe_over_fine_tuned_head(model: str | Path, head: dict[str, Any] | None,
                                classes: list[str]) -> dict[str, Any] | None:
    """The probe beside a fine-tuned classifier where it beat the classifier's own head on val, else None (the own
    head predicts)."""
    if head is None:
        return None
    if not replaces_fine_tuned_head(head):
        logger.info("%s: its %s did not beat its fine-tuned head on val: the fine-tuned head predicts", model,
                    HEAD_NAME)
        return None
    if head["classes"] != classes:
        raise RuntimeError(f"{model}: its {HEAD_NAME} predicts {head['classes']}, the classifier {classes}: refit it "
                           f"with `python study/refit_probe.py <model folder> --save`")
    logger.info("%s: a probe re-fitted on its embeddings predicts (val %.2f %% against its head's %.2f %%)", model,
                head["val_probe"], head["val_head"])
    return head


def _softmax(logits: np.ndarray, classes: list[str]) -> dict[str, float]:
    """{class: p} (descending, zeros left out) of logits [C]."""
    p = np.exp(logits - logits.max())
    p /= p.sum()
    order = np.argsort(-p)
    return {classes[i]: float(p[i]) for i in order if p[i] > 0}


def knn_vote(hits: list[dict[str, Any]]) -> dict[str, float]:
    """Weighted vote {label: share} of the labelled hits (the query itself excluded), weights exp(s / 0.07)."""
    votes: dict[str, float] = {}
    voters = [h for h in hits if h.get("label") and not h["is_query"]]
    if not voters:
        return {}
    top = max(h["score"] for h in voters)
    for h in voters:
        votes[h["label"]] = votes.get(h["label"], 0.0) + float(np.exp((h["score"] - top) / KNN_TEMPERATURE))
    total = sum(votes.values())
    return dict(sorted(((k, v / total) for k, v in votes.items()), key=lambda kv: -kv[1]))


def mark_shared(results: dict[str, ModelResult]) -> None:
    for key, result in results.items():
        for hit in result.hits:
            hit["also_in"] = [other for other, r in results.items() if other != key
                              and any(h["sample_id"] == hit["sample_id"] for h in r.hits)]


def footprint_ring(row: dict[str, Any]) -> Ring | None:
    """The outer ring of a catalogue row's ``footprint`` (GeoJSON Polygon string), or None."""
    text = row.get("footprint")
    if not text:
        return None
    return [(float(x), float(y)) for x, y in json.loads(text)["coordinates"][0]]


def clean_row(row: dict[str, Any]) -> dict[str, Any]:
    """NaN floats (missing lat/lon/gsd) as None."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
