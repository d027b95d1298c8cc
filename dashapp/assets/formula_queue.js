/* Typeset formulas off the main thread, the ones in view first.
 *
 * Each formula is an element with its TeX in `data-tex` (dashapp/layouts.formula).
 * MathJax runs in a Web Worker (dashapp/vendor/mathjax-worker.js, served by
 * dashapp/bundle.py): the page sends it one formula at a time and inserts the
 * <mjx-container> markup it sends back. Evaluating MathJax (2 MB) and typesetting a
 * LeNet-5 formula with numbers (50-300 ms each) were the longest tasks of the page
 * when dcc.Markdown did them on the main thread; now the page only parses SVG.
 *
 * The worker starts loading MathJax as soon as this script runs, alongside Dash's own
 * scripts. The next formula sent is one near the viewport; the others follow in the
 * background, so every formula ends up typeset. When `data-tex` changes (React reusing
 * the element for the next view, or "show every stored entry"), the old formula is
 * removed at once and the new one typeset: a formula never shows numbers that are not
 * its own.
 */
(function () {
  "use strict";
  var NEAR = "800px"; // formulas this close to the viewport count as visible

  var prefix = "/";
  try {
    var config = JSON.parse(document.getElementById("_dash-config").textContent);
    prefix = config.requests_pathname_prefix || prefix;
  } catch (error) {
    // no Dash configuration on this page: the app is served at the root
  }
  var worker = new Worker(prefix + "_cnnviz/mathjax/worker.js");
  var waiting = []; // elements to typeset, in the order they came
  var visible = new Set();
  var sent = null; // {id, element, tex}: the formula the worker is typesetting
  var lastId = 0;

  var observer = "IntersectionObserver" in window
    ? new IntersectionObserver(function (entries) {
        entries.forEach(function (entry) {
          if (entry.isIntersecting) {
            visible.add(entry.target);
          } else {
            visible.delete(entry.target);
          }
        });
      }, { rootMargin: NEAR })
    : null;

  function next() {
    for (var i = 0; i < waiting.length; i++) {
      if (visible.has(waiting[i])) {
        return waiting.splice(i, 1)[0];
      }
    }
    return waiting.shift();
  }

  function send() {
    while (!sent && waiting.length) {
      var element = next();
      visible.delete(element);
      if (observer) {
        observer.unobserve(element);
      }
      var tex = element.getAttribute("data-tex");
      if (element.isConnected && tex && element._cnnvizTex !== tex) {
        lastId += 1;
        sent = { id: lastId, element: element, tex: tex };
        worker.postMessage({ id: lastId, tex: tex });
      }
    }
  }

  // A formula typeset above the viewport grows the page above what the reader looks at
  // (its box is empty until then), and Chrome's scroll anchoring does not make up for
  // it on these pages (a panel scrolled to moved thousands of pixels down while the
  // formulas above it were typeset): the page scrolls by what the formula's row moved
  // what follows it in the viewport (its bottom edge, which the browser's own anchoring,
  // when it does act, has already moved back).
  function insert(element, html) {
    var row = element.closest(".formula-row") || element;
    var before = row.getBoundingClientRect().bottom;
    element.innerHTML = html;
    if (before <= 0) { // wholly above the viewport
      var moved = row.getBoundingClientRect().bottom - before;
      if (Math.abs(moved) >= 1) {
        window.scrollBy({ top: moved, behavior: "instant" }); // not Bootstrap's smooth scrolling
      }
    }
  }

  worker.onmessage = function (event) {
    var data = event.data;
    if (data.css !== undefined) { // MathJax's SVG stylesheet, sent before any formula
      var style = document.createElement("style");
      style.id = "cnnviz-mathjax-svg";
      style.textContent = data.css;
      document.head.appendChild(style);
      return;
    }
    var job = sent;
    sent = null;
    if (job && job.id === data.id && job.element.getAttribute("data-tex") === job.tex) {
      if (data.error !== undefined) {
        console.error("MathJax could not typeset a formula:", data.error);
        job.element.textContent = job.tex;
      } else {
        insert(job.element, data.html);
      }
      job.element._cnnvizTex = job.tex;
      job.element.dispatchEvent(new CustomEvent("cnnviz:typeset", { bubbles: true }));
    }
    send();
  };
  worker.onerror = function (event) {
    console.error("The MathJax worker failed:", event.message);
  };

  function scan() {
    var elements = document.querySelectorAll("[data-tex]");
    for (var i = 0; i < elements.length; i++) {
      var element = elements[i];
      var tex = element.getAttribute("data-tex");
      if (element._cnnvizTex === tex || waiting.indexOf(element) >= 0) {
        continue;
      }
      if (sent && sent.element === element && sent.tex === tex) {
        continue;
      }
      waiting.push(element);
      if (observer) {
        observer.observe(element);
      }
    }
    send();
  }

  new MutationObserver(function (mutations) {
    // A formula whose TeX changed loses its old typesetting before the next paint.
    mutations.forEach(function (mutation) {
      var element = mutation.target;
      if (mutation.type === "attributes" && element._cnnvizTex !== undefined
          && element._cnnvizTex !== element.getAttribute("data-tex")) {
        element._cnnvizTex = undefined;
        element.textContent = "";
      }
    });
    scan();
  }).observe(document.documentElement, {
    childList: true, subtree: true, attributes: true, attributeFilter: ["data-tex"],
  });
  scan();
})();
