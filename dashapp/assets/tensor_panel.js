/* Tensor panels (dashapp/tensorpanel.py): their window controls, and their view in the
 * address bar.
 *
 * A panel's controls are plain markup, driven here: a number (a sample, a channel, the
 * window's first row or column, 1-based), its − and + buttons, and the arrows that move
 * the window by half of it. Each change becomes a new figure address for the panel's
 * heatmap slot (`data-src`, with lead=..&row=..&col=.., 0-based), kept within the
 * tensor's limits (`data-limits`, those of tensorpanel.PanelView.clamped); the figure's
 * answer carries the window's caption (assets/heatmap_queue.js shows both together).
 * A panel that follows another (`data-follows`, its aio id: side B and the difference
 * on the compare page) shows the same plane and window.
 *
 * The URL: when a slot gets another address of the same tensor, the query key
 * `t.<tensor>` of the page's URL gets the view (SAMPLE,CHANNEL@ROW,COLUMN, 1-based), or
 * loses it for the default view, in a new history entry. Dash does not see these
 * entries: its router would rebuild the whole page for each. A panel with
 * `data-view-store` also tells that dcc.Store its view (the compare page keeps the
 * window when another run is chosen).
 *
 * Back and forward: the address is the truth, and exactly one thing answers each move.
 * - Only `t.` keys differ from the address Dash's router last built the page from: the
 *   panels answer, each showing the address's view at once. The event is stopped
 *   before Dash's Location components see it (otherwise the router would rebuild the
 *   page as well).
 * - Anything else differs (another run, tensor, layer, page): Dash rebuilds the page
 *   from the address, and the panels stay out of it.
 */
