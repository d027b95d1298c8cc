/* MathJax in a Web Worker: TeX in, SVG markup out (assets/formula_queue.js).
 *
 * Typesetting a LeNet-5 formula with numbers (matrices of up to 12x10 entries) takes
 * 50-300 ms, and evaluating MathJax itself hundreds more: on the page's main thread
 * those were its longest tasks. Here MathJax 3 runs with its liteDOM adaptor, which
 * needs no document: each formula becomes an <mjx-container> holding its SVG and its
 * assistive MathML, as markup the page only has to insert.
 *
 * The components are MathJax 3.2.2's own (npm `mathjax`, es5/, Apache 2.0, see
 * LICENSE here), only those the formulas need: no menu and no speech engine, which
 * expect a window.
 *
 * Messages in: {id, tex}. Out: {css} once (MathJax's SVG stylesheet), then
 * {id, html} or {id, error} for each formula, in the order asked.
 */
"use strict";

var base = self.location.href.replace(/\/[^/]*$/, ""); // .../_cnnviz/mathjax

// Every component, in an order where each comes after those it needs. The dashboard
// sends them as one script (dashapp/bundle.py), which is imported at once, instead of
// one request after the other as MathJax's loader would ask for them.
var COMPONENTS = ["core", "adaptors/liteDOM", "input/tex-base", "[tex]/ams", "[tex]/newcommand",
  "[tex]/noundefined", "[tex]/boldsymbol", "[tex]/color", "output/svg", "output/svg/fonts/tex",
  "a11y/assistive-mml"];

function urlOf(component) {
  return base + "/" + component.replace("[tex]/", "input/tex/extensions/") + ".js";
}

var imported = COMPONENTS.map(urlOf);
var allImported;
var whenImported = new Promise(function (resolve) {
  allImported = resolve;
});

self.MathJax = {
  loader: {
    paths: { mathjax: base },
    load: COMPONENTS,
    // MathJax's loader calls this for each component it needs (there is no document to
    // add a script to); those imported below are there once the import is done.
    require: function (url) {
      return imported.indexOf(url) >= 0 ? whenImported : whenImported.then(function () {
        importScripts(url);
      });
    },
  },
  tex: {
    // The tracer writes plain TeX and AMS macros (tracer/latex.py, tracer/explainers):
    // no links, styles, classes, \unicode or \require (dashapp/layouts.neutralise_tex
    // also shows those as text before they get here).
    packages: ["base", "ams", "newcommand", "noundefined", "boldsymbol", "color"],
  },
  svg: { fontCache: "local" }, // every formula carries the glyphs it uses
  startup: { typeset: false },
};
importScripts(base + "/components.js?load=" + ["startup"].concat(COMPONENTS).join(","));
allImported();

// One formula typeset as soon as MathJax is there, of the kinds the pages show (a
// fraction, a matrix with dots, an exponent): the first formula MathJax typesets costs
// it far more than the next ones (its code is compiled and its tables are built then),
// and that was the first formula of the view the reader waits for. Done here, it
// happens while the page is still loading its scripts.
var WARM_UP = "\\frac{\\partial L}{\\partial W} = \\begin{bmatrix}-1.5 & \\cdots \\\\ " +
  "2.0\\times 10^{-4} & \\vdots\\end{bmatrix}";

var ready = MathJax.startup.promise.then(function () {
  var adaptor = MathJax.startup.adaptor;
  try {
    MathJax.tex2svg(WARM_UP, { display: true });
  } catch (error) {
    // only a warm-up: the formulas asked for report their own errors
  }
  self.postMessage({ css: adaptor.textContent(MathJax.svgStylesheet()) });
  return adaptor;
});

self.onmessage = function (event) {
  var id = event.data.id;
  var tex = event.data.tex;
  ready
    .then(function (adaptor) {
      var node = MathJax.tex2svg(tex, { display: true });
      self.postMessage({ id: id, html: adaptor.outerHTML(node) });
    })
    .catch(function (error) {
      self.postMessage({ id: id, error: String((error && error.message) || error) });
    });
};
