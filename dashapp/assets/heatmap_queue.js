/* Draw heatmaps when they come near the viewport, one at a time.
 *
 * A LeNet-5 iteration page holds about 160 heatmaps; as dcc.Graph components
 * Plotly drew them all in one task that blocked the browser for about four
 * seconds. Each heatmap is now an empty `.heatmap-slot` the figure's size with
 * the figure as JSON in its `data-figure` attribute
 * (layouts.lazy_tensor_figure_block). An IntersectionObserver notices slots
 * near the viewport, and they are drawn with Plotly one per task, so the
 * browser paints and reacts in between. When `data-figure` changes (another
 * sample or channel chosen, or React reusing the slot on the next page), a
 * drawn slot is drawn again with the new figure.
 *
 * A tensor panel's slot (dashapp/tensorpanel.py) holds no figure, only its address
 * in `data-src`: the figure is fetched when the slot nears the viewport, so the page
 * reads from the store only what is looked at; a new `data-src` (another window or
 * plane) is fetched and drawn the same way. The first two slots of an iteration view
 * come with their figures (`data-sent-figure`, tensorpanel.send_first_figures),
 * drawn without a request while they are the figures of the slots' addresses. A
 * click on a cell sets the `data` of the Dash component named in the slot's
 * `data-click` to the cell's position and value.
 */
