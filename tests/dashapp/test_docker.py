"""docker-compose.yml and the Dockerfile: valid, and running the same entry points the
other tests exercise. The image itself is built and run by scripts/docker-smoke.sh
(it needs a Docker engine); here its commands run directly, as the image would."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import urllib.request

import yaml
from dash_helpers import (
    BLOCK_TORCH,
    REPO,
    clone_run,
    copy_store,
    free_port,
    require,
    serving,
    subprocess_env,
)

from storage import RunStore
from tracer.cli import cli

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its (INSTRUCTION, arguments) pairs, continuation lines joined,
    comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line[:-1].rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(current)
            current = ""
    stages: dict[str, list[tuple[str, str]]] = {}
    for line in lines:
        op, args = line.split(None, 1)
        if op.upper() == "FROM":
            stage = stages.setdefault(args.split(" AS ")[-1], [])
        stage.append((op.upper(), args))
    return stages


def argv_of(shell_form: str) -> list[str]:
    return shlex.split(shell_form)


def test_compose_file_is_valid():
    require(shutil.which("docker-compose") is not None, "docker-compose is not installed")
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_serves_8050_on_loopback_keeps_runs_in_a_volume_and_binds_from_the_env():
    compose = yaml.safe_load(COMPOSE.read_text())
    ((name, service),) = compose["services"].items()
    assert service["build"] == "."
    assert service["ports"] == ["127.0.0.1:8050:${CNNVIZ_PORT:-8050}"]
    env = service["environment"]
    assert env["CNNVIZ_HOST"] == "${CNNVIZ_HOST:-0.0.0.0}"
    assert env["CNNVIZ_PORT"] == "${CNNVIZ_PORT:-8050}"
    volume, mount = service["volumes"][0].split(":")
    assert volume in compose["volumes"] and env["CNNVIZ_DB"].startswith(mount + "/")
    image_env = " ".join(args for op, args in dockerfile_stages()["runtime"] if op == "ENV")
    assert f"CNNVIZ_DB={env['CNNVIZ_DB']}" in image_env


def test_torch_is_only_in_the_build_stage():
    stages = dockerfile_stages()
    assert list(stages) == ["tracer", "runtime"]
    assert stages["tracer"][0] == ("FROM", "python:3.11-slim AS tracer")
    assert stages["runtime"][0] == ("FROM", "python:3.11-slim AS runtime")
    tracer_runs = [args for op, args in stages["tracer"] if op == "RUN"]
    assert tracer_runs == [
        'pip install -c constraints/cpu.txt --extra-index-url "$TORCH_INDEX_URL" ".[trace]"',
        'cnnviz demo --no-serve --db /demo/runs.db && python -c "import sqlite3; '
        "sqlite3.connect('/demo/runs.db').execute('PRAGMA journal_mode=DELETE').close()\"",
    ]
    runtime = stages["runtime"]
    assert 'pip install ".[postgres]" && rm -rf /src' in [
        args for op, args in runtime if op == "RUN"
    ]
    assert not any("torch" in args or "trace]" in args for op, args in runtime if op == "RUN")
    assert ("COPY", "--from=tracer /demo/runs.db /opt/cnnviz/demo.db") in runtime
    assert ("USER", "cnnviz") in runtime and ("EXPOSE", "8050") in runtime


def image_commands() -> tuple[list[str], list[str], list[str]]:
    """The build stage's demo command, the image's CMD and its healthcheck command."""
    stages = dockerfile_stages()
    build = argv_of([args for op, args in stages["tracer"] if op == "RUN"][-1].split("&&")[0])
    (cmd,) = [json.loads(args) for op, args in stages["runtime"] if op == "CMD"]
    (check,) = [args for op, args in stages["runtime"] if op == "HEALTHCHECK"]
    options, _, command = check.partition(" CMD ")
    assert options.split() == [
        "--interval=5s",
        "--timeout=5s",
        "--start-period=60s",
        "--retries=3",
    ]
    return build, cmd, json.loads(command)


def test_the_image_commands_are_real_cnnviz_commands():
    build, cmd, check = image_commands()
    for argv in (build, cmd):
        assert argv[0] == "cnnviz"
        cli.commands[argv[1]].make_context(argv[1], argv[2:])  # parses: real options
    assert cmd == ["cnnviz", "demo", "--from", "/opt/cnnviz/demo.db"]
    assert check[0] == "python" and "/healthz" in check[-1]


def test_the_image_command_fills_the_store_without_torch_and_is_healthy(dash_store, tmp_path):
    """The CMD as the container runs it (torch blocked, bound to loopback), and its healthcheck."""
    demo = copy_store(dash_store, tmp_path / "demo.db")  # seeds 0 and 1 ...
    clone_run(demo, 1, name="seed-cnn-seed2", seed=2)  # ... and 2: what the build stage traces
    volume = tmp_path / "volume"
    volume.mkdir()
    port = free_port()
    env = subprocess_env() | {
        "CNNVIZ_DB": str(volume / "runs.db"),
        "CNNVIZ_HOST": "127.0.0.1",
        "CNNVIZ_PORT": str(port),
    }
    _, cmd, check = image_commands()
    argv = [sys.executable, "-c", BLOCK_TORCH, *cmd[1:-1], str(demo)]
    with serving(argv, port, env=env) as served:
        healthy = subprocess.run(check, env=env | {"PATH": os.path.dirname(sys.executable)})
        assert healthy.returncode == 0
        with urllib.request.urlopen(served.url + "/download/1/1/conv.weight.npy") as response:
            assert response.status == 200
    assert served.output.count("copied run") == 3, served.output
    assert "Starting gunicorn" in served.output
    with RunStore(volume / "runs.db") as store:
        assert [(r.name, r.seed) for r in store.list_runs()] == [
            (f"seed-cnn-seed{s}", s) for s in (0, 1, 2)
        ]
