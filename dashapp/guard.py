"""Pages never show a traceback: unknown things become the not-found page,
an unreadable store a one-line error, anything else a short apology (the
details go to the server log)."""

from __future__ import annotations

import functools
import logging

from storage import StoreError

from . import layouts
from .data import NotFound

log = logging.getLogger("cnnviz.dashapp")


def page_layout(build):
    """Decorator for a page's `layout(**query)`."""

    @functools.wraps(build)
    def layout(**query):
        try:
            return build(**query)
        except NotFound as exc:
            return layouts.not_found(str(exc))
        except StoreError as exc:
            return layouts.error_card(f"The store cannot be read: {exc}")
        except Exception:
            log.exception("building %s failed for %r", build.__module__, query)
            return layouts.error_card(
                "Something went wrong while building this page; the server log has the details."
            )

    return layout
