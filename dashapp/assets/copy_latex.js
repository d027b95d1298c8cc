/* "Copy as LaTeX" beside every formula (dashapp/layouts.formula).
 *
 * The button holds no text of its own: it copies the LaTeX that MathJax typeset in
 * its formula box, read from MathJax's math item, so the page carries each formula
 * once (a dcc.Clipboard per formula sent it a second time, and was one more React
 * component per formula to render).
 */
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest(".formula > .copy-latex");
    if (!button) {
      return;
    }
    var mathjax = window.MathJax;
    var document_ = mathjax && mathjax.startup && mathjax.startup.document;
    var items = document_ ? document_.getMathItemsWithin([button.parentElement]) : [];
    if (!items.length || !navigator.clipboard) {
      return;
    }
    navigator.clipboard.writeText(items[0].math).then(function () {
      button.classList.add("copied");
      button.title = "Copied";
      setTimeout(function () {
        button.classList.remove("copied");
        button.title = "Copy as LaTeX";
      }, 1500);
    });
  });
})();
