/* Tensor panels (dashapp/tensorpanel.py) keep their view in the address bar.
 *
 * When a panel shows another window or plane, its heatmap slot gets a new figure
 * address (`data-src`, with lead=..&row=..&col=.., 0-based); the query key
 * `t.<tensor>` of the page's URL then gets the view (SAMPLE,CHANNEL@ROW,COLUMN,
 * 1-based), or loses it for the default view, in a new history entry. Dash does not
 * see these entries: its router would rebuild the whole page for each.
 *
 * Back and forward: the address is the truth, and exactly one thing answers each move.
 * - Only `t.` keys differ from the address Dash's router last built the page from:
 *   the panels answer. The event is stopped before Dash's Location components see it
 *   (otherwise the router would rebuild the page as well, and the two answers would
 *   race: the panels' answer, computed for the old page, landing on the new one, or on
 *   a later history entry), and each panel whose view differs from the address is
 *   told the address's view through its `nav` store (change_view).
 * - Anything else differs (another run, tensor, layer, page): Dash rebuilds the page
 *   from the address, and the panels stay out of it.
 * A panel still waiting for the answer to an earlier `nav` is told again (the newer
 * address's view, or "cancel" when the page is rebuilt). Dash shows every answer that
 * comes back, in the order they come, so the server's answer goes to the panel's
 * `answer` store and `cnnviz_panel.apply` (below) shows it only if it was asked under
 * the panel's current `nav` and computed from the view the panel shows: a stale answer
 * is never shown, nor pushed into the history by the observer below.
 */
(function () {
  "use strict";

  var ROUTER = "_pages_location"; // dash.page_container's Location

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

  // `view` as the URL writes it ("" for the default view) is what the slot shows
  function shows(slot, view) {
    var p = parts(slot.getAttribute("data-src"));
    return view === viewOf(p) || (!view && isDefault(p));
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
      if (panel._cnnvizNav !== undefined && shows(slot, panel._cnnvizNav)) {
        panel._cnnvizNav = undefined; // the answer to its `nav` has come
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

  // The address the router last built the page from (its Location's props), or null.
  function routed() {
    var api = window.dash_component_api;
    try {
      var location = api && api.getLayout && api.getLayout(ROUTER);
      return location && location.props && typeof location.props.search === "string"
        ? location.props
        : null;
    } catch (error) {
      return null; // no router on this page
    }
  }

  // The query without the panels' `t.` keys, as parsed (so ?a=1:3 equals ?a=1%3A3)
  function withoutViews(search) {
    var kept = [];
    new URLSearchParams(search).forEach(function (value, key) {
      if (key.indexOf("t.") !== 0) {
        kept.push([key, value]);
      }
    });
    return JSON.stringify(kept);
  }

  // aria-busy: the panel waits for the answer to a back or forward (tests wait for it)
  function busy(panel, on) {
    if (!panel) {
      return;
    }
    if (on) {
      panel.setAttribute("aria-busy", "true");
    } else {
      panel.removeAttribute("aria-busy");
    }
  }

  function tell(panel, data) {
    window.dash_clientside.set_props(
      { component: "TensorPanel", subcomponent: "nav", aio_id: panel.getAttribute("data-aio") },
      { data: Object.assign({ at: Date.now() }, data) }
    );
  }

  // viewsOnly: the panels answer this move; otherwise Dash rebuilds the page, and a
  // panel's unanswered `nav` is cancelled so that its answer cannot land on the new page.
  // (Without a router to ask, the panels answer and Dash's Locations see the event too.)
  function answer(viewsOnly) {
    var params = new URLSearchParams(window.location.search);
    var panels = document.querySelectorAll(".tensor-panel[data-aio]");
    for (var i = 0; i < panels.length; i++) {
      var panel = panels[i];
      var slot = panel.querySelector(".heatmap-slot[data-src]");
      if (!slot || !panel.querySelector(".slice-controls") || panel.hasAttribute("data-follows")) {
        continue;
      }
      var waiting = panel._cnnvizNav !== undefined && !shows(slot, panel._cnnvizNav);
      if (viewsOnly) {
        var wanted = params.get("t." + panel.getAttribute("data-tensor")) || "";
        if (waiting || !shows(slot, wanted)) {
          panel._cnnvizNav = wanted;
          busy(panel, true);
          tell(panel, { view: wanted });
        }
      } else if (waiting) {
        panel._cnnvizNav = undefined;
        busy(panel, false); // the page is rebuilt (Dash marks it as loading meanwhile)
        tell(panel, { cancel: true });
      }
    }
  }

  // tensorpanel.change_view's answer is shown only if it answers the panel's current
  // `nav` (it was asked after the last back or forward this panel was told of) and was
  // computed from the view the panel shows now; otherwise it is dropped, and the
  // offsets it wrote at once are put back to the view shown.
  function same(a, b) {
    return JSON.stringify(a) === JSON.stringify(b);
  }

  // tensorpanel._identity: the tensor and view a panel's state says it shows
  function identity(state) {
    return [state.run, state.it, state.name, state.lead, state.row0, state.col0];
  }

  window.dash_clientside = window.dash_clientside || {};
  window.dash_clientside.cnnviz_panel = {
    apply: function (answer, nav, state) {
      var clientside = window.dash_clientside;
      var context = clientside.callback_context;
      var aio = context && context.triggered_id && context.triggered_id.aio_id;
      if (!answer || !state || aio === undefined) {
        throw clientside.PreventUpdate;
      }
      var asked = answer.nav === undefined ? null : answer.nav;
      var told = nav && nav.at !== undefined ? nav.at : null;
      if (asked === told && told !== null) {
        busy(document.querySelector('.tensor-panel[data-aio="' + CSS.escape(aio) + '"]'), false);
      }
      if (asked !== told || !same(answer.base, identity(state))) {
        (answer.axes || []).forEach(function (axis) {
          clientside.set_props(
            { component: "TensorPanel", subcomponent: "offset", axis: axis, aio_id: aio },
            { value: (axis === "row" ? state.row0 : state.col0) + 1 }
          );
        });
        throw clientside.PreventUpdate;
      }
      if (!answer.state) {
        throw clientside.PreventUpdate; // the same view: nothing to show
      }
      return [answer.src, answer.caption, answer.state];
    },
  };

  // Registered when this asset runs, before React mounts any dcc.Location, so this
  // listener runs first and can keep the event from them.
  window.addEventListener("popstate", function (event) {
    if (!window.dash_clientside || !window.dash_clientside.set_props) {
      return;
    }
    var built = routed();
    var viewsOnly = built === null || (
      built.pathname === window.location.pathname
      && withoutViews(built.search) === withoutViews(window.location.search));
    if (built !== null && viewsOnly) {
      event.stopImmediatePropagation();
    }
    answer(viewsOnly);
  });
})();
