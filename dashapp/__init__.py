"""cnnviz dashboard: a Dash app that reads a run store and shows every step.

Pages (one module each under `dashapp/pages`): runs, model architecture,
iteration view, compare, not found. Data comes only through `storage` (opened
read-only); this package never imports torch.

    from dashapp import create_app
    create_app("runs.db").run(port=8050)
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    # Lazy, so that `import dashapp.figures` (unit tests) does not build Dash pages.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
