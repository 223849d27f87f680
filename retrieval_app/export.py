"""Results as CSV and GeoJSON (RFC 7946): a hit's geometry is its footprint (Polygon) where the catalogue has one,
else its centre (Point), else ``null``; the CSV has the centre and the footprint as GeoJSON text."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .service import QueryResult

COLUMNS = ("model", "rank", "score", "sample_id", "label", "split", "path", "lat", "lon", "timestamp", "width",
           "height", "bands", "gsd", "is_query", "also_in", "predicted_class", "knn_class", "footprint")


def result_rows(result: QueryResult) -> list[dict[str, Any]]:
    """One flat dict per (model, hit) with :data:`COLUMNS`, in model then rank order."""
    rows = []
    for key, r in result.models.items():
        for hit in r.hits:
            row = {c: hit.get(c) for c in COLUMNS}
            row.update(model=key, score=round(float(hit["score"]), 6), also_in=" ".join(hit["also_in"]),
                       predicted_class=r.prediction, knn_class=r.knn_prediction)
            rows.append(row)
    return rows


def write_csv(result: QueryResult, path: str | Path) -> Path:
    """Write the rows of :func:`result_rows` to ``path`` (UTF-8, header line)."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(result_rows(result))
    return path


def to_geojson(result: QueryResult) -> dict[str, Any]:
    """A FeatureCollection: one feature per hit, its footprint Polygon, else its centre Point ([lon, lat]), else
    ``null`` geometry; the centre is also kept as the ``centre`` property of a Polygon feature."""
    features = []
    for row in result_rows(result):
        located = row["lat"] is not None and row["lon"] is not None
        centre = [row["lon"], row["lat"]] if located else None
        if row["footprint"]:
            geometry = json.loads(row["footprint"])
        else:
            geometry = {"type": "Point", "coordinates": centre} if located else None
        properties = {k: v for k, v in row.items() if k not in ("lat", "lon", "footprint")}
        if row["footprint"] and centre:
            properties["centre"] = centre
        features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    return {"type": "FeatureCollection", "features": features,
            "properties": {"k": result.k, "filters": result.filters.describe(), "note": result.query.note}}


def write_geojson(result: QueryResult, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(to_geojson(result), indent=1, default=str), encoding="utf-8")
    return path
