"""The README's commands stay true: CI runs its test command, its SQL runs."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    assert "bash scripts/test.sh\n" in blocks
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
    script = (REPO / "scripts" / "test.sh").read_text()
    assert "pytest" in script
    assert '-c constraints/cpu.txt -e ".[test]"' in script
    assert "ruff check" in script and "ruff format --check" in script


def test_torch_is_an_extra_with_a_range_and_the_cpu_build_is_a_constraint():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[\[<>=!~ ;]", dep, maxsplit=1)[0] for dep in project["dependencies"]]
    assert "torch" not in names and "numpy" in names  # the dashboard installs without torch
    extras = project["optional-dependencies"]
    assert extras["trace"] == ["torch>=2.13"]  # a range, never a pin that replaces a user's torch
    assert "cnnviz[trace]" in extras["test"]
    pins = [
        line
        for line in (REPO / "constraints" / "cpu.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert pins == ["torch==2.13.0+cpu"]  # "+cpu": a CUDA wheel can never satisfy it
    assert 'pip install -c constraints/cpu.txt -e ".[trace]"' in README


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