(function () {
  "use strict";

  var ROUTER = "_pages_location"; // dash.page_container's Location
  var MOVES = { up: [-1, 0], down: [1, 0], left: [0, -1], right: [0, 1] };

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

  // The URL's view ("SAMPLE,CHANNEL@ROW,COLUMN", 1-based; "" for the default) as a view
  // (0-based); null for one that is not of that form (the page shows the default then).
  function fromUrl(text) {
    if (!text) {
      return { lead: [], row0: 0, col0: 0 };
    }
    var match = /^((?:[0-9]{1,9})(?:,[0-9]{1,9})*)?@([0-9]{1,9}),([0-9]{1,9})$/.exec(text.trim());
    if (!match) {
      return null;
    }
    return {
      lead: match[1] ? match[1].split(",").map(function (i) { return Number(i) - 1; }) : [],
      row0: Number(match[2]) - 1,
      col0: Number(match[3]) - 1,
    };
  }

  function limitsOf(panel) {
    try {
      return JSON.parse(panel.getAttribute("data-limits"));
    } catch (error) {
      return null;
    }
  }

  function within(value, low, high) {
    return Math.min(Math.max(isFinite(value) ? Math.round(value) : low, low), high);
  }

  // `view` kept within the tensor's limits, as PanelView.clamped keeps it
  function clamped(view, limits) {
    return {
      lead: limits.lead.map(function (size, i) { return within(view.lead[i] || 0, 0, size - 1); }),
      row0: within(view.row0, 0, Math.max(limits.rows - limits.window[0], 0)),
      col0: within(view.col0, 0, Math.max(limits.cols - limits.window[1], 0)),
    };
  }

  // The slot's address for `view`: its other keys (with=, minus=) kept, in the order
  // tensorpanel.figure_url writes them.
  function srcFor(src, view) {
    var path = src.split("?")[0];
    var others = (src.split("?")[1] || "").split("&").filter(function (pair) {
      var key = pair.split("=")[0];
      return pair && key !== "lead" && key !== "row" && key !== "col";
    });
    var query = "lead=" + view.lead.join(",") + "&row=" + view.row0 + "&col=" + view.col0;
    return path + "?" + query + (others.length ? "&" + others.join("&") : "");
  }

  function slotOf(panel) {
    return panel.querySelector(".heatmap-slot[data-src]");
  }

  // Show `view` (clamped) in `panel`: its controls, its slot's address, its followers'.
  function show(panel, view) {
    var limits = limitsOf(panel);
    var slot = slotOf(panel);
    if (!limits || !slot) {
      return;
    }
    view = clamped(view, limits);
    var inputs = panel.querySelectorAll("input[data-axis]");
    for (var i = 0; i < inputs.length; i++) {
      var axis = inputs[i].getAttribute("data-axis");
      var shown = axis === "row" ? view.row0 : axis === "col" ? view.col0 : view.lead[Number(axis)];
      inputs[i].value = String(shown + 1);
    }
    var src = srcFor(slot.getAttribute("data-src"), view);
    if (src !== slot.getAttribute("data-src")) {
      slot.setAttribute("data-src", src); // heatmap_queue.js draws it; the observer below keeps the URL
    }
    var followers = document.querySelectorAll(
      '.tensor-panel[data-follows="' + CSS.escape(panel.getAttribute("data-aio")) + '"]'
    );
    for (var j = 0; j < followers.length; j++) {
      var theirs = slotOf(followers[j]);
      if (theirs) {
        var followed = srcFor(theirs.getAttribute("data-src"), view);
        if (followed !== theirs.getAttribute("data-src")) {
          theirs.setAttribute("data-src", followed);
        }
      }
    }
  }

  // The view the panel's controls ask for (a number not typed as one keeps its axis)
  function asked(panel) {
    var view = parts(slotOf(panel).getAttribute("data-src"));
    var inputs = panel.querySelectorAll("input[data-axis]");
    for (var i = 0; i < inputs.length; i++) {
      var axis = inputs[i].getAttribute("data-axis");
      var value = Number(inputs[i].value) - 1;
      if (inputs[i].value.trim() === "" || !isFinite(value)) {
        continue;
      }
      if (axis === "row") {
        view.row0 = value;
      } else if (axis === "col") {
        view.col0 = value;
      } else {
        view.lead[Number(axis)] = value;
      }
    }
    return view;
  }

  function controlled(target) {
    var panel = target && target.closest && target.closest(".tensor-panel[data-limits]");
    return panel && slotOf(panel) ? panel : null;
  }

  // A number typed: on Enter or when it loses focus ("change"), as dcc.Input's debounce
  document.addEventListener("change", function (event) {
    var panel = controlled(event.target);
    if (panel && event.target.matches("input[data-axis]")) {
      show(panel, asked(panel));
    }
  });

  document.addEventListener("click", function (event) {
    var button = event.target && event.target.closest && event.target.closest("button");
    var panel = controlled(button);
    if (!panel || button.disabled) {
      return;
    }
    if (button.hasAttribute("data-step")) {
      var input = button.parentNode.querySelector("input[data-axis]");
      input.value = String((Number(input.value) || 1) + Number(button.getAttribute("data-step")));
      show(panel, asked(panel));
    } else if (button.hasAttribute("data-move")) {
      var move = MOVES[button.getAttribute("data-move")];
      var limits = limitsOf(panel);
      var view = parts(slotOf(panel).getAttribute("data-src"));
      view.row0 += move[0] * Math.floor(limits.window[0] / 2);
      view.col0 += move[1] * Math.floor(limits.window[1] / 2);
      show(panel, view);
    }
  });

  function tellStore(panel, p) {
    var store = panel.getAttribute("data-view-store");
    if (store && window.dash_clientside && window.dash_clientside.set_props) {
      window.dash_clientside.set_props(store, { data: isDefault(p) ? "" : viewOf(p) });
    }
  }

  // While back or forward is answered, the panels show the address's view: no new entry.
  var restoring = null;

  new MutationObserver(function (records) {
    var quiet = restoring !== null && restoring === window.location.href;
    restoring = null;
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
      tellStore(panel, now);
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
      if (!quiet && url.searchParams.toString() !== current) {
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

  // Registered when this asset runs, before React mounts any dcc.Location, so this
  // listener runs first and can keep the event from them.
  window.addEventListener("popstate", function (event) {
    var built = routed();
    var viewsOnly = built === null || (
      built.pathname === window.location.pathname
      && withoutViews(built.search) === withoutViews(window.location.search));
    if (!viewsOnly) {
      return; // Dash rebuilds the page from the address
    }
    if (built !== null) {
      event.stopImmediatePropagation();
    }
    var params = new URLSearchParams(window.location.search);
    var panels = document.querySelectorAll(".tensor-panel[data-limits]");
    restoring = window.location.href;
    Promise.resolve().then(function () { restoring = null; }); // after the observer's turn
    for (var i = 0; i < panels.length; i++) {
      var wanted = fromUrl(params.get("t." + panels[i].getAttribute("data-tensor")) || "");
      show(panels[i], wanted || fromUrl(""));
    }
  });
})();
