// The portal's only script: the map (Leaflet), the charts (uPlot) and copy buttons. Reading and
// downloading never depend on it. No external resource: no tiles, fonts or trackers.
(function () {
  "use strict";

  function text(node, value) { node.textContent = value; return node; }

  function popupContent(properties) {
    var box = document.createElement("dl");
    Object.keys(properties || {}).slice(0, 8).forEach(function (key) {
      var value = properties[key];
      if (value === null || typeof value === "object") { return; }
      box.appendChild(text(document.createElement("dt"), key));
      box.appendChild(text(document.createElement("dd"), String(value)));
    });
    return box;
  }

  function drawMap(element) {
    if (!window.L) { return; }
    var status = document.getElementById("map-status");
    var map = window.L.map(element, { attributionControl: false, keyboard: true, worldCopyJump: true });
    map.setView([46.6, 2.4], 5);
    fetch(element.dataset.geojson, { headers: { Accept: "application/geo+json" } })
      .then(function (response) { return response.json(); })
      .then(function (collection) {
        var layer = window.L.geoJSON(collection, {
          pointToLayer: function (feature, latlng) {
            return window.L.circleMarker(latlng, { radius: 6, color: "#00449e", weight: 2, fillColor: "#357edd", fillOpacity: 0.8 });
          },
          style: function () { return { color: "#00449e", weight: 2 }; },
          onEachFeature: function (feature, lyr) { lyr.bindPopup(popupContent(feature.properties)); }
        }).addTo(map);
        var count = collection.features.length;
        element.dataset.rendered = String(count);
        if (count > 0) { map.fitBounds(layer.getBounds(), { padding: [20, 20], maxZoom: 17 }); }
        if (status) { status.textContent = element.dataset.featuresText.replace("__N__", String(count)); }
      })
      .catch(function () { element.dataset.rendered = "error"; });
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
