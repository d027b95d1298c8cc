/* Tensor panels (dashapp/tensorpanel.py) keep their view in the address bar.
 *
 * `record` is called by the panel's clientside callback when its view changes: the
 * query key `t.<tensor>` gets the new view (SAMPLE,CHANNEL@ROW,COLUMN, 1-based), or
 * is removed for the default view, in a new history entry. Dash does not see these
 * entries (they would rebuild the page), so on back and forward the panels whose
 * view differs from the address are told the view of the address through their
 * `nav` store; where the rest of the address changed too, Dash rebuilds the page.
 */
(function () {
  "use strict";

  function viewOf(state) {
    return state.lead.map(function (i) { return i + 1; }).join(",") +
      "@" + (state.row0 + 1) + "," + (state.col0 + 1);
  }

  function isDefault(state) {
    return state.row0 === 0 && state.col0 === 0 &&
      state.lead.every(function (i) { return i === 0; });
  }

  // The view a slot shows now, from its figure address (0-based there).
  function shownView(slot) {
    var src = slot.getAttribute("data-src") || "";
    var query = new URLSearchParams(src.split("?")[1] || "");
    var lead = (query.get("lead") || "").split(",").filter(String).map(Number);
    return viewOf({ lead: lead, row0: Number(query.get("row") || 0), col0: Number(query.get("col") || 0) });
  }

  window.cnnvizTensorPanel = {
    record: function (state) {
      var url = new URL(window.location.href);
      var key = "t." + state.name;
      if (isDefault(state)) {
        url.searchParams.delete(key);
      } else {
        url.searchParams.set(key, viewOf(state));
      }
      if (url.href !== window.location.href) {
        window.history.pushState(window.history.state, "", url.href);
      }
    },
  };

  window.addEventListener("popstate", function () {
    setTimeout(function () {
      var params = new URLSearchParams(window.location.search);
      var panels = document.querySelectorAll(".tensor-panel[data-aio]");
      for (var i = 0; i < panels.length; i++) {
        var panel = panels[i];
        var slot = panel.querySelector(".heatmap-slot[data-src]");
        if (!slot || !window.dash_clientside || !window.dash_clientside.set_props) {
          continue;
        }
        var wanted = params.get("t." + panel.getAttribute("data-tensor")) || "";
        var shown = shownView(slot);
        var shownDefault = /^(1(,1)*)?@1,1$/.test(shown);
        if (wanted === shown || (!wanted && shownDefault)) {
          continue;
        }
        window.dash_clientside.set_props(
          { component: "TensorPanel", subcomponent: "nav", aio_id: panel.getAttribute("data-aio") },
          { data: { view: wanted, at: Date.now() } }
        );
      }
    }, 0);
  });
})();
