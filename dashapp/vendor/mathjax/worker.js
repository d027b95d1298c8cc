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

self.MathJax = {
  loader: {
    paths: { mathjax: base },
    // no document here: MathJax's loader calls this to load a component
    require: function (url) {
      importScripts(url);
    },
    load: ["core", "adaptors/liteDOM", "input/tex-base", "output/svg", "a11y/assistive-mml",
      "[tex]/ams", "[tex]/newcommand", "[tex]/noundefined", "[tex]/boldsymbol",
      "[tex]/color"],
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
importScripts(base + "/startup.js");

var ready = MathJax.startup.promise.then(function () {
  var adaptor = MathJax.startup.adaptor;
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
