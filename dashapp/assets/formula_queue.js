/* Typeset formulas without freezing the page.
 *
 * dcc.Markdown(mathjax=True) calls window.MathJax.typeset([element]) for every
 * formula as soon as MathJax has loaded, all in one task: a LeNet-5 iteration
 * page (about 100 formulas, many 12x10 matrices) then blocked the browser for
 * over ten seconds. The dcc loader decides whether to load MathJax by looking
 * for `window.MathJax`, so nothing may sit there beforehand; instead we watch
 * the assignment MathJax makes to it while it loads and add, to the
 * configuration object it wraps, its documented `startup.ready` hook. There we
 * wrap `typeset` so that formulas are queued and typeset a few at a time, the
 * ones on screen first, yielding to the browser between slices. Every formula
 * is still typeset (the rest follow in the background).
 */
(function () {
  "use strict";
  if (window.MathJax !== undefined) {
    return; // MathJax (or another configuration) is already there: leave it alone
  }
  var SLICE_MS = 40; // typeset for at most this long, then let the browser paint and react
  var NEAR = "800px"; // formulas this close to the viewport count as visible

  var hooks = {
    startup: {
      ready: function () {
        var mathjax = window.MathJax;
        mathjax.startup.defaultReady();
        var typesetNow = mathjax.typeset.bind(mathjax);
        var waiting = []; // elements in the order they asked
        var visible = new Set();
        var scheduled = false;
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

        function work() {
          scheduled = false;
          var start = performance.now();
          while (waiting.length && performance.now() - start < SLICE_MS) {
            var element = next();
            visible.delete(element);
            if (observer) {
              observer.unobserve(element);
            }
            if (element.isConnected) {
              try {
                typesetNow([element]);
              } catch (error) {
                console.error("MathJax could not typeset a formula", error);
              }
            }
          }
          schedule();
        }

        function schedule() {
          if (!scheduled && waiting.length) {
            scheduled = true;
            setTimeout(work, 0);
          }
        }

        mathjax.typeset = function (elements) {
          if (!elements) {
            return typesetNow(elements);
          }
          Array.prototype.forEach.call(elements, function (element) {
            if (waiting.indexOf(element) < 0) {
              waiting.push(element);
              if (observer) {
                observer.observe(element);
              }
            }
          });
          schedule();
        };
      },
    },
  };

  // MathJax first stores a bare `{}` and then `{version, _, config: <that object>}`;
  // its startup reads `config.startup.ready` later, so adding it then is in time.
  var current;
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: function () {
      return current;
    },
    set: function (value) {
      current = value;
      if (value && value.version && value.config) {
        value.config.startup = value.config.startup || {};
        if (!value.config.startup.ready) {
          value.config.startup.ready = hooks.startup.ready;
        }
        Object.defineProperty(window, "MathJax", { configurable: true, writable: true, value: value });
      }
    },
  });
})();
