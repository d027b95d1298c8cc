"""Fixtures for the dashboard tests.

Stores are traced by the real tracer (the session's `seed_store`, copied
before anything is added). Served apps are real subprocesses (`python -m
tracer.cli serve`) on 127.0.0.1 and a free port, one per test module; the
browser is one headless Chromium per test session, driven by Playwright.
Under CI (CI=true) a missing browser fails the browser tests instead of
skipping them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dash_helpers import (
    CHROMIUM,
    CHROMIUM_FLAGS,
    INJECTION,
    WAIT_MS,
    Problems,
    clone_run,
    copy_store,
    require,
)


@pytest.fixture(scope="session")
def dash_store(seed_store, tmp_path_factory) -> Path:
    """seed_store (run 1 seed 0, run 2 seed 1) plus run 3, a copy of run 1 named like an
    HTML injection. Read-only for tests: copy it before writing."""
    path = copy_store(seed_store, tmp_path_factory.mktemp("dash_store") / "runs.db")
    clone_run(path, 1, name=INJECTION, seed=7)
    return path


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole session."""
    require(Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - depends on the environment
        require(False, "the playwright package is not installed")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh browser context and page that records everything that went wrong."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    # Every wait returns once its condition holds; the bound is for failures only, and
    # Playwright's default of 30 s is too short for a LeNet-5 page on a loaded machine.
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    problems = Problems()
    tab.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    tab.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    tab.on("requestfailed", lambda r: problems.append(f"failed request: {r.url} ({r.failure})"))
    tab.on(
        "response",
        lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None,
    )

    def on_dialog(dialog):
        problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    tab.on("dialog", on_dialog)
    tab.problems = problems
    yield tab
    context.close()


@pytest.fixture(scope="session")
def dash_app(dash_store):
    """The app on `dash_store`, built in this process for layout and route tests.

    Session-scoped: Dash Pages imports the page modules per app and lets the
    first app in a process claim their callbacks, so build one per process."""
    from dashapp.app import create_app

    return create_app(dash_store)
