/* Tensor panels (dashapp/tensorpanel.py) keep their view in the address bar.
 *
 * When a panel shows another window or plane, its heatmap slot gets a new figure
 * address (`data-src`, with lead=..&row=..&col=.., 0-based); the query key
 * `t.<tensor>` of the page's URL then gets the view (SAMPLE,CHANNEL@ROW,COLUMN,
 * 1-based), or loses it for the default view, in a new history entry. Dash does not
 * see these entries (they would rebuild the page), so on back and forward the panels
 * whose view differs from the address are told the view of the address through their
 * `nav` store; where the rest of the address changed too, Dash rebuilds the page.
 */
(function () {
  "use strict";

  function parts(src) {
    var query = new URLSearchParams((src || "").split("?")[1] || "");
    return {
      path: (src || "").split("?")[0],
      lead: (query.get("lead") || "").split(",").filter(String).map(Number),
      row0: Number(query.get("row") || 0),
      col0: Number(query.get("col") || 0),
    };
  }

  function viewOf(p) {
    return p.lead.map(function (i) { return i + 1; }).join(",") + "@" + (p.row0 + 1) + "," + (p.col0 + 1);
  }

  function isDefault(p) {
    return p.row0 === 0 && p.col0 === 0 && p.lead.every(function (i) { return i === 0; });
  }

  new MutationObserver(function (records) {
    records.forEach(function (record) {
      var slot = record.target;
      var panel = slot.closest && slot.closest(".tensor-panel[data-aio]");
      if (!panel || record.oldValue === null || panel.hasAttribute("data-follows")) {
        return; // a panel that shows another panel's window leaves the URL to that one
      }
      var before = parts(record.oldValue);
      var now = parts(slot.getAttribute("data-src"));
      if (before.path !== now.path) {
        return; // another iteration or tensor in the same place: a new page, not a new view
      }
      var url = new URL(window.location.href);
      var key = "t." + panel.getAttribute("data-tensor");
      if (isDefault(now)) {
        url.searchParams.delete(key);
      } else {
        url.searchParams.set(key, viewOf(now));
      }
      // Compared as parsed: an address typed as ?a=1:3 is the same as ?a=1%3A3, and a
      // push there would drop the forward history.
      var current = new URLSearchParams(window.location.search).toString();
      if (url.searchParams.toString() !== current) {
        window.history.pushState(window.history.state, "", url.href);
      }
    });
  }).observe(document.documentElement, {
    subtree: true, attributes: true, attributeFilter: ["data-src"], attributeOldValue: true,
  });

  window.addEventListener("popstate", function () {
    setTimeout(function () {
      var params = new URLSearchParams(window.location.search);
      var panels = document.querySelectorAll(".tensor-panel[data-aio]");
      for (var i = 0; i < panels.length; i++) {
        var panel = panels[i];
        var slot = panel.querySelector(".heatmap-slot[data-src]");
        if (!slot || !panel.querySelector(".slice-controls") || !window.dash_clientside) {
          continue;
        }
        var wanted = params.get("t." + panel.getAttribute("data-tensor")) || "";
        var shown = parts(slot.getAttribute("data-src"));
        if (wanted === viewOf(shown) || (!wanted && isDefault(shown))) {
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
