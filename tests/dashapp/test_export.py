"""`cnnviz export RUN --html FILE`: one offline HTML file, checked in headless Chromium
from a file:// URL with the network off, and its numbers checked against the store."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from dashapp.export import EXPORT_COLS, EXPORT_ROWS
from dashapp.tensorview import matrix_view
from storage import RunStore


def _main(args, capsys) -> tuple[int, str, str]:
    from tracer.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def _export(seed_store, path, capsys, *extra):
    from tracer.cli import main

    main(["export", "1", "--html", str(path), "--db", str(seed_store), *extra])
    return capsys.readouterr().out


def _payloads(document: str) -> dict[int, dict]:
    found = re.findall(
        r'<script type="application/json" id="data-(\d+)">(.*?)</script>', document, re.S
    )
    return {int(i): json.loads(text) for i, text in found}


@pytest.fixture(scope="module")
def exported(seed_store, tmp_path_factory):
    from dashapp.export import export_html

    path = tmp_path_factory.mktemp("export") / "run1.html"
    with RunStore(seed_store) as store:
        size = export_html(store, 1, path)
    return path, size


def test_export_reports_its_size_and_holds_every_iteration(seed_store, tmp_path, capsys):
    path = tmp_path / "seed.html"
    out = _export(seed_store, path, capsys)
    size = path.stat().st_size
    assert out.strip() == f"run 1 exported to {path} ({size / 1e6:.1f} MB)"
    document = path.read_text(encoding="utf-8")
    with RunStore(seed_store) as store:
        its = store.iterations(1)
    assert sorted(_payloads(document)) == [i.index for i in its]
    # nothing to fetch: no <script src>, <link>, <img> or stylesheet import
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=|<link\b|@import", document)


def test_every_heatmap_holds_the_stored_numbers(exported, seed_store):
    path, _ = exported
    payloads = _payloads(path.read_text(encoding="utf-8"))
    with RunStore(seed_store) as store:
        for index, payload in payloads.items():
            record = store.load_iteration(1, index)
            assert [s["title"] for s in payload["steps"]] == [s.title for s in record.steps]
            shown = [t for s in payload["steps"] for t in s["tensors"]] + payload["other"]
            assert sorted(t["name"] for t in shown) == sorted(t.name for t in record.tensors)
            for tensor in shown:
                stored = record.tensor(tensor["name"])
                view = matrix_view(
                    stored.array,
                    stored.shape,
                    role=stored.role,
                    max_rows=EXPORT_ROWS,
                    max_cols=EXPORT_COLS,
                )
                values = np.frombuffer(base64.b64decode(tensor["data"]), dtype="<f4")
                np.testing.assert_array_equal(
                    values.reshape(tensor["rows"], tensor["cols"]), view.values.astype(np.float32)
                )


def test_selected_iterations_and_bad_input(seed_store, tmp_path, capsys):
    path = tmp_path / "two.html"
    _export(seed_store, path, capsys, "--iterations", "3,1")
    assert sorted(_payloads(path.read_text(encoding="utf-8"))) == [1, 3]
    db = ["--db", str(seed_store)]
    for args, message in (
        (["export", "99", "--html", str(tmp_path / "x.html"), *db], "there is no run 99"),
        (
            ["export", "1", "--html", str(tmp_path / "x.html"), "--iterations", "7", *db],
            "no iteration 7",
        ),
        (
            ["export", "1", "--html", str(tmp_path / "x.html"), "--iterations", "a", *db],
            "iteration numbers",
        ),
        (["export", "1", "--html", str(tmp_path), *db], "is a directory"),
        (["export", "1", *db], "Missing option '--html'"),
    ):
        code, out, err = _main(args, capsys)
        assert code == 2, (args, out, err)
        assert out == "" and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x.html").exists()


@pytest.mark.browser
def test_opens_offline_from_disk_with_formulas_heatmaps_and_copy(exported, seed_store, browser):
    # The session's Chromium (conftest): a second sync_playwright() in the same worker
    # fails once the first one's event loop is running.
    path, _ = exported
    with RunStore(seed_store) as store:
        record = store.load_iteration(1, 3)
        run = store.get_run(1)
    problems, requests = [], []
    context = browser.new_context(viewport={"width": 1300, "height": 1000}, offline=True)
    try:
        context.grant_permissions(["clipboard-read", "clipboard-write"])
        page = context.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        layer_formulas = sum(1 for layer in run.layers if layer.formula)
        assert page.locator("header ~ section .tex mjx-container").count() >= 1
        assert page.locator("svg.chart").count() >= 1 + 2  # loss, then one per weight
        page.click("#iteration-3 > summary")
        page.wait_for_selector("#it3-step0")
        assert page.locator("#steps-3 .step:not(.other)").count() == len(record.steps)
        assert page.locator("#steps-3 canvas.heat").count() == len(record.tensors)
        last = page.locator(f"#it3-step{record.steps[-1].position}")
        last.scroll_into_view_if_needed()
        page.wait_for_function(
            "id => { const t = document.querySelectorAll(`#${id} .tex`);"
            " return t.length > 0 && [...t].every(x => x.dataset.typeset === '1'); }",
            arg=f"it3-step{record.steps[-1].position}",
            timeout=60_000,
        )
        assert last.locator("mjx-container").count() == 2
        assert "$$" not in page.inner_text("body") and "\\[" not in last.inner_text()
        last.locator("button.copy").first.click()
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == record.steps[-1].formula
        assert layer_formulas >= 1
    finally:
        context.close()
    assert problems == []
    assert all(url.startswith("file://") for url in requests), requests


def test_store_text_in_the_embedded_data_stays_json_and_inside_its_script():
    from dashapp.export import _json_script

    payload = {"name": "</script><!-- <img src=x onerror=alert(1)> -->", "tex": r"a < b"}
    element = _json_script("data-1", payload)
    body = element.removeprefix('<script type="application/json" id="data-1">')
    body = body.removesuffix("</script>")
    assert "<" not in body  # nothing in it can end or comment out the element
    assert json.loads(body) == payload
