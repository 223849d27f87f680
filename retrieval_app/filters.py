"""Catalogue filters from structured fields (labels, splits, date range, bounding box) as parameterised DuckDB.

No text typed by a user reaches SQL: every value is parsed into a typed Python value (list of str, ISO date,
float) and bound as a parameter; the SQL text itself is fixed. The result is the set of FAISS ids allowed, which
the service hands to :func:`indexing.search.search_vectors` through a registered table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

import duckdb
import numpy as np


class FilterError(ValueError):
    """A filter value that cannot be used; ``str(err)`` says which and what to enter."""


@dataclass(frozen=True)
class Filters:
    """Catalogue filters; empty fields filter nothing.

    ``bbox`` is ``(min_lon, min_lat, max_lon, max_lat)`` in degrees (EPSG:4326); ``min_lon > max_lon`` crosses the
    antimeridian. Dates are inclusive ISO dates (``YYYY-MM-DD``); images without a timestamp or location are
    excluded as soon as a date range or bounding box is given.
    """

    labels: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    date_from: date | None = None
    date_to: date | None = None
    bbox: tuple[float, float, float, float] | None = None

    @property
    def empty(self) -> bool:
        return not (self.labels or self.splits or self.date_from or self.date_to or self.bbox)

    def clause(self) -> tuple[str, list[Any]]:
        """``(SQL boolean expression over images, parameters)``; ``("TRUE", [])`` when empty."""
        parts, params = [], []
        if self.labels:
            parts.append("label IN (SELECT unnest(?::VARCHAR[]))")
            params.append(list(self.labels))
        if self.splits:
            parts.append("split IN (SELECT unnest(?::VARCHAR[]))")
            params.append(list(self.splits))
        if self.date_from:
            parts.append("TRY_CAST(timestamp AS TIMESTAMP) >= ?")
            params.append(datetime.combine(self.date_from, datetime.min.time()))
        if self.date_to:
            parts.append("TRY_CAST(timestamp AS TIMESTAMP) <= ?")
            params.append(datetime.combine(self.date_to, datetime.max.time()))
        if self.bbox:
            min_lon, min_lat, max_lon, max_lat = self.bbox
            parts.append("lat BETWEEN ? AND ?")
            params += [min_lat, max_lat]
            parts.append("lon BETWEEN ? AND ?" if min_lon <= max_lon else "(lon >= ? OR lon <= ?)")
            params += [min_lon, max_lon]
        return (" AND ".join(parts) or "TRUE"), params

    def describe(self) -> str:
        """Short words for the UI, e.g. ``label in Forest, River; split test``; '' when empty."""
        words = []
        if self.labels:
            words.append("label in " + ", ".join(self.labels))
        if self.splits:
            words.append("split " + "/".join(self.splits))
        if self.date_from or self.date_to:
            words.append(f"date {self.date_from or '…'} to {self.date_to or '…'}")
        if self.bbox:
            words.append("bbox " + ", ".join(f"{v:g}" for v in self.bbox))
        return "; ".join(words)


def parse_filters(labels: Any = None, splits: Any = None, date_from: Any = None, date_to: Any = None,
                  bbox: Any = None) -> Filters:
    """:class:`Filters` from loosely typed UI/API values (None or '' = no filter).

    Args:
        labels, splits: a list of names or one name.
        date_from, date_to: ISO date strings (``2020-05-01``), dates, or None.
        bbox: four numbers ``(min_lon, min_lat, max_lon, max_lat)``, a comma-separated string of them, or None;
            a list of four Nones counts as none.

    Raises:
        FilterError: a value cannot be parsed or is out of range.
    """
    return Filters(labels=_names(labels, "label"), splits=_names(splits, "split"),
                   date_from=_date(date_from, "from"), date_to=_date(date_to, "to"), bbox=_bbox(bbox))


def allowed_ids(con: duckdb.DuckDBPyConnection, filters: Filters) -> np.ndarray:
    """Distinct FAISS ids int64 [M] of the catalogue rows matching ``filters`` (parameterised query)."""
    clause, params = filters.clause()
    rows = con.execute(f"SELECT DISTINCT id FROM images WHERE {clause}", params).fetchall()
    return np.array([r[0] for r in rows], dtype=np.int64)


def _names(value: Any, what: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    items = [value] if isinstance(value, str) else list(value)
    names = tuple(str(v).strip() for v in items if v is not None and str(v).strip())
    if any(len(n) > 200 for n in names):
        raise FilterError(f"a {what} name is longer than 200 characters: pick {what}s from the list.")
    return names


def _date(value: Any, which: str) -> date | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, (int, float)):  # gradio's DateTime gives a Unix timestamp
        return datetime.fromtimestamp(float(value), timezone.utc).date()
    try:
        return date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise FilterError(f"date {which} {value!r} is not an ISO date: enter it as YYYY-MM-DD, e.g. 2020-05-01.") \
            from None


def _bbox(value: Any) -> tuple[float, float, float, float] | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    if all(v is None or (isinstance(v, str) and not v.strip()) for v in items):
        return None
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 4 or not all(np.isfinite(numbers)):
        raise FilterError(f"bounding box {value!r} needs four numbers: min lon, min lat, max lon, max lat "
                          "(degrees), e.g. -75, 40, -73, 41.")
    min_lon, min_lat, max_lon, max_lat = numbers
    if not (-180 <= min_lon <= 180 and -180 <= max_lon <= 180 and -90 <= min_lat <= max_lat <= 90):
        raise FilterError(f"bounding box {numbers} is out of range: longitudes in [-180, 180], latitudes in "
                          "[-90, 90] with min lat ≤ max lat.")
    return numbers  # type: ignore[return-value]
