"""The gradio UI over :class:`retrieval_app.service.RetrievalService` (the only module that imports gradio).

``create_demo(services)`` builds the Blocks over one service per archive (an "Archive" selector when there are
several); nothing is loaded or launched at import. Each action has a named API
endpoint usable with ``gradio_client``: ``/query`` (everything the page shows), ``/classify`` (JSON),
``/explain`` (heat maps), ``/export`` (CSV + GeoJSON files) and ``/examples`` (catalogue examples); each takes
the archive's name last (default: the first archive). Errors the
user can fix are shown as messages (``gr.Error``), never stack traces; anything unexpected is logged with its
traceback on the server and reported as an internal error, and the server keeps serving.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from starlette.middleware import Middleware

from training.data import UnreadableImageError

from . import ui_loop
from .export import write_csv, write_geojson
from .http_cache import FileCacheHeaders
from .filters import FilterError, parse_filters
from .finder import DEFAULT_RANKER, Finder, SessionError
from .loop import RANKERS
from .images import ImageFiles
from .plots import results_map
from .web_map import BASEMAP, MAP_HTML, STATIC_DIR, archive_tiles, head_html, map_data
from .service import QueryError, QueryResult, RetrievalService
from .tile_server import TileServer
from .upload import LARGE_MODES, UPLOAD_HARD_CAP, UploadError

logger = logging.getLogger(__name__)

#: Errors whose message is meant for the user.
USER_ERRORS = (UploadError, QueryError, FilterError, SessionError, UnreadableImageError, FileNotFoundError)
FILE_TYPES = [".jpg", ".jpeg", ".png", ".tif", ".tiff", ".gif", ".webp", ".bmp"]
MAX_GALLERY = 50
IMAGES_SUBDIR = "images"  # rendered images (previews, chips' thumbnails, maps) under the export folder
#: Gallery captions wrap instead of being cut (the label, split and ★ must stay readable). The result galleries are
#: as tall as their rows of results: gradio keeps a gallery 450 px tall at least (a blank area under two rows), so
#: ``.results-gallery`` lowers that floor to an empty gallery's 120 px.
CSS = """
.satjepa-draw { background: #fff; border: 2px solid rgba(0,0,0,.2); border-radius: 4px; padding: 4px 8px;
  cursor: pointer; font: 12px sans-serif; }
