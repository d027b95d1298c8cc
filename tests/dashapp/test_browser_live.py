"""A run that is still being traced: its committed iterations show, new ones appear
without a reload, and the page stops polling once the run has ended."""

from __future__ import annotations

import pytest
from dash_helpers import clone_run, cnnviz_serve, copy_store, open_page

from storage import RunStore

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def live(dash_store, tmp_path_factory):
    """A copy of dash_store with run 4 'live' running: one iteration committed so far."""
    path = copy_store(dash_store, tmp_path_factory.mktemp("live") / "runs.db")
    run_id, writer = clone_run(path, 2, name="live", seed=11, iterations=1, finish=False)
    with RunStore(dash_store) as source:
        more = [source.load_iteration(2, i) for i in (2, 3)]
    yield path, run_id, writer, more
    writer.engine.dispose()


@pytest.fixture(scope="module")
def base(live):
    with cnnviz_serve(live[0]) as url:
        yield url


def test_new_iterations_appear_and_polling_stops_when_the_run_ends(page, base, live):
    _, run_id, writer, more = live
    open_page(page, f"{base}/iteration?run={run_id}&it=1")
    stepper = page.locator(".iteration-stepper")
    assert page.locator("#iteration-status").inner_text() == "running"
    assert stepper.get_by_role("link", name="2", exact=True).count() == 0

    writer.add_iteration(more[0])
    stepper.get_by_role("link", name="2", exact=True).wait_for()

    writer.add_iteration(more[1])
    writer.finish()
    page.wait_for_function(
        "document.getElementById('iteration-status').textContent === 'completed'"
    )
    assert stepper.get_by_role("link", name="3", exact=True).count() == 1

    # No more polling: the page's interval is switched off (a condition, not a pause).
    page.wait_for_function(
        "window.dash_component_api.getLayout('iteration-poll').props.disabled === true",
    )
    assert list(page.problems) == []
