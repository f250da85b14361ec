// The portal's only script: the map (MapLibre GL JS), the charts (uPlot) and copy buttons. Reading and
// downloading never depend on it. No external resource by default: no third-party tiles, fonts or trackers.
(function () {
  "use strict";

  function text(node, value) { node.textContent = value; return node; }

  // The map: MapLibre GL JS (npm, served by us, its CSP build: the worker is our own file). Tables are drawn from
  // our own vector tiles (/ogcapi/.../tiles), so a dataset of any size is drawn; sensors from their locations.
  // The background is a plain colour unless the city opted in to a basemap (TERRITOIRE_BASEMAP): no request
  // leaves the platform by default.
  var LAYERS = ["data-fill", "data-line", "data-point"];

  function popupContent(properties) {
    var box = document.createElement("dl");
    box.className = "popup";
    Object.keys(properties || {}).slice(0, 12).forEach(function (key) {
      var value = properties[key];
      if (value === null || value === undefined || typeof value === "object") { return; }
      if (typeof value === "boolean") { value = value ? "oui" : "non"; }
      box.appendChild(text(document.createElement("dt"), key));
      box.appendChild(text(document.createElement("dd"), String(value)));
    });
    return box;
  }

  function bounds(data) {
    var box = null;
    function visit(c) {
      if (typeof c[0] === "number") {
        box = box ? [[Math.min(box[0][0], c[0]), Math.min(box[0][1], c[1])], [Math.max(box[1][0], c[0]), Math.max(box[1][1], c[1])]]
                  : [[c[0], c[1]], [c[0], c[1]]];
      } else { c.forEach(visit); }
    }
    var features = data.type === "Feature" ? [data] : (data.features || []);
    features.forEach(function (f) { if (f.geometry && f.geometry.coordinates) { visit(f.geometry.coordinates); } });
    return box;
  }

  function drawMap(element) {
    var gl = window.maplibregl;
    if (!gl) { return; }
    gl.setWorkerUrl("/static/portal/vendor/maplibre/maplibre-gl-csp-worker.js");
    var status = document.getElementById("map-status");
    var style = element.dataset.style || {
      version: 8, sources: {},
      layers: [{ id: "fond", type: "background", paint: { "background-color": "#e8ecef" } }]
    };
    var options = { container: element, style: style, attributionControl: false, maxZoom: 19 };
    var bbox = element.dataset.bbox ? JSON.parse(element.dataset.bbox) : null;
    if (bbox) {
      options.bounds = [[bbox[0], bbox[1]], [bbox[2], bbox[3]]];
      options.fitBoundsOptions = { padding: 24, maxZoom: 15 };
    } else {
      options.center = [2.4, 46.6];
      options.zoom = 4.5;
    }
    var map = new gl.Map(options);
    map.addControl(new gl.NavigationControl({ showCompass: false }));
    if (element.dataset.attribution) {
      map.addControl(new gl.AttributionControl({ customAttribution: element.dataset.attribution, compact: false }));
    }
    map.on("load", function () {
      var layer = {};
      if (element.dataset.tiles) {
        map.addSource("data", { type: "vector", tiles: [window.location.origin + element.dataset.tiles], maxzoom: 14 });
        layer = { "source-layer": element.dataset.layer };
      } else {
        map.addSource("data", { type: "geojson", data: { type: "FeatureCollection", features: [] } });
        fetch(element.dataset.geojson, { headers: { Accept: "application/geo+json" } })
          .then(function (response) { return response.json(); })
          .then(function (data) {
            map.getSource("data").setData(data);
            var box = bounds(data);
            if (!bbox && box) { map.fitBounds(box, { padding: 24, maxZoom: 15, duration: 0 }); }
          });
      }
      function add(definition) { map.addLayer(Object.assign({ source: "data" }, layer, definition)); }
      add({ id: "data-fill", type: "fill", filter: ["==", ["geometry-type"], "Polygon"],
            paint: { "fill-color": "#357edd", "fill-opacity": 0.35 } });
      add({ id: "data-line", type: "line", filter: ["!=", ["geometry-type"], "Point"],
            paint: { "line-color": "#00449e", "line-width": 2 } });
      add({ id: "data-point", type: "circle", filter: ["==", ["geometry-type"], "Point"],
            paint: { "circle-radius": ["interpolate", ["linear"], ["zoom"], 5, 2.5, 14, 6],
                     "circle-color": "#357edd", "circle-stroke-color": "#00449e", "circle-stroke-width": 1 } });
      LAYERS.forEach(function (id) {
        map.on("click", id, function (event) {
          var feature = event.features && event.features[0];
          if (!feature) { return; }
          new gl.Popup({ maxWidth: "22rem" }).setLngLat(event.lngLat).setDOMContent(popupContent(feature.properties)).addTo(map);
        });
        map.on("mouseenter", id, function () { map.getCanvas().style.cursor = "pointer"; });
        map.on("mouseleave", id, function () { map.getCanvas().style.cursor = ""; });
      });
      // Once every tile in view is drawn: how many distinct features the map shows (tests read it too).
      map.once("idle", function () {
        var seen = {};
        var count = 0;
        map.queryRenderedFeatures({ layers: LAYERS }).forEach(function (feature) {
          var key = feature.id !== undefined ? feature.id : JSON.stringify(feature.geometry);
          if (!seen[key]) { seen[key] = true; count += 1; }
        });
        element.dataset.rendered = String(count);
        var template = count < 2 && element.dataset.featureText ? element.dataset.featureText : element.dataset.featuresText;
        if (status) { status.textContent = template.replace("__N__", count.toLocaleString(document.documentElement.lang === "en" ? "en-GB" : "fr-FR")); }
      });
    });
  }

  // Times are shown in the territory's time zone with the page's language (24-hour clock, day/month order in
  // French); ticks fall on Paris hours and days (uPlot.tzDate), not UTC ones.
  var ZONE = "Europe/Paris";

  function formats(lang) {
    var locale = lang === "en" ? "en-GB" : "fr-FR";
    function make(options) { return new Intl.DateTimeFormat(locale, Object.assign({ timeZone: ZONE }, options)); }
    return {
      locale: locale,
      hour: make({ hour: "2-digit", minute: "2-digit", hour12: false }),
      day: make({ day: "2-digit", month: "2-digit" }),
      full: make({ day: "2-digit", month: "2-digit", year: "numeric", hour: "2-digit", minute: "2-digit", hour12: false })
    };
  }

  function number(value, locale, unit) {
    if (value === null || value === undefined) { return "—"; }
    return value.toLocaleString(locale, { maximumFractionDigits: 2 }) + (unit ? "\u202f" + unit : "");
  }

  // One chart per Datastream, kept by id: a refresh gives each its new values (and adds a chart for a new one),
  // every `data-refresh` seconds while the page is visible, so live sensors move without reloading the page.
  function drawCharts(element) {
    if (!window.uPlot) { return; }
    var plots = {};
    var fmt = formats(element.dataset.lang);

    function addChart(s) {
      var box = document.createElement("figure");
      box.className = "chart";
      var caption = document.createElement("figcaption");
      caption.textContent = s.label + (s.thing ? " — " + s.thing : "");
      box.appendChild(caption);
      element.appendChild(box);
      var width = Math.max(280, Math.min(element.clientWidth || 640, 900));
      plots[s.id] = new window.uPlot({
        width: width, height: 220,
        tzDate: function (ts) { return window.uPlot.tzDate(new Date(ts * 1e3), ZONE); },
        series: [
          { label: element.dataset.timeLabel, value: function (u, v) { return v === null ? "—" : fmt.full.format(new Date(v * 1e3)); } },
          { label: s.label, stroke: "#00449e", width: 2, value: function (u, v) { return number(v, fmt.locale, s.unit); } }
        ],
        axes: [
          { values: function (u, splits) {
              var span = splits.length > 1 ? splits[splits.length - 1] - splits[0] : 0;
              var byDay = span > 2 * 86400;
              return splits.map(function (v) { return (byDay ? fmt.day : fmt.hour).format(new Date(v * 1e3)); });
            } },
          { label: s.unit || s.unit_words, values: function (u, splits) {
              return splits.map(function (v) { return v.toLocaleString(fmt.locale); });
            } }
        ]
      }, [s.times, s.values], box);
    }

    function load() {
      return fetch(element.dataset.series, { cache: "no-store" })
        .then(function (response) { return response.json(); })
        .then(function (series) {
          var points = 0;
          series.forEach(function (s) {
            if (plots[s.id]) { plots[s.id].setData([s.times, s.values]); } else { addChart(s); }
            points += s.values.length;
          });
          element.dataset.rendered = String(series.length);
          element.dataset.points = String(points);
        });
    }

    load().then(function () {
      var seconds = parseInt(element.dataset.refresh || "0", 10);
      if (seconds > 0) {
        setInterval(function () {
          if (!document.hidden) { load().catch(function () { /* keep the last values; try again later */ }); }
        }, seconds * 1000);
      }
    });
  }

  function setupCopy(button) {
    if (!navigator.clipboard) { return; }
    button.hidden = false;
    button.addEventListener("click", function () {
      var source = document.getElementById(button.dataset.copy);
      navigator.clipboard.writeText(source.textContent).then(function () {
        var label = button.textContent;
        button.textContent = button.dataset.copied;
        setTimeout(function () { button.textContent = label; }, 1500);
      });
    });
  }

  var map = document.getElementById("map");
  if (map) { drawMap(map); }
  var charts = document.getElementById("charts");
  if (charts) { drawCharts(charts); }
  Array.prototype.forEach.call(document.querySelectorAll("button.copy"), setupCopy);
})();
