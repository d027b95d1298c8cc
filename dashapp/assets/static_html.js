/* The `Html` component of dashapp/statichtml.py: static parts of a page (a tensor panel's
 * header, summary and downloads; the iteration page's side menu) built and escaped on the
 * server and drawn as one element each, instead of one Dash component per element.
 *
 * React writes the markup only when it changes, so what other scripts draw inside it
 * stays. Links marked `data-dash-link` move inside the app as dcc.Link does: a new
 * history entry, Dash's Location told (its `_dashprivate_pushstate` listener, the event
 * dcc.Link sends), the page scrolled to its top; with a modifier key or another button
 * the browser does what it does with any link.
 */
(function () {
  "use strict";

  function Html(props) {
    var attributes = Object.assign({}, props.attributes || {}, {
      id: props.id,
      className: props.className,
      dangerouslySetInnerHTML: { __html: props.html || "" },
    });
    return window.React.createElement(props.element || "div", attributes);
  }

  window.cnnviz_static = { Html: Html };

  document.addEventListener("click", function (event) {
    var link = event.target && event.target.closest && event.target.closest("a[data-dash-link]");
    if (
      !link || event.defaultPrevented || event.button !== 0 ||
      event.metaKey || event.shiftKey || event.altKey || event.ctrlKey
    ) {
      return;
    }
    event.preventDefault();
    window.history.pushState({}, "", link.getAttribute("href"));
    window.dispatchEvent(new CustomEvent("_dashprivate_pushstate"));
    window.scrollTo(0, 0);
  });
})();
