/* The first view came with the page shell (dashapp/firstview.py), built for the
 * address the server read from the layout request's Referer. Once the shell is drawn,
 * check that it was this page's address: a browser may cut the Referer (to the origin
 * for one longer than 4 KB, or without the query by a setting). If the router's
 * Location holds another address, let it look at the address bar again (its popstate
 * listener sets the props that differ), so Dash's router builds the right page.
 * With Dash's own container (no address in the shell) the Location reports the
 * address itself, and there is nothing to do.
 */
(function () {
  "use strict";

  var ROUTER = "_pages_location"; // dash.page_container's Location

  function routed() {
    var api = window.dash_component_api;
    try {
      var location = api && api.getLayout && api.getLayout(ROUTER);
      return location && location.props ? location.props : null;
    } catch (error) {
      return null;
    }
  }

  function check(observer) {
    if (!document.getElementById("_pages_content")) {
      return; // not drawn yet (React mounts the Location in the same commit)
    }
    observer.disconnect();
    var props = routed();
    if (!props || typeof props.pathname !== "string") {
      return;
    }
    if (props.pathname !== window.location.pathname || (props.search || "") !== window.location.search) {
      window.dispatchEvent(new PopStateEvent("popstate", { state: window.history.state }));
    }
  }

  var observer = new MutationObserver(function () { check(observer); });
  observer.observe(document.documentElement, { childList: true, subtree: true });
})();
