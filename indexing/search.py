"""``python -m indexing search``: top-k images for a query image, optionally filtered by catalogue metadata.

Filters are exact: the ``--where`` clause selects candidate ids in DuckDB, FAISS searches only those
(``IDSelectorBatch``), and IVF probing widens until k results are found whenever k matching images exist.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from .catalog import IMAGE_COLUMNS
from .encoders import load_encoder, normalised
from .paths import index_dir_for
from .query import read_query_image
from .store import OpenIndex, open_index

logger = logging.getLogger(__name__)

_FORBIDDEN = (";", "--", "/*", "*/")


def candidate_ids(con: duckdb.DuckDBPyConnection, where: str) -> np.ndarray:
    """Distinct FAISS ids int64 [M] of images matching the SQL ``where`` expression.

    Raises:
        ValueError: the clause is not a single valid WHERE expression over the catalogue's columns.
    """
    if any(token in where for token in _FORBIDDEN):
        raise ValueError(f"--where {where!r}: give one SQL expression, without ';' or comments.")
    try:
        rows = con.execute(f"SELECT DISTINCT id FROM images WHERE ({where})").fetchall()
    except duckdb.Error as err:
        raise ValueError(f"--where {where!r} is not a valid filter on the catalogue ({err}). Use the columns "
                         f"{', '.join(IMAGE_COLUMNS)}, e.g. --where \"label = 'Forest' AND split = 'test'\".") from err
    return np.array([r[0] for r in rows], dtype=np.int64)


def search_vectors(opened: OpenIndex, queries: np.ndarray, k: int = 10, where: str | None = None
                   ) -> list[list[dict[str, Any]]]:
    """Top-``k`` catalogue rows for each L2-normalised query [Q, D]: dicts with ``score`` and every column of
    ``images``. Identical images (one vector) appear as their separate rows; exactly ``k`` rows are returned
    whenever ``k`` matching rows exist."""
    allowed = candidate_ids(opened.con, where) if where else None
    if allowed is not None and len(allowed) == 0:
        return [[] for _ in range(len(queries))]
    scores, ids = opened.search(queries, k, allowed)
    results = []
    for row_scores, row_ids in zip(scores, ids):
        hits = [(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
        results.append(_rows_for(opened.con, hits, where)[:k])
    return results


def _rows_for(con: duckdb.DuckDBPyConnection, hits: list[tuple[int, float]], where: str | None
              ) -> list[dict[str, Any]]:
    """Catalogue rows of the hit ids, in hit order (rows of one id ordered by sample_id)."""
    if not hits:
        return []
    con.register("_hits", {"id": np.array([h[0] for h in hits], dtype=np.int64),
                           "score": np.array([h[1] for h in hits]), "rank": np.arange(len(hits))})
    try:
        images = f"(SELECT * FROM images WHERE ({where}))" if where else "images"
        cursor = con.execute(f"SELECT h.score, i.* FROM _hits h JOIN {images} i ON i.id = h.id "
                             "ORDER BY h.rank, i.sample_id")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        con.unregister("_hits")


def search_image(model: str | Path, image: str | Path, k: int = 10, where: str | None = None,
                 index_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Top-``k`` rows for the image file ``image`` in the index of ``model`` (see :func:`search_vectors`).

    Raises:
        RuntimeError: the index was built with a different export of the model (rebuild it).
    """
    opened = open_index(index_dir_for(index_dir, model))
    try:
        encoder = load_encoder(model)
        if encoder.identity != opened.manifest["model_sha256"]:
            raise RuntimeError(f"the index in {opened.folder} was built with another export of {model!r}: "
                               f"rebuild it with `python -m indexing build --model {model}`.")
        pixels, _ = read_query_image(image, encoder.card)  # [C, S, S]
        query = normalised(encoder.embed(pixels[None]))  # [1, D]
        return search_vectors(opened, query, k, where)[0]
    finally:
        opened.close()


def format_results(rows: list[dict[str, Any]], as_json: bool = False) -> str:
    """Text table (rank, score, label, split, size, path) or a JSON list of ``{id, path, score, label, ...}``."""
    if as_json:
        return json.dumps([{"id": r["id"], "path": r["path"], "score": round(r["score"], 6),
                            **{k: v for k, v in r.items() if k not in ("id", "path", "score")}} for r in rows],
                          indent=1, default=str)
    lines = [f"{'rank':>4}  {'score':>6}  {'label':<22} {'split':<6} {'size':<9} path"]
    for rank, r in enumerate(rows, 1):
        size = f"{r['width']}x{r['height']}" if r["width"] is not None else "?"
        lines.append(f"{rank:>4}  {r['score']:6.3f}  {str(r['label'] or '-'):<22} {str(r['split'] or '-'):<6} "
                     f"{size:<9} {r['path']}")
    return "\n".join(lines)
