/* Provenance on click: a click on a heatmap cell of the iteration page asks the
 * server where that number came from (pages/iteration.py, storage/provenance.py),
 * and the cells the answer read are outlined in the heatmaps that show them.
 *
 * heatmap_queue.js announces every drawn slot with a "cnnviz:drawn" event; the
 * slot carries its tensor's name (data-tensor) and the figure its plane
 * (layout.meta: the lead index and the tensor's rank).
 */
(function () {
  "use strict";

  function fullIndex(meta, row, col) {
    if (!meta || meta.ndim === 0) return [];
    if (meta.ndim === 1) return [row];
    return (meta.lead || []).concat([row, col]);
  }

  document.addEventListener("cnnviz:drawn", function (event) {
    var slot = event.target;
    if (!slot.dataset.tensor || slot._cnnvizClick || !slot.on) return;
    slot._cnnvizClick = true;
    slot.on("plotly_click", function (data) {
      var point = data.points && data.points[0];
      if (!point || !window.dash_clientside || !window.dash_clientside.set_props) return;
      var meta = (slot.layout && slot.layout.meta) || {};
      window.dash_clientside.set_props("iteration-provenance-click", {
        data: {
          tensor: slot.dataset.tensor,
          index: fullIndex(meta, point.y, point.x),
          nonce: Date.now(),
        },
      });
    });
    if (window._cnnvizReads) outline(slot, window._cnnvizReads);
  });

  function outline(slot, reads) {
    if (!window.Plotly || !slot.layout) return;
    var meta = slot.layout.meta || {}, cells = reads[slot.dataset.tensor] || [];
    var lead = JSON.stringify(meta.lead || []), shapes = [];
    cells.forEach(function (cell) {
      var rc;
      if (meta.ndim === 0) rc = [0, 0];
      else if (meta.ndim === 1) rc = [cell[0], 0];
      else if (JSON.stringify(cell.slice(0, cell.length - 2)) === lead) rc = cell.slice(-2);
      if (!rc) return;
      shapes.push({
        type: "rect", xref: "x", yref: "y",
        x0: rc[1] - 0.5, x1: rc[1] + 0.5, y0: rc[0] - 0.5, y1: rc[0] + 0.5,
        line: { color: "#111", width: 2.5 }, fillcolor: "rgba(255, 214, 0, 0.25)",
      });
    });
    if (shapes.length || (slot.layout.shapes && slot.layout.shapes.length)) {
      window.Plotly.relayout(slot, { shapes: shapes });
    }
  }

  window.dash_clientside = window.dash_clientside || {};
  window.dash_clientside.cnnviz_provenance = {
    // Outline the cells a provenance answer read; an empty answer clears the outlines.
    highlight: function (reads) {
      window._cnnvizReads = reads || {};
      document.querySelectorAll(".heatmap-slot[data-tensor]").forEach(function (slot) {
        outline(slot, window._cnnvizReads);
      });
      return window.dash_clientside.no_update;
    },
  };
})();