.satjepa-draw.active { background: #e4572e; color: #fff; }
.gallery-item .caption-label, .thumbnail-item .caption-label { white-space: normal !important;
  overflow: visible !important; text-overflow: clip !important; font-size: 12px; line-height: 1.25; }
.results-gallery .grid-wrap.fixed-height { min-height: 120px !important; }
"""
SCORE_NOTE = ("Scores are the cosine similarity of the two images' embeddings (centred on the archive's mean): "
              "1 = the same direction, 0 = unrelated; only their order within one model is meaningful.")


Services = RetrievalService | dict[str, RetrievalService]


def _by_name(services: Services) -> dict[str, RetrievalService]:
    """``{archive name: service}`` (a single service is named "archive")."""
    return dict(services) if isinstance(services, dict) else {"archive": services}


def launch_options(services: Services) -> dict[str, Any]:
    """Keyword arguments of ``Blocks.launch`` that keep the app safe and offline: only the archives are served,
    uploads are size-limited (the app refuses one over its limit in its own words; gradio's cap is a guard far
    above it), system fonts (no font CDN), no server-side rendering, no API-less sharing; the files it serves may be
    cached by the browser (``http_cache``)."""
    allowed = sorted({path for service in _by_name(services).values() for path in service.allowed_paths()})
    return {"allowed_paths": allowed, "max_file_size": UPLOAD_HARD_CAP, "ssr_mode": False,
            "share": False, "theme": gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                                       font_mono=["ui-monospace", "monospace"]),
            "css": CSS, "head": head_html(), "footer_links": ["api"],
            "app_kwargs": {"middleware": [Middleware(FileCacheHeaders)]}}  # thumbnails reused, not asked again


def tile_roots(services: Services, export_dir: str | Path) -> list[Path]:
    """The folders a :class:`TileServer` for ``create_demo(services, export_dir)`` serves: the archives and the
    app's rendered thumbnails (``<export_dir>/images``)."""
    archives = sorted({Path(p) for service in _by_name(services).values() for p in service.allowed_paths()})
    return [*archives, Path(export_dir) / IMAGES_SUBDIR]


def _request_headers() -> dict[str, str] | None:
    """The headers of the request being answered (gradio's context of the running event), None outside one."""
    from gradio.context import LocalContext

    request = LocalContext.request.get(None)
    return dict(request.headers) if request is not None and request.headers is not None else None


def _guarded(fn: Callable) -> Callable:
    """Turn user errors into ``gr.Error`` messages and unexpected ones into a logged internal error."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except USER_ERRORS as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception:  # the UI boundary: log the traceback, show a message, keep serving
            logger.exception("internal error in %s", fn.__name__)
            raise gr.Error("Internal error while handling this request; the server log has the details. "
                           "Try another tile.", print_exception=False) from None

    return wrapped


def _serve_in_place(folders: list[str | Path]) -> None:
    """Let gradio serve files under ``folders`` where they are, never copied into its cache per response.

    Gradio checks every output file against its static paths in order, resolving both paths each time (a
    ``realpath`` per folder and file: 12 % of the server's CPU under load with the archives listed last), so the
    folders come most-used first: the archives (each result's thumbnail), then the rendered images."""
    gr.set_static_paths(list(dict.fromkeys(Path(f).resolve() for f in folders)))


def _caption(hit: dict[str, Any]) -> str:
    """Label first (what a user scans for), then split, rank and score; ★ = also found by the other model; the
    centre's lat, lon where known. An unlabelled archive's captions start at the rank."""
    flags = (" ★" if hit["also_in"] else "") + (" (the query itself)" if hit["is_query"] else "")
    where = f" · {hit['lat']:.4f}, {hit['lon']:.4f}" if hit.get("lat") is not None else ""
    what = " · ".join(str(v) for v in (hit.get("label"), hit.get("split")) if v)
    return f"{what}{flags} · " * bool(what) + f"#{hit['rank']} {hit['score']:.3f}" + ("" if what else flags) + where


def _placeholder(*lines: str, width: int = 640, height: int = 120) -> np.ndarray:
    im = Image.new("RGB", (width, height), (245, 245, 245))
    draw, font = ImageDraw.Draw(im), ImageFont.load_default(size=20)
    for n, line in enumerate(lines):
        draw.text((20, height // 2 - 14 * len(lines) + 28 * n), line, fill=(70, 70, 70), font=font)
    return np.asarray(im)


def create_demo(services: Services, export_dir: str | Path | None = None, tiles: TileServer | None = None
                ) -> gr.Blocks:
    """The app: pick an archive, upload or pick a tile; per model side by side, neighbours, classes, match heat
    maps and a map of the results. ``services``: one :class:`RetrievalService` or ``{archive name: service}``
    (the same models in each). ``tiles``: a running tile server over ``tile_roots(services, export_dir)``: the
    galleries' thumbnails are then fetched from it (else, and behind a proxy, from gradio's file route)."""
    services = _by_name(services)
    names = list(services)
    # Model slots, side by side: the first archive's model keys name them (elements, the explanation's choices);
    # each archive fills them with its own models, in order (its default models may differ: assets/located's are
    # the AID-trained ones).
    keys = list(services[names[0]].models)
    for name, service in services.items():
        if len(service.models) != len(keys):
            raise ValueError(f"archive {name!r} is served with {len(service.models)} models, the first with "
                             f"{len(keys)}: give every archive as many models (side by side, slot by slot)")
    slots = {name: dict(zip(keys, service.models)) for name, service in services.items()}  # slot -> model key
    display = {key: model.display for key, model in services[names[0]].models.items()}
    head_name = {key: model.panel_title for key, model in services[names[0]].models.items()}
    labels = {name: s.catalogue_values("label") for name, s in services.items()}
    splits = {name: s.catalogue_values("split") for name, s in services.items()}
    examples = {name: s.examples() for name, s in services.items()}
    finders = {name: Finder(service) for name, service in services.items()}
    export_root = Path(export_dir or tempfile.mkdtemp(prefix="satjepa-exports-"))
    images = ImageFiles(export_root / IMAGES_SUBDIR)
    _serve_in_place([*sorted({p for s in services.values() for p in s.allowed_paths()}), images.folder,
                     STATIC_DIR, BASEMAP.parent])
    no_map = images.path(_placeholder("No locations: this archive's images carry no coordinates.",
                                      "Choose a located archive to see a map."))  # drawn once, not per query

    def _service(archive: str | None) -> RetrievalService:
        if not archive:
            return services[names[0]]
        if archive not in services:
            raise QueryError(f"unknown archive {archive!r}: choose one of {', '.join(map(repr, names))}.")
        return services[archive]

    def _query(upload, example, k, label_filter, split_filter, date_from, date_to, bbox, large, archive
               ) -> QueryResult:
        filters = parse_filters(label_filter, split_filter, date_from, date_to, bbox)
        image, example = (upload, None) if upload else (None, example or None)
        return _service(archive).query(image, int(k or 10), filters, example=example,
                                       large=large or LARGE_MODES[0])

    def _exports(result: QueryResult) -> tuple[str, str]:
        folder = Path(tempfile.mkdtemp(dir=export_root))
        return str(write_csv(result, folder / "results.csv")), str(write_geojson(result, folder / "results.geojson"))

    @_guarded
    def run_query(upload, example, k, label_filter, split_filter, date_from, date_to, bbox, large, archive,
                  picture=True):
        result = _query(upload, example, k, label_filter, split_filter, date_from, date_to, bbox, large, archive)
        return render(archive, result, picture=picture)

    def _picture(archive: str | None, result: QueryResult, wanted: bool) -> Any:
        """The results as a picture map (a file), drawn only when ``wanted``: its accordion is open, or the caller
        is the API (a located archive's picture costs about as much as the search itself)."""
        if not wanted:
            return gr.skip()
        service = _service(archive)
        located = results_map(result, lambda extent: service.map_chips(extent.bounds()))
        return images.path(located) if located is not None else no_map

    def render(archive: str | None, result: QueryResult, preview: bool = True, picture: bool = True) -> list[Any]:
        """Everything the page shows of one result (a query, or a search with marks): status, the query as the
        models see it (unless ``preview`` is off), per model probabilities, kNN vote and gallery, the picture map
        (if ``picture``), the export files cleared (they are written on demand), the result ids, the explanation's
        model and result, the interactive map's data and the result itself (for the picture map, when asked)."""
        service = _service(archive)
        notes = [result.query.note] if result.query.note else []
        notes += [f"{r.display}: {r.note}" for r in result.models.values() if r.note]
        if not result.filters.empty:
            notes.append(f"Filters: {result.filters.describe()}.")
        timing = ", ".join(f"{r.display} embed {r.timings_ms['embed']:.0f} ms + search {r.timings_ms['search']:.0f} ms"
                           for r in result.models.values())
        status = "\n\n".join([result.summary(), *notes, f"<small>{SCORE_NOTE}</small>",
                                f"<small>total {result.timings_ms['total']:.0f} ms; {timing}</small>"])
        outputs: list[Any] = [status, images.path(_preview(result.query.display)) if preview else gr.skip()]
        state = {}
        headers = _request_headers() if tiles is not None else None  # where the page reaches the tile server
        for slot, key in zip(keys, service.models):
            r = result.models[key]
            outputs += [r.probabilities or {}, r.knn or {},
                        [(_file(service.thumbnail(key, h), headers), _caption(h)) for h in r.hits[:MAX_GALLERY]]]
            state[slot] = [h["sample_id"] for h in r.hits]
        outputs.append(_picture(archive, result, picture))
        outputs += [None, None]  # the CSV and GeoJSON are written when asked ("Export these results"), not per query
        first = state[keys[0]]
        outputs += [state, gr.Radio(value=keys[0]), gr.Dropdown(choices=first, value=first[0] if first else None)]
        outputs.append(map_data(service, result, images, _map_tiles(service)) or {})
        outputs.append((archive, result))
        return outputs

    map_tiles: dict[int, list[dict[str, Any]]] = {}  # id(service) -> its archive's chips on the map, made once

    def _map_tiles(service: RetrievalService) -> list[dict[str, Any]]:
        if id(service) not in map_tiles:
            map_tiles[id(service)] = archive_tiles(service, images)
        return map_tiles[id(service)]

    def _file(thumbnail: str | np.ndarray, headers: dict[str, str] | None) -> str:
        """A gallery's image: the tile server's URL of the thumbnail's file where the page (which sent
        ``headers``) can reach it, else the file's path (gradio serves it)."""
        path = thumbnail if isinstance(thumbnail, str) else images.path(thumbnail)
        return (tiles.url(path, headers) if tiles is not None else None) or path

    @_guarded
    def preview_upload(upload, large, archive):
        """The uploaded tile as the models will see it, shown as soon as it is uploaded."""
        if not upload:
            return None
        return images.path(_preview(_service(archive).decode(upload, large=large or LARGE_MODES[0]).display))

    @_guarded
    def run_export(upload, example, k, label_filter, split_filter, date_from, date_to, bbox, large, archive):
        return list(_exports(_query(upload, example, k, label_filter, split_filter, date_from, date_to, bbox, large,
                                    archive)))

    @_guarded
    def run_explain(upload, example, model, result_id, large, archive):
        if not result_id:
            raise QueryError("Choose a result to explain (run a query, then click a gallery image).")
        service = _service(archive)
        model = dict(zip(keys, service.models)).get(model, model)  # a slot names the archive's model there
        image, example = (upload, None) if upload else (None, example or None)
        out = service.explain(model, result_id, image, example=example, large=large or LARGE_MODES[0])
        text = (f"**{service.models[model].display}**, result `{result_id}` (embedding cosine {out['score']:.3f}). "
                f"Each patch is coloured by its best patch-to-patch token cosine in the other image "
                f"(dark {out['low']:.2f} → yellow {out['high']:.2f}; mean best match over the query "
                f"{out['mean_best']:.2f}). Bright areas are what matched.")
        return images.path(out["query"]), images.path(out["result"]), text

    def _finder(archive: str | None) -> Finder:
        return finders[archive if archive in finders else names[0]]

    def _sliders(finder: Finder, session, filters) -> tuple[list[Any], str]:
        """Each model's threshold slider over its best scores, set at its 100th best; and what those keep."""
        sliders, values = [], {}
        for key in finder.service.models:
            low, high, value = (round(v, 4) for v in ui_loop.threshold_range(finder, key, session, filters))
            sliders.append(gr.Slider(minimum=low, maximum=high, value=value))
            values[key] = value
        return sliders, ui_loop.counts_markdown(finder, session, values, filters)

    @_guarded
    def start_loop(upload, example, ranker, large, label_filter, split_filter, date_from, date_to, bbox, archive):
        """After a query: a new search session from it, the thresholds set to its scores."""
        finder = _finder(archive)
        filters = parse_filters(label_filter, split_filter, date_from, date_to, bbox)
        session = ui_loop.start(finder, upload, example, ranker, large)
        sliders, counts = _sliders(finder, session, filters)
        return [session, ui_loop.marks_markdown(session), *sliders, counts]

    @_guarded
    def run_loop(session, ranker, k, label_filter, split_filter, date_from, date_to, bbox, archive, picture=True):
        """Search again with the session's examples and marks: the galleries show the best unmarked tiles."""
        if session is None:
            raise QueryError("Search first (upload or pick a tile), then mark results and search again.")
        finder, filters = _finder(archive), parse_filters(label_filter, split_filter, date_from, date_to, bbox)
        session.ranker = ranker or session.ranker
        result = finder.search_result(session, int(k or 10), filters)
        sliders, counts = _sliders(finder, session, filters)
        return [*render(archive, result, preview=False, picture=picture), session, ui_loop.marks_markdown(session),
                *sliders, counts]

    @_guarded
    def on_threshold(session, label_filter, split_filter, date_from, date_to, bbox, archive, *thresholds):
        filters, finder = parse_filters(label_filter, split_filter, date_from, date_to, bbox), _finder(archive)
        return ui_loop.counts_markdown(finder, session, dict(zip(finder.service.models, thresholds)), filters)

    @_guarded
    def run_find_all(session, picture, label_filter, split_filter, date_from, date_to, bbox, archive, *thresholds):
        """Every tile above each model's threshold: the list, the maps; exported only when asked."""
        finder, filters = _finder(archive), parse_filters(label_filter, split_filter, date_from, date_to, bbox)
        rows, finds, summary = ui_loop.find_all(finder, session, dict(zip(finder.service.models, thresholds)), filters)
        result = finder.search_result(session, 1, filters)
        for key in finder.service.models:
            result.models[key].hits = [{**h, "rank": n, "also_in": [], "is_query": False}
                                       for n, h in enumerate(finds[key]["hits"][:500], 1)]
        service = _service(archive)
        return (rows, summary, finds, _picture(archive, result, picture),
                map_data(service, result, images, _map_tiles(service), kind="find") or {}, (archive, result))

    def show_picture(drawn):
        """The picture map's accordion opened: draw the results last shown, and draw them from now on."""
        return (gr.skip() if drawn is None else _picture(drawn[0], drawn[1], True)), True

    def clicker(key: str) -> Callable:
        """Gallery click handler of model ``key``: choose the result for the explanation, or mark it ✓ / ✗ (the
        same mark again clears it)."""

        @_guarded
        def click(state, session, mode, archive, evt: gr.SelectData):
            ids = (state or {}).get(key, [])
            chosen = ids[evt.index] if isinstance(evt.index, int) and evt.index < len(ids) else None
            if mode == ui_loop.CLICK_MODES[0] or chosen is None:
                return gr.Radio(value=key), gr.Dropdown(choices=ids, value=chosen), session, gr.skip()
            verdict = "✓" if mode == ui_loop.CLICK_MODES[1] else "✗"
            session = ui_loop.toggle_mark(_finder(archive), session, chosen, verdict)
            return gr.skip(), gr.skip(), session, ui_loop.marks_markdown(session)

        return click

    def explain_if_asked(mode, upload, example, model, result_id, large, archive):
        if mode != ui_loop.CLICK_MODES[0]:
            return gr.skip(), gr.skip(), gr.skip()
        return run_explain(upload, example, model, result_id, large, archive)

    @_guarded
    def query_from(sample_id, k, label_filter, split_filter, date_from, date_to, bbox, large, archive, picture=True):
        """A new query from an archive tile (a result, or the tile at a place): the example, no upload."""
        if not sample_id:
            raise QueryError("Choose a result first (click one in a gallery), or type a place.")
        outputs = run_query(None, sample_id, k, label_filter, split_filter, date_from, date_to, bbox, large, archive,
                            picture)
        return [*outputs, gr.Dropdown(value=sample_id), None]

    @_guarded
    def query_from_place(place, k, label_filter, split_filter, date_from, date_to, bbox, large, archive,
                         picture=True):
        try:
            lat, lon = (float(v) for v in str(place).replace(";", ",").split(","))
        except ValueError:
            raise QueryError(f"{place!r} is not a place: type latitude, longitude in degrees, e.g. 47.03, -99.15.")
        sample_id, km = _finder(archive).tile_at(lat, lon)
        gr.Info(f"The archive tile at ({lat:.4f}, {lon:.4f}): {sample_id} ({km:.2f} km from its centre).")
        return query_from(sample_id, k, label_filter, split_filter, date_from, date_to, bbox, large, archive, picture)

    @_guarded
    def run_add_example(session, sample_id, archive):
        session = ui_loop.add_example(_finder(archive), session, sample_id)
        return session, ui_loop.marks_markdown(session)

    @_guarded
    def run_load_session(path, archive):
        if not path:
            return gr.skip(), gr.skip()
        session, note = ui_loop.load_session(_finder(archive), path)
        return session, note + "\n\n" + ui_loop.marks_markdown(session)

    def on_model(model, state):
        ids = (state or {}).get(model, [])
        return gr.Dropdown(choices=ids, value=ids[0] if ids else None)

    def on_archive(archive):
        """Another archive: its examples and filter values; the previous results' ids no longer apply; the kNN
        panels only where the archive has labels to vote with (the status says why there is no vote)."""
        name = archive if archive in services else names[0]
        models = list(services[name].models.values())
        knn_panels = [gr.Label(value=None, label=f"{m.display}: kNN vote of the neighbours", visible=bool(labels[name]))
                      for m in models]
        heads = [gr.Label(value=None, label=f"{m.display}: {m.panel_title}") for m in models]
        titles = [f"## {m.display}: most similar scenes" for m in models]
        sliders = [gr.Slider(label=f"{m.display}: keep tiles scoring at least") for m in models]
        explain_choices = gr.Radio(choices=[(m.display, slot) for slot, m in zip(keys, models)], value=keys[0])
        return (gr.Dropdown(choices=examples[name], value=None), gr.Dropdown(choices=labels[name], value=[]),
                gr.CheckboxGroup(choices=splits[name], value=[]), {}, gr.Dropdown(choices=[], value=None),
                *knn_panels, *heads, *titles, *sliders, None, ui_loop.marks_markdown(None), explain_choices)

    with gr.Blocks(title="satjepa: I-JEPA vs MAE retrieval", analytics_enabled=False) as demo:
        gr.Markdown("# satjepa — query by image, I-JEPA vs MAE side by side\n"
                    "Upload a satellite tile (JPEG, PNG or GeoTIFF) or pick an example from the archive; each model "
                    "shows its most similar scenes, its predicted class (by the head its panel names) "
                    "and the kNN vote of its neighbours. Click a result to see **why it matched**.")
        state = gr.State({})
        with gr.Row():
            with gr.Column(scale=1):
                archive = gr.Dropdown(names, value=names[0], label="Archive to search", elem_id="archive",
                                      visible=len(names) > 1)
                upload = gr.File(label="Query tile (JPEG, PNG, GeoTIFF; also single-frame GIF, WebP, BMP)",
                                 file_types=FILE_TYPES, type="filepath", elem_id="upload")
                example = gr.Dropdown(choices=examples[names[0]], value=None, label="…or an example from the archive",
                                      elem_id="example", allow_custom_value=True)
                with gr.Row():
                    place = gr.Textbox(label="…or the tile at a place (lat, lon)", placeholder="47.03, -99.15",
                                       elem_id="place", scale=3)
                    place_button = gr.Button("Search here", elem_id="search-place", scale=1)
                k = gr.Slider(1, MAX_GALLERY, value=10, step=1, label="k (neighbours per model)")
                large = gr.Radio(list(LARGE_MODES), value=LARGE_MODES[0], label="GeoTIFF larger than a chip")
                with gr.Accordion("Filters", open=False, elem_id="filters"):
                    label_filter = gr.Dropdown(choices=labels[names[0]], multiselect=True, label="Labels")
                    split_filter = gr.CheckboxGroup(choices=splits[names[0]], label="Splits")
                    with gr.Row():
                        date_from = gr.Textbox(label="Date from", placeholder="YYYY-MM-DD")
                        date_to = gr.Textbox(label="Date to", placeholder="YYYY-MM-DD")
                    bbox = gr.Textbox(label="Bounding box", placeholder="min lon, min lat, max lon, max lat",
                                      elem_id="bbox")
                search = gr.Button("Search", variant="primary", elem_id="search")
            with gr.Column(scale=1):
                query_view = gr.Image(label="Query as the models see it", interactive=False, height=256,
                                      elem_id="query-view")
                status = gr.Markdown(elem_id="status")
        galleries: list[gr.components.Component] = []
        titles: list[gr.components.Component] = []
        with gr.Row(equal_height=True):
            for key in keys:
                with gr.Column(elem_id=f"model-{key}"):
                    titles.append(gr.Markdown(f"## {display[key]}: most similar scenes", elem_id=f"title-{key}"))
                    galleries.append(gr.Gallery(show_label=False, columns=5, height="auto", object_fit="cover",
                                                elem_id=f"gallery-{key}", elem_classes=["results-gallery"],
                                                allow_preview=False))
        class_labels: list[gr.components.Component] = []
        with gr.Row(equal_height=True):
            for key in keys:
                with gr.Column():
                    class_labels.append(gr.Label(label=f"{display[key]}: {head_name[key]}",
                                                 num_top_classes=5, elem_id=f"head-{key}"))
                    class_labels.append(gr.Label(label=f"{display[key]}: kNN vote of the neighbours",
                                                 num_top_classes=5, visible=bool(labels[names[0]]),
                                                 elem_id=f"knn-{key}"))
        session_state, finds_state = gr.State(None), gr.State(None)
        # The picture map is drawn while its accordion is open. API callers get it with every result (True); the
        # page starts with its accordion closed (False, set on load).
        picture_wanted, drawn = gr.State(True), gr.State(None)  # drawn: (archive, result) last shown
        with gr.Accordion("Find every scene like these: mark results ✓ / ✗, search again, keep all above a score",
                          open=True, elem_id="loop"):
            with gr.Row():
                click_mode = gr.Radio(list(ui_loop.CLICK_MODES), value=ui_loop.CLICK_MODES[0],
                                      label="A click on a result will", elem_id="click-mode")
                ranker = gr.Radio(sorted(RANKERS), value=DEFAULT_RANKER, label="Ranker (benchmarks/bench_loop.py)",
                                  elem_id="ranker")
                with gr.Column():
                    loop_button = gr.Button("Search again with the marks", variant="primary", elem_id="search-marks")
                    with gr.Row():
                        add_example = gr.Button("Add the chosen result as an example", elem_id="add-example")
                        search_with = gr.Button("Search with the chosen result", elem_id="search-with")
            marks_view = gr.Markdown(ui_loop.marks_markdown(None), elem_id="marks")
            with gr.Row():
                thresholds = [gr.Slider(0, 1, value=0.5, step=0.0001, label=f"{display[key]}: keep tiles scoring at least",
                                        elem_id=f"threshold-{key}") for key in keys]
            counts = gr.Markdown(elem_id="counts")
            with gr.Row():
                find_button = gr.Button("Find all", variant="primary", elem_id="find-all")
                export_finds = gr.Button("Export the finds (GeoJSON, touching tiles merged)", elem_id="export-finds")
                save_session = gr.Button("Save the search session", elem_id="save-session")
            finds_summary = gr.Markdown(elem_id="finds-summary")
            finds_table = gr.Dataframe(headers=ui_loop.FIND_COLUMNS, interactive=False, elem_id="finds", max_height=320)
            with gr.Row():
                finds_file = gr.File(label="Finds (GeoJSON)", interactive=False, elem_id="finds-file")
                session_file = gr.File(label="Search session (JSON)", interactive=False, elem_id="session-file")
                load_session = gr.File(label="Load a search session (JSON)", file_types=[".json"], type="filepath",
                                       elem_id="load-session")
        with gr.Row():
            with gr.Column():
                gr.Markdown("### Why this match\nClick a result (while *A click on a result will* is *explain it*) "
                            "or choose one below: heat maps are made on demand, not for every search.")
                with gr.Row():
                    explain_model = gr.Radio([(display[k], k) for k in keys], value=keys[0], label="Model",
                                             elem_id="explain-model")
                    explain_id = gr.Dropdown(choices=[], label="Result (sample id)", allow_custom_value=True)
                explain_button = gr.Button("Explain", elem_id="explain")
                with gr.Row():
                    heat_query = gr.Image(label="Query: best match per patch", interactive=False, height=256,
                                          elem_id="heat-query")
                    heat_result = gr.Image(label="Result: best match per patch", interactive=False, height=256,
                                           elem_id="heat-result")
                explain_text = gr.Markdown()
            with gr.Column():
                gr.Markdown("### Map of the results (offline)")
                gr.HTML(MAP_HTML, elem_id="map-panel")
                map_json = gr.JSON(visible=False, elem_id="map-data")
                with gr.Accordion("The map as a picture (for reports)", open=False) as picture_panel:
                    result_map = gr.Image(label="Locations", show_label=False, interactive=False,
                                          elem_id="result-map")
                export_button = gr.Button("Export these results (CSV + GeoJSON)", elem_id="export")
                with gr.Row():
                    csv_file = gr.File(label="CSV", interactive=False, elem_id="csv-file")
                    geojson_file = gr.File(label="GeoJSON", interactive=False, elem_id="geojson-file")

        inputs = [upload, example, k, label_filter, split_filter, date_from, date_to, bbox, large, archive]
        explain_inputs = [upload, example, explain_model, explain_id, large, archive]
        explain_outputs = [heat_query, heat_result, explain_text]
        per_model = [c for a, b, g in zip(class_labels[::2], class_labels[1::2], galleries) for c in (a, b, g)]
        page = [status, query_view, *per_model, result_map, csv_file, geojson_file, state, explain_model, explain_id,
                map_json, drawn]
        filter_inputs = [label_filter, split_filter, date_from, date_to, bbox]
        loop_outputs = [session_state, marks_view, *thresholds, counts]

        def after_query(event) -> None:
            """A query starts a search session from itself. Heat maps are made on demand (a click on a result,
            or Explain), not for every search."""
            event.success(start_loop, [upload, example, ranker, large, *filter_inputs, archive], loop_outputs,
                          api_visibility="private")

        after_query(search.click(run_query, [*inputs, picture_wanted], page, api_name="query"))
        after_query(place_button.click(query_from_place, [place, k, *filter_inputs, large, archive, picture_wanted],
                                       [*page, example, upload], api_visibility="private"))
        after_query(search_with.click(query_from, [explain_id, k, *filter_inputs, large, archive, picture_wanted],
                                      [*page, example, upload], api_visibility="private"))
        loop_button.click(run_loop, [session_state, ranker, k, *filter_inputs, archive, picture_wanted],
                          [*page, *loop_outputs],
                          api_visibility="private")
        for slider in thresholds:
            slider.input(on_threshold, [session_state, *filter_inputs, archive, *thresholds], [counts],
                         api_visibility="private", trigger_mode="always_last")
        find_button.click(run_find_all, [session_state, picture_wanted, *filter_inputs, archive, *thresholds],
                          [finds_table, finds_summary, finds_state, result_map, map_json, drawn],
                          api_visibility="private")
        picture_panel.expand(show_picture, [drawn], [result_map, picture_wanted], api_visibility="private")
        picture_panel.collapse(lambda: False, None, picture_wanted, api_visibility="private")
        demo.load(lambda: False, None, picture_wanted, api_visibility="private")  # the page: accordion closed
        map_json.change(None, [map_json], None, js="(data) => { window.satjepaMap && window.satjepaMap.show(data); }")
        export_finds.click(_guarded(lambda finds: ui_loop.write_finds(finds, export_root)), [finds_state],
                           [finds_file], api_visibility="private")
        save_session.click(_guarded(lambda session: ui_loop.write_session(session, export_root)), [session_state],
                           [session_file], api_visibility="private")
        load_session.upload(run_load_session, [load_session, archive], [session_state, marks_view],
                            api_visibility="private")
        add_example.click(run_add_example, [session_state, explain_id, archive], [session_state, marks_view],
                          api_visibility="private")
        upload.upload(preview_upload, [upload, large, archive], [query_view], api_visibility="private")
        archive.change(on_archive, [archive], [example, label_filter, split_filter, state, explain_id,
                                               *class_labels[1::2], *class_labels[::2], *titles, *thresholds,
                                               session_state, marks_view, explain_model], api_visibility="private")
        explain_button.click(run_explain, explain_inputs, explain_outputs, api_name="explain")
        explain_model.input(on_model, [explain_model, state], [explain_id], api_visibility="private")
        for key, gallery in zip(keys, galleries):
            gallery.select(clicker(key), [state, session_state, click_mode, archive],
                           [explain_model, explain_id, session_state, marks_view], api_visibility="private") \
                .then(explain_if_asked, [click_mode, *explain_inputs], explain_outputs, api_visibility="private")
        export_button.click(run_export, inputs, [csv_file, geojson_file], api_name="export")

        @_guarded
        def classify(upload, example, large, archive):
            image, example = (upload, None) if upload else (None, example or None)
            return _service(archive).classify(image, example=example, large=large or LARGE_MODES[0])

        def list_examples(archive: str = names[0]) -> list[list[str]]:
            """``[caption, sample_id]`` of catalogue images of ``archive`` to use as ``example``."""
            _service(archive)
            return [list(e) for e in examples[archive]]

        hidden = gr.Button("classify", visible=False)
        classes_json = gr.JSON(visible=False)
        hidden.click(classify, [upload, example, large, archive], classes_json, api_name="classify",
                     api_description="Per model: linear-probe probabilities, kNN vote (k = 20), predicted classes.")
        gr.api(list_examples, api_name="examples")

        # The loop as API endpoints: a session travels as its JSON form (the file "Save session" writes).
        def loop_start(example: str, ranker: str = DEFAULT_RANKER, archive: str = names[0]) -> dict:
            """A new search session from an archive tile (a sample id, e.g. from /examples, /loop_place or a
            result)."""
            return _guarded(lambda: _finder(archive).new_session([example], ranker=ranker).to_dict())()

        def loop_place(lat: float, lon: float, archive: str = names[0]) -> dict:
            """The archive tile at a place: ``{"sample_id", "km"}`` (distance from its centre)."""
            return _guarded(lambda: dict(zip(("sample_id", "km"), _finder(archive).tile_at(lat, lon))))()

        def loop_mark(session: dict, sample_id: str, verdict: str, archive: str = names[0]) -> dict:
            """The session with ``sample_id`` marked "✓" (right) or "✗" (wrong); the same mark again clears it."""
            def mark():
                finder = _finder(archive)
                if verdict not in ("✓", "✗"):
                    raise QueryError(f"verdict {verdict!r}: give '✓' (right) or '✗' (wrong).")
                return ui_loop.toggle_mark(finder, finder.load(session)[0], sample_id, verdict).to_dict()
            return _guarded(mark)()

        def loop_search(session: dict, k: int = 20, archive: str = names[0]) -> dict:
            """Per model, the best ``k`` unmarked tiles under the session's ranker: ``{model: [hit, ...]}``."""
            def search():
                finder = _finder(archive)
                loaded = finder.load(session)[0]
                return {key: [_json_hit(h) for h in finder.search(key, loaded, int(k))] for key in finder.service.models}
            return _guarded(search)()

        def loop_find_all(session: dict, thresholds: dict | None = None, top_n: int | None = None,
                          archive: str = names[0]) -> dict:
            """Per model every tile scoring >= its threshold (``{model: score}``), or the best ``top_n``, with the
            finds merged into polygons: ``{"finds": {model: {"count", "hits"}}, "geojson": FeatureCollection}``."""
            def find():
                finder = _finder(archive)
                loaded = finder.load(session)[0]
                finds = {key: finder.find_all(key, loaded, threshold=(thresholds or {}).get(key), top_n=top_n)
                         for key in finder.service.models}
                from .finder import finds_geojson

                return {"finds": {key: {"count": f["count"], "threshold": f["threshold"],
                                        "hits": [_json_hit(h) for h in f["hits"]]} for key, f in finds.items()},
                        "geojson": json.loads(json.dumps(finds_geojson(finds), default=str))}
            return _guarded(find)()

        def loop_load(session: dict, archive: str = names[0]) -> dict:
            """Check a saved session against the archive: ``{"session", "missing": [what could not be restored]}``."""
            def load():
                loaded, missing = _finder(archive).load(session)
                return {"session": loaded.to_dict(), "missing": missing}
            return _guarded(load)()

        for endpoint in (loop_start, loop_place, loop_mark, loop_search, loop_find_all, loop_load):
            gr.api(endpoint, api_name=endpoint.__name__)
    return demo


def _json_hit(hit: dict[str, Any]) -> dict[str, Any]:
    """A hit as JSON values (scores as floats; the archive file as ``file``: gradio_client would fetch a ``path``)."""
    return {("file" if k == "path" else k): (float(v) if isinstance(v, (np.floating, float)) else v)
            for k, v in hit.items() if k not in ("also_in", "is_query")}


def _preview(display: np.ndarray, size: int = 256) -> Image.Image:
    return Image.fromarray(display).resize((size, size), Image.NEAREST)
