// satjepa's interactive map (Leaflet, bundled: static/leaflet, BSD-2-Clause). Offline: the basemap is the
// bundled Natural Earth country outlines and the imagery is the archive's own chips, served by the app.
//
// window.satjepaMap.show(data) draws a FeatureCollection the server sends after every search or Find all:
//   features with properties {kind: "tile" | "result" | "find" | "query", model, rank, score, label,
//   sample_id, image (a URL the app serves)}; Polygon footprints, or Points where a tile has no footprint.
// A click on the map searches from the archive tile there (it fills #place and presses #search-place); with
// "Draw a box" on, a drag sets the bounding-box filter (#bbox) instead.
(function () {
  "use strict";
  let map = null, layers = null, drawing = false, drew = false, box = null, start = null, basemapUrl = null;

  function input(id) {  // the textarea or input inside a gradio Textbox with elem_id = id
    const root = document.getElementById(id);
    return root && (root.querySelector("textarea") || root.querySelector("input"));
  }

  function setValue(id, value, tries) {  // a field in a closed accordion is not drawn yet: open it, then retry
    const field = input(id);
    if (!field) {
      const closed = document.querySelector("#filters .label-wrap:not(.open)");
      if (closed && !tries) closed.click();
      if ((tries || 0) < 20) setTimeout(() => setValue(id, value, (tries || 0) + 1), 50);
      return;
    }
    field.value = value;
    field.dispatchEvent(new Event("input", { bubbles: true }));
  }

  function colour(score, lo, hi) {  // low -> high score: blue -> yellow (viridis ends)
    const t = hi > lo ? Math.min(1, Math.max(0, (score - lo) / (hi - lo))) : 1;
    const a = [68, 1, 84], b = [253, 231, 37];
    return "rgb(" + a.map((v, i) => Math.round(v + t * (b[i] - v))).join(",") + ")";
  }

  function ensureMap() {
    const el = document.getElementById("leaflet-map");
    if (!el || typeof L === "undefined") return null;
    if (map && map.getContainer() === el) return map;
    map = L.map(el, { zoomControl: true, attributionControl: true, boxZoom: false, worldCopyJump: true });
    map.attributionControl.setPrefix("Leaflet");
    map.setView([20, 0], 2);
    layers = { basemap: L.layerGroup().addTo(map), imagery: L.layerGroup().addTo(map),
               tiles: L.layerGroup().addTo(map), results: L.layerGroup().addTo(map) };
    const DrawControl = L.Control.extend({
      onAdd: function () {
        const button = L.DomUtil.create("button", "satjepa-draw");
        button.id = "map-draw-box";
        button.type = "button";
        button.textContent = "Draw a box";
        button.title = "Drag on the map to set the bounding-box filter";
        L.DomEvent.disableClickPropagation(button);
        L.DomEvent.on(button, "click", function () {
          drawing = !drawing;
          button.classList.toggle("active", drawing);
          button.textContent = drawing ? "Drag a box…" : "Draw a box";
          drawing ? map.dragging.disable() : map.dragging.enable();
        });
        return button;
      },
    });
    new DrawControl({ position: "topright" }).addTo(map);
    map.on("click", function (e) {
      if (drawing || drew) { drew = false; return; }  // the click that ends a drawn box is not a search
      setValue("place", e.latlng.lat.toFixed(5) + ", " + e.latlng.lng.toFixed(5));
      const button = document.querySelector("#search-place");
      if (button) button.click();
    });
    map.on("mousedown", function (e) {
      if (!drawing) return;
      start = e.latlng;
      box = L.rectangle(L.latLngBounds(start, start), { color: "#e4572e", weight: 2, fill: false }).addTo(map);
    });
    map.on("mousemove", function (e) {
      if (drawing && start && box) box.setBounds(L.latLngBounds(start, e.latlng));
    });
    map.on("mouseup", function (e) {
      if (!drawing || !start) return;
      const b = L.latLngBounds(start, e.latlng);
      setValue("bbox", [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()].map((v) => v.toFixed(5)).join(", "));
      start = null;
      drawing = false;
      drew = true;
      map.dragging.enable();
      const button = document.getElementById("map-draw-box");
      button.classList.remove("active");
      button.textContent = "Draw a box";
    });
    return map;
  }

  function drawBasemap(url) {
    if (!url || url === basemapUrl) return;
    basemapUrl = url;
    fetch(url).then((r) => r.json()).then(function (world) {
      layers.basemap.clearLayers();
      L.geoJSON(world, { style: { color: "#9aa0a6", weight: 0.7, fillColor: "#f1f3f4", fillOpacity: 1 },
                         interactive: false }).addTo(layers.basemap);
    }).catch(() => {});
  }

  function label(p) {
    const parts = [p.kind === "find" ? "find" : p.kind === "query" ? "query" : "#" + p.rank];
    if (p.label) parts.push(p.label);
    if (p.score !== undefined && p.score !== null) parts.push("score " + Number(p.score).toFixed(3));
    if (p.model) parts.push(p.model);
    return parts.join(" · ") + "<br><small>" + p.sample_id + "</small>";
  }

  function show(data) {
    if (!data || !ensureMap()) return;
    if (typeof data === "string") data = JSON.parse(data);
    drawBasemap(data.basemap);
    layers.imagery.clearLayers();
    layers.tiles.clearLayers();
    layers.results.clearLayers();
    const features = data.features || [];
    const scored = features.filter((f) => f.properties.kind !== "tile" && f.properties.score !== undefined);
    const scores = scored.map((f) => f.properties.score);
    const lo = Math.min(...scores), hi = Math.max(...scores);
    const bounds = [];
    for (const f of features) {
      const p = f.properties, g = f.geometry;
      if (g.type === "Polygon" && p.image) {
        const ring = g.coordinates[0];
        const lons = ring.map((c) => c[0]), lats = ring.map((c) => c[1]);
        const b = [[Math.min(...lats), Math.min(...lons)], [Math.max(...lats), Math.max(...lons)]];
        L.imageOverlay(p.image, b, { opacity: p.kind === "tile" ? 0.55 : 0.9 }).addTo(layers.imagery);
      }
      const style = p.kind === "tile"
        ? { color: "#5f6368", weight: 0.5, fill: false }
        : { color: p.kind === "query" ? "#e4572e" : colour(p.score, lo, hi), weight: p.kind === "query" ? 3 : 2,
            fillOpacity: 0.15 };
      const layer = g.type === "Point"
        ? L.circleMarker([g.coordinates[1], g.coordinates[0]], { ...style, radius: 6 })
        : L.geoJSON(f, { style: style });
      if (p.kind !== "tile") {
        layer.bindTooltip(label(p));
        layer.getBounds ? bounds.push(layer.getBounds()) : bounds.push(L.latLngBounds([layer.getLatLng()]));
        layer.addTo(layers.results);
      } else {
        layer.addTo(layers.tiles);
      }
    }
    const el = document.getElementById("leaflet-map");
    el.dataset.features = String(features.length);
    el.dataset.results = String(scored.length);
    if (bounds.length) {
      let all = bounds[0];
      for (const b of bounds.slice(1)) all = all.extend(b);
      map.fitBounds(all.pad(0.3), { maxZoom: 14, animate: false });
    }
    setTimeout(() => {
      map.invalidateSize({ animate: false });
      el.dataset.view = map.getBounds().toBBoxString();  // west,south,east,north: what a click now lands on
      el.dataset.shown = String(+(el.dataset.shown || 0) + 1);
    }, 0);
  }

  window.satjepaMap = { show: show };
})();
