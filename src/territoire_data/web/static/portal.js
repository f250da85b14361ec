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

  // One chart per Datastream, kept by id: a refresh gives each its new values (and adds a chart for a new one),
  // every `data-refresh` seconds while the page is visible, so live sensors move without reloading the page.
  function drawCharts(element) {
    if (!window.uPlot) { return; }
    var plots = {};

    function addChart(s) {
      var box = document.createElement("figure");
      box.className = "chart";
      var caption = document.createElement("figcaption");
      caption.textContent = s.name + (s.unit ? " (" + s.unit + ")" : "");
      box.appendChild(caption);
      element.appendChild(box);
      var width = Math.max(280, Math.min(element.clientWidth || 640, 900));
      plots[s.id] = new window.uPlot({
        width: width, height: 220,
        series: [{ label: element.dataset.timeLabel }, { label: s.name, stroke: "#00449e", width: 2 }],
        axes: [{}, { label: s.unit }]
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
