"""The README's commands stay true: CI runs its test command, its SQL runs."""

from __future__ import annotations

import re
import shlex
import sqlite3
from pathlib import Path

import click
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
    # a range, never a pin that replaces a user's torch; the tracer's own helpers beside it
    assert "torch>=2.13" in extras["trace"] and not [d for d in names if d == "threadpoolctl"]
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


def readme_commands() -> list[list[str]]:
    """Every command of the README's bash blocks, in order, as argv lists (a quoted
    argument may span lines; `a && b` is two commands; comments dropped)."""
    commands, pending = [], ""
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            pending += line + "\n"
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # an open quote: the argument continues on the next line
                continue
            pending = ""
            while words:
                head, _, words = (
                    (words[: words.index("&&")], "&&", words[words.index("&&") + 1 :])
                    if "&&" in words
                    else (words, "", [])
                )
                if head:
                    commands.append(head)
    return commands


def test_the_quick_start_makes_and_activates_the_venv_before_any_command():
    commands = readme_commands()
    assert commands[:4] == [
        ["python3", "-m", "venv", ".venv"],
        [".", ".venv/bin/activate"],
        ["pip", "install", "-c", "constraints/cpu.txt", "-e", ".[trace]"],
        ["cnnviz", "demo"],
    ]
    # After it, a bare `cnnviz`, `pip` or `python` is the venv's; before it none is used.
    first_use = min(i for i, c in enumerate(commands) if c[0] in ("cnnviz", "pip", "python"))
    assert first_use > commands.index([".", ".venv/bin/activate"])


def test_every_readme_command_names_real_options_and_files():
    from tracer.cli import cli

    seen = set()
    for argv in readme_commands():
        program = argv[0].removeprefix(".venv/bin/")
        if program == "cnnviz":
            command, words = cli, argv[1:]
            while isinstance(command, click.Group):  # `cnnviz db upgrade` is a subgroup
                name, words = words[0], words[1:]
                command = command.commands[name]
                seen.add(name)
            command.make_context(name, words)  # raises on an unknown option or a bad value
        elif program in ("python", "python3", "bash") and argv[1:] and argv[1] != "-m":
            assert (REPO / argv[1]).is_file(), argv
    assert {"trace", "runs", "models", "serve", "demo"} <= seen
