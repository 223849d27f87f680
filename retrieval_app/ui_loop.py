"""The page's side of the analyst's loop (:mod:`retrieval_app.finder`), with no gradio import: what the handlers
in :mod:`retrieval_app.ui` compute, as plain values (Markdown, table rows, files), so that they are tested without a
browser. A session lives in the page's state as a :class:`~retrieval_app.finder.SearchSession`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from .filters import Filters
from .finder import MAX_FINDS, Finder, SearchSession, finds_geojson
from .service import QueryError

#: What a click on a result does.
CLICK_MODES = ("explain it", "mark ✓ right", "mark ✗ wrong")
FIND_COLUMNS = ["model", "rank", "score", "sample_id", "label", "lat", "lon"]


def start(finder: Finder, upload: str | None, example: str | None, ranker: str, large: str | None) -> SearchSession:
    """A new session from the page's query: the upload (kept as its embeddings) or the archive example."""
    if upload:
        return finder.new_session(uploads=[finder.upload_example(upload, large)], ranker=ranker)
    if example:
        return finder.new_session([example], ranker=ranker)
    raise QueryError("Start from a query: upload a tile or pick an example, then Search.")


def toggle_mark(finder: Finder, session: SearchSession | None, sample_id: str, verdict: str) -> SearchSession:
    """Mark ``sample_id`` right ("✓") or wrong ("✗"); marking it the same way again clears the mark."""
    if session is None:
        raise QueryError("Search first: marks belong to a search (upload or pick a tile, then Search).")
    positives = [m for m in session.positives if m.sample_id != sample_id]
    negatives = [m for m in session.negatives if m.sample_id != sample_id]
    was = {"✓": len(positives) < len(session.positives), "✗": len(negatives) < len(session.negatives)}
    if not was[verdict]:
        (positives if verdict == "✓" else negatives).append(finder.mark(sample_id))
    session.positives, session.negatives = positives, negatives
    return session


def add_example(finder: Finder, session: SearchSession | None, sample_id: str) -> SearchSession:
    """Add an archive tile to the session's examples (several examples at once)."""
    if session is None:
        raise QueryError("Search first, then add more examples to that search.")
    if sample_id and sample_id not in {m.sample_id for m in session.examples}:
        session.examples.append(finder.mark(sample_id))
    return session


def marks_markdown(session: SearchSession | None) -> str:
    """One line per kind: the examples, the ✓ and the ✗ of the session."""
    if session is None:
        return "No search yet: upload or pick a tile and Search; then mark results ✓ or ✗ and search again."
    examples = [m.sample_id for m in session.examples] + [f"upload {u['name']}" for u in session.uploads]
    lines = [f"**Examples** ({len(examples)}): " + (", ".join(f"`{e}`" for e in examples) or "—"),
             f"**✓ right** ({len(session.positives)}): " + (", ".join(f"`{m.sample_id}`" for m in session.positives)
                                                            or "—"),
             f"**✗ wrong** ({len(session.negatives)}): " + (", ".join(f"`{m.sample_id}`" for m in session.negatives)
                                                            or "—"),
             f"Ranker: {session.ranker}."]
    return "\n\n".join(lines)


def threshold_range(finder: Finder, key: str, session: SearchSession, filters: Filters, top: int = 100
                    ) -> tuple[float, float, float]:
    """(low, high, value) for a model's threshold slider: the score range of its best 2,000 tiles, the value at
    the ``top``-th best."""
    import numpy as np

    scores = np.sort(finder.scores(key, session))[::-1]
    head = scores[: min(2000, len(scores))]
    return float(head[-1]), float(head[0]), float(head[min(top, len(head)) - 1])


def counts_markdown(finder: Finder, session: SearchSession | None, thresholds: dict[str, float], filters: Filters
                    ) -> str:
    """"I-JEPA: 143 tiles score >= 0.61" per model: what Find all would keep."""
    if session is None:
        return ""
    models = finder.service.models
    parts = [f"{models[key].display}: **{finder.counts_above(key, session, [t], filters)[0]:,}** tiles score ≥ {t:.3f}"
             for key, t in thresholds.items()]
    return "; ".join(parts)


def find_all(finder: Finder, session: SearchSession | None, thresholds: dict[str, float], filters: Filters
             ) -> tuple[list[list[Any]], dict[str, dict[str, Any]], str]:
    """(table rows of every find per model, the finds, a one-line summary)."""
    if session is None:
        raise QueryError("Search first: Find all keeps every tile above the thresholds of a search.")
    finds = {key: finder.find_all(key, session, threshold=t, filters=filters) for key, t in thresholds.items()}
    rows = [[key, rank, round(float(h["score"]), 4), h["sample_id"], h.get("label"), h.get("lat"), h.get("lon")]
            for key, found in finds.items() for rank, h in enumerate(found["hits"], 1)]
    summary = "; ".join(f"{key}: {f['count']:,} finds" + (f" (the best {MAX_FINDS:,} listed)" if f["capped"] else "")
                        for key, f in finds.items())
    return rows, finds, summary


def write_finds(finds: dict[str, dict[str, Any]] | None, folder: Path) -> str:
    """The finds as GeoJSON (touching tiles merged into polygons), written now; returns its path."""
    if not finds:
        raise QueryError("Nothing to export yet: press Find all first.")
    path = Path(tempfile.mkdtemp(dir=folder)) / "finds.geojson"
    path.write_text(json.dumps(finds_geojson(finds), indent=1, default=str), encoding="utf-8")
    return str(path)


def write_session(session: SearchSession | None, folder: Path) -> str:
    """The session as a JSON file, written now; returns its path."""
    if session is None:
        raise QueryError("No search to save yet: upload or pick a tile and Search first.")
    path = Path(tempfile.mkdtemp(dir=folder)) / "search-session.json"
    path.write_text(session.to_json(), encoding="utf-8")
    return str(path)


def load_session(finder: Finder, path: str) -> tuple[SearchSession, str]:
    """A saved session and a note of the marks that could not be restored (reported, never dropped silently)."""
    session, missing = finder.load(path)
    note = (f"Loaded {Path(path).name}: {len(session.examples) + len(session.uploads)} example(s), "
            f"{len(session.positives)} ✓, {len(session.negatives)} ✗.")
    if missing:
        note += f" {len(missing)} mark(s) could not be restored: " + "; ".join(missing)
    return session, note
