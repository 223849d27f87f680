"""Find every scene like these: the analyst's loop over a :class:`RetrievalService`'s archive, per model.

A :class:`SearchSession` is what a search is: the examples it started from (archive tiles, or uploads kept as
their embeddings), the ✓ / ✗ marks, the ranker and the filters; it is saved and loaded as one JSON file, so a user
continues tomorrow or hands it to a colleague. :class:`Finder` ranks the archive with it
(:mod:`retrieval_app.loop`): exactly, on the catalogue's stored float32 vectors (loaded once per model, 4 x D bytes
per tile), never on the approximate index; filters (label, split, dates, bounding box) restrict which tiles may
come back, exactly as in a query. ``find_all`` keeps every tile above a score threshold (or the top N), and
``finds_geojson`` merges touching or overlapping footprints into polygons (shapely) with their tiles, best score
and model.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexing.catalog import load_vectors

from .filters import Filters, allowed_ids
from .loop import RANKERS, ranked
from .service import ModelResult, QueryError, QueryResult, RetrievalService, clean_row, knn_vote, mark_shared

SESSION_FORMAT = "satjepa-search-session"
SESSION_VERSION = 1
#: The default ranker: the better one on the loop benchmark (benchmarks/bench_loop.py, retrieval_app/README.md).
DEFAULT_RANKER = "logistic"
#: The most finds a threshold may return (the list, the map and the exports stay usable).
MAX_FINDS = 20_000


class SessionError(ValueError):
    """A session file that cannot be used; ``str(err)`` names what is wrong and what to do."""


@dataclass
class Mark:
    """One tile of a session: the catalogue's sample id, and what identifies it if the archive changes (its file,
    content hash and centre; ``file``, not ``path``: gradio_client would take a ``path`` key for a file to fetch)."""

    sample_id: str
    file: str | None = None
    hash: str | None = None
    lat: float | None = None
    lon: float | None = None


@dataclass
class SearchSession:
    """Examples (archive tiles; uploads as ``{name, sha256, vectors: {model: [D floats]}}``), ✓ / ✗ marks, the
    ranker and the filters of one search over ``archive``."""

    archive: str
    examples: list[Mark] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    positives: list[Mark] = field(default_factory=list)
    negatives: list[Mark] = field(default_factory=list)
    ranker: str = DEFAULT_RANKER
    filters: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": SESSION_FORMAT, "version": SESSION_VERSION, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @property
    def positive_ids(self) -> list[str]:
        return list(dict.fromkeys(m.sample_id for m in self.examples + self.positives))


def read_session(path: str | Path) -> SearchSession:
    """Parse a session file; raises :class:`SessionError` naming the file and the field that is wrong."""
    path = Path(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SessionError(f"{path.name} is not a readable JSON session file ({err}): save one with "
                           "'Save session' and load that file.") from None
    return session_from_dict(data, path.name)


def session_from_dict(data: Any, source: str = "the session") -> SearchSession:
    """A :class:`SearchSession` from its JSON form (a file's, or an API call's); SessionError names what is wrong."""
    if not isinstance(data, dict) or data.get("format") != SESSION_FORMAT:
        raise SessionError(f"{source} is not a satjepa search session (its 'format' is not {SESSION_FORMAT!r}).")
    if data.get("version") != SESSION_VERSION:
        raise SessionError(f"{source} is a version {data.get('version')!r} session; this app reads version "
                           f"{SESSION_VERSION}.")
    try:
        marks = {key: [Mark(**m) for m in data.get(key, [])] for key in ("examples", "positives", "negatives")}
        session = SearchSession(archive=str(data["archive"]), uploads=list(data.get("uploads", [])),
                                ranker=str(data.get("ranker", DEFAULT_RANKER)), filters=dict(data.get("filters", {})),
                                **marks)
    except (KeyError, TypeError) as err:
        raise SessionError(f"{source}: a field is missing or malformed ({err}); it was edited or is broken: "
                           "save the session again.") from None
    if session.ranker not in RANKERS:
        raise SessionError(f"{source}: unknown ranker {session.ranker!r}: one of {sorted(RANKERS)}.")
    return session


class Finder:
    """The loop over one service's archive. Thread-safe; vectors are loaded once per model, when first needed."""

    def __init__(self, service: RetrievalService) -> None:
        self.service = service
        self._vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    @property
    def archive(self) -> str:
        return str(next(iter(self.service.models.values())).archive)

    def vectors(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [N] sorted, vectors float32 [N, D] L2-normalised) of the published tiles of model ``key``."""
        with self._lock:
            if key not in self._vectors:
                con = self.service.catalogue(key)
                self._vectors[key] = load_vectors(con, "WHERE hash IN (SELECT hash FROM images)")
            return self._vectors[key]

    def mark(self, sample_id: str) -> Mark:
        """The :class:`Mark` of a catalogue tile (QueryError if it is not in the archive)."""
        row = self.service.row(next(iter(self.service.models)), sample_id)
        return Mark(row["sample_id"], row["path"], row["hash"], row.get("lat"), row.get("lon"))

    def new_session(self, examples: list[str] = (), uploads: list[dict[str, Any]] = (), ranker: str = DEFAULT_RANKER,
                    filters: dict[str, Any] | None = None) -> SearchSession:
        if ranker not in RANKERS:
            raise QueryError(f"unknown ranker {ranker!r}: choose one of {', '.join(sorted(RANKERS))}.")
        return SearchSession(self.archive, [self.mark(s) for s in examples], list(uploads), ranker=ranker,
                             filters=dict(filters or {}))

    def upload_example(self, image: str | Path, large: str | None = None) -> dict[str, Any]:
        """An uploaded tile as a session example: its name, content hash and embedding under every model."""
        from .upload import LARGE_MODES, decode_query, read_upload

        upload = read_upload(image)
        vectors = {}
        for key, model in self.service.models.items():
            decoded = decode_query(upload, model.encoder.card, large or LARGE_MODES[0])
            v = model.encoder.embed(decoded.image[None])[0]
            vectors[key] = (v / max(float(np.linalg.norm(v)), 1e-12)).round(6).tolist()
        return {"name": Path(image).name, "sha256": upload.sha256, "vectors": vectors}

    def load(self, path: str | Path | dict[str, Any]) -> tuple[SearchSession, list[str]]:
        """Read a session (a file saved from this archive, or its JSON form); returns it with the marks whose tiles
        are gone (or changed: another content hash), each reported, none silently dropped. Raises SessionError for
        another archive or a broken file."""
        source = "the session" if isinstance(path, dict) else Path(path).name
        session = session_from_dict(path, source) if isinstance(path, dict) else read_session(path)
        if Path(session.archive).resolve() != Path(self.archive).resolve():
            raise SessionError(f"{source} was saved from the archive {session.archive}, not from "
                               f"{self.archive}: choose that archive first (or index it).")
        missing = []
        for kind in ("examples", "positives", "negatives"):
            kept = []
            for m in getattr(session, kind):
                try:
                    current = self.mark(m.sample_id)
                except QueryError:
                    missing.append(f"{kind[:-1]} {m.sample_id} ({m.file}): no longer in the archive")
                    continue
                if m.hash and current.hash != m.hash:
                    missing.append(f"{kind[:-1]} {m.sample_id}: the file changed since the session was saved")
                    continue
                kept.append(current)
            setattr(session, kind, kept)
        return session, missing

    def tile_at(self, lat: float, lon: float) -> tuple[str, float]:
        """The archive tile at a place: the one whose footprint holds (lat, lon), else the nearest centre; returns
        (sample_id, distance of its centre in km). QueryError when the archive has no located tiles."""
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise QueryError(f"({lat}, {lon}) is not a place: latitude -90..90, longitude -180..180 (degrees).")
        con = self.service.catalogue(next(iter(self.service.models)))
        found = con.execute("""SELECT sample_id, footprint, 6371 * 2 * asin(sqrt(
                 sin(radians(lat - ?) / 2) ^ 2 + cos(radians(?)) * cos(radians(lat)) * sin(radians(lon - ?) / 2) ^ 2)) AS km
               FROM images WHERE lat IS NOT NULL AND lon IS NOT NULL ORDER BY km LIMIT 9""", [lat, lat, lon]).fetchall()
        if not found:
            raise QueryError("This archive's tiles carry no coordinates: choose a located archive to search by place.")
        from shapely.geometry import Point, shape

        here = Point(lon, lat)
        for sample_id, footprint, km in found:
            if footprint and shape(json.loads(footprint)).covers(here):
                return sample_id, float(km)
        return found[0][0], float(found[0][2])

    # ---- ranking -------------------------------------------------------------------------------------------

    def rows(self, key: str, sample_ids: list[str]) -> np.ndarray:
        """Rows of ``sample_ids`` in ``vectors(key)`` (int64 [M]; duplicates of one content share a row)."""
        if not sample_ids:
            return np.zeros(0, np.int64)
        ids, _ = self.vectors(key)
        found = self.service.catalogue(key).execute("SELECT id FROM images WHERE sample_id IN (SELECT unnest(?::VARCHAR[]))",
                            [list(sample_ids)]).fetchall()
        wanted = np.array([r[0] for r in found], dtype=np.int64)
        return np.searchsorted(ids, wanted)

    def scores(self, key: str, session: SearchSession) -> np.ndarray:
        """The session's ranker's score of every tile [N] under model ``key``."""
        _, vectors = self.vectors(key)
        positives = vectors[self.rows(key, session.positive_ids)]
        uploaded = [u["vectors"][key] for u in session.uploads if key in u.get("vectors", {})]
        if uploaded:
            positives = np.concatenate([positives, np.asarray(uploaded, dtype=np.float32)])
        if not len(positives):
            raise QueryError("Start from at least one example: an upload, a result or an archive tile.")
        negatives = vectors[self.rows(key, [m.sample_id for m in session.negatives])]
        return RANKERS[session.ranker](vectors, positives, negatives)

    def _excluded(self, key: str, session: SearchSession, filters: Filters, keep_positives: bool) -> np.ndarray:
        """Rows that may not come back: the marked ones (the ✓ too unless ``keep_positives``) and, with filters,
        every row they leave out."""
        ids, _ = self.vectors(key)
        marked = [m.sample_id for m in session.negatives] + ([] if keep_positives else session.positive_ids)
        out = [self.rows(key, marked)]
        if not filters.empty:
            allowed = np.isin(ids, allowed_ids(self.service.catalogue(key), filters))
            out.append(np.flatnonzero(~allowed))
        return np.unique(np.concatenate(out))

    def _hits(self, key: str, rows: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        ids, _ = self.vectors(key)
        lookup = self.service.models[key].rows
        return [clean_row(r) for r in lookup.rows(self.service.catalogue(key), ids[rows], scores[rows])]

    def search(self, key: str, session: SearchSession, k: int = 20, filters: Filters | None = None
               ) -> list[dict[str, Any]]:
        """The top ``k`` unmarked tiles under model ``key`` (hit dicts with ``score`` and ``rank``)."""
        filters = filters or Filters()
        scores = self.scores(key, session)
        top = ranked(scores, self._excluded(key, session, filters, keep_positives=False), k)
        hits = self._hits(key, top, scores)
        for rank, hit in enumerate(hits, 1):
            hit["rank"] = rank
        return hits

    def search_result(self, session: SearchSession, k: int = 20, filters: Filters | None = None) -> QueryResult:
        """Every model's :meth:`search` as a :class:`QueryResult` (the page renders it as it renders a query): the
        query shown is the session's first example (an archive tile), or its first upload's name when it has none."""
        import time

        filters = filters or Filters()
        started = time.perf_counter()
        results = {}
        for key, model in self.service.models.items():
            t0 = time.perf_counter()
            hits = self.search(key, session, k, filters)
            for hit in hits:
                hit.update(is_query=False, also_in=[])
            note = "" if hits else "no unmarked tile matches the filters."
            results[key] = ModelResult(key, model.display, hits, None, knn_vote(hits),
                                       {"embed": 0.0, "search": (time.perf_counter() - t0) * 1e3}, note, "")
        mark_shared(results)
        first = next(iter(self.service.models.values()))
        if session.examples:
            query = self.service.read_row(first, self.service.row(first.key, session.examples[0].sample_id))
        else:  # started from uploads: no archive tile to show as the query
            import torch

            from .upload import QueryImage

            size, bands = int(first.encoder.card["input_size"]), int(first.encoder.card["bands"])
            query = QueryImage(torch.zeros(bands, size, size), np.full((8, 8, 3), 230, np.uint8), "upload", (0, 0, 0))
        query.note = (f"Searched with {len(session.positive_ids) + len(session.uploads)} example(s) and ✓, "
                      f"{len(session.negatives)} ✗, ranker {session.ranker}; marked tiles are not shown again.")
        return QueryResult(results, query, k, filters, {"total": (time.perf_counter() - started) * 1e3})

    def find_all(self, key: str, session: SearchSession, threshold: float | None = None, top_n: int | None = None,
                 filters: Filters | None = None) -> dict[str, Any]:
        """Every tile scoring at least ``threshold`` (or the ``top_n`` best), the ✓ included, the ✗ never:
        ``{"hits": [...], "count": int, "threshold": float, "capped": bool}``."""
        filters = filters or Filters()
        scores = self.scores(key, session)
        excluded = self._excluded(key, session, filters, keep_positives=True)
        allowed = np.ones(len(scores), bool)
        allowed[excluded] = False
        if top_n is None:
            if threshold is None:
                raise QueryError("Give a score threshold or a number of finds (top N).")
            count = int((scores[allowed] >= threshold).sum())
        else:
            count = min(int(top_n), int(allowed.sum()))
        top = ranked(scores, excluded, min(count, MAX_FINDS))
        hits = self._hits(key, top, scores)
        return {"hits": hits, "count": count, "capped": count > MAX_FINDS,
                "threshold": float(scores[top[-1]]) if len(top) else threshold}

    def counts_above(self, key: str, session: SearchSession, thresholds: list[float],
                     filters: Filters | None = None) -> list[int]:
        """How many allowed, un-✗ tiles score at least each threshold (for the slider's count)."""
        scores = self.scores(key, session)
        allowed = np.ones(len(scores), bool)
        allowed[self._excluded(key, session, filters or Filters(), keep_positives=True)] = False
        ordered = np.sort(scores[allowed])
        return [int(len(ordered) - np.searchsorted(ordered, t, "left")) for t in thresholds]


def finds_geojson(finds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A FeatureCollection of ``{model: find_all result}``: per model, each group of touching or overlapping tile
    footprints (corners included) as one feature, its geometry their union (shapely), with its tiles, best score and
    model; tiles with a centre but no footprint as points; tiles with neither in the collection's ``unlocated``."""
    from shapely import STRtree
    from shapely.geometry import Point, mapping, shape
    from shapely.ops import unary_union

    features, unlocated = [], []
    for key, found in finds.items():
        shapes, tiles = [], []
        for hit in found["hits"]:
            if hit.get("footprint"):
                shapes.append(shape(json.loads(hit["footprint"])))
            elif hit.get("lat") is not None and hit.get("lon") is not None:
                shapes.append(Point(hit["lon"], hit["lat"]))
            else:
                unlocated.append({"model": key, "sample_id": hit["sample_id"], "score": hit["score"]})
                continue
            tiles.append(hit)
        for group in _touching_groups(shapes, STRtree(shapes)):
            members = [tiles[i] for i in group]
            features.append({"type": "Feature", "geometry": mapping(unary_union([shapes[i] for i in group])),
                             "properties": {"model": key, "tiles": [t["sample_id"] for t in members],
                                            "count": len(members),
                                            "best_score": round(max(float(t["score"]) for t in members), 6),
                                            "paths": [t["path"] for t in members]}})
    return {"type": "FeatureCollection", "features": features,
            "properties": {"threshold": {k: f["threshold"] for k, f in finds.items()}, "unlocated": unlocated}}


def _touching_groups(shapes: list, tree: Any) -> list[list[int]]:
    """Connected groups (lists of indices) of shapes that intersect or touch, through a spatial index."""
    parent = list(range(len(shapes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, geometry in enumerate(shapes):
        for j in tree.query(geometry, predicate="intersects"):
            parent[root(int(j))] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(shapes)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())
