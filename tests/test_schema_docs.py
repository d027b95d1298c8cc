"""docs/schema.md cannot rot: its queries run against a traced store, and every
table and view in a store is documented there."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from storage import RunStore

DOC = Path(__file__).resolve().parents[1] / "docs" / "schema.md"
TEXT = DOC.read_text()
QUERIES = re.findall(r"```sql\n(.*?)```", TEXT, flags=re.S)
PYTHON = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
MAY_BE_EMPTY = {"Steps that did not match PyTorch"}


def _title(query: str) -> str:
    before = TEXT[: TEXT.index(query)]
    return re.findall(r"^### (.+)$", before, flags=re.M)[-1]


def test_at_least_six_documented_queries():
    assert len(QUERIES) >= 6


@pytest.mark.parametrize("query", QUERIES, ids=[_title(q) for q in QUERIES])
def test_documented_query_runs(seed_store, query):
    conn = sqlite3.connect(f"file:{seed_store}?mode=ro", uri=True)
    rows = conn.execute(query).fetchall()
    conn.close()
    if any(_title(query).startswith(prefix) for prefix in MAY_BE_EMPTY):
        assert rows == []  # every seed step verifies
    else:
        assert rows, _title(query)


def test_element_query_returns_the_stored_kernel(seed_store):
    query = next(q for q in QUERIES if "tensor_elements" in q)
    conn = sqlite3.connect(f"file:{seed_store}?mode=ro", uri=True)
    rows = conn.execute(query).fetchall()
    conn.close()
    with RunStore(seed_store) as store:
        kernel = store.load_tensor(1, 1, "conv.weight").array.reshape(2, 2)
    assert [(r, c) for r, c, _ in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [v for _, _, v in rows] == [float(kernel[r, c]) for r, c, _ in rows]


def test_python_snippet_reads_the_same_tensor(seed_store, monkeypatch):
    (snippet,) = PYTHON
    monkeypatch.chdir(seed_store.parent)
    scope: dict = {}
    exec(snippet, scope)
    with RunStore(seed_store) as store:
        np.testing.assert_array_equal(scope["weight"], store.load_tensor(1, 1, "fc.weight").array)


def test_every_table_and_view_is_documented(seed_store):
    conn = sqlite3.connect(f"file:{seed_store}?mode=ro", uri=True)
    names = [
        n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
    ]
    conn.close()
    for name in names:
        assert f"| `{name}` |" in TEXT, name
    for name in re.findall(r"^\| `(\w+)` \|", TEXT, flags=re.M):
        assert name in names, f"documented but missing: {name}"
