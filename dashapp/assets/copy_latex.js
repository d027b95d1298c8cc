/* "Copy as LaTeX" beside every formula (dashapp/layouts.formula).
 *
 * The button holds no text of its own: it copies the TeX its formula box was typeset
 * from (the `data-tex` of its `.formula-math`), so the page carries each formula once
 * (a dcc.Clipboard per formula sent it a second time, and was one more React
 * component per formula to render).
 */
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest(".formula > .copy-latex");
    if (!button) {
      return;
    }
    var math = button.parentElement.querySelector(".formula-math[data-tex]");
    if (!math || !navigator.clipboard) {
      return;
    }
    navigator.clipboard.writeText(math.getAttribute("data-tex")).then(function () {
      button.classList.add("copied");
      button.title = "Copied";
      setTimeout(function () {
        button.classList.remove("copied");
        button.title = "Copy as LaTeX";
      }, 1500);
    });
  });
})();
