"""The README's commands stay true: CI runs its test command, its SQL runs."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    assert "bash scripts/test.sh\n" in blocks
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
    script = (REPO / "scripts" / "test.sh").read_text()
    assert (
        "pytest" in script and 'pip install -q --disable-pip-version-check -e ".[test]"' in script
    )


def test_readme_installs_the_cpu_torch_pin():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject
    assert '"numpy' in pyproject


SQL = re.findall(r'sqlite3 (?:-header -column )?runs\.db "(.*?)"', README, flags=re.S)


@pytest.mark.parametrize("query", SQL)
def test_readme_queries_run(seed_store, query):
    conn = sqlite3.connect(f"file:{seed_store}?mode=ro", uri=True)
    assert conn.execute(query).fetchall()
    conn.close()


def test_readme_has_queries():
    assert len(SQL) >= 3


def test_readme_example_is_the_tested_example_file():
    example = (REPO / "examples" / "trace_my_model.py").read_text()
    assert f"```python\n{example}```" in README