(function () {
  "use strict";
  var MARGIN_PX = 600;
  var NEAR = MARGIN_PX + "px"; // slots this close to the viewport are drawn
  var KEEP_PX = 2 * MARGIN_PX; // a queued slot this close stays queued (nextSlot)
  var GAP_MS = 0; // a task boundary between two drawings: the browser paints in between

  var observed = new WeakSet();
  var queue = [];
  var timer = null;
  var scanning = false;
  var plotly = null; // a promise of window.Plotly

  // The same plotly.js that dcc.Graph uses, loaded the way dcc.Graph loads it (Dash's
  // renderer sets _dashPlotlyJSURL once it runs, to this address: dashapp/bundle.py).
  function plotlyURL() {
    if (window._dashPlotlyJSURL) {
      return window._dashPlotlyJSURL;
    }
    var prefix = "/";
    try {
      prefix = JSON.parse(document.getElementById("_dash-config").textContent).requests_pathname_prefix;
    } catch (error) {
      // no Dash configuration: the app is served at the root
    }
    return prefix + "_dash-component-suites/plotly/package_data/plotly.min.js";
  }

  function loadPlotly() {
    if (window.Plotly) {
      // evaluated: its script's load event can come a while later, after other tasks
      return Promise.resolve(window.Plotly);
    }
    // The iteration page's shell asks for it in its <head> (bundle.load_plotly_early):
    // that script is waited for, unless it failed (then it is asked for again here).
    var early = document.querySelector("script[data-cnnviz-plotly]:not([data-failed])");
    if (!plotly && early) {
      plotly = new Promise(function (resolve, reject) {
        early.addEventListener("load", function () { resolve(window.Plotly); });
        early.addEventListener("error", function (error) { plotly = null; reject(error); });
      });
    }
    if (!plotly) {
      plotly = new Promise(function (resolve, reject) {
        var script = document.createElement("script");
        script.src = plotlyURL();
        script.async = true;
        script.onload = function () { resolve(window.Plotly); };
        script.onerror = function (error) { plotly = null; reject(error); };
        document.head.appendChild(script);
      });
    }
    return plotly;
  }

  function sourceOf(slot) {
    return slot.getAttribute("data-figure") || slot.getAttribute("data-src");
  }

  function stale(slot) {
    return sourceOf(slot) !== slot._cnnvizDrawn;
  }

  function figureOf(slot) {
    var inline = slot.getAttribute("data-figure");
    if (inline) {
      return Promise.resolve([inline, JSON.parse(inline)]);
    }
    var src = slot.getAttribute("data-src");
    var sent = sentFigure(src);
    if (sent) {
      return Promise.resolve([src, JSON.parse(sent)]);
    }
    return fetchText(src).then(function (text) {
      return [src, JSON.parse(text)]; // each slot its own objects: Plotly keeps and changes them
    });
  }

  // The figure of `src` if the page came with it: the first slots of an iteration view
  // hold their figure in `data-sent-figure`, for the address in `data-sent-src`
  // (tensorpanel.send_first_figures); a panel showing another window no longer matches.
  function sentFigure(src) {
    var slots = document.querySelectorAll(".heatmap-slot[data-sent-figure]");
    for (var i = 0; i < slots.length; i++) {
      if (slots[i].getAttribute("data-sent-src") === src) {
        return slots[i].getAttribute("data-sent-figure");
      }
    }
    return null;
  }

  // Two slots showing the same figure (a LeNet-5 conv1 view shows X_col in two steps) ask
  // for it once while the first request is under way.
  var inFlight = {};

  function fetchText(src) {
    if (!inFlight[src]) {
      inFlight[src] = fetch(src, { credentials: "same-origin" }).then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status + " for " + src);
        }
        return response.text();
      });
      var done = function () { delete inFlight[src]; };
      inFlight[src].then(done, done);
    }
    return inFlight[src];
  }

  function onClick(slot) {
    return function (event) {
      var target = slot.getAttribute("data-click");
      var point = event && event.points && event.points[0];
      if (!target || !point || !window.dash_clientside || !window.dash_clientside.set_props) {
        return;
      }
      var src = slot.getAttribute("data-src") || "";
      var parts = src.split("?")[0].split("/"); // /figure/<run>/<it>/<tensor>.json
      var query = new URLSearchParams(src.split("?")[1] || "");
      window.dash_clientside.set_props(JSON.parse(target), {
        data: {
          run: Number(parts[2]), it: Number(parts[3]),
          tensor: decodeURIComponent((parts[4] || "").replace(/\.json$/, "")),
          lead: (query.get("lead") || "").split(",").filter(String).map(Number),
          row: point.y, col: point.x, value: point.z === undefined ? null : point.z,
        },
      });
    };
  }

  // A slot's figure is fetched as soon as the slot is queued (near the viewport), so the
  // figures of the next heatmaps arrive while the one before is drawn instead of each
  // request waiting for the drawing before it.
  function prefetch(slot) {
    var src = slot.getAttribute("data-src");
    if (!src || slot.getAttribute("data-figure") || (slot._cnnvizFetch && slot._cnnvizFetch.src === src)) {
      return;
    }
    var promise = figureOf(slot);
    promise.catch(function () {
      // reported when the slot is drawn
    });
    slot._cnnvizFetch = { src: src, promise: promise };
  }

  function fetched(slot) {
    var pending = slot._cnnvizFetch;
    slot._cnnvizFetch = null;
    if (pending && pending.src === slot.getAttribute("data-src") && !slot.getAttribute("data-figure")) {
      return pending.promise;
    }
    return figureOf(slot);
  }

  function draw(Plotly, slot) {
    slot._cnnvizDrawn = sourceOf(slot); // being fetched: not queued again meanwhile
    return fetched(slot).then(function (pair) {
      return show(Plotly, slot, pair[0], pair[1]);
    });
  }

  function show(Plotly, slot, source, figure) {
    var config = JSON.parse(slot.getAttribute("data-config") || "{}");
    var layout = figure.layout || {};
    if (layout.width && layout.height) {
      slot.style.width = layout.width + "px";
      slot.style.height = layout.height + "px";
    }
    slot._cnnvizDrawn = source;
    // the window's caption (tensorpanel.window_figure), under the heatmap it describes
    var panel = slot.closest(".tensor-panel");
    var caption = panel && panel.querySelector(".tensor-caption");
    if (caption && typeof figure.caption === "string") {
      caption.textContent = figure.caption;
    }
    return Promise.resolve(Plotly.react(slot, figure.data || [], layout, config)).then(function () {
      slot._cnnvizShown = source; // what the slot shows now (tests wait for it)
      slot.dispatchEvent(new CustomEvent("cnnviz:drawn", { bubbles: true })); // provenance_click.js
      if (!slot._cnnvizClick && slot.on) {
        slot._cnnvizClick = true;
        slot.on("plotly_click", onClick(slot));
      }
    });
  }

  // A slot queued while near the viewport may have left it: the reader scrolled on, or
  // formulas typeset above it moved it (a formula's box is as tall as estimated until
  // it is typeset, dashapp/layouts.formula). The next one drawn is the one
  // nearest the viewport now, one in it first. One still within KEEP_PX stays queued (its
  // figure is fetched already: drawing it while the page is idle costs less than waiting
  // for the reader to scroll to it); the others go back to the observer, so nothing
  // waits for them.
  function distance(slot) {
    var box = slot.getBoundingClientRect();
    if (box.bottom > 0 && box.top < window.innerHeight) {
      return 0;
    }
    return box.top >= window.innerHeight ? box.top - window.innerHeight : -box.bottom;
  }

  function near(slot) {
    return distance(slot) < MARGIN_PX;
  }

  function nextSlot() {
    var best = -1;
    var bestDistance = Infinity;
    var kept = [];
    queue.splice(0).forEach(function (slot) {
      if (!slot.isConnected) {
        return;
      }
      var away = distance(slot);
      if (away < KEEP_PX || slot._cnnvizDrawn !== undefined || !observer) {
        // near, or shown once already and its figure changed (redrawn wherever it is)
        if (away < bestDistance) {
          best = kept.length;
          bestDistance = away;
        }
        kept.push(slot);
      } else if (!observed.has(slot)) {
        observed.add(slot);
        observer.observe(slot);
      }
    });
    queue = kept;
    return best < 0 ? null : queue.splice(best, 1)[0];
  }

  // The next drawing, as a task of its own (the browser paints in between). One for a
  // slot in the viewport goes before the page's other pending work (scheduler.postTask
  // "user-blocking"): after a view is shown, Dash's renderer and React queue a few
  // hundred milliseconds of their own follow-up tasks, none of which the reader sees.
  function later(work, urgent) {
    if (urgent && window.scheduler && window.scheduler.postTask) {
      window.scheduler.postTask(work, { priority: "user-blocking" });
      return true;
    }
    return setTimeout(work, GAP_MS);
  }

  function inView() {
    for (var i = 0; i < queue.length; i++) {
      if (queue[i].isConnected && distance(queue[i]) === 0) {
        return true;
      }
    }
    return false;
  }

  function pump() {
    if (timer !== null || !queue.length) {
      return;
    }
    timer = later(function () {
      loadPlotly().then(function (Plotly) {
        var slot = nextSlot();
        if (slot && slot.isConnected && stale(slot)) {
          return draw(Plotly, slot);
        }
      }).catch(function (error) {
        console.error("cnnviz could not draw a heatmap", error);
      }).then(function () {
        timer = null;
        pump();
      });
    }, inView());
  }

  function enqueue(slot) {
    if (queue.indexOf(slot) < 0) {
      queue.push(slot);
    }
    prefetch(slot);
  }

  var observer = "IntersectionObserver" in window
    ? new IntersectionObserver(function (entries) {
        entries.forEach(function (entry) {
          if (entry.isIntersecting) {
            observer.unobserve(entry.target);
            observed.delete(entry.target);
            enqueue(entry.target);
          }
        });
        pump();
      }, { rootMargin: NEAR + " 0px" })
    : null;

  // Slots come and go as Dash renders pages: every slot whose figure is not drawn is
  // looked at in the next animation frame after it appears (when the browser lays the
  // page out anyway): one near the viewport is queued and its figure fetched at once,
  // the others are watched by the observer; one drawn once already (so it has been near
  // the viewport) is redrawn. Waiting for the observer's first report instead cost a
  // LeNet-5 view 100-200 ms between its slots appearing and their figures being asked.
  function scan() {
    scanning = false;
    var slots = document.querySelectorAll(".heatmap-slot[data-figure], .heatmap-slot[data-src]");
    for (var i = 0; i < slots.length; i++) {
      var slot = slots[i];
      if (!stale(slot) || observed.has(slot) || queue.indexOf(slot) >= 0) {
        continue;
      }
      if (slot._cnnvizDrawn !== undefined || !observer || near(slot)) {
        enqueue(slot);
      } else {
        observed.add(slot);
        observer.observe(slot);
      }
    }
    pump();
  }

  // The figures of the first slots of a newly shown view are asked for at once, in the
  // task that added them, instead of once the browser has laid the page out (on a
  // LeNet-5 view 100-150 ms later): a view opens at its top, where these are. Only
  // slots never seen before, and only the first EARLY of them, so what is further down
  // still waits until it comes near.
  var EARLY = 2;
  var seen = new WeakSet();

  function prefetchFirst() {
    var slots = document.querySelectorAll(".heatmap-slot[data-src]");
    var fresh = 0;
    for (var i = 0; i < slots.length; i++) {
      if (seen.has(slots[i])) {
        continue;
      }
      seen.add(slots[i]);
      if (fresh < EARLY && stale(slots[i])) {
        prefetch(slots[i]);
        fresh += 1;
      }
    }
  }

  function scanSoon() {
    prefetchFirst();
    if (scanning) {
      return;
    }
    scanning = true;
    if (document.visibilityState === "visible" && window.requestAnimationFrame) {
      window.requestAnimationFrame(scan);
    } else {
      setTimeout(scan, 30); // no frames in a hidden tab
    }
  }

  // Every view of the iteration page has heatmaps: plotly.js loads with the page shell
  // (asked for in its <head>, bundle.load_plotly_early, and compiled off the main thread
  // as it streams in, scripts/plotly-bundle/build.js), not once the first heatmap comes
  // near the viewport. (A throw-away heatmap drawn while the page waited for its view,
  // to set plotly.js up before the first real one, was taken out: the main thread is
  // busy all along the way to a LeNet-5 view, and that drawing, 60-90 ms, put off the
  // view by as much as it saved the first heatmap, 10-25 ms; interleaved loads drew the
  // heatmaps in view 2-8% sooner without it.)
  if (/\/iteration$/.test(window.location.pathname)) {
    loadPlotly().catch(function (error) {
      console.error("cnnviz could not load plotly.js", error);
    });
  }

  new MutationObserver(scanSoon).observe(document.documentElement, {
    childList: true, subtree: true, attributes: true, attributeFilter: ["data-figure", "data-src"],
  });
})();
