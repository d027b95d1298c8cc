/* "show every stored entry" under a fitted formula (dashapp/formulafit.py).
 *
 * The page shows each formula with numbers with some matrix columns elided so that it
 * fits; the button fetches the formula as the store holds it (already made safe for
 * MathJax by the server) and puts its TeX into the `data-tex` attribute of a
 * scrollable box below (an attribute, never markup), which assets/formula_queue.js
 * then typesets like every other formula; a second click hides it again.
 */
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest(".formula-expand");
    if (!button) {
      return;
    }
    var box = button.parentElement.querySelector(".formula-expanded");
    var open = button.getAttribute("aria-expanded") === "true";
    button.setAttribute("aria-expanded", open ? "false" : "true");
    button.textContent = open ? "show every stored entry" : "hide the stored entries";
    box.hidden = open;
    if (open || box.getAttribute("data-loaded")) {
      return;
    }
    box.setAttribute("data-loaded", "1");
    fetch(button.getAttribute("data-src"), { credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (tex) {
        box.setAttribute("data-tex", tex);
      })
      .catch(function (error) {
        box.textContent = "The stored formula could not be loaded (" + error.message + ").";
      });
  });
})();
