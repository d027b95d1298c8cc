/* Typeset formulas off the main thread, the ones in view first.
 *
 * Each formula is an element with its TeX in `data-tex` (dashapp/layouts.formula).
 * MathJax runs in a Web Worker (dashapp/vendor/mathjax/worker.js, served by
 * dashapp/bundle.py): the page sends it one formula at a time and inserts the
 * <mjx-container> markup it sends back. Evaluating MathJax (2 MB) and typesetting a
 * LeNet-5 formula with numbers (50-300 ms each) were the longest tasks of the page
 * when dcc.Markdown did them on the main thread; now the page only parses SVG.
 *
 * The worker starts loading MathJax as soon as this script runs, alongside Dash's own
 * scripts. Until a formula is typeset its box is as tall as the formula will be
 * (dashapp/layouts.formula), so nothing below it moves when it is. The next formula
 * sent is one near the viewport; the others follow in the
 * background, so every formula ends up typeset. When `data-tex` changes (React reusing
 * the element for the next view, or "show every stored entry"), the old formula is
 * removed at once and the new one typeset: a formula never shows numbers that are not
 * its own.
 *
 * A view's first formulas are typeset while the page builds the view: when the answer
 * of a Dash callback arrives (the renderer's `request_post` hook, dashapp/bundle.py),
 * the TeX of its first FIRST_FORMULAS formulas is sent to the worker at once, so their
 * markup is there, or on its way, when their elements appear, instead of being asked
 * for only then: the worker typesets while the main thread renders. Typeset markup is
 * kept by TeX (the last KEEP formulas), so a formula that occurs twice (one general
 * formula for every ReLU of a model) is typeset once.
 */
(function () {
  "use strict";
  var NEAR = "800px"; // formulas this close to the viewport count as visible
  var FIRST_FORMULAS = 2; // a view opens at its first step: its general formula and its numbers
  var KEEP = 64;

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
  var typeset = new Map(); // TeX -> {html} or {error}, the last KEEP
  var asked = new Map(); // worker job id -> TeX, not answered yet
  var queued = null; // the job id of the one formula sent for an element (the others wait)
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

  function isAsked(tex) { // a formula with the worker (a handful at most)
    var found = false;
    asked.forEach(function (asking) {
      found = found || asking === tex;
    });
    return found;
  }

  function ask(tex) {
    lastId += 1;
    asked.set(lastId, tex);
    worker.postMessage({ id: lastId, tex: tex });
    return lastId;
  }

  function forget(element) {
    var at = waiting.indexOf(element);
    if (at >= 0) {
      waiting.splice(at, 1);
    }
    visible.delete(element);
    if (observer) {
      observer.unobserve(element);
    }
  }

  function next() {
    for (var i = 0; i < waiting.length; i++) {
      if (visible.has(waiting[i]) && !isAsked(waiting[i].getAttribute("data-tex"))) {
        return waiting[i];
      }
    }
    for (var j = 0; j < waiting.length; j++) {
      if (!isAsked(waiting[j].getAttribute("data-tex"))) {
        return waiting[j];
      }
    }
    return null; // every waiting formula is with the worker already
  }

  function send() {
    while (queued === null) {
      var element = next();
      if (!element) {
        return;
      }
      var tex = element.getAttribute("data-tex");
      if (!element.isConnected || !tex || element._cnnvizTex === tex) {
        forget(element);
      } else {
        queued = ask(tex); // the element waits for the answer
      }
    }
  }

  // A formula typeset above the viewport can change the page's height above what the
  // reader looks at (its box is as tall as estimated until then, dashapp/layouts.py,
  // and the estimate is a few pixels off), and Chrome's scroll anchoring does not make
  // up for it on these pages (a panel scrolled to moved thousands of pixels down while
  // the formulas above it were typeset, when their boxes were empty): the page scrolls
  // by what the formula's row moved what follows it in the viewport (its bottom edge,
  // which the browser's own anchoring, when it does act, has already moved back).
  function insert(element, html) {
    var row = element.closest(".formula-row") || element;
    var before = row.getBoundingClientRect().bottom;
    element.innerHTML = html;
    element.style.minHeight = ""; // the height reserved for it (dashapp/layouts.py)
    if (before <= 0) { // wholly above the viewport
      var moved = row.getBoundingClientRect().bottom - before;
      if (Math.abs(moved) >= 1) {
        window.scrollBy({ top: moved, behavior: "instant" }); // not Bootstrap's smooth scrolling
      }
    }
  }

  // Show a typeset formula in `element`, whose TeX it is.
  function show(element, tex, result) {
    forget(element);
    if (result.error !== undefined) {
      console.error("MathJax could not typeset a formula:", result.error);
      element.textContent = tex;
      element.style.minHeight = "";
    } else {
      insert(element, result.html);
    }
    element._cnnvizTex = tex;
    element.dispatchEvent(new CustomEvent("cnnviz:typeset", { bubbles: true }));
  }

  function keep(tex, result) {
    typeset.delete(tex);
    typeset.set(tex, result);
    if (typeset.size > KEEP) {
      typeset.delete(typeset.keys().next().value); // the oldest
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
    var tex = asked.get(data.id);
    asked.delete(data.id);
    if (data.id === queued) {
      queued = null;
    }
    if (tex !== undefined) {
      var result = data.error !== undefined ? { error: data.error } : { html: data.html };
      keep(tex, result);
      // every element waiting for this TeX, the one it was sent for among them
      waiting.slice().forEach(function (element) {
        if (!element.isConnected) {
          forget(element);
        } else if (element.getAttribute("data-tex") === tex) {
          show(element, tex, result);
        }
      });
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
      if (element._cnnvizTex === tex) {
        continue;
      }
      if (typeset.has(tex)) {
        show(element, tex, typeset.get(tex));
      } else if (waiting.indexOf(element) < 0) {
        waiting.push(element);
        if (observer) {
          observer.observe(element);
        }
      }
    }
    send();
  }

  // The TeX of the formulas in a callback's answer, in the order of the page: the static
  // markup of dashapp/statichtml.py writes each as data-tex="..." (escaped by markupsafe).
  var TEX = /data-tex="([^"]*)"/g;
  var ENTITY = /&(?:amp|lt|gt|quot|#34|#39|#x27);/g;
  var ENTITIES = {
    "&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#34;": '"', "&#39;": "'", "&#x27;": "'",
  };

  function texts(value, found) {
    if (found.length >= FIRST_FORMULAS || value === null) {
      return found;
    }
    if (typeof value === "string") {
      if (value.indexOf("data-tex=") >= 0) {
        var match;
        TEX.lastIndex = 0;
        while (found.length < FIRST_FORMULAS && (match = TEX.exec(value)) !== null) {
          found.push(match[1].replace(ENTITY, function (entity) { return ENTITIES[entity]; }));
        }
      }
    } else if (Array.isArray(value)) {
      for (var i = 0; i < value.length && found.length < FIRST_FORMULAS; i++) {
        texts(value[i], found);
      }
    } else if (typeof value === "object") {
      for (var key in value) {
        if (found.length >= FIRST_FORMULAS) {
          break;
        }
        texts(value[key], found);
      }
    }
    return found;
  }

  window.cnnvizAnswers = window.cnnvizAnswers || [];
  window.cnnvizAnswers.push(function (payload, response) {
    texts(response, []).forEach(function (tex) {
      if (tex && !typeset.has(tex) && !isAsked(tex)) {
        ask(tex);
      }
    });
  });

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
