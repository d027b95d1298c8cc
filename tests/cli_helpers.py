"""Run the `cnnviz` command line inside the test process, as `main` runs it.

click's test runner swaps stdin/stdout/stderr and the environment; `main` turns
usage and store errors into one line and an exit status exactly as the console
script does. Spawning a process costs seconds (Python, then torch) that an
argument check does not need; a few real-process smoke tests stay in test_cli.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from click.testing import CliRunner

from tracer.cli import main


@dataclass
class Ran:
    """What a `cnnviz` call left: as subprocess.CompletedProcess names it."""

    returncode: int
    stdout: str
    stderr: str


def cnnviz(*args: str, env: dict[str, str | None] | None = None, cwd=None) -> Ran:
    """`cnnviz ARGS...` in this process; $CNNVIZ_DB is unset unless `env` sets it."""
    runner = CliRunner()
    with runner.isolation(env={"CNNVIZ_DB": None, **(env or {})}) as (stdout, stderr, _):
        before = os.getcwd()
        try:
            if cwd is not None:
                os.chdir(cwd)
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            os.chdir(before)
        return Ran(code, stdout.getvalue().decode(), stderr.getvalue().decode())
